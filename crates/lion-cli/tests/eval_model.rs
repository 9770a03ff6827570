//! `lion eval --model`: run a tiny LION over a generated ShapesWorld split, write the official
//! result files, score them; resume after an interruption; survive a missing image.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use lion_core::lion::LionModel;
use lion_core::presets::preset;
use lion_core::prompt::PromptKind;
use lion_core::testing::{minilm_tokenizer, repo_root as root};
use lion_core::weights::WeightLoader;
use serde_json::{json, Value};

fn lion(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lion"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("run lion")
}

fn ok(out: &Output) -> (String, String) {
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "stdout:\n{so}\nstderr:\n{se}");
    (so, se)
}

fn read(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// A world of 3 validation images (64 px), 5 questions each.
fn world(dir: &Path) -> PathBuf {
    let w = dir.join("world");
    let out = lion(&[
        "world",
        "generate",
        "--out",
        &s(&w),
        "--train",
        "1",
        "--val",
        "3",
        "--test",
        "1",
        "--size",
        "64",
    ]);
    ok(&out);
    w
}

const FAST: &[&str] = &["--num-beams", "1", "--max-new-tokens", "8"];

/// `lion eval ARGS --preset tiny --random-weights` (fast decoding).
fn eval_random(args: &[&str]) -> Output {
    let mut a = vec!["eval"];
    a.extend(args);
    let q = minilm_tokenizer();
    a.extend([
        "--preset",
        "tiny",
        "--random-weights",
        "--qformer-tokenizer",
        &q,
    ]);
    a.extend(FAST);
    lion(&a)
}

#[test]
fn each_task_writes_official_predictions_and_scores() {
    let dir = tempfile::tempdir().unwrap();
    let w = world(dir.path());
    let caps = read(&w.join("captions_val.json"));
    let questions = read(&w.join("questions_val.json"));
    let n_images = caps["images"].as_array().unwrap().len();
    let n_questions = questions["questions"].as_array().unwrap().len();
    let n_sents: usize = read(&w.join("refs.json"))
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["split"] == "val")
        .map(|r| r["sent_ids"].as_array().unwrap().len())
        .sum();
    assert!(n_images == 3 && n_questions == 15 && n_sents > 0);

    // A-OKVQA: the world's VQA questions in the A-OKVQA layout (images found by id and split).
    let anns = read(&w.join("annotations_val.json"));
    let aok: Vec<Value> = questions["questions"]
        .as_array()
        .unwrap()
        .iter()
        .zip(anns["annotations"].as_array().unwrap())
        .map(|(q, a)| {
            let da: Vec<&Value> = a["answers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| &x["answer"])
                .collect();
            json!({"question_id": q["question_id"].to_string(), "image_id": q["image_id"],
                   "question": q["question"], "split": "val", "direct_answers": da,
                   "difficult_direct_answer": false})
        })
        .collect();
    let aok_path = dir.path().join("aokvqa_val.json");
    std::fs::write(&aok_path, serde_json::to_vec(&aok).unwrap()).unwrap();

    let (ww, inst) = (s(&w), s(&w.join("instances.json")));
    let cases: Vec<(&str, Vec<String>, usize, &str)> = vec![
        (
            "caption",
            vec!["--gt".into(), s(&w.join("captions_val.json"))],
            n_images,
            "image_id",
        ),
        (
            "vqa",
            vec![
                "--gt".into(),
                s(&w.join("annotations_val.json")),
                "--questions".into(),
                s(&w.join("questions_val.json")),
            ],
            n_questions,
            "question_id",
        ),
        (
            "aokvqa",
            vec!["--gt".into(), s(&aok_path)],
            n_questions,
            "question_id",
        ),
        (
            "rec",
            vec![
                "--gt".into(),
                s(&w.join("refs.json")),
                "--instances".into(),
                inst.clone(),
                "--split".into(),
                "val".into(),
            ],
            n_sents,
            "sent_id",
        ),
    ];
    for (task, gt, n, key) in cases {
        let pred = dir.path().join(format!("pred_{task}.json"));
        let scores = dir.path().join(format!("scores_{task}.json"));
        let mut args: Vec<&str> = vec!["--task", task, "--images", &ww, "--batch-size", "4"];
        args.extend(gt.iter().map(String::as_str));
        let (p, sc) = (s(&pred), s(&scores));
        args.extend(["--pred-out", &p, "--json", &sc]);
        let (stdout, _) = ok(&eval_random(&args));
        assert!(
            stdout.contains(&format!("predictions: {n} items")),
            "{stdout}"
        );
        let preds = read(&pred);
        let preds = preds.as_array().unwrap();
        assert_eq!(preds.len(), n, "{task}");
        let mut ids: Vec<String> = preds.iter().map(|p| p[key].to_string()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n, "{task}: one entry per item");
        for p in preds {
            assert!(p[key].is_number(), "{task}: {p}");
            assert!(p.get("error").is_none(), "{task}: {p}");
            match task {
                "caption" => assert!(p["caption"].is_string(), "{p}"),
                "vqa" | "aokvqa" => assert!(p["answer"].is_string(), "{p}"),
                _ => assert!(
                    p["box"].is_null() || p["box"].as_array().is_some_and(|b| b.len() == 4),
                    "{p}"
                ),
            }
        }
        assert!(!dir
            .path()
            .join(format!("pred_{task}.json.partial"))
            .exists());
        let sc = read(&scores);
        assert_eq!(sc["prediction"]["items"], n, "{task}");
        assert_eq!(sc["prediction"]["computed"], n, "{task}");
        assert_eq!(sc["prediction"]["reused"], 0, "{task}");
        assert_eq!(sc["per_item"].as_array().unwrap().len(), n, "{task}");
        assert!(sc["overall"].is_object(), "{task}");
        // the written predictions score the same through the plain --pred path
        let again = dir.path().join(format!("again_{task}.json"));
        let mut args: Vec<&str> = vec!["eval", "--task", task, "--pred", &p];
        args.extend(gt.iter().map(String::as_str));
        let a = s(&again);
        args.extend(["--json", &a]);
        ok(&lion(&args));
        assert_eq!(read(&again)["overall"], sc["overall"], "{task}");
    }
}

/// Every tensor of a random tiny LION, under its upstream key.
fn tiny_weights() -> HashMap<String, Tensor> {
    let cfg = preset("tiny", Some(PromptKind::Static)).unwrap();
    let vm = VarMap::new();
    let loader = WeightLoader::random().with_trainable(vm.clone(), |_| true);
    LionModel::new(&cfg, 199, loader.var_builder(DType::F32, &Device::Cpu)).unwrap();
    lion_core::weights::varmap_tensors(&vm)
}

/// A model folder with fixed random weights, so that two runs give the same predictions.
fn model_dir(dir: &Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    lion_core::weights::save_safetensors(&tiny_weights(), dir.join("lion.safetensors")).unwrap();
    let manifest = json!({
        "config": "tiny",
        "weights": [{"file": "lion.safetensors"}],
        "t5_tokenizer": root().join("tests/fixtures/lion/tokenizer.json"),
        "qformer_tokenizer": minilm_tokenizer(),
    });
    std::fs::write(dir.join("lion.json"), manifest.to_string()).unwrap();
    s(dir)
}

#[test]
fn an_interrupted_run_resumes_and_ends_as_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let w = world(dir.path());
    let model = model_dir(&dir.path().join("model"));
    let (ww, gt, q) = (
        s(&w),
        s(&w.join("annotations_val.json")),
        s(&w.join("questions_val.json")),
    );
    let run = |pred: &Path, scores: &Path, extra: &[&str]| {
        let (p, sc) = (s(pred), s(scores));
        let mut a = vec![
            "eval",
            "--task",
            "vqa",
            "--gt",
            &gt,
            "--questions",
            &q,
            "--images",
            &ww,
            "--model",
            &model,
            "--batch-size",
            "2",
            "--pred-out",
            &p,
            "--json",
            &sc,
        ];
        a.extend(FAST);
        a.extend(extra);
        lion(&a)
    };

    let full = dir.path().join("full.json");
    ok(&run(&full, &dir.path().join("full_scores.json"), &[]));
    let full = read(&full);
    assert_eq!(full.as_array().unwrap().len(), 15);

    // stop after 4 items (two batches): no result file, a partial file of 4 lines, no scores
    let pred = dir.path().join("pred.json");
    let partial = dir.path().join("pred.json.partial");
    let scores = dir.path().join("scores.json");
    let (stdout, _) = ok(&run(&pred, &scores, &["--stop-after", "4"]));
    assert!(
        stdout.contains("stopped after 4 new predictions"),
        "{stdout}"
    );
    assert!(!pred.exists() && !scores.exists());
    let text = std::fs::read_to_string(&partial).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[..], full.as_array().unwrap()[..4]);

    // a reused line is taken as it is (proof it is not recomputed); a torn last line (a killed
    // write) is dropped and recomputed, also when torn inside a multi-byte character (issue 20:
    // that refused the resume)
    let mut tampered = lines.clone();
    tampered[1]["answer"] = json!("tampered");
    let mut text: String = tampered.iter().map(|l| format!("{l}\n")).collect();
    text.push_str(&format!(
        "{{\"question_id\":{},\"answer\":\"caf",
        full[4]["question_id"]
    ));
    let mut bytes = text.into_bytes();
    bytes.push(0xc3); // the first byte of `é`
    std::fs::write(&partial, bytes).unwrap();
    let (stdout, stderr) = ok(&run(&pred, &scores, &[]));
    assert!(stderr.contains("torn last line"), "{stderr}");
    assert!(stderr.contains("4 of 15 items reused"), "{stderr}");
    assert!(
        stdout.contains("15 items (4 reused, 11 computed"),
        "{stdout}"
    );
    let sc = read(&scores);
    assert_eq!(sc["prediction"]["reused"], 4);
    assert_eq!(sc["prediction"]["computed"], 11);
    assert!(!partial.exists());
    let mut want = full.clone();
    want[1]["answer"] = json!("tampered");
    assert_eq!(read(&pred), want);
    assert_eq!(sc["per_item"][1]["answer"], "tampered");
}

