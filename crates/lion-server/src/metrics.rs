//! Prometheus metrics, written in the text exposition format (version 0.0.4) by hand.
//!
//! - `lion_requests_total{endpoint,status}` counter
//! - `lion_request_duration_seconds{endpoint}` histogram
//! - `lion_requests_in_flight` gauge
//! - `lion_queue_depth`, `lion_queue_capacity` gauges
//! - `lion_batch_size{task}` histogram (items per batch run by the model)
//! - `lion_inference_duration_seconds{task}` histogram (time in the model per batch)
//! - `lion_connections_open` gauge, `lion_connection_events_total{event}` counter (accepted,
//!   refused at the cap, evicted at the cap, header timeout, keep-alive idle timeout, body
//!   timeout, dropped at shutdown)
//! - `lion_decoded_bytes` gauge (decoded-image budget in use),
//!   `lion_decoded_budget_rejections_total` counter

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Latency buckets, seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Batch-size buckets, items.
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// A cumulative histogram with fixed upper bounds.
#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    /// counts[i]: observations <= bounds[i] and > bounds[i-1] (made cumulative when written)
    counts: Vec<u64>,
    count: u64,
    sum: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            count: 0,
            sum: 0.0,
        }
    }

    fn observe(&mut self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i] += 1;
        }
        self.count += 1;
        self.sum += v;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cum = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cum += c;
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cum}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

#[derive(Default)]
struct Tables {
    requests: BTreeMap<(String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    batch_size: BTreeMap<&'static str, Histogram>,
    inference: BTreeMap<&'static str, Histogram>,
}

/// What happened to a connection, counted in `lion_connection_events_total{event}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnEvent {
    Accepted,
    /// At the connection cap with every connection busy: a bare 503 and close.
    Refused,
    /// At the connection cap: closed (no request in progress) to make room for a new one.
    Evicted,
    /// No complete request header within the header timeout.
    HeaderTimeout,
    /// A keep-alive connection sent no new request within the header timeout.
    IdleTimeout,
    /// The request body did not arrive within the body timeout (408).
    BodyTimeout,
    /// Still open (no request in progress) when the shutdown grace period ended.
    DroppedAtShutdown,
}

impl ConnEvent {
    const ALL: [ConnEvent; 7] = [
        ConnEvent::Accepted,
        ConnEvent::Refused,
        ConnEvent::Evicted,
        ConnEvent::HeaderTimeout,
        ConnEvent::IdleTimeout,
        ConnEvent::BodyTimeout,
        ConnEvent::DroppedAtShutdown,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ConnEvent::Accepted => "accepted",
            ConnEvent::Refused => "refused",
            ConnEvent::Evicted => "evicted",
            ConnEvent::HeaderTimeout => "header_timeout",
            ConnEvent::IdleTimeout => "idle_timeout",
            ConnEvent::BodyTimeout => "body_timeout",
            ConnEvent::DroppedAtShutdown => "dropped_at_shutdown",
        }
    }
}

/// The server's metrics; shared by the HTTP layer and the worker thread.
#[derive(Default)]
pub struct Metrics {
    tables: Mutex<Tables>,
    in_flight: AtomicI64,
    queue_depth: AtomicI64,
    queue_capacity: AtomicUsize,
    connections_open: AtomicI64,
    conn_events: [AtomicU64; 7],
    decoded_bytes: AtomicU64,
    decode_budget_rejections: AtomicU64,
}

