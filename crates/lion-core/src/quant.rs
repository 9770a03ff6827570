//! Weight-only quantized linear weights (`--quantize q8_0|q4_0|q4k`): GGML's q8_0 and q4_0
//! schemes and K-quants' asymmetric 4-bit blocks (blocks of 32 weights along the input, one
//! scale per block), stored as separate arrays of quants and f32 scales, with our own kernels:
//!
//! - **q8_0**: `d = max|w| / 127`, `q = round(w / d)` (i8), 1.125 bytes per weight here.
//! - **q4_0**: `d = w_max / -8` (the signed value of largest magnitude),
//!   `q = min(15, trunc(w / d + 8.5))` (4 bits, value `(q - 8) d`); byte `i` of a block holds
//!   weights `i` (low nibble) and `i + 16` (high), as GGML packs it; 0.625 bytes per weight.
//! - **q4k**: value `q d + m` (`q` in 0..=15) with a scale `d` and a minimum `m` per block, as
//!   GGML's Q4_K sub-blocks; both are fitted by least squares to the quants of the best of a
//!   range of trial scales, then the quants are rounded again to the fitted pair and it is
//!   refitted (K-quants' `make_qkx2_quants` search, here minimising the plain squared error).
//!   A block's bytes are its 16 bytes of quants (packed as q4_0's) and then `m` (f32, little
//!   endian); `d` is its scale. 0.75 bytes per weight. GGML's own Q4_K layout (super-blocks of
//!   256 weights with 6-bit sub-block scales) needs widths in multiples of 256, which EVA
//!   ViT-g's 1408 and the small models' 64 are not; blocks of 32 with f32 pairs take them all.
//!   On the shapes backbone's ViT and T5 weights its relative RMS error is 6.9% (q4_0 8.7%).
//!
//! Activations stay f32. Up to [`crate::skinny::MAX_ROWS`] rows (decoding) the weight is streamed
//! (once per group of up to 6 rows) and dequantized block by block in registers
//! ([`QWeight::matmul_wt`]: f32 FMAs, 16 lanes on AVX-512, 8 on AVX2 + FMA, picked at run time;
//! the AVX2 kernel, own since 2026-12-06, streams q4k and q4_0 about 2.5x and q8_0 about 1.6x faster than
//! the portable loop compiled for AVX2 did); more rows (encoders, the ViT) dequantize blocks of weight
//! rows into bf16 and run the bf16 GEMM ([`crate::bf16::matmul_wt`]) on them, so prefill costs
//! the bf16 rate plus one pass of dequantization, and memory holds one block of dense rows
//! (where the f32 GEMM is the faster one, [`crate::cpu::Bf16Gemm::WidenF32`], each GEMM task
//! dequantizes its rows into f32, exactly, and packs them; on machines without native bf16,
//! blocks of rows are dequantized to f32 and run on the f32 GEMM).
//! (candle's `quantized` module was measured first: on AMD Zen 4 it repacks q8_0 weights into
//! a second copy for its VNNI path, doubling the memory, and runs EVA ViT-g's 1408-wide layers,
//! which are not a multiple of 256, at 10 GFLOP/s.)

use half::bf16;
use rayon::prelude::*;

use crate::cpu::Quantize;
use crate::skinny::MAX_ROWS;

/// Weights per block (and per scale).
pub const BLOCK: usize = 32;

/// Weight rows dequantized to f32 per GEMM call on machines without native bf16.
const DENSE_ROWS: usize = 1024;

/// Weight rows per rayon task of the skinny path.
const ROWS_PER_TASK: usize = 32;

/// A quantized weight (n, k), `k` a multiple of [`BLOCK`].
#[derive(Debug, Clone)]
pub struct QWeight {
    kind: Quantize,
    n: usize,
    k: usize,
    /// (n, k / 32) block scales.
    scales: Vec<f32>,
    /// q8_0: n * k bytes (i8 as u8); q4_0: n * k / 2 (two 4-bit quants per byte); q4k: 20
    /// bytes per block (16 of quants, then the block's minimum as f32).
    qs: Vec<u8>,
}

impl QWeight {
    /// Quantizes `w` (n, k) row-major. Panics unless `w.len() == n * k` and `k % 32 == 0`
    /// (callers check, see [`Quantize::fits`]).
    pub fn quantize(w: &[f32], n: usize, k: usize, kind: Quantize) -> Self {
        assert!(
            w.len() == n * k && k % BLOCK == 0,
            "QWeight::quantize: {} values for ({n}, {k})",
            w.len()
        );
        let nb = k / BLOCK;
        let qb = kind.block_bytes();
        let mut scales = vec![0f32; n * nb];
        let mut qs = vec![0u8; n * nb * qb];
        scales
            .par_chunks_mut(nb)
            .zip(qs.par_chunks_mut(nb * qb))
            .zip(w.par_chunks(k))
            .for_each(|((s, q), w)| {
                for b in 0..nb {
                    let x = &w[b * BLOCK..(b + 1) * BLOCK];
                    let q = &mut q[b * qb..(b + 1) * qb];
                    s[b] = match kind {
                        Quantize::Q8_0 => quantize_q8(x, q),
                        Quantize::Q4_0 => quantize_q4(x, q),
                        Quantize::Q4K => quantize_q4k(x, q),
                    };
                }
            });
        Self {
            kind,
            n,
            k,
            scales,
            qs,
        }
    }

    pub fn kind(&self) -> Quantize {
        self.kind
    }

    /// A weight from its stored parts (as [`Self::scales`] and [`Self::quants`] give them, e.g.
    /// read back from a quantized model folder); the lengths are checked against (n, k).
    pub fn from_parts(
        kind: Quantize,
        n: usize,
        k: usize,
        scales: Vec<f32>,
        qs: Vec<u8>,
    ) -> std::result::Result<Self, String> {
        if !kind.fits(k) {
            return Err(format!("width {k} is not a multiple of {BLOCK}"));
        }
        let nb = k / BLOCK;
        if scales.len() != n * nb || qs.len() != n * kind.row_bytes(k) {
            return Err(format!(
                "{} scales and {} quant bytes do not make a ({n}, {k}) {} weight ({} and {})",
                scales.len(),
                qs.len(),
                kind.name(),
                n * nb,
                n * kind.row_bytes(k)
            ));
        }
        if let Some(i) = scales.iter().position(|s| !s.is_finite()) {
            return Err(format!("scale {i} is not finite ({})", scales[i]));
        }
        if kind == Quantize::Q4K {
            let qb = kind.block_bytes();
            let min = |b: usize| q4k_min(&qs[b * qb..(b + 1) * qb]);
            if let Some(b) = (0..n * nb).find(|&b| !min(b).is_finite()) {
                return Err(format!("block {b}'s minimum is not finite ({})", min(b)));
            }
        }
        Ok(Self {
            kind,
            n,
            k,
            scales,
            qs,
        })
    }

