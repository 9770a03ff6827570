//! Skinny matmul: `x (m, k) @ W^T` for a few rows (m <= [`MAX_ROWS`]), as decoding runs it.
//!
//! A KV-cached decoder step multiplies 5 beam rows by every decoder weight and the LM head:
//! ~0.5 GB of f32 weights for ~1.3 GFLOP. candle's GEMM packs the whole weight into its panel
//! layout before multiplying (reading it, writing a copy, reading that again), which made a base
//! T5 decoder step run at ~10 GB/s on a machine that streams 40-50 GB/s. This kernel reads each
//! weight row once, straight from the (n, k) checkpoint layout, and multiplies it into all `m`
//! rows of `x` (kept in L1) while it is in registers: the step becomes bound by memory bandwidth.
//! Parallel over blocks of weight rows with rayon; AVX2+FMA when the CPU has them (runtime
//! detection), a portable loop otherwise. Summation order differs from the GEMM's (8 partial
//! sums per row), so results agree to rounding, not bit for bit. Tested against candle's
//! matmul for every row count, odd widths and sizes (`tests/linear.rs`).

use half::bf16;
use rayon::prelude::*;

/// The most rows this kernel takes; above it the GEMM's packed weight is reused by enough rows
/// to pay for itself.
pub const MAX_ROWS: usize = 16;

/// Most rows of `x` the SIMD loops hold at once (2 weight rows x 6 rows of accumulators fill the
/// 16 AVX2 registers with the loads); more rows go in even groups, each re-reading the task's
/// block of weight rows from L2.
const GROUP: usize = 6;

/// Weight rows per rayon task (64 rows of a 768-wide weight: 192 KiB streamed per task).
const ROWS_PER_TASK: usize = 64;

/// `x` (m, k) row-major, `w` (n, k) row-major -> `x @ w^T` (m, n) row-major.
///
/// Panics unless `1 <= m <= MAX_ROWS`, `x.len() == m * k` and `w.len() == n * k` (callers check
/// shapes and return errors first).
pub fn matmul_wt(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
    matmul_rows(x, m, k, w, n)
}

/// [`matmul_wt`] for a weight stored in bf16: each weight vector is widened to f32 in registers
/// (exactly) as it is loaded, and summed in the same order, so the result is bit for bit
/// [`matmul_wt`] of the widened weight, streaming half the bytes and with no f32 copy of it.
///
/// Panics as [`matmul_wt`].
pub fn matmul_wt_bf16(x: &[f32], m: usize, k: usize, w: &[bf16], n: usize) -> Vec<f32> {
    matmul_rows(x, m, k, w, n)
}

/// A weight element the row loops read: f32, or bf16 widened to f32 as it is loaded.
trait Elem: Copy + Send + Sync {
    /// out[j * m + r] = dot(w[j], x[r]) for every row j of `w` and r < m, with the kernel this
    /// machine runs (the same summation order for every element type).
    fn rows_dot(x: &[f32], m: usize, k: usize, w: &[Self], out: &mut [f32]);
}

impl Elem for f32 {
    fn rows_dot(x: &[f32], m: usize, k: usize, w: &[f32], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        match crate::cpu::kernels().f32_skinny {
            // SAFETY: `cpu::kernels()` picks a kernel only when the CPU has its features
            // (AVX-512 F/BW/VL; AVX2 and FMA); the slice lengths are checked by `matmul_rows`
            // and each loop stays inside them.
            crate::cpu::F32Kernel::Avx512 => return unsafe { avx512::rows_dot(x, m, k, w, out) },
            crate::cpu::F32Kernel::Avx2Fma => return unsafe { avx2::rows_dot(x, m, k, w, out) },
            crate::cpu::F32Kernel::Portable => {}
        }
        portable_rows_dot(x, m, k, w, out);
    }
}

impl Elem for bf16 {
    fn rows_dot(x: &[f32], m: usize, k: usize, w: &[bf16], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        match crate::cpu::kernels().f32_skinny {
            // SAFETY: as for f32.
            crate::cpu::F32Kernel::Avx512 => {
                return unsafe { avx512::rows_dot_bf16(x, m, k, w, out) }
            }
            crate::cpu::F32Kernel::Avx2Fma => {
                return unsafe { avx2::rows_dot_bf16(x, m, k, w, out) }
            }
            crate::cpu::F32Kernel::Portable => {}
        }
        let wf: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
        portable_rows_dot(x, m, k, &wf, out);
    }
}

