//! Fused, multi-threaded CPU kernels for the non-GEMM work, with backward passes.
//!
//! candle's generic CPU paths run softmax, erf-GELU and normalisation single-threaded and as
//! several passes over memory (docs/DESIGN.md §5), and some of its fused ops drop
//! gradients. These are candle [`CustomOp1`]/[`CustomOp2`]s over contiguous f32 rows, parallel
//! over rows with rayon, whose `bwd` returns exact gradients. Other dtypes and devices fall back
//! to the differentiable composition in [`crate::ops`]; every kernel is tested against it,
//! forward and backward (`tests/kernels.rs`).
//!
//! The ops have a CPU forward only (`cpu_fwd`): on a GPU they would fail. [`fused`] is the one
//! decision "fused CPU kernel or plain candle ops", from the tensor's device; every fused op of
//! the crate (these, [`crate::linear::Linear`], lion-train's AdamW) asks it. The plain path can be
//! forced on the CPU ([`with_plain_ops`], or `LION_PLAIN_OPS=1` for a whole process), so that the
//! path a GPU takes is tested, values and gradients, without one (`tests/plain_ops.rs`).

use std::cell::Cell;
use std::sync::OnceLock;

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Device, Layout, Result, Shape, Tensor, D,
};
use rayon::prelude::*;

// ---------------------------------------------------------------- fused or plain

thread_local! {
    /// [`with_plain_ops`]'s setting on this thread (None: the process default).
    static PLAIN_OPS: Cell<Option<bool>> = const { Cell::new(None) };
}

/// `LION_PLAIN_OPS=1` (or `true`): the process runs the plain candle ops everywhere, also on the
/// CPU (slower; for checking the GPU path on a CPU).
fn plain_ops_env() -> bool {
    static ENV: OnceLock<bool> = OnceLock::new();
    *ENV.get_or_init(|| {
        let on = std::env::var("LION_PLAIN_OPS")
            .map(|v| matches!(v.trim(), "1" | "true" | "yes"))
            .unwrap_or(false);
        if on {
            tracing::info!("LION_PLAIN_OPS: the fused CPU kernels are off (plain candle ops)");
        }
        on
    })
}

/// Whether the plain ops are forced on this thread ([`with_plain_ops`], else `LION_PLAIN_OPS`).
pub fn plain_ops_forced() -> bool {
    PLAIN_OPS.with(|p| p.get()).unwrap_or_else(plain_ops_env)
}

/// Runs `f` with the plain candle ops forced (`plain = true`) or the fused kernels allowed
/// (`false`) on this thread, whatever `LION_PLAIN_OPS` says; the previous setting comes back
/// afterwards, also when `f` panics. The decision is taken on the calling thread when an op is
/// built, so a model's forward and backward called inside `f` follow it.
pub fn with_plain_ops<T>(plain: bool, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<bool>);
    impl Drop for Restore {
        fn drop(&mut self) {
            PLAIN_OPS.with(|p| p.set(self.0));
        }
    }
    let _restore = Restore(PLAIN_OPS.with(|p| p.replace(Some(plain))));
    f()
}

/// The dispatch decision: the fused CPU kernels run for tensors on `dev` when it is the CPU and
/// the plain ops are not forced; otherwise (a GPU) plain candle ops, whose gradients candle
/// computes.
pub fn fused(dev: &Device) -> bool {
    dev.is_cpu() && !plain_ops_forced()
}

/// Rows per rayon task: enough work per task to amortise scheduling.
fn rows_per_task(dim: usize) -> usize {
    (16 * 1024 / dim.max(1)).max(1)
}

/// The width of the rows a kernel works on: the last dimension.
fn last_dim(l: &Layout) -> usize {
    l.dims()[l.dims().len() - 1]
}

