//! Issue 20, hostile input: every CLI row of the report, reproduced against the real binary.
//! Each used to panic (exit 101), abort, slurp a file or accept garbage; each now ends with a
//! clear error naming the field, value and rule (or, for request files, costs only its line).
//! Memory rows run under `ulimit -v` so a regression aborts instead of passing by allocating.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Device, Tensor};
use lion_core::presets::preset;
use lion_core::prompt::PromptKind;
use lion_core::testing::{fixture, minilm_tokenizer, repo_root as root};
use serde_json::{json, Value};

fn photo() -> String {
    fixture("vision/images/rocket.png").display().to_string()
}

/// Runs `lion ARGS` with at most `vm_kib` of virtual memory (a slurp or a big allocation then
/// fails instead of succeeding slowly).
fn lion_limited(args: &[&str], vm_kib: Option<u64>) -> Output {
    let bin = env!("CARGO_BIN_EXE_lion");
    let mut cmd = match vm_kib {
        Some(k) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!("ulimit -v {k} && exec \"$0\" \"$@\""))
                .arg(bin);
            c
        }
        None => Command::new(bin),
    };
    cmd.args(args)
        .current_dir(root())
        .output()
        .expect("run lion")
}

fn lion(args: &[&str]) -> Output {
    lion_limited(args, None)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Failed cleanly (exit 1, not a panic's 101 or a signal) with `want` in the message.
fn refused(o: &Output, want: &str) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(1), "status {:?}: {e}", o.status);
    assert!(e.contains(want), "expected {want:?} in: {e}");
    assert!(!e.contains("panicked"), "{e}");
}

const FAST: &[&str] = &["--num-beams", "1", "--max-new-tokens", "4"];

/// The tiny preset as a full config, with the Q-Former vocabulary of the LION fixture (1000).
fn tiny_config() -> Value {
    let mut cfg = preset("tiny", Some(PromptKind::Static)).unwrap();
    cfg.qformer.as_mut().unwrap().bert.vocab_size = 1000;
    serde_json::to_value(cfg).unwrap()
}

/// A model folder with a full config and the given weight files.
fn model_dir(dir: &Path, config: Value, weights: &[PathBuf]) -> String {
    let w: Vec<Value> = weights.iter().map(|p| json!({"file": p})).collect();
    let manifest = json!({
        "config": config,
        "weights": w,
        "t5_tokenizer": fixture("lion/tokenizer.json"),
        "qformer_tokenizer": minilm_tokenizer(),
    });
    std::fs::write(dir.join("lion.json"), manifest.to_string()).unwrap();
    dir.display().to_string()
}

fn caption(dir: &str, vm_kib: Option<u64>) -> Output {
    let mut a = vec!["caption", "--model", dir];
    let img = photo();
    a.push(&img);
    a.extend(FAST);
    lion_limited(&a, vm_kib)
}

/// The unmutated folder passes every load check (config rules, memory, weights), so the
/// refusals below come from the one mutated field. It cannot caption: the fixture's Q-Former
/// has 1000 tokens and the MiniLM tokenizer's ids go beyond them, which fails per request.
#[test]
fn the_base_model_folder_passes_every_load_check() {
    let dir = tempfile::tempdir().unwrap();
    let d = model_dir(
        dir.path(),
        tiny_config(),
        &[fixture("lion/model.safetensors")],
    );
    let o = caption(&d, None);
    let (out, err) = (String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(!err.contains("cannot load the model folder"), "{err}");
    assert!(out.contains("rocket.png"), "{out}");
}

/// Full configs with a zero or overflowing size, a negative epsilon or a zero-layer Q-Former:
/// refused by name before the model is built (they panicked: index out of bounds in t5.rs,
/// a kernel slice panic, a capacity overflow; or loaded and captioned garbage).
#[test]
fn bad_sizes_in_a_full_config_are_named_before_anything_is_built() {
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "/t5/num_layers",
            json!(0),
            "`t5.num_layers` = 0: must be at least 1",
        ),
        (
            "/t5/num_decoder_layers",
            json!(0),
            "`t5.num_decoder_layers` = 0: must be at least 1",
        ),
        (
            "/vit/mlp_dim",
            json!(0),
            "`vit.mlp_dim` = 0: must be at least 1",
        ),
        (
            "/t5/d_ff",
            json!(1u64 << 62),
            "`t5.d_ff` = [3, 32, 4611686018427387904]: the product of these sizes overflows",
        ),
        (
            "/vit/layer_norm_eps",
            json!(-1e-6),
            "`vit.layer_norm_eps` = -0.000001: must be a finite number > 0",
        ),
        (
            "/qformer/bert/num_hidden_layers",
            json!(0),
            "`qformer.bert.num_hidden_layers` = 0: must be at least 1",
        ),
    ];
    for (path, value, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = tiny_config();
        *cfg.pointer_mut(path).unwrap() = value;
        let d = model_dir(dir.path(), cfg, &[fixture("lion/model.safetensors")]);
        // 2 GB of address space is plenty for refusing (and for the tiny model).
        let o = caption(&d, Some(2 << 20));
        refused(&o, want);
    }
}

