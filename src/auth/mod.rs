//! Who a bearer credential belongs to (`FS_AUTH`): static API tokens from a file of SHA-256
//! hashes ([`tokens`]) and JWTs signed with a configured key ([`jwt`]). Free of HTTP: the
//! HTTP layer (`routes::auth`) takes the `Authorization` header apart with [`bearer`], asks
//! [`Authenticator::authenticate`], and hands the domain the [`Caller`] it returns.

pub mod jwt;
pub mod tokens;

use crate::domain::caller::Caller;
use std::{path::PathBuf, sync::Arc, time::Duration};
use tokio_util::sync::CancellationToken;

/// A setting that must not be printed: `Debug` shows its length only.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// The authentication settings (`FS_AUTH`, `FS_AUTH_TOKENS_FILE`, `FS_JWT_*`,
/// `FS_METRICS_TOKEN`, `FS_TRUSTED_PROXIES`), read and checked by `config`.
#[derive(Clone, Debug, Default)]
pub struct AuthSettings {
    /// `FS_AUTH` includes `token`: the file of token hashes.
    pub tokens_file: Option<PathBuf>,
    /// `FS_AUTH` includes `jwt`.
    pub jwt: Option<JwtSettings>,
    /// `/metrics` asks for this bearer token (whatever `FS_AUTH` says).
    pub metrics_token: Option<Secret>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl AuthSettings {
    /// Whether API requests must carry a credential (`FS_AUTH` other than `none`).
    pub fn enabled(&self) -> bool {
        self.tokens_file.is_some() || self.jwt.is_some()
    }
}

/// How JWTs are verified.
#[derive(Clone, Debug)]
pub struct JwtSettings {
    pub key: jwt::JwtKey,
    /// `iss` must be this (and present) when set.
    pub issuer: Option<String>,
    /// `aud` must hold this (and be present) when set; not checked otherwise.
    pub audience: Option<String>,
    /// The claim holding the user id (`sub` by default).
    pub user_claim: String,
    /// `(claim, value)`: a token whose claim is `value`, or an array holding it, is an admin's.
    pub admin: Option<(String, String)>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway_secs: u64,
}

/// Why a request was not authenticated. `Display` is the message the client gets: it says
/// what was wrong, never echoing the credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("authentication required: send Authorization: Bearer <token>")]
    Missing,
    #[error("the Authorization header is not a Bearer credential")]
    NotBearer,
    /// More than one `Authorization` header: a proxy that reads another one than this service
    /// would see another identity (RFC 9110 allows one credential per request).
    #[error("the request carries more than one Authorization header")]
    Repeated,
    #[error("the bearer credential is malformed")]
    Malformed,
    #[error("the token is not known")]
    UnknownToken,
    #[error("the JWT is malformed or uses an unsupported algorithm")]
    InvalidJwt,
    #[error("the JWT is signed with an algorithm this service does not accept")]
    WrongAlgorithm,
    #[error("the JWT's signature does not verify")]
    BadSignature,
    #[error("the JWT has expired")]
    Expired,
    #[error("the JWT is not valid yet")]
    NotYetValid,
    #[error("the JWT's issuer is not accepted")]
    WrongIssuer,
    #[error("the JWT's audience is not this service")]
    WrongAudience,
    /// Absent, or not of its type (jsonwebtoken reports an `exp` that is not a number as
    /// missing).
    #[error("the JWT lacks the required claim {0:?} (or it is not of the claim's type)")]
    MissingClaim(String),
    #[error("the JWT's claim {0:?} is malformed")]
    BadClaim(String),
    #[error(
        "the JWT carries no usable user id in claim {0:?} (1 to 255 bytes of text, no control \
         characters)"
    )]
    NoUserClaim(String),
    /// A token of another type signed by the same provider: its header's `typ` is not `JWT`
    /// or `at+jwt` (RFC 8725 §3.11), or its `typ` claim (Keycloak's: `Bearer`, `ID`,
    /// `Refresh`) is not `Bearer`: an ID token, a refresh or logout token is no credential.
    #[error("the JWT is not an access token: its type is {:?}", cut(.0))]
    NotAccessToken(String),
    /// The JWT's header names critical extensions (`crit`, RFC 7515 §4.1.11), which this
    /// service does not understand and so may not accept.
    #[error("the JWT requires header extensions (crit) this service does not support")]
    CriticalExtensions,
}

/// A value from a token, as an error repeats it: at most 64 characters.
fn cut(s: &str) -> String {
    s.chars().take(64).collect()
}

impl AuthFailure {
    /// A stable code for the audit log (`reason`).
    pub fn reason(&self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::NotBearer => "not_bearer",
            AuthFailure::Repeated => "repeated",
            AuthFailure::Malformed => "malformed",
            AuthFailure::UnknownToken => "unknown_token",
            AuthFailure::InvalidJwt => "invalid_jwt",
            AuthFailure::WrongAlgorithm => "wrong_algorithm",
            AuthFailure::BadSignature => "bad_signature",
            AuthFailure::Expired => "expired",
            AuthFailure::NotYetValid => "not_yet_valid",
            AuthFailure::WrongIssuer => "wrong_issuer",
            AuthFailure::WrongAudience => "wrong_audience",
            AuthFailure::MissingClaim(_) => "missing_claim",
            AuthFailure::BadClaim(_) => "bad_claim",
            AuthFailure::NoUserClaim(_) => "no_user_claim",
            AuthFailure::NotAccessToken(_) => "not_access_token",
            AuthFailure::CriticalExtensions => "critical_extensions",
        }
    }

    /// Whether a credential was presented at all (RFC 6750: then the challenge says
    /// `error="invalid_token"`).
    pub fn token_presented(&self) -> bool {
        !matches!(self, AuthFailure::Missing | AuthFailure::NotBearer)
    }
}

