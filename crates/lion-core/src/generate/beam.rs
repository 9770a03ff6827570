//! Beam search as HF's `BeamSearchScorer` (length penalty, early stopping, n best hypotheses).

use super::*;

/// Order of [`topk`]: value descending, NaN last, ties by lower index.
pub(super) fn rank_cmp(xs: &[f32], a: usize, b: usize) -> std::cmp::Ordering {
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
pub(super) fn topk(xs: &[f32], k: usize) -> Vec<usize> {
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
pub(super) fn log_softmax_rows(rows: &mut [Vec<f32>]) {
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
pub(super) struct BeamState {
    running: Vec<Vec<u32>>,
    running_scores: Vec<f32>,
    finished: Vec<Vec<u32>>,
    finished_scores: Vec<f32>,
    is_finished: Vec<bool>,
    heuristic_unsatisfied: bool,
}

pub(super) fn beam_search(
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
