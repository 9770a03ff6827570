//! `lion tag`: RAM image tags with scores, one JSON object per image:
//! `{"image": ..., "tags": [{"tag": ..., "score": ...}], "tag_string": "a, b, c"}`, or
//! `{"image": ..., "error": ...}` for an image that cannot be read (the others are still tagged).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use lion_core::image_files::collect_images;
use lion_core::tagger::{format_tags, Ram, TagOrder, TagSelection, TagVocab, Tagger};

#[derive(clap::Args)]
pub struct Args {
    /// RAM checkpoint (`ram_swin_large_14m.pth`, or safetensors with the same keys).
    #[arg(long, required_unless_present_any = ["random_weights", "model"])]
    weights: Option<PathBuf>,
    /// Random weights instead of a checkpoint (smoke tests, benchmarks).
    #[arg(long, conflicts_with = "weights")]
    random_weights: bool,
    /// With --random-weights: draw them from this seed, the same tagger on every run (without
    /// it, an unseeded draw).
    #[arg(long, requires = "random_weights")]
    init_seed: Option<u64>,
    /// A tagger folder written by `lion train-tagger` (model.safetensors, config.json,
    /// tag_list.txt, tag_list_threshold.txt) instead of --weights/--config/--tags/--thresholds.
    /// A folder or a Hub id.
    #[arg(long, conflicts_with_all = ["weights", "random_weights", "tags", "thresholds"], value_parser = super::model_dir)]
    model: Option<PathBuf>,
    /// Model sizes: `swin-l` (ram_swin_large_14m), `tiny`, or a JSON file (RamConfig).
    #[arg(long, default_value = "swin-l")]
    config: String,
    /// Tag list (one a line) and --thresholds file; default: RAM's 4585 tags (embedded).
    #[arg(long, requires = "thresholds")]
    tags: Option<PathBuf>,
    /// Per-class thresholds, one a line, in tag-list order.
    #[arg(long, requires = "tags")]
    thresholds: Option<PathBuf>,
    /// Keep tags with probability > T instead of the per-class thresholds.
    #[arg(long, conflicts_with = "top_k")]
    threshold: Option<f32>,
    /// Keep the K most probable tags instead of thresholding.
    #[arg(long)]
    top_k: Option<usize>,
    /// Order of the kept tags: `index` (tag-list order, as LION uses them) or `score`.
    #[arg(long, default_value = "index", value_parser = ["index", "score"])]
    order: String,
    /// Also write every tag's probability (`"scores": [...]`, tag-list order).
    #[arg(long)]
    all_scores: bool,
    /// Images per forward pass.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// A file listing images, one path a line.
    #[arg(long)]
    list: Option<PathBuf>,
    /// Write the JSON lines to this file (atomically, resumable through FILE.partial) instead
    /// of stdout; with --shard, FILE's shard file (`lion merge` joins them).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    shard: super::shard::ShardArgs,
    /// Images, or folders of images (not recursive).
    inputs: Vec<PathBuf>,
    #[command(flatten)]
    device: super::DeviceArgs,
}

fn vocab(args: &Args, num_tags: usize) -> Result<TagVocab> {
    Ok(TagVocab::for_model(
        args.tags.as_deref().zip(args.thresholds.as_deref()),
        num_tags,
    )?)
}

pub fn run(args: Args) -> Result<()> {
    if let Some(t) = args.threshold {
        lion_core::rules::tag_threshold("--threshold", t)?;
    }
    if let Some(k) = args.top_k {
        lion_core::rules::positive("--top-k", k)?;
    }
    lion_core::rules::positive("--batch-size", args.batch_size)?;
    let images = collect_images(&args.inputs, args.list.as_deref())?;
    if images.is_empty() {
        bail!("no images: give image files, folders, or --list FILE");
    }
    let shard = args.shard.resolve(args.out.as_ref().map(|_| "--out"))?;
    let dev = args.device.open()?;
    let mut tagger = match &args.model {
        Some(dir) => lion_train::tagger_trainer::load_trained_tagger(dir, &dev)
            .with_context(|| format!("cannot load the tagger folder {}", dir.display()))?,
        None => {
            let model =
                Ram::from_spec(args.weights.as_deref(), &args.config, args.init_seed, &dev)?;
            let vocab = vocab(&args, model.config().num_tags)?;
            Tagger::new(model, vocab, dev)?
        }
    };
    tagger.selection = match (args.threshold, args.top_k) {
        (Some(t), _) => TagSelection::Threshold(t),
        (None, Some(k)) => TagSelection::TopK(k),
        (None, None) => TagSelection::ClassThreshold,
    };
    tagger.order = if args.order == "score" {
        TagOrder::Score
    } else {
        TagOrder::Index
    };

    let ids: Vec<String> = images.iter().map(|p| p.display().to_string()).collect();
    let summary = super::shard::run_batches(
        &ids,
        args.out.as_deref(),
        shard,
        "tag",
        args.batch_size,
        |chunk| {
            let refs: Vec<&Path> = chunk.iter().map(|&k| images[k].as_path()).collect();
            let results = tagger.tag_files(&refs)?;
            Ok(chunk
                .iter()
                .zip(results)
                .map(|(&k, result)| match result {
                    Ok(r) => {
                        let tags: Vec<_> =
                            r.tags.iter().map(|t| serde_json::json!(t.scored)).collect();
                        let mut obj = serde_json::json!({
                            "image": ids[k],
                            "tags": tags,
                            "tag_string": format_tags(&r.tags),
                        });
                        if args.all_scores {
                            obj["scores"] = serde_json::json!(r.probs);
                        }
                        obj
                    }
                    Err(e) => {
                        tracing::warn!("skipping {}: {e}", ids[k]);
                        serde_json::json!({"image": ids[k], "error": e.to_string()})
                    }
                })
                .collect())
        },
    )?;
    if summary.failed > 0 {
        tracing::warn!(
            "{} of {} images could not be read",
            summary.failed,
            summary.items
        );
        if summary.failed == summary.items {
            bail!("no image could be read");
        }
    }
    Ok(())
}
