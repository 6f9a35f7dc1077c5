//! HTTP layer: every route in one place. Handlers only extract, call the domain and shape the
//! response; this is the only module that knows axum.

pub mod audit;
pub mod auth;
mod bounded;
mod conditional;
pub mod console;
pub mod docs;
mod drain;
pub mod error;
pub mod extract;
pub mod images;
mod metered;
mod min_rate;
pub mod quotas;
pub mod serve;
pub mod sidecar;
pub mod views;

use crate::{auth::Authenticator, domain::Service};
use axum::{
    extract::{DefaultBodyLimit, Request, State},
    http::{header, HeaderName, HeaderValue, Method},
    middleware,
    response::{IntoResponse, Response},
    Json, Router,
};
use error::ApiError;
use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};
use tower_http::{
    cors::{AllowOrigin, Any, CorsLayer},
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    timeout::RequestBodyTimeoutLayer,
    trace::TraceLayer,
};
use utoipa::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};

pub const BASE: &str = "/image-management/v1";

/// Every route, each registered with its OpenAPI description.
fn documented() -> OpenApiRouter<Service> {
    let api = OpenApiRouter::new()
        .routes(routes!(images::upload, images::list))
        .routes(routes!(
            images::upload_chunk,
            images::cancel_upload,
            images::upload_query
        ))
        .routes(routes!(images::merge))
        .routes(routes!(images::get_image, images::delete_image))
        .routes(routes!(images::download))
        .routes(routes!(images::slim))
        .routes(routes!(images::check))
        .routes(routes!(quotas::get_quota, quotas::set_quota))
        .routes(routes!(quotas::usage));
    OpenApiRouter::with_openapi(docs::ApiDoc::openapi())
        .nest(BASE, api)
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
}

/// The OpenAPI document of every route.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = documented().split_for_parts().1;
    docs::add_bearer_security(&mut doc);
    doc
}

/// The whole service. `authenticator` is `None` with authentication off (`FS_AUTH=none`).
pub fn router(svc: Service, authenticator: Option<Arc<Authenticator>>) -> Router {
    let (routes, _) = documented().split_for_parts();
    let gate = auth::Gate::new(&svc.config().auth, authenticator);
    let request_id = HeaderName::from_static("x-request-id");
    let limits = drain::DrainLimits {
        max_bytes: svc.config().drain_max_bytes,
        timeout: Duration::from_secs(svc.config().drain_timeout_secs),
        idle: Duration::from_secs(svc.config().body_idle_timeout_secs),
    };
    let min_rate = min_rate::MinRate {
        bytes_per_sec: svc.config().body_min_bytes_per_sec,
        window: Duration::from_secs(svc.config().body_idle_timeout_secs),
    };
    routes
        // The web console (`/`, `/console/...`): outside the API base, so open with auth on.
        .merge(console::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Bodies are streamed and their limits enforced by the domain; a client that stops
        // sending fails its request instead of holding an upload slot forever.
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyTimeoutLayer::new(Duration::from_secs(
            svc.config().body_idle_timeout_secs,
        )))
        // ... nor by sending a trickle that never goes silent for that long.
        .layer(middleware::map_request(move |req: Request| async move {
            req.map(|body| min_rate.wrap(body))
        }))
        .layer(middleware::from_fn(identity_bodies_only))
        .layer(middleware::from_fn(one_host))
        // Inside `metered` (a refusal is counted and has its access line), `cors` (a preflight
        // is answered before it; a 401 carries the CORS headers a browser needs to read it)
        // and `drain::linger` (a refused upload's body is drained, so the 401 arrives).
        .layer(middleware::from_fn_with_state(gate, auth::gate))
        .layer(middleware::from_fn_with_state(svc.clone(), metered::track))
        .layer(cors(&svc))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<_>| {
                    let id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
                })
                .on_request(())
                // A 5xx is logged where it arises (a fault of the service, once, with its
                // detail); a 503 the service chose (busy, not ready) is no error to alert on.
                .on_failure(())
                // The access line is written by `metered` once the response body is done:
                // here it would be written when the headers go out.
                .on_response(()),
        )
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        // Before the id is taken: one the client sent that could break a log line is replaced.
        .layer(middleware::map_request(safe_request_id))
        // Outermost: whatever answered (a handler, an extractor's rejection, a fallback, a
        // layer), what it left of the request body is drained before the answer goes out.
        .layer(middleware::from_fn_with_state(limits, drain::linger))
        .with_state(svc)
}

