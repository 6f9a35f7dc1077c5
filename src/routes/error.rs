//! The one place where errors become HTTP responses: status, stable machine code, message.
//! Internal details of 5xx errors are logged here, once, and never sent to clients.

use crate::{domain::Error, storage::StorageError};
use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use sea_orm::DbErr;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// For 416: the full size, sent as `Content-Range: bytes */size`.
    pub size: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            size: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "INVALID_PARAMETER", message)
    }
}

fn internal(
    status: StatusCode,
    code: &'static str,
    public: &str,
    detail: &dyn std::fmt::Display,
) -> ApiError {
    tracing::error!(error.code = code, error = %detail, "request failed");
    ApiError::new(status, code, public)
}

fn db_error(e: &DbErr) -> ApiError {
    match e {
        DbErr::Conn(_) | DbErr::ConnectionAcquire(_) => internal(
            StatusCode::SERVICE_UNAVAILABLE,
            "DATABASE_UNAVAILABLE",
            "the metadata database is unavailable, try again later",
            e,
        ),
        _ => internal(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "internal error",
            e,
        ),
    }
}

fn storage_error(e: &StorageError) -> ApiError {
    match e {
        StorageError::NotFound => internal(
            StatusCode::INTERNAL_SERVER_ERROR,
            "OBJECT_MISSING",
            "the image's data is missing from the store",
            e,
        ),
        StorageError::Unavailable(_) => internal(
            StatusCode::SERVICE_UNAVAILABLE,
            "STORAGE_UNAVAILABLE",
            "the object store is unavailable, try again later",
            e,
        ),
        StorageError::Io(io) if io.raw_os_error() == Some(libc::ENOSPC) => internal(
            StatusCode::INSUFFICIENT_STORAGE,
            "INSUFFICIENT_STORAGE",
            "the store is out of space",
            e,
        ),
        StorageError::Body(io) if io.kind() == std::io::ErrorKind::TimedOut => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "REQUEST_TIMEOUT",
            Error::BodyTimeout.to_string(),
        ),
        StorageError::Body(io) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "BAD_BODY",
            format!("the request body could not be read: {io}"),
        ),
        _ => internal(
            StatusCode::INTERNAL_SERVER_ERROR,
            "STORAGE_ERROR",
            "internal storage error",
            e,
        ),
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        use StatusCode as S;
        let msg = e.to_string();
        match e {
            Error::NoFile => ApiError::new(S::BAD_REQUEST, "NO_FILE", msg),
            Error::InvalidFileName(_) => ApiError::new(S::BAD_REQUEST, "INVALID_FILE_NAME", msg),
            Error::TooLarge => ApiError::new(S::PAYLOAD_TOO_LARGE, "FILE_TOO_LARGE", msg),
            Error::InvalidInput(_) => ApiError::new(S::BAD_REQUEST, "INVALID_PARAMETER", msg),
            Error::InvalidZip(_) => ApiError::new(S::BAD_REQUEST, "INVALID_ZIP", msg),
            Error::MissingChunks(_) => ApiError::new(S::BAD_REQUEST, "MISSING_CHUNKS", msg),
            Error::ChecksumMismatch(_) => ApiError::new(S::BAD_REQUEST, "CHECKSUM_MISMATCH", msg),
            Error::SizeMismatch(_) => ApiError::new(S::BAD_REQUEST, "SIZE_MISMATCH", msg),
            Error::BadBody(_) => ApiError::new(S::BAD_REQUEST, "BAD_BODY", msg),
            Error::BodyTimeout => ApiError::new(S::REQUEST_TIMEOUT, "REQUEST_TIMEOUT", msg),
            Error::ImageNotFound(_) => ApiError::new(S::NOT_FOUND, "IMAGE_NOT_FOUND", msg),
            Error::NotFound(_) => ApiError::new(S::NOT_FOUND, "NOT_FOUND", msg),
            Error::Conflict(_) => ApiError::new(S::CONFLICT, "CONFLICT", msg),
            Error::Forbidden(_) => ApiError::new(S::FORBIDDEN, "FORBIDDEN", msg),
            Error::QuotaExceeded(_) => ApiError::new(S::PAYLOAD_TOO_LARGE, "QUOTA_EXCEEDED", msg),
            Error::SlimRefused(_) => ApiError::new(S::BAD_REQUEST, "SLIM_REFUSED", msg),
            Error::RangeNotSatisfiable { size } => ApiError {
                size: Some(size),
                ..ApiError::new(S::RANGE_NOT_SATISFIABLE, "RANGE_NOT_SATISFIABLE", msg)
            },
            Error::Storage(ref s) => storage_error(s),
            Error::Db(ref d) => db_error(d),
            Error::Internal(ref m) => {
                internal(S::INTERNAL_SERVER_ERROR, "INTERNAL", "internal error", m)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "code": self.code, "message": self.message });
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(size) = self.size {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
        }
        resp
    }
}
