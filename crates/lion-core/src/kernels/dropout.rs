//! Inverted dropout with a hashed, seedable mask.

use super::*;

/// Inverted dropout whose mask is a hash of (seed, element index): generated in parallel inside
/// the kernel, never stored; the backward pass regenerates it from the seed (the gradient is the
/// same op applied to the incoming gradient).
pub(super) struct Dropout {
    pub(super) p: f32,
    pub(super) seed: u64,
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
        // SAFETY: the chunks cover `y`, and `apply_dropout` writes every element of its chunk.
        let mut y = unsafe { uninit_f32(x.len()) };
        const CHUNK: usize = 1 << 14;
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .enumerate()
            .for_each(|(c, (yc, xc))| apply_dropout(key, (c * CHUNK) as u64, thr, scale, xc, yc));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(g.contiguous()?.apply_op1(Dropout {
            p: self.p,
            seed: self.seed,
        })?))
    }
}

/// A dropout path: `(key, base, thr, scale, x, y)` as [`apply_dropout`], any length.
pub type DropoutFn = fn(u64, u64, u64, f32, &[f32], &mut [f32]);

/// `y[i] = x[i] * scale`, or 0 where the hash of element `base + i` is below `thr`: on the
/// first of [`apply_dropout_paths`] this CPU runs (the same SplitMix64 on 64-bit lanes, so the
/// same mask bit for bit), else one element at a time ([`apply_dropout_scalar`]).
pub fn apply_dropout(key: u64, base: u64, thr: u64, scale: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "dropout: input and output lengths");
    match apply_dropout_paths().first() {
        Some(&(_, f)) => f(key, base, thr, scale, x, y),
        None => apply_dropout_scalar(key, base, thr, scale, x, y),
    }
}

