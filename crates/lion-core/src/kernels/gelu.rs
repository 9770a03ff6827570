//! erf-GELU (exact) and tanh-GELU (`gelu_new`, Flan-T5's gated FFN), with their backwards.

use super::*;

/// GELU, exact (`TANH = false`: `nn.GELU()`) or tanh-approximated (`TANH = true`: HF's
/// `gelu_new`); the const parameter picks the formula at compile time, so each body is
/// inlined into the per-ISA loops of [`Row`].
pub(super) struct Gelu<const TANH: bool>;
/// The input gradient of [`Gelu`] from x and the output gradient g: `g * gelu'(x)`, one pass.
pub(super) struct GeluGrad<const TANH: bool>;

pub(super) const SQRT_1_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
// 1 / sqrt(2 pi)
pub(super) const INV_SQRT_2PI: f32 = 0.398_942_3;

#[inline(always)]
pub(super) fn gelu(v: f32) -> f32 {
    0.5 * v * (1.0 + erf(v * SQRT_1_2))
}

#[inline(always)]
pub(super) fn gelu_grad(v: f32) -> f32 {
    let cdf = 0.5 * (1.0 + erf(v * SQRT_1_2));
    cdf + v * INV_SQRT_2PI * exp(-0.5 * v * v)
}

/// Exact (erf) GELU, `nn.GELU()`.
pub fn gelu_erf(xs: &Tensor) -> Result<Tensor> {
    if use_kernel(xs) {
        xs.contiguous()?.apply_op1(Gelu::<false>)
    } else {
        xs.gelu_erf()
    }
}

/// sqrt(2 / pi), the tanh-GELU's inner scale.
const SQRT_2_PI: f32 = 0.797_884_6;

/// tanh(y) = sign(y) (1 - 2 / (e^{2|y|} + 1)) through the vectorisable [`exp`]; saturates to
/// +-1 (e^{2|y|} overflows to inf, and 2 / inf = 0). Near 0 the subtraction leaves an absolute
/// error of about one ulp of 1, which is what `1 + tanh(..)` in the GELU rounds to anyway.
#[inline(always)]
fn tanh(y: f32) -> f32 {
    (1.0 - 2.0 / (exp(2.0 * y.abs()) + 1.0)).copysign(y)
}

/// HF's `NewGELUActivation` (`gelu_new`): `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
#[inline(always)]
pub(super) fn gelu_tanh_fn(v: f32) -> f32 {
    0.5 * v * (1.0 + tanh(SQRT_2_PI * (v + 0.044715 * v * v * v)))
}

/// d/dx of [`gelu_tanh_fn`]. Where tanh has saturated (1 - t^2 = 0) the second term is 0, also
/// when `v` is so large that its other factor overflows (0 * inf would be NaN).
#[inline(always)]
fn gelu_tanh_grad(v: f32) -> f32 {
    let t = tanh(SQRT_2_PI * (v + 0.044715 * v * v * v));
    let sech2 = 1.0 - t * t;
    let tail = 0.5 * v * sech2 * SQRT_2_PI * (1.0 + 3.0 * 0.044715 * v * v);
    0.5 * (1.0 + t) + if sech2 == 0.0 { 0.0 } else { tail }
}

impl<const TANH: bool> Row for Gelu<TANH> {
    #[inline(always)]
    fn row(&self, y: &mut [f32], x: &[f32], _: &[f32]) {
        for (o, &v) in y.iter_mut().zip(x) {
            *o = if TANH { gelu_tanh_fn(v) } else { gelu(v) };
        }
    }
}

impl<const TANH: bool> Row for GeluGrad<TANH> {
    #[inline(always)]
    fn row(&self, y: &mut [f32], x: &[f32], g: &[f32]) {
        for ((o, &v), &gv) in y.iter_mut().zip(x).zip(g) {
            *o = gv
                * if TANH {
                    gelu_tanh_grad(v)
                } else {
                    gelu_grad(v)
                };
        }
    }
}

impl<const TANH: bool> CustomOp1 for Gelu<TANH> {
    fn name(&self) -> &'static str {
        if TANH {
            "lion-gelu-tanh"
        } else {
            "lion-gelu-erf"
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        Ok((CpuStorage::F32(map_rows(x, BLOCK, self)), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            arg.apply_op2_no_bwd(&g.contiguous()?, &GeluGrad::<TANH>)?,
        ))
    }
}

impl<const TANH: bool> CustomOp2 for GeluGrad<TANH> {
    fn name(&self) -> &'static str {
        if TANH {
            "lion-gelu-tanh-grad"
        } else {
            "lion-gelu-erf-grad"
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, g) = same_shape_f32(s1, l1, s2, l2, self.name())?;
        Ok((
            CpuStorage::F32(map_rows2(x, g, BLOCK, self)),
            l1.shape().clone(),
        ))
    }
}

/// tanh-approximated GELU (HF `gelu_new`, candle's `gelu`): one parallel, vectorised pass
/// (candle's runs single-threaded through libm's `tanhf`).
pub fn gelu_tanh(xs: &Tensor) -> Result<Tensor> {
    if use_kernel(xs) {
        xs.contiguous()?.apply_op1(Gelu::<true>)
    } else {
        xs.gelu()
    }
}
