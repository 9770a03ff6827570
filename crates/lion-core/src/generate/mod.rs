//! Text generation over the T5 decoder: greedy search and beam search, with the semantics of HF
//! `transformers` `generate` (v5 `GenerationMixin._sample` / `_beam_search`, with the repetition
//! penalty and min-length logits processors, and max-length / EOS stopping criteria).
//!
//! The encoder runs once per input; for beam search each decoder layer's cross-attention K/V are
//! computed once per input and copied to its beams ([`T5Cache`]); reordering beams moves only the
//! self-attention cache (the cross K/V rows of one input's beams are equal). Inputs of different lengths
//! are batched with a padding mask.
//!
//! HF semantics reproduced here (defaults are LION's, `lion_t5.py` L345-392):
//! - `max_new_tokens`: the decoder sequence (which starts with `decoder_start_token_id`) is at most
//!   `1 + max_new_tokens` long.
//! - `min_length`: counts the decoder start token; while the sequence is shorter, EOS is forbidden.
//! - `repetition_penalty`: every token already in the row's decoder sequence (start token
//!   included) has its score divided by the penalty when positive, multiplied when negative. Greedy
//!   applies it to the logits, beam search to the log-probabilities (as HF does).
//! - beam search keeps the top `2 * num_beams` candidates per step; a candidate that ends in EOS
//!   (or reaches the maximum length) is a finished hypothesis only if it ranks within the top
//!   `num_beams`; finished scores are `sum log p / (generated length ^ length_penalty)`.
//! - `early_stopping`: `True` stops a batch item once `num_beams` hypotheses are finished; `False`
//!   (the default) stops when the best running beam, length-normalised at the current length, can
//!   no longer beat the worst finished one; `Never` uses the maximum length for that bound when
//!   `length_penalty > 0`.
//! - sampling (`sampling: Some(..)`, HF `do_sample=True` with `num_beams=1`): after the logits
//!   processors above, the warpers in HF's order, temperature then top-k then top-p (nucleus),
//!   then one draw from the softmax. The random numbers are our own (SplitMix64, one stream per
//!   output row derived from the seed and the row's index among its input's
//!   `num_return_sequences`), so the same seed gives the same tokens on every platform and in
//!   any batch, but not PyTorch's tokens.
//! - `num_return_sequences`: beam search returns each input's best `n <= num_beams` finished
//!   hypotheses; sampling draws `n` sequences per input; greedy search allows only 1 (as HF).

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::adapter::Route;
use crate::preprocess::Rng;
use crate::t5::{T5Cache, T5ForConditionalGeneration, T5Input};
use crate::{input_err, Result};

mod beam;
mod search;

use beam::*;
use search::*;

/// HF's `early_stopping` (`True`, `False`, `"never"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EarlyStopping {
    /// Stop a batch item as soon as `num_beams` hypotheses are finished.
    True,
    /// Stop when the heuristic says the running beams cannot improve (HF default).
    #[default]
    False,
    /// Canonical beam search bound (with `length_penalty > 0`, assumes the maximum length).
    Never,
}

/// Multinomial sampling (HF `do_sample=True`): the warpers applied to the processed logits
/// before the draw.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    /// > 0: the logits are divided by it (below 1 sharpens, above 1 flattens).
    pub temperature: f32,
    /// In (0, 1]: keep the smallest set of most likely tokens whose probabilities add up to more
    /// than `top_p` (nucleus sampling); 1 keeps every token.
    pub top_p: f32,
    /// Keep only the `k` most likely tokens (ties with the k-th kept); `None` keeps every token
    /// (HF's `GenerationConfig` defaults to 50).
    pub top_k: Option<usize>,
    /// Seed of the random numbers: the same seed and inputs give the same tokens.
    pub seed: u64,
}

/// Decoding settings. `Default` gives LION's (`num_beams` 5, `max_new_tokens` 256, `min_length` 1,
/// `repetition_penalty` 1.5, `length_penalty` 1.0, HF's `early_stopping` False), no sampling and
/// one sequence per input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationConfig {
    /// 1 = greedy search (or sampling, with `sampling`).
    pub num_beams: usize,
    pub max_new_tokens: usize,
    pub min_length: usize,
    pub repetition_penalty: f32,
    pub length_penalty: f32,
    pub early_stopping: EarlyStopping,
    /// Sample instead of taking the best token (needs `num_beams` 1); `None`: greedy / beam search.
    #[serde(default)]
    pub sampling: Option<Sampling>,
    /// Sequences returned per input, consecutive in the output (HF `num_return_sequences`).
    #[serde(default = "one")]
    pub num_return_sequences: usize,
}

