//! T5's layer norm (RMS, no bias, no mean) and feed-forward layers with LION's adapters
//! (HF `T5LayerNorm`, `T5DenseActDense` / gated, `T5LayerFF`).

use super::*;
use crate::linear::Quantizable;

/// T5's RMSNorm (`T5LayerNorm`): no mean subtraction, no bias, variance computed in f32; made of
/// differentiable ops (candle's fused `rms_norm` drops gradients).
#[derive(Debug, Clone)]
pub struct T5LayerNorm {
    weight: Tensor,
    eps: f64,
}

impl T5LayerNorm {
    /// Key `weight` (d,).
    pub fn new(d: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(d, "weight", Init::Const(1.))?;
        Ok(Self { weight, eps })
    }
}

impl Module for T5LayerNorm {
    /// xs: (..., d) -> (..., d), in the weight's dtype.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if crate::kernels::applies(xs) && self.weight.dtype() == DType::F32 {
            return crate::kernels::rms_norm(xs, &self.weight, self.eps);
        }
        let x32 = xs.to_dtype(DType::F32)?;
        let var = x32.sqr()?.mean_keepdim(D::Minus1)?;
        let xn = x32.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        xn.to_dtype(self.weight.dtype())?
            .broadcast_mul(&self.weight)
    }
}

pub(super) fn linear_no_bias(
    in_dim: usize,
    out_dim: usize,
    std: f64,
    vb: VarBuilder,
) -> Result<Linear> {
    // the attention's value and the FFN's output projection: 8 bits under q4k
    let prefix = vb.prefix();
    let role = match prefix.rsplit('.').next() {
        Some("v" | "wo") => Quantizable::Sensitive,
        _ => Quantizable::Yes,
    };
    if let Some(q) = crate::linear::stored_quantized(&vb, out_dim, in_dim, "weight", role)? {
        return Ok(Linear::quantized(q, None));
    }
    let w = crate::linear::get_quantizable_weight(
        &vb,
        (out_dim, in_dim),
        "weight",
        Init::Randn {
            mean: 0.,
            stdev: std,
        },
    )?;
    crate::linear::load_linear(w, None, role)
}

/// The FFN (`DenseReluDense`): `wo(dropout(act(wi_0 x) * wi_1 x))` when gated, else
/// `wo(dropout(act(wi x)))`. HF init std: wi d^-0.5, wo d_ff^-0.5.
#[derive(Debug, Clone)]
pub struct T5DenseActDense {
    wi: Linear,
    /// The linear (ungated) branch of a gated FFN.
    wi_1: Option<Linear>,
    wo: Linear,
    act: Activation,
    dropout: f64,
}

impl T5DenseActDense {
    pub fn new(cfg: &T5Config, vb: VarBuilder) -> Result<Self> {
        let (gated, act) = cfg.ffn_kind().map_err(candle_core::Error::msg)?;
        let (d, f) = (cfg.d_model, cfg.d_ff);
        let std_in = (d as f64).powf(-0.5);
        let (wi, wi_1) = if gated {
            (
                linear_no_bias(d, f, std_in, vb.pp("wi_0"))?,
                Some(linear_no_bias(d, f, std_in, vb.pp("wi_1"))?),
            )
        } else {
            (linear_no_bias(d, f, std_in, vb.pp("wi"))?, None)
        };
        let wo = linear_no_bias(f, d, (f as f64).powf(-0.5), vb.pp("wo"))?;
        Ok(Self {
            wi,
            wi_1,
            wo,
            act,
            dropout: cfg.dropout_rate,
        })
    }

    /// xs: (b, t, d) -> (b, t, d)
    pub fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = self.act.forward(&self.wi.forward(xs)?)?;
        if let Some(wi_1) = &self.wi_1 {
            h = (h * wi_1.forward(xs)?)?;
        }
        self.wo.forward(&dropout(&h, self.dropout, train)?)
    }
}

/// `T5LayerFF`: `h + dropout(DenseReluDense(layer_norm(h)))`, plus LION's adapter on the PRE-norm
/// input when configured: `... + AdapterRouter(h)` (`lion_adapters.py` `forward_ffn_t5`).
/// The adapters' parameters are always f32 (as upstream, where they are created after the bf16
/// load) and computed in f32 whatever the backbone's dtype.
#[derive(Debug, Clone)]
pub struct T5LayerFF {
    dense_relu_dense: T5DenseActDense,
    layer_norm: T5LayerNorm,
    adapter: Option<AdapterRouter>,
    dropout: f64,
}

impl T5LayerFF {
    /// Keys `DenseReluDense.*`, `layer_norm.weight`, `adapter.*`.
    pub fn new(cfg: &T5Config, vb: VarBuilder) -> Result<Self> {
        let adapter = match &cfg.adapter {
            // Upstream creates the adapters after the bf16 backbone load: f32 parameters.
            Some(a) => Some(AdapterRouter::new(
                a,
                vb.pp("adapter").set_dtype(DType::F32),
            )?),
            None => None,
        };
        Ok(Self {
            dense_relu_dense: T5DenseActDense::new(cfg, vb.pp("DenseReluDense"))?,
            layer_norm: T5LayerNorm::new(cfg.d_model, cfg.layer_norm_epsilon, vb.pp("layer_norm"))?,
            adapter,
            dropout: cfg.dropout_rate,
        })
    }

    /// xs: (b, t, d) -> (b, t, d)
    pub fn forward(&self, xs: &Tensor, route: Route, train: bool) -> Result<Tensor> {
        let h = self
            .dense_relu_dense
            .forward(&self.layer_norm.forward(xs)?, train)?;
        let out = (xs + dropout(&h, self.dropout, train)?)?;
        match &self.adapter {
            Some(a) => out + a.forward(xs, route)?,
            None => Ok(out),
        }
    }
}
