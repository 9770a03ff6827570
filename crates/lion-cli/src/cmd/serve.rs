//! `lion serve`: the HTTP API (see the lion-server crate). Prints the bound address as one line
//! on stdout (`127.0.0.1:PORT`), logs on stderr, stops on SIGINT/SIGTERM after answering the
//! requests in flight.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use lion_core::sentence::SentenceEmbedder;
use lion_server::{BatchConfig, Limits, ModelBackend, ServerConfig};

#[derive(clap::Args)]
pub struct Args {
    /// The LION model (captioning, VQA, grounding); without one those endpoints answer 501.
    #[command(flatten)]
    lion: super::model::ModelArgs,
    /// RAM checkpoint for POST /v1/tags and the tags of LION's prompt.
    #[arg(long, conflicts_with = "ram_random")]
    ram: Option<PathBuf>,
    /// RAM sizes with --ram: `swin-l` (ram_swin_large_14m), `tiny`, or a JSON file (RamConfig).
    #[arg(long, default_value = "swin-l", requires = "ram")]
    ram_config: String,
    /// A RAM tagger of these sizes (`tiny`, `swin-l`, JSON file) with random weights (smoke
    /// tests, benchmarks).
    #[arg(long, value_name = "CONFIG")]
    ram_random: Option<String>,
    /// Sentence-embedding model for POST /v1/embed: a folder or a Hub id.
    #[arg(long, default_value = super::DEFAULT_MINILM, value_parser = super::model_dir)]
    embed_model: PathBuf,
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Most items (texts or images) per model batch.
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// Longest a batch waits for more requests after its first, in milliseconds.
    #[arg(long, default_value_t = 5)]
    max_wait_ms: u64,
    /// Requests that may wait for the model; more are answered 429.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Per-request timeout in milliseconds (504 after it).
    #[arg(long, default_value_t = 30_000)]
    timeout_ms: u64,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = Limits::default().max_body_bytes)]
    max_body_bytes: usize,
    /// Largest image in pixels (width x height, read from the header before decoding).
    #[arg(long, default_value_t = Limits::default().max_image_pixels)]
    max_image_pixels: u64,
    /// Longest question, expression or prompt in characters.
    #[arg(long, default_value_t = Limits::default().max_prompt_chars)]
    max_prompt_chars: usize,
    /// Longest text to embed in characters.
    #[arg(long, default_value_t = Limits::default().max_embed_chars)]
    max_embed_chars: usize,
    /// Most texts in one embed request.
    #[arg(long, default_value_t = Limits::default().max_embed_inputs)]
    max_embed_inputs: usize,
    /// Largest max_new_tokens a request may ask for.
    #[arg(long, default_value_t = Limits::default().max_new_tokens)]
    max_new_tokens: usize,
    /// Largest num_beams a request may ask for.
    #[arg(long, default_value_t = Limits::default().max_num_beams)]
    max_num_beams: usize,
}

impl Args {
    fn config(&self) -> ServerConfig {
        ServerConfig {
            addr: self.addr,
            batching: BatchConfig {
                max_batch: self.max_batch,
                max_wait: Duration::from_millis(self.max_wait_ms),
                queue_capacity: self.queue,
            },
            request_timeout: Duration::from_millis(self.timeout_ms),
            limits: Limits {
                max_body_bytes: self.max_body_bytes,
                max_image_pixels: self.max_image_pixels,
                max_prompt_chars: self.max_prompt_chars,
                max_embed_chars: self.max_embed_chars,
                max_embed_inputs: self.max_embed_inputs,
                max_new_tokens: self.max_new_tokens,
                max_num_beams: self.max_num_beams,
            },
        }
    }
}

pub fn run(args: Args) -> Result<()> {
    let cfg = args.config();
    cfg.validate().map_err(anyhow::Error::msg)?;
    let dev = super::device()?;
    let embedder = SentenceEmbedder::load(&args.embed_model, &dev, None).with_context(|| {
        format!(
            "cannot load the embedding model folder {} (see scripts/get-minilm.sh)",
            args.embed_model.display()
        )
    })?;
    tracing::info!(model = %args.embed_model.display(), "embedding model loaded");
    let mut backend = ModelBackend::new(Some(embedder), args.max_batch);
    if args.lion.model.is_some() || args.lion.preset.is_some() {
        let pipeline = args.lion.load()?;
        tracing::info!("LION model loaded");
        backend = backend.with_lion(pipeline);
    }
    let ram = match (&args.ram, &args.ram_random) {
        (Some(w), _) => Some((Some(w.as_path()), args.ram_config.as_str())),
        (None, Some(cfg)) => Some((None, cfg.as_str())),
        (None, None) => None,
    };
    if let Some((weights, config)) = ram {
        let tagger = lion_core::tagger::Tagger::from_spec(weights, config, &dev)?;
        tracing::info!(tags = tagger.vocab.len(), "RAM tagger loaded");
        backend = backend.with_tagger(tagger, dev.clone());
    }
    lion_server::run_blocking(cfg, Box::new(backend), |addr, _| {
        // The one line of real output: scripts and tests read the port from it.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{addr}");
        let _ = out.flush();
        tracing::info!("listening on http://{addr}");
    })?;
    Ok(())
}
