//! InstructBLIP Q-Former with LION's `ln_vision`, `query_tokens` and `t5_proj`.
//!
//! Reference: JiuTian-LION `models/Qformer.py` (= LAVIS `lavis/models/blip2_models/Qformer.py`)
//! and `models/lion_t5.py` `_init_Qformer`, `encode_img` @7578437 (docs/DESIGN.md §4).
//! Checkpoint keys (root of a LION checkpoint):
//! `query_tokens (1, 32, 768)`, `ln_vision.{weight,bias} (1408)`, `t5_proj.{weight (D, 768), bias}`,
//! `Qformer.bert.embeddings.{word_embeddings,position_embeddings,LayerNorm}`,
//! `Qformer.bert.encoder.layer.{i}.attention.{self.{query,key,value},output.{dense,LayerNorm}}`,
//! `...layer.{i}.crossattention.*` (every `cross_attention_freq`-th layer, i % freq == 0; key/value
//! take the vision width), `...layer.{i}.{intermediate,output}` (text rows),
//! `...layer.{i}.{intermediate_query,output_query}` (query rows).
//! The checkpoint's `Qformer.bert.embeddings.position_ids` buffer is recomputed: callers should
//! pass `position_ids` to `WeightLoader::ignore_unexpected`.
//!
//! Semantics kept from upstream:
//! - embeddings: `LayerNorm(cat(query_tokens, word_emb(ids) + pos_emb(0..t)))`, no token types,
//!   text positions start at 0 (not after the queries);
//! - self-attention over `[queries; text]` with the bidirectional mask `[1]*32 + text_mask`,
//!   additive -10000 where masked;
//! - cross-attention to `ln_vision(vision)` on the query rows only, with an all-ones image mask;
//! - query rows through `intermediate_query/output_query`, text rows through
//!   `intermediate/output`; BERT post-LN everywhere;
//! - output `t5_proj(last_hidden_state[:, :32])`.
//!
//! With only that output, the last layer's text feed-forward (`layer.{L-1}.intermediate`,
//! `layer.{L-1}.output`) does not influence anything, exactly as upstream (it gets no gradient).
//!
//! Shapes: vision (b, n, 1408), input_ids (b, t) -> (b, 32, d_model).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use serde::{Deserialize, Serialize};

use crate::bert::{BertAttention, BertConfig, BertFeedForward};
use crate::embedding::Embedding;
use crate::linear::Linear;
use crate::ops::{dropout, LayerNorm};

fn default_freq() -> usize {
    2
}
fn default_queries() -> usize {
    32
}
fn default_ln_vision_eps() -> f64 {
    1e-5
}

/// Q-Former configuration: a BERT config plus the InstructBLIP/LION extras.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QFormerConfig {
    /// `bert-base-uncased` with vocab 30523 (`[DEC]` added) in LION.
    pub bert: BertConfig,
    /// Width of the vision features the queries cross-attend to (1408 for ViT-g).
    pub encoder_width: usize,
    /// Cross-attention in layers `i % cross_attention_freq == 0` (2 in LION: 0, 2, ..., 10).
    #[serde(default = "default_freq")]
    pub cross_attention_freq: usize,
    /// Number of learned query tokens (32).
    #[serde(default = "default_queries")]
    pub num_query_token: usize,
    /// Output width of `t5_proj`: the language model's d_model (2048 for Flan-T5-XL).
    pub d_model: usize,
    /// `ln_vision` eps (torch default 1e-5).
    #[serde(default = "default_ln_vision_eps")]
    pub ln_vision_eps: f64,
}

impl QFormerConfig {
    /// LION's Q-Former: bert-base-uncased (12 layers, 768 wide, 12 heads, FFN 3072, 30523 tokens),
    /// cross-attention every 2nd layer to 1408-wide ViT-g features, 32 queries.
    pub fn lion(d_model: usize) -> Self {
        Self {
            bert: BertConfig {
                vocab_size: 30523,
                hidden_size: 768,
                num_hidden_layers: 12,
                num_attention_heads: 12,
                intermediate_size: 3072,
                hidden_act: crate::ops::Activation::Gelu,
                hidden_dropout_prob: 0.1,
                attention_probs_dropout_prob: 0.1,
                max_position_embeddings: 512,
                type_vocab_size: 0,
                layer_norm_eps: 1e-12,
                pad_token_id: 0,
                position_embedding_type: "absolute".into(),
            },
            encoder_width: 1408,
            cross_attention_freq: 2,
            num_query_token: 32,
            d_model,
            ln_vision_eps: 1e-5,
        }
    }

