//! A small BatchNorm CNN: the world tagger's visual encoder (in place of RAM's Swin).
//!
//! RAM's backbone is a Swin-L pretrained on 14M images; a Swin trained from scratch on a few
//! thousand ShapesWorld images does not learn shapes, where this CNN does (the study is in
//! `assets/shapes-tagger/README.md`). Stages of two 3x3 convolutions (padding 1; the first of
//! each stage with stride 2), each followed by BatchNorm and ReLU:
//! `visual_encoder.stages.{s}.{j}.conv.{weight,bias}` (PyTorch `Conv2d`: `(out, in, 3, 3)`) and
//! `visual_encoder.stages.{s}.{j}.bn.{weight,bias,running_mean,running_var}` (PyTorch
//! `BatchNorm2d`; its `num_batches_tracked` is ignored). The output is RAM's visual encoder
//! output: the final map's pixels as tokens with their mean token first, `(b, 1 + hw, C)`.
//!
//! The reference is PyTorch itself (`nn.Conv2d`, `nn.BatchNorm2d`, `nn.ReLU`): forward in both
//! modes, the running statistics' update and the gradients are checked against it
//! (`tests/convnet.rs`, fixtures by `scripts/fixtures_convnet.py`). Internally everything is
//! channels-last: a convolution is [`crate::kernels::im2col3x3`] plus one GEMM.

use candle_core::{Module, Result, Tensor, Var, D};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::kernels::{batch_norm_relu_train, conv3x3_out, im2col3x3};

fn default_bn_eps() -> f64 {
    1e-5
}

/// PyTorch's BatchNorm momentum: `running = (1 - m) running + m batch`.
pub const BN_MOMENTUM: f64 = 0.1;

/// The CNN's sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConvNetConfig {
    /// Input side in pixels (square images).
    pub img_size: usize,
    pub in_chans: usize,
    /// Output channels of each stage (each stage halves the side, rounding up).
    pub widths: Vec<usize>,
    #[serde(default = "default_bn_eps")]
    pub bn_eps: f64,
}

impl ConvNetConfig {
    /// The world tagger's CNN: four stages of widths 16, 32, 64, 64 (96 px -> a 6x6 map).
    pub fn world(img_size: usize) -> Self {
        Self {
            img_size,
            in_chans: 3,
            widths: vec![16, 32, 64, 64],
            bn_eps: default_bn_eps(),
        }
    }

    /// Width of the output tokens.
    pub fn num_features(&self) -> usize {
        self.widths.last().copied().unwrap_or(0)
    }

    /// Side of the final map.
    pub fn grid(&self) -> usize {
        self.widths
            .iter()
            .fold(self.img_size, |n, _| conv3x3_out(n, 2))
    }

    /// Output tokens per image, the mean token included.
    pub fn num_tokens(&self) -> usize {
        1 + self.grid() * self.grid()
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.img_size == 0 || self.in_chans == 0 {
            return Err(format!(
                "convnet: img_size {} and in_chans {} must be > 0",
                self.img_size, self.in_chans
            ));
        }
        if self.widths.is_empty() || self.widths.contains(&0) {
            return Err(format!(
                "convnet: widths {:?} must be one or more numbers > 0",
                self.widths
            ));
        }
        if !(self.bn_eps.is_finite() && self.bn_eps > 0.0) {
            return Err(format!("convnet: bn_eps {} must be > 0", self.bn_eps));
        }
        Ok(())
    }
}

/// A 3x3 convolution with padding 1 over channels-last images.
#[derive(Debug, Clone)]
struct Conv3x3 {
    /// (out, in, 3, 3), PyTorch's layout.
    weight: Tensor,
    bias: Tensor,
    stride: usize,
}

impl Conv3x3 {
    fn new(cin: usize, cout: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        // PyTorch's Conv2d init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.
        let b = 1.0 / ((cin * 9) as f64).sqrt();
        let init = Init::Uniform { lo: -b, up: b };
        Ok(Self {
            weight: vb.get_with_hints((cout, cin, 3, 3), "weight", init)?,
            bias: vb.get_with_hints(cout, "bias", init)?,
            stride,
        })
    }

    /// xs: (b, h, w, in) -> (b, ho, wo, out)
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, h, w, cin) = xs.dims4()?;
        let cout = self.weight.dim(0)?;
        let (ho, wo) = (conv3x3_out(h, self.stride), conv3x3_out(w, self.stride));
        let cols = im2col3x3(xs, self.stride)?.reshape((b * ho * wo, 9 * cin))?;
        // (out, in, ky, kx) -> (out, ky, kx, in): the column order of im2col.
        let w = self
            .weight
            .permute((0, 2, 3, 1))?
            .reshape((cout, 9 * cin))?;
        cols.matmul(&w.t()?)?
            .broadcast_add(&self.bias)?
            .reshape((b, ho, wo, cout))
    }
}

