//! Sentence transformer: a BERT model folder (HF / sentence-transformers layout) turned into
//! sentence embeddings by pooling (mean or CLS) and optional L2 normalisation.
//!
//! The folder holds `config.json`, `model.safetensors` (or `pytorch_model.bin`), `tokenizer.json`
//! and, when written by sentence-transformers, `sentence_bert_config.json` (`max_seq_length`),
//! `1_Pooling/config.json` and `modules.json` (whether a `Normalize` module follows).
//! all-MiniLM-L6-v2 is the default: mean pooling, normalised, 256 tokens.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use serde::Deserialize;
use tokenizers::Tokenizer;

use crate::bert::{l2_normalize, mean_pool, BertConfig, BertModel};
use crate::weights::{Checkpoint, LoadMode, LoadReport, WeightLoader};
use crate::{Error, Result};

/// How token states become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over non-padding tokens.
    Mean,
    /// The `[CLS]` (first) token's state.
    Cls,
}

#[derive(Deserialize)]
struct PoolingFile {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
}

#[derive(Deserialize)]
struct SbertFile {
    max_seq_length: Option<usize>,
}

#[derive(Deserialize)]
struct ModuleEntry {
    #[serde(rename = "type")]
    kind: String,
}

/// A BERT tokenizer from `tokenizer.json`, with its fixed padding turned off (padding to 128
/// would change nothing in the masked mean, but costs time) and truncation set to `max_len`.
#[derive(Clone)]
pub struct BertTokenizer {
    inner: Tokenizer,
    pad_id: u32,
    origin: String,
}

/// A tokenized batch, right-padded.
#[derive(Debug, Clone)]
pub struct TokenBatch {
    /// (b, t) u32
    pub input_ids: Tensor,
    /// (b, t) u32, 1 for real tokens
    pub attention_mask: Tensor,
}

impl BertTokenizer {
    pub fn from_file(path: impl AsRef<Path>, max_len: usize) -> Result<Self> {
        let path = path.as_ref();
        let origin = path.display().to_string();
        let mut inner = Tokenizer::from_file(path).map_err(|e| Error::Tokenizer {
            origin: origin.clone(),
            msg: e.to_string(),
        })?;
        inner.with_padding(None);
        inner
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: max_len,
                ..Default::default()
            }))
            .map_err(|e| Error::Tokenizer {
                origin: origin.clone(),
                msg: e.to_string(),
            })?;
        let pad_id = inner.token_to_id("[PAD]").unwrap_or(0);
        Ok(Self {
            inner,
            pad_id,
            origin,
        })
    }

    /// The same tokenizer truncating from the left (LION's Q-Former tokenizer:
    /// `BertTokenizer(truncation_side="left")`).
    pub fn left_truncated(mut self) -> Result<Self> {
        let max_length = self
            .inner
            .get_truncation()
            .map(|t| t.max_length)
            .unwrap_or(512);
        self.inner
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length,
                direction: tokenizers::TruncationDirection::Left,
                ..Default::default()
            }))
            .map_err(|e| Error::Tokenizer {
                origin: self.origin.clone(),
                msg: e.to_string(),
            })?;
        Ok(self)
    }

    /// Token ids of each text (with `[CLS]`/`[SEP]`).
    pub fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let enc = self
            .inner
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| Error::Tokenizer {
                origin: self.origin.clone(),
                msg: e.to_string(),
            })?;
        Ok(enc.into_iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Right-pads to the longest text of the batch.
    pub fn batch(&self, texts: &[&str], dev: &Device) -> Result<TokenBatch> {
        let ids = self.encode(texts)?;
        let t = ids.iter().map(|v| v.len()).max().unwrap_or(0).max(1);
        let mut flat = Vec::with_capacity(ids.len() * t);
        let mut mask = Vec::with_capacity(ids.len() * t);
        for row in &ids {
            flat.extend_from_slice(row);
            flat.extend(std::iter::repeat_n(self.pad_id, t - row.len()));
            mask.extend(std::iter::repeat_n(1u32, row.len()));
            mask.extend(std::iter::repeat_n(0u32, t - row.len()));
        }
        let b = ids.len();
        Ok(TokenBatch {
            input_ids: Tensor::from_vec(flat, (b, t), dev)?,
            attention_mask: Tensor::from_vec(mask, (b, t), dev)?,
        })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.inner
    }
}

