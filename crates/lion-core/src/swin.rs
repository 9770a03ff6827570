//! Swin Transformer (v1) backbone, as RAM uses it (`visual_encoder`).
//!
//! Reference: `recognize-anything` `ram/models/swin_transformer.py` (Microsoft's Swin code), with
//! RAM's arguments: patch 4, `qkv_bias`, no absolute position embedding, patch norm, `mlp_ratio` 4,
//! LayerNorm eps 1e-5, exact GELU. Keys (prefix `visual_encoder.` in a RAM checkpoint):
//! `patch_embed.{proj,norm}`, `layers.{s}.blocks.{b}.{norm1, attn.qkv, attn.proj,
//! attn.relative_position_bias_table, norm2, mlp.fc1, mlp.fc2}`, `layers.{s}.downsample.{norm,
//! reduction}`, `norm`.
//!
//! As upstream:
//! - blocks alternate regular and shifted windows (shift = window / 2 on odd blocks); a stage whose
//!   resolution is <= the window uses one window of the whole resolution and no shift;
//! - shifted windows get a 0 / -100 attention mask between tokens from different regions;
//! - `relative_position_index` and `attn_mask` are recomputed here, never read (checkpoints carry
//!   them as buffers; list them as ignored when loading);
//! - the output is the final LayerNorm's tokens with their average prepended:
//!   `(b, 1 + h*w, C)` (for Swin-L at 384: `(b, 145, 1536)`).
//!
//! Drop-path (stochastic depth, 0.1 in RAM's training) is not implemented: the model is used for
//! inference and the demo trains without it.

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::bert::linear;
use crate::linear::Linear;
use crate::ops::{softmax, Activation, LayerNorm};