/// BatchNorm over the channels of (n, c) rows (a channels-last map flattened).
#[derive(Debug, Clone)]
struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    eps: f64,
}

impl BatchNorm {
    fn new(c: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        // A `Var` built from a variable shares its storage: the running statistics a trainer's
        // VarMap holds (and saves) are the ones updated here.
        let stat = |name, v| {
            vb.get_with_hints(c, name, Init::Const(v))
                .and_then(|t| Var::from_tensor(&t))
        };
        Ok(Self {
            weight: vb.get_with_hints(c, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(c, "bias", Init::Const(0.0))?,
            running_mean: stat("running_mean", 0.0)?,
            running_var: stat("running_var", 1.0)?,
            eps,
        })
    }

    /// `relu(batch_norm(xs))`, xs: (n, c) -> (n, c). Training: normalised by the batch's mean
    /// and biased variance, and the running ones move towards the batch's (unbiased variance),
    /// as PyTorch does ([`batch_norm_relu_train`]). Inference: the running statistics.
    fn forward_relu(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        if !train {
            let scale = (self.running_var.as_tensor() + self.eps)?
                .sqrt()?
                .recip()?
                .mul(&self.weight)?;
            let shift = (&self.bias - self.running_mean.as_tensor().mul(&scale)?)?;
            return xs.broadcast_mul(&scale)?.broadcast_add(&shift)?.relu();
        }
        let n = xs.dim(0)?;
        let (ys, mean, var) = batch_norm_relu_train(xs, &self.weight, &self.bias, self.eps)?;
        let m = BN_MOMENTUM;
        let unbiased = n as f64 / (n - 1) as f64;
        let rm = ((self.running_mean.as_tensor() * (1.0 - m))? + (mean * m)?)?;
        let rv = ((self.running_var.as_tensor() * (1.0 - m))? + (var * (m * unbiased))?)?;
        self.running_mean.set(&rm)?;
        self.running_var.set(&rv)?;
        Ok(ys)
    }
}

/// One convolution, its BatchNorm and ReLU.
#[derive(Debug, Clone)]
struct ConvBnRelu {
    conv: Conv3x3,
    bn: BatchNorm,
}

/// The CNN ([`ConvNetConfig`]).
#[derive(Debug, Clone)]
pub struct ConvNet {
    layers: Vec<ConvBnRelu>,
    cfg: ConvNetConfig,
}

impl ConvNet {
    /// Builds the CNN from a `VarBuilder` rooted at its prefix (`visual_encoder` in RAM).
    pub fn new(cfg: &ConvNetConfig, vb: VarBuilder) -> crate::Result<Self> {
        cfg.validate()
            .map_err(|m| crate::Error::config("convnet", m))?;
        let mut layers = Vec::with_capacity(2 * cfg.widths.len());
        let mut cin = cfg.in_chans;
        for (s, &width) in cfg.widths.iter().enumerate() {
            for j in 0..2 {
                let vb = vb.pp(format!("stages.{s}.{j}"));
                layers.push(ConvBnRelu {
                    conv: Conv3x3::new(cin, width, if j == 0 { 2 } else { 1 }, vb.pp("conv"))?,
                    bn: BatchNorm::new(width, cfg.bn_eps, vb.pp("bn"))?,
                });
                cin = width;
            }
        }
        Ok(Self {
            layers,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &ConvNetConfig {
        &self.cfg
    }

    /// images: (b, in_chans, img, img) -> (b, 1 + grid^2, C): the final map's pixels in row-major
    /// order with their mean first. `train`: BatchNorm on batch statistics, updating the running
    /// ones (PyTorch's `model.train()`); else the running statistics (`model.eval()`).
    pub fn forward_t(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        let (b, c, h, w) = images.dims4()?;
        let s = self.cfg.img_size;
        if c != self.cfg.in_chans || h != s || w != s {
            candle_core::bail!(
                "convnet: images must be (b, {}, {s}, {s}), got {:?}",
                self.cfg.in_chans,
                images.dims()
            )
        }
        let mut xs = images.permute((0, 2, 3, 1))?.contiguous()?;
        for layer in &self.layers {
            let ys = layer.conv.forward(&xs)?;
            let (b, ho, wo, co) = ys.dims4()?;
            xs = layer
                .bn
                .forward_relu(&ys.reshape((b * ho * wo, co))?, train)?
                .reshape((b, ho, wo, co))?;
        }
        let (_, ho, wo, co) = xs.dims4()?;
        let tokens = xs.reshape((b, ho * wo, co))?;
        let mean = tokens.mean_keepdim(D::Minus2)?;
        Tensor::cat(&[mean, tokens], 1)
    }
}

impl Module for ConvNet {
    /// Inference ([`ConvNet::forward_t`] with `train = false`).
    fn forward(&self, images: &Tensor) -> Result<Tensor> {
        self.forward_t(images, false)
    }
}
