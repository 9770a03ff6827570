//! BERT encoder (HF `transformers` `BertModel`), with optional cross-attention layers.
//!
//! Used as the tag encoder and sentence transformer (all-MiniLM-L6-v2), and its layers are the
//! building blocks of the Q-Former, LION's vision aggregator and RAM's tagging head.
//! Key names are HF's: `embeddings.word_embeddings.weight`,
//! `encoder.layer.{i}.attention.self.query.weight`, `...crossattention...`, `pooler.dense.weight`.
//! Reference: `transformers/models/bert/modeling_bert.py`.
//!
//! Every op has a backward pass (layer norm, softmax and attention are `kernels` ops with written-out
//! gradients, tested against the composition), so every variable trains.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use serde::{Deserialize, Serialize};

use crate::embedding::Embedding;
use crate::linear::Linear;
use crate::ops::{dropout, Activation, LayerNorm};

fn default_act() -> Activation {
    Activation::Gelu
}
fn default_dropout() -> f64 {
    0.1
}
fn default_eps() -> f64 {
    1e-12
}
fn default_type_vocab() -> usize {
    2
}
fn default_max_pos() -> usize {
    512
}
fn default_pet() -> String {
    "absolute".to_string()
}

/// BERT configuration, read from HF `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: Activation,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: usize,
    #[serde(default = "default_pet")]
    pub position_embedding_type: String,
}

impl BertConfig {
    /// Reads and checks HF `config.json`.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> crate::Result<Self> {
        let path = path.as_ref();
        let cfg: Self = crate::util::read_json(path)?;
        cfg.validate()
            .map_err(|m| crate::Error::config(path.display(), m))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> crate::rules::Check {
        use crate::rules::{all_positive, divides, dropout, epsilon, Invalid};
        all_positive(&[
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ])?;
        divides(
            "hidden_size",
            self.hidden_size,
            "num_attention_heads",
            self.num_attention_heads,
        )?;
        epsilon("layer_norm_eps", self.layer_norm_eps)?;
        dropout("hidden_dropout_prob", self.hidden_dropout_prob)?;
        dropout(
            "attention_probs_dropout_prob",
            self.attention_probs_dropout_prob,
        )?;
        if self.position_embedding_type != "absolute" {
            return Err(Invalid::new(
                "position_embedding_type",
                &self.position_embedding_type,
                "only `absolute` is supported",
            ));
        }
        Ok(())
    }
}

/// Turns a `(b, k)` 0/1 key mask into an additive `(b, 1, 1, k)` mask: 0 where kept, the most
/// negative finite value where masked (as HF's `get_extended_attention_mask`).
pub fn extended_attention_mask(mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let mask = mask.to_dtype(DType::F32)?;
    let neg = ((1.0 - mask)? * f32::MIN as f64)?;
    neg.unsqueeze(1)?.unsqueeze(1)?.to_dtype(dtype)
}

/// A `Linear` with weight `(out, in)` and bias `(out,)`, HF init (normal 0.02, zero bias).
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let w = crate::linear::get_weight(
        &vb,
        (out_dim, in_dim),
        "weight",
        candle_nn::Init::Randn {
            mean: 0.,
            stdev: 0.02,
        },
    )?;
    let b = vb.get_with_hints(out_dim, "bias", candle_nn::Init::Const(0.))?;
    Ok(Linear::new(w, Some(b)))
}

/// `BertEmbeddings`: word + absolute position + token type, LayerNorm, dropout.
#[derive(Debug, Clone)]
pub struct BertEmbeddings {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Option<Embedding>,
    layer_norm: LayerNorm,
    dropout: f64,
}

fn embedding(n: usize, dim: usize, vb: VarBuilder) -> Result<Embedding> {
    let init = candle_nn::Init::Randn {
        mean: 0.,
        stdev: 0.02,
    };
    Embedding::load(&vb, n, dim, init)
}

impl BertEmbeddings {
    pub fn new(cfg: &BertConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let token_type_embeddings = if cfg.type_vocab_size > 0 {
            Some(embedding(
                cfg.type_vocab_size,
                h,
                vb.pp("token_type_embeddings"),
            )?)
        } else {
            None
        };
        Ok(Self {
            word_embeddings: embedding(cfg.vocab_size, h, vb.pp("word_embeddings"))?,
            position_embeddings: embedding(
                cfg.max_position_embeddings,
                h,
                vb.pp("position_embeddings"),
            )?,
            token_type_embeddings,
            layer_norm: LayerNorm::new(h, cfg.layer_norm_eps, vb.pp("LayerNorm"))?,
            dropout: cfg.hidden_dropout_prob,
        })
    }

