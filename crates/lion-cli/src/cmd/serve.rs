//! `lion serve`: the HTTP API (see the lion-server crate). Prints the bound address as one line
//! on stdout (`127.0.0.1:PORT`), logs on stderr, stops on SIGINT/SIGTERM after answering the
//! requests in flight (connections without one are dropped after `--shutdown-grace-ms`).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use lion_core::sentence::SentenceEmbedder;
use lion_server::{
    BatchConfig, ConnectionConfig, ImageSources, Limits, ModelBackend, ServerConfig,
};

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
    /// With --ram-random: draw its weights from this seed, the same tagger on every run
    /// (without it, an unseeded draw).
    #[arg(long, requires = "ram_random")]
    ram_init_seed: Option<u64>,
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
    /// Bytes decoded images may hold at once over all requests (reserved from each image's
    /// header before decoding; 429 when in use, 413 when one image alone needs more).
    #[arg(long, default_value_t = Limits::default().max_decoded_bytes)]
    max_decoded_bytes: u64,
    /// Open connections at most; at the cap a new one replaces the oldest connection without a
    /// request in progress, or gets 503 when all have one.
    #[arg(long, default_value_t = ConnectionConfig::default().max_connections)]
    max_connections: usize,
    /// Milliseconds a client has to send a complete request header (and a keep-alive connection
    /// to start its next request) before it is closed.
    #[arg(long, default_value_t = ConnectionConfig::default().header_timeout.as_millis() as u64)]
    header_timeout_ms: u64,
    /// Milliseconds a client has to send the request body after its header (408 after it;
    /// never more than --timeout-ms).
    #[arg(long, default_value_t = ConnectionConfig::default().body_timeout.as_millis() as u64)]
    body_timeout_ms: u64,
    /// On SIGINT/SIGTERM: milliseconds before connections without a request in progress
    /// (stalled or partial requests, idle keep-alive) are dropped.
    #[arg(long, default_value_t = ConnectionConfig::default().shutdown_grace.as_millis() as u64)]
    shutdown_grace_ms: u64,
    /// Chat API: read `file://` image URLs that resolve to files under this folder (off without).
    #[arg(long, value_name = "DIR")]
    image_root: Option<PathBuf>,
    /// Chat API: fetch `http://` image URLs (any host a client names: trusted clients only;
    /// `https://` too in a build with `--features https-images`), within --max-body-bytes and
    /// --image-fetch-timeout-ms.
    #[arg(long)]
    allow_http_images: bool,
    /// Chat API: longest an `http(s)://` image fetch may take, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    image_fetch_timeout_ms: u64,
    /// Chat API: PEM certificates to trust for `https://` image URLs besides Mozilla's roots
    /// (`https-images` builds).
    #[arg(long, value_name = "FILE")]
    image_ca: Option<PathBuf>,
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
                max_decoded_bytes: self.max_decoded_bytes,
            },
            connections: ConnectionConfig {
                max_connections: self.max_connections,
                header_timeout: Duration::from_millis(self.header_timeout_ms),
                body_timeout: Duration::from_millis(self.body_timeout_ms),
                shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
            },
            images: ImageSources {
                file_root: self.image_root.clone(),
                allow_http: self.allow_http_images,
                fetch_timeout: Duration::from_millis(self.image_fetch_timeout_ms),
                ca_file: self.image_ca.clone(),
            },
        }
    }
}

pub fn run(args: Args) -> Result<()> {
    let cfg = args.config();
    cfg.validate().map_err(anyhow::Error::msg)?;
    let dev = args.lion.device.open()?;
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
        let tagger =
            lion_core::tagger::Tagger::from_spec(weights, config, args.ram_init_seed, &dev)?;
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
