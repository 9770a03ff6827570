//! In-process server tests with a scripted backend: routing of a loaded image task, batching,
//! timeout, overload and graceful shutdown through the programmatic handle; hostile clients
//! (stalled and slow connections, the connection cap, the decoded-image budget, duplicate JSON
//! keys, non-image data URLs, a panicking model). The real binary with the real embedder is
//! tested in crates/lion-cli/tests/serve.rs.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::http::{self, Part};
use lion_server::{
    Backend, BackendResult, BatchConfig, Capabilities, Server, ServerConfig, ShutdownHandle,
    VqaRequest, VqaResponse,
};
use serde_json::json;

/// Embeds a text as `[chars]`; answers VQA with the question, image size and options it got.
struct Scripted {
    delay: Duration,
    batches: Arc<Mutex<Vec<usize>>>,
}

impl Backend for Scripted {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            embed: true,
            vqa: true,
            ..Default::default()
        }
    }

    fn embed(&mut self, texts: &[String]) -> BackendResult<Vec<Vec<f32>>> {
        self.batches.lock().unwrap().push(texts.len());
        std::thread::sleep(self.delay);
        Ok(texts
            .iter()
            .map(|t| vec![t.chars().count() as f32])
            .collect())
    }

    fn vqa(&mut self, batch: &[VqaRequest]) -> BackendResult<Vec<VqaResponse>> {
        if batch.iter().any(|r| r.question == "panic") {
            // As a kernel's slice index would on a degenerate config.
            let empty: &[f32] = &[];
            let _ = empty[batch.len()];
        }
        self.batches.lock().unwrap().push(batch.len());
        std::thread::sleep(self.delay);
        Ok(batch
            .iter()
            .map(|r| VqaResponse {
                answer: format!(
                    "{} {}x{} px(1,2)={:?} beams={} max={}",
                    r.question,
                    r.image.width(),
                    r.image.height(),
                    r.image.get_pixel(1, 2).0,
                    r.options.num_beams,
                    r.options.max_new_tokens
                ),
                info: Default::default(),
            })
            .collect())
    }
}

struct Running {
    addr: SocketAddr,
    handle: ShutdownHandle,
    done: std::sync::mpsc::Receiver<Result<(), String>>,
    batches: Arc<Mutex<Vec<usize>>>,
    _thread: std::thread::JoinHandle<()>,
}

fn start(cfg: ServerConfig, delay_ms: u64) -> Running {
    let batches = Arc::new(Mutex::new(Vec::new()));
    let backend = Scripted {
        delay: Duration::from_millis(delay_ms),
        batches: batches.clone(),
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let r = rt.block_on(async move {
            let server = Server::bind(cfg, Box::new(backend))
                .await
                .map_err(|e| e.to_string())?;
            ready_tx
                .send((server.local_addr(), server.shutdown_handle()))
                .unwrap();
            server.serve().await.map_err(|e| e.to_string())
        });
        let _ = done_tx.send(r);
    });
    let (addr, handle) = ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("server started");
    Running {
        addr,
        handle,
        done: done_rx,
        batches,
        _thread: thread,
    }
}

fn cfg(max_batch: usize, max_wait_ms: u64, queue: usize, timeout_ms: u64) -> ServerConfig {
    ServerConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        batching: BatchConfig {
            max_batch,
            max_wait: Duration::from_millis(max_wait_ms),
            queue_capacity: queue,
        },
        request_timeout: Duration::from_millis(timeout_ms),
        ..ServerConfig::default()
    }
}

fn stop(r: Running) {
    r.handle.shutdown();
    let res = r
        .done
        .recv_timeout(Duration::from_secs(20))
        .expect("server stopped in time");
    res.unwrap();
}