fn default_in_chans() -> usize {
    3
}
fn default_mlp_ratio() -> f64 {
    4.0
}
fn default_eps() -> f64 {
    1e-5
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// Swin Transformer sizes (upstream `configs/swin/config_swin*_*.json` plus the constructor's
/// constants).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwinConfig {
    /// Square input size in pixels (`image_res`).
    pub img_size: usize,
    pub patch_size: usize,
    #[serde(default = "default_in_chans")]
    pub in_chans: usize,
    pub embed_dim: usize,
    /// Blocks per stage.
    pub depths: Vec<usize>,
    /// Attention heads per stage.
    pub num_heads: Vec<usize>,
    pub window_size: usize,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// LayerNorm after the patch embedding (`patch_embed.norm`), Swin's `patch_norm`: on in RAM
    /// (the default). Off, the key is not read and the patch tokens go to the first stage as
    /// projected; the ShapesWorld tagger learns background textures only so (its README).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub patch_norm: bool,
    /// A convolutional stem in place of the `p x p` patchify (not in RAM; ours, for small
    /// objects trained from scratch, after Xiao et al. 2021, "Early convolutions help
    /// transformers see better"): `log2(p)` 3x3 stride-2 convolutions with ReLU
    /// (`patch_embed.stem.{i}`, widths `embed_dim * 2^i`), then `proj` as a 1x1 convolution
    /// `(C, embed_dim * 2^(k-1), 1, 1)`. Off (the default), the key set is RAM's.
    #[serde(default, skip_serializing_if = "is_false")]
    pub conv_stem: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl SwinConfig {
    /// Swin-L at 384 (`config_swinL_384.json`), RAM's `ram_swin_large_14m` backbone.
    pub fn swin_l_384() -> Self {
        Self {
            img_size: 384,
            patch_size: 4,
            in_chans: 3,
            embed_dim: 192,
            depths: vec![2, 2, 18, 2],
            num_heads: vec![6, 12, 24, 48],
            window_size: 12,
            mlp_ratio: 4.0,
            layer_norm_eps: 1e-5,
            patch_norm: true,
            conv_stem: false,
        }
    }

    /// Swin-B at 384 (`config_swinB_384.json`).
    pub fn swin_b_384() -> Self {
        Self {
            embed_dim: 128,
            num_heads: vec![4, 8, 16, 32],
            ..Self::swin_l_384()
        }
    }

    /// A tiny Swin for tests and smoke runs: 64 px, window 4, resolutions 16, 8, 4, 2 (shifted
    /// windows in stages 0-1, a whole-resolution window in stages 2-3).
    pub fn tiny() -> Self {
        Self {
            img_size: 64,
            patch_size: 4,
            in_chans: 3,
            embed_dim: 8,
            depths: vec![2, 2, 1, 1],
            num_heads: vec![2, 2, 4, 4],
            window_size: 4,
            mlp_ratio: 4.0,
            layer_norm_eps: 1e-5,
            patch_norm: true,
            conv_stem: false,
        }
    }

    /// Width of the output tokens: `embed_dim * 2^(stages - 1)` (1536 for Swin-L).
    pub fn num_features(&self) -> usize {
        self.embed_dim << (self.depths.len().saturating_sub(1))
    }

    /// Token grid side after the patch embedding.
    pub fn patches_resolution(&self) -> usize {
        self.img_size / self.patch_size.max(1)
    }

    /// Output tokens per image including the pooled one (145 for Swin-L at 384).
    pub fn num_tokens(&self) -> usize {
        let r = self.patches_resolution() >> (self.depths.len().saturating_sub(1));
        1 + r * r
    }

    /// (window, shift) actually used by block `b` of a stage at resolution `res`.
    fn window_and_shift(&self, res: usize, block: usize) -> (usize, usize) {
        if res <= self.window_size {
            (res, 0)
        } else {
            let shift = if block % 2 == 1 {
                self.window_size / 2
            } else {
                0
            };
            (self.window_size, shift)
        }
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        let n = self.depths.len();
        if n == 0 || self.num_heads.len() != n {
            return Err(format!(
                "depths ({n} stages) and num_heads ({} stages) must be non-empty and of equal length",
                self.num_heads.len()
            ));
        }
        if self.patch_size == 0 || self.img_size % self.patch_size != 0 {
            return Err(format!(
                "img_size {} is not a multiple of patch_size {}",
                self.img_size, self.patch_size
            ));
        }
        if self.conv_stem && (self.patch_size < 2 || !self.patch_size.is_power_of_two()) {
            return Err(format!(
                "conv_stem needs a patch_size that is a power of two >= 2, not {}",
                self.patch_size
            ));
        }
        if self.window_size == 0 || self.embed_dim == 0 {
            return Err("window_size and embed_dim must be > 0".into());
        }
        let mut res = self.patches_resolution();
        for s in 0..n {
            let dim = self.embed_dim << s;
            let heads = self.num_heads[s];
            if heads == 0 || dim % heads != 0 {
                return Err(format!(
                    "stage {s}: width {dim} is not divisible by {heads} heads"
                ));
            }
            let (w, _) = self.window_and_shift(res, 0);
            if res == 0 || res % w != 0 {
                return Err(format!(
                    "stage {s}: resolution {res} is not a multiple of the window {w}"
                ));
            }
            if s + 1 < n {
                if res % 2 != 0 {
                    return Err(format!(
                        "stage {s}: resolution {res} is odd, patch merging needs it even"
                    ));
                }
                res /= 2;
            }
        }
        Ok(())
    }
}

fn trunc_normal() -> Init {
    Init::Randn {
        mean: 0.,
        stdev: 0.02,
    }
}

/// Pairwise relative-position index inside a `w x w` window: `(w*w * w*w,)` u32 into the
/// `(2w-1)^2`-row bias table (upstream `relative_position_index`, flattened).
pub fn relative_position_index(w: usize, dev: &Device) -> Result<Tensor> {
    let n = w * w;
    let mut idx = Vec::with_capacity(n * n);
    for i in 0..n {
        let (hi, wi) = (i / w, i % w);
        for j in 0..n {
            let (hj, wj) = (j / w, j % w);
            let dh = hi + w - 1 - hj;
            let dw = wi + w - 1 - wj;
            idx.push((dh * (2 * w - 1) + dw) as u32);
        }
    }
    Tensor::from_vec(idx, n * n, dev)
}

/// The shifted-window attention mask for a `res x res` grid: `(nW, w*w, w*w)` with 0 between
/// tokens of the same region and -100 otherwise (upstream `attn_mask`).
pub fn shifted_window_mask(res: usize, w: usize, shift: usize, dev: &Device) -> Result<Tensor> {
    let region = |p: usize| -> usize {
        if p < res - w {
            0
        } else if p < res - shift {
            1
        } else {
            2
        }
    };
    let nw = res / w;
    let n = w * w;
    let mut mask = Vec::with_capacity(nw * nw * n * n);
    for wh in 0..nw {
        for ww in 0..nw {
            let ids: Vec<usize> = (0..n)
                .map(|t| region(wh * w + t / w) * 3 + region(ww * w + t % w))
                .collect();
            for &a in &ids {
                for &b in &ids {
                    mask.push(if a == b { 0f32 } else { -100f32 });
                }
            }
        }
    }
    Tensor::from_vec(mask, (nw * nw, n, n), dev)
}

/// `WindowAttention`: multi-head self-attention inside windows, with a learned relative-position
/// bias. Keys `qkv`, `proj`, `relative_position_bias_table`.
#[derive(Debug, Clone)]
pub struct WindowAttention {
    qkv: Linear,
    proj: Linear,
    relative_position_bias_table: Tensor,
    relative_position_index: Tensor,
    num_heads: usize,
    window: usize,
    scale: f64,
}

impl WindowAttention {
    pub fn new(dim: usize, window: usize, num_heads: usize, vb: VarBuilder) -> Result<Self> {
        let table = vb.get_with_hints(
            ((2 * window - 1) * (2 * window - 1), num_heads),
            "relative_position_bias_table",
            trunc_normal(),
        )?;
        Ok(Self {
            qkv: swin_linear(dim, 3 * dim, vb.pp("qkv"))?,
            proj: swin_linear(dim, dim, vb.pp("proj"))?,
            relative_position_bias_table: table,
            relative_position_index: relative_position_index(window, vb.device())?,
            num_heads,
            window,
            scale: ((dim / num_heads) as f64).powf(-0.5),
        })
    }

    /// The `(heads, N, N)` bias, gathered from the table (differentiable w.r.t. the table).
    fn bias(&self) -> Result<Tensor> {
        let n = self.window * self.window;
        self.relative_position_bias_table
            .index_select(&self.relative_position_index, 0)?
            .reshape((n, n, self.num_heads))?
            .permute((2, 0, 1))?
            .contiguous()
    }

    /// xs: (b * nW, N, C) windows; mask: (nW, N, N) additive or None -> (b * nW, N, C)
    pub fn forward(&self, xs: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (bw, n, c) = xs.dims3()?;
        let hd = c / self.num_heads;
        let qkv = self
            .qkv
            .forward(xs)?
            .reshape((bw, n, 3, self.num_heads, hd))?
            .permute((2, 0, 3, 1, 4))?;
        let q = (qkv.get(0)?.contiguous()? * self.scale)?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let mut attn =
            crate::sgemm::bmm(&q, &k.t()?)?.broadcast_add(&self.bias()?.unsqueeze(0)?)?;
        if let Some(mask) = mask {
            let nw = mask.dim(0)?;
            attn = attn
                .reshape((bw / nw, nw, self.num_heads, n, n))?
                .broadcast_add(&mask.unsqueeze(1)?.unsqueeze(0)?)?
                .reshape((bw, self.num_heads, n, n))?;
        }
        let ctx = crate::sgemm::bmm(&softmax(&attn)?, &v)?;
        self.proj
            .forward(&ctx.transpose(1, 2)?.reshape((bw, n, c))?)
    }
}

/// A Linear with Swin's init (trunc-normal 0.02, zero bias).
fn swin_linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    linear(in_dim, out_dim, vb)
}

