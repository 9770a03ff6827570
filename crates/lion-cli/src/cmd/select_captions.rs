//! `lion select-captions`: the centroid-nearest caption of every image, as JSON lines
//! `{"image", "caption", "index"}` (written atomically).

use std::path::PathBuf;

use anyhow::{Context, Result};
use lion_core::sentence::SentenceEmbedder;
use lion_train::centroid::select_captions;
use lion_train::records::{read_images, JsonlWriter};

#[derive(clap::Args)]
pub struct Args {
    /// Sentence transformer that embeds the captions: a folder or a Hub id.
    #[arg(long, default_value = super::DEFAULT_MINILM, value_parser = super::model_dir)]
    model: PathBuf,
    /// Images as JSON lines: {"image": id, "captions": [...], ...}.
    #[arg(long)]
    input: PathBuf,
    /// Output JSON lines, one per image.
    #[arg(long)]
    out: PathBuf,
    /// Captions per forward pass.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    #[command(flatten)]
    device: super::DeviceArgs,
}

pub fn run(args: Args) -> Result<()> {
    let images = read_images(&args.input)?;
    let dev = args.device.open()?;
    let model = SentenceEmbedder::load(&args.model, &dev, None)
        .with_context(|| format!("cannot load model folder {}", args.model.display()))?;
    let pb = super::progress(images.len() as u64, "selecting captions");
    let chosen = select_captions(&model, &images, args.batch_size, |n| pb.inc(n as u64))?;
    pb.finish_and_clear();
    let mut out = JsonlWriter::create(&args.out)?;
    for c in &chosen {
        out.write(&c.to_json())?;
    }
    out.finish()?;
    tracing::info!(
        "{} images: chosen captions written to {}",
        chosen.len(),
        args.out.display()
    );
    Ok(())
}
