//! `lion demo`: the seed experiment, end to end, on the embedded ShapesWorld.
//!
//! Every stage runs through the same commands and libraries a user would run on COCO:
//! 1. generate the world (`lion world generate`);
//! 2. train the tiny RAM-architecture tagger on it and tag every image with scores
//!    (`lion train-tagger`), scoring its precision / recall on the test split;
//! 3. choose each training image's centroid-nearest caption with all-MiniLM-L6-v2 and
//!    triplet-fine-tune the tag encoder on the predicted "tag: score" strings
//!    (`lion train-tag-encoder`);
//! 4. train LION parameter-efficiently with the static, dynamic and gated soft prompts from the
//!    same frozen backbone, the same data and the same data order (`lion train`); the backbone
//!    (ViT, Q-Former, aggregator, T5 at the `shapes` size) is the shipped
//!    `assets/shapes-backbone`, or is pretrained first with `--from-scratch`;
//! 5. evaluate the three models and trivial baselines on the test split (`lion eval --model`,
//!    `lion eval`): CIDEr-D, VQA accuracy, Acc@0.5 with bootstrap 95% intervals;
//! 6. write `report.md` with the table, the tagger's precision / recall and the curves (PNG).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::{json, Value};

use lion_train::bootstrap::{interval, paired_interval, Interval};

#[derive(clap::Args)]
pub struct Args {
    /// Where the world and every artefact go.
    #[arg(long, default_value = "demo-out")]
    out: PathBuf,
    /// Sentence transformer (caption selection) and initial tag encoder.
    #[arg(long, default_value = super::DEFAULT_MINILM, value_parser = super::model_dir)]
    sentence_model: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Training images of the world.
    #[arg(long, default_value_t = 600)]
    train: usize,
    /// Test images (the validation split has half as many). 300 rather than fewer: the REC gains
    /// over the centre box are a few points, and with 120 images (580 expressions) the 95%
    /// interval of a paired difference was about +-1.7 points.
    #[arg(long, default_value_t = 300)]
    test: usize,
    /// Tagger epochs (about 8 s each for 600 images on 2 cores).
    #[arg(long, default_value_t = 10)]
    tagger_epochs: usize,
    /// Tag-encoder epochs (one epoch of 480 anchors is about 3 minutes on 2 cores).
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// LION optimizer steps per prompt kind.
    #[arg(long, default_value_t = 400)]
    steps: u64,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// The pretrained backbone folder (lion.json + backbone.safetensors).
    #[arg(long, default_value = "assets/shapes-backbone")]
    backbone: PathBuf,
    /// Pretrain the backbone first (on a world of its own seed) and use that; written to
    /// OUT/backbone (copy it to assets/shapes-backbone to ship it).
    #[arg(long)]
    from_scratch: bool,
    /// Backbone pretraining steps (batch 32) with --from-scratch.
    #[arg(long, default_value_t = 4000)]
    pretrain_steps: u64,
    /// Images of the pretraining world with --from-scratch.
    #[arg(long, default_value_t = 2000)]
    pretrain_images: usize,
    /// Beams at evaluation (1 = greedy; 5 as upstream LION's `generate`).
    #[arg(long, default_value_t = 5)]
    num_beams: usize,
    /// Bootstrap resamples of the report's intervals.
    #[arg(long, default_value_t = 1000)]
    resamples: usize,
}

/// Parses a subcommand's flags exactly as the `lion` binary would.
#[derive(Parser)]
struct Sub<A: clap::Args> {
    #[command(flatten)]
    args: A,
}

fn sub<A: clap::Args>(argv: &[String]) -> Result<A> {
    let mut full = vec!["lion".to_string()];
    full.extend_from_slice(argv);
    Ok(Sub::<A>::try_parse_from(full)?.args)
}

/// `["--a", "x", ...]` from string-likes.
macro_rules! argv {
    ($($x:expr),* $(,)?) => { vec![$($x.to_string()),*] };
}

