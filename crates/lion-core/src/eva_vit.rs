//! EVA-CLIP ViT (the BLIP-2 / InstructBLIP / LION image encoder), with LAVIS's key names.
//!
//! Reference: JiuTian-LION `models/eva_vit.py` @7578437 (= LAVIS `eva_vit.py`): `VisionTransformer`
//! built by `create_eva_vit_g` (docs/DESIGN.md §4).
//! Checkpoint keys (LAVIS `eva_vit_g.pth`; inside LION under `visual_encoder.`):
//! `cls_token (1,1,d)`, `pos_embed (1,1+g*g,d)`, `patch_embed.proj.{weight (d,3,p,p),bias}`,
//! `blocks.{i}.{norm1,norm2}.{weight,bias}`, `blocks.{i}.attn.qkv.weight (3d,d)`,
//! `blocks.{i}.attn.{q_bias,v_bias} (d)` (no k bias), `blocks.{i}.attn.proj`, `blocks.{i}.mlp.{fc1,fc2}`.
//!
//! Quirks kept from upstream: pre-LN blocks with LayerNorm eps 1e-6, exact (erf) GELU, q scaled by
//! head_dim^-0.5, the qkv bias is `cat(q_bias, 0, v_bias)`, no final norm, and depth 39 for ViT-g.
//! EVA-CLIP-g has 40 blocks and `eva_vit_g.pth` holds all 40; LAVIS/LION build 39 and load the
//! file with `strict=False`, which drops `blocks.39.*`. Here the rule is explicit:
//! [`EvaVitConfig::checkpoint_depth`] says how many blocks the weight file has (40 for
//! [`EvaVitConfig::vit_g`]), and the keys of the blocks past `depth` are skipped, not loaded
//! ([`EvaVitConfig::unused_checkpoint_prefixes`], given to
//! [`crate::weights::WeightLoader::skip_unused`] by [`crate::lion::checkpoint_loader`]). Without
//! it (or for any block beyond it) extra blocks are unexpected keys, an error in strict loading.
//! [`EvaVit::forward`] returns the outputs of the blocks asked for (LION: 38, 28, 18).
//!
//! A checkpoint whose `pos_embed` grid differs from the configured image size is interpolated
//! at load time, as upstream `interpolate_pos_embed` does (torch bicubic, a = -0.75,
//! align_corners = False, class token unchanged, in f32): see [`interpolate_pos_embed`].
//!
//! Shapes: pixel_values (b, 3, img, img) -> each requested block output (b, 1 + (img/p)^2, d);
//! ViT-g at 224: (b, 257, 1408).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::linear::{Linear, Quantizable};

fn default_eps() -> f64 {
    1e-6
}
fn default_true() -> bool {
    true
}

/// EVA ViT configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaVitConfig {
    /// Square input size in pixels (224 in LION). The positional grid is `img_size / patch_size`.
    pub img_size: usize,
    /// Patch size (14 for ViT-g).
    pub patch_size: usize,
    /// Input channels (3).
    pub in_chans: usize,
    /// Embedding width (1408 for ViT-g).
    pub width: usize,
    /// Number of blocks (39 for ViT-g in LAVIS/LION).
    pub depth: usize,
    /// Blocks in the weight file when it has more than the model uses (`eva_vit_g.pth`: 40):
    /// the keys of blocks `depth..checkpoint_depth` are accepted and skipped. None: the file
    /// holds exactly `depth` blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_depth: Option<usize>,
    /// Attention heads (16 for ViT-g: head dim 88).
    pub num_heads: usize,
    /// MLP hidden size: `int(width * mlp_ratio)`; ViT-g uses ratio 4.3637, so 6144.
    pub mlp_dim: usize,
    /// LayerNorm eps (1e-6).
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Frozen: every weight is a constant tensor (never a `Var`, even when the loader marks it
    /// trainable). LION freezes the ViT (`lion_t5.py:L92-97`).
    #[serde(default = "default_true")]
    pub frozen: bool,
}

