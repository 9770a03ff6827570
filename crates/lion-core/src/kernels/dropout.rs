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
