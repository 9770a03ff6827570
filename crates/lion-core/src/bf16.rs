//! `x (m, k) f32 @ W^T` with `W (n, k)` stored in bf16: the linear layers of a `--dtype bf16` model.
//!
//! The weight stays in its checkpoint layout (converted to bf16 once, at load); `x` is rounded to
//! bf16 (nearest-even) once per call, padded to a multiple of 32 columns. Where the CPU has
//! AVX512-BF16 ([`crate::cpu`]), `vdpbf16ps` multiplies 32 bf16 pairs per instruction into 16 f32
//! accumulators: each tile holds 6 rows of `x` against 4 weight rows (24 accumulators, 4 weight
//! and 1 input register of the 32), reads each weight row once per 6 input rows, and sums the 4
//! columns' lanes together at the end. With more than 6 rows of `x` and weight rows that share
//! L1 sets where they lie (4 KiB apart and the like: k = 2048, 6144), each 512-column slice of
//! 16 weight rows is first copied side by side ([`rows_share_sets`]). From [`PACKED_MIN_ROWS`]
//! rows on (the encoders' prefill) the kernel works in the outer-product layout instead: each
//! group of 32 weight rows is transposed once per call into a panel of column pairs, so a
//! vector holds 16 outputs of one row of x, x's pair of columns is broadcast, and each output is
//! one chain over k kept in registers (14 rows x 32 columns a tile; no lane sums). Parallel over
//! blocks of weight rows (rayon), so a few decoding rows stream the weight once at half the f32
//! bytes. Without AVX512-BF16 the f32 kernels run
//! with the weight widened as it is loaded ([`matmul_wt_widened`]). From [`WIDEN_MIN_ROWS`] rows on, where
//! [`crate::cpu::Bf16Gemm::WidenF32`] is picked (Intel: `vdpbf16ps` there is slower than the f32
//! AVX-512 GEMM, see its docs), the f32 GEMM runs with the weight widened while it is packed
//! ([`crate::sgemm::matmul_wt_bf16`]) and `x` is not rounded. Accumulation is f32 throughout;
//! products of bf16 values are exact in f32, so the paths differ by summation order (and the
//! rounding of `x`) only (tested on edge shapes against [`reference`], `tests/linear.rs`).

use candle_core::Tensor;
use half::bf16;
use rayon::prelude::*;

/// Weight rows per rayon task: enough to amortise scheduling, few enough that 2 cores share the
/// 768-row weights evenly.
const ROWS_PER_TASK: usize = 32;

/// Rows of `x` per tile (and of the accumulator grid).
const TILE_M: usize = 6;

/// Weight rows per tile.
const TILE_N: usize = 4;

/// Columns per pass over a block (a multiple of 32): 6 input rows of it and 4 weight rows (or
/// the [`PACK_ROWS`] rows copied side by side: 22 KiB in all) stay in L1; partial sums add into
/// the output.
const TILE_K: usize = 512;

/// Weight rows copied next to each other per `TILE_K` slice when many rows of `x` run (16 KiB:
/// in L1 beside a tile's 6 rows of x).
const PACK_ROWS: usize = 16;

/// Rows of `x` from which the AVX512-BF16 path multiplies in the outer-product layout
/// ([`avx512::packed_block`]): each group of 32 weight rows is transposed into a panel of
/// column pairs once per call (a cost of about 6 / m of the products), after which no lane sums
/// are left to reduce. Below it the dot-product tiles run (measured even at 32-48 rows).
pub const PACKED_MIN_ROWS: usize = 48;

/// Weight rows (output columns) per panel of the outer-product layout: two vectors of 16.
const PANEL_N: usize = 32;

/// Rows of x per outer-product tile: 28 accumulators and the panel's 2 vectors of 32 registers.
const PACKED_M: usize = 14;

/// Weight rows per rayon task in the outer-product layout (two panels).
const PACKED_TASK: usize = 64;

/// Rows of `x` from which [`crate::cpu::Bf16Gemm::WidenF32`] runs the f32 GEMM instead of
/// `vdpbf16ps`: measured on Intel (Emerald Rapids, 2 cores), the two were even at 32 rows
/// (768-3072 wide) and the dot-product kernel 1.6-2.2x faster at 5 (it streams half the bytes).
pub const WIDEN_MIN_ROWS: usize = 32;

/// Whether [`matmul_wt`] rounds `x` to bf16 for `m` rows on this CPU (the `vdpbf16ps` kernel
/// does; the widening paths keep `x` in f32).
pub fn rounds_x(m: usize) -> bool {
    let k = crate::cpu::kernels();
    k.bf16 == crate::cpu::Bf16Kernel::Avx512Bf16 && !widens(m)
}

/// Whether `m` rows take [`crate::sgemm::matmul_wt_bf16`] on a CPU with AVX512-BF16.
pub(crate) fn widens(m: usize) -> bool {
    m >= WIDEN_MIN_ROWS && crate::cpu::kernels().bf16_gemm == crate::cpu::Bf16Gemm::WidenF32
}