#[test]
fn a_loaded_image_task_gets_the_decoded_image_and_options() {
    let r = start(cfg(8, 1, 8, 5000), 0);
    let png = http::png(7, 5);
    // JSON with base64
    let resp = http::post_json(
        r.addr,
        "/v1/vqa",
        &json!({"image": http::b64(&png), "question": "what?", "num_beams": 2, "max_new_tokens": 3}),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.json()["answer"],
        "what? 7x5 px(1,2)=[1, 2, 99] beams=2 max=3"
    );
    // multipart, defaults filled in (LION: 5 beams; VQA: 10 new tokens)
    let (ct, body) = http::multipart(&[
        ("question", Part::Text("why?")),
        ("image", Part::File(&png)),
    ]);
    let resp = http::post_raw(r.addr, "/v1/vqa", &ct, &body);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.json()["answer"],
        "why? 7x5 px(1,2)=[1, 2, 99] beams=5 max=10"
    );
    // not loaded here: caption
    let resp = http::post_json(r.addr, "/v1/caption", &json!({"image": http::b64(&png)}));
    let msg = resp.expect_error(501, "model_not_loaded");
    assert!(msg.contains("caption"), "{msg}");
    stop(r);
}

#[test]
fn concurrent_requests_are_batched_within_max_batch() {
    // A slow model: while it runs the first batch, the other requests pile up and go together.
    let r = start(cfg(4, 20, 64, 10_000), 150);
    let addr = r.addr;
    let threads: Vec<_> = (0..10)
        .map(|i| {
            std::thread::spawn(move || {
                let text = "x".repeat(i + 1);
                let resp = http::post_json(addr, "/v1/embed", &json!({"inputs": text}));
                assert_eq!(resp.status, 200, "{}", resp.text());
                assert_eq!(resp.json(), json!([[(i + 1) as f32]]));
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let b = r.batches.lock().unwrap().clone();
    assert_eq!(b.iter().sum::<usize>(), 10);
    assert!(b.iter().all(|&n| n <= 4), "{b:?}");
    assert!(b.iter().any(|&n| n > 1), "no batching: {b:?}");
    let m = http::get(addr, "/metrics").text();
    let batches = http::metric(&m, "lion_batch_size_count{task=\"embed\"}").unwrap();
    assert_eq!(batches as usize, b.len(), "{m}");
    stop(r);
}

#[test]
fn slow_model_times_out_with_504_and_full_queue_answers_429() {
    let r = start(cfg(1, 0, 1, 300), 1000);
    let addr = r.addr;
    let threads: Vec<_> = (0..6)
        .map(|_| {
            std::thread::spawn(move || http::post_json(addr, "/v1/embed", &json!({"inputs": "a"})))
        })
        .collect();
    let mut codes: Vec<u16> = Vec::new();
    for t in threads {
        let resp = t.join().unwrap();
        match resp.status {
            429 => {
                let msg = resp.expect_error(429, "overloaded");
                assert!(msg.contains("queue is full"), "{msg}");
            }
            504 => {
                let msg = resp.expect_error(504, "timeout");
                assert!(msg.contains("300 ms"), "{msg}");
            }
            s => panic!("unexpected {s}: {}", resp.text()),
        }
        codes.push(resp.status);
    }
    // One running (times out), one queued (times out), the rest refused.
    assert!(codes.contains(&429), "{codes:?}");
    assert!(codes.contains(&504), "{codes:?}");
    stop(r);
}

#[test]
fn shutdown_handle_finishes_requests_in_flight() {
    let r = start(cfg(2, 0, 16, 10_000), 300);
    let addr = r.addr;
    let threads: Vec<_> = (0..5)
        .map(|i| {
            std::thread::spawn(move || {
                let inputs = vec!["ab"; i + 1];
                http::post_json(addr, "/v1/embed", &json!({ "inputs": inputs }))
            })
        })
        .collect();
    // Wait until all five are inside the server.
    let t0 = Instant::now();
    loop {
        let m = http::get(addr, "/metrics").text();
        // this /metrics request itself is in flight too
        if http::metric(&m, "lion_requests_in_flight").unwrap() >= 6.0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "requests never arrived: {m}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let t_stop = Instant::now();
    r.handle.shutdown();
    for (i, t) in threads.into_iter().enumerate() {
        let resp = t.join().unwrap();
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.json().as_array().unwrap().len(), i + 1);
    }
    r.done
        .recv_timeout(Duration::from_secs(20))
        .expect("server stopped")
        .unwrap();
    // Requests of 1..=5 texts with max batch 2 at 300 ms a batch: the answers took real work
    // after the shutdown call, so they were really in flight.
    assert!(t_stop.elapsed() >= Duration::from_millis(300));
    // New connections are refused now.
    assert!(http::request(addr, "GET", "/health", None, b"").is_err());
}

#[test]
fn bad_settings_are_refused_at_bind() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut c = cfg(0, 0, 1, 100);
    c.batching.max_batch = 0;
    let e = rt
        .block_on(Server::bind(
            c,
            Box::new(Scripted {
                delay: Duration::ZERO,
                batches: Default::default(),
            }),
        ))
        .err()
        .expect("refused");
    assert!(e.to_string().contains("max batch"), "{e}");
}

// ---- hostile clients (issue 20) ----

/// A client that sends `bytes` and then stalls, holding the connection open.
fn stall(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.write_all(bytes).expect("send");
    s
}

/// Whether the server has closed `s` (EOF or reset) within `wait`; reads and drops any answer.
fn closed_by_server(s: &mut TcpStream, wait: Duration) -> bool {
    let t0 = Instant::now();
    let mut buf = [0u8; 4096];
    while t0.elapsed() < wait {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}

fn metric_value(addr: SocketAddr, sample: &str) -> f64 {
    let m = http::get(addr, "/metrics").text();
    http::metric(&m, sample).unwrap_or_else(|| panic!("no {sample} in\n{m}"))
}

/// Polls a metric until it has `want` (server-side bookkeeping may trail the client's view of a
/// closed connection or an answered request by a moment).
fn wait_metric(addr: SocketAddr, sample: &str, want: f64) {
    let t0 = Instant::now();
    loop {
        let v = metric_value(addr, sample);
        if v == want {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "{sample} is {v}, want {want}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn event(addr: SocketAddr, name: &str) -> f64 {
    metric_value(
        addr,
        &format!("lion_connection_events_total{{event=\"{name}\"}}"),
    )
}

#[test]
fn stalled_clients_neither_lock_out_health_nor_outlive_the_header_timeout() {
    let mut c = cfg(4, 0, 8, 5000);
    c.connections.max_connections = 8;
    c.connections.header_timeout = Duration::from_millis(1500);
    let r = start(c, 0);
    // Three times the cap: half a request header each, then silence (and some say nothing).
    let mut stalled: Vec<TcpStream> = (0..24)
        .map(|i| {
            let part: &[u8] = if i % 3 == 0 {
                b""
            } else {
                b"GET /health HTTP/1.1\r\nHost: x\r\n"
            };
            stall(r.addr, part)
        })
        .collect();
    let t0 = Instant::now();
    let resp = http::get(r.addr, "/health");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["status"], "ok");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    // The oldest stalled connections made room (no request in progress on them).
    assert!(closed_by_server(&mut stalled[0], Duration::from_secs(1)));
    assert!(event(r.addr, "evicted") >= 16.0);
    // The rest are closed by the header timeout, with the event counted.
    let t1 = Instant::now();
    let still: Vec<bool> = stalled[16..]
        .iter_mut()
        .map(|s| closed_by_server(s, Duration::from_secs(5)))
        .collect();
    assert!(still.iter().all(|&c| c), "{still:?}");
    assert!(t1.elapsed() < Duration::from_secs(5));
    assert!(event(r.addr, "header_timeout") >= 1.0);
    // Only the /metrics request's own connection is open now.
    wait_metric(r.addr, "lion_connections_open", 1.0);
    stop(r);
}

#[test]
fn at_the_cap_with_every_connection_busy_a_new_one_gets_a_bare_503() {
    let mut c = cfg(2, 2000, 8, 10_000);
    c.connections.max_connections = 2;
    let r = start(c, 1000);
    let addr = r.addr;
    let busy: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || http::post_json(addr, "/v1/embed", &json!({"inputs": "a"})))
        })
        .collect();
    // Both are with the model (one batch of two): every connection has a request in progress.
    let t0 = Instant::now();
    while r.batches.lock().unwrap().is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(10), "no batch ran");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(*r.batches.lock().unwrap(), vec![2]);
    let resp = http::get(addr, "/health");
    let msg = resp.expect_error(503, "unavailable");
    assert!(msg.contains("--max-connections"), "{msg}");
    assert_eq!(resp.header("retry-after"), Some("1"));
    for t in busy {
        assert_eq!(t.join().unwrap().status, 200);
    }
    // Their connections are closing: new ones are served again.
    let t0 = Instant::now();
    while http::get(addr, "/health").status != 200 {
        assert!(t0.elapsed() < Duration::from_secs(3), "still refused");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(event(addr, "refused") >= 1.0);
    stop(r);
}

#[test]
fn a_slow_upload_is_answered_408_at_the_body_deadline() {
    let mut c = cfg(4, 0, 8, 10_000);
    c.connections.body_timeout = Duration::from_millis(400);
    let r = start(c, 0);
    let body = json!({"inputs": "a sentence"}).to_string();
    let head = format!(
        "POST /v1/embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    // One byte every 100 ms (the whole body would take 2.6 s), then nothing: the deadline
    // counts from the header, not from the last byte.
    let mut s = stall(r.addr, head.as_bytes());
    let t0 = Instant::now();
    for b in &body.as_bytes()[..3] {
        s.write_all(&[*b]).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut raw = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.contains("\"error_type\":\"request_timeout\""),
        "{text}"
    );
    assert!(text.contains("400 ms"), "{text}");
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    // A body that never comes, not even in part.
    let mut s = stall(r.addr, head.as_bytes());
    assert!(closed_by_server(&mut s, Duration::from_secs(3)));
    assert_eq!(event(r.addr, "body_timeout"), 2.0);
    let m = http::get(r.addr, "/metrics").text();
    assert_eq!(
        http::metric(
            &m,
            "lion_requests_total{endpoint=\"/v1/embed\",status=\"408\"}"
        ),
        Some(2.0),
        "{m}"
    );
    // The server is fine for everyone else.
    let resp = http::post_json(r.addr, "/v1/embed", &json!({"inputs": "ok"}));
    assert_eq!(resp.status, 200, "{}", resp.text());
    stop(r);
}

#[test]
fn a_declared_body_over_the_limit_is_413_at_once() {
    let r = start(cfg(4, 0, 8, 10_000), 0);
    for (path, ct) in [
        ("/v1/embed", "application/json"),
        ("/v1/vqa", "application/json"),
        ("/v1/vqa", "multipart/form-data; boundary=x"),
    ] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ct}\r\nContent-Length: 999999999\r\n\r\n"
        );
        let t0 = Instant::now();
        let mut s = stall(r.addr, head.as_bytes());
        let mut raw = Vec::new();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.read_to_end(&mut raw);
        let text = String::from_utf8_lossy(&raw);
        assert!(text.starts_with("HTTP/1.1 413"), "{path} {ct}: {text}");
        assert!(text.contains("Content-Length: 999999999"), "{text}");
        // Not the 30 s body deadline.
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    }
    stop(r);
}