/// A new buffer whose rows (width `dim`) are written by `f(out_row, x_row)`, in parallel blocks
/// of rows.
fn map_rows(x: &[f32], dim: usize, f: impl Fn(&mut [f32], &[f32]) + Sync) -> Vec<f32> {
    let chunk = dim * rows_per_task(dim);
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk))
        .for_each(|(yc, xc)| {
            for (yr, xr) in yc.chunks_mut(dim).zip(xc.chunks(dim)) {
                f(yr, xr)
            }
        });
    y
}

/// [`map_rows`] over two inputs of the same shape: `f(out_row, x_row, g_row)`.
fn map_rows2(
    x: &[f32],
    g: &[f32],
    dim: usize,
    f: impl Fn(&mut [f32], &[f32], &[f32]) + Sync,
) -> Vec<f32> {
    let chunk = dim * rows_per_task(dim);
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk).zip(g.par_chunks(chunk)))
        .for_each(|(yc, (xc, gc))| {
            for ((yr, xr), gr) in yc.chunks_mut(dim).zip(xc.chunks(dim)).zip(gc.chunks(dim)) {
                f(yr, xr, gr)
            }
        });
    y
}

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        _ => candle_core::bail!("{op}: only f32 is supported"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

fn use_kernel(xs: &Tensor) -> bool {
    xs.dtype() == DType::F32
        && fused(xs.device())
        && xs.rank() >= 1
        && xs.dim(D::Minus1).map(|d| d > 0).unwrap_or(false)
}

// ---------------------------------------------------------------- vectorisable math
//
// libm's `expf`/`erff` are scalar calls with branches, so loops over them do not vectorise:
// erf-GELU over a (349, 2048) T5 FFN activation took ~7 ms through `erff`, about as long as one
// of the layer's GEMMs. These are branch-free (selects only), so the loops below compile to SIMD.

/// e^x: Cephes' `expf` scheme (x = n ln2 + r, |r| <= ln2 / 2, degree-7 polynomial for e^r, 2^n
/// through the exponent bits), within 2 ulp of `f32::exp` on the normal range. Returns 0 below
/// -87.34 (where e^x leaves the normal range: flushed to zero instead of going subnormal), +inf
/// above 88.72 and NaN for NaN.
#[inline(always)]
#[allow(clippy::excessive_precision)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in a part exact in few bits and the rest (Cody-Waite).
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer without a branch.
    const ROUND: f32 = 12_582_912.0;
    const LO: f32 = -87.336_54; // ln of the smallest normal f32
    const HI: f32 = 88.722_83; // ln of f32::MAX
    let xc = x.clamp(LO, HI);
    let shifted = xc * LOG2E + ROUND;
    let n = shifted - ROUND;
    // The same integer from the mantissa bits: no float-to-int conversion, which does not
    // vectorise (Rust's `as i32` saturates and maps NaN to 0 lane by lane).
    let n_int = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 5.000_000_1e-1;
    let y = p * r * r + r + 1.0;
    // n is in -126..=128; 2^128 is not an f32, so n = 128 scales by 2^127 and then by 2.
    let top = if n_int > 127 { 2.0 } else { 1.0 };
    let scale = f32::from_bits(((n_int.min(127) + 127) << 23) as u32);
    let e = y * scale * top;
    if x < LO {
        0.0
    } else if x > HI {
        f32::INFINITY
    } else {
        e
    }
}

/// erf(x): Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7 in exact arithmetic), the formula of
/// PyTorch's vectorised CPU `erf` (`Vectorized<float>::erf`), for |x| >= 1; below, where that
/// formula loses digits to cancellation, the Maclaurin series to x^13.
#[inline(always)]
#[allow(clippy::excessive_precision)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let p =
        (((1.061_405_4 * t - 1.453_152) * t + 1.421_413_7) * t - 0.284_496_74) * t + 0.254_829_6;
    let r = 1.0 - p * t * exp(-a * a);
    // Near 0, 1 - (a value near 1) cancels: use the Maclaurin series (to x^25) there instead.
    const C: [f32; 13] = [
        1.0,
        -0.3333333333333333,
        0.1,
        -0.023809523809523808,
        0.004629629629629629,
        -0.0007575757575757576,
        0.00010683760683760684,
        -1.3227513227513228e-05,
        1.4589169000933706e-06,
        -1.4503852223150468e-07,
        1.3122532963802806e-08,
        -1.0892221037148573e-09,
        8.35070279514724e-11,
    ];
    let z = x * x;
    let mut acc = C[12];
    for &c in C[..12].iter().rev() {
        acc = acc * z + c;
    }
    let series = x * std::f32::consts::FRAC_2_SQRT_PI * acc;
    if a < 1.0 {
        series
    } else {
        r.copysign(x)
    }
}