fn read(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: bad JSON", path.display()))
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    lion_core::util::write_atomic(path, serde_json::to_string_pretty(v)?.as_bytes())?;
    Ok(())
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Scored tags by image path relative to the world (`images/train/000001.png`).
type ImageTags = HashMap<String, Vec<(String, f32)>>;

fn tag_strings(tags: &[(String, f32)]) -> Vec<String> {
    tags.iter().map(|(t, v)| format!("{t}: {v:.2}")).collect()
}

/// The tag-encoder training input: each training image's captions and predicted scored tags.
fn images_jsonl(world: &Path, tags: &ImageTags, out: &Path) -> Result<usize> {
    let caps = read(&world.join("captions_train.json"))?;
    let mut files: BTreeMap<u64, String> = BTreeMap::new();
    for im in caps["images"].as_array().context("captions: no images")? {
        let id = im["id"].as_u64().context("image without id")?;
        let f = im["file_name"]
            .as_str()
            .context("image without file_name")?;
        files.insert(id, f.to_string());
    }
    let mut by_image: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for a in caps["annotations"]
        .as_array()
        .context("captions: no annotations")?
    {
        let id = a["image_id"].as_u64().context("caption without image_id")?;
        let c = a["caption"].as_str().context("caption without text")?;
        by_image.entry(id).or_default().push(c.to_string());
    }
    let mut text = String::new();
    for (id, file) in &files {
        let scored: Vec<Value> = tags
            .get(file)
            .with_context(|| format!("no tags for {file}"))?
            .iter()
            .map(|(t, v)| json!({"tag": t, "score": v}))
            .collect();
        let captions = by_image.get(id).cloned().unwrap_or_default();
        text.push_str(&json!({"image": id, "captions": captions, "tags": scored}).to_string());
        text.push('\n');
    }
    lion_core::util::write_atomic(out, text.as_bytes())?;
    Ok(files.len())
}

/// The world's LION training JSON with the tagger's scored tags in place of the ground truth
/// (`"red: 0.97"`; the prompt shows the names, the tag encoder reads the scores).
fn lion_data(world: &Path, tags: &ImageTags, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    for task in ["caption", "vqa", "rec"] {
        for split in ["train", "val", "test"] {
            let name = format!("lion_{task}_{split}.json");
            let mut recs = read(&world.join(&name))?;
            for r in recs.as_array_mut().context("LION JSON: not a list")? {
                let img = r["image"].as_str().context("record without image")?;
                let t = tags
                    .get(img)
                    .with_context(|| format!("no tags for {img}"))?;
                r["tags"] = json!(tag_strings(t));
            }
            write_json(&out.join(name), &recs)?;
        }
    }
    Ok(())
}

/// A model folder's manifest: the backbone's config and tokenizers, `weights` after it.
fn manifest(backbone: &Path, prompt: &str, extra: &[PathBuf], tag_encoder: &Path) -> Result<Value> {
    let b = read(&backbone.join("lion.json"))?;
    let abs = |v: &Value| -> Result<String> {
        let rel = v
            .as_str()
            .context("backbone lion.json: a path is not a string")?;
        Ok(s(&std::path::absolute(backbone.join(rel))?))
    };
    let mut weights = vec![];
    for w in b["weights"]
        .as_array()
        .context("backbone lion.json: no weights")?
    {
        weights.push(json!({"file": abs(&w["file"])?, "prefix": w.get("prefix").cloned().unwrap_or(json!(""))}));
    }
    for e in extra {
        weights.push(json!({"file": s(&std::path::absolute(e)?)}));
    }
    let kind = lion_train::peft::parse_prompt(prompt)?;
    Ok(json!({
        "config": b["config"],
        "prompt": kind,
        "weights": weights,
        "t5_tokenizer": abs(&b["t5_tokenizer"])?,
        "qformer_tokenizer": abs(&b["qformer_tokenizer"])?,
        "tag_encoder": s(&std::path::absolute(tag_encoder)?),
    }))
}

/// A trained model as a folder of its own: the backbone's weights (less its soft prompt, which
/// the trained prompt replaces) overwritten by the trained tensors, in one `model.safetensors`.
fn write_trained_model(
    backbone: &Path,
    prompt: &str,
    trainable: &Path,
    encoder: &Path,
    dest: &Path,
) -> Result<()> {
    use lion_core::weights::{save_safetensors, Checkpoint};
    let dev = candle_core::Device::Cpu;
    let mut m = manifest(backbone, prompt, &[], encoder)?;
    let mut all = HashMap::new();
    for w in m["weights"].as_array().expect("written above") {
        let file = PathBuf::from(w["file"].as_str().unwrap_or_default());
        for c in lion_core::pipeline::open_weights(&file, w["prefix"].as_str().unwrap_or(""))? {
            all.extend(c.load_all(&dev)?);
        }
    }
    all.retain(|k: &String, _| !k.starts_with("soft_prompt") && !k.starts_with("dynamic_prompt"));
    all.extend(Checkpoint::open(trainable)?.load_all(&dev)?);
    std::fs::create_dir_all(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    save_safetensors(&all, dest.join("model.safetensors"))?;
    m["weights"] = json!([{"file": "model.safetensors"}]);
    write_json(&dest.join("lion.json"), &m)
}

/// The `lion train` config of one run over the world's three tasks.
#[allow(clippy::too_many_arguments)]
fn train_config(
    start: Value,
    data: &Path,
    image_root: &Path,
    out: &Path,
    steps: u64,
    batch: usize,
    lr: f64,
    seed: u64,
) -> Value {
    let task = |kind: &str, ratio: f64| {
        json!({"kind": kind, "train": s(&data.join(format!("lion_{kind}_train.json"))),
               "val": s(&data.join(format!("lion_{kind}_val.json"))), "ratio": ratio})
    };
    let mut c = json!({
        "image_root": s(image_root),
        "tasks": [task("caption", 1.0), task("vqa", 1.0), task("rec", 1.5)],
        "schedule": {"init_lr": lr, "min_lr": lr / 20.0, "warmup_lr": lr / 20.0,
                     "warmup_steps": (steps / 20).max(1)},
        "batch_size": batch, "steps": steps, "eval_every": 0, "checkpoint_every": steps,
        "augment": false,
        "keep_checkpoints": 1, "output_dir": s(out), "seed": seed,
    });
    for (k, v) in start.as_object().expect("an object") {
        c[k] = v.clone();
    }
    c
}

/// Runs `lion train` on a config written to `dir/train.json`; returns the final checkpoint.
fn run_training(dir: &Path, cfg: &Value) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("train.json");
    let run_dir = PathBuf::from(cfg["output_dir"].as_str().expect("set"));
    if let Some(done) = lion_train::checkpoint::latest(&run_dir)? {
        let st = read(&done.join(lion_train::checkpoint::STATE))?;
        if st["step"].as_u64() == cfg["steps"].as_u64() {
            tracing::info!("{} is complete: reused", run_dir.display());
            return Ok(done);
        }
        bail!(
            "{} holds a run at step {} but this demo asks for {} steps: continue it with \
             `lion train --config {} --resume` (same settings), or delete it",
            run_dir.display(),
            st["step"],
            cfg["steps"],
            path.display()
        );
    }
    write_json(&path, cfg)?;
    super::train::run(sub(&["--config".to_string(), s(&path)])?)?;
    lion_train::checkpoint::latest(&run_dir)?.context("training left no checkpoint")
}

/// Pretrains the backbone on a world of its own seed and writes it as a model folder.
fn pretrain(args: &Args, out: &Path) -> Result<PathBuf> {
    let world = out.join("pretrain-world");
    let seed = args.seed + 1000;
    super::world::run(sub(&argv![
        "generate",
        "--out",
        s(&world),
        "--seed",
        seed,
        "--train",
        args.pretrain_images,
        "--val",
        64,
        "--test",
        64,
        "--size",
        96,
        "--force"
    ])?)?;
    let run = out.join("pretrain");
    let qtok = args.sentence_model.join("tokenizer.json");
    let start = json!({"preset": "shapes", "trainable": "all", "prompt": "static",
                       "qformer_tokenizer": s(&std::path::absolute(&qtok)?)});
    let cfg = train_config(
        start,
        &world,
        &world,
        &run,
        args.pretrain_steps,
        32,
        2e-3,
        seed,
    );
    // Localisation is the slowest skill to learn from scratch: REC gets 3 of 5 batches. The
    // aggregator's fusion blocks stay at their initialisation (per-token LayerNorms) while the
    // backbone learns: trained from scratch they learnt to average the patches' places away
    // before anything used them, and REC never started (assets/shapes-backbone/README.md). The
    // demo's PEFT stage trains them.
    let mut cfg = cfg;
    cfg["tasks"][2]["ratio"] = json!(3.0);
    cfg["boost_lr_scale"] = json!(0.0);
    let ckpt = run_training(&run, &cfg)?;
    let dest = out.join("backbone");
    export_backbone(&run.join("init.safetensors"), &ckpt, &qtok, &dest)?;
    Ok(dest)
}

/// The initial weights overwritten by the trained ones, as one file plus its manifest.
fn export_backbone(init: &Path, ckpt: &Path, qformer_tokenizer: &Path, dest: &Path) -> Result<()> {
    use lion_core::weights::{save_safetensors, Checkpoint};
    let dev = candle_core::Device::Cpu;
    let mut all = Checkpoint::open(init)?.load_all(&dev)?;
    let trained = Checkpoint::open(ckpt.join(lion_train::checkpoint::TRAINABLE))?.load_all(&dev)?;
    all.extend(trained);
    std::fs::create_dir_all(dest)?;
    save_safetensors(&all, dest.join("backbone.safetensors"))?;
    // The `shapes` preset's tokenizer (bundled in lion-core) and the Q-Former's, so the folder
    // stands alone.
    std::fs::write(
        dest.join("t5-tokenizer.json"),
        include_bytes!("../../../lion-core/assets/shapes-tokenizer.json"),
    )?;
    std::fs::copy(qformer_tokenizer, dest.join("qformer-tokenizer.json"))
        .with_context(|| format!("cannot copy {}", qformer_tokenizer.display()))?;
    write_json(
        &dest.join("lion.json"),
        &json!({"config": "shapes", "prompt": {"kind": "static"},
                "weights": [{"file": "backbone.safetensors"}],
                "t5_tokenizer": "t5-tokenizer.json", "qformer_tokenizer": "qformer-tokenizer.json"}),
    )
}

/// One evaluation: the scores JSON of `lion eval`.
struct Scores {
    /// Per-item scores by item id.
    items: BTreeMap<String, f64>,
    mean: f64,
}

fn per_item(v: &Value, task: &str) -> Result<Scores> {
    let (id_key, score_key) = match task {
        "caption" => ("image_id", "cider"),
        "vqa" => ("question_id", "accuracy"),
        _ => ("id", "hit"),
    };
    let mut items = BTreeMap::new();
    for it in v["per_item"].as_array().context("scores: no per_item")? {
        let id = match &it[id_key] {
            Value::String(x) => x.clone(),
            other => other.to_string(),
        };
        let score = match &it[score_key] {
            Value::Bool(b) => f64::from(u8::from(*b)),
            x => x
                .as_f64()
                .context("scores: a per-item score is not a number")?,
        };
        items.insert(id, score);
    }
    let mean = items.values().sum::<f64>() / items.len().max(1) as f64;
    Ok(Scores { items, mean })
}

/// The ground-truth flags of `lion eval` for a task on the world's test split.
fn gt_flags(world: &Path, task: &str) -> Vec<String> {
    match task {
        "caption" => argv![
            "--task",
            "caption",
            "--gt",
            s(&world.join("captions_test.json"))
        ],
        "vqa" => argv![
            "--task",
            "vqa",
            "--gt",
            s(&world.join("annotations_test.json")),
            "--questions",
            s(&world.join("questions_test.json"))
        ],
        _ => argv![
            "--task",
            "rec",
            "--gt",
            s(&world.join("refs.json")),
            "--instances",
            s(&world.join("instances.json")),
            "--split",
            "test"
        ],
    }
}

/// Scores a model folder on the test split's three tasks (`lion eval --model`).
fn eval_model(
    args: &Args,
    world: &Path,
    tags: &Path,
    model: &Path,
    dir: &Path,
) -> Result<BTreeMap<&'static str, Scores>> {
    std::fs::create_dir_all(dir)?;
    let mut out = BTreeMap::new();
    for task in ["caption", "vqa", "rec"] {
        let scores = dir.join(format!("{task}_scores.json"));
        if !scores.exists() {
            let mut a = gt_flags(world, task);
            a.extend(argv![
                "--tags",
                s(tags),
                "--model",
                s(model),
                "--images",
                s(world),
                "--pred-out",
                s(&dir.join(format!("{task}_pred.json"))),
                "--json",
                s(&scores),
                "--batch-size",
                32,
                "--num-beams",
                args.num_beams,
                "--repetition-penalty",
                1.0,
                "--max-new-tokens",
                40
            ]);
            super::eval::run(sub(&a)?)?;
        }
        out.insert(task, per_item(&read(&scores)?, task)?);
    }
    Ok(out)
}

