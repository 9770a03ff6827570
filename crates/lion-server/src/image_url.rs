//! The bytes behind a chat API `image_url`: `data:` URLs (base64) always; `file://` under the
//! configured root only; `http://` (and, built with the `https-images` feature, `https://`:
//! rustls, Mozilla's roots plus `--image-ca`) only when allowed, fetched with a plain HTTP/1.0
//! GET within a size and a time limit (no redirects). Without the feature `https://` is refused
//! naming it. The bytes are then checked and decoded like every other image (see
//! [`crate::input`]).

use std::path::{Path, PathBuf};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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
    } else if lower.starts_with("http://") || lower.starts_with("https://") {
        let https = lower.starts_with("https://");
        if https && !cfg!(feature = "https-images") {
            return Err(ApiError::bad_request(
                "image_url: https:// URLs need a server built with `--features https-images` \
                 (this build has no TLS client); send the image as a data: URL",
            ));
        }
        if !src.allow_http {
            return Err(ApiError::bad_request(
                "image_url: http(s):// URLs are off on this server (start it with \
                 --allow-http-images), send the image as a data: URL",
            ));
        }
        let limit = src.fetch_timeout;
        tokio::time::timeout(limit, http_get(url, https, src, max_bytes))
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
    } else {
        let scheme = url.split(':').next().unwrap_or("");
        Err(ApiError::bad_request(format!(
            "image_url: unsupported URL scheme {scheme:?} (data:, file://, http://, https://)"
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

/// `http(s)://host[:port]/path` -> (host, port, path); the port defaults to 80 (443 for https).
fn split_http_url(url: &str, https: bool) -> Result<(String, u16, String), ApiError> {
    let rest = &url[if https {
        "https://".len()
    } else {
        "http://".len()
    }..];
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
        _ => (authority, if https { 443 } else { 80 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((host.to_string(), port, path.to_string()))
}

/// A GET over a fresh connection (TLS for https): status 200 required, body at most
/// `max_bytes`.
async fn http_get(
    url: &str,
    https: bool,
    src: &ImageSources,
    max_bytes: usize,
) -> Result<Vec<u8>, ApiError> {
    let (host, port, path) = split_http_url(url, https)?;
    let fail = |what: String| ApiError::bad_request(format!("image_url: {url}: {what}"));
    let conn = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| fail(format!("cannot connect: {e}")))?;
    if https {
        #[cfg(feature = "https-images")]
        {
            let tls = tls::connect(conn, &host, src.ca_file.as_deref())
                .await
                .map_err(fail)?;
            return exchange(tls, url, &host, &path, max_bytes).await;
        }
    }
    let _ = src;
    exchange(conn, url, &host, &path, max_bytes).await
}

/// Sends the GET on `conn` and reads the response to its end.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut conn: S,
    url: &str,
    host: &str,
    path: &str,
    max_bytes: usize,
) -> Result<Vec<u8>, ApiError> {
    let fail = |what: String| ApiError::bad_request(format!("image_url: {url}: {what}"));
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
    let mut unclean_close = false;
    loop {
        let n = match conn.read(&mut chunk).await {
            Ok(n) => n,
            // a TLS peer that closes without close_notify: the body is checked against its
            // Content-Length below, which must then be present
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                unclean_close = true;
                0
            }
            Err(e) => return Err(fail(format!("read failed: {e}"))),
        };
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
    let mut content_length = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if k.trim().eq_ignore_ascii_case("transfer-encoding")
                && !v.trim().eq_ignore_ascii_case("identity")
            {
                return Err(fail(format!("unsupported transfer encoding {}", v.trim())));
            }
            if k.trim().eq_ignore_ascii_case("content-length") {
                content_length = Some(
                    v.trim()
                        .parse::<usize>()
                        .map_err(|_| fail(format!("bad Content-Length {:?}", v.trim())))?,
                );
            }
        }
    }
    match content_length {
        Some(n) if n > max_bytes => {
            return Err(ApiError::too_large(format!(
                "image_url: {url} says it is {n} bytes, more than the limit of {max_bytes} bytes"
            )));
        }
        Some(n) if n != body.len() => {
            return Err(fail(format!(
                "the body has {} bytes, its Content-Length says {n} (cut short?)",
                body.len()
            )));
        }
        None if unclean_close => {
            return Err(fail(
                "the connection was cut (no TLS close_notify) and there is no Content-Length"
                    .into(),
            ));
        }
        _ => {}
    }
    if body.len() > max_bytes {
        return Err(ApiError::too_large(format!(
            "image_url: {url} is {} bytes, more than the limit of {max_bytes} bytes",
            body.len()
        )));
    }
    Ok(body)
}

/// TLS for `https://` image URLs: rustls on ring, Mozilla's root certificates (compiled in)
/// plus the PEM certificates of `--image-ca`.
#[cfg(feature = "https-images")]
pub mod tls {
    use std::path::Path;
    use std::sync::Arc;

    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

    /// The client configuration: Mozilla's roots, plus every certificate of `ca_file`. Errors
    /// name the file and what is wrong with it (checked at server start as well).
    pub fn client_config(ca_file: Option<&Path>) -> Result<ClientConfig, String> {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = ca_file {
            let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("--image-ca {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "--image-ca {}: no PEM certificate in the file",
                    path.display()
                ));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| format!("--image-ca {}: {e}", path.display()))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS set-up failed: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth())
    }

    /// The TLS handshake with `host` (a name or an IP address) over `conn`.
    pub async fn connect(
        conn: tokio::net::TcpStream,
        host: &str,
        ca_file: Option<&Path>,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
        let config = client_config(ca_file)?;
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| format!("{host:?} is not a valid TLS server name"))?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, conn)
            .await
            .map_err(|e| format!("TLS handshake failed: {e}"))
    }
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
            ca_file: None,
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
            (
                "https://example.com/x.png",
                if cfg!(feature = "https-images") {
                    "--allow-http-images"
                } else {
                    "--features https-images"
                },
            ),
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
            split_http_url("http://h:81/a/b.png?q#f", false).unwrap(),
            ("h".into(), 81, "/a/b.png?q".into())
        );
        assert_eq!(
            split_http_url("http://h", false).unwrap(),
            ("h".into(), 80, "/".into())
        );
        assert_eq!(
            split_http_url("http://[::1]:8080/x", false).unwrap(),
            ("::1".into(), 8080, "/x".into())
        );
        assert!(split_http_url("http://user@h/x", false).is_err());
        assert!(split_http_url("http://h:port/x", false).is_err());
        assert_eq!(
            split_http_url("https://h/x.png", true).unwrap(),
            ("h".into(), 443, "/x.png".into())
        );
    }

    /// A Content-Length the body does not reach: refused as cut short.
    #[test]
    fn a_body_shorter_than_its_content_length_is_refused() {
        let src = sources(None, true);
        let port = serve_once(
            b"HTTP/1.0 200 OK\r\nContent-Length: 10\r\n\r\nIMAGE".to_vec(),
            Duration::ZERO,
        );
        let e = block(load(&format!("http://127.0.0.1:{port}/"), &src, 100)).unwrap_err();
        assert!(e.error.contains("cut short"), "{e}");
        // a Content-Length over the limit is too large even when the body sent is short
        let port = serve_once(
            b"HTTP/1.0 200 OK\r\nContent-Length: 5000\r\n\r\nIMAGE".to_vec(),
            Duration::ZERO,
        );
        let e = block(load(&format!("http://127.0.0.1:{port}/"), &src, 100)).unwrap_err();
        assert_eq!(e.error_type, ErrorType::PayloadTooLarge, "{e}");
    }

    /// `https://` for real: a TLS server on loopback with the test certificate
    /// (scripts/make-test-cert.sh), trusted through `ca_file`; without it the handshake fails
    /// (Mozilla's roots do not hold it), naming the reason.
    #[cfg(feature = "https-images")]
    #[test]
    fn https_fetch_checks_the_certificate() {
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        use tokio_rustls::rustls::{self, ServerConfig};
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
        let cert = CertificateDer::from_pem_file(dir.join("cert.pem")).unwrap();
        let key = PrivateKeyDer::from_pem_file(dir.join("key.pem")).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = [0u8; 1024];
                    let _ = tls.read(&mut buf).await;
                    let _ = tls
                        .write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nIMAGE")
                        .await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        let url = format!("https://127.0.0.1:{port}/cat.png");
        let trusted = ImageSources {
            ca_file: Some(dir.join("cert.pem")),
            ..sources(None, true)
        };
        assert_eq!(rt.block_on(load(&url, &trusted, 100)).unwrap(), b"IMAGE");
        let e = rt
            .block_on(load(&url, &sources(None, true), 100))
            .unwrap_err();
        assert!(e.error.contains("TLS handshake failed"), "{e}");
        // a CA file without certificates is named
        let empty = dir.join("key.pem");
        let e = tls::client_config(Some(&empty)).unwrap_err();
        assert!(e.contains("key.pem"), "{e}");
    }
}