/// Refuses a request whose body is in a content coding (`Content-Encoding: gzip`, ...): no
/// route decodes one, and storing the coded bytes as an image would keep the wrong bytes.
/// Answered 415 `UNSUPPORTED_ENCODING` with `Accept-Encoding: identity`, as RFC 9110 15.5.16
/// and 12.5.3 describe; `identity` itself is accepted.
///
/// A transfer coding other than `chunked` (`Transfer-Encoding: gzip, chunked`) is refused the
/// same way, with 501 `UNSUPPORTED_TRANSFER_CODING` (RFC 9112 6.1): hyper takes the chunks
/// apart and leaves the other coding on the bytes.
async fn identity_bodies_only(req: Request, next: middleware::Next) -> Response {
    if has_coding_besides(&req, header::TRANSFER_ENCODING, "chunked") {
        return ApiError::of(
            crate::domain::Code::UnsupportedTransferCoding,
            "the request body has a Transfer-Encoding other than chunked; send it chunked only",
        )
        .into_response();
    }
    let coded = has_coding_besides(&req, header::CONTENT_ENCODING, "identity");
    if !coded {
        return next.run(req).await;
    }
    let mut refused = ApiError::of(
        crate::domain::Code::UnsupportedEncoding,
        "the request body has a Content-Encoding; send it uncoded (identity)",
    )
    .into_response();
    refused.headers_mut().insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    refused
}

/// Refuses an HTTP/1.1 request without a `Host` header, with more than one, or with one that
/// is not a valid `uri-host [":" port]` (RFC 9112 section 3.2: a user name, a space, a path, a
/// port past 65535, a list), as a 400 `INVALID_PARAMETER`. HTTP/1.0 may omit it; HTTP/2
/// carries `:authority` instead.
async fn one_host(req: Request, next: middleware::Next) -> Response {
    let hosts: Vec<_> = req.headers().get_all(header::HOST).iter().collect();
    let valid = match hosts[..] {
        [host] => valid_host(host),
        _ => false,
    };
    if req.version() != axum::http::Version::HTTP_11 || valid {
        return next.run(req).await;
    }
    ApiError::of(
        crate::domain::Code::InvalidParameter,
        "an HTTP/1.1 request must have exactly one valid Host header (RFC 9112 section 3.2)",
    )
    .into_response()
}

/// Whether `value` is a `Host` field value: `uri-host [":" port]` of RFC 3986, no user
/// information, a port of at most 65535; empty is allowed (RFC 9110 7.2).
fn valid_host(value: &HeaderValue) -> bool {
    let Ok(text) = value.to_str() else {
        return false;
    };
    if text.is_empty() {
        return true;
    }
    let Ok(authority) = text.parse::<axum::http::uri::Authority>() else {
        return false;
    };
    // After the last `:` outside an IPv6 literal's brackets.
    let port = text.rsplit_once(':').filter(|_| !text.ends_with(']'));
    let port_ok = port.is_none_or(|(_, p)| p.parse::<u16>().is_ok());
    !text.contains('@') && !authority.host().is_empty() && port_ok
}

/// Whether the comma-separated codings in `req`'s `name` headers hold one other than `allowed`
/// (compared without case; a value that is not text counts as another coding).
fn has_coding_besides(req: &Request, name: header::HeaderName, allowed: &str) -> bool {
    req.headers()
        .get_all(name)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(str::trim)
        .any(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case(allowed))
}

/// The longest `X-Request-Id` a client may choose (characters).
const MAX_REQUEST_ID: usize = 128;

