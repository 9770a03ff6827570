//! The bytes behind a chat API `image_url`: `data:` URLs (base64) always; `file://` under the
//! configured root only; `http://` only when allowed, fetched with a plain HTTP/1.0 GET within
//! a size and a time limit (no redirects). `https://` is refused: this build has no TLS client.
//! The bytes are then checked and decoded like every other image (see [`crate::input`]).

use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::ImageSources;
use crate::error::{ApiError, ErrorType};
use crate::input;

/// The encoded image an `image_url` names, at most `max_bytes` long.
pub async fn load(url: &str, src: &ImageSources, max_bytes: usize) -> Result<Vec<u8>, ApiError> {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("data:") {
        data_url(url)
    } else if lower.starts_with("file://") {
        let Some(root) = &src.file_root else {
            return Err(ApiError::bad_request(
                "image_url: file:// URLs are off on this server (start it with --image-root DIR)",
            ));
        };
        let path = percent_decode(&url["file://".len()..])?;
        let root = root.clone();
        tokio::task::spawn_blocking(move || read_under(&root, Path::new(&path), max_bytes))
            .await
            .map_err(|e| ApiError::new(ErrorType::Backend, format!("file read failed: {e}")))?
    } else if lower.starts_with("http://") {
        if !src.allow_http {
            return Err(ApiError::bad_request(
                "image_url: http:// URLs are off on this server (start it with \
                 --allow-http-images), send the image as a data: URL",
            ));
        }
        let limit = src.fetch_timeout;
        tokio::time::timeout(limit, http_get(url, max_bytes))
            .await
            .map_err(|_| {
                ApiError::new(
                    ErrorType::Timeout,
                    format!(
                        "image_url: fetching {url} took longer than {} ms",
                        limit.as_millis()
                    ),
                )
            })?
    } else if lower.starts_with("https://") {
        Err(ApiError::bad_request(
            "image_url: https:// URLs are not supported (this server has no TLS client); \
             send the image as a data: URL",
        ))
    } else {
        let scheme = url.split(':').next().unwrap_or("");
        Err(ApiError::bad_request(format!(
            "image_url: unsupported URL scheme {scheme:?} (data:, file://, http://)"
        )))
    }
}

/// `data:[<type>][;base64],<data>`: only base64 data.
fn data_url(url: &str) -> Result<Vec<u8>, ApiError> {
    let rest = &url["data:".len()..];
    let Some((meta, data)) = rest.split_once(',') else {
        return Err(ApiError::bad_request(
            "image_url: data: URL without a comma",
        ));
    };
    if !meta.to_ascii_lowercase().ends_with(";base64") {
        return Err(ApiError::bad_request(
            "image_url: only base64 data: URLs are supported (data:image/png;base64,...)",
        ));
    }
    input::base64_bytes("image_url", data)
}

/// `%XX` escapes of a URL path.
fn percent_decode(s: &str) -> Result<String, ApiError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            let Some(v) = hex else {
                return Err(ApiError::bad_request(format!(
                    "image_url: bad %-escape in {s:?}"
                )));
            };
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| ApiError::bad_request(format!("image_url: {s:?} is not UTF-8")))
}

/// Reads `path` when it resolves to a regular file inside `root`, at most `max_bytes`.
fn read_under(root: &Path, path: &Path, max_bytes: usize) -> Result<Vec<u8>, ApiError> {
    // `file://host/path` is not a local file; `file:///path` gives "/path"
    if !path.is_absolute() {
        return Err(ApiError::bad_request(format!(
            "image_url: file:// URL must hold an absolute path (file:///...), got {}",
            path.display()
        )));
    }
    let not_allowed = || {
        ApiError::bad_request(format!(
            "image_url: {} is not a file under the server's image root",
            path.display()
        ))
    };
    let root: PathBuf = root.canonicalize().map_err(|e| {
        ApiError::new(
            ErrorType::Backend,
            format!("the image root {} is unusable: {e}", root.display()),
        )
    })?;
    let real = path.canonicalize().map_err(|_| not_allowed())?;
    if !real.starts_with(&root) || !real.is_file() {
        return Err(not_allowed());
    }
    let len = std::fs::metadata(&real).map_err(|_| not_allowed())?.len();
    if len > max_bytes as u64 {
        return Err(ApiError::too_large(format!(
            "image_url: {} is {len} bytes, more than the limit of {max_bytes} bytes",
            path.display()
        )));
    }
    std::fs::read(&real).map_err(|e| {
        ApiError::bad_request(format!("image_url: cannot read {}: {e}", path.display()))
    })
}

