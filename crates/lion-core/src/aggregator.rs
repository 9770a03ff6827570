//! LION's vision aggregator: the fine-grained path from three ViT layers to T5 tokens.
//!
//! Reference: JiuTian-LION `models/lion_adapters.py` `FusionAdapter` (L13-60) and
//! `models/lion_t5.py` L117-126, L261 @7578437 (docs/DESIGN.md §4).
//! Checkpoint keys (LION checkpoint root):
//! `fusion_adapter.blocks.{0,1}.{attention,crossattention}.self.{query,key,value}`,
//! `fusion_adapter.blocks.{0,1}.{attention,crossattention}.output.{dense,LayerNorm}`,
//! `fusion_adapter.blocks.{0,1}.{intermediate.dense,output.dense,output.LayerNorm}`,
//! `ln_adapter.{weight,bias}`, `adapter_proj.0.{weight,bias}`, `adapter_proj.2.{weight,bias}`.
//!
//! Each block is a HF `transformers.BertLayer` built from `BertConfig(hidden_size=1408,
//! num_attention_heads=16)` with `is_decoder=True, add_cross_attention=True`, every other field a
//! BertConfig default (intermediate 3072, exact GELU, LayerNorm eps 1e-12, dropout 0.1). With
//! `attention_mask=None` and eager attention nothing is masked: the self-attention is
//! **non-causal** (newer transformers' SDPA path would make it causal; upstream ran eager).
//! Forward (`lion_t5.py` L261): `h = x38; h = block0(h, enc=x28); h = block1(h, enc=x18);
//! ln_adapter(h)` (LayerNorm eps 1e-5 in f32), then `adapter_proj` = Linear(1408, 5632) -> GELU ->
//! Linear(5632, d_model).
//!
//! Init as upstream: BERT linears normal(0.02) with zero bias, unit LayerNorms, and the `dense` of
//! every `BertSelfOutput` / `BertOutput` zero (so each sublayer starts as LayerNorm(residual));
//! `adapter_proj` PyTorch default `nn.Linear` init.
//!
//! Shapes: three ViT layers (b, n, 1408) -> (b, n, d_model) (n = 257 at 224 px).

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::bert::{linear, BertSelfAttention};
use crate::linear::Linear;
use crate::ops::{dropout, LayerNorm};
use crate::qformer::torch_linear;

fn default_intermediate() -> usize {
    3072
}
fn default_bert_eps() -> f64 {
    1e-12
}
fn default_ln_eps() -> f64 {
    1e-5
}
fn default_dropout() -> f64 {
    0.1
}
fn default_blocks() -> usize {
    2
}

/// Vision aggregator configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AggregatorConfig {
    /// ViT width (1408).
    pub width: usize,
    /// Attention heads of each block (16).
    pub num_heads: usize,
    /// Feed-forward size: BertConfig's default 3072 (not 4 x width).
    #[serde(default = "default_intermediate")]
    pub intermediate_size: usize,
    /// Number of fusion blocks (2).
    #[serde(default = "default_blocks")]
    pub num_blocks: usize,
    /// Hidden size of `adapter_proj` (4 x width = 5632).
    pub proj_hidden: usize,
    /// Output width: the language model's d_model.
    pub d_model: usize,
    /// BERT LayerNorm eps inside the blocks (1e-12).
    #[serde(default = "default_bert_eps")]
    pub layer_norm_eps: f64,
    /// `ln_adapter` eps (1e-5).
    #[serde(default = "default_ln_eps")]
    pub ln_adapter_eps: f64,
    /// Hidden and attention-probability dropout inside the blocks while training (0.1).
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    /// ViT block indices: the stream starts at the first; block `i` cross-attends to entry
    /// `i + 1` (LION: `[38, 28, 18]`).
    pub source_layers: Vec<usize>,
}

impl AggregatorConfig {
    /// LION's aggregator on ViT-g for a language model of width `d_model`.
    pub fn lion(d_model: usize) -> Self {
        Self {
            width: 1408,
            num_heads: 16,
            intermediate_size: 3072,
            num_blocks: 2,
            proj_hidden: 5632,
            d_model,
            layer_norm_eps: 1e-12,
            ln_adapter_eps: 1e-5,
            dropout: 0.1,
            source_layers: vec![38, 28, 18],
        }
    }

    pub fn validate(&self) -> crate::rules::Check {
        use crate::rules::{all_positive, divides, dropout, epsilon, Invalid};
        all_positive(&[
            ("width", self.width),
            ("num_heads", self.num_heads),
            ("intermediate_size", self.intermediate_size),
            ("num_blocks", self.num_blocks),
            ("proj_hidden", self.proj_hidden),
            ("d_model", self.d_model),
        ])?;
        divides("width", self.width, "num_heads", self.num_heads)?;
        epsilon("layer_norm_eps", self.layer_norm_eps)?;
        epsilon("ln_adapter_eps", self.ln_adapter_eps)?;
        dropout("dropout", self.dropout)?;
        if self.num_blocks.checked_add(1) != Some(self.source_layers.len()) {
            return Err(Invalid::new(
                "source_layers",
                format!("{:?}", self.source_layers),
                format!(
                    "needs num_blocks + 1 entries (num_blocks {})",
                    self.num_blocks
                ),
            ));
        }
        Ok(())
    }
}

