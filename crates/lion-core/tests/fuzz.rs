//! Property tests (issue 20): hostile inputs to the image loader, the safetensors / `.pth`
//! readers, model configs, the line reader, the box parser and the generation rules give `Ok` or
//! a typed error, never a panic. Fixed seed, small case count (`LION_FUZZ_CASES` raises it,
//! `LION_FUZZ_SEED` changes the seed).

use std::path::{Path, PathBuf};

use candle_core::Device;
use lion_core::bbox;
use lion_core::generate::GenerationConfig;
use lion_core::pipeline::Request;
use lion_core::presets::preset;
use lion_core::prompt::{PromptKind, Task};
use lion_core::rules::{GenerationLimits, GenerationSettings};
use lion_core::testing::{fuzz_budget, mutate, mutate_json};
use lion_core::util::BoundedLines;
use lion_core::weights::Checkpoint;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn config(default_cases: u32) -> Config {
    let (cases, seed) = fuzz_budget(default_cases);
    Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    }
}

fn edits() -> impl Strategy<Value = (Vec<(usize, u8)>, Option<usize>)> {
    (
        prop::collection::vec((any::<usize>(), any::<u8>()), 0..12),
        prop::option::of(any::<usize>()),
    )
}

fn fixture(rel: &str) -> Vec<u8> {
    std::fs::read(root().join(rel)).unwrap()
}

/// Writes `bytes` to a file in a temporary folder and calls `f` on its path.
fn with_file<T>(name: &str, bytes: &[u8], f: impl FnOnce(&Path) -> T) -> T {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    f(&p)
}

proptest! {
    #![proptest_config(config(48))]

    /// Mutated PNGs and arbitrary bytes: decoded or refused, from memory and from a file.
    #[test]
    fn image_loader_never_panics((e, cut) in edits(), raw in prop::collection::vec(any::<u8>(), 0..64)) {
        let png = fixture("tests/fixtures/vision/resize/chelsea_bilinear_150x33.png");
        for bytes in [mutate(&png, &e, cut), raw] {
            let _ = lion_core::preprocess::decode_image(&bytes, "fuzz.png");
            let _ = with_file("x.img", &bytes, |p| lion_core::preprocess::load_image(p));
        }
    }

    /// Mutated safetensors and `.pth` files: opened and every tensor read, or refused.
    #[test]
    fn weight_readers_never_panic((e, cut) in edits()) {
        for (name, rel) in [
            ("m.safetensors", "tests/fixtures/bert-tiny/model.safetensors"),
            ("m.pth", "tests/fixtures/bert-tiny/model.pth"),
        ] {
            // Edits land in the first 4 KiB (headers, zip directory entries are at the end,
            // so half of the edits go there).
            let src = fixture(rel);
            let n = src.len();
            let e: Vec<(usize, u8)> = e
                .iter()
                .enumerate()
                .map(|(k, &(i, b))| if k % 2 == 0 { (i % 4096, b) } else { (n - 1 - i % 4096, b) })
                .collect();
            let bytes = mutate(&src, &e, cut);
            with_file(name, &bytes, |p| {
                if let Ok(c) = Checkpoint::open(p) {
                    let _ = c.load_all(&Device::Cpu);
                }
            });
        }
    }

    /// Hostile values in a full model config: refused by `validate`, or valid. A valid one
    /// of small size builds with random weights and answers one request (greedy, 2 tokens).
    #[test]
    fn model_configs_validate_or_build(e in prop::collection::vec((any::<usize>(), any::<u8>()), 1..4),
                                       sizes in prop::collection::vec(0usize..5, 6)) {
        let base = serde_json::to_value(preset("tiny", Some(PromptKind::Static)).unwrap()).unwrap();
        let mut v = mutate_json(&base, &e);
        // Small sizes to exercise the zero / one edge without big allocations.
        let paths = [
            "/t5/num_layers",
            "/t5/num_decoder_layers",
            "/vit/depth",
            "/vit/mlp_dim",
            "/qformer/bert/num_hidden_layers",
            "/aggregator/num_blocks",
        ];
        for (path, &k) in paths.iter().zip(&sizes) {
            if let Some(slot) = v.pointer_mut(path) {
                if slot.is_u64() || slot.is_null() {
                    *slot = serde_json::json!(k);
                }
            }
        }
        let Ok(cfg) = serde_json::from_value::<lion_core::lion::LionConfig>(v) else { return Ok(()) };
        if cfg.validate().is_err() {
            return Ok(());
        }
        // Only small models are built here.
        if cfg.param_count().map_or(true, |n| n > 20_000_000) {
            return Ok(());
        }
        let q = root().join("models/all-MiniLM-L6-v2/tokenizer.json");
        if !q.exists() {
            return Ok(());
        }
        let mut spec = lion_core::model_spec::ModelSpec::new(cfg);
        spec.qformer_tokenizer = Some(q);
        let p = spec.build();
        if let Ok(p) = p {
            let img = image::RgbImage::new(20, 20);
            let gen = GenerationConfig { num_beams: 1, max_new_tokens: 2, ..GenerationConfig::default() };
            let req = Request { task: Task::Caption, text: String::new(), tags: vec![] };
            let _ = p.answer(&[img], &[req], &gen);
        }
    }

    /// Any bytes: the line reader yields lines within the bound, never more than there are
    /// line ends + 1.
    #[test]
    fn bounded_lines_hold_their_bound(bytes in prop::collection::vec(prop_oneof![Just(b'\n'), Just(0xffu8), any::<u8>()], 0..400),
                                      max in 1usize..40) {
        let ends = bytes.iter().filter(|&&b| b == b'\n').count();
        let mut n = 0;
        for r in BoundedLines::new(std::io::BufReader::with_capacity(7, bytes.as_slice()), max) {
            let (_, line) = r.unwrap();
            if let Ok(l) = line {
                prop_assert!(l.len() <= max);
            }
            n += 1;
        }
        prop_assert!(n <= ends + 1);
    }

    /// Any text: a box or None, and a box is ordered and inside the image.
    #[test]
    fn box_parser_never_panics(s in "\\PC{0,40}", nums in prop::collection::vec(-2.0f64..3.0, 4), w in 0u32..2000, h in 0u32..2000) {
        let _ = bbox::parse(&s, w as f64, h as f64);
        let text = format!("[{:.3},{:.3},{:.3},{:.3}]", nums[0], nums[1], nums[2], nums[3]);
        if let Some(b) = bbox::parse(&text, w as f64, h as f64) {
            prop_assert!(b[0] <= b[2] && b[1] <= b[3], "{text} -> {b:?}");
        }
    }

    /// The generation rules accept exactly the settings inside their ranges.
    #[test]
    fn generation_rules_are_ranges(beams in 0usize..12, max in 0usize..300, min in 0usize..300,
                                   rep in prop_oneof![Just(f32::NAN), Just(f32::INFINITY), -1.0f32..12.0],
                                   len in prop_oneof![Just(f32::NAN), -12.0f32..12.0]) {
        let l = GenerationLimits::default();
        let s = GenerationSettings { num_beams: beams, max_new_tokens: max, min_new_tokens: min,
                                     repetition_penalty: rep, length_penalty: len };
        let inside = (1..=l.max_num_beams).contains(&beams) && (1..=l.max_new_tokens).contains(&max)
            && min <= max && (0.01..=10.0).contains(&rep) && (-10.0..=10.0).contains(&len);
        prop_assert_eq!(s.check(&l).is_ok(), inside);
    }
}

