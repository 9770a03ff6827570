//! Weight loading: safetensors (memory-mapped) and PyTorch `.pth` zip-pickle checkpoints.
//!
//! Model code never sees a file: it is built from a [`VarBuilder`] whose paths are the upstream
//! checkpoint keys. [`WeightLoader`] is that `VarBuilder`'s backend. It records every key the model
//! asks for, so that after construction [`WeightLoader::finish`] can report, by name:
//! - missing keys (asked for, not in any checkpoint),
//! - unexpected keys (in a checkpoint, never asked for),
//! - mis-shaped keys (present with a shape other than the model's).
//!
//! In [`LoadMode::Strict`] any of these is an error listing all of them at once; in
//! [`LoadMode::Lenient`] missing and mis-shaped tensors keep their initialisation (as PyTorch's
//! `load_state_dict(strict=False)` does) and the report is returned for the caller to show.
//!
//! Trainable parameters: give the loader a [`VarMap`] and a predicate on key names; the keys it
//! accepts become [`candle_core::Var`]s in that map (initialised from the checkpoint where present),
//! the others stay constant tensors, so frozen weights never receive gradients.
//!
//! ```no_run
//! use lion_core::weights::{Checkpoint, LoadMode, WeightLoader};
//! # fn main() -> lion_core::Result<()> {
//! let ckpt = Checkpoint::open("model.safetensors")?;
//! let loader = WeightLoader::new(vec![ckpt]);
//! let vb = loader.var_builder(candle_core::DType::F32, &candle_core::Device::Cpu);
//! // let model = lion_core::bert::BertModel::new(&cfg, vb)?;
//! let report = loader.finish(LoadMode::Strict)?;
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::{Init, VarBuilder, VarMap};

use crate::{Error, Result};

mod checkpoint;
mod init;
mod random;
mod stream;

pub use checkpoint::*;
use init::*;
pub use random::*;
pub use stream::*;
/// The one key-rename table: `(stored, canonical)` substitutions applied to every key read from
/// a checkpoint file, in order. Canonical names are the upstream names our modules use.
///
/// | stored | canonical | why |
/// |---|---|---|
/// | `module.` (prefix) | `` | checkpoints saved from `DistributedDataParallel` |
/// | `vision_multi.` (prefix) | `tagging_head.` | RAM (`ram/models/utils.py` `load_checkpoint_swinlarge` renames the same way) |
/// | `LayerNorm.gamma` / `LayerNorm.beta` | `LayerNorm.weight` / `LayerNorm.bias` | BERT checkpoints converted from TensorFlow |
pub const KEY_RENAMES: &[Rename] = &[
    Rename::Prefix("module.", ""),
    Rename::Prefix("vision_multi.", "tagging_head."),
    Rename::Suffix("LayerNorm.gamma", "LayerNorm.weight"),
    Rename::Suffix("LayerNorm.beta", "LayerNorm.bias"),
];

/// Tied parameters: `(alias, source)` key suffixes under any common prefix (`""`, `t5_model.`,
/// ...). PyTorch's `state_dict()` writes a tied tensor once per module that holds it, so an
/// upstream state dict carries these aliases beside their source (`torch.save`d LION and older
/// Flan-T5 `pytorch_model.bin` files do; safetensors exports usually drop them). A model reads
/// the source only; an alias it never asks for is accepted when it equals its source exactly (a
/// debug log), and is a load problem naming both keys and their largest difference when not.
///
/// | alias | source | tie |
/// |---|---|---|
/// | `encoder.embed_tokens.weight` | `shared.weight` | HF T5: both stacks' `embed_tokens` are `shared` |
/// | `decoder.embed_tokens.weight` | `shared.weight` | same |
/// | `lm_head.weight` | `shared.weight` | T5 with `tie_word_embeddings` only (Flan-T5 is untied: there the model reads `lm_head.weight` as its own tensor, so the rule never applies) |
///
/// The other ties of the upstream models are not in the files LION reads: LION (as InstructBLIP)
/// sets `Qformer.cls = None`, so no BERT `cls.predictions.decoder` (tied to the word embeddings)
/// is saved; RAM's tagging head tied to `tag_encoder.encoder.layer.{0,1}` is dropped with the
/// rest of the Tag2Text parts (`tagger::RAM_IGNORED_KEYS`).
pub const TIED_KEYS: &[(&str, &str)] = &[
    ("encoder.embed_tokens.weight", "shared.weight"),
    ("decoder.embed_tokens.weight", "shared.weight"),
    ("lm_head.weight", "shared.weight"),
];

