//! `lion train` end to end on a tiny ShapesWorld: a real SIGKILL mid-run and `--resume` give the
//! same weights and losses as an uninterrupted run; corrupt / partial checkpoints are refused; a
//! non-finite loss stops the run and keeps the last good checkpoint. Plus, through the library:
//! every trainable variable gets a gradient and the frozen weights stay bit-identical.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use candle_core::Device;
use lion_core::testing::repo_root;
use lion_train::checkpoint;
use lion_train::peft::{PeftConfig, PeftTrainer};

fn lion() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lion"))
}

fn world(dir: &Path) -> PathBuf {
    let out = dir.join("world");
    let run = lion()
        .args([
            "world", "generate", "--train", "16", "--val", "4", "--test", "4",
        ])
        .args(["--size", "56", "--threads", "1", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    out
}

fn config(
    world: &Path,
    out: &Path,
    steps: u64,
    init_lr: f64,
    eval_every: u64,
) -> serde_json::Value {
    let w = |f: &str| world.join(f);
    serde_json::json!({
        "preset": "tiny",
        "qformer_tokenizer": repo_root().join("models/all-MiniLM-L6-v2/tokenizer.json"),
        "image_root": world,
        "tasks": [
            {"kind": "caption", "train": w("lion_caption_train.json"), "val": w("lion_caption_val.json")},
            {"kind": "vqa", "train": w("lion_vqa_train.json"), "val": w("lion_vqa_val.json")},
            {"kind": "rec", "train": w("lion_rec_train.json"), "val": w("lion_rec_val.json"), "ratio": 2.0}
        ],
        "schedule": {"init_lr": init_lr, "min_lr": 1e-5, "warmup_steps": 2.min(steps - 1)},
        "boost_lr_scale": 2.0,
        "batch_size": 2,
        "grad_accum": 2,
        "max_grad_norm": 1.0,
        "steps": steps,
        "eval_every": eval_every,
        "eval_max_samples": 2,
        "eval_max_new_tokens": 4,
        "checkpoint_every": 1,
        "output_dir": out,
        "seed": 5
    })
}

fn write_config(dir: &Path, name: &str, v: &serde_json::Value) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_vec_pretty(v).unwrap()).unwrap();
    p
}

fn train_losses(out: &Path) -> Vec<(u64, String)> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].to_string()))
        .collect()
}