/// `Mlp`: fc1, exact GELU, fc2.
#[derive(Debug, Clone)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn new(dim: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            fc1: swin_linear(dim, hidden, vb.pp("fc1"))?,
            fc2: swin_linear(hidden, dim, vb.pp("fc2"))?,
        })
    }
}

impl Module for Mlp {
    /// xs: (..., dim) -> (..., dim)
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.fc2
            .forward(&Activation::Gelu.forward(&self.fc1.forward(xs)?)?)
    }
}

/// `SwinTransformerBlock`: (shifted) window attention and MLP, both pre-norm with residuals.
#[derive(Debug, Clone)]
pub struct SwinTransformerBlock {
    norm1: LayerNorm,
    attn: WindowAttention,
    norm2: LayerNorm,
    mlp: Mlp,
    resolution: usize,
    window: usize,
    shift: usize,
    attn_mask: Option<Tensor>,
}

impl SwinTransformerBlock {
    fn new(
        cfg: &SwinConfig,
        dim: usize,
        resolution: usize,
        heads: usize,
        block: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let (window, shift) = cfg.window_and_shift(resolution, block);
        let attn_mask = if shift > 0 {
            Some(shifted_window_mask(resolution, window, shift, vb.device())?)
        } else {
            None
        };
        Ok(Self {
            norm1: LayerNorm::new(dim, cfg.layer_norm_eps, vb.pp("norm1"))?,
            attn: WindowAttention::new(dim, window, heads, vb.pp("attn"))?,
            norm2: LayerNorm::new(dim, cfg.layer_norm_eps, vb.pp("norm2"))?,
            mlp: Mlp::new(dim, (dim as f64 * cfg.mlp_ratio) as usize, vb.pp("mlp"))?,
            resolution,
            window,
            shift,
            attn_mask,
        })
    }