/// The source key of a tie alias (see [`TIED_KEYS`]), if `key` is one.
pub fn tie_source(key: &str) -> Option<String> {
    TIED_KEYS.iter().find_map(|(alias, source)| {
        let prefix = key.strip_suffix(alias)?;
        (prefix.is_empty() || prefix.ends_with('.')).then(|| format!("{prefix}{source}"))
    })
}

/// One rule of [`KEY_RENAMES`].
#[derive(Debug, Clone, Copy)]
pub enum Rename {
    Prefix(&'static str, &'static str),
    Suffix(&'static str, &'static str),
}

/// Applies [`KEY_RENAMES`] to a stored key.
pub fn canonical_key(stored: &str) -> String {
    let mut key = stored.to_string();
    for rule in KEY_RENAMES {
        match *rule {
            Rename::Prefix(from, to) => {
                if let Some(rest) = key.strip_prefix(from) {
                    key = format!("{to}{rest}");
                }
            }
            Rename::Suffix(from, to) => {
                if let Some(head) = key.strip_suffix(from) {
                    key = format!("{head}{to}");
                }
            }
        }
    }
    key
}

/// How strictly a checkpoint must fit the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadMode {
    /// Any missing, unexpected or mis-shaped key is an error.
    Strict,
    /// Missing and mis-shaped tensors keep their initialisation; everything is reported.
    Lenient,
}

/// A tensor whose stored shape differs from the model's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub key: String,
    pub expected: Vec<usize>,
    pub found: Vec<usize>,
}

/// The outcome of fitting checkpoints to a model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    pub mismatched: Vec<Mismatch>,
    /// Tie aliases ([`TIED_KEYS`]) that differ from their source.
    pub tie_mismatches: Vec<TieMismatch>,
    /// Tie aliases equal to their source: accepted, not loaded.
    pub tied: Vec<String>,
    /// Keys the model declared unused ([`WeightLoader::skip_unused`]): accepted, not loaded.
    pub skipped: Vec<String>,
    /// Keys loaded from a checkpoint.
    pub loaded: usize,
    /// Frozen weights of an f32 model kept in bf16 as their checkpoint stores them
    /// ([`crate::linear::get_weight`]), and their bytes (f32 copies would take twice as many).
    pub kept_bf16: (usize, usize),
}

/// A tie alias whose value is not its source's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TieMismatch {
    pub alias: String,
    pub source: String,
    /// How they differ: the largest absolute difference, or the two shapes.
    pub difference: String,
}

impl LoadReport {
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty()
            && self.unexpected.is_empty()
            && self.mismatched.is_empty()
            && self.tie_mismatches.is_empty()
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = vec![];
        if !self.missing.is_empty() {
            parts.push(format!("missing keys: {}", self.missing.join(", ")));
        }
        if !self.unexpected.is_empty() {
            parts.push(format!("unexpected keys: {}", self.unexpected.join(", ")));
        }
        if !self.mismatched.is_empty() {
            let m: Vec<String> = self
                .mismatched
                .iter()
                .map(|m| {
                    format!(
                        "{} (model {:?}, checkpoint {:?})",
                        m.key, m.expected, m.found
                    )
                })
                .collect();
            parts.push(format!("mis-shaped keys: {}", m.join(", ")));
        }
        if !self.tie_mismatches.is_empty() {
            let m: Vec<String> = self
                .tie_mismatches
                .iter()
                .map(|t| format!("{} differs from {} ({})", t.alias, t.source, t.difference))
                .collect();
            parts.push(format!(
                "tied keys that differ from their source: {}",
                m.join(", ")
            ));
        }
        if parts.is_empty() {
            write!(f, "{} tensors loaded, all keys match", self.loaded)?;
            if !self.tied.is_empty() {
                write!(
                    f,
                    "; {} tied aliases equal to their source",
                    self.tied.len()
                )?;
            }
            if !self.skipped.is_empty() {
                write!(
                    f,
                    "; {} unused checkpoint tensors skipped",
                    self.skipped.len()
                )?;
            }
            Ok(())
        } else {
            write!(f, "{}", parts.join("; "))
        }
    }
}

type Trainable = Box<dyn Fn(&str) -> bool + Send + Sync>;