/// `t5.vocab_size: 200000000` allocated 25 GB before any check. Now the memory estimate
/// refuses it first; run with 2 GB of address space, so allocating would abort instead.
#[test]
fn a_config_too_big_for_the_machine_is_refused_before_allocating() {
    let mut cfg = tiny_config();
    cfg["t5"]["vocab_size"] = json!(200_000_000);
    let c: lion_core::lion::LionConfig = serde_json::from_value(cfg.clone()).unwrap();
    let need = c.memory_estimate(1, false).unwrap();
    if lion_core::rules::mem_available().is_some_and(|m| m > need) {
        eprintln!("skipped: this machine has more than the {need} bytes the model needs");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = model_dir(dir.path(), cfg, &[fixture("lion/model.safetensors")]);
    let t = std::time::Instant::now();
    let o = caption(&d, Some(2 << 20));
    refused(&o, "model memory (batch 1)");
    refused(&o, "LION_NO_MEMORY_CHECK=1");
    assert!(t.elapsed().as_secs() < 30);
}

/// `"weights": []` ran on random weights although loading is strict.
#[test]
fn an_empty_weight_list_is_refused_in_strict_mode() {
    let dir = tempfile::tempdir().unwrap();
    let d = model_dir(dir.path(), tiny_config(), &[]);
    refused(
        &caption(&d, None),
        "`weights` = []: must name at least one weight file",
    );
}

fn fixture_tensors() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("lion/model.safetensors"), &Device::Cpu).unwrap()
}

/// NaN weights loaded and captioned garbage: refused naming the tensor.
#[test]
fn non_finite_weights_are_refused_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = fixture_tensors();
    let key = "t5_proj.weight";
    let t = &w[key];
    let mut v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v[3] = f32::NAN;
    w.insert(
        key.into(),
        Tensor::from_vec(v, t.shape(), &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap(),
    );
    let p = dir.path().join("nan.safetensors");
    lion_core::weights::save_safetensors(&w, &p).unwrap();
    let d = model_dir(dir.path(), tiny_config(), &[p]);
    refused(
        &caption(&d, None),
        "tensor `t5_proj.weight` holds 1 NaN or infinite value(s)",
    );
}

