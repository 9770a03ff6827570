//! Scores and thresholds: micro precision / recall / F1, the best global threshold and per-class
//! thresholds tuned on validation.

use super::*;

/// Micro precision / recall / F1 of thresholded predictions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Prf {
    pub tp: usize,
    pub fp: usize,
    #[serde(rename = "fn")]
    pub fn_: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

impl Prf {
    pub fn from_counts(tp: usize, fp: usize, fn_: usize) -> Self {
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let precision = ratio(tp, tp + fp);
        let recall = ratio(tp, tp + fn_);
        let f1 = ratio(2 * tp, 2 * tp + fp + fn_);
        Self {
            tp,
            fp,
            fn_,
            precision,
            recall,
            f1,
        }
    }
}

/// Micro P/R/F1 over the classes where `keep(class)` holds: a tag is predicted when
/// `probs[i][c] > thresholds[c]`.
pub fn micro_prf(
    probs: &[Vec<f32>],
    targets: &[Vec<usize>],
    thresholds: &[f32],
    keep: impl Fn(usize) -> bool,
) -> Prf {
    let (mut tp, mut fp, mut fn_) = (0, 0, 0);
    for (p, t) in probs.iter().zip(targets) {
        for (c, (&pc, &th)) in p.iter().zip(thresholds).enumerate() {
            if !keep(c) {
                continue;
            }
            match (pc > th, t.contains(&c)) {
                (true, true) => tp += 1,
                (true, false) => fp += 1,
                (false, true) => fn_ += 1,
                (false, false) => {}
            }
        }
    }
    Prf::from_counts(tp, fp, fn_)
}

/// The global threshold in 0.01..=0.99 (0.01 steps) with the best micro F1 (the lowest on ties).
pub fn best_global_threshold(probs: &[Vec<f32>], targets: &[Vec<usize>]) -> (f32, Prf) {
    let c = probs.first().map_or(0, Vec::len);
    let mut best = (0.5f32, Prf::default());
    let mut first = true;
    for k in 1..100 {
        let t = k as f32 / 100.0;
        let prf = micro_prf(probs, targets, &vec![t; c], |_| true);
        if first || prf.f1 > best.1.f1 {
            best = (t, prf);
            first = false;
        }
    }
    best
}

/// Per-class thresholds that raise the micro F1 on (`probs`, `targets`): starting from `global`
/// for every class, each class with at least `min_positives` positives in turn takes the
/// threshold (0.01 grid) that maximises the micro F1 over all classes with the others fixed (one
/// pass, in class order; ties keep the current one). Classes with fewer positives keep `global`.
pub fn tune_class_thresholds(
    probs: &[Vec<f32>],
    targets: &[Vec<usize>],
    global: f32,
    min_positives: usize,
) -> Vec<f32> {
    let c = probs.first().map_or(0, Vec::len);
    let mut th = vec![global; c];
    let class_counts = |k: usize, t: f32| {
        let (mut tp, mut fp, mut fn_) = (0i64, 0i64, 0i64);
        for (p, y) in probs.iter().zip(targets) {
            match (p[k] > t, y.contains(&k)) {
                (true, true) => tp += 1,
                (true, false) => fp += 1,
                (false, true) => fn_ += 1,
                _ => {}
            }
        }
        (tp, fp, fn_)
    };
    let all = micro_prf(probs, targets, &th, |_| true);
    let (mut tp, mut fp, mut fn_) = (all.tp as i64, all.fp as i64, all.fn_ as i64);
    let f1 = |tp: i64, fp: i64, fn_: i64| {
        let d = 2 * tp + fp + fn_;
        if d == 0 {
            0.0
        } else {
            2.0 * tp as f64 / d as f64
        }
    };
    for (k, th_k) in th.iter_mut().enumerate() {
        let positives = targets.iter().filter(|y| y.contains(&k)).count();
        if positives < min_positives {
            continue;
        }
        let cur = class_counts(k, *th_k);
        let (rtp, rfp, rfn) = (tp - cur.0, fp - cur.1, fn_ - cur.2);
        let mut best = (f1(tp, fp, fn_), *th_k, cur);
        for step in 1..100 {
            let t = step as f32 / 100.0;
            let n = class_counts(k, t);
            let f = f1(rtp + n.0, rfp + n.1, rfn + n.2);
            if f > best.0 {
                best = (f, t, n);
            }
        }
        *th_k = best.1;
        (tp, fp, fn_) = (rtp + best.2 .0, rfp + best.2 .1, rfn + best.2 .2);
    }
    th
}

/// Val positives a class needs for its own threshold in [`train_tagger`].
pub const MIN_VAL_POSITIVES: usize = 5;
