//! Batched products of a few rows, `a (.., m, k) @ b (.., k, n)` for 2 <= m <= [`MAX_ROWS`],
//! in the summation order of candle's matmul: attention's two products while decoding.
//!
//! With beam search the beams of one input share its encoder K/V, so each cross-attention head
//! multiplies the beams' 5 query rows by one K^T (64 x 349 at the bench's encoder length) and 5
//! rows of probabilities by one V. candle's matmul (the `gemm` crate) makes each head's product a
//! separate call that first packs K or V into its panel layout: on LION-4B (24 layers x 32
//! heads x 2 products per step) those calls took about 28 ms of a 160 ms decoding step on one
//! thread, the other idle (AMD EPYC Zen 4, `perf`). Here the heads run in parallel and read K
//! and V where they lie, with no copy: V's rows as vectors (AVX-512: a head's 64 columns in one
//! pass over V, 4 vectors per row, rather than one pass per 16 columns); K^T in strips of 16
//! keys, loaded along K's rows and transposed in registers (AVX-512), or gathered (AVX2, and
//! the last `k % 16` steps). LION-4B's cross-attention at 5 beams (24 layers x 32 heads, 349
//! keys: 69 MB of K and 69 MB of V a step, f32), on 2 cores of an AMD EPYC Zen 4: the products
//! with V 4.8-5.5 -> 2.7-3.2 ms a step with the single pass, those with K^T 6.8-7.6 -> 5.0-5.3
//! ms with its strips fetched two ahead (a scratch program, alternating runs).
//!
//! **Same bits as candle.** For these shapes `gemm` computes every output element as one chain
//! of fused multiply-adds over `k` in order, from +0, in blocks of 512 (the block's chain added
//! to the sum of the blocks before it), and so does this kernel, whatever its vector width: each
//! lane holds one output element. [`candle_order`] names the shapes where that holds (`gemm`
//! takes other paths for one row or column, `k <= 2`, small dot-product-oriented products, and
//! cache-dependent blocks past 512 when `n > 64`); the others stay with candle. Tested bit for
//! bit against candle's matmul on every kernel this machine has (`tests/few_rows.rs` and the
//! unit tests below).

use rayon::prelude::*;

/// Most rows of `a` this kernel takes (the skinny kernels' limit; the beams of one input).
pub const MAX_ROWS: usize = crate::skinny::MAX_ROWS;

/// Rows of `a` held in registers at once (6 x 16-lane accumulators with the loads).
const GROUP: usize = 6;

/// `gemm`'s block of `k` for products with `n <= 64` (its small-size path: `kc = min(k, 512)`),
/// and its least block for any product.
const KC: usize = 512;

/// Whether candle's matmul of one (m, k) x (k, n) item computes each element as the chain this
/// kernel computes, given the column stride of `a` and the row stride of `b` (elements).
///
/// `gemm` transposes a row-major product (dst columns contiguous) to `b^T a^T`, then takes: the
/// dot-product kernel when `b^T` and `a^T` are read along `k` and `m * n <= 256`; matrix-vector
/// loops for one row or column; a direct loop for `k <= 2`; else its microkernels, one
/// accumulator per element, over blocks of `kc` (512 when `n <= 64`, at least 512 otherwise).
pub fn candle_order(m: usize, n: usize, k: usize, a_cs: usize, b_rs: usize) -> bool {
    let horizontal = a_cs == 1 && b_rs == 1 && m * n <= 256;
    (2..=MAX_ROWS).contains(&m) && n >= 2 && k >= 3 && !horizontal && (k <= KC || n <= 64)
}

use crate::sgemm::MatRef;

