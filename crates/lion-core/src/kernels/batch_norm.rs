//! BatchNorm on batch statistics followed by ReLU, over (n, c) rows, with its backward: the
//! training step of [`crate::convnet`]'s layers.
//!
//! As candle ops this was about ten passes over the activations (mean, centring, square, mean,
//! scale, shift, ReLU and their gradients), most of them single-threaded: a third of the CNN
//! tagger's training time on a 2-core AVX2 machine. Fused: two parallel passes forward (the
//! statistics, then the output), two backward.

use std::sync::Arc;

use candle_core::Storage;

use super::*;

/// xs: (n, c), weight and bias: (c) -> (`relu(batch_norm(xs))` (n, c), batch mean (c), biased
/// batch variance (c)). The statistics come back detached (for the running ones); the output is
/// differentiable in `xs`, `weight` and `bias`. Fused CPU kernel for f32 on the CPU; plain candle
/// ops elsewhere.
pub fn batch_norm_relu_train(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (n, c) = xs.dims2()?;
    if n < 2 {
        candle_core::bail!("batch norm in training needs more than one value per channel, got {n}")
    }
    if weight.dims() != [c] || bias.dims() != [c] {
        candle_core::bail!(
            "batch norm over {c} channels: weight {:?} and bias {:?} must be ({c})",
            weight.dims(),
            bias.dims()
        )
    }
    let all_f32 = [xs, weight, bias].iter().all(|t| t.dtype() == DType::F32);
    if !(all_f32 && fused(xs.device())) {
        return batch_norm_relu_train_plain(xs, weight, bias, eps);
    }
    let xs = xs.contiguous()?;
    let (mean, var) = {
        let (st, l) = xs.storage_and_layout();
        let x = cpu_f32(&st, l, "lion-batch-norm")?;
        channel_mean_var(x, c)
    };
    let inv: Vec<f32> = var.iter().map(|v| 1.0 / (v + eps as f32).sqrt()).collect();
    let dev = xs.device();
    let (mean_t, var_t) = (
        Tensor::from_vec(mean.clone(), c, dev)?,
        Tensor::from_vec(var, c, dev)?,
    );
    let op = BnReluTrain {
        mean: Arc::new(mean),
        inv: Arc::new(inv),
    };
    let ys = xs.apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)?;
    Ok((ys, mean_t, var_t))
}

/// [`batch_norm_relu_train`] from candle ops (the GPU path and the fused kernel's reference).
pub fn batch_norm_relu_train_plain(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let mean = xs.mean_keepdim(0)?;
    let centred = xs.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(0)?;
    let scale = (&var + eps)?.sqrt()?.recip()?.broadcast_mul(weight)?;
    let ys = centred.broadcast_mul(&scale)?.broadcast_add(bias)?.relu()?;
    Ok((ys, mean.squeeze(0)?.detach(), var.squeeze(0)?.detach()))
}

fn cpu_f32<'a>(st: &'a Storage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    match st {
        Storage::Cpu(s) => contiguous_f32(s, l, op),
        _ => candle_core::bail!("{op}: CPU tensors only"),
    }
}

/// Rows per parallel task of the channel reductions.
fn stat_rows(c: usize) -> usize {
    (64 * 1024 / c.max(1)).max(1)
}

/// Per-channel sums over the rows of `x` (width `c`) of `f(channel, row value)`, in f64.
fn channel_sums(x: &[f32], c: usize, f: impl Fn(usize, f32) -> f64 + Sync) -> Vec<f64> {
    x.par_chunks(stat_rows(c) * c)
        .map(|chunk| {
            let mut s = vec![0f64; c];
            for row in chunk.chunks(c) {
                for (j, (a, &v)) in s.iter_mut().zip(row).enumerate() {
                    *a += f(j, v);
                }
            }
            s
        })
        .reduce(
            || vec![0f64; c],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        )
}

/// Mean and biased variance of each channel (two passes: the variance of centred values).
fn channel_mean_var(x: &[f32], c: usize) -> (Vec<f32>, Vec<f32>) {
    let n = (x.len() / c) as f64;
    let mean: Vec<f64> = channel_sums(x, c, |_, v| v as f64)
        .into_iter()
        .map(|s| s / n)
        .collect();
    let var = channel_sums(x, c, |j, v| {
        let d = v as f64 - mean[j];
        d * d
    });
    (
        mean.iter().map(|&m| m as f32).collect(),
        var.iter().map(|&v| (v / n) as f32).collect(),
    )
}

/// The op; its batch statistics (mean, 1 / sqrt(var + eps)) are computed once and kept for the
/// backward.
struct BnReluTrain {
    mean: Arc<Vec<f32>>,
    inv: Arc<Vec<f32>>,
}

