//! `lion demo`'s model folders and training runs: the manifests, the PEFT runs of each system
//! and seed (with their stage records), and the optional backbone pretraining.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::stage::{mark_done, mark_started, reuse_resume_or_clear, StageInputs, Start};
use crate::systems::SystemSpec;
use lion_core::pipeline::{ConfigRef, Manifest, WeightEntry};
use lion_data::world::WorldConfig;
use lion_train::progress::Progress;

use super::{read, s, write_json, Args};

/// A model folder's manifest: the backbone's config, tokenizers and weights with the given
/// prompt and tag encoder, every path absolute.
fn manifest(backbone: &Path, prompt: &str, tag_encoder: &Path) -> Result<Manifest> {
    let b = Manifest::read(&backbone.join("lion.json"))?;
    let abs = |p: &Path| -> Result<PathBuf> { Ok(std::path::absolute(backbone.join(p))?) };
    let mut weights = vec![];
    for w in &b.weights {
        weights.push(WeightEntry {
            file: abs(&w.file)?,
            prefix: w.prefix.clone(),
        });
    }
    Ok(Manifest {
        config: b.config,
        prompt: lion_train::peft::parse_prompt(prompt)?,
        weights,
        t5_tokenizer: abs(&b.t5_tokenizer)?,
        qformer_tokenizer: b.qformer_tokenizer.as_deref().map(abs).transpose()?,
        tag_encoder: Some(std::path::absolute(tag_encoder)?),
        quantize: b.quantize,
    })
}

/// Writes a manifest as `DIR/lion.json`.
fn write_manifest(dir: &Path, m: &Manifest) -> Result<()> {
    write_json(&dir.join("lion.json"), &serde_json::to_value(m)?)
}

/// A trained model as a folder of its own: the backbone's weights (less its soft prompt, which
/// the trained prompt replaces) overwritten by the trained tensors, in one `model.safetensors`.
fn write_trained_model(
    backbone: &Path,
    prompt: &str,
    trainable: &Path,
    encoder: &Path,
    dest: &Path,
) -> Result<()> {
    use lion_core::weights::{save_safetensors, Checkpoint};
    let dev = candle_core::Device::Cpu;
    let mut m = manifest(backbone, prompt, encoder)?;
    let mut all = HashMap::new();
    for w in &m.weights {
        for c in lion_core::pipeline::open_weights(&w.file, &w.prefix)? {
            all.extend(c.load_all(&dev)?);
        }
    }
    all.retain(|k: &String, _| !k.starts_with("soft_prompt") && !k.starts_with("dynamic_prompt"));
    all.extend(Checkpoint::open(trainable)?.load_all(&dev)?);
    std::fs::create_dir_all(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    save_safetensors(&all, dest.join("model.safetensors"))?;
    m.weights = vec![WeightEntry {
        file: "model.safetensors".into(),
        prefix: String::new(),
    }];
    write_manifest(dest, &m)
}

/// The `lion train` config of one run over the world's three tasks.
#[allow(clippy::too_many_arguments)]
fn train_config(
    start: Value,
    data: &Path,
    image_root: &Path,
    out: &Path,
    steps: u64,
    batch: usize,
    lr: f64,
    seed: u64,
) -> Value {
    let task = |kind: &str, ratio: f64| {
        json!({"kind": kind, "train": s(&data.join(format!("lion_{kind}_train.json"))),
               "val": s(&data.join(format!("lion_{kind}_val.json"))), "ratio": ratio})
    };
    let mut c = json!({
        "image_root": s(image_root),
        "tasks": [task("caption", 1.0), task("vqa", 1.0), task("rec", 1.5)],
        "schedule": {"init_lr": lr, "min_lr": lr / 20.0, "warmup_lr": lr / 20.0,
                     "warmup_steps": (steps / 20).max(1).min(steps.saturating_sub(1))},
        "batch_size": batch, "steps": steps, "eval_every": 0, "checkpoint_every": steps,
        "augment": false,
        "keep_checkpoints": 1, "output_dir": s(out), "seed": seed,
    });
    for (k, v) in start.as_object().expect("an object") {
        c[k] = v.clone();
    }
    c
}

/// Runs `lion train` on a config written to `dir/train.json`; returns the final checkpoint. A run
/// folder that already holds a checkpoint (kept only by a stage that
/// [`reuse_resume_or_clear`] resumed, so made from the same config) is continued from it, as
/// `lion train --resume` does: bit for bit the run it would have been uninterrupted.
fn run_training(dir: &Path, cfg: &Value, progress: &dyn Progress) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("train.json");
    let run_dir = PathBuf::from(cfg["output_dir"].as_str().expect("set"));
    let resume = match lion_train::checkpoint::latest(&run_dir)? {
        Some(done) => {
            let st = read(&done.join(lion_train::checkpoint::STATE))?;
            if st["step"].as_u64() == cfg["steps"].as_u64() {
                tracing::info!("{} is complete: reused", run_dir.display());
                return Ok(done);
            }
            tracing::info!(
                "{}: continuing from step {} of {}",
                run_dir.display(),
                st["step"],
                cfg["steps"]
            );
            true
        }
        None => false,
    };
    write_json(&path, cfg)?;
    let cfg = lion_train::peft::PeftConfig::read(&path)?;
    lion_train::progress::train_showing(cfg, resume, &candle_core::Device::Cpu, progress)?;
    lion_train::checkpoint::latest(&run_dir)?.context("training left no checkpoint")
}