/// Finds the weight file of a model folder.
pub fn weight_file(dir: &Path) -> Result<PathBuf> {
    for name in ["model.safetensors", "pytorch_model.bin", "model.pth"] {
        let p = dir.join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    Err(Error::format(
        dir,
        "no weights: expected model.safetensors, pytorch_model.bin or model.pth in the model folder",
    ))
}

/// BERT + tokenizer + pooling: text in, one vector per text out.
pub struct SentenceEmbedder {
    bert: BertModel,
    tokenizer: BertTokenizer,
    pooling: Pooling,
    normalize: bool,
    device: Device,
    dir: PathBuf,
}

impl SentenceEmbedder {
    /// Loads a model folder. With `varmap`, every BERT weight becomes a trainable `Var` in it.
    pub fn load(dir: impl AsRef<Path>, device: &Device, varmap: Option<VarMap>) -> Result<Self> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(Error::format(dir, "model folder does not exist"));
        }
        let cfg = BertConfig::from_file(dir.join("config.json"))?;
        let pooling = match crate::util::read_json::<PoolingFile>(dir.join("1_Pooling/config.json"))
        {
            Ok(p) if p.pooling_mode_cls_token && !p.pooling_mode_mean_tokens => Pooling::Cls,
            _ => Pooling::Mean,
        };
        let normalize = match crate::util::read_json::<Vec<ModuleEntry>>(dir.join("modules.json")) {
            Ok(mods) => mods.iter().any(|m| m.kind.ends_with("Normalize")),
            Err(_) => true,
        };
        let max_len = crate::util::read_json::<SbertFile>(dir.join("sentence_bert_config.json"))
            .ok()
            .and_then(|s| s.max_seq_length)
            .unwrap_or(cfg.max_position_embeddings)
            .min(cfg.max_position_embeddings);
        let tokenizer = BertTokenizer::from_file(dir.join("tokenizer.json"), max_len)?;
        let (bert, _report) = load_bert(&cfg, &weight_file(dir)?, device, varmap)?;
        Ok(Self {
            bert,
            tokenizer,
            pooling,
            normalize,
            device: device.clone(),
            dir: dir.to_path_buf(),
        })
    }

    pub fn bert(&self) -> &BertModel {
        &self.bert
    }

    pub fn tokenizer(&self) -> &BertTokenizer {
        &self.tokenizer
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn hidden_size(&self) -> usize {
        self.bert.config().hidden_size
    }

    /// Differentiable: token batch -> (b, hidden) sentence embeddings.
    pub fn forward(&self, batch: &TokenBatch, train: bool) -> Result<Tensor> {
        let h = self
            .bert
            .forward(&batch.input_ids, None, Some(&batch.attention_mask), train)?;
        let pooled = match self.pooling {
            Pooling::Mean => mean_pool(&h, &batch.attention_mask)?,
            Pooling::Cls => h.narrow(1, 0, 1)?.squeeze(1)?,
        };
        Ok(if self.normalize {
            l2_normalize(&pooled)?
        } else {
            pooled
        })
    }

    /// Embeds texts in batches of `batch_size`: one `Vec<f32>` per text, in order.
    pub fn embed(&self, texts: &[&str], batch_size: usize) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(batch_size.max(1)) {
            let batch = self.tokenizer.batch(chunk, &self.device)?;
            let e = self.forward(&batch, false)?.to_dtype(DType::F32)?;
            out.extend(e.to_vec2::<f32>()?);
        }
        Ok(out)
    }
}

/// Loads a `BertModel` from one weight file, strictly (every key must fit).
pub fn load_bert(
    cfg: &BertConfig,
    weights: &Path,
    device: &Device,
    varmap: Option<VarMap>,
) -> Result<(BertModel, LoadReport)> {
    let mut loader =
        WeightLoader::new(vec![Checkpoint::open(weights)?]).ignore_unexpected(&["position_ids"]);
    if let Some(vm) = varmap {
        loader = loader.with_trainable(vm, |_| true);
    }
    let vb = loader.var_builder(DType::F32, device);
    // BertModel checkpoints saved from task heads carry a `bert.` prefix.
    let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
        vb.pp("bert")
    } else {
        vb
    };
    let bert = BertModel::new(cfg, vb)?;
    let report = loader.finish(LoadMode::Strict)?;
    Ok((bert, report))
}

/// Index of the embedding with the highest cosine similarity to the mean of all of them
/// (the "centroid-nearest caption" of Dynamic LION step 2). Ties go to the first. None if empty.
pub fn nearest_to_centroid(embs: &[Vec<f32>]) -> Option<usize> {
    let dim = embs.first()?.len();
    let mut mean = vec![0f64; dim];
    for e in embs {
        for (m, x) in mean.iter_mut().zip(e) {
            *m += *x as f64 / embs.len() as f64;
        }
    }
    let cos = |e: &Vec<f32>| {
        let dot: f64 = e.iter().zip(&mean).map(|(a, b)| *a as f64 * b).sum();
        let ne: f64 = e.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
        let nm: f64 = mean.iter().map(|a| a * a).sum::<f64>().sqrt();
        dot / (ne * nm).max(1e-12)
    };
    let mut best = 0;
    let mut best_cos = f64::NEG_INFINITY;
    for (i, e) in embs.iter().enumerate() {
        let c = cos(e);
        if c > best_cos {
            best = i;
            best_cos = c;
        }
    }
    Some(best)
}
