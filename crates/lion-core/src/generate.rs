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

/// HF `RepetitionPenaltyLogitsProcessor` on one row.
fn repetition_penalty(scores: &mut [f32], history: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = vec![false; scores.len()];
    for &t in history {
        if let Some(s) = seen.get_mut(t as usize) {
            *s = true;
        }
    }
    for (s, &hit) in scores.iter_mut().zip(&seen) {
        if hit {
            *s = if *s < 0.0 { *s * penalty } else { *s / penalty };
        }
    }
}

/// Logits processors in HF's order: repetition penalty, then min length.
fn process(scores: &mut [f32], history: &[u32], cfg: &GenerationConfig, eos: u32) {
    repetition_penalty(scores, history, cfg.repetition_penalty);
    if history.len() < cfg.min_length {
        if let Some(s) = scores.get_mut(eos as usize) {
            *s = f32::NEG_INFINITY;
        }
    }
}

/// logits (n, 1, v) -> n rows of f32
fn rows(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    Ok(logits.squeeze(1)?.to_dtype(DType::F32)?.to_vec2::<f32>()?)
}

fn last_tokens(seqs: &[Vec<u32>], dev: &Device) -> Result<Tensor> {
    let last: Vec<u32> = seqs.iter().map(|s| *s.last().expect("non-empty")).collect();
    let n = last.len();
    Ok(Tensor::from_vec(last, (n, 1), dev)?)
}

/// The first maximum (`torch.argmax`); a NaN never wins over a number.
fn argmax(scores: &[f32]) -> usize {
    let mut best = 0;
    for (j, &s) in scores.iter().enumerate() {
        if s > scores[best] || (scores[best].is_nan() && !s.is_nan()) {
            best = j;
        }
    }
    best
}