    /// xs: (b, H*W, C) -> (b, H*W, C)
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, l, c) = xs.dims3()?;
        let (r, w) = (self.resolution, self.window);
        if l != r * r {
            candle_core::bail!("swin block: {l} tokens for a {r}x{r} grid")
        }
        let mut h = self.norm1.forward(xs)?.reshape((b, r, r, c))?;
        let s = self.shift as i32;
        if s > 0 {
            h = h.roll(-s, 1)?.roll(-s, 2)?;
        }
        // window partition: (b, r/w, w, r/w, w, c) -> (b * nW, w*w, c)
        let nw = r / w;
        let windows = h
            .reshape((b, nw, w, nw, w, c))?
            .permute((0, 1, 3, 2, 4, 5))?
            .contiguous()?
            .reshape((b * nw * nw, w * w, c))?;
        let out = self.attn.forward(&windows, self.attn_mask.as_ref())?;
        // window reverse
        let mut h = out
            .reshape((b, nw, nw, w, w, c))?
            .permute((0, 1, 3, 2, 4, 5))?
            .contiguous()?
            .reshape((b, r, r, c))?;
        if s > 0 {
            h = h.roll(s, 1)?.roll(s, 2)?;
        }
        let xs = (xs + h.reshape((b, l, c))?)?;
        let m = self.mlp.forward(&self.norm2.forward(&xs)?)?;
        xs + m
    }
}

/// `PatchMerging`: 2x2 neighbours concatenated as (0,0), (1,0), (0,1), (1,1) (row, col), then
/// `norm` (LayerNorm 4C) and `reduction` (Linear 4C -> 2C, no bias).
#[derive(Debug, Clone)]
pub struct PatchMerging {
    norm: LayerNorm,
    reduction: Linear,
    resolution: usize,
}