    /// The block scales, (n, k / 32) row-major.
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// The quants, (n, [`Quantize::row_bytes`]) row-major: q8_0 one i8 per weight, q4_0 two
    /// 4-bit quants per byte, q4k as q4_0 with each block's minimum (f32) after its quants.
    pub fn quants(&self) -> &[u8] {
        &self.qs
    }

    /// (n, k).
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// Bytes held (quants and scales).
    pub fn size_in_bytes(&self) -> usize {
        self.qs.len() + 4 * self.scales.len()
    }

    /// Weight rows `r0..r0 + out.len() / k` dequantized into `out`, exactly (a quant times its
    /// scale, plus the minimum for q4k), on the AVX-512 or AVX2 kernel where the CPU has it.
    fn dequantize_rows(&self, r0: usize, out: &mut [f32]) {
        let (k, nb, qb) = (self.k, self.k / BLOCK, self.kind.block_bytes());
        let kind = self.kind;
        out.par_chunks_mut(k).enumerate().for_each(|(i, row)| {
            let r = r0 + i;
            let q = &self.qs[r * nb * qb..(r + 1) * nb * qb];
            let s = &self.scales[r * nb..(r + 1) * nb];
            #[cfg(target_arch = "x86_64")]
            {
                use crate::cpu::F32Kernel;
                match crate::cpu::kernels().f32_skinny {
                    // SAFETY: the kernel was picked from the CPU's detected features; `q`, `s`
                    // and `row` hold one row of nb blocks.
                    F32Kernel::Avx512 => return unsafe { avx512::dequantize_f32(kind, q, s, row) },
                    F32Kernel::Avx2Fma => return unsafe { avx2::dequantize_f32(kind, q, s, row) },
                    F32Kernel::Portable => {}
                }
            }
            let mut w = [0f32; BLOCK];
            for (b, o) in row.chunks_exact_mut(BLOCK).enumerate() {
                kind.block(&q[b * qb..(b + 1) * qb], s[b], &mut w);
                o.copy_from_slice(&w);
            }
        });
    }

    /// The whole weight (n, k) in f32 (autograd through a quantized layer, tests).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.n * self.k];
        self.dequantize_rows(0, &mut out);
        out
    }

    /// `x` (m, k) row-major f32 -> `x @ W^T` (m, n) f32.
    ///
    /// Panics unless `x.len() == m * k` (callers check shapes first).
    pub fn matmul_wt(&self, x: &[f32], m: usize) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        assert_eq!(x.len(), m * k, "QWeight::matmul_wt: x for ({m}, {k})");
        if m == 0 || n == 0 {
            return vec![];
        }
        if m <= MAX_ROWS {
            return self.skinny(x, m);
        }
        #[cfg(target_arch = "x86_64")]
        if crate::cpu::kernels().bf16 == crate::cpu::Bf16Kernel::Avx512Bf16 {
            let (kind, nb, qb) = (self.kind, k / BLOCK, self.kind.block_bytes());
            let fill = |j0: usize, rows: usize, buf: &mut [bf16]| {
                let q = &self.qs[j0 * nb * qb..(j0 + rows) * nb * qb];
                let s = &self.scales[j0 * nb..(j0 + rows) * nb];
                // SAFETY: on this path the CPU has AVX-512 F/BW/VL and BF16; `q`, `s` and
                // `buf` hold `rows` rows of nb blocks each.
                unsafe { avx512::dequantize_bf16(kind, q, s, buf) }
            };
            if crate::bf16::widens(m) {
                // the f32 GEMM, each task dequantizing its rows into f32 (no bf16 rounding)
                let fill = |j0: usize, rows: usize, buf: &mut [f32]| {
                    let q = &self.qs[j0 * nb * qb..(j0 + rows) * nb * qb];
                    let s = &self.scales[j0 * nb..(j0 + rows) * nb];
                    // SAFETY: on this path the CPU has AVX-512 F/BW/VL; `q`, `s` and `buf` hold
                    // `rows` rows of nb blocks each.
                    unsafe { avx512::dequantize_f32(kind, q, s, buf) }
                };
                return crate::sgemm::matmul_wt_filled(x, m, k, n, &fill);
            }
            return crate::bf16::matmul_wt_filled(x, m, k, n, &fill);
        }
        if crate::sgemm::available() {
            // no native bf16, our f32 GEMM: each of its tasks dequantizes its own rows once into
            // f32 and packs its panels from there (the same sums as the blocks below)
            let fill = |j0: usize, rows: usize, buf: &mut [f32]| {
                self.dequantize_rows(j0, &mut buf[..rows * k])
            };
            return crate::sgemm::matmul_wt_filled(x, m, k, n, &fill);
        }
        // otherwise: blocks of rows dequantized to f32, the f32 GEMM on each
        let mut y = vec![0f32; m * n];
        // one buffer for every block of rows (each filled whole before it is read)
        let mut buf = vec![0f32; DENSE_ROWS.min(n) * k];
        let mut r0 = 0;
        while r0 < n {
            let rows = DENSE_ROWS.min(n - r0);
            let w = &mut buf[..rows * k];
            self.dequantize_rows(r0, w);
            let part = crate::sgemm::matmul_wt(x, m, k, w, rows);
            for (yr, pr) in y.chunks_exact_mut(n).zip(part.chunks_exact(rows)) {
                yr[r0..r0 + rows].copy_from_slice(pr);
            }
            r0 += rows;
        }
        y
    }

    /// Up to [`MAX_ROWS`] rows: the weight streamed (once per register group of rows on
    /// AVX-512), each block dequantized in registers and multiplied into every row's 16 lanes.
    fn skinny(&self, x: &[f32], m: usize) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        let nb = k / BLOCK;
        let qb = self.kind.block_bytes();
        let mut yt = vec![0f32; n * m];
        yt.par_chunks_mut(ROWS_PER_TASK * m)
            .enumerate()
            .for_each(|(c, out)| {
                let j0 = c * ROWS_PER_TASK;
                let rows = out.len() / m;
                let q = &self.qs[j0 * nb * qb..(j0 + rows) * nb * qb];
                let s = &self.scales[j0 * nb..(j0 + rows) * nb];
                kernels::rows(self.kind, x, m, k, q, s, out);
            });
        // (n, m) -> (m, n)
        let mut y = vec![0f32; m * n];
        for j in 0..n {
            for r in 0..m {
                y[r * n + j] = yt[j * m + r];
            }
        }
        y
    }
}

