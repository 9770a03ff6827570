//! `lion eval` end to end: the official file formats in, the reference scorers' numbers out.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn write(p: &Path, v: &Value) {
    std::fs::write(p, serde_json::to_vec(v).unwrap()).unwrap();
}

/// Runs `lion eval ARGS`; returns (success, stdout, stderr).
fn lion(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lion"))
        .arg("eval")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn caption_eval_equals_pycocoevalcap() {
    let golden = read(&root().join("tests/fixtures/metrics/captions.json"));
    let dir = tempfile::tempdir().unwrap();
    let (mut images, mut anns, mut preds) = (vec![], vec![], vec![]);
    for im in golden["images"].as_array().unwrap() {
        let id = im["image_id"].as_i64().unwrap();
        images.push(json!({"id": id, "file_name": format!("{id}.jpg")}));
        for c in im["references"].as_array().unwrap() {
            anns.push(json!({"image_id": id, "id": anns.len(), "caption": c}));
        }
        preds.push(json!({"image_id": id, "caption": im["prediction"]}));
    }
    let gt = dir.path().join("captions_val.json");
    let pred = dir.path().join("pred.json");
    let out = dir.path().join("scores.json");
    write(&gt, &json!({"images": images, "annotations": anns}));
    write(&pred, &Value::Array(preds));
    let (ok, stdout, stderr) = lion(&[
        "--task",
        "caption",
        "--pred",
        pred.to_str().unwrap(),
        "--gt",
        gt.to_str().unwrap(),
        "--json",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("CIDEr-D"), "{stdout}");
    let s = read(&out);
    let o = &s["overall"];
    let close = |a: &Value, b: &Value| (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() <= 1e-6;
    assert!(close(&o["cider"], &golden["cider"]), "{o}");
    assert!(close(&o["bleu_4"], &golden["bleu"][3]), "{o}");
    assert!(close(&o["rouge_l"], &golden["rouge_l"]), "{o}");
    assert_eq!(s["per_item"].as_array().unwrap().len(), 220);
    assert!(close(
        &s["per_item"][5]["cider"],
        &golden["images"][5]["cider"]
    ));
}

#[test]
fn vqa_eval_equals_official() {
    let golden = read(&root().join("tests/fixtures/metrics/vqa.json"));
    let dir = tempfile::tempdir().unwrap();
    let qs = golden["questions"].as_array().unwrap();
    let anns: Vec<Value> = qs
        .iter()
        .map(|q| {
            json!({"question_id": q["question_id"], "image_id": q["image_id"], "answers": q["answers"],
                   "answer_type": q["answer_type"], "question_type": q["question_type"]})
        })
        .collect();
    let questions: Vec<Value> = qs
        .iter()
        .map(|q| json!({"question_id": q["question_id"], "image_id": q["image_id"], "question": "?"}))
        .collect();
    let preds: Vec<Value> = qs
        .iter()
        .map(|q| json!({"question_id": q["question_id"], "answer": q["prediction"]}))
        .collect();
    let (gt, qf, pred, out) = (
        dir.path().join("ann.json"),
        dir.path().join("q.json"),
        dir.path().join("pred.json"),
        dir.path().join("scores.json"),
    );
    write(&gt, &json!({"annotations": anns}));
    write(&qf, &json!({"questions": questions}));
    write(&pred, &Value::Array(preds));
    let (ok, _, stderr) = lion(&[
        "--task",
        "vqa",
        "--pred",
        pred.to_str().unwrap(),
        "--gt",
        gt.to_str().unwrap(),
        "--questions",
        qf.to_str().unwrap(),
        "--json",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let s = read(&out);
    let ours = s["overall"]["accuracy"].as_f64().unwrap();
    assert!((ours - golden["overall"].as_f64().unwrap()).abs() <= 1e-9);
    assert_eq!(s["per_item"].as_array().unwrap().len(), qs.len());
}

#[test]
fn aokvqa_and_rec_eval() {
    let data = root().join("tests/fixtures/data");
    let p = |n: &str| data.join(n).to_str().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("a.json");
    let (ok, stdout, stderr) = lion(&[
        "--task",
        "aokvqa",
        "--pred",
        &p("aokvqa_results.json"),
        "--gt",
        &p("aokvqa_v1p0_val.json"),
        "--json",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("A-OKVQA"));
    // "cigarette" x10 -> 1, "racket" x1 -> 1/3
    let s = read(&out)["overall"]["score"].as_f64().unwrap();
    assert!((s - (1.0 + 1.0 / 3.0) / 2.0).abs() < 1e-12);
    // the evaluation script's {question_id: answer}; a missing question scores 0
    let aok = dir.path().join("aok.json");
    write(&aok, &json!({"22jbM6gDxdaMaunuzgrsBB": "cigarette"}));
    let (ok, _, stderr) = lion(&[
        "--task",
        "aokvqa",
        "--pred",
        aok.to_str().unwrap(),
        "--gt",
        &p("aokvqa_v1p0_val.json"),
        "--json",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let o = &read(&out)["overall"];
    assert!((o["score"].as_f64().unwrap() - 0.5).abs() < 1e-12, "{o}");
    assert_eq!(o["missing"], 1);

    // REC: model text (normalised) for sent 0, unparsable text for sent 1, pixels for sent 2
    let pred = dir.path().join("rec.json");
    write(
        &pred,
        &json!([
            {"id": 0, "box": "Answer: [0.162,0.702,0.372,1.0]"},
            {"sent_id": 1, "box": "Answer: [0.1,0.2]"},
            {"id": 2, "box": [10, 20, 40, 60.5]},
        ]),
    );
    let out = dir.path().join("r.json");
    let (ok, stdout, stderr) = lion(&[
        "--task",
        "rec",
        "--pred",
        pred.to_str().unwrap(),
        "--gt",
        &p("refs(unc).p"),
        "--instances",
        &p("instances.json"),
        "--json",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("Acc@0.5"));
    let s = read(&out);
    assert!(
        (s["overall"]["acc_at_0_5"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-12,
        "{s}"
    );
    assert_eq!(s["overall"]["unparsable"], 1);
    assert_eq!(s["per_item"][1]["parsed"], false);
    assert!((s["per_item"][2]["iou"].as_f64().unwrap() - 1.0).abs() < 1e-12);
    // [0.162*640, 0.702*427, 0.372*640, 427] against [103.93, 299.99, 238.15, 427]
    assert!(s["per_item"][0]["iou"].as_f64().unwrap() > 0.95);
}

#[test]
fn bad_predictions_are_named_and_nothing_is_written() {
    let data = root().join("tests/fixtures/data");
    let dir = tempfile::tempdir().unwrap();
    let pred = dir.path().join("pred.json");
    write(
        &pred,
        &json!([{"image_id": 391895, "caption": "a"}, {"image_id": 5, "caption": "b"}]),
    );
    let out = dir.path().join("out.json");
    let (ok, _, stderr) = lion(&[
        "--task",
        "caption",
        "--pred",
        pred.to_str().unwrap(),
        "--gt",
        data.join("captions_val2014.json").to_str().unwrap(),
        "--json",
        out.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("pred.json")
            && stderr.contains("record 1")
            && stderr.contains("image_id 5"),
        "{stderr}"
    );
    assert!(!out.exists());
    // a malformed ground truth names its file and record
    let (ok, _, stderr) = lion(&[
        "--task",
        "vqa",
        "--pred",
        data.join("vqa_results.json").to_str().unwrap(),
        "--gt",
        data.join("vqa_annotations_bad.json").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("vqa_annotations_bad.json") && stderr.contains("annotations[1]"),
        "{stderr}"
    );
    // rec without --instances
    let (ok, _, stderr) = lion(&[
        "--task",
        "rec",
        "--pred",
        pred.to_str().unwrap(),
        "--gt",
        data.join("refs(unc).p").to_str().unwrap(),
    ]);
    assert!(!ok && stderr.contains("--instances"), "{stderr}");
}
