//! LayerNorm and RMSNorm (plain and affine), with their backwards; the composed reference forms.

use super::*;

/// Normalises rows: LayerNorm (`center`: subtract the mean, divide by sqrt(var + eps)) or
/// RMSNorm (divide by sqrt(mean(x^2) + eps)). No affine part: callers multiply by the weight.
#[derive(Clone, Copy)]
pub(super) struct Normalize {
    eps: f32,
    center: bool,
}

/// (mean, rstd) of one row. The sums run in order, one element after another: a chain of
/// dependent adds (~3% of a ViT-B forward), kept because the shipped tagger's LayerNorms were
/// trained with these bits (`assets/shapes-tagger/README.md`).
#[inline(always)]
pub(super) fn row_stats(xr: &[f32], eps: f32, center: bool) -> (f32, f32) {
    let n = xr.len() as f32;
    let mean = if center {
        xr.iter().sum::<f32>() / n
    } else {
        0.0
    };
    let var = xr.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

impl Row for Normalize {
    #[inline(always)]
    fn row(&self, yr: &mut [f32], xr: &[f32], _: &[f32]) {
        let (mean, rstd) = row_stats(xr, self.eps, self.center);
        for (o, &v) in yr.iter_mut().zip(xr) {
            *o = (v - mean) * rstd;
        }
    }
}

impl CustomOp1 for Normalize {
    fn name(&self) -> &'static str {
        if self.center {
            "lion-layer-norm"
        } else {
            "lion-rms-norm"
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let y = map_rows(x, last_dim(l), self);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let g = g.contiguous()?;
        Ok(Some(arg.apply_op2_no_bwd(&g, &NormalizeGrad(*self))?))
    }
}

/// dx of [`Normalize`] given x and the output gradient g, per row:
/// LayerNorm: rstd * (g - mean(g) - xhat * mean(g * xhat)); RMSNorm: rstd * (g - xhat * mean(g * xhat)).
pub(super) struct NormalizeGrad(Normalize);

impl Row for NormalizeGrad {
    #[inline(always)]
    fn row(&self, dr: &mut [f32], xr: &[f32], gr: &[f32]) {
        let Normalize { eps, center } = self.0;
        let (mean, rstd) = row_stats(xr, eps, center);
        let n = xr.len() as f32;
        let mut g_mean = 0f32;
        let mut gx_mean = 0f32;
        for (&xv, &gv) in xr.iter().zip(gr) {
            g_mean += gv;
            gx_mean += gv * (xv - mean) * rstd;
        }
        g_mean = if center { g_mean / n } else { 0.0 };
        gx_mean /= n;
        for ((o, &xv), &gv) in dr.iter_mut().zip(xr).zip(gr) {
            let xhat = (xv - mean) * rstd;
            *o = rstd * (gv - g_mean - xhat * gx_mean);
        }
    }
}

impl CustomOp2 for NormalizeGrad {
    fn name(&self) -> &'static str {
        "lion-normalize-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, g) = same_shape_f32(s1, l1, s2, l2, self.name())?;
        let dx = map_rows2(x, g, last_dim(l1), self);
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// One row of [`AffineNormalize`]: y = xhat * w (+ b).
struct AffineRow<'a> {
    n: Normalize,
    w: &'a [f32],
    b: Option<&'a [f32]>,
}

impl Row for AffineRow<'_> {
    #[inline(always)]
    fn row(&self, yr: &mut [f32], xr: &[f32], _: &[f32]) {
        let (mean, rstd) = row_stats(xr, self.n.eps, self.n.center);
        match self.b {
            Some(b) => {
                for (((o, &v), &wv), &bv) in yr.iter_mut().zip(xr).zip(self.w).zip(b) {
                    *o = (v - mean) * rstd * wv + bv;
                }
            }
            None => {
                for ((o, &v), &wv) in yr.iter_mut().zip(xr).zip(self.w) {
                    *o = (v - mean) * rstd * wv;
                }
            }
        }
    }
}

/// Normalisation with its affine part fused into the same pass: y = xhat * w (+ b).
pub(super) struct AffineNormalize(Normalize);

impl AffineNormalize {
    fn run(&self, x: &[f32], w: &[f32], b: Option<&[f32]>) -> Vec<f32> {
        map_rows(x, w.len(), &AffineRow { n: self.0, w, b })
    }

