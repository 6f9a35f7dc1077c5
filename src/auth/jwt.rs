//! JWT verification (`FS_AUTH=jwt`) with the `jsonwebtoken` crate.
//!
//! One key, one algorithm: an HS256 secret (`FS_JWT_HS256_SECRET`), or a PEM public key
//! (`FS_JWT_PUBLIC_KEY_FILE`): RS256 for an RSA key, ES256 for a P-256 key. Only that
//! algorithm is accepted, so `alg: none` and algorithm confusion (an HS256 token "signed" with
//! the RSA public key as its secret) are refused. `exp` is required; `nbf` is checked when
//! present; `iss` and `aud` when configured.

use super::{AuthFailure, JwtSettings, Secret};
use crate::domain::caller::{Caller, Role};
use base64::Engine;
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use std::path::PathBuf;

/// The verification key, checked when the settings are read.
#[derive(Clone)]
pub enum JwtKey {
    Hs256(Secret),
    /// An RSA public key (PEM).
    Rs256 {
        path: PathBuf,
        pem: Vec<u8>,
    },
    /// A P-256 public key (PEM).
    Es256 {
        path: PathBuf,
        pem: Vec<u8>,
    },
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwtKey::Hs256(s) => write!(f, "Hs256({s:?})"),
            JwtKey::Rs256 { path, .. } => write!(f, "Rs256({})", path.display()),
            JwtKey::Es256 { path, .. } => write!(f, "Es256({})", path.display()),
        }
    }
}

/// DER of the P-256 curve's OID (1.2.840.10045.3.1.7), as it appears in the key's parameters.
const P256_OID: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

impl JwtKey {
    /// Reads a PEM public key file: RSA -> RS256, P-256 -> ES256. The error says what is wrong
    /// with it (never printing it).
    pub fn from_pem_file(path: PathBuf) -> Result<Self, String> {
        let pem = std::fs::read(&path).map_err(|e| format!("cannot be read: {e}"))?;
        let label = pem_label(&pem).ok_or("is not a PEM file (no -----BEGIN ...----- line)")?;
        if label.contains("PRIVATE") {
            return Err(format!(
                "holds a private key ({label}): give the public key (openssl pkey -pubout)"
            ));
        }
        if label != "PUBLIC KEY" && label != "RSA PUBLIC KEY" {
            return Err(format!(
                "holds a {label}: expected a PUBLIC KEY (RSA or P-256)"
            ));
        }
        if DecodingKey::from_rsa_pem(&pem).is_ok() {
            return Ok(JwtKey::Rs256 { path, pem });
        }
        if DecodingKey::from_ec_pem(&pem).is_ok() {
            let der = pem_body(&pem).unwrap_or_default();
            if !der.windows(P256_OID.len()).any(|w| w == P256_OID) {
                return Err(
                    "holds an EC key on a curve other than P-256 (ES256 needs P-256)".into(),
                );
            }
            return Ok(JwtKey::Es256 { path, pem });
        }
        Err("is not an RSA or P-256 public key".into())
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            JwtKey::Hs256(_) => Algorithm::HS256,
            JwtKey::Rs256 { .. } => Algorithm::RS256,
            JwtKey::Es256 { .. } => Algorithm::ES256,
        }
    }

    fn decoding_key(&self) -> Result<DecodingKey, String> {
        match self {
            JwtKey::Hs256(s) => Ok(DecodingKey::from_secret(s.expose().as_bytes())),
            JwtKey::Rs256 { path, pem } => DecodingKey::from_rsa_pem(pem)
                .map_err(|e| format!("FS_JWT_PUBLIC_KEY_FILE {}: {e}", path.display())),
            JwtKey::Es256 { path, pem } => DecodingKey::from_ec_pem(pem)
                .map_err(|e| format!("FS_JWT_PUBLIC_KEY_FILE {}: {e}", path.display())),
        }
    }
}

/// The label of the first PEM block (`PUBLIC KEY`, `RSA PUBLIC KEY`, ...).
fn pem_label(pem: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(pem).ok()?;
    let line = text.lines().find(|l| l.starts_with("-----BEGIN "))?;
    Some(
        line.trim()
            .trim_start_matches("-----BEGIN ")
            .trim_end_matches("-----")
            .to_string(),
    )
}