/// `a` (m, k) @ `b` (k, n) into `out` (m, n) row-major, for shapes [`candle_order`] accepts
/// (the order holds for any shape; the caller decides whether it must match candle). Both
/// operands are read where they lie, through their strides: rows of `b` with contiguous columns
/// as vectors, other layouts (attention's K^T) transposed in registers or gathered.
///
/// Panics if a view does not fit its shape or `out.len() != m * n`.
pub fn matmul_into(m: usize, n: usize, k: usize, a: MatRef, b: MatRef, out: &mut [f32]) {
    assert!(
        a.fits(m, k) && b.fits(k, n) && out.len() == m * n,
        "few_rows: views do not fit ({m}, {k}) x ({k}, {n})"
    );
    assert!(
        b.cs.saturating_mul(15) <= i32::MAX as usize,
        "few_rows: column stride {} too large to gather",
        b.cs
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        out.fill(0.0);
        return;
    }
    for i0 in (0..m).step_by(GROUP) {
        let rows = GROUP.min(m - i0);
        let a_rows = MatRef {
            data: &a.data[i0 * a.rs..],
            ..a
        };
        rows_times(a_rows, rows, k, b, n, &mut out[i0 * n..(i0 + rows) * n]);
    }
}

/// `a` (rows, k) @ `b` (k, n) -> `out` (rows, n), rows <= GROUP, views that fit (checked by
/// [`matmul_into`]), on the widest kernel this machine runs.
fn rows_times(a: MatRef, rows: usize, k: usize, b: MatRef, n: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    match crate::cpu::kernels().f32_skinny {
        // SAFETY: `cpu::kernels()` picks these only when the CPU has their features; the views
        // fit (rows, k) and (k, n), `out` holds rows * n, and every load past a view's last
        // column is masked off.
        crate::cpu::F32Kernel::Avx512 => {
            return unsafe { avx512::rows_times(a, rows, k, b, n, out) }
        }
        crate::cpu::F32Kernel::Avx2Fma => {
            return unsafe { avx2::rows_times(a, rows, k, b, n, out) }
        }
        crate::cpu::F32Kernel::Portable => {}
    }
    portable_rows_times(a, rows, k, b, n, out);
}

/// The chain per element with scalar fused multiply-adds (the reference of the SIMD kernels).
fn portable_rows_times(a: MatRef, rows: usize, k: usize, b: MatRef, n: usize, out: &mut [f32]) {
    for i in 0..rows {
        for j in 0..n {
            let mut sum = 0f32;
            for k0 in (0..k).step_by(KC) {
                let mut acc = 0f32;
                for kk in k0..(k0 + KC).min(k) {
                    acc = a.at(i, kk).mul_add(b.at(kk, j), acc);
                }
                sum = if k0 == 0 { acc } else { acc + sum };
            }
            out[i * n + j] = sum;
        }
    }
}

