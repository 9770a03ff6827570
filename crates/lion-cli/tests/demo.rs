//! `lion demo` through the real binary at a toy size: every stage runs (world, tagger, tag
//! encoder, PEFT runs of three prompt kinds and two ablations over two seeds from the shipped
//! backbone, evaluation, report with the comparison); a rerun into a folder made with another
//! seed redoes every stage and gives the same table as a fresh run with that seed; a rerun with
//! the same settings reuses every stage.

use std::path::Path;
use std::process::Command;

use lion_core::testing::repo_root as root;
use serde_json::Value;

/// Runs the toy demo (with `extra` flags); returns (stdout, stderr).
fn demo(out: &Path, seed: u64, extra: &[&str]) -> (String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_lion"))
        .args(["demo", "--out"])
        .arg(out)
        .args(["--seed", &seed.to_string()])
        .args([
            "--train",
            "12",
            "--test",
            "6",
            "--steps",
            "2",
            "--epochs",
            "1",
            "--resamples",
            "200",
            "--num-beams",
            "1",
        ])
        .args(extra)
        .current_dir(root())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "demo failed:\n{stdout}\n{stderr}");
    (stdout, stderr)
}

fn json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn demo_runs_every_stage_and_redoes_exactly_what_a_new_seed_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let (printed, _) = demo(&a, 0, &["--seeds", "2", "--ablations", "none,oracle"]);
    assert!(printed.contains("| system |"), "{printed}");
    for f in [
        "report.md",
        "report.json",
        "lion-loss.png",
        "tag-encoder/curves.png",
        "tag-encoder/reader_frontier.json",
        "tags.jsonl",
        "tags-oracle.jsonl",
        "tags-none.jsonl",
        "tagger/stage.json",
        "tagger/reliability.png",
        "tag-encoder/stage.json",
        "lion/static/seed-0/model/lion.json",
        "lion/dynamic/seed-1/model/lion.json",
        "lion/gated/seed-0/stage.json",
        "lion/no-tags/seed-1/model/lion.json",
        "lion/oracle-tags/seed-0/model/lion.json",
        "eval/gated/seed-1/rec_pred.json",
        "eval/oracle-tags/seed-0/stage.json",
        "eval/baselines/vqa_scores.json",
    ] {
        assert!(a.join(f).exists(), "{f} missing");
    }
    // The oracle's tags are the world's, at score 1.
    let oracle = std::fs::read_to_string(a.join("tags-oracle.jsonl")).unwrap();
    assert!(oracle.contains("\"score\":1.0"), "{oracle}");
    let report = std::fs::read_to_string(a.join("report.md")).unwrap();
    for row in [
        "LION (static prompt)",
        "LION (dynamic prompt)",
        "LION (gated prompt)",
        "trivial baselines",
        "RAM tagger",
        "pretrained, shipped",
        "expected calibration error",
        "an anchor that knows each validation image's content from its other captions",
        "The encoder's last validation pair is",
        "### Means over 2 seed(s)",
        "| oracle-tags |",
        "| no-tags |",
        "### Paired differences",
        "| dynamic - static |",
        "| oracle-tags - dynamic |",
        "### VQA acc. by kind",
        "| count |",
        "### Acc@0.5 by kind",
        "| attributes |",
        "Acc@0.1",
        "### Conclusions",
        "- dynamic - static on VQA acc.: ",
        "- gated - dynamic on Acc@0.5: ",
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
    let d = &ra["comparison"]["differences"]["gated - static"]["vqa"];
    assert!(
        d["lo"].as_f64().unwrap() <= d["hi"].as_f64().unwrap(),
        "{d}"
    );
    assert_eq!(ra["comparison"]["seeds"], 2);

    // Another seed into b, with a tagger trained first (on a world of its own), then seed 0
    // again into the same folder with the shipped tagger: every stage is redone (the log says
    // why), and the result is a fresh seed-0 run's.
    // (No ablations here, and the seed-1 folder one seed: the runs are the slow part. Seed 0's
    // second seed is 1, so its seed-1 runs are redone, made from other tags.)
    let (_, log) = demo(
        &b,
        1,
        &[
            "--train-tagger",
            "--tagger-images",
            "24",
            "--tagger-epochs",
            "1",
        ],
    );
    assert!(log.contains("tagger epoch 1: val F1"), "{log}");
    for f in [
        "tagger-pretrained/model.safetensors",
        "tagger-pretrained/stage.json",
    ] {
        assert!(b.join(f).exists(), "{f} missing");
    }
    let trained = json(&b.join("report.json"));
    assert_eq!(trained["tagger"]["tagger"], "trained in this run");
    assert_eq!(trained["tagger"]["train_images"], 24);
    let (_, log) = demo(&b, 0, &["--seeds", "2"]);
    for why in [
        "tagger: redone (",
        "tagger weights",
        "tag encoder: redone (seed 1 -> 0",
        "LION static seed 1: redone (",
        "evaluation of gated seed 1: redone (",
    ] {
        assert!(log.contains(why), "no `{why}` in the log:\n{log}");
    }
    assert_eq!(
        json(&a.join("world/world.json")),
        json(&b.join("world/world.json")),
        "same seed, different world"
    );
    let rb = json(&b.join("report.json"));
    assert_eq!(ra["scores"], rb["scores"], "same seed, different table");
    assert_eq!(ra["tagger"], rb["tagger"], "same seed, different tagger");
    assert_eq!(
        ra["comparison"]["means"]["gated"], rb["comparison"]["means"]["gated"],
        "same seeds, different comparison"
    );

    // The same settings again: every stage is reused.
    let (_, log) = demo(&b, 0, &["--seeds", "2"]);
    assert!(!log.contains("redone"), "{log}");
    for stage in [
        "tagger",
        "tag encoder",
        "LION gated seed 0",
        "LION static seed 1",
        "evaluation of dynamic seed 1",
    ] {
        assert!(log.contains(&format!("{stage}: reused")), "{stage}:\n{log}");
    }
    assert_eq!(rb, json(&b.join("report.json")));
}

