//! `lion eval` end to end: the official file formats in, the reference scorers' numbers out.

use std::path::Path;
use std::process::Command;

use lion_core::testing::repo_root as root;
use serde_json::{json, Value};

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

/// The answer records of a golden question (`compact_answers()` in
/// scripts/fixtures_vqa_official.py).
fn answer_records(c: &Value) -> Value {
    let texts: Vec<Value> = match &c[0] {
        Value::String(t) => vec![Value::String(t.clone()); 10],
        v => v.as_array().unwrap().clone(),
    };
    let conf = |i: usize| match c[1].as_str().map(|s| s.as_bytes()[i]) {
        Some(b'y') => json!("yes"),
        Some(b'm') => json!("maybe"),
        Some(_) => json!("no"),
        None => Value::Null,
    };
    let recs: Vec<Value> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut r = json!({"answer": t});
            if !c[1].is_null() {
                r["answer_confidence"] = conf(i);
            }
            match c.get(2) {
                None => r["answer_id"] = json!(i + 1),
                Some(Value::Array(ids)) => r["answer_id"] = ids[i].clone(),
                Some(_) => {}
            }
            r
        })
        .collect();
    Value::Array(recs)
}

/// `lion eval --task vqa` on the official-code goldens: every run's overall, per answer type,
/// per question type and per question equal to GT-Vision-Lab vqaEval.py.
#[test]
fn vqa_eval_equals_official() {
    let golden = read(&root().join("tests/fixtures/metrics/vqa_official.json"));
    let dir = tempfile::tempdir().unwrap();
    for (r, run) in golden["runs"].as_array().unwrap().iter().enumerate() {
        let qs = run["questions"].as_array().unwrap();
        let anns: Vec<Value> = qs
            .iter()
            .map(|q| {
                json!({"question_id": q[0], "image_id": 1, "answers": answer_records(&q[5]),
                       "answer_type": q[1], "question_type": q[2]})
            })
            .collect();
        // predictions in reverse order: the scorer follows the annotation order
        let preds: Vec<Value> = qs
            .iter()
            .rev()
            .map(|q| json!({"question_id": q[0], "answer": q[3]}))
            .collect();
        let (gt, pred, out) = (
            dir.path().join(format!("ann{r}.json")),
            dir.path().join(format!("pred{r}.json")),
            dir.path().join(format!("scores{r}.json")),
        );
        write(&gt, &json!({"annotations": anns}));
        write(&pred, &Value::Array(preds));
        let (ok, stdout, stderr) = lion(&[
            "--task",
            "vqa",
            "--pred",
            pred.to_str().unwrap(),
            "--gt",
            gt.to_str().unwrap(),
            "--json",
            out.to_str().unwrap(),
        ]);
        assert!(ok, "{stderr}");
        assert!(
            stdout.contains("answer type yes/no") && stdout.contains("question type "),
            "{stdout}"
        );
        let s = read(&out);
        let official = &s["overall"]["official"];
        let want = &run["accuracy"];
        let close =
            |a: &Value, b: &Value| (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() <= 1e-9;
        assert!(
            close(&official["overall"], &want["overall"]),
            "{official} {want}"
        );
        for key in ["perAnswerType", "perQuestionType"] {
            let w = want[key].as_object().unwrap();
            assert_eq!(official[key].as_object().unwrap().len(), w.len());
            for (t, v) in w {
                assert!(close(&official[key][t], v), "run {r} {key} {t}");
            }
        }
        let items = s["per_item"].as_array().unwrap();
        assert_eq!(items.len(), qs.len());
        for (item, q) in items.iter().zip(qs) {
            assert_eq!(item["question_id"], q[0].to_string().as_str());
            assert!(close(&item["official"], &q[4]), "run {r}: {item} vs {q}");
        }
    }
}

/// Ground truth with `"answers": []` is an error that names the file and the question.
#[test]
fn vqa_empty_answers_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let gt = dir.path().join("ann.json");
    let pred = dir.path().join("pred.json");
    write(
        &gt,
        &json!({"annotations": [
            {"question_id": 1, "image_id": 1, "answers": [{"answer": "yes", "answer_id": 1}]},
            {"question_id": 7, "image_id": 1, "answers": []}]}),
    );
    write(&pred, &json!([{"question_id": 1, "answer": "yes"}]));
    let (ok, _, stderr) = lion(&[
        "--task",
        "vqa",
        "--pred",
        pred.to_str().unwrap(),
        "--gt",
        gt.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("ann.json") && stderr.contains("question_id 7") && stderr.contains("[]"),
        "{stderr}"
    );
}

/// The official A-OKVQA prediction format, both metrics, against the official-code golden.
#[test]
fn aokvqa_eval_equals_official() {
    let golden = read(&root().join("tests/fixtures/metrics/aokvqa_official.json"));
    let dir = tempfile::tempdir().unwrap();
    for (r, run) in golden["runs"].as_array().unwrap().iter().enumerate() {
        let data: Vec<Value> = run["dataset"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, d)| {
                json!({"split": "val", "image_id": i, "question_id": d[0], "question": "?",
                       "choices": d[1], "correct_choice_idx": d[2], "direct_answers": d[3],
                       "difficult_direct_answer": d[4], "rationales": []})
            })
            .collect();
        let (gt, pred, out) = (
            dir.path().join(format!("aok{r}.json")),
            dir.path().join(format!("pred{r}.json")),
            dir.path().join(format!("s{r}.json")),
        );
        write(&gt, &Value::Array(data));
        write(&pred, &run["predictions"]);
        let (ok, stdout, stderr) = lion(&[
            "--task",
            "aokvqa",
            "--pred",
            pred.to_str().unwrap(),
            "--gt",
            gt.to_str().unwrap(),
            "--json",
            out.to_str().unwrap(),
        ]);
        assert!(ok, "{stderr}");
        assert!(stdout.contains("multiple choice") && stdout.contains("direct answer"));
        let o = &read(&out)["overall"];
        let close =
            |a: &Value, b: &Value| (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() <= 1e-9;
        assert!(close(&o["multiple_choice"]["accuracy"], &run["mc"]), "{o}");
        assert!(close(&o["direct_answer"]["accuracy"], &run["da"]), "{o}");
    }
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
    assert_eq!(s["overall"]["accuracy"]["0.5"], s["overall"]["acc_at_0_5"]);
    assert!(s["overall"]["accuracy"]["0.1"].as_f64().unwrap() >= 2.0 / 3.0 - 1e-12);
    assert!(stdout.contains("Acc@0.1"), "{stdout}");
    let splits = s["overall"]["per_split"].as_object().unwrap();
    let n: u64 = splits.values().map(|v| v["items"].as_u64().unwrap()).sum();
    assert_eq!(n, 3, "{s}");
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