/// Sum of a slice in 8 interleaved partial sums (vectorisable; the order is fixed, so the result
/// is deterministic).
#[inline(always)]
fn sum_lanes(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for &v in rest {
        s += v;
    }
    s
}

/// Dot product of two equal-length slices in 8 lanes, summed as [`sum_lanes`].
fn dot_lanes(xs: &[f32], ys: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (xc, yc) = (xs.chunks_exact(8), ys.chunks_exact(8));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (a8, b8) in xc.zip(yc) {
        for ((a, &x), &y) in acc.iter_mut().zip(a8).zip(b8) {
            *a += x * y;
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (&x, &y) in xr.iter().zip(yr) {
        s += x * y;
    }
    s
}

/// Two contiguous f32 operands of the same shape (the backward kernels' y/x and gradient).
fn same_shape_f32<'a>(
    s1: &'a CpuStorage,
    l1: &Layout,
    s2: &'a CpuStorage,
    l2: &Layout,
    op: &str,
) -> Result<(&'a [f32], &'a [f32])> {
    if l1.dims() != l2.dims() {
        candle_core::bail!("{op}: shapes {:?} and {:?} differ", l1.dims(), l2.dims())
    }
    Ok((contiguous_f32(s1, l1, op)?, contiguous_f32(s2, l2, op)?))
}

/// Maximum of a slice in 8 lanes (NaN elements are skipped, as by `f32::max`).
#[inline(always)]
fn max_lanes(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    acc.iter()
        .chain(rest)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max)
}

// ---------------------------------------------------------------- softmax

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "lion-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let y = map_rows(x, last_dim(l), |yr, xr| {
            let max = max_lanes(xr);
            for (o, &v) in yr.iter_mut().zip(xr) {
                *o = exp(v - max);
            }
            let inv = 1.0 / sum_lanes(yr);
            yr.iter_mut().for_each(|o| *o *= inv);
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    /// dy/dx: y * (g - sum(g * y)), one fused pass ([`SoftmaxGrad`])
    fn bwd(&self, _arg: &Tensor, res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(res.apply_op2_no_bwd(&g.contiguous()?, &SoftmaxGrad)?))
    }
}

/// The softmax input gradient from its output y and the output gradient g, per row:
/// `y * (g - sum(g * y))`. One parallel pass (the composition took four single-threaded
/// passes and three temporaries over every attention-probability tensor).
struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "lion-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (y, g) = same_shape_f32(s1, l1, s2, l2, self.name())?;
        let dx = map_rows2(y, g, last_dim(l1), |dr, yr, gr| {
            let dot = dot_lanes(yr, gr);
            for ((o, &yv), &gv) in dr.iter_mut().zip(yr).zip(gr) {
                *o = yv * (gv - dot);
            }
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Softmax over the last dimension.
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    if use_kernel(xs) {
        xs.contiguous()?.apply_op1(Softmax)
    } else {
        candle_nn::ops::softmax(xs, D::Minus1)
    }
}

// ---------------------------------------------------------------- erf-GELU

struct GeluErf;
struct GeluErfGrad;

const SQRT_1_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
// 1 / sqrt(2 pi)
const INV_SQRT_2PI: f32 = 0.398_942_3;

fn map_par(x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(16 * 1024)
        .zip(x.par_chunks(16 * 1024))
        .for_each(|(yc, xc)| yc.iter_mut().zip(xc).for_each(|(o, &v)| *o = f(v)));
    y
}

#[inline(always)]
fn gelu(v: f32) -> f32 {
    0.5 * v * (1.0 + erf(v * SQRT_1_2))
}

#[inline(always)]
fn gelu_grad(v: f32) -> f32 {
    let cdf = 0.5 * (1.0 + erf(v * SQRT_1_2));
    cdf + v * INV_SQRT_2PI * exp(-0.5 * v * v)
}

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "lion-gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        Ok((CpuStorage::F32(map_par(x, gelu)), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(&g.contiguous()?, &GeluErfGrad)?))
    }
}

