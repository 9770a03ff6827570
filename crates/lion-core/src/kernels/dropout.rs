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
        let mut y = vec![0f32; x.len()];
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

/// `y[i] = x[i] * scale`, or 0 where the hash of element `base + i` is below `thr`: 16 lanes
/// at a time where the CPU has AVX-512 F/VL/DQ (the same SplitMix64 on 64-bit lanes, so the
/// same mask bit for bit), else one element at a time ([`apply_dropout_scalar`]).
pub fn apply_dropout(key: u64, base: u64, thr: u64, scale: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "dropout: input and output lengths");
    #[cfg(target_arch = "x86_64")]
    {
        let f = crate::cpu::features();
        if f.avx512() && f.avx512dq {
            let full = x.len() / 16 * 16;
            // SAFETY: AVX-512 F/BW/VL and DQ were detected (and not capped by LION_CPU); both
            // slices hold `full` values.
            unsafe { avx512::apply(key, base, thr, scale, &x[..full], &mut y[..full]) };
            apply_dropout_scalar(
                key,
                base + full as u64,
                thr,
                scale,
                &x[full..],
                &mut y[full..],
            );
            return;
        }
    }
    apply_dropout_scalar(key, base, thr, scale, x, y)
}

/// [`apply_dropout`] one element at a time (the reference of the vector path).
pub fn apply_dropout_scalar(key: u64, base: u64, thr: u64, scale: f32, x: &[f32], y: &mut [f32]) {
    for (i, (o, &v)) in y.iter_mut().zip(x).enumerate() {
        let h = mix64(key ^ (base + i as u64)) >> 32;
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
