//! Flan-T5 + LION adapters generating: greedy and beam search token ids against `transformers`
//! `generate` (fixtures by scripts/fixtures_t5.py), from embeddings and single rows, seeded
//! sampling.

mod t5_common;

use t5_common::*;

use candle_core::Tensor;
use lion_core::adapter::Route;
use lion_core::generate::{generate, EarlyStopping, GenerationConfig, Sampling};
use lion_core::t5::T5Input;
use lion_core::testing::fixture;

#[derive(serde::Deserialize)]
struct GenFile {
    inputs: Vec<Vec<u32>>,
    cases: Vec<GenCase>,
}

#[derive(serde::Deserialize)]
struct GenCase {
    name: String,
    route: Option<usize>,
    config: serde_json::Value,
    outputs: Vec<Vec<u32>>,
}

fn gen_config(v: &serde_json::Value) -> GenerationConfig {
    let early = match &v["early_stopping"] {
        serde_json::Value::Bool(true) => EarlyStopping::True,
        serde_json::Value::Bool(false) => EarlyStopping::False,
        serde_json::Value::String(s) if s == "never" => EarlyStopping::Never,
        other => panic!("early_stopping {other}"),
    };
    GenerationConfig {
        num_beams: v["num_beams"].as_u64().unwrap() as usize,
        max_new_tokens: v["max_new_tokens"].as_u64().unwrap() as usize,
        min_length: v["min_length"].as_u64().unwrap() as usize,
        repetition_penalty: v["repetition_penalty"].as_f64().unwrap() as f32,
        length_penalty: v["length_penalty"].as_f64().unwrap() as f32,
        early_stopping: early,
        ..GenerationConfig::default()
    }
}

#[test]
fn generation_matches_transformers_generate() {
    let gen: GenFile =
        serde_json::from_str(&std::fs::read_to_string(fixture("t5/generate.json")).unwrap())
            .unwrap();
    let plain = load(&cfg("config.json", 0), "model.safetensors");
    let lion = load(&cfg("config.json", 2), LION);
    // batched, right-padded inputs of different lengths
    let n = gen.inputs.len();
    let s = gen.inputs.iter().map(|x| x.len()).max().unwrap();
    let mut ids = vec![0u32; n * s];
    let mut mask = vec![0f32; n * s];
    for (i, x) in gen.inputs.iter().enumerate() {
        ids[i * s..i * s + x.len()].copy_from_slice(x);
        mask[i * s..i * s + x.len()]
            .iter_mut()
            .for_each(|m| *m = 1.0);
    }
    let ids = Tensor::from_vec(ids, (n, s), &dev()).unwrap();
    let mask = Tensor::from_vec(mask, (n, s), &dev()).unwrap();
    let (mut eos_ended, mut max_ended, mut checked) = (0, 0, 0);
    let mut bad = vec![];
    for case in &gen.cases {
        let gcfg = gen_config(&case.config);
        let (model, route) = match case.route {
            Some(1) => (&lion, Route::ImageLevel),
            Some(_) => (&lion, Route::RegionLevel),
            None => (&plain, Route::ImageLevel),
        };
        let out = generate(model, T5Input::Ids(&ids), Some(&mask), route, &gcfg).unwrap();
        for (i, (got, want)) in out.iter().zip(&case.outputs).enumerate() {
            checked += 1;
            if want.last() == Some(&1) {
                eos_ended += 1;
            } else {
                max_ended += 1;
            }
            if got != want {
                bad.push(format!(
                    "{} {:?} input {i}: got {got:?}, want {want:?}",
                    case.name, case.route
                ));
            }
        }
    }
    eprintln!("generation: {checked} sequences, {eos_ended} end in EOS, {max_ended} at max length");
    assert!(
        bad.is_empty(),
        "{} mismatches:\n{}",
        bad.len(),
        bad.join("\n")
    );
    assert!(eos_ended >= 10 && max_ended >= 10);
}

