//! BLEU-1..4 exactly as pycocoevalcap's `Bleu(4)` computes it: corpus-level clipped n-gram
//! precision with the "closest" reference length (ties to the shorter), `tiny = 1e-15` and
//! `small = 1e-9` smoothing, and its per-image scores.

use std::collections::HashMap;

use crate::cider::precook;
use crate::py::py_split;

#[derive(Debug, Clone)]
struct Cooked {
    testlen: usize,
    reflens: Vec<usize>,
    guess: [usize; 4],
    correct: [usize; 4],
}

/// A BLEU accumulator over tokenised captions.
#[derive(Debug, Default, Clone)]
pub struct Bleu {
    items: Vec<Cooked>,
}

impl Bleu {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, hypothesis: &str, references: &[String]) {
        let mut maxcounts: HashMap<Vec<String>, usize> = HashMap::new();
        let mut reflens = Vec::new();
        for r in references {
            reflens.push(py_split(r).count());
            for (g, c) in precook(r, 4) {
                let e = maxcounts.entry(g).or_insert(0);
                *e = (*e).max(c);
            }
        }
        let testlen = py_split(hypothesis).count();
        let mut guess = [0; 4];
        let mut correct = [0; 4];
        for (k, g) in guess.iter_mut().enumerate() {
            *g = (testlen + 1).saturating_sub(k + 1);
        }
        for (g, c) in precook(hypothesis, 4) {
            correct[g.len() - 1] += c.min(maxcounts.get(&g).copied().unwrap_or(0));
        }
        self.items.push(Cooked {
            testlen,
            reflens,
            guess,
            correct,
        });
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// ([BLEU-1..4] over the corpus, per-image [BLEU-1..4] in the order added).
    pub fn compute(&self) -> ([f64; 4], Vec<[f64; 4]>) {
        const SMALL: f64 = 1e-9;
        const TINY: f64 = 1e-15;
        let mut per = Vec::with_capacity(self.items.len());
        let (mut tl, mut rl) = (0.0f64, 0.0f64);
        let mut guess = [0usize; 4];
        let mut correct = [0usize; 4];
        for c in &self.items {
            // pycocoevalcap's Bleu passes option="closest" explicitly, whatever the corpus size
            let reflen = closest(&c.reflens, c.testlen) as f64;
            tl += c.testlen as f64;
            rl += reflen;
            for k in 0..4 {
                guess[k] += c.guess[k];
                correct[k] += c.correct[k];
            }
            let mut b = [0.0; 4];
            let mut bleu = 1.0f64;
            for (k, bk) in b.iter_mut().enumerate() {
                bleu *= (c.correct[k] as f64 + TINY) / (c.guess[k] as f64 + SMALL);
                *bk = bleu.powf(1.0 / (k as f64 + 1.0));
            }
            let ratio = (c.testlen as f64 + TINY) / (reflen + SMALL);
            if ratio < 1.0 {
                for x in b.iter_mut() {
                    *x *= (1.0 - 1.0 / ratio).exp();
                }
            }
            per.push(b);
        }
        let mut bleus = [0.0; 4];
        let mut bleu = 1.0f64;
        for k in 0..4 {
            bleu *= (correct[k] as f64 + TINY) / (guess[k] as f64 + SMALL);
            bleus[k] = bleu.powf(1.0 / (k as f64 + 1.0));
        }
        let ratio = (tl + TINY) / (rl + SMALL);
        if ratio < 1.0 {
            for x in bleus.iter_mut() {
                *x *= (1.0 - 1.0 / ratio).exp();
            }
        }
        (bleus, per)
    }
}

/// The reference length closest to `testlen`, the shorter one on ties
/// (`min((abs(l - testlen), l) for l in reflens)[1]`).
fn closest(reflens: &[usize], testlen: usize) -> usize {
    reflens
        .iter()
        .map(|&l| (l.abs_diff(testlen), l))
        .min()
        .map(|x| x.1)
        .unwrap_or(0)
}