#[test]
fn shutdown_answers_requests_in_flight_and_drops_stalled_clients_after_the_grace_period() {
    let mut c = cfg(1, 0, 8, 10_000);
    c.connections.shutdown_grace = Duration::from_millis(300);
    // Far beyond the test: only the grace period can end the stalled connections.
    c.connections.header_timeout = Duration::from_secs(60);
    let r = start(c, 800);
    let addr = r.addr;
    let mut partial = stall(addr, b"POST /v1/embed HTTP/1.1\r\nHost: x\r\nContent-Le");
    let mut silent = stall(addr, b"");
    let in_flight =
        std::thread::spawn(move || http::post_json(addr, "/v1/embed", &json!({"inputs": "abc"})));
    let t0 = Instant::now();
    while r.batches.lock().unwrap().is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(10), "no batch ran");
        std::thread::sleep(Duration::from_millis(10));
    }
    let t_stop = Instant::now();
    r.handle.shutdown();
    let resp = in_flight.join().unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json(), json!([[3.0]]));
    r.done
        .recv_timeout(Duration::from_secs(10))
        .expect("server stopped while clients held partial requests")
        .unwrap();
    let took = t_stop.elapsed();
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(closed_by_server(&mut partial, Duration::from_secs(1)));
    assert!(closed_by_server(&mut silent, Duration::from_secs(1)));
}

