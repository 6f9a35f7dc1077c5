//! The audit trail: one structured `tracing` event per state change or refused credential,
//! at target `audit` (so `RUST_LOG=info,audit=info` or `RUST_LOG=warn,audit=info` keeps or
//! isolates it), with who (user, role), from where (remote address) and which request
//! (request id).
//!
//! A handler takes the [`Audit`] extractor and records what it did once it knows the outcome:
//!
//! ```ignore
//! async fn delete_image(audit: Audit, ...) -> Result<.., ApiError> {
//!     let result = svc.delete_image(&caller, &id).await.map_err(ApiError::from);
//!     match &result {
//!         Ok(_) => audit.record("image.delete").image(&id).success(),
//!         Err(e) => audit.record("image.delete").image(&id).error(e),
//!     }
//!     result
//! }
//! ```
//!
//! Fields of every event: `action`, `outcome` (`success` | `refused` (4xx) | `failed` (5xx)),
//! `user` and `role` (the authenticated caller; `role=anonymous` and no `user` with
//! authentication off), `remote`, `request_id`; when given: `image_id`, `identifier`,
//! `owner` (whose image, session or quota it is, when not the caller's own), `detail`,
//! `error_code`, `status`.

use super::error::ApiError;
use crate::domain::caller::Caller;
use axum::{
    extract::{ConnectInfo, FromRequestParts},
    http::{request::Parts, HeaderMap},
};
use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
};

/// The tracing target of audit events.
pub const TARGET: &str = "audit";

/// The client's address as the audit trail gives it: the peer, or what trusted proxies say
/// (set on each request by `routes::auth::gate`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub Option<IpAddr>);

/// The address of the client behind a request: the TCP peer, unless the peer is a trusted
/// proxy; then `X-Forwarded-For` is read from its right end (the hop the trusted proxy saw)
/// leftwards, skipping trusted proxies, and the first untrusted hop is the client (or the
/// leftmost hop, when every one is trusted). A client cannot put a forged address in front
/// of the real one: the hops it wrote itself lie left of the first untrusted one.
pub fn client_addr(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    trusted: &[ipnet::IpNet],
) -> Option<IpAddr> {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    let peer = peer?;
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .map(|h| h.parse::<IpAddr>().ok())
        .collect::<Option<Vec<_>>>()
        // A hop that is not an address: believe nothing of the header.
        .unwrap_or_default();
    let mut client = peer;
    for hop in hops.iter().rev() {
        client = *hop;
        if !is_trusted(hop) {
            break;
        }
    }
    Some(client)
}

/// Who asks, from where, in which request: take it in a handler and [`Audit::record`] what
/// the request changed.
#[derive(Clone, Debug)]
pub struct Audit {
    caller: Caller,
    remote: Option<IpAddr>,
    request_id: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Audit {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let remote = match parts.extensions.get::<ClientAddr>() {
            Some(ClientAddr(a)) => *a,
            None => parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        };
        Ok(Audit {
            caller: parts
                .extensions
                .get::<Caller>()
                .cloned()
                .unwrap_or(Caller::Anonymous),
            remote,
            request_id: request_id(&parts.headers),
        })
    }
}

/// The request id `SetRequestIdLayer` gave the request (or the client sent).
pub fn request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

impl Audit {
    /// An audit context for a request with these facts (for code that has no request).
    pub fn new(caller: Caller, remote: Option<IpAddr>, request_id: Option<String>) -> Self {
        Audit {
            caller,
            remote,
            request_id,
        }
    }

    /// The authenticated caller.
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// Starts an event for `action` (e.g. `image.upload`, `upload.chunk_session_opened`,
    /// `upload.merge`, `upload.cancel`, `image.slim`, `image.check`, `image.delete`,
    /// `quota.set`); add what it concerns, then end it with [`AuditEvent::success`],
    /// [`AuditEvent::error`] or [`AuditEvent::outcome`], which writes it.
    pub fn record<'a>(&'a self, action: &'a str) -> AuditEvent<'a> {
        AuditEvent {
            audit: self,
            action,
            image_id: None,
            identifier: None,
            owner: None,
            detail: None,
        }
    }
}

/// One audit event being put together; written by its ending method.
#[must_use = "an audit event is written by .success(), .error(..) or .outcome(..)"]
pub struct AuditEvent<'a> {
    audit: &'a Audit,
    action: &'a str,
    image_id: Option<&'a str>,
    identifier: Option<&'a str>,
    owner: Option<&'a str>,
    detail: Option<&'a str>,
}

impl<'a> AuditEvent<'a> {
    /// The image concerned.
    pub fn image(mut self, image_id: &'a str) -> Self {
        self.image_id = Some(image_id);
        self
    }

    /// The chunked upload concerned (the client's `identifier`).
    pub fn identifier(mut self, identifier: &'a str) -> Self {
        self.identifier = Some(identifier);
        self
    }

    /// Whose image, session or quota it is (an admin acting for a user, a quota set for a
    /// user, the `userId` field with authentication off).
    pub fn owner(mut self, user_id: &'a str) -> Self {
        self.owner = Some(user_id);
        self
    }

    /// Free text: what else matters (e.g. `bytes=10737418240 images=100`). Never secrets.
    pub fn detail(mut self, detail: &'a str) -> Self {
        self.detail = Some(detail);
        self
    }

    /// The action was done.
    pub fn success(self) {
        self.emit("success", None, None);
    }

