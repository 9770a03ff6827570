//! `lion demo`'s tagging, tag-encoder and evaluation stages, each reused only when its stage
//! record matches its inputs.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::baselines::write_baseline_predictions;
use crate::files::ImageTags;
use crate::report::{per_item, RunScores};
use crate::stage::{mark_done, reuse_or_clear, StageInputs};
use lion_core::generate::GenerationConfig;
use lion_core::model_spec::ModelSpec;
use lion_core::weights::LoadMode;
use lion_data::world::WorldConfig;
use lion_eval::{Benchmark, EvalJob, ModelRun, PredictOptions};
use lion_train::triplet_trainer::{FineTune, TripletConfig};

use super::{read, Args};

/// The evaluation of a task on the world's test split.
fn test_job(world: &Path, task: &str) -> EvalJob {
    match task {
        "caption" => EvalJob::new(Benchmark::Caption, world.join("captions_test.json")),
        "vqa" => EvalJob {
            questions: Some(world.join("questions_test.json")),
            ..EvalJob::new(Benchmark::Vqa, world.join("annotations_test.json"))
        },
        _ => EvalJob {
            instances: Some(world.join("instances.json")),
            split: Some("test".into()),
            ..EvalJob::new(Benchmark::Rec, world.join("refs.json"))
        },
    }
}

/// Scores a model folder on the test split's three tasks (`lion eval --model`) into `dir`,
/// or reuses `dir` when its record shows the same model, tags, world and settings.
pub(super) fn eval_model(
    args: &Args<'_>,
    stage: &str,
    world: &Path,
    tags: &Path,
    model: &Path,
    dir: &Path,
) -> Result<RunScores> {
    let inputs = StageInputs::new(
        json!({"num_beams": args.num_beams, "batch_size": 32, "max_new_tokens": 40,
               "repetition_penalty": 1.0}),
        &[
            ("model", &model.join("model.safetensors")),
            ("model manifest", &model.join("lion.json")),
            ("tags", tags),
            ("world", &world.join("world.json")),
        ],
    )?;
    let reuse = reuse_or_clear(stage, dir, &inputs)?;
    std::fs::create_dir_all(dir)?;
    let mut out = RunScores::new();
    // Loaded at the first task that is not reused, as `lion eval --model` loads it (linear
    // weights in the CPU's automatic dtype).
    let mut pipe = None;
    let gen = GenerationConfig {
        num_beams: args.num_beams,
        max_new_tokens: 40,
        repetition_penalty: 1.0,
        ..GenerationConfig::default()
    };
    for task in ["caption", "vqa", "rec"] {
        let scores = dir.join(format!("{task}_scores.json"));
        if !reuse {
            let job = EvalJob {
                images: Some(world.to_path_buf()),
                tags: Some(tags.to_path_buf()),
                ..test_job(world, task)
            };
            let items = job.items()?;
            let pipe = match &mut pipe {
                Some(p) => p,
                None => pipe.insert(
                    ModelSpec::from_folder(model, LoadMode::Strict)?
                        .with_dtype(lion_core::cpu::kernels().auto_dtype)
                        .build()
                        .with_context(|| format!("cannot load {}", model.display()))?,
                ),
            };
            let bar = args
                .progress
                .bar(&format!("predicting ({task})"), items.len() as u64);
            let opts = PredictOptions {
                progress: Some(lion_train::progress::callback(bar)),
                ..PredictOptions::new(32, gen.clone())
            };
            let pred = dir.join(format!("{task}_pred.json"));
            match lion_eval::evaluate_model(&job, &items, pipe, opts, &pred)? {
                ModelRun::Scored { evaluation, .. } => evaluation.write(&scores)?,
                ModelRun::Stopped { .. } => unreachable!("no max_new is set"),
            }
        }
        out.extend(per_item(&scores, task)?);
    }
    if !reuse {
        mark_done(dir, &inputs)?;
    }
    Ok(out)
}