impl PatchMerging {
    fn new(dim: usize, resolution: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: LayerNorm::new(4 * dim, eps, vb.pp("norm"))?,
            reduction: Linear::new(
                vb.pp("reduction")
                    .get_with_hints((2 * dim, 4 * dim), "weight", trunc_normal())?,
                None,
            ),
            resolution,
        })
    }

    /// xs: (b, H*W, C) -> (b, H/2*W/2, 2C)
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, _l, c) = xs.dims3()?;
        let r = self.resolution;
        // (b, i, row-parity, j, col-parity, c) -> (b, i, j, col-parity, row-parity, c): the
        // concatenation order x0 (0,0), x1 (1,0), x2 (0,1), x3 (1,1) is col-major in parity.
        let xs = xs
            .reshape((b, r / 2, 2, r / 2, 2, c))?
            .permute((0, 1, 3, 4, 2, 5))?
            .contiguous()?
            .reshape((b, (r / 2) * (r / 2), 4 * c))?;
        self.reduction.forward(&self.norm.forward(&xs)?)
    }
}

/// `BasicLayer`: one stage of blocks and an optional downsample.
#[derive(Debug, Clone)]
struct BasicLayer {
    blocks: Vec<SwinTransformerBlock>,
    downsample: Option<PatchMerging>,
}

/// `PatchEmbed`: non-overlapping `p x p` patches, a linear projection (`proj`, stored as a
/// Conv2d weight `(C, in, p, p)`) and `norm` (when `patch_norm`); or, with `conv_stem`, the
/// stem's 3x3 stride-2 convolutions before a 1x1 `proj`.
#[derive(Debug, Clone)]
struct PatchEmbed {
    stem: Vec<(Tensor, Tensor)>,
    weight: Tensor,
    bias: Tensor,
    norm: Option<LayerNorm>,
    patch: usize,
}

/// Torch's default Conv2d initialisation bound, `1 / sqrt(fan_in)`.
fn conv_uniform(fan_in: usize) -> Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

impl PatchEmbed {
    fn new(cfg: &SwinConfig, vb: VarBuilder) -> Result<Self> {
        let (c, i, p) = (cfg.embed_dim, cfg.in_chans, cfg.patch_size);
        let mut stem = Vec::new();
        let (proj_in, proj_k) = if cfg.conv_stem {
            let mut cin = i;
            for s in 0..p.trailing_zeros() as usize {
                let cout = cfg.embed_dim << s;
                let vs = vb.pp(format!("stem.{s}"));
                // He-uniform: the stem's convolutions feed ReLUs
                let bound = (6.0 / (cin * 9) as f64).sqrt();
                let w = vs.get_with_hints(
                    (cout, cin, 3, 3),
                    "weight",
                    Init::Uniform {
                        lo: -bound,
                        up: bound,
                    },
                )?;
                let b = vs.get_with_hints(cout, "bias", Init::Const(0.))?;
                stem.push((w, b));
                cin = cout;
            }
            (cin, 1)
        } else {
            (i, p)
        };
        let weight = vb.pp("proj").get_with_hints(
            (c, proj_in, proj_k, proj_k),
            "weight",
            conv_uniform(proj_in * proj_k * proj_k),
        )?;
        let bias = vb.pp("proj").get_with_hints(c, "bias", Init::Const(0.))?;
        Ok(Self {
            stem,
            weight,
            bias,
            norm: match cfg.patch_norm {
                true => Some(LayerNorm::new(c, cfg.layer_norm_eps, vb.pp("norm"))?),
                false => None,
            },
            patch: proj_k,
        })
    }

    /// xs: (b, in, H, W) -> (b, H/p * W/p, C)
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut xs = xs.clone();
        for (w, b) in &self.stem {
            xs = conv3x3_s2(&xs, w, b)?.relu()?;
        }
        let (b, ci, h, w) = xs.dims4()?;
        let p = self.patch;
        let (hp, wp) = (h / p, w / p);
        let c = self.weight.dim(0)?;
        // A stride-p, kernel-p convolution is a matmul over flattened patches.
        let patches = xs
            .reshape((b, ci, hp, p, wp, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * hp * wp, ci * p * p))?;
        let w = self.weight.reshape((c, ci * p * p))?;
        let out = patches
            .matmul(&w.t()?)?
            .broadcast_add(&self.bias)?
            .reshape((b, hp * wp, c))?;
        match &self.norm {
            Some(norm) => norm.forward(&out),
            None => Ok(out),
        }
    }
}

