//! T5 attention (HF `T5Attention`): relative position buckets and bias, self- and
//! cross-attention with a key/value cache.

use super::*;

/// T5's relative-position bucket (HF `T5Attention._relative_position_bucket`), computed with the
/// same f32 arithmetic as the PyTorch reference so bucket boundaries agree.
/// `relative_position` = key position - query position. Bidirectional (encoder): half the buckets
/// for each sign. Unidirectional (decoder): positive (future) positions map to bucket 0.
pub fn relative_position_bucket(
    relative_position: i64,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> u32 {
    let mut num_buckets = num_buckets as i64;
    let mut bucket = 0i64;
    let n = if bidirectional {
        num_buckets /= 2;
        if relative_position > 0 {
            bucket += num_buckets;
        }
        relative_position.abs()
    } else {
        -relative_position.min(0)
    };
    let max_exact = num_buckets / 2;
    if n < max_exact {
        return (bucket + n) as u32;
    }
    let denom = (max_distance as f64 / max_exact as f64).ln() as f32;
    let large =
        ((n as f32 / max_exact as f32).ln() / denom * (num_buckets - max_exact) as f32) as i64;
    let large = (max_exact + large).min(num_buckets - 1);
    (bucket + large) as u32
}

/// Keys and values of one attention layer, each (b, heads, k, d_kv).
pub type KeyValue = (Tensor, Tensor);

/// `T5Attention`: multi-head attention without score scaling (T5 folds it into the init), with an
/// optional relative-position bias table (first block of each stack).
#[derive(Debug, Clone)]
pub struct T5Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    relative_attention_bias: Option<Embedding>,
    n_heads: usize,
    d_kv: usize,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
    dropout: f64,
    /// Built to compute in bf16: the encoder's products run on the bf16 kernel
    /// ([`crate::kernels::attention_in`]).
    bf16: bool,
}

impl T5Attention {
    /// Keys `q`, `k`, `v`, `o` (no biases) and, when `has_relative_attention_bias`,
    /// `relative_attention_bias.weight` (num_buckets, heads).
    pub fn new(
        cfg: &T5Config,
        has_relative_attention_bias: bool,
        is_decoder: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let (d, h, dk) = (cfg.d_model, cfg.num_heads, cfg.d_kv);
        let inner = h * dk;
        let relative_attention_bias = if has_relative_attention_bias {
            let w = vb.pp("relative_attention_bias").get_with_hints(
                (cfg.relative_attention_num_buckets, h),
                "weight",
                Init::Randn {
                    mean: 0.,
                    stdev: (d as f64).powf(-0.5),
                },
            )?;
            Some(Embedding::new(w, h))
        } else {
            None
        };
        Ok(Self {
            q: linear_no_bias(d, inner, ((d * dk) as f64).powf(-0.5), vb.pp("q"))?,
            k: linear_no_bias(d, inner, (d as f64).powf(-0.5), vb.pp("k"))?,
            v: linear_no_bias(d, inner, (d as f64).powf(-0.5), vb.pp("v"))?,
            o: linear_no_bias(inner, d, (inner as f64).powf(-0.5), vb.pp("o"))?,
            relative_attention_bias,
            n_heads: h,
            d_kv: dk,
            bidirectional: !is_decoder,
            num_buckets: cfg.relative_attention_num_buckets,
            max_distance: cfg.relative_attention_max_distance,
            dropout: cfg.dropout_rate,
            bf16: crate::linear::weight_dtype() == crate::cpu::WeightDtype::Bf16,
        })
    }

    /// Relative-position bias for queries at positions `past..past+q_len` against keys
    /// `0..k_len`: (1, heads, q_len, k_len). None for layers without a bias table.
    pub fn compute_bias(
        &self,
        q_len: usize,
        k_len: usize,
        past: usize,
        dev: &Device,
    ) -> Result<Option<Tensor>> {
        let Some(emb) = &self.relative_attention_bias else {
            return Ok(None);
        };
        let mut buckets = Vec::with_capacity(q_len * k_len);
        for i in 0..q_len {
            for j in 0..k_len {
                let rel = j as i64 - (i + past) as i64;
                buckets.push(relative_position_bucket(
                    rel,
                    self.bidirectional,
                    self.num_buckets,
                    self.max_distance,
                ));
            }
        }
        let buckets = Tensor::from_vec(buckets, (q_len, k_len), dev)?;
        // (q, k, h) -> (1, h, q, k)
        let bias = emb.forward(&buckets)?.permute((2, 0, 1))?.unsqueeze(0)?;
        Ok(Some(bias.contiguous()?))
    }

    fn heads(&self, xs: &Tensor) -> Result<Tensor> {
        crate::kernels::split_heads(xs, self.n_heads)
    }

    /// Keys and values of `src`: (b, k, d) -> 2 x (b, heads, k, d_kv).
    pub fn key_value(&self, src: &Tensor) -> Result<KeyValue> {
        Ok((
            self.heads(&self.k.forward(src)?)?,
            self.heads(&self.v.forward(src)?)?,
        ))
    }

    /// xs: (b, q, d) queries; kv: keys/values (b / g, heads, k, d_kv), each K/V row shared by
    /// g consecutive query rows (g = 1 but for beam search's cross-attention); bias: position
    /// bias broadcastable to (b, heads, q, k) (g = 1 only); mask: additive, broadcastable to
    /// (b / g, heads, g * q, k) -> (b, q, d)
    pub fn attend(
        &self,
        xs: &Tensor,
        kv: &KeyValue,
        bias: Option<&Tensor>,
        mask: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let (b, q_len, _) = xs.dims3()?;
        let q = self.heads(&self.q.forward(xs)?)?;
        let kb = kv.0.dim(0)?;
        if kb != b {
            // g query rows per K/V row (beam search: the beams of one input share its encoder
            // K/V): their queries become g * q_len query positions of that row, so K/V are read
            // once per input, not copied per beam
            if kb == 0 || b % kb != 0 {
                candle_core::bail!("attention: {b} query rows for {kb} key/value rows")
            }
            let g = b / kb;
            let (h, dk) = (self.n_heads, self.d_kv);
            let qg = q
                .reshape((kb, g, h, q_len, dk))?
                .transpose(1, 2)?
                .reshape((kb, h, g * q_len, dk))?;
            let ctx = self.attend_heads(&qg, kv, bias, mask, train)?; // (kb, h, g * q, dk)
            let ctx = ctx
                .reshape((kb, h, g, q_len, dk))?
                .permute((0, 2, 3, 1, 4))?
                .reshape((b, q_len, h * dk))?;
            return self.o.forward(&ctx);
        }
        let ctx = self.attend_heads(&q, kv, bias, mask, train)?; // (b, h, q, d_kv)
        self.o.forward(&crate::kernels::merge_heads(&ctx)?)
    }

    /// Attention over heads: q (b, h, q, d_kv), kv (b, h, k, d_kv) -> (b, h, q, d_kv).
    fn attend_heads(
        &self,
        q: &Tensor,
        kv: &KeyValue,
        bias: Option<&Tensor>,
        mask: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let (k, v) = kv;
        // no 1/sqrt(d_kv) scaling in T5; fused forward and backward in training
        let p = if train { self.dropout as f32 } else { 0.0 };
        let biases: Vec<&Tensor> = bias.into_iter().chain(mask).collect();
        crate::kernels::attention_in(q, k, v, 1.0, &biases, p, self.bf16) // (b, h, q, d_kv)
    }
}