struct LoaderState {
    checkpoints: Vec<Checkpoint>,
    requested: Mutex<HashSet<String>>,
    problems: Mutex<LoadReport>,
    trainable: Option<(VarMap, Trainable)>,
    ignore_unexpected: Vec<String>,
    skip_unused: Vec<String>,
    /// Tie alias -> None when equal to its source, else how it differs (computed once).
    ties: Mutex<HashMap<String, Option<String>>>,
    init_seed: Option<u64>,
    /// Every tensor handed to the model, by key (shared storage; `Var`s detached), when
    /// [`WeightLoader::retaining_tensors`] asked for them.
    handed: Mutex<HashMap<String, Tensor>>,
    retain: bool,
}

/// A [`VarBuilder`] backend over one or more checkpoints that records what the model asks for.
/// Clones share state.
#[derive(Clone)]
pub struct WeightLoader {
    state: Arc<LoaderState>,
}

impl WeightLoader {
    /// Later checkpoints win where keys repeat.
    pub fn new(checkpoints: Vec<Checkpoint>) -> Self {
        Self {
            state: Arc::new(LoaderState {
                checkpoints,
                requested: Mutex::new(HashSet::new()),
                problems: Mutex::new(LoadReport::default()),
                trainable: None,
                ignore_unexpected: vec![],
                skip_unused: vec![],
                ties: Mutex::new(HashMap::new()),
                init_seed: None,
                handed: Mutex::new(HashMap::new()),
                retain: false,
            }),
        }
    }

    /// A loader with no checkpoint: every tensor takes its initialisation (random-weights models).
    pub fn random() -> Self {
        Self::new(vec![])
    }

    fn state_mut(&mut self) -> &mut LoaderState {
        Arc::get_mut(&mut self.state).expect("configure a WeightLoader before cloning it")
    }

    /// Keys for which `is_trainable` is true become `Var`s in `varmap`.
    pub fn with_trainable(
        mut self,
        varmap: VarMap,
        is_trainable: impl Fn(&str) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.state_mut().trainable = Some((varmap, Box::new(is_trainable)));
        self
    }

    /// Initialisations drawn from (`seed`, key) instead of candle's unseeded generator, so that a
    /// model with random or missing weights is the same on every run.
    pub fn with_init_seed(mut self, seed: u64) -> Self {
        self.state_mut().init_seed = Some(seed);
        self
    }

    /// Keeps every tensor handed to the model for [`Self::tensors`]. Off by default: the loaded
    /// (f32) tensors would stay alive beside a bf16 or quantized copy the model keeps.
    pub fn retaining_tensors(mut self) -> Self {
        self.state_mut().retain = true;
        self
    }

    /// Checkpoint keys containing any of these substrings are not reported as unexpected
    /// (buffers the model recomputes, e.g. `position_ids`, `relative_position_index`).
    pub fn ignore_unexpected(mut self, patterns: &[&str]) -> Self {
        self.state_mut()
            .ignore_unexpected
            .extend(patterns.iter().map(|s| s.to_string()));
        self
    }

    /// Checkpoint keys starting with any of these prefixes are known to be unused by the model
    /// (e.g. `visual_encoder.blocks.39.`: LAVIS/LION build ViT-g with 39 of the 40 blocks of
    /// `eva_vit_g.pth`, see [`crate::eva_vit::EvaVitConfig::checkpoint_depth`]): accepted when
    /// present, never loaded, listed in [`LoadReport::skipped`].
    pub fn skip_unused(mut self, prefixes: &[String]) -> Self {
        self.state_mut()
            .skip_unused
            .extend(prefixes.iter().cloned());
        self
    }

