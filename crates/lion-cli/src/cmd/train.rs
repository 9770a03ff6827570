//! `lion train --config CONFIG.json [--resume]`: PEFT training of LION (see
//! `lion_train::peft`). Writes into the config's `output_dir`: `checkpoints/step-N/` (trainable
//! tensors, optimizer and data-order state, config; checksummed manifest), `latest`,
//! `metrics.jsonl` (one line per step and per evaluation) and `loss.png`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use lion_train::checkpoint;
use lion_train::peft::{draw_loss_curves, truncate_metrics, PeftConfig, PeftTrainer};
use serde_json::json;

#[derive(clap::Args)]
pub struct Args {
    /// The training config (JSON; see the README section "Training LION").
    #[arg(long)]
    config: PathBuf,
    /// Continue from the output folder's latest checkpoint (refused if it is corrupt).
    #[arg(long)]
    resume: bool,
    #[command(flatten)]
    device: super::DeviceArgs,
}

/// Appends one JSON line (a plain append: a line cut short by a kill is dropped at `--resume`).
fn append_line(path: &std::path::Path, v: &serde_json::Value) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    writeln!(f, "{v}").with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

pub fn run(args: Args) -> Result<()> {
    let cfg = PeftConfig::read(&args.config)?;
    let dev = args.device.open()?;
    let out = cfg.output_dir.clone();
    let metrics = out.join("metrics.jsonl");
    checkpoint::clean_stale(&out);
    let resume = if args.resume {
        let Some(dir) = checkpoint::latest(&out)? else {
            bail!(
                "--resume: no checkpoint in {} (no `latest` file)",
                out.display()
            );
        };
        let loaded = checkpoint::load(&dir, &dev)
            .with_context(|| format!("--resume: refusing the checkpoint {}", dir.display()))?;
        tracing::info!(step = loaded.state.step, dir = %dir.display(), "resuming");
        if loaded.config != serde_json::to_value(&cfg)? {
            tracing::warn!("the config differs from the one the checkpoint was made with");
        }
        truncate_metrics(&metrics, loaded.state.step)?;
        Some(loaded)
    } else {
        if checkpoint::latest(&out)?.is_some() {
            bail!(
                "{} already holds a run; add --resume to continue it, or choose another output_dir",
                out.display()
            );
        }
        let _ = std::fs::remove_file(&metrics);
        None
    };
    let mut t = PeftTrainer::new(cfg, resume, &dev)?;
    let total = t.cfg.steps;
    tracing::info!(
        trainable = t.trainable().len(),
        params = t
            .trainable()
            .iter()
            .map(|(_, v)| v.elem_count())
            .sum::<usize>(),
        groups = ?t.opt.groups.iter().map(|g| (&g.name, g.lr_scale, g.weight_decay)).collect::<Vec<_>>(),
        "training"
    );
    let pb = super::progress(total, "train");
    pb.set_position(t.state.step);
    while t.state.step < total {
        let start = Instant::now();
        let rec = match t.step() {
            Ok(r) => r,
            Err(e) => {
                pb.abandon();
                let _ = draw_loss_curves(&metrics, &out.join("loss.png"));
                return Err(e.into());
            }
        };
        let sps = rec.samples as f64 / start.elapsed().as_secs_f64().max(1e-9);
        append_line(
            &metrics,
            &json!({"kind": "train", "step": rec.step, "task": rec.task, "loss": rec.loss,
                    "lr": rec.lr, "grad_norm": rec.grad_norm, "samples_per_s": sps}),
        )?;
        pb.set_position(rec.step);
        pb.set_message(format!(
            "loss {:.4} lr {:.2e} {:.1} samples/s",
            rec.loss, rec.lr, sps
        ));
        let last = rec.step == total;
        if t.cfg.eval_every > 0 && (rec.step % t.cfg.eval_every == 0 || last) {
            let scores = t.evaluate()?;
            tracing::info!(step = rec.step, %scores, "evaluation");
            append_line(
                &metrics,
                &json!({"kind": "eval", "step": rec.step, "scores": scores}),
            )?;
        }
        if rec.step % t.cfg.checkpoint_every == 0 || last {
            t.save_checkpoint()?;
            draw_loss_curves(&metrics, &out.join("loss.png"))?;
        }
    }
    pb.finish();
    println!("{}", out.display());
    Ok(())
}
