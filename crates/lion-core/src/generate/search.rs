//! The token choice of one step: HF's logits processors (repetition penalty, EOS before
//! `min_length`), greedy argmax or a seeded sample after the warpers (temperature, top-k, top-p),
//! and the greedy / sampling loop.

use super::*;

/// HF `RepetitionPenaltyLogitsProcessor` on one row.
pub(super) fn repetition_penalty(scores: &mut [f32], history: &[u32], penalty: f32) {
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
pub(super) fn process(scores: &mut [f32], history: &[u32], cfg: &GenerationConfig, eos: u32) {
    repetition_penalty(scores, history, cfg.repetition_penalty);
    if history.len() < cfg.min_length {
        if let Some(s) = scores.get_mut(eos as usize) {
            *s = f32::NEG_INFINITY;
        }
    }
}

/// logits (n, 1, v) -> n rows of f32
pub(super) fn rows(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    Ok(logits.squeeze(1)?.to_dtype(DType::F32)?.to_vec2::<f32>()?)
}

pub(super) fn last_tokens(seqs: &[Vec<u32>], dev: &Device) -> Result<Tensor> {
    let last: Vec<u32> = seqs.iter().map(|s| *s.last().expect("non-empty")).collect();
    let n = last.len();
    Ok(Tensor::from_vec(last, (n, 1), dev)?)
}

/// The first maximum (`torch.argmax`); a NaN never wins over a number.
pub(super) fn argmax(scores: &[f32]) -> usize {
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
pub(super) fn row_rng(seed: u64, j: usize) -> Rng {
    let mut mix = Rng::new(seed ^ (j as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
    Rng::new(mix.next_u64())
}

/// HF's warpers in order (temperature, top-k, top-p) on one row of processed scores, in place:
/// removed tokens become `-inf`.
pub(super) fn warp(scores: &mut [f32], s: &Sampling) {
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
pub(super) fn softmax(scores: &[f32]) -> Vec<f64> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = scores.iter().map(|&x| (x as f64 - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.into_iter().map(|x| x / sum).collect()
}

/// One draw from the warped row's softmax (`torch.multinomial`). A row without a finite score
/// (everything removed or NaN) falls back to the argmax.
pub(super) fn sample(scores: &mut [f32], s: &Sampling, rng: &mut Rng) -> usize {
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
pub(super) fn greedy_or_sample(
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