impl Quantize {
    /// Bytes of one block's quants.
    fn block_bytes(self) -> usize {
        match self {
            Self::Q8_0 => BLOCK,
            Self::Q4_0 => BLOCK / 2,
            Self::Q4K => BLOCK / 2 + 4,
        }
    }

    /// Whether a weight of input width `k` can be stored in this format.
    pub fn fits(self, k: usize) -> bool {
        k > 0 && k % BLOCK == 0
    }

    /// Bytes of quants per weight row of width `k` (a multiple of 32).
    pub fn row_bytes(self, k: usize) -> usize {
        k / BLOCK * self.block_bytes()
    }

    /// One block's 32 weights from its quants `q` and scale `d`.
    #[inline(always)]
    fn block(self, q: &[u8], d: f32, w: &mut [f32; BLOCK]) {
        match self {
            Self::Q8_0 => {
                for (w, &q) in w.iter_mut().zip(q) {
                    *w = (q as i8) as f32 * d;
                }
            }
            Self::Q4_0 => {
                for i in 0..BLOCK / 2 {
                    w[i] = ((q[i] & 0x0f) as i32 - 8) as f32 * d;
                    w[i + BLOCK / 2] = ((q[i] >> 4) as i32 - 8) as f32 * d;
                }
            }
            Self::Q4K => {
                let m = q4k_min(q);
                for i in 0..BLOCK / 2 {
                    w[i] = (q[i] & 0x0f) as f32 * d + m;
                    w[i + BLOCK / 2] = (q[i] >> 4) as f32 * d + m;
                }
            }
        }
    }
}

/// A q4k block's minimum (its bytes 16..20).
#[inline(always)]
fn q4k_min(q: &[u8]) -> f32 {
    f32::from_le_bytes([q[16], q[17], q[18], q[19]])
}

/// GGML `quantize_row_q8_0`: returns the scale, writes 32 quants.
fn quantize_q8(x: &[f32], q: &mut [u8]) -> f32 {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for (q, v) in q.iter_mut().zip(x) {
        *q = (v * id).round() as i8 as u8;
    }
    d
}

/// GGML `quantize_row_q4_0`: returns the scale, writes 16 bytes of packed quants.
fn quantize_q4(x: &[f32], q: &mut [u8]) -> f32 {
    let max = x
        .iter()
        .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let quant = |v: f32| ((v * id + 8.5) as u8).min(15);
    for i in 0..BLOCK / 2 {
        q[i] = quant(x[i]) | (quant(x[i + BLOCK / 2]) << 4);
    }
    d
}

