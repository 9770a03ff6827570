//! Bootstrap confidence intervals for per-item scores (the demo's report).
//!
//! Every metric the demo reports is a mean over items: CIDEr-D over images (its document
//! frequencies come from the references only, so one image's score does not depend on the other
//! predictions), VQA accuracy over questions, Acc@0.5 over referring expressions. The percentile
//! bootstrap resamples items with replacement; the paired version resamples the same items for two
//! systems, so the interval of the difference accounts for their correlation.

use crate::rng::SplitMix64;

/// A mean with its percentile-bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Interval {
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (i, f) = (pos.floor() as usize, pos - pos.floor());
    let j = (i + 1).min(sorted.len() - 1);
    sorted[i] * (1.0 - f) + sorted[j] * f
}

/// The `level` (e.g. 0.95) interval of the mean of `a - b` over paired items (`b` empty: of `a`
/// alone), from `resamples` bootstrap resamples drawn with `seed`. None for no items or a length
/// mismatch.
pub fn paired_interval(
    a: &[f64],
    b: &[f64],
    resamples: usize,
    level: f64,
    seed: u64,
) -> Option<Interval> {
    if a.is_empty() || (!b.is_empty() && b.len() != a.len()) || resamples == 0 {
        return None;
    }
    let d: Vec<f64> = if b.is_empty() {
        a.to_vec()
    } else {
        a.iter().zip(b).map(|(x, y)| x - y).collect()
    };
    let n = d.len();
    let mean = d.iter().sum::<f64>() / n as f64;
    let mut rng = SplitMix64::new(seed);
    let means: Vec<f64> = (0..resamples)
        .map(|_| (0..n).map(|_| d[rng.below(n)]).sum::<f64>() / n as f64)
        .collect();
    Some(percentile_interval(mean, means, level))
}

/// `mean` with the `level` percentile interval of its bootstrap resamples' `means`.
fn percentile_interval(mean: f64, mut means: Vec<f64>, level: f64) -> Interval {
    means.sort_by(f64::total_cmp);
    let tail = (1.0 - level) / 2.0;
    Interval {
        mean,
        lo: percentile(&means, tail),
        hi: percentile(&means, 1.0 - tail),
    }
}

/// The `level` interval of the mean of `a - b` over runs (seeds) and items: `a[s][i]` is item
/// `i`'s score in run `s` (`b` the same shape; empty: of `a` alone). Each resample draws runs with
/// replacement and, within each, items with replacement (one item draw shared by the two
/// systems, so the pairing holds), and takes the mean over its runs of the mean over its items;
/// the interval so covers both the test set's and the training seeds' variation. With one run it
/// is [`paired_interval`]'s. None for no runs or items, or shapes that differ.
pub fn nested_paired_interval(
    a: &[Vec<f64>],
    b: &[Vec<f64>],
    resamples: usize,
    level: f64,
    seed: u64,
) -> Option<Interval> {
    let n = a.first()?.len();
    if n == 0 || resamples == 0 || a.iter().any(|r| r.len() != n) {
        return None;
    }
    if !b.is_empty() && (b.len() != a.len() || b.iter().any(|r| r.len() != n)) {
        return None;
    }
    let d: Vec<Vec<f64>> = a
        .iter()
        .enumerate()
        .map(|(s, r)| match b.get(s) {
            Some(rb) => r.iter().zip(rb).map(|(x, y)| x - y).collect(),
            None => r.clone(),
        })
        .collect();
    let runs = d.len();
    if runs == 1 {
        return paired_interval(&d[0], &[], resamples, level, seed);
    }
    let mean = d.iter().flatten().sum::<f64>() / (runs * n) as f64;
    let mut rng = SplitMix64::new(seed);
    let means: Vec<f64> = (0..resamples)
        .map(|_| {
            (0..runs)
                .map(|_| {
                    let r = &d[rng.below(runs)];
                    (0..n).map(|_| r[rng.below(n)]).sum::<f64>() / n as f64
                })
                .sum::<f64>()
                / runs as f64
        })
        .collect();
    Some(percentile_interval(mean, means, level))
}

