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

enum Store {
    Safetensors(candle_core::safetensors::MmapedSafetensors),
    Pth(candle_core::pickle::PthTensors),
    Memory(HashMap<String, Tensor>),
}

/// One checkpoint file (or an in-memory tensor map), with keys in canonical form.
pub struct Checkpoint {
    name: String,
    store: Store,
    /// canonical key -> (stored key, shape)
    keys: BTreeMap<String, (String, Shape)>,
}

impl fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checkpoint")
            .field("name", &self.name)
            .field("tensors", &self.keys.len())
            .finish()
    }
}

/// What a file's first bytes say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    Safetensors,
    /// `torch.save` zip archive (PyTorch >= 1.6).
    PthZip,
    /// Old `torch.save` pickle stream, not a zip archive.
    PthLegacy,
}

/// Sniffs the format of a weight file from its first bytes.
pub fn sniff_format(path: &Path) -> Result<FileFormat> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    if len == 0 {
        return Err(Error::format(path, "file is empty (0 bytes)"));
    }
    let mut head = [0u8; 9];
    let n = f.read(&mut head).map_err(|e| Error::io(path, e))?;
    let head = &head[..n];
    if head.starts_with(b"PK\x03\x04") {
        return Ok(FileFormat::PthZip);
    }
    if head.first() == Some(&0x80) {
        return Ok(FileFormat::PthLegacy);
    }
    if n >= 9 {
        let header_len = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
        if head[8] == b'{' && header_len + 8 <= len {
            return Ok(FileFormat::Safetensors);
        }
        if head[8] == b'{' {
            return Err(Error::format(
                path,
                format!(
                    "safetensors header says {header_len} header bytes but the file has only {len} bytes (truncated?)"
                ),
            ));
        }
    }
    Err(Error::format(
        path,
        "not a weight file: expected safetensors or a PyTorch .pth zip archive",
    ))
}

/// Runs a parser that may panic on malformed input, turning a panic into a format error.
fn guarded<T>(path: &Path, what: &str, f: impl FnOnce() -> candle_core::Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Error::format(path, format!("{what}: {e}"))),
        Err(_) => Err(Error::format(path, format!("{what}: malformed file"))),
    }
}

