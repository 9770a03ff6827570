//! A linear layer whose backward pass skips the weight gradient when the weight is frozen.
//!
//! candle's matmul backward always computes both operand gradients: in PEFT training (adapters
//! trainable, backbone frozen) every backbone linear would spend a full extra GEMM, and a
//! weight-sized buffer, on a gradient nobody reads. [`Linear`] runs `x @ W^T` as a candle
//! [`CustomOp2`] (the same CPU GEMM; [`crate::skinny`] for up to 8 f32 rows, as in decoding)
//! whose `bwd` returns the input gradient, and the weight gradient only when the weight takes
//! part in autograd (`track_op`). Other devices use
//! `candle_nn::Linear`. Tested against `candle_nn::Linear`, forward and backward (tests/linear.rs).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Module, Result, Shape, Tensor};

use crate::skinny;

struct MatmulWt;

impl CustomOp2 for MatmulWt {
    fn name(&self) -> &'static str {
        "lion-linear"
    }

    /// x (..., k) contiguous, w (n, k) -> (..., n)
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = l1.dims();
        let k = *dims.last().expect("rank checked by the caller");
        let (n, k2) = match l2.dims() {
            [n, k2] => (*n, *k2),
            d => candle_core::bail!("lion-linear: weight must be 2-d, got {d:?}"),
        };
        if k != k2 {
            candle_core::bail!("lion-linear: input width {k} != weight width {k2}")
        }
        if !l1.is_contiguous() {
            candle_core::bail!("lion-linear: input must be contiguous")
        }
        let m = l1.shape().elem_count() / k.max(1);
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("non-empty") = n;
        if let (CpuStorage::F32(xs), CpuStorage::F32(ws), Some((w0, w1))) =
            (s1, s2, l2.contiguous_offsets())
        {
            if (1..=skinny::MAX_ROWS).contains(&m) {
                let x0 = l1.start_offset();
                let y = skinny::matmul_wt(&xs[x0..x0 + m * k], m, k, &ws[w0..w1], n);
                return Ok((CpuStorage::F32(y), Shape::from(shape)));
            }
        }
        let lhs = Layout::contiguous_with_offset((m, k), l1.start_offset());
        let rhs = l2.transpose(0, 1)?;
        let out = s1.matmul(s2, (1, m, n, k), &lhs, &rhs)?;
        Ok((out, Shape::from(shape)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, k) = w.dims2()?;
        let m = x.elem_count() / k.max(1);
        let g = grad.reshape((m, n))?;
        let gx = g.matmul(w)?.reshape(x.shape())?;
        let gw = if w.track_op() {
            Some(g.t()?.matmul(&x.reshape((m, k))?)?)
        } else {
            None
        };
        Ok((Some(gx), gw))
    }
}

/// `x @ W^T (+ b)` with weight (out, in) and optional bias (out,), as `candle_nn::Linear`.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

impl Module for Linear {
    /// xs: (..., in) -> (..., out)
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let cpu = xs.device().is_cpu()
            && self.weight.device().is_cpu()
            && xs.dtype() == self.weight.dtype()
            && xs.rank() >= 1
            && self.weight.rank() == 2;
        if !cpu {
            return candle_nn::Linear::new(self.weight.clone(), self.bias.clone()).forward(xs);
        }
        let y = xs.contiguous()?.apply_op2(&self.weight, MatmulWt)?;
        match &self.bias {
            Some(b) => crate::kernels::add_bias(&y, b),
            None => Ok(y),
        }
    }
}
