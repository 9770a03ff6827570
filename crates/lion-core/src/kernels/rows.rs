//! Row sums (bias and norm-weight gradients) and bias addition.

use super::*;

/// Sum over every dimension but the last: (..., d) -> (d), the gradient of a bias or norm weight
/// broadcast over rows. f32 CPU: parallel over blocks of rows, each adding whole contiguous rows
/// into its partial sums (candle's sum over dim 0 walks single-threaded down the columns).
pub fn sum_rows(xs: &Tensor) -> Result<Tensor> {
    let d = xs.dim(D::Minus1)?;
    if use_kernel(xs) {
        xs.contiguous()?.apply_op1_no_bwd(&SumRows)
    } else {
        xs.reshape(((), d))?.sum(0)
    }
}

pub(super) struct SumRows;

impl CustomOp1 for SumRows {
    fn name(&self) -> &'static str {
        "lion-sum-rows"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let d = last_dim(l);
        let rows = x.len() / d;
        let per_task = rows.div_ceil(2 * rayon::current_num_threads()).max(1);
        let partials: Vec<Vec<f32>> = x
            .par_chunks(per_task * d)
            .map(|c| {
                let mut acc = vec![0f32; d];
                for r in c.chunks_exact(d) {
                    acc.iter_mut().zip(r).for_each(|(a, &v)| *a += v);
                }
                acc
            })
            .collect();
        let mut out = vec![0f32; d];
        for p in partials {
            out.iter_mut().zip(p).for_each(|(o, v)| *o += v);
        }
        Ok((CpuStorage::F32(out), Shape::from(d)))
    }
}

/// `xs + bias` with the bias (d) broadcast over the rows of xs (..., d); its backward gives the
/// bias gradient as [`sum_rows`] (when the bias is tracked), and no zero-filled gradient buffer
/// for a frozen one. f32 CPU, both contiguous; otherwise `broadcast_add`.
pub fn add_bias(xs: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let d = xs.dim(D::Minus1)?;
    if use_kernel(xs) && bias.dtype() == DType::F32 && bias.dims() == [d] {
        xs.contiguous()?.apply_op2(&bias.contiguous()?, BiasAdd)
    } else {
        xs.broadcast_add(bias)
    }
}

pub(super) struct BiasAdd;

/// `y = x + b` per row.
struct AddRow<'a>(&'a [f32]);

impl Row for AddRow<'_> {
    #[inline(always)]
    fn row(&self, yr: &mut [f32], xr: &[f32], _: &[f32]) {
        for ((o, &v), &bv) in yr.iter_mut().zip(xr).zip(self.0) {
            *o = v + bv;
        }
    }
}

impl CustomOp2 for BiasAdd {
    fn name(&self) -> &'static str {
        "lion-bias-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, self.name())?;
        let b = contiguous_f32(s2, l2, self.name())?;
        let y = map_rows(x, b.len(), &AddRow(b));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let gb = if bias.track_op() {
            Some(sum_rows(g)?)
        } else {
            None
        };
        Ok((Some(g.clone()), gb))
    }
}