/// Trivial baselines' predictions: the most frequent training caption and answer, and a box of
/// the mean training size at the image centre.
fn eval_baselines(world: &Path, dir: &Path) -> Result<BTreeMap<&'static str, Scores>> {
    std::fs::create_dir_all(dir)?;
    let most_frequent = |xs: Vec<String>| -> String {
        let mut c: BTreeMap<String, usize> = BTreeMap::new();
        for x in xs {
            *c.entry(x).or_default() += 1;
        }
        // Ties go to the alphabetically first, so the baseline is deterministic.
        c.into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
            .map(|(k, _)| k)
            .unwrap_or_default()
    };
    let caps = read(&world.join("captions_train.json"))?;
    let caption = most_frequent(
        caps["annotations"]
            .as_array()
            .context("captions: no annotations")?
            .iter()
            .filter_map(|a| a["caption"].as_str().map(|c| c.trim().to_lowercase()))
            .collect(),
    );
    let anns = read(&world.join("annotations_train.json"))?;
    let answer = most_frequent(
        anns["annotations"]
            .as_array()
            .context("annotations: no annotations")?
            .iter()
            .filter_map(|a| a["multiple_choice_answer"].as_str().map(String::from))
            .collect(),
    );
    let test_caps = read(&world.join("captions_test.json"))?;
    let preds: Vec<Value> = test_caps["images"]
        .as_array()
        .context("captions: no images")?
        .iter()
        .map(|im| json!({"image_id": im["id"], "caption": caption}))
        .collect();
    write_json(&dir.join("caption_pred.json"), &json!(preds))?;
    let qs = read(&world.join("questions_test.json"))?;
    let preds: Vec<Value> = qs["questions"]
        .as_array()
        .context("questions: no questions")?
        .iter()
        .map(|q| json!({"question_id": q["question_id"], "answer": answer}))
        .collect();
    write_json(&dir.join("vqa_pred.json"), &json!(preds))?;
    // Mean training box size (relative), from the instances of training images.
    let inst = read(&world.join("instances.json"))?;
    let mut sizes: HashMap<u64, (f64, f64, bool)> = HashMap::new();
    for im in inst["images"].as_array().context("instances: no images")? {
        let train = im["file_name"]
            .as_str()
            .is_some_and(|f| f.contains("/train/"));
        sizes.insert(
            im["id"].as_u64().context("image without id")?,
            (
                im["width"].as_f64().unwrap_or(96.0),
                im["height"].as_f64().unwrap_or(96.0),
                train,
            ),
        );
    }
    let (mut fw, mut fh, mut n) = (0.0f64, 0.0f64, 0.0f64);
    for a in inst["annotations"]
        .as_array()
        .context("instances: no annotations")?
    {
        let id = a["image_id"].as_u64().unwrap_or(0);
        if let (Some(&(w, h, true)), Some(b)) = (sizes.get(&id), a["bbox"].as_array()) {
            fw += b[2].as_f64().unwrap_or(0.0) / w;
            fh += b[3].as_f64().unwrap_or(0.0) / h;
            n += 1.0;
        }
    }
    let (fw, fh) = (fw / n.max(1.0), fh / n.max(1.0));
    let refs = read(&world.join("refs.json"))?;
    let mut preds = vec![];
    for r in refs.as_array().context("refs: not a list")? {
        if r["split"].as_str() != Some("test") {
            continue;
        }
        let (w, h, _) = sizes
            .get(&r["image_id"].as_u64().unwrap_or(0))
            .copied()
            .unwrap_or((96.0, 96.0, false));
        let b = [
            w * (0.5 - fw / 2.0),
            h * (0.5 - fh / 2.0),
            w * (0.5 + fw / 2.0),
            h * (0.5 + fh / 2.0),
        ];
        for sid in r["sent_ids"].as_array().context("ref without sent_ids")? {
            preds.push(json!({"sent_id": sid, "box": b}));
        }
    }
    write_json(&dir.join("rec_pred.json"), &json!(preds))?;
    let mut out = BTreeMap::new();
    for task in ["caption", "vqa", "rec"] {
        let scores = dir.join(format!("{task}_scores.json"));
        let mut a = gt_flags(world, task);
        a.extend(argv![
            "--pred",
            s(&dir.join(format!("{task}_pred.json"))),
            "--json",
            s(&scores)
        ]);
        super::eval::run(sub(&a)?)?;
        out.insert(task, per_item(&read(&scores)?, task)?);
    }
    Ok(out)
}

