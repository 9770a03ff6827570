//! Sharded batch jobs through the binary: 3 shards run as separate processes (one resumed
//! after an interruption), `lion merge` joins them, and the result equals the unsharded run byte
//! for byte (`lion eval --model`, `lion tag`, `lion caption --requests --ram`). Every process
//! runs in a folder other than the checkout, finding all-MiniLM-L6-v2 by Hub id in a temporary
//! Hugging Face cache.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use candle_core::{DType, Device};
use candle_nn::VarMap;
use lion_core::lion::LionModel;
use lion_core::presets::preset;
use lion_core::prompt::PromptKind;
use lion_core::tagger::{Ram, RamConfig};
use lion_core::testing::repo_root as root;
use lion_core::weights::WeightLoader;
use serde_json::{json, Value};

const MINILM_ID: &str = "sentence-transformers/all-MiniLM-L6-v2";

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// A scratch folder with a Hugging Face cache holding all-MiniLM-L6-v2 (linked from the
/// checkout's `models/`), the folder every command runs in.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir
            .path()
            .join("hf/hub/models--sentence-transformers--all-MiniLM-L6-v2");
        std::fs::create_dir_all(repo.join("snapshots")).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        let minilm = std::fs::canonicalize(root().join("models/all-MiniLM-L6-v2")).expect(
            "all-MiniLM-L6-v2 in models/: run scripts/get-minilm.sh (the test command does)",
        );
        std::os::unix::fs::symlink(minilm, repo.join("snapshots/0123abc")).unwrap();
        std::fs::write(repo.join("refs/main"), "0123abc").unwrap();
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_lion"));
        c.args(args)
            .current_dir(self.path())
            .env("HF_HUB_CACHE", self.path().join("hf/hub"))
            .env_remove("HF_HOME")
            .env_remove("LION_HOME")
            .env_remove("SLURM_ARRAY_TASK_ID")
            .env_remove("SLURM_ARRAY_TASK_COUNT")
            .env_remove("JOB_COMPLETION_INDEX");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run lion")
    }

    /// Starts the shards 0..3 of `args` at once, as separate processes, and waits for them all.
    fn shards(&self, args: &[&str]) {
        let children: Vec<(usize, Child)> = (0..3)
            .map(|i| {
                let shard = format!("{i}/3");
                let mut a = args.to_vec();
                a.extend(["--shard", &shard]);
                let child = self
                    .cmd(&a)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("start lion");
                (i, child)
            })
            .collect();
        for (i, c) in children {
            let out = c.wait_with_output().unwrap();
            ok(&out, &format!("shard {i}"));
        }
    }
}

fn ok(out: &Output, what: &str) -> String {
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{what}\nstdout:\n{so}\nstderr:\n{se}");
    so
}

