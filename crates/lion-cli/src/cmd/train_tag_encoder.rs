//! `lion train-tag-encoder`: triplet fine-tuning of the tag encoder (Dynamic LION step 3).
//! OUT becomes a model folder (`lion embed --model OUT` loads it) with `metrics.jsonl`,
//! `curves.png` and `train_config.json` beside the weights.

use std::path::PathBuf;

use anyhow::Result;
use lion_train::triplet_trainer::{FineTune, TripletConfig};

#[derive(clap::Args)]
pub struct Args {
    /// Sentence-transformer folder: embeds the chosen captions (frozen) and, unless --encoder
    /// is given, initialises the tag encoder.
    #[arg(long, default_value = super::DEFAULT_MINILM, value_parser = super::model_dir)]
    model: PathBuf,
    /// Initial tag encoder, a folder or a Hub id (default: --model).
    #[arg(long, value_parser = super::model_dir)]
    encoder: Option<PathBuf>,
    /// Images as JSON lines: {"image": id, "captions": [...], "tags": [...]}.
    #[arg(long)]
    data: PathBuf,
    /// Chosen captions from `lion select-captions` (default: selected here).
    #[arg(long)]
    chosen: Option<PathBuf>,
    /// Output model folder.
    #[arg(long)]
    out: PathBuf,
    /// Passes over the training images.
    #[arg(long, default_value_t = 5)]
    epochs: usize,
    /// Images per optimizer step.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// AdamW learning rate.
    #[arg(long, default_value_t = 5e-5)]
    lr: f64,
    /// AdamW decoupled weight decay.
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,
    /// Triplet margin.
    #[arg(long, default_value_t = 1.0)]
    margin: f64,
    /// Norm degree of the triplet distances.
    #[arg(long, default_value_t = 2.0)]
    p: f64,
    /// FaceNet's squared distances in the loss (`d^p`), not PyTorch's `TripletMarginLoss` (`d`):
    /// pushes the anchor off what every caption shares (lower cos(anchor, negative)).
    #[arg(long)]
    squared: bool,
    /// Fraction of the images held out for validation.
    #[arg(long, default_value_t = 0.05)]
    val_fraction: f64,
    /// Seed of the split, the batch order and the negatives.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Train without dropout.
    #[arg(long)]
    no_dropout: bool,
    /// Also validate every N optimizer steps (a metrics line and a curve point each), not only
    /// at each epoch's end (0: epoch ends only).
    #[arg(long, default_value_t = 0)]
    eval_every: usize,
    /// Stop once the validation loss has not improved for this many validations in a row and
    /// keep the best weights (0: train every epoch, keep the last). --epochs is then the most.
    #[arg(long, default_value_t = 0)]
    patience: usize,
    #[command(flatten)]
    device: super::DeviceArgs,
}

pub fn run(args: Args) -> Result<()> {
    let cfg = TripletConfig {
        epochs: args.epochs,
        batch_size: args.batch_size,
        lr: args.lr,
        weight_decay: args.weight_decay,
        margin: args.margin,
        p: args.p,
        squared: args.squared,
        val_fraction: args.val_fraction,
        seed: args.seed,
        dropout: !args.no_dropout,
        eval_every: args.eval_every,
        patience: args.patience,
        ..Default::default()
    };
    let dev = args.device.open()?;
    let out = lion_train::progress::fine_tune_showing(
        &FineTune {
            model: &args.model,
            encoder: args.encoder.as_deref(),
            data: &args.data,
            chosen: args.chosen.as_deref(),
            out: &args.out,
            config: cfg,
        },
        &dev,
        &super::Terminal,
    )?;
    println!(
        "tag encoder written to {} (metrics: {}, curves: {})",
        out.dir.display(),
        out.metrics().display(),
        out.curves().display()
    );
    Ok(())
}