/// A 3x3 convolution with stride 2 and zero padding 1, as Conv2d computes it, built from
/// differentiable slices and one matmul (im2col).
///
/// xs: (b, cin, H, W) with even H, W; weight: (cout, cin, 3, 3); bias: (cout)
/// -> (b, cout, H/2, W/2)
fn conv3x3_s2(xs: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (b, ci, h, w) = xs.dims4()?;
    let co = weight.dim(0)?;
    let (ho, wo) = (h / 2, w / 2);
    let padded = xs.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
    let mut taps = Vec::with_capacity(9);
    for dy in 0..3 {
        for dx in 0..3 {
            // rows dy, dy+2, ..., dy+H-2 and the same for columns
            let tap = padded
                .narrow(2, dy, h)?
                .narrow(3, dx, w)?
                .reshape((b, ci, ho, 2, wo, 2))?
                .narrow(3, 0, 1)?
                .narrow(5, 0, 1)?
                .reshape((b, ci, ho, wo))?;
            taps.push(tap);
        }
    }
    // (b, ci, 9, ho, wo) -> (b, ho, wo, ci, 9): the order of the flattened (ci, 3, 3) weight
    let cols = Tensor::stack(&taps, 2)?
        .permute((0, 3, 4, 1, 2))?
        .contiguous()?
        .reshape((b * ho * wo, ci * 9))?;
    cols.matmul(&weight.reshape((co, ci * 9))?.t()?)?
        .broadcast_add(bias)?
        .reshape((b, ho, wo, co))?
        .permute((0, 3, 1, 2))?
        .contiguous()
}

/// The Swin Transformer backbone.
#[derive(Debug, Clone)]
pub struct SwinTransformer {
    patch_embed: PatchEmbed,
    layers: Vec<BasicLayer>,
    norm: LayerNorm,
    cfg: SwinConfig,
}