    pub fn validate(&self) -> crate::rules::Check {
        use crate::rules::{all_positive, epsilon};
        self.bert.validate().map_err(|e| e.within("bert"))?;
        all_positive(&[
            ("encoder_width", self.encoder_width),
            ("cross_attention_freq", self.cross_attention_freq),
            ("num_query_token", self.num_query_token),
            ("d_model", self.d_model),
        ])?;
        epsilon("ln_vision_eps", self.ln_vision_eps)
    }
}

const NORMAL_002: Init = Init::Randn {
    mean: 0.,
    stdev: 0.02,
};

fn embedding(n: usize, dim: usize, vb: VarBuilder) -> Result<Embedding> {
    Embedding::load(&vb, n, dim, NORMAL_002)
}

/// `nn.Linear` with PyTorch's default init (kaiming-uniform weight, uniform bias, both
/// +-1/sqrt(in)): `t5_proj` and LION's `adapter_proj` are plain `nn.Linear`s.
pub(crate) fn torch_linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let bound = 1.0 / (in_dim as f64).sqrt();
    let u = Init::Uniform {
        lo: -bound,
        up: bound,
    };
    Ok(Linear::new(
        crate::linear::get_weight(&vb, (out_dim, in_dim), "weight", u)?,
        Some(vb.get_with_hints(out_dim, "bias", u)?),
    ))
}

/// One Q-Former `BertLayer`.
#[derive(Debug, Clone)]
struct QFormerLayer {
    attention: BertAttention,
    crossattention: Option<BertAttention>,
    ffn: BertFeedForward,
    ffn_query: BertFeedForward,
}

impl QFormerLayer {
    fn new(cfg: &QFormerConfig, i: usize, vb: VarBuilder) -> Result<Self> {
        let b = &cfg.bert;
        let crossattention = if i % cfg.cross_attention_freq == 0 {
            Some(BertAttention::new(
                b,
                cfg.encoder_width,
                vb.pp("crossattention"),
            )?)
        } else {
            None
        };
        Ok(Self {
            attention: BertAttention::new(b, b.hidden_size, vb.pp("attention"))?,
            crossattention,
            ffn: BertFeedForward::new(b, vb.pp("intermediate"), vb.pp("output"))?,
            ffn_query: BertFeedForward::new(b, vb.pp("intermediate_query"), vb.pp("output_query"))?,
        })
    }

    /// xs: (b, q + t, h); mask: additive (b, 1, 1, q + t); vision: (b, n, encoder_width)
    /// -> (b, q + t, h)
    fn forward(
        &self,
        xs: &Tensor,
        mask: &Tensor,
        vision: &Tensor,
        q: usize,
        train: bool,
    ) -> Result<Tensor> {
        let total = xs.dim(1)?;
        let h = self.attention.forward(xs, None, Some(mask), train)?;
        let mut hq = h.narrow(1, 0, q)?;
        if let Some(cross) = &self.crossattention {
            // image mask is all ones: nothing to add
            hq = cross.forward(&hq, Some(vision), None, train)?;
        }
        let out_q = self.ffn_query.forward(&hq, train)?;
        if total > q {
            let out_t = self.ffn.forward(&h.narrow(1, q, total - q)?, train)?;
            Tensor::cat(&[&out_q, &out_t], 1)
        } else {
            Ok(out_q)
        }
    }
}

/// The Q-Former with its LION wrappers (`ln_vision`, `query_tokens`, `t5_proj`).
#[derive(Debug, Clone)]
pub struct QFormer {
    query_tokens: Tensor, // (1, q, h)
    ln_vision: LayerNorm,
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    emb_layer_norm: LayerNorm,
    layers: Vec<QFormerLayer>,
    t5_proj: Linear,
    cfg: QFormerConfig,
}