/// Keeps a client's `X-Request-Id` only when it is 1 to [`MAX_REQUEST_ID`] characters of
/// `A-Z a-z 0-9 . _ : -` (a UUID, a trace id); any other (quotes, spaces, control or non-ASCII
/// characters, overlong) is dropped, so the service gives the request a fresh UUID: the id is
/// written into every log line of the request, and echoed back.
async fn safe_request_id(mut req: Request) -> Request {
    let safe = |v: &HeaderValue| {
        let b = v.as_bytes();
        (1..=MAX_REQUEST_ID).contains(&b.len())
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-'))
    };
    let headers = req.headers_mut();
    let all_safe = headers.get_all("x-request-id").iter().all(safe);
    if !all_safe || headers.get_all("x-request-id").iter().count() > 1 {
        headers.remove("x-request-id");
    }
    req
}

fn cors(svc: &Service) -> CorsLayer {
    let layer = CorsLayer::new()
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::DELETE,
            Method::PUT,
            Method::OPTIONS,
            Method::HEAD,
        ])
        .allow_headers(Any)
        .expose_headers([
            header::CONTENT_DISPOSITION,
            header::CONTENT_RANGE,
            header::CONTENT_LENGTH,
            header::ETAG,
            header::LAST_MODIFIED,
            header::HeaderName::from_static("repr-digest"),
        ])
        .max_age(Duration::from_secs(3600));
    match &svc.config().cors_origins {
        None => layer.allow_origin(Any),
        Some(list) => layer.allow_origin(AllowOrigin::list(
            list.iter().filter_map(|o| HeaderValue::from_str(o).ok()),
        )),
    }
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "`ok`", body = String, content_type = "text/plain")))]
async fn health() -> &'static str {
    "ok"
}

/// Readiness: the database and the default tier's bucket are reachable.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses(
        (status = 200, body = docs::Readiness),
        (status = 503, description = "DATABASE_UNAVAILABLE or STORAGE_UNAVAILABLE", body = docs::ErrorBody),
    ))]
async fn ready(State(svc): State<Service>) -> Result<Json<serde_json::Value>, ApiError> {
    if let Err(e) = svc.readiness().await {
        tracing::warn!(error = %e, cause = ?std::error::Error::source(&e), "not ready");
        return Err(ApiError::of(e.answer().code, e.to_string()));
    }
    Ok(Json(
        serde_json::json!({ "database": "ok", "storage": "ok" }),
    ))
}

/// Prometheus metrics, OpenMetrics text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Metrics", body = String, content_type = "application/openmetrics-text; version=1.0.0")))]
async fn metrics(State(svc): State<Service>) -> Response {
    let text = svc.metrics_text().await;
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
async fn openapi_json() -> Response {
    static DOC: OnceLock<String> = OnceLock::new();
    let doc = DOC.get_or_init(|| openapi().to_json().expect("the document serializes"));
    ([(header::CONTENT_TYPE, "application/json")], doc.as_str()).into_response()
}

async fn not_found() -> ApiError {
    ApiError::of(crate::domain::Code::NotFound, "no such resource")
}

async fn method_not_allowed() -> ApiError {
    ApiError::of(
        crate::domain::Code::MethodNotAllowed,
        "method not allowed on this resource",
    )
}

#[cfg(test)]
mod tests {
    use super::valid_host;
    use axum::http::HeaderValue;

    #[test]
    fn host_values() {
        let ok = |v: &str| valid_host(&HeaderValue::from_str(v).unwrap());
        for good in [
            "",
            "a",
            "a:1",
            "files.example:9500",
            "127.0.0.1:80",
            "[::1]:8080",
            "a,b",
        ] {
            assert!(ok(good), "{good}");
        }
        for bad in ["a b", "a, b", "u@a", "a/b", "a:99999", "a:x", ":80", "a?b"] {
            assert!(!ok(bad), "{bad}");
        }
        assert!(!valid_host(&HeaderValue::from_bytes(b"h\xc3\xa9").unwrap()));
    }
}
