//! `lion train` config rules (issue 20): each hostile value of the report is refused by
//! `PeftConfig::read` naming the field, the value and the rule, before anything is built; and a
//! property test: any structural mutation of a valid config is read or refused, never a panic.

use std::path::Path;

use lion_core::tags::ScoredTag;
use lion_core::testing::{fuzz_budget, mutate_json};
use lion_train::peft::PeftConfig;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use serde_json::{json, Value};

fn valid() -> Value {
    json!({
        "preset": "tiny",
        "image_root": "images",
        "tasks": [
            {"kind": "caption", "train": "cap.json", "ratio": 1.0},
            {"kind": "vqa", "train": "vqa.json", "ratio": 2.0}
        ],
        "schedule": {"init_lr": 1e-4, "min_lr": 1e-5, "warmup_steps": 2},
        "batch_size": 2,
        "max_grad_norm": 1.0,
        "steps": 10,
        "output_dir": "out"
    })
}

fn read(dir: &Path, v: &Value) -> lion_core::Result<PeftConfig> {
    let p = dir.join("train.json");
    std::fs::write(&p, serde_json::to_vec(v).unwrap()).unwrap();
    PeftConfig::read(&p)
}

#[test]
fn hostile_training_settings_are_refused_naming_field_value_and_rule() {
    let dir = tempfile::tempdir().unwrap();
    read(dir.path(), &valid()).expect("the base config is valid");
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "/max_grad_norm",
            json!(-1.0),
            "`max_grad_norm` = -1: must be a finite number > 0",
        ),
        (
            "/max_grad_norm",
            json!(0.0),
            "`max_grad_norm` = 0: must be a finite number > 0",
        ),
        (
            "/schedule/min_lr",
            json!(1e-3),
            "`schedule.min_lr` = 0.001: must not exceed schedule.init_lr",
        ),
        (
            "/schedule/warmup_steps",
            json!(10),
            "`schedule.warmup_steps` = 10: must be below steps (10)",
        ),
        (
            "/schedule/warmup_steps",
            json!(50),
            "`schedule.warmup_steps` = 50",
        ),
        (
            "/tasks/0/ratio",
            json!(1e308),
            "the ratios must have a finite sum > 0",
        ),
        (
            "/eval_max_samples",
            json!(0),
            "`eval_max_samples` = 0: must be at least 1",
        ),
        (
            "/output_dir",
            json!(""),
            "`output_dir` = \"\": must not be empty",
        ),
        (
            "/batch_size",
            json!(0),
            "`batch_size` = 0: must be at least 1",
        ),
        ("/schedule/init_lr", json!(-1.0), "`schedule.init_lr` = -1"),
    ];
    for (path, value, want) in cases {
        let mut v = valid();
        if path == "/tasks/0/ratio" {
            // Both ratios huge: each is finite, the sum is not.
            *v.pointer_mut("/tasks/1/ratio").unwrap() = value.clone();
        }
        match v.pointer_mut(path) {
            Some(slot) => *slot = value.clone(),
            None => {
                let (parent, key) = path.rsplit_once('/').unwrap();
                let obj = if parent.is_empty() {
                    &mut v
                } else {
                    v.pointer_mut(parent).unwrap()
                };
                obj[key] = value.clone();
            }
        }
        let e = read(dir.path(), &v).expect_err(path).to_string();
        assert!(e.contains(want), "{path} = {value}: {e}");
        assert!(e.contains("train.json"), "{e}");
    }
}

#[test]
fn a_training_batch_that_cannot_fit_in_memory_is_refused_before_anything_is_built() {
    // The tiny preset at batch 100000: the memory estimate (weights + activations of a
    // training step) is far above any machine's memory; refused in milliseconds.
    let cfg =
        lion_core::presets::preset("tiny", Some(lion_core::prompt::PromptKind::Static)).unwrap();
    let need = cfg.memory_estimate(100_000, true).unwrap();
    assert!(need > 100_000_000_000, "estimate {need}");
    let dir = tempfile::tempdir().unwrap();
    let mut v = valid();
    v["batch_size"] = json!(100_000);
    let c = read(dir.path(), &v).unwrap();
    if lion_core::rules::mem_available().is_some_and(|m| m < need) {
        let t = std::time::Instant::now();
        let e = lion_train::peft::PeftTrainer::new(c, None, &candle_core::Device::Cpu)
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("training memory (batch_size 100000)"), "{e}");
        assert!(t.elapsed().as_secs() < 5);
        // Nothing was written: the random initial weights come after the check.
        assert!(!dir.path().join("out/init.safetensors").exists());
    }
}

fn config() -> Config {
    let (cases, seed) = fuzz_budget(64);
    Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn mutated_configs_are_read_or_refused(edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..5)) {
        let dir = tempfile::tempdir().unwrap();
        let v = mutate_json(&valid(), &edits);
        if let Ok(c) = read(dir.path(), &v) {
            // What is accepted obeys the rules.
            prop_assert!(c.schedule.min_lr <= c.schedule.init_lr);
            prop_assert!(c.max_grad_norm.is_none_or(|m| m > 0.0 && m.is_finite()));
            prop_assert!(c.batch_size > 0 && c.steps > 0);
            prop_assert!(!c.output_dir.as_os_str().is_empty());
        }
    }

    #[test]
    fn tag_parser_never_panics(s in "\\PC{0,30}") {
        let (name, score) = ScoredTag::parse_or_bare(&s).into_pair();
        prop_assert!(name.len() <= s.len());
        let _ = score;
    }
}
