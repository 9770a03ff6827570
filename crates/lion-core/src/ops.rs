//! Differentiable building blocks. candle's fused `layer_norm`, `rms_norm` and
//! `softmax_last_dim` drop gradients (docs/DESIGN.md §5), so trainable models use these.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

/// `softmax` over the last dimension, composed of differentiable ops.
/// Uses the fused kernel ([`crate::kernels`]) for f32 on CPU.
pub fn softmax(xs: &Tensor) -> Result<Tensor> {
    crate::kernels::softmax_last_dim(xs)
}

/// The plain composition of [`softmax`] (reference for the kernel tests).
pub fn softmax_composed(xs: &Tensor) -> Result<Tensor> {
    candle_nn::ops::softmax(xs, D::Minus1)
}

/// LayerNorm over the last dimension with HF/PyTorch semantics (biased variance), computed in f32.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Keys `weight`, `bias` of shape `(dim,)`.
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", candle_nn::Init::Const(1.))?;
        let bias = vb.get_with_hints(dim, "bias", candle_nn::Init::Const(0.))?;
        Ok(Self { weight, bias, eps })
    }
}

impl Module for LayerNorm {
    /// xs: (..., dim) -> (..., dim)
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if crate::kernels::applies(xs) && self.weight.dtype() == DType::F32 {
            return crate::kernels::layer_norm(xs, &self.weight, &self.bias, self.eps);
        }
        self.forward_composed(xs)
    }
}

impl LayerNorm {
    /// The plain composition (reference for the kernel tests, and non-f32 / non-CPU inputs).
    pub fn forward_composed(&self, xs: &Tensor) -> Result<Tensor> {
        let dtype = xs.dtype();
        let xs = xs.to_dtype(DType::F32)?;
        let mean = xs.mean_keepdim(D::Minus1)?;
        let xc = xs.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let xn = xc.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        let w = self.weight.to_dtype(DType::F32)?;
        let b = self.bias.to_dtype(DType::F32)?;
        xn.broadcast_mul(&w)?.broadcast_add(&b)?.to_dtype(dtype)
    }
}

/// Activation functions by their HF config names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Exact erf GELU (`nn.GELU()`, HF `"gelu"`).
    Gelu,
    /// tanh approximation (HF `"gelu_new"`, `"gelu_pytorch_tanh"`).
    #[serde(alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluNew,
    Relu,
    Silu,
}

impl Module for Activation {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Gelu => crate::kernels::gelu_erf(xs),
            Activation::GeluNew => crate::kernels::gelu_tanh(xs),
            Activation::Relu => xs.relu(),
            Activation::Silu => candle_nn::ops::silu(xs),
        }
    }
}

/// Dropout that is active only when `train` is true.
pub fn dropout(xs: &Tensor, p: f64, train: bool) -> Result<Tensor> {
    if train && p > 0.0 {
        crate::kernels::dropout(xs, p as f32)
    } else {
        Ok(xs.clone())
    }
}

/// T5's RMSNorm (`T5LayerNorm`): no mean subtraction, no bias, variance in f32.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// Key `weight` of shape `(dim,)`.
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", candle_nn::Init::Const(1.))?;
        Ok(Self { weight, eps })
    }

    /// The plain composition (reference for the kernel tests, and non-f32 / non-CPU inputs).
    pub fn forward_composed(&self, xs: &Tensor) -> Result<Tensor> {
        let dtype = xs.dtype();
        let x = xs.to_dtype(DType::F32)?;
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        let xn = x.broadcast_div(&(ms + self.eps)?.sqrt()?)?;
        // HF casts to the weight's dtype before the multiply when the weight is half precision
        xn.to_dtype(self.weight.dtype())?
            .broadcast_mul(&self.weight)?
            .to_dtype(dtype)
    }
}

impl Module for RmsNorm {
    /// xs: (..., dim) -> (..., dim)
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if crate::kernels::applies(xs) && self.weight.dtype() == DType::F32 {
            return crate::kernels::rms_norm(xs, &self.weight, self.eps);
        }
        self.forward_composed(xs)
    }
}
