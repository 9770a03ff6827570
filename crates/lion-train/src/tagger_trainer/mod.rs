//! Training the tiny RAM-architecture tagger from scratch on a ShapesWorld (`lion train-tagger`).
//!
//! The model is [`lion_core::tagger::Ram`] (Swin + image projection + label queries + the
//! cross-attention tagging head + `fc`) at a small size that suits the world's images
//! ([`world_tagger_config`]), over the world's own tag vocabulary (`tag_list.txt`). Training:
//! - loss: RAM's tagging loss, [`AsymmetricLoss::ram`] (summed over tags and images, as upstream);
//! - AdamW ([`crate::optim::AdamW`]) with a linear warmup and a per-step cosine ([`Schedule`]);
//! - every variable is initialised from the seed ([`SeededInit`]), each epoch visits the training
//!   images in a seeded shuffle, and a seeded half of them is mirrored left-right (no tag depends
//!   on left / right), so a run is the same on every machine with the same thread count;
//! - no dropout and no drop-path (candle's CPU random numbers cannot be seeded; the model runs
//!   its forward with `train = false`, gradients flow as usual).
//!
//! After training, thresholds are chosen on the validation split: first one global threshold
//! (the best micro F1 on a 0.01 grid), then per class, for the classes with at least
//! [`MIN_VAL_POSITIVES`] validation positives, the threshold that most raises the micro F1 with
//! the others fixed ([`tune_class_thresholds`]); rarer classes keep the global one. The model folder ([`TaggerFiles`]) is what
//! `lion tag --model DIR` reads: `model.safetensors` (RAM key names), `config.json`
//! ([`RamConfig`]), `tag_list.txt` and `tag_list_threshold.txt` (as RAM's `ram_tag_list*.txt`).
//! The test split is scored (micro precision / recall / F1, overall and per tag group) into
//! `eval_test.json`, and every image of every split is tagged into `tags_{split}.jsonl`
//! (`{"image": id, "file_name": ..., "tags": [{"tag": ..., "score": ...}]}`, kept tags in tag-list
//! order). Every file is written atomically.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, ParamsAdamW, VarBuilder, VarMap};
use lion_core::swin::SwinConfig;
use lion_core::tagger::{
    load_image, select_tags, Ram, RamConfig, TagOrder, TagSelection, TagVocab, Tagger,
    TaggingHeadConfig,
};
use lion_core::util::write_atomic;
use lion_core::{input_err, Error, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::asymmetric_loss::AsymmetricLoss;
use crate::optim::AdamW;
use crate::records::append_jsonl_atomic;
use crate::rng::SplitMix64;
use crate::schedule::Schedule;

mod data;
mod init;
mod tagging;
mod thresholds;

pub use data::*;
pub use init::*;
pub use tagging::*;
pub use thresholds::*;
/// Hyper-parameters and model size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaggerTrainOptions {
    pub epochs: usize,
    pub batch_size: usize,
    /// Peak learning rate (after warmup); the cosine ends at `lr / 100`.
    pub lr: f64,
    pub weight_decay: f64,
    /// Warmup steps as a fraction of all steps.
    pub warmup_fraction: f64,
    pub seed: u64,
    /// Model input size in pixels (a multiple of 16; images are resized to it).
    pub img_size: usize,
    /// Swin patch size (4 as RAM, or 8: four times fewer tokens).
    pub patch_size: usize,
    /// Swin width of the first stage (doubles per stage; even).
    pub embed_dim: usize,
    /// Mirror a seeded half of each batch left-right.
    pub hflip: bool,
    /// The loss's focusing exponent on negatives (RAM's ASL: 7; 0 with `clip` 0 is binary
    /// cross-entropy).
    #[serde(default = "ram_gamma_neg")]
    pub gamma_neg: f64,
    /// The loss's probability margin on negatives (RAM's ASL: 0.05).
    #[serde(default = "ram_clip")]
    pub clip: f64,
    /// Images per forward pass when tagging.
    pub eval_batch_size: usize,
    /// The Swin's LayerNorm after the patch embedding (`SwinConfig::patch_norm`; RAM: on).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub patch_norm: bool,
    /// A convolutional stem instead of the patchify (`SwinConfig::conv_stem`; RAM: off).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub conv_stem: bool,
    /// The visual encoder is a small BatchNorm CNN ([`lion_core::convnet`], widths 16-32-64-64)
    /// instead of the Swin (`patch_size`, `embed_dim`, `patch_norm` and `conv_stem` unused).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub convnet: bool,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

impl Default for TaggerTrainOptions {
    fn default() -> Self {
        Self {
            epochs: 20,
            batch_size: 8,
            lr: 2e-3,
            weight_decay: 0.05,
            warmup_fraction: 0.05,
            seed: 0,
            img_size: 96,
            patch_size: 4,
            embed_dim: 16,
            hflip: true,
            gamma_neg: ram_gamma_neg(),
            clip: ram_clip(),
            eval_batch_size: 64,
            patch_norm: true,
            conv_stem: false,
            convnet: false,
        }
    }
}

fn ram_gamma_neg() -> f64 {
    AsymmetricLoss::ram().gamma_neg
}

fn ram_clip() -> f64 {
    AsymmetricLoss::ram().clip
}

impl TaggerTrainOptions {
    /// The training loss: RAM's asymmetric loss with these options' `gamma_neg` and `clip`.
    pub fn loss(&self) -> AsymmetricLoss {
        AsymmetricLoss {
            gamma_neg: self.gamma_neg,
            clip: self.clip,
            ..AsymmetricLoss::ram()
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.gamma_neg.is_finite() && self.gamma_neg >= 0.0) {
            input_err!("gamma_neg must be >= 0, got {}", self.gamma_neg);
        }
        if !(0.0..1.0).contains(&self.clip) {
            input_err!("clip must be in [0, 1), got {}", self.clip);
        }
        if self.batch_size == 0 || self.eval_batch_size == 0 {
            input_err!("batch sizes must be at least 1");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            input_err!("learning rate must be a positive number, got {}", self.lr);
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            input_err!("weight decay must be >= 0, got {}", self.weight_decay);
        }
        if !(0.0..1.0).contains(&self.warmup_fraction) {
            input_err!(
                "warmup fraction must be in [0, 1), got {}",
                self.warmup_fraction
            );
        }
        if self.img_size < 32 || self.img_size % 16 != 0 {
            input_err!(
                "image size must be a multiple of 16 and at least 32, got {}",
                self.img_size
            );
        }
        if !(self.patch_size == 4 || self.patch_size == 8) {
            input_err!("patch size must be 4 or 8, got {}", self.patch_size);
        }
        if self.embed_dim < 2 || self.embed_dim % 2 != 0 {
            input_err!(
                "embed dim must be even and at least 2, got {}",
                self.embed_dim
            );
        }
        Ok(())
    }
}

/// The world tagger's sizes: a 3-stage Swin (depths 2-2-2, heads 2-4-8, widths `embed_dim` x 1, 2,
/// 4) whose window is `img_size / 16`: with patch 4, stage 0 has 4x4 windows and stage 1 2x2 (both
/// with shifted windows) and stage 2 one window of the whole grid; with patch 8 (96 px: grids 12,
/// 6, 3), stage 0 has 2x2 windows and stages 1-2 one window each. RAM's head at hidden 64 (4 heads,
/// FFN 128, 2 layers) over `label_dim` 512, as RAM.
pub fn world_tagger_config(
    num_tags: usize,
    img_size: usize,
    patch_size: usize,
    embed_dim: usize,
) -> RamConfig {
    RamConfig {
        swin: SwinConfig {
            img_size,
            patch_size,
            in_chans: 3,
            embed_dim,
            depths: vec![2, 2, 2],
            num_heads: vec![2, 4, 8],
            window_size: img_size / 16,
            mlp_ratio: 4.0,
            layer_norm_eps: 1e-5,
            patch_norm: true,
            conv_stem: false,
        },
        num_tags,
        head: TaggingHeadConfig {
            hidden_size: 64,
            num_attention_heads: 4,
            intermediate_size: 128,
            num_hidden_layers: 2,
            layer_norm_eps: 1e-12,
        },
        label_dim: 512,
        convnet: None,
    }
}

/// One epoch's metrics (`metrics.jsonl`). Epoch 0 is the untrained model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaggerEpochMetrics {
    pub epoch: usize,
    /// Mean per-image ASL loss over the epoch's training batches.
    pub train_loss: Option<f64>,
    /// Mean per-image ASL loss on the validation split.
    pub val_loss: f64,
    /// Validation micro P/R/F1 at the best global threshold (`val_threshold`).
    pub val_precision: f64,
    pub val_recall: f64,
    pub val_f1: f64,
    pub val_threshold: f32,
    pub lr: f64,
    pub train_seconds: f64,
}

