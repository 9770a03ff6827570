//! Softmax over the last dimension, with its backward.

use super::*;

pub(super) struct Softmax;

impl Row for Softmax {
    #[inline(always)]
    fn row(&self, yr: &mut [f32], xr: &[f32], _: &[f32]) {
        let max = max_lanes(xr);
        for (o, &v) in yr.iter_mut().zip(xr) {
            *o = exp(v - max);
        }
        let inv = 1.0 / sum_lanes(yr);
        for o in yr.iter_mut() {
            *o *= inv;
        }
    }
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "lion-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let y = map_rows(x, last_dim(l), self);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    /// dy/dx: y * (g - sum(g * y)), one fused pass ([`SoftmaxGrad`])
    fn bwd(&self, _arg: &Tensor, res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(res.apply_op2_no_bwd(&g.contiguous()?, &SoftmaxGrad)?))
    }
}

/// The softmax input gradient from its output y and the output gradient g, per row:
/// `y * (g - sum(g * y))`. One parallel pass (the composition took four single-threaded
/// passes and three temporaries over every attention-probability tensor).
pub(super) struct SoftmaxGrad;

impl Row for SoftmaxGrad {
    /// `x` is the softmax output y, `g` the output gradient.
    #[inline(always)]
    fn row(&self, dr: &mut [f32], yr: &[f32], gr: &[f32]) {
        let dot = dot_lanes(yr, gr);
        for ((o, &yv), &gv) in dr.iter_mut().zip(yr).zip(gr) {
            *o = yv * (gv - dot);
        }
    }
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "lion-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (y, g) = same_shape_f32(s1, l1, s2, l2, self.name())?;
        let dx = map_rows2(y, g, last_dim(l1), self);
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Softmax over the last dimension.
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    if use_kernel(xs) {
        xs.contiguous()?.apply_op1(Softmax)
    } else {
        candle_nn::ops::softmax(xs, D::Minus1)
    }
}