/// The cost of the finite scan on the `base` preset's weights (README "Input validation"):
/// `cargo test --release -p lion-core --test fuzz -- --ignored --nocapture finite_scan_cost`.
/// Writes the random weights to a temporary safetensors file (~1.8 GB), then loads every tensor
/// with and without the scan (file in the page cache, best of 3).
#[test]
#[ignore]
fn finite_scan_cost_on_the_base_preset() {
    use std::time::Instant;
    let cfg = preset("base", Some(PromptKind::Static)).unwrap();
    let vm = candle_nn::VarMap::new();
    let loader = lion_core::weights::WeightLoader::random().with_trainable(vm.clone(), |_| true);
    lion_core::lion::LionModel::new(
        &cfg,
        0,
        loader.var_builder(candle_core::DType::F32, &Device::Cpu),
    )
    .unwrap();
    let tensors: std::collections::HashMap<String, candle_core::Tensor> =
        lion_core::weights::varmap_tensors(&vm);
    drop(vm);
    let n: usize = tensors.values().map(|t| t.elem_count()).sum();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("base.safetensors");
    lion_core::weights::save_safetensors(&tensors, &p).unwrap();
    let t = Instant::now();
    let bad: usize = tensors
        .values()
        .map(|t| lion_core::weight_checks::non_finite_count(t).unwrap())
        .sum();
    let scan = t.elapsed().as_secs_f64();
    assert_eq!(bad, 0);
    drop(tensors);
    let ck = Checkpoint::open(&p).unwrap();
    let mut best = [f64::MAX; 2];
    for _ in 0..3 {
        for (i, skip) in [false, true].into_iter().enumerate() {
            std::env::set_var(
                lion_core::weight_checks::SKIP_FINITE_CHECK,
                if skip { "1" } else { "0" },
            );
            let t = Instant::now();
            let all = ck.load_all(&Device::Cpu).unwrap();
            best[i] = best[i].min(t.elapsed().as_secs_f64());
            drop(all);
        }
    }
    std::env::remove_var(lion_core::weight_checks::SKIP_FINITE_CHECK);
    println!(
        "base preset: {n} weights ({:.2} GB f32); scan alone {:.0} ms ({:.1} GB/s); load_all with scan {:.0} ms, without {:.0} ms",
        n as f64 * 4e-9,
        scan * 1e3,
        n as f64 * 4e-9 / scan,
        best[0] * 1e3,
        best[1] * 1e3
    );
}