impl CustomOp3 for BnReluTrain {
    fn name(&self) -> &'static str {
        "lion-batch-norm-relu"
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
        let x = contiguous_f32(s1, l1, self.name())?;
        let w = contiguous_f32(s2, l2, self.name())?;
        let b = contiguous_f32(s3, l3, self.name())?;
        let c = w.len();
        let scale: Vec<f32> = w.iter().zip(self.inv.iter()).map(|(w, i)| w * i).collect();
        let shift: Vec<f32> = (0..c).map(|j| b[j] - self.mean[j] * scale[j]).collect();
        let y = map_rows(x, c, &ScaleShiftRelu(&scale, &shift));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    /// With g' = g where the output is > 0 (else 0) and x^ the normalised input:
    /// d bias = sum g', d weight = sum g' x^, dx = weight inv (g' - (d bias + x^ d weight) / n).
    fn bwd(
        &self,
        arg1: &Tensor,
        arg2: &Tensor,
        _arg3: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let name = self.name();
        let g = grad.contiguous()?;
        let (xs, xl) = arg1.storage_and_layout();
        let (ws, wl) = arg2.storage_and_layout();
        let (ys, yl) = res.storage_and_layout();
        let (gs, gl) = g.storage_and_layout();
        let x = cpu_f32(&xs, xl, name)?;
        let w = cpu_f32(&ws, wl, name)?;
        let y = cpu_f32(&ys, yl, name)?;
        let gv = cpu_f32(&gs, gl, name)?;
        let c = w.len();
        let n = x.len() / c;
        let (mean, inv) = (&self.mean, &self.inv);
        // both sums in one pass over rows: [d bias (c) | d weight (c)]
        let sums = x
            .par_chunks(stat_rows(c) * c)
            .zip(y.par_chunks(stat_rows(c) * c))
            .zip(gv.par_chunks(stat_rows(c) * c))
            .map(|((xc, yc), gc)| {
                let mut s = vec![0f64; 2 * c];
                let (db, dw) = s.split_at_mut(c);
                for ((xr, yr), gr) in xc.chunks(c).zip(yc.chunks(c)).zip(gc.chunks(c)) {
                    for j in 0..c {
                        if yr[j] > 0.0 {
                            let gj = gr[j] as f64;
                            db[j] += gj;
                            dw[j] += gj * ((xr[j] - mean[j]) * inv[j]) as f64;
                        }
                    }
                }
                s
            })
            .reduce(
                || vec![0f64; 2 * c],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                    a
                },
            );
        let db: Vec<f32> = sums[..c].iter().map(|&v| v as f32).collect();
        let dw: Vec<f32> = sums[c..].iter().map(|&v| v as f32).collect();
        let k: Vec<f32> = (0..c).map(|j| w[j] * inv[j]).collect();
        let nf = n as f32;
        let mut dx = vec![0f32; x.len()];
        let chunk = c * rows_per_task(c);
        dx.par_chunks_mut(chunk)
            .zip(
                x.par_chunks(chunk)
                    .zip(y.par_chunks(chunk))
                    .zip(gv.par_chunks(chunk)),
            )
            .for_each(|(dc, ((xc, yc), gc))| {
                for (((dr, xr), yr), gr) in dc
                    .chunks_mut(c)
                    .zip(xc.chunks(c))
                    .zip(yc.chunks(c))
                    .zip(gc.chunks(c))
                {
                    for j in 0..c {
                        let gm = if yr[j] > 0.0 { gr[j] } else { 0.0 };
                        let xhat = (xr[j] - mean[j]) * inv[j];
                        dr[j] = k[j] * (gm - (db[j] + xhat * dw[j]) / nf);
                    }
                }
            });
        let dev = arg1.device();
        let shape = arg1.shape().clone();
        drop((xs, ws, ys, gs));
        Ok((
            Some(Tensor::from_vec(dx, shape, dev)?),
            Some(Tensor::from_vec(dw, c, dev)?),
            Some(Tensor::from_vec(db, c, dev)?),
        ))
    }
}

/// `y = max(x * scale + shift, 0)` per row (channels last).
struct ScaleShiftRelu<'a>(&'a [f32], &'a [f32]);

impl Row for ScaleShiftRelu<'_> {
    #[inline(always)]
    fn row(&self, yr: &mut [f32], xr: &[f32], _: &[f32]) {
        for (((o, &v), &s), &t) in yr.iter_mut().zip(xr).zip(self.0).zip(self.1) {
            *o = (v * s + t).max(0.0);
        }
    }
}
