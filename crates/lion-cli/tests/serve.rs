//! `lion serve` end to end: the real binary on an ephemeral loopback port, the real
//! all-MiniLM-L6-v2 behind POST /v1/embed, the tiny LION preset and a tiny RAM tagger (random
//! weights) behind the image endpoints, every error path, batching, overload and shutdown with
//! requests in flight.

#[path = "../../lion-server/tests/common/http.rs"]
mod http;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Part;
use lion_core::testing::minilm_dir;
use serde_json::{json, Value};

/// A running `lion serve`; killed on drop if the test did not stop it.
struct Serve {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
}

impl Serve {
    fn start(extra: &[&str]) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lion"))
            .args([
                "--log",
                "warn",
                "serve",
                "--addr",
                "127.0.0.1:0",
                "--embed-model",
            ])
            .arg(minilm_dir())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lion");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            for _ in lines {} // keep the pipe drained
        });
        let line = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(Some(Ok(line))) => line,
            other => {
                let _ = child.kill();
                panic!(
                    "no address line from lion serve ({other:?}); stderr:\n{}",
                    stderr.lock().unwrap()
                );
            }
        };
        let addr: SocketAddr = line
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("first stdout line {line:?} is not an address: {e}"));
        assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
        Serve {
            child,
            addr,
            stderr,
        }
    }

    /// SIGTERM, then the exit status (within `limit`).
    fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(ok.success());
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                t0.elapsed() < limit,
                "lion serve did not stop within {limit:?}; stderr:\n{}",
                self.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn embeddings(v: &Value) -> Vec<Vec<f32>> {
    v.as_array()
        .expect("array of embeddings")
        .iter()
        .map(|e| {
            e.as_array()
                .expect("embedding array")
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

/// A text of about 250 word-piece tokens (the model truncates at 256).
fn long_text(seed: usize) -> String {
    format!("sample {seed}: ")
        + &"the quick brown fox jumps over the lazy dog near a red barn. ".repeat(20)
}

#[test]
fn embed_matches_the_in_process_sentence_embedder() {
    let s = Serve::start(&["--max-batch", "8", "--max-wait-ms", "20"]);
    let texts = [
        "A dog runs on the beach.",
        "Two cats sleep on a red sofa.",
        "a",
        "The stock market fell sharply on Tuesday after the announcement.",
    ];
    let dev = candle_core::Device::Cpu;
    let model = lion_core::sentence::SentenceEmbedder::load(minilm_dir(), &dev, None).unwrap();
    let reference = model.embed(&texts, 8).unwrap();

    // One string -> one embedding, TEI's shape [[...]].
    let r = http::post_json(s.addr, "/v1/embed", &json!({"inputs": texts[0]}));
    assert_eq!(r.status, 200, "{}", r.text());
    let one = embeddings(&r.json());
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].len(), 384);
    // Single text vs. the text inside a padded batch: same up to float rounding.
    assert!(max_abs_diff(&one, &reference[..1]) < 1e-5);

    // A list -> one per text, in order.
    let r = http::post_json(s.addr, "/v1/embed", &json!({"inputs": texts}));
    assert_eq!(r.status, 200, "{}", r.text());
    let all = embeddings(&r.json());
    let d = max_abs_diff(&all, &reference);
    assert!(d < 1e-5, "max abs diff {d}");

    // Concurrent requests (batched together by the server) each get their own answer.
    let addr = s.addr;
    let threads: Vec<_> = (0..texts.len())
        .map(|i| {
            let t = texts[i].to_string();
            std::thread::spawn(move || http::post_json(addr, "/v1/embed", &json!({"inputs": [t]})))
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        let r = t.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let e = embeddings(&r.json());
        let d = max_abs_diff(&e, &reference[i..i + 1]);
        assert!(d < 1e-5, "text {i}: max abs diff {d}");
    }
    // Unit length (all-MiniLM-L6-v2 normalises).
    let n: f32 = all[1].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((n - 1.0).abs() < 1e-4, "norm {n}");
}

#[test]
fn health_metrics_and_openapi() {
    let s = Serve::start(&["--queue", "7"]);
    let h = http::get(s.addr, "/health");
    assert_eq!(h.status, 200);
    let h = h.json();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["tasks"]["embed"], true);
    for t in ["caption", "vqa", "ground", "tags"] {
        assert_eq!(h["tasks"][t], false, "{h}");
    }
    assert_eq!(h["queue"]["capacity"], 7);
    // Without a LION model the image endpoints say so (after validating the request).
    let img = http::b64(&http::png(8, 8));
    let msg = http::post_json(s.addr, "/v1/caption", &json!({"image": img}))
        .expect_error(501, "model_not_loaded");
    assert!(
        msg.contains("not available") && msg.contains("--model"),
        "{msg}"
    );

    for _ in 0..3 {
        let r = http::post_json(s.addr, "/v1/embed", &json!({"inputs": ["x", "y"]}));
        assert_eq!(r.status, 200);
    }
    let r = http::post_json(s.addr, "/v1/embed", &json!({"inputs": []}));
    assert_eq!(r.status, 422);
    let r = http::get(s.addr, "/nope");
    r.expect_error(404, "not_found");

    let m = http::get(s.addr, "/metrics");
    assert_eq!(m.status, 200);
    assert!(m.header("content-type").unwrap().starts_with("text/plain"));
    let m = m.text();
    let v = |sample: &str| http::metric(&m, sample).unwrap_or_else(|| panic!("{sample}:\n{m}"));
    assert_eq!(
        v("lion_requests_total{endpoint=\"/v1/embed\",status=\"200\"}"),
        3.0
    );
    assert_eq!(
        v("lion_requests_total{endpoint=\"/v1/embed\",status=\"422\"}"),
        1.0
    );
    assert_eq!(
        v("lion_requests_total{endpoint=\"unmatched\",status=\"404\"}"),
        1.0
    );
    assert_eq!(
        v("lion_request_duration_seconds_count{endpoint=\"/v1/embed\"}"),
        4.0
    );
    assert_eq!(
        v("lion_request_duration_seconds_bucket{endpoint=\"/v1/embed\",le=\"+Inf\"}"),
        4.0
    );
    assert_eq!(v("lion_queue_depth"), 0.0);
    assert_eq!(v("lion_queue_capacity"), 7.0);
    // Three batches of two texts each (sequential requests: no merging).
    assert_eq!(v("lion_batch_size_sum{task=\"embed\"}"), 6.0);
    assert!(v("lion_inference_duration_seconds_count{task=\"embed\"}") >= 1.0);
    assert!(m.contains("# TYPE lion_request_duration_seconds histogram"));

    let o = http::get(s.addr, "/openapi.json");
    assert_eq!(o.status, 200);
    let o = o.json();
    assert!(o["openapi"].as_str().unwrap().starts_with("3."));
    for p in [
        "/v1/embed",
        "/v1/caption",
        "/v1/vqa",
        "/v1/ground",
        "/v1/tags",
        "/health",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(
            o["paths"].get(p).is_some(),
            "{p} missing from the OpenAPI document"
        );
    }
    assert_eq!(
        o["components"]["schemas"]["EmbedRequest"]["additionalProperties"],
        false
    );
}

/// The tiny LION preset and a tiny RAM tagger, both with random weights, and then `extra`.
fn tiny_models(extra: &[&str]) -> Vec<String> {
    let minilm = minilm_dir();
    let mut args: Vec<String> = [
        "--preset",
        "tiny",
        "--random-weights",
        "--ram-random",
        "tiny",
        "--tag-encoder",
    ]
    .map(String::from)
    .to_vec();
    args.push(minilm.display().to_string());
    args.push("--qformer-tokenizer".into());
    args.push(minilm.join("tokenizer.json").display().to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Checks a 200 answer of an image endpoint: the JSON shape each endpoint promises.
fn check_answer(path: &str, r: &http::Response, width: f64, height: f64) {
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    let v = r.json();
    match path {
        "/v1/caption" => assert!(v["caption"].is_string(), "{v}"),
        "/v1/vqa" => assert!(v["answer"].is_string(), "{v}"),
        "/v1/ground" => {
            assert!(v["text"].is_string(), "{v}");
            // A box (inside the image) or null, with its normalised twin.
            match v["bbox"].as_array() {
                Some(b) => {
                    assert_eq!(b.len(), 4, "{v}");
                    let b: Vec<f64> = b.iter().map(|x| x.as_f64().unwrap()).collect();
                    assert!(b[0] >= 0.0 && b[2] <= width && b[1] >= 0.0 && b[3] <= height);
                    assert_eq!(v["bbox_normalized"].as_array().unwrap().len(), 4);
                }
                None => {
                    assert!(v["bbox"].is_null(), "{v}");
                    assert!(v["bbox_normalized"].is_null(), "{v}");
                }
            }
        }
        "/v1/tags" => {
            let tags = v["tags"].as_array().expect("tags array");
            let scores: Vec<f64> = tags.iter().map(|t| t["score"].as_f64().unwrap()).collect();
            assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{v}");
            assert!(scores.iter().all(|&p| (0.0..=1.0).contains(&p)), "{v}");
            assert!(tags.iter().all(|t| t["tag"].is_string()), "{v}");
        }
        _ => unreachable!("{path}"),
    }
}

#[test]
fn image_endpoints_answer_and_validate() {
    let args = tiny_models(&[
        "--max-image-pixels",
        "10000",
        "--max-prompt-chars",
        "50",
        "--max-new-tokens",
        "20",
    ]);
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let s = Serve::start(&args);
    let h = http::get(s.addr, "/health").json();
    for t in ["embed", "caption", "vqa", "ground", "tags"] {
        assert_eq!(h["tasks"][t], true, "{h}");
    }
    let good = http::png(64, 48);
    let mut corrupt = http::png(64, 48);
    corrupt.truncate(corrupt.len() / 2);
    let big = http::png(120, 100); // 12000 pixels > 10000
                                   // Tiny files whose headers claim 3.6 and 10 billion pixels (PNG with a valid CRC, BMP).
    let bmp_bomb = http::bmp_header(60_000, 60_000);
    let bomb = http::png_bomb(100_000, 100_000);

    let endpoints: [(&str, Option<(&str, &str)>); 4] = [
        ("/v1/caption", None),
        ("/v1/vqa", Some(("question", "what colour is the sky?"))),
        (
            "/v1/ground",
            Some(("expression", "the red ball on the left")),
        ),
        ("/v1/tags", None),
    ];
    for (path, text) in endpoints {
        let body = |img: &[u8]| {
            let mut b = json!({"image": http::b64(img)});
            if let Some((k, v)) = text {
                b[k] = json!(v);
            }
            b
        };
        // Valid: answered by the model.
        let r = http::post_json(s.addr, path, &body(&good));
        check_answer(path, &r, 64.0, 48.0);
        // Same over multipart.
        let mut parts = vec![("image", Part::File(&good))];
        if let Some((k, v)) = text {
            parts.push((k, Part::Text(v)));
        }
        let (ct, mp) = http::multipart(&parts);
        check_answer(path, &http::post_raw(s.addr, path, &ct, &mp), 64.0, 48.0);

        // Corrupt image: 400 naming the format.
        let msg = http::post_json(s.addr, path, &body(&corrupt)).expect_error(400, "bad_request");
        assert!(msg.contains("PNG"), "{path}: {msg}");
        // Not an image.
        let msg =
            http::post_json(s.addr, path, &body(b"hello, world")).expect_error(400, "bad_request");
        assert!(msg.contains("unrecognised format"), "{path}: {msg}");
        // Too many pixels: a real image, and headers claiming billions of pixels.
        let msg = http::post_json(s.addr, path, &body(&big)).expect_error(413, "payload_too_large");
        assert!(
            msg.contains("120x100") && msg.contains("10000"),
            "{path}: {msg}"
        );
        let msg =
            http::post_json(s.addr, path, &body(&bomb)).expect_error(413, "payload_too_large");
        assert!(msg.contains("100000x100000"), "{path}: {msg}");
        let msg =
            http::post_json(s.addr, path, &body(&bmp_bomb)).expect_error(413, "payload_too_large");
        assert!(msg.contains("60000x60000"), "{path}: {msg}");
        let (ct, mp) = http::multipart(&[("image", Part::File(&bomb))]);
        let r = http::post_raw(s.addr, path, &ct, &mp);
        // Without the text field the request is invalid before the image is looked at.
        if text.is_some() {
            r.expect_error(422, "validation");
        } else {
            r.expect_error(413, "payload_too_large");
        }
        // Bad base64.
        let mut b = body(&good);
        b["image"] = json!("%%%not base64%%%");
        let msg = http::post_json(s.addr, path, &b).expect_error(400, "bad_request");
        assert!(msg.contains("base64"), "{msg}");
        // Missing image.
        let mut b = body(&good);
        b.as_object_mut().unwrap().remove("image");
        let msg = http::post_json(s.addr, path, &b).expect_error(422, "validation");
        assert!(msg.contains("`image`"), "{msg}");
        // Unknown field, JSON and multipart.
        let mut b = body(&good);
        b["colour"] = json!(0.7);
        let msg = http::post_json(s.addr, path, &b).expect_error(422, "validation");
        assert!(msg.contains("unknown field `colour`"), "{path}: {msg}");
        let (ct, mp) =
            http::multipart(&[("image", Part::File(&good)), ("colour", Part::Text("red"))]);
        let msg = http::post_raw(s.addr, path, &ct, &mp).expect_error(422, "validation");
        assert!(msg.contains("`colour`"), "{path}: {msg}");
        // Wrong content type.
        http::post_raw(s.addr, path, "text/plain", b"hi")
            .expect_error(415, "unsupported_media_type");
    }

    let img = http::b64(&good);
    // Prompt length, required text, generation limits.
    let long_q = "why ".repeat(20);
    let msg = http::post_json(
        s.addr,
        "/v1/vqa",
        &json!({"image": img, "question": long_q}),
    )
    .expect_error(422, "validation");
    assert!(
        msg.contains("`question`") && msg.contains("at most 50"),
        "{msg}"
    );
    let msg =
        http::post_json(s.addr, "/v1/vqa", &json!({"image": img})).expect_error(422, "validation");
    assert!(msg.contains("missing field `question`"), "{msg}");
    let msg = http::post_json(
        s.addr,
        "/v1/caption",
        &json!({"image": img, "max_new_tokens": 21}),
    )
    .expect_error(422, "validation");
    assert!(
        msg.contains("`max_new_tokens`") && msg.contains("20"),
        "{msg}"
    );
    let (ct, mp) = http::multipart(&[
        ("image", Part::File(&good)),
        ("expression", Part::Text("the cat")),
        ("num_beams", Part::Text("many")),
    ]);
    let msg = http::post_raw(s.addr, "/v1/ground", &ct, &mp).expect_error(422, "validation");
    assert!(msg.contains("`num_beams`"), "{msg}");
    let msg = http::post_json(s.addr, "/v1/tags", &json!({"image": img, "threshold": 1.5}))
        .expect_error(422, "validation");
    assert!(msg.contains("`threshold`"), "{msg}");
    // Valid options reach the model.
    let (ct, mp) = http::multipart(&[
        ("image", Part::File(&good)),
        ("expression", Part::Text("the cat")),
        ("num_beams", Part::Text("3")),
        ("max_new_tokens", Part::Text("20")),
    ]);
    check_answer(
        "/v1/ground",
        &http::post_raw(s.addr, "/v1/ground", &ct, &mp),
        64.0,
        48.0,
    );
    // Greedy, 3 new tokens at most: a short answer (the bundled tokenizer's pieces are short).
    let r = http::post_json(
        s.addr,
        "/v1/vqa",
        &json!({"image": img, "question": "what?", "num_beams": 1, "max_new_tokens": 3}),
    );
    check_answer("/v1/vqa", &r, 64.0, 48.0);
    let short = r.json()["answer"].as_str().unwrap().chars().count();
    assert!(short <= 3 * 16, "3 tokens gave {short} characters");
    // A caption prompt is accepted.
    let r = http::post_json(
        s.addr,
        "/v1/caption",
        &json!({"image": img, "prompt": "Describe it.", "num_beams": 2}),
    );
    check_answer("/v1/caption", &r, 64.0, 48.0);
    // Tag selection: max_tags and threshold are honoured.
    let r = http::post_json(s.addr, "/v1/tags", &json!({"image": img, "max_tags": 3}));
    check_answer("/v1/tags", &r, 64.0, 48.0);
    assert!(r.json()["tags"].as_array().unwrap().len() <= 3);
    let r = http::post_json(
        s.addr,
        "/v1/tags",
        &json!({"image": img, "threshold": 0.01}),
    );
    check_answer("/v1/tags", &r, 64.0, 48.0);
    let all = r.json()["tags"].as_array().unwrap().clone();
    assert!(all.iter().all(|t| t["score"].as_f64().unwrap() > 0.01));
    let r = http::post_json(
        s.addr,
        "/v1/tags",
        &json!({"image": img, "threshold": 0.99}),
    );
    check_answer("/v1/tags", &r, 64.0, 48.0);
    assert!(r.json()["tags"].as_array().unwrap().len() <= all.len());
}

#[test]
fn concurrent_captions_are_batched_and_all_answered() {
    let args = tiny_models(&["--max-batch", "8", "--max-wait-ms", "300", "--queue", "32"]);
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let s = Serve::start(&args);
    let addr = s.addr;
    let n = 8;
    let barrier = Arc::new(std::sync::Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                // Different images, same options: one batch may hold them all.
                let img = http::b64(&http::png(32 + 4 * i as u32, 24));
                barrier.wait();
                http::post_json(
                    addr,
                    "/v1/caption",
                    &json!({"image": img, "num_beams": 2, "max_new_tokens": 8}),
                )
            })
        })
        .collect();
    for t in threads {
        let r = t.join().unwrap();
        check_answer("/v1/caption", &r, 0.0, 0.0);
    }
    let m = http::get(addr, "/metrics").text();
    let v = |sample: &str| http::metric(&m, sample).unwrap_or_else(|| panic!("{sample}:\n{m}"));
    assert_eq!(v("lion_batch_size_sum{task=\"caption\"}"), n as f64);
    let batches = v("lion_batch_size_count{task=\"caption\"}");
    assert!(
        batches < n as f64,
        "{n} concurrent captions ran in {batches} batches (mean batch size 1):\n{m}"
    );
    assert_eq!(
        v("lion_requests_total{endpoint=\"/v1/caption\",status=\"200\"}"),
        n as f64
    );
}