/// Whether a bf16 value is subnormal (exponent bits 0, mantissa not).
fn subnormal(v: bf16) -> bool {
    let b = v.to_bits();
    b & 0x7f80 == 0 && b & 0x007f != 0
}

/// A frozen bf16 weight with its subnormal values made 0 (sign kept): done once at load
/// ([`crate::linear::load_weight`]), so the GEMM's packing widens bf16 weights without checking
/// each value (an FMA on a subnormal takes a microcode assist on x86; the check was ~a third of
/// the packing, and the packing 27% of a bf16 Q-Former forward). `vdpbf16ps` treats subnormal
/// inputs as 0 anyway; the change is below 1.2e-38 per weight. Returns the tensor as it is when
/// it holds none (the usual case: one scan, no copy) or is not a contiguous CPU bf16 tensor.
pub fn flush_subnormals(w: Tensor) -> candle_core::Result<Tensor> {
    let flushed = {
        let (storage, layout) = w.storage_and_layout();
        let candle_core::Storage::Cpu(candle_core::CpuStorage::BF16(v)) = &*storage else {
            return Ok(w.clone());
        };
        let Some((a, b)) = layout.contiguous_offsets() else {
            return Ok(w.clone());
        };
        let v = &v[a..b];
        if !v
            .par_chunks(1 << 16)
            .any(|c| c.iter().any(|&x| subnormal(x)))
        {
            return Ok(w.clone());
        }
        v.iter()
            .map(|&x| {
                if subnormal(x) {
                    bf16::from_bits(x.to_bits() & 0x8000)
                } else {
                    x
                }
            })
            .collect::<Vec<_>>()
    };
    Tensor::from_vec(flushed, w.shape(), w.device())
}

/// bf16 (round to nearest even, as `vcvtne2ps2bf16`).
pub fn to_bf16(x: &[f32]) -> Vec<bf16> {
    x.iter().map(|&v| bf16::from_f32(v)).collect()
}

/// `x` (m, k) row-major f32, `w` (n, k) row-major bf16 -> `x @ w^T` (m, n) f32.
///
/// Panics unless `x.len() == m * k` and `w.len() == n * k` (callers check shapes first).
pub fn matmul_wt(x: &[f32], m: usize, k: usize, w: &[bf16], n: usize) -> Vec<f32> {
    assert!(
        x.len() == m * k && w.len() == n * k,
        "bf16::matmul_wt: x {} for ({m}, {k}), w {} for ({n}, {k})",
        x.len(),
        w.len()
    );
    if m == 0 || n == 0 {
        return vec![];
    }
    if k == 0 {
        return vec![0.0; m * n];
    }
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::kernels().bf16 == crate::cpu::Bf16Kernel::Avx512Bf16 && !widens(m) {
        return native(x, m, k, w, n);
    }
    // widened in registers (few rows) or while packed (the GEMM): no f32 copy of the weight
    matmul_wt_widened(x, m, k, w, n)
}

/// `x @ w^T` in f32 for a weight that is stored in bf16 but stands for f32 values (an f32 model
/// whose checkpoint holds bf16, [`crate::linear::get_weight`]): `x` is never rounded and the
/// result is bit for bit [`crate::sgemm::matmul_wt`] of the widened weight, on every CPU (the
/// same kernel and summation order for every row count: [`crate::skinny::matmul_wt_bf16`] up to
/// its rows, the f32 GEMM widening while it packs above), with no f32 copy of the weight.
///
/// Panics unless `x.len() == m * k` and `w.len() == n * k` (callers check shapes first).
pub fn matmul_wt_widened(x: &[f32], m: usize, k: usize, w: &[bf16], n: usize) -> Vec<f32> {
    assert!(
        x.len() == m * k && w.len() == n * k,
        "bf16::matmul_wt_widened: x {} for ({m}, {k}), w {} for ({n}, {k})",
        x.len(),
        w.len()
    );
    if m == 0 || n == 0 {
        return vec![];
    }
    if (1..=crate::skinny::MAX_ROWS).contains(&m) {
        return crate::skinny::matmul_wt_bf16(x, m, k, w, n);
    }
    if k > 0 && crate::sgemm::available() {
        return crate::sgemm::matmul_wt_bf16(x, m, k, w, n);
    }
    portable(x, m, k, w, n)
}

/// The widening path: the weight to f32, then the f32 matmul ([`crate::sgemm::matmul_wt`]).
pub fn portable(x: &[f32], m: usize, k: usize, w: &[bf16], n: usize) -> Vec<f32> {
    let wf: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
    crate::sgemm::matmul_wt(x, m, k, &wf, n)
}