/// A backbone leg's checkpoints: every quarter of the run (at most every 500 steps), the last
/// two kept, so that an interrupted leg resumes close to where it stopped.
fn checkpoint_often(cfg: &mut Value, steps: u64) {
    cfg["checkpoint_every"] = json!((steps / 4).clamp(1, 500));
    cfg["keep_checkpoints"] = json!(2);
}

/// One leg of the backbone's pretraining after its first: REC alone on the images that hold
/// `objects` objects (to choose among that many), or all three tasks with caption : VQA : REC =
/// 1 : 1 : 8; AdamW from `lr` (warmup from 1e-4 over `warmup` steps) cosine to `lr / 10`.
struct Leg {
    name: &'static str,
    objects: Option<usize>,
    steps: u64,
    lr: f64,
    warmup: u64,
    /// Added to the demo's seed.
    seed: u64,
}

/// The legs that made the shipped backbone localise and choose among objects, in order
/// (assets/shapes-backbone/README.md, items 7-16: `phase7a` ... `phase11b`, the same steps,
/// schedules and seeds): one object, then two, three and four (twice), each followed by a mixed
/// leg whose falling lr turns the REC leg's gain into accuracy on every task.
const LEGS: [Leg; 10] = [
    Leg {
        name: "rec-1",
        objects: Some(1),
        steps: 1000,
        lr: 5e-4,
        warmup: 100,
        seed: 7,
    },
    Leg {
        name: "mixed-1",
        objects: None,
        steps: 4500,
        lr: 5e-4,
        warmup: 100,
        seed: 8,
    },
    Leg {
        name: "rec-2",
        objects: Some(2),
        steps: 1500,
        lr: 3e-4,
        warmup: 50,
        seed: 81,
    },
    Leg {
        name: "mixed-2",
        objects: None,
        steps: 6000,
        lr: 3e-4,
        warmup: 50,
        seed: 82,
    },
    Leg {
        name: "rec-3",
        objects: Some(3),
        steps: 1500,
        lr: 3e-4,
        warmup: 50,
        seed: 91,
    },
    Leg {
        name: "mixed-3",
        objects: None,
        steps: 6000,
        lr: 3e-4,
        warmup: 50,
        seed: 92,
    },
    Leg {
        name: "rec-4",
        objects: Some(4),
        steps: 1500,
        lr: 3e-4,
        warmup: 50,
        seed: 101,
    },
    Leg {
        name: "mixed-4",
        objects: None,
        steps: 6000,
        lr: 3e-4,
        warmup: 50,
        seed: 102,
    },
    Leg {
        name: "rec-4b",
        objects: Some(4),
        steps: 1500,
        lr: 3e-4,
        warmup: 50,
        seed: 111,
    },
    Leg {
        name: "mixed-4b",
        objects: None,
        steps: 6000,
        lr: 3e-4,
        warmup: 50,
        seed: 112,
    },
];

/// A leg's steps at `--pretrain-scale` (at least one).
fn leg_steps(steps: u64, scale: f64) -> u64 {
    ((steps as f64 * scale).round() as u64).max(1)
}

