//! The axum router: handlers parse and validate, check the backend's capabilities, queue a job
//! and wait for its answer (up to the request timeout); a middleware counts every request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Multipart, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use image::RgbImage;
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};
use tokio::sync::{oneshot, watch};

use crate::backend::{
    Backend, BackendResult, Capabilities, CaptionRequest, GroundRequest, TagsRequest, TaskKind,
    VqaRequest,
};
use crate::budget::{DecodeBudget, Reservation};
use crate::config::ServerConfig;
use crate::error::{json_response, ApiError, ErrorType};
use crate::input::{self, CaptionBody, EmbedBody, GroundBody, TagsBody, VqaBody};
use crate::listener::{body_deadline, BodyDeadline, Listener};
use crate::metrics::Metrics;
use crate::queue::{spawn_worker, EnqueueError, Job, Queue};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("invalid server settings: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("the model worker thread panicked")]
    WorkerPanicked,
}

pub(crate) struct AppState {
    queue: Queue,
    pub(crate) caps: Capabilities,
    pub(crate) cfg: ServerConfig,
    metrics: Arc<Metrics>,
    budget: Arc<DecodeBudget>,
    openapi: Value,
}

pub(crate) type Shared = Arc<AppState>;

/// Stops a running [`Server`]: it stops accepting connections, answers the requests in flight,
/// lets the worker finish the queue, then [`Server::serve`] returns. Cheap to clone.
#[derive(Clone)]
pub struct ShutdownHandle(Arc<watch::Sender<bool>>);

impl ShutdownHandle {
    pub fn shutdown(&self) {
        self.0.send_replace(true);
    }

    async fn wait(mut rx: watch::Receiver<bool>) {
        // An error means every sender is gone: nobody can ask for shutdown any more.
        if rx.wait_for(|v| *v).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// A bound server, not yet serving.
pub struct Server {
    listener: tokio::net::TcpListener,
    router: Router,
    connections: Listener,
    worker: JoinHandle<()>,
    shutdown: ShutdownHandle,
    addr: SocketAddr,
}

impl Server {
    /// Binds the address and starts the model worker thread with `backend`.
    pub async fn bind(cfg: ServerConfig, backend: Box<dyn Backend>) -> Result<Self, ServerError> {
        cfg.validate().map_err(ServerError::Config)?;
        let listener = tokio::net::TcpListener::bind(cfg.addr)
            .await
            .map_err(|source| ServerError::Bind {
                addr: cfg.addr,
                source,
            })?;
        let addr = listener.local_addr()?;
        let caps = backend.capabilities();
        let metrics = Arc::new(Metrics::new(cfg.batching.queue_capacity));
        let (queue, worker) = spawn_worker(backend, cfg.batching.clone(), metrics.clone())?;
        let openapi = crate::openapi::document(&cfg, &caps);
        let connections = Listener::new(
            cfg.connections.clone(),
            cfg.request_timeout,
            metrics.clone(),
        );
        let deadline = connections.body_deadline();
        let state = Arc::new(AppState {
            queue,
            caps,
            budget: DecodeBudget::new(cfg.limits.max_decoded_bytes, metrics.clone()),
            cfg,
            metrics,
            openapi,
        });
        let router = router(state, deadline);
        let (tx, _) = watch::channel(false);
        Ok(Self {
            listener,
            router,
            connections,
            worker,
            shutdown: ShutdownHandle(Arc::new(tx)),
            addr,
        })
    }

    /// The bound address (the real port when the configured one was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Serves until the shutdown handle fires; then finishes in-flight requests (connections
    /// without one are dropped after the shutdown grace period, see [`crate::listener`]) and the
    /// queue, and joins the worker thread.
    pub async fn serve(self) -> Result<(), ServerError> {
        let rx = self.shutdown.0.subscribe();
        self.connections
            .serve(self.listener, self.router, ShutdownHandle::wait(rx))
            .await;
        // The router (and with it the queue's sender) is gone: the worker drains and exits.
        let worker = self.worker;
        tokio::task::spawn_blocking(move || worker.join())
            .await
            .map_err(|_| ServerError::WorkerPanicked)?
            .map_err(|_| ServerError::WorkerPanicked)?;
        tracing::info!("server stopped");
        Ok(())
    }
}

/// Runs a server on a new tokio runtime until SIGINT or SIGTERM (or `on_ready`'s handle fires).
/// `on_ready` gets the bound address and a shutdown handle once the server accepts connections.
pub fn run_blocking(
    cfg: ServerConfig,
    backend: Box<dyn Backend>,
    on_ready: impl FnOnce(SocketAddr, ShutdownHandle),
) -> Result<(), ServerError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("lion-http")
        .build()?;
    rt.block_on(async move {
        let server = Server::bind(cfg, backend).await?;
        let handle = server.shutdown_handle();
        let on_signal = handle.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutting down: no new connections, finishing requests in flight");
            on_signal.shutdown();
        });
        on_ready(server.local_addr(), handle);
        server.serve().await
    })
}

