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
    /// Images per forward pass when tagging.
    pub eval_batch_size: usize,
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
            eval_batch_size: 64,
        }
    }
}

impl TaggerTrainOptions {
    pub fn validate(&self) -> Result<()> {
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
    }
}

/// A `VarBuilder` backend that creates every requested tensor as a trainable `Var` in a
/// [`VarMap`], initialised from its init hint with a seeded generator (candle's CPU generator
/// cannot be seeded). Construction order fixes the draws, so the same seed gives the same model.
pub struct SeededInit {
    varmap: VarMap,
    rng: Mutex<SplitMix64>,
    /// Replaces the model's init hint for the variables where it returns `Some`.
    init_override: Option<InitOverride>,
}

/// `(variable name, shape) -> Some(init)` to replace a variable's init hint.
pub type InitOverride = fn(&str, &Shape) -> Option<Init>;

impl SeededInit {
    pub fn new(varmap: VarMap, seed: u64) -> Self {
        Self {
            varmap,
            rng: Mutex::new(SplitMix64::new(seed)),
            init_override: None,
        }
    }

    pub fn with_override(mut self, f: InitOverride) -> Self {
        self.init_override = Some(f);
        self
    }

    /// A `VarBuilder` over a fresh `SeededInit`.
    pub fn var_builder(varmap: VarMap, seed: u64, dev: &Device) -> VarBuilder<'static> {
        Self::new(varmap, seed).into_var_builder(dev)
    }

    pub fn into_var_builder(self, dev: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self), DType::F32, dev.clone())
    }
}

/// The world tagger's init: every matrix outside the Swin (`image_proj`, `wordvec_proj`, the
/// tagging head, `fc`) is drawn from N(0, 1 / fan_in) instead of BERT's N(0, 0.02), so that the
/// logits depend on the image from the first step (at 0.02 their spread across images is ~1e-3
/// and training first collapses the image features while it fits the tag priors).
pub fn world_tagger_init(name: &str, shape: &Shape) -> Option<Init> {
    let dims = shape.dims();
    if dims.len() == 2 && name.ends_with(".weight") && !name.starts_with("visual_encoder.") {
        Some(Init::Randn {
            mean: 0.,
            stdev: 1.0 / (dims[1] as f64).sqrt(),
        })
    } else {
        None
    }
}

fn unit(rng: &mut SplitMix64) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

fn normal(rng: &mut SplitMix64, n: usize, mean: f64, std: f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        // Box-Muller, u1 in (0, 1]
        let u1 = 1.0 - unit(rng);
        let u2 = unit(rng);
        let r = (-2.0 * u1.ln()).sqrt();
        let a = 2.0 * std::f64::consts::PI * u2;
        out.push((mean + std * r * a.cos()) as f32);
        out.push((mean + std * r * a.sin()) as f32);
    }
    out.truncate(n);
    out
}

fn uniform(rng: &mut SplitMix64, n: usize, lo: f64, up: f64) -> Vec<f32> {
    (0..n)
        .map(|_| (lo + (up - lo) * unit(rng)) as f32)
        .collect()
}

impl SimpleBackend for SeededInit {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let n = s.elem_count();
        let h = self.init_override.and_then(|f| f(name, &s)).unwrap_or(h);
        let data = {
            let mut rng = self.rng.lock().expect("poisoned");
            match h {
                Init::Const(c) => vec![c as f32; n],
                Init::Randn { mean, stdev } => normal(&mut rng, n, mean, stdev),
                Init::Uniform { lo, up } => uniform(&mut rng, n, lo, up),
                Init::Kaiming {
                    dist,
                    fan,
                    non_linearity,
                } => {
                    let std = non_linearity.gain() / (fan.for_shape(&s) as f64).sqrt();
                    match dist {
                        candle_nn::init::NormalOrUniform::Normal => normal(&mut rng, n, 0.0, std),
                        candle_nn::init::NormalOrUniform::Uniform => {
                            let b = 3f64.sqrt() * std;
                            uniform(&mut rng, n, -b, b)
                        }
                    }
                }
            }
        };
        let t = Tensor::from_vec(data, s, dev)?.to_dtype(dtype)?;
        let var = Var::from_tensor(&t)?;
        let mut vars = self.varmap.data().lock().expect("poisoned");
        if vars.contains_key(name) {
            candle_core::bail!("variable {name} requested twice")
        }
        vars.insert(name.to_string(), var.clone());
        Ok(var.as_tensor().clone())
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("seeded init: {name} requested without a shape")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        false
    }
}

