//! `lion train-tagger`: trains the tiny RAM-architecture tagger on a ShapesWorld
//! ([`lion_train::tagger_trainer`]) and writes a folder `lion tag --model DIR` reads, with
//! `metrics.jsonl` (per epoch: loss, validation P/R/F1), `eval_test.json` (test micro P/R/F1) and
//! `tags_{split}.jsonl` (every image's tags with scores).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use lion_train::tagger_trainer::{train_tagger_with, TaggerEvent, TaggerTrainOptions};

#[derive(clap::Args)]
pub struct Args {
    /// A ShapesWorld folder (`lion world generate`): tag_list.txt, tags_{train,val,test}.json, images.
    #[arg(long)]
    world: PathBuf,
    /// The output folder (created; files in it are replaced).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = TaggerTrainOptions::default().epochs)]
    epochs: usize,
    #[arg(long, default_value_t = TaggerTrainOptions::default().batch_size)]
    batch_size: usize,
    /// Peak learning rate (linear warmup, then cosine to lr / 100).
    #[arg(long, default_value_t = TaggerTrainOptions::default().lr)]
    lr: f64,
    #[arg(long, default_value_t = TaggerTrainOptions::default().weight_decay)]
    weight_decay: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Model input size in pixels (a multiple of 16).
    #[arg(long, default_value_t = TaggerTrainOptions::default().img_size)]
    img_size: usize,
    /// Swin patch size (4 as RAM; 8 is about four times faster).
    #[arg(long, default_value_t = TaggerTrainOptions::default().patch_size)]
    patch_size: usize,
    /// Swin width of the first stage.
    #[arg(long, default_value_t = TaggerTrainOptions::default().embed_dim)]
    embed_dim: usize,
    /// Do not mirror training images.
    #[arg(long)]
    no_hflip: bool,
    /// The loss's focusing exponent on negatives (RAM's asymmetric loss: 7; with --clip 0,
    /// 0 is binary cross-entropy).
    #[arg(long, default_value_t = TaggerTrainOptions::default().gamma_neg)]
    gamma_neg: f64,
    /// The loss's probability margin on negatives (RAM's: 0.05).
    #[arg(long, default_value_t = TaggerTrainOptions::default().clip)]
    clip: f64,
    /// No LayerNorm after the Swin's patch embedding (RAM has one; without it the ShapesWorld
    /// tagger learns background textures; the config records it, `lion tag` follows it).
    #[arg(long)]
    no_patch_norm: bool,
    /// A convolutional stem (3x3 stride-2 convolutions) instead of the Swin's patchify (not in
    /// RAM; the config records it, `lion tag` follows it).
    #[arg(long)]
    conv_stem: bool,
    /// A small BatchNorm CNN (widths 16-32-64-64) as the visual encoder instead of the Swin: it
    /// learns ShapesWorld's shapes where a Swin trained from scratch does not (recommended:
    /// --batch-size 32 --lr 2e-3 --epochs 36 --gamma-neg 0 --clip 0).
    #[arg(long)]
    convnet: bool,
}

pub fn run(args: Args) -> Result<()> {
    let opts = TaggerTrainOptions {
        epochs: args.epochs,
        batch_size: args.batch_size,
        lr: args.lr,
        weight_decay: args.weight_decay,
        seed: args.seed,
        img_size: args.img_size,
        patch_size: args.patch_size,
        embed_dim: args.embed_dim,
        hflip: !args.no_hflip,
        gamma_neg: args.gamma_neg,
        clip: args.clip,
        patch_norm: !args.no_patch_norm,
        conv_stem: args.conv_stem,
        convnet: args.convnet,
        ..Default::default()
    };
    let mut pb: Option<indicatif::ProgressBar> = None;
    let report = train_tagger_with(&args.world, &args.out, &opts, |e| match e {
        TaggerEvent::Loading { images } => tracing::info!("loading {images} images"),
        TaggerEvent::Start {
            steps_per_epoch,
            epochs,
        } => {
            pb = Some(super::progress(
                (steps_per_epoch * epochs) as u64,
                "training the tagger",
            ));
        }
        TaggerEvent::Step { epoch, loss, .. } => {
            if let Some(pb) = &pb {
                pb.set_message(format!("epoch {epoch} loss {loss:.3}"));
                pb.inc(1);
            }
        }
        TaggerEvent::Epoch(m) => {
            if let Some(pb) = &pb {
                pb.suspend(|| {
                    tracing::info!(
                        "epoch {}: val P/R/F1 {:.3}/{:.3}/{:.3}",
                        m.epoch,
                        m.val_precision,
                        m.val_recall,
                        m.val_f1
                    )
                });
            }
        }
        TaggerEvent::Tagging { images } => {
            if let Some(pb) = pb.take() {
                pb.finish_and_clear();
            }
            tracing::info!("tagging {images} images");
        }
    })
    .with_context(|| format!("training the tagger on {}", args.world.display()))?;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let mut out = std::io::stdout();
    writeln!(
        out,
        "test micro P/R/F1 {:.3}/{:.3}/{:.3} (threshold {:.2}, {} epochs, {:.0} s training)",
        report.tagging.test.precision,
        report.tagging.test.recall,
        report.tagging.test.f1,
        report.threshold,
        report.epochs,
        report.train_seconds
    )?;
    for (g, p) in &report.tagging.test_groups {
        writeln!(
            out,
            "  {g}: P/R/F1 {:.3}/{:.3}/{:.3}",
            p.precision, p.recall, p.f1
        )?;
    }
    let cal = &report.tagging.calibration;
    writeln!(
        out,
        "calibration on the test split: ECE {:.3} over every (image, tag) pair, {:.3} over the {} \
         kept tags ({})",
        cal.ece,
        cal.kept_ece,
        cal.kept,
        lion_train::tagger_trainer::TaggerFiles::new(&args.out)
            .reliability()
            .display()
    )?;
    writeln!(
        out,
        "tagger: {} (lion tag --model {} IMAGES)",
        args.out.display(),
        args.out.display()
    )?;
    Ok(())
}