#[test]
fn malformed_requests_get_json_errors() {
    let s = Serve::start(&["--max-body-bytes", "4096", "--max-embed-inputs", "3"]);
    let a = s.addr;
    let msg = http::post_raw(a, "/v1/embed", "application/json", b"{\"inputs\": [\"a\",")
        .expect_error(400, "bad_request");
    assert!(msg.contains("invalid JSON"), "{msg}");
    let msg = http::post_json(a, "/v1/embed", &json!({"inputs": "a", "normalize": false}))
        .expect_error(422, "validation");
    assert!(msg.contains("unknown field `normalize`"), "{msg}");
    let msg =
        http::post_json(a, "/v1/embed", &json!({"text": "a"})).expect_error(422, "validation");
    assert!(msg.contains("`text`"), "{msg}");
    let msg =
        http::post_json(a, "/v1/embed", &json!({"inputs": 42})).expect_error(422, "validation");
    assert!(msg.contains("`inputs`"), "{msg}");
    let msg = http::post_json(a, "/v1/embed", &json!({"inputs": ["a", "b", "c", "d"]}))
        .expect_error(422, "validation");
    assert!(msg.contains("limit is 3"), "{msg}");
    let msg = http::post_json(a, "/v1/embed", &json!(["a"])).expect_error(422, "validation");
    assert!(msg.contains("JSON object"), "{msg}");
    http::post_raw(a, "/v1/embed", "text/plain", b"a").expect_error(415, "unsupported_media_type");
    let big = json!({"inputs": "x".repeat(10_000)});
    let msg = http::post_json(a, "/v1/embed", &big).expect_error(413, "payload_too_large");
    assert!(msg.contains("4096"), "{msg}");
    let (ct, mp) = http::multipart(&[("image", Part::File(&[7u8; 10_000]))]);
    let msg = http::post_raw(a, "/v1/tags", &ct, &mp).expect_error(413, "payload_too_large");
    assert!(msg.contains("4096"), "{msg}");
    let msg =
        http::post_raw(a, "/v1/tags", "multipart/form-data", b"x").expect_error(400, "bad_request");
    assert!(msg.contains("multipart"), "{msg}");
    let msg = http::get(a, "/v1/embed").expect_error(405, "method_not_allowed");
    assert!(msg.contains("GET"), "{msg}");
    http::get(a, "/v2/embed").expect_error(404, "not_found");
    // The server is still fine.
    assert_eq!(
        http::post_json(a, "/v1/embed", &json!({"inputs": "ok"})).status,
        200
    );
}

