//! `lion demo` through the real binary at a toy size: every stage runs (world, tagger, tag
//! encoder, three PEFT runs from the shipped backbone, evaluation, report), and a second run with
//! the same seed gives the same world and the same table.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn demo(out: &Path) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_lion"))
        .args(["demo", "--out"])
        .arg(out)
        .args([
            "--train",
            "12",
            "--test",
            "6",
            "--steps",
            "2",
            "--epochs",
            "1",
            "--tagger-epochs",
            "1",
            "--resamples",
            "200",
        ])
        .current_dir(root())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    stdout
}

fn json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn demo_runs_every_stage_and_repeats_exactly_with_the_same_seed() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let printed = demo(&a);
    assert!(printed.contains("| system |"), "{printed}");
    for f in [
        "report.md",
        "report.json",
        "lion-loss.png",
        "tag-encoder/curves.png",
        "tags.jsonl",
        "lion/static/model/lion.json",
        "lion/dynamic/model/lion.json",
        "lion/gated/model/lion.json",
        "eval/gated/rec_pred.json",
        "eval/baselines/vqa_scores.json",
    ] {
        assert!(a.join(f).exists(), "{f} missing");
    }
    let report = std::fs::read_to_string(a.join("report.md")).unwrap();
    for row in [
        "LION (static prompt)",
        "LION (dynamic prompt)",
        "LION (gated prompt)",
        "trivial baselines",
        "RAM tagger",
    ] {
        assert!(report.contains(row), "report lacks {row}:\n{report}");
    }
    let ra = json(&a.join("report.json"));
    for sys in [
        "LION (static prompt)",
        "LION (gated prompt) - best baseline",
    ] {
        for task in ["caption", "vqa", "rec"] {
            let ci = &ra["scores"][sys][task];
            let (lo, mean, hi) = (
                ci["lo"].as_f64().unwrap(),
                ci["mean"].as_f64().unwrap(),
                ci["hi"].as_f64().unwrap(),
            );
            assert!(lo <= mean && mean <= hi, "{sys} {task}: {ci}");
        }
    }

    demo(&b);
    assert_eq!(
        json(&a.join("world/world.json")),
        json(&b.join("world/world.json")),
        "same seed, different world"
    );
    assert_eq!(
        ra,
        json(&b.join("report.json")),
        "same seed, different table"
    );
}
