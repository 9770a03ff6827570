//! `lion select-captions` and `lion train-tag-encoder` end to end on a tiny synthetic dataset
//! (12 images, 5 captions each, random tags) with the real all-MiniLM-L6-v2.

use std::path::Path;
use std::process::Command;

use lion_core::testing::minilm_dir;
use serde_json::Value;

fn lion(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lion"))
        .args(args)
        .output()
        .expect("run lion")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// 12 images of two coloured shapes, 5 captions each (the last one off-topic), tags with scores.
fn synthetic_images(path: &Path) {
    let colours = ["red", "blue", "green", "yellow"];
    let shapes = ["circle", "square", "triangle"];
    let mut state = 12345u64;
    let mut rnd = |n: usize| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as usize) % n
    };
    let mut lines = vec![];
    for i in 0..12 {
        let (c1, s1) = (colours[rnd(4)], shapes[rnd(3)]);
        let (c2, s2) = (colours[rnd(4)], shapes[rnd(3)]);
        let captions = vec![
            format!("a {c1} {s1} next to a {c2} {s2}"),
            format!("a {c2} {s2} and a {c1} {s1} on a plain background"),
            format!("two shapes: a {c1} {s1} and a {c2} {s2}"),
            format!("there is a {c1} {s1} in the picture"),
            "the stock market fell sharply on monday".to_string(),
        ];
        let mut tags = vec![];
        for t in [c1, s1, c2, s2, "background"] {
            let score = 0.5 + rnd(500) as f64 / 1000.0;
            tags.push(serde_json::json!({"tag": t, "score": score}));
        }
        let rec = if i % 3 == 0 {
            // the "tag: score" string form
            let t: Vec<String> = tags
                .iter()
                .map(|t| format!("{}: {}", t["tag"].as_str().unwrap(), t["score"]))
                .collect();
            serde_json::json!({"image": format!("img{i}.png"), "captions": captions, "tags": t})
        } else {
            serde_json::json!({"image": i, "captions": captions, "tags": tags})
        };
        lines.push(rec.to_string());
    }
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn select_then_train_one_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images.jsonl");
    synthetic_images(&images);
    let minilm = minilm_dir();
    let chosen = dir.path().join("chosen.jsonl");
    let o = lion(&[
        "select-captions",
        "--model",
        s(&minilm),
        "--input",
        s(&images),
        "--out",
        s(&chosen),
        "--batch-size",
        "16",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let input = read_jsonl(&images);
    let rows = read_jsonl(&chosen);
    assert_eq!(rows.len(), 12);
    for (row, img) in rows.iter().zip(&input) {
        assert_eq!(row["image"], img["image"]);
        let idx = row["index"].as_u64().unwrap() as usize;
        assert_eq!(row["caption"], img["captions"][idx]);
        // the off-topic caption is never the centroid-nearest one
        assert_ne!(idx, 4, "{row}");
    }

    // one training run of the tiny dataset into `out`, one epoch on a seeded split, plus `extra`
    let train = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "train-tag-encoder",
            "--model",
            s(&minilm),
            "--data",
            s(&images),
            "--chosen",
            s(&chosen),
            "--out",
            s(out),
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--lr",
            "1e-4",
            "--val-fraction",
            "0.25",
            "--seed",
            "3",
        ];
        args.extend_from_slice(extra);
        lion(&args)
    };
    let train_config = |out: &Path| -> Value {
        serde_json::from_slice(&std::fs::read(out.join("train_config.json")).unwrap()).unwrap()
    };
    let out = dir.path().join("tag-encoder");
    let o = train(&out, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "modules.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
        "train_config.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let metrics = read_jsonl(&out.join("metrics.jsonl"));
    assert_eq!(metrics.len(), 2, "epoch 0 (before training) and epoch 1");
    assert_eq!(metrics[0]["epoch"], 0);
    assert!(metrics[0]["train_loss"].is_null());
    assert_eq!(metrics[1]["epoch"], 1);
    assert_eq!(metrics[1]["steps"], 2, "9 training images in batches of 8");
    for key in [
        "train_loss",
        "train_cos_ap",
        "train_cos_an",
        "val_loss",
        "val_cos_ap",
        "val_cos_an",
        "seconds_per_step",
    ] {
        let v = metrics[1][key].as_f64().unwrap_or(f64::NAN);
        assert!(v.is_finite(), "{key}: {}", metrics[1]);
    }
    for key in ["val_cos_ap", "val_cos_an"] {
        let v = metrics[1][key].as_f64().unwrap();
        assert!((-1.0..=1.0).contains(&v), "{key} {v}");
    }
    let png = std::fs::read(out.join("curves.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 5000);
    let cfg = train_config(&out);
    assert_eq!(cfg["squared"], false, "{cfg}");

    // FaceNet's squared form: recorded in the folder's config, and it trains
    let sq = dir.path().join("tag-encoder-squared");
    let o = train(&sq, &["--squared"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg = train_config(&sq);
    assert_eq!(cfg["squared"], true, "{cfg}");
    let m = read_jsonl(&sq.join("metrics.jsonl"));
    let (before, after) = (m[0]["val_loss"].as_f64(), m[1]["val_loss"].as_f64());
    assert!(
        before.unwrap().is_finite() && after.unwrap().is_finite(),
        "{m:?}"
    );
    // same split, negatives and initial model: only the loss differs before training
    assert_ne!(before, metrics[0]["val_loss"].as_f64(), "{m:?}");

    // The reader's frontier on the same validation split: at lambda 0 its anchor is the mean of
    // the image's other captions, recomputed here from the frozen model.
    let frontier: Value =
        serde_json::from_slice(&std::fs::read(out.join("reader_frontier.json")).unwrap()).unwrap();
    let points = frontier["points"].as_array().unwrap();
    assert_eq!(points.len(), 21);
    let (_, val) = lion_train::triplet_trainer::split(12, 0.25, 3);
    assert_eq!(frontier["images"], val.len());
    let frozen =
        lion_core::sentence::SentenceEmbedder::load(&minilm, &candle_core::Device::Cpu, None)
            .unwrap();
    let cos = |a: &[f32], b: &[f32]| {
        let d: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        (d / (n(a) * n(b))) as f64
    };
    let mut ap = 0.0;
    for &i in &val {
        let caps: Vec<&str> = input[i]["captions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        let e = frozen.embed(&caps, 8).unwrap();
        let k = rows[i]["index"].as_u64().unwrap() as usize;
        let mut mean = vec![0f32; e[0].len()];
        for (_, v) in e.iter().enumerate().filter(|(j, _)| *j != k) {
            mean.iter_mut().zip(v).for_each(|(m, x)| *m += x);
        }
        ap += cos(&mean, &e[k]) / val.len() as f64;
    }
    let first = points[0]["cos_ap"].as_f64().unwrap();
    assert!(
        (first - ap).abs() < 1e-4,
        "frontier {first} vs recomputed {ap}"
    );
    let an = |p: &Value| p["cos_an"].as_f64().unwrap();
    assert!(an(&points[20]) < an(&points[0]), "{frontier}");

    // The folder is a sentence transformer again.
    let dev = candle_core::Device::Cpu;
    let model = lion_core::sentence::SentenceEmbedder::load(&out, &dev, None).unwrap();
    let e = model.embed(&["red: 0.9, circle: 0.8"], 4).unwrap();
    assert_eq!(e[0].len(), 384);
    let norm: f32 = e[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4);
    // and `lion embed` reads it
    let o = lion(&["embed", "--model", s(&out), "blue: 0.7"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let line: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(line["embedding"].as_array().unwrap().len(), 384);
}

#[test]
fn malformed_input_is_reported_by_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("bad.jsonl");
    std::fs::write(
        &images,
        "{\"image\": 1, \"captions\": [\"a\"], \"tags\": [\"x: 0.5\"]}\n{\"image\": 2, \"captions\": \"oops\"}\n",
    )
    .unwrap();
    let out = dir.path().join("out.jsonl");
    let enc = dir.path().join("enc");
    for args in [
        vec!["select-captions", "--input", s(&images), "--out", s(&out)],
        vec!["train-tag-encoder", "--data", s(&images), "--out", s(&enc)],
    ] {
        let o = lion(&args);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("bad.jsonl") && err.contains("line 2") && err.contains("captions"),
            "{err}"
        );
    }
    assert!(!out.exists());
}