/// Scores the trivial baselines ([`write_baseline_predictions`]) on the test split.
pub(super) fn eval_baselines(world: &Path, dir: &Path) -> Result<RunScores> {
    write_baseline_predictions(world, dir)?;
    let mut out = RunScores::new();
    for task in ["caption", "vqa", "rec"] {
        let scores = dir.join(format!("{task}_scores.json"));
        let pred = dir.join(format!("{task}_pred.json"));
        lion_eval::score(&test_job(world, task), &pred)?.write(&scores)?;
        out.extend(per_item(&scores, task)?);
    }
    Ok(out)
}
/// Stage 3: triplet fine-tuning of the tag encoder, or its reuse.
pub(super) fn train_encoder(args: &Args<'_>, images: &Path, encoder: &Path) -> Result<()> {
    let inputs = StageInputs::new(
        json!({"seed": args.seed, "epochs": args.epochs, "batch_size": 16, "val_fraction": 0.2,
               "lr": args.tagenc_lr,
               "eval_every": args.tagenc_eval_every, "patience": args.tagenc_patience}),
        &[
            ("images", images),
            (
                "sentence model",
                &args.sentence_model.join("model.safetensors"),
            ),
            (
                "sentence tokenizer",
                &args.sentence_model.join("tokenizer.json"),
            ),
        ],
    )?;
    if reuse_or_clear("tag encoder", encoder, &inputs)? {
        return Ok(());
    }
    // the flags `lion train-tag-encoder` would get, the rest at its defaults
    let config = TripletConfig {
        epochs: args.epochs,
        batch_size: 16,
        lr: args.tagenc_lr,
        weight_decay: 0.01,
        margin: 1.0,
        p: 2.0,
        val_fraction: 0.2,
        seed: args.seed,
        dropout: true,
        eval_every: args.tagenc_eval_every,
        patience: args.tagenc_patience,
        ..Default::default()
    };
    lion_train::progress::fine_tune_showing(
        &FineTune {
            model: &args.sentence_model,
            encoder: None,
            data: images,
            chosen: None,
            out: encoder,
            config,
        },
        &candle_core::Device::Cpu,
        args.progress,
    )?;
    Ok(mark_done(encoder, &inputs)?)
}

/// The tagger recipe of `--train-tagger` / `--from-scratch` (and of the shipped
/// `assets/shapes-tagger`): `lion train-tagger --convnet`'s model (RAM's tagging head over a
/// small BatchNorm CNN in place of the Swin, 0.44 M parameters: a Swin trained from scratch on
/// these images does not learn the shapes, assets/shapes-tagger/README.md), batch 32 (the
/// BatchNorm's statistics) and AdamW at 2e-3, on a world of its own seed, with binary
/// cross-entropy instead of RAM's asymmetric loss: at the same F1, RAM's loss (made for 4585
/// tags, most of them absent) left the scores far from probabilities (ECE 0.31 on the test
/// split), and the dynamic prompt reads the scores.
pub fn tagger_recipe(seed: u64, epochs: usize) -> lion_train::tagger_trainer::TaggerTrainOptions {
    lion_train::tagger_trainer::TaggerTrainOptions {
        epochs,
        seed,
        batch_size: 32,
        lr: 2e-3,
        gamma_neg: 0.0,
        clip: 0.0,
        convnet: true,
        // recorded in the config; the CNN has no patch embedding
        patch_norm: false,
        ..Default::default()
    }
}

