//! PEFT training of LION (upstream stage-4 recipe, docs/DESIGN.md §4, "Training"): the ViT and the T5
//! backbone are frozen; trained are the Q-Former, `query_tokens`, `t5_proj`, `ln_vision`, the
//! aggregator (`fusion_adapter.*`, `ln_adapter`, `adapter_proj.*`), the T5 adapters and router
//! (`t5_model.*adapter*`) and the soft prompt (`soft_prompt_hint`, `dynamic_prompt_*`).
//!
//! Decisions (see the README section):
//! - Dropout is off everywhere (every forward runs with `train = false`): candle's CPU dropout
//!   draws from an unseeded RNG, and a resumed run must repeat the uninterrupted one exactly.
//!   Upstream keeps T5 and Q-Former dropout active.
//! - The Q-Former's last-layer text FFN (`layer.{last}.intermediate.*` / `layer.{last}.output.*`)
//!   is excluded from the trainable set: with only LION's outputs it never gets a gradient
//!   (upstream trains it with zero gradient, i.e. only weight decay moves it).
//! - The data order is a pure function of (seed, step): the task of each step is drawn by the
//!   ratios from a generator seeded by the step, each task's samples are visited in a per-epoch
//!   permutation, augmentation is seeded per (step, micro-batch, sample). A checkpoint therefore
//!   only needs the step and the per-task batch counters.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use image::RgbImage;
use lion_core::pipeline::{LionPipeline, Manifest as ModelManifest, Request};
use lion_core::preprocess::{load_image, ImageTransform, Rng, TrainTransform};
use lion_core::prompt::{PromptKind, Task};
use lion_core::rules::Invalid;
use lion_core::sentence::{BertTokenizer, SentenceEmbedder};
use lion_core::text::T5Tokenizer;
use lion_core::weights::{Checkpoint, LoadMode, WeightLoader};
use lion_core::{Error, Result};
use lion_data::lion_json::{read_lion, Level, LionSample};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::augment::augment_sample;
use crate::checkpoint::{self, TrainState};
use crate::rng::SplitMix64;
use crate::schedule::Schedule;

/// One tag of a training sample: `"red: 0.93"` (a tagger's confidence) or a bare `"red"`
/// (ground truth, score 1); `lion_core::tags::ScoredTag::parse_or_bare`.
pub fn tag_with_score(t: &str) -> (String, f32) {
    lion_core::tags::ScoredTag::parse_or_bare(t).into_pair()
}

/// The set of trained weights.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainableSet {
    /// LION's parameter-efficient set ([`is_trainable`]).
    #[default]
    Peft,
    /// Every weight, the ViT and T5 included, except T5's adapters and routers, which keep their
    /// identity initialisation (zero up-projection), and the Q-Former's last text FFN (no
    /// gradient): the demo's backbone pretraining.
    All,
}

/// One task's data: LION training JSON files (`question` is used verbatim as the instruction).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskData {
    /// The task, which also picks the score at evaluation: CIDEr-D against every caption of the
    /// image in the validation file (caption), VQA accuracy with the single answer standing for
    /// all ten annotators (vqa), Acc@0.5 of the parsed box (rec).
    pub kind: Task,
    pub train: PathBuf,
    #[serde(default)]
    pub val: Option<PathBuf>,
    /// Sampling weight of this task's batches.
    #[serde(default = "one")]
    pub ratio: f64,
}

fn one() -> f64 {
    1.0
}
fn d_wd() -> f64 {
    0.05
}
fn d_betas() -> (f64, f64) {
    (0.9, 0.999)
}
fn d_eps() -> f64 {
    1e-8
}
fn d_prompt_scale() -> f64 {
    5.0
}
fn d_one_u() -> usize {
    1
}
fn d_one_u64() -> u64 {
    1
}
fn d_keep() -> usize {
    2
}
fn d_eval_n() -> usize {
    16
}
fn d_new_tokens() -> usize {
    24
}
fn d_true() -> bool {
    true
}
fn d_prompt() -> String {
    "static".into()
}

/// `lion train`'s config file (JSON). Relative paths are relative to the config file's folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeftConfig {
    /// A preset (random initial weights, saved once to `OUT/init.safetensors`) ...
    #[serde(default)]
    pub preset: Option<String>,
    /// ... or a model folder (`lion.json`) to start from.
    #[serde(default)]
    pub model_dir: Option<PathBuf>,
    /// With `model_dir`: accept weights that do not fit exactly (missing keys keep their
    /// initialisation; logged). Default: strict.
    #[serde(default)]
    pub lenient: bool,
    /// Which weights train: `peft` (upstream's set: ViT and T5 backbone frozen) or `all`
    /// (everything, ViT included: the demo's backbone pretraining).
    #[serde(default)]
    pub trainable: TrainableSet,
    /// With a preset: static, dynamic, gated, gated:K or none.
    #[serde(default = "d_prompt")]
    pub prompt: String,
    /// With a preset: the Q-Former's BERT tokenizer.json.
    #[serde(default)]
    pub qformer_tokenizer: Option<PathBuf>,
    /// With a preset: T5 tokenizer.json (default: the bundled one).
    #[serde(default)]
    pub t5_tokenizer: Option<PathBuf>,
    /// With a preset and a dynamic / gated prompt: the tag encoder folder.
    #[serde(default)]
    pub tag_encoder: Option<PathBuf>,
    /// Root of the `image` paths in the data files.
    pub image_root: PathBuf,
    pub tasks: Vec<TaskData>,
    pub schedule: Schedule,
    #[serde(default = "d_wd")]
    pub weight_decay: f64,
    #[serde(default = "d_betas")]
    pub betas: (f64, f64),
    #[serde(default = "d_eps")]
    pub eps: f64,
    /// lr scale of `fusion_adapter.*` (upstream `boost_lr_scale`, default 1).
    #[serde(default = "one")]
    pub boost_lr_scale: f64,
    /// lr scale of the dynamic prompt projection `dynamic_prompt_*` (DynLION: 5).
    #[serde(default = "d_prompt_scale")]
    pub prompt_lr_scale: f64,
    pub batch_size: usize,
    /// Micro-batches per optimizer step (each of the step's task).
    #[serde(default = "d_one_u")]
    pub grad_accum: usize,
    /// Global-norm clipping (None: off, as upstream).
    #[serde(default)]
    pub max_grad_norm: Option<f64>,
    /// Optimizer steps in all.
    pub steps: u64,
    /// Evaluate every N steps (0: never).
    #[serde(default)]
    pub eval_every: u64,
    /// Validation samples per task at most.
    #[serde(default = "d_eval_n")]
    pub eval_max_samples: usize,
    #[serde(default = "d_new_tokens")]
    pub eval_max_new_tokens: usize,
    /// Checkpoint every N steps (and at the end).
    #[serde(default = "d_one_u64")]
    pub checkpoint_every: u64,
    #[serde(default = "d_keep")]
    pub keep_checkpoints: usize,
    /// Box-aware random-resized-crop + flip (false: the eval transform).
    #[serde(default = "d_true")]
    pub augment: bool,
    pub output_dir: PathBuf,
    #[serde(default)]
    pub seed: u64,
}

