//! A whole PEFT run (`lion train`, the demo's training stages): fresh or resumed from the
//! output folder's latest checkpoint, steps appended to `metrics.jsonl`, evaluations every
//! `eval_every` steps, checkpoints and `loss.png` every `checkpoint_every` steps and at the end.

use std::io::Write;
use std::time::Instant;

use super::*;
use crate::error::{Error as TrainError, Result as TrainResult};

/// What [`train`] reports as it goes (a progress bar, logs).
#[derive(Debug)]
pub enum TrainEvent<'a> {
    /// The run starts at `step` (0, or the resumed checkpoint's step) of `total`.
    Started { step: u64, total: u64 },
    /// One optimizer step is done.
    Step {
        record: &'a StepRecord,
        samples_per_s: f64,
    },
    /// Validation scores after `step`.
    Evaluated {
        step: u64,
        scores: &'a serde_json::Value,
    },
}

/// Appends one JSON line (a plain append: a line cut short by a kill is dropped at resume).
fn append_line(path: &Path, v: &serde_json::Value) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    writeln!(f, "{v}").map_err(|e| Error::io(path, e))
}

/// Trains `cfg` to its last step on `dev` and returns the output folder. `resume`: continue from
/// the folder's latest checkpoint (refused when there is none or it does not match its
/// manifest); without it, a folder that already holds a run is refused. A failed step (e.g. a
/// non-finite loss) still draws `loss.png` before the error is returned.
pub fn train(
    cfg: PeftConfig,
    resume: bool,
    dev: &Device,
    on_event: &mut dyn FnMut(TrainEvent),
) -> TrainResult<PathBuf> {
    let out = cfg.output_dir.clone();
    let metrics = out.join("metrics.jsonl");
    checkpoint::clean_stale(&out);
    let _keep = lion_core::alloc::KeepLargeBlocks::new(lion_core::alloc::TRAINING_CACHE);
    let resumed = if resume {
        let Some(dir) = checkpoint::latest(&out)? else {
            return Err(TrainError::Resume {
                dir: out.clone(),
                reason: "no checkpoint (no `latest` file)".into(),
            });
        };
        let loaded = checkpoint::load(&dir, dev).map_err(|e| TrainError::Resume {
            dir: out.clone(),
            reason: format!("refusing the checkpoint {}: {e}", dir.display()),
        })?;
        tracing::info!(step = loaded.state.step, dir = %dir.display(), "resuming");
        let now = serde_json::to_value(&cfg).map_err(|e| Error::Input(e.to_string()))?;
        if loaded.config != now {
            tracing::warn!("the config differs from the one the checkpoint was made with");
        }
        truncate_metrics(&metrics, loaded.state.step)?;
        Some(loaded)
    } else {
        if checkpoint::latest(&out)?.is_some() {
            return Err(TrainError::RunExists { dir: out.clone() });
        }
        let _ = std::fs::remove_file(&metrics);
        None
    };
    let mut t = PeftTrainer::new(cfg, resumed, dev)?;
    let total = t.cfg.steps;
    tracing::info!(
        trainable = t.trainable().len(),
        params = t
            .trainable()
            .iter()
            .map(|(_, v)| v.elem_count())
            .sum::<usize>(),
        groups = ?t.opt.groups().iter().map(|g| (&g.name, g.lr_scale, g.weight_decay)).collect::<Vec<_>>(),
        "training"
    );
    on_event(TrainEvent::Started {
        step: t.state.step,
        total,
    });
    while t.state.step < total {
        let start = Instant::now();
        let rec = match t.step() {
            Ok(r) => r,
            Err(e) => {
                let _ = draw_loss_curves(&metrics, &out.join("loss.png"));
                return Err(e);
            }
        };
        let sps = rec.samples as f64 / start.elapsed().as_secs_f64().max(1e-9);
        append_line(
            &metrics,
            &json!({"kind": "train", "step": rec.step, "task": rec.task, "loss": rec.loss,
                    "lr": rec.lr, "grad_norm": rec.grad_norm, "samples_per_s": sps}),
        )?;
        on_event(TrainEvent::Step {
            record: &rec,
            samples_per_s: sps,
        });
        let last = rec.step == total;
        if t.cfg.eval_every > 0 && (rec.step % t.cfg.eval_every == 0 || last) {
            let scores = t.evaluate()?;
            tracing::info!(step = rec.step, %scores, "evaluation");
            append_line(
                &metrics,
                &json!({"kind": "eval", "step": rec.step, "scores": scores}),
            )?;
            on_event(TrainEvent::Evaluated {
                step: rec.step,
                scores: &scores,
            });
        }
        if rec.step % t.cfg.checkpoint_every == 0 || last {
            t.save_checkpoint()?;
            draw_loss_curves(&metrics, &out.join("loss.png"))?;
        }
    }
    Ok(out)
}