/// Pretrains the backbone on a world of its own seed and writes it as a model folder: a first
/// leg on all three tasks from random weights, then the curriculum [`LEGS`], each continuing
/// the folder the leg before exported. Each leg is a stage of its own (`OUT/pretrain/<leg>`),
/// reused when made from the same settings and starting weights.
pub(super) fn pretrain(args: &Args<'_>, out: &Path) -> Result<PathBuf> {
    let world = out.join("pretrain-world");
    let seed = args.seed + 1000;
    super::generate_world(
        &world,
        WorldConfig {
            seed,
            train: args.pretrain_images,
            val: 64,
            test: 64,
            size: 96,
            ..WorldConfig::default()
        },
        args.progress,
    )?;
    let root = out.join("pretrain");
    let qtok = std::path::absolute(args.sentence_model.join("tokenizer.json"))?;
    let start = json!({"preset": "shapes", "trainable": "all", "prompt": "static",
                       "qformer_tokenizer": s(&qtok)});
    let dir = root.join("base");
    let cfg = train_config(
        start,
        &world,
        &world,
        &dir.join("run"),
        args.pretrain_steps,
        32,
        2e-3,
        seed,
    );
    // Localisation is the slowest skill to learn from scratch: REC gets 3 of 5 batches. The
    // aggregator's fusion blocks stay at their initialisation (per-token LayerNorms) while the
    // backbone learns: trained from scratch they learnt to average the patches' places away
    // before anything used them, and REC never started (assets/shapes-backbone/README.md). The
    // demo's PEFT stage trains them.
    let mut cfg = cfg;
    cfg["tasks"][2]["ratio"] = json!(3.0);
    cfg["boost_lr_scale"] = json!(0.0);
    checkpoint_often(&mut cfg, args.pretrain_steps);
    let world_file = world.join("world.json");
    let mut prev = dir.join("backbone");
    let inputs = StageInputs::new(json!({"train": cfg}), &[("world", &world_file)])?;
    if reuse_resume_or_clear("backbone pretraining, first leg", &dir, &inputs)? != Start::Reuse {
        mark_started(&dir, &inputs)?;
        let ckpt = run_training(&dir, &cfg, args.progress)?;
        export_backbone(
            &dir.join("run").join("init.safetensors"),
            &ckpt,
            &qtok,
            &prev,
        )?;
        mark_done(&dir, &inputs)?;
    }
    for (k, leg) in LEGS.iter().enumerate() {
        let dir = root.join(leg.name);
        let steps = leg_steps(leg.steps, args.pretrain_scale);
        tracing::info!(
            "backbone pretraining, leg {}/{} ({}): {steps} steps",
            k + 2,
            LEGS.len() + 1,
            leg.name
        );
        let start = json!({
            "model_dir": s(&prev), "trainable": "all", "prompt": "static",
            "qformer_tokenizer": s(&qtok), "boost_lr_scale": 0.0,
            "schedule": {"init_lr": leg.lr, "min_lr": leg.lr / 10.0, "warmup_lr": 1e-4,
                         "warmup_steps": leg.warmup.min(steps - 1)},
        });
        let mut cfg = train_config(
            start,
            &world,
            &world,
            &dir.join("run"),
            steps,
            32,
            leg.lr,
            args.seed + leg.seed,
        );
        match leg.objects {
            // REC alone, on the subset written below
            Some(_) => {
                let f = |split: &str| s(&dir.join(format!("lion_rec_{split}.json")));
                cfg["tasks"] = json!([{"kind": "rec", "train": f("train"), "val": f("val"),
                                       "ratio": 1.0}]);
            }
            None => cfg["tasks"][2]["ratio"] = json!(8.0),
        }
        checkpoint_often(&mut cfg, steps);
        let weights = prev.join("backbone.safetensors");
        let inputs = StageInputs::new(
            json!({"train": cfg, "objects": leg.objects}),
            &[("world", &world_file), ("starting weights", &weights)],
        )?;
        let dest = dir.join("backbone");
        let stage = format!("backbone pretraining, {}", leg.name);
        if reuse_resume_or_clear(&stage, &dir, &inputs)? != Start::Reuse {
            mark_started(&dir, &inputs)?;
            if let Some(n) = leg.objects {
                for split in ["train", "val"] {
                    let f = dir.join(format!("lion_rec_{split}.json"));
                    let kept = crate::files::rec_subset(&world, split, n, &f)?;
                    tracing::info!("{}: {kept} REC samples on {n}-object images", f.display());
                }
            }
            let ckpt = run_training(&dir, &cfg, args.progress)?;
            export_backbone(&weights, &ckpt, &qtok, &dest)?;
            mark_done(&dir, &inputs)?;
        }
        prev = dest;
    }
    // the folder to ship, where `--from-scratch` has always written it
    let ship = out.join("backbone");
    std::fs::create_dir_all(&ship)?;
    for f in std::fs::read_dir(&prev)? {
        let f = f?.path();
        let to = ship.join(f.file_name().expect("a file"));
        let bytes = std::fs::read(&f).with_context(|| format!("cannot read {}", f.display()))?;
        lion_core::util::write_atomic(&to, &bytes)?;
    }
    Ok(ship)
}

