//! `lion world generate`: write a ShapesWorld (images + COCO/VQA/RefCOCO/LION files) to a folder.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use lion_data::world::{generate, WorldConfig};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: WorldCommand,
}

#[derive(clap::Subcommand)]
enum WorldCommand {
    /// Generate a world, deterministic byte for byte from the seed and settings.
    Generate(GenerateArgs),
}

#[derive(clap::Args)]
struct GenerateArgs {
    /// Output folder (must not exist, be empty, or hold an earlier world with --force).
    #[arg(long)]
    out: PathBuf,
    /// World seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Training images.
    #[arg(long, default_value_t = 1000)]
    train: usize,
    /// Validation images.
    #[arg(long, default_value_t = 100)]
    val: usize,
    /// Test images.
    #[arg(long, default_value_t = 100)]
    test: usize,
    /// Image width and height in pixels.
    #[arg(long, default_value_t = 224)]
    size: u32,
    /// VQA questions per image.
    #[arg(long, default_value_t = 5)]
    questions_per_image: usize,
    /// Worker threads (0 = all cores); the output does not depend on it.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Replace an earlier world in --out.
    #[arg(long)]
    force: bool,
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        WorldCommand::Generate(a) => run_generate(a),
    }
}

fn run_generate(a: GenerateArgs) -> Result<()> {
    let cfg = WorldConfig {
        seed: a.seed,
        train: a.train,
        val: a.val,
        test: a.test,
        size: a.size,
        questions_per_image: a.questions_per_image,
        threads: a.threads,
    };
    let total = cfg.train.saturating_add(cfg.val).saturating_add(cfg.test) as u64;
    let pb = super::progress(total, "generating ShapesWorld");
    let start = Instant::now();
    let manifest = generate(&cfg, &a.out, a.force, &|n| pb.set_position(n))
        .with_context(|| format!("generating a world into {}", a.out.display()))?;
    pb.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "ShapesWorld v{} seed {} -> {} ({}x{} px, {} tags, digest {})",
        manifest.generator_version,
        manifest.seed,
        a.out.display(),
        manifest.width,
        manifest.height,
        manifest.vocabulary.tags,
        manifest.digest
    );
    println!(
        "{:<6} {:>7} {:>8} {:>9} {:>10} {:>6} {:>10}",
        "split", "images", "objects", "captions", "questions", "refs", "sentences"
    );
    for s in &manifest.splits {
        println!(
            "{:<6} {:>7} {:>8} {:>9} {:>10} {:>6} {:>10}",
            s.name, s.images, s.objects, s.captions, s.questions, s.refs, s.ref_sentences
        );
    }
    println!(
        "{} images ({:.1} MB of PNG) in {:.1} s: {:.0} images/s",
        manifest.images.count,
        manifest.images.bytes as f64 / 1e6,
        secs,
        manifest.images.count as f64 / secs.max(1e-9)
    );
    Ok(())
}