fn failed(out: &Output, what: &str) -> String {
    assert!(!out.status.success(), "{what} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A model folder of the tiny preset with fixed random weights (two processes, same answers);
/// its Q-Former tokenizer is named by Hub id.
fn model_dir(dir: &Path) -> String {
    let cfg = preset("tiny", Some(PromptKind::Static)).unwrap();
    let vm = VarMap::new();
    // seeded: the same model on every run, so a failure here reproduces
    let loader = WeightLoader::random()
        .with_init_seed(199)
        .with_trainable(vm.clone(), |_| true);
    LionModel::new(&cfg, 199, loader.var_builder(DType::F32, &Device::Cpu)).unwrap();
    save(&vm, &dir.join("lion.safetensors"));
    let manifest = json!({
        "config": "tiny",
        "weights": [{"file": "lion.safetensors"}],
        "t5_tokenizer": root().join("tests/fixtures/lion/tokenizer.json"),
        "qformer_tokenizer": MINILM_ID,
    });
    std::fs::write(dir.join("lion.json"), manifest.to_string()).unwrap();
    s(dir)
}

/// Fixed random weights of the tiny RAM.
fn ram_weights(path: &Path) -> String {
    let vm = VarMap::new();
    let loader = WeightLoader::random().with_trainable(vm.clone(), |_| true);
    Ram::new(
        &RamConfig::tiny(),
        loader.var_builder(DType::F32, &Device::Cpu),
    )
    .unwrap();
    save(&vm, path);
    s(path)
}

fn save(vm: &VarMap, path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    lion_core::weights::save_safetensors(&lion_core::weights::varmap_tensors(vm), path).unwrap();
}

fn world(env: &Env) -> PathBuf {
    ok(
        &env.run(&[
            "world", "generate", "--out", "w", "--train", "1", "--val", "6", "--test", "1",
            "--size", "64",
        ]),
        "world",
    );
    env.path().join("w")
}

fn shard_files(dir: &Path, stem: &str) -> Vec<String> {
    (0..3)
        .map(|i| s(&dir.join(format!("{stem}.shard-{i}-of-3.jsonl"))))
        .collect()
}

const FAST: &[&str] = &["--num-beams", "1", "--max-new-tokens", "6"];

#[test]
fn sharded_eval_merges_to_the_unsharded_predictions_byte_for_byte() {
    let env = Env::new();
    // the default sentence model, by Hub id, from the cache, in a folder that is not the checkout
    let emb = ok(&env.run(&["embed", "a red circle"]), "embed");
    let v: Value = serde_json::from_str(emb.trim()).unwrap();
    assert_eq!(v["embedding"].as_array().unwrap().len(), 384);
    let err = failed(
        &env.run(&["embed", "--model", "org/absent", "x"]),
        "embed of a model in no place",
    );
    assert!(err.contains("models--org--absent"), "{err}");
    world(&env);
    let model = model_dir(&env.path().join("model"));
    let base = |pred: &str| -> Vec<String> {
        let mut a: Vec<String> = [
            "eval",
            "--task",
            "vqa",
            "--gt",
            "w/annotations_val.json",
            "--questions",
            "w/questions_val.json",
            "--images",
            "w",
            "--model",
            &model,
            // one item per forward, as the tag comparisons below: a batch of other items
            // changes the GEMM shapes and so the last bits of the logits, and (seen once in
            // CI, 1 answer of 30 with random weights) a near-tie in the greedy choice
            "--batch-size",
            "1",
            "--pred-out",
            pred,
        ]
        .map(String::from)
        .to_vec();
        a.extend(FAST.iter().map(|x| x.to_string()));
        a
    };
    let whole = base("whole.json");
    let whole: Vec<&str> = whole.iter().map(String::as_str).collect();
    ok(&env.run(&whole), "unsharded");
    let whole = std::fs::read(env.path().join("whole.json")).unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&whole)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        30
    );

    // shard 1 first stops after 2 items, then runs again with the others and resumes
    let sharded = base("pred.json");
    let args: Vec<&str> = sharded.iter().map(String::as_str).collect();
    let mut stop = args.clone();
    stop.extend(["--shard", "1/3", "--stop-after", "2"]);
    ok(&env.run(&stop), "interrupted shard");
    assert!(env.path().join("pred.shard-1-of-3.jsonl.partial").exists());
    assert!(!env.path().join("pred.shard-1-of-3.jsonl").exists());
    env.shards(&args);
    assert!(!env.path().join("pred.shard-1-of-3.jsonl.partial").exists());

    let files = shard_files(env.path(), "pred");
    // a missing shard is refused, naming it
    let mut m = vec!["merge", "--out", "merged.json"];
    m.extend([files[0].as_str(), files[2].as_str()]);
    let err = failed(&env.run(&m), "merge without shard 1");
    assert!(err.contains("shards [1] of 3 are missing"), "{err}");
    let mut m = vec!["merge", "--out", "merged.json"];
    m.extend(files.iter().rev().map(String::as_str));
    let summary = ok(&env.run(&m), "merge");
    assert!(summary.contains("\"items\":30"), "{summary}");
    let merged = std::fs::read(env.path().join("merged.json")).unwrap();
    assert!(
        merged == whole,
        "merged:\n{}\nunsharded:\n{}",
        String::from_utf8_lossy(&merged),
        String::from_utf8_lossy(&whole)
    );
}

