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