/// The DER bytes of the first PEM block.
fn pem_body(pem: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(pem).ok()?;
    let b64: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN "))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END "))
        .map(str::trim)
        .collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// Whether a credential has a JWT's shape: three base64url parts, the first a JSON object
/// (`eyJ` is the encoding of `{"`).
pub fn looks_like_jwt(token: &str) -> bool {
    token.starts_with("eyJ") && token.split('.').count() == 3
}

/// Verifies JWTs against the configured key and claims.
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    user_claim: String,
    admin: Option<(String, String)>,
}

impl JwtVerifier {
    pub fn new(s: &JwtSettings) -> Result<Self, String> {
        let mut validation = Validation::new(s.key.algorithm());
        let mut required = vec!["exp"];
        validation.leeway = s.leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        if let Some(iss) = &s.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        match &s.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            // Not configured, not checked (the crate would refuse any token that has one).
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Ok(JwtVerifier {
            key: s.key.decoding_key()?,
            validation,
            user_claim: s.user_claim.clone(),
            admin: s.admin.clone(),
        })
    }

    /// The caller a JWT names, once its signature and claims check out.
    pub fn verify(&self, token: &str) -> Result<Caller, AuthFailure> {
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(|e| failure(e.kind()))?;
        let claims = data.claims;
        // `crit` (RFC 7515 §4.1.11) names extensions a recipient must understand and honour,
        // or refuse the token; this service understands none (`b64: false`, RFC 7797, would
        // change what the signature covers), and the crate does not look at it.
        // Read from the header's JSON itself: the crate reads `"crit": null` and `"typ": null`
        // as absent.
        let header = raw_header(token);
        if header.contains_key("crit") {
            return Err(AuthFailure::CriticalExtensions);
        }
        match header.get("typ") {
            None => {}
            Some(Value::String(t)) if access_token_type(t) => {}
            Some(other) => return Err(AuthFailure::NotAccessToken(shown(other))),
        }
        match claims.get("typ") {
            None => {}
            Some(Value::String(t)) if t.eq_ignore_ascii_case("Bearer") || access_token_type(t) => {}
            Some(other) => return Err(AuthFailure::NotAccessToken(shown(other))),
        }
        let user = match claim(&claims, &self.user_claim) {
            Some(Value::String(s)) if super::usable_user_id(s) => s.clone(),
            // An integer, as its exact decimal text. JSON numbers past 64 bits (and fractions)
            // are read as floating point, which rounds: 2^64+10 and 2^64+11 would both be
            // `1.8446744073709552e19`, one user. They name no one.
            Some(Value::Number(n)) => match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => u.to_string(),
                (None, Some(i)) => i.to_string(),
                _ => return Err(AuthFailure::NoUserClaim(self.user_claim.clone())),
            },
            _ => return Err(AuthFailure::NoUserClaim(self.user_claim.clone())),
        };
        let admin = self
            .admin
            .as_ref()
            .is_some_and(|(name, value)| match claim(&claims, name) {
                Some(Value::String(s)) => s == value,
                Some(Value::Array(items)) => items.iter().any(|i| i.as_str() == Some(value)),
                _ => false,
            });
        let role = if admin { Role::Admin } else { Role::User };
        Ok(Caller::user(user, role))
    }
}

/// The JOSE header of a token the crate decoded (so well-formed), as JSON; empty if it is not
/// an object.
fn raw_header(token: &str) -> Map<String, Value> {
    use base64::Engine;
    let encoded = token.split('.').next().unwrap_or("");
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .ok()
        .and_then(|h| serde_json::from_slice(&h).ok())
        .unwrap_or_default()
}

/// A token's `typ` as an error repeats it: a string's text, any other value as JSON.
fn shown(typ: &Value) -> String {
    typ.as_str().map_or_else(|| typ.to_string(), str::to_string)
}

/// Whether a JWT type names an access token: `JWT` (RFC 7519 §5.1) or `at+jwt` (RFC 9068
/// §2.1), compared without case and with or without `application/` (RFC 7515 §4.1.9). Other
/// tokens a provider signs with the same key (a logout token `logout+jwt`, a security event
/// `secevent+jwt`) are not credentials.
fn access_token_type(typ: &str) -> bool {
    let typ = typ.to_ascii_lowercase();
    let typ = typ.strip_prefix("application/").unwrap_or(&typ);
    matches!(typ, "jwt" | "at+jwt")
}