/// `--from-scratch` at a toy size: the tagger and the backbone are trained in the run, the
/// backbone in every leg of its curriculum (a first leg, then REC on one-, two-, three- and
/// four-object images, each followed by a mixed leg), each leg continuing the one before; the
/// REC legs see only images with their number of objects; the shipped-to folder is the last
/// leg's; a rerun reuses every leg, and resumes an interrupted one from its last checkpoint.
#[test]
fn from_scratch_pretrains_the_backbone_in_every_leg() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("s");
    let flags = [
        "--from-scratch",
        "--tagger-images",
        "24",
        "--tagger-epochs",
        "1",
        "--pretrain-images",
        "60",
        "--pretrain-steps",
        "2",
        "--pretrain-scale",
        "0.0005",
    ];
    let (_, log) = demo(&out, 0, &flags);
    let legs = [
        "base", "rec-1", "mixed-1", "rec-2", "mixed-2", "rec-3", "mixed-3", "rec-4", "mixed-4",
        "rec-4b", "mixed-4b",
    ];
    for (k, leg) in legs.iter().enumerate() {
        let dir = out.join("pretrain").join(leg);
        assert!(dir.join("stage.json").exists(), "{leg}: no stage.json");
        assert!(dir.join("backbone/backbone.safetensors").exists(), "{leg}");
        let cfg = json(&dir.join("train.json"));
        if k > 0 {
            let from = out.join("pretrain").join(legs[k - 1]).join("backbone");
            assert_eq!(
                Path::new(cfg["model_dir"].as_str().unwrap()),
                from,
                "{leg} does not continue {}",
                legs[k - 1]
            );
        }
    }
    assert!(log.contains("leg 11/11 (mixed-4b): 3 steps"), "{log}");
    // the REC legs train on images with their number of objects only
    let inst = json(&out.join("pretrain-world/instances.json"));
    let mut count = std::collections::HashMap::new();
    for a in inst["annotations"].as_array().unwrap() {
        *count
            .entry(a["image_id"].as_u64().unwrap())
            .or_insert(0usize) += 1;
    }
    let file_objects: std::collections::HashMap<String, usize> = inst["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|im| {
            let n = count.get(&im["id"].as_u64().unwrap()).copied().unwrap_or(0);
            (im["file_name"].as_str().unwrap().to_string(), n)
        })
        .collect();
    for (leg, n) in [
        ("rec-1", 1),
        ("rec-2", 2),
        ("rec-3", 3),
        ("rec-4", 4),
        ("rec-4b", 4),
    ] {
        let cfg = json(&out.join("pretrain").join(leg).join("train.json"));
        assert_eq!(cfg["tasks"].as_array().unwrap().len(), 1, "{leg}");
        let samples = json(&out.join("pretrain").join(leg).join("lion_rec_train.json"));
        let samples = samples.as_array().unwrap();
        assert!(!samples.is_empty(), "{leg}");
        for s in samples {
            assert_eq!(file_objects[s["image"].as_str().unwrap()], n, "{leg}: {s}");
        }
    }
    let last = std::fs::read(out.join("pretrain/mixed-4b/backbone/backbone.safetensors")).unwrap();
    let first = std::fs::read(out.join("pretrain/base/backbone/backbone.safetensors")).unwrap();
    assert_eq!(
        std::fs::read(out.join("backbone/backbone.safetensors")).unwrap(),
        last
    );
    assert_ne!(first, last, "the legs after the first changed nothing");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("pretrained in this run"), "{report}");

    let (_, log) = demo(&out, 0, &flags);
    for leg in ["first leg", "rec-1", "mixed-4b"] {
        assert!(
            log.contains(&format!("backbone pretraining, {leg}: reused")),
            "{leg} not reused:\n{log}"
        );
    }

    // A kill after the last leg's checkpoint at step 2 of 3: its stage unfinished (the record
    // of its start only), the step-3 checkpoint and the export not written. The rerun resumes
    // the leg from step 2 and exports the same weights, bit for bit.
    let leg = out.join("pretrain/mixed-4b");
    let run = leg.join("run");
    assert!(
        run.join("checkpoints/step-00000002").is_dir(),
        "no kept checkpoint"
    );
    std::fs::rename(leg.join("stage.json"), leg.join("stage-started.json")).unwrap();
    std::fs::remove_dir_all(run.join("checkpoints/step-00000003")).unwrap();
    std::fs::write(run.join("latest"), "step-00000002").unwrap();
    std::fs::remove_dir_all(leg.join("backbone")).unwrap();
    let (_, log) = demo(&out, 0, &flags);
    assert!(
        log.contains("backbone pretraining, mixed-4b: resumed"),
        "not resumed:\n{log}"
    );
    assert!(log.contains("continuing from step 2 of 3"), "{log}");
    assert!(
        log.contains("backbone pretraining, rec-4b: reused"),
        "{log}"
    );
    assert_eq!(
        std::fs::read(leg.join("backbone/backbone.safetensors")).unwrap(),
        last,
        "the resumed leg ended elsewhere"
    );
    assert!(leg.join("stage.json").exists() && !leg.join("stage-started.json").exists());
}