/// q4k's quantisation of one block: returns the scale `d`, writes 16 bytes of packed quants and
/// the minimum `m` (value `q d + m`). Candidates: the plain one (`d = (max - min) / 15`,
/// `m = min`), and for 21 trial scales `(14 + 0.1 i) / (max - min)` the quants they round to,
/// with `d` and `m` fitted to them by least squares, then the quants rounded to that pair and
/// fitted again; the candidate with the least squared error wins. A constant block is exact
/// (`d = 0`, `m` its value).
///
/// Every sum over the block runs in four f64 lanes (lane `j` takes weights `j`, `j + 4`, ...,
/// and the lanes add as `(l0 + l1) + (l2 + l3)`), so that one AVX2 register holds them: the
/// AVX2 copy ([`Q4kAvx2`]) computes exactly what the portable one ([`Q4kPortable`]) does, every
/// product and sum in the same order (no FMA), about 30 times faster than the serial loops
/// the search first had (`cargo run --release -p lion-core --example quant_decode`).
fn quantize_q4k(x: &[f32], q: &mut [u8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::kernels().f32_skinny != crate::cpu::F32Kernel::Portable {
        // SAFETY: the skinny kernel is AVX2 + FMA or AVX-512 only where the CPU has AVX2 + FMA.
        return unsafe { q4k_avx2(x, q) };
    }
    q4k_block::<Q4kPortable>(x, q)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn q4k_avx2(x: &[f32], q: &mut [u8]) -> f32 {
    q4k_block::<Q4kAvx2>(x, q)
}

/// The three loops of the q4k search over one block.
trait Q4kOps {
    /// The quants (as f32) of `x` for value `q d + m`, rounded to nearest (ties away from
    /// zero) and clamped to 0..=15.
    fn round(x: &[f32; BLOCK], d: f32, m: f32, out: &mut [f32; BLOCK]);
    /// The squared error of quants `qs` at `(d, m)`, each difference taken in f32.
    fn error(x: &[f32; BLOCK], qs: &[f32; BLOCK], d: f32, m: f32) -> f64;
    /// The sums of `q`, `q * q` and `q * x` (`x` in f64).
    fn sums(xd: &[f64; BLOCK], qs: &[f32; BLOCK]) -> (f64, f64, f64);
}

/// Four lanes added as `(l0 + l1) + (l2 + l3)`.
#[inline(always)]
fn lanes_total(l: [f64; 4]) -> f64 {
    (l[0] + l[1]) + (l[2] + l[3])
}

struct Q4kPortable;

impl Q4kOps for Q4kPortable {
    #[inline(always)]
    fn round(x: &[f32; BLOCK], d: f32, m: f32, out: &mut [f32; BLOCK]) {
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        for (o, &v) in out.iter_mut().zip(x) {
            *o = ((v - m) * id).round().clamp(0.0, 15.0);
        }
    }

    #[inline(always)]
    fn error(x: &[f32; BLOCK], qs: &[f32; BLOCK], d: f32, m: f32) -> f64 {
        let mut l = [0f64; 4];
        for i in (0..BLOCK).step_by(4) {
            for (j, l) in l.iter_mut().enumerate() {
                let e = (qs[i + j] * d + m - x[i + j]) as f64;
                *l += e * e;
            }
        }
        lanes_total(l)
    }

    #[inline(always)]
    fn sums(xd: &[f64; BLOCK], qs: &[f32; BLOCK]) -> (f64, f64, f64) {
        let (mut sq, mut sqq, mut sqx) = ([0f64; 4], [0f64; 4], [0f64; 4]);
        for i in (0..BLOCK).step_by(4) {
            for j in 0..4 {
                let q = qs[i + j] as f64;
                sq[j] += q;
                sqq[j] += q * q;
                sqx[j] += q * xd[i + j];
            }
        }
        (lanes_total(sq), lanes_total(sqq), lanes_total(sqx))
    }
}

/// The same loops in AVX2 registers: 8 f32 at a time, f64 sums in one 4-lane register.
#[cfg(target_arch = "x86_64")]
struct Q4kAvx2;

#[cfg(target_arch = "x86_64")]
impl Q4kAvx2 {
    #[inline(always)]
    fn total(v: std::arch::x86_64::__m256d) -> f64 {
        let mut l = [0f64; 4];
        // SAFETY: `l` holds 4 f64; only reached from `q4k_avx2` (AVX2 present).
        unsafe { std::arch::x86_64::_mm256_storeu_pd(l.as_mut_ptr(), v) };
        lanes_total(l)
    }
}

#[cfg(target_arch = "x86_64")]
impl Q4kOps for Q4kAvx2 {
    #[inline(always)]
    fn round(x: &[f32; BLOCK], d: f32, m: f32, out: &mut [f32; BLOCK]) {
        use std::arch::x86_64::*;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        // SAFETY: AVX2 is present (see `q4k_avx2`); every load and store is within 32 values.
        unsafe {
            let (vm, vid) = (_mm256_set1_ps(m), _mm256_set1_ps(id));
            // round half away from zero: truncate t + copysign(0.5 - 2^-25, t) (as LLVM lowers
            // `f32::round`); exact, the sum rounds up only where t's fraction is >= 0.5
            let half = _mm256_set1_ps(0.5 - f32::EPSILON / 4.0);
            let sign = _mm256_set1_ps(-0.0);
            let (zero, fifteen) = (_mm256_setzero_ps(), _mm256_set1_ps(15.0));
            for i in (0..BLOCK).step_by(8) {
                let t = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x.as_ptr().add(i)), vm), vid);
                let h = _mm256_or_ps(half, _mm256_and_ps(t, sign));
                let r = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(
                    _mm256_add_ps(t, h),
                );
                let r = _mm256_min_ps(_mm256_max_ps(r, zero), fifteen);
                _mm256_storeu_ps(out.as_mut_ptr().add(i), r);
            }
        }
    }

    #[inline(always)]
    fn error(x: &[f32; BLOCK], qs: &[f32; BLOCK], d: f32, m: f32) -> f64 {
        use std::arch::x86_64::*;
        // SAFETY: as in `round`.
        unsafe {
            let (vd, vm) = (_mm256_set1_ps(d), _mm256_set1_ps(m));
            let mut acc = _mm256_setzero_pd();
            for i in (0..BLOCK).step_by(8) {
                let q = _mm256_loadu_ps(qs.as_ptr().add(i));
                let e = _mm256_sub_ps(
                    _mm256_add_ps(_mm256_mul_ps(q, vd), vm),
                    _mm256_loadu_ps(x.as_ptr().add(i)),
                );
                for half in [_mm256_castps256_ps128(e), _mm256_extractf128_ps::<1>(e)] {
                    let e = _mm256_cvtps_pd(half);
                    acc = _mm256_add_pd(acc, _mm256_mul_pd(e, e));
                }
            }
            Self::total(acc)
        }
    }

    #[inline(always)]
    fn sums(xd: &[f64; BLOCK], qs: &[f32; BLOCK]) -> (f64, f64, f64) {
        use std::arch::x86_64::*;
        // SAFETY: as in `round`.
        unsafe {
            let (mut sq, mut sqq, mut sqx) = (
                _mm256_setzero_pd(),
                _mm256_setzero_pd(),
                _mm256_setzero_pd(),
            );
            for i in (0..BLOCK).step_by(4) {
                let q = _mm256_cvtps_pd(_mm_loadu_ps(qs.as_ptr().add(i)));
                sq = _mm256_add_pd(sq, q);
                sqq = _mm256_add_pd(sqq, _mm256_mul_pd(q, q));
                sqx = _mm256_add_pd(sqx, _mm256_mul_pd(q, _mm256_loadu_pd(xd.as_ptr().add(i))));
            }
            (Self::total(sq), Self::total(sqq), Self::total(sqx))
        }
    }
}

#[inline(always)]
fn q4k_block<O: Q4kOps>(x: &[f32], q: &mut [u8]) -> f32 {
    let x: &[f32; BLOCK] = x.try_into().expect("a block of 32 weights");
    let (lo, hi) = x
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let xd: [f64; BLOCK] = std::array::from_fn(|i| x[i] as f64);
    let sx = {
        let mut l = [0f64; 4];
        for i in (0..BLOCK).step_by(4) {
            for (j, l) in l.iter_mut().enumerate() {
                *l += xd[i + j];
            }
        }
        lanes_total(l)
    };
    // least-squares (d, m) for fixed quants; None when they are all equal
    let fit = |qs: &[f32; BLOCK]| -> Option<(f32, f32)> {
        let (sq, sqq, sqx) = O::sums(&xd, qs);
        let n = BLOCK as f64;
        let det = n * sqq - sq * sq;
        (det > 0.0).then(|| {
            (
                ((n * sqx - sq * sx) / det) as f32,
                ((sqq * sx - sq * sqx) / det) as f32,
            )
        })
    };
    let mut best = [0f32; BLOCK];
    let (mut d, mut m) = (0f32, if lo.is_finite() { lo } else { 0.0 });
    if hi > lo {
        d = (hi - lo) / 15.0;
        O::round(x, d, m, &mut best);
        let mut best_err = O::error(x, &best, d, m);
        let mut cand = [0f32; BLOCK];
        for i in 0..=20 {
            let iscale = (14.0 + 0.1 * i as f32) / (hi - lo);
            O::round(x, 1.0 / iscale, lo, &mut cand);
            for _ in 0..2 {
                let Some((cd, cm)) = fit(&cand) else { break };
                if cd <= 0.0 {
                    break;
                }
                let e = O::error(x, &cand, cd, cm);
                if e < best_err {
                    (best, best_err, d, m) = (cand, e, cd, cm);
                }
                O::round(x, cd, cm, &mut cand);
            }
        }
    }
    for i in 0..BLOCK / 2 {
        q[i] = best[i] as u8 | ((best[i + BLOCK / 2] as u8) << 4);
    }
    q[BLOCK / 2..BLOCK / 2 + 4].copy_from_slice(&m.to_le_bytes());
    d
}

