//! Fused attention: `softmax(scale * q k^T + biases) v` with dropout, and its backward.

use super::*;
use crate::sgemm::bmm;

/// `softmax(scale * q k^T + biases) v` with dropout `p` on the probabilities (T5: scale 1;
/// BERT: 1/sqrt(d), applied to the scores as HF does): q (b, h, q, d), k and v (b, h, k, d), each
/// bias additive and broadcastable to (b, h, q, k) -> (b, h, q, d).
///
/// When q, k or v takes part in autograd (training), the f32 CPU case runs as one candle op
/// whose backward is written out (dV = P'^T dO, dP' = dO V^T, dP = dropout(dP'), dS = softmax
/// grad, dQ = dS K, dK = dS^T Q): one graph node instead of seven (matmul, transpose, bias and
/// mask adds, softmax, dropout, matmul), each of which candle's backward would give a zeroed
/// gradient buffer and an extra pass over the (b, h, q, k) scores, the constant biases
/// included. The forward keeps only the probabilities for the backward. Biases that need a
/// gradient themselves, other dtypes and devices, and inference (nothing tracked) run the plain
/// composition, which is also the reference of the tests.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    biases: &[&Tensor],
    p: f32,
) -> Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        candle_core::bail!("attention dropout probability has to be in [0, 1), got {p}")
    }
    let tracked = q.track_op() || k.track_op() || v.track_op();
    let fused =
        tracked && [q, k, v].iter().all(|t| use_kernel(t)) && biases.iter().all(|b| !b.track_op());
    if !fused {
        return attention_composed(q, k, v, scale, biases, p);
    }
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let op = Attention {
        q: q.detach(),
        k: k.detach(),
        v: v.detach(),
        scale,
        biases: biases.iter().map(|b| b.detach()).collect(),
        p,
        seed: if p > 0.0 { next_seed() } else { 0 },
        saved: std::sync::Mutex::new(None),
    };
    q.apply_op3(&k, &v, op)
}

/// The composition [`attention`] fuses (and runs when it does not): the softmax in f32 for other
/// dtypes.
pub fn attention_composed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    biases: &[&Tensor],
    p: f32,
) -> Result<Tensor> {
    let mut scores = bmm(q, &k.t()?)?;
    if scale != 1.0 {
        scores = (scores * scale)?;
    }
    for b in biases {
        scores = scores.broadcast_add(b)?;
    }
    // in f32 for reduced-precision inputs, as HF's T5 does
    let probs = softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(scores.dtype())?;
    let probs = if p > 0.0 { dropout(&probs, p)? } else { probs };
    bmm(&probs, v)
}

pub(super) struct Attention {
    /// Detached views of the inputs (the same storage): the forward multiplies them with
    /// candle's GEMM.
    q: Tensor,
    k: Tensor,
    v: Tensor,
    scale: f64,
    biases: Vec<Tensor>,
    p: f32,
    seed: u64,
    /// The softmax probabilities of the forward (before dropout), taken by the backward.
    saved: std::sync::Mutex<Option<Tensor>>,
}

impl Attention {
    fn dropout_mask(&self, xs: &Tensor) -> Result<Tensor> {
        if self.p > 0.0 {
            xs.apply_op1_no_bwd(&Dropout {
                p: self.p,
                seed: self.seed,
            })
        } else {
            Ok(xs.clone())
        }
    }

    fn probs(&self) -> Result<Tensor> {
        let mut scores = bmm(&self.q, &self.k.t()?)?;
        if self.scale != 1.0 {
            scores = (scores * self.scale)?;
        }
        for b in &self.biases {
            scores = scores.broadcast_add(b)?;
        }
        scores.apply_op1_no_bwd(&Softmax)
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "lion-attention"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let probs = self.probs()?;
        let out = bmm(&self.dropout_mask(&probs)?, &self.v)?;
        *self.saved.lock().unwrap_or_else(|e| e.into_inner()) = Some(probs);
        let shape = out.shape().clone();
        Ok((CpuStorage::F32(out.flatten_all()?.to_vec1()?), shape))
    }

    fn bwd(
        &self,
        _q: &Tensor,
        _k: &Tensor,
        _v: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let saved = self.saved.lock().unwrap_or_else(|e| e.into_inner()).take();
        let probs = match saved {
            Some(p) => p,
            None => self.probs()?, // a second backward: recompute
        };
        let g = g.detach().contiguous()?;
        let dv = bmm(&self.dropout_mask(&probs)?.t()?, &g)?;
        let dprobs = self.dropout_mask(&bmm(&g, &self.v.t()?)?)?;
        let dscores = probs.apply_op2_no_bwd(&dprobs, &SoftmaxGrad)?;
        let mut dq = bmm(&dscores, &self.k)?;
        let mut dk = bmm(&dscores.t()?, &self.q)?;
        if self.scale != 1.0 {
            // d(scale * q k^T): the scale on the (smaller) q and k gradients
            dq = (dq * self.scale)?;
            dk = (dk * self.scale)?;
        }
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}