impl EvaVitConfig {
    /// EVA-CLIP ViT-g/14 as built by LAVIS/LION `create_eva_vit_g` (224 px, 39 blocks), frozen.
    pub fn vit_g() -> Self {
        Self {
            img_size: 224,
            patch_size: 14,
            in_chans: 3,
            width: 1408,
            depth: 39,
            checkpoint_depth: Some(40),
            num_heads: 16,
            mlp_dim: 6144,
            layer_norm_eps: 1e-6,
            frozen: true,
        }
    }

    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.img_size / self.patch_size
    }

    /// Tokens per image: class token + patches.
    pub fn num_tokens(&self) -> usize {
        1 + self.grid() * self.grid()
    }

    pub fn validate(&self) -> crate::rules::Check {
        use crate::rules::{all_positive, divides, epsilon};
        all_positive(&[
            ("img_size", self.img_size),
            ("patch_size", self.patch_size),
            ("in_chans", self.in_chans),
            ("width", self.width),
            ("depth", self.depth),
            ("num_heads", self.num_heads),
            ("mlp_dim", self.mlp_dim),
        ])?;
        divides("img_size", self.img_size, "patch_size", self.patch_size)?;
        divides("width", self.width, "num_heads", self.num_heads)?;
        // Tokens x width must be countable (img_size 2^40 would overflow).
        crate::rules::product("img_size", &[self.grid(), self.grid(), self.width])?;
        epsilon("layer_norm_eps", self.layer_norm_eps)?;
        if let Some(n) = self.checkpoint_depth.filter(|&n| n < self.depth) {
            return Err(crate::rules::Invalid::new(
                "checkpoint_depth",
                n,
                format!(
                    "must be at least depth ({}): the weight file would lack blocks",
                    self.depth
                ),
            ));
        }
        Ok(())
    }

    /// Key prefixes (under `prefix`, e.g. `visual_encoder.`) of the checkpoint blocks the model
    /// does not use: `blocks.{depth..checkpoint_depth}.`.
    pub fn unused_checkpoint_prefixes(&self, prefix: &str) -> Vec<String> {
        (self.depth..self.checkpoint_depth.unwrap_or(0))
            .map(|i| format!("{prefix}blocks.{i}."))
            .collect()
    }
}

/// Fetches a weight; in frozen mode it is detached, so it can never be a `Var`.
fn param(
    vb: &VarBuilder,
    shape: impl Into<candle_core::Shape>,
    name: &str,
    init: Init,
    frozen: bool,
) -> Result<Tensor> {
    let t = vb.get_with_hints(shape, name, init)?;
    Ok(if frozen { t.detach() } else { t })
}

/// A linear weight (`weight`, trunc-normal init): frozen, read in the dtype it will be kept in
/// or quantized from ([`crate::linear::get_quantizable_weight`]); trainable, as [`param`].
fn weight_param(
    vb: &VarBuilder,
    shape: impl Into<candle_core::Shape>,
    frozen: bool,
) -> Result<Tensor> {
    match frozen {
        true => {
            Ok(crate::linear::get_quantizable_weight(vb, shape, "weight", TRUNC_NORMAL)?.detach())
        }
        false => param(vb, shape, "weight", TRUNC_NORMAL, false),
    }
}

const TRUNC_NORMAL: Init = Init::Randn {
    mean: 0.,
    stdev: 0.02,
};