fn final_weights(out: &Path) -> Vec<(String, Vec<f32>)> {
    let dir = checkpoint::latest(out).unwrap().unwrap();
    let l = checkpoint::load(&dir, &Device::Cpu).unwrap();
    let mut v: Vec<(String, Vec<f32>)> = l
        .trainable
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn latest_step(out: &Path) -> u64 {
    std::fs::read_to_string(out.join("latest"))
        .ok()
        .and_then(|s| s.trim().strip_prefix("step-").and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// A PEFT trainer on a fresh world in `tmp`, output in `tmp/name`, `steps` steps at lr 1e-3,
/// seed 0; `edit` changes the config first.
fn trainer(
    tmp: &Path,
    name: &str,
    steps: u64,
    edit: impl FnOnce(&mut serde_json::Value),
) -> PeftTrainer {
    let w = world(tmp);
    let mut cfg = config(&w, &tmp.join(name), steps, 1e-3, 0);
    edit(&mut cfg);
    let c = write_config(tmp, &format!("{name}.json"), &cfg);
    PeftTrainer::new(PeftConfig::read(&c).unwrap(), None, &Device::Cpu).unwrap()
}

#[test]
fn sigkill_then_resume_equals_an_uninterrupted_run_and_bad_checkpoints_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let w = world(tmp.path());
    let steps = 10;
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let ca = write_config(tmp.path(), "a.json", &config(&w, &a, steps, 1e-3, 5));
    let cb = write_config(tmp.path(), "b.json", &config(&w, &b, steps, 1e-3, 5));

    let run = lion()
        .arg("train")
        .arg("--config")
        .arg(&ca)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(a.join("loss.png").is_file());

    // The same run from the same initial weights (a preset's random init is drawn once per run
    // and saved as init.safetensors), killed with SIGKILL once it has checkpointed step 3.
    std::fs::create_dir_all(&b).unwrap();
    std::fs::copy(a.join("init.safetensors"), b.join("init.safetensors")).unwrap();
    let mut child = lion()
        .arg("train")
        .arg("--config")
        .arg(&cb)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while latest_step(&b) < 3 {
        assert!(t0.elapsed() < Duration::from_secs(120), "no checkpoint");
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before the kill"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL on unix
    let status = child.wait().unwrap();
    assert!(!status.success());
    let killed_at = latest_step(&b);
    assert!(killed_at < steps, "killed after the end ({killed_at})");

    // A fresh start over an existing run is refused; --resume continues it.
    let again = lion()
        .arg("train")
        .arg("--config")
        .arg(&cb)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));
    let res = lion()
        .arg("train")
        .arg("--config")
        .arg(&cb)
        .arg("--resume")
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );

    let (la, lb) = (train_losses(&a), train_losses(&b));
    assert_eq!(la.len() as u64, steps);
    assert_eq!(
        la, lb,
        "loss sequence differs after kill + resume at {killed_at}"
    );
    let (wa, wb) = (final_weights(&a), final_weights(&b));
    assert!(!wa.is_empty());
    assert_eq!(wa.len(), wb.len());
    for ((ka, xa), (kb, xb)) in wa.iter().zip(&wb) {
        assert_eq!(ka, kb);
        assert!(
            xa.iter().zip(xb).all(|(p, q)| p.to_bits() == q.to_bits()),
            "{ka} differs"
        );
    }
    // Only trainable tensors, under upstream names.
    assert!(wa.iter().all(|(k, _)| !k.starts_with("visual_encoder.")));
    assert!(wa.iter().any(|(k, _)| k == "query_tokens"));

    // A corrupt (one flipped byte) and a partial (truncated) checkpoint file are refused.
    let dir = checkpoint::latest(&b).unwrap().unwrap();
    let f = dir.join(checkpoint::TRAINABLE);
    let good = std::fs::read(&f).unwrap();
    let mut bad = good.clone();
    let n = bad.len();
    bad[n / 2] ^= 0x10;
    for (bytes, word) in [(bad, "corrupt"), (good[..n - 100].to_vec(), "partial")] {
        std::fs::write(&f, &bytes).unwrap();
        let r = lion()
            .arg("train")
            .arg("--config")
            .arg(&cb)
            .arg("--resume")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success());
        assert!(
            err.contains(word) && err.contains("trainable.safetensors"),
            "{err}"
        );
    }
}

#[test]
fn non_finite_loss_stops_and_keeps_the_last_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let w = world(tmp.path());
    let out = tmp.path().join("nan");
    let mut cfg = config(&w, &out, 30, 1e30, 0);
    cfg["schedule"] = serde_json::json!({"init_lr": 1e30, "warmup_steps": 0});
    cfg["max_grad_norm"] = serde_json::Value::Null;
    let c = write_config(tmp.path(), "nan.json", &cfg);
    let r = lion()
        .arg("train")
        .arg("--config")
        .arg(&c)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success(), "{err}");
    assert!(err.contains("non-finite loss"), "{err}");
    assert!(err.contains("last good checkpoint is kept"), "{err}");
    // Every logged loss is finite, and the latest checkpoint is the last logged step, intact.
    let losses = train_losses(&out);
    assert!(!losses.is_empty() && (losses.len() as u64) < 30);
    assert!(losses
        .iter()
        .all(|(_, l)| l.parse::<f64>().unwrap().is_finite()));
    let dir = checkpoint::latest(&out).unwrap().unwrap();
    let m = checkpoint::verify(&dir).unwrap();
    assert_eq!(m.step, losses.last().unwrap().0);
}

#[test]
fn a_non_finite_step_is_a_typed_error_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = trainer(tmp.path(), "nf", 30, |c| {
        c["schedule"] = serde_json::json!({"init_lr": 1e30, "warmup_steps": 0});
        c["max_grad_norm"] = serde_json::Value::Null;
    });
    let err = loop {
        let before = t.state.step;
        match t.step() {
            Ok(_) => assert!(t.state.step < 30, "30 steps at lr 1e30 stayed finite"),
            Err(e) => {
                assert_eq!(t.state.step, before, "a failed step advanced the state");
                break (before, e);
            }
        }
    };
    match err {
        (before, lion_train::error::Error::NonFinite { step, what }) => {
            assert_eq!(step, before + 1);
            assert!(
                what.starts_with("loss (") || what.starts_with("gradient (norm "),
                "{what}"
            );
        }
        (_, e) => panic!("expected Error::NonFinite, got {e}"),
    }
}