/// The credential of an `Authorization` header value: `Bearer <token>` (the scheme in any
/// case, RFC 7235), the token in RFC 6750's `b64token` characters.
pub fn bearer(header: Option<&[u8]>) -> Result<&str, AuthFailure> {
    let value = header.ok_or(AuthFailure::Missing)?;
    let value = std::str::from_utf8(value).map_err(|_| AuthFailure::Malformed)?;
    let (scheme, token) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthFailure::NotBearer);
    }
    let token = token.trim();
    let b64token = |c: char| c.is_ascii_alphanumeric() || "-._~+/=".contains(c);
    if token.is_empty() || !token.chars().all(b64token) {
        return Err(AuthFailure::Malformed);
    }
    Ok(token)
}

/// Whether a user id from a credential can be an owner: 1 to 255 bytes, not blank, only
/// [`crate::domain::validate::name_char`]s (PostgreSQL text cannot hold NUL; logs should not
/// carry line breaks; a bidirectional formatting character makes an id read as another's).
pub fn usable_user_id(id: &str) -> bool {
    !id.trim().is_empty()
        && id.len() <= crate::domain::validate::MAX_USER_ID_BYTES
        && id.chars().all(crate::domain::validate::name_char)
}

/// Verifies bearer credentials: static tokens, JWTs, or both.
pub struct Authenticator {
    tokens: Option<tokens::TokenStore>,
    jwt: Option<jwt::JwtVerifier>,
}

impl Authenticator {
    /// The authenticator the settings ask for; `None` when authentication is off. Fails when
    /// the tokens file or the key can no longer be read (they were checked with the settings).
    pub fn new(settings: &AuthSettings) -> Result<Option<Self>, String> {
        if !settings.enabled() {
            return Ok(None);
        }
        let tokens = match &settings.tokens_file {
            Some(path) => Some(tokens::TokenStore::open(path)?),
            None => None,
        };
        let jwt = match &settings.jwt {
            Some(j) => Some(jwt::JwtVerifier::new(j)?),
            None => None,
        };
        Ok(Some(Authenticator { tokens, jwt }))
    }

    /// The caller a bearer credential (without its `Bearer ` scheme) belongs to.
    ///
    /// A static token is looked up first (by its SHA-256, so no comparison of secrets can end
    /// early); a credential that is not a known token is verified as a JWT when JWTs are on.
    pub fn authenticate(&self, bearer: &str) -> Result<Caller, AuthFailure> {
        if let Some(tokens) = &self.tokens {
            if let Some(caller) = tokens.lookup(bearer) {
                return Ok(caller);
            }
        }
        match &self.jwt {
            Some(jwt) if self.tokens.is_none() || jwt::looks_like_jwt(bearer) => jwt.verify(bearer),
            _ => Err(AuthFailure::UnknownToken),
        }
    }

    /// The tokens file, when tokens are on.
    pub fn tokens(&self) -> Option<&tokens::TokenStore> {
        self.tokens.as_ref()
    }

    /// Reloads the tokens file when it changes (looked at every second) and on SIGHUP, until
    /// `cancel`. A file that cannot be read or parsed keeps the tokens in force (and is
    /// logged). Returns at once when tokens are off.
    pub async fn watch_tokens(self: Arc<Self>, cancel: CancellationToken) {
        if self.tokens.is_none() {
            return;
        }
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "no SIGHUP handler: the tokens file is reloaded when it changes only");
                None
            }
        };
        loop {
            let forced = tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => false,
                Some(()) = async { match &mut hangup { Some(h) => h.recv().await, None => None } } => true,
            };
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if let Some(t) = &me.tokens {
                    t.reload(forced);
                }
            })
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_headers_are_taken_apart() {
        assert_eq!(bearer(Some(b"Bearer abc.def-_~+/=")), Ok("abc.def-_~+/="));
        assert_eq!(bearer(Some(b"bearer  abc ")), Ok("abc"));
        assert_eq!(bearer(None), Err(AuthFailure::Missing));
        assert_eq!(
            bearer(Some(b"Basic dXNlcjpwdw==")),
            Err(AuthFailure::NotBearer)
        );
        assert_eq!(bearer(Some(b"Bearer")), Err(AuthFailure::Malformed));
        assert_eq!(bearer(Some(b"Bearer a b")), Err(AuthFailure::Malformed));
        assert_eq!(bearer(Some(b"Bearer \xff")), Err(AuthFailure::Malformed));
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(7 bytes)");
        let settings = AuthSettings {
            metrics_token: Some(s),
            ..Default::default()
        };
        assert!(!format!("{settings:?}").contains("hunter2"));
    }
}
