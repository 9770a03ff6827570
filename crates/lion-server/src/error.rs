//! Every rejection is `{"error": message, "error_type": kind}` with one status per kind; the
//! mapping lives in [`ErrorType::status`] and nowhere else.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::backend::BackendError;

/// The kinds of error the API answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorType {
    /// 400: malformed JSON or multipart, bad base64, an image that does not decode.
    BadRequest,
    /// 422: well-formed but invalid: unknown or missing field, wrong type, a value out of range.
    Validation,
    /// 413: the body or the image is larger than the server accepts.
    PayloadTooLarge,
    /// 415: neither JSON nor multipart where one is needed.
    UnsupportedMediaType,
    /// 404
    NotFound,
    /// 405
    MethodNotAllowed,
    /// 408: the request body did not arrive within the body timeout.
    RequestTimeout,
    /// 429: the queue is full, or the decoded-image budget is in use.
    Overloaded,
    /// 501: the server has no model for this endpoint.
    ModelNotLoaded,
    /// 503: the model worker is gone (shut down or crashed).
    Unavailable,
    /// 504: the request took longer than the server's request timeout.
    Timeout,
    /// 500: the model failed on the batch.
    Backend,
}

impl ErrorType {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorType::BadRequest => StatusCode::BAD_REQUEST,
            ErrorType::Validation => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorType::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorType::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorType::NotFound => StatusCode::NOT_FOUND,
            ErrorType::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorType::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorType::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            ErrorType::ModelNotLoaded => StatusCode::NOT_IMPLEMENTED,
            ErrorType::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorType::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorType::Backend => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Every kind, for the OpenAPI document.
    pub const ALL: [ErrorType; 12] = [
        ErrorType::BadRequest,
        ErrorType::Validation,
        ErrorType::PayloadTooLarge,
        ErrorType::UnsupportedMediaType,
        ErrorType::NotFound,
        ErrorType::MethodNotAllowed,
        ErrorType::RequestTimeout,
        ErrorType::Overloaded,
        ErrorType::ModelNotLoaded,
        ErrorType::Unavailable,
        ErrorType::Timeout,
        ErrorType::Backend,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ErrorType::BadRequest => "bad_request",
            ErrorType::Validation => "validation",
            ErrorType::PayloadTooLarge => "payload_too_large",
            ErrorType::UnsupportedMediaType => "unsupported_media_type",
            ErrorType::NotFound => "not_found",
            ErrorType::MethodNotAllowed => "method_not_allowed",
            ErrorType::RequestTimeout => "request_timeout",
            ErrorType::Overloaded => "overloaded",
            ErrorType::ModelNotLoaded => "model_not_loaded",
            ErrorType::Unavailable => "unavailable",
            ErrorType::Timeout => "timeout",
            ErrorType::Backend => "backend",
        }
    }
}

/// An API error: answered as JSON with the status of its type.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiError {
    pub error: String,
    pub error_type: ErrorType,
}

impl ApiError {
    pub fn new(error_type: ErrorType, msg: impl Into<String>) -> Self {
        Self {
            error: msg.into(),
            error_type,
        }
    }
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::new(ErrorType::BadRequest, msg)
    }
    pub fn validation(msg: impl Into<String>) -> Self {
        Self::new(ErrorType::Validation, msg)
    }
    pub fn too_large(msg: impl Into<String>) -> Self {
        Self::new(ErrorType::PayloadTooLarge, msg)
    }
    pub fn status(&self) -> StatusCode {
        self.error_type.status()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.error, self.error_type.name())
    }
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        let t = match &e {
            BackendError::NotLoaded { .. } => ErrorType::ModelNotLoaded,
            BackendError::Inference(_) => ErrorType::Backend,
            BackendError::Unhealthy(_) => ErrorType::Unavailable,
        };
        ApiError::new(t, e.to_string())
    }
}

/// A JSON response with the given status.
pub fn json_response(status: StatusCode, value: &impl Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "application/json")],
            format!(r#"{{"error":"cannot serialise the response: {e}","error_type":"backend"}}"#),
        )
            .into_response(),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_response(self.status(), &self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialised_error_type_is_the_name() {
        for t in ErrorType::ALL {
            let v = serde_json::to_value(ApiError::new(t, "m")).unwrap();
            assert_eq!(v["error_type"], t.name());
            assert_eq!(v["error"], "m");
        }
    }

    #[test]
    fn statuses_are_distinct_per_type() {
        let mut seen = std::collections::HashSet::new();
        for t in ErrorType::ALL {
            assert!(seen.insert(t.status()), "{t:?} shares a status");
        }
    }
}