#[test]
fn every_trainable_var_gets_a_gradient_and_frozen_weights_stay_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = trainer(tmp.path(), "g", 3, |_| {});
    let cap: Vec<_> = t.train_samples(0)[..2].to_vec();
    let rec: Vec<_> = t.train_samples(2)[..2].to_vec();
    let vars = t.trainable().to_vec();
    let init: Vec<_> = vars
        .iter()
        .map(|(_, v)| v.as_tensor().copy().unwrap())
        .collect();
    let l0 = t.loss_of(2, &rec, 2).unwrap().to_scalar::<f32>().unwrap();
    // Zero-initialised parts (adapter up-projections, the aggregator's output) pass no gradient
    // to what lies before them at initialisation, so the checks come after at least two steps of
    // each route (each route trains its own adapter).
    let mut steps = 0;
    while steps < 30 {
        let b = &t.state.task_batches;
        if b[0] + b[1] >= 4 && b[2] >= 4 {
            break;
        }
        t.step().unwrap();
        steps += 1;
    }
    assert!(steps < 30, "the task sampler never drew both routes twice");
    // One image-level and one region-level batch: both router rows and both adapters.
    let loss = (t.loss_of(0, &cap, 1).unwrap() + t.loss_of(2, &rec, 2).unwrap()).unwrap();
    let n = lion_core::testing::check_vars_get_grad(&vars, &loss).unwrap();
    assert!(n > 100, "{n}");
    for want in [
        "query_tokens",
        "t5_proj.weight",
        "ln_vision.weight",
        "ln_adapter.weight",
        "adapter_proj.0.weight",
        "soft_prompt_hint",
        "fusion_adapter.blocks.0.attention.self.query.weight",
        "t5_model.encoder.block.0.layer.1.adapter.router_ratio1",
    ] {
        assert!(
            vars.iter().any(|(k, _)| k.as_str() == want),
            "{want} is not trainable"
        );
    }
    assert!(vars.iter().all(|(k, _)| !k.starts_with("visual_encoder.")
        && (!k.starts_with("t5_model.") || k.contains("adapter"))));

    // Frozen weights: after these steps, putting the trainable vars back to their initial values
    // must give the initial loss bit for bit (any change of a frozen tensor would show).
    let still: Vec<&str> = vars
        .iter()
        .zip(&init)
        .filter(|((_, v), i)| lion_core::testing::max_abs_diff(v.as_tensor(), i).unwrap() == 0.0)
        .map(|((k, _), _)| k.as_str())
        .collect();
    assert!(
        still.is_empty(),
        "trainable vars that did not move: {still:?}"
    );
    assert_ne!(
        t.loss_of(2, &rec, 2).unwrap().to_scalar::<f32>().unwrap(),
        l0
    );
    for ((_, v), i) in vars.iter().zip(&init) {
        v.set(i).unwrap();
    }
    let l1 = t.loss_of(2, &rec, 2).unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(l0.to_bits(), l1.to_bits());
}

#[test]
fn dynamic_prompt_projection_trains_in_its_own_lr_group() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = trainer(tmp.path(), "d", 2, |cfg| {
        cfg["prompt"] = "dynamic".into();
        cfg["tag_encoder"] = repo_root()
            .join("models/all-MiniLM-L6-v2")
            .display()
            .to_string()
            .into();
        cfg["prompt_lr_scale"] = 5.0.into();
    });
    let groups: Vec<(String, f64)> = t
        .opt
        .groups()
        .iter()
        .map(|g| (g.name.clone(), g.lr_scale))
        .collect();
    assert!(
        groups.contains(&("dynamic_prompt/decay".to_string(), 5.0)),
        "{groups:?}"
    );
    assert!(
        groups.contains(&("fusion_adapter/decay".to_string(), 2.0)),
        "{groups:?}"
    );
    let proj: Vec<_> = t
        .trainable()
        .iter()
        .filter(|(k, _)| k.starts_with("dynamic_prompt"))
        .map(|(k, v)| (k.clone(), v.as_tensor().copy().unwrap(), v.clone()))
        .collect();
    assert!(!proj.is_empty());
    assert!(t.trainable().iter().all(|(k, _)| k != "soft_prompt_hint"));
    t.step().unwrap();
    t.step().unwrap();
    for (k, before, v) in &proj {
        let d = lion_core::testing::max_abs_diff(before, v.as_tensor()).unwrap();
        assert!(d > 0.0, "{k} did not move");
    }
}