    /// input_ids: (b, t) u32, token_type_ids: (b, t) or None (zeros) -> (b, t, hidden)
    pub fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let (_b, t) = input_ids.dims2()?;
        let max = self.position_embeddings.embeddings().dim(0)?;
        if t > max {
            candle_core::bail!(
                "sequence of {t} tokens is longer than max_position_embeddings {max}"
            )
        }
        let pos = Tensor::arange(0u32, t as u32, input_ids.device())?;
        let mut xs = self
            .word_embeddings
            .forward(input_ids)?
            .broadcast_add(&self.position_embeddings.forward(&pos)?)?;
        if let Some(tt) = &self.token_type_embeddings {
            let tt_emb = match token_type_ids {
                Some(ids) => tt.forward(ids)?,
                None => tt
                    .embeddings()
                    .get(0)?
                    .unsqueeze(0)?
                    .unsqueeze(0)?
                    .broadcast_as(xs.shape())?,
            };
            xs = (xs + tt_emb)?;
        }
        dropout(&self.layer_norm.forward(&xs)?, self.dropout, train)
    }

    pub fn word_embeddings(&self) -> &Embedding {
        &self.word_embeddings
    }
}

/// `BertSelfAttention`: multi-head scaled dot-product attention. When `kv` is given it is
/// cross-attention (keys/values from another sequence of width `kv_dim`).
#[derive(Debug, Clone)]
pub struct BertSelfAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    num_heads: usize,
    head_dim: usize,
    dropout: f64,
    /// Built to compute in bf16 ([`crate::kernels::attention_in`]).
    bf16: bool,
}

impl BertSelfAttention {
    /// Keys `query`, `key`, `value` (`key`/`value` take `kv_dim` inputs).
    pub fn new(
        hidden: usize,
        num_heads: usize,
        kv_dim: usize,
        dropout: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            query: linear(hidden, hidden, vb.pp("query"))?,
            key: linear(kv_dim, hidden, vb.pp("key"))?,
            value: linear(kv_dim, hidden, vb.pp("value"))?,
            num_heads,
            head_dim: hidden / num_heads,
            dropout,
            bf16: crate::linear::weight_dtype() == crate::cpu::WeightDtype::Bf16,
        })
    }

    fn heads(&self, xs: &Tensor) -> Result<Tensor> {
        crate::kernels::split_heads(xs, self.num_heads)
    }

    /// xs: (b, q, hidden); kv: (b, k, kv_dim) or None for self-attention;
    /// mask: additive, broadcastable to (b, heads, q, k) -> (b, q, hidden)
    pub fn forward(
        &self,
        xs: &Tensor,
        kv: Option<&Tensor>,
        mask: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let kv = kv.unwrap_or(xs);
        let q = self.heads(&self.query.forward(xs)?)?;
        let k = self.heads(&self.key.forward(kv)?)?;
        let v = self.heads(&self.value.forward(kv)?)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        // fused forward and backward in training
        let p = if train { self.dropout as f32 } else { 0.0 };
        let masks: Vec<&Tensor> = mask.into_iter().collect();
        let ctx = crate::kernels::attention_in(&q, &k, &v, scale, &masks, p, self.bf16)?;
        crate::kernels::merge_heads(&ctx)
    }
}

/// `BertSelfOutput` / `BertOutput`: `LayerNorm(dropout(dense(xs)) + residual)`.
#[derive(Debug, Clone)]
pub struct BertOutput {
    dense: Linear,
    layer_norm: LayerNorm,
    dropout: f64,
}

impl BertOutput {
    /// Keys `dense`, `LayerNorm`.
    pub fn new(
        in_dim: usize,
        hidden: usize,
        eps: f64,
        dropout: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            dense: linear(in_dim, hidden, vb.pp("dense"))?,
            layer_norm: LayerNorm::new(hidden, eps, vb.pp("LayerNorm"))?,
            dropout,
        })
    }

    /// xs: (b, t, in_dim), residual: (b, t, hidden) -> (b, t, hidden)
    pub fn forward(&self, xs: &Tensor, residual: &Tensor, train: bool) -> Result<Tensor> {
        let h = dropout(&self.dense.forward(xs)?, self.dropout, train)?;
        self.layer_norm.forward(&(h + residual)?)
    }
}

/// `BertAttention`: attention (`self`) followed by its output block (`output`).
#[derive(Debug, Clone)]
pub struct BertAttention {
    self_attn: BertSelfAttention,
    output: BertOutput,
}

impl BertAttention {
    pub fn new(cfg: &BertConfig, kv_dim: usize, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            self_attn: BertSelfAttention::new(
                h,
                cfg.num_attention_heads,
                kv_dim,
                cfg.attention_probs_dropout_prob,
                vb.pp("self"),
            )?,
            output: BertOutput::new(
                h,
                h,
                cfg.layer_norm_eps,
                cfg.hidden_dropout_prob,
                vb.pp("output"),
            )?,
        })
    }

    /// xs: (b, q, hidden); kv: (b, k, kv_dim) or None -> (b, q, hidden)
    pub fn forward(
        &self,
        xs: &Tensor,
        kv: Option<&Tensor>,
        mask: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let a = self.self_attn.forward(xs, kv, mask, train)?;
        self.output.forward(&a, xs, train)
    }
}

/// `BertIntermediate` + `BertOutput`: the feed-forward block. Keys `intermediate.dense`,
/// `output.dense`, `output.LayerNorm` (or any prefix pair given).
#[derive(Debug, Clone)]
pub struct BertFeedForward {
    intermediate: Linear,
    act: Activation,
    output: BertOutput,
}

