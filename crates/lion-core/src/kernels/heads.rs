//! Splitting a projection into attention heads and merging them back, each one copy and one
//! autograd node.

use super::*;

/// (b, t, h * d) -> (b, h, t, d), contiguous: the per-head view attention reads.
///
/// `reshape`, `transpose(1, 2)` and `contiguous` give the same values, but as three autograd
/// nodes: candle's backward gives each a gradient entry of its own (a zero-filled buffer of the
/// tensor's size, then a pass adding the incoming gradient into it), so a tracked projection paid
/// three zero-fills and three adds in the backward for one copy in the forward. Here the backward
/// is one copy, [`merge_heads`] of the gradient. f32 CPU; otherwise the composition.
pub fn split_heads(xs: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, t, hd) = xs.dims3()?;
    if heads == 0 || hd % heads != 0 {
        candle_core::bail!("split_heads: width {hd} is not a multiple of {heads} heads")
    }
    if !use_kernel(xs) {
        return xs
            .reshape((b, t, heads, hd / heads))?
            .transpose(1, 2)?
            .contiguous();
    }
    let op = Heads { heads, split: true };
    if xs.track_op() {
        xs.contiguous()?.apply_op1(op)
    } else {
        xs.contiguous()?.apply_op1_no_bwd(&op)
    }
}

/// (b, h, t, d) -> (b, t, h * d), contiguous: the heads side by side again (the inverse of
/// [`split_heads`], with the same single-node backward).
pub fn merge_heads(xs: &Tensor) -> Result<Tensor> {
    let (b, h, t, d) = xs.dims4()?;
    if !use_kernel(xs) {
        return xs.transpose(1, 2)?.reshape((b, t, h * d));
    }
    let op = Heads {
        heads: h,
        split: false,
    };
    if xs.track_op() {
        xs.contiguous()?.apply_op1(op)
    } else {
        xs.contiguous()?.apply_op1_no_bwd(&op)
    }
}

struct Heads {
    heads: usize,
    /// (b, t, h, d) -> (b, h, t, d); else the reverse.
    split: bool,
}

impl CustomOp1 for Heads {
    fn name(&self) -> &'static str {
        if self.split {
            "lion-split-heads"
        } else {
            "lion-merge-heads"
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let h = self.heads;
        // (b, t, d) of the per-head layout, and the output's shape
        let (b, t, d, shape) = match (self.split, l.dims()) {
            (true, &[b, t, hd]) => (b, t, hd / h, Shape::from((b, h, t, hd / h))),
            (false, &[b, h2, t, d]) if h2 == h => (b, t, d, Shape::from((b, t, h * d))),
            (_, dims) => candle_core::bail!("{}: input {dims:?} for {h} heads", self.name()),
        };
        // SAFETY: every element is written below (each output chunk is filled whole).
        let mut y = unsafe { uninit_f32(b * h * t * d) };
        if y.is_empty() {
            return Ok((CpuStorage::F32(y), shape));
        }
        if self.split {
            // output chunk (bi, hi): t rows of d, row ti from input row (bi, ti) at hi * d
            let fill = |(i, dst): (usize, &mut [f32])| {
                let (bi, hi) = (i / h, i % h);
                for (ti, row) in dst.chunks_exact_mut(d).enumerate() {
                    let at = (bi * t + ti) * h * d + hi * d;
                    row.copy_from_slice(&x[at..at + d]);
                }
            };
            if y.len() >= 1 << 15 {
                y.par_chunks_mut(t * d).enumerate().for_each(fill);
            } else {
                y.chunks_mut(t * d).enumerate().for_each(fill);
            }
        } else {
            // output row (bi, ti): h pieces of d, piece hi from input row (bi, hi, ti)
            let fill = |(i, dst): (usize, &mut [f32])| {
                let (bi, ti) = (i / t, i % t);
                for (hi, piece) in dst.chunks_exact_mut(d).enumerate() {
                    let at = ((bi * h + hi) * t + ti) * d;
                    piece.copy_from_slice(&x[at..at + d]);
                }
            };
            if y.len() >= 1 << 15 {
                y.par_chunks_mut(h * d).enumerate().for_each(fill);
            } else {
                y.chunks_mut(h * d).enumerate().for_each(fill);
            }
        }
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let inverse = Heads {
            heads: self.heads,
            split: !self.split,
        };
        Ok(Some(g.contiguous()?.apply_op1_no_bwd(&inverse)?))
    }
}