/// Trains the tagger on a world of its own (seed SEED + 2000, `tagger_images` training images;
/// RAM's stand-in is pretrained on other images than the ones it tags), or reuses a finished
/// one, into `out/tagger-pretrained` (copy it to `assets/shapes-tagger` to ship it).
fn pretrain_tagger(args: &Args<'_>, out: &Path) -> Result<PathBuf> {
    use lion_train::tagger_trainer::{train_tagger_with, TaggerEvent};
    let world = out.join("tagger-world");
    let held_out = (args.tagger_images / 20).clamp(4, 300);
    super::generate_world(
        &world,
        WorldConfig {
            seed: args.seed + 2000,
            train: args.tagger_images,
            val: held_out,
            test: held_out,
            size: 96,
            ..WorldConfig::default()
        },
        args.progress,
    )?;
    let dir = out.join("tagger-pretrained");
    let opts = tagger_recipe(args.seed, args.tagger_epochs);
    let inputs = StageInputs::new(
        json!({"options": opts}),
        &[("world", &world.join("world.json"))],
    )?;
    if reuse_or_clear("tagger pretraining", &dir, &inputs)? {
        return Ok(dir);
    }
    let mut pb: Option<Box<dyn lion_train::progress::Bar>> = None;
    let mut step = 0u64;
    train_tagger_with(&world, &dir, &opts, |e| match e {
        TaggerEvent::Start {
            steps_per_epoch,
            epochs,
        } => {
            pb = Some(
                args.progress
                    .bar("tagger", (steps_per_epoch * epochs) as u64),
            )
        }
        TaggerEvent::Step { loss, .. } => {
            if let Some(pb) = &pb {
                step += 1;
                pb.set_position(step);
                pb.set_message(format!("loss {loss:.4}"));
            }
        }
        TaggerEvent::Epoch(m) => tracing::info!(
            "tagger epoch {}: val F1 {:.3} (P {:.3}, R {:.3})",
            m.epoch,
            m.val_f1,
            m.val_precision,
            m.val_recall
        ),
        _ => {}
    })?;
    if let Some(pb) = pb {
        pb.finish();
    }
    mark_done(&dir, &inputs)?;
    Ok(dir)
}

/// Stage 2: tags every image of the world with scores, with the shipped pretrained tagger
/// (`--tagger`) or one trained first ([`pretrain_tagger`]), into `out/tagger` (or reuses that
/// when made from the same world and tagger), and returns every image's scored tags (by path
/// relative to the world) and the test split's scores and calibration.
pub(super) fn tag_world(args: &Args<'_>, world: &Path, out: &Path) -> Result<(ImageTags, Value)> {
    use lion_train::tagger_trainer::{tag_world_with, TaggerFiles};
    let (tagger, made) = if args.from_scratch || args.train_tagger {
        (pretrain_tagger(args, out)?, "trained in this run")
    } else {
        (std::path::absolute(&args.tagger)?, "pretrained, shipped")
    };
    let model = TaggerFiles::new(&tagger);
    if !model.config().exists() {
        bail!(
            "no tagger at {} (run from the repository root, give --tagger, or train one with \
             --train-tagger)",
            tagger.display()
        );
    }
    let dir = out.join("tagger");
    let files = TaggerFiles::new(&dir);
    let inputs = StageInputs::new(
        json!({}),
        &[
            ("world", &world.join("world.json")),
            ("tagger weights", &model.weights()),
            ("tagger config", &model.config()),
            ("tagger tag list", &model.tag_list()),
            ("tagger thresholds", &model.thresholds()),
        ],
    )?;
    let report = if reuse_or_clear("tagger", &dir, &inputs)? {
        read(&files.eval())?
    } else {
        let r = tag_world_with(&tagger, world, &dir, |_| {})?;
        mark_done(&dir, &inputs)?;
        serde_json::to_value(&r)?
    };
    let mut tags = ImageTags::new();
    for split in ["train", "val", "test"] {
        let path = files.tags_jsonl(split);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let v: Value = serde_json::from_str(line)
                .with_context(|| format!("{}: line {}: bad JSON", path.display(), i + 1))?;
            let file = v["file_name"]
                .as_str()
                .with_context(|| format!("{}: line {}: no file_name", path.display(), i + 1))?;
            let scored = v["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| Some((t["tag"].as_str()?.to_string(), t["score"].as_f64()? as f32)))
                .collect();
            tags.insert(file.to_string(), scored);
        }
    }
    let training = read(&model.eval()).ok();
    let summary = json!({
        "tagger": made,
        "test": report["test"],
        "test_by_group": report["test_groups"],
        "calibration": report["calibration"],
        "thresholds_tuned_on": "the tagger's own validation split (micro F1)",
        "epochs": training.as_ref().map(|t| t["epochs"].clone()),
        "train_images": training.as_ref().map(|t| t["train_images"].clone()),
    });
    Ok((tags, summary))
}