    /// The action was refused (4xx: `refused`) or failed (5xx: `failed`) with this answer.
    pub fn error(self, e: &ApiError) {
        let outcome = match e.status.is_server_error() {
            true => "failed",
            false => "refused",
        };
        self.emit(outcome, Some(e.code), Some(e.status.as_u16()));
    }

    /// Any other outcome, by name (`success`, `refused`, `failed`, ...).
    pub fn outcome(self, outcome: &str) {
        self.emit(outcome, None, None);
    }

    fn emit(self, outcome: &str, error_code: Option<&str>, status: Option<u16>) {
        let a = self.audit;
        let role = match a.caller.role() {
            Some(r) => r.as_str(),
            None => "anonymous",
        };
        tracing::info!(
            target: TARGET,
            action = self.action,
            outcome,
            user = a.caller.id(),
            role,
            image_id = self.image_id,
            identifier = self.identifier,
            owner = self.owner,
            detail = self.detail,
            error_code,
            status,
            remote = a.remote.map(tracing::field::display),
            request_id = a.request_id.as_deref(),
            "audit"
        );
    }
}

/// The audit event of a refused credential (`action=auth_failure`): why, from where, which
/// request and route. Never the credential.
pub fn auth_failure(
    reason: &str,
    remote: Option<IpAddr>,
    request_id: Option<&str>,
    method: &str,
    path: &str,
) {
    tracing::info!(
        target: TARGET,
        action = "auth_failure",
        outcome = "refused",
        reason,
        method,
        path,
        remote = remote.map(tracing::field::display),
        request_id,
        "audit"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::caller::Role;
    use axum::http::HeaderValue;
    use std::sync::{Arc, Mutex};

    fn nets(list: &[&str]) -> Vec<ipnet::IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn forwarded_addresses_are_believed_from_trusted_proxies_only() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let trusted = nets(&["10.0.0.0/8", "192.168.1.1/32"]);
        // An untrusted peer: its header is ignored.
        assert_eq!(
            client_addr(ip("203.0.113.9"), &xff(&["1.2.3.4"]), &trusted),
            ip("203.0.113.9")
        );
        // A trusted peer: the hop it saw.
        assert_eq!(
            client_addr(ip("10.1.2.3"), &xff(&["198.51.100.7"]), &trusted),
            ip("198.51.100.7")
        );
        // Two trusted proxies, the first hop is the client.
        assert_eq!(
            client_addr(
                ip("10.1.2.3"),
                &xff(&["198.51.100.7, 192.168.1.1"]),
                &trusted
            ),
            ip("198.51.100.7")
        );
        // A forged hop in front of the real client is not believed.
        assert_eq!(
            client_addr(ip("10.1.2.3"), &xff(&["6.6.6.6", "198.51.100.7"]), &trusted),
            ip("198.51.100.7")
        );
        // No header, or garbage in it: the peer.
        assert_eq!(
            client_addr(ip("10.1.2.3"), &xff(&[]), &trusted),
            ip("10.1.2.3")
        );
        assert_eq!(
            client_addr(ip("10.1.2.3"), &xff(&["unknown"]), &trusted),
            ip("10.1.2.3")
        );
        // Nothing trusted: always the peer.
        assert_eq!(
            client_addr(ip("10.1.2.3"), &xff(&["1.2.3.4"]), &[]),
            ip("10.1.2.3")
        );
        assert_eq!(client_addr(None, &xff(&["1.2.3.4"]), &trusted), None);
    }

    /// Captures what the subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn capture(filter: &str, f: impl FnOnce()) -> String {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .json()
            .flatten_event(true)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn events_carry_who_what_where_and_filter_by_target() {
        let audit = Audit::new(
            Caller::user("alice", Role::Admin),
            Some("198.51.100.7".parse().unwrap()),
            Some("req-1".into()),
        );
        let text = capture("warn,audit=info", || {
            tracing::info!("not an audit event");
            audit
                .record("image.delete")
                .image("0b5c1a3e-0000-4000-8000-000000000000")
                .owner("bob")
                .success();
            audit
                .record("upload.merge")
                .identifier("abc")
                .error(&ApiError::of(crate::domain::Code::MissingChunks, "x"));
            auth_failure(
                "expired",
                None,
                Some("req-2"),
                "GET",
                "/image-management/v1/images",
            );
        });
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0]["target"], "audit");
        assert_eq!(lines[0]["action"], "image.delete");
        assert_eq!(lines[0]["outcome"], "success");
        assert_eq!(lines[0]["user"], "alice");
        assert_eq!(lines[0]["role"], "admin");
        assert_eq!(lines[0]["owner"], "bob");
        assert_eq!(lines[0]["image_id"], "0b5c1a3e-0000-4000-8000-000000000000");
        assert_eq!(lines[0]["remote"], "198.51.100.7");
        assert_eq!(lines[0]["request_id"], "req-1");
        assert!(lines[0].get("identifier").is_none());
        assert_eq!(lines[1]["outcome"], "refused");
        assert_eq!(lines[1]["error_code"], "MISSING_CHUNKS");
        assert_eq!(lines[1]["identifier"], "abc");
        assert_eq!(lines[2]["action"], "auth_failure");
        assert_eq!(lines[2]["reason"], "expired");
        // Filtered out without `audit=info`.
        let text = capture("warn", || audit.record("image.delete").success());
        assert!(text.is_empty(), "{text}");
        let anon = Audit::new(Caller::Anonymous, None, None);
        let text = capture("audit=info", || anon.record("image.slim").success());
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["role"], "anonymous");
        assert!(v.get("user").is_none());
    }
}