/// `"trainable": "all"` (the demo's backbone pretraining): the ViT and the T5 backbone train and
/// every one of their variables gets a gradient; the T5 adapters stay out.
#[test]
fn trainable_all_trains_the_backbone_and_every_var_gets_a_gradient() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = trainer(tmp.path(), "all", 3, |c| {
        c["trainable"] = serde_json::json!("all")
    });
    let cap: Vec<_> = t.train_samples(0)[..2].to_vec();
    let rec: Vec<_> = t.train_samples(2)[..2].to_vec();
    let vars = t.trainable().to_vec();
    for want in [
        "visual_encoder.patch_embed.proj.weight",
        "visual_encoder.blocks.0.attn.qkv.weight",
        "t5_model.shared.weight",
        "t5_model.encoder.block.0.layer.0.SelfAttention.q.weight",
        "Qformer.bert.encoder.layer.0.attention.self.query.weight",
    ] {
        assert!(
            vars.iter().any(|(k, _)| k == want),
            "{want} is not trainable"
        );
    }
    assert!(vars
        .iter()
        .all(|(k, _)| !k.contains("adapter.") || !k.starts_with("t5_model.")));
    // As in the PEFT test: zero-initialised outputs pass no gradient until they have moved.
    for _ in 0..30 {
        let b = &t.state.task_batches;
        if b[0] + b[1] >= 4 && b[2] >= 4 {
            break;
        }
        t.step().unwrap();
    }
    let loss = (t.loss_of(0, &cap, 1).unwrap() + t.loss_of(2, &rec, 2).unwrap()).unwrap();
    let n = lion_core::testing::check_vars_get_grad(&vars, &loss).unwrap();
    assert_eq!(n, vars.len());
}

#[test]
fn a_from_scratch_vit_starts_with_sincos_positions() {
    let tmp = tempfile::tempdir().unwrap();
    let _t = trainer(tmp.path(), "scratch", 1, |_| {});
    let out = tmp.path().join("scratch");
    let init = lion_core::weights::Checkpoint::open(out.join("init.safetensors")).unwrap();
    let pos = init.get("visual_encoder.pos_embed", &Device::Cpu).unwrap();
    let (_, n, d) = pos.dims3().unwrap();
    let g = (n - 1).isqrt();
    let code = lion_core::eva_vit::sincos_pos_embed(g, d, &Device::Cpu).unwrap();
    let patches = pos.squeeze(0).unwrap().narrow(0, 1, n - 1).unwrap();
    // what is left after taking half the code away is the trunc-normal(0.02) draw
    let rest = (patches - (code * 0.5).unwrap()).unwrap();
    let rest: Vec<f32> = rest.flatten_all().unwrap().to_vec1().unwrap();
    let std = (rest.iter().map(|x| x * x).sum::<f32>() / rest.len() as f32).sqrt();
    assert!(
        std > 0.005 && std < 0.04,
        "pos_embed minus the code: rms {std}"
    );
}

#[test]
fn evaluation_runs_the_current_weights_without_an_autograd_graph() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = trainer(tmp.path(), "e", 3, |_| {});
    for _ in 0..2 {
        t.step().unwrap();
    }
    let rec: Vec<_> = t.train_samples(2)[..2].to_vec();
    let (batch, labels, _) = t.micro_batch(2, &rec, 2).unwrap();
    let eval = t.eval_model().unwrap();
    let loss =
        |m: &lion_core::lion::LionModel| m.forward_train(&batch, &labels, false).unwrap().loss;
    let (a, b) = (loss(t.pipe.model()), loss(&eval));
    assert!(a.track_op(), "the training model should record a graph");
    assert!(!b.track_op(), "the evaluation model recorded a graph");
    let bits = |x: &candle_core::Tensor| x.to_scalar::<f32>().unwrap().to_bits();
    assert_eq!(bits(&a), bits(&b));
    // built once, it still follows training: its weights are the trainable vars' storage
    for _ in 0..2 {
        t.step().unwrap();
    }
    let (a2, b2) = (loss(t.pipe.model()), loss(&eval));
    assert_ne!(bits(&a2), bits(&a), "training did not move the loss");
    assert_eq!(bits(&a2), bits(&b2));
    let gen = lion_core::generate::GenerationConfig {
        num_beams: 1,
        max_new_tokens: 6,
        ..Default::default()
    };
    assert_eq!(
        t.pipe.model().generate(&batch, &gen).unwrap(),
        eval.generate(&batch, &gen).unwrap()
    );
}