#[test]
fn full_queue_answers_429_and_the_rest_are_served() {
    let s = Serve::start(&["--queue", "1", "--max-batch", "1", "--max-wait-ms", "0"]);
    let addr = s.addr;
    let texts: Vec<String> = (0..4).map(long_text).collect();
    let barrier = Arc::new(std::sync::Barrier::new(24));
    let threads: Vec<_> = (0..24)
        .map(|_| {
            let texts = texts.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                http::post_json(addr, "/v1/embed", &json!({"inputs": texts}))
            })
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for t in threads {
        let r = t.join().unwrap();
        match r.status {
            200 => {
                assert_eq!(embeddings(&r.json()).len(), 4);
                ok += 1
            }
            429 => {
                let msg = r.expect_error(429, "overloaded");
                assert!(msg.contains("queue is full"), "{msg}");
                refused += 1
            }
            st => panic!("unexpected status {st}: {}", r.text()),
        }
    }
    assert!(ok >= 1 && refused >= 1, "ok {ok}, refused {refused}");
    let m = http::get(addr, "/metrics").text();
    assert_eq!(
        http::metric(
            &m,
            "lion_requests_total{endpoint=\"/v1/embed\",status=\"429\"}"
        ),
        Some(refused as f64)
    );
    // After the burst the server serves again.
    assert_eq!(
        http::post_json(addr, "/v1/embed", &json!({"inputs": "a"})).status,
        200
    );
}

