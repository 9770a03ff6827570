//! `lion demo`: the seed experiment on the embedded ShapesWorld.
//!
//! It runs the stages that exist today, through the same commands a user would run, and names
//! the ones that do not exist yet:
//! 1. generate the world (`lion world generate`);
//! 2. choose each training image's centroid-nearest caption with all-MiniLM-L6-v2 and
//!    triplet-fine-tune the tag encoder on "tag: score" strings (`lion train-tag-encoder`);
//! 3. (not yet) train the tiny RAM tagger, train LION with static / dynamic / gated prompts,
//!    evaluate and write the report.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::{json, Value};

#[derive(clap::Args)]
pub struct Args {
    /// Where the world and every artefact go.
    #[arg(long, default_value = "demo-out")]
    out: PathBuf,
    /// Sentence transformer (caption selection) and initial tag encoder.
    #[arg(long, default_value = super::DEFAULT_MINILM)]
    sentence_model: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Training images of the world.
    #[arg(long, default_value_t = 64)]
    train: usize,
    /// Tag-encoder epochs.
    #[arg(long, default_value_t = 2)]
    epochs: usize,
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

fn read(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: bad JSON", path.display()))
}

/// The tag-encoder training input from the world's captions and ground-truth tags.
/// Until the tagger lands, tags carry score 1.0 (ground truth); RAM scores replace them later.
fn images_jsonl(world: &Path, out: &Path) -> Result<usize> {
    let caps = read(&world.join("captions_train.json"))?;
    let tags = read(&world.join("tags_train.json"))?;
    let mut by_image: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for a in caps["annotations"]
        .as_array()
        .context("captions: no annotations")?
    {
        let id = a["image_id"].as_u64().context("caption without image_id")?;
        let c = a["caption"].as_str().context("caption without text")?;
        by_image.entry(id).or_default().push(c.to_string());
    }
    let tag_list = tags.as_array().context("tags_train.json: not a list")?;
    let mut text = String::new();
    for t in tag_list {
        let id = t["image_id"].as_u64().context("tags without image_id")?;
        let names: Vec<Value> = t["tags"]
            .as_array()
            .context("tags without list")?
            .iter()
            .map(|n| json!({"tag": n, "score": 1.0}))
            .collect();
        let captions = by_image.get(&id).cloned().unwrap_or_default();
        text.push_str(&json!({"image": id, "captions": captions, "tags": names}).to_string());
        text.push('\n');
    }
    lion_core::util::write_atomic(out, text.as_bytes())?;
    Ok(tag_list.len())
}

pub fn run(args: Args) -> Result<()> {
    let start = std::time::Instant::now();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let world = args.out.join("world");
    let s = |p: &Path| p.display().to_string();

    tracing::info!("stage 1: ShapesWorld ({} training images)", args.train);
    let val = (args.train / 4).max(4).to_string();
    super::world::run(sub(&[
        "generate".into(),
        "--out".into(),
        s(&world),
        "--seed".into(),
        args.seed.to_string(),
        "--train".into(),
        args.train.to_string(),
        "--val".into(),
        val.clone(),
        "--test".into(),
        val,
        "--size".into(),
        "96".into(),
        "--force".into(),
    ])?)?;

    tracing::info!("stage 2: RAM tagging with scores: the tiny tagger is not trained yet, ground-truth tags (score 1.0) stand in");
    let images = args.out.join("images.jsonl");
    let n = images_jsonl(&world, &images)?;

    tracing::info!(
        "stage 3: centroid captions + triplet fine-tuning of the tag encoder ({n} images)"
    );
    let encoder = args.out.join("tag-encoder");
    super::train_tag_encoder::run(sub(&[
        "--model".into(),
        s(&args.sentence_model),
        "--data".into(),
        s(&images),
        "--out".into(),
        s(&encoder),
        "--epochs".into(),
        args.epochs.to_string(),
        "--batch-size".into(),
        "16".into(),
        "--val-fraction".into(),
        "0.2".into(),
        "--seed".into(),
        args.seed.to_string(),
    ])?)?;

    let metrics = std::fs::read_to_string(encoder.join("metrics.jsonl")).unwrap_or_default();
    let mut report = String::from("# LION-rs demo (partial)\n\n");
    report.push_str(&format!(
        "World: {} (seed {}), tag encoder: {}\n\n| epoch | train loss | val loss | val cos(anchor, positive) | val cos(anchor, negative) |\n|---|---|---|---|---|\n",
        world.display(),
        args.seed,
        encoder.display()
    ));
    for line in metrics.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
        let f = |k: &str| {
            v.get(k)
                .and_then(Value::as_f64)
                .map_or("-".into(), |x| format!("{x:.4}"))
        };
        report.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            v.get("epoch").map_or("-".into(), |e| e.to_string()),
            f("train_loss"),
            f("val_loss"),
            f("val_cos_ap"),
            f("val_cos_an")
        ));
    }
    report.push_str(
        "\nNot run yet: training the tiny RAM tagger, PEFT training of LION with static / dynamic / \
         gated prompts, their evaluation (CIDEr-D, VQA accuracy, Acc@0.5) against trivial baselines.\n",
    );
    let report_path = args.out.join("report.md");
    lion_core::util::write_atomic(&report_path, report.as_bytes())?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{report}")?;
    writeln!(
        stdout,
        "report: {} ({:.0} s)",
        report_path.display(),
        start.elapsed().as_secs_f64()
    )?;
    Ok(())
}
