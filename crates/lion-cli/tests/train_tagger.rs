//! `lion train-tagger` and `lion tag --model` through the binary: a tiny world, a two-epoch
//! training run whose folder `lion tag` reads, and a clear error for a folder that is no world.

use std::process::Command;

fn lion() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lion"))
}

#[test]
fn train_tagger_then_tag_with_the_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let world = tmp.path().join("world");
    let run = lion()
        .args([
            "world", "generate", "--seed", "1", "--train", "12", "--val", "4",
        ])
        .args(["--test", "4", "--size", "32", "--out"])
        .arg(&world)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );

    let out = tmp.path().join("tagger");
    let run = lion()
        .args(["train-tagger", "--world"])
        .arg(&world)
        .arg("--out")
        .arg(&out)
        .args(["--epochs", "2", "--batch-size", "6", "--img-size", "32"])
        .args(["--patch-size", "4", "--embed-dim", "8", "--seed", "5"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("test micro P/R/F1"), "{stdout}");
    assert!(
        stdout.contains("calibration on the test split: ECE "),
        "{stdout}"
    );
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 3, "{metrics}");
    for name in [
        "model.safetensors",
        "config.json",
        "tag_list.txt",
        "tag_list_threshold.txt",
        "reliability.png",
    ] {
        assert!(out.join(name).is_file(), "{name}");
    }

    let img = world.join("images/test/000017.png");
    let run = lion()
        .args(["tag", "--top-k", "3", "--order", "score", "--model"])
        .arg(&out)
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&run.stdout).trim()).unwrap();
    let tags = line["tags"].as_array().unwrap();
    assert_eq!(tags.len(), 3);
    let vocab = std::fs::read_to_string(world.join("tag_list.txt")).unwrap();
    let scores: Vec<f64> = tags.iter().map(|t| t["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    for t in tags {
        assert!(
            vocab.lines().any(|v| v == t["tag"].as_str().unwrap()),
            "{t}"
        );
    }

    // --model excludes --weights
    let run = lion()
        .args(["tag", "--weights", "x.pth", "--model"])
        .arg(&out)
        .arg(&img)
        .output()
        .unwrap();
    assert!(!run.status.success());
}

#[test]
fn train_tagger_names_what_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let run = lion()
        .args(["train-tagger", "--world"])
        .arg(tmp.path())
        .arg("--out")
        .arg(tmp.path().join("o"))
        .output()
        .unwrap();
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("tag_list.txt") && err.contains("ShapesWorld"),
        "{err}"
    );

    let run = lion()
        .args(["tag", "--model"])
        .arg(tmp.path())
        .arg("x.png")
        .output()
        .unwrap();
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("config.json"), "{err}");
}