/// Resolves on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

fn router(state: Shared, deadline: BodyDeadline) -> Router {
    let limit = state.cfg.limits.max_body_bytes;
    Router::new()
        .route("/v1/embed", post(embed))
        .route("/v1/caption", post(caption))
        .route("/v1/vqa", post(vqa))
        .route("/v1/ground", post(ground))
        .route("/v1/tags", post(tags))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route(
            "/v1/chat/completions",
            post(crate::openai::chat).fallback(crate::openai::method_not_allowed),
        )
        .route(
            "/v1/models",
            get(crate::openai::models).fallback(crate::openai::method_not_allowed),
        )
        .route("/", get(crate::playground::page))
        .route("/playground/{file}", get(crate::playground::asset))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(deadline, body_deadline))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// Decrements the in-flight gauge even when the client goes away mid-request.
struct InFlight<'a>(&'a Metrics);
impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

async fn track(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let t0 = Instant::now();
    s.metrics.request_started();
    let _guard = InFlight(&s.metrics);
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    s.metrics.request_done(&endpoint, status, t0.elapsed());
    // 501 (no model for this endpoint) is the server's configuration, not a failure.
    if status >= 500 && status != 501 {
        tracing::warn!(endpoint, status, "request failed");
    } else {
        tracing::debug!(endpoint, status, "request done");
    }
    resp
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        ErrorType::NotFound,
        format!(
            "no such endpoint: {} {} (see GET /openapi.json)",
            req.method(),
            req.uri().path()
        ),
    )
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        ErrorType::MethodNotAllowed,
        format!(
            "{} is not allowed on {} (see GET /openapi.json)",
            req.method(),
            req.uri().path()
        ),
    )
}

async fn health(State(s): State<Shared>) -> Response {
    let alive = s.queue.worker_alive();
    let tasks: Map<String, Value> = TaskKind::ALL
        .iter()
        .map(|k| (k.name().to_string(), Value::Bool(s.caps.supports(*k))))
        .collect();
    let body = json!({
        "status": if alive { "ok" } else { "unhealthy" },
        "tasks": tasks,
        "queue": {
            "depth": s.metrics.queue_depth(),
            "capacity": s.metrics.queue_capacity(),
        },
        "version": env!("CARGO_PKG_VERSION"),
    });
    let status = if alive {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, &body)
}

async fn metrics(State(s): State<Shared>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

async fn openapi(State(s): State<Shared>) -> Response {
    json_response(StatusCode::OK, &s.openapi)
}

pub(crate) fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

pub(crate) fn is_json(ct: &str) -> bool {
    let essence = ct.split(';').next().unwrap_or("").trim();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// 413 at once for a declared `Content-Length` over the body limit, without waiting for the
/// bytes (they would only be read up to the limit, or until the body deadline).
fn check_declared_length(req: &Request, limit: usize) -> Result<(), ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n > limit as u64 => Err(ApiError::too_large(format!(
            "request body is larger than the limit of {limit} bytes (Content-Length: {n})"
        ))),
        _ => Ok(()),
    }
}

/// The whole body, within the body limit (413 beyond it).
pub(crate) async fn body_bytes(req: Request, limit: usize) -> Result<Bytes, ApiError> {
    check_declared_length(&req, limit)?;
    Bytes::from_request(req, &()).await.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(format!(
                "request body is larger than the limit of {limit} bytes"
            ))
        } else {
            ApiError::bad_request(format!("cannot read the request body: {}", rej.body_text()))
        }
    })
}

fn multipart_error(e: axum::extract::multipart::MultipartError, limit: usize) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(format!(
            "request body is larger than the limit of {limit} bytes"
        ))
    } else {
        ApiError::bad_request(format!("invalid multipart body: {}", e.body_text()))
    }
}

