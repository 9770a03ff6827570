//! The `hub-download` feature for real: `resolve_model` on a Hub id that no local place holds
//! downloads it through `hf-hub` from a local stand-in of the Hub (`HF_ENDPOINT`: the repo-info
//! API and `resolve/main/FILE` with the headers the Hub sends), into the Hugging Face cache
//! layout, and the next call finds it offline. Without the feature the same id is an error
//! naming the places searched and the feature. One test: the environment is the process's.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use lion_core::hub::resolve_model;

/// A minimal Hub: `GET /api/models/ID/revision/main` and `GET /ID/resolve/main/NAME` (with
/// `Range`), HTTP/1.1 with `Connection: close`. Returns its address and the request log.
fn fake_hub(
    id: &'static str,
    files: HashMap<String, Vec<u8>>,
) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut range = None;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    if k.eq_ignore_ascii_case("range") {
                        range = Some(v.trim().to_string());
                    }
                }
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            seen.lock().unwrap().push(format!("{path} {range:?}"));
            let commit = "0123456789abcdef0123456789abcdef01234567";
            let (status, headers, body): (&str, Vec<String>, Vec<u8>) = if path
                == format!("/api/models/{id}/revision/main")
            {
                let siblings: Vec<_> = files
                    .keys()
                    .map(|k| serde_json::json!({"rfilename": k}))
                    .collect();
                let info = serde_json::json!({"siblings": siblings, "sha": commit});
                (
                    "200 OK",
                    vec!["Content-Type: application/json".into()],
                    info.to_string().into_bytes(),
                )
            } else if let Some(name) = path.strip_prefix(&format!("/{id}/resolve/main/")) {
                match files.get(name) {
                    Some(data) => {
                        let from: usize = range
                            .as_deref()
                            .and_then(|r| r.strip_prefix("bytes="))
                            .and_then(|r| r.split('-').next())
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(0);
                        let to = match range.as_deref() {
                            Some("bytes=0-0") => 1.min(data.len()),
                            _ => data.len(),
                        };
                        let etag = format!("\"etag-{}-{}\"", name.replace('/', "_"), data.len());
                        (
                            "206 Partial Content",
                            vec![
                                format!("ETag: {etag}"),
                                format!("X-Repo-Commit: {commit}"),
                                format!(
                                    "Content-Range: bytes {from}-{}/{}",
                                    to.max(1) - 1,
                                    data.len()
                                ),
                            ],
                            data[from.min(to)..to].to_vec(),
                        )
                    }
                    None => ("404 Not Found", vec![], b"no such file".to_vec()),
                }
            } else {
                ("404 Not Found", vec![], b"no such route".to_vec())
            };
            let mut head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for h in headers {
                head += &h;
                head += "\r\n";
            }
            head += "\r\n";
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
            let _ = stream.flush();
            let mut rest = Vec::new();
            let _ = reader.read_to_end(&mut rest);
        }
    });
    (addr, log)
}

#[test]
fn a_hub_id_found_nowhere_is_downloaded_into_the_cache_or_named_in_the_error() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    std::env::remove_var("LION_HOME");
    std::env::remove_var("HF_HOME");
    std::env::set_var("HF_HUB_CACHE", &cache);
    let id = "acme/tiny-encoder";
    let mut files = HashMap::new();
    files.insert("config.json".to_string(), b"{\"hidden_size\": 4}".to_vec());
    files.insert("tokenizer.json".to_string(), b"{\"model\": {}}".to_vec());
    files.insert("model.safetensors".to_string(), vec![7u8; 3000]);
    // another framework's weights beside safetensors: not downloaded
    files.insert("pytorch_model.bin".to_string(), vec![1u8; 50]);
    let (endpoint, log) = fake_hub(id, files.clone());
    std::env::set_var("HF_ENDPOINT", &endpoint);

    let got = resolve_model(id);
    if cfg!(not(feature = "hub-download")) {
        let err = got.unwrap_err().to_string();
        assert!(err.contains("--features hub-download"), "{err}");
        assert!(err.contains("models--acme--tiny-encoder"), "{err}");
        assert!(
            log.lock().unwrap().is_empty(),
            "no request without the feature"
        );
        return;
    }
    let dir =
        got.unwrap_or_else(|e| panic!("download failed: {e}; requests: {:?}", log.lock().unwrap()));
    assert!(
        dir.starts_with(cache.join("models--acme--tiny-encoder/snapshots")),
        "{}",
        dir.display()
    );
    for name in ["config.json", "tokenizer.json", "model.safetensors"] {
        assert_eq!(
            std::fs::read(dir.join(name)).unwrap(),
            files[name],
            "{name}"
        );
    }
    assert!(
        !dir.join("pytorch_model.bin").exists(),
        "pickled weights beside safetensors are skipped"
    );
    // offline now: the cache answers, no new request
    let before = log.lock().unwrap().len();
    std::env::set_var("HF_ENDPOINT", "http://127.0.0.1:9");
    assert_eq!(resolve_model(id).unwrap(), dir);
    assert_eq!(log.lock().unwrap().len(), before);
    // an id the Hub does not have: the error says the download failed and where it looked
    let err = resolve_model("acme/absent").unwrap_err().to_string();
    assert!(err.contains("downloading it failed"), "{err}");
}
