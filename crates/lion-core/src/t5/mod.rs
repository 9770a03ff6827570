//! Flan-T5 encoder-decoder (HF `transformers` `T5ForConditionalGeneration`) with LION's parallel
//! adapters in every feed-forward block.
//!
//! Reference: `transformers/models/t5/modeling_t5.py` (LION ships a copy for transformers 4.42.4),
//! JiuTian-LION `models/lion_t5.py` L168-188 and `models/lion_adapters.py`; docs/DESIGN.md §4.
//!
//! Checkpoint keys are HF's: `shared.weight`, `encoder.block.{i}.layer.0.SelfAttention.{q,k,v,o}`,
//! `...relative_attention_bias` (block 0 only), `...layer.0.layer_norm`,
//! `encoder.block.{i}.layer.1.DenseReluDense.{wi_0,wi_1,wo}` (or `wi` for `relu`),
//! `encoder.final_layer_norm`, decoder `layer.1.EncDecAttention`, `layer.2` FFN, `lm_head.weight`
//! (untied models). LION's adapters live under the FFN layer: `encoder.block.{i}.layer.1.adapter.*`,
//! `decoder.block.{i}.layer.2.adapter.*` (see [`crate::adapter`]). Inside a LION checkpoint the
//! prefix is `t5_model.` (use `vb.pp("t5_model")`).
//!
//! What differs from candle-transformers' T5, on purpose:
//! - the encoder takes token ids or input embeddings, and a padding mask;
//! - the decoder's relative-position buckets are unidirectional (HF), the encoder's bidirectional;
//! - dropout in training, RMSNorm in f32 with differentiable ops, full-sequence logits and the
//!   masked cross-entropy for training;
//! - an explicit KV cache ([`T5Cache`]): the self-attention cache grows, the cross-attention K/V are
//!   computed once from the encoder states;
//! - the adapter route is an argument of every forward.
//!
//! Shapes: b = batch, s = encoder length, t = decoder length, d = `d_model`, v = vocab.

mod config;

pub use config::T5Config;

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{Init, VarBuilder};

use crate::adapter::{AdapterRouter, Route};
use crate::embedding::Embedding;
use crate::linear::Linear;
use crate::ops::{dropout, Activation};

mod attention;
mod layers;

pub use attention::*;
pub use layers::*;

/// `T5LayerSelfAttention`: `h + dropout(SelfAttention(layer_norm(h)))`.
#[derive(Debug, Clone)]
pub struct T5LayerSelfAttention {
    self_attention: T5Attention,
    layer_norm: T5LayerNorm,
    dropout: f64,
}

/// `T5LayerCrossAttention`: `h + dropout(EncDecAttention(layer_norm(h), encoder))`.
#[derive(Debug, Clone)]
pub struct T5LayerCrossAttention {
    enc_dec_attention: T5Attention,
    layer_norm: T5LayerNorm,
    dropout: f64,
}

/// `T5Block`: self-attention, cross-attention (decoder only), feed-forward (+ adapters).
#[derive(Debug, Clone)]
pub struct T5Block {
    self_attn: T5LayerSelfAttention,
    cross_attn: Option<T5LayerCrossAttention>,
    ff: T5LayerFF,
}