/// An image request's typed fields and its still-encoded image, from JSON (base64 `image`) or
/// multipart/form-data (file part `image`, text parts for the other fields).
async fn image_request<T: DeserializeOwned>(
    s: &AppState,
    req: Request,
) -> Result<(T, Vec<u8>), ApiError> {
    let limit = s.cfg.limits.max_body_bytes;
    let ct = content_type(req.headers());
    if ct.starts_with("multipart/form-data") {
        check_declared_length(&req, limit)?;
        let mut mp = Multipart::from_request(req, &()).await.map_err(|rej| {
            ApiError::bad_request(format!("invalid multipart body: {}", rej.body_text()))
        })?;
        let mut image: Option<Vec<u8>> = None;
        let mut fields = Map::new();
        while let Some(field) = mp
            .next_field()
            .await
            .map_err(|e| multipart_error(e, limit))?
        {
            let name = field.name().unwrap_or("").to_string();
            if name.is_empty() {
                return Err(ApiError::validation("a multipart part has no field name"));
            }
            if name == "image" {
                if image.is_some() {
                    return Err(ApiError::validation("field `image` is given twice"));
                }
                let bytes = field.bytes().await.map_err(|e| multipart_error(e, limit))?;
                image = Some(bytes.to_vec());
            } else {
                let text = field.text().await.map_err(|e| multipart_error(e, limit))?;
                if fields.contains_key(&name) {
                    return Err(ApiError::validation(format!(
                        "field `{name}` is given twice"
                    )));
                }
                let v = input::multipart_value(&name, &text)?;
                fields.insert(name, v);
            }
        }
        let body = input::typed::<T>(fields)?;
        let image = image.ok_or_else(|| {
            ApiError::validation("missing field `image` (a file part named `image`)")
        })?;
        Ok((body, image))
    } else if is_json(&ct) {
        let bytes = body_bytes(req, limit).await?;
        let mut map = input::json_object(&bytes)?;
        let image = map.remove("image");
        let body = input::typed::<T>(map)?;
        let mut m = Map::new();
        if let Some(v) = image {
            m.insert("image".into(), v);
        }
        Ok((body, input::take_base64_image(&mut m)?))
    } else {
        Err(unsupported_media_type(&ct, true))
    }
}

fn unsupported_media_type(ct: &str, images: bool) -> ApiError {
    let got = if ct.is_empty() {
        "no Content-Type".to_string()
    } else {
        format!("Content-Type {ct:?}")
    };
    let want = if images {
        "application/json (image as base64) or multipart/form-data (image as a file part)"
    } else {
        "application/json"
    };
    ApiError::new(
        ErrorType::UnsupportedMediaType,
        format!("expected {want}, got {got}"),
    )
}

/// A decoded image and its share of the decoded-image budget, held until the job leaves the
/// model queue.
pub(crate) struct Decoded {
    pub(crate) image: RgbImage,
    pub(crate) hold: Reservation,
}

/// Decodes the image off the async threads: the pixel limit and the decoded-image budget are
/// checked from the header first; the reservation shrinks to the RGB image once decoded.
pub(crate) async fn decode(s: &AppState, bytes: Vec<u8>) -> Result<Decoded, ApiError> {
    let header = input::probe_image(&bytes, s.cfg.limits.max_image_pixels)?;
    let what = format!("image: {}x{}", header.width, header.height);
    let mut hold = s.budget.reserve(header.decode_bytes(), &what)?;
    let image = tokio::task::spawn_blocking(move || input::decode_probed(&bytes, &header))
        .await
        .map_err(|e| ApiError::new(ErrorType::Backend, format!("image decoding failed: {e}")))??;
    hold.shrink_to(header.rgb_bytes());
    Ok(Decoded { image, hold })
}

impl AppState {
    /// Capability check, then queue, then wait for the worker's answer until `deadline`.
    /// `hold` (the image's decoded-bytes reservation) goes with the job and is released when the
    /// worker is done with it.
    pub(crate) async fn submit<T>(
        &self,
        kind: TaskKind,
        deadline: Instant,
        hold: Option<Reservation>,
        make: impl FnOnce(oneshot::Sender<BackendResult<T>>) -> Job,
    ) -> Result<T, ApiError> {
        if !self.caps.supports(kind) {
            return Err(crate::backend::BackendError::NotLoaded { kind }.into());
        }
        let (tx, rx) = oneshot::channel();
        self.queue
            .try_push_holding(make(tx), hold)
            .map_err(|e| match e {
                EnqueueError::Full { capacity } => ApiError::new(
                    ErrorType::Overloaded,
                    format!("the model queue is full ({capacity} requests waiting); retry later"),
                ),
                EnqueueError::Closed => {
                    ApiError::new(ErrorType::Unavailable, "the model worker has stopped")
                }
            })?;
        match tokio::time::timeout_at(deadline.into(), rx).await {
            Err(_) => Err(ApiError::new(
                ErrorType::Timeout,
                format!(
                    "the request took longer than the server's timeout of {} ms",
                    self.cfg.request_timeout.as_millis()
                ),
            )),
            Ok(Err(_)) => Err(ApiError::new(
                ErrorType::Unavailable,
                "the model worker stopped before answering",
            )),
            Ok(Ok(r)) => r.map_err(ApiError::from),
        }
    }

