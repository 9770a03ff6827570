//! `lion demo`'s model folders and training runs: the manifests, the PEFT runs of each system
//! and seed (with their stage records), and the optional backbone pretraining.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::stage::{mark_done, reuse_or_clear, StageInputs};
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

/// Runs `lion train` on a config written to `dir/train.json`; returns the final checkpoint.
fn run_training(dir: &Path, cfg: &Value, progress: &dyn Progress) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("train.json");
    let run_dir = PathBuf::from(cfg["output_dir"].as_str().expect("set"));
    if let Some(done) = lion_train::checkpoint::latest(&run_dir)? {
        let st = read(&done.join(lion_train::checkpoint::STATE))?;
        if st["step"].as_u64() == cfg["steps"].as_u64() {
            tracing::info!("{} is complete: reused", run_dir.display());
            return Ok(done);
        }
        bail!(
            "{} holds a run at step {} but this demo asks for {} steps: continue it with \
             `lion train --config {} --resume` (same settings), or delete it",
            run_dir.display(),
            st["step"],
            cfg["steps"],
            path.display()
        );
    }
    write_json(&path, cfg)?;
    let cfg = lion_train::peft::PeftConfig::read(&path)?;
    lion_train::progress::train_showing(cfg, false, &candle_core::Device::Cpu, progress)?;
    lion_train::checkpoint::latest(&run_dir)?.context("training left no checkpoint")
}

/// Pretrains the backbone on a world of its own seed and writes it as a model folder.
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
    let run = out.join("pretrain");
    let qtok = args.sentence_model.join("tokenizer.json");
    let start = json!({"preset": "shapes", "trainable": "all", "prompt": "static",
                       "qformer_tokenizer": s(&std::path::absolute(&qtok)?)});
    let cfg = train_config(
        start,
        &world,
        &world,
        &run,
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
    let ckpt = run_training(&run, &cfg, args.progress)?;
    let dest = out.join("backbone");
    export_backbone(&run.join("init.safetensors"), &ckpt, &qtok, &dest)?;
    Ok(dest)
}

/// The initial weights overwritten by the trained ones, as one file plus its manifest.
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
    if !reuse_or_clear(&stage, &dir, &inputs)? {
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