/// `BertSelfOutput` / `BertOutput` with LION's zero-initialised `dense`:
/// `LayerNorm(dropout(dense(xs)) + residual)`.
#[derive(Debug, Clone)]
struct ZeroInitOutput {
    dense: Linear,
    layer_norm: LayerNorm,
    dropout: f64,
}

impl ZeroInitOutput {
    fn new(in_dim: usize, cfg: &AggregatorConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.width;
        let zero = Init::Const(0.);
        Ok(Self {
            dense: Linear::new(
                crate::linear::get_weight(&vb.pp("dense"), (d, in_dim), "weight", zero)?,
                Some(vb.pp("dense").get_with_hints(d, "bias", zero)?),
            ),
            layer_norm: LayerNorm::new(d, cfg.layer_norm_eps, vb.pp("LayerNorm"))?,
            dropout: cfg.dropout,
        })
    }

    /// xs: (b, t, in_dim), residual: (b, t, width) -> (b, t, width)
    fn forward(&self, xs: &Tensor, residual: &Tensor, train: bool) -> Result<Tensor> {
        let h = dropout(&self.dense.forward(xs)?, self.dropout, train)?;
        self.layer_norm.forward(&(h + residual)?)
    }
}

/// One fusion block: a `transformers.BertLayer` with self- and cross-attention, unmasked.
#[derive(Debug, Clone)]
pub struct FusionBlock {
    attention: (BertSelfAttention, ZeroInitOutput),
    crossattention: (BertSelfAttention, ZeroInitOutput),
    intermediate: Linear,
    output: ZeroInitOutput,
}

impl FusionBlock {
    pub fn new(cfg: &AggregatorConfig, vb: VarBuilder) -> Result<Self> {
        let (d, h, p) = (cfg.width, cfg.num_heads, cfg.dropout);
        let attn = |name: &str| -> Result<(BertSelfAttention, ZeroInitOutput)> {
            Ok((
                BertSelfAttention::new(d, h, d, p, vb.pp(name).pp("self"))?,
                ZeroInitOutput::new(d, cfg, vb.pp(name).pp("output"))?,
            ))
        };
        Ok(Self {
            attention: attn("attention")?,
            crossattention: attn("crossattention")?,
            intermediate: linear(d, cfg.intermediate_size, vb.pp("intermediate.dense"))?,
            output: ZeroInitOutput::new(cfg.intermediate_size, cfg, vb.pp("output"))?,
        })
    }

    /// xs: (b, n, width) stream; encoder: (b, m, width) another ViT layer -> (b, n, width)
    pub fn forward(&self, xs: &Tensor, encoder: &Tensor, train: bool) -> Result<Tensor> {
        let a = self.attention.0.forward(xs, None, None, train)?;
        let h = self.attention.1.forward(&a, xs, train)?;
        let c = self
            .crossattention
            .0
            .forward(&h, Some(encoder), None, train)?;
        let h = self.crossattention.1.forward(&c, &h, train)?;
        let i = crate::kernels::gelu_erf(&self.intermediate.forward(&h)?)?;
        self.output.forward(&i, &h, train)
    }
}

/// The vision aggregator: fusion blocks, `ln_adapter`, `adapter_proj`.
#[derive(Debug, Clone)]
pub struct VisionAggregator {
    blocks: Vec<FusionBlock>,
    ln_adapter: LayerNorm,
    proj0: Linear,
    proj2: Linear,
    cfg: AggregatorConfig,
}

impl VisionAggregator {
    /// Builds from a `VarBuilder` at the LION checkpoint root.
    pub fn new(cfg: &AggregatorConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let blocks = (0..cfg.num_blocks)
            .map(|i| FusionBlock::new(cfg, vb.pp(format!("fusion_adapter.blocks.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            blocks,
            ln_adapter: LayerNorm::new(cfg.width, cfg.ln_adapter_eps, vb.pp("ln_adapter"))?,
            proj0: torch_linear(cfg.width, cfg.proj_hidden, vb.pp("adapter_proj.0"))?,
            proj2: torch_linear(cfg.proj_hidden, cfg.d_model, vb.pp("adapter_proj.2"))?,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &AggregatorConfig {
        &self.cfg
    }

    /// `ln_adapter(fusion_adapter(layers[0], layers[1..]))` without the projection.
    /// layers: the ViT outputs of `source_layers`, in that order, each (b, n, width)
    /// -> (b, n, width)
    pub fn fuse(&self, layers: &[Tensor], train: bool) -> Result<Tensor> {
        if layers.len() != self.blocks.len() + 1 {
            candle_core::bail!(
                "vision aggregator: {} ViT layers given, {} needed ({:?})",
                layers.len(),
                self.blocks.len() + 1,
                self.cfg.source_layers
            )
        }
        let mut h = layers[0].clone();
        for (block, enc) in self.blocks.iter().zip(&layers[1..]) {
            h = block.forward(&h, enc, train)?;
        }
        self.ln_adapter.forward(&h)
    }

    /// layers: the ViT outputs of `source_layers` (LION: blocks 38, 28, 18), each (b, n, width)
    /// -> (b, n, d_model)
    pub fn forward(&self, layers: &[Tensor], train: bool) -> Result<Tensor> {
        let _span = tracing::trace_span!("aggregator").entered();
        let h = self.fuse(layers, train)?;
        self.proj2
            .forward(&crate::kernels::gelu_erf(&self.proj0.forward(&h)?)?)
    }
}