#[test]
fn a_missing_image_is_named_and_the_others_are_predicted() {
    let dir = tempfile::tempdir().unwrap();
    let w = world(dir.path());
    let caps = read(&w.join("captions_val.json"));
    let gone = caps["images"][1].clone();
    let gone_file = gone["file_name"].as_str().unwrap();
    std::fs::remove_file(w.join(gone_file)).unwrap();
    let (pred, scores) = (dir.path().join("pred.json"), dir.path().join("scores.json"));
    let (ww, gt, p, sc) = (s(&w), s(&w.join("captions_val.json")), s(&pred), s(&scores));
    let out = eval_random(&[
        "--task",
        "caption",
        "--gt",
        &gt,
        "--images",
        &ww,
        "--batch-size",
        "2",
        "--pred-out",
        &p,
        "--json",
        &sc,
    ]);
    let (stdout, stderr) = ok(&out);
    let base = Path::new(gone_file).file_name().unwrap().to_str().unwrap();
    assert!(
        stderr.contains(&format!("item {}", gone["id"])) && stderr.contains(base),
        "{stderr}"
    );
    assert!(stdout.contains("1 failed"), "{stdout}");
    let preds = read(&pred);
    let preds = preds.as_array().unwrap();
    assert_eq!(preds.len(), 3);
    assert_eq!(preds[1]["image_id"], gone["id"]);
    assert_eq!(preds[1]["caption"], "");
    let sc = read(&scores);
    assert_eq!(sc["prediction"]["failed"], 1);
    assert_eq!(
        sc["prediction"]["failures"][0]["id"],
        gone["id"].to_string()
    );
    assert_eq!(sc["overall"]["images"], 3);

    // tags: ShapesWorld's tags file (by image id), `lion tag` lines (by file name), a bad file
    let tags = s(&w.join("tags_val.json"));
    let base_args = [
        "--task",
        "caption",
        "--gt",
        &gt,
        "--images",
        &ww,
        "--pred-out",
        &p,
    ];
    let mut a = base_args.to_vec();
    a.extend(["--tags", &tags]);
    let (_, stderr) = ok(&eval_random(&a));
    assert!(stderr.contains("tags for 3 of 3 images"), "{stderr}");
    let lines = dir.path().join("tags.jsonl");
    let first = w.join(caps["images"][0]["file_name"].as_str().unwrap());
    std::fs::write(
        &lines,
        format!(
            "{}\n{}\n",
            json!({"image": first, "tags": [{"tag": "red", "score": 0.9}], "tag_string": "red"}),
            json!({"image": "x.png", "error": "unreadable"})
        ),
    )
    .unwrap();
    let mut a = base_args.to_vec();
    let l = s(&lines);
    a.extend(["--tags", &l]);
    let (_, stderr) = ok(&eval_random(&a));
    assert!(stderr.contains("tags for 1 of 3 images"), "{stderr}");
    std::fs::write(&lines, "{\"image\": \"a.png\", \"tags\": [3]}\n").unwrap();
    let out = eval_random(&a);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tags.jsonl: line 1"), "{err}");

    // --limit: the first N items only, scored over them
    let mut a = base_args.to_vec();
    let sc2 = s(&scores);
    a.extend(["--limit", "2", "--json", &sc2]);
    ok(&eval_random(&a));
    assert_eq!(read(&pred).as_array().unwrap().len(), 2);
    assert_eq!(read(&scores)["overall"]["images"], 2);

    // every image missing: a clear error before the model is loaded
    let out = eval_random(&[
        "--task",
        "caption",
        "--gt",
        &gt,
        "--images",
        "/nonexistent",
        "--pred-out",
        &p,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("none of the 3 images"), "{err}");

    // --pred and a model together are refused
    let out = eval_random(&["--task", "caption", "--gt", &gt, "--pred", &p]);
    assert!(!out.status.success());
}