fn vqa_body(png: &[u8], question: &str) -> serde_json::Value {
    json!({"image": http::b64(png), "question": question})
}

#[test]
fn the_decoded_image_budget_refuses_what_would_exceed_it_before_decoding() {
    let mut c = cfg(1, 0, 8, 10_000);
    // One 64x64 RGB image (12288 bytes) fits, two do not.
    c.limits.max_decoded_bytes = 20_000;
    let r = start(c, 800);
    let addr = r.addr;
    let png = http::png(64, 64);
    let p = png.clone();
    let first = std::thread::spawn(move || http::post_json(addr, "/v1/vqa", &vqa_body(&p, "q")));
    let t0 = Instant::now();
    while r.batches.lock().unwrap().is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(10), "no batch ran");
        std::thread::sleep(Duration::from_millis(10));
    }
    let resp = http::post_json(addr, "/v1/vqa", &vqa_body(&png, "q"));
    let msg = resp.expect_error(429, "overloaded");
    assert!(
        msg.contains("12288 bytes") && msg.contains("--max-decoded-bytes"),
        "{msg}"
    );
    assert_eq!(first.join().unwrap().status, 200);
    // Released with the answer: the same request fits now.
    let resp = http::post_json(addr, "/v1/vqa", &vqa_body(&png, "q"));
    assert_eq!(resp.status, 200, "{}", resp.text());
    wait_metric(addr, "lion_decoded_bytes", 0.0);
    assert_eq!(
        metric_value(addr, "lion_decoded_budget_rejections_total"),
        1.0
    );
    // An image that alone needs more than the whole budget: 413, from its header only (a
    // 6000x6000 claim in a 60-byte file).
    let resp = http::post_json(addr, "/v1/vqa", &vqa_body(&http::png_bomb(6000, 6000), "q"));
    let msg = resp.expect_error(413, "payload_too_large");
    assert!(
        msg.contains("6000x6000") && msg.contains("108000000 bytes"),
        "{msg}"
    );
    stop(r);
}