/// The random stream of output row `j` of an input (its index among the input's
/// `num_return_sequences`): independent streams per `j`, the same for every input and batch.
fn row_rng(seed: u64, j: usize) -> Rng {
    let mut mix = Rng::new(seed ^ (j as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
    Rng::new(mix.next_u64())
}

/// HF's warpers in order (temperature, top-k, top-p) on one row of processed scores, in place:
/// removed tokens become `-inf`.
fn warp(scores: &mut [f32], s: &Sampling) {
    if s.temperature != 1.0 {
        scores.iter_mut().for_each(|x| *x /= s.temperature);
    }
    if let Some(k) = s.top_k {
        if k < scores.len() {
            // TopKLogitsWarper: remove what is below the k-th largest value
            let kth = scores[topk(scores, k)[k - 1]];
            scores
                .iter_mut()
                .filter(|x| **x < kth)
                .for_each(|x| *x = f32::NEG_INFINITY);
        }
    }
    if s.top_p < 1.0 {
        // TopPLogitsWarper: sort ascending, remove the tokens whose cumulative probability is
        // at most 1 - top_p, always keep the most likely one. Ties: the lower index ranks higher
        // (so a tiny top_p keeps exactly greedy's token).
        let probs = softmax(scores);
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| rank_cmp(scores, b, a));
        let mut cum = 0f64;
        let last = order.len() - 1;
        for (r, &i) in order.iter().enumerate() {
            cum += probs[i];
            if r < last && cum <= 1.0 - s.top_p as f64 {
                scores[i] = f32::NEG_INFINITY;
            }
        }
    }
}

/// Probabilities of one row of scores, in f64 (`-inf` gives 0).
fn softmax(scores: &[f32]) -> Vec<f64> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = scores.iter().map(|&x| (x as f64 - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.into_iter().map(|x| x / sum).collect()
}

/// One draw from the warped row's softmax (`torch.multinomial`). A row without a finite score
/// (everything removed or NaN) falls back to the argmax.
fn sample(scores: &mut [f32], s: &Sampling, rng: &mut Rng) -> usize {
    warp(scores, s);
    let probs = softmax(scores);
    if probs.iter().any(|p| !p.is_finite()) {
        return argmax(scores);
    }
    let u = rng.uniform(0.0, 1.0);
    let mut cum = 0.0;
    let mut last_kept = argmax(scores);
    for (i, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            cum += p;
            last_kept = i;
            if u < cum {
                return i;
            }
        }
    }
    // rounding left u above the total: the last token with any probability
    last_kept
}

/// Greedy search, or sampling with `cfg.sampling`; `num_return_sequences` rows per input share
/// the input's cross-attention K/V.
fn greedy_or_sample(
    model: &T5ForConditionalGeneration,
    encoder_states: &Tensor,
    attention_mask: Option<&Tensor>,
    route: Route,
    cfg: &GenerationConfig,
    mut on_step: Option<OnStep>,
) -> Result<Vec<Vec<u32>>> {
    let mcfg = model.config();
    let (eos, pad) = (mcfg.eos_token_id, mcfg.pad_token_id);
    let n = cfg.num_return_sequences;
    let b = encoder_states.dim(0)? * n;
    let dev = encoder_states.device();
    let max_length = 1 + cfg.max_new_tokens;
    let mut cache = model.start_decoding(encoder_states, attention_mask)?;
    if n > 1 {
        cache.share_inputs(n)?;
    }
    let mut rngs: Vec<Rng> = match &cfg.sampling {
        Some(s) => (0..b).map(|r| row_rng(s.seed, r % n)).collect(),
        None => Vec::new(),
    };
    let mut seqs = vec![vec![mcfg.decoder_start_token_id()]; b];
    let mut unfinished = vec![true; b];
    // lengths of the real (unpadded) outputs
    let mut out_len = vec![0usize; b];
    while seqs[0].len() < max_length && unfinished.iter().any(|&u| u) {
        let logits = rows(&model.decode_step(&last_tokens(&seqs, dev)?, &mut cache, route)?)?;
        let mut step = vec![None; b];
        for (i, mut scores) in logits.into_iter().enumerate() {
            if !unfinished[i] {
                seqs[i].push(pad);
                continue;
            }
            process(&mut scores, &seqs[i], cfg, eos);
            let tok = match &cfg.sampling {
                Some(s) => sample(&mut scores, s, &mut rngs[i]),
                None => argmax(&scores),
            } as u32;
            seqs[i].push(tok);
            step[i] = Some(tok);
            out_len[i] += 1;
            if tok == eos {
                unfinished[i] = false;
            }
        }
        if let Some(f) = on_step.as_mut() {
            if !f(&step) {
                tracing::debug!(
                    steps = seqs[0].len() - 1,
                    "generation stopped by its caller"
                );
                break;
            }
        }
    }
    Ok(seqs
        .into_iter()
        .zip(out_len)
        .map(|(s, n)| s[1..1 + n].to_vec())
        .collect())
}

/// Order of [`topk`]: value descending, NaN last, ties by lower index.
fn rank_cmp(xs: &[f32], a: usize, b: usize) -> std::cmp::Ordering {
    xs[b]
        .partial_cmp(&xs[a])
        .unwrap_or_else(|| xs[a].is_nan().cmp(&xs[b].is_nan()))
        .then(a.cmp(&b))
}

/// The `k` best of `xs` (descending, ties by lower index), as HF's `torch.topk`.
///
/// One pass keeping the best `k` so far in order: over a (beams x vocab) row almost every value
/// is rejected by one comparison with the current k-th, with no index vector to allocate or
/// partition.
fn topk(xs: &[f32], k: usize) -> Vec<usize> {
    let k = k.min(xs.len());
    let mut top: Vec<usize> = Vec::with_capacity(k + 1);
    if k == 0 {
        return top;
    }
    for (i, &x) in xs.iter().enumerate() {
        if top.len() == k {
            let worst = top[k - 1];
            if x < xs[worst] || rank_cmp(xs, i, worst) != std::cmp::Ordering::Less {
                continue;
            }
        }
        let at = top.partition_point(|&t| rank_cmp(xs, t, i) == std::cmp::Ordering::Less);
        top.insert(at, i);
        top.truncate(k);
    }
    top
}

/// In place, each row to `x - max - ln(sum(exp(x - max)))` (`torch.log_softmax`), with the
/// vectorised [`crate::kernels::exp`].
fn log_softmax_rows(rows: &mut [Vec<f32>]) {
    for row in rows {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if !max.is_finite() {
            // all -inf (every token banned) or a NaN/inf logit: the plain formula's answer
            let lse = max + row.iter().map(|&x| (x - max).exp()).sum::<f32>().ln();
            row.iter_mut().for_each(|x| *x -= lse);
            continue;
        }
        // 8 partial sums: a loop that vectorises
        let mut acc = [0f32; 8];
        let chunks = row.chunks_exact(8);
        let tail: f32 = chunks
            .remainder()
            .iter()
            .map(|&x| crate::kernels::exp(x - max))
            .sum();
        for c in chunks {
            for (a, &x) in acc.iter_mut().zip(c) {
                *a += crate::kernels::exp(x - max);
            }
        }
        let lse = max + (acc.iter().sum::<f32>() + tail).ln();
        row.iter_mut().for_each(|x| *x -= lse);
    }
}

/// Per batch item state of HF's vectorised beam search.
struct BeamState {
    running: Vec<Vec<u32>>,
    running_scores: Vec<f32>,
    finished: Vec<Vec<u32>>,
    finished_scores: Vec<f32>,
    is_finished: Vec<bool>,
    heuristic_unsatisfied: bool,
}

fn beam_search(
    model: &T5ForConditionalGeneration,
    encoder_states: &Tensor,
    attention_mask: Option<&Tensor>,
    route: Route,
    cfg: &GenerationConfig,
) -> Result<Vec<Vec<u32>>> {
    let mcfg = model.config();
    let eos = mcfg.eos_token_id;
    let nb = cfg.num_beams;
    let b = encoder_states.dim(0)?;
    let dev = encoder_states.device().clone();
    let max_length = 1 + cfg.max_new_tokens;
    let prompt_len = 1usize;
    let beams_to_keep = 2 * nb; // max(2, 1 + n_eos) * num_beams with one EOS id
    let lp = cfg.length_penalty;

    // cross-attention K/V projected once per input and shared by its beams (row i*nb + j =
    // input i): the decoder reads them once per input, not once per beam
    let mut cache: T5Cache = model.start_decoding(encoder_states, attention_mask)?;
    cache.share_inputs(nb)?;

    let start = mcfg.decoder_start_token_id();
    let mut st: Vec<BeamState> = (0..b)
        .map(|_| {
            let mut running_scores = vec![-1e9f32; nb];
            running_scores[0] = 0.0;
            BeamState {
                running: vec![vec![start]; nb],
                running_scores,
                finished: vec![vec![start]; nb],
                finished_scores: vec![-1e9; nb],
                is_finished: vec![false; nb],
                heuristic_unsatisfied: true,
            }
        })
        .collect();
    let mut cur_len = prompt_len;
    loop {
        let flat: Vec<Vec<u32>> = st.iter().flat_map(|s| s.running.clone()).collect();
        let logits = model.decode_step(&last_tokens(&flat, &dev)?, &mut cache, route)?;
        let mut log_probs = rows(&logits)?;
        log_softmax_rows(&mut log_probs);
        let v = log_probs[0].len();
        for (row, hist) in log_probs.iter_mut().zip(&flat) {
            process(row, hist, cfg, eos);
        }
        let mut all_hit = true;
        let mut reorder = Vec::with_capacity(b * nb);
        for (bi, s) in st.iter_mut().enumerate() {
            // accumulated scores over (beam, token), flattened beam-major
            let mut acc = Vec::with_capacity(nb * v);
            for j in 0..nb {
                let base = s.running_scores[j];
                acc.extend(log_probs[bi * nb + j].iter().map(|&x| x + base));
            }
            let top = topk(&acc, beams_to_keep);
            let mut cand_seq = Vec::with_capacity(beams_to_keep);
            let mut cand_beam = Vec::with_capacity(beams_to_keep);
            let mut cand_score = Vec::with_capacity(beams_to_keep);
            let mut cand_hit = Vec::with_capacity(beams_to_keep);
            for &ix in &top {
                let (beam, tok) = (ix / v, (ix % v) as u32);
                let mut seq = s.running[beam].clone();
                seq.push(tok);
                let hit = tok == eos || seq.len() >= max_length;
                all_hit &= hit;
                cand_seq.push(seq);
                cand_beam.push(beam);
                cand_score.push(acc[ix]);
                cand_hit.push(hit);
            }
            // e. the best num_beams unfinished candidates keep running
            let run_scores: Vec<f32> = cand_score
                .iter()
                .zip(&cand_hit)
                .map(|(&x, &h)| x + if h { -1.0e9 } else { -0.0 })
                .collect();
            let keep = topk(&run_scores, nb);
            let new_running: Vec<Vec<u32>> = keep.iter().map(|&k| cand_seq[k].clone()).collect();
            let new_scores: Vec<f32> = keep.iter().map(|&k| run_scores[k]).collect();
            reorder.extend(keep.iter().map(|&k| (bi * nb + cand_beam[k]) as u32));
            // f. finished hypotheses among the top num_beams candidates
            let denom = ((cur_len + 1 - prompt_len) as f64).powf(lp as f64) as f32;
            let all_done = s.is_finished.iter().all(|&f| f);
            let mut merged_scores = s.finished_scores.clone();
            let mut did = Vec::with_capacity(beams_to_keep);
            for (k, &x) in cand_score.iter().enumerate() {
                let just = cand_hit[k] && k < nb;
                let mut y = x / denom;
                if all_done && cfg.early_stopping == EarlyStopping::True {
                    y += -1.0e9;
                }
                if !s.heuristic_unsatisfied {
                    y += -1.0e9;
                }
                if !just {
                    y += -1.0e9;
                }
                merged_scores.push(y);
                did.push(just);
            }
            let best = topk(&merged_scores, nb);
            let mut finished = Vec::with_capacity(nb);
            let mut fin_scores = Vec::with_capacity(nb);
            let mut is_fin = Vec::with_capacity(nb);
            for &m in &best {
                if m < nb {
                    finished.push(s.finished[m].clone());
                    is_fin.push(s.is_finished[m]);
                } else {
                    finished.push(cand_seq[m - nb].clone());
                    is_fin.push(did[m - nb]);
                }
                fin_scores.push(merged_scores[m]);
            }
            s.running = new_running;
            s.running_scores = new_scores;
            s.finished = finished;
            s.finished_scores = fin_scores;
            s.is_finished = is_fin;
        }
        cur_len += 1;
        // g. reorder the cache to the surviving beams, update the early-stop heuristic
        // beams move only within their input, whose cross K/V rows are all equal
        cache.reorder_self(&Tensor::from_vec(reorder, b * nb, &dev)?)?;
        for s in st.iter_mut() {
            let best_len = if cfg.early_stopping == EarlyStopping::Never && lp > 0.0 {
                max_length - prompt_len
            } else {
                cur_len - prompt_len
            };
            let best_possible = s.running_scores[0] / (best_len as f64).powf(lp as f64) as f32;
            let worst = s
                .finished_scores
                .iter()
                .copied()
                .fold(f32::INFINITY, f32::min);
            let improvable = s
                .is_finished
                .iter()
                .any(|&f| best_possible > if f { worst } else { -1.0e9 });
            s.heuristic_unsatisfied &= improvable;
        }
        let improvement_possible = st.iter().any(|s| s.heuristic_unsatisfied);
        let all_finished = st.iter().all(|s| s.is_finished.iter().all(|&f| f));
        let open = !(all_finished && cfg.early_stopping == EarlyStopping::True);
        if !(improvement_possible && open && !all_hit) {
            break;
        }
    }
    // finished hypotheses are kept best first
    let n = cfg.num_return_sequences;
    Ok(st
        .into_iter()
        .flat_map(|s| {
            s.finished
                .into_iter()
                .take(n)
                .map(|f| f[prompt_len..].to_vec())
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Indices of `xs` sorted by value descending; ties keep the lower index first. NaN sorts last.
    fn argsort_desc(xs: &[f32]) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..xs.len()).collect();
        idx.sort_by(|&a, &b| {
            xs[b]
                .partial_cmp(&xs[a])
                .unwrap_or_else(|| xs[a].is_nan().cmp(&xs[b].is_nan()))
                .then(a.cmp(&b))
        });
        idx
    }

    fn sampling(temperature: f32, top_p: f32, top_k: Option<usize>) -> Sampling {
        Sampling {
            temperature,
            top_p,
            top_k,
            seed: 0,
        }
    }

    /// Draw frequencies on a toy row match the warped softmax: plain, temperature, top-k
    /// (renormalised over the kept tokens), top-p (the nucleus), chi-square-style bound.
    #[test]
    fn sampling_follows_the_warped_distribution() {
        let logits = [2.0f32, 1.0, 0.0, -1.0, 0.5];
        let soft = |t: f64, keep: &[usize]| -> Vec<f64> {
            let e: Vec<f64> = logits
                .iter()
                .enumerate()
                .map(|(i, &x)| {
                    if keep.contains(&i) {
                        (x as f64 / t).exp()
                    } else {
                        0.0
                    }
                })
                .collect();
            let z: f64 = e.iter().sum();
            e.iter().map(|x| x / z).collect()
        };
        let all = [0, 1, 2, 3, 4];
        // p at t=1: [.563, .207, .076, .028, .126]; ascending cumulative .028, .104, .230, .437:
        // top_p 0.85 removes what adds up to at most .15 ({3, 2}), top_p 0.75 at most .25
        // ({3, 2, 4})
        let cases = [
            (sampling(1.0, 1.0, None), soft(1.0, &all)),
            (sampling(0.5, 1.0, None), soft(0.5, &all)),
            (sampling(2.0, 1.0, None), soft(2.0, &all)),
            (sampling(1.0, 1.0, Some(2)), soft(1.0, &[0, 1])),
            (sampling(1.0, 0.85, None), soft(1.0, &[0, 1, 4])),
            (sampling(1.0, 0.75, None), soft(1.0, &[0, 1])),
        ];
        let draws = 40_000;
        for (s, want) in cases {
            let mut rng = row_rng(11, 0);
            let mut counts = [0usize; 5];
            for _ in 0..draws {
                let mut row = logits.to_vec();
                counts[sample(&mut row, &s, &mut rng)] += 1;
            }
            for (i, (&c, &p)) in counts.iter().zip(&want).enumerate() {
                let f = c as f64 / draws as f64;
                // 5 standard deviations of a binomial frequency, and never a removed token
                let sd = (p * (1.0 - p) / draws as f64).sqrt();
                assert!(
                    (f - p).abs() <= 5.0 * sd + 1e-12,
                    "{s:?} token {i}: {f} vs {p}"
                );
                if p == 0.0 {
                    assert_eq!(c, 0, "{s:?} token {i} was removed but drawn");
                }
            }
        }
    }

    /// A tiny top_p leaves only the most likely token (the first on ties, as argmax); top_k 1
    /// too (it keeps ties, as HF); the same seed repeats the draws, another seed does not.
    #[test]
    fn tiny_top_p_is_argmax_and_seeds_repeat() {
        let tie = [0.5f32, 3.0, 3.0, -2.0, 1.0];
        let no_tie = [0.5f32, 3.0, 2.9, -2.0, 1.0];
        for (row, s) in [
            (tie, sampling(1.0, 1e-6, None)),
            (no_tie, sampling(5.0, 1.0, Some(1))),
        ] {
            let mut rng = row_rng(3, 0);
            for _ in 0..200 {
                assert_eq!(sample(&mut row.to_vec(), &s, &mut rng), 1, "{s:?}");
            }
        }
        // top_k 1 on a tie keeps both
        let mut rng = row_rng(3, 0);
        let drawn: std::collections::BTreeSet<usize> = (0..200)
            .map(|_| sample(&mut tie.to_vec(), &sampling(1.0, 1.0, Some(1)), &mut rng))
            .collect();
        assert_eq!(drawn.into_iter().collect::<Vec<_>>(), vec![1, 2]);
        let flat = [0f32; 50];
        let s = sampling(1.0, 1.0, None);
        let draw = |seed: u64, j: usize| -> Vec<usize> {
            let mut rng = row_rng(seed, j);
            (0..30)
                .map(|_| sample(&mut flat.to_vec(), &s, &mut rng))
                .collect()
        };
        assert_eq!(draw(5, 0), draw(5, 0));
        assert_ne!(draw(5, 0), draw(6, 0));
        assert_ne!(draw(5, 0), draw(5, 1));
    }

    #[test]
    fn sampling_settings_are_validated() {
        let ok = GenerationConfig {
            num_beams: 1,
            sampling: Some(sampling(0.7, 0.9, Some(40))),
            num_return_sequences: 3,
            ..Default::default()
        };
        ok.validate().unwrap();
        for (bad, what) in [
            (
                GenerationConfig {
                    num_beams: 4,
                    ..ok.clone()
                },
                "num_beams 1",
            ),
            (
                GenerationConfig {
                    sampling: Some(sampling(0.0, 0.9, None)),
                    ..ok.clone()
                },
                "temperature",
            ),
            (
                GenerationConfig {
                    sampling: Some(sampling(1.0, 0.0, None)),
                    ..ok.clone()
                },
                "top_p",
            ),
            (
                GenerationConfig {
                    sampling: Some(sampling(1.0, 1.0, Some(0))),
                    ..ok.clone()
                },
                "top_k",
            ),
            (
                GenerationConfig {
                    sampling: None,
                    ..ok.clone()
                },
                "greedy search returns one",
            ),
            (
                GenerationConfig {
                    sampling: None,
                    num_beams: 2,
                    ..ok.clone()
                },
                "at most num_beams",
            ),
        ] {
            let e = bad.validate().unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        }
    }

    /// The one-pass top-k against a full sort, with ties, NaN and -inf.
    #[test]
    fn topk_matches_a_full_sort() {
        let mut state = 7u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u32
        };
        for n in [1usize, 2, 9, 100, 5000] {
            for k in [1usize, 2, 3, 10, 10_000] {
                // few distinct values: many ties
                let mut xs: Vec<f32> = (0..n).map(|_| (next() % 17) as f32 - 8.0).collect();
                if n > 5 {
                    xs[3] = f32::NAN;
                    xs[4] = f32::NEG_INFINITY;
                    xs[n - 1] = f32::NAN;
                }
                let mut want = argsort_desc(&xs);
                want.truncate(k);
                assert_eq!(topk(&xs, k), want, "n {n} k {k}");
            }
        }
        assert!(topk(&[], 3).is_empty());
    }

    /// The vectorised log-softmax against the plain f64 formula, including banned (-inf) tokens
    /// and an all-banned row.
    #[test]
    fn log_softmax_rows_matches_the_formula() {
        let row: Vec<f32> = (0..1003)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.37)
            .collect();
        let mut banned = row.clone();
        banned[5] = f32::NEG_INFINITY;
        let mut rows = vec![row.clone(), banned.clone(), vec![f32::NEG_INFINITY; 4]];
        log_softmax_rows(&mut rows);
        for (src, got) in [row, banned].iter().zip(&rows) {
            let max = src.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
            let lse = max
                + src
                    .iter()
                    .map(|&x| (x as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            for (&x, &y) in src.iter().zip(got) {
                if x == f32::NEG_INFINITY {
                    assert_eq!(y, f32::NEG_INFINITY);
                } else {
                    assert!((y as f64 - (x as f64 - lse)).abs() < 2e-5, "{x}: {y}");
                }
            }
        }
        assert!(rows[2].iter().all(|y| y.is_nan()), "{:?}", rows[2]);
    }
}