/// The skinny kernels: one body, compiled for AVX-512, AVX2 + FMA and plain code, picked at run
/// time.
mod kernels {
    use super::*;

    /// Rows of `out` ((rows, m) row-major) = the weight rows in `q`/`s` times each row of `x`.
    #[inline(always)]
    fn body(kind: Quantize, x: &[f32], m: usize, k: usize, q: &[u8], s: &[f32], out: &mut [f32]) {
        let nb = k / BLOCK;
        let qb = kind.block_bytes();
        let rows = s.len() / nb;
        for j in 0..rows {
            let mut lanes = [[0f32; 16]; MAX_ROWS];
            let mut w = [0f32; BLOCK];
            for b in 0..nb {
                kind.block(
                    &q[(j * nb + b) * qb..(j * nb + b + 1) * qb],
                    s[j * nb + b],
                    &mut w,
                );
                for (r, lane) in lanes.iter_mut().enumerate().take(m) {
                    let xr = &x[r * k + b * BLOCK..r * k + (b + 1) * BLOCK];
                    for t in 0..16 {
                        lane[t] += xr[t] * w[t] + xr[t + 16] * w[t + 16];
                    }
                }
            }
            for (r, lane) in lanes.iter().enumerate().take(m) {
                out[j * m + r] = lane.iter().sum();
            }
        }
    }

    pub(super) fn rows(
        kind: Quantize,
        x: &[f32],
        m: usize,
        k: usize,
        q: &[u8],
        s: &[f32],
        out: &mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            use crate::cpu::F32Kernel;
            match crate::cpu::kernels().f32_skinny {
                // SAFETY: the kernel was picked from the CPU's detected features.
                F32Kernel::Avx512 => {
                    return unsafe { super::avx512::rows(kind, x, m, k, q, s, out) }
                }
                F32Kernel::Avx2Fma => {
                    return unsafe { super::avx2::rows(kind, x, m, k, q, s, out) }
                }
                F32Kernel::Portable => {}
            }
        }
        body(kind, x, m, k, q, s, out)
    }
}

