//! The HTTP side: one `reqwest` client per command, the service's error answers mapped onto
//! [`Error`], and transient failures retried with exponential backoff.

use crate::error::{Error, Result};
use reqwest::{header, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Base path of the API.
pub const API: &str = "/image-management/v1";
/// How long to wait for a TCP (and TLS) connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a merge may send nothing at least: it may join and hash a whole image before it
/// answers.
const MERGE_READ_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// First backoff delay; doubled on every retry up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest backoff delay between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(16);

/// How often a failed request is tried again, and how long it waits in between.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Retries after the first attempt (0: fail at once).
    pub retries: u32,
}

impl Retry {
    /// The delay before retry `n` (0-based): 0.5 s, 1 s, 2 s, ... up to 16 s.
    pub fn delay(n: u32) -> Duration {
        FIRST_BACKOFF
            .saturating_mul(1u32.checked_shl(n).unwrap_or(u32::MAX))
            .min(MAX_BACKOFF)
    }
}

/// A client of one service.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    /// [`Api::http`] with at least [`MERGE_READ_TIMEOUT`].
    patient: reqwest::Client,
    base: String,
    /// The retry policy of every request sent through [`Api::send`].
    pub retry: Retry,
}

/// The service's error body: `{"code": "...", "message": "..."}`.
#[derive(serde::Deserialize)]
struct ErrorBody {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// What one attempt came to.
enum Attempt {
    Done(Response),
    /// Worth another attempt (connection trouble, 5xx, 408, 429).
    Transient(Error),
    Fatal(Error),
}

impl Api {
    /// A client of the service at `server` (scheme, host, port), sending `token` as a Bearer
    /// credential when given. A request that receives no byte for `read_timeout` (a hung
    /// service or a dead path: one that stops answering, or stops mid-body) fails, and is
    /// retried.
    pub fn new(
        server: &str,
        token: Option<&str>,
        retry: Retry,
        read_timeout: Duration,
    ) -> Result<Api> {
        let mut headers = header::HeaderMap::new();
        if let Some(t) = token.filter(|t| !t.is_empty()) {
            let mut v = header::HeaderValue::from_str(&format!("Bearer {t}"))
                .map_err(|_| Error::Usage("the token holds characters a header cannot".into()))?;
            v.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, v);
        }
        let client = |read_timeout| {
            reqwest::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .read_timeout(read_timeout)
                .default_headers(headers.clone())
                .user_agent(concat!("fsctl/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| Error::Usage(format!("cannot build the HTTP client: {e}")))
        };
        let patient = client(read_timeout.max(MERGE_READ_TIMEOUT))?;
        let http = client(read_timeout)?;
        let base = server.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::Usage(format!(
                "--server {server:?} must start with http:// or https://"
            )));
        }
        Ok(Api {
            http,
            patient,
            base,
            retry,
        })
    }

    /// The URL of an API path (`/images/{id}` -> `http://host/image-management/v1/images/{id}`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{API}{path}", self.base)
    }

    /// The underlying client, to build requests for [`Api::send`]: the read timeout given to
    /// [`Api::new`] (`--timeout`) without a byte from the service is a timeout (retried).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// [`Api::http`] for a request the service may think over for long before it answers (a
    /// merge): 30 minutes at least.
    pub fn patient_http(&self) -> &reqwest::Client {
        &self.patient
    }

    /// Sends the request `make` builds, again after transient failures, and returns the first
    /// successful (2xx) response. `before_retry` runs before each further attempt (to undo
    /// progress the failed attempt reported). `what` names the request in messages.
    pub async fn send_with(
        &self,
        what: &str,
        mut make: impl FnMut() -> RequestBuilder,
        mut before_retry: impl FnMut(),
    ) -> Result<Response> {
        let mut n = 0;
        loop {
            match attempt(what, make()).await {
                Attempt::Done(r) => return Ok(r),
                Attempt::Fatal(e) => return Err(e),
                Attempt::Transient(e) if n >= self.retry.retries => return Err(e),
                Attempt::Transient(_) => {
                    tokio::time::sleep(Retry::delay(n)).await;
                    n += 1;
                    before_retry();
                }
            }
        }
    }

    /// [`Api::send_with`] without a retry hook.
    pub async fn send(&self, what: &str, make: impl FnMut() -> RequestBuilder) -> Result<Response> {
        self.send_with(what, make, || {}).await
    }

    /// GETs an API path and reads its JSON answer.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let url = self.url(path);
        let r = self
            .send(&format!("GET {path}"), || self.http.get(&url))
            .await?;
        read_json(r, path).await
    }

    /// The body of a successful plain-text answer: a 200 `text/plain` whose body is one of
    /// `expected`, the service's texts for this request (SPEC: `delete success`, `cancel
    /// success`, `compress in progress`, ...). Anything else (a web page a proxy or a wrong
    /// `--server` answered with, JSON, another text, another 2xx) is `Protocol`: the request
    /// may not have reached the service, so it is not reported done.
    pub async fn text(r: Response, what: &str, expected: &[&str]) -> Result<String> {
        let media_type = r
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        let status = r.status().as_u16();
        let body = r
            .text()
            .await
            .map_err(|e| Error::Unavailable(format!("{what}: the answer broke off: {e}")))?;
        if status == 200 && media_type == "text/plain" && expected.contains(&body.as_str()) {
            return Ok(body);
        }
        let shown: String = body.chars().take(120).collect();
        let media_type = match media_type.as_str() {
            "" => "no content type",
            t => t,
        };
        Err(Error::Protocol(format!(
            "{what}: HTTP {status} with {media_type}, not the service's answer \
             (is --server the service's address?): {shown:?}"
        )))
    }
}