fn one() -> usize {
    1
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            num_beams: 5,
            max_new_tokens: 256,
            min_length: 1,
            repetition_penalty: 1.5,
            length_penalty: 1.0,
            early_stopping: EarlyStopping::False,
            sampling: None,
            num_return_sequences: 1,
        }
    }
}

impl GenerationConfig {
    pub fn validate(&self) -> Result<()> {
        if self.num_beams == 0 {
            input_err!("num_beams must be at least 1")
        }
        if self.max_new_tokens == 0 {
            input_err!("max_new_tokens must be at least 1")
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            input_err!(
                "repetition_penalty must be a positive number, got {}",
                self.repetition_penalty
            )
        }
        if !self.length_penalty.is_finite() {
            input_err!("length_penalty must be finite")
        }
        let n = self.num_return_sequences;
        if n == 0 {
            input_err!("num_return_sequences must be at least 1")
        }
        match &self.sampling {
            Some(s) => {
                if self.num_beams != 1 {
                    input_err!(
                        "sampling takes num_beams 1 (beam sampling is not implemented), got {}",
                        self.num_beams
                    )
                }
                if !(s.temperature > 0.0 && s.temperature.is_finite()) {
                    input_err!(
                        "temperature must be a positive number, got {}",
                        s.temperature
                    )
                }
                if !(s.top_p > 0.0 && s.top_p <= 1.0) {
                    input_err!("top_p must be in (0, 1], got {}", s.top_p)
                }
                if s.top_k == Some(0) {
                    input_err!("top_k must be at least 1")
                }
            }
            None if self.num_beams == 1 && n > 1 => {
                input_err!(
                    "greedy search returns one sequence per input, not {n} (sample or use beams)"
                )
            }
            None if n > self.num_beams => {
                input_err!(
                    "num_return_sequences ({n}) must be at most num_beams ({})",
                    self.num_beams
                )
            }
            None => {}
        }
        Ok(())
    }
}

/// Generates text token ids for each input row.
///
/// input: ids (b, s) u32 or embeddings (b, s, d); attention_mask: (b, s) 0/1 (None = all ones).
/// Returns, per row, the generated ids without the decoder start token, ending with EOS when the
/// row finished (otherwise `max_new_tokens` long); with `num_return_sequences` n, n rows per input
/// (input i's at `i * n .. (i + 1) * n`). `num_beams == 1` is greedy search or sampling.
pub fn generate(
    model: &T5ForConditionalGeneration,
    input: T5Input,
    attention_mask: Option<&Tensor>,
    route: Route,
    cfg: &GenerationConfig,
) -> Result<Vec<Vec<u32>>> {
    generate_streaming(model, input, attention_mask, route, cfg, None)
}

/// Called once per decoding step of greedy search and sampling with the token each output row
/// got (`None` for a row that had already finished); returning `false` stops generation there
/// (the rows are returned as they are, unfinished). Beam search never calls it: its best
/// hypothesis is known only at the end (as in HF, whose streamers refuse beam search).
pub type OnStep<'a> = &'a mut dyn FnMut(&[Option<u32>]) -> bool;

/// [`generate`], calling `on_step` after every step of greedy search or sampling.
pub fn generate_streaming(
    model: &T5ForConditionalGeneration,
    input: T5Input,
    attention_mask: Option<&Tensor>,
    route: Route,
    cfg: &GenerationConfig,
    on_step: Option<OnStep>,
) -> Result<Vec<Vec<u32>>> {
    cfg.validate()?;
    let _span = tracing::debug_span!("generate", num_beams = cfg.num_beams).entered();
    let encoder_states = model.encode(input, attention_mask, route, false)?;
    if cfg.num_beams == 1 {
        greedy_or_sample(model, &encoder_states, attention_mask, route, cfg, on_step)
    } else {
        beam_search(model, &encoder_states, attention_mask, route, cfg)
    }
}

#[cfg(test)]
mod tests;
