//! The trainable tag encoder: a BERT sentence transformer (all-MiniLM-L6-v2 by default) whose
//! weights are all `Var`s, embedding `"tag: score, ..."` strings (mean pooling + L2 norm for
//! all-MiniLM-L6-v2, as its folder says).
//!
//! DynLION (docs/DESIGN.md §4, "Dynamic LION prior art") used bert-base-uncased's unnormalised `[CLS]` state; we keep the
//! sentence transformer's own pooling, so the anchor lives on the same unit sphere as the caption
//! embeddings it is pulled towards.
//!
//! [`TagEncoder::save`] writes a model folder that `SentenceEmbedder::load` (so `lion embed
//! --model DIR` and LION) reads: `config.json`, `model.safetensors`, `tokenizer.json` and the
//! sentence-transformers side files, copied from the source folder.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use lion_core::sentence::{weight_file, SentenceEmbedder, TokenBatch};
use lion_core::weights::{save_safetensors, Checkpoint};
use lion_core::{Error, Result};

/// Side files of a sentence-transformers folder copied into a saved model, when present.
pub const SIDE_FILES: &[&str] = &[
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
];

/// A sentence transformer with trainable weights.
pub struct TagEncoder {
    embedder: SentenceEmbedder,
    varmap: VarMap,
    source: PathBuf,
}

impl TagEncoder {
    /// Loads a model folder with every weight that shapes the sentence embedding trainable.
    /// The BERT pooler (`pooler.dense.*`) is not used by sentence-transformers pooling: it is
    /// taken out of the trainable set and saved back unchanged.
    pub fn load(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let dir = dir.as_ref();
        let varmap = VarMap::new();
        let embedder = SentenceEmbedder::load(dir, device, Some(varmap.clone()))?;
        {
            let mut data = varmap.data().lock().expect("poisoned");
            let unused: Vec<String> = data
                .keys()
                .filter(|k| k.starts_with("pooler.") || k.contains(".pooler."))
                .cloned()
                .collect();
            for k in &unused {
                data.remove(k);
            }
        }
        Ok(Self {
            embedder,
            varmap,
            source: dir.to_path_buf(),
        })
    }

    /// The trainable variables, by checkpoint key.
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    pub fn embedder(&self) -> &SentenceEmbedder {
        &self.embedder
    }

    pub fn device(&self) -> &Device {
        self.embedder.device()
    }

    /// Tokenizes texts into a right-padded batch.
    pub fn tokenize(&self, texts: &[&str]) -> Result<TokenBatch> {
        self.embedder.tokenizer().batch(texts, self.device())
    }

    /// Differentiable: token batch -> (b, hidden) embeddings. `train` turns dropout on.
    pub fn forward(&self, batch: &TokenBatch, train: bool) -> Result<Tensor> {
        self.embedder.forward(batch, train)
    }

    /// Writes the model folder `dir` (created if needed): every trained tensor, the untouched
    /// rest of the source checkpoint, and the source folder's side files. Each file is written
    /// atomically.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let src = Checkpoint::open(weight_file(&self.source)?)?;
        let mut tensors: HashMap<String, Tensor> = src.load_all(&Device::Cpu)?;
        for (k, v) in lion_core::weights::varmap_tensors(&self.varmap) {
            tensors.insert(k, v.to_device(&Device::Cpu)?);
        }
        for name in SIDE_FILES {
            let from = self.source.join(name);
            if !from.exists() {
                continue;
            }
            let to = dir.join(name);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            }
            let bytes = std::fs::read(&from).map_err(|e| Error::io(&from, e))?;
            lion_core::util::write_atomic(&to, &bytes)?;
        }
        save_safetensors(&tensors, dir.join("model.safetensors"))
    }
}