impl Checkpoint {
    /// Opens a safetensors or `.pth` file. A `.pth` may hold a bare state dict or
    /// `{"model": state_dict}` (or `{"state_dict": ...}`).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        match sniff_format(path)? {
            FileFormat::Safetensors => Self::open_safetensors(path),
            FileFormat::PthZip => Self::open_pth(path),
            FileFormat::PthLegacy => Err(Error::format(
                path,
                "legacy (non-zip) torch.save format is not supported; re-save it with a PyTorch >= 1.6 `torch.save`",
            )),
        }
    }

    fn open_safetensors(path: &Path) -> Result<Self> {
        crate::weight_checks::unique_safetensors_keys(path)?;
        // SAFETY: the file is mapped read-only; like every mmap reader we rely on it not being
        // truncated by another process while we hold it.
        let st = guarded(path, "cannot read safetensors", || unsafe {
            candle_core::safetensors::MmapedSafetensors::new(path)
        })?;
        let mut keys = BTreeMap::new();
        for (name, view) in st.tensors() {
            let shape = Shape::from(view.shape().to_vec());
            keys.insert(canonical_key(&name), (name, shape));
        }
        Ok(Self {
            name: path.display().to_string(),
            store: Store::Safetensors(st),
            keys,
        })
    }

    fn open_pth(path: &Path) -> Result<Self> {
        let mut last_err = None;
        for key in [None, Some("model"), Some("state_dict")] {
            match guarded(path, "cannot read .pth", || {
                candle_core::pickle::PthTensors::new(path, key)
            }) {
                Ok(pth) if !pth.tensor_infos().is_empty() => {
                    let mut keys = BTreeMap::new();
                    for (name, info) in pth.tensor_infos() {
                        keys.insert(
                            canonical_key(name),
                            (name.clone(), info.layout.shape().clone()),
                        );
                    }
                    return Ok(Self {
                        name: path.display().to_string(),
                        store: Store::Pth(pth),
                        keys,
                    });
                }
                Ok(_) => {}
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| {
            Error::format(
                path,
                "no tensors found: expected a state dict, {\"model\": state_dict} or {\"state_dict\": ...}",
            )
        }))
    }

    /// An in-memory checkpoint (tests, converted weights). Keys go through [`KEY_RENAMES`] too.
    pub fn from_tensors(name: impl Into<String>, tensors: HashMap<String, Tensor>) -> Self {
        let keys = tensors
            .iter()
            .map(|(k, t)| (canonical_key(k), (k.clone(), t.shape().clone())))
            .collect();
        Self {
            name: name.into(),
            store: Store::Memory(tensors),
            keys,
        }
    }

    /// Puts every key under `prefix` (e.g. an `eva_vit_g.pth` read as `visual_encoder.*`, a
    /// Flan-T5 folder as `t5_model.*`), so component files fit the assembled model's key tree.
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.keys = std::mem::take(&mut self.keys)
            .into_iter()
            .map(|(k, v)| (format!("{prefix}{k}"), v))
            .collect();
        self
    }

    /// The file name (or given name) of this checkpoint, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Canonical keys, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(|k| k.as_str())
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn shape(&self, key: &str) -> Option<&Shape> {
        self.keys.get(key).map(|(_, s)| s)
    }

    /// Loads one tensor by canonical key, in its stored dtype, on `dev`.
    pub fn get(&self, key: &str, dev: &Device) -> Result<Tensor> {
        let (stored, _) = self.keys.get(key).ok_or_else(|| {
            Error::format(&self.name, format!("no tensor named `{key}` in checkpoint"))
        })?;
        let path = PathBuf::from(&self.name);
        let what = format!("cannot read tensor `{stored}`");
        let t = match &self.store {
            Store::Safetensors(st) => guarded(&path, &what, || st.load(stored, dev))?,
            Store::Pth(pth) => {
                let t = guarded(&path, &what, || pth.get(stored))?
                    .ok_or_else(|| Error::format(&path, format!("{what}: missing")))?;
                t.to_device(dev)?
            }
            Store::Memory(m) => m[stored].to_device(dev)?,
        };
        crate::weight_checks::check_finite(&self.name, stored, &t)?;
        Ok(t)
    }

    /// Loads every tensor (small checkpoints, tests).
    pub fn load_all(&self, dev: &Device) -> Result<HashMap<String, Tensor>> {
        self.keys()
            .map(|k| Ok((k.to_string(), self.get(k, dev)?)))
            .collect()
    }
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
    /// Every tensor handed to the model, by key (shared storage; `Var`s detached).
    handed: Mutex<HashMap<String, Tensor>>,
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
        self.state
            .checkpoints
            .iter()
            .rev()
            .find(|c| c.keys.contains_key(key))
    }

    /// Source names for messages.
    pub fn source_name(&self) -> String {
        if self.state.checkpoints.is_empty() {
            "random weights".to_string()
        } else {
            self.state
                .checkpoints
                .iter()
                .map(|c| c.name.as_str())
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

    /// Every tensor the model was given, by key: the same storage (no copy), trainable ones
    /// detached from their `Var`, so they follow its updates. A model built again over them
    /// (`Checkpoint::from_tensors`) is the same model with no `Var` in it: inference that builds
    /// no autograd graph (evaluation during training).
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.state.handed.lock().expect("poisoned").clone()
    }

    fn make(&self, key: &str, value: Tensor) -> candle_core::Result<Tensor> {
        let t = self.make_inner(key, value)?;
        self.state
            .handed
            .lock()
            .expect("poisoned")
            .insert(key.to_string(), t.detach());
        Ok(t)
    }

    fn make_inner(&self, key: &str, value: Tensor) -> candle_core::Result<Tensor> {
        match &self.state.trainable {
            Some((varmap, pred)) if pred(key) => {
                let mut data = varmap.data().lock().expect("poisoned");
                if let Some(var) = data.get(key) {
                    return Ok(var.as_tensor().clone());
                }
                let var = Var::from_tensor(&value)?;
                let t = var.as_tensor().clone();
                data.insert(key.to_string(), var);
                Ok(t)
            }
            _ => Ok(value),
        }
    }
}