/// What the training reports (also `eval_test.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaggerReport {
    pub model_dir: PathBuf,
    pub epochs: usize,
    pub steps: usize,
    pub parameters: usize,
    pub train_images: usize,
    pub val_images: usize,
    pub test_images: usize,
    /// The global threshold chosen on the validation split (the start of the per-class ones).
    pub threshold: f32,
    /// Per-class thresholds (`tag_list_threshold.txt`), tuned on the validation split.
    pub thresholds: Vec<f32>,
    /// Validation micro P/R/F1 at `thresholds`.
    pub val: Prf,
    /// The test split's scores and calibration (`test`, `test_groups`, `calibration`).
    #[serde(flatten)]
    pub tagging: WorldTagging,
    pub final_train_loss: Option<f64>,
    pub train_seconds: f64,
    pub total_seconds: f64,
}

/// Progress of [`train_tagger`].
#[derive(Debug, Clone)]
pub enum TaggerEvent {
    /// Images are being loaded.
    Loading {
        images: usize,
    },
    Start {
        steps_per_epoch: usize,
        epochs: usize,
    },
    Step {
        epoch: usize,
        step: usize,
        loss: f64,
    },
    Epoch(TaggerEpochMetrics),
    /// Tagging every split's images (after training).
    Tagging {
        images: usize,
    },
}