impl T5Block {
    /// Keys `layer.0.{SelfAttention,layer_norm}`, decoder `layer.1.{EncDecAttention,layer_norm}`,
    /// FFN `layer.1` (encoder) / `layer.2` (decoder).
    pub fn new(
        cfg: &T5Config,
        has_relative_attention_bias: bool,
        is_decoder: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let d = cfg.d_model;
        let eps = cfg.layer_norm_epsilon;
        let l0 = vb.pp("layer.0");
        let self_attn = T5LayerSelfAttention {
            self_attention: T5Attention::new(
                cfg,
                has_relative_attention_bias,
                is_decoder,
                l0.pp("SelfAttention"),
            )?,
            layer_norm: T5LayerNorm::new(d, eps, l0.pp("layer_norm"))?,
            dropout: cfg.dropout_rate,
        };
        let (cross_attn, ff_idx) = if is_decoder {
            let l1 = vb.pp("layer.1");
            let cross = T5LayerCrossAttention {
                enc_dec_attention: T5Attention::new(cfg, false, true, l1.pp("EncDecAttention"))?,
                layer_norm: T5LayerNorm::new(d, eps, l1.pp("layer_norm"))?,
                dropout: cfg.dropout_rate,
            };
            (Some(cross), 2)
        } else {
            (None, 1)
        };
        let ff = T5LayerFF::new(cfg, vb.pp(format!("layer.{ff_idx}")))?;
        Ok(Self {
            self_attn,
            cross_attn,
            ff,
        })
    }

    /// xs: (b, t, d). self_kv: this layer's cache entry (None = no cache: attend over `xs`
    /// itself); it is replaced by the grown cache. cross: (K/V of the encoder states, additive
    /// encoder mask). -> (b, t, d)
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        xs: &Tensor,
        bias: Option<&Tensor>,
        mask: Option<&Tensor>,
        self_kv: Option<&mut Option<KeyValue>>,
        cross: Option<(&KeyValue, Option<&Tensor>)>,
        route: Route,
        train: bool,
    ) -> Result<Tensor> {
        let sa = &self.self_attn;
        let normed = sa.layer_norm.forward(xs)?;
        let (k, v) = sa.self_attention.key_value(&normed)?;
        let kv = match self_kv {
            Some(entry) => {
                let kv = match entry.take() {
                    Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                    None => (k, v),
                };
                *entry = Some(kv.clone());
                kv
            }
            None => (k, v),
        };
        let a = sa.self_attention.attend(&normed, &kv, bias, mask, train)?;
        let mut h = (xs + dropout(&a, sa.dropout, train)?)?;
        if let (Some(ca), Some((ckv, cmask))) = (&self.cross_attn, cross) {
            let normed = ca.layer_norm.forward(&h)?;
            let a = ca
                .enc_dec_attention
                .attend(&normed, ckv, None, cmask, train)?;
            h = (h + dropout(&a, ca.dropout, train)?)?;
        }
        self.ff.forward(&h, route, train)
    }
}

/// `T5Stack`: blocks, `final_layer_norm`, dropout. The position bias of block 0 is shared by all
/// blocks, as in HF.
#[derive(Debug, Clone)]
pub struct T5Stack {
    block: Vec<T5Block>,
    final_layer_norm: T5LayerNorm,
    dropout: f64,
}

