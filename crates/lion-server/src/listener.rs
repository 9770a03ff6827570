//! The accept loop and the life of a connection, made to survive slow and stalled clients:
//!
//! - header timeout: a connection that does not send a complete request header within
//!   `header_timeout` (a new one, or an idle keep-alive one) is closed (hyper's
//!   `header_read_timeout`);
//! - body deadline: a request whose body has not arrived `body_timeout` after its header
//!   (never later than the request timeout) is answered 408 and its connection closed
//!   ([`body_deadline`], an axum middleware);
//! - connection cap: at `max_connections` a new connection replaces the oldest one with no
//!   request in progress (first those that never completed a request: stalled, still sending
//!   their header; then idle keep-alive ones), so stalled clients cannot lock others out; when
//!   every connection has a request in progress the new one gets a bare 503 and is closed;
//! - shutdown: stop accepting, let connections finish the request in progress and close; after
//!   `shutdown_grace`, drop those with no request in progress (a client holding a partial request
//!   cannot hold the server); requests in progress end within the request timeout, after which
//!   whatever is left is dropped;
//! - a panic in a request handler becomes a 500 answer instead of a closed connection.
//!
//! Every event is counted in `/metrics` (`lion_connection_events_total{event}`) and logged
//! (warnings at most once a second per kind, with the count since the last one).

use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use crate::config::ConnectionConfig;
use crate::error::{ApiError, ErrorType};
use crate::metrics::{ConnEvent, Metrics};

/// Connection-level settings and shared state of one server.
pub(crate) struct Listener {
    cfg: ConnectionConfig,
    request_timeout: Duration,
    metrics: Arc<Metrics>,
    log: Arc<EventLog>,
    phase: watch::Sender<Phase>,
}

/// Warns about connection events at most once a second per kind, with the number of events
/// since the last warning, so a flood of stalled clients cannot flood the log.
#[derive(Default)]
pub(crate) struct EventLog {
    last: Mutex<[Option<Instant>; 8]>,
    since: [AtomicU64; 8],
}

impl EventLog {
    pub fn warn(&self, event: ConnEvent, msg: impl FnOnce() -> String) {
        let i = event as usize;
        let n = self.since[i].fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if last[i].is_none_or(|t| now - t >= Duration::from_secs(1)) {
            last[i] = Some(now);
            self.since[i].store(0, Ordering::Relaxed);
            drop(last);
            let msg = msg();
            tracing::warn!(event = event.name(), count = n, "{msg}");
        }
    }
}

/// What the server is doing, as seen by every connection task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serving,
    /// Shutdown: finish the request in progress, then close.
    Draining,
    /// The grace period is over: connections with no request in progress are dropped, request
    /// bodies still arriving are cut short (408).
    DropIdle,
}

/// One open connection as the registry sees it.
struct ConnShared {
    /// Requests of this connection being handled (0 or 1 for HTTP/1.1).
    busy: AtomicUsize,
    /// Requests handled so far.
    served: AtomicUsize,
    evict: Notify,
}

/// Open connections in order of arrival, for the cap.
#[derive(Default)]
struct Registry {
    next: u64,
    open: BTreeMap<u64, Arc<ConnShared>>,
}

impl Registry {
    /// Makes room for one more connection: at the cap, evicts the oldest connection that has
    /// not completed a request yet and has none in progress (stalled, or still sending its
    /// first header), else the oldest idle keep-alive connection. `None` when every connection
    /// has a request in progress.
    fn admit(&mut self, max: usize) -> Option<(u64, Arc<ConnShared>, bool)> {
        let mut evicted = false;
        if self.open.len() >= max {
            let idle = |c: &ConnShared| c.busy.load(Ordering::SeqCst) == 0;
            let (&id, _) = self
                .open
                .iter()
                .find(|(_, c)| idle(c) && c.served.load(Ordering::SeqCst) == 0)
                .or_else(|| self.open.iter().find(|(_, c)| idle(c)))?;
            if let Some(old) = self.open.remove(&id) {
                old.evict.notify_one();
            }
            evicted = true;
        }
        let id = self.next;
        self.next += 1;
        let c = Arc::new(ConnShared {
            busy: AtomicUsize::new(0),
            served: AtomicUsize::new(0),
            evict: Notify::new(),
        });
        self.open.insert(id, c.clone());
        Some((id, c, evicted))
    }
}

/// Counts a request as in progress on its connection while it lives.
struct Busy(Arc<ConnShared>);

impl Busy {
    fn new(c: Arc<ConnShared>) -> Self {
        c.busy.fetch_add(1, Ordering::SeqCst);
        Busy(c)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
        self.0.served.fetch_add(1, Ordering::SeqCst);
    }
}