#[test]
fn generation_runs_the_same_from_embeddings_and_single_rows() {
    // batching does not change a row's result, and embeddings input works
    let plain = load(&cfg("config.json", 0), "model.safetensors");
    let gcfg = GenerationConfig {
        max_new_tokens: 10,
        ..Default::default()
    };
    let row = Tensor::new(&[[44u32, 3, 90, 27, 1]], &dev()).unwrap();
    let emb = plain.embed(&row).unwrap();
    let a = generate(&plain, T5Input::Ids(&row), None, Route::ImageLevel, &gcfg).unwrap();
    let b = generate(
        &plain,
        T5Input::Embeds(&emb),
        None,
        Route::ImageLevel,
        &gcfg,
    )
    .unwrap();
    assert_eq!(a, b);
    assert!(!a[0].is_empty() && a[0].len() <= 10);
    let bad = GenerationConfig {
        num_beams: 0,
        ..Default::default()
    };
    let err = generate(&plain, T5Input::Ids(&row), None, Route::ImageLevel, &bad).unwrap_err();
    assert!(err.to_string().contains("num_beams"), "{err}");
}

/// Sampling on the fixture's random tiny T5: the same seed gives the same tokens (also inside a
/// bigger batch), other seeds other tokens, a tiny top_p greedy's tokens; n sequences per input
/// come out consecutive, the first equal to a single draw; beam search returns its n best.
#[test]
fn sampling_is_seeded_and_tiny_top_p_is_greedy() {
    let plain = load(&cfg("config.json", 0), "model.safetensors");
    let rows = Tensor::new(&[[44u32, 3, 90, 27, 1], [8, 61, 5, 1, 0]], &dev()).unwrap();
    let mask = Tensor::new(&[[1f32, 1., 1., 1., 1.], [1., 1., 1., 1., 0.]], &dev()).unwrap();
    let run = |g: &GenerationConfig| {
        generate(
            &plain,
            T5Input::Ids(&rows),
            Some(&mask),
            Route::ImageLevel,
            g,
        )
        .unwrap()
    };
    let sample = |seed: u64, top_p: f32, n: usize| GenerationConfig {
        num_beams: 1,
        max_new_tokens: 12,
        min_length: 13, // no EOS: every draw counts
        repetition_penalty: 1.0,
        sampling: Some(Sampling {
            temperature: 1.0,
            top_p,
            top_k: None,
            seed,
        }),
        num_return_sequences: n,
        ..Default::default()
    };
    let a = run(&sample(7, 1.0, 1));
    assert_eq!(a, run(&sample(7, 1.0, 1)));
    assert_eq!(a[0].len(), 12);
    let others: Vec<_> = (8..12).map(|s| run(&sample(s, 1.0, 1))).collect();
    assert!(others.iter().all(|o| *o != a), "seeds 7..12 all gave {a:?}");
    // a row's draws do not depend on the batch around it
    let alone = generate(
        &plain,
        T5Input::Ids(&rows.narrow(0, 0, 1).unwrap()),
        Some(&mask.narrow(0, 0, 1).unwrap()),
        Route::ImageLevel,
        &sample(7, 1.0, 1),
    )
    .unwrap();
    assert_eq!(alone[0], a[0]);
    let greedy = GenerationConfig {
        sampling: None,
        ..sample(0, 1.0, 1)
    };
    assert_eq!(run(&sample(123, 1e-6, 1)), run(&greedy));
    // n = 3: rows 0..3 for input 0, 3..6 for input 1; copy 0 is the single draw
    let three = run(&sample(7, 1.0, 3));
    assert_eq!(three.len(), 6);
    assert_eq!((&three[0], &three[3]), (&a[0], &a[1]));
    assert!(three[0] != three[1] || three[1] != three[2], "{three:?}");
    // beam search: the best of n returned hypotheses is the single answer
    let beams = |n: usize| GenerationConfig {
        num_beams: 4,
        max_new_tokens: 8,
        num_return_sequences: n,
        ..Default::default()
    };
    let one = run(&beams(1));
    let best3 = run(&beams(3));
    assert_eq!(best3.len(), 6);
    assert_eq!((&best3[0], &best3[3]), (&one[0], &one[1]));
}