/// [`portable`] with `x` rounded to bf16 first, as the native kernel rounds it (tests compare
/// both against [`reference`]).
pub fn portable_rounded(x: &[f32], m: usize, k: usize, w: &[bf16], n: usize) -> Vec<f32> {
    let xr: Vec<f32> = x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
    portable(&xr, m, k, w, n)
}

/// The exact answer, in f64, for `x` rounded to bf16 first when `round_x` (as the native kernel
/// rounds it) or as given (the widening path) (tests).
pub fn reference(x: &[f32], m: usize, k: usize, w: &[bf16], n: usize, round_x: bool) -> Vec<f64> {
    let xv = |v: f32| {
        if round_x {
            bf16::from_f32(v).to_f64()
        } else {
            v as f64
        }
    };
    let mut y = vec![0f64; m * n];
    for r in 0..m {
        for j in 0..n {
            y[r * n + j] = (0..k)
                .map(|t| xv(x[r * k + t]) * w[j * k + t].to_f64())
                .sum();
        }
    }
    y
}

#[cfg(target_arch = "x86_64")]
fn native(x: &[f32], m: usize, k: usize, w: &[bf16], n: usize) -> Vec<f32> {
    native_rows(x, m, k, n, Rows::Slice(w), rows_share_sets(k))
}

/// Whether 32 weight rows `k` bf16 values apart start in fewer than 8 distinct L1 sets (64-byte
/// lines, 64 sets: a 4 KiB period), so that their 512-column slices evict each other in L1
/// (k = 2048: 1 set; 3072 or 5120: 2; 768: 8; 1408: 16). The AVX512-BF16 kernel copies such rows
/// side by side before many rows of `x` run over them. Rows shorter than a slice never do.
pub(crate) fn rows_share_sets(k: usize) -> bool {
    let sets = (0..ROWS_PER_TASK).fold(0u64, |m, r| m | 1 << ((r * 2 * k / 64) % 64));
    // shorter rows than a slice lie in a few lines together
    k >= TILE_K && sets.count_ones() < 8
}