fn matmul_rows<W: Elem>(x: &[f32], m: usize, k: usize, w: &[W], n: usize) -> Vec<f32> {
    assert!(
        (1..=MAX_ROWS).contains(&m) && x.len() == m * k && w.len() == n * k,
        "skinny::matmul_wt: x {} for ({m}, {k}), w {} for ({n}, {k})",
        x.len(),
        w.len()
    );
    if k == 0 {
        return vec![0.0; m * n];
    }
    // (n, m): each task owns a contiguous block of it
    let mut yt = vec![0f32; n * m];
    yt.par_chunks_mut(ROWS_PER_TASK * m)
        .enumerate()
        .for_each(|(c, out)| {
            let j0 = c * ROWS_PER_TASK;
            let rows = out.len() / m;
            let wb = &w[j0 * k..(j0 + rows) * k];
            if m <= GROUP {
                W::rows_dot(x, m, k, wb, out);
                return;
            }
            let groups = m.div_ceil(GROUP);
            let mut part = vec![0f32; rows * GROUP];
            let mut r0 = 0;
            for gi in 0..groups {
                // even sizes: 8 rows are 4 + 4, not 6 + 2
                let g = (m - r0).div_ceil(groups - gi);
                let part = &mut part[..rows * g];
                W::rows_dot(&x[r0 * k..(r0 + g) * k], g, k, wb, part);
                for (o, p) in out.chunks_exact_mut(m).zip(part.chunks_exact(g)) {
                    o[r0..r0 + g].copy_from_slice(p);
                }
                r0 += g;
            }
        });
    let mut y = vec![0f32; m * n];
    for (j, col) in yt.chunks_exact(m).enumerate() {
        for (r, &v) in col.iter().enumerate() {
            y[r * n + j] = v;
        }
    }
    y
}

fn portable_rows_dot(x: &[f32], m: usize, k: usize, w: &[f32], out: &mut [f32]) {
    for (wr, o) in w.chunks_exact(k).zip(out.chunks_exact_mut(m)) {
        for (r, o) in o.iter_mut().enumerate() {
            let xr = &x[r * k..(r + 1) * k];
            // 8 partial sums summed as the SIMD path sums them (it fuses the multiply-add)
            let mut acc = [0f32; 8];
            let (wc, xc) = (wr.chunks_exact(8), xr.chunks_exact(8));
            let (wt, xt) = (wc.remainder(), xc.remainder());
            for (a, b) in wc.zip(xc) {
                for l in 0..8 {
                    acc[l] += a[l] * b[l];
                }
            }
            let mut s =
                ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
            for (a, b) in wt.iter().zip(xt) {
                s += a * b;
            }
            *o = s;
        }
    }
}

