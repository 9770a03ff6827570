//! The model specification: everything that decides which LION model a caller gets (config,
//! weight files, tokenizers, tag encoder, how strictly weights load, their dtype and
//! quantisation, the device, and for training which weights are trained), as one typed value.
//! [`ModelSpec::build`] is the one way a [`LionPipeline`] is assembled: the CLI, the server, the
//! trainer, the demo and the benches all describe their model here and build it through it.
//!
//! ```no_run
//! # use lion_core::model_spec::ModelSpec;
//! # use lion_core::weights::LoadMode;
//! # fn main() -> lion_core::Result<()> {
//! let pipe = ModelSpec::from_folder("models/lion-4b".as_ref(), LoadMode::Strict)?
//!     .with_dtype(lion_core::cpu::WeightDtype::Bf16)
//!     .build()?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarMap;

use crate::cpu::{Quantize, WeightDtype};
use crate::lion::{LionConfig, LionModel};
use crate::pipeline::{open_weights, LionPipeline, Manifest, TagCache};
use crate::preprocess::ImageTransform;
use crate::prompt::PromptKind;
use crate::sentence::{BertTokenizer, SentenceEmbedder};
use crate::text::T5Tokenizer;
use crate::weights::{Checkpoint, LoadMode, LoadReport};
use crate::{Error, Result};

/// Which weights a training run updates: they become `Var`s of `vars` (missing ones initialised
/// from `seed`), and every loaded tensor is kept, so that [`LionPipeline::inference_model`] can
/// rebuild the model without `Var`s.
pub struct Trainable {
    pub vars: VarMap,
    /// Whether a (checkpoint) key is trained.
    pub select: Box<dyn Fn(&str) -> bool + Send + Sync>,
    pub seed: u64,
    /// The batch size the memory check plans for (training: weights, gradients, moments).
    pub batch_size: usize,
}

/// A LION model, fully described (see the module docs).
pub struct ModelSpec {
    pub config: LionConfig,
    /// The preset the config came from (picks the bundled T5 tokenizer when none is given).
    pub preset: Option<String>,
    /// Weight files, later ones winning on repeated keys; empty: random weights.
    pub checkpoints: Vec<Checkpoint>,
    /// Random weights drawn from this seed (the same on every run and machine); None: unseeded.
    pub init_seed: Option<u64>,
    /// None: the preset's bundled tokenizer ([`T5Tokenizer::for_preset`]).
    pub t5_tokenizer: Option<PathBuf>,
    /// The Q-Former's BERT tokenizer.json (needed when the config has a Q-Former).
    pub qformer_tokenizer: Option<PathBuf>,
    /// The tag encoder's folder (needed by dynamic and gated prompts).
    pub tag_encoder: Option<PathBuf>,
    pub mode: LoadMode,
    /// The linear layers' weights.
    pub dtype: WeightDtype,
    /// Weight-only quantisation of the ViT's and T5's linear layers (CPU only).
    pub quantize: Option<Quantize>,
    pub device: Device,
    pub trainable: Option<Trainable>,
}

impl ModelSpec {
    /// `config` with random weights, f32, strict, on the CPU; nothing else set.
    pub fn new(config: LionConfig) -> Self {
        Self {
            config,
            preset: None,
            checkpoints: vec![],
            init_seed: None,
            t5_tokenizer: None,
            qformer_tokenizer: None,
            tag_encoder: None,
            mode: LoadMode::Strict,
            dtype: WeightDtype::F32,
            quantize: None,
            device: Device::Cpu,
            trainable: None,
        }
    }

    /// A preset ([`crate::presets::preset`]) with the given soft prompt, random weights.
    pub fn preset(name: &str, prompt: Option<PromptKind>) -> Result<Self> {
        let mut s = Self::new(crate::presets::preset(name, prompt)?);
        s.preset = Some(name.to_string());
        Ok(s)
    }

