//! `lion demo`: the seed experiment on the embedded ShapesWorld.
//!
//! For now it runs the stages that exist and names the ones that do not yet.

use std::path::PathBuf;

use anyhow::{Context, Result};
use lion_core::sentence::{nearest_to_centroid, SentenceEmbedder};

#[derive(clap::Args)]
pub struct Args {
    /// Sentence-transformer folder used for centroid caption selection.
    #[arg(long, default_value = super::DEFAULT_MINILM)]
    sentence_model: PathBuf,
}

/// A built-in example image's captions (ShapesWorld style) until the world generator lands.
const CAPTIONS: &[&str] = &[
    "a red circle next to a small blue square",
    "a blue square and a red circle on a striped background",
    "two shapes: a large red circle and a small blue square",
    "a red ball beside a blue box",
    "there is a circle and a square in the picture",
];

pub fn run(args: Args) -> Result<()> {
    tracing::info!("stage 1/5 RAM tagging with scores: not implemented yet (issue 5)");
    tracing::info!("stage 2/5 centroid caption selection with all-MiniLM-L6-v2");
    let dev = super::device()?;
    let model = SentenceEmbedder::load(&args.sentence_model, &dev, None).with_context(|| {
        format!(
            "cannot load {} (run scripts/get-minilm.sh first)",
            args.sentence_model.display()
        )
    })?;
    let embs = model.embed(CAPTIONS, 32)?;
    let best = nearest_to_centroid(&embs).context("no captions")?;
    println!("captions of the example image:");
    for (i, c) in CAPTIONS.iter().enumerate() {
        let mark = if i == best { "*" } else { " " };
        println!(" {mark} {c}");
    }
    println!("centroid-nearest caption (*): {}", CAPTIONS[best]);
    for (stage, issue) in [
        ("3/5 triplet fine-tuning of the tag encoder", 8),
        (
            "4/5 PEFT training of LION with static/dynamic/gated prompts",
            8,
        ),
        (
            "5/5 evaluation (CIDEr-D, VQA accuracy, Acc@0.5) and report",
            9,
        ),
    ] {
        tracing::info!("stage {stage}: not implemented yet (issue {issue})");
    }
    Ok(())
}
