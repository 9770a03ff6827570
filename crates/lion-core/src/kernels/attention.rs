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

/// [`attention`] in a layer built to compute in bf16 (`bf16`: built inside
/// `with_weight_dtype(Bf16, ..)`, [`crate::linear::weight_dtype`]). At inference (nothing
/// tracked, no dropout), with at least [`crate::bf16::PACKED_MIN_ROWS`] query rows (the
/// encoders' prefill, never a decoding step) and where the bf16 kernel rounds its input
/// ([`crate::bf16::rounds_x`]: AVX512-BF16), both products run on the bf16 kernel, as upstream's
/// autocast runs them: q and the probabilities rounded to bf16 (as that kernel rounds every
/// input), K and V rounded once per call, sums in f32; the scores, biases and softmax stay f32.
/// Anything else runs [`attention`]: f32 models keep their bits.
///
/// q (b, h, q, d), k and v (b, h, k, d), biases broadcastable to (b, h, q, k) -> (b, h, q, d).
pub fn attention_in(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    biases: &[&Tensor],
    p: f32,
    bf16: bool,
) -> Result<Tensor> {
    let tracked = [q, k, v].iter().any(|t| t.track_op()) || biases.iter().any(|b| b.track_op());
    if bf16
        && !tracked
        && p == 0.0
        && q.rank() == 4
        && [q, k, v].iter().all(|t| use_kernel(t))
        && biases
            .iter()
            .all(|b| b.dtype() == DType::F32 && b.device().is_cpu())
    {
        let rows = q.dim(2)?;
        if rows >= crate::bf16::PACKED_MIN_ROWS && crate::bf16::rounds_x(rows) {
            return attention_bf16(q, k, v, scale, biases);
        }
    }
    attention(q, k, v, scale, biases, p)
}

/// The bf16 products of [`attention_in`], head by head in parallel.
fn attention_bf16(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    biases: &[&Tensor],
) -> Result<Tensor> {
    let (b, h, sq, d) = q.dims4()?;
    let sk = k.dim(2)?;
    if k.dims4()? != (b, h, sk, d) || v.dims4()? != (b, h, sk, d) {
        candle_core::bail!(
            "attention: q {:?}, k {:?} and v {:?} do not match",
            q.dims(),
            k.dims(),
            v.dims()
        )
    }
    if sk == 0 || d == 0 {
        return attention(q, k, v, scale, biases, 0.0);
    }
    let biases = biases
        .iter()
        .map(|t| t.broadcast_as((b, h, sq, sk)))
        .collect::<Result<Vec<_>>>()?;
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let (qs, ql) = q.storage_and_layout();
    let (ks, kl) = k.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    let qv = cpu_f32(&qs, ql)?;
    let kv = cpu_f32(&ks, kl)?;
    let vv = cpu_f32(&vs, vl)?;
    // each bias as (values, start, strides) over (b, h, q, k): broadcast dimensions stride 0
    let guards = biases
        .iter()
        .map(|t| t.storage_and_layout())
        .collect::<Vec<_>>();
    let bias_views = guards
        .iter()
        .map(|(s, l)| {
            let candle_core::Storage::Cpu(CpuStorage::F32(data)) = &**s else {
                candle_core::bail!("attention: a bias is not an f32 CPU tensor")
            };
            Ok((data.as_slice(), l.start_offset(), l.stride().to_vec()))
        })
        .collect::<Result<Vec<_>>>()?;
    let scale = scale as f32;
    // SAFETY: every head's chunk is written whole below
    let mut out = unsafe { uninit_f32(b * h * sq * d) };
    out.par_chunks_mut(sq * d).enumerate().for_each(|(i, o)| {
        let (bi, hi) = (i / h, i % h);
        let qh = &qv[i * sq * d..(i + 1) * sq * d];
        let kh = &kv[i * sk * d..(i + 1) * sk * d];
        let vh = &vv[i * sk * d..(i + 1) * sk * d];
        let kb = crate::bf16::to_bf16(kh);
        let mut scores = crate::bf16::matmul_wt(qh, sq, d, &kb, sk); // (sq, sk)
        for (r, row) in scores.chunks_exact_mut(sk).enumerate() {
            if scale != 1.0 {
                row.iter_mut().for_each(|x| *x *= scale);
            }
            for (data, start, st) in &bias_views {
                let at = start + bi * st[0] + hi * st[1] + r * st[2];
                match st[3] {
                    0 => row.iter_mut().for_each(|x| *x += data[at]),
                    1 => row
                        .iter_mut()
                        .zip(&data[at..at + sk])
                        .for_each(|(x, &y)| *x += y),
                    s => row
                        .iter_mut()
                        .enumerate()
                        .for_each(|(j, x)| *x += data[at + j * s]),
                }
            }
        }
        // SAFETY: every row is written by the softmax
        let mut probs = unsafe { uninit_f32(sq * sk) };
        for (p, s) in probs.chunks_exact_mut(sk).zip(scores.chunks_exact(sk)) {
            Softmax.row(p, s, &[]);
        }
        // V^T (d, sk) in bf16: the "weight" of probs @ V
        let mut vt = vec![half::bf16::ZERO; d * sk];
        for (j, row) in vh.chunks_exact(d).enumerate() {
            for (c, &x) in row.iter().enumerate() {
                vt[c * sk + j] = half::bf16::from_f32(x);
            }
        }
        o.copy_from_slice(&crate::bf16::matmul_wt(&probs, sq, sk, &vt, d));
    });
    Tensor::from_vec(out, (b, h, sq, d), q.device())
}

fn cpu_f32<'a>(s: &'a candle_core::Storage, l: &Layout) -> Result<&'a [f32]> {
    match s {
        candle_core::Storage::Cpu(c) => contiguous_f32(c, l, "attention"),
        _ => candle_core::bail!("attention: not a CPU tensor"),
    }
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