/// Reads a successful response's JSON body.
pub async fn read_json<T: DeserializeOwned>(r: Response, what: &str) -> Result<T> {
    let bytes = r
        .bytes()
        .await
        .map_err(|e| Error::Unavailable(format!("{what}: the answer broke off: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        Error::Protocol(format!(
            "{what}: {e}: {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        ))
    })
}

/// One attempt: sends, and sorts the outcome.
async fn attempt(what: &str, req: RequestBuilder) -> Attempt {
    let r = match req.send().await {
        Ok(r) => r,
        Err(e) => return Attempt::Transient(transport_error(what, &e)),
    };
    let status = r.status();
    if status.is_success() {
        return Attempt::Done(r);
    }
    let body = r.bytes().await.unwrap_or_default();
    let parsed: Option<ErrorBody> = serde_json::from_slice(&body).ok();
    let (code, message) = match parsed {
        Some(b) => (b.code, b.message),
        None => (
            String::new(),
            String::from_utf8_lossy(&body[..body.len().min(300)])
                .trim()
                .to_string(),
        ),
    };
    let message = if message.is_empty() {
        status.canonical_reason().unwrap_or("").to_string()
    } else {
        message
    };
    classify(what, status, code, message)
}

/// Maps an error status onto an [`Error`], transient or not.
fn classify(what: &str, status: StatusCode, code: String, message: String) -> Attempt {
    match status {
        StatusCode::NOT_FOUND => Attempt::Fatal(Error::NotFound(message)),
        // 409 is not here: a chunk for a merged upload is a lasting conflict; only the merge's
        // "a merge is running, ask again" is worth waiting for (upload.rs does).
        StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS => {
            Attempt::Transient(Error::Refused {
                status: status.as_u16(),
                code,
                message,
            })
        }
        // The image's bytes are gone from the store: asking again cannot bring them back, and
        // the image is not usable (exit 5), though the service itself is up.
        _ if code == "OBJECT_MISSING" => {
            Attempt::Fatal(Error::Verification(format!("{what}: {message}")))
        }
        s if s.is_server_error() => Attempt::Transient(Error::Unavailable(format!(
            "{what}: {} {code} {message}",
            s.as_u16()
        ))),
        s => Attempt::Fatal(Error::Refused {
            status: s.as_u16(),
            code,
            message,
        }),
    }
}

/// A request that got no answer: connection refused, reset, timed out, body broken off.
pub fn transport_error(what: &str, e: &reqwest::Error) -> Error {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    Error::Unavailable(format!("{what}: {msg}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_bounded() {
        assert_eq!(Retry::delay(0), Duration::from_millis(500));
        assert_eq!(Retry::delay(1), Duration::from_secs(1));
        assert_eq!(Retry::delay(3), Duration::from_secs(4));
        assert_eq!(Retry::delay(10), MAX_BACKOFF);
        assert_eq!(Retry::delay(40), MAX_BACKOFF);
    }

    #[test]
    fn statuses_map_to_errors() {
        let kind = |s: u16| match classify(
            "x",
            StatusCode::from_u16(s).unwrap(),
            "C".into(),
            "m".into(),
        ) {
            Attempt::Done(_) => "done",
            Attempt::Transient(_) => "transient",
            Attempt::Fatal(e) => e.kind(),
        };
        assert_eq!(kind(404), "not_found");
        assert_eq!(kind(400), "refused");
        assert_eq!(kind(403), "refused");
        assert_eq!(kind(413), "refused");
        assert_eq!(kind(409), "refused");
        assert_eq!(kind(408), "transient");
        assert_eq!(kind(500), "transient");
        let missing = classify(
            "x",
            StatusCode::INTERNAL_SERVER_ERROR,
            "OBJECT_MISSING".into(),
            "m".into(),
        );
        assert!(matches!(missing, Attempt::Fatal(Error::Verification(_))));
        assert_eq!(kind(503), "transient");
    }
}
