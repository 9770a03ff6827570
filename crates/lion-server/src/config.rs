//! Server settings: one struct, passed whole (no long argument lists).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything `lion serve` can tune.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where to listen; port 0 picks a free port (see [`crate::Server::local_addr`]).
    pub addr: SocketAddr,
    pub batching: BatchConfig,
    /// Longest a request may take from arrival to answer (504 after that).
    pub request_timeout: Duration,
    pub limits: Limits,
    pub connections: ConnectionConfig,
    /// Where the chat API may read `image_url`s from besides `data:` URLs.
    pub images: ImageSources,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            batching: BatchConfig::default(),
            request_timeout: Duration::from_secs(30),
            limits: Limits::default(),
            connections: ConnectionConfig::default(),
            images: ImageSources::default(),
        }
    }
}

/// Connection handling: slow and stalled clients, the cap on open connections, shutdown.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// Open connections at most. At the cap a new connection replaces the oldest one that has
    /// no request in progress (first those that never completed one: stalled clients, then idle
    /// keep-alive ones); when every connection has one, the new one gets a bare 503.
    pub max_connections: usize,
    /// Longest a client may take to send a complete request header (also the idle time of a
    /// keep-alive connection between requests); the connection is closed after it.
    pub header_timeout: Duration,
    /// Longest a client may take to send the request body, from the end of its header
    /// (408 after it); never longer than the request timeout.
    pub body_timeout: Duration,
    /// After SIGTERM: how long connections without a request in progress (stalled, partial
    /// requests, idle keep-alive) are given before they are dropped. Requests in progress are
    /// answered (they end within the request timeout).
    pub shutdown_grace: Duration,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Image URLs of the chat API other than `data:` (always accepted): both off by default.
#[derive(Debug, Clone)]
pub struct ImageSources {
    /// `file://` URLs are read when they resolve (symlinks followed) to a file under this folder.
    pub file_root: Option<PathBuf>,
    /// `http://` URLs (and `https://`, built with the `https-images` feature) are fetched (any
    /// host the client names: only for trusted clients), at most the body limit in bytes and
    /// within `fetch_timeout`.
    pub allow_http: bool,
    pub fetch_timeout: Duration,
    /// PEM certificates trusted for `https://` besides Mozilla's roots (`https-images` only).
    pub ca_file: Option<PathBuf>,
}

impl Default for ImageSources {
    fn default() -> Self {
        Self {
            file_root: None,
            allow_http: false,
            fetch_timeout: Duration::from_secs(10),
            ca_file: None,
        }
    }
}

/// Dynamic batching on the worker thread.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// Most items per batch (texts for embed, images for the image tasks).
    pub max_batch: usize,
    /// Longest the worker waits for more requests once a batch has its first one.
    pub max_wait: Duration,
    /// Requests that may wait in the queue; more get 429.
    pub queue_capacity: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_batch: 32,
            max_wait: Duration::from_millis(5),
            queue_capacity: 64,
        }
    }
}

/// Per-request limits. Each rejection names the limit.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Bytes of a request body (JSON with base64 image, or multipart).
    pub max_body_bytes: usize,
    /// Width x height of an image, checked from the header before decoding.
    pub max_image_pixels: u64,
    /// Characters of a question, expression or prompt.
    pub max_prompt_chars: usize,
    /// Characters of one text to embed.
    pub max_embed_chars: usize,
    /// Texts in one embed request.
    pub max_embed_inputs: usize,
    /// Largest `max_new_tokens` a request may ask for.
    pub max_new_tokens: usize,
    /// Largest `num_beams` a request may ask for.
    pub max_num_beams: usize,
    /// Bytes that decoded images may hold at once, over all requests (decoder output plus the
    /// RGB copy while decoding, the RGB image until its request is answered); reserved from the
    /// image header before decoding.
    pub max_decoded_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 20 * 1024 * 1024,
            max_image_pixels: 40_000_000,
            max_prompt_chars: 1000,
            max_embed_chars: 10_000,
            max_embed_inputs: 64,
            max_new_tokens: 256,
            max_num_beams: 8,
            max_decoded_bytes: 2 << 30,
        }
    }
}

impl ServerConfig {
    /// Rejects settings the server cannot run with.
    pub fn validate(&self) -> Result<(), String> {
        let b = &self.batching;
        if b.max_batch == 0 {
            return Err("max batch size must be at least 1".into());
        }
        if b.queue_capacity == 0 {
            return Err("queue length must be at least 1".into());
        }
        if self.request_timeout.is_zero() {
            return Err("request timeout must be positive".into());
        }
        let l = &self.limits;
        for (name, v) in [
            ("max body bytes", l.max_body_bytes),
            ("max prompt chars", l.max_prompt_chars),
            ("max embed chars", l.max_embed_chars),
            ("max embed inputs", l.max_embed_inputs),
            ("max new tokens", l.max_new_tokens),
            ("max num beams", l.max_num_beams),
        ] {
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if l.max_image_pixels == 0 {
            return Err("max image pixels must be at least 1".into());
        }
        if l.max_decoded_bytes == 0 {
            return Err("max decoded bytes must be at least 1".into());
        }
        let c = &self.connections;
        if c.max_connections == 0 {
            return Err("max connections must be at least 1".into());
        }
        for (name, d) in [
            ("header timeout", c.header_timeout),
            ("body timeout", c.body_timeout),
        ] {
            if d.is_zero() {
                return Err(format!("{name} must be positive"));
            }
        }
        if let Some(root) = &self.images.file_root {
            if !root.is_dir() {
                return Err(format!("image root {} is not a folder", root.display()));
            }
        }
        if self.images.allow_http && self.images.fetch_timeout.is_zero() {
            return Err("image fetch timeout must be positive".into());
        }
        if let Some(ca) = &self.images.ca_file {
            #[cfg(feature = "https-images")]
            crate::image_url::tls::client_config(Some(ca))?;
            #[cfg(not(feature = "https-images"))]
            return Err(format!(
                "--image-ca {}: this server has no TLS client (build with --features \
                 https-images)",
                ca.display()
            ));
        }
        Ok(())
    }
}

/// Default `max_new_tokens` per task when a request gives none (short answers for VQA, a box
/// is about 30 tokens).
pub fn default_max_new_tokens(kind: crate::TaskKind, limit: usize) -> usize {
    let d = match kind {
        crate::TaskKind::Vqa => 10,
        crate::TaskKind::Ground => 40,
        _ => 30,
    };
    d.min(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_zero_settings_are_not() {
        assert!(ServerConfig::default().validate().is_ok());
        let mut c = ServerConfig::default();
        c.batching.queue_capacity = 0;
        assert!(c.validate().unwrap_err().contains("queue"));
        let mut c = ServerConfig::default();
        c.limits.max_new_tokens = 0;
        assert!(c.validate().unwrap_err().contains("max new tokens"));
    }
}