/// The skinny row-dot loops of one x86 instruction set, `$lanes` floats per vector, for weights
/// of type `$wty` loaded as f32 vectors by `$wload` (f32 as they are, bf16 widened exactly) and
/// read one at a time by `$wf32`: `$rows_dot` (dispatch on the row count) and `$rows::<M>` (two
/// weight rows at a time, 2 * M accumulators, then the last odd row alone). Each module adds
/// `hsum` (its lanes summed); `prefetch` and `PF_ROWS` are the parent's. Both weight types run the same FMA
/// chain per output, so their results are bit for bit equal.
#[cfg(target_arch = "x86_64")]
macro_rules! skinny_loops {
    (
        $feat:literal, $lanes:literal, $zero:ident, $load:ident, $fma:ident,
        $rows_dot:ident, $rows:ident, $wty:ty, $wload:ident, $wf32:expr
    ) => {
        /// Callers guarantee the instruction set, `x.len() == m * k`,
        /// `w.len() == out.len() / m * k`.
        #[target_feature(enable = $feat)]
        pub(super) unsafe fn $rows_dot(x: &[f32], m: usize, k: usize, w: &[$wty], out: &mut [f32]) {
            match m {
                1 => $rows::<1>(x, k, w, out),
                2 => $rows::<2>(x, k, w, out),
                3 => $rows::<3>(x, k, w, out),
                4 => $rows::<4>(x, k, w, out),
                5 => $rows::<5>(x, k, w, out),
                6 => $rows::<6>(x, k, w, out),
                _ => unreachable!("groups of at most GROUP rows"),
            }
        }

        #[target_feature(enable = $feat)]
        #[inline]
        unsafe fn $rows<const M: usize>(x: &[f32], k: usize, w: &[$wty], out: &mut [f32]) {
            let n = out.len() / M;
            debug_assert!(x.len() == M * k && w.len() >= n * k);
            let xp = x.as_ptr();
            let wp = w.as_ptr();
            let kv = k / $lanes * $lanes;
            let mut j = 0;
            while j + 2 <= n {
                let w0 = wp.add(j * k);
                let w1 = w0.add(k);
                let mut a0 = [$zero(); M];
                let mut a1 = [$zero(); M];
                let mut t = 0;
                while t < kv {
                    // one prefetch per 64-byte line
                    if t % (64 / std::mem::size_of::<$wty>()) == 0 {
                        prefetch(w0.wrapping_add(t + PF_ROWS * k));
                        prefetch(w1.wrapping_add(t + PF_ROWS * k));
                    }
                    let v0 = $wload(w0.add(t));
                    let v1 = $wload(w1.add(t));
                    for r in 0..M {
                        let xv = $load(xp.add(r * k + t));
                        a0[r] = $fma(v0, xv, a0[r]);
                        a1[r] = $fma(v1, xv, a1[r]);
                    }
                    t += $lanes;
                }
                for r in 0..M {
                    let (mut s0, mut s1) = (hsum(a0[r]), hsum(a1[r]));
                    for t in kv..k {
                        let xv = *xp.add(r * k + t);
                        s0 += $wf32(*w0.add(t)) * xv;
                        s1 += $wf32(*w1.add(t)) * xv;
                    }
                    out[j * M + r] = s0;
                    out[(j + 1) * M + r] = s1;
                }
                j += 2;
            }
            while j < n {
                let w0 = wp.add(j * k);
                let mut a0 = [$zero(); M];
                let mut t = 0;
                while t < kv {
                    if t % (64 / std::mem::size_of::<$wty>()) == 0 {
                        prefetch(w0.wrapping_add(t + PF_ROWS * k));
                    }
                    let v0 = $wload(w0.add(t));
                    for (r, a) in a0.iter_mut().enumerate() {
                        *a = $fma(v0, $load(xp.add(r * k + t)), *a);
                    }
                    t += $lanes;
                }
                for (r, a) in a0.iter().enumerate() {
                    let mut s = hsum(*a);
                    for t in kv..k {
                        s += $wf32(*w0.add(t)) * *xp.add(r * k + t);
                    }
                    out[j * M + r] = s;
                }
                j += 1;
            }
        }
    };
}

/// [`skinny_loops!`] for both weight types of one instruction set: `rows_dot` over f32
/// weights and `rows_dot_bf16` over bf16 ones (the module's `load_bf16` widening them).
#[cfg(target_arch = "x86_64")]
macro_rules! skinny_isa {
    ($feat:literal, $lanes:literal, $zero:ident, $load:ident, $fma:ident) => {
        skinny_loops!(
            $feat,
            $lanes,
            $zero,
            $load,
            $fma,
            rows_dot,
            rows,
            f32,
            $load,
            std::convert::identity
        );
        skinny_loops!(
            $feat,
            $lanes,
            $zero,
            $load,
            $fma,
            rows_dot_bf16,
            rows_bf16,
            half::bf16,
            load_bf16,
            half::bf16::to_f32
        );
    };
}

/// How far ahead, in weight rows, the loops prefetch. The hardware prefetcher alone kept a
/// 5-row step at ~20 GB/s from DRAM; prefetching the next row pair's lines doubled it
/// (measured on 2 Zen cores: 40-50 GB/s, the machine's streaming rate). Into L2, not L1: at
/// k = 2048 the rows of x, the two weight rows read and the two prefetched all fall in one L1
/// set, and prefetching into L1 evicted what was being read (a T5-XL decoder step's bf16
/// weights, widened: 18 -> 22 GB/s on Zen 4).
#[cfg(target_arch = "x86_64")]
const PF_ROWS: usize = 2;

/// Asks for the cache line at `p` ahead of its use. A hint: it never faults, so `p` may lie
/// past the end of the weight (the last rows prefetch nothing useful).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn prefetch<T>(p: *const T) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
    _mm_prefetch::<_MM_HINT_T1>(p as *const i8);
}