/// The files of a trained tagger folder.
#[derive(Debug, Clone)]
pub struct TaggerFiles {
    pub dir: PathBuf,
}

impl TaggerFiles {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    pub fn weights(&self) -> PathBuf {
        self.dir.join("model.safetensors")
    }
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.json")
    }
    pub fn tag_list(&self) -> PathBuf {
        self.dir.join("tag_list.txt")
    }
    pub fn thresholds(&self) -> PathBuf {
        self.dir.join("tag_list_threshold.txt")
    }
    pub fn metrics(&self) -> PathBuf {
        self.dir.join("metrics.jsonl")
    }
    pub fn options(&self) -> PathBuf {
        self.dir.join("train_options.json")
    }
    pub fn eval(&self) -> PathBuf {
        self.dir.join("eval_test.json")
    }
    pub fn tags_jsonl(&self, split: &str) -> PathBuf {
        self.dir.join(format!("tags_{split}.jsonl"))
    }
    /// The test split's reliability diagram.
    pub fn reliability(&self) -> PathBuf {
        self.dir.join("reliability.png")
    }
}

/// Loads a trained tagger folder (weights, config, tag list, thresholds) as a [`Tagger`] with
/// per-class thresholds and tag-list order.
pub fn load_trained_tagger(dir: &Path, dev: &Device) -> Result<Tagger> {
    let files = TaggerFiles::new(dir);
    let cfg_path = files.config();
    let cfg: RamConfig = lion_core::util::read_json(&cfg_path)?;
    cfg.validate()
        .map_err(|m| Error::config(cfg_path.display(), m))?;
    let vocab = TagVocab::from_files(&files.tag_list(), &files.thresholds())?;
    let (model, _) = Ram::load(&cfg, files.weights(), dev)?;
    Tagger::new(model, vocab, dev.clone())
}

/// Probabilities (n, c) of `images` in batches, as plain vectors; also the mean per-image loss
/// (`asl`) against `targets` when given.
fn predict(
    model: &Ram,
    images: &[Tensor],
    targets: Option<(&[Vec<usize>], AsymmetricLoss)>,
    num_tags: usize,
    batch: usize,
) -> Result<(Vec<Vec<f32>>, Option<f64>)> {
    let mut probs = Vec::with_capacity(images.len());
    let mut loss = 0.0;
    for (k, chunk) in images.chunks(batch).enumerate() {
        let x = Tensor::stack(chunk, 0)?;
        let logits = model.forward(&x, false)?.detach();
        if let Some((t, asl)) = targets {
            let t = &t[k * batch..k * batch + chunk.len()];
            let y = target_tensor(t, num_tags, x.device())?;
            loss += asl.forward(&logits, &y)?.to_scalar::<f32>()? as f64;
        }
        probs.extend(candle_nn::ops::sigmoid(&logits)?.to_vec2::<f32>()?);
    }
    let n = images.len().max(1) as f64;
    Ok((probs, targets.map(|_| loss / n)))
}

/// (b, num_tags) 0/1 targets.
fn target_tensor(targets: &[Vec<usize>], num_tags: usize, dev: &Device) -> Result<Tensor> {
    let mut y = vec![0f32; targets.len() * num_tags];
    for (i, t) in targets.iter().enumerate() {
        for &c in t {
            y[i * num_tags + c] = 1.0;
        }
    }
    Ok(Tensor::from_vec(y, (targets.len(), num_tags), dev)?)
}