/// One split of a world: image ids, files and ground-truth tag indices.
#[derive(Debug, Clone)]
pub struct WorldSplit {
    pub name: String,
    pub ids: Vec<u64>,
    /// `file_name` as the world gives it (relative to the world directory).
    pub file_names: Vec<String>,
    pub targets: Vec<Vec<usize>>,
}

impl WorldSplit {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// A world's tag vocabulary (`tag_list.txt`, one tag a line).
pub fn read_world_tags(world: &Path) -> Result<Vec<String>> {
    let path = world.join("tag_list.txt");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::format(
            &path,
            format!("cannot read the world's tag list ({e}); is this a ShapesWorld folder (lion world generate)?"),
        )
    })?;
    let tags: Vec<String> = text
        .lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .filter(|l| !l.is_empty())
        .collect();
    if tags.is_empty() {
        return Err(Error::format(&path, "no tags"));
    }
    Ok(tags)
}

#[derive(Deserialize)]
struct TagEntry {
    image_id: u64,
    file_name: String,
    tags: Vec<String>,
}

/// Reads `tags_{split}.json`, mapping tag names through `index` (an unknown tag is an error).
pub fn read_world_split(
    world: &Path,
    split: &str,
    index: &HashMap<String, usize>,
) -> Result<WorldSplit> {
    let path = world.join(format!("tags_{split}.json"));
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::format(
            &path,
            format!("cannot read the {split} split's tags ({e}); is this a ShapesWorld folder (lion world generate)?"),
        )
    })?;
    let entries: Vec<TagEntry> = serde_json::from_str(&text).map_err(|e| {
        Error::format(
            &path,
            format!("expected a list of {{image_id, file_name, tags}}: {e}"),
        )
    })?;
    let mut out = WorldSplit {
        name: split.to_string(),
        ids: vec![],
        file_names: vec![],
        targets: vec![],
    };
    for (i, e) in entries.into_iter().enumerate() {
        let targets = e
            .tags
            .iter()
            .map(|t| {
                index.get(t).copied().ok_or_else(|| {
                    Error::format(
                        &path,
                        format!(
                            "entry {i} (image {}): tag `{t}` is not in tag_list.txt",
                            e.image_id
                        ),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        out.ids.push(e.image_id);
        out.file_names.push(e.file_name);
        out.targets.push(targets);
    }
    Ok(out)
}

/// Loads a split's images at `size` (as `lion tag` does): (3, size, size) each, in split order.
pub fn load_split_images(
    world: &Path,
    split: &WorldSplit,
    size: usize,
    dev: &Device,
) -> Result<Vec<Tensor>> {
    split
        .file_names
        .par_iter()
        .map(|f| load_image(&world.join(f), size, dev))
        .collect()
}

/// Micro precision / recall / F1 of thresholded predictions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Prf {
    pub tp: usize,
    pub fp: usize,
    #[serde(rename = "fn")]
    pub fn_: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

impl Prf {
    pub fn from_counts(tp: usize, fp: usize, fn_: usize) -> Self {
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let precision = ratio(tp, tp + fp);
        let recall = ratio(tp, tp + fn_);
        let f1 = ratio(2 * tp, 2 * tp + fp + fn_);
        Self {
            tp,
            fp,
            fn_,
            precision,
            recall,
            f1,
        }
    }
}

/// Micro P/R/F1 over the classes where `keep(class)` holds: a tag is predicted when
/// `probs[i][c] > thresholds[c]`.
pub fn micro_prf(
    probs: &[Vec<f32>],
    targets: &[Vec<usize>],
    thresholds: &[f32],
    keep: impl Fn(usize) -> bool,
) -> Prf {
    let (mut tp, mut fp, mut fn_) = (0, 0, 0);
    for (p, t) in probs.iter().zip(targets) {
        for (c, (&pc, &th)) in p.iter().zip(thresholds).enumerate() {
            if !keep(c) {
                continue;
            }
            match (pc > th, t.contains(&c)) {
                (true, true) => tp += 1,
                (true, false) => fp += 1,
                (false, true) => fn_ += 1,
                (false, false) => {}
            }
        }
    }
    Prf::from_counts(tp, fp, fn_)
}

/// The global threshold in 0.01..=0.99 (0.01 steps) with the best micro F1 (the lowest on ties).
pub fn best_global_threshold(probs: &[Vec<f32>], targets: &[Vec<usize>]) -> (f32, Prf) {
    let c = probs.first().map_or(0, Vec::len);
    let mut best = (0.5f32, Prf::default());
    let mut first = true;
    for k in 1..100 {
        let t = k as f32 / 100.0;
        let prf = micro_prf(probs, targets, &vec![t; c], |_| true);
        if first || prf.f1 > best.1.f1 {
            best = (t, prf);
            first = false;
        }
    }
    best
}

/// Per-class thresholds that raise the micro F1 on (`probs`, `targets`): starting from `global`
/// for every class, each class with at least `min_positives` positives in turn takes the
/// threshold (0.01 grid) that maximises the micro F1 over all classes with the others fixed (one
/// pass, in class order; ties keep the current one). Classes with fewer positives keep `global`.
pub fn tune_class_thresholds(
    probs: &[Vec<f32>],
    targets: &[Vec<usize>],
    global: f32,
    min_positives: usize,
) -> Vec<f32> {
    let c = probs.first().map_or(0, Vec::len);
    let mut th = vec![global; c];
    let class_counts = |k: usize, t: f32| {
        let (mut tp, mut fp, mut fn_) = (0i64, 0i64, 0i64);
        for (p, y) in probs.iter().zip(targets) {
            match (p[k] > t, y.contains(&k)) {
                (true, true) => tp += 1,
                (true, false) => fp += 1,
                (false, true) => fn_ += 1,
                _ => {}
            }
        }
        (tp, fp, fn_)
    };
    let all = micro_prf(probs, targets, &th, |_| true);
    let (mut tp, mut fp, mut fn_) = (all.tp as i64, all.fp as i64, all.fn_ as i64);
    let f1 = |tp: i64, fp: i64, fn_: i64| {
        let d = 2 * tp + fp + fn_;
        if d == 0 {
            0.0
        } else {
            2.0 * tp as f64 / d as f64
        }
    };
    for (k, th_k) in th.iter_mut().enumerate() {
        let positives = targets.iter().filter(|y| y.contains(&k)).count();
        if positives < min_positives {
            continue;
        }
        let cur = class_counts(k, *th_k);
        let (rtp, rfp, rfn) = (tp - cur.0, fp - cur.1, fn_ - cur.2);
        let mut best = (f1(tp, fp, fn_), *th_k, cur);
        for step in 1..100 {
            let t = step as f32 / 100.0;
            let n = class_counts(k, t);
            let f = f1(rtp + n.0, rfp + n.1, rfn + n.2);
            if f > best.0 {
                best = (f, t, n);
            }
        }
        *th_k = best.1;
        (tp, fp, fn_) = (rtp + best.2 .0, rfp + best.2 .1, rfn + best.2 .2);
    }
    th
}

/// Val positives a class needs for its own threshold in [`train_tagger`].
pub const MIN_VAL_POSITIVES: usize = 5;

/// Tag groups of ShapesWorld's vocabulary (from `world.json`): `shape`, `color`, `size`,
/// `color_shape`, `texture`, `count`, `other`; an empty map without a readable `world.json`.
pub fn tag_groups(world: &Path, tags: &[String]) -> BTreeMap<String, Vec<usize>> {
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let manifest: lion_data::world::formats::Manifest =
        match lion_core::util::read_json(world.join("world.json")) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("no per-group metrics: {e}");
                return groups;
            }
        };
    let v = &manifest.vocabulary;
    let has = |list: &[String], w: &str| list.iter().any(|x| x == w);
    for (i, t) in tags.iter().enumerate() {
        let words: Vec<&str> = t.split(' ').collect();
        let g = if has(&v.shapes, t) {
            "shape"
        } else if has(&v.colors, t) {
            "color"
        } else if has(&v.sizes, t) {
            "size"
        } else if has(&v.textures, t) {
            "texture"
        } else if words.len() == 2 && has(&v.colors, words[0]) && has(&v.shapes, words[1]) {
            "color_shape"
        } else if ["one", "two", "three", "four"].contains(&t.as_str()) {
            "count"
        } else {
            "other"
        };
        groups.entry(g.to_string()).or_default().push(i);
    }
    groups
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
    /// Test micro P/R/F1 over all tags.
    pub test: Prf,
    /// Test micro P/R/F1 per tag group, plus `color+shape` (shapes, colors and their pairs).
    pub test_groups: BTreeMap<String, Prf>,
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

/// Probabilities (n, c) of `images` in batches, as plain vectors; also the mean per-image ASL
/// loss against `targets` when given.
fn predict(
    model: &Ram,
    images: &[Tensor],
    targets: Option<&[Vec<usize>]>,
    num_tags: usize,
    batch: usize,
) -> Result<(Vec<Vec<f32>>, Option<f64>)> {
    let asl = AsymmetricLoss::ram();
    let mut probs = Vec::with_capacity(images.len());
    let mut loss = 0.0;
    for (k, chunk) in images.chunks(batch).enumerate() {
        let x = Tensor::stack(chunk, 0)?;
        let logits = model.forward(&x, false)?.detach();
        if let Some(t) = targets {
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
    if !world.is_dir() {
        return Err(Error::format(
            world,
            "not a folder; give a ShapesWorld folder (lion world generate --out DIR)",
        ));
    }
    let dev = Device::Cpu;
    let tags = read_world_tags(world)?;
    let index: HashMap<String, usize> = tags
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i))
        .collect();
    let splits: Vec<WorldSplit> = ["train", "val", "test"]
        .iter()
        .map(|s| read_world_split(world, s, &index))
        .collect::<Result<_>>()?;
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
    let cfg = world_tagger_config(num_tags, opts.img_size, opts.patch_size, opts.embed_dim);
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

    let asl = AsymmetricLoss::ram();
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
            Some(&val.targets),
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
            let loss = asl.forward(&model.forward(&x, false)?, &y)?;
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
    let groups = tag_groups(world, &tags);
    let mut test_prf = Prf::default();
    let mut test_groups = BTreeMap::new();
    for (split, imgs) in splits.iter().zip(&images) {
        let probs = if split.name == "val" {
            val_probs.clone()
        } else {
            predict(&model, imgs, None, num_tags, opts.eval_batch_size)?.0
        };
        let mut text = String::new();
        for ((id, file), p) in split.ids.iter().zip(&split.file_names).zip(&probs) {
            let kept = select_tags(p, &vocab, TagSelection::ClassThreshold, TagOrder::Index)?;
            let kept: Vec<_> = kept
                .iter()
                .map(|t| serde_json::json!({"tag": t.tag, "score": t.score}))
                .collect();
            text.push_str(
                &serde_json::json!({"image": id, "file_name": file, "tags": kept}).to_string(),
            );
            text.push('\n');
        }
        write_atomic(files.tags_jsonl(&split.name), text.as_bytes())?;
        if split.name == "test" {
            test_prf = micro_prf(&probs, &split.targets, &thresholds, |_| true);
            for (g, members) in &groups {
                let prf = micro_prf(&probs, &split.targets, &thresholds, |c| {
                    members.contains(&c)
                });
                test_groups.insert(g.clone(), prf);
            }
            if !groups.is_empty() {
                let cs: Vec<usize> = ["shape", "color", "color_shape"]
                    .iter()
                    .filter_map(|g| groups.get(*g))
                    .flatten()
                    .copied()
                    .collect();
                let prf = micro_prf(&probs, &split.targets, &thresholds, |c| cs.contains(&c));
                test_groups.insert("color+shape".into(), prf);
            }
        }
    }
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
        test: test_prf,
        test_groups,
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