/// A system's per-task scores.
type Table = Vec<(String, BTreeMap<&'static str, Scores>)>;

const TASKS: [(&str, &str); 3] = [
    ("caption", "CIDEr-D"),
    ("vqa", "VQA acc."),
    ("rec", "Acc@0.5"),
];

fn fmt_ci(i: &Interval) -> String {
    format!(
        "{:.1} [{:.1}, {:.1}]",
        100.0 * i.mean,
        100.0 * i.lo,
        100.0 * i.hi
    )
}

/// The report's tables: scores with intervals, and each model minus the best baseline (paired).
fn score_tables(
    models: &Table,
    baselines: &Table,
    resamples: usize,
    seed: u64,
) -> (String, Value, bool) {
    let mut md = String::from("| system | ");
    md.push_str(&TASKS.map(|t| t.1).join(" | "));
    md.push_str(" |\n|---|---|---|---|\n");
    let mut js = json!({});
    for (name, sc) in baselines.iter().chain(models) {
        md.push_str(&format!("| {name} |"));
        for (task, _) in TASKS {
            let v: Vec<f64> = sc[task].items.values().copied().collect();
            let ci = interval(&v, resamples, 0.95, seed).expect("non-empty");
            md.push_str(&format!(" {} |", fmt_ci(&ci)));
            js[name][task] = json!(ci);
        }
        md.push('\n');
    }
    md.push_str(
        "\nEach model minus the best trivial baseline of the task (paired bootstrap over the same \
         test items, 95%):\n\n| model | ",
    );
    md.push_str(&TASKS.map(|t| t.1).join(" | "));
    md.push_str(" | beats every baseline |\n|---|---|---|---|---|\n");
    let mut all_beat = true;
    for (name, sc) in models {
        md.push_str(&format!("| {name} |"));
        let mut beats = true;
        for (task, _) in TASKS {
            let best = baselines
                .iter()
                .max_by(|a, b| a.1[task].mean.total_cmp(&b.1[task].mean))
                .expect("baselines");
            let (a, b): (Vec<f64>, Vec<f64>) = sc[task]
                .items
                .iter()
                .map(|(id, x)| (*x, best.1[task].items.get(id).copied().unwrap_or(0.0)))
                .unzip();
            let d = paired_interval(&a, &b, resamples, 0.95, seed).expect("non-empty");
            beats &= d.lo > 0.0;
            md.push_str(&format!(" {} |", fmt_ci(&d)));
            js[format!("{name} - best baseline")][task] = json!(d);
        }
        all_beat &= beats;
        md.push_str(&format!(" {} |\n", if beats { "yes" } else { "no" }));
    }
    (md, js, all_beat)
}

/// Loss curves of the three runs in one PNG.
fn draw_lion_curves(runs: &[(String, PathBuf)], png: &Path) -> Result<()> {
    use lion_train::plot::{draw_png, Panel, Series};
    let mut series = vec![];
    for (name, dir) in runs {
        let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap_or_default();
        let pts: Vec<(f64, f64)> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["kind"] == "train")
            .filter_map(|v| Some((v["step"].as_f64()?, v["loss"].as_f64()?)))
            .collect();
        // A running mean over 10 steps: each step's loss is of one task's batch.
        let smooth: Vec<(f64, f64)> = pts
            .iter()
            .enumerate()
            .map(|(i, &(x, _))| {
                let w = &pts[i.saturating_sub(9)..=i];
                (x, w.iter().map(|p| p.1).sum::<f64>() / w.len() as f64)
            })
            .collect();
        series.push((name.clone(), smooth));
    }
    let panel = Panel {
        title: "LION training loss (mean of 10 steps)",
        x_label: "step",
        y_label: "loss",
        series: series
            .iter()
            .map(|(n, p)| Series {
                name: n,
                points: p.clone(),
            })
            .collect(),
    };
    draw_png(png, &[panel], (720, 420))?;
    Ok(())
}