/// The interval of the mean of `a`.
pub fn interval(a: &[f64], resamples: usize, level: f64, seed: u64) -> Option<Interval> {
    paired_interval(a, &[], resamples, level, seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_brackets_the_mean_and_narrows_with_more_items() {
        let mut rng = SplitMix64::new(3);
        let small: Vec<f64> = (0..50).map(|_| rng.below(2) as f64).collect();
        let large: Vec<f64> = (0..2000).map(|_| rng.below(2) as f64).collect();
        let s = interval(&small, 2000, 0.95, 1).unwrap();
        let l = interval(&large, 2000, 0.95, 1).unwrap();
        assert!(s.lo < s.mean && s.mean < s.hi);
        assert!(l.hi - l.lo < s.hi - s.lo);
        // Binomial standard error at p ~ 0.5, n = 2000: the 95% half-width is about 0.022.
        let half = (l.hi - l.lo) / 2.0;
        assert!((0.015..0.03).contains(&half), "{half}");
    }

    #[test]
    fn paired_interval_sees_a_consistent_difference() {
        // b is a plus a constant: every resample's difference is exactly that constant.
        let a: Vec<f64> = (0..100).map(|i| (i % 7) as f64).collect();
        let b: Vec<f64> = a.iter().map(|x| x - 0.25).collect();
        let d = paired_interval(&a, &b, 500, 0.95, 9).unwrap();
        assert!((d.lo - 0.25).abs() < 1e-12 && (d.hi - 0.25).abs() < 1e-12);
        // Unpaired, the spread of a alone is wide.
        let u = interval(&a, 500, 0.95, 9).unwrap();
        assert!(u.hi - u.lo > 0.5);
        assert!(paired_interval(&a, &b[..10], 500, 0.95, 9).is_none());
        assert!(interval(&[], 500, 0.95, 9).is_none());
    }

    #[test]
    fn nested_interval_widens_with_seed_variation() {
        let mut rng = SplitMix64::new(4);
        let items: Vec<f64> = (0..400).map(|_| rng.below(2) as f64).collect();
        // One run: the item bootstrap exactly.
        assert_eq!(
            nested_paired_interval(std::slice::from_ref(&items), &[], 500, 0.95, 2),
            interval(&items, 500, 0.95, 2)
        );
        // Runs that agree item for item: about the item interval. Runs offset by +-0.1: wider.
        let same = vec![items.clone(); 4];
        let shifted: Vec<Vec<f64>> = [-0.1, 0.1, -0.1, 0.1]
            .iter()
            .map(|o| items.iter().map(|x| x + o).collect())
            .collect();
        let s = nested_paired_interval(&same, &[], 1000, 0.95, 2).unwrap();
        let w = nested_paired_interval(&shifted, &[], 1000, 0.95, 2).unwrap();
        assert!((s.mean - w.mean).abs() < 1e-12);
        assert!(w.hi - w.lo > 1.2 * (s.hi - s.lo), "{s:?} {w:?}");
        // Paired: a constant difference in every run and item has a zero-width interval.
        let b: Vec<Vec<f64>> = same
            .iter()
            .map(|r| r.iter().map(|x| x - 0.3).collect())
            .collect();
        let d = nested_paired_interval(&same, &b, 300, 0.95, 2).unwrap();
        assert!(
            (d.lo - 0.3).abs() < 1e-12 && (d.hi - 0.3).abs() < 1e-12,
            "{d:?}"
        );
        assert!(nested_paired_interval(&same, &b[..2], 300, 0.95, 2).is_none());
        assert!(nested_paired_interval(&[], &[], 300, 0.95, 2).is_none());
    }

    #[test]
    fn same_seed_same_interval() {
        let a: Vec<f64> = (0..60).map(|i| ((i * 37) % 11) as f64).collect();
        assert_eq!(interval(&a, 300, 0.95, 5), interval(&a, 300, 0.95, 5));
    }
}