/// A future that turns a panic while polling into `Err(payload)`.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let f = self.0.as_mut();
        match catch_unwind(AssertUnwindSafe(|| f.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(p) => Poll::Ready(Err(p)),
        }
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(p: &(dyn Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Minimal answer to a connection refused at the cap (no request has been read).
fn refusal(max: usize) -> Vec<u8> {
    let body = serde_json::to_vec(&ApiError::new(
        ErrorType::Unavailable,
        format!("the server has {max} open connections, each with a request in progress (--max-connections); retry later"),
    ))
    .unwrap_or_default();
    let mut out = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

/// Refusals being written at once at most; beyond it a refused connection is just closed.
const MAX_REFUSALS_IN_FLIGHT: usize = 64;

impl Listener {
    pub fn new(cfg: ConnectionConfig, request_timeout: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            cfg,
            request_timeout,
            metrics,
            log: Arc::new(EventLog::default()),
            phase: watch::channel(Phase::Serving).0,
        }
    }

    /// The state of the [`body_deadline`] middleware of this server's router: the body timeout
    /// (at most the request timeout), and the end of the shutdown grace period.
    pub fn body_deadline(&self) -> BodyDeadline {
        BodyDeadline {
            timeout: self.cfg.body_timeout.min(self.request_timeout),
            grace_over: self.phase.subscribe(),
            metrics: self.metrics.clone(),
            log: self.log.clone(),
        }
    }

    /// Serves `router` on `listener` until `shutdown` resolves, then drains as described in the
    /// module documentation. Returns once every connection task has ended.
    pub async fn serve(
        self,
        listener: TcpListener,
        router: Router,
        shutdown: impl Future<Output = ()>,
    ) {
        let this = Arc::new(self);
        let registry = Arc::new(Mutex::new(Registry::default()));
        let phase_tx = &this.phase;
        let phase_rx = phase_tx.subscribe();
        let mut tasks = JoinSet::new();
        let refusing = Arc::new(AtomicUsize::new(0));
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(this.cfg.header_timeout)
            .keep_alive(true);
        let svc = TowerToHyperService::new(router);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of file descriptors and the like: back off, keep serving.
                            tracing::warn!("accept failed: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let admitted = registry
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .admit(this.cfg.max_connections);
                    let Some((id, shared, evicted)) = admitted else {
                        this.refuse(stream, peer, &refusing);
                        continue;
                    };
                    if evicted {
                        this.metrics.connection_event(ConnEvent::Evicted);
                        this.log.warn(ConnEvent::Evicted, || format!(
                            "connection cap ({}) reached: closed the oldest connection without a request in progress to admit {peer}",
                            this.cfg.max_connections
                        ));
                    }
                    this.metrics.connection_event(ConnEvent::Accepted);
                    this.metrics.connection_opened();
                    let conn = this.clone().connection(
                        stream, peer, shared, builder.clone(), svc.clone(), phase_rx.clone(),
                    );
                    let registry = registry.clone();
                    let metrics = this.metrics.clone();
                    tasks.spawn(async move {
                        conn.await;
                        registry.lock().unwrap_or_else(|p| p.into_inner()).open.remove(&id);
                        metrics.connection_closed();
                    });
                }
            }
        }
        drop(listener);
        let open = tasks.len();
        tracing::info!(
            open,
            "shutdown: no new connections; finishing the requests in progress"
        );
        phase_tx.send_replace(Phase::Draining);
        let grace = this.cfg.shutdown_grace;
        if !drain(&mut tasks, grace).await {
            phase_tx.send_replace(Phase::DropIdle);
            tracing::info!(
                open = tasks.len(),
                "shutdown grace period ({} ms) over: dropping connections without a request in progress",
                grace.as_millis()
            );
            // Requests in progress end within the request timeout (body deadline, 504).
            let rest = this.request_timeout + Duration::from_secs(1);
            if !drain(&mut tasks, rest).await {
                let n = tasks.len();
                tracing::warn!(
                    open = n,
                    "connections still open {} ms after the grace period: dropped",
                    rest.as_millis()
                );
                for _ in 0..n {
                    this.metrics.connection_event(ConnEvent::DroppedAtShutdown);
                }
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
            }
        }
    }

    /// Answers a connection over the cap with a bare 503, off the accept loop.
    fn refuse(&self, stream: TcpStream, peer: SocketAddr, refusing: &Arc<AtomicUsize>) {
        let max = self.cfg.max_connections;
        self.metrics.connection_event(ConnEvent::Refused);
        self.log.warn(ConnEvent::Refused, || {
            format!("connection cap ({max}) reached with every connection busy: refused {peer} with 503")
        });
        if refusing.fetch_add(1, Ordering::SeqCst) >= MAX_REFUSALS_IN_FLIGHT {
            refusing.fetch_sub(1, Ordering::SeqCst);
            return; // dropped: closed without an answer
        }
        let refusing = refusing.clone();
        let answer = move || -> std::io::Result<()> {
            use std::io::{Read, Write};
            let mut s = stream.into_std()?;
            s.set_nonblocking(false)?;
            s.set_write_timeout(Some(Duration::from_secs(1)))?;
            s.set_read_timeout(Some(Duration::from_millis(500)))?;
            s.write_all(&refusal(max))?;
            s.shutdown(std::net::Shutdown::Write)?;
            // Read what the client sent so that closing does not reset the connection before
            // it has read the answer.
            let mut buf = [0u8; 4096];
            let t0 = Instant::now();
            while s.read(&mut buf)? > 0 && t0.elapsed() < Duration::from_secs(1) {}
            Ok(())
        };
        tokio::task::spawn_blocking(move || {
            let _ = answer();
            refusing.fetch_sub(1, Ordering::SeqCst);
        });
    }

    /// One connection from accept to close.
    fn connection(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        shared: Arc<ConnShared>,
        builder: hyper::server::conn::http1::Builder,
        router: TowerToHyperService<Router>,
        mut phase: watch::Receiver<Phase>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let conn_shared = shared.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let busy = Busy::new(conn_shared.clone());
            let fut = hyper::service::Service::call(&router, req.map(Body::new));
            async move {
                let out = CatchUnwind(Box::pin(fut)).await;
                drop(busy);
                match out {
                    Ok(r) => r,
                    Err(p) => {
                        let msg = panic_message(p.as_ref());
                        tracing::error!("request handler panicked: {msg}");
                        Ok(ApiError::new(
                            ErrorType::Backend,
                            format!("internal error: the request handler panicked: {msg}"),
                        )
                        .into_response())
                    }
                }
            }
        });
        async move {
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let mut closing = false;
            // A connection accepted while shutting down starts draining at once.
            let mut start = *phase.borrow_and_update() != Phase::Serving;
            loop {
                if start {
                    start = false;
                    let now = *phase.borrow();
                    if now == Phase::DropIdle && shared.busy.load(Ordering::SeqCst) == 0 {
                        self.metrics.connection_event(ConnEvent::DroppedAtShutdown);
                        tracing::debug!(%peer, "shutdown: dropped a connection without a request in progress");
                        return;
                    }
                    if now != Phase::Serving && !closing {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            self.closed_with_error(&e, peer, &shared);
                        }
                        return;
                    }
                    _ = shared.evict.notified() => {
                        if shared.busy.load(Ordering::SeqCst) == 0 {
                            tracing::debug!(%peer, "evicted at the connection cap");
                            return;
                        }
                        // A request arrived since it was chosen: answer it, then close.
                        if !closing {
                            closing = true;
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                    changed = phase.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        start = true;
                    }
                }
            }
        }
    }

    fn closed_with_error(&self, e: &hyper::Error, peer: SocketAddr, shared: &ConnShared) {
        if e.is_timeout() {
            let served = shared.served.load(Ordering::SeqCst);
            let ms = self.cfg.header_timeout.as_millis();
            if served == 0 {
                self.metrics.connection_event(ConnEvent::HeaderTimeout);
                self.log.warn(ConnEvent::HeaderTimeout, || {
                    format!("closed a connection from {peer}: no complete request header within {ms} ms (--header-timeout-ms)")
                });
            } else {
                // Idle keep-alive connections end this way too.
                self.metrics.connection_event(ConnEvent::IdleTimeout);
                tracing::debug!(%peer, served, "closed a keep-alive connection: no new request header within {ms} ms");
            }
        } else {
            tracing::debug!(%peer, "connection closed with an error: {e}");
        }
    }
}