/// A safetensors header naming a tensor twice (the last one silently won).
#[test]
fn duplicate_safetensors_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("lion/model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap().trim_end();
    let v: serde_json::Map<String, Value> = serde_json::from_str(header).unwrap();
    let (k, entry) = v.iter().find(|(k, _)| *k != "__metadata__").unwrap();
    // The same entry once more, before the closing brace.
    let dup = format!(
        "{},{}:{}}}",
        &header[..header.len() - 1],
        Value::from(k.as_str()),
        entry
    );
    let mut out = (dup.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(dup.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    let p = dir.path().join("dup.safetensors");
    std::fs::write(&p, out).unwrap();
    let d = model_dir(dir.path(), tiny_config(), &[p]);
    refused(&caption(&d, None), &format!("names tensor `{k}` twice"));
}

/// `--min-length` above `--max-new-tokens` and an empty question were accepted by the CLI and
/// refused by the server: the same rule set now refuses them in both, before the model loads.
#[test]
fn decoding_flags_and_texts_follow_the_servers_rules() {
    let img = photo();
    let q = minilm_tokenizer();
    let base = [
        "--preset",
        "tiny",
        "--random-weights",
        "--qformer-tokenizer",
        &q,
    ];
    let run = |cmd: &str, extra: &[&str], pos: &[&str]| {
        let mut a = vec![cmd];
        a.extend(base);
        a.extend(extra);
        a.extend(pos);
        lion(&a)
    };
    refused(
        &run(
            "caption",
            &["--min-length", "10", "--max-new-tokens", "5"],
            &[&img],
        ),
        "`min_new_tokens` = 9: must be between 0 and 5",
    );
    refused(
        &run("caption", &["--num-beams", "0"], &[&img]),
        "`num_beams` = 0: must be between 1 and 8",
    );
    refused(
        &run("caption", &["--repetition-penalty", "NaN"], &[&img]),
        "`repetition_penalty` = NaN",
    );
    refused(
        &run("caption", &["--temperature", "-1"], &[&img]),
        "`temperature` = -1: must be between 0 and 100",
    );
    refused(
        &run(
            "caption",
            &["--temperature", "0.7", "--top-p", "0"],
            &[&img],
        ),
        "`top_p` = 0: must be more than 0",
    );
    refused(
        &run(
            "caption",
            &["--temperature", "0.7", "--top-k", "0"],
            &[&img],
        ),
        "`top_k` = 0: must be at least 1",
    );
    refused(
        &run(
            "caption",
            &["--temperature", "0.7", "--num-beams", "3"],
            &[&img],
        ),
        "`num_beams` = 3: must be 1 when sampling",
    );
    refused(
        &run("vqa", FAST, &[&img, "  "]),
        "`question` = \"  \": must not be empty",
    );
    refused(
        &run("ground", FAST, &[&img, ""]),
        "`expression` = \"\": must not be empty",
    );
    refused(
        &run("caption", &["--batch-size", "0"], &[&img]),
        "`--batch-size` = 0",
    );
}

/// `lion tag --threshold 2 / -1 / NaN` and `--top-k 0` were accepted.
#[test]
fn tag_selection_flags_are_checked() {
    let img = photo();
    for (flag, want) in [
        (
            "--threshold=2",
            "`--threshold` = 2: must be between 0 and 1 (exclusive)",
        ),
        (
            "--threshold=-1",
            "`--threshold` = -1: must be between 0 and 1",
        ),
        (
            "--threshold=NaN",
            "`--threshold` = NaN: must be between 0 and 1",
        ),
        ("--top-k=0", "`--top-k` = 0: must be at least 1"),
    ] {
        let o = lion(&["tag", "--random-weights", "--config", "tiny", flag, &img]);
        refused(&o, want);
    }
}

/// Request files: an unknown field, an empty question and an invalid-UTF-8 line each cost
/// their own line (the UTF-8 line used to stop the whole file); the others are answered.
#[test]
fn request_lines_are_checked_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let img = photo();
    let mut text = Vec::new();
    for l in [
        format!(r#"{{"image": "{img}", "question": "what is it?"}}"#),
        format!(r#"{{"image": "{img}", "question": "what?", "qustion_typo": 1}}"#),
        format!(r#"{{"image": "{img}", "question": ""}}"#),
    ] {
        text.extend_from_slice(l.as_bytes());
        text.push(b'\n');
    }
    text.extend_from_slice(b"{\"image\": \"x.png\", \"question\": \"caf\xe9?\"}\n");
    text.extend_from_slice(format!(r#"{{"image": "{img}", "question": "and now?"}}"#).as_bytes());
    text.push(b'\n');
    let reqs = dir.path().join("r.jsonl");
    std::fs::write(&reqs, text).unwrap();
    let q = minilm_tokenizer();
    let r = reqs.display().to_string();
    let mut a = vec![
        "vqa",
        "--preset",
        "tiny",
        "--random-weights",
        "--qformer-tokenizer",
        &q,
    ];
    a.extend(["--requests", &r]);
    a.extend(FAST);
    let o = lion(&a);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert!(lines[0]["answer"].is_string());
    let err = |i: usize| lines[i]["error"].as_str().unwrap_or("").to_string();
    assert!(
        err(1).contains("unknown field `qustion_typo`"),
        "{}",
        err(1)
    );
    assert!(err(2).contains("must not be empty"), "{}", err(2));
    assert!(err(3).contains("not valid UTF-8"), "{}", err(3));
    assert_eq!(lines[3]["line"], 4);
    assert!(lines[4]["answer"].is_string(), "{:?}", lines[4]);
}

/// `lion caption` read a whole file (a 3 GB file, `/dev/zero`) before checking its format;
/// `lion embed --file /dev/zero` read forever. Both now stop at the first bytes or the line
/// bound, within 2 GB of address space.
#[test]
fn files_are_sniffed_and_streamed_not_slurped() {
    let dir = tempfile::tempdir().unwrap();
    // A sparse 3 GB file (no disk used) that is no image.
    let big = dir.path().join("big.png");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(3 << 30)
        .unwrap();
    let q = minilm_tokenizer();
    for path in [big.display().to_string(), "/dev/zero".to_string()] {
        let t = std::time::Instant::now();
        let mut a = vec![
            "caption",
            "--preset",
            "tiny",
            "--random-weights",
            "--qformer-tokenizer",
            &q,
            &path,
        ];
        a.extend(FAST);
        let o = lion_limited(&a, Some(2 << 20));
        // One request, refused: every request failed.
        refused(&o, "no request could be answered");
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("not an image: unrecognised format"),
            "{}",
            String::from_utf8_lossy(&o.stdout)
        );
        assert!(t.elapsed().as_secs() < 30, "{path}");
    }
    if Path::new("/dev/zero").exists() {
        let o = lion_limited(
            &["embed", "--file", "/dev/zero", "a sentence"],
            Some(2 << 20),
        );
        refused(&o, "has no end within 64 MiB");
    }
}

/// `--train 18446744073709551615` overflowed the size cap and aborted at 21 GB.
#[test]
fn world_counts_that_overflow_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("w").display().to_string();
    let o = lion_limited(
        &[
            "world",
            "generate",
            "--out",
            &out,
            "--train",
            "18446744073709551615",
        ],
        Some(2 << 20),
    );
    refused(&o, "overflows");
    assert!(!dir.path().join("w").exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