/// The vector paths of [`apply_dropout`] this CPU runs (and `LION_CPU` allows), fastest first:
/// AVX-512 F/VL/DQ (16 lanes, native 64-bit multiplies), AVX2 (8 lanes, each 64-bit multiply
/// made of three 32 x 32 -> 64-bit ones). Each handles any length (the tail one element at a
/// time) and gives [`apply_dropout_scalar`]'s output bit for bit.
pub fn apply_dropout_paths() -> Vec<(&'static str, DropoutFn)> {
    #[allow(unused_mut)]
    let mut paths: Vec<(&'static str, DropoutFn)> = vec![];
    #[cfg(target_arch = "x86_64")]
    {
        let f = crate::cpu::features();
        if f.avx512() && f.avx512dq {
            paths.push(("avx512", |key, base, thr, scale, x, y| {
                let full = x.len() / 16 * 16;
                // SAFETY: AVX-512 F/BW/VL and DQ were detected (and not capped by LION_CPU);
                // both slices hold `full` values.
                unsafe { avx512::apply(key, base, thr, scale, &x[..full], &mut y[..full]) };
                let b = base.wrapping_add(full as u64);
                apply_dropout_scalar(key, b, thr, scale, &x[full..], &mut y[full..]);
            }));
        }
        if f.avx2 {
            paths.push(("avx2", |key, base, thr, scale, x, y| {
                let full = x.len() / 8 * 8;
                // SAFETY: AVX2 was detected (and not capped by LION_CPU); both slices hold
                // `full` values.
                unsafe { avx2::apply(key, base, thr, scale, &x[..full], &mut y[..full]) };
                let b = base.wrapping_add(full as u64);
                apply_dropout_scalar(key, b, thr, scale, &x[full..], &mut y[full..]);
            }));
        }
    }
    paths
}

/// [`apply_dropout`] one element at a time (the reference of the vector path).
pub fn apply_dropout_scalar(key: u64, base: u64, thr: u64, scale: f32, x: &[f32], y: &mut [f32]) {
    for (i, (o, &v)) in y.iter_mut().zip(x).enumerate() {
        let h = mix64(key ^ base.wrapping_add(i as u64)) >> 32;
        *o = if h < thr { 0.0 } else { v * scale };
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// SplitMix64 of 8 lanes (see `lion_rng::splitmix64`).
    #[target_feature(enable = "avx512f,avx512vl,avx512dq")]
    #[inline]
    unsafe fn mix(x: __m512i) -> __m512i {
        let z = _mm512_add_epi64(x, _mm512_set1_epi64(lion_rng::GAMMA as i64));
        let z = _mm512_mullo_epi64(
            _mm512_xor_si512(z, _mm512_srli_epi64::<30>(z)),
            _mm512_set1_epi64(0xBF58_476D_1CE4_E5B9u64 as i64),
        );
        let z = _mm512_mullo_epi64(
            _mm512_xor_si512(z, _mm512_srli_epi64::<27>(z)),
            _mm512_set1_epi64(0x94D0_49BB_1331_11EBu64 as i64),
        );
        _mm512_xor_si512(z, _mm512_srli_epi64::<31>(z))
    }

    /// [`super::apply_dropout`] on a multiple of 16 values.
    ///
    /// # Safety
    /// AVX-512 F/VL/DQ; `x.len() == y.len()`, a multiple of 16.
    #[target_feature(enable = "avx512f,avx512vl,avx512dq")]
    pub(super) unsafe fn apply(
        key: u64,
        base: u64,
        thr: u64,
        scale: f32,
        x: &[f32],
        y: &mut [f32],
    ) {
        debug_assert!(x.len() == y.len() && x.len() % 16 == 0);
        let key = _mm512_set1_epi64(key as i64);
        let thr = _mm512_set1_epi64(thr as i64);
        let sc = _mm512_set1_ps(scale);
        let step = _mm512_set1_epi64(16);
        let mut lo = _mm512_add_epi64(
            _mm512_set1_epi64(base as i64),
            _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0),
        );
        let mut hi = _mm512_add_epi64(lo, _mm512_set1_epi64(8));
        for (xc, yc) in x.chunks_exact(16).zip(y.chunks_exact_mut(16)) {
            let hl = _mm512_srli_epi64::<32>(mix(_mm512_xor_si512(key, lo)));
            let hh = _mm512_srli_epi64::<32>(mix(_mm512_xor_si512(key, hi)));
            // keep where the hash is not below the threshold (unsigned)
            let keep = (_mm512_cmpge_epu64_mask(hl, thr) as u16)
                | ((_mm512_cmpge_epu64_mask(hh, thr) as u16) << 8);
            let v = _mm512_loadu_ps(xc.as_ptr());
            _mm512_storeu_ps(yc.as_mut_ptr(), _mm512_maskz_mul_ps(keep, v, sc));
            lo = _mm512_add_epi64(lo, step);
            hi = _mm512_add_epi64(hi, step);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// The low 64 bits of `a * b` per lane, from three 32 x 32 -> 64-bit products (AVX2 has no
    /// 64-bit multiply): `lo(a) lo(b) + ((hi(a) lo(b) + lo(a) hi(b)) << 32)`; `b_hi` holds
    /// `b >> 32` in each lane.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn mullo(a: __m256i, b: __m256i, b_hi: __m256i) -> __m256i {
        let low = _mm256_mul_epu32(a, b);
        let cross = _mm256_add_epi64(
            _mm256_mul_epu32(_mm256_srli_epi64::<32>(a), b),
            _mm256_mul_epu32(a, b_hi),
        );
        _mm256_add_epi64(low, _mm256_slli_epi64::<32>(cross))
    }

    /// SplitMix64 of 4 lanes (see `lion_rng::splitmix64`).
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn mix(x: __m256i) -> __m256i {
        const C1: u64 = 0xBF58_476D_1CE4_E5B9;
        const C2: u64 = 0x94D0_49BB_1331_11EB;
        let c = |v: u64| _mm256_set1_epi64x(v as i64);
        let z = _mm256_add_epi64(x, c(lion_rng::GAMMA));
        let z = mullo(
            _mm256_xor_si256(z, _mm256_srli_epi64::<30>(z)),
            c(C1),
            c(C1 >> 32),
        );
        let z = mullo(
            _mm256_xor_si256(z, _mm256_srli_epi64::<27>(z)),
            c(C2),
            c(C2 >> 32),
        );
        _mm256_xor_si256(z, _mm256_srli_epi64::<31>(z))
    }

    /// [`super::apply_dropout`] on a multiple of 8 values.
    ///
    /// # Safety
    /// AVX2; `x.len() == y.len()`, a multiple of 8.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn apply(
        key: u64,
        base: u64,
        thr: u64,
        scale: f32,
        x: &[f32],
        y: &mut [f32],
    ) {
        debug_assert!(x.len() == y.len() && x.len() % 8 == 0);
        let key = _mm256_set1_epi64x(key as i64);
        // the hashes are < 2^32 and thr <= 2^32, so the signed 64-bit compare is exact
        let thr = _mm256_set1_epi64x(thr as i64);
        let sc = _mm256_set1_ps(scale);
        let step = _mm256_set1_epi64x(8);
        let mut lo = _mm256_add_epi64(
            _mm256_set1_epi64x(base as i64),
            _mm256_set_epi64x(3, 2, 1, 0),
        );
        let mut hi = _mm256_add_epi64(lo, _mm256_set1_epi64x(4));
        for (xc, yc) in x.chunks_exact(8).zip(y.chunks_exact_mut(8)) {
            let hl = _mm256_srli_epi64::<32>(mix(_mm256_xor_si256(key, lo)));
            let hh = _mm256_srli_epi64::<32>(mix(_mm256_xor_si256(key, hi)));
            // all ones where dropped (thr > hash), per 64-bit lane; then the low halves of
            // lanes 0-3 of each in order: the shuffle gives (l0 l1 h0 h1 | l2 l3 h2 h3) in
            // 64-bit pairs, the permute puts the pairs back as (l0 l1 l2 l3 h0 h1 h2 h3)
            let dl = _mm256_castsi256_ps(_mm256_cmpgt_epi64(thr, hl));
            let dh = _mm256_castsi256_ps(_mm256_cmpgt_epi64(thr, hh));
            let drop = _mm256_castsi256_ps(_mm256_permute4x64_epi64::<0b11_01_10_00>(
                _mm256_castps_si256(_mm256_shuffle_ps::<0b10_00_10_00>(dl, dh)),
            ));
            let v = _mm256_mul_ps(_mm256_loadu_ps(xc.as_ptr()), sc);
            _mm256_storeu_ps(yc.as_mut_ptr(), _mm256_andnot_ps(drop, v));
            lo = _mm256_add_epi64(lo, step);
            hi = _mm256_add_epi64(hi, step);
        }
    }
}

pub(super) static DROPOUT_START: std::sync::Mutex<Option<u64>> = std::sync::Mutex::new(None);
pub(super) static DROPOUT_COUNTER: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);

/// Makes the fused dropout masks reproducible: from here on, the n-th dropout call of the
/// process draws its mask from (`seed`, n). Without it the start is random per process.
pub fn seed_dropout(seed: u64) {
    *DROPOUT_START.lock().unwrap_or_else(|e| e.into_inner()) = Some(mix64(seed ^ 0x5EED));
    DROPOUT_COUNTER.store(0, std::sync::atomic::Ordering::SeqCst);
}

/// A fresh seed per call: a start (random per process unless [`seed_dropout`]) plus a counter.
pub(super) fn next_seed() -> u64 {
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