/// The starting weights (a run's `init.safetensors`, or the backbone a leg continued)
/// overwritten by the trained ones, as one file plus its manifest.
fn export_backbone(init: &Path, ckpt: &Path, qformer_tokenizer: &Path, dest: &Path) -> Result<()> {
    use lion_core::weights::{save_safetensors, Checkpoint};
    let dev = candle_core::Device::Cpu;
    let mut all = Checkpoint::open(init)?.load_all(&dev)?;
    let trained = Checkpoint::open(ckpt.join(lion_train::checkpoint::TRAINABLE))?.load_all(&dev)?;
    all.extend(trained);
    std::fs::create_dir_all(dest)?;
    save_safetensors(&all, dest.join("backbone.safetensors"))?;
    // The `shapes` preset's tokenizer (bundled in lion-core) and the Q-Former's, so the folder
    // stands alone.
    std::fs::write(
        dest.join("t5-tokenizer.json"),
        lion_core::text::SHAPES_TOKENIZER_JSON,
    )?;
    std::fs::copy(qformer_tokenizer, dest.join("qformer-tokenizer.json"))
        .with_context(|| format!("cannot copy {}", qformer_tokenizer.display()))?;
    write_manifest(
        dest,
        &Manifest {
            config: ConfigRef::Preset("shapes".into()),
            prompt: Some(lion_core::prompt::PromptKind::Static),
            weights: vec![WeightEntry {
                file: "backbone.safetensors".into(),
                prefix: String::new(),
            }],
            t5_tokenizer: "t5-tokenizer.json".into(),
            qformer_tokenizer: Some("qformer-tokenizer.json".into()),
            tag_encoder: None,
            quantize: None,
        },
    )
}

/// The backbone folder's files (manifest and weights), for stage records.
fn backbone_files(backbone: &Path) -> Result<Vec<(String, PathBuf)>> {
    let b = Manifest::read(&backbone.join("lion.json"))?;
    let mut v = vec![("backbone manifest".to_string(), backbone.join("lion.json"))];
    for w in &b.weights {
        v.push((
            format!("backbone {}", w.file.display()),
            backbone.join(&w.file),
        ));
    }
    Ok(v)
}

/// Shared inputs of every PEFT run.
pub(super) struct PeftInputs<'a> {
    pub out: &'a Path,
    pub world: &'a Path,
    pub backbone: &'a Path,
    pub encoder: &'a Path,
}

/// Stage 4 for one system and seed: trains it (or reuses a run made from the same inputs) and
/// writes its model folder. Returns (model folder, run folder).
pub(super) fn peft_run(
    args: &Args<'_>,
    io: &PeftInputs,
    spec: &SystemSpec,
    seed: u64,
) -> Result<(PathBuf, PathBuf)> {
    let dir = io
        .out
        .join("lion")
        .join(spec.name)
        .join(format!("seed-{seed}"));
    let (start_dir, run_dir, model) = (dir.join("start"), dir.join("run"), dir.join("model"));
    let data = io.out.join(spec.tags.files().0);
    let cfg = train_config(
        json!({"model_dir": s(&start_dir), "lenient": true}),
        &data,
        io.world,
        &run_dir,
        args.steps,
        args.batch_size,
        1e-3,
        seed,
    );
    let mut files = backbone_files(io.backbone)?;
    for task in ["caption", "vqa", "rec"] {
        for split in ["train", "val"] {
            let f = format!("lion_{task}_{split}.json");
            files.push((f.clone(), data.join(f)));
        }
    }
    if spec.prompt != "static" && spec.prompt != "none" {
        files.push(("tag encoder".into(), io.encoder.join("model.safetensors")));
    }
    let named: Vec<(&str, &Path)> = files
        .iter()
        .map(|(n, p)| (n.as_str(), p.as_path()))
        .collect();
    let inputs = StageInputs::new(json!({"prompt": spec.prompt, "train": cfg}), &named)?;
    let stage = format!("LION {} seed {seed}", spec.name);
    if reuse_resume_or_clear(&stage, &dir, &inputs)? != Start::Reuse {
        mark_started(&dir, &inputs)?;
        std::fs::create_dir_all(&start_dir)?;
        write_manifest(&start_dir, &manifest(io.backbone, spec.prompt, io.encoder)?)?;
        let ckpt = run_training(&dir, &cfg, args.progress)?;
        write_trained_model(
            io.backbone,
            spec.prompt,
            &ckpt.join(lion_train::checkpoint::TRAINABLE),
            io.encoder,
            &model,
        )?;
        mark_done(&dir, &inputs)?;
    }
    Ok((model, run_dir))
}