/// Waits up to `limit` for every task to end; `true` if they all did.
async fn drain(tasks: &mut JoinSet<()>, limit: Duration) -> bool {
    let all = async { while tasks.join_next().await.is_some() {} };
    tokio::time::timeout(limit, all).await.is_ok()
}

/// State of the [`body_deadline`] middleware ([`Listener::body_deadline`]).
#[derive(Clone)]
pub(crate) struct BodyDeadline {
    timeout: Duration,
    grace_over: watch::Receiver<Phase>,
    metrics: Arc<Metrics>,
    log: Arc<EventLog>,
}

/// Why a request body was cut short.
const CUT_DEADLINE: u8 = 1;
const CUT_SHUTDOWN: u8 = 2;

/// Gives every request body a deadline `timeout` after the request header arrived (and cuts it
/// when the shutdown grace period ends); a handler still waiting for body bytes then gets a read
/// error, and the answer becomes 408 with `Connection: close` whatever the handler made of it.
pub(crate) async fn body_deadline(
    State(d): State<BodyDeadline>,
    req: Request,
    next: Next,
) -> Response {
    let cut = Arc::new(AtomicU8::new(0));
    let sleep = Box::pin(tokio::time::sleep(d.timeout));
    let mut phase = d.grace_over.clone();
    let grace_over = Box::pin(async move {
        if phase.wait_for(|p| *p == Phase::DropIdle).await.is_err() {
            std::future::pending::<()>().await;
        }
    });
    let flag = cut.clone();
    let req = req.map(move |inner| {
        Body::new(DeadlineBody {
            inner,
            sleep,
            grace_over,
            cut: flag,
        })
    });
    let resp = next.run(req).await;
    let ms = d.timeout.as_millis();
    let msg = match cut.load(Ordering::SeqCst) {
        0 => return resp,
        CUT_DEADLINE => {
            format!("the request body did not arrive within {ms} ms (the server's body timeout)")
        }
        _ => "the server is shutting down and the request body had not arrived by the end of its grace period".to_string(),
    };
    d.metrics.connection_event(ConnEvent::BodyTimeout);
    d.log.warn(ConnEvent::BodyTimeout, || {
        format!("request body cut short, answered 408 and closed the connection: {msg}")
    });
    let mut resp = ApiError::new(ErrorType::RequestTimeout, msg).into_response();
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// A request body that fails once its deadline has passed (or the shutdown grace period is
/// over) while it waits for data.
struct DeadlineBody {
    inner: Body,
    sleep: Pin<Box<tokio::time::Sleep>>,
    grace_over: Pin<Box<dyn Future<Output = ()> + Send>>,
    cut: Arc<AtomicU8>,
}

#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
struct BodyTimedOut;

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending => {
                let why = if self.sleep.as_mut().poll(cx).is_ready() {
                    CUT_DEADLINE
                } else if self.grace_over.as_mut().poll(cx).is_ready() {
                    CUT_SHUTDOWN
                } else {
                    return Poll::Pending;
                };
                self.cut.store(why, Ordering::SeqCst);
                Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut))))
            }
            ready => ready,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_evicts_the_oldest_idle_connection_and_refuses_when_all_are_busy() {
        let mut r = Registry::default();
        let (a, ca, _) = r.admit(2).unwrap();
        let (b, _, _) = r.admit(2).unwrap();
        let _busy_a = Busy::new(ca.clone());
        // a is busy: b (idle) makes room.
        let (c, _cc, evicted) = r.admit(2).unwrap();
        assert!(evicted);
        assert!(r.open.contains_key(&a) && r.open.contains_key(&c));
        assert!(!r.open.contains_key(&b));
        let _busy_c = Busy::new(r.open[&c].clone());
        assert!(r.admit(2).is_none(), "every connection busy: refused");
        assert_eq!(r.open.len(), 2);
    }

    #[test]
    fn the_cap_evicts_connections_that_never_sent_a_request_before_idle_keep_alive_ones() {
        let mut r = Registry::default();
        let (a, ca, _) = r.admit(2).unwrap();
        drop(Busy::new(ca)); // a served one request and is idle now
        let (b, _, _) = r.admit(2).unwrap(); // b has sent nothing yet
        let (c, _, evicted) = r.admit(2).unwrap();
        assert!(evicted);
        assert!(r.open.contains_key(&a) && !r.open.contains_key(&b));
        // Only idle keep-alive connections or busy ones left: the oldest idle one goes.
        let _busy_c = Busy::new(r.open[&c].clone());
        r.open[&c].served.store(1, Ordering::SeqCst);
        let (_, _, evicted) = r.admit(2).unwrap();
        assert!(evicted && !r.open.contains_key(&a) && r.open.contains_key(&c));
    }

    #[test]
    fn event_log_counts_every_event() {
        let log = EventLog::default();
        let mut shown = 0;
        for _ in 0..5 {
            log.warn(ConnEvent::Refused, || {
                shown += 1;
                String::new()
            });
        }
        assert_eq!(shown, 1, "one warning a second");
        assert_eq!(
            log.since[ConnEvent::Refused as usize].load(Ordering::Relaxed),
            4
        );
    }
}