/// AVX2 + FMA kernel: a block's 32 quants widened to four vectors of 8 f32, one at a time.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{q4k_min, Quantize, BLOCK, MAX_ROWS};

    // the format as a constant parameter, so that each kernel is compiled for one
    const Q8_0: u8 = 0;
    const Q4_0: u8 = 1;
    const Q4K: u8 = 2;
    const FORMATS: [Quantize; 3] = [Quantize::Q8_0, Quantize::Q4_0, Quantize::Q4K];

    /// Weights `8 c..8 c + 8` of the block at `q` with scale `d` (minimum `m` for q4k), each as
    /// the scalar [`Quantize::block`] computes it (a product, then for q4k a sum; no FMA).
    #[inline(always)]
    unsafe fn chunk<const K: u8>(q: *const u8, c: usize, d: __m256, m: __m256) -> __m256 {
        match K {
            Q8_0 => {
                let b = _mm_loadl_epi64(q.add(8 * c) as *const __m128i);
                _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)), d)
            }
            _ => {
                // chunks 0 and 1: the low nibbles of bytes 0..16; 2 and 3: the high ones
                let b = _mm_loadl_epi64(q.add(8 * (c % 2)) as *const __m128i);
                let b = if c >= 2 { _mm_srli_epi16::<4>(b) } else { b };
                let b = _mm_and_si128(b, _mm_set1_epi8(0x0f));
                let v = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b));
                if K == Q4_0 {
                    _mm256_mul_ps(_mm256_sub_ps(v, _mm256_set1_ps(8.0)), d)
                } else {
                    _mm256_add_ps(_mm256_mul_ps(v, d), m)
                }
            }
        }
    }

    /// The block's minimum in every lane (q4k; zeros for the other formats).
    #[inline(always)]
    unsafe fn minimum<const K: u8>(q: *const u8) -> __m256 {
        if K == Q4K {
            _mm256_set1_ps(q4k_min(std::slice::from_raw_parts(q, 20)))
        } else {
            _mm256_setzero_ps()
        }
    }

    /// One weight row's `s.len()` blocks into f32 (exact: as [`Quantize::block`]).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dequantize_f32(kind: Quantize, q: &[u8], s: &[f32], row: &mut [f32]) {
        match kind {
            Quantize::Q8_0 => dequantize::<Q8_0>(q, s, row),
            Quantize::Q4_0 => dequantize::<Q4_0>(q, s, row),
            Quantize::Q4K => dequantize::<Q4K>(q, s, row),
        }
    }

    #[inline(always)]
    unsafe fn dequantize<const K: u8>(q: &[u8], s: &[f32], row: &mut [f32]) {
        let qb = FORMATS[K as usize].block_bytes();
        assert!(q.len() >= s.len() * qb && row.len() >= s.len() * BLOCK);
        let out = row.as_mut_ptr();
        for (b, &d) in s.iter().enumerate() {
            let qp = q.as_ptr().add(b * qb);
            let mn = minimum::<K>(qp);
            for c in 0..4 {
                let w = chunk::<K>(qp, c, _mm256_set1_ps(d), mn);
                _mm256_storeu_ps(out.add(b * BLOCK + 8 * c), w);
            }
        }
    }

    /// [`super::kernels`]' body: each weight row streamed once per group of up to 6 rows of x
    /// (their accumulators, the weights and x take 8 of the 16 registers), each block
    /// dequantized 8 weights at a time and multiplied into the group's accumulators.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn rows(
        kind: Quantize,
        x: &[f32],
        m: usize,
        k: usize,
        q: &[u8],
        s: &[f32],
        out: &mut [f32],
    ) {
        let nb = k / BLOCK;
        let rows = s.len() / nb;
        assert!(
            m <= MAX_ROWS
                && x.len() >= m * k
                && q.len() >= rows * nb * kind.block_bytes()
                && out.len() >= rows * m
        );
        match kind {
            Quantize::Q8_0 => groups::<Q8_0>(x, m, k, q, s, out),
            Quantize::Q4_0 => groups::<Q4_0>(x, m, k, q, s, out),
            Quantize::Q4K => groups::<Q4K>(x, m, k, q, s, out),
        }
    }

    /// The rows of x in groups of up to 6.
    #[inline(always)]
    unsafe fn groups<const K: u8>(
        x: &[f32],
        m: usize,
        k: usize,
        q: &[u8],
        s: &[f32],
        out: &mut [f32],
    ) {
        let mut r0 = 0;
        while r0 < m {
            let g = 6.min(m - r0);
            match g {
                1 => group::<K, 1>(x, m, r0, k, q, s, out),
                2 => group::<K, 2>(x, m, r0, k, q, s, out),
                3 => group::<K, 3>(x, m, r0, k, q, s, out),
                4 => group::<K, 4>(x, m, r0, k, q, s, out),
                5 => group::<K, 5>(x, m, r0, k, q, s, out),
                _ => group::<K, 6>(x, m, r0, k, q, s, out),
            }
            r0 += g;
        }
    }

    /// Every weight row against rows `r0..r0 + G` of x (`m` rows of `k`).
    #[inline(always)]
    unsafe fn group<const K: u8, const G: usize>(
        x: &[f32],
        m: usize,
        r0: usize,
        k: usize,
        q: &[u8],
        s: &[f32],
        out: &mut [f32],
    ) {
        let nb = k / BLOCK;
        let qb = FORMATS[K as usize].block_bytes();
        let rows = s.len() / nb;
        let xp = x.as_ptr().add(r0 * k);
        for j in 0..rows {
            let mut acc = [_mm256_setzero_ps(); G];
            for b in 0..nb {
                let blk = j * nb + b;
                let qp = q.as_ptr().add(blk * qb);
                // the row four on into L2 (a hint: past the task's rows it never faults)
                _mm_prefetch::<_MM_HINT_T1>(qp.wrapping_add(4 * nb * qb) as *const i8);
                let d = _mm256_set1_ps(*s.get_unchecked(blk));
                let mn = minimum::<K>(qp);
                for c in 0..4 {
                    let w = chunk::<K>(qp, c, d, mn);
                    for (r, a) in acc.iter_mut().enumerate() {
                        let xv = _mm256_loadu_ps(xp.add(r * k + b * BLOCK + 8 * c));
                        *a = _mm256_fmadd_ps(xv, w, *a);
                    }
                }
            }
            for (r, a) in acc.iter().enumerate() {
                // the 8 lanes summed: halves, then pairs, then the last two
                let h = _mm_add_ps(_mm256_castps256_ps128(*a), _mm256_extractf128_ps::<1>(*a));
                let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
                let h = _mm_add_ss(h, _mm_shuffle_ps::<1>(h, h));
                *out.get_unchecked_mut(j * m + r0 + r) = _mm_cvtss_f32(h);
            }
        }
    }
}