#[test]
fn sharded_tag_and_tagged_captions_merge_to_the_unsharded_output() {
    let env = Env::new();
    world(&env);
    let ram = ram_weights(&env.path().join("ram/ram.safetensors"));
    let model = model_dir(&env.path().join("model"));

    // lion tag over a folder: stdout, --out, and 3 shards merged give the same bytes. One image
    // per forward: the scores are printed to the last bit, and a batched forward of other images
    // can differ there (~1e-7), so the byte comparison needs the same batches on both sides.
    let tag = [
        "tag",
        "--weights",
        &ram,
        "--config",
        "tiny",
        "--batch-size",
        "1",
        "w/images/val",
    ];
    let stdout = ok(&env.run(&tag), "tag to stdout");
    assert_eq!(stdout.lines().count(), 6);
    let mut to_file = tag.to_vec();
    to_file.extend(["--out", "tags.jsonl"]);
    ok(&env.run(&to_file), "tag --out");
    let whole = std::fs::read_to_string(env.path().join("tags.jsonl")).unwrap();
    assert_eq!(whole, stdout);
    let mut sharded = tag.to_vec();
    sharded.extend(["--out", "t.jsonl"]);
    env.shards(&sharded);
    let files = shard_files(env.path(), "t");
    let mut m = vec!["merge", "--out", "t_merged.jsonl"];
    m.extend(files.iter().map(String::as_str));
    ok(&env.run(&m), "merge tags");
    assert_eq!(
        std::fs::read_to_string(env.path().join("t_merged.jsonl")).unwrap(),
        whole
    );

    // caption requests tagged by RAM; a request's own tags win over the tagger's
    let mut imgs: Vec<String> = std::fs::read_dir(env.path().join("w/images/val"))
        .unwrap()
        .map(|e| format!("w/images/val/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    imgs.sort();
    let mut lines = String::new();
    for (i, img) in imgs.iter().enumerate() {
        let mut r = json!({"id": format!("req-{i}"), "image": img});
        if i == 2 {
            r["tags"] = json!(["red: 0.9"]);
        }
        lines.push_str(&format!("{r}\n"));
    }
    std::fs::write(env.path().join("requests.jsonl"), lines).unwrap();
    let mut caption = vec![
        "caption",
        "--model",
        &model,
        "--ram",
        &ram,
        "--ram-config",
        "tiny",
        "--requests",
        "requests.jsonl",
        "--batch-size",
        "1",
    ];
    caption.extend(FAST);
    let stdout = ok(&env.run(&caption), "caption --ram");
    let out: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(out.len(), 6);
    for (i, o) in out.iter().enumerate() {
        assert!(o["caption"].is_string(), "{o}");
        // RAM's tags are reported where RAM tagged; request 2 brought its own
        assert_eq!(o.get("tags").is_some(), i != 2, "{o}");
    }
    let mut sharded = caption.clone();
    sharded.extend(["--out", "c.jsonl"]);
    env.shards(&sharded);
    let files = shard_files(env.path(), "c");
    let mut m = vec!["merge", "--out", "c_merged.jsonl"];
    m.extend(files.iter().map(String::as_str));
    ok(&env.run(&m), "merge captions");
    assert_eq!(
        std::fs::read_to_string(env.path().join("c_merged.jsonl")).unwrap(),
        stdout
    );

    // a folder as the input of lion caption: one line per image, in file order
    let mut folder = vec!["caption", "--model", &model, "w/images/val"];
    folder.extend(FAST);
    let stdout = ok(&env.run(&folder), "caption FOLDER");
    let names: Vec<String> = stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["image"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(names.len(), 6);
    assert_eq!(names, imgs);
}
