//! `lion train`'s configuration file: [`PeftConfig`] (read, checked, paths resolved), its
//! defaults and the prompt kind.

use super::*;

pub(super) fn one() -> f64 {
    1.0
}
pub(super) fn d_wd() -> f64 {
    0.05
}
pub(super) fn d_betas() -> (f64, f64) {
    (0.9, 0.999)
}
pub(super) fn d_eps() -> f64 {
    1e-8
}
pub(super) fn d_prompt_scale() -> f64 {
    5.0
}
pub(super) fn d_one_u() -> usize {
    1
}
pub(super) fn d_one_u64() -> u64 {
    1
}
pub(super) fn d_keep() -> usize {
    2
}
pub(super) fn d_eval_n() -> usize {
    16
}
pub(super) fn d_new_tokens() -> usize {
    24
}
pub(super) fn d_true() -> bool {
    true
}
pub(super) fn d_prompt() -> String {
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
pub(super) fn fits(lcfg: &lion_core::lion::LionConfig, cfg: &PeftConfig) -> Result<()> {
    lcfg.validate()
        .and_then(|_| lcfg.check_memory(cfg.batch_size, true))
        .map_err(|e| Error::config("lion train", e))
}

/// Parses a prompt name ([`PromptKind::parse_name`]); the error names the `prompt` field.
pub fn parse_prompt(s: &str) -> Result<Option<PromptKind>> {
    PromptKind::parse_name(s).map_err(|e| Error::config("prompt", e))
}