impl SwinTransformer {
    pub fn new(cfg: &SwinConfig, vb: VarBuilder) -> crate::Result<Self> {
        cfg.validate()
            .map_err(|m| crate::Error::config("swin", m))?;
        let patch_embed = PatchEmbed::new(cfg, vb.pp("patch_embed"))?;
        let mut layers = Vec::with_capacity(cfg.depths.len());
        let mut res = cfg.patches_resolution();
        let n = cfg.depths.len();
        for s in 0..n {
            let dim = cfg.embed_dim << s;
            let vs = vb.pp(format!("layers.{s}"));
            let blocks = (0..cfg.depths[s])
                .map(|b| {
                    SwinTransformerBlock::new(
                        cfg,
                        dim,
                        res,
                        cfg.num_heads[s],
                        b,
                        vs.pp(format!("blocks.{b}")),
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            let downsample = if s + 1 < n {
                Some(PatchMerging::new(
                    dim,
                    res,
                    cfg.layer_norm_eps,
                    vs.pp("downsample"),
                )?)
            } else {
                None
            };
            layers.push(BasicLayer { blocks, downsample });
            if s + 1 < n {
                res /= 2;
            }
        }
        Ok(Self {
            patch_embed,
            layers,
            norm: LayerNorm::new(cfg.num_features(), cfg.layer_norm_eps, vb.pp("norm"))?,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &SwinConfig {
        &self.cfg
    }

    /// images: (b, 3, img, img), normalised -> (b, 1 + h*w, C): the average-pooled token, then the
    /// final-norm tokens.
    pub fn forward(&self, images: &Tensor) -> Result<Tensor> {
        let (_, ci, h, w) = images.dims4()?;
        let s = self.cfg.img_size;
        if ci != self.cfg.in_chans || h != s || w != s {
            candle_core::bail!(
                "swin: input is {ci}x{h}x{w}, the model takes {}x{s}x{s}",
                self.cfg.in_chans
            )
        }
        let mut xs = self.patch_embed.forward(images)?;
        for layer in &self.layers {
            for blk in &layer.blocks {
                xs = blk.forward(&xs)?;
            }
            if let Some(ds) = &layer.downsample {
                xs = ds.forward(&xs)?;
            }
        }
        let xs = self.norm.forward(&xs)?;
        let pooled = xs.mean_keepdim(1)?;
        Tensor::cat(&[&pooled, &xs], 1)
    }
}

/// Keys a RAM/Swin checkpoint holds that the model recomputes (for
/// [`crate::weights::WeightLoader::ignore_unexpected`]).
pub const RECOMPUTED_BUFFERS: &[&str] = &["relative_position_index", "attn_mask"];

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Var};

    fn seeded(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
        let n: usize = shape.iter().product();
        let mut rng = lion_rng::SplitMix64::new(seed);
        let v: Vec<f64> = (0..n)
            .map(|_| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 - 0.5)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
            .and_then(|t| t.to_dtype(dtype))
            .unwrap()
    }

    /// The im2col stem convolution equals candle's own Conv2d (stride 2, padding 1) on odd and
    /// even channel counts and edge sizes.
    #[test]
    fn conv3x3_s2_matches_conv2d() {
        for (b, ci, co, h, w) in [(1, 3, 4, 2, 2), (2, 3, 16, 8, 6), (1, 7, 5, 16, 16)] {
            let x = seeded(&[b, ci, h, w], 1, DType::F32);
            let k = seeded(&[co, ci, 3, 3], 2, DType::F32);
            let bias = seeded(&[co], 3, DType::F32);
            let ours = conv3x3_s2(&x, &k, &bias).unwrap();
            let theirs = x
                .conv2d(&k, 1, 2, 1, 1)
                .unwrap()
                .broadcast_add(&bias.reshape((1, co, 1, 1)).unwrap())
                .unwrap();
            assert_eq!(ours.dims(), theirs.dims());
            let err = crate::testing::max_abs_diff(&ours, &theirs).unwrap();
            assert!(err < 1e-5, "{b}x{ci}x{h}x{w} -> {co}: max abs error {err}");
        }
    }

    /// Its gradients (input, weight, bias) equal central differences, in f64.
    #[test]
    fn conv3x3_s2_gradients_match_finite_differences() {
        let (b, ci, co, h, w) = (2, 3, 4, 6, 4);
        let x = Var::from_tensor(&seeded(&[b, ci, h, w], 4, DType::F64)).unwrap();
        let k = Var::from_tensor(&seeded(&[co, ci, 3, 3], 5, DType::F64)).unwrap();
        let bias = Var::from_tensor(&seeded(&[co], 6, DType::F64)).unwrap();
        let r = seeded(&[b, co, h / 2, w / 2], 7, DType::F64);
        let loss = |x: &Tensor, k: &Tensor, bias: &Tensor| {
            (conv3x3_s2(x, k, bias).unwrap() * &r)
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let grads = loss(&x, &k, &bias).backward().unwrap();
        let eps = 1e-6;
        for (which, var) in [(0, &x), (1, &k), (2, &bias)] {
            let g = grads
                .get(var)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            let flat = var.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            for i in (0..flat.len()).step_by(5) {
                let bump = |d: f64| {
                    let mut v = flat.clone();
                    v[i] += d;
                    let t = Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap();
                    let args = match which {
                        0 => (t, k.as_tensor().clone(), bias.as_tensor().clone()),
                        1 => (x.as_tensor().clone(), t, bias.as_tensor().clone()),
                        _ => (x.as_tensor().clone(), k.as_tensor().clone(), t),
                    };
                    loss(&args.0, &args.1, &args.2).to_scalar::<f64>().unwrap()
                };
                let fd = (bump(eps) - bump(-eps)) / (2.0 * eps);
                assert!(
                    (fd - g[i]).abs() < 1e-6,
                    "tensor {which}, entry {i}: backprop {} vs finite difference {fd}",
                    g[i]
                );
            }
        }
    }
}
