//! The web console: its files as HTTP answers (types, ETag, CSP, open with authentication on),
//! and the page itself driven in Debian's headless Chromium by the scenarios of
//! `tests/browser/` (playwright-core; `scripts/test` installs Chromium and runs `npm ci`).
//! A missing browser or missing node_modules fails these tests: they are never skipped.

use crate::auth::token_line;
use crate::helpers::{make_qcow2, python_zip, Backend, Options, TestApp};
use reqwest::{header, StatusCode};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where screenshots go: `$CARGO_TARGET_DIR/browser-artifacts/<name>` (never the repository).
fn artifacts(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // target/<profile>/deps/api-<hash>
            let exe = std::env::current_exe().unwrap();
            exe.ancestors().nth(3).unwrap().to_path_buf()
        });
    let dir = target.join("browser-artifacts").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `node tests/browser/<script> <base> <artifacts> <args...>` and asserts it passed,
/// printing its output either way (the test's captured output shows it on failure).
async fn run_scenario(script: &str, base: &str, artifacts: &Path, args: &[&str]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").is_dir()
            && dir.join("node_modules/axe-core").is_dir(),
        "tests/browser/node_modules is missing: run scripts/test (or `npm ci` in tests/browser)"
    );
    let started = Instant::now();
    let child = tokio::process::Command::new("node")
        .arg(script)
        .arg(base)
        .arg(artifacts)
        .args(args)
        .current_dir(&dir)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(240), child)
        .await
        .unwrap_or_else(|_| panic!("{script} ran over 4 minutes"))
        .expect("node runs (Node.js must be installed)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!(
        "{script} ({:.1} s):\n{stdout}{stderr}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        out.status.success(),
        "{script} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

async fn get(app: &TestApp, path: &str) -> reqwest::Response {
    app.client
        .get(format!("{}{path}", app.base))
        .send()
        .await
        .unwrap()
}

/// The page and its assets: types, a strict CSP, a strong ETag that revalidates to 304.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_its_assets_are_served_with_type_etag_and_csp() {
    let app = TestApp::spawn(Backend::SqliteLocal, Options::default()).await;
    for (path, kind) in [
        ("/", "text/html; charset=utf-8"),
        ("/console/app.js", "text/javascript; charset=utf-8"),
        ("/console/api.js", "text/javascript; charset=utf-8"),
        ("/console/upload.js", "text/javascript; charset=utf-8"),
        ("/console/style.css", "text/css; charset=utf-8"),
        ("/console/icon.svg", "image/svg+xml"),
    ] {
        let resp = get(&app, path).await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let h = resp.headers().clone();
        assert_eq!(h[header::CONTENT_TYPE], kind, "{path}");
        let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(
            csp.starts_with("default-src 'self'; script-src 'self';"),
            "{csp}"
        );
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(h[header::CACHE_CONTROL], "no-cache");
        let etag = h[header::ETAG].to_str().unwrap().to_string();
        assert!(etag.starts_with('"') && etag.len() == 34, "{etag}");
        let body = resp.bytes().await.unwrap();
        assert!(!body.is_empty());
        // Revalidation.
        let again = app
            .client
            .get(format!("{}{path}", app.base))
            .header(header::IF_NONE_MATCH, &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{path}");
        assert_eq!(again.headers()[header::ETAG].to_str().unwrap(), etag);
        // HEAD: the same headers, no body.
        let head = app
            .client
            .head(format!("{}{path}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), StatusCode::OK);
        assert_eq!(head.headers()[header::ETAG].to_str().unwrap(), etag);
    }
    // The page loads nothing but its own files.
    let html = get(&app, "/").await.text().await.unwrap();
    assert!(html.contains(r#"<script type="module" src="/console/app.js">"#));
    // Anything else under /console is the usual 404, and the API answers as before.
    // A name that is not UTF-8 once percent-decoded included (it was a plain-text 400).
    for path in ["/console/nope.js", "/console/%FF", "/console/%C3%28.js"] {
        let missing = get(&app, path).await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND, "{path}");
        let body: serde_json::Value = missing.json().await.unwrap();
        assert_eq!(body["code"], "NOT_FOUND", "{path}");
    }
    assert_eq!(get(&app, "/console/").await.status(), StatusCode::NOT_FOUND);
    let (status, list) = app.get_json("/images").await;
    assert_eq!((status, list), (200, serde_json::json!([])));
    app.stop().await;
}

/// With authentication on, the console's files need no credential; the API still does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_authentication_on_the_console_is_open_and_the_api_is_not() {
    let keys = tempfile::tempdir().unwrap();
    let tokens = keys.path().join("tokens");
    std::fs::write(&tokens, token_line("console-token", "alice", "user")).unwrap();
    let app = TestApp::spawn(
        Backend::SqliteLocal,
        Options {
            env: vec![
                ("FS_AUTH", "token".to_string()),
                ("FS_AUTH_TOKENS_FILE", tokens.display().to_string()),
                ("FS_METRICS_TOKEN", "metrics-secret".to_string()),
            ],
            ..Default::default()
        },
    )
    .await;
    for path in ["/", "/console/app.js", "/console/style.css"] {
        assert_eq!(get(&app, path).await.status(), StatusCode::OK, "{path}");
    }
    let refused = get(&app, "/image-management/v1/images").await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        get(&app, "/metrics").await.status(),
        StatusCode::UNAUTHORIZED
    );
    app.stop().await;
}

/// The scenario of tests/browser/console.mjs on one backend: a 30 MiB qcow2 uploaded with a
/// reload half way and resumed (only the missing chunks sent, the stored bytes compared by
/// SHA-256), details, slim (progress, then "slimmed"), re-check, a .zip as another user and
/// the user filter, delete with confirmation, pause / resume / cancel of another upload;
/// axe-core on each view.
async fn console_in_chromium(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    let files = tempfile::tempdir().unwrap();
    let image = make_qcow2(files.path(), "disk.qcow2", 64, 30);
    let archive = files.path().join("small.zip");
    python_zip(
        &archive,
        "z.writestr('small/small.img', bytes(range(256)) * 4096)",
    );
    let other = files.path().join("other.img");
    std::fs::write(&other, crate::helpers::pattern(3, 20 << 20)).unwrap();
    let dir = artifacts(&format!("console-{b:?}"));
    run_scenario(
        "console.mjs",
        &app.base,
        &dir,
        &[
            image.to_str().unwrap(),
            archive.to_str().unwrap(),
            other.to_str().unwrap(),
        ],
    )
    .await;
    app.wait_jobs_idle().await;
    app.stop().await;
}

mod sqlite_local {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn console_in_chromium() {
        super::console_in_chromium(crate::helpers::Backend::SqliteLocal).await
    }
}

mod sqlite_s3 {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn console_in_chromium() {
        super::console_in_chromium(crate::helpers::Backend::SqliteS3).await
    }
}

/// tests/browser/disposition.mjs: the console reads the whole file name from every form of
/// Content-Disposition the service sends (a `;` in a quoted name ended it).
#[test]
fn console_reads_content_disposition() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let out = std::process::Command::new("node")
        .arg("disposition.mjs")
        .current_dir(&dir)
        .output()
        .expect("node runs (Node.js must be installed)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
}

/// tests/browser/auth.mjs: the token prompt, a refused token, then listing, upload and a
/// download saved through a blob URL with the bearer, under the name the service gave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_with_tokens_in_chromium() {
    let keys = tempfile::tempdir().unwrap();
    let tokens = keys.path().join("tokens");
    let token = "console-token-0123456789";
    std::fs::write(&tokens, token_line(token, "alice", "user")).unwrap();
    let app = TestApp::spawn(
        Backend::SqliteLocal,
        Options {
            env: vec![
                ("FS_AUTH", "token".to_string()),
                ("FS_AUTH_TOKENS_FILE", tokens.display().to_string()),
            ],
            ..Default::default()
        },
    )
    .await;
    // A `;` in the name: the saved file keeps all of it (a `;` inside the quoted filename
    // of Content-Disposition ended the name the console read).
    let image = keys.path().join("raw;1.img");
    std::fs::write(&image, crate::helpers::pattern(7, 3 << 20)).unwrap();
    let dir = artifacts("console-auth");
    run_scenario(
        "auth.mjs",
        &app.base,
        &dir,
        &[token, image.to_str().unwrap()],
    )
    .await;
    app.wait_jobs_idle().await;
    app.stop().await;
}
