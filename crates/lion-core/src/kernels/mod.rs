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

mod attention;
mod batch_norm;
mod dropout;
mod gelu;
mod heads;
mod im2col;
mod norm;
mod rows;
mod softmax;

pub use attention::*;
pub use batch_norm::*;
pub use dropout::*;
pub use gelu::*;
pub use heads::*;
pub use im2col::*;
pub use norm::*;
pub use rows::*;
pub use softmax::*;

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

/// The body of a row kernel: writes every element of the output row `y` from the same row of
/// `x` (and of `g`, for kernels of two inputs; one-input kernels get `x` again). Implementations
/// mark `row` `#[inline(always)]`, so that [`map_rows`] compiles it once per vector unit.
pub(super) trait Row: Sync {
    fn row(&self, y: &mut [f32], x: &[f32], g: &[f32]);
}

/// A new buffer whose rows (width `dim`) are written by `k`, in parallel blocks of rows, on the
/// widest vector unit ([`rows_widest`]). Element-wise kernels pass blocks as rows (the last one
/// may be shorter).
fn map_rows<K: Row>(x: &[f32], dim: usize, k: &K) -> Vec<f32> {
    map_rows2(x, x, dim, k)
}

/// [`map_rows`] over two inputs of the same length: `k.row(out_row, x_row, g_row)`.
fn map_rows2<K: Row>(x: &[f32], g: &[f32], dim: usize, k: &K) -> Vec<f32> {
    assert_eq!(x.len(), g.len(), "map_rows2: input lengths");
    let chunk = dim * rows_per_task(dim);
    // SAFETY: every row of the output is passed to `k`, which writes all of it.
    let mut y = unsafe { uninit_f32(x.len()) };
    y.par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk).zip(g.par_chunks(chunk)))
        .for_each(|(yc, (xc, gc))| rows_widest(k, yc, xc, gc, dim));
    y
}

/// Elements in one block of an element-wise kernel ([`map_rows`] with blocks as rows).
const BLOCK: usize = 16 * 1024;

/// `k` over every row of a block, compiled for the widest vector unit this CPU has (AVX-512
/// F/BW/VL/DQ, else AVX2 + FMA, else the build's baseline; capped by `LION_CPU` as the other
/// kernels are). The binary is built for plain x86-64, where the kernels' branch-free loops
/// vectorise to 4-lane SSE only; inlined into [`rows_avx512`] they run 16 lanes wide (the
/// erf-GELU took 7% of a bf16 EVA ViT forward in SSE). The bits do not change with the width:
/// Rust neither contracts `a * b + c` into an FMA nor reorders float operations, and the
/// reductions keep their fixed lane order.
fn rows_widest<K: Row>(k: &K, y: &mut [f32], x: &[f32], g: &[f32], dim: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::cpu::F32Kernel;
        match crate::cpu::kernels().f32_skinny {
            // SAFETY: the kernel choice is made from the detected features: Avx512 only where
            // AVX-512 F/BW/VL are present (DQ checked here), Avx2Fma only with AVX2 and FMA.
            F32Kernel::Avx512 if crate::cpu::features().avx512dq => {
                return unsafe { rows_avx512(k, y, x, g, dim) }
            }
            F32Kernel::Avx512 | F32Kernel::Avx2Fma => return unsafe { rows_avx2(k, y, x, g, dim) },
            F32Kernel::Portable => {}
        }
    }
    rows_loop(k, y, x, g, dim)
}

#[inline(always)]
fn rows_loop<K: Row>(k: &K, y: &mut [f32], x: &[f32], g: &[f32], dim: usize) {
    for ((yr, xr), gr) in y.chunks_mut(dim).zip(x.chunks(dim)).zip(g.chunks(dim)) {
        k.row(yr, xr, gr)
    }
}

/// [`rows_loop`] on AVX-512.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VL/DQ, AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
unsafe fn rows_avx512<K: Row>(k: &K, y: &mut [f32], x: &[f32], g: &[f32], dim: usize) {
    rows_loop(k, y, x, g, dim)
}

/// [`rows_loop`] on AVX2.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_avx2<K: Row>(k: &K, y: &mut [f32], x: &[f32], g: &[f32], dim: usize) {
    rows_loop(k, y, x, g, dim)
}

/// A buffer of `len` f32 whose every element the caller writes before anything reads it: no
/// zero-fill pass (the allocator reuses freed tensor buffers, so `vec![0; n]` was a memset of
/// every output; 6% of a bf16 ViT forward).
///
/// # Safety
/// Every element is written before it is read.
#[allow(clippy::uninit_vec)]
pub(crate) unsafe fn uninit_f32(len: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: capacity is `len`; f32 has no invalid bit patterns and the caller writes every
    // element before reading it.
    unsafe { v.set_len(len) };
    v
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
#[inline(always)]
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