/// AVX-512 kernels: a block's 32 quants widened to two vectors of 16 f32 and scaled.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Quantize, BLOCK, MAX_ROWS};

    /// The block at `q` as two 16-lane f32 vectors (weights 0..16, 16..32), times `d`.
    #[inline(always)]
    unsafe fn block(kind: Quantize, q: *const u8, d: __m512) -> (__m512, __m512) {
        match kind {
            Quantize::Q8_0 => {
                let lo = _mm512_cvtepi8_epi32(_mm_loadu_si128(q as *const __m128i));
                let hi = _mm512_cvtepi8_epi32(_mm_loadu_si128(q.add(16) as *const __m128i));
                (
                    _mm512_mul_ps(_mm512_cvtepi32_ps(lo), d),
                    _mm512_mul_ps(_mm512_cvtepi32_ps(hi), d),
                )
            }
            Quantize::Q4_0 => {
                // the 16 values a quant can take, (q - 8) d, looked up by its 4 bits: a
                // permutation reads only the low 4 bits of each index lane, so neither the
                // widened bytes nor the shifted ones need masking (same products as
                // `(q - 8) as f32 * d`, exactly)
                let bytes = _mm_loadu_si128(q as *const __m128i);
                let values = _mm512_mul_ps(
                    _mm512_setr_ps(
                        -8.0, -7.0, -6.0, -5.0, -4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0,
                        5.0, 6.0, 7.0,
                    ),
                    d,
                );
                let lo = _mm512_cvtepu8_epi32(bytes);
                let hi = _mm512_cvtepu8_epi32(_mm_srli_epi16(bytes, 4));
                (
                    _mm512_permutexvar_ps(lo, values),
                    _mm512_permutexvar_ps(hi, values),
                )
            }
            Quantize::Q4K => {
                // as q4_0, the 16 values `q d + m` (a product, then a sum: the scalar
                // path's roundings) looked up by each quant's 4 bits
                let bytes = _mm_loadu_si128(q as *const __m128i);
                let m = f32::from_le_bytes(std::ptr::read_unaligned(q.add(16) as *const [u8; 4]));
                let values = _mm512_add_ps(
                    _mm512_mul_ps(
                        _mm512_setr_ps(
                            0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0,
                            13.0, 14.0, 15.0,
                        ),
                        d,
                    ),
                    _mm512_set1_ps(m),
                );
                let lo = _mm512_cvtepu8_epi32(bytes);
                let hi = _mm512_cvtepu8_epi32(_mm_srli_epi16(bytes, 4));
                (
                    _mm512_permutexvar_ps(lo, values),
                    _mm512_permutexvar_ps(hi, values),
                )
            }
        }
    }

    /// [`super::kernels`]' body: the weight rows streamed once, two at a time (each load of
    /// `x` serves both), their blocks dequantized in registers and multiplied into `m`
    /// accumulators per row.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn rows(
        kind: Quantize,
        x: &[f32],
        m: usize,
        k: usize,
        q: &[u8],
        s: &[f32],
        out: &mut [f32],
    ) {
        let nb = k / BLOCK;
        let rows = s.len() / nb;
        debug_assert!(
            m <= MAX_ROWS && x.len() >= m * k && q.len() >= rows * nb * kind.block_bytes()
        );
        // the rows of x in groups whose accumulators fit the registers, each group's count
        // known at compile time (a run-time count of up to 16 rows kept them on the stack:
        // 10 rows streamed at 3.6 GB/s on Intel, two groups of 5 at 2 x 11); above 6 rows the
        // weight is streamed once per group
        let most = if m <= 6 { 6 } else { 5 };
        let mut r0 = 0;
        while r0 < m {
            let g = most.min(m - r0);
            let rows_of = Rows { m, r0, k, rows };
            match g {
                1 => all_rows::<1>(kind, x, q, s, out, rows_of),
                2 => all_rows::<2>(kind, x, q, s, out, rows_of),
                3 => all_rows::<3>(kind, x, q, s, out, rows_of),
                4 => all_rows::<4>(kind, x, q, s, out, rows_of),
                5 => all_rows::<5>(kind, x, q, s, out, rows_of),
                _ => all_rows::<6>(kind, x, q, s, out, rows_of),
            }
            r0 += g;
        }
    }

    /// Where a group of `G` rows of x sits: rows `r0..r0 + G` of `m` (each `k` long), against
    /// `rows` weight rows.
    #[derive(Clone, Copy)]
    struct Rows {
        m: usize,
        r0: usize,
        k: usize,
        rows: usize,
    }

    /// [`rows`] for the `G` rows of x at `at.r0`.
    #[inline(always)]
    unsafe fn all_rows<const G: usize>(
        kind: Quantize,
        x: &[f32],
        q: &[u8],
        s: &[f32],
        out: &mut [f32],
        at: Rows,
    ) {
        let mut j = 0;
        // four weight rows a pass when their accumulators fit the 32 registers beside the
        // weights and x (G <= 5: 20 + 8 + 2), else two
        if G <= 5 {
            while j + 4 <= at.rows {
                pass::<4, G>(kind, x, q, s, out, at, j);
                j += 4;
            }
        }
        while j + 2 <= at.rows {
            pass::<2, G>(kind, x, q, s, out, at, j);
            j += 2;
        }
        if j < at.rows {
            pass::<1, G>(kind, x, q, s, out, at, j);
        }
    }

    /// Weight rows `j..j + R` of [`rows`] against the `G` rows of x at `at.r0`.
    #[inline(always)]
    #[allow(clippy::needless_range_loop)]
    unsafe fn pass<const R: usize, const G: usize>(
        kind: Quantize,
        x: &[f32],
        q: &[u8],
        s: &[f32],
        out: &mut [f32],
        at: Rows,
        j: usize,
    ) {
        let k = at.k;
        let nb = k / BLOCK;
        let qb = kind.block_bytes();
        let xp = x.as_ptr().add(at.r0 * k);
        let mut acc = [[_mm512_setzero_ps(); G]; R];
        for b in 0..nb {
            let mut w = [(_mm512_setzero_ps(), _mm512_setzero_ps()); R];
            for (i, w) in w.iter_mut().enumerate() {
                let blk = (j + i) * nb + b;
                // the rows two passes on into L2, as the bf16 kernel streams (a hint: past the
                // task's rows it fetches nothing useful and never faults)
                _mm_prefetch::<_MM_HINT_T1>(
                    q.as_ptr().wrapping_add((blk + 2 * R * nb) * qb) as *const i8
                );
                *w = block(
                    kind,
                    q.as_ptr().add(blk * qb),
                    _mm512_set1_ps(*s.get_unchecked(blk)),
                );
            }
            for r in 0..G {
                let xr = xp.add(r * k + b * BLOCK);
                let (x0, x1) = (_mm512_loadu_ps(xr), _mm512_loadu_ps(xr.add(16)));
                for i in 0..R {
                    let a = &mut acc[i][r];
                    *a = _mm512_fmadd_ps(x0, w[i].0, *a);
                    *a = _mm512_fmadd_ps(x1, w[i].1, *a);
                }
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            for (r, a) in acc.iter().enumerate() {
                out[(j + i) * at.m + at.r0 + r] = _mm512_reduce_add_ps(*a);
            }
        }
    }

    /// One weight row's `s.len()` blocks into f32 (exact: a quant times its scale).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn dequantize_f32(kind: Quantize, q: &[u8], s: &[f32], row: &mut [f32]) {
        let qb = kind.block_bytes();
        debug_assert!(q.len() >= s.len() * qb && row.len() >= s.len() * BLOCK);
        let out = row.as_mut_ptr();
        for (b, &d) in s.iter().enumerate() {
            let (w0, w1) = block(kind, q.as_ptr().add(b * qb), _mm512_set1_ps(d));
            _mm512_storeu_ps(out.add(b * BLOCK), w0);
            _mm512_storeu_ps(out.add(b * BLOCK + 16), w1);
        }
    }

    /// One weight row's `s.len()` blocks into bf16 (`vcvtneps2bf16`, nearest even).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(super) unsafe fn dequantize_bf16(
        kind: Quantize,
        q: &[u8],
        s: &[f32],
        row: &mut [half::bf16],
    ) {
        let qb = kind.block_bytes();
        debug_assert!(q.len() >= s.len() * qb && row.len() >= s.len() * BLOCK);
        let out = row.as_mut_ptr() as *mut u16;
        for (b, &d) in s.iter().enumerate() {
            let (w0, w1) = block(kind, q.as_ptr().add(b * qb), _mm512_set1_ps(d));
            let o = out.add(b * BLOCK);
            _mm256_storeu_si256(
                o as *mut __m256i,
                std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(w0)),
            );
            _mm256_storeu_si256(
                o.add(16) as *mut __m256i,
                std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(w1)),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 copy of the q4k search gives the portable copy's bytes and scale, bit for bit:
    /// on Gaussian-like blocks, blocks on a grid (where `(v - m) / d` lands on exact halves, the
    /// ties of rounding), constant and two-valued blocks, and blocks of mixed magnitudes.
    #[test]
    fn q4k_avx2_matches_portable() {
        #[cfg(target_arch = "x86_64")]
        {
            if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
                eprintln!("skipped: this CPU has no AVX2 + FMA");
                return;
            }
            let mut state = 0x9e37_79b9_7f4a_7c15u64;
            let mut next = move || {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            };
            let mut blocks: Vec<[f32; BLOCK]> = Vec::new();
            for b in 0..4000 {
                let scale = [1e-3, 0.02, 1.0, 300.0][b % 4];
                let block: [f32; BLOCK] = std::array::from_fn(|i| match b % 5 {
                    // a grid of half steps: exact ties for the plain candidate
                    0 => (((next() + 0.5) * 31.0) as i32) as f32 * 0.5 * scale,
                    1 => {
                        if i % 2 == 0 {
                            scale
                        } else {
                            -scale
                        }
                    }
                    2 if b % 10 == 2 => scale,
                    _ => (next() + next() + next()) * scale,
                });
                blocks.push(block);
            }
            for (b, x) in blocks.iter().enumerate() {
                let (mut qp, mut qa) = ([0u8; 20], [0u8; 20]);
                let dp = q4k_block::<Q4kPortable>(x, &mut qp);
                // SAFETY: AVX2 + FMA detected above.
                let da = unsafe { q4k_avx2(x, &mut qa) };
                assert_eq!(dp.to_bits(), da.to_bits(), "block {b}: scale");
                assert_eq!(qp, qa, "block {b}: quants and minimum");
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        eprintln!("skipped: no AVX2 copy on this architecture");
    }

    /// The AVX2 dequantization gives the scalar [`Quantize::block`]'s values, bit for bit, in
    /// every format (blocks of several magnitudes, a constant block, odd block counts).
    #[test]
    fn avx2_dequantize_matches_scalar_blocks() {
        #[cfg(target_arch = "x86_64")]
        {
            if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
                eprintln!("skipped: this CPU has no AVX2 + FMA");
                return;
            }
            // SAFETY: AVX2 + FMA detected above; one row of nb blocks.
            check_dequantize(|kind, q, s, row| unsafe { avx2::dequantize_f32(kind, q, s, row) });
        }
        #[cfg(not(target_arch = "x86_64"))]
        eprintln!("skipped: no AVX2 copy on this architecture");
    }

    /// The AVX-512 dequantization gives the scalar blocks' values bit for bit in f32, and those
    /// values rounded to the nearest bf16 (ties to even) in bf16: the blocks the quantized
    /// prefill GEMMs read.
    #[test]
    fn avx512_dequantize_matches_scalar_blocks() {
        #[cfg(target_arch = "x86_64")]
        {
            let needed = ["avx512f", "avx512bw", "avx512vl"];
            if !(is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl"))
            {
                eprintln!("skipped: this CPU lacks one of {needed:?}");
                return;
            }
            // SAFETY: AVX-512 F/BW/VL detected above; one row of nb blocks.
            check_dequantize(|kind, q, s, row| unsafe { avx512::dequantize_f32(kind, q, s, row) });
            if !is_x86_feature_detected!("avx512bf16") {
                eprintln!("skipped the bf16 half: this CPU has no AVX512-BF16");
                return;
            }
            check_dequantize(|kind, q, s, row| {
                let mut h = vec![half::bf16::from_f32(f32::NAN); row.len()];
                // SAFETY: AVX-512 F/BW/VL and BF16 detected above; one row of nb blocks.
                unsafe { avx512::dequantize_bf16(kind, q, s, &mut h) };
                // the exact values rounded once: compare against the scalar block rounded
                let mut exact = vec![0f32; row.len()];
                for (b, e) in exact.chunks_exact_mut(BLOCK).enumerate().take(s.len()) {
                    let mut w = [0f32; BLOCK];
                    kind.block(&q[b * kind.block_bytes()..], s[b], &mut w);
                    e.copy_from_slice(&w);
                }
                for (i, (o, (h, e))) in row.iter_mut().zip(h.iter().zip(&exact)).enumerate() {
                    assert_eq!(*h, half::bf16::from_f32(*e), "{kind:?} bf16 weight {i}");
                    *o = *e;
                }
            });
        }
        #[cfg(not(target_arch = "x86_64"))]
        eprintln!("skipped: no AVX-512 copy on this architecture");
    }

    /// Dequantizes rows of every format with `run` and compares each weight with the scalar
    /// [`Quantize::block`], bit for bit.
    #[cfg(target_arch = "x86_64")]
    fn check_dequantize(run: impl Fn(Quantize, &[u8], &[f32], &mut [f32])) {
        {
            let (n, k) = (7, 5 * BLOCK);
            let w: Vec<f32> = (0..n * k)
                .map(|i| {
                    let v = ((i * 7919 + 13) % 1009) as f32 / 1009.0 - 0.45;
                    if i / BLOCK == 3 {
                        0.25
                    } else {
                        v * [1e-3, 0.1, 7.0][i % 3]
                    }
                })
                .collect();
            for kind in Quantize::ALL {
                let qw = QWeight::quantize(&w, n, k, kind);
                let (nb, qb) = (k / BLOCK, kind.block_bytes());
                for r in 0..n {
                    let q = &qw.quants()[r * nb * qb..(r + 1) * nb * qb];
                    let s = &qw.scales()[r * nb..(r + 1) * nb];
                    let mut row = vec![f32::NAN; k];
                    run(kind, q, s, &mut row);
                    let mut want = [0f32; BLOCK];
                    for b in 0..nb {
                        kind.block(&q[b * qb..(b + 1) * qb], s[b], &mut want);
                        for (t, (a, e)) in row[b * BLOCK..].iter().zip(&want).enumerate() {
                            assert_eq!(
                                a.to_bits(),
                                e.to_bits(),
                                "{kind:?} row {r} block {b} weight {t}"
                            );
                        }
                    }
                }
            }
        }
    }
}