impl PeftConfig {
    /// Reads and validates a config file; relative paths become relative to its folder.
    pub fn read(path: &Path) -> Result<Self> {
        let mut c: PeftConfig = lion_core::util::read_json(path)?;
        c.validate().map_err(|e| Error::config(path.display(), e))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        // Models and tokenizers: a path relative to the config, else a Hub id found under
        // $LION_HOME or in the Hugging Face cache (as the CLI's --model / --tag-encoder).
        let model = |p: &mut PathBuf, file: Option<&str>| -> Result<()> {
            let local = base.join(&*p);
            let spec = p.to_string_lossy().into_owned();
            if p.is_absolute() || local.exists() || !lion_core::hub::is_hub_id(&spec) {
                *p = local;
                return Ok(());
            }
            *p = match file {
                Some(f) => lion_core::hub::resolve_file(&spec, f)?,
                None => lion_core::hub::resolve_model(&spec)?,
            };
            Ok(())
        };
        for (field, p, file) in [
            ("model_dir", c.model_dir.as_mut(), None),
            (
                "qformer_tokenizer",
                c.qformer_tokenizer.as_mut(),
                Some("tokenizer.json"),
            ),
            (
                "t5_tokenizer",
                c.t5_tokenizer.as_mut(),
                Some("tokenizer.json"),
            ),
            ("tag_encoder", c.tag_encoder.as_mut(), None),
        ] {
            if let Some(p) = p {
                model(p, file)
                    .map_err(|e| Error::config(path.display(), format!("`{field}`: {e}")))?;
            }
        }
        for p in [&mut c.image_root, &mut c.output_dir] {
            fix(p);
        }
        for t in &mut c.tasks {
            fix(&mut t.train);
            if let Some(v) = t.val.as_mut() {
                fix(v);
            }
        }
        Ok(c)
    }

    /// Signs, ranges and orderings of every setting; the first broken rule names the field, its
    /// value and the rule.
    pub fn validate(&self) -> std::result::Result<(), Invalid> {
        use lion_core::rules::{all_positive, in_range, positive};
        if self.preset.is_some() == self.model_dir.is_some() {
            return Err(Invalid::new(
                "preset, model_dir",
                format!("{:?}, {:?}", self.preset, self.model_dir),
                "give exactly one of them",
            ));
        }
        if self.tasks.is_empty() {
            return Err(Invalid::new("tasks", "[]", "must name at least one task"));
        }
        for (i, t) in self.tasks.iter().enumerate() {
            if !(t.ratio >= 0.0 && t.ratio.is_finite()) {
                return Err(Invalid::new(
                    format!("tasks[{i}].ratio"),
                    t.ratio,
                    "must be a finite number >= 0",
                ));
            }
        }
        let sum: f64 = self.tasks.iter().map(|t| t.ratio).sum();
        if !(sum.is_finite() && sum > 0.0) {
            return Err(Invalid::new(
                "tasks[].ratio",
                format!("sum {sum}"),
                "the ratios must have a finite sum > 0",
            ));
        }
        all_positive(&[
            ("batch_size", self.batch_size),
            ("grad_accum", self.grad_accum),
            ("eval_max_samples", self.eval_max_samples),
            ("eval_max_new_tokens", self.eval_max_new_tokens),
            ("keep_checkpoints", self.keep_checkpoints),
        ])?;
        positive("steps", self.steps as usize)
            .and_then(|_| positive("checkpoint_every", self.checkpoint_every as usize))?;
        if let Some(m) = self.max_grad_norm {
            if !(m.is_finite() && m > 0.0) {
                return Err(Invalid::new(
                    "max_grad_norm",
                    m,
                    "must be a finite number > 0, or absent (no clipping)",
                ));
            }
        }
        let s = &self.schedule;
        for (name, v) in [
            ("schedule.init_lr", s.init_lr),
            ("schedule.min_lr", s.min_lr),
            ("schedule.warmup_lr", s.warmup_lr),
            ("weight_decay", self.weight_decay),
            ("boost_lr_scale", self.boost_lr_scale),
            ("prompt_lr_scale", self.prompt_lr_scale),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Invalid::new(name, v, "must be a finite number >= 0"));
            }
        }
        if s.min_lr > s.init_lr {
            return Err(Invalid::new(
                "schedule.min_lr",
                s.min_lr,
                format!("must not exceed schedule.init_lr ({})", s.init_lr),
            ));
        }
        if s.warmup_steps > 0 && s.warmup_steps >= self.steps {
            return Err(Invalid::new(
                "schedule.warmup_steps",
                s.warmup_steps,
                format!("must be below steps ({})", self.steps),
            ));
        }
        in_range("betas.0", self.betas.0, 0.0, 0.999_999_999)?;
        in_range("betas.1", self.betas.1, 0.0, 0.999_999_999)?;
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(Invalid::new("eps", self.eps, "must be a finite number > 0"));
        }
        for (name, p) in [
            ("output_dir", &self.output_dir),
            ("image_root", &self.image_root),
        ] {
            if p.as_os_str().is_empty() {
                return Err(Invalid::new(name, "\"\"", "must not be empty"));
            }
        }
        for (i, t) in self.tasks.iter().enumerate() {
            if t.train.as_os_str().is_empty() {
                return Err(Invalid::new(
                    format!("tasks[{i}].train"),
                    "\"\"",
                    "must not be empty",
                ));
            }
        }
        Ok(())
    }
}