/// One strip of `$lanes` columns for every row of the group: `R` rows of accumulators, the
/// chain over each block of `k`, the blocks summed, then stored; `G`: gather `b`'s columns
/// (column stride not 1) instead of loading its rows.
macro_rules! strip_kernel {
    ($feat:literal, $lanes:expr, $zero:ident, $set1:ident, $fmadd:ident, $add:ident,
     $store:ident, $mask:ident, $load:ident, $gather:ident) => {
        #[target_feature(enable = $feat)]
        unsafe fn strip<const R: usize, const G: bool>(
            a: MatRef,
            k: usize,
            b: MatRef,
            j0: usize,
            n: usize,
            out: &mut [f32],
        ) {
            let width = $lanes.min(n - j0);
            let mask = $mask(width);
            let idx = gather_index(b.cs);
            let (ap, bp) = (a.data.as_ptr(), b.data.as_ptr().add(j0 * b.cs));
            if G && b.rs == 1 && j0 + $lanes < n {
                // K^T: the next strip's keys are one contiguous run of memory; a gather's 16
                // lines would otherwise each miss on their first touch
                let next = bp.add($lanes * b.cs);
                let lines = ($lanes * b.cs).min(n.saturating_sub(j0 + $lanes) * b.cs);
                for l in (0..lines).step_by(16) {
                    _mm_prefetch::<_MM_HINT_T0>(next.add(l) as *const i8);
                }
            }
            let mut sum = [$zero(); R];
            let mut k0 = 0;
            while k0 < k {
                let k1 = (k0 + KC).min(k);
                let mut acc = [$zero(); R];
                for kk in k0..k1 {
                    let row = bp.add(kk * b.rs);
                    let bv = if G {
                        $gather(row, idx, mask)
                    } else {
                        $load(row, mask)
                    };
                    for r in 0..R {
                        let av = $set1(*ap.add(r * a.rs + kk * a.cs));
                        acc[r] = $fmadd(av, bv, acc[r]);
                    }
                }
                for r in 0..R {
                    sum[r] = if k0 == 0 {
                        acc[r]
                    } else {
                        $add(acc[r], sum[r])
                    };
                }
                k0 = k1;
            }
            for r in 0..R {
                let mut lanes = [0f32; $lanes];
                $store(lanes.as_mut_ptr(), sum[r]);
                out[r * n + j0..r * n + j0 + width].copy_from_slice(&lanes[..width]);
            }
        }

        #[target_feature(enable = $feat)]
        pub(super) unsafe fn rows_times(
            a: MatRef,
            rows: usize,
            k: usize,
            b: MatRef,
            n: usize,
            out: &mut [f32],
        ) {
            macro_rules! go {
                ($g:expr) => {{
                    let mut j0 = 0;
                    while j0 < n {
                        if !$g {
                            let cols = match rows {
                                1 => strip_wide::<1>(a, k, b, j0, n, out),
                                2 => strip_wide::<2>(a, k, b, j0, n, out),
                                3 => strip_wide::<3>(a, k, b, j0, n, out),
                                4 => strip_wide::<4>(a, k, b, j0, n, out),
                                5 => strip_wide::<5>(a, k, b, j0, n, out),
                                6 => strip_wide::<6>(a, k, b, j0, n, out),
                                _ => 0,
                            };
                            if cols > 0 {
                                j0 += cols;
                                continue;
                            }
                        }
                        let done = $g
                            && match rows {
                                1 => strip_transposed::<1>(a, k, b, j0, n, out),
                                2 => strip_transposed::<2>(a, k, b, j0, n, out),
                                3 => strip_transposed::<3>(a, k, b, j0, n, out),
                                4 => strip_transposed::<4>(a, k, b, j0, n, out),
                                5 => strip_transposed::<5>(a, k, b, j0, n, out),
                                6 => strip_transposed::<6>(a, k, b, j0, n, out),
                                _ => false,
                            };
                        if !done {
                            match rows {
                                1 => strip::<1, $g>(a, k, b, j0, n, out),
                                2 => strip::<2, $g>(a, k, b, j0, n, out),
                                3 => strip::<3, $g>(a, k, b, j0, n, out),
                                4 => strip::<4, $g>(a, k, b, j0, n, out),
                                5 => strip::<5, $g>(a, k, b, j0, n, out),
                                6 => strip::<6, $g>(a, k, b, j0, n, out),
                                _ => unreachable!("few_rows: {rows} rows in a group"),
                            }
                        }
                        j0 += $lanes;
                    }
                }};
            }
            if b.cs == 1 {
                go!(false)
            } else {
                go!(true)
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{MatRef, KC};
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn mask(width: usize) -> __mmask16 {
        ((1u32 << width) - 1) as __mmask16
    }

    #[inline(always)]
    unsafe fn gather_index(cs: usize) -> __m512i {
        let cs = cs as i32;
        _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(cs),
        )
    }

    #[inline(always)]
    unsafe fn load(p: *const f32, m: __mmask16) -> __m512 {
        _mm512_maskz_loadu_ps(m, p)
    }

    #[inline(always)]
    unsafe fn gather(p: *const f32, idx: __m512i, m: __mmask16) -> __m512 {
        _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), m, idx, p)
    }

    /// 16 x 16 transpose: `r[i]` lane `d` -> `t[d]` lane `i`.
    #[inline(always)]
    unsafe fn transpose16(r: &[__m512; 16]) -> [__m512; 16] {
        let mut t = [_mm512_setzero_ps(); 16];
        for p in 0..8 {
            t[2 * p] = _mm512_unpacklo_ps(r[2 * p], r[2 * p + 1]);
            t[2 * p + 1] = _mm512_unpackhi_ps(r[2 * p], r[2 * p + 1]);
        }
        // u[4q + c]: in 128-bit lane L, element 4L + c of rows 4q..4q+4
        let mut u = [_mm512_setzero_ps(); 16];
        for q in 0..4 {
            let pd = |x: __m512| _mm512_castps_pd(x);
            let (t0, t1, t2, t3) = (t[4 * q], t[4 * q + 1], t[4 * q + 2], t[4 * q + 3]);
            u[4 * q] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(t0), pd(t2)));
            u[4 * q + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(t0), pd(t2)));
            u[4 * q + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(t1), pd(t3)));
            u[4 * q + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(t1), pd(t3)));
        }
        let mut v = [_mm512_setzero_ps(); 16];
        for h in [0, 8] {
            for c in 0..4 {
                v[h + c] = _mm512_shuffle_f32x4::<0x88>(u[h + c], u[h + c + 4]);
                v[h + c + 4] = _mm512_shuffle_f32x4::<0xdd>(u[h + c], u[h + c + 4]);
            }
        }
        let mut o = [_mm512_setzero_ps(); 16];
        for c in 0..4 {
            o[c] = _mm512_shuffle_f32x4::<0x88>(v[c], v[8 + c]);
            o[c + 8] = _mm512_shuffle_f32x4::<0xdd>(v[c], v[8 + c]);
            o[c + 4] = _mm512_shuffle_f32x4::<0x88>(v[c + 4], v[12 + c]);
            o[c + 12] = _mm512_shuffle_f32x4::<0xdd>(v[c + 4], v[12 + c]);
        }
        o
    }

    /// A full strip of 16 columns of a `b` whose columns are contiguous (attention's K^T: each
    /// column a row of K): 16 x 16 blocks loaded along K's rows and transposed in registers,
    /// the same chain as the gathered strip (`k % 16` last steps gathered). False (nothing
    /// done) for other strips.
    #[target_feature(enable = "avx512f")]
    unsafe fn strip_transposed<const R: usize>(
        a: MatRef,
        k: usize,
        b: MatRef,
        j0: usize,
        n: usize,
        out: &mut [f32],
    ) -> bool {
        if b.rs != 1 || j0 + 16 > n {
            return false;
        }
        let idx = gather_index(b.cs);
        let (ap, bp) = (a.data.as_ptr(), b.data.as_ptr().add(j0 * b.cs));
        // the strip after next into L2 (the first strip also the next): one strip ahead into
        // L1 ran at 9-10 GB/s over LION-4B's cross-attention keys, two ahead at 11-13 (Zen 4)
        let ahead = if j0 == 0 { 16..48 } else { 32..48 };
        for s in ahead.step_by(16).filter(|s| j0 + s + 16 <= n) {
            let next = bp.add(s * b.cs);
            for l in (0..16 * b.cs).step_by(16) {
                _mm_prefetch::<_MM_HINT_T1>(next.add(l) as *const i8);
            }
        }
        let mut sum = [_mm512_setzero_ps(); R];
        let mut k0 = 0;
        while k0 < k {
            let k1 = (k0 + KC).min(k);
            let mut acc = [_mm512_setzero_ps(); R];
            let mut kk = k0;
            while kk + 16 <= k1 {
                let mut r = [_mm512_setzero_ps(); 16];
                for (i, ri) in r.iter_mut().enumerate() {
                    *ri = _mm512_loadu_ps(bp.add(i * b.cs + kk));
                }
                let t = transpose16(&r);
                for (d, bv) in t.iter().enumerate() {
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let av = _mm512_set1_ps(*ap.add(r * a.rs + (kk + d) * a.cs));
                        *acc = _mm512_fmadd_ps(av, *bv, *acc);
                    }
                }
                kk += 16;
            }
            for kk in kk..k1 {
                let bv = gather(bp.add(kk), idx, 0xffff);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*ap.add(r * a.rs + kk * a.cs));
                    *acc = _mm512_fmadd_ps(av, bv, *acc);
                }
            }
            for r in 0..R {
                sum[r] = if k0 == 0 {
                    acc[r]
                } else {
                    _mm512_add_ps(acc[r], sum[r])
                };
            }
            k0 = k1;
        }
        for (r, sum) in sum.iter().enumerate() {
            _mm512_storeu_ps(out.as_mut_ptr().add(r * n + j0), *sum);
        }
        true
    }

    /// Up to 64 columns of a `b` with contiguous rows (attention's V) for every row of the
    /// group at once: each row of `b` read once as 4 vectors (one pass over V, not one per 16
    /// columns), 4 x R independent chains; the same chain per element as [`strip`]. Returns the
    /// columns done (all of `j0..min(j0 + 64, n)`).
    #[target_feature(enable = "avx512f")]
    unsafe fn strip_wide<const R: usize>(
        a: MatRef,
        k: usize,
        b: MatRef,
        j0: usize,
        n: usize,
        out: &mut [f32],
    ) -> usize {
        const S: usize = 4;
        let width = (16 * S).min(n - j0);
        let masks: [__mmask16; S] =
            std::array::from_fn(|s| mask(width.saturating_sub(16 * s).min(16)));
        let (ap, bp) = (a.data.as_ptr(), b.data.as_ptr().add(j0));
        let mut sum = [[_mm512_setzero_ps(); S]; R];
        let mut k0 = 0;
        while k0 < k {
            let k1 = (k0 + KC).min(k);
            let mut acc = [[_mm512_setzero_ps(); S]; R];
            for kk in k0..k1 {
                let row = bp.add(kk * b.rs);
                _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(8 * b.rs) as *const i8);
                let bv: [__m512; S] = std::array::from_fn(|s| load(row.add(16 * s), masks[s]));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*ap.add(r * a.rs + kk * a.cs));
                    for (acc, bv) in acc.iter_mut().zip(&bv) {
                        *acc = _mm512_fmadd_ps(av, *bv, *acc);
                    }
                }
            }
            for (sum, acc) in sum.iter_mut().flatten().zip(acc.iter().flatten()) {
                *sum = if k0 == 0 {
                    *acc
                } else {
                    _mm512_add_ps(*acc, *sum)
                };
            }
            k0 = k1;
        }
        for (r, sum) in sum.iter().enumerate() {
            for (s, v) in sum.iter().enumerate() {
                _mm512_mask_storeu_ps(out.as_mut_ptr().add(r * n + j0 + 16 * s), masks[s], *v);
            }
        }
        width
    }

    strip_kernel!(
        "avx512f",
        16,
        _mm512_setzero_ps,
        _mm512_set1_ps,
        _mm512_fmadd_ps,
        _mm512_add_ps,
        _mm512_storeu_ps,
        mask,
        load,
        gather
    );
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{MatRef, KC};
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn mask(width: usize) -> __m256i {
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        _mm256_cmpgt_epi32(_mm256_set1_epi32(width as i32), lane)
    }

    #[inline(always)]
    unsafe fn gather_index(cs: usize) -> __m256i {
        let cs = cs as i32;
        _mm256_mullo_epi32(
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
            _mm256_set1_epi32(cs),
        )
    }

    #[inline(always)]
    unsafe fn load(p: *const f32, m: __m256i) -> __m256 {
        _mm256_maskload_ps(p, m)
    }

    #[inline(always)]
    unsafe fn gather(p: *const f32, idx: __m256i, m: __m256i) -> __m256 {
        _mm256_mask_i32gather_ps::<4>(_mm256_setzero_ps(), p, idx, _mm256_castsi256_ps(m))
    }

    /// One strip at a time here (16 registers).
    #[inline(always)]
    unsafe fn strip_wide<const R: usize>(
        _: MatRef,
        _: usize,
        _: MatRef,
        _: usize,
        _: usize,
        _: &mut [f32],
    ) -> usize {
        0
    }

    /// No in-register transpose here: the gathers stay.
    #[inline(always)]
    unsafe fn strip_transposed<const R: usize>(
        _: MatRef,
        _: usize,
        _: MatRef,
        _: usize,
        _: usize,
        _: &mut [f32],
    ) -> bool {
        false
    }

    strip_kernel!(
        "avx2,fma",
        8,
        _mm256_setzero_ps,
        _mm256_set1_ps,
        _mm256_fmadd_ps,
        _mm256_add_ps,
        _mm256_storeu_ps,
        mask,
        load,
        gather
    );
}