/// Where a task's weight rows come from: a bf16 weight, or a function that writes rows
/// `j0..j0 + rows` into a buffer (`rows * k` values; quantized weights dequantize there).
pub(crate) enum Rows<'a> {
    Slice(&'a [bf16]),
    Fill(&'a (dyn Fn(usize, usize, &mut [bf16]) + Sync)),
}

/// [`matmul_wt`] on the AVX512-BF16 path with the weight rows made per task by `fill` (see
/// [`Rows::Fill`]): a block of 32 weight rows at a time, so no dense copy of the weight exists.
/// Panics unless the CPU has AVX512-BF16 ([`crate::cpu::kernels`]) and `x.len() == m * k`.
#[cfg(target_arch = "x86_64")]
pub(crate) fn matmul_wt_filled(
    x: &[f32],
    m: usize,
    k: usize,
    n: usize,
    fill: &(dyn Fn(usize, usize, &mut [bf16]) + Sync),
) -> Vec<f32> {
    assert!(
        crate::cpu::kernels().bf16 == crate::cpu::Bf16Kernel::Avx512Bf16 && x.len() == m * k,
        "bf16::matmul_wt_filled: needs AVX512-BF16 and x for ({m}, {k})"
    );
    if m == 0 || n == 0 {
        return vec![];
    }
    native_rows(x, m, k, n, Rows::Fill(fill), rows_share_sets(k))
}

#[cfg(target_arch = "x86_64")]
/// `copy`: whether the weight rows are copied side by side before many rows of x run over them
/// ([`rows_share_sets`]; the same bits either way).
fn native_rows(x: &[f32], m: usize, k: usize, n: usize, src: Rows, copy: bool) -> Vec<f32> {
    let kp = k.div_ceil(32) * 32;
    // x in bf16, rows padded with zeros to kp (the weight's tail is read masked), and rows an
    // odd number of cache lines apart: at a stride of a multiple of 4 KiB (k = 2048) a tile's
    // 6 rows of x fall in one L1 set with its weight rows and evict each other
    let ldx = if (kp / 32) % 2 == 0 { kp + 32 } else { kp };
    let mut xb_buf = CacheLines::zeroed(m * ldx);
    let xb = xb_buf.as_mut_slice();
    // rows in parallel where there are enough of them (the encoders: 349 x 5120 values a call)
    let round = |(d, s): (&mut [bf16], &[f32])| {
        // SAFETY: the native path runs only where the CPU has AVX512-BF16 (see below)
        unsafe { avx512::round_row(s, &mut d[..k]) }
    };
    if m * k >= 1 << 16 {
        xb.par_chunks_exact_mut(ldx)
            .zip(x.par_chunks_exact(k))
            .for_each(round);
    } else {
        xb.chunks_exact_mut(ldx)
            .zip(x.chunks_exact(k))
            .for_each(round);
    }
    let xb = &*xb;
    // SAFETY: every element is written: each task's first slice (or its one pass) writes the
    // columns j0..j0 + rows of every row, and the tasks cover 0..n
    let mut y = unsafe { crate::kernels::uninit_f32(m * n) };
    let out = OutPtr(y.as_mut_ptr());
    let packed = m >= PACKED_MIN_ROWS;
    let per_task = if packed { PACKED_TASK } else { ROWS_PER_TASK };
    (0..n.div_ceil(per_task)).into_par_iter().for_each(|b| {
        let j0 = b * per_task;
        let rows = per_task.min(n - j0);
        let filled;
        let w = match &src {
            Rows::Slice(w) => &w[j0 * k..(j0 + rows) * k],
            Rows::Fill(f) => {
                let mut buf = vec![bf16::ZERO; rows * k];
                f(j0, rows, &mut buf);
                filled = buf;
                &filled[..]
            }
        };
        // SAFETY: `native` runs only when `cpu::kernels()` picked AVX512-BF16, i.e. the CPU has
        // AVX-512 F/BW/VL and BF16. Lengths: xb is m * ldx, the block is rows * k. Each task
        // writes only the columns j0..j0 + rows of the m rows of `y` (row stride n), disjoint
        // from every other task's, and `y` outlives the parallel loop.
        unsafe {
            if packed {
                avx512::packed_block(xb, m, kp, ldx, w, k, out.at(j0), rows, n)
            } else {
                avx512::block(xb, m, kp, ldx, w, k, out.at(j0), rows, n, copy)
            }
        };
    });
    y
}

/// A zeroed bf16 buffer whose first value starts a cache line (64 bytes), so rows a multiple
/// of 32 values long each start one too: no load of a row straddles two lines.
#[cfg(target_arch = "x86_64")]
struct CacheLines {
    buf: Vec<bf16>,
    start: usize,
    len: usize,
}

#[cfg(target_arch = "x86_64")]
impl CacheLines {
    fn zeroed(len: usize) -> Self {
        let buf = vec![bf16::ZERO; len + 31];
        let start = buf.as_ptr().align_offset(64);
        Self { buf, start, len }
    }

    fn as_mut_slice(&mut self) -> &mut [bf16] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

/// The output pointer shared by the tasks (each writes its own columns).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);

// SAFETY: the tasks write disjoint elements through it (see `native`).
#[cfg(target_arch = "x86_64")]
unsafe impl Send for OutPtr {}
#[cfg(target_arch = "x86_64")]
unsafe impl Sync for OutPtr {}

#[cfg(target_arch = "x86_64")]
impl OutPtr {
    fn at(self, j: usize) -> *mut f32 {
        self.0.wrapping_add(j)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{PACKED_M, PACK_ROWS, PANEL_N, TILE_K, TILE_M, TILE_N};
    use half::bf16;
    use std::arch::x86_64::*;

    /// `out[r * ld + c] = (x (m, kp) @ w (rows, k)^T)[r, c]` for every row of `x` (row stride
    /// `ldx`) against the block's weight rows; `out` may hold anything (the first slice writes
    /// every element, later ones add). `copy`: see `native_rows`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(super) unsafe fn block(
        xb: &[bf16],
        m: usize,
        kp: usize,
        ldx: usize,
        w: &[bf16],
        k: usize,
        out: *mut f32,
        rows: usize,
        ld: usize,
        copy: bool,
    ) {
        debug_assert!(xb.len() == m * ldx && ldx >= kp && w.len() == rows * k);
        let tail = k % 32;
        let mask: __mmask32 = if tail == 0 { !0 } else { (1u32 << tail) - 1 };
        let in_place = Slab {
            w: w.as_ptr(),
            ld: k,
            k0: 0,
            full: k / 32 * 32,
            mask,
        };
        if m <= TILE_M {
            // One tile of input rows (decoding) reads each weight row once anyway: the rows are
            // streamed whole from where they lie, four contiguous streams, rather than in slices.
            pass(xb, m, ldx, in_place, out, rows, ld, (0, kp), true);
            return;
        }
        if !copy {
            for k0 in (0..kp).step_by(TILE_K) {
                let ks = (k0, (k0 + TILE_K).min(kp));
                pass(xb, m, ldx, in_place, out, rows, ld, ks, false);
            }
            return;
        }
        // Many input rows, and weight rows that would evict each other in L1 where they lie
        // (k = 2048 or 6144, a multiple of 4 KiB: all of them in the same sets; ViT-g's fc2,
        // k = 6144, ran at 170 GFLOP/s against 314 at k = 1408 on Zen 4): each `TILE_K` slice
        // of `PACK_ROWS` weight rows is copied side by side first (zero-padded to a multiple of
        // 32 columns), then every tile of x rows runs over that copy. The copy changes where the
        // values are read, not the order they are summed in: the same bits.
        let mut lines = super::CacheLines::zeroed(PACK_ROWS.min(rows) * TILE_K);
        let buf = lines.as_mut_slice();
        for k0 in (0..kp).step_by(TILE_K) {
            let k1 = (k0 + TILE_K).min(kp);
            let len = k1 - k0;
            let have = k1.min(k) - k0;
            for g0 in (0..rows).step_by(PACK_ROWS) {
                let gr = PACK_ROWS.min(rows - g0);
                for (r, d) in buf.chunks_exact_mut(len).take(gr).enumerate() {
                    let s = (g0 + r) * k + k0;
                    d[..have].copy_from_slice(&w[s..s + have]);
                    d[have..].fill(bf16::ZERO);
                }
                let ws = Slab {
                    w: buf.as_ptr(),
                    ld: len,
                    k0,
                    full: k1,
                    mask: !0,
                };
                pass(xb, m, ldx, ws, out.add(g0), gr, ld, (k0, k1), false);
            }
        }
    }

    /// Where a pass reads its weight rows: column `t` of row `c` at `w + c * ld + (t - k0)`;
    /// columns from `full` on are loaded under `mask` (the checkpoint's rows end there).
    #[derive(Clone, Copy)]
    pub(super) struct Slab {
        w: *const bf16,
        ld: usize,
        k0: usize,
        full: usize,
        mask: __mmask32,
    }

    /// The columns `ks` of the weight rows in `ws` against every row of x: adds their products
    /// into `out`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn pass(
        xb: &[bf16],
        m: usize,
        ldx: usize,
        ws: Slab,
        out: *mut f32,
        rows: usize,
        ld: usize,
        ks: (usize, usize),
        stream: bool,
    ) {
        let mut r0 = 0;
        while r0 < m {
            let mr = TILE_M.min(m - r0);
            let mut j = 0;
            while j < rows {
                let nr = TILE_N.min(rows - j);
                let xs = xb.as_ptr().add(r0 * ldx);
                let w = Slab {
                    w: ws.w.add(j * ws.ld),
                    ..ws
                };
                let o = out.add(r0 * ld + j);
                match (mr, nr) {
                    (6, 4) => tile::<6, 4>(xs, ldx, w, o, ld, ks, stream),
                    (5, 4) => tile::<5, 4>(xs, ldx, w, o, ld, ks, stream),
                    (4, 4) => tile::<4, 4>(xs, ldx, w, o, ld, ks, stream),
                    (3, 4) => tile::<3, 4>(xs, ldx, w, o, ld, ks, stream),
                    (2, 4) => tile::<2, 4>(xs, ldx, w, o, ld, ks, stream),
                    (1, 4) => tile::<1, 4>(xs, ldx, w, o, ld, ks, stream),
                    (6, _) => tile::<6, 1>(xs, ldx, w, o, ld, ks, stream),
                    (5, _) => tile::<5, 1>(xs, ldx, w, o, ld, ks, stream),
                    (4, _) => tile::<4, 1>(xs, ldx, w, o, ld, ks, stream),
                    (3, _) => tile::<3, 1>(xs, ldx, w, o, ld, ks, stream),
                    (2, _) => tile::<2, 1>(xs, ldx, w, o, ld, ks, stream),
                    _ => tile::<1, 1>(xs, ldx, w, o, ld, ks, stream),
                }
                j += if nr == 4 { 4 } else { 1 };
            }
            r0 += mr;
        }
    }

    /// `M` rows of x against `N` weight rows over the columns `ks`; adds into out[r * ld + c].
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    #[inline]
    unsafe fn tile<const M: usize, const N: usize>(
        x: *const bf16,
        ldx: usize,
        ws: Slab,
        out: *mut f32,
        ld: usize,
        ks: (usize, usize),
        stream: bool,
    ) {
        let mut acc = [[_mm512_setzero_ps(); N]; M];
        let Slab {
            w,
            ld: k,
            k0,
            full,
            mask,
        } = ws;
        let mut t = ks.0;
        while t < ks.1 {
            let mut wv = [_mm512_setzero_si512(); N];
            for (c, v) in wv.iter_mut().enumerate() {
                let p = w.add(c * k + t - k0);
                *v = if t < full {
                    if stream {
                        // decoding: the rows two tiles on into L2 (a T5-XL decoder step's
                        // weights streamed at 29-36 GB/s on Zen 4, against 22 with the next
                        // tile's rows into L1: those evicted the rows being read)
                        _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(8 * k) as *const i8);
                    } else {
                        // the next tile's rows (the packed rows stay in cache across the
                        // tiles of x rows)
                        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(4 * k) as *const i8);
                    }
                    _mm512_loadu_si512(p as *const __m512i)
                } else {
                    _mm512_maskz_loadu_epi16(mask, p as *const i16)
                };
            }
            for (r, a) in acc.iter_mut().enumerate() {
                let xv = _mm512_loadu_si512(x.add(r * ldx + t) as *const __m512i);
                let xv: __m512bh = std::mem::transmute(xv);
                for c in 0..N {
                    a[c] =
                        _mm512_dpbf16_ps(a[c], xv, std::mem::transmute::<__m512i, __m512bh>(wv[c]));
                }
            }
            t += 32;
        }
        // the first slice writes, later ones add: a fresh zeroed output is never read before it
        // is written (see `sgemm`'s tile: no copy-on-write faults of the zero page)
        let first = ks.0 == 0;
        for (r, a) in acc.iter().enumerate() {
            let o = out.add(r * ld);
            if N == 4 {
                let s = sum4(a[0], a[1], a[2], a[3]);
                _mm_storeu_ps(
                    o,
                    if first {
                        s
                    } else {
                        _mm_add_ps(_mm_loadu_ps(o), s)
                    },
                );
            } else {
                for (c, v) in a.iter().enumerate() {
                    let s = _mm512_reduce_add_ps(*v);
                    *o.add(c) = if first { s } else { *o.add(c) + s };
                }
            }
        }
    }

    /// `out[r * ld + c] = (x (m, kp) @ w (rows, k)^T)[r, c]` in the outer-product layout: each
    /// group of `PANEL_N` weight rows is transposed into a panel of column pairs ([`pack_panel`],
    /// `kp * 64` bytes, read from L2), so one vector holds 16 outputs of a row of x and
    /// `vdpbf16ps` takes x's pair of columns broadcast. Each tile's sums stay in registers over
    /// the whole of k: one chain per output, in order, no lane sums, one store.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(super) unsafe fn packed_block(
        xb: &[bf16],
        m: usize,
        kp: usize,
        ldx: usize,
        w: &[bf16],
        k: usize,
        out: *mut f32,
        rows: usize,
        ld: usize,
    ) {
        debug_assert!(xb.len() == m * ldx && ldx >= kp && w.len() == rows * k);
        let pairs = kp / 2;
        let mut lines = super::CacheLines::zeroed(kp * PANEL_N);
        let panel = lines.as_mut_slice();
        for g0 in (0..rows).step_by(PANEL_N) {
            let cols = PANEL_N.min(rows - g0);
            pack_panel(&w[g0 * k..(g0 + cols) * k], k, cols, 0, pairs, panel);
            let p = panel.as_ptr();
            // tiles of as even a size as PACKED_M allows (257 rows: 14 and 13, not 18 x 14 + 5)
            let mut tiles = m.div_ceil(PACKED_M);
            let mut r0 = 0;
            while r0 < m {
                let mr = (m - r0).div_ceil(tiles);
                tiles -= 1;
                let xs = xb.as_ptr().add(r0 * ldx);
                let a = (xs, ldx, p, pairs, out.add(r0 * ld + g0), ld, cols);
                match mr {
                    14 => packed_tile::<14>(a),
                    13 => packed_tile::<13>(a),
                    12 => packed_tile::<12>(a),
                    11 => packed_tile::<11>(a),
                    10 => packed_tile::<10>(a),
                    9 => packed_tile::<9>(a),
                    8 => packed_tile::<8>(a),
                    7 => packed_tile::<7>(a),
                    6 => packed_tile::<6>(a),
                    5 => packed_tile::<5>(a),
                    4 => packed_tile::<4>(a),
                    3 => packed_tile::<3>(a),
                    2 => packed_tile::<2>(a),
                    _ => packed_tile::<1>(a),
                }
                r0 += mr;
            }
        }
    }

    /// A tile's operands: x at its first row (row stride), the panel and its number of pairs,
    /// the output at the tile's first element (row stride), and the panel's valid columns.
    type PackedTile = (
        *const bf16,
        usize,
        *const bf16,
        usize,
        *mut f32,
        usize,
        usize,
    );

    /// `M` rows of x against a panel: `out[r][c] = sum over pairs p of x[r][2p] w[c][2p] +
    /// x[r][2p + 1] w[c][2p + 1]` for the panel's valid columns, one chain per output in order.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    #[inline]
    unsafe fn packed_tile<const M: usize>(a: PackedTile) {
        let (x, ldx, panel, pairs, out, ld, cols) = a;
        let m0: __mmask16 = if cols >= 16 { !0 } else { (1u16 << cols) - 1 };
        let m1: __mmask16 = if cols >= 32 {
            !0
        } else if cols > 16 {
            (1u16 << (cols - 16)) - 1
        } else {
            0
        };
        let mut acc = [[_mm512_setzero_ps(); 2]; M];
        for p in 0..pairs {
            let w0: __m512bh =
                std::mem::transmute(_mm512_load_si512(panel.add(p * 64) as *const __m512i));
            let w1: __m512bh =
                std::mem::transmute(_mm512_load_si512(panel.add(p * 64 + 32) as *const __m512i));
            for (r, a) in acc.iter_mut().enumerate() {
                let pair = std::ptr::read_unaligned(x.add(r * ldx + 2 * p) as *const i32);
                let b: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                a[0] = _mm512_dpbf16_ps(a[0], b, w0);
                a[1] = _mm512_dpbf16_ps(a[1], b, w1);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            let o = out.add(r * ld);
            _mm512_mask_storeu_ps(o, m0, a[0]);
            _mm512_mask_storeu_ps(o.wrapping_add(16), m1, a[1]);
        }
    }

    /// The columns `k0..k0 + 2 * pairs` of `cols` weight rows (`w`: `cols * k`, read as zero past
    /// `k` and past `cols`) as a panel of pairs: `panel[(p * 32 + c) * 2 + i] = w[c][k0 + 2p + i]`.
    /// 16 rows by 16 pairs at a time, transposed as 32-bit elements in registers. `pairs` is a
    /// multiple of 16.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn pack_panel(
        w: &[bf16],
        k: usize,
        cols: usize,
        k0: usize,
        pairs: usize,
        panel: &mut [bf16],
    ) {
        debug_assert!(pairs % 16 == 0 && panel.len() >= pairs * PANEL_N * 2 && w.len() == cols * k);
        for h in 0..PANEL_N / 16 {
            for pb in (0..pairs).step_by(16) {
                let t0 = k0 + 2 * pb;
                let avail = k.saturating_sub(t0).min(32);
                let mask: __mmask32 = if avail == 32 { !0 } else { (1u32 << avail) - 1 };
                let mut v = [_mm512_setzero_si512(); 16];
                for (i, v) in v.iter_mut().enumerate() {
                    let c = h * 16 + i;
                    if c < cols && avail > 0 {
                        let s = w.as_ptr().wrapping_add(c * k + t0);
                        *v = _mm512_maskz_loadu_epi16(mask, s as *const i16);
                    }
                }
                let v = transpose16(v);
                for (q, v) in v.iter().enumerate() {
                    let d = panel.as_mut_ptr().add(((pb + q) * PANEL_N + h * 16) * 2);
                    _mm512_store_si512(d as *mut __m512i, *v);
                }
            }
        }
    }

    /// 16 vectors of 16 32-bit elements, transposed: `out[j]` lane `i` = `v[i]` lane `j`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    #[inline]
    unsafe fn transpose16(v: [__m512i; 16]) -> [__m512i; 16] {
        // per 128-bit lane l: a[2i] = rows 2i, 2i + 1 at columns 4l, 4l + 1 interleaved; a[2i + 1]
        // the same at 4l + 2, 4l + 3
        let mut a = [_mm512_setzero_si512(); 16];
        for i in 0..8 {
            a[2 * i] = _mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]);
            a[2 * i + 1] = _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]);
        }
        // c[4g + j] lane l = rows 4g..4g + 4 at column 4l + j
        let mut c = [_mm512_setzero_si512(); 16];
        for g in 0..4 {
            let (lo, hi) = (a[4 * g], a[4 * g + 2]);
            c[4 * g] = _mm512_unpacklo_epi64(lo, hi);
            c[4 * g + 1] = _mm512_unpackhi_epi64(lo, hi);
            let (lo, hi) = (a[4 * g + 1], a[4 * g + 3]);
            c[4 * g + 2] = _mm512_unpacklo_epi64(lo, hi);
            c[4 * g + 3] = _mm512_unpackhi_epi64(lo, hi);
        }
        // out[4l + j] = lanes l of c[j], c[4 + j], c[8 + j], c[12 + j]
        let mut out = [_mm512_setzero_si512(); 16];
        for j in 0..4 {
            let d0 = _mm512_shuffle_i32x4::<0x88>(c[j], c[4 + j]);
            let d1 = _mm512_shuffle_i32x4::<0xdd>(c[j], c[4 + j]);
            let d2 = _mm512_shuffle_i32x4::<0x88>(c[8 + j], c[12 + j]);
            let d3 = _mm512_shuffle_i32x4::<0xdd>(c[8 + j], c[12 + j]);
            out[j] = _mm512_shuffle_i32x4::<0x88>(d0, d2);
            out[8 + j] = _mm512_shuffle_i32x4::<0xdd>(d0, d2);
            out[4 + j] = _mm512_shuffle_i32x4::<0x88>(d1, d3);
            out[12 + j] = _mm512_shuffle_i32x4::<0xdd>(d1, d3);
        }
        out
    }

    /// `x` rounded to bf16, nearest even (`vcvtne2ps2bf16`), into `d` (as long as `x`).
    /// Subnormal values become 0 where [`super::to_bf16`] keeps them, a difference no product
    /// sees: `vdpbf16ps` takes subnormal inputs as 0.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(super) unsafe fn round_row(x: &[f32], d: &mut [bf16]) {
        debug_assert_eq!(x.len(), d.len());
        let (xs, ds) = (x.as_ptr(), d.as_mut_ptr());
        let n = x.len();
        let mut i = 0;
        while i + 32 <= n {
            let lo = _mm512_loadu_ps(xs.add(i));
            let hi = _mm512_loadu_ps(xs.add(i + 16));
            let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(ds.add(i) as *mut __m512i, v);
            i += 32;
        }
        if i < n {
            let t = n - i;
            let m_lo: __mmask16 = if t >= 16 { !0 } else { (1u16 << t) - 1 };
            let m_hi: __mmask16 = if t > 16 { (1u16 << (t - 16)) - 1 } else { 0 };
            let lo = _mm512_maskz_loadu_ps(m_lo, xs.add(i));
            let hi = _mm512_maskz_loadu_ps(m_hi, xs.wrapping_add(i + 16));
            let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_mask_storeu_epi16(ds.add(i) as *mut i16, (1u32 << t) - 1, v);
        }
    }

    /// The lane sums of four vectors, as one 4-lane vector.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    #[inline]
    unsafe fn sum4(a: __m512, b: __m512, c: __m512, d: __m512) -> __m128 {
        // per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3]
        let ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
        let cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
        // per 128-bit lane: [a, b, c, d] partial sums
        let lo = _mm512_castpd_ps(_mm512_unpacklo_pd(
            _mm512_castps_pd(ab),
            _mm512_castps_pd(cd),
        ));
        let hi = _mm512_castpd_ps(_mm512_unpackhi_pd(
            _mm512_castps_pd(ab),
            _mm512_castps_pd(cd),
        ));
        let s = _mm512_add_ps(lo, hi);
        let s = _mm256_add_ps(
            _mm512_castps512_ps256(s),
            _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(s))),
        );
        _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s))
    }
}