#[test]
fn a_duplicate_json_key_is_refused_naming_it() {
    let r = start(cfg(4, 0, 8, 5000), 0);
    let b64 = http::b64(&http::png(4, 4));
    let body = format!(r#"{{"image": "{b64}", "question": "q", "image": "{b64}"}}"#);
    let resp = http::post_raw(r.addr, "/v1/vqa", "application/json", body.as_bytes());
    let msg = resp.expect_error(422, "validation");
    assert!(msg.contains("field `image` is given twice"), "{msg}");
    let resp = http::post_raw(
        r.addr,
        "/v1/embed",
        "application/json",
        br#"{"inputs": "a", "inputs": ["b"]}"#,
    );
    let msg = resp.expect_error(422, "validation");
    assert!(msg.contains("field `inputs` is given twice"), "{msg}");
    stop(r);
}

#[test]
fn a_data_url_that_is_not_an_image_is_refused_naming_its_media_type() {
    let r = start(cfg(4, 0, 8, 5000), 0);
    let b64 = http::b64(&http::png(4, 4));
    let resp = http::post_json(
        r.addr,
        "/v1/vqa",
        &vqa_body_str(&format!("data:text/plain;base64,{b64}")),
    );
    let msg = resp.expect_error(415, "unsupported_media_type");
    assert!(msg.contains("text/plain"), "{msg}");
    let resp = http::post_json(
        r.addr,
        "/v1/vqa",
        &vqa_body_str(&format!("data:image/png,{b64}")),
    );
    let msg = resp.expect_error(400, "bad_request");
    assert!(msg.contains("not base64"), "{msg}");
    let resp = http::post_json(
        r.addr,
        "/v1/vqa",
        &vqa_body_str(&format!("data:image/png;base64,{b64}")),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    stop(r);
}

fn vqa_body_str(image: &str) -> serde_json::Value {
    json!({"image": image, "question": "q"})
}

#[test]
fn a_panicking_model_answers_500_and_the_worker_keeps_serving() {
    let r = start(cfg(4, 0, 8, 5000), 0);
    let png = http::png(8, 8);
    let resp = http::post_json(r.addr, "/v1/vqa", &vqa_body(&png, "panic"));
    let msg = resp.expect_error(500, "backend");
    assert!(
        msg.contains("panicked") && msg.contains("index out of bounds"),
        "{msg}"
    );
    let resp = http::post_json(r.addr, "/v1/vqa", &vqa_body(&png, "fine?"));
    assert_eq!(resp.status, 200, "{}", resp.text());
    let resp = http::get(r.addr, "/health");
    assert_eq!(resp.json()["status"], "ok");
    stop(r);
}

#[test]
fn chat_completions_in_the_openai_shape() {
    let r = start(cfg(8, 1, 8, 5000), 0);
    let png = http::png(7, 5);
    let url = format!("data:image/png;base64,{}", http::b64(&png));
    let body = |text: &str, extra: serde_json::Value| {
        let mut b = json!({"model": "lion", "max_tokens": 4, "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": text}]}]});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    // VQA inferred from the question mark; the scripted model echoes question, size, options
    let resp = http::post_json(r.addr, "/v1/chat/completions", &body("why?", json!({})));
    assert_eq!(resp.status, 200, "{}", resp.text());
    let v = resp.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "why? 7x5 px(1,2)=[1, 2, 99] beams=5 max=4"
    );
    assert_eq!(v["lion"]["task"], "vqa");
    assert_eq!(v["usage"]["total_tokens"], 0); // the scripted model reports no tokens

    // streaming: role delta, one content delta, finish chunk, usage chunk, [DONE]
    let resp = http::post_json(
        r.addr,
        "/v1/chat/completions",
        &body(
            "why?",
            json!({"stream": true, "stream_options": {"include_usage": true}}),
        ),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    let text = resp.text();
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").expect("data: event"))
        .collect();
    assert_eq!(events.len(), 5, "{text}");
    assert_eq!(events[4], "[DONE]");
    let chunks: Vec<serde_json::Value> = events[..4]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(
        chunks[1]["choices"][0]["delta"]["content"],
        v["choices"][0]["message"]["content"]
    );
    assert_eq!(chunks[2]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[3]["choices"], json!([]));
    assert!(chunks[3]["usage"].is_object());

    // errors in OpenAI's shape: validation, not loaded (caption), wrong method, media type
    let resp = http::post_json(
        r.addr,
        "/v1/chat/completions",
        &body("why?", json!({"n": 99})),
    );
    assert_eq!(resp.status, 422, "{}", resp.text());
    let e = resp.json();
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert_eq!(e["error"]["code"], "validation");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("`n`"),
        "{e}"
    );
    let resp = http::post_json(r.addr, "/v1/chat/completions", &body("", json!({})));
    assert_eq!(resp.status, 501, "{}", resp.text());
    assert_eq!(resp.json()["error"]["code"], "model_not_loaded");
    let resp = http::get(r.addr, "/v1/chat/completions");
    assert_eq!(resp.status, 405);
    assert_eq!(resp.json()["error"]["code"], "method_not_allowed");
    let resp = http::post_raw(r.addr, "/v1/chat/completions", "text/plain", b"hi");
    assert_eq!(resp.status, 415);
    assert!(resp.json()["error"]["message"].is_string());
    // no LION model behind this backend (no caption capability): no model listed
    let resp = http::get(r.addr, "/v1/models");
    assert_eq!(resp.json(), json!({"object": "list", "data": []}));
    stop(r);
}

#[test]
fn playground_page_and_its_files() {
    let r = start(cfg(8, 1, 8, 5000), 0);
    let page = http::get(r.addr, "/");
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let html = page.text();
    for needle in [
        "/playground/playground.js",
        "/playground/playground.css",
        "id=\"image-input\"",
        "id=\"drop-zone\"",
    ] {
        assert!(html.contains(needle), "{needle}");
    }
    // nothing from elsewhere
    assert!(!html.contains("http://") && !html.contains("https://"));
    assert!(page
        .header("content-security-policy")
        .unwrap()
        .contains("default-src 'self'"));
    let js = http::get(r.addr, "/playground/playground.js");
    assert_eq!(js.status, 200);
    assert!(js
        .header("content-type")
        .unwrap()
        .starts_with("text/javascript"));
    assert!(js.text().contains("/v1/${task}"));
    let css = http::get(r.addr, "/playground/playground.css");
    assert!(css.header("content-type").unwrap().starts_with("text/css"));
    http::get(r.addr, "/playground/secret.txt").expect_error(404, "not_found");
    stop(r);
}
