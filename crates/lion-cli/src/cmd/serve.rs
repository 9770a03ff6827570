//! `lion serve`: the HTTP API (see the lion-server crate). Prints the bound address as one line
//! on stdout (`127.0.0.1:PORT`), logs on stderr, stops on SIGINT/SIGTERM after answering the
//! requests in flight.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use lion_core::sentence::SentenceEmbedder;
use lion_server::{BatchConfig, Limits, ModelBackend, ServerConfig};

#[derive(clap::Args)]
pub struct Args {
    /// A LION model folder (captioning, VQA, grounding, tags).
    #[arg(long, conflicts_with = "preset")]
    model: Option<PathBuf>,
    /// A LION preset (tiny, shapes, base, lion-4b, lion-12b); needs --random-weights.
    #[arg(long)]
    preset: Option<String>,
    /// Build the preset with random weights (benchmarks and smoke tests).
    #[arg(long, requires = "preset")]
    random_weights: bool,
    /// Sentence-embedding model folder for POST /v1/embed.
    #[arg(long, default_value = super::DEFAULT_MINILM)]
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
    if let Some(what) = args
        .model
        .as_ref()
        .map(|m| format!("--model {}", m.display()))
        .or_else(|| args.preset.as_ref().map(|p| format!("--preset {p}")))
    {
        bail!(
            "{what}: LION models are not available in this build yet; \
             run `lion serve` without --model/--preset to serve POST /v1/embed \
             (the caption, VQA, grounding and tags endpoints then answer 501)"
        );
    }
    if args.preset.is_some() && !args.random_weights {
        bail!("--preset needs --random-weights (presets have no trained weights)");
    }
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
    let backend = ModelBackend::new(Some(embedder), args.max_batch);
    lion_server::run_blocking(cfg, Box::new(backend), |addr, _| {
        // The one line of real output: scripts and tests read the port from it.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{addr}");
        let _ = out.flush();
        tracing::info!("listening on http://{addr}");
    })?;
    Ok(())
}