pub fn run(args: Args) -> Result<()> {
    let start = std::time::Instant::now();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    // Absolute, because the configs written below resolve relative paths from their own folder.
    let out = &std::path::absolute(&args.out)?;
    let world = out.join("world");
    let test = args.test.max(4);

    tracing::info!("stage 1/6: ShapesWorld ({} training images)", args.train);
    super::world::run(sub(&argv![
        "generate",
        "--out",
        s(&world),
        "--seed",
        args.seed,
        "--train",
        args.train,
        "--val",
        (test / 2).max(4),
        "--test",
        test,
        "--size",
        96,
        "--force"
    ])?)?;

    tracing::info!("stage 2/6: training the RAM tagger, tagging every image with scores");
    let (tags, tagger) = tag_world(&args, &world, &out.join("tagger"))?;

    tracing::info!("stage 3/6: centroid captions + triplet fine-tuning of the tag encoder");
    let images = out.join("images.jsonl");
    let n = images_jsonl(&world, &tags, &images)?;
    let encoder = out.join("tag-encoder");
    if !encoder.join("model.safetensors").exists() {
        super::train_tag_encoder::run(sub(&argv![
            "--model",
            s(&args.sentence_model),
            "--data",
            s(&images),
            "--out",
            s(&encoder),
            "--epochs",
            args.epochs,
            "--batch-size",
            16,
            "--val-fraction",
            0.2,
            "--seed",
            args.seed
        ])?)?;
    } else {
        tracing::info!("{} exists: reused", encoder.display());
    }
    let data = out.join("lion-data");
    lion_data(&world, &tags, &data)?;
    let tags_file = out.join("tags.jsonl");
    let mut lines: Vec<String> = tags
        .iter()
        .map(|(img, t)| {
            let scored: Vec<Value> = t
                .iter()
                .map(|(n, v)| json!({"tag": n, "score": v}))
                .collect();
            json!({"image": img, "tags": scored}).to_string()
        })
        .collect();
    lines.sort();
    lion_core::util::write_atomic(&tags_file, (lines.join("\n") + "\n").as_bytes())?;

    let backbone = if args.from_scratch {
        tracing::info!("stage 4/6: pretraining the backbone (--from-scratch)");
        pretrain(&args, out)?
    } else {
        std::path::absolute(&args.backbone)?
    };
    if !backbone.join("lion.json").exists() {
        bail!(
            "no backbone at {} (run from the repository root, give --backbone, or make one \
             with --from-scratch)",
            backbone.display()
        );
    }
    tracing::info!(
        "stage 4/6: LION PEFT training from {}, static / dynamic / gated prompts, {} steps each",
        backbone.display(),
        args.steps
    );
    let mut runs = vec![];
    for prompt in ["static", "dynamic", "gated"] {
        let dir = out.join("lion").join(prompt);
        let start_dir = dir.join("start");
        std::fs::create_dir_all(&start_dir)?;
        write_json(
            &start_dir.join("lion.json"),
            &manifest(&backbone, prompt, &[], &encoder)?,
        )?;
        let run_dir = dir.join("run");
        let cfg = train_config(
            json!({"model_dir": s(&std::path::absolute(&start_dir)?), "lenient": true}),
            &data,
            &world,
            &run_dir,
            args.steps,
            args.batch_size,
            1e-3,
            args.seed,
        );
        let ckpt = run_training(&dir, &cfg)?;
        let model = dir.join("model");
        write_trained_model(
            &backbone,
            prompt,
            &ckpt.join(lion_train::checkpoint::TRAINABLE),
            &encoder,
            &model,
        )?;
        runs.push((prompt.to_string(), run_dir, model));
    }

    tracing::info!("stage 5/6: evaluation on the test split ({test} images)");
    let mut models: Table = vec![];
    for (name, _, model) in &runs {
        let sc = eval_model(
            &args,
            &world,
            &tags_file,
            model,
            &out.join("eval").join(name),
        )?;
        models.push((format!("LION ({name} prompt)"), sc));
    }
    let baselines: Table = vec![(
        "trivial baselines (most frequent caption / answer, centre box)".to_string(),
        eval_baselines(&world, &out.join("eval").join("baselines"))?,
    )];

    tracing::info!("stage 6/6: report");
    let (table, table_json, all_beat) =
        score_tables(&models, &baselines, args.resamples, args.seed);
    let curves = out.join("lion-loss.png");
    draw_lion_curves(
        &runs
            .iter()
            .map(|(n, r, _)| (n.clone(), r.clone()))
            .collect::<Vec<_>>(),
        &curves,
    )?;
    let report = render_report(&args, &world, n, &tagger, &encoder, &table, all_beat, start)?;
    let report_path = out.join("report.md");
    lion_core::util::write_atomic(&report_path, report.as_bytes())?;
    write_json(
        &out.join("report.json"),
        &json!({"scores": table_json, "tagger": tagger, "all_models_beat_baselines": all_beat,
                "seed": args.seed}),
    )?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{table}")?;
    writeln!(
        stdout,
        "report: {} ({:.0} s)",
        report_path.display(),
        start.elapsed().as_secs_f64()
    )?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn render_report(
    args: &Args,
    world: &Path,
    n: usize,
    tagger: &Value,
    encoder: &Path,
    table: &str,
    all_beat: bool,
    start: std::time::Instant,
) -> Result<String> {
    let mut r =
        String::from("# LION-rs demo: static vs dynamic vs gated soft prompts on ShapesWorld\n\n");
    r.push_str(&format!(
        "World `{}` (seed {}, {} training images, {} test images). Test-split scores in percent \
         with bootstrap 95% intervals ({} resamples over the test items); CIDEr-D ×100.\n\n",
        world.display(),
        args.seed,
        args.train,
        args.test.max(4),
        args.resamples
    ));
    r.push_str(table);
    r.push_str(&format!(
        "\nEvery model beats every trivial baseline on every task, outside the 95% interval: **{}**.\n",
        if all_beat { "yes" } else { "no" }
    ));
    r.push_str(
        "\n## RAM tagger\n\nTrained from scratch on the training split, thresholds tuned on the \
         validation split; micro precision / recall / F1 on the test split against the \
         ground-truth tags:\n\n| tags | precision | recall | F1 |\n|---|---|---|---|\n",
    );
    let row = |name: &str, v: &Value| {
        let f = |k: &str| v[k].as_f64().map_or("-".into(), |x| format!("{x:.3}"));
        format!(
            "| {name} | {} | {} | {} |\n",
            f("precision"),
            f("recall"),
            f("f1")
        )
    };
    r.push_str(&row("all", &tagger["test"]));
    if let Some(groups) = tagger["test_by_group"].as_object() {
        for (g, v) in groups {
            r.push_str(&row(g, v));
        }
    }
    r.push_str(&format!(
        "\n## Tag encoder (triplet fine-tuning of all-MiniLM-L6-v2, {n} images)\n\n\
         ![triplet curves]({}/curves.png)\n\n| epoch | train loss | val loss | val cos(anchor, positive) | val cos(anchor, negative) |\n|---|---|---|---|---|\n",
        encoder.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default()
    ));
    let metrics = std::fs::read_to_string(encoder.join("metrics.jsonl")).unwrap_or_default();
    for line in metrics.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
        let f = |k: &str| {
            v.get(k)
                .and_then(Value::as_f64)
                .map_or("-".into(), |x| format!("{x:.4}"))
        };
        r.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            v.get("epoch").map_or("-".into(), |e| e.to_string()),
            f("train_loss"),
            f("val_loss"),
            f("val_cos_ap"),
            f("val_cos_an")
        ));
    }
    r.push_str(&format!(
        "\n## LION training\n\n{} optimizer steps per prompt kind, batch {}, the same data order \
         (seed {}), ViT and T5 frozen; the Q-Former, aggregator, adapters, router and prompt \
         parameters train (the dynamic projection at 5× the lr).\n\n![LION loss](lion-loss.png)\n\n\
         Per-run curves: `lion/<prompt>/run/loss.png`, metrics `lion/<prompt>/run/metrics.jsonl`; \
         predictions and per-item scores: `eval/<prompt>/`.\n",
        args.steps, args.batch_size, args.seed
    ));
    r.push_str(&format!(
        "\nBackbone: `{}`{}. Wall time: {:.0} s.\n",
        if args.from_scratch {
            "backbone (pretrained in this run)".to_string()
        } else {
            args.backbone.display().to_string()
        },
        if args.from_scratch {
            ""
        } else {
            " (shipped; see its README.md)"
        },
        start.elapsed().as_secs_f64()
    ));
    Ok(r)
}

