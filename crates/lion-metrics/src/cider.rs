//! CIDEr-D exactly as pycocoevalcap's `Cider` computes it (n = 4, sigma = 6, clipped tf-idf
//! vectors, Gaussian length penalty, x10), over already tokenised captions.
//!
//! Faithful quirks: words are split with Python's `str.split()`; the "length" in the penalty is
//! the number of *bigrams* (pycocoevalcap counts `term_freq` when `n == 1`, the 0-based bigram
//! index); the document frequency comes from the references only; idf uses
//! `log(max(1, df))` against `log(#images)`.

use std::collections::BTreeMap;

use crate::py::py_split;

type Ngram = Vec<String>;

/// n-gram counts of one sentence, n = 1..=4.
pub(crate) fn precook(s: &str, n: usize) -> BTreeMap<Ngram, usize> {
    let words: Vec<String> = py_split(s).map(str::to_string).collect();
    let mut counts = BTreeMap::new();
    for k in 1..=n {
        if words.len() < k {
            continue;
        }
        for i in 0..=words.len() - k {
            *counts.entry(words[i..i + k].to_vec()).or_insert(0) += 1;
        }
    }
    counts
}

/// A CIDEr-D accumulator: add (hypothesis, references) pairs; the idf needs the whole corpus,
/// so scores come at the end.
#[derive(Debug, Clone)]
pub struct CiderD {
    n: usize,
    sigma: f64,
    tests: Vec<BTreeMap<Ngram, usize>>,
    refs: Vec<Vec<BTreeMap<Ngram, usize>>>,
}

impl Default for CiderD {
    fn default() -> Self {
        Self::new()
    }
}

impl CiderD {
    pub fn new() -> Self {
        Self {
            n: 4,
            sigma: 6.0,
            tests: Vec::new(),
            refs: Vec::new(),
        }
    }

    /// Adds one image: its tokenised hypothesis and (at least one) tokenised references.
    pub fn add(&mut self, hypothesis: &str, references: &[String]) {
        self.tests.push(precook(hypothesis, self.n));
        self.refs
            .push(references.iter().map(|r| precook(r, self.n)).collect());
    }

    pub fn len(&self) -> usize {
        self.tests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tests.is_empty()
    }

    /// (corpus score = mean of the per-image scores, per-image scores in the order added).
    pub fn compute(&self) -> (f64, Vec<f64>) {
        let mut df: BTreeMap<&Ngram, f64> = BTreeMap::new();
        for refs in &self.refs {
            let mut seen: std::collections::HashSet<&Ngram> = std::collections::HashSet::new();
            for r in refs {
                seen.extend(r.keys());
            }
            for g in seen {
                *df.entry(g).or_insert(0.0) += 1.0;
            }
        }
        let ref_len = (self.refs.len() as f64).ln();
        let n = self.n;
        let counts2vec = |cnts| counts2vec(cnts, &df, ref_len, n);
        let mut scores = Vec::with_capacity(self.tests.len());
        for (test, refs) in self.tests.iter().zip(&self.refs) {
            let (vh, nh, lh) = counts2vec(test);
            let mut score = vec![0.0f64; n];
            for r in refs {
                let (vr, nr, lr) = counts2vec(r);
                let delta = lh as f64 - lr as f64;
                for k in 0..n {
                    let mut val = 0.0;
                    for (g, &h) in &vh[k] {
                        let rv = vr[k].get(g).copied().unwrap_or(0.0);
                        val += h.min(rv) * rv;
                    }
                    if nh[k] != 0.0 && nr[k] != 0.0 {
                        val /= nh[k] * nr[k];
                    }
                    val *= std::f64::consts::E
                        .powf(-(delta * delta) / (2.0 * self.sigma * self.sigma));
                    score[k] += val;
                }
            }
            let mut avg = score.iter().sum::<f64>() / n as f64;
            avg /= refs.len().max(1) as f64;
            avg *= 10.0;
            scores.push(avg);
        }
        let mean = if scores.is_empty() {
            0.0
        } else {
            scores.iter().sum::<f64>() / scores.len() as f64
        };
        (mean, scores)
    }
}

type TfIdf<'a> = (Vec<BTreeMap<&'a Ngram, f64>>, Vec<f64>, usize);

/// tf-idf vectors per n, their norms, and the bigram count (pycocoevalcap's `counts2vec`).
fn counts2vec<'a>(
    cnts: &'a BTreeMap<Ngram, usize>,
    df: &BTreeMap<&Ngram, f64>,
    ref_len: f64,
    n: usize,
) -> TfIdf<'a> {
    let mut vec: Vec<BTreeMap<&Ngram, f64>> = vec![BTreeMap::new(); n];
    let mut norm = vec![0.0f64; n];
    let mut length = 0usize;
    for (g, &tf) in cnts {
        let d = df.get(g).copied().unwrap_or(0.0).max(1.0).ln();
        let k = g.len() - 1;
        let v = tf as f64 * (ref_len - d);
        vec[k].insert(g, v);
        norm[k] += v * v;
        if k == 1 {
            length += tf;
        }
    }
    let norm: Vec<f64> = norm.into_iter().map(f64::sqrt).collect();
    (vec, norm, length)
}
