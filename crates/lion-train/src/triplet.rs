//! Triplet margin loss with PyTorch `nn.TripletMarginLoss` semantics (no swap, mean reduction):
//! `mean(max(d(a, p) - d(a, n) + margin, 0))` with `d(x, y) = ||x - y + eps||_p`, eps = 1e-6,
//! as `torch.nn.functional.pairwise_distance` computes it (the eps is added to the difference).
//!
//! `squared: true` is FaceNet's form (Schroff et al. 2015): `d(x, y)^p` in place of `d(x, y)`,
//! i.e. squared Euclidean distances at p = 2. On unit vectors its gradient on the anchor,
//! `2 (n - p)`, does not shrink as the anchor nears its positive, so it drives out the direction
//! every caption shares; the unsquared loss settles where that pull balances (see
//! `docs/DESIGN.md`, the tag encoder).

use candle_core::{Result, Tensor, D};

/// `TripletMarginLoss(margin, p, eps)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TripletMarginLoss {
    pub margin: f64,
    /// Norm degree (> 0). 2 is the Euclidean distance.
    pub p: f64,
    pub eps: f64,
    /// FaceNet's squared distances (`d^p`) instead of PyTorch's `d`.
    pub squared: bool,
}

impl Default for TripletMarginLoss {
    fn default() -> Self {
        Self {
            margin: 1.0,
            p: 2.0,
            eps: 1e-6,
            squared: false,
        }
    }
}

impl TripletMarginLoss {
    pub fn new(margin: f64, p: f64) -> Self {
        Self {
            margin,
            p,
            ..Default::default()
        }
    }

    /// anchor, positive, negative: (b, d) -> scalar loss
    pub fn forward(&self, anchor: &Tensor, positive: &Tensor, negative: &Tensor) -> Result<Tensor> {
        let (d_pos, d_neg) = if self.squared {
            (
                pairwise_distance_pow(anchor, positive, self.p, self.eps)?,
                pairwise_distance_pow(anchor, negative, self.p, self.eps)?,
            )
        } else {
            (
                pairwise_distance(anchor, positive, self.p, self.eps)?,
                pairwise_distance(anchor, negative, self.p, self.eps)?,
            )
        };
        let x = ((d_pos - d_neg)? + self.margin)?;
        // candle's relu maps NaN to 0; PyTorch's clamp_min keeps it. `0 * x` is exactly 0 (and
        // so is its gradient) for finite x and NaN for NaN x, so a NaN input gives a NaN loss.
        (x.relu()? + (&x * 0.0)?)?.mean_all()
    }
}

/// `||x - y + eps||_p` per row: (b, d), (b, d) -> (b,)
pub fn pairwise_distance(x: &Tensor, y: &Tensor, p: f64, eps: f64) -> Result<Tensor> {
    let diff = ((x - y)? + eps)?;
    if p == 2.0 {
        diff.sqr()?.sum(D::Minus1)?.sqrt()
    } else if p == 1.0 {
        diff.abs()?.sum(D::Minus1)
    } else {
        diff.abs()?.powf(p)?.sum(D::Minus1)?.powf(1.0 / p)
    }
}

/// `||x - y + eps||_p ^ p` per row (no root): (b, d), (b, d) -> (b,)
pub fn pairwise_distance_pow(x: &Tensor, y: &Tensor, p: f64, eps: f64) -> Result<Tensor> {
    let diff = ((x - y)? + eps)?;
    if p == 2.0 {
        diff.sqr()?.sum(D::Minus1)
    } else if p == 1.0 {
        diff.abs()?.sum(D::Minus1)
    } else {
        diff.abs()?.powf(p)?.sum(D::Minus1)
    }
}

/// Cosine similarity per row: (b, d), (b, d) -> (b,); norms clamped at 1e-8 as PyTorch's
/// `cosine_similarity`.
pub fn cosine_similarity(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let dot = (x * y)?.sum(D::Minus1)?;
    let nx = x.sqr()?.sum(D::Minus1)?.sqrt()?.clamp(1e-8, f64::MAX)?;
    let ny = y.sqr()?.sum(D::Minus1)?.sqrt()?.clamp(1e-8, f64::MAX)?;
    dot / (nx * ny)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn hand_computed_loss() {
        let dev = Device::Cpu;
        let a = Tensor::new(&[[0f32, 0.], [1., 1.]], &dev).unwrap();
        let p = Tensor::new(&[[3f32, 4.], [1., 1.]], &dev).unwrap();
        let n = Tensor::new(&[[0f32, 1.], [1., 4.]], &dev).unwrap();
        let l = TripletMarginLoss {
            margin: 1.0,
            p: 2.0,
            eps: 0.0,
            squared: false,
        };
        // row 0: d+ = 5, d- = 1 -> 5; row 1: d+ = 0, d- = 3 -> max(-2, 0) = 0
        let v = l.forward(&a, &p, &n).unwrap().to_scalar::<f32>().unwrap();
        assert!((v - 2.5).abs() < 1e-6, "{v}");
        let l1 = TripletMarginLoss { p: 1.0, ..l };
        // row 0: d+ = 7, d- = 1 -> 7; row 1: 0
        let v = l1.forward(&a, &p, &n).unwrap().to_scalar::<f32>().unwrap();
        assert!((v - 3.5).abs() < 1e-6, "{v}");
        let l3 = TripletMarginLoss { p: 3.0, ..l };
        // row 0: d+ = (27 + 64)^(1/3), d- = 1
        let want = ((91f64).powf(1.0 / 3.0) - 1.0 + 1.0) / 2.0;
        let v = l3.forward(&a, &p, &n).unwrap().to_scalar::<f32>().unwrap();
        assert!((v as f64 - want).abs() < 1e-5, "{v} vs {want}");
        let sq = TripletMarginLoss { squared: true, ..l };
        // row 0: d+^2 = 25, d-^2 = 1 -> 25; row 1: d+^2 = 0, d-^2 = 9 -> max(-8, 0) = 0
        let v = sq.forward(&a, &p, &n).unwrap().to_scalar::<f32>().unwrap();
        assert!((v - 12.5).abs() < 1e-5, "{v}");
        let sq3 = TripletMarginLoss { p: 3.0, ..sq };
        // row 0: 27 + 64 - 1 + 1
        let v = sq3.forward(&a, &p, &n).unwrap().to_scalar::<f32>().unwrap();
        assert!((v - 45.5).abs() < 1e-4, "{v}");
    }

    #[test]
    fn nan_propagates_as_in_pytorch() {
        let dev = Device::Cpu;
        let a = Tensor::new(&[[0f32, 0.], [1., 1.]], &dev).unwrap();
        let p = Tensor::new(&[[f32::NAN, 4.], [1., 1.]], &dev).unwrap();
        let n = Tensor::new(&[[0f32, 1.], [1., 4.]], &dev).unwrap();
        let v = TripletMarginLoss::default()
            .forward(&a, &p, &n)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(v.is_nan(), "{v}");
    }

    #[test]
    fn eps_is_added_to_the_difference() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[1f32, 1.]], &dev).unwrap();
        let d = pairwise_distance(&x, &x, 2.0, 1e-6).unwrap();
        let v = d.to_vec1::<f32>().unwrap()[0] as f64;
        assert!((v - 2f64.sqrt() * 1e-6).abs() < 1e-9, "{v}");
    }
}
