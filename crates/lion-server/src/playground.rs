//! The playground: one page at `GET /` (HTML, JS and CSS compiled into the binary, no build step,
//! nothing fetched from elsewhere) to try the LION endpoints from a browser: pick or drop an
//! image, a task and a question or expression; it shows the answer, the box on the image, the
//! tags with their scores and the time the request took.

use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, ErrorType};

const INDEX: &str = include_str!("../static/index.html");
const SCRIPT: &str = include_str!("../static/playground.js");
const STYLE: &str = include_str!("../static/playground.css");

/// Only this server's own files and the chosen image (a blob: URL) may load.
const CSP: &str = "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; \
                   script-src 'self'; connect-src 'self'";

fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `GET /`
pub async fn page() -> Response {
    file("text/html; charset=utf-8", INDEX)
}

/// `GET /playground/{file}`: the page's script and style sheet.
pub async fn asset(Path(name): Path<String>) -> Response {
    match name.as_str() {
        "playground.js" => file("text/javascript; charset=utf-8", SCRIPT),
        "playground.css" => file("text/css; charset=utf-8", STYLE),
        _ => ApiError::new(
            ErrorType::NotFound,
            format!("no such playground file: {name}"),
        )
        .into_response(),
    }
}
