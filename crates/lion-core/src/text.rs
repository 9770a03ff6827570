//! Text side of LION: the T5 tokenizer (`T5TokenizerFast` semantics from `tokenizer.json`) with
//! upstream's truncation sides, padding and decoding.
//!
//! Upstream tokenizes the encoder text with `truncation_side="left"` (a long tag list loses its
//! head first) and the target with `truncation_side="right"`, both to 128 tokens, `</s>` appended
//! by the post-processor; pads become -100 in the labels (`lion_t5.py` L303-343).

use std::path::Path;

use candle_core::{Device, Tensor};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams};

use crate::prompt::PLACEHOLDER;
use crate::{Error, Result};

/// ShapesWorld's `tokenizer.json` (the `shapes` preset's), as bundled.
pub const SHAPES_TOKENIZER_JSON: &[u8] = include_bytes!("../assets/shapes-tokenizer.json");

/// A T5 tokenizer from `tokenizer.json`.
#[derive(Clone)]
pub struct T5Tokenizer {
    inner: Tokenizer,
    pad_id: u32,
    eos_id: u32,
    placeholder_id: Option<u32>,
    origin: String,
}

/// A right-padded batch of token ids.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// Token ids per row, unpadded.
    pub ids: Vec<Vec<u32>>,
    /// (b, t) u32, padded with the pad id.
    pub input_ids: Tensor,
    /// (b, t) u32, 1 for real tokens.
    pub attention_mask: Tensor,
}

impl T5Tokenizer {
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    /// The small T5-style tokenizer that ships with LION-rs (200 tokens, `<extra_id_0..9>`), for
    /// random-weight presets and the demo; real checkpoints bring their own `tokenizer.json`.
    /// Made by `scripts/make_t5_tokenizer.py`.
    pub fn bundled() -> Result<Self> {
        Self::from_bytes(
            include_bytes!("../assets/t5-tokenizer.json"),
            "bundled t5-tokenizer.json",
        )
    }

    /// ShapesWorld's tokenizer (431 tokens: the world's words whole, boxes digit by digit), for
    /// the `shapes` preset. Made by `scripts/make_t5_tokenizer.py` (see there).
    pub fn bundled_shapes() -> Result<Self> {
        Self::from_bytes(SHAPES_TOKENIZER_JSON, "bundled shapes-tokenizer.json")
    }

    /// The bundled tokenizer a preset uses when none is given.
    pub fn for_preset(preset: &str) -> Result<Self> {
        if preset == "shapes" {
            Self::bundled_shapes()
        } else {
            Self::bundled()
        }
    }

    /// A tokenizer from `tokenizer.json` bytes; `origin` names it in errors.
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<Self> {
        let origin = origin.to_string();
        let mut inner = Tokenizer::from_bytes(bytes).map_err(|e| Error::Tokenizer {
            origin: origin.clone(),
            msg: e.to_string(),
        })?;
        inner.with_padding(None);
        let _ = inner.with_truncation(None);
        let id = |t: &str| inner.token_to_id(t);
        let pad_id = id("<pad>").unwrap_or(0);
        let eos_id = id("</s>").ok_or_else(|| Error::Tokenizer {
            origin: origin.clone(),
            msg: "no `</s>` token: not a T5 tokenizer".into(),
        })?;
        let placeholder_id = id(PLACEHOLDER);
        Ok(Self {
            inner,
            pad_id,
            eos_id,
            placeholder_id,
            origin,
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::Tokenizer {
            origin: self.origin.clone(),
            msg: e.to_string(),
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// The id of `<extra_id_0>`, where the soft prompt goes.
    pub fn placeholder_id(&self) -> Result<u32> {
        self.placeholder_id
            .ok_or_else(|| self.err(format!("no `{PLACEHOLDER}` token in the vocabulary")))
    }

    /// Token ids of each text with `</s>` appended, truncated to `max_len` tokens (including
    /// `</s>`) from the `left` or the right.
    pub fn encode(
        &self,
        texts: &[&str],
        max_len: Option<usize>,
        left: bool,
    ) -> Result<Vec<Vec<u32>>> {
        let mut tok = self.inner.clone();
        if let Some(max_length) = max_len {
            tok.with_truncation(Some(TruncationParams {
                max_length,
                direction: if left {
                    TruncationDirection::Left
                } else {
                    TruncationDirection::Right
                },
                ..Default::default()
            }))
            .map_err(|e| self.err(e))?;
        }
        let enc = tok
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| self.err(e))?;
        Ok(enc.into_iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Encodes and right-pads to the longest row.
    pub fn batch(
        &self,
        texts: &[&str],
        max_len: Option<usize>,
        left: bool,
        dev: &Device,
    ) -> Result<Encoded> {
        let ids = self.encode(texts, max_len, left)?;
        let t = ids.iter().map(|r| r.len()).max().unwrap_or(0).max(1);
        let b = ids.len();
        let mut flat = Vec::with_capacity(b * t);
        let mut mask = Vec::with_capacity(b * t);
        for row in &ids {
            flat.extend_from_slice(row);
            flat.extend(std::iter::repeat_n(self.pad_id, t - row.len()));
            mask.extend(std::iter::repeat_n(1u32, row.len()));
            mask.extend(std::iter::repeat_n(0u32, t - row.len()));
        }
        Ok(Encoded {
            input_ids: Tensor::from_vec(flat, (b, t), dev)?,
            attention_mask: Tensor::from_vec(mask, (b, t), dev)?,
            ids,
        })
    }

    /// Training labels: right-truncated to `max_len`, padded with -100. (b, t) i64.
    pub fn labels(&self, texts: &[&str], max_len: usize, dev: &Device) -> Result<Tensor> {
        let ids = self.encode(texts, Some(max_len), false)?;
        let t = ids.iter().map(|r| r.len()).max().unwrap_or(0).max(1);
        let mut flat = Vec::with_capacity(ids.len() * t);
        for row in &ids {
            flat.extend(row.iter().map(|&i| i as i64));
            flat.extend(std::iter::repeat_n(-100i64, t - row.len()));
        }
        Ok(Tensor::from_vec(flat, (ids.len(), t), dev)?)
    }

    /// Text of generated ids, special tokens skipped (`batch_decode(skip_special_tokens=True)`).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| self.err(e))
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.inner
    }
}