/// Trains the world tagger on `world`'s train split and writes the model folder, metrics, test
/// evaluation and every split's tags into `out` (see the module docs).
pub fn train_tagger(world: &Path, out: &Path, opts: &TaggerTrainOptions) -> Result<TaggerReport> {
    train_tagger_with(world, out, opts, |_| {})
}

/// [`train_tagger`] with progress events.
pub fn train_tagger_with(
    world: &Path,
    out: &Path,
    opts: &TaggerTrainOptions,
    mut on_event: impl FnMut(&TaggerEvent),
) -> Result<TaggerReport> {
    let start = Instant::now();
    opts.validate()?;
    let _keep = lion_core::alloc::KeepLargeBlocks::new(lion_core::alloc::TRAINING_CACHE);
    let dev = Device::Cpu;
    let (tags, splits) = read_world_for(world, None)?;
    let (train, val, test) = (&splits[0], &splits[1], &splits[2]);
    if train.is_empty() {
        input_err!("{}: the train split has no images", world.display());
    }
    if val.is_empty() {
        input_err!(
            "{}: the val split has no images (it chooses the threshold)",
            world.display()
        );
    }
    let num_tags = tags.len();
    let mut cfg = world_tagger_config(num_tags, opts.img_size, opts.patch_size, opts.embed_dim);
    cfg.swin.patch_norm = opts.patch_norm;
    cfg.swin.conv_stem = opts.conv_stem;
    cfg.convnet = opts
        .convnet
        .then(|| lion_core::convnet::ConvNetConfig::world(opts.img_size));
    cfg.validate()
        .map_err(|m| Error::config("world tagger", m))?;
    let files = TaggerFiles::new(out);
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    write_atomic(
        files.options(),
        &serde_json::to_vec_pretty(opts).expect("options serialise"),
    )?;
    write_atomic(files.metrics(), b"")?;

    on_event(&TaggerEvent::Loading {
        images: splits.iter().map(WorldSplit::len).sum(),
    });
    let images: Vec<Vec<Tensor>> = splits
        .iter()
        .map(|s| load_split_images(world, s, opts.img_size, &dev))
        .collect::<Result<_>>()?;

    let varmap = VarMap::new();
    let model = Ram::new(
        &cfg,
        SeededInit::new(varmap.clone(), opts.seed)
            .with_override(world_tagger_init)
            .into_var_builder(&dev),
    )?;
    let vars = varmap.all_vars();
    let parameters: usize = vars.iter().map(|v| v.elem_count()).sum();
    let mut opt = AdamW::new(
        vars,
        ParamsAdamW {
            lr: opts.lr,
            weight_decay: opts.weight_decay,
            ..Default::default()
        },
    )?;
    let steps_per_epoch = train.len().div_ceil(opts.batch_size);
    let total = (steps_per_epoch * opts.epochs) as u64;
    let schedule = Schedule {
        init_lr: opts.lr,
        min_lr: opts.lr / 100.0,
        warmup_lr: 0.0,
        warmup_steps: (total as f64 * opts.warmup_fraction).round() as u64,
    };
    tracing::info!(
        parameters,
        train = train.len(),
        val = val.len(),
        test = test.len(),
        steps_per_epoch,
        "training the world tagger"
    );
    on_event(&TaggerEvent::Start {
        steps_per_epoch,
        epochs: opts.epochs,
    });

    let asl = opts.loss();
    let rev: Vec<u32> = (0..opts.img_size as u32).rev().collect();
    let rev = Tensor::from_vec(rev, opts.img_size, &dev)?;
    let mut rng = SplitMix64::new(opts.seed ^ 0x7A66_E500_0000_0001);
    let mut step = 0u64;
    let mut train_seconds = 0.0;
    let mut final_train_loss = None;
    let evaluate = |model: &Ram, epoch, train_loss, lr, secs| -> Result<TaggerEpochMetrics> {
        let (probs, loss) = predict(
            model,
            &images[1],
            Some((&val.targets, opts.loss())),
            num_tags,
            opts.eval_batch_size,
        )?;
        let (t, prf) = best_global_threshold(&probs, &val.targets);
        Ok(TaggerEpochMetrics {
            epoch,
            train_loss,
            val_loss: loss.unwrap_or(f64::NAN),
            val_precision: prf.precision,
            val_recall: prf.recall,
            val_f1: prf.f1,
            val_threshold: t,
            lr,
            train_seconds: secs,
        })
    };
    let record = |m: TaggerEpochMetrics, on_event: &mut dyn FnMut(&TaggerEvent)| -> Result<()> {
        tracing::info!(
            "epoch {}: train loss {} val loss {:.4} val P/R/F1 {:.3}/{:.3}/{:.3} at {:.2}",
            m.epoch,
            m.train_loss.map_or("-".into(), |l| format!("{l:.4}")),
            m.val_loss,
            m.val_precision,
            m.val_recall,
            m.val_f1,
            m.val_threshold
        );
        append_jsonl_atomic(
            files.metrics(),
            &serde_json::to_value(&m).expect("metrics serialise"),
        )?;
        on_event(&TaggerEvent::Epoch(m));
        Ok(())
    };
    record(evaluate(&model, 0, None, 0.0, 0.0)?, &mut on_event)?;
    for epoch in 1..=opts.epochs {
        let t0 = Instant::now();
        let mut order: Vec<usize> = (0..train.len()).collect();
        rng.shuffle(&mut order);
        let (mut sum, mut n) = (0.0, 0usize);
        let mut lr = opts.lr;
        for (k, idx) in order.chunks(opts.batch_size).enumerate() {
            let batch = idx
                .iter()
                .map(|&i| {
                    let img = &images[0][i];
                    if opts.hflip && rng.next_u64() & 1 == 1 {
                        img.index_select(&rev, 2)
                    } else {
                        Ok(img.clone())
                    }
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            let x = Tensor::stack(&batch, 0)?;
            let t: Vec<Vec<usize>> = idx.iter().map(|&i| train.targets[i].clone()).collect();
            let y = target_tensor(&t, num_tags, &dev)?;
            let loss = asl.forward(&model.forward_training(&x)?, &y)?;
            let grads = loss.backward()?;
            lr = schedule.lr(step, total);
            opt.set_learning_rate(lr);
            opt.step(&grads)?;
            step += 1;
            let l = loss.to_scalar::<f32>()? as f64;
            if !l.is_finite() {
                input_err!(
                    "epoch {epoch} step {}: the loss is not finite ({l}); try a lower --lr",
                    k + 1
                );
            }
            sum += l;
            n += idx.len();
            on_event(&TaggerEvent::Step {
                epoch,
                step: k + 1,
                loss: l / idx.len() as f64,
            });
        }
        let secs = t0.elapsed().as_secs_f64();
        train_seconds += secs;
        final_train_loss = Some(sum / n.max(1) as f64);
        record(
            evaluate(&model, epoch, final_train_loss, lr, secs)?,
            &mut on_event,
        )?;
    }

    // Threshold on val, then save the model folder.
    let (val_probs, _) = predict(&model, &images[1], None, num_tags, opts.eval_batch_size)?;
    let (threshold, _) = best_global_threshold(&val_probs, &val.targets);
    let thresholds = tune_class_thresholds(&val_probs, &val.targets, threshold, MIN_VAL_POSITIVES);
    let val_prf = micro_prf(&val_probs, &val.targets, &thresholds, |_| true);
    write_atomic(
        files.config(),
        &serde_json::to_vec_pretty(&cfg).expect("config serialises"),
    )?;
    write_atomic(files.tag_list(), (tags.join("\n") + "\n").as_bytes())?;
    let th_text: String = thresholds.iter().map(|t| format!("{t}\n")).collect();
    write_atomic(files.thresholds(), th_text.as_bytes())?;
    let tensors: HashMap<String, Tensor> = lion_core::weights::varmap_tensors(&varmap);
    lion_core::weights::save_safetensors(&tensors, files.weights())?;

    // Tag every split; score the test split.
    on_event(&TaggerEvent::Tagging {
        images: splits.iter().map(WorldSplit::len).sum(),
    });
    let vocab = TagVocab {
        tags: tags.clone(),
        thresholds: thresholds.clone(),
    };
    let tagging = tag_splits(
        &model,
        &vocab,
        world,
        &splits,
        &images,
        &files,
        opts.eval_batch_size,
        Some(("val", &val_probs)),
    )?;
    let report = TaggerReport {
        model_dir: out.to_path_buf(),
        epochs: opts.epochs,
        steps: step as usize,
        parameters,
        train_images: train.len(),
        val_images: val.len(),
        test_images: test.len(),
        threshold,
        thresholds: thresholds.clone(),
        val: val_prf,
        tagging,
        final_train_loss,
        train_seconds,
        total_seconds: start.elapsed().as_secs_f64(),
    };
    write_atomic(
        files.eval(),
        &serde_json::to_vec_pretty(&report).expect("report serialises"),
    )?;
    Ok(report)
}
