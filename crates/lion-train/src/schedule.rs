//! LAVIS-style learning-rate schedule, stepped every optimizer step: a linear warmup from
//! `warmup_lr` to `init_lr` over `warmup_steps`, then a cosine from `init_lr` to `min_lr` over the
//! remaining steps.
//!
//! Differences from upstream (`LAVIS common/optims.py`, docs/DESIGN.md §4, "Training"): upstream's warmup
//! starts at `init_lr` when `warmup_lr` is unset (a no-op warmup); here `warmup_lr` defaults to 0
//! so the warmup really warms. Upstream's cosine is per epoch; here it is per step (smooth).

use serde::{Deserialize, Serialize};

/// The schedule settings (all lrs before the group's `lr_scale`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    pub init_lr: f64,
    #[serde(default)]
    pub min_lr: f64,
    #[serde(default)]
    pub warmup_lr: f64,
    #[serde(default)]
    pub warmup_steps: u64,
}

impl Schedule {
    /// The lr of optimizer step `step` (0-based) of `total` steps.
    pub fn lr(&self, step: u64, total: u64) -> f64 {
        if step < self.warmup_steps {
            let f = step as f64 / self.warmup_steps as f64;
            return self.warmup_lr + (self.init_lr - self.warmup_lr) * f;
        }
        let span = total.saturating_sub(self.warmup_steps).max(1) as f64;
        let t = ((step - self.warmup_steps) as f64 / span).min(1.0);
        self.min_lr + (self.init_lr - self.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_really_warms_then_cosine_decays() {
        let s = Schedule {
            init_lr: 1e-4,
            min_lr: 1e-6,
            warmup_lr: 0.0,
            warmup_steps: 10,
        };
        assert_eq!(s.lr(0, 110), 0.0);
        assert!((s.lr(5, 110) - 5e-5).abs() < 1e-12);
        assert!((s.lr(10, 110) - 1e-4).abs() < 1e-12);
        assert!((s.lr(60, 110) - (1e-6 + (1e-4 - 1e-6) * 0.5)).abs() < 1e-12);
        assert!((s.lr(110, 110) - 1e-6).abs() < 1e-12);
        let mut prev = f64::MAX;
        for k in 10..=110 {
            let l = s.lr(k, 110);
            assert!(l <= prev);
            prev = l;
        }
    }
}