/// A claim by name; a name with dots that is not itself a claim is a path into nested
/// objects (`realm_access.roles`, as Keycloak puts roles).
fn claim<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    let mut parts = name.split('.');
    let mut cur = claims.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_object()?.get(p)?;
    }
    Some(cur)
}

fn failure(kind: &ErrorKind) -> AuthFailure {
    match kind {
        ErrorKind::InvalidSignature => AuthFailure::BadSignature,
        ErrorKind::ExpiredSignature => AuthFailure::Expired,
        ErrorKind::ImmatureSignature => AuthFailure::NotYetValid,
        ErrorKind::InvalidIssuer => AuthFailure::WrongIssuer,
        ErrorKind::InvalidAudience => AuthFailure::WrongAudience,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => AuthFailure::WrongAlgorithm,
        ErrorKind::MissingRequiredClaim(c) => AuthFailure::MissingClaim(c.clone()),
        ErrorKind::InvalidClaimFormat(c) => AuthFailure::BadClaim(c.clone()),
        // A key that does not fit the token's algorithm is a wrong algorithm too.
        ErrorKind::InvalidKeyFormat | ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidRsaKey(_) => {
            AuthFailure::WrongAlgorithm
        }
        _ => AuthFailure::InvalidJwt,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;
    use std::{path::Path, process::Command, sync::OnceLock};

    /// Keys made once per test run by the openssl CLI: (dir, rsa private/public, ec
    /// private/public, another rsa private, a P-384 public).
    struct Keys {
        _dir: tempfile::TempDir,
        rsa_priv: Vec<u8>,
        rsa_pub: PathBuf,
        ec_priv: Vec<u8>,
        ec_pub: PathBuf,
        other_rsa_priv: Vec<u8>,
        p384_pub: PathBuf,
        rsa_priv_path: PathBuf,
    }

    fn openssl(args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl must be installed for the tests");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    }

    fn keypair(dir: &Path, name: &str, algorithm: &str, opt: &str) -> (PathBuf, PathBuf) {
        let private = dir.join(format!("{name}.key"));
        let public = dir.join(format!("{name}.pub"));
        let p = private.to_str().unwrap();
        openssl(&[
            "genpkey",
            "-algorithm",
            algorithm,
            "-pkeyopt",
            opt,
            "-out",
            p,
        ]);
        openssl(&[
            "pkey",
            "-in",
            p,
            "-pubout",
            "-out",
            public.to_str().unwrap(),
        ]);
        (private, public)
    }

    fn keys() -> &'static Keys {
        static KEYS: OnceLock<Keys> = OnceLock::new();
        KEYS.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let (rsa_priv, rsa_pub) = keypair(dir.path(), "rsa", "RSA", "rsa_keygen_bits:2048");
            let (ec_priv, ec_pub) = keypair(dir.path(), "ec", "EC", "ec_paramgen_curve:P-256");
            let (other, _) = keypair(dir.path(), "other", "RSA", "rsa_keygen_bits:2048");
            let (_, p384_pub) = keypair(dir.path(), "p384", "EC", "ec_paramgen_curve:P-384");
            Keys {
                rsa_priv: std::fs::read(&rsa_priv).unwrap(),
                rsa_priv_path: rsa_priv,
                rsa_pub,
                ec_priv: std::fs::read(&ec_priv).unwrap(),
                ec_pub,
                other_rsa_priv: std::fs::read(&other).unwrap(),
                p384_pub,
                _dir: dir,
            }
        })
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    fn settings(key: JwtKey) -> JwtSettings {
        JwtSettings {
            key,
            issuer: None,
            audience: None,
            user_claim: "sub".into(),
            admin: None,
            leeway_secs: 60,
        }
    }

    fn hs(secret: &str) -> JwtKey {
        JwtKey::Hs256(Secret::new(secret))
    }

    fn sign_hs(secret: &[u8], claims: &Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn verify(s: JwtSettings, token: &str) -> Result<Caller, AuthFailure> {
        JwtVerifier::new(&s).unwrap().verify(token)
    }

    #[test]
    fn hs256_rs256_and_es256_tokens_are_accepted() {
        let k = keys();
        let claims = json!({ "sub": "alice", "exp": now() + 600 });
        let alice = Caller::user("alice", Role::User);
        assert_eq!(
            verify(settings(hs("s")), &sign_hs(b"s", &claims)),
            Ok(alice.clone())
        );
        let signed_by_pair = [
            (
                &k.rsa_pub,
                Algorithm::RS256,
                EncodingKey::from_rsa_pem(&k.rsa_priv).unwrap(),
            ),
            (
                &k.ec_pub,
                Algorithm::ES256,
                EncodingKey::from_ec_pem(&k.ec_priv).unwrap(),
            ),
        ];
        for (public, algorithm, private) in signed_by_pair {
            let key = JwtKey::from_pem_file(public.clone()).unwrap();
            assert_eq!(key.algorithm(), algorithm);
            let t = encode(&Header::new(algorithm), &claims, &private).unwrap();
            assert_eq!(verify(settings(key), &t), Ok(alice.clone()));
        }
    }

    #[test]
    fn times_are_checked_with_leeway() {
        let s = || settings(hs("s"));
        let t = |c: Value| sign_hs(b"s", &c);
        assert_eq!(
            verify(s(), &t(json!({ "sub": "a", "exp": now() - 120 }))),
            Err(AuthFailure::Expired)
        );
        // Within the leeway: accepted.
        assert!(verify(s(), &t(json!({ "sub": "a", "exp": now() - 30 }))).is_ok());
        assert_eq!(
            verify(
                s(),
                &t(json!({ "sub": "a", "exp": now() + 600, "nbf": now() + 300 }))
            ),
            Err(AuthFailure::NotYetValid)
        );
        assert!(verify(
            s(),
            &t(json!({ "sub": "a", "exp": now() + 600, "nbf": now() + 30 }))
        )
        .is_ok());
        assert_eq!(
            verify(s(), &t(json!({ "sub": "a" }))),
            Err(AuthFailure::MissingClaim("exp".into()))
        );
        // An `exp` that is not a number is no `exp`.
        assert_eq!(
            verify(s(), &t(json!({ "sub": "a", "exp": "tomorrow" }))),
            Err(AuthFailure::MissingClaim("exp".into()))
        );
    }

    #[test]
    fn issuer_and_audience_are_checked_when_set() {
        let s = JwtSettings {
            issuer: Some("https://idp".into()),
            audience: Some("file-system".into()),
            ..settings(hs("s"))
        };
        let t = |c: Value| sign_hs(b"s", &c);
        let exp = now() + 600;
        assert!(verify(
            s.clone(),
            &t(
                json!({ "sub": "a", "exp": exp, "iss": "https://idp", "aud": ["x", "file-system"] })
            )
        )
        .is_ok());
        assert_eq!(
            verify(
                s.clone(),
                &t(json!({ "sub": "a", "exp": exp, "iss": "https://evil", "aud": "file-system" }))
            ),
            Err(AuthFailure::WrongIssuer)
        );
        assert_eq!(
            verify(
                s.clone(),
                &t(json!({ "sub": "a", "exp": exp, "iss": "https://idp", "aud": "appstore" }))
            ),
            Err(AuthFailure::WrongAudience)
        );
        assert_eq!(
            verify(
                s.clone(),
                &t(json!({ "sub": "a", "exp": exp, "aud": "file-system" }))
            ),
            Err(AuthFailure::MissingClaim("iss".into()))
        );
        // Unset: not checked, an `aud` for someone else included.
        assert!(verify(
            settings(hs("s")),
            &t(json!({ "sub": "a", "exp": exp, "aud": "x", "iss": "y" }))
        )
        .is_ok());
    }

    /// A token with exactly this JOSE header (which the crate's `Header` could not express),
    /// signed with HS256 and the secret `s`.
    fn hs256_raw(header: &Value, claims: &Value) -> String {
        let b64 =
            |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let signing_input = format!("{}.{}", b64(header), b64(claims));
        let key = EncodingKey::from_secret(b"s");
        let signature =
            jsonwebtoken::crypto::sign(signing_input.as_bytes(), &key, Algorithm::HS256).unwrap();
        format!("{signing_input}.{signature}")
    }

    #[test]
    fn only_access_tokens_are_credentials() {
        let exp = now() + 600;
        let signed = |typ: Option<&str>, claims: Value| {
            let mut header = Header::new(Algorithm::HS256);
            header.typ = typ.map(str::to_string);
            encode(&header, &claims, &EncodingKey::from_secret(b"s")).unwrap()
        };
        let alice = Ok(Caller::user("alice", Role::User));
        let claims = json!({ "sub": "alice", "exp": exp });
        for typ in [
            None,
            Some("JWT"),
            Some("jwt"),
            Some("at+jwt"),
            Some("application/AT+JWT"),
        ] {
            assert_eq!(
                verify(settings(hs("s")), &signed(typ, claims.clone())),
                alice,
                "{typ:?}"
            );
        }
        for typ in ["logout+jwt", "secevent+jwt", "dpop+jwt", "", "JWTX"] {
            assert_eq!(
                verify(settings(hs("s")), &signed(Some(typ), claims.clone())),
                Err(AuthFailure::NotAccessToken(typ.into())),
                "{typ:?}"
            );
        }
        // Keycloak's `typ` claim: an access token is `Bearer`; its ID and refresh tokens,
        // signed by the same realm, are not credentials.
        for typ in ["Bearer", "bearer", "at+jwt"] {
            let claims = json!({ "sub": "alice", "exp": exp, "typ": typ });
            assert_eq!(
                verify(settings(hs("s")), &signed(Some("JWT"), claims)),
                alice
            );
        }
        for (typ, shown) in [
            (json!("ID"), "ID"),
            (json!("Refresh"), "Refresh"),
            (json!(1), "1"),
            (json!(["Bearer"]), "[\"Bearer\"]"),
        ] {
            let claims = json!({ "sub": "alice", "exp": exp, "typ": typ });
            assert_eq!(
                verify(settings(hs("s")), &signed(Some("JWT"), claims)),
                Err(AuthFailure::NotAccessToken(shown.into()))
            );
        }
        // Critical extensions, understood by no one here: refused, whatever they name.
        let unencoded = json!({ "alg": "HS256", "crit": ["b64"], "b64": false });
        for header in [
            json!({ "alg": "HS256", "typ": "JWT", "crit": null }),
            json!({ "alg": "HS256", "typ": "JWT", "crit": ["b64"] }),
            json!({ "alg": "HS256", "typ": "JWT", "crit": ["exp"] }),
            json!({ "alg": "HS256", "typ": "JWT", "crit": [] }),
            unencoded.clone(),
        ] {
            let verified = verify(settings(hs("s")), &hs256_raw(&header, &claims));
            match header == unencoded {
                // The crate refuses `b64` itself (RFC 7797 is not implemented there either).
                true => assert_eq!(verified, Err(AuthFailure::InvalidJwt)),
                false => assert_eq!(verified, Err(AuthFailure::CriticalExtensions), "{header}"),
            }
        }
        // `typ: null` is no type: refused as the claim's is.
        let header = json!({ "alg": "HS256", "typ": null });
        assert_eq!(
            verify(settings(hs("s")), &hs256_raw(&header, &claims)),
            Err(AuthFailure::NotAccessToken("null".into()))
        );
        // The message repeats at most 64 characters of a type.
        let long = AuthFailure::NotAccessToken("x".repeat(5000)).to_string();
        assert!(long.len() < 140, "{long}");
    }

    #[test]
    fn forged_tokens_are_refused() {
        let k = keys();
        let claims = json!({ "sub": "alice", "exp": now() + 600 });
        let rsa = || settings(JwtKey::from_pem_file(k.rsa_pub.clone()).unwrap());
        // Another key.
        let other = encode(
            &Header::new(Algorithm::RS256),
            &claims,
            &EncodingKey::from_rsa_pem(&k.other_rsa_priv).unwrap(),
        )
        .unwrap();
        assert_eq!(verify(rsa(), &other), Err(AuthFailure::BadSignature));
        assert_eq!(
            verify(settings(hs("right")), &sign_hs(b"wrong", &claims)),
            Err(AuthFailure::BadSignature)
        );
        // Algorithm confusion: HS256 "signed" with the RSA public key's bytes as its secret.
        let public = std::fs::read(&k.rsa_pub).unwrap();
        assert_eq!(
            verify(rsa(), &sign_hs(&public, &claims)),
            Err(AuthFailure::WrongAlgorithm)
        );
        // alg: none, no signature.
        let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let none = format!(
            "{}.{}.",
            b64(json!({ "alg": "none", "typ": "JWT" })),
            b64(claims.clone())
        );
        assert!(verify(rsa(), &none).is_err());
        assert!(verify(settings(hs("s")), &none).is_err());
        // A tampered payload: someone else's id under the same signature.
        let good = sign_hs(b"s", &claims);
        let parts: Vec<&str> = good.split('.').collect();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64(json!({ "sub": "root", "exp": now() + 600 })),
            parts[2]
        );
        assert_eq!(
            verify(settings(hs("s")), &forged),
            Err(AuthFailure::BadSignature)
        );
        assert_eq!(
            verify(settings(hs("s")), "eyJ.not.jwt"),
            Err(AuthFailure::InvalidJwt)
        );
    }

    #[test]
    fn user_and_admin_claims() {
        let s = JwtSettings {
            user_claim: "userId".into(),
            admin: Some(("authorities".into(), "ROLE_APPSTORE_ADMIN".into())),
            ..settings(hs("s"))
        };
        let t = |c: Value| sign_hs(b"s", &c);
        let exp = now() + 600;
        // EdgeGallery's shape: the user id in `userId`, roles in an `authorities` array.
        assert_eq!(
            verify(
                s.clone(),
                &t(
                    json!({ "userId": "u-1", "exp": exp, "authorities": ["ROLE_APPSTORE_TENANT", "ROLE_APPSTORE_ADMIN"] })
                )
            ),
            Ok(Caller::user("u-1", Role::Admin))
        );
        assert_eq!(
            verify(
                s.clone(),
                &t(json!({ "userId": "u-1", "exp": exp, "authorities": ["ROLE_APPSTORE_TENANT"] }))
            ),
            Ok(Caller::user("u-1", Role::User))
        );
        assert_eq!(
            verify(
                s.clone(),
                &t(json!({ "userId": "u-1", "exp": exp, "authorities": "ROLE_APPSTORE_ADMIN" }))
            ),
            Ok(Caller::user("u-1", Role::Admin))
        );
        assert_eq!(
            verify(s.clone(), &t(json!({ "userId": 42, "exp": exp }))),
            Ok(Caller::user("42", Role::User))
        );
        assert_eq!(
            verify(
                s.clone(),
                &t(json!({ "userId": -9223372036854775808i64, "exp": exp }))
            ),
            Ok(Caller::user("-9223372036854775808", Role::User))
        );
        assert_eq!(
            verify(s.clone(), &t(json!({ "userId": u64::MAX, "exp": exp }))),
            Ok(Caller::user(u64::MAX.to_string(), Role::User))
        );
        // Numbers a JSON reader can only round (past 64 bits, fractions) name no one: two of
        // them would be the same user.
        let rounded = |text: &str| -> Value {
            serde_json::from_str(&format!(r#"{{"userId": {text}, "exp": {exp}}}"#)).unwrap()
        };
        for bad in [
            json!({ "sub": "a", "exp": exp }),
            json!({ "userId": "", "exp": exp }),
            json!({ "userId": ["a"], "exp": exp }),
            rounded("18446744073709551626"),
            rounded("12345678901234567890123"),
            rounded("-9223372036854775809"),
            rounded("1.0"),
            rounded("1e3"),
        ] {
            assert_eq!(
                verify(s.clone(), &t(bad)),
                Err(AuthFailure::NoUserClaim("userId".into()))
            );
        }
        // A nested claim by path.
        let s = JwtSettings {
            admin: Some(("realm_access.roles".into(), "admin".into())),
            ..settings(hs("s"))
        };
        assert_eq!(
            verify(
                s,
                &t(json!({ "sub": "k", "exp": exp, "realm_access": { "roles": ["admin"] } }))
            ),
            Ok(Caller::user("k", Role::Admin))
        );
    }

    #[test]
    fn key_files_are_checked() {
        let k = keys();
        let err = |p: &Path| JwtKey::from_pem_file(p.to_path_buf()).err().unwrap();
        assert!(err(&k.rsa_priv_path).contains("private key"));
        assert!(err(&k.p384_pub).contains("P-256"));
        assert!(err(Path::new("/nonexistent/key.pem")).contains("cannot be read"));
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(
            &junk,
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        )
        .unwrap();
        assert!(err(&junk).contains("not an RSA or P-256"));
        std::fs::write(&junk, "hello").unwrap();
        assert!(err(&junk).contains("not a PEM"));
    }

    #[test]
    fn only_jwt_shaped_credentials_are_tried_as_jwts() {
        assert!(looks_like_jwt("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.sig"));
        assert!(!looks_like_jwt("0123456789abcdef"));
        assert!(!looks_like_jwt("eyJ.a"));
    }
}