/// 2-D sine-cosine position codes of a `grid` x `grid` patch grid: (grid * grid, dim), rows in
/// raster order. The first half of each row encodes the patch row, the second half its column,
/// each as `[sin(p * w_i), cos(p * w_i)]` with `w_i = 10000^(-i / (dim / 4))` (MAE's
/// `get_2d_sincos_pos_embed` layout, computed in f64). Not part of EVA's model: `lion train` adds
/// it to a from-scratch ViT's trunc-normal `pos_embed`, because a small ViT trained from random
/// weights otherwise learns almost no position signal (its patch tokens cannot be told apart by
/// place, so REC cannot be learnt). `dim` must be a multiple of 4.
pub fn sincos_pos_embed(grid: usize, dim: usize, dev: &candle_core::Device) -> Result<Tensor> {
    if dim % 4 != 0 {
        candle_core::bail!("sin-cos position codes need a width divisible by 4, got {dim}")
    }
    let quarter = dim / 4;
    let mut v = Vec::with_capacity(grid * grid * dim);
    for r in 0..grid {
        for c in 0..grid {
            for p in [r, c] {
                let ws = (0..quarter).map(|i| 1.0 / 10000f64.powf(i as f64 / quarter as f64));
                let args: Vec<f64> = ws.map(|w| p as f64 * w).collect();
                v.extend(args.iter().map(|a| a.sin() as f32));
                v.extend(args.iter().map(|a| a.cos() as f32));
            }
        }
    }
    Tensor::from_vec(v, (grid * grid, dim), dev)
}

fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder, frozen: bool) -> Result<Linear> {
    // (the weight is asked for before the bias, as always: seeded random draws follow keys)
    let stored = crate::linear::stored_quantized(&vb, out_dim, in_dim, "weight", Quantizable::Yes)?;
    let dense = match stored {
        Some(_) => None,
        None => Some(weight_param(&vb, (out_dim, in_dim), frozen)?),
    };
    let b = param(&vb, out_dim, "bias", Init::Const(0.), frozen)?;
    match (stored, dense) {
        (Some(q), _) => Ok(Linear::quantized(q, Some(b))),
        (None, Some(w)) => crate::linear::load_linear(w, Some(b), Quantizable::Yes),
        (None, None) => unreachable!("the dense weight is read when none is stored quantized"),
    }
}

/// `nn.LayerNorm`.
#[derive(Debug, Clone)]
struct Norm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl Norm {
    fn new(dim: usize, eps: f64, vb: VarBuilder, frozen: bool) -> Result<Self> {
        Ok(Self {
            weight: param(&vb, dim, "weight", Init::Const(1.), frozen)?,
            bias: param(&vb, dim, "bias", Init::Const(0.), frozen)?,
            eps,
        })
    }

    /// xs: (..., dim) -> (..., dim), computed in f32 (the fused, differentiable kernel on the
    /// CPU; the composition elsewhere).
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dtype = xs.dtype();
        let x = xs.to_dtype(DType::F32)?;
        let w = self.weight.to_dtype(DType::F32)?;
        let b = self.bias.to_dtype(DType::F32)?;
        crate::kernels::layer_norm(&x, &w, &b, self.eps)?.to_dtype(dtype)
    }
}

/// EVA `Attention`: fused qkv projection whose bias is `cat(q_bias, 0, v_bias)`.
#[derive(Debug, Clone)]
pub struct Attention {
    qkv: Linear,
    q_bias: Tensor,
    v_bias: Tensor,
    proj: Linear,
    num_heads: usize,
    head_dim: usize,
    /// Built to compute in bf16 ([`crate::kernels::attention_in`]).
    bf16: bool,
}

impl Attention {
    /// Keys `qkv.weight`, `q_bias`, `v_bias`, `proj.{weight,bias}`.
    pub fn new(cfg: &EvaVitConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.width;
        let f = cfg.frozen;
        Ok(Self {
            qkv: match crate::linear::stored_quantized(
                &vb.pp("qkv"),
                3 * d,
                d,
                "weight",
                Quantizable::Yes,
            )? {
                Some(q) => Linear::quantized(q, None),
                None => crate::linear::load_linear(
                    weight_param(&vb.pp("qkv"), (3 * d, d), f)?,
                    None,
                    Quantizable::Yes,
                )?,
            },
            q_bias: param(&vb, d, "q_bias", Init::Const(0.), f)?,
            v_bias: param(&vb, d, "v_bias", Init::Const(0.), f)?,
            proj: linear(d, d, vb.pp("proj"), f)?,
            num_heads: cfg.num_heads,
            head_dim: d / cfg.num_heads,
            bf16: crate::linear::weight_dtype() == crate::cpu::WeightDtype::Bf16,
        })
    }