/// The model's size rules, then the memory a training step of `batch_size` needs against the
/// machine, before anything is allocated.
fn fits(lcfg: &lion_core::lion::LionConfig, cfg: &PeftConfig) -> Result<()> {
    lcfg.validate()
        .and_then(|_| lcfg.check_memory(cfg.batch_size, true))
        .map_err(|e| Error::config("lion train", e))
}

/// Parses a prompt name.
pub fn parse_prompt(s: &str) -> Result<Option<PromptKind>> {
    Ok(match s {
        "none" => None,
        "static" => Some(PromptKind::Static),
        "dynamic" => Some(PromptKind::Dynamic),
        "gated" => Some(PromptKind::Gated { k: 1 }),
        other => match other.strip_prefix("gated:").map(str::parse::<usize>) {
            Some(Ok(k)) if k > 0 => Some(PromptKind::Gated { k }),
            _ => {
                return Err(Error::config(
                    "prompt",
                    format!("`{other}`: expected static, dynamic, gated, gated:K or none"),
                ))
            }
        },
    })
}

/// Whether a LION key is trained (upstream's set, less the Q-Former's last text FFN, which gets
/// no gradient). `qformer_layers`: the Q-Former's depth.
pub fn is_trainable(key: &str, qformer_layers: usize) -> bool {
    if key.starts_with("visual_encoder.") {
        return false;
    }
    if let Some(rest) = key.strip_prefix("t5_model.") {
        return rest.contains("adapter");
    }
    if key.starts_with("Qformer.") && qformer_layers > 0 {
        let last = format!("Qformer.bert.encoder.layer.{}.", qformer_layers - 1);
        if let Some(rest) = key.strip_prefix(&last) {
            return !(rest.starts_with("intermediate.") || rest.starts_with("output."));
        }
    }
    true
}

/// An AdamW parameter group.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub name: String,
    pub lr_scale: f64,
    pub weight_decay: f64,
}

/// Upstream's grouping: decay for >= 2-D weights whose names hold none of "bias", "ln", "bn";
/// lr scale `boost_lr_scale` for `fusion_adapter`, `prompt_lr_scale` for `dynamic_prompt_*`.
pub fn group_of(key: &str, ndim: usize, boost: f64, prompt: f64) -> (String, f64, bool) {
    let decay = ndim >= 2 && !key.contains("bias") && !key.contains("ln") && !key.contains("bn");
    let (part, scale) = if key.contains("fusion_adapter") {
        ("fusion_adapter", boost)
    } else if key.starts_with("dynamic_prompt") {
        ("dynamic_prompt", prompt)
    } else {
        ("base", 1.0)
    };
    let name = format!("{part}/{}", if decay { "decay" } else { "no_decay" });
    (name, scale, decay)
}

/// AdamW (PyTorch semantics: decoupled decay `p -= lr·wd·p`, bias-corrected moments,
/// `eps` added to the corrected second-moment root) over parameter groups.
pub struct GroupedAdamW {
    pub vars: Vec<(String, Var)>,
    /// Group index of each var.
    pub var_group: Vec<usize>,
    pub groups: Vec<Group>,
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    pub betas: (f64, f64),
    pub eps: f64,
    /// Optimizer steps done.
    pub t: u64,
}

impl GroupedAdamW {
    /// `vars` sorted by name for a stable order.
    pub fn new(
        mut vars: Vec<(String, Var)>,
        weight_decay: f64,
        boost: f64,
        prompt: f64,
        betas: (f64, f64),
        eps: f64,
    ) -> Result<Self> {
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let mut groups: Vec<Group> = vec![];
        let mut var_group = vec![];
        let (mut m, mut v) = (vec![], vec![]);
        for (k, var) in &vars {
            let (name, scale, decay) = group_of(k, var.rank(), boost, prompt);
            let gi = match groups.iter().position(|g| g.name == name) {
                Some(i) => i,
                None => {
                    groups.push(Group {
                        name,
                        lr_scale: scale,
                        weight_decay: if decay { weight_decay } else { 0.0 },
                    });
                    groups.len() - 1
                }
            };
            var_group.push(gi);
            m.push(var.as_tensor().zeros_like()?);
            v.push(var.as_tensor().zeros_like()?);
        }
        Ok(Self {
            vars,
            var_group,
            groups,
            m,
            v,
            betas,
            eps,
            t: 0,
        })
    }

