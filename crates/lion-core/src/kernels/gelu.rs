//! erf-GELU (exact), with its backward.

use super::*;

pub(super) struct GeluErf;
pub(super) struct GeluErfGrad;

pub(super) const SQRT_1_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
// 1 / sqrt(2 pi)
pub(super) const INV_SQRT_2PI: f32 = 0.398_942_3;

pub(super) fn map_par(x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(16 * 1024)
        .zip(x.par_chunks(16 * 1024))
        .for_each(|(yc, xc)| yc.iter_mut().zip(xc).for_each(|(o, &v)| *o = f(v)));
    y
}

#[inline(always)]
pub(super) fn gelu(v: f32) -> f32 {
    0.5 * v * (1.0 + erf(v * SQRT_1_2))
}

#[inline(always)]
pub(super) fn gelu_grad(v: f32) -> f32 {
    let cdf = 0.5 * (1.0 + erf(v * SQRT_1_2));
    cdf + v * INV_SQRT_2PI * exp(-0.5 * v * v)
}

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "lion-gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        Ok((CpuStorage::F32(map_par(x, gelu)), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(&g.contiguous()?, &GeluErfGrad)?))
    }
}

/// The GELU input gradient from x and the output gradient g: `g * gelu'(x)`, one pass.
impl CustomOp2 for GeluErfGrad {
    fn name(&self) -> &'static str {
        "lion-gelu-erf-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, g) = same_shape_f32(s1, l1, s2, l2, self.name())?;
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(16 * 1024)
            .zip(x.par_chunks(16 * 1024).zip(g.par_chunks(16 * 1024)))
            .for_each(|(dc, (xc, gc))| {
                for ((o, &v), &gv) in dc.iter_mut().zip(xc).zip(gc) {
                    *o = gv * gelu_grad(v);
                }
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Exact (erf) GELU, `nn.GELU()`.
pub fn gelu_erf(xs: &Tensor) -> Result<Tensor> {
    if use_kernel(xs) {
        xs.contiguous()?.apply_op1(GeluErf)
    } else {
        xs.gelu_erf()
    }
}