/// The GELU input gradient from x and the output gradient g: `g * gelu'(x)`, one pass.
impl CustomOp2 for GeluErfGrad {
    fn name(&self) -> &'static str {
        "lion-gelu-erf-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, g) = same_shape_f32(s1, l1, s2, l2, self.name())?;
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(16 * 1024)
            .zip(x.par_chunks(16 * 1024).zip(g.par_chunks(16 * 1024)))
            .for_each(|(dc, (xc, gc))| {
                for ((o, &v), &gv) in dc.iter_mut().zip(xc).zip(gc) {
                    *o = gv * gelu_grad(v);
                }
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Exact (erf) GELU, `nn.GELU()`.
pub fn gelu_erf(xs: &Tensor) -> Result<Tensor> {
    if use_kernel(xs) {
        xs.contiguous()?.apply_op1(GeluErf)
    } else {
        xs.gelu_erf()
    }
}

// ---------------------------------------------------------------- normalisation

/// Normalises rows: LayerNorm (`center`: subtract the mean, divide by sqrt(var + eps)) or
/// RMSNorm (divide by sqrt(mean(x^2) + eps)). No affine part: callers multiply by the weight.
#[derive(Clone, Copy)]
struct Normalize {
    eps: f32,
    center: bool,
}

/// (mean, rstd) of one row.
fn row_stats(xr: &[f32], eps: f32, center: bool) -> (f32, f32) {
    let n = xr.len() as f32;
    let mean = if center {
        xr.iter().sum::<f32>() / n
    } else {
        0.0
    };
    let var = xr.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

impl CustomOp1 for Normalize {
    fn name(&self) -> &'static str {
        if self.center {
            "lion-layer-norm"
        } else {
            "lion-rms-norm"
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let (eps, center) = (self.eps, self.center);
        let y = map_rows(x, last_dim(l), |yr, xr| {
            let (mean, rstd) = row_stats(xr, eps, center);
            yr.iter_mut()
                .zip(xr)
                .for_each(|(o, &v)| *o = (v - mean) * rstd);
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let g = g.contiguous()?;
        Ok(Some(arg.apply_op2_no_bwd(&g, &NormalizeGrad(*self))?))
    }
}

/// dx of [`Normalize`] given x and the output gradient g, per row:
/// LayerNorm: rstd * (g - mean(g) - xhat * mean(g * xhat)); RMSNorm: rstd * (g - xhat * mean(g * xhat)).
struct NormalizeGrad(Normalize);

impl CustomOp2 for NormalizeGrad {
    fn name(&self) -> &'static str {
        "lion-normalize-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, g) = same_shape_f32(s1, l1, s2, l2, self.name())?;
        let dim = last_dim(l1);
        let Normalize { eps, center } = self.0;
        let dx = map_rows2(x, g, dim, |dr, xr, gr| {
            let (mean, rstd) = row_stats(xr, eps, center);
            let n = dim as f32;
            let mut g_mean = 0f32;
            let mut gx_mean = 0f32;
            for (&xv, &gv) in xr.iter().zip(gr) {
                g_mean += gv;
                gx_mean += gv * (xv - mean) * rstd;
            }
            g_mean = if center { g_mean / n } else { 0.0 };
            gx_mean /= n;
            for ((o, &xv), &gv) in dr.iter_mut().zip(xr).zip(gr) {
                let xhat = (xv - mean) * rstd;
                *o = rstd * (gv - g_mean - xhat * gx_mean);
            }
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Normalisation with its affine part fused into the same pass: y = xhat * w (+ b).
struct AffineNormalize(Normalize);

impl AffineNormalize {
    fn run(&self, x: &[f32], w: &[f32], b: Option<&[f32]>) -> Vec<f32> {
        let Normalize { eps, center } = self.0;
        map_rows(x, w.len(), |yr, xr| {
            let (mean, rstd) = row_stats(xr, eps, center);
            match b {
                Some(b) => {
                    for (((o, &v), &wv), &bv) in yr.iter_mut().zip(xr).zip(w).zip(b) {
                        *o = (v - mean) * rstd * wv + bv;
                    }
                }
                None => {
                    for ((o, &v), &wv) in yr.iter_mut().zip(xr).zip(w) {
                        *o = (v - mean) * rstd * wv;
                    }
                }
            }
        })
    }

    /// Gradients of the affine parameters and of x, from x, w and the output gradient g.
    fn grads(&self, x: &Tensor, w: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let g = g.contiguous()?;
        let xhat = x.apply_op1_no_bwd(&self.0)?;
        let gw = sum_rows(&(&g * xhat)?)?;
        let gb = sum_rows(&g)?;
        let gx = x.apply_op2_no_bwd(&g.broadcast_mul(w)?, &NormalizeGrad(self.0))?;
        Ok((gx, gw, gb))
    }
}

impl CustomOp2 for AffineNormalize {
    fn name(&self) -> &'static str {
        "lion-rms-norm-affine"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "lion-rms-norm-affine")?;
        let w = contiguous_f32(s2, l2, "lion-rms-norm-affine")?;
        Ok((CpuStorage::F32(self.run(x, w, None)), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (gx, gw, _) = self.grads(x, w, g)?;
        Ok((Some(gx), Some(gw)))
    }
}

impl CustomOp3 for AffineNormalize {
    fn name(&self) -> &'static str {
        "lion-layer-norm-affine"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "lion-layer-norm-affine")?;
        let w = contiguous_f32(s2, l2, "lion-layer-norm-affine")?;
        let b = contiguous_f32(s3, l3, "lion-layer-norm-affine")?;
        Ok((CpuStorage::F32(self.run(x, w, Some(b))), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (gx, gw, gb) = self.grads(x, w, g)?;
        Ok((Some(gx), Some(gw), Some(gb)))
    }
}

fn check_affine(xs: &Tensor, w: &Tensor) -> Result<()> {
    let d = xs.dim(D::Minus1)?;
    if w.dims() != [d] {
        candle_core::bail!(
            "normalisation weight of shape {:?} for inputs of width {d}",
            w.dims()
        )
    }
    Ok(())
}

/// LayerNorm over the last dimension (biased variance, as PyTorch), with affine weight and bias,
/// in one pass. xs: (..., d), weight/bias: (d,) -> (..., d). Where the kernel does not apply
/// (not f32, not the CPU, plain ops forced): [`layer_norm_composed`].
pub fn layer_norm(xs: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    check_affine(xs, weight)?;
    check_affine(xs, bias)?;
    if !(use_kernel(xs) && weight.dtype() == DType::F32 && bias.dtype() == DType::F32) {
        return layer_norm_composed(xs, weight, bias, eps);
    }
    let op = AffineNormalize(Normalize {
        eps: eps as f32,
        center: true,
    });
    xs.contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)
}

/// The plain composition of [`layer_norm`], in f32 (statistics and affine part), returned in
/// the input's dtype.
pub fn layer_norm_composed(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let dtype = xs.dtype();
    let x = xs.to_dtype(DType::F32)?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    xn.broadcast_mul(&weight.to_dtype(DType::F32)?)?
        .broadcast_add(&bias.to_dtype(DType::F32)?)?
        .to_dtype(dtype)
}

/// T5's RMSNorm (no mean subtraction, no bias), in one pass. xs: (..., d), weight: (d,) -> (..., d).
/// Where the kernel does not apply: [`rms_norm_composed`].
pub fn rms_norm(xs: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    check_affine(xs, weight)?;
    if !(use_kernel(xs) && weight.dtype() == DType::F32) {
        return rms_norm_composed(xs, weight, eps);
    }
    let op = AffineNormalize(Normalize {
        eps: eps as f32,
        center: false,
    });
    xs.contiguous()?.apply_op2(&weight.contiguous()?, op)
}

/// The plain composition of [`rms_norm`]: mean of squares in f32, normalised rows cast to the
/// weight's dtype before the multiply (as HF's T5), returned in the input's dtype.
pub fn rms_norm_composed(xs: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = xs.dtype();
    let x = xs.to_dtype(DType::F32)?;
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = x.broadcast_div(&(ms + eps)?.sqrt()?)?;
    xn.to_dtype(weight.dtype())?
        .broadcast_mul(weight)?
        .to_dtype(dtype)
}

/// Whether the fused kernels apply to this tensor (f32, and [`fused`] for its device);
/// otherwise use the composition.
pub fn applies(xs: &Tensor) -> bool {
    use_kernel(xs)
}

// ---------------------------------------------------------------- row sums and bias

/// Sum over every dimension but the last: (..., d) -> (d), the gradient of a bias or norm weight
/// broadcast over rows. f32 CPU: parallel over blocks of rows, each adding whole contiguous rows
/// into its partial sums (candle's sum over dim 0 walks single-threaded down the columns).
pub fn sum_rows(xs: &Tensor) -> Result<Tensor> {
    let d = xs.dim(D::Minus1)?;
    if use_kernel(xs) {
        xs.contiguous()?.apply_op1_no_bwd(&SumRows)
    } else {
        xs.reshape(((), d))?.sum(0)
    }
}

struct SumRows;

impl CustomOp1 for SumRows {
    fn name(&self) -> &'static str {
        "lion-sum-rows"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let d = last_dim(l);
        let rows = x.len() / d;
        let per_task = rows.div_ceil(2 * rayon::current_num_threads()).max(1);
        let partials: Vec<Vec<f32>> = x
            .par_chunks(per_task * d)
            .map(|c| {
                let mut acc = vec![0f32; d];
                for r in c.chunks_exact(d) {
                    acc.iter_mut().zip(r).for_each(|(a, &v)| *a += v);
                }
                acc
            })
            .collect();
        let mut out = vec![0f32; d];
        for p in partials {
            out.iter_mut().zip(p).for_each(|(o, v)| *o += v);
        }
        Ok((CpuStorage::F32(out), Shape::from(d)))
    }
}

/// `xs + bias` with the bias (d) broadcast over the rows of xs (..., d); its backward gives the
/// bias gradient as [`sum_rows`] (when the bias is tracked), and no zero-filled gradient buffer
/// for a frozen one. f32 CPU, both contiguous; otherwise `broadcast_add`.
pub fn add_bias(xs: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let d = xs.dim(D::Minus1)?;
    if use_kernel(xs) && bias.dtype() == DType::F32 && bias.dims() == [d] {
        xs.contiguous()?.apply_op2(&bias.contiguous()?, BiasAdd)
    } else {
        xs.broadcast_add(bias)
    }
}

struct BiasAdd;

impl CustomOp2 for BiasAdd {
    fn name(&self) -> &'static str {
        "lion-bias-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, self.name())?;
        let b = contiguous_f32(s2, l2, self.name())?;
        let y = map_rows(x, b.len(), |yr, xr| {
            for ((o, &v), &bv) in yr.iter_mut().zip(xr).zip(b) {
                *o = v + bv;
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let gb = if bias.track_op() {
            Some(sum_rows(g)?)
        } else {
            None
        };
        Ok((Some(g.clone()), gb))
    }
}

// ---------------------------------------------------------------- dropout

/// Inverted dropout whose mask is a hash of (seed, element index): generated in parallel inside
/// the kernel, never stored; the backward pass regenerates it from the seed (the gradient is the
/// same op applied to the incoming gradient).
struct Dropout {
    p: f32,
    seed: u64,
}

// SplitMix64 as a hash (lion_rng's): a well-mixed 64-bit hash of `x`.
use lion_rng::splitmix64 as mix64;

impl Dropout {
    /// Elements whose 32-bit hash is below this are dropped.
    fn threshold(&self) -> u64 {
        ((self.p as f64) * 4_294_967_296.0) as u64
    }
}

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "lion-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let scale = 1.0 / (1.0 - self.p);
        let thr = self.threshold();
        let key = mix64(self.seed);
        let mut y = vec![0f32; x.len()];
        const CHUNK: usize = 1 << 14;
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .enumerate()
            .for_each(|(c, (yc, xc))| {
                let base = (c * CHUNK) as u64;
                for (i, (o, &v)) in yc.iter_mut().zip(xc).enumerate() {
                    let h = mix64(key ^ (base + i as u64)) >> 32;
                    *o = if h < thr { 0.0 } else { v * scale };
                }
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(g.contiguous()?.apply_op1(Dropout {
            p: self.p,
            seed: self.seed,
        })?))
    }
}

static DROPOUT_START: std::sync::Mutex<Option<u64>> = std::sync::Mutex::new(None);
static DROPOUT_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Makes the fused dropout masks reproducible: from here on, the n-th dropout call of the
/// process draws its mask from (`seed`, n). Without it the start is random per process.
pub fn seed_dropout(seed: u64) {
    *DROPOUT_START.lock().unwrap_or_else(|e| e.into_inner()) = Some(mix64(seed ^ 0x5EED));
    DROPOUT_COUNTER.store(0, std::sync::atomic::Ordering::SeqCst);
}

/// A fresh seed per call: a start (random per process unless [`seed_dropout`]) plus a counter.
fn next_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::Ordering;
    let start = *DROPOUT_START
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(|| {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(0x5EED);
            h.finish()
        });
    mix64(
        start
            ^ DROPOUT_COUNTER
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_mul(0xA24B_AED4_963E_E407),
    )
}

/// Inverted dropout with drop probability `p` in [0, 1): f32 CPU tensors use the fused kernel
/// (mask hashed from a per-call seed, regenerated in the backward pass); others
/// `candle_nn::ops::dropout`.
pub fn dropout(xs: &Tensor, p: f32) -> Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        candle_core::bail!("dropout probability has to be in [0, 1), got {p}")
    }
    if use_kernel(xs) {
        xs.contiguous()?.apply_op1(Dropout {
            p,
            seed: next_seed(),
        })
    } else {
        candle_nn::ops::dropout(xs, p)
    }
}

// ---------------------------------------------------------------- attention

/// `softmax(scale * q k^T + biases) v` with dropout `p` on the probabilities (T5: scale 1;
/// BERT: 1/sqrt(d), applied to the scores as HF does): q (b, h, q, d), k and v (b, h, k, d), each
/// bias additive and broadcastable to (b, h, q, k) -> (b, h, q, d).
///
/// When q, k or v takes part in autograd (training), the f32 CPU case runs as one candle op
/// whose backward is written out (dV = P'^T dO, dP' = dO V^T, dP = dropout(dP'), dS = softmax
/// grad, dQ = dS K, dK = dS^T Q): one graph node instead of seven (matmul, transpose, bias and
/// mask adds, softmax, dropout, matmul), each of which candle's backward would give a zeroed
/// gradient buffer and an extra pass over the (b, h, q, k) scores, the constant biases
/// included. The forward keeps only the probabilities for the backward. Biases that need a
/// gradient themselves, other dtypes and devices, and inference (nothing tracked) run the plain
/// composition, which is also the reference of the tests.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    biases: &[&Tensor],
    p: f32,
) -> Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        candle_core::bail!("attention dropout probability has to be in [0, 1), got {p}")
    }
    let tracked = q.track_op() || k.track_op() || v.track_op();
    let fused =
        tracked && [q, k, v].iter().all(|t| use_kernel(t)) && biases.iter().all(|b| !b.track_op());
    if !fused {
        return attention_composed(q, k, v, scale, biases, p);
    }
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let op = Attention {
        q: q.detach(),
        k: k.detach(),
        v: v.detach(),
        scale,
        biases: biases.iter().map(|b| b.detach()).collect(),
        p,
        seed: if p > 0.0 { next_seed() } else { 0 },
        saved: std::sync::Mutex::new(None),
    };
    q.apply_op3(&k, &v, op)
}

/// The composition [`attention`] fuses (and runs when it does not): the softmax in f32 for other
/// dtypes.
pub fn attention_composed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    biases: &[&Tensor],
    p: f32,
) -> Result<Tensor> {
    let mut scores = q.matmul(&k.t()?)?;
    if scale != 1.0 {
        scores = (scores * scale)?;
    }
    for b in biases {
        scores = scores.broadcast_add(b)?;
    }
    // in f32 for reduced-precision inputs, as HF's T5 does
    let probs = softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(scores.dtype())?;
    let probs = if p > 0.0 { dropout(&probs, p)? } else { probs };
    probs.matmul(v)
}

struct Attention {
    /// Detached views of the inputs (the same storage): the forward multiplies them with
    /// candle's GEMM.
    q: Tensor,
    k: Tensor,
    v: Tensor,
    scale: f64,
    biases: Vec<Tensor>,
    p: f32,
    seed: u64,
    /// The softmax probabilities of the forward (before dropout), taken by the backward.
    saved: std::sync::Mutex<Option<Tensor>>,
}

impl Attention {
    fn dropout_mask(&self, xs: &Tensor) -> Result<Tensor> {
        if self.p > 0.0 {
            xs.apply_op1_no_bwd(&Dropout {
                p: self.p,
                seed: self.seed,
            })
        } else {
            Ok(xs.clone())
        }
    }

