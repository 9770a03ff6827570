//! RAM's tagging loss: the asymmetric loss (ASL, Ridnik et al. 2021), as `recognize-anything`
//! `ram/models/utils.py` `AsymmetricLoss` with RAM's arguments (`ram.py`: `gamma_neg=7`,
//! `gamma_pos=0`, `clip=0.05`, `eps=1e-8`):
//!
//! `p = sigmoid(x)`, `p_neg = min(1 - p + clip, 1)`,
//! `l = y log(max(p, eps)) + (1 - y) log(max(p_neg, eps))`,
//! `pt = p y + p_neg (1 - y)`, `w = (1 - pt)^(gamma_pos y + gamma_neg (1 - y))`,
//! `loss = -sum(l * w)` (summed over images and tags, not averaged).
//!
//! As upstream (`disable_torch_grad_focal_loss=True`), the focusing weight `w` is a constant in the
//! backward pass: it is computed from detached probabilities.

use candle_core::{DType, Result, Tensor};

/// The asymmetric loss (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AsymmetricLoss {
    pub gamma_neg: f64,
    pub gamma_pos: f64,
    /// Probability margin added to negatives' `1 - p` (0 disables it).
    pub clip: f64,
    pub eps: f64,
}

impl AsymmetricLoss {
    /// RAM's tagging loss: `gamma_neg` 7, `gamma_pos` 0, `clip` 0.05, `eps` 1e-8.
    pub fn ram() -> Self {
        Self {
            gamma_neg: 7.0,
            gamma_pos: 0.0,
            clip: 0.05,
            eps: 1e-8,
        }
    }

    /// logits: (b, c); targets: (b, c) with 1 for a positive tag and 0 otherwise -> scalar loss
    /// (summed over all elements).
    pub fn forward(&self, logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
        if logits.dims() != targets.dims() {
            candle_core::bail!(
                "asymmetric loss: logits {:?} and targets {:?} differ in shape",
                logits.dims(),
                targets.dims()
            )
        }
        let y = targets.to_dtype(logits.dtype())?;
        let p = candle_nn::ops::sigmoid(logits)?;
        let mut p_neg = p.affine(-1.0, 1.0)?;
        if self.clip > 0.0 {
            p_neg = (p_neg + self.clip)?.minimum(1.0)?;
        }
        let los_pos = (&y * p.maximum(self.eps)?.log()?)?;
        let los_neg = (y.affine(-1.0, 1.0)? * p_neg.maximum(self.eps)?.log()?)?;
        let mut loss = (los_pos + los_neg)?;
        if self.gamma_neg > 0.0 || self.gamma_pos > 0.0 {
            let w = self.focusing_weight(&p.detach(), &p_neg.detach(), &y)?;
            loss = (loss * w)?;
        }
        loss.sum_all()?.neg()
    }

    /// `(1 - pt)^gamma` elementwise on detached values (a constant for the backward pass).
    /// Computed on the host so that `0^0 = 1` as in PyTorch's `pow`.
    fn focusing_weight(&self, p: &Tensor, p_neg: &Tensor, y: &Tensor) -> Result<Tensor> {
        let shape = p.shape().clone();
        let f =
            |t: &Tensor| -> Result<Vec<f32>> { t.to_dtype(DType::F32)?.flatten_all()?.to_vec1() };
        let (p, pn, y2) = (f(p)?, f(p_neg)?, f(y)?);
        let w: Vec<f32> = p
            .iter()
            .zip(&pn)
            .zip(&y2)
            .map(|((&p, &pn), &y)| {
                let pt = p * y + pn * (1.0 - y);
                let gamma = self.gamma_pos as f32 * y + self.gamma_neg as f32 * (1.0 - y);
                (1.0 - pt).powf(gamma)
            })
            .collect();
        Tensor::from_vec(w, shape, y.device())?.to_dtype(y.dtype())
    }
}