/// The batched product as a candle op: `a` (.., m, k) @ `b` (.., k, n) over equal leading
/// dims, f32 on the CPU, the batch items in parallel.
pub(crate) struct FewRows;

impl candle_core::CustomOp2 for FewRows {
    fn name(&self) -> &'static str {
        "lion-few-rows"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::CpuStorage;
        let (da, db) = (l1.dims(), l2.dims());
        let r = da.len();
        if r < 2 || db.len() != r || da[..r - 2] != db[..r - 2] || da[r - 1] != db[r - 2] {
            candle_core::bail!("lion-few-rows: {:?} @ {:?}", da, db)
        }
        let (m, k, n) = (da[r - 2], da[r - 1], db[r - 1]);
        let (CpuStorage::F32(x), CpuStorage::F32(y)) = (s1, s2) else {
            candle_core::bail!("lion-few-rows: f32 operands only")
        };
        let batch: usize = da[..r - 2].iter().product();
        let mut c = vec![0f32; batch * m * n];
        if m * n > 0 {
            c.par_chunks_mut(m * n).enumerate().for_each(|(i, ci)| {
                matmul_into(
                    m,
                    n,
                    k,
                    MatRef::batch_item(x, l1, i),
                    MatRef::batch_item(y, l2, i),
                    ci,
                )
            });
        }
        let mut shape = da.to_vec();
        shape[r - 1] = n;
        Ok((CpuStorage::F32(c), candle_core::Shape::from(shape)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// Every SIMD kernel this CPU has gives the portable chain's bits, at the edges of its
    /// strips and of the 512 blocks, for rows of `b` loaded and for its columns gathered; a
    /// kernel the CPU lacks is skipped with a printed reason.
    #[test]
    fn simd_kernels_give_the_portable_bits() {
        let f = crate::cpu::features();
        let shapes = [
            (1usize, 3usize, 1usize),
            (2, 7, 17),
            (5, 64, 349),
            (6, 349, 64),
            (3, 1100, 33),
        ];
        for (rows, k, n) in shapes {
            let a = random(rows * k, 1);
            let b = random(k * n, 2);
            let av = MatRef {
                data: &a,
                rs: k,
                cs: 1,
            };
            // b row-major, and the same values read through the transposed layout
            let bt: Vec<f32> = (0..n)
                .flat_map(|j| (0..k).map(move |kk| (j, kk)))
                .map(|(j, kk)| b[kk * n + j])
                .collect();
            for bv in [
                MatRef {
                    data: &b,
                    rs: n,
                    cs: 1,
                },
                MatRef {
                    data: &bt,
                    rs: 1,
                    cs: k,
                },
            ] {
                let mut want = vec![0f32; rows * n];
                portable_rows_times(av, rows, k, bv, n, &mut want);
                #[cfg(target_arch = "x86_64")]
                {
                    let mut got = vec![f32::NAN; rows * n];
                    if f.avx512() {
                        unsafe { avx512::rows_times(av, rows, k, bv, n, &mut got) };
                        assert_eq!(
                            bits(&got),
                            bits(&want),
                            "avx512 {rows}x{k}x{n} cs {}",
                            bv.cs
                        );
                    } else {
                        println!("skipped: no AVX-512 F/BW/VL on this CPU");
                    }
                    let mut got = vec![f32::NAN; rows * n];
                    if f.avx2_fma() {
                        unsafe { avx2::rows_times(av, rows, k, bv, n, &mut got) };
                        assert_eq!(bits(&got), bits(&want), "avx2 {rows}x{k}x{n} cs {}", bv.cs);
                    } else {
                        println!("skipped: no AVX2 + FMA on this CPU");
                    }
                }
            }
            let _ = f;
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn candle_order_names_gemms_paths() {
        assert!(candle_order(5, 349, 64, 1, 1)); // cross-attention scores (K^T view)
        assert!(candle_order(5, 64, 349, 1, 64)); // cross-attention context
        assert!(candle_order(5, 64, 2000, 1, 64)); // blocks of 512 with n <= 64
        assert!(!candle_order(5, 65, 2000, 1, 65)); // cache-dependent blocks
        assert!(!candle_order(1, 349, 64, 1, 1)); // one row: matrix-vector loops
        assert!(!candle_order(5, 1, 64, 1, 1)); // one column
        assert!(!candle_order(5, 20, 64, 1, 1)); // dot-product kernel (m * n <= 256)
        assert!(candle_order(5, 20, 64, 1, 20)); // ... only when both are read along k
        assert!(!candle_order(5, 349, 2, 1, 1)); // k <= 2
        assert!(!candle_order(MAX_ROWS + 1, 349, 64, 1, 1));
    }
}
