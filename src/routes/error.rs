//! Errors rendered as HTTP responses: status, stable machine code, message. What each domain
//! error is answered with is decided in the domain ([`crate::domain::Error::answer`]); here it
//! is rendered, and the internal detail of a fault of the service is logged, once, and never
//! sent.

use crate::domain::{Code, Error};
use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};

/// The `Retry-After` of a 503 answer (seconds).
pub const RETRY_AFTER_SECS: &str = "5";

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// For 416: the full size, sent as `Content-Range: bytes */size`.
    pub size: Option<u64>,
}

impl ApiError {
    /// An answer with `code` (and its status) and `message`.
    pub fn of(code: Code, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::from_u16(code.status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code: code.as_str(),
            message: message.into(),
            size: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::of(Code::InvalidParameter, message)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let answer = e.answer();
        if let Some(detail) = &answer.internal {
            tracing::error!(error.code = answer.code.as_str(), error = %detail, "request failed");
        }
        ApiError {
            size: answer.size,
            ..ApiError::of(answer.code, answer.message)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "code": self.code, "message": self.message });
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            // "Try again later" (RFC 9110 section 10.2.3): the store, the database or an
            // upload slot may be back by then.
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        if let Some(size) = self.size {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
        }
        resp
    }
}