/// `http://host[:port]/path` -> (host, port, path).
fn split_http_url(url: &str) -> Result<(String, u16, String), ApiError> {
    let rest = &url["http://".len()..];
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], &rest[i..]),
        Some(i) => (&rest[..i], "/"),
        None => (rest, "/"),
    };
    let path = path.split('#').next().unwrap_or("/");
    if authority.is_empty() || authority.contains('@') {
        return Err(ApiError::bad_request(format!(
            "image_url: {url:?} has no usable host"
        )));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            let port = p
                .parse::<u16>()
                .map_err(|_| ApiError::bad_request(format!("image_url: bad port in {url:?}")))?;
            (h, port)
        }
        _ => (authority, 80),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((host.to_string(), port, path.to_string()))
}

/// A GET over a fresh connection: status 200 required, body at most `max_bytes`.
async fn http_get(url: &str, max_bytes: usize) -> Result<Vec<u8>, ApiError> {
    let (host, port, path) = split_http_url(url)?;
    let fail = |what: String| ApiError::bad_request(format!("image_url: {url}: {what}"));
    let mut conn = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| fail(format!("cannot connect: {e}")))?;
    let req = format!(
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: lion-serve\r\nAccept: image/*\r\n\
         Connection: close\r\n\r\n"
    );
    conn.write_all(req.as_bytes())
        .await
        .map_err(|e| fail(format!("cannot send the request: {e}")))?;
    // headers are small: 64 KiB of them is plenty
    let cap = max_bytes + 64 * 1024;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = conn
            .read(&mut chunk)
            .await
            .map_err(|e| fail(format!("read failed: {e}")))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > cap {
            return Err(ApiError::too_large(format!(
                "image_url: {url} is more than the limit of {max_bytes} bytes"
            )));
        }
    }
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Err(fail("no complete HTTP response".into()));
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let body = buf.split_off(end + 4);
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| fail("not an HTTP response".into()))?;
    if status != 200 {
        let hint = if (300..400).contains(&status) {
            " (redirects are not followed)"
        } else {
            ""
        };
        return Err(fail(format!("the server answered {status}{hint}")));
    }
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if k.trim().eq_ignore_ascii_case("transfer-encoding")
                && !v.trim().eq_ignore_ascii_case("identity")
            {
                return Err(fail(format!("unsupported transfer encoding {}", v.trim())));
            }
        }
    }
    if body.len() > max_bytes {
        return Err(ApiError::too_large(format!(
            "image_url: {url} is {} bytes, more than the limit of {max_bytes} bytes",
            body.len()
        )));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sources(root: Option<PathBuf>, http: bool) -> ImageSources {
        ImageSources {
            file_root: root,
            allow_http: http,
            fetch_timeout: Duration::from_millis(2000),
        }
    }

    fn block<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn data_urls_decode_and_other_schemes_are_refused_by_default() {
        let off = sources(None, false);
        assert_eq!(
            block(load("data:image/png;base64,AAEC", &off, 100)).unwrap(),
            vec![0, 1, 2]
        );
        for (url, want) in [
            ("data:image/png,%00", "only base64"),
            ("file:///etc/passwd", "--image-root"),
            ("http://127.0.0.1:1/x.png", "--allow-http-images"),
            ("https://example.com/x.png", "no TLS"),
            ("ftp://example.com/x.png", "unsupported URL scheme"),
        ] {
            let e = block(load(url, &off, 100)).unwrap_err();
            assert!(e.error.contains(want), "{url}: {e}");
        }
    }

    #[test]
    fn file_urls_stay_under_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("images");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("a b.png"), b"pixels").unwrap();
        std::fs::write(dir.path().join("secret.txt"), b"no").unwrap();
        let src = sources(Some(root.clone()), false);
        let url = |p: &Path| format!("file://{}", p.display()).replace(' ', "%20");
        assert_eq!(
            block(load(&url(&root.join("a b.png")), &src, 100)).unwrap(),
            b"pixels"
        );
        // escaping the root by .. or by a symlink, a folder, a missing file: refused
        for bad in [
            root.join("../secret.txt"),
            root.clone(),
            root.join("missing.png"),
        ] {
            let e = block(load(&url(&bad), &src, 100)).unwrap_err();
            assert!(e.error.contains("not a file under"), "{e}");
        }
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("link.png"))
                .unwrap();
            let e = block(load(&url(&root.join("link.png")), &src, 100)).unwrap_err();
            assert!(e.error.contains("not a file under"), "{e}");
        }
        let e = block(load(&url(&root.join("a b.png")), &src, 3)).unwrap_err();
        assert_eq!(e.error_type, ErrorType::PayloadTooLarge, "{e}");
    }

    /// Serves one canned HTTP response per connection on a loopback port.
    fn serve_once(response: Vec<u8>, delay: Duration) -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            if let Ok((mut s, _)) = l.accept() {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                std::thread::sleep(delay);
                let _ = s.write_all(&response);
            }
        });
        port
    }

    #[test]
    fn http_fetch_with_status_size_and_time_limits() {
        let src = sources(None, true);
        let ok = b"HTTP/1.0 200 OK\r\nContent-Type: image/png\r\n\r\nIMAGE".to_vec();
        let port = serve_once(ok.clone(), Duration::ZERO);
        let url = format!("http://127.0.0.1:{port}/cat.png?x=1");
        assert_eq!(block(load(&url, &src, 100)).unwrap(), b"IMAGE");

        let port = serve_once(ok, Duration::ZERO);
        let e = block(load(&format!("http://127.0.0.1:{port}/"), &src, 3)).unwrap_err();
        assert_eq!(e.error_type, ErrorType::PayloadTooLarge, "{e}");

        let port = serve_once(
            b"HTTP/1.1 302 Found\r\nLocation: /x\r\n\r\n".to_vec(),
            Duration::ZERO,
        );
        let e = block(load(&format!("http://127.0.0.1:{port}/"), &src, 100)).unwrap_err();
        assert!(
            e.error.contains("302") && e.error.contains("redirect"),
            "{e}"
        );

        let slow = ImageSources {
            fetch_timeout: Duration::from_millis(200),
            ..src
        };
        let port = serve_once(b"HTTP/1.0 200 OK\r\n\r\nx".to_vec(), Duration::from_secs(3));
        let e = block(load(&format!("http://127.0.0.1:{port}/"), &slow, 100)).unwrap_err();
        assert_eq!(e.error_type, ErrorType::Timeout, "{e}");
    }

    #[test]
    fn http_urls_split_into_host_port_path() {
        assert_eq!(
            split_http_url("http://h:81/a/b.png?q#f").unwrap(),
            ("h".into(), 81, "/a/b.png?q".into())
        );
        assert_eq!(
            split_http_url("http://h").unwrap(),
            ("h".into(), 80, "/".into())
        );
        assert_eq!(
            split_http_url("http://[::1]:8080/x").unwrap(),
            ("::1".into(), 8080, "/x".into())
        );
        assert!(split_http_url("http://user@h/x").is_err());
        assert!(split_http_url("http://h:port/x").is_err());
    }
}
