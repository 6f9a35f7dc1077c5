//! S3 SDK errors as storage errors: the variant callers act on, and one short line an operator
//! can read.

use super::{ByteRange, StorageError};
use aws_sdk_s3::{
    config::http::HttpResponse,
    error::{DisplayErrorContext, ProvideErrorMetadata, SdkError},
};

/// Maps SDK failures: the network or a 5xx means the store is unavailable.
/// An SDK error as the variant callers act on, with a short message an operator can read:
/// the HTTP status with the store's error code and message, a hint for the bodiless 400/403
/// answers of HEAD requests, or why the endpoint could not be reached. The SDK's whole
/// nested structure goes to the DEBUG log only.
pub(super) fn s3_err<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    e: SdkError<E, HttpResponse>,
) -> StorageError {
    s3_err_at(None, e)
}

/// `s3_err`, naming `endpoint` when it cannot be reached.
pub(super) fn s3_err_at<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    endpoint: Option<&str>,
    e: SdkError<E, HttpResponse>,
) -> StorageError {
    tracing::debug!(error = %DisplayErrorContext(&e), "S3 request failed");
    let msg = describe(endpoint, &e);
    match &e {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            StorageError::Unavailable(msg)
        }
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or("");
            if matches!(
                code,
                "ServiceUnavailable" | "SlowDown" | "InternalError" | "RequestTimeout"
            ) {
                StorageError::Unavailable(msg)
            } else if matches!(code, "NoSuchUpload") {
                StorageError::NoSuchUpload
            } else if matches!(code, "NoSuchKey" | "NotFound") {
                StorageError::NotFound
            } else if matches!(code, "EntityTooSmall" | "InvalidPart" | "InvalidPartOrder") {
                StorageError::InvalidPart(msg)
            } else {
                StorageError::Io(std::io::Error::other(msg))
            }
        }
        _ => StorageError::Io(std::io::Error::other(msg)),
    }
}

/// The message of `s3_err`: one short line.
fn describe<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    endpoint: Option<&str>,
    e: &SdkError<E, HttpResponse>,
) -> String {
    let at = endpoint.unwrap_or("the S3 endpoint");
    match e {
        SdkError::ServiceError(se) => {
            let raw = se.raw();
            let status = raw.status().as_u16();
            let err = se.err();
            match (err.code(), err.message()) {
                (Some(code), Some(message)) if !message.is_empty() => {
                    format!("S3 {status} {code}: {}", clip(message))
                }
                (Some(code), _) => format!("S3 {status} {code}"),
                // HEAD answers have no body, so no code: say what the status usually means.
                (None, _) => match status {
                    403 => {
                        "S3 403 Forbidden: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY".into()
                    }
                    400 => "S3 400 Bad Request: check FS_S3_REGION".into(),
                    301 => match raw.headers().get("x-amz-bucket-region") {
                        Some(r) => format!(
                            "S3 301: the bucket is in region {}: check FS_S3_REGION",
                            clip(r)
                        ),
                        None => "S3 301: the bucket is elsewhere: check FS_S3_REGION".into(),
                    },
                    404 => "S3 404 Not Found".into(),
                    s => format!("S3 {s}"),
                },
            }
        }
        SdkError::DispatchFailure(df) => {
            if chain(e).contains("loading credentials") {
                // The AWS chain found no credentials (it ends asking the EC2 metadata service).
                format!(
                    "no S3 credentials: set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (the AWS \
                     credentials chain ended with: {})",
                    root_cause(e)
                )
            } else if df.is_timeout() {
                format!("S3 at {at} did not answer in time")
            } else {
                format!("cannot reach S3 at {at}: {}", root_cause(e))
            }
        }
        SdkError::TimeoutError(_) => format!("S3 at {at} did not answer in time"),
        SdkError::ResponseError(re) => format!(
            "S3 at {at} sent an answer that cannot be read (HTTP {})",
            re.raw().status().as_u16()
        ),
        SdkError::ConstructionFailure(_) => {
            format!("S3 request could not be built: {}", root_cause(e))
        }
        _ => format!("S3 request failed: {}", root_cause(e)),
    }
}

/// Every cause's text, outermost first.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut inner = e;
    while let Some(next) = inner.source() {
        text.push_str(": ");
        text.push_str(&next.to_string());
        inner = next;
    }
    text
}

/// The innermost cause's own text (`Connection refused (os error 111)`, `failed to lookup
/// address information: ...`), without the SDK's wrappers.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    clip(&inner.to_string())
}

/// At most 200 characters of `s`, on one line.
fn clip(s: &str) -> String {
    let line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &line[..i]),
        None => line,
    }
}

/// The error for a range that does not lie inside the object (HTTP 416 from the store, or a
/// store that clamped the end): the same `InvalidPart` the local store gives.
pub(super) fn outside(r: ByteRange) -> StorageError {
    StorageError::InvalidPart(format!(
        "bytes {}-{} are outside the object",
        r.start, r.end
    ))
}