/// Escapes a label value (backslash, quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    pub fn new(queue_capacity: usize) -> Self {
        let m = Self::default();
        m.queue_capacity.store(queue_capacity, Ordering::Relaxed);
        m
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        // A panic while holding the lock leaves plain counters behind: still usable.
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One finished HTTP request.
    pub fn request_done(&self, endpoint: &str, status: u16, elapsed: Duration) {
        let mut t = self.tables();
        *t.requests
            .entry((endpoint.to_string(), status))
            .or_default() += 1;
        t.latency
            .entry(endpoint.to_string())
            .or_insert_with(|| Histogram::new(&LATENCY_BUCKETS))
            .observe(elapsed.as_secs_f64());
    }

    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub fn request_finished(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn enqueued(&self) {
        self.queue_depth.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dequeued(&self) {
        self.queue_depth.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn queue_depth(&self) -> i64 {
        self.queue_depth.load(Ordering::Relaxed)
    }

    pub fn queue_capacity(&self) -> usize {
        self.queue_capacity.load(Ordering::Relaxed)
    }

    pub fn connection_opened(&self) {
        self.connections_open.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn connections_open(&self) -> i64 {
        self.connections_open.load(Ordering::Relaxed)
    }

    pub fn connection_event(&self, e: ConnEvent) {
        self.conn_events[e as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_events(&self, e: ConnEvent) -> u64 {
        self.conn_events[e as usize].load(Ordering::Relaxed)
    }

    pub fn set_decoded_bytes(&self, bytes: u64) {
        self.decoded_bytes.store(bytes, Ordering::Relaxed);
    }

    pub fn decode_budget_rejected(&self) {
        self.decode_budget_rejections
            .fetch_add(1, Ordering::Relaxed);
    }

    /// One batch run by the model: `items` inputs in `elapsed`.
    pub fn batch_done(&self, task: &'static str, items: usize, elapsed: Duration) {
        let mut t = self.tables();
        t.batch_size
            .entry(task)
            .or_insert_with(|| Histogram::new(&BATCH_BUCKETS))
            .observe(items as f64);
        t.inference
            .entry(task)
            .or_insert_with(|| Histogram::new(&LATENCY_BUCKETS))
            .observe(elapsed.as_secs_f64());
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let t = self.tables();
        let mut out = String::new();
        out.push_str("# HELP lion_requests_total HTTP requests by endpoint and status code.\n");
        out.push_str("# TYPE lion_requests_total counter\n");
        for ((ep, status), n) in &t.requests {
            let _ = writeln!(
                out,
                "lion_requests_total{{endpoint=\"{}\",status=\"{status}\"}} {n}",
                escape(ep)
            );
        }
        out.push_str(
            "# HELP lion_request_duration_seconds Time from request arrival to response.\n",
        );
        out.push_str("# TYPE lion_request_duration_seconds histogram\n");
        for (ep, h) in &t.latency {
            h.write(
                &mut out,
                "lion_request_duration_seconds",
                &format!("endpoint=\"{}\"", escape(ep)),
            );
        }
        out.push_str("# HELP lion_requests_in_flight Requests being handled now.\n");
        out.push_str("# TYPE lion_requests_in_flight gauge\n");
        let _ = writeln!(out, "lion_requests_in_flight {}", self.in_flight());
        out.push_str("# HELP lion_queue_depth Requests waiting for the model worker.\n");
        out.push_str("# TYPE lion_queue_depth gauge\n");
        let _ = writeln!(out, "lion_queue_depth {}", self.queue_depth());
        out.push_str("# HELP lion_queue_capacity Requests the queue holds before answering 429.\n");
        out.push_str("# TYPE lion_queue_capacity gauge\n");
        let _ = writeln!(out, "lion_queue_capacity {}", self.queue_capacity());
        out.push_str("# HELP lion_connections_open Open client connections.\n");
        out.push_str("# TYPE lion_connections_open gauge\n");
        let _ = writeln!(out, "lion_connections_open {}", self.connections_open());
        out.push_str("# HELP lion_connection_events_total Connections by what happened to them.\n");
        out.push_str("# TYPE lion_connection_events_total counter\n");
        for e in ConnEvent::ALL {
            let _ = writeln!(
                out,
                "lion_connection_events_total{{event=\"{}\"}} {}",
                e.name(),
                self.connection_events(e)
            );
        }
        out.push_str("# HELP lion_decoded_bytes Bytes of the decoded-image budget in use.\n");
        out.push_str("# TYPE lion_decoded_bytes gauge\n");
        let _ = writeln!(
            out,
            "lion_decoded_bytes {}",
            self.decoded_bytes.load(Ordering::Relaxed)
        );
        out.push_str("# HELP lion_decoded_budget_rejections_total Image requests refused because the decoded-image budget was in use.\n");
        out.push_str("# TYPE lion_decoded_budget_rejections_total counter\n");
        let _ = writeln!(
            out,
            "lion_decoded_budget_rejections_total {}",
            self.decode_budget_rejections.load(Ordering::Relaxed)
        );
        out.push_str("# HELP lion_batch_size Items per batch run by the model.\n");
        out.push_str("# TYPE lion_batch_size histogram\n");
        for (task, h) in &t.batch_size {
            h.write(&mut out, "lion_batch_size", &format!("task=\"{task}\""));
        }
        out.push_str("# HELP lion_inference_duration_seconds Time in the model per batch.\n");
        out.push_str("# TYPE lion_inference_duration_seconds histogram\n");
        for (task, h) in &t.inference {
            h.write(
                &mut out,
                "lion_inference_duration_seconds",
                &format!("task=\"{task}\""),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_inf_counts_everything() {
        let m = Metrics::new(4);
        m.request_done("/v1/embed", 200, Duration::from_millis(3));
        m.request_done("/v1/embed", 200, Duration::from_millis(40));
        m.request_done("/v1/embed", 429, Duration::from_secs(100));
        let text = m.render();
        assert!(text.contains("lion_requests_total{endpoint=\"/v1/embed\",status=\"200\"} 2"));
        assert!(text.contains("lion_requests_total{endpoint=\"/v1/embed\",status=\"429\"} 1"));
        assert!(text.contains(
            "lion_request_duration_seconds_bucket{endpoint=\"/v1/embed\",le=\"0.005\"} 1"
        ));
        assert!(text.contains(
            "lion_request_duration_seconds_bucket{endpoint=\"/v1/embed\",le=\"0.05\"} 2"
        ));
        assert!(text
            .contains("lion_request_duration_seconds_bucket{endpoint=\"/v1/embed\",le=\"30\"} 2"));
        assert!(text.contains(
            "lion_request_duration_seconds_bucket{endpoint=\"/v1/embed\",le=\"+Inf\"} 3"
        ));
        assert!(text.contains("lion_request_duration_seconds_count{endpoint=\"/v1/embed\"} 3"));
        assert!(text.contains("lion_queue_capacity 4"));
    }

    #[test]
    fn every_sample_line_is_name_labels_value() {
        let m = Metrics::new(2);
        m.request_done("/a\"b", 404, Duration::from_millis(1));
        m.batch_done("embed", 3, Duration::from_millis(7));
        m.enqueued();
        for line in m.render().lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').expect(line);
            value.parse::<f64>().expect(line);
            assert!(line.starts_with("lion_"), "{line}");
        }
        let text = m.render();
        assert!(text.contains("endpoint=\"/a\\\"b\""), "{text}");
        assert!(text.contains("lion_batch_size_bucket{task=\"embed\",le=\"4\"} 1"));
        assert!(text.contains("lion_batch_size_bucket{task=\"embed\",le=\"2\"} 0"));
        assert!(text.contains("lion_queue_depth 1"));
    }
}
