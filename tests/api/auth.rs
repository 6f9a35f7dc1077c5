//! Authentication (`FS_AUTH`): every API route needs a bearer credential when it is on;
//! tokens from a file that is reloaded while the service runs; JWTs signed in the tests
//! (HS256, RS256) and every way one can be wrong; the metrics token; CORS with auth on; a
//! refused large upload that still gets its answer.

use crate::helpers::{assert_error, Backend, Options, TestApp, API};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use reqwest::{header, multipart, Client, Method, Response};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";
const SERVICE_TOKEN: &str = "appstore-0123456789abcdef";

/// The line of a tokens file for `token` (only its SHA-256).
pub fn token_line(token: &str, user: &str, role: &str) -> String {
    format!(
        "sha256:{} {user} {role}\n",
        hex::encode(Sha256::digest(token))
    )
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn hs256(secret: &[u8], claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// A user's JWT signed with the service's HS256 secret.
fn user_jwt(user: &str) -> String {
    hs256(
        SECRET.as_bytes(),
        &json!({ "sub": user, "exp": now() + 600 }),
    )
}

/// A client that sends `Authorization: Bearer <token>` with every request.
pub fn client_with(token: &str) -> Client {
    let mut headers = header::HeaderMap::new();
    headers.insert(
        header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    Client::builder().default_headers(headers).build().unwrap()
}

/// A server with `FS_AUTH=token,jwt` (tokens file in `keys`, HS256 secret) plus `extra`.
async fn spawn_auth(b: Backend, keys: &Path, extra: &[(&'static str, &str)]) -> TestApp {
    let tokens = keys.join("tokens");
    if !tokens.exists() {
        std::fs::write(
            &tokens,
            format!(
                "# services\n{}",
                token_line(SERVICE_TOKEN, "appstore", "admin")
            ),
        )
        .unwrap();
    }
    let mut env = vec![
        ("FS_AUTH", "token,jwt".to_string()),
        ("FS_AUTH_TOKENS_FILE", tokens.display().to_string()),
        ("FS_JWT_HS256_SECRET", SECRET.to_string()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    TestApp::spawn(
        b,
        Options {
            env,
            ..Default::default()
        },
    )
    .await
}

async fn assert_unauthorized(resp: Response, token_sent: bool) -> Value {
    let challenge = resp.headers()[header::WWW_AUTHENTICATE]
        .to_str()
        .unwrap()
        .to_string();
    assert!(challenge.starts_with("Bearer"), "{challenge}");
    assert_eq!(
        challenge.contains(r#"error="invalid_token""#),
        token_sent,
        "{challenge}"
    );
    let v = assert_error(resp, 401, None).await;
    assert_eq!(v["code"], "UNAUTHORIZED", "{v}");
    v
}

/// Every API route, as (method, path, form or not).
fn every_route() -> Vec<(Method, String, bool)> {
    let id = "0b5c1a3e-1c2d-4e5f-8a9b-0c1d2e3f4a5b";
    vec![
        (Method::GET, "/images".into(), false),
        (Method::POST, "/images".into(), true),
        (Method::POST, "/images/upload".into(), true),
        (Method::GET, "/images/upload?identifier=abc".into(), false),
        (
            Method::DELETE,
            "/images/upload?identifier=abc".into(),
            false,
        ),
        (Method::POST, "/images/merge".into(), true),
        (Method::GET, format!("/images/{id}"), false),
        (Method::DELETE, format!("/images/{id}"), false),
        (Method::GET, format!("/images/{id}/action/download"), false),
        (Method::POST, format!("/images/{id}/action/slim"), false),
        (Method::POST, format!("/images/{id}/action/check"), false),
        // Unknown paths under the API too: nothing can be probed without a credential.
        (Method::GET, "/no-such-route".into(), false),
    ]
}

async fn send(client: &Client, app: &TestApp, method: &Method, path: &str, form: bool) -> Response {
    let mut req = client.request(method.clone(), app.url(path));
    if form {
        req = req.multipart(
            multipart::Form::new()
                .text("identifier", "abc")
                .text("filename", "a.qcow2")
                .part(
                    "file",
                    multipart::Part::bytes(vec![7u8; 4096]).file_name("a.qcow2"),
                ),
        );
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn every_route_needs_a_credential() {
    let keys = tempfile::tempdir().unwrap();
    let app = spawn_auth(Backend::SqliteLocal, keys.path(), &[]).await;
    let plain = Client::new();
    let wrong = client_with("not-a-token");
    let forged = client_with(&hs256(
        b"another-secret-of-at-least-32-bytes!!",
        &json!({ "sub": "alice", "exp": now() + 600 }),
    ));
    for (method, path, form) in every_route() {
        let v = assert_unauthorized(send(&plain, &app, &method, &path, form).await, false).await;
        assert!(
            v["message"].as_str().unwrap().contains("Bearer"),
            "{method} {path}: {v}"
        );
        let v = assert_unauthorized(send(&wrong, &app, &method, &path, form).await, true).await;
        assert!(!v.to_string().contains("not-a-token"), "{v}");
        assert_unauthorized(send(&forged, &app, &method, &path, form).await, true).await;
    }
    // Another scheme is no credential.
    let basic = app
        .client
        .get(app.url("/images"))
        .header(header::AUTHORIZATION, "Basic YWxpY2U6cHc=")
        .send()
        .await
        .unwrap();
    assert_unauthorized(basic, false).await;
    // Nothing was stored by the refused requests.
    let user = client_with(SERVICE_TOKEN);
    let list: Value = user
        .get(app.url("/images"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list, json!([]));
    // Outside the API an unknown path is still a plain 404.
    let r = plain
        .get(format!("{}/nowhere", app.base))
        .send()
        .await
        .unwrap();
    assert_error(r, 404, None).await;
    app.stop().await;
}

/// A service's static token and a user's JWT both work on every kind of request.
async fn credentials_let_requests_through(b: Backend) {
    let keys = tempfile::tempdir().unwrap();
    let mut app = spawn_auth(b, keys.path(), &[]).await;
    let service = client_with(SERVICE_TOKEN);
    let alice = client_with(&user_jwt("alice"));
    app.client = service.clone();
    let id = app.upload_ok("svc.qcow2", vec![1u8; 100_000]).await;
    app.client = alice.clone();
    assert_eq!(
        app.chunk("jwt-up", 1, vec![2u8; 70_000]).await.status(),
        200
    );
    assert_eq!(
        app.chunk("jwt-up", 2, vec![3u8; 30_000]).await.status(),
        200
    );
    let r = app
        .client
        .get(app.url("/images/upload?identifier=jwt-up"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Alice merges her own upload (a userId naming anyone else would be refused).
    let form = multipart::Form::new()
        .text("identifier", "jwt-up")
        .text("filename", "alice.qcow2");
    let merged = app
        .client
        .post(app.url("/images/merge"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(merged.status(), 200);
    let merged: serde_json::Value = merged.json().await.unwrap();
    assert_eq!(merged["userId"], "alice", "the JWT's user owns the image");
    let mine = merged["imageId"].as_str().unwrap().to_string();
    let (status, list) = app.get_json("/images").await;
    assert_eq!(status, 200);
    assert!(list.to_string().contains(&mine), "{list}");
    assert!(
        !list.to_string().contains(&id),
        "alice sees only her own: {list}"
    );
    assert_eq!(app.get_json(&format!("/images/{mine}")).await.0, 200);
    assert_eq!(
        app.download(&mine).await,
        [vec![2u8; 70_000], vec![3u8; 30_000]].concat()
    );
    app.client = service;
    // The service's token is an admin's: it sees both users' images.
    let (_, all) = app.get_json("/images").await;
    assert!(
        all.to_string().contains(&id) && all.to_string().contains(&mine),
        "{all}"
    );
    assert_eq!(app.download(&id).await, vec![1u8; 100_000]);
    let r = app.delete_image(&id).await;
    assert_eq!(r.status(), 200);
    app.stop().await;
}

crate::backend_tests!(credentials_let_requests_through);

/// Makes an RSA key pair with the openssl CLI: (private PEM, public key file).
fn rsa_keys(dir: &Path, name: &str) -> (Vec<u8>, PathBuf) {
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    crate::helpers::run(
        "openssl",
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            private.to_str().unwrap(),
        ],
    );
    crate::helpers::run(
        "openssl",
        &[
            "pkey",
            "-in",
            private.to_str().unwrap(),
            "-pubout",
            "-out",
            public.to_str().unwrap(),
        ],
    );
    (std::fs::read(private).unwrap(), public)
}

#[tokio::test]
async fn bad_jwts_are_refused() {
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = rsa_keys(keys.path(), "idp");
    let (other, _) = rsa_keys(keys.path(), "other");
    let app = idp_app(&public).await;
    let list = |token: String| {
        let client = client_with(&token);
        let url = app.url("/images");
        async move { client.get(url).send().await.unwrap() }
    };
    // A good token, and an admin's.
    assert_eq!(list(rs256(&private, claims(json!({})))).await.status(), 200);
    let admin = claims(json!({ "authorities": ["ROLE_APPSTORE_ADMIN"] }));
    assert_eq!(list(rs256(&private, admin)).await.status(), 200);
    let public_pem = std::fs::read(&public).unwrap();
    for (what, token, says) in bad_tokens(&private, &other, &public_pem) {
        let v = assert_unauthorized(list(token.clone()).await, true).await;
        let message = v["message"].as_str().unwrap();
        assert!(message.contains(says), "{what}: {message}");
        assert!(!message.contains(&token), "{what}: the token is echoed");
    }
    app.stop().await;
}

/// An app that takes RS256 JWTs of `https://idp.example` for `file-system` signed by the key
/// `public`, the user in `userId`, admins by `ROLE_APPSTORE_ADMIN` in `authorities`.
async fn idp_app(public: &std::path::Path) -> TestApp {
    TestApp::spawn(
        Backend::SqliteLocal,
        Options {
            env: vec![
                ("FS_AUTH", "jwt".into()),
                ("FS_JWT_PUBLIC_KEY_FILE", public.display().to_string()),
                ("FS_JWT_ISSUER", "https://idp.example".into()),
                ("FS_JWT_AUDIENCE", "file-system".into()),
                ("FS_JWT_USER_CLAIM", "userId".into()),
                ("FS_JWT_ADMIN_CLAIM", "authorities".into()),
                ("FS_JWT_ADMIN_VALUE", "ROLE_APPSTORE_ADMIN".into()),
            ],
            ..Default::default()
        },
    )
    .await
}

/// `claims` signed with the RSA `key` (PEM), RS256.
fn rs256(key: &[u8], claims: Value) -> String {
    encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(key).unwrap(),
    )
    .unwrap()
}

/// Good claims for [`idp_app`], with the members of `patch` set (`null`: removed).
fn claims(patch: Value) -> Value {
    let mut c = json!({
        "userId": "u-1",
        "iss": "https://idp.example",
        "aud": "file-system",
        "exp": now() + 600,
        "authorities": ["ROLE_APPSTORE_TENANT"],
    });
    for (k, v) in patch.as_object().unwrap() {
        match v {
            Value::Null => c.as_object_mut().unwrap().remove(k),
            v => c.as_object_mut().unwrap().insert(k.clone(), v.clone()),
        };
    }
    c
}

/// Tokens [`idp_app`] refuses, each with what it is and what the refusal says: `private` is
/// the identity provider's key, `other` another one, `public_pem` the provider's public key.
fn bad_tokens(
    private: &[u8],
    other: &[u8],
    public_pem: &[u8],
) -> Vec<(&'static str, String, &'static str)> {
    let b64 = |v: Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let good = rs256(private, claims(json!({})));
    let parts: Vec<&str> = good.split('.').collect();
    vec![
        (
            "expired",
            rs256(private, claims(json!({ "exp": now() - 3600 }))),
            "expired",
        ),
        (
            "not yet valid",
            rs256(private, claims(json!({ "nbf": now() + 3600 }))),
            "not valid yet",
        ),
        (
            "no exp",
            rs256(private, claims(json!({ "exp": null }))),
            "\"exp\"",
        ),
        (
            "wrong issuer",
            rs256(private, claims(json!({ "iss": "https://evil" }))),
            "issuer",
        ),
        (
            "wrong audience",
            rs256(private, claims(json!({ "aud": "appstore" }))),
            "audience",
        ),
        (
            "no user",
            rs256(private, claims(json!({ "userId": null }))),
            "userId",
        ),
        ("wrong key", rs256(other, claims(json!({}))), "signature"),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(json!({ "alg": "none", "typ": "JWT" })),
                parts[1]
            ),
            "malformed",
        ),
        (
            "tampered payload",
            format!(
                "{}.{}.{}",
                parts[0],
                b64(claims(json!({ "userId": "root" }))),
                parts[2]
            ),
            "signature",
        ),
        (
            "HS256 signed with the RSA public key",
            hs256(public_pem, &claims(json!({}))),
            "algorithm",
        ),
        ("garbage", "eyJhbGciOi.x.y".into(), "malformed"),
    ]
}

#[tokio::test]
async fn the_tokens_file_is_reloaded_while_running() {
    let keys = tempfile::tempdir().unwrap();
    let tokens = keys.path().join("tokens");
    std::fs::write(&tokens, token_line("first-token", "ops", "admin")).unwrap();
    let app = spawn_auth(Backend::SqliteLocal, keys.path(), &[]).await;
    let status = |token: &'static str| {
        let client = client_with(token);
        let url = app.url("/images");
        async move { client.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status("first-token").await, 200);
    assert_eq!(status("second-token").await, 401);
    // Replaced as a Secret update replaces it: a new file renamed over the old one.
    let next = keys.path().join("tokens.new");
    std::fs::write(&next, token_line("second-token", "ops", "user")).unwrap();
    std::fs::rename(&next, &tokens).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while status("second-token").await != 200 {
        assert!(Instant::now() < deadline, "the new token was not taken");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        status("first-token").await,
        401,
        "a removed token still works"
    );
    // Fail closed: a deleted file revokes every token; a line gone bad (a role mistyped while
    // demoting an admin) grants nothing, while the good lines around it are in force.
    std::fs::remove_file(&tokens).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while status("second-token").await != 401 {
        assert!(Instant::now() < deadline, "a deleted file kept its token");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mistyped = token_line("first-token", "ops", "administrator");
    let good = token_line("fourth-token", "dan", "user");
    std::fs::write(&tokens, format!("{mistyped}{good}")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while status("fourth-token").await != 200 {
        assert!(Instant::now() < deadline, "the good line was not taken");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status("first-token").await, 401, "a bad line granted");
    // Edited in place (appended to).
    std::fs::write(
        &tokens,
        format!(
            "{}{}",
            token_line("second-token", "ops", "user"),
            token_line("third-token", "bob", "user")
        ),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while status("third-token").await != 200 {
        assert!(
            Instant::now() < deadline,
            "the appended token was not taken"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn metrics_token_probes_and_the_openapi_scheme() {
    let keys = tempfile::tempdir().unwrap();
    let app = spawn_auth(
        Backend::SqliteLocal,
        keys.path(),
        &[("FS_METRICS_TOKEN", "scrape-me-0123456789")],
    )
    .await;
    let metrics = format!("{}/metrics", app.base);
    assert_unauthorized(app.client.get(&metrics).send().await.unwrap(), false).await;
    let r = client_with("scrape-me-012345678")
        .get(&metrics)
        .send()
        .await
        .unwrap();
    assert_unauthorized(r, true).await;
    // An API token is not the metrics token.
    let r = client_with(SERVICE_TOKEN)
        .get(&metrics)
        .send()
        .await
        .unwrap();
    assert_unauthorized(r, true).await;
    let r = client_with("scrape-me-0123456789")
        .get(&metrics)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The refusals were counted like any request.
    let text = r.text().await.unwrap();
    assert!(text.contains("status=\"401\""), "{text}");
    for open in ["/health", "/ready", "/openapi.json"] {
        let r = app
            .client
            .get(format!("{}{open}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{open}");
    }
    openapi_names_the_bearer_scheme(&app).await;
    app.stop().await;

    metrics_token_with_authentication_off().await;
}

/// The OpenAPI document names the bearer scheme on the API's routes, not on the probes'.
async fn openapi_names_the_bearer_scheme(app: &TestApp) {
    let doc: Value = app
        .client
        .get(format!("{}/openapi.json", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        doc["components"]["securitySchemes"]["bearerAuth"]["scheme"], "bearer",
        "{}",
        doc["components"]
    );
    let list = &doc["paths"][format!("{API}/images")]["get"]["security"];
    assert!(list.to_string().contains("bearerAuth"), "{list}");
    assert!(doc["paths"]["/health"]["get"]["security"].is_null());
}

/// The metrics token alone, with authentication off: `/metrics` needs it, the API stays open.
async fn metrics_token_with_authentication_off() {
    let app = TestApp::spawn(
        Backend::SqliteLocal,
        Options {
            env: vec![("FS_METRICS_TOKEN", "scrape-me-0123456789".into())],
            ..Default::default()
        },
    )
    .await;
    assert_unauthorized(
        app.client
            .get(format!("{}/metrics", app.base))
            .send()
            .await
            .unwrap(),
        false,
    )
    .await;
    let r = client_with("whatever")
        .get(app.url("/images"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "auth off: a stray Authorization header changes nothing"
    );
    assert_eq!(app.get_json("/images").await.0, 200);
    app.stop().await;
}

#[tokio::test]
async fn cors_with_authentication_on() {
    let keys = tempfile::tempdir().unwrap();
    let preflight = |app: &TestApp| {
        app.client
            .request(Method::OPTIONS, app.url("/images"))
            .header(header::ORIGIN, "https://portal.example")
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "authorization")
            .send()
    };
    // Default: no origin is allowed, and the preflight is not refused as unauthenticated.
    let app = spawn_auth(Backend::SqliteLocal, keys.path(), &[]).await;
    let r = preflight(&app).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r
        .headers()
        .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        .is_none());
    let r = client_with(SERVICE_TOKEN)
        .get(app.url("/images"))
        .header(header::ORIGIN, "https://portal.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r
        .headers()
        .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        .is_none());
    app.stop().await;
    // An allowed origin: its preflight passes, and a 401 carries the CORS headers a browser
    // needs to read it.
    let app = spawn_auth(
        Backend::SqliteLocal,
        keys.path(),
        &[("FS_CORS_ORIGINS", "https://portal.example")],
    )
    .await;
    let r = preflight(&app).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://portal.example"
    );
    let r = app
        .client
        .get(app.url("/images"))
        .header(header::ORIGIN, "https://portal.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://portal.example"
    );
    assert_unauthorized(r, false).await;
    app.stop().await;
}

#[tokio::test]
async fn a_refused_large_upload_gets_its_answer() {
    let keys = tempfile::tempdir().unwrap();
    let app = spawn_auth(Backend::SqliteLocal, keys.path(), &[]).await;
    // 50 MiB that the server never reads: the 401 must arrive, not a reset.
    for _ in 0..2 {
        let form = multipart::Form::new().text("userId", "x").part(
            "file",
            multipart::Part::bytes(vec![0x5a; 50 << 20]).file_name("big.qcow2"),
        );
        let r = app
            .client
            .post(app.url("/images"))
            .multipart(form)
            .send()
            .await
            .expect("the 401 reaches the client");
        assert_unauthorized(r, false).await;
    }
    assert!(app.leftovers().await.is_empty());
    app.stop().await;
}

/// The real binary with `RUST_LOG=warn,audit=info` and JSON logs: a refused credential is one
/// `auth_failure` event at target `audit` with the reason, the client address a trusted proxy
/// forwarded, and the request id the answer carries; never the credential; and nothing else
/// at info level gets through the filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failures_reach_the_audit_log() {
    let keys = tempfile::tempdir().unwrap();
    let tokens = keys.path().join("tokens");
    std::fs::write(&tokens, token_line(SERVICE_TOKEN, "appstore", "admin")).unwrap();
    let app = TestApp::spawn(
        Backend::SqliteLocal,
        Options {
            env: vec![
                ("FS_AUTH", "token".into()),
                ("FS_AUTH_TOKENS_FILE", tokens.display().to_string()),
            ],
            no_server: true,
            ..Default::default()
        },
    )
    .await;
    let log = app.dir.path().join("server.log");
    let replica = crate::helpers::Replica::start(
        &app.vars,
        crate::helpers::free_port(),
        &log,
        &[
            ("RUST_LOG", "warn,audit=info"),
            ("FS_LOG_FORMAT", "json"),
            ("FS_TRUSTED_PROXIES", "127.0.0.0/8"),
        ],
    )
    .await;
    let r = client_with("a-secret-credential-value")
        .get(replica.api("/images"))
        .header("x-forwarded-for", "203.0.113.5")
        .send()
        .await
        .unwrap();
    let request_id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_unauthorized(r, true).await;
    let r = client_with(SERVICE_TOKEN)
        .get(replica.api("/images"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    let event = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["action"] == "auth_failure");
        if let Some(v) = found {
            assert!(!text.contains("a-secret-credential-value"), "{text}");
            // Only audit events pass the filter at info level.
            assert!(
                text.lines()
                    .all(|l| l.contains("\"audit\"") || l.contains("WARN") || l.contains("ERROR")),
                "{text}"
            );
            break v;
        }
        assert!(Instant::now() < deadline, "no auth_failure event: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(event["reason"], "unknown_token", "{event}");
    assert_eq!(event["remote"], "203.0.113.5", "{event}");
    assert_eq!(event["request_id"], request_id.as_str(), "{event}");
    assert_eq!(event["path"], format!("{API}/images"), "{event}");
    assert_eq!(event["outcome"], "refused", "{event}");
    drop(replica);
}

/// SIGHUP reloads the tokens file even when nothing the poll looks at changed (same inode,
/// length and modification time), and does not stop the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_tokens() {
    let keys = tempfile::tempdir().unwrap();
    let tokens = keys.path().join("tokens");
    // Two tokens of the same length, so the file keeps its length when one replaces the other.
    std::fs::write(&tokens, token_line("token-one", "ops", "admin")).unwrap();
    let app = TestApp::spawn(
        Backend::SqliteLocal,
        Options {
            env: vec![
                ("FS_AUTH", "token".into()),
                ("FS_AUTH_TOKENS_FILE", tokens.display().to_string()),
            ],
            no_server: true,
            ..Default::default()
        },
    )
    .await;
    let log = app.dir.path().join("server.log");
    let replica =
        crate::helpers::Replica::start(&app.vars, crate::helpers::free_port(), &log, &[]).await;
    let status = |token: &'static str| {
        let client = client_with(token);
        let url = replica.api("/images");
        async move { client.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status("token-one").await, 200);
    // Rewritten in place, its modification time put back: the poll sees no change.
    let modified = std::fs::metadata(&tokens).unwrap().modified().unwrap();
    std::fs::write(&tokens, token_line("token-two", "ops", "admin")).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&tokens)
        .unwrap()
        .set_modified(modified)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(status("token-two").await, 401, "the poll saw a change");
    // SAFETY: kill(2) on our own child, which has not been waited for.
    assert_eq!(
        unsafe { libc::kill(replica.child.id() as i32, libc::SIGHUP) },
        0
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while status("token-two").await != 200 {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload the tokens"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status("token-one").await, 401);
    drop(replica);
}