impl QFormer {
    /// Builds from a `VarBuilder` at the LION checkpoint root (keys `query_tokens`, `ln_vision`,
    /// `t5_proj`, `Qformer.bert.*`). Init as upstream: BERT normal(0.02) / zero bias / unit
    /// LayerNorm, `query_tokens` normal(0.02), `t5_proj` PyTorch default.
    pub fn new(cfg: &QFormerConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let b = &cfg.bert;
        let h = b.hidden_size;
        let bert = vb.pp("Qformer.bert");
        let emb = bert.pp("embeddings");
        let layers = (0..b.num_hidden_layers)
            .map(|i| QFormerLayer::new(cfg, i, bert.pp(format!("encoder.layer.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            query_tokens: vb.get_with_hints(
                (1, cfg.num_query_token, h),
                "query_tokens",
                NORMAL_002,
            )?,
            ln_vision: LayerNorm::new(cfg.encoder_width, cfg.ln_vision_eps, vb.pp("ln_vision"))?,
            word_embeddings: embedding(b.vocab_size, h, emb.pp("word_embeddings"))?,
            position_embeddings: embedding(
                b.max_position_embeddings,
                h,
                emb.pp("position_embeddings"),
            )?,
            emb_layer_norm: LayerNorm::new(h, b.layer_norm_eps, emb.pp("LayerNorm"))?,
            layers,
            t5_proj: torch_linear(h, cfg.d_model, vb.pp("t5_proj"))?,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &QFormerConfig {
        &self.cfg
    }

    /// The Q-Former's last hidden state over `[queries; text]`.
    ///
    /// vision: (b, n, encoder_width), the raw ViT output (`ln_vision` is applied here);
    /// input_ids: (b, t) u32 question tokens, or None for queries only;
    /// text_mask: (b, t) 0/1 (None = all ones) -> (b, q + t, hidden)
    pub fn forward_hidden(
        &self,
        vision: &Tensor,
        input_ids: Option<&Tensor>,
        text_mask: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let (b, _n, w) = vision.dims3()?;
        if w != self.cfg.encoder_width {
            candle_core::bail!(
                "Q-Former: vision features are {w} wide, expected encoder_width {}",
                self.cfg.encoder_width
            )
        }
        let q = self.cfg.num_query_token;
        let h = self.cfg.bert.hidden_size;
        let dtype = self.query_tokens.dtype();
        // ref: lion_t5.py LayerNorm subclass: ln_vision computed in f32
        let vision = self.ln_vision.forward(&vision.to_dtype(dtype)?)?;
        let queries = self.query_tokens.broadcast_as((b, q, h))?;
        let (xs, t) = match input_ids {
            Some(ids) => {
                let (bi, t) = ids.dims2()?;
                if bi != b {
                    candle_core::bail!("Q-Former: {bi} token rows for {b} images")
                }
                let max = self.cfg.bert.max_position_embeddings;
                if t > max {
                    candle_core::bail!(
                        "Q-Former: {t} text tokens exceed max_position_embeddings {max}"
                    )
                }
                let pos = Tensor::arange(0u32, t as u32, ids.device())?;
                let text = self
                    .word_embeddings
                    .forward(ids)?
                    .broadcast_add(&self.position_embeddings.forward(&pos)?)?;
                (Tensor::cat(&[&queries, &text], 1)?, t)
            }
            None => (queries.clone(), 0),
        };
        let xs = dropout(
            &self.emb_layer_norm.forward(&xs)?,
            self.cfg.bert.hidden_dropout_prob,
            train,
        )?;
        // bidirectional mask [1]*q + text_mask, additive -10000 where 0
        let ones = Tensor::ones((b, q), DType::F32, xs.device())?;
        let mask = match (text_mask, t) {
            (_, 0) => ones,
            (Some(m), _) => {
                if m.dims() != [b, t] {
                    candle_core::bail!(
                        "Q-Former: text_mask is {:?}, input_ids are ({b}, {t})",
                        m.dims()
                    )
                }
                Tensor::cat(&[&ones, &m.to_dtype(DType::F32)?], 1)?
            }
            (None, _) => Tensor::ones((b, q + t), DType::F32, xs.device())?,
        };
        let mask = ((1.0 - mask)? * -10000.0)?
            .unsqueeze(1)?
            .unsqueeze(1)?
            .to_dtype(xs.dtype())?;
        let mut xs = xs;
        for layer in &self.layers {
            xs = layer.forward(&xs, &mask, &vision, q, train)?;
        }
        Ok(xs)
    }

    /// LION's Q-Former path: `t5_proj(Q-Former(...)[:, :32])`.
    /// vision: (b, n, encoder_width); input_ids, text_mask: (b, t) -> (b, q, d_model)
    pub fn forward(
        &self,
        vision: &Tensor,
        input_ids: Option<&Tensor>,
        text_mask: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let _span = tracing::trace_span!("qformer").entered();
        let hidden = self.forward_hidden(vision, input_ids, text_mask, train)?;
        self.project(&hidden)
    }

    /// `t5_proj` of the query rows: (b, q + t, hidden) -> (b, q, d_model)
    pub fn project(&self, hidden: &Tensor) -> Result<Tensor> {
        self.t5_proj
            .forward(&hidden.narrow(1, 0, self.cfg.num_query_token)?)
    }
}