    /// Gradients of the affine parameters and of x, from x, w and the output gradient g.
    fn grads(&self, x: &Tensor, w: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let g = g.contiguous()?;
        let xhat = x.apply_op1_no_bwd(&self.0)?;
        let gw = sum_rows(&(&g * xhat)?)?;
        let gb = sum_rows(&g)?;
        let gx = x.apply_op2_no_bwd(&g.broadcast_mul(w)?, &NormalizeGrad(self.0))?;
        Ok((gx, gw, gb))
    }
}

impl CustomOp2 for AffineNormalize {
    fn name(&self) -> &'static str {
        "lion-rms-norm-affine"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "lion-rms-norm-affine")?;
        let w = contiguous_f32(s2, l2, "lion-rms-norm-affine")?;
        Ok((CpuStorage::F32(self.run(x, w, None)), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (gx, gw, _) = self.grads(x, w, g)?;
        Ok((Some(gx), Some(gw)))
    }
}

impl CustomOp3 for AffineNormalize {
    fn name(&self) -> &'static str {
        "lion-layer-norm-affine"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "lion-layer-norm-affine")?;
        let w = contiguous_f32(s2, l2, "lion-layer-norm-affine")?;
        let b = contiguous_f32(s3, l3, "lion-layer-norm-affine")?;
        Ok((CpuStorage::F32(self.run(x, w, Some(b))), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (gx, gw, gb) = self.grads(x, w, g)?;
        Ok((Some(gx), Some(gw), Some(gb)))
    }
}

pub(super) fn check_affine(xs: &Tensor, w: &Tensor) -> Result<()> {
    let d = xs.dim(D::Minus1)?;
    if w.dims() != [d] {
        candle_core::bail!(
            "normalisation weight of shape {:?} for inputs of width {d}",
            w.dims()
        )
    }
    Ok(())
}

/// LayerNorm over the last dimension (biased variance, as PyTorch), with affine weight and bias,
/// in one pass. xs: (..., d), weight/bias: (d,) -> (..., d). Where the kernel does not apply
/// (not f32, not the CPU, plain ops forced): [`layer_norm_composed`].
pub fn layer_norm(xs: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    check_affine(xs, weight)?;
    check_affine(xs, bias)?;
    if !(use_kernel(xs) && weight.dtype() == DType::F32 && bias.dtype() == DType::F32) {
        return layer_norm_composed(xs, weight, bias, eps);
    }
    let op = AffineNormalize(Normalize {
        eps: eps as f32,
        center: true,
    });
    xs.contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)
}

/// The plain composition of [`layer_norm`], in f32 (statistics and affine part), returned in
/// the input's dtype.
pub fn layer_norm_composed(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let dtype = xs.dtype();
    let x = xs.to_dtype(DType::F32)?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    xn.broadcast_mul(&weight.to_dtype(DType::F32)?)?
        .broadcast_add(&bias.to_dtype(DType::F32)?)?
        .to_dtype(dtype)
}

/// T5's RMSNorm (no mean subtraction, no bias), in one pass. xs: (..., d), weight: (d,) -> (..., d).
/// Where the kernel does not apply: [`rms_norm_composed`].
pub fn rms_norm(xs: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    check_affine(xs, weight)?;
    if !(use_kernel(xs) && weight.dtype() == DType::F32) {
        return rms_norm_composed(xs, weight, eps);
    }
    let op = AffineNormalize(Normalize {
        eps: eps as f32,
        center: false,
    });
    xs.contiguous()?.apply_op2(&weight.contiguous()?, op)
}

/// The plain composition of [`rms_norm`]: mean of squares in f32, normalised rows cast to the
/// weight's dtype before the multiply (as HF's T5), returned in the input's dtype.
pub fn rms_norm_composed(xs: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = xs.dtype();
    let x = xs.to_dtype(DType::F32)?;
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = x.broadcast_div(&(ms + eps)?.sqrt()?)?;
    xn.to_dtype(weight.dtype())?
        .broadcast_mul(weight)?
        .to_dtype(dtype)
}

/// Whether the fused kernels apply to this tensor (f32, and [`fused`] for its device);
/// otherwise use the composition.
pub fn applies(xs: &Tensor) -> bool {
    use_kernel(xs)
}
