//! The authentication gate, in front of every route:
//!
//! - every request gets its client address ([`audit::ClientAddr`]: the peer, or what a
//!   trusted proxy says);
//! - with `FS_AUTH` on, a request under `/image-management/v1` needs `Authorization: Bearer`
//!   (a CORS preflight `OPTIONS` does not); a verified caller goes into the request's
//!   extensions, where `extract::Authenticated` and `audit::Audit` find it;
//! - with `FS_METRICS_TOKEN` set, `/metrics` needs that token.
//!
//! `/health`, `/ready`, `/openapi.json` and the web console's files (`/`, `/console/{file}`:
//! no data, the page asks for a token itself) stay open. An unknown path under the API base is
//! refused like a known one when the request has no credential (401 before 404), so routes
//! cannot be probed without one.
//!
//! Refusals are 401 with `WWW-Authenticate: Bearer` (and `error="invalid_token"` when a
//! credential was sent, RFC 6750) and the usual JSON error body; each writes an
//! `auth_failure` audit event. The gate sits inside `drain::linger`, so the unread body of a
//! refused upload is drained and the 401 reaches a client that is still sending.

use super::{audit, error::ApiError, BASE};
use crate::auth::{bearer, AuthFailure, AuthSettings, Authenticator};
use axum::{
    extract::{ConnectInfo, Request, State},
    http::{header, HeaderValue, Method},
    middleware::Next,
    response::{IntoResponse, Response},
};
use sha2::{Digest, Sha256};
use std::{net::SocketAddr, sync::Arc};
use subtle::ConstantTimeEq;

/// What the gate checks, shared by every request.
#[derive(Clone)]
pub struct Gate {
    authenticator: Option<Arc<Authenticator>>,
    /// SHA-256 of `FS_METRICS_TOKEN`: comparing digests of equal length, in constant time,
    /// tells nothing about the token's length or prefix.
    metrics_token: Option<[u8; 32]>,
    trusted_proxies: Arc<Vec<ipnet::IpNet>>,
}

impl Gate {
    pub fn new(settings: &AuthSettings, authenticator: Option<Arc<Authenticator>>) -> Self {
        Gate {
            authenticator,
            metrics_token: settings
                .metrics_token
                .as_ref()
                .map(|t| Sha256::digest(t.expose().as_bytes()).into()),
            trusted_proxies: Arc::new(settings.trusted_proxies.clone()),
        }
    }
}

/// Whether `path` is an API route (or would be one).
fn is_api(path: &str) -> bool {
    path.strip_prefix(BASE)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

pub async fn gate(State(gate): State<Gate>, mut req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let remote = audit::client_addr(peer, req.headers(), &gate.trusted_proxies);
    req.extensions_mut().insert(audit::ClientAddr(remote));
    let path = req.uri().path();
    let mut headers = req.headers().get_all(header::AUTHORIZATION).iter();
    let header = headers.next().map(|v| v.as_bytes());
    let repeated = headers.next().is_some();
    let bearer = |header| match repeated {
        true => Err(AuthFailure::Repeated),
        false => bearer(header),
    };
    let checked = if path == "/metrics" {
        gate.metrics_token.as_ref().map(|expected| {
            bearer(header).and_then(|token| {
                let got: [u8; 32] = Sha256::digest(token.as_bytes()).into();
                match bool::from(got.ct_eq(expected)) {
                    true => Ok(None),
                    false => Err(AuthFailure::UnknownToken),
                }
            })
        })
    } else if is_api(path) && req.method() != Method::OPTIONS {
        gate.authenticator.as_ref().map(|a| {
            bearer(header)
                .and_then(|token| a.authenticate(token))
                .map(Some)
        })
    } else {
        None
    };
    match checked {
        None | Some(Ok(None)) => {}
        Some(Ok(Some(caller))) => {
            req.extensions_mut().insert(caller);
        }
        Some(Err(failure)) => {
            audit::auth_failure(
                failure.reason(),
                remote,
                audit::request_id(req.headers()).as_deref(),
                req.method().as_str(),
                req.uri().path(),
            );
            return unauthorized(&failure);
        }
    }
    next.run(req).await
}

/// 401 with its challenge and the JSON error body.
fn unauthorized(failure: &AuthFailure) -> Response {
    let mut resp =
        ApiError::of(crate::domain::Code::Unauthorized, failure.to_string()).into_response();
    let challenge = match failure.token_presented() {
        true => r#"Bearer realm="file-system", error="invalid_token""#,
        false => r#"Bearer realm="file-system""#,
    };
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_paths_are_those_under_the_base() {
        assert!(is_api("/image-management/v1"));
        assert!(is_api("/image-management/v1/images"));
        assert!(is_api("/image-management/v1/no-such-route"));
        assert!(!is_api("/image-management/v10/images"));
        assert!(!is_api("/health"));
        assert!(!is_api("/metrics"));
    }
}