#[cfg(test)]
mod tests {
    use super::rows_share_sets;

    /// Copying the weight rows side by side changes where the kernel reads them, never the
    /// summation order: the same bits with and without the copy, at widths either side of the
    /// rule, with column tails and partial groups of 16 rows.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn copied_weight_rows_give_the_bits_of_rows_read_in_place() {
        if crate::cpu::kernels().bf16 != crate::cpu::Bf16Kernel::Avx512Bf16 {
            eprintln!("skipped: this CPU has no AVX512-BF16 (the copy is that kernel's)");
            return;
        }
        for (i, (m, k, n)) in [(13, 2049, 37), (9, 1024, 50), (40, 1100, 45), (7, 768, 33)]
            .into_iter()
            .enumerate()
        {
            let val = |j: usize, s: usize| ((j * 7919 + s * 104_729) % 2001) as f32 / 1000.0 - 1.0;
            let x: Vec<f32> = (0..m * k).map(|j| val(j, 2 * i)).collect();
            let w = super::to_bf16(&(0..n * k).map(|j| val(j, 2 * i + 1)).collect::<Vec<_>>());
            let run = |copy| super::native_rows(&x, m, k, n, super::Rows::Slice(&w), copy);
            let bits = |v: Vec<f32>| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(run(true)), bits(run(false)), "({m}, {k}, {n})");
        }
    }

    /// In the outer-product layout each output is one chain over k, so a row of x gets the same
    /// bits whichever rows run beside it (tiles of 14 or 13 rows, or a short last tile): the
    /// first 50 rows of 100, run alone, against the same rows inside the 100.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn packed_rows_do_not_depend_on_the_rows_beside_them() {
        if crate::cpu::kernels().bf16 != crate::cpu::Bf16Kernel::Avx512Bf16 {
            eprintln!("skipped: this CPU has no AVX512-BF16 (the packed layout is that kernel's)");
            return;
        }
        let (k, n) = (1100, 70);
        let val = |j: usize, s: usize| ((j * 7919 + s * 104_729) % 2001) as f32 / 1000.0 - 1.0;
        let x: Vec<f32> = (0..100 * k).map(|j| val(j, 1)).collect();
        let w = super::to_bf16(&(0..n * k).map(|j| val(j, 2)).collect::<Vec<_>>());
        let all = super::native_rows(&x, 100, k, n, super::Rows::Slice(&w), false);
        let part = super::native_rows(&x[..50 * k], 50, k, n, super::Rows::Slice(&w), false);
        const { assert!(50 >= super::PACKED_MIN_ROWS) };
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&all[..50 * n]), bits(&part));
    }

    #[test]
    fn rows_that_share_l1_sets_are_the_4_kib_strides_and_their_like() {
        // T5-XL's k = 2048 and 5120, ViT-g's fc2 k = 6144, 3072 (ViT-B's fc2), and a row a
        // 2-byte step past 4 KiB: fewer than 8 sets
        for k in [1024, 2048, 3072, 5120, 6144, 2049] {
            assert!(rows_share_sets(k), "k = {k}");
        }
        // ViT-B / T5-base's 768, ViT-g's 1408, and odd widths spread over 8 sets or more
        for k in [1, 31, 300, 768, 1100, 1408, 2064] {
            assert!(!rows_share_sets(k), "k = {k}");
        }
    }
}