    /// xs: (b, n, d) -> (b, n, d)
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, n, d) = xs.dims3()?;
        let bias = Tensor::cat(&[&self.q_bias, &self.q_bias.zeros_like()?, &self.v_bias], 0)?;
        let qkv = crate::kernels::add_bias(&self.qkv.forward(xs)?, &bias)?;
        // (3, b, heads, n, head_dim)
        let qkv = qkv
            .reshape((b, n, 3, self.num_heads, self.head_dim))?
            .permute((2, 0, 3, 1, 4))?;
        let scale = (self.head_dim as f64).powf(-0.5);
        let q = (qkv.get(0)?.contiguous()? * scale)?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let ctx = if self.bf16 {
            crate::kernels::attention_in(&q, &k, &v, 1.0, &[], 0.0, true)?
        } else {
            let scores = crate::sgemm::bmm(&q, &k.t()?)?; // (b, heads, n, n)
            crate::sgemm::bmm(&crate::ops::softmax(&scores)?, &v)?
        };
        let ctx = ctx.transpose(1, 2)?.reshape((b, n, d))?;
        self.proj.forward(&ctx)
    }
}

/// `Mlp`: fc1 -> exact GELU -> fc2.
#[derive(Debug, Clone)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

/// EVA `Block`: `x + attn(norm1(x))`, then `x + mlp(norm2(x))` (no layer scale, no drop path).
#[derive(Debug, Clone)]
pub struct Block {
    norm1: Norm,
    attn: Attention,
    norm2: Norm,
    mlp: Mlp,
}

impl Block {
    pub fn new(cfg: &EvaVitConfig, vb: VarBuilder) -> Result<Self> {
        let (d, eps, f) = (cfg.width, cfg.layer_norm_eps, cfg.frozen);
        Ok(Self {
            norm1: Norm::new(d, eps, vb.pp("norm1"), f)?,
            attn: Attention::new(cfg, vb.pp("attn"))?,
            norm2: Norm::new(d, eps, vb.pp("norm2"), f)?,
            mlp: Mlp {
                fc1: linear(d, cfg.mlp_dim, vb.pp("mlp.fc1"), f)?,
                fc2: linear(cfg.mlp_dim, d, vb.pp("mlp.fc2"), f)?,
            },
        })
    }

    /// xs: (b, n, d) -> (b, n, d)
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = (xs + self.attn.forward(&self.norm1.forward(xs)?)?)?;
        let h = self.norm2.forward(&xs)?;
        let h = self
            .mlp
            .fc2
            .forward(&crate::kernels::gelu_erf(&self.mlp.fc1.forward(&h)?)?)?;
        xs + h
    }
}

/// The EVA ViT: patch embedding, class token, absolute positions, `depth` pre-LN blocks.
#[derive(Debug, Clone)]
pub struct EvaVit {
    patch_weight: Tensor, // (d, c*p*p)
    patch_bias: Tensor,   // (d,)
    cls_token: Tensor,    // (1, 1, d)
    pos_embed: Tensor,    // (1, 1 + g*g, d)
    blocks: Vec<Block>,
    cfg: EvaVitConfig,
}

