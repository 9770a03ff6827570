//! `lion embed`: one JSON object per sentence, `{"text": ..., "embedding": [...]}`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use lion_core::sentence::SentenceEmbedder;

#[derive(clap::Args)]
pub struct Args {
    /// Model folder (config.json, model.safetensors, tokenizer.json) or Hub id; see
    /// scripts/get-minilm.sh.
    #[arg(long, default_value = super::DEFAULT_MINILM, value_parser = super::model_dir)]
    model: PathBuf,
    /// A file with one sentence per line (empty lines are skipped).
    #[arg(long)]
    file: Option<PathBuf>,
    /// Sentences per forward pass.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Sentences to embed.
    sentences: Vec<String>,
    #[command(flatten)]
    device: super::DeviceArgs,
}

/// Longest sentence line read from `--file` (bytes).
const MAX_LINE: usize = 1 << 20;

pub fn run(args: Args) -> Result<()> {
    lion_core::rules::positive("--batch-size", args.batch_size)?;
    let mut texts = args.sentences.clone();
    if let Some(file) = &args.file {
        let f =
            std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
        // Line by line with a bound: a file with no line ends (`/dev/zero`) is an error, not a
        // slurp; a bad line (too long, not UTF-8) is named and skipped.
        for next in lion_core::util::BoundedLines::new(std::io::BufReader::new(f), MAX_LINE) {
            let (n, line) = next.with_context(|| format!("reading {}", file.display()))?;
            match line {
                Ok(l) if !l.trim().is_empty() => texts.push(l),
                Ok(_) => {}
                Err(e) => tracing::warn!("{}: skipping line {n}: {e}", file.display()),
            }
        }
    }
    if texts.is_empty() {
        bail!("nothing to embed: give sentences as arguments or --file FILE");
    }
    let dev = args.device.open()?;
    let model = SentenceEmbedder::load(&args.model, &dev, None)
        .with_context(|| format!("cannot load model folder {}", args.model.display()))?;
    let pb = super::progress(texts.len() as u64, "embedding");
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for chunk in texts.chunks(args.batch_size) {
        let refs: Vec<&str> = chunk.iter().map(|s| s.as_str()).collect();
        let embs = model.embed(&refs, args.batch_size)?;
        for (text, emb) in chunk.iter().zip(embs) {
            let line = serde_json::json!({ "text": text, "embedding": emb });
            writeln!(out, "{line}")?;
        }
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    out.flush()?;
    Ok(())
}