/// candle's [`Init`] drawn from a generator seeded by (`seed`, `key`) (SplitMix64; normals by
/// Box-Muller), same distributions as `Init::var`.
fn seeded_init(h: Init, shape: &Shape, seed: u64, key: &str) -> candle_core::Result<Tensor> {
    use candle_nn::init::NormalOrUniform;
    let n = shape.elem_count();
    let state = key.bytes().fold(seed ^ 0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    let mut rng = lion_rng::SplitMix64::new(state);
    let mut next = || rng.next_f64();
    let mut uniform = |lo: f64, up: f64| -> Vec<f32> {
        (0..n).map(|_| (lo + (up - lo) * next()) as f32).collect()
    };
    let values: Vec<f32> = match h {
        Init::Const(c) => vec![c as f32; n],
        Init::Uniform { lo, up } => uniform(lo, up),
        Init::Randn { mean, stdev } => normal(n, mean, stdev, &mut next),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let std = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
            match dist {
                NormalOrUniform::Uniform => {
                    let b = 3f64.sqrt() * std;
                    uniform(-b, b)
                }
                NormalOrUniform::Normal => normal(n, 0.0, std, &mut next),
            }
        }
    };
    Tensor::from_vec(values, shape.clone(), &Device::Cpu)
}

fn normal(n: usize, mean: f64, std: f64, next: &mut impl FnMut() -> f64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1 = next().max(f64::MIN_POSITIVE);
            let u2 = next();
            let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            (mean + std * z) as f32
        })
        .collect()
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
            Some(ckpt) if ckpt.shape(name) == Some(&s) => Some(
                ckpt.get(name, dev)
                    .map_err(candle_core::Error::wrap)?
                    .to_dtype(dtype)?,
            ),
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

/// Writes tensors as safetensors atomically: to a temporary file beside `path`, then renamed.
/// The variables of a [`VarMap`] as named tensors (the same storage, not copies): what a model
/// built on it holds, under its checkpoint keys. A poisoned lock is read as it is.
pub fn varmap_tensors(varmap: &VarMap) -> HashMap<String, Tensor> {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    data.iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect()
}

pub fn save_safetensors(tensors: &HashMap<String, Tensor>, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let tmp = crate::util::temp_path(path);
    candle_core::safetensors::save(tensors, &tmp)
        .map_err(|e| Error::format(path, format!("cannot write safetensors: {e}")))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::init::{FanInOut, NonLinearity, NormalOrUniform};

    fn draw(seed: u64, key: &str, h: Init, shape: (usize, usize)) -> Vec<f32> {
        let loader = WeightLoader::random().with_init_seed(seed);
        let vb = loader.var_builder(DType::F32, &Device::Cpu);
        vb.get_with_hints(shape, key, h)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    fn mean_std(v: &[f32]) -> (f64, f64) {
        let n = v.len() as f64;
        let m = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / n;
        (m, var.sqrt())
    }

    #[test]
    fn seeded_init_is_reproducible_per_key_and_has_the_asked_distribution() {
        let normal = Init::Randn {
            mean: 0.5,
            stdev: 0.02,
        };
        let a = draw(7, "w", normal, (200, 100));
        assert_eq!(a, draw(7, "w", normal, (200, 100)));
        assert_ne!(a, draw(8, "w", normal, (200, 100)));
        assert_ne!(a, draw(7, "v", normal, (200, 100)));
        let (m, s) = mean_std(&a);
        assert!((m - 0.5).abs() < 1e-3 && (s - 0.02).abs() < 1e-3, "{m} {s}");
        let u = draw(1, "u", Init::Uniform { lo: -2.0, up: 1.0 }, (100, 100));
        assert!(u.iter().all(|&x| (-2.0..1.0).contains(&x)));
        let (m, _) = mean_std(&u);
        assert!((m + 0.5).abs() < 0.05, "{m}");
        let k = draw(
            1,
            "k",
            Init::Kaiming {
                dist: NormalOrUniform::Normal,
                fan: FanInOut::FanIn,
                non_linearity: NonLinearity::Linear,
            },
            (400, 64),
        );
        let (_, s) = mean_std(&k);
        assert!((s - 1.0 / 8.0).abs() < 0.005, "{s}");
        assert!(draw(3, "c", Init::Const(0.25), (3, 3))
            .iter()
            .all(|&x| x == 0.25));
    }
}
