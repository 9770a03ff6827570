//! `lion caption / vqa / ground` through the real binary: a real photograph with the `base`
//! preset, request files with bad lines, and model folders whose checkpoint does not fit.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use lion_core::lion::LionModel;
use lion_core::presets::preset;
use lion_core::prompt::PromptKind;
use lion_core::testing::{minilm_tokenizer, repo_root as root};
use lion_core::weights::WeightLoader;
use serde_json::Value;

fn photo(name: &str) -> String {
    root()
        .join("tests/fixtures/vision/images")
        .join(name)
        .display()
        .to_string()
}

fn lion(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lion"))
        .args(args)
        .args(["--qformer-tokenizer", &minilm_tokenizer()])
        .current_dir(root())
        .output()
        .expect("run lion")
}

fn lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

const FAST: &[&str] = &["--num-beams", "2", "--max-new-tokens", "6"];

#[test]
fn caption_on_a_real_photograph_with_the_base_preset() {
    let img = photo("astronaut.png");
    let mut args = vec![
        "caption",
        "--preset",
        "base",
        "--random-weights",
        "--init-seed",
        "7",
        &img,
    ];
    args.extend(FAST);
    // One seeded random model (a fresh draw each run once gave an empty caption: over a hundred
    // of T5's ids decode to nothing, as pad, unk, the extra ids and those past the tokenizer's),
    // and at least four new tokens, so that the text is empty only if all four are such ids.
    args.extend(["--min-length", "5"]);
    let out = lion(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let l = lines(&out);
    assert_eq!(l.len(), 1);
    assert_eq!(l[0]["image"], img.as_str());
    let caption = l[0]["caption"].as_str().expect("a caption string");
    assert!(!caption.trim().is_empty(), "empty caption: {l:?}");
}

#[test]
fn ground_answers_with_text_and_a_pixel_box_or_null() {
    let img = photo("coffee.png");
    let (w, h) = image::image_dimensions(&img).unwrap();
    let mut args = vec![
        "ground",
        "--preset",
        "tiny",
        "--random-weights",
        &img,
        "the red cup",
    ];
    args.extend(FAST);
    let out = lion(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let l = lines(&out);
    assert_eq!(l.len(), 1);
    assert_eq!(l[0]["expression"], "the red cup");
    assert!(l[0]["text"].is_string());
    match &l[0]["box"] {
        Value::Null => {} // a random model's text rarely holds a box: counted as a miss
        Value::Array(b) => {
            let b: Vec<f64> = b.iter().map(|v| v.as_f64().unwrap()).collect();
            assert!(b[0] <= b[2] && b[1] <= b[3] && b[2] <= w as f64 && b[3] <= h as f64);
        }
        other => panic!("box is {other}"),
    }
}

#[test]
fn bad_request_lines_get_errors_and_the_rest_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let reqs = dir.path().join("requests.jsonl");
    let good = photo("rocket.png");
    let text = [
        format!(r#"{{"image": "{good}", "question": "what is it?", "tags": ["rocket: 0.9"]}}"#),
        "{not json".to_string(),
        r#"{"question": "where is the image?"}"#.to_string(),
        r#"{"image": "no/such/file.png", "question": "?"}"#.to_string(),
        format!(r#"{{"image": "{good}"}}"#),
        format!(r#"{{"image": "{good}", "question": "and again?"}}"#),
    ]
    .join("\n");
    std::fs::write(&reqs, text).unwrap();
    let mut args = vec!["vqa", "--preset", "tiny", "--random-weights", "--requests"];
    let reqs_s = reqs.display().to_string();
    args.push(&reqs_s);
    args.extend(FAST);
    let out = lion(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let l = lines(&out);
    assert_eq!(l.len(), 6, "{l:?}");
    for (i, line) in l.iter().enumerate() {
        assert_eq!(line["line"], i + 1);
    }
    assert!(l[0]["answer"].is_string());
    assert!(l[1]["error"].as_str().unwrap().contains("bad JSON"));
    assert!(l[2]["error"].as_str().unwrap().contains("missing `image`"));
    let e3 = l[3]["error"].as_str().unwrap();
    assert!(e3.contains("no/such/file.png"), "{e3}");
    assert!(l[4]["error"]
        .as_str()
        .unwrap()
        .contains("missing `question`"));
    assert!(l[5]["answer"].is_string());
}

#[test]
fn missing_arguments_are_clear_errors() {
    let img = photo("rocket.png");
    let out = lion(&["vqa", "--preset", "tiny", "--random-weights", &img]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("give IMAGE and QUESTION"));
    let out = lion(&["caption", "--preset", "tiny", &img]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--random-weights"));
}

/// Every tensor of a random tiny LION, under its upstream key.
fn tiny_weights() -> HashMap<String, Tensor> {
    let cfg = preset("tiny", Some(PromptKind::Static)).unwrap();
    let vm = VarMap::new();
    let loader = WeightLoader::random().with_trainable(vm.clone(), |_| true);
    LionModel::new(&cfg, 199, loader.var_builder(DType::F32, &Device::Cpu)).unwrap();
    lion_core::weights::varmap_tensors(&vm)
}

fn model_dir(dir: &Path, weights: &HashMap<String, Tensor>) -> String {
    lion_core::weights::save_safetensors(weights, dir.join("lion.safetensors")).unwrap();
    let manifest = serde_json::json!({
        "config": "tiny",
        "weights": [{"file": "lion.safetensors"}],
        "t5_tokenizer": root().join("tests/fixtures/lion/tokenizer.json"),
        "qformer_tokenizer": minilm_tokenizer(),
    });
    std::fs::write(dir.join("lion.json"), manifest.to_string()).unwrap();
    dir.display().to_string()
}

#[test]
fn model_folder_loads_and_a_wrong_preset_checkpoint_is_named() {
    let img = photo("chelsea.png");
    let good = tempfile::tempdir().unwrap();
    let weights = tiny_weights();
    let d = model_dir(good.path(), &weights);
    let mut args = vec!["caption", "--model", &d, &img];
    args.extend(FAST);
    let out = lion(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(lines(&out)[0]["caption"].is_string());

    // A checkpoint of another size: the T5 is 48 wide instead of 32.
    let bad = tempfile::tempdir().unwrap();
    let mut w = weights.clone();
    w.insert(
        "t5_model.shared.weight".into(),
        Tensor::zeros((200, 48), DType::F32, &Device::Cpu).unwrap(),
    );
    w.insert(
        "t5_model.encoder.block.7.layer.0.SelfAttention.q.weight".into(),
        Tensor::zeros((48, 48), DType::F32, &Device::Cpu).unwrap(),
    );
    let d = model_dir(bad.path(), &w);
    let mut args = vec!["caption", "--model", &d, &img];
    args.extend(FAST);
    let out = lion(&args);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("t5_model.shared.weight (model [200, 32], checkpoint [200, 48])"),
        "{err}"
    );
    assert!(
        err.contains("unexpected keys: t5_model.encoder.block.7"),
        "{err}"
    );
}

/// `--temperature` samples (one beam by default), the same `--seed` gives the same text, and
/// the CLI's default decoding (beam search) is unchanged by the sampling flags being absent.
#[test]
fn sampling_flags_are_seeded() {
    let img = photo("chelsea.png");
    let dir = tempfile::tempdir().unwrap();
    let d = model_dir(dir.path(), &tiny_weights());
    let caption = |extra: &[&str]| {
        let mut args = vec![
            "caption",
            "--model",
            &d,
            "--max-new-tokens",
            "8",
            "--min-length",
            "9",
        ];
        args.extend(extra);
        args.push(&img);
        let out = lion(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        lines(&out)[0]["caption"].as_str().unwrap().to_string()
    };
    let a = caption(&["--temperature", "1.0", "--top-p", "0.95", "--seed", "7"]);
    assert_eq!(
        a,
        caption(&["--temperature", "1.0", "--top-p", "0.95", "--seed", "7"])
    );
    let others: Vec<String> = ["8", "9", "10"]
        .iter()
        .map(|s| caption(&["--temperature", "1.0", "--top-p", "0.95", "--seed", s]))
        .collect();
    assert!(
        others.iter().any(|o| *o != a),
        "other seeds, other texts: {a:?} {others:?}"
    );
    // temperature 0: no sampling, the seed does not matter
    assert_eq!(caption(&["--seed", "1"]), caption(&["--seed", "2"]));
}

/// `--random-weights --init-seed N`: the same random model on every run, another with another
/// seed; `--init-seed` without `--random-weights` is refused by the argument parser.
#[test]
fn random_weights_with_an_init_seed_repeat() {
    let img = photo("chelsea.png");
    let caption = |seed: &str| {
        let out = lion(&[
            "caption",
            "--preset",
            "tiny",
            "--random-weights",
            "--init-seed",
            seed,
            "--num-beams",
            "1",
            "--max-new-tokens",
            "8",
            "--min-length",
            "9",
            &img,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        lines(&out)[0]["caption"].as_str().unwrap().to_string()
    };
    let a = caption("3");
    assert_eq!(a, caption("3"), "same seed, same weights, same caption");
    let others: Vec<String> = ["4", "5"].iter().map(|s| caption(s)).collect();
    assert!(others.iter().any(|o| *o != a), "{a:?} {others:?}");
    let out = lion(&["caption", "--preset", "tiny", "--init-seed", "3", &img]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--random-weights"));
}

/// Issue 7: `lion ground` with a trained model folder returns boxes in pixels. The shipped
/// ShapesWorld backbone (`assets/shapes-backbone`, pretrained on worlds of seeds 1000 and 1001)
/// grounds expressions of a world it never saw (seed 5), at least a quarter of them at IoU >= 0.5.
#[test]
fn ground_with_the_shipped_shapes_backbone_returns_pixel_boxes() {
    let tmp = tempfile::tempdir().unwrap();
    let world = tmp.path().join("w");
    let gen = Command::new(env!("CARGO_BIN_EXE_lion"))
        .args(["world", "generate", "--out"])
        .arg(&world)
        .args(["--seed", "5", "--train", "1", "--val", "1", "--test", "6"])
        .args(["--size", "96"])
        .output()
        .unwrap();
    assert!(
        gen.status.success(),
        "{}",
        String::from_utf8_lossy(&gen.stderr)
    );
    let read = |f: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(world.join(f)).unwrap()).unwrap()
    };
    let tags: HashMap<u64, Vec<String>> = read("tags_test.json")
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let names = t["tags"].as_array().unwrap();
            let scored = names
                .iter()
                .map(|n| format!("{}: 1.0", n.as_str().unwrap()))
                .collect();
            (t["image_id"].as_u64().unwrap(), scored)
        })
        .collect();
    let boxes: HashMap<u64, Vec<f64>> = read("instances.json")["annotations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let b: Vec<f64> = a["bbox"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            (
                a["id"].as_u64().unwrap(),
                vec![b[0], b[1], b[0] + b[2], b[1] + b[3]],
            )
        })
        .collect();
    let mut requests = String::new();
    let mut gt = vec![];
    for r in read("refs.json").as_array().unwrap() {
        if r["split"] != "test" {
            continue;
        }
        let id = r["image_id"].as_u64().unwrap();
        let image = world.join(r["file_name"].as_str().unwrap());
        for s in r["sentences"].as_array().unwrap() {
            let line =
                serde_json::json!({"image": image, "expression": s["sent"], "tags": tags[&id]});
            requests.push_str(&format!("{line}\n"));
            gt.push(boxes[&r["ann_id"].as_u64().unwrap()].clone());
        }
    }
    let req = tmp.path().join("requests.jsonl");
    std::fs::write(&req, requests).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lion"))
        .args(["ground", "--model", "assets/shapes-backbone", "--requests"])
        .arg(&req)
        .args(["--num-beams", "1", "--repetition-penalty", "1.0"])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let l = lines(&out);
    assert_eq!(l.len(), gt.len());
    let mut parsed = 0;
    let mut hits = 0;
    for (a, g) in l.iter().zip(&gt) {
        let Value::Array(b) = &a["box"] else { continue };
        let b: Vec<f64> = b.iter().map(|v| v.as_f64().unwrap()).collect();
        assert!(
            b[0] <= b[2] && b[1] <= b[3] && b[2] <= 96.0 && b[3] <= 96.0,
            "{a}"
        );
        parsed += 1;
        let inter =
            (b[2].min(g[2]) - b[0].max(g[0])).max(0.0) * (b[3].min(g[3]) - b[1].max(g[1])).max(0.0);
        let union = (b[2] - b[0]) * (b[3] - b[1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter;
        hits += usize::from(inter / union >= 0.5);
    }
    eprintln!(
        "{parsed} of {} answers hold a box; {hits} at IoU >= 0.5",
        gt.len()
    );
    assert!(
        parsed * 10 >= gt.len() * 9,
        "{parsed} of {} boxes parse",
        gt.len()
    );
    // it localises: 13 of these 19 at IoU >= 0.5 on an AMD EPYC (Zen 3) with the shipped
    // backbone, which finds 46.9% of a fresh world's objects (12 with the one before its last
    // two legs, 38.9%; 12 with the one before that, 33.5%; 12 on an Intel Xeon with the one
    // before that, 27%; 14 with the one before that, 18%; the backbone before that 2%, a
    // centre box about 1%)
    assert!(
        hits * 4 >= gt.len(),
        "only {hits} of {} boxes at IoU >= 0.5",
        gt.len()
    );
}

/// `--device`: parsed and validated before anything is loaded, on every model command. A default
/// build names the missing feature for `cuda`; a bad spelling names the flag and the value.
#[test]
fn device_flag_is_validated_on_every_model_command() {
    let img = photo("astronaut.png");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_lion"))
            .args(args)
            .current_dir(root())
            .output()
            .expect("run lion");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let commands: &[&[&str]] = &[
        &["caption", "--preset", "tiny", "--random-weights", &img],
        &[
            "bench",
            "--preset",
            "tiny",
            "--dir",
            "/nonexistent/never-written",
        ],
        &["train", "--config", "/nonexistent/train.json"],
        &["serve", "--addr", "127.0.0.1:0"],
        &["embed", "a sentence"],
    ];
    for cmd in commands {
        let (ok, err) = run(&[*cmd, &["--device", "tpu"][..]].concat());
        assert!(!ok, "{cmd:?} --device tpu succeeded");
        assert!(
            err.contains("--device") && err.contains("tpu") && err.contains("cuda:N"),
            "{cmd:?}: {err}"
        );
        if !lion_core::device::CUDA_BUILT {
            let (ok, err) = run(&[*cmd, &["--device", "cuda:1"][..]].concat());
            assert!(!ok, "{cmd:?} --device cuda:1 succeeded in a CPU build");
            assert!(
                err.contains("this build has no CUDA support; rebuild with --features cuda"),
                "{cmd:?}: {err}"
            );
        }
    }
    // cpu is accepted (and the default): a tiny caption runs
    let (ok, err) = run(&[
        "caption",
        "--preset",
        "tiny",
        "--random-weights",
        "--device",
        "cpu",
        "--qformer-tokenizer",
        &minilm_tokenizer(),
        "--num-beams",
        "1",
        "--max-new-tokens",
        "2",
        &img,
    ]);
    assert!(ok, "--device cpu: {err}");
}

/// `lion convert` (no model flags).
fn convert(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lion"))
        .arg("convert")
        .args(args)
        .output()
        .expect("run lion")
}

/// `lion convert` rewrites a model folder as safetensors: kept as stored, the captions are the
/// same; in bf16 the file is half the size and loads; converting into a folder that has a
/// model is refused. `--quantize q8_0|q4_0|q4k` runs, and an unknown format is named.
#[test]
fn convert_and_quantize_from_the_command_line() {
    let img = photo("chelsea.png");
    let dir = tempfile::tempdir().unwrap();
    let d = model_dir(dir.path(), &tiny_weights());
    let caption = |model: &str, extra: &[&str]| -> String {
        let mut args = vec!["caption", "--model", model, &img];
        args.extend(FAST);
        args.extend(extra);
        let out = lion(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        lines(&out)[0]["caption"].as_str().unwrap().to_string()
    };
    let f32 = ["--dtype", "f32"];
    let want = caption(&d, &f32);
    let outs = tempfile::tempdir().unwrap();
    let same = outs.path().join("same");
    let same_s = same.display().to_string();
    let out = convert(&["--model", &d, "--out", &same_s]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("lion.safetensors\t"));
    assert_eq!(caption(&same_s, &f32), want);
    let half = outs.path().join("bf16");
    let half_s = half.display().to_string();
    let out = convert(&["--model", &d, "--out", &half_s, "--dtype", "bf16"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let size = |p: &Path| std::fs::metadata(p.join("lion.safetensors")).unwrap().len() as f64;
    let ratio = size(&half) / size(&same);
    assert!((ratio - 0.5).abs() < 0.02, "bf16 / f32 size {ratio}");
    caption(&half_s, &["--dtype", "bf16"]);
    let out = convert(&["--model", &d, "--out", &same_s]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already holds a lion.json"));
    for q in ["q8_0", "q4_0", "q4k"] {
        caption(&d, &["--quantize", q]);
    }
    let out = lion(&["caption", "--model", &d, "--quantize", "q5", &img]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected q8_0, q4_0 or q4k"));
    // a quantized folder: loaded as stored, the captions of quantizing at load, smaller
    let q8 = outs.path().join("q8");
    let q8_s = q8.display().to_string();
    let out = convert(&["--model", &d, "--out", &q8_s, "--quantize", "q8_0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Both quantize the file's f32 values, also under `--dtype bf16` (quantizing at load reads a
    // quantizable weight in the file's dtype, not rounded to bf16 first), and round the layers
    // kept dense the same way.
    for dtype in [&f32[..], &["--dtype", "bf16"][..]] {
        let at_load = [&["--quantize", "q8_0"][..], dtype].concat();
        assert_eq!(caption(&q8_s, dtype), caption(&d, &at_load), "{dtype:?}");
    }
    assert!(size(&q8) < size(&same), "{} vs {}", size(&q8), size(&same));
    let out = lion(&["caption", "--model", &q8_s, "--quantize", "q4_0", &img]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stored in q8_0"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `lion doctor` names the f32 GEMM it picked; `LION_F32_GEMM=gemm-crate` moves only that one
/// off the AVX-512 kernel, and `LION_CPU=avx2` caps it too.
#[test]
fn doctor_reports_the_f32_gemm_and_the_env_overrides_change_it() {
    let doctor = |envs: &[(&str, &str)]| -> Value {
        let mut c = Command::new(env!("CARGO_BIN_EXE_lion"));
        c.arg("doctor");
        for (k, v) in envs {
            c.env(k, v);
        }
        let out = c.output().expect("run lion doctor");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).expect("doctor prints JSON")["kernels"].clone()
    };
    let native = doctor(&[]);
    let crate_gemm = doctor(&[("LION_F32_GEMM", "gemm-crate")]);
    let capped = doctor(&[("LION_CPU", "avx2")]);
    assert_ne!(capped["f32_gemm"], "avx512");
    assert_ne!(crate_gemm["f32_gemm"], "avx512");
    assert_eq!(crate_gemm["f32_skinny"], native["f32_skinny"]);
    assert_eq!(crate_gemm["bf16"], native["bf16"]);
    if native["f32_gemm"] != "avx512" {
        eprintln!(
            "this CPU has no AVX-512: the native choice is {}",
            native["f32_gemm"]
        );
    }
}