/// Stage 2: trains the tagger (or reuses a finished one in `out`), and returns every image's
/// scored tags (by path relative to the world) and the test scores.
fn tag_world(args: &Args, world: &Path, out: &Path) -> Result<(ImageTags, Value)> {
    use lion_train::tagger_trainer::{
        train_tagger_with, TaggerEvent, TaggerFiles, TaggerTrainOptions,
    };
    let files = TaggerFiles::new(out);
    let report = if files.eval().exists() && files.tags_jsonl("test").exists() {
        tracing::info!("{} exists: reused", out.display());
        read(&files.eval())?
    } else {
        let opts = TaggerTrainOptions {
            epochs: args.tagger_epochs,
            seed: args.seed,
            ..TaggerTrainOptions::default()
        };
        let mut pb: Option<indicatif::ProgressBar> = None;
        let r = train_tagger_with(world, out, &opts, |e| match e {
            TaggerEvent::Start {
                steps_per_epoch,
                epochs,
            } => pb = Some(super::progress((steps_per_epoch * epochs) as u64, "tagger")),
            TaggerEvent::Step { loss, .. } => {
                if let Some(pb) = &pb {
                    pb.inc(1);
                    pb.set_message(format!("loss {loss:.4}"));
                }
            }
            TaggerEvent::Epoch(m) => tracing::info!(
                "tagger epoch {}: val F1 {:.3} (P {:.3}, R {:.3})",
                m.epoch,
                m.val_f1,
                m.val_precision,
                m.val_recall
            ),
            _ => {}
        })?;
        if let Some(pb) = pb {
            pb.finish_and_clear();
        }
        serde_json::to_value(&r)?
    };
    let mut tags = ImageTags::new();
    for split in ["train", "val", "test"] {
        let path = files.tags_jsonl(split);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let v: Value = serde_json::from_str(line)
                .with_context(|| format!("{}: line {}: bad JSON", path.display(), i + 1))?;
            let file = v["file_name"]
                .as_str()
                .with_context(|| format!("{}: line {}: no file_name", path.display(), i + 1))?;
            let scored = v["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| Some((t["tag"].as_str()?.to_string(), t["score"].as_f64()? as f32)))
                .collect();
            tags.insert(file.to_string(), scored);
        }
    }
    let summary = json!({
        "test": report["test"],
        "test_by_group": report["test_groups"],
        "thresholds_tuned_on": "validation split (micro F1)",
        "epochs": report["epochs"],
    });
    Ok((tags, summary))
}