    /// A `VarBuilder` reading from this loader.
    pub fn var_builder(&self, dtype: DType, dev: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, dev.clone())
    }

    fn find(&self, key: &str) -> Option<&Checkpoint> {
        self.state.checkpoints.iter().rev().find(|c| c.has_key(key))
    }

    /// Source names for messages.
    pub fn source_name(&self) -> String {
        if self.state.checkpoints.is_empty() {
            "random weights".to_string()
        } else {
            self.state
                .checkpoints
                .iter()
                .map(|c| c.name())
                .collect::<Vec<_>>()
                .join(" + ")
        }
    }

    /// The report so far (missing, unexpected, mis-shaped keys, tie aliases), without judging
    /// it. Tie aliases are compared with their sources once (both loaded to f32 on the CPU).
    pub fn report(&self) -> LoadReport {
        let mut report = self.state.problems.lock().expect("poisoned").clone();
        let mut unrequested: Vec<String> = {
            let requested = self.state.requested.lock().expect("poisoned");
            self.state
                .checkpoints
                .iter()
                .flat_map(|c| c.keys())
                .filter(|k| !requested.contains(*k))
                .filter(|k| !self.state.ignore_unexpected.iter().any(|p| k.contains(p)))
                .map(|k| k.to_string())
                .collect()
        };
        unrequested.sort();
        unrequested.dedup();
        for key in unrequested {
            if self.state.skip_unused.iter().any(|p| key.starts_with(p)) {
                report.skipped.push(key);
                continue;
            }
            let source = tie_source(&key).filter(|s| self.find(s).is_some());
            match source {
                Some(source) => match self.tie_difference(&key, &source) {
                    None => report.tied.push(key),
                    Some(difference) => report.tie_mismatches.push(TieMismatch {
                        alias: key,
                        source,
                        difference,
                    }),
                },
                None => report.unexpected.push(key),
            }
        }
        report.missing.sort();
        report.mismatched.sort_by(|a, b| a.key.cmp(&b.key));
        report
    }

    /// None when the tie alias `alias` holds exactly its source's values, else how it differs.
    fn tie_difference(&self, alias: &str, source: &str) -> Option<String> {
        if let Some(done) = self.state.ties.lock().expect("poisoned").get(alias) {
            return done.clone();
        }
        let load = |key: &str| -> Result<Tensor> {
            let ckpt = self.find(key).expect("the caller checked the key exists");
            Ok(ckpt.get(key, &Device::Cpu)?.to_dtype(DType::F32)?)
        };
        let outcome = match (load(alias), load(source)) {
            (Ok(a), Ok(b)) if a.shape() != b.shape() => {
                Some(format!("shapes {:?} and {:?}", a.dims(), b.dims()))
            }
            (Ok(a), Ok(b)) => {
                let max_abs = |a: &Tensor, b: &Tensor| -> candle_core::Result<f32> {
                    a.sub(b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
                };
                match max_abs(&a, &b) {
                    Ok(0.0) => None,
                    Ok(m) => Some(format!("max abs diff {m:e}")),
                    Err(e) => Some(format!("cannot compare: {e}")),
                }
            }
            (Err(e), _) | (_, Err(e)) => Some(format!("cannot read: {e}")),
        };
        match &outcome {
            None => tracing::debug!("{alias}: tied to {source}, equal; accepted"),
            Some(d) => tracing::debug!("{alias}: tied to {source}, but differs ({d})"),
        }
        self.state
            .ties
            .lock()
            .expect("poisoned")
            .insert(alias.to_string(), outcome.clone());
        outcome
    }

    /// Judges the load: in strict mode any problem is an [`Error::Keys`] naming every key.
    /// In lenient mode the report is returned and also logged as a warning.
    pub fn finish(&self, mode: LoadMode) -> Result<LoadReport> {
        let report = self.report();
        if report.kept_bf16.0 > 0 {
            tracing::info!(
                weights = report.kept_bf16.0,
                mib = report.kept_bf16.1 >> 20,
                "frozen weights kept in bf16 as stored: exactly their f32 values, in half the memory"
            );
        }
        if !report.tied.is_empty() || !report.skipped.is_empty() {
            tracing::debug!(
                tied = ?report.tied,
                skipped = report.skipped.len(),
                "tie aliases equal to their source and declared-unused tensors, not loaded"
            );
        }
        if report.is_clean() || self.state.checkpoints.is_empty() {
            return Ok(report);
        }
        match mode {
            LoadMode::Strict => Err(Error::Keys {
                source_name: self.source_name(),
                report: Box::new(report),
            }),
            LoadMode::Lenient => {
                tracing::warn!(source = %self.source_name(), "{report}");
                Ok(report)
            }
        }
    }

    fn record_missing(&self, key: &str) {
        if !self.state.checkpoints.is_empty() {
            self.state
                .problems
                .lock()
                .expect("poisoned")
                .missing
                .push(key.to_string());
        }
    }

    /// With [`Self::retaining_tensors`] (else empty):
    /// every tensor the model was given, by key: the same storage (no copy), trainable ones
    /// detached from their `Var`, so they follow its updates. A model built again over them
    /// (`Checkpoint::from_tensors`) is the same model with no `Var` in it: inference that builds
    /// no autograd graph (evaluation during training).
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.state.handed.lock().expect("poisoned").clone()
    }

    fn make(&self, key: &str, value: Tensor) -> candle_core::Result<Tensor> {
        let t = self.make_inner(key, value)?;
        if self.state.retain {
            self.state
                .handed
                .lock()
                .expect("poisoned")
                .insert(key.to_string(), t.detach());
        }
        Ok(t)
    }

    fn make_inner(&self, key: &str, value: Tensor) -> candle_core::Result<Tensor> {
        match &self.state.trainable {
            Some((varmap, pred)) if pred(key) => {
                let mut data = varmap.data().lock().expect("poisoned");
                if let Some(var) = data.get(key) {
                    return Ok(var.as_tensor().clone());
                }
                // a trainable weight is f32 even when asked for in bf16 (`linear::get_weight`)
                let value = match value.dtype() {
                    DType::BF16 | DType::F16 => value.to_dtype(DType::F32)?,
                    _ => value,
                };
                let var = Var::from_tensor(&value)?;
                let t = var.as_tensor().clone();
                data.insert(key.to_string(), var);
                Ok(t)
            }
            _ => Ok(value),
        }
    }
}

