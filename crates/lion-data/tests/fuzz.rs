//! Property tests (issue 20): every JSON reader (COCO, Karpathy, VQA, A-OKVQA, RefCOCO, TextCaps,
//! LION JSON / JSON lines, result files) and the pickle reader, on structurally mutated copies of
//! the fixtures, give `Ok` or a typed error naming the file, never a panic. Fixed seed, small
//! case count (`LION_FUZZ_CASES` raises it).

use std::path::{Path, PathBuf};

use lion_core::testing::{fuzz_budget, mutate, mutate_json};
use lion_data::aokvqa::{read_aokvqa, read_aokvqa_predictions};
use lion_data::coco::{read_caption_results, read_coco_captions, read_karpathy};
use lion_data::lion_json::read_lion;
use lion_data::refcoco::{read_rec_results, read_refcoco};
use lion_data::textcaps::read_textcaps;
use lion_data::vqa::{read_vqa_annotations, read_vqa_questions, read_vqa_results};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

fn f(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/data")
        .join(name)
}

fn config() -> Config {
    let (cases, seed) = fuzz_budget(32);
    Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    }
}

type Reader = fn(&Path) -> bool;

/// (fixture, reader): the reader's result reduced to "was it Ok".
fn readers() -> Vec<(&'static str, Reader)> {
    vec![
        ("dataset_coco.json", |p| {
            read_karpathy(p, Some("test")).is_ok()
        }),
        ("captions_val2014.json", |p| read_coco_captions(p).is_ok()),
        ("caption_results.json", |p| read_caption_results(p).is_ok()),
        ("vqa_questions.json", |p| read_vqa_questions(p).is_ok()),
        ("vqa_annotations.json", |p| read_vqa_annotations(p).is_ok()),
        ("vqa_results.json", |p| read_vqa_results(p).is_ok()),
        ("aokvqa_v1p0_val.json", |p| read_aokvqa(p).is_ok()),
        ("aokvqa_results.json", |p| {
            read_aokvqa_predictions(p).is_ok()
        }),
        ("TextCaps_0.1_val.json", |p| read_textcaps(p).is_ok()),
        ("lion_train.json", |p| read_lion(p).is_ok()),
        ("rec_results.json", |p| read_rec_results(p).is_ok()),
        ("instances.json", |p| {
            read_refcoco(&f("refs(unc).p"), p, None).is_ok()
        }),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn json_readers_never_panic(edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..5),
                                cut in prop::option::of(any::<usize>())) {
        let dir = tempfile::tempdir().unwrap();
        for (name, read) in readers() {
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(f(name)).unwrap()).unwrap();
            let p = dir.path().join(name);
            std::fs::write(&p, serde_json::to_vec(&mutate_json(&v, &edits)).unwrap()).unwrap();
            let _ = read(&p);
            // The same file as raw bytes, cut short.
            let raw = mutate(&std::fs::read(&p).unwrap(), &[], cut);
            std::fs::write(&p, raw).unwrap();
            let _ = read(&p);
        }
        // LION JSON lines: a mutated line among good ones.
        let lines = std::fs::read_to_string(f("lion_train.jsonl")).unwrap();
        let mut out = String::new();
        for (i, l) in lines.lines().filter(|l| !l.trim().is_empty()).enumerate() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let v = if i == 0 { mutate_json(&v, &edits) } else { v };
            out.push_str(&v.to_string());
            out.push('\n');
        }
        let p = dir.path().join("l.jsonl");
        std::fs::write(&p, out).unwrap();
        let _ = read_lion(&p);
    }

    /// Mutated pickles (the RefCOCO refs format).
    #[test]
    fn pickle_reader_never_panics(edits in prop::collection::vec((any::<usize>(), any::<u8>()), 0..8),
                                  cut in prop::option::of(any::<usize>())) {
        let bytes = mutate(&std::fs::read(f("refs(unc).p")).unwrap(), &edits, cut);
        let _ = lion_data::pickle::from_slice(&bytes);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("refs.p");
        std::fs::write(&p, &bytes).unwrap();
        let _ = read_refcoco(&p, &f("instances.json"), Some("val"));
    }
}
