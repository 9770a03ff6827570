//! In-process server tests with a scripted backend: routing of a loaded image task, batching,
//! timeout, overload and graceful shutdown through the programmatic handle. The real binary with
//! the real embedder is tested in crates/lion-cli/tests/serve.rs.

mod common;

use std::net::SocketAddr;
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