impl T5Stack {
    /// Keys `block.{i}.*`, `final_layer_norm.weight`.
    pub fn new(cfg: &T5Config, is_decoder: bool, vb: VarBuilder) -> Result<Self> {
        let n = if is_decoder {
            cfg.num_decoder_layers()
        } else {
            cfg.num_layers
        };
        let block = (0..n)
            .map(|i| T5Block::new(cfg, i == 0, is_decoder, vb.pp(format!("block.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            block,
            final_layer_norm: T5LayerNorm::new(
                cfg.d_model,
                cfg.layer_norm_epsilon,
                vb.pp("final_layer_norm"),
            )?,
            dropout: cfg.dropout_rate,
        })
    }

    fn first_attention(&self) -> &T5Attention {
        &self.block[0].self_attn.self_attention
    }
}

/// Encoder input: token ids or precomputed input embeddings (LION feeds visual tokens this way).
#[derive(Debug, Clone, Copy)]
pub enum T5Input<'a> {
    /// (b, s) u32 token ids.
    Ids(&'a Tensor),
    /// (b, s, d) embeddings, used as given (the encoder does not re-embed).
    Embeds(&'a Tensor),
}

/// The decoder's incremental state: per decoder layer the self-attention K/V so far (grows by the
/// decoded length each step) and the cross-attention K/V of the encoder states (computed once).
#[derive(Debug, Clone)]
pub struct T5Cache {
    self_kv: Vec<Option<KeyValue>>,
    cross_kv: Vec<KeyValue>,
    /// Additive encoder mask (b, 1, 1, s), or None when nothing is masked.
    encoder_mask: Option<Tensor>,
    /// Decoder positions seen so far.
    past: usize,
    /// Consecutive decoder rows per encoder row (cross K/V row), 1 unless [`Self::share_inputs`].
    rows_per_input: usize,
}

impl T5Cache {
    /// Number of decoder positions already in the cache.
    pub fn seq_len(&self) -> usize {
        self.past
    }

    /// Decoder rows the cache serves: the encoder rows times the rows per encoder row.
    pub fn batch_size(&self) -> Result<usize> {
        Ok(self.cross_kv[0].0.dim(0)? * self.rows_per_input)
    }

    /// Serves `n` consecutive decoder rows per encoder row from now on (beam search: n beams
    /// share one input's cross-attention K/V, which are not copied). Only before the first step.
    pub fn share_inputs(&mut self, n: usize) -> Result<()> {
        if self.past != 0 || n == 0 {
            candle_core::bail!("share_inputs({n}) after {} decoding steps", self.past)
        }
        self.rows_per_input = n;
        Ok(())
    }

    /// Reorders only the self-attention K/V rows: `indices` (b,) u32 into the current rows.
    /// For beam search, where rows move only among the beams of one input, whose cross-attention
    /// K/V and encoder mask rows are identical: those are left as they are (no copy).
    pub fn reorder_self(&mut self, indices: &Tensor) -> Result<()> {
        let sel = |t: &Tensor| t.index_select(indices, 0);
        for kv in self.self_kv.iter_mut().flatten() {
            *kv = (sel(&kv.0)?, sel(&kv.1)?);
        }
        Ok(())
    }

    /// Keeps/reorders batch rows: `indices` (n,) u32 into the current rows (beam search).
    pub fn reorder(&mut self, indices: &Tensor) -> Result<()> {
        if self.rows_per_input != 1 {
            candle_core::bail!("reorder: the cache shares encoder rows (use reorder_self)")
        }
        let sel = |t: &Tensor| t.index_select(indices, 0);
        for kv in self.self_kv.iter_mut().flatten() {
            *kv = (sel(&kv.0)?, sel(&kv.1)?);
        }
        for kv in self.cross_kv.iter_mut() {
            *kv = (sel(&kv.0)?, sel(&kv.1)?);
        }
        if let Some(m) = &self.encoder_mask {
            self.encoder_mask = Some(sel(m)?);
        }
        Ok(())
    }
}

/// Full-sequence outputs of [`T5ForConditionalGeneration::forward_train`].
#[derive(Debug, Clone)]
pub struct T5Output {
    /// (b, t, v)
    pub logits: Tensor,
    /// Scalar: mean cross-entropy over target tokens whose label is not -100.
    pub loss: Tensor,
    /// (b, s, d)
    pub encoder_states: Tensor,
}

/// `T5ForConditionalGeneration`: shared embedding, encoder, decoder, LM head.
#[derive(Debug, Clone)]
pub struct T5ForConditionalGeneration {
    shared: Embedding,
    encoder: T5Stack,
    decoder: T5Stack,
    /// None when tied to `shared`.
    lm_head: Option<Linear>,
    cfg: T5Config,
}

/// Additive mask from a (b, s) 0/1 padding mask: (b, 1, 1, s), 0 kept, f32::MIN masked (as HF).
fn padding_mask(mask: &Tensor, dtype: DType) -> Result<Tensor> {
    crate::bert::extended_attention_mask(mask, dtype)
}

/// Additive causal mask for queries at `past..past+t` against keys `0..past+t`: (1, 1, t, past+t).
fn causal_mask(t: usize, past: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    let k = past + t;
    let m: Vec<f32> = (0..t)
        .flat_map(|i| (0..k).map(move |j| if j <= i + past { 0.0 } else { f32::MIN }))
        .collect();
    Tensor::from_vec(m, (1, 1, t, k), dev)?.to_dtype(dtype)
}

impl T5ForConditionalGeneration {
    /// Keys `shared.weight` (v, d), `encoder.*`, `decoder.*`, and `lm_head.weight` (v, d) when
    /// `tie_word_embeddings` is false.
    pub fn new(cfg: &T5Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let (v, d) = (cfg.vocab_size, cfg.d_model);
        let unit = Init::Randn {
            mean: 0.,
            stdev: 1.0,
        };
        // a tied table is also the LM head's weight (an f32 matmul): read in f32
        let shared = match cfg.tie_word_embeddings {
            true => Embedding::new(vb.pp("shared").get_with_hints((v, d), "weight", unit)?, d),
            false => Embedding::load(&vb.pp("shared"), v, d, unit)?,
        };
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(Linear::new(
                crate::linear::get_weight(&vb.pp("lm_head"), (v, d), "weight", unit)?,
                None,
            ))
        };
        Ok(Self {
            shared,
            encoder: T5Stack::new(cfg, false, vb.pp("encoder"))?,
            decoder: T5Stack::new(cfg, true, vb.pp("decoder"))?,
            lm_head,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &T5Config {
        &self.cfg
    }

    /// The shared token embedding table (`shared.weight`, (v, d)).
    pub fn shared(&self) -> &Tensor {
        self.shared.embeddings()
    }

    /// The separate LM head (`lm_head.weight`, (v, d)); None when tied to `shared`.
    pub fn lm_head(&self) -> Option<&Tensor> {
        self.lm_head.as_ref().and_then(|l| l.weight())
    }

    /// The shared token embedding: ids (b, s) u32 -> (b, s, d).
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        self.shared.forward(ids)
    }

    /// Runs the encoder. attention_mask: (b, s) 0/1 (None = all ones) -> states (b, s, d).
    pub fn encode(
        &self,
        input: T5Input,
        attention_mask: Option<&Tensor>,
        route: Route,
        train: bool,
    ) -> Result<Tensor> {
        let xs = match input {
            T5Input::Ids(ids) => self.embed(ids)?,
            T5Input::Embeds(e) => e.clone(),
        };
        let (_b, s, d) = xs.dims3()?;
        if d != self.cfg.d_model {
            candle_core::bail!("encoder input width {d} != d_model {}", self.cfg.d_model)
        }
        let mask = match attention_mask {
            Some(m) => {
                if m.dims2()? != (xs.dim(0)?, s) {
                    candle_core::bail!(
                        "attention_mask shape {:?} does not match the input (b, s) = ({}, {s})",
                        m.shape(),
                        xs.dim(0)?
                    )
                }
                Some(padding_mask(m, xs.dtype())?)
            }
            None => None,
        };
        let stack = &self.encoder;
        let bias = stack
            .first_attention()
            .compute_bias(s, s, 0, xs.device())?
            .map(|b| b.to_dtype(xs.dtype()))
            .transpose()?;
        let mut h = dropout(&xs, stack.dropout, train)?;
        for block in &stack.block {
            h = block.forward(&h, bias.as_ref(), mask.as_ref(), None, None, route, train)?;
        }
        dropout(&stack.final_layer_norm.forward(&h)?, stack.dropout, train)
    }

    /// Every decoder layer's cross-attention keys and values of `encoder_states` (b, s, d).
    fn cross_key_values(&self, encoder_states: &Tensor) -> Result<Vec<KeyValue>> {
        self.decoder
            .block
            .iter()
            .map(|b| {
                b.cross_attn
                    .as_ref()
                    .expect("decoder blocks have cross-attention")
                    .enc_dec_attention
                    .key_value(encoder_states)
            })
            .collect()
    }

    /// Prepares incremental decoding: computes every decoder layer's cross-attention K/V from
    /// encoder_states (b, s, d) once; encoder_mask (b, s) 0/1 or None.
    pub fn start_decoding(
        &self,
        encoder_states: &Tensor,
        encoder_mask: Option<&Tensor>,
    ) -> Result<T5Cache> {
        let cross_kv = self.cross_key_values(encoder_states)?;
        let encoder_mask = match encoder_mask {
            Some(m) => Some(padding_mask(m, encoder_states.dtype())?),
            None => None,
        };
        Ok(T5Cache {
            self_kv: vec![None; self.decoder.block.len()],
            cross_kv,
            encoder_mask,
            past: 0,
            rows_per_input: 1,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn run_decoder(
        &self,
        ids: &Tensor,
        cross_kv: &[KeyValue],
        encoder_mask: Option<&Tensor>,
        mut self_kv: Option<&mut Vec<Option<KeyValue>>>,
        past: usize,
        route: Route,
        train: bool,
    ) -> Result<Tensor> {
        let xs = self.embed(ids)?;
        let (_b, t, _d) = xs.dims3()?;
        let stack = &self.decoder;
        let bias = stack
            .first_attention()
            .compute_bias(t, past + t, past, xs.device())?
            .map(|b| b.to_dtype(xs.dtype()))
            .transpose()?;
        let mask = if t > 1 {
            Some(causal_mask(t, past, xs.dtype(), xs.device())?)
        } else {
            None
        };
        let mut h = dropout(&xs, stack.dropout, train)?;
        for (i, block) in stack.block.iter().enumerate() {
            let entry = self_kv.as_deref_mut().map(|c| &mut c[i]);
            h = block.forward(
                &h,
                bias.as_ref(),
                mask.as_ref(),
                entry,
                Some((&cross_kv[i], encoder_mask)),
                route,
                train,
            )?;
        }
        let h = dropout(&stack.final_layer_norm.forward(&h)?, stack.dropout, train)?;
        self.lm_logits(&h)
    }

    /// decoder hidden (b, t, d) -> logits (b, t, v)
    fn lm_logits(&self, h: &Tensor) -> Result<Tensor> {
        match &self.lm_head {
            Some(head) => head.forward(h),
            None => {
                let h = (h * (self.cfg.d_model as f64).powf(-0.5))?;
                h.broadcast_matmul(&self.shared.embeddings().t()?)
            }
        }
    }

    /// Full-sequence decoder (training, scoring): decoder_input_ids (b, t) u32, encoder_states
    /// (b, s, d), encoder_mask (b, s) 0/1 or None -> logits (b, t, v). Causal self-attention.
    pub fn decode(
        &self,
        decoder_input_ids: &Tensor,
        encoder_states: &Tensor,
        encoder_mask: Option<&Tensor>,
        route: Route,
        train: bool,
    ) -> Result<Tensor> {
        let cross_kv = self.cross_key_values(encoder_states)?;
        let mask = match encoder_mask {
            Some(m) => Some(padding_mask(m, encoder_states.dtype())?),
            None => None,
        };
        self.run_decoder(
            decoder_input_ids,
            &cross_kv,
            mask.as_ref(),
            None,
            0,
            route,
            train,
        )
    }

    /// One incremental decoding step (inference, no dropout): ids (b, t) u32, the next t tokens of
    /// each row (t = 1 while generating) -> logits (b, t, v). Appends to `cache`.
    pub fn decode_step(&self, ids: &Tensor, cache: &mut T5Cache, route: Route) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let cb = cache.batch_size()?;
        if b != cb {
            candle_core::bail!("decode_step: {b} rows of ids but the cache holds {cb}")
        }
        let past = cache.past;
        let logits = self.run_decoder(
            ids,
            &cache.cross_kv,
            cache.encoder_mask.as_ref(),
            Some(&mut cache.self_kv),
            past,
            route,
            false,
        )?;
        cache.past += t;
        Ok(logits)
    }

    /// HF `_shift_right`: labels (b, t) with -100 -> decoder inputs (b, t) u32:
    /// `[decoder_start, labels[..t-1]]`, -100 replaced by `pad_token_id`.
    pub fn shift_right(&self, labels: &[Vec<i64>], dev: &Device) -> Result<Tensor> {
        let start = self.cfg.decoder_start_token_id();
        let pad = self.cfg.pad_token_id;
        let b = labels.len();
        let t = labels.first().map(|r| r.len()).unwrap_or(0);
        let mut out = Vec::with_capacity(b * t);
        for row in labels {
            if t > 0 {
                out.push(start);
            }
            for &l in row.iter().take(t.saturating_sub(1)) {
                out.push(if l == -100 { pad } else { l as u32 });
            }
        }
        Tensor::from_vec(out, (b, t), dev)
    }

    /// Training forward (HF `T5ForConditionalGeneration(labels=...)`): encodes, shifts `labels`
    /// right to make the decoder input, and returns full-sequence logits and the loss.
    /// labels: (b, t) integer (i64/u32/...) with -100 for ignored positions.
    pub fn forward_train(
        &self,
        input: T5Input,
        attention_mask: Option<&Tensor>,
        labels: &Tensor,
        route: Route,
        train: bool,
    ) -> crate::Result<T5Output> {
        let rows = labels.to_dtype(DType::I64)?.to_vec2::<i64>()?;
        let v = self.cfg.vocab_size as i64;
        for (i, row) in rows.iter().enumerate() {
            if let Some(l) = row.iter().find(|&&l| l != -100 && !(0..v).contains(&l)) {
                crate::input_err!("labels row {i} holds {l}: not -100 and not a token id < {v}")
            }
        }
        let encoder_states = self.encode(input, attention_mask, route, train)?;
        let dec_in = self.shift_right(&rows, labels.device())?;
        let logits = self.decode(&dec_in, &encoder_states, attention_mask, route, train)?;
        let loss = masked_cross_entropy(&logits, &rows)?;
        Ok(T5Output {
            logits,
            loss,
            encoder_states,
        })
    }
}

/// Mean token cross-entropy over positions whose label is not -100 (PyTorch `CrossEntropyLoss(
/// ignore_index=-100)`): logits (b, t, v), labels b rows of t -> scalar. Differentiable.
pub fn masked_cross_entropy(logits: &Tensor, labels: &[Vec<i64>]) -> crate::Result<Tensor> {
    let (b, t, v) = logits.dims3()?;
    if labels.len() != b || labels.iter().any(|r| r.len() != t) {
        crate::input_err!("labels shape does not match logits (b, t) = ({b}, {t})")
    }
    let mut idx = Vec::with_capacity(b * t);
    let mut keep = Vec::with_capacity(b * t);
    for &l in labels.iter().flatten() {
        if l == -100 {
            idx.push(0u32);
            keep.push(0f32);
        } else {
            idx.push(l as u32);
            keep.push(1f32);
        }
    }
    let count: f32 = keep.iter().sum();
    if count == 0.0 {
        crate::input_err!("every label is -100: no target token to compute a loss on")
    }
    let dev = logits.device();
    let logits = logits.to_dtype(DType::F32)?.reshape((b * t, v))?;
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let log_probs = shifted.broadcast_sub(&lse)?;
    let idx = Tensor::from_vec(idx, (b * t, 1), dev)?;
    let picked = log_probs.gather(&idx, 1)?.squeeze(1)?;
    let keep = Tensor::from_vec(keep, b * t, dev)?;
    let nll = (picked * keep)?.sum_all()?.neg()?;
    Ok((nll / count as f64)?)
}