    /// One update with the given gradients (one per var, same order) at base lr `lr`.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        self.t += 1;
        let (b1, b2) = self.betas;
        let bc1 = 1.0 - b1.powi(self.t as i32);
        let bc2 = 1.0 - b2.powi(self.t as i32);
        for (i, ((_, var), g)) in self.vars.iter().zip(grads).enumerate() {
            let grp = &self.groups[self.var_group[i]];
            let lr = lr * grp.lr_scale;
            let m = ((&self.m[i] * b1)? + (g * (1.0 - b1))?)?;
            let v = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let p = var.as_tensor();
            let p = (p * (1.0 - lr * grp.weight_decay))?;
            let denom = ((&v / bc2)?.sqrt()? + self.eps)?;
            let upd = ((&m / bc1)? / denom)?;
            var.set(&(p - (upd * lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// Moments as named tensors (`exp_avg.{key}`, `exp_avg_sq.{key}`) for a checkpoint.
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (i, (k, _)) in self.vars.iter().enumerate() {
            out.insert(format!("exp_avg.{k}"), self.m[i].clone());
            out.insert(format!("exp_avg_sq.{k}"), self.v[i].clone());
        }
        out
    }

    /// Restores the moments of a checkpoint; every var must have both.
    pub fn load_state(&mut self, t: u64, st: &HashMap<String, Tensor>) -> Result<()> {
        for (i, (k, var)) in self.vars.iter().enumerate() {
            for (name, slot) in [("exp_avg", &mut self.m[i]), ("exp_avg_sq", &mut self.v[i])] {
                let key = format!("{name}.{k}");
                let x = st.get(&key).ok_or_else(|| {
                    Error::config("checkpoint optimizer state", format!("no `{key}`"))
                })?;
                if x.shape() != var.shape() {
                    return Err(Error::config(
                        "checkpoint optimizer state",
                        format!("`{key}` is {:?}, the var is {:?}", x.shape(), var.shape()),
                    ));
                }
                *slot = x.clone();
            }
        }
        self.t = t;
        Ok(())
    }
}

/// Clips gradients to a global L2 norm as `torch.nn.utils.clip_grad_norm_`; returns the norm
/// before clipping.
pub fn clip_global_norm(grads: &mut [Tensor], max_norm: Option<f64>) -> Result<f64> {
    let mut sq = 0f64;
    for g in grads.iter() {
        sq += g
            .sqr()?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
    }
    let norm = sq.sqrt();
    if let Some(max) = max_norm {
        let coef = max / (norm + 1e-6);
        if coef < 1.0 {
            for g in grads.iter_mut() {
                *g = (&*g * coef)?;
            }
        }
    }
    Ok(norm)
}

/// Adds a backward pass's gradients to `acc` (one tensor per var, same order; a var without a
/// gradient adds nothing).
pub fn accumulate(
    acc: &mut [Tensor],
    grads: &candle_core::backprop::GradStore,
    vars: &[(String, Var)],
) -> Result<()> {
    for (g, (_, v)) in acc.iter_mut().zip(vars) {
        if let Some(x) = grads.get(v.as_tensor()) {
            // Detached: a gradient computed through trainable activations carries its backward
            // graph, which the optimizer moments would otherwise keep alive step after step.
            *g = (&*g + x.detach())?;
        }
    }
    Ok(())
}

/// One training step's record (a line of `metrics.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: u64,
    pub task: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub samples: usize,
}

fn mix(a: u64, b: u64) -> u64 {
    SplitMix64::new(a ^ b.wrapping_mul(lion_rng::GAMMA)).next_u64()
}

/// The trainer: model, optimizer, data, and where it stands.
pub struct PeftTrainer {
    pub cfg: PeftConfig,
    pub pipe: LionPipeline,
    pub opt: GroupedAdamW,
    /// Frozen vars (tests check they stay bit-identical); empty unless built with them.
    pub state: TrainState,
    data: Vec<Vec<LionSample>>,
    val: Vec<Vec<LionSample>>,
    images: HashMap<String, RgbImage>,
    perms: HashMap<(usize, u64), Vec<usize>>,
    train_tf: TrainTransform,
    /// Every tensor of the model by key, sharing its storage, `Var`s detached (they follow
    /// training): [`Self::eval_model`] builds on them.
    weights: HashMap<String, Tensor>,
}

impl PeftTrainer {
    /// Builds the model (from the preset's saved initial weights or the model folder), applies a
    /// checkpoint's trainable tensors and optimizer state when `resume` is given.
    pub fn new(cfg: PeftConfig, resume: Option<checkpoint::Loaded>, dev: &Device) -> Result<Self> {
        std::fs::create_dir_all(&cfg.output_dir).map_err(|e| Error::io(&cfg.output_dir, e))?;
        let (mut lcfg, mut checkpoints, t5_tok, q_tok, tag_enc) =
            match (&cfg.preset, &cfg.model_dir) {
                (Some(name), _) => {
                    let lcfg = lion_core::presets::preset(name, parse_prompt(&cfg.prompt)?)?;
                    fits(&lcfg, &cfg)?;
                    let init = cfg.output_dir.join("init.safetensors");
                    if !init.exists() {
                        save_random_init(&lcfg, &init, cfg.seed, dev)?;
                    }
                    (
                        lcfg,
                        vec![Checkpoint::open(&init)?],
                        cfg.t5_tokenizer.clone(),
                        cfg.qformer_tokenizer.clone(),
                        cfg.tag_encoder.clone(),
                    )
                }
                (None, Some(dir)) => {
                    let m = ModelManifest::read(&dir.join("lion.json"))?;
                    fits(&m.lion_config()?, &cfg)?;
                    if m.weights.is_empty() && !cfg.lenient {
                        return Err(Error::config(
                            dir.join("lion.json").display(),
                            Invalid::new(
                                "weights",
                                "[]",
                                "must name at least one weight file (loading is strict; set \
                                 `lenient` to start from random weights)",
                            ),
                        ));
                    }
                    let mut cks = vec![];
                    for w in &m.weights {
                        cks.extend(lion_core::pipeline::open_weights(
                            &dir.join(&w.file),
                            &w.prefix,
                        )?);
                    }
                    (
                        m.lion_config()?,
                        cks,
                        Some(dir.join(&m.t5_tokenizer)),
                        m.qformer_tokenizer.as_ref().map(|p| dir.join(p)),
                        m.tag_encoder.as_ref().map(|p| dir.join(p)),
                    )
                }
                (None, None) => unreachable!("validated"),
            };
        // The data's `question` is the whole instruction.
        lcfg.templates.vqa = "{}".into();
        lcfg.templates.rec = "{}".into();
        let t5_tokenizer = match &t5_tok {
            Some(p) => T5Tokenizer::from_file(p)?,
            None => T5Tokenizer::for_preset(cfg.preset.as_deref().unwrap_or_default())?,
        };
        let placeholder = t5_tokenizer.placeholder_id()?;
        if placeholder as usize >= lcfg.t5.vocab_size {
            return Err(Error::config(
                "t5 tokenizer",
                format!(
                    "`<extra_id_0>` is id {placeholder}, outside the model's vocabulary of {}",
                    lcfg.t5.vocab_size
                ),
            ));
        }
        let qformer_tokenizer = match (&lcfg.qformer, &q_tok) {
            (Some(_), Some(p)) => {
                Some(BertTokenizer::from_file(p, lcfg.max_txt_len)?.left_truncated()?)
            }
            (Some(_), None) => {
                return Err(Error::config(
                    "lion train",
                    "the Q-Former needs a BERT tokenizer.json (`qformer_tokenizer`)",
                ))
            }
            (None, _) => None,
        };
        let tag_encoder = match (lcfg.prompt.map(|p| p.needs_tag_embedding()), &tag_enc) {
            (Some(true), Some(dir)) => {
                let enc = SentenceEmbedder::load(dir, dev, None)?;
                if enc.hidden_size() != lcfg.tag_dim {
                    return Err(Error::config(
                        dir.display(),
                        format!(
                            "tag encoder width {} != the model's tag_dim {}",
                            enc.hidden_size(),
                            lcfg.tag_dim
                        ),
                    ));
                }
                Some(enc)
            }
            (Some(true), None) => {
                return Err(Error::config(
                    "lion train",
                    "dynamic and gated prompts need a tag encoder (`tag_encoder`)",
                ))
            }
            _ => None,
        };
        if let Some(r) = &resume {
            checkpoints.push(Checkpoint::from_tensors(
                r.dir.join(checkpoint::TRAINABLE).display().to_string(),
                r.trainable.clone(),
            ));
        }
        let qlayers = lcfg
            .qformer
            .as_ref()
            .map_or(0, |q| q.bert.num_hidden_layers);
        let all = cfg.trainable == TrainableSet::All;
        if all {
            lcfg.vit.frozen = false;
        }
        let varmap = VarMap::new();
        let loader = lion_core::lion::checkpoint_loader(&lcfg, checkpoints)
            .with_init_seed(cfg.seed)
            .with_trainable(varmap.clone(), move |k| {
                if all {
                    // The backbone too, but never the T5 adapters, nor the Q-Former parts that
                    // get no gradient (the PEFT set's exclusions).
                    if let Some(rest) = k.strip_prefix("t5_model.") {
                        !rest.contains("adapter")
                    } else {
                        k.starts_with("visual_encoder.") || is_trainable(k, qlayers)
                    }
                } else {
                    is_trainable(k, qlayers)
                }
            });
        let vb = loader.var_builder(DType::F32, dev);
        let model = lion_core::lion::LionModel::new(&lcfg, placeholder, vb)?;
        let report = loader.finish(if cfg.lenient {
            LoadMode::Lenient
        } else {
            LoadMode::Strict
        })?;
        let weights = loader.tensors();
        // The model is built here (with trainable vars), so the pipeline is assembled by hand.
        let pipe = LionPipeline {
            model,
            t5_tokenizer,
            qformer_tokenizer,
            tag_encoder,
            transform: ImageTransform {
                size: lcfg.vit.img_size as u32,
                ..ImageTransform::lion_eval()
            },
            device: dev.clone(),
            report,
            tag_cache: Default::default(),
        };
        let vars: Vec<(String, Var)> = varmap
            .data()
            .lock()
            .expect("poisoned")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut opt = GroupedAdamW::new(
            vars,
            cfg.weight_decay,
            cfg.boost_lr_scale,
            cfg.prompt_lr_scale,
            cfg.betas,
            cfg.eps,
        )?;
        let state = match &resume {
            Some(r) => {
                opt.load_state(r.state.step, &r.optimizer)?;
                if r.state.task_batches.len() != cfg.tasks.len() {
                    return Err(Error::config(
                        r.dir.display(),
                        "the checkpoint was made with a different number of tasks",
                    ));
                }
                r.state.clone()
            }
            None => TrainState {
                step: 0,
                task_batches: vec![0; cfg.tasks.len()],
                seed: cfg.seed,
            },
        };
        let mut data = vec![];
        let mut val = vec![];
        for t in &cfg.tasks {
            let d =
                read_lion(&t.train).map_err(|e| Error::config(t.train.display(), e.to_string()))?;
            if d.is_empty() {
                return Err(Error::config(t.train.display(), "no samples"));
            }
            data.push(d);
            val.push(match &t.val {
                Some(p) => read_lion(p).map_err(|e| Error::config(p.display(), e.to_string()))?,
                None => vec![],
            });
        }
        let train_tf = TrainTransform {
            size: lcfg.vit.img_size as u32,
            ..TrainTransform::lion()
        };
        Ok(Self {
            cfg,
            pipe,
            opt,
            state,
            data,
            val,
            images: HashMap::new(),
            perms: HashMap::new(),
            train_tf,
            weights,
        })
    }

    /// The trainable vars by key.
    pub fn trainable(&self) -> &[(String, Var)] {
        &self.opt.vars
    }

    /// The task of optimizer step `step`, drawn by the ratios (a pure function of seed and step).
    pub fn task_for_step(&self, step: u64) -> usize {
        let total: f64 = self.cfg.tasks.iter().map(|t| t.ratio).sum();
        let u = (mix(self.state.seed, step) >> 11) as f64 / (1u64 << 53) as f64 * total;
        let mut acc = 0.0;
        for (i, t) in self.cfg.tasks.iter().enumerate() {
            acc += t.ratio;
            if u < acc && t.ratio > 0.0 {
                return i;
            }
        }
        self.cfg
            .tasks
            .iter()
            .rposition(|t| t.ratio > 0.0)
            .expect("validated")
    }

    fn sample_index(&mut self, task: usize, pos: u64) -> usize {
        let n = self.data[task].len() as u64;
        let epoch = pos / n;
        let seed = mix(self.state.seed ^ 0x5EED, (task as u64) << 40 | epoch);
        let perm = self.perms.entry((task, epoch)).or_insert_with(|| {
            let mut p: Vec<usize> = (0..n as usize).collect();
            SplitMix64::new(seed).shuffle(&mut p);
            p
        });
        perm[(pos % n) as usize]
    }

    fn image(&mut self, rel: &str) -> Result<RgbImage> {
        if let Some(i) = self.images.get(rel) {
            return Ok(i.clone());
        }
        let img = load_image(self.cfg.image_root.join(rel))?;
        self.images.insert(rel.to_string(), img.clone());
        Ok(img)
    }

    fn request(s: &LionSample) -> Request {
        let task = match s.level {
            Level::RegionLevel => Task::Rec,
            Level::ImageLevel => Task::Vqa,
        };
        let tags = s
            .tags
            .split(", ")
            .filter(|t| !t.is_empty())
            .map(tag_with_score)
            .collect();
        Request {
            task,
            text: s.question.clone(),
            tags,
        }
    }

    /// Prepares a training micro-batch: augmented pixels (boxes moved with the image for
    /// region-level samples), prompt, labels. A mirrored sample's text is mirrored too
    /// ([`augment_sample`]: "the leftmost star" -> "the rightmost star" in expressions,
    /// questions, answers and captions), so that its words keep describing the picture.
    pub fn micro_batch(
        &mut self,
        task: usize,
        samples: &[LionSample],
        seed: u64,
    ) -> Result<(lion_core::lion::LionBatch, Tensor, usize)> {
        let dev = self.pipe.device.clone();
        let mut imgs = vec![];
        let mut pix = vec![];
        let mut answers = vec![];
        let mut texts: Vec<LionSample> = samples.to_vec();
        for (j, s) in samples.iter().enumerate() {
            let img = self.image(&s.image)?;
            let mut rng = Rng::new(mix(seed, j as u64));
            if !self.cfg.augment {
                pix.push(self.pipe.transform.apply(&img, &dev)?);
                answers.push(s.answer.clone());
            } else {
                let origin = self.cfg.tasks[task].train.display();
                let a = augment_sample(&self.train_tf, &img, s, &mut rng, &dev, &origin)?;
                pix.push(a.pixel_values);
                answers.push(a.sample.answer.clone());
                texts[j] = a.sample;
            }
            imgs.push(img);
        }
        let reqs: Vec<Request> = texts.iter().map(Self::request).collect();
        let mut batch = self.pipe.prepare(&imgs, &reqs)?;
        batch.pixel_values = Tensor::stack(&pix, 0)?;
        let refs: Vec<&str> = answers.iter().map(|s| s.as_str()).collect();
        let labels = self.pipe.labels(&refs)?;
        Ok((batch, labels, samples.len()))
    }

    /// The loss of a micro-batch (no dropout), for tests and the parity check.
    pub fn loss_of(&mut self, task: usize, samples: &[LionSample], seed: u64) -> Result<Tensor> {
        let (batch, labels, _) = self.micro_batch(task, samples, seed)?;
        Ok(self.pipe.model.forward_train(&batch, &labels, false)?.loss)
    }

    /// Samples of a task's training file.
    pub fn train_samples(&self, task: usize) -> &[LionSample] {
        &self.data[task]
    }

    /// One optimizer step (all micro-batches). On a non-finite loss or gradient nothing is
    /// changed and [`crate::error::Error::NonFinite`] is returned.
    pub fn step(&mut self) -> crate::error::Result<StepRecord> {
        let step = self.state.step;
        let task = self.task_for_step(step);
        let mut counters = self.state.task_batches.clone();
        let accum = self.cfg.grad_accum;
        let bs = self.cfg.batch_size;
        let mut grads: Vec<Tensor> = self
            .opt
            .vars
            .iter()
            .map(|(_, v)| v.as_tensor().zeros_like())
            .collect::<candle_core::Result<_>>()?;
        let mut loss_sum = 0.0;
        let mut n = 0;
        for micro in 0..accum {
            let k = counters[task];
            counters[task] += 1;
            let idx: Vec<usize> = (0..bs as u64)
                .map(|j| self.sample_index(task, k * bs as u64 + j))
                .collect();
            let samples: Vec<LionSample> =
                idx.iter().map(|&i| self.data[task][i].clone()).collect();
            let seed = mix(self.state.seed ^ 0xA06, step << 16 | micro as u64);
            let (batch, labels, b) = self.micro_batch(task, &samples, seed)?;
            let loss = self.pipe.model.forward_train(&batch, &labels, false)?.loss;
            let lv = loss.to_scalar::<f32>()? as f64;
            if !lv.is_finite() {
                return Err(crate::error::Error::NonFinite {
                    step: step + 1,
                    what: format!("loss ({lv}) of task {task}, micro-batch {micro}"),
                });
            }
            let gs = (loss / accum as f64)?.backward()?;
            accumulate(&mut grads, &gs, &self.opt.vars)?;
            loss_sum += lv;
            n += b;
        }
        let grad_norm = clip_global_norm(&mut grads, self.cfg.max_grad_norm)?;
        if !grad_norm.is_finite() {
            return Err(crate::error::Error::NonFinite {
                step: step + 1,
                what: format!("gradient (norm {grad_norm})"),
            });
        }
        let lr = self.cfg.schedule.lr(step, self.cfg.steps);
        self.opt.step(&grads, lr)?;
        self.state.task_batches = counters;
        self.state.step += 1;
        Ok(StepRecord {
            step: step + 1,
            task,
            loss: loss_sum / accum as f64,
            lr,
            grad_norm,
            samples: n,
        })
    }

    /// The trainable tensors under their (upstream) keys.
    pub fn trainable_tensors(&self) -> HashMap<String, Tensor> {
        self.opt
            .vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect()
    }

    /// Writes a checkpoint of the current state.
    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        let cfg = serde_json::to_value(&self.cfg).expect("serializable");
        checkpoint::save(
            &self.cfg.output_dir,
            &self.state,
            &self.trainable_tensors(),
            &self.opt.state_tensors(),
            &cfg,
            self.cfg.keep_checkpoints,
        )
    }

    /// The model as it stands, for inference: the same weights (shared storage, current values)
    /// with no `Var` in it, so its ops build no autograd graph. Decoding with the training model
    /// would record one and keep it alive through the caches (the encoder's activations and every
    /// step's, until the last token).
    pub fn eval_model(&self) -> Result<lion_core::lion::LionModel> {
        let weights = Checkpoint::from_tensors("the model (in memory)", self.weights.clone());
        let loader = WeightLoader::new(vec![weights]);
        let model = self
            .pipe
            .model
            .rebuilt(loader.var_builder(DType::F32, &self.pipe.device))?;
        loader.finish(LoadMode::Strict)?;
        Ok(model)
    }

    /// Greedy decoding on each task's validation samples, scored with lion-metrics.
    pub fn evaluate(&mut self) -> Result<serde_json::Value> {
        let model = self.eval_model()?;
        let gen = lion_core::generate::GenerationConfig {
            num_beams: 1,
            max_new_tokens: self.cfg.eval_max_new_tokens,
            repetition_penalty: 1.0,
            ..Default::default()
        };
        let mut out = serde_json::Map::new();
        for t in 0..self.cfg.tasks.len() {
            if self.val[t].is_empty() {
                continue;
            }
            let kind = self.cfg.tasks[t].kind;
            let all = self.val[t].clone();
            // Captions: one prediction per image, all of its captions as references.
            let samples: Vec<LionSample> = if kind == Task::Caption {
                let mut seen = std::collections::HashSet::new();
                all.iter()
                    .filter(|s| seen.insert(s.image.clone()))
                    .cloned()
                    .collect()
            } else {
                all.clone()
            };
            let samples: Vec<LionSample> = samples
                .into_iter()
                .take(self.cfg.eval_max_samples)
                .collect();
            let mut preds = vec![];
            for chunk in samples.chunks(self.cfg.batch_size) {
                let mut imgs = vec![];
                for s in chunk {
                    imgs.push(self.image(&s.image)?);
                }
                let reqs: Vec<Request> = chunk.iter().map(Self::request).collect();
                let batch = self.pipe.prepare(&imgs, &reqs)?;
                for ids in model.generate(&batch, &gen)? {
                    preds.push(self.pipe.decode(&ids)?);
                }
            }
            for (s, p) in samples.iter().zip(&preds).take(3) {
                tracing::debug!(task = t, prediction = %p, target = %s.answer, "eval sample");
            }
            let (name, score) = match kind {
                Task::Caption => {
                    let mut c = lion_metrics::cider::CiderD::new();
                    for (s, p) in samples.iter().zip(&preds) {
                        let refs: Vec<String> = all
                            .iter()
                            .filter(|x| x.image == s.image)
                            .map(|x| x.answer.clone())
                            .collect();
                        c.add(p, &refs);
                    }
                    ("cider", c.compute().0)
                }
                Task::Vqa => {
                    let acc: f64 = samples
                        .iter()
                        .zip(&preds)
                        .map(|(s, p)| {
                            // one reference answer: the normalised variant (the official
                            // scorer gives ten identical id-less answers 0 whatever the answer)
                            let gts = vec![lion_metrics::vqa::GtAnswer::new(s.answer.clone()); 10];
                            lion_metrics::vqa::vqa_accuracy_with(
                                lion_metrics::vqa::VqaMode::Normalized,
                                p,
                                &gts,
                            )
                            .unwrap_or(0.0)
                        })
                        .sum();
                    ("vqa_accuracy", acc / samples.len().max(1) as f64)
                }
                Task::Rec => {
                    let mut hits = 0usize;
                    for (s, p) in samples.iter().zip(&preds) {
                        let img = self.image(&s.image)?;
                        let (w, h) = (img.width() as f64, img.height() as f64);
                        let gt = lion_core::bbox::parse(&s.answer, w, h);
                        let pr = lion_core::bbox::parse(p, w, h);
                        if let (Some(g), Some(q)) = (gt, pr) {
                            if lion_metrics::rec::iou(&g, &q) >= 0.5 {
                                hits += 1;
                            }
                        }
                    }
                    ("rec_acc@0.5", hits as f64 / samples.len().max(1) as f64)
                }
            };
            out.insert(format!("task{t}/{name}"), json!(score));
        }
        Ok(serde_json::Value::Object(out))
    }
}

/// Builds the preset with random weights once and saves every tensor, so that every process of
/// a run (first start and resumes) sees the same frozen weights.
fn save_random_init(
    cfg: &lion_core::lion::LionConfig,
    path: &Path,
    seed: u64,
    dev: &Device,
) -> Result<()> {
    let varmap = VarMap::new();
    let loader = WeightLoader::random()
        .with_init_seed(seed)
        .with_trainable(varmap.clone(), |_| true);
    let vb = loader.var_builder(DType::F32, dev);
    let _ = lion_core::lion::LionModel::new(cfg, 32099.min(cfg.t5.vocab_size as u32 - 1), vb)?;
    add_sincos_positions(&varmap, cfg)?;
    let tensors: HashMap<String, Tensor> = lion_core::weights::varmap_tensors(&varmap);
    lion_core::weights::save_safetensors(&tensors, path)
}

/// How much of the 2-D sin-cos code is added to a from-scratch ViT's `pos_embed`: half (codes of
/// norm `0.5 * sqrt(d / 2)`, 2.8 at d 64, against trunc-normal positions of norm ~0.16 and patch
/// projections of norm ~12, measured on the ShapesWorld backbone at step 4000). The value the
/// shipped backbone was trained with; not tuned.
const SINCOS_POS_SCALE: f64 = 0.5;

/// A from-scratch ViT's `pos_embed` (trunc-normal) plus [`SINCOS_POS_SCALE`] x the 2-D sin-cos
/// code on the patch rows (the class token's row unchanged): without it a small ViT trained from
/// random weights learns almost no position signal and never learns to localise.
fn add_sincos_positions(varmap: &VarMap, cfg: &lion_core::lion::LionConfig) -> Result<()> {
    let data = varmap.data().lock().expect("poisoned");
    let Some(var) = data.get("visual_encoder.pos_embed") else {
        return Ok(());
    };
    let pos = var.as_tensor();
    let (_, n, d) = pos.dims3()?;
    let grid = cfg.vit.grid();
    if n != 1 + grid * grid || d % 4 != 0 {
        tracing::warn!(
            shape = ?pos.dims(),
            grid,
            "pos_embed does not fit a square grid of a width divisible by 4: no sin-cos code added"
        );
        return Ok(());
    }
    let code = lion_core::eva_vit::sincos_pos_embed(grid, d, pos.device())?;
    let code = (code * SINCOS_POS_SCALE)?.unsqueeze(0)?;
    let patches = (pos.narrow(1, 1, n - 1)? + code)?;
    var.set(&Tensor::cat(&[&pos.narrow(1, 0, 1)?, &patches], 1)?)?;
    Ok(())
}

/// Keeps the lines of `metrics.jsonl` at or before `step` (after a resume).
pub fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    lion_core::util::write_atomic(path, kept.as_bytes())
}