    pub(crate) fn deadline(&self) -> Instant {
        Instant::now() + self.cfg.request_timeout
    }
}

fn ok(value: &impl serde::Serialize) -> Response {
    json_response(StatusCode::OK, value)
}

fn respond<T: serde::Serialize>(r: Result<T, ApiError>) -> Response {
    match r {
        Ok(v) => ok(&v),
        Err(e) => e.into_response(),
    }
}

async fn embed(State(s): State<Shared>, req: Request) -> Response {
    respond(embed_inner(&s, req).await)
}

async fn embed_inner(s: &AppState, req: Request) -> Result<Vec<Vec<f32>>, ApiError> {
    let deadline = s.deadline();
    let ct = content_type(req.headers());
    if !is_json(&ct) {
        return Err(unsupported_media_type(&ct, false));
    }
    let bytes = body_bytes(req, s.cfg.limits.max_body_bytes).await?;
    let body: EmbedBody = input::typed(input::json_object(&bytes)?)?;
    let texts = input::check_inputs(body.inputs, &s.cfg.limits)?;
    s.submit(TaskKind::Embed, deadline, None, |reply| Job::Embed {
        texts,
        reply,
    })
    .await
}

async fn caption(State(s): State<Shared>, req: Request) -> Response {
    respond(
        async {
            let deadline = s.deadline();
            let (b, img): (CaptionBody, _) = image_request(&s, req).await?;
            let prompt = input::check_text("prompt", b.prompt.clone(), false, &s.cfg.limits)?;
            let options = input::generation_options(TaskKind::Caption, &b, &s.cfg.limits)?;
            let tags = input::check_tags(b.tags, &s.cfg.limits)?;
            let Decoded { image, hold } = decode(&s, img).await?;
            let req = CaptionRequest {
                image,
                prompt,
                tags,
                options,
                stream: None,
            };
            s.submit(TaskKind::Caption, deadline, Some(hold), |reply| {
                Job::Caption { req, reply }
            })
            .await
        }
        .await,
    )
}

async fn vqa(State(s): State<Shared>, req: Request) -> Response {
    respond(
        async {
            let deadline = s.deadline();
            let (b, img): (VqaBody, _) = image_request(&s, req).await?;
            let question =
                input::check_text("question", Some(b.question.clone()), true, &s.cfg.limits)?
                    .unwrap_or_default();
            let options = input::generation_options(TaskKind::Vqa, &b, &s.cfg.limits)?;
            let tags = input::check_tags(b.tags, &s.cfg.limits)?;
            let Decoded { image, hold } = decode(&s, img).await?;
            let req = VqaRequest {
                image,
                question,
                tags,
                options,
                stream: None,
            };
            s.submit(TaskKind::Vqa, deadline, Some(hold), |reply| Job::Vqa {
                req,
                reply,
            })
            .await
        }
        .await,
    )
}

async fn ground(State(s): State<Shared>, req: Request) -> Response {
    respond(
        async {
            let deadline = s.deadline();
            let (b, img): (GroundBody, _) = image_request(&s, req).await?;
            let expression = input::check_text(
                "expression",
                Some(b.expression.clone()),
                true,
                &s.cfg.limits,
            )?
            .unwrap_or_default();
            let options = input::generation_options(TaskKind::Ground, &b, &s.cfg.limits)?;
            let tags = input::check_tags(b.tags, &s.cfg.limits)?;
            let Decoded { image, hold } = decode(&s, img).await?;
            let req = GroundRequest {
                image,
                expression,
                tags,
                options,
                stream: None,
            };
            s.submit(TaskKind::Ground, deadline, Some(hold), |reply| {
                Job::Ground { req, reply }
            })
            .await
        }
        .await,
    )
}

async fn tags(State(s): State<Shared>, req: Request) -> Response {
    respond(
        async {
            let deadline = s.deadline();
            let (b, img): (TagsBody, _) = image_request(&s, req).await?;
            if let Some(t) = b.threshold {
                if !(t > 0.0 && t < 1.0) {
                    return Err(ApiError::validation(format!(
                        "field `threshold` must be between 0 and 1 (exclusive), got {t}"
                    )));
                }
            }
            if b.max_tags == Some(0) {
                return Err(ApiError::validation("field `max_tags` must be at least 1"));
            }
            let Decoded { image, hold } = decode(&s, img).await?;
            let req = TagsRequest {
                image,
                threshold: b.threshold,
                max_tags: b.max_tags,
            };
            s.submit(TaskKind::Tags, deadline, Some(hold), |reply| Job::Tags {
                req,
                reply,
            })
            .await
        }
        .await,
    )
}