/// AVX2 + FMA: 8 lanes (2 * M <= 12 accumulators, 2 weight and 1 input register: the 16 AVX2
/// registers).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{prefetch, PF_ROWS};
    use std::arch::x86_64::*;

    skinny_isa!(
        "avx2,fma",
        8,
        _mm256_setzero_ps,
        _mm256_loadu_ps,
        _mm256_fmadd_ps
    );

    /// 8 bf16 values widened to f32 (exactly: the bits shifted into the high half).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn load_bf16(p: *const half::bf16) -> __m256 {
        let h = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
    }

    /// Lanes summed as the portable path sums its 8 partial sums.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1)); // l + (l+4)
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s)); // (0+4)+(2+6), (1+5)+(3+7)
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }
}

/// AVX-512 F/BW/VL: 16 lanes (2 * M accumulators of the 32 registers).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{prefetch, PF_ROWS};
    use std::arch::x86_64::*;

    skinny_isa!(
        "avx512f,avx512bw,avx512vl",
        16,
        _mm512_setzero_ps,
        _mm512_loadu_ps,
        _mm512_fmadd_ps
    );

    /// 16 bf16 values widened to f32 (exactly: the bits shifted into the high half).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[inline]
    unsafe fn load_bf16(p: *const half::bf16) -> __m512 {
        let h = _mm256_loadu_si256(p as *const __m256i);
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
    }

    /// The 16 lanes summed.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[inline]
    unsafe fn hsum(v: __m512) -> f32 {
        _mm512_reduce_add_ps(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every SIMD kernel this CPU can run, by name (a missing one is said, not silently passed).
    fn simd_kernels(
        x: &[f32],
        m: usize,
        k: usize,
        w: &[f32],
        n: usize,
    ) -> Vec<(&'static str, Vec<f32>)> {
        let mut outs = vec![];
        #[cfg(target_arch = "x86_64")]
        {
            let f = crate::cpu::features();
            if f.avx2_fma() {
                let mut a = vec![0f32; n * m];
                // SAFETY: AVX2 and FMA checked above.
                unsafe { avx2::rows_dot(x, m, k, w, &mut a) };
                outs.push(("avx2", a));
            } else {
                eprintln!("skipped: the AVX2 skinny kernel (no AVX2+FMA on this CPU)");
            }
            if f.avx512() {
                let mut a = vec![0f32; n * m];
                // SAFETY: AVX-512 F/BW/VL checked above.
                unsafe { avx512::rows_dot(x, m, k, w, &mut a) };
                outs.push(("avx512", a));
            } else {
                eprintln!("skipped: the AVX-512 skinny kernel (no AVX-512 F/BW/VL on this CPU)");
            }
        }
        outs
    }

    /// The portable loop (what non-AVX2 machines run) agrees with the dispatched one.
    #[test]
    fn portable_path_matches_dispatched_path() {
        let mut state = 12345u32;
        let mut next = || {
            state = state.wrapping_mul(1664525).wrapping_add(1013904223);
            (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        for &(m, k, n) in &[
            (1, 19, 3),
            (5, 64, 7),
            (6, 100, 3),
            (3, 8, 1),
            (1, 1, 1),
            (4, 7, 17),
            (2, 16, 16),
            (6, 17, 5),
            (3, 33, 2),
        ] {
            let x: Vec<f32> = (0..m * k).map(|_| next()).collect();
            let w: Vec<f32> = (0..n * k).map(|_| next()).collect();
            let mut b = vec![0f32; n * m];
            portable_rows_dot(&x, m, k, &w, &mut b);
            for (name, a) in simd_kernels(&x, m, k, &w, n) {
                for (j, (p, q)) in a.iter().zip(&b).enumerate() {
                    assert!(
                        (p - q).abs() < 1e-5,
                        "{name} m {m} k {k} n {n} at {j}: {p} vs {q}"
                    );
                }
            }
            // and both against a plain f64 dot product
            for j in 0..n {
                for r in 0..m {
                    let d: f64 = (0..k)
                        .map(|t| w[j * k + t] as f64 * x[r * k + t] as f64)
                        .sum();
                    assert!((b[j * m + r] as f64 - d).abs() < 1e-5);
                }
            }
        }
    }
}