impl candle_nn::var_builder::SimpleBackend for WeightLoader {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let first_time = self
            .state
            .requested
            .lock()
            .expect("poisoned")
            .insert(name.to_string());
        let value = match self.find(name) {
            Some(ckpt) if ckpt.shape(name) == Some(&s) => {
                let t = ckpt.get(name, dev).map_err(candle_core::Error::wrap)?;
                // a frozen f32 weight stored in bf16 may stay so (`linear::get_weight`)
                let keep = t.dtype() == DType::BF16
                    && dtype == DType::F32
                    && dev.is_cpu()
                    && crate::linear::keeps_stored_bf16();
                if keep && first_time {
                    let mut p = self.state.problems.lock().expect("poisoned");
                    p.kept_bf16.0 += 1;
                    p.kept_bf16.1 += t.elem_count() * 2;
                }
                Some(if keep { t } else { t.to_dtype(dtype)? })
            }
            Some(ckpt) => {
                if first_time {
                    let found = ckpt.shape(name).map(|s| s.dims().to_vec());
                    self.state
                        .problems
                        .lock()
                        .expect("poisoned")
                        .mismatched
                        .push(Mismatch {
                            key: name.to_string(),
                            expected: s.dims().to_vec(),
                            found: found.unwrap_or_default(),
                        });
                }
                None
            }
            None => {
                if first_time {
                    self.record_missing(name);
                }
                None
            }
        };
        if let Some(v) = &value {
            if first_time {
                self.state.problems.lock().expect("poisoned").loaded += 1;
            }
            return self.make(name, v.clone());
        }
        // Missing or mis-shaped: the initialisation stands in (judged later by `finish`).
        let init = match self.state.init_seed {
            Some(seed) => seeded_init(h, &s, seed, name)?
                .to_dtype(dtype)?
                .to_device(dev)?,
            None => h.var(s, dtype, dev)?.as_tensor().detach(),
        };
        self.make(name, init)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.state
            .requested
            .lock()
            .expect("poisoned")
            .insert(name.to_string());
        match self.find(name) {
            Some(ckpt) => {
                let t = ckpt
                    .get(name, dev)
                    .map_err(candle_core::Error::wrap)?
                    .to_dtype(dtype)?;
                self.make(name, t)
            }
            None => candle_core::bail!("no tensor named `{name}` in {}", self.source_name()),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.find(name).is_some()
    }
}

/// The variables of a [`VarMap`] as named tensors (the same storage, not copies): what a model
/// built on it holds, under its checkpoint keys. A poisoned lock is read as it is.
pub fn varmap_tensors(varmap: &VarMap) -> HashMap<String, Tensor> {
    varmap_vars(varmap)
        .into_iter()
        .map(|(k, v)| (k, v.as_tensor().clone()))
        .collect()
}

/// The variables of a [`VarMap`] with their names, sorted by name (the map's own order is a
/// hash order): what an optimizer or a gradient check walks. A poisoned lock is read as it is.
pub fn varmap_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let mut vars: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// Writes tensors as safetensors atomically: to a temporary file beside `path`, then renamed.
pub fn save_safetensors(tensors: &HashMap<String, Tensor>, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let tmp = crate::util::temp_path(path);
    candle_core::safetensors::save(tensors, &tmp)
        .map_err(|e| Error::format(path, format!("cannot write safetensors: {e}")))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests;