/// Draws `loss.png` from `metrics.jsonl` (train loss per step, by task; eval scores).
pub fn draw_loss_curves(metrics: &Path, png: &Path) -> Result<()> {
    let text = std::fs::read_to_string(metrics).map_err(|e| Error::io(metrics, e))?;
    let mut loss = vec![];
    let mut lr = vec![];
    for l in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
            continue;
        };
        if v.get("kind").and_then(|k| k.as_str()) == Some("train") {
            let s = v["step"].as_f64().unwrap_or(0.0);
            if let Some(x) = v["loss"].as_f64() {
                loss.push((s, x));
            }
            if let Some(x) = v["lr"].as_f64() {
                lr.push((s, x));
            }
        }
    }
    use crate::plot::{draw_png, Panel, Series};
    draw_png(
        png,
        &[
            Panel {
                title: "training loss",
                x_label: "step",
                y_label: "loss",
                series: vec![Series {
                    name: "train",
                    points: loss,
                }],
            },
            Panel {
                title: "learning rate",
                x_label: "step",
                y_label: "lr",
                series: vec![Series {
                    name: "lr",
                    points: lr,
                }],
            },
        ],
        (640, 360),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_carry_their_scores_or_one() {
        assert_eq!(tag_with_score("red: 0.93"), ("red".into(), 0.93));
        assert_eq!(tag_with_score("red circle"), ("red circle".into(), 1.0));
        // A colon that is not followed by a number is part of the name.
        assert_eq!(tag_with_score("a: b"), ("a: b".into(), 1.0));
    }

    #[test]
    fn trainable_set_follows_upstream() {
        for k in [
            "Qformer.bert.encoder.layer.0.intermediate.dense.weight",
            "Qformer.bert.encoder.layer.1.output_query.dense.weight",
            "Qformer.bert.encoder.layer.1.attention.output.dense.weight",
            "query_tokens",
            "t5_proj.weight",
            "ln_vision.weight",
            "fusion_adapter.blocks.0.attn.qkv.weight",
            "ln_adapter.bias",
            "adapter_proj.0.weight",
            "t5_model.encoder.block.0.layer.1.adapter.router_ratio1",
            "soft_prompt_hint",
            "dynamic_prompt_projection.weight",
        ] {
            assert!(is_trainable(k, 2), "{k}");
        }
        for k in [
            "visual_encoder.blocks.0.attn.qkv.weight",
            "t5_model.shared.weight",
            "t5_model.encoder.block.0.layer.0.SelfAttention.q.weight",
            "Qformer.bert.encoder.layer.1.intermediate.dense.weight",
            "Qformer.bert.encoder.layer.1.output.LayerNorm.weight",
        ] {
            assert!(!is_trainable(k, 2), "{k}");
        }
    }

    #[test]
    fn groups_as_upstream() {
        assert_eq!(group_of("t5_proj.weight", 2, 2.0, 5.0).0, "base/decay");
        assert_eq!(group_of("t5_proj.bias", 1, 2.0, 5.0).0, "base/no_decay");
        assert_eq!(group_of("ln_vision.weight", 1, 2.0, 5.0).0, "base/no_decay");
        let g = group_of("fusion_adapter.blocks.0.mlp.fc1.weight", 2, 2.0, 5.0);
        assert_eq!((g.0.as_str(), g.1), ("fusion_adapter/decay", 2.0));
        let g = group_of("dynamic_prompt_projection.weight", 2, 2.0, 5.0);
        assert_eq!((g.0.as_str(), g.1), ("dynamic_prompt/decay", 5.0));
    }
}