    /// A model folder by its manifest (`DIR/lion.json`, see [`crate::pipeline`]): its config,
    /// weight files (opened, not read), tokenizers and tag encoder (Hub ids resolved).
    pub fn from_folder(dir: &Path, mode: LoadMode) -> Result<Self> {
        let manifest_path = dir.join("lion.json");
        let m = Manifest::read(&manifest_path)?;
        let config = m.lion_config()?;
        if m.weights.is_empty() && mode == LoadMode::Strict {
            return Err(Error::config(
                manifest_path.display(),
                crate::rules::Invalid::new(
                    "weights",
                    "[]",
                    "must name at least one weight file: loading is strict (--lenient runs on \
                     random weights; so does --preset P --random-weights)",
                ),
            ));
        }
        let mut checkpoints = vec![];
        for w in &m.weights {
            checkpoints.extend(open_weights(&dir.join(&w.file), &w.prefix)?);
        }
        let t5 = manifest_entry(dir, &m.t5_tokenizer, Some("tokenizer.json"))?;
        let qformer = m
            .qformer_tokenizer
            .as_ref()
            .map(|p| manifest_entry(dir, p, Some("tokenizer.json")))
            .transpose()?;
        let tag = m
            .tag_encoder
            .as_ref()
            .map(|p| manifest_entry(dir, p, None))
            .transpose()?;
        Ok(Self {
            checkpoints,
            t5_tokenizer: Some(t5),
            qformer_tokenizer: qformer,
            tag_encoder: tag,
            mode,
            quantize: m.quantize,
            ..Self::new(config)
        })
    }

    pub fn with_checkpoints(mut self, checkpoints: Vec<Checkpoint>) -> Self {
        self.checkpoints = checkpoints;
        self
    }

    pub fn with_init_seed(mut self, seed: Option<u64>) -> Self {
        self.init_seed = seed;
        self
    }

    pub fn with_mode(mut self, mode: LoadMode) -> Self {
        self.mode = mode;
        self
    }

    pub fn with_dtype(mut self, dtype: WeightDtype) -> Self {
        self.dtype = dtype;
        self
    }

    pub fn with_quantize(mut self, quantize: Option<Quantize>) -> Self {
        self.quantize = quantize;
        self
    }

    pub fn with_device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    pub fn with_trainable(mut self, trainable: Trainable) -> Self {
        self.trainable = Some(trainable);
        self
    }

    /// The T5 tokenizer the spec names.
    pub fn load_t5_tokenizer(&self) -> Result<T5Tokenizer> {
        match &self.t5_tokenizer {
            Some(p) => T5Tokenizer::from_file(p),
            None => T5Tokenizer::for_preset(self.preset.as_deref().unwrap_or_default()),
        }
    }

    /// With random weights: shrinks the T5 vocabulary to the tokenizer's when that is smaller,
    /// so that every generated id decodes (a preset's 32k rows beside the bundled 200-token
    /// tokenizer would generate ids it cannot spell).
    pub fn vocab_sized_to_tokenizer(mut self) -> Result<Self> {
        let n = self.load_t5_tokenizer()?.vocab_size();
        if self.checkpoints.is_empty() && n < self.config.t5.vocab_size {
            tracing::info!(
                config = self.config.t5.vocab_size,
                tokenizer = n,
                "random weights: T5 vocabulary sized to the tokenizer"
            );
            self.config.t5.vocab_size = n;
        }
        Ok(self)
    }

    /// The dtype the dense frozen weights will mostly be held in, for the memory estimate:
    /// `dtype`, except that an f32 model on the CPU keeps what its checkpoints store in bf16 as
    /// bf16 ([`crate::linear::get_as_stored`]), so checkpoints mostly in bf16 count as bf16.
    pub fn held_dtype(&self) -> WeightDtype {
        match self.dtype {
            WeightDtype::F32 if self.device.is_cpu() && self.mostly_bf16() => WeightDtype::Bf16,
            d => d,
        }
    }

    /// Whether most of the checkpoints' floating-point values (by count) are stored in bf16.
    fn mostly_bf16(&self) -> bool {
        let (mut bf16, mut all) = (0usize, 0usize);
        for c in &self.checkpoints {
            for k in c.keys() {
                let (Some(d), Some(s)) = (c.dtype(k), c.shape(k)) else {
                    continue;
                };
                if d.is_float() {
                    all += s.elem_count();
                    bf16 += if d == DType::BF16 { s.elem_count() } else { 0 };
                }
            }
        }
        all > 0 && bf16 * 2 > all
    }