impl EvaVit {
    /// Builds from a `VarBuilder` at the ViT root (`visual_encoder` inside LION checkpoints).
    pub fn new(cfg: &EvaVitConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let (d, p, c, f) = (cfg.width, cfg.patch_size, cfg.in_chans, cfg.frozen);
        let patch_weight = param(
            &vb.pp("patch_embed.proj"),
            (d, c, p, p),
            "weight",
            TRUNC_NORMAL,
            f,
        )?
        .reshape((d, c * p * p))?;
        let patch_bias = param(&vb.pp("patch_embed.proj"), d, "bias", Init::Const(0.), f)?;
        let cls_token = param(&vb, (1, 1, d), "cls_token", TRUNC_NORMAL, f)?;
        let n = cfg.num_tokens();
        let pos_embed = if vb.contains_tensor("pos_embed") {
            // ref: eva_vit.py interpolate_pos_embed, applied to the checkpoint before loading
            let stored = vb.get_unchecked("pos_embed")?;
            let stored = if f { stored.detach() } else { stored };
            if stored.dims() == [1, n, d] {
                stored
            } else {
                let sd = stored.dims();
                if sd.len() != 3 || sd[2] != d {
                    candle_core::bail!(
                        "pos_embed in the checkpoint has shape {sd:?}, the model needs (1, {n}, {d})"
                    )
                }
                let pos = interpolate_pos_embed(&stored, 1, cfg.grid())?;
                tracing::info!(
                    from = ?stored.dims(),
                    to = ?pos.dims(),
                    "EVA ViT: interpolated pos_embed to the configured image size"
                );
                pos
            }
        } else {
            param(&vb, (1, n, d), "pos_embed", TRUNC_NORMAL, f)?
        };
        let blocks = (0..cfg.depth)
            .map(|i| Block::new(cfg, vb.pp(format!("blocks.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            patch_weight,
            patch_bias,
            cls_token,
            pos_embed,
            blocks,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &EvaVitConfig {
        &self.cfg
    }

    /// Patch embedding + class token + positions: (b, c, img, img) -> (b, 1 + g*g, d).
    pub fn embed(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = pixel_values.dims4()?;
        let (p, img) = (self.cfg.patch_size, self.cfg.img_size);
        if c != self.cfg.in_chans || h != img || w != img {
            candle_core::bail!(
                "EVA ViT expects pixel_values of shape (b, {}, {img}, {img}), got {:?}",
                self.cfg.in_chans,
                pixel_values.dims()
            )
        }
        let g = img / p;
        // A stride-p convolution with a p x p kernel is a matmul over flattened patches.
        let patches = pixel_values
            .to_dtype(self.patch_weight.dtype())?
            .reshape((b, c, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))? // (b, gh, gw, c, p, p)
            .reshape((b, g * g, c * p * p))?;
        let xs = Linear::new(self.patch_weight.clone(), Some(self.patch_bias.clone()))
            .forward(&patches)?;
        let cls = self.cls_token.broadcast_as((b, 1, self.cfg.width))?;
        Tensor::cat(&[&cls, &xs], 1)?.broadcast_add(&self.pos_embed)
    }

    /// pixel_values: (b, 3, img, img); layers: block indices, 0-based (LION: `[38, 28, 18]`)
    /// -> the output of each requested block, in the order asked, each (b, 1 + g*g, d).
    /// `layers = [depth - 1]` gives the final output. Blocks after the deepest requested one
    /// are not run.
    pub fn forward(&self, pixel_values: &Tensor, layers: &[usize]) -> Result<Vec<Tensor>> {
        let _span = tracing::trace_span!("vit").entered();
        if layers.is_empty() {
            candle_core::bail!("EVA ViT: no block outputs requested")
        }
        if let Some(bad) = layers.iter().find(|&&l| l >= self.blocks.len()) {
            candle_core::bail!(
                "EVA ViT: block {bad} requested but the model has {} blocks (0..{})",
                self.blocks.len(),
                self.blocks.len() - 1
            )
        }
        let last = *layers.iter().max().expect("non-empty");
        let mut xs = self.embed(pixel_values)?;
        let mut outs: Vec<Option<Tensor>> = vec![None; layers.len()];
        for (i, block) in self.blocks.iter().enumerate().take(last + 1) {
            xs = block.forward(&xs)?;
            for (slot, &l) in outs.iter_mut().zip(layers) {
                if l == i {
                    *slot = Some(xs.clone());
                }
            }
        }
        Ok(outs
            .into_iter()
            .map(|o| o.expect("every requested block was run"))
            .collect())
    }
}

/// Cubic convolution weights as torch's `upsample_bicubic2d` (A = -0.75) for fraction `t`.
fn cubic_weights(t: f64) -> [f64; 4] {
    const A: f64 = -0.75;
    let cc1 = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let cc2 = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    [cc2(t + 1.0), cc1(t), cc1(1.0 - t), cc2(2.0 - t)]
}

/// Resampling matrix (out, in) of torch bicubic interpolation, align_corners = False, indices
/// clamped at the borders.
fn bicubic_matrix(n_in: usize, n_out: usize) -> Vec<f32> {
    let mut m = vec![0f32; n_out * n_in];
    let scale = n_in as f64 / n_out as f64;
    for o in 0..n_out {
        let real = scale * (o as f64 + 0.5) - 0.5;
        let i0 = real.floor();
        let w = cubic_weights(real - i0);
        for (k, wk) in w.iter().enumerate() {
            let idx = (i0 as i64 - 1 + k as i64).clamp(0, n_in as i64 - 1) as usize;
            m[o * n_in + idx] += *wk as f32;
        }
    }
    m
}

/// Upstream `interpolate_pos_embed`: resizes the square grid part of a `(1, extra + g*g, d)`
/// position embedding to `new_grid x new_grid` with torch-style bicubic interpolation
/// (A = -0.75, align_corners = False), keeping the first `extra` (class) tokens. Computed in f32.
pub fn interpolate_pos_embed(pos: &Tensor, extra: usize, new_grid: usize) -> Result<Tensor> {
    let (one, n, d) = pos.dims3()?;
    let g = ((n.saturating_sub(extra)) as f64).sqrt().round() as usize;
    if one != 1 || n < extra || g * g + extra != n {
        candle_core::bail!(
            "pos_embed of shape {:?} is not (1, {extra} + g*g, d) for a square grid",
            pos.dims()
        )
    }
    let dtype = pos.dtype();
    let pos = pos.to_dtype(DType::F32)?;
    if g == new_grid {
        return pos.to_dtype(dtype);
    }
    let dev = pos.device();
    let m = Tensor::from_vec(bicubic_matrix(g, new_grid), (new_grid, g), dev)?;
    let cls = pos.narrow(1, 0, extra)?;
    // (g, g, d): rows, columns, channels
    let grid = pos.narrow(1, extra, g * g)?.reshape((g, g, d))?;
    // columns: (g, G, d) = for each row, M (G, g) @ (g, d)
    let cols = m.broadcast_left(g)?.matmul(&grid)?;
    // rows: (G, G*d) = M (G, g) @ (g, G*d)
    let rows = m.matmul(&cols.reshape((g, new_grid * d))?)?;
    let grid = rows.reshape((1, new_grid * new_grid, d))?;
    Tensor::cat(&[&cls, &grid], 1)?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sincos_pos_embed_codes_row_then_column() -> Result<()> {
        let dev = candle_core::Device::Cpu;
        let (g, d) = (3, 8);
        let pe = sincos_pos_embed(g, d, &dev)?.to_vec2::<f32>()?;
        assert_eq!(pe.len(), g * g);
        // frequencies 1 and 10000^(-1/2) = 0.01 for a quarter of 2
        let code = |p: f64| [p.sin(), (p * 0.01).sin(), p.cos(), (p * 0.01).cos()];
        for r in 0..g {
            for c in 0..g {
                let want: Vec<f64> = code(r as f64).into_iter().chain(code(c as f64)).collect();
                for (got, want) in pe[r * g + c].iter().zip(&want) {
                    assert!(
                        (*got as f64 - want).abs() < 1e-6,
                        "({r},{c}): {got} vs {want}"
                    );
                }
            }
        }
        assert!(sincos_pos_embed(2, 6, &dev).is_err());
        Ok(())
    }
}