#[test]
fn sigterm_answers_every_request_in_flight_then_exits() {
    let mut s = Serve::start(&["--max-batch", "2", "--max-wait-ms", "0", "--queue", "16"]);
    let addr = s.addr;
    let n = 6;
    let threads: Vec<_> = (0..n)
        .map(|i| {
            std::thread::spawn(move || {
                let texts = vec![long_text(i), long_text(i + 100)];
                http::post_json(addr, "/v1/embed", &json!({ "inputs": texts }))
            })
        })
        .collect();
    // Wait until all of them are inside the server (plus this /metrics request).
    let t0 = Instant::now();
    loop {
        let m = http::get(addr, "/metrics").text();
        let in_flight = http::metric(&m, "lion_requests_in_flight").unwrap();
        if in_flight >= (n + 1) as f64 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "only {in_flight} requests in flight:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = s.terminate(Duration::from_secs(120));
    for t in threads {
        let r = t.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(embeddings(&r.json()).len(), 2);
    }
    assert!(
        status.success(),
        "exit {status:?}; stderr:\n{}",
        s.stderr.lock().unwrap()
    );
    assert!(http::request(addr, "GET", "/health", None, b"").is_err());
}

#[test]
fn sigterm_finishes_while_clients_hold_partial_requests() {
    use std::io::Write;
    let mut s = Serve::start(&["--shutdown-grace-ms", "300", "--header-timeout-ms", "60000"]);
    let connect = |bytes: &[u8]| {
        let mut c = std::net::TcpStream::connect(s.addr).unwrap();
        c.write_all(bytes).unwrap();
        c
    };
    // Half a header; a whole header and a tenth of the body; then both stall.
    let _partial_head = connect(b"POST /v1/embed HTTP/1.1\r\nHost: x\r\nContent-Ty");
    let mut partial_body = connect(
        b"POST /v1/embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"inputs\"",
    );
    // The partial body is being read by its handler (plus this /metrics request).
    let t0 = Instant::now();
    while http::metric(
        &http::get(s.addr, "/metrics").text(),
        "lion_requests_in_flight",
    ) < Some(2.0)
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the request never arrived"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let t_term = Instant::now();
    let status = s.terminate(Duration::from_secs(10));
    let took = t_term.elapsed();
    assert!(
        status.success(),
        "exit {status:?}; stderr:\n{}",
        s.stderr.lock().unwrap()
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    // The handler waiting for the body was answered, not cut off.
    let mut raw = Vec::new();
    let _ = partial_body.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("shutting down"), "{text}");
}

#[test]
fn bad_model_flags_give_a_clear_error() {
    for (args, want) in [
        (
            vec!["serve", "--model", "/tmp/no-such-lion-model"],
            "/tmp/no-such-lion-model",
        ),
        (vec!["serve", "--preset", "tiny"], "--random-weights"),
        (
            vec!["serve", "--preset", "nope", "--random-weights"],
            "nope",
        ),
        (
            vec![
                "serve",
                "--ram",
                "/tmp/no-such-ram.pth",
                "--ram-config",
                "tiny",
            ],
            "/tmp/no-such-ram.pth",
        ),
        (vec!["serve", "--ram-random", "huge"], "huge"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_lion"))
            .args(&args)
            .arg("--embed-model")
            .arg(minilm_dir())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "no address printed");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_lion"))
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--embed-model",
            "/nonexistent/minilm",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/minilm"), "{err}");
}
