//! `lion tag`: RAM image tags with scores, one JSON object per image:
//! `{"image": ..., "tags": [{"tag": ..., "score": ...}], "tag_string": "a, b, c"}`, or
//! `{"image": ..., "error": ...}` for an image that cannot be read (the others are still tagged).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use lion_core::tagger::{
    format_tags, Ram, RamConfig, TagOrder, TagSelection, TagVocab, Tagger, RAM_TAG_LIST,
};

#[derive(clap::Args)]
pub struct Args {
    /// RAM checkpoint (`ram_swin_large_14m.pth`, or safetensors with the same keys).
    #[arg(long, required_unless_present_any = ["random_weights", "model"])]
    weights: Option<PathBuf>,
    /// Random weights instead of a checkpoint (smoke tests, benchmarks).
    #[arg(long, conflicts_with = "weights")]
    random_weights: bool,
    /// A tagger folder written by `lion train-tagger` (model.safetensors, config.json,
    /// tag_list.txt, tag_list_threshold.txt) instead of --weights/--config/--tags/--thresholds.
    #[arg(long, conflicts_with_all = ["weights", "random_weights", "tags", "thresholds"])]
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
    /// Images, or folders of images (not recursive).
    inputs: Vec<PathBuf>,
}

const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "bmp", "gif", "webp", "tif", "tiff"];

/// Expands folders (their image files, sorted) and the list file into image paths.
pub fn collect_images(inputs: &[PathBuf], list: Option<&Path>) -> Result<Vec<PathBuf>> {
    let mut out = vec![];
    for input in inputs {
        if input.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(input)
                .with_context(|| format!("cannot read folder {}", input.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && p.extension()
                            .and_then(|e| e.to_str())
                            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_lowercase().as_str()))
                })
                .collect();
            files.sort();
            if files.is_empty() {
                tracing::warn!("no images in folder {}", input.display());
            }
            out.extend(files);
        } else {
            out.push(input.clone());
        }
    }
    if let Some(list) = list {
        let f = std::fs::File::open(list)
            .with_context(|| format!("cannot open list {}", list.display()))?;
        let base = list.parent().unwrap_or(Path::new("."));
        for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
            let line = line.with_context(|| format!("{}: line {}", list.display(), i + 1))?;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let p = PathBuf::from(line);
            out.push(if p.is_relative() { base.join(p) } else { p });
        }
    }
    Ok(out)
}

fn vocab(args: &Args, num_tags: usize) -> Result<TagVocab> {
    default_vocab(
        args.tags.as_deref().zip(args.thresholds.as_deref()),
        num_tags,
    )
}

/// The tag list: the given files, RAM's own (for 4585 tags), or synthetic names.
fn default_vocab(files: Option<(&Path, &Path)>, num_tags: usize) -> Result<TagVocab> {
    if let Some((t, th)) = files {
        return Ok(TagVocab::from_files(t, th)?);
    }
    if num_tags == RAM_TAG_LIST.lines().count() {
        return Ok(TagVocab::ram());
    }
    tracing::warn!(
        "the model has {num_tags} tags, not RAM's 4585: naming them tag0..tag{} (threshold 0.68); give --tags/--thresholds for real names",
        num_tags - 1
    );
    Ok(TagVocab::synthetic(num_tags, 0.68))
}

/// A RAM model: `weights` (a checkpoint) or random weights (None), sizes from `config`
/// (`swin-l`, `tiny` or a JSON file). Returns the model and its config.
pub fn load_ram(
    weights: Option<&Path>,
    config: &str,
    dev: &candle_core::Device,
) -> Result<(Ram, RamConfig)> {
    let cfg = RamConfig::from_name_or_file(config)?;
    let model = match weights {
        Some(w) => {
            let (model, report) = Ram::load(&cfg, w, dev)
                .with_context(|| format!("cannot load RAM weights {}", w.display()))?;
            tracing::info!("loaded {}: {report}", w.display());
            model
        }
        None => {
            tracing::warn!("random weights: the tags mean nothing");
            Ram::random(&cfg, dev)?
        }
    };
    Ok((model, cfg))
}

/// A tagger with LION's tag selection (per-class thresholds, tag-list order) and RAM's tag list
/// (or synthetic names when the model has another number of tags).
pub fn load_tagger(
    weights: Option<&Path>,
    config: &str,
    dev: &candle_core::Device,
) -> Result<Tagger> {
    let (model, cfg) = load_ram(weights, config, dev)?;
    Ok(Tagger::new(
        model,
        default_vocab(None, cfg.num_tags)?,
        dev.clone(),
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
    let dev = super::device()?;
    let mut tagger = match &args.model {
        Some(dir) => lion_train::tagger_trainer::load_trained_tagger(dir, &dev)
            .with_context(|| format!("cannot load the tagger folder {}", dir.display()))?,
        None => {
            let (model, cfg) = load_ram(args.weights.as_deref(), &args.config, &dev)?;
            Tagger::new(model, vocab(&args, cfg.num_tags)?, dev)?
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

    let pb = super::progress(images.len() as u64, "tagging");
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut failed = 0usize;
    for chunk in images.chunks(args.batch_size.max(1)) {
        let refs: Vec<&Path> = chunk.iter().map(|p| p.as_path()).collect();
        let results = tagger.tag_files(&refs)?;
        for (path, result) in chunk.iter().zip(results) {
            let line = match result {
                Ok(r) => {
                    let tags: Vec<_> = r
                        .tags
                        .iter()
                        .map(|t| serde_json::json!({"tag": t.tag, "score": t.score}))
                        .collect();
                    let mut obj = serde_json::json!({
                        "image": path.display().to_string(),
                        "tags": tags,
                        "tag_string": format_tags(&r.tags),
                    });
                    if args.all_scores {
                        obj["scores"] = serde_json::json!(r.probs);
                    }
                    obj
                }
                Err(e) => {
                    failed += 1;
                    pb.suspend(|| tracing::warn!("skipping {}: {e}", path.display()));
                    serde_json::json!({"image": path.display().to_string(), "error": e.to_string()})
                }
            };
            writeln!(out, "{line}")?;
        }
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    out.flush()?;
    if failed > 0 {
        tracing::warn!("{failed} of {} images could not be read", images.len());
        if failed == images.len() {
            bail!("no image could be read");
        }
    }
    Ok(())
}