impl BertFeedForward {
    pub fn new(cfg: &BertConfig, intermediate: VarBuilder, output: VarBuilder) -> Result<Self> {
        Ok(Self {
            intermediate: linear(
                cfg.hidden_size,
                cfg.intermediate_size,
                intermediate.pp("dense"),
            )?,
            act: cfg.hidden_act,
            output: BertOutput::new(
                cfg.intermediate_size,
                cfg.hidden_size,
                cfg.layer_norm_eps,
                cfg.hidden_dropout_prob,
                output,
            )?,
        })
    }

    /// xs: (b, t, hidden) -> (b, t, hidden)
    pub fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let h = self.act.forward(&self.intermediate.forward(xs)?)?;
        self.output.forward(&h, xs, train)
    }
}

/// `BertLayer`: self-attention, optional cross-attention (`crossattention`), feed-forward.
#[derive(Debug, Clone)]
pub struct BertLayer {
    attention: BertAttention,
    crossattention: Option<BertAttention>,
    ffn: BertFeedForward,
}

impl BertLayer {
    /// `cross_kv_dim`: Some(width of the encoder states) for a layer with cross-attention.
    pub fn new(cfg: &BertConfig, cross_kv_dim: Option<usize>, vb: VarBuilder) -> Result<Self> {
        let crossattention = match cross_kv_dim {
            Some(kv) => Some(BertAttention::new(cfg, kv, vb.pp("crossattention"))?),
            None => None,
        };
        Ok(Self {
            attention: BertAttention::new(cfg, cfg.hidden_size, vb.pp("attention"))?,
            crossattention,
            ffn: BertFeedForward::new(cfg, vb.pp("intermediate"), vb.pp("output"))?,
        })
    }

    /// xs: (b, t, hidden); mask: additive self-attention mask; encoder: (b, k, kv_dim) with its
    /// additive mask, used by the cross-attention (non-causal) -> (b, t, hidden)
    pub fn forward(
        &self,
        xs: &Tensor,
        mask: Option<&Tensor>,
        encoder: Option<(&Tensor, Option<&Tensor>)>,
        train: bool,
    ) -> Result<Tensor> {
        let mut h = self.attention.forward(xs, None, mask, train)?;
        if let (Some(cross), Some((enc, enc_mask))) = (&self.crossattention, encoder) {
            h = cross.forward(&h, Some(enc), enc_mask, train)?;
        }
        self.ffn.forward(&h, train)
    }
}

/// `BertModel`: embeddings, encoder layers, optional pooler (loaded when the checkpoint has it).
#[derive(Debug, Clone)]
pub struct BertModel {
    embeddings: BertEmbeddings,
    layers: Vec<BertLayer>,
    pooler: Option<Linear>,
    cfg: BertConfig,
}

impl BertModel {
    pub fn new(cfg: &BertConfig, vb: VarBuilder) -> Result<Self> {
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| BertLayer::new(cfg, None, vb.pp(format!("encoder.layer.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let pooler = if vb.contains_tensor("pooler.dense.weight") {
            Some(linear(
                cfg.hidden_size,
                cfg.hidden_size,
                vb.pp("pooler.dense"),
            )?)
        } else {
            None
        };
        Ok(Self {
            embeddings: BertEmbeddings::new(cfg, vb.pp("embeddings"))?,
            layers,
            pooler,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &BertConfig {
        &self.cfg
    }

    /// input_ids: (b, t) u32; attention_mask: (b, t) 0/1 (None = all ones)
    /// -> last hidden state (b, t, hidden)
    pub fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        attention_mask: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let mut xs = self.embeddings.forward(input_ids, token_type_ids, train)?;
        let mask = match attention_mask {
            Some(m) => Some(extended_attention_mask(m, xs.dtype())?),
            None => None,
        };
        for layer in &self.layers {
            xs = layer.forward(&xs, mask.as_ref(), None, train)?;
        }
        Ok(xs)
    }

    /// HF pooler output: tanh(dense(hidden[:, 0])): (b, t, hidden) -> (b, hidden).
    pub fn pool(&self, hidden: &Tensor) -> Result<Option<Tensor>> {
        match &self.pooler {
            Some(p) => Ok(Some(
                p.forward(&hidden.narrow(1, 0, 1)?.squeeze(1)?)?.tanh()?,
            )),
            None => Ok(None),
        }
    }
}

/// Mean of `hidden` over positions where `mask` is 1: (b, t, h), (b, t) -> (b, h).
/// As sentence-transformers' `Pooling(mode="mean")`: sum / clamp(count, 1e-9).
pub fn mean_pool(hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let m = mask.to_dtype(hidden.dtype())?.unsqueeze(D::Minus1)?;
    let sum = hidden.broadcast_mul(&m)?.sum(1)?;
    let count = m.sum(1)?.clamp(1e-9, f64::MAX)?;
    sum.broadcast_div(&count)
}

/// Rows divided by their L2 norm (clamped at 1e-12, as `torch.nn.functional.normalize`).
pub fn l2_normalize(xs: &Tensor) -> Result<Tensor> {
    let norm = xs
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    xs.broadcast_div(&norm)
}