    /// Every check that needs no weights: the config's sizes, the memory estimate, the device
    /// and quantisation, the tokenizers against the config. Nothing large is allocated.
    fn check(&self) -> Result<(T5Tokenizer, u32)> {
        let cfg = &self.config;
        cfg.validate().map_err(|e| Error::config("model", e))?;
        // the estimate counts the weights in the format they will be held in: an f32 model on
        // the CPU keeps what its checkpoints store in bf16 as bf16 (`linear::get_as_stored`)
        crate::linear::with_weight_dtype(self.held_dtype(), || {
            crate::linear::with_quantize(self.quantize, || match &self.trainable {
                Some(t) => cfg.check_memory(t.batch_size, true),
                None => cfg.check_memory(1, false),
            })
        })
        .map_err(|e| Error::config("model", e))?;
        if self.quantize.is_some() && !self.device.is_cpu() {
            return Err(Error::config(
                "model",
                "quantized layers (--quantize) run on the CPU only",
            ));
        }
        let t5_tokenizer = self.load_t5_tokenizer()?;
        let placeholder = t5_tokenizer.placeholder_id()?;
        if placeholder as usize >= cfg.t5.vocab_size {
            return Err(Error::config(
                "t5 tokenizer",
                format!(
                    "`<extra_id_0>` is id {placeholder}, outside the model's vocabulary of {}",
                    cfg.t5.vocab_size
                ),
            ));
        }
        Ok((t5_tokenizer, placeholder))
    }

    /// Assembles the pipeline: checks first (sizes, memory, tokenizers, tag-encoder width), then
    /// builds the model tensor by tensor from the checkpoints (or the random initialisation),
    /// in the spec's dtype and quantisation.
    pub fn build(self) -> Result<LionPipeline> {
        let (t5_tokenizer, placeholder) = self.check()?;
        let cfg = self.config;
        let device = self.device;
        let qformer_tokenizer = match (&cfg.qformer, &self.qformer_tokenizer) {
            (Some(_), Some(p)) => {
                Some(BertTokenizer::from_file(p, cfg.max_txt_len)?.left_truncated()?)
            }
            (Some(_), None) => {
                return Err(Error::config(
                    "model",
                    "the Q-Former needs a BERT tokenizer.json (qformer_tokenizer)",
                ))
            }
            (None, _) => None,
        };
        let tag_encoder = match (
            cfg.prompt.map(|p| p.needs_tag_embedding()),
            &self.tag_encoder,
        ) {
            (Some(true), Some(dir)) => {
                let enc = SentenceEmbedder::load(dir, &device, None)?;
                if enc.hidden_size() != cfg.tag_dim {
                    return Err(Error::config(
                        dir.display(),
                        format!(
                            "tag encoder width {} != the model's tag_dim {}",
                            enc.hidden_size(),
                            cfg.tag_dim
                        ),
                    ));
                }
                Some(enc)
            }
            (Some(true), None) => {
                return Err(Error::config(
                    "model",
                    "dynamic and gated prompts need a tag encoder (tag_encoder)",
                ))
            }
            _ => None,
        };
        let random = self.checkpoints.is_empty();
        let mut loader = crate::lion::checkpoint_loader(&cfg, self.checkpoints);
        let training = self.trainable.is_some();
        match self.trainable {
            Some(t) => {
                loader = loader
                    .with_init_seed(t.seed)
                    .retaining_tensors()
                    .with_trainable(t.vars, t.select);
            }
            None => {
                if let (true, Some(seed)) = (random, self.init_seed) {
                    loader = loader.with_init_seed(seed);
                }
            }
        }
        let model = crate::linear::with_weight_dtype(self.dtype, || {
            crate::linear::with_quantize(self.quantize, || {
                LionModel::new(&cfg, placeholder, loader.var_builder(DType::F32, &device))
            })
        })?;
        let report = if random && !training {
            LoadReport::default()
        } else {
            loader.finish(self.mode)?
        };
        let weights = if training {
            loader.tensors()
        } else {
            HashMap::new()
        };
        Ok(LionPipeline::assembled(crate::pipeline::Parts {
            model,
            t5_tokenizer,
            qformer_tokenizer,
            tag_encoder,
            transform: ImageTransform {
                size: cfg.vit.img_size as u32,
                ..ImageTransform::lion_eval()
            },
            device,
            report,
            tag_cache: TagCache::default(),
            weights,
        }))
    }
}

/// A path of the manifest: relative to the model folder; one that is not there but reads as a
/// Hub id (`sentence-transformers/all-MiniLM-L6-v2`) is found by [`crate::hub`] (with `file`,
/// that file inside the model).
fn manifest_entry(dir: &Path, p: &Path, file: Option<&str>) -> Result<PathBuf> {
    let local = dir.join(p);
    match p.to_str() {
        Some(id) if !local.exists() && crate::hub::is_hub_id(id) => match file {
            Some(name) => crate::hub::resolve_file(id, name),
            None => crate::hub::resolve_model(id),
        },
        _ => Ok(local),
    }
}
