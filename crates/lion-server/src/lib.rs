//! `lion serve`: an HTTP API around one model worker thread, in the shape of
//! text-embeddings-inference.
//!
//! - [`backend`]: the contract. A [`Backend`] gets batches of typed requests of one
//!   [`TaskKind`] (embed, caption, VQA, grounding, tags) and returns typed responses; methods
//!   it has no model for answer [`BackendError::NotLoaded`], and [`Backend::capabilities`] lets
//!   the HTTP layer answer 501 before queueing.
//! - [`queue`]: the bounded queue (429 when full) and the worker thread that owns the backend
//!   and batches requests of the same kind dynamically (max batch size, max wait).
//! - [`http`]: axum routes, validation ([`input`]), per-request timeout, metrics, graceful
//!   shutdown ([`ShutdownHandle`], SIGINT/SIGTERM).
//! - [`listener`]: the accept loop: header timeout, body deadline, connection cap, shutdown
//!   grace period; [`budget`]: the decoded-image memory budget.
//! - [`openai`]: the OpenAI-compatible chat API (`/v1/chat/completions`, `/v1/models`) over the
//!   same queue, with images from [`image_url`]; [`playground`]: the browser page at `GET /`.
//!
//! Adding a model (the LION model, the RAM tagger): give [`ModelBackend`] an optional field for
//! it, return `true` for its kinds in `capabilities`, and implement the batch methods
//! (`caption`, `vqa`, `ground`, `tags`) on it; the HTTP layer, limits, batching and metrics need
//! no change. [`GroundResponse::from_text`] turns LION's box text into a pixel box.
//!
//! ```no_run
//! use lion_server::{ModelBackend, ServerConfig};
//! let embedder = lion_core::sentence::SentenceEmbedder::load(
//!     "models/all-MiniLM-L6-v2", &candle_core::Device::Cpu, None).unwrap();
//! let backend = ModelBackend::new(Some(embedder), 32);
//! lion_server::run_blocking(ServerConfig::default(), Box::new(backend), |addr, _handle| {
//!     println!("{addr}");
//! }).unwrap();
//! ```

pub mod backend;
pub mod budget;
pub mod config;
pub mod error;
pub mod http;
pub mod image_url;
pub mod input;
pub mod listener;
pub mod metrics;
pub mod openai;
pub mod openapi;
pub mod playground;
pub mod queue;

pub use backend::{
    Backend, BackendError, BackendResult, Capabilities, CaptionRequest, CaptionResponse,
    GenerationInfo, GenerationOptions, GroundRequest, GroundResponse, ModelBackend, TagScore,
    TagsRequest, TagsResponse, TaskKind, VqaRequest, VqaResponse,
};
pub use config::{BatchConfig, ConnectionConfig, ImageSources, Limits, ServerConfig};
pub use error::{ApiError, ErrorType};
pub use http::{run_blocking, shutdown_signal, Server, ServerError, ShutdownHandle};