    fn probs(&self) -> Result<Tensor> {
        let mut scores = self.q.matmul(&self.k.t()?)?;
        if self.scale != 1.0 {
            scores = (scores * self.scale)?;
        }
        for b in &self.biases {
            scores = scores.broadcast_add(b)?;
        }
        scores.apply_op1_no_bwd(&Softmax)
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "lion-attention"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let probs = self.probs()?;
        let out = self.dropout_mask(&probs)?.matmul(&self.v)?;
        *self.saved.lock().unwrap_or_else(|e| e.into_inner()) = Some(probs);
        let shape = out.shape().clone();
        Ok((CpuStorage::F32(out.flatten_all()?.to_vec1()?), shape))
    }

    fn bwd(
        &self,
        _q: &Tensor,
        _k: &Tensor,
        _v: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let saved = self.saved.lock().unwrap_or_else(|e| e.into_inner()).take();
        let probs = match saved {
            Some(p) => p,
            None => self.probs()?, // a second backward: recompute
        };
        let g = g.detach().contiguous()?;
        let dv = self.dropout_mask(&probs)?.t()?.matmul(&g)?;
        let dprobs = self.dropout_mask(&g.matmul(&self.v.t()?)?)?;
        let dscores = probs.apply_op2_no_bwd(&dprobs, &SoftmaxGrad)?;
        let mut dq = dscores.matmul(&self.k)?;
        let mut dk = dscores.t()?.matmul(&self.q)?;
        if self.scale != 1.0 {
            // d(scale * q k^T): the scale on the (smaller) q and k gradients
            dq = (dq * self.scale)?;
            dk = (dk * self.scale)?;
        }
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}
