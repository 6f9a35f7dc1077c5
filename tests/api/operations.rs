//! What operators rely on: `/metrics`, `/openapi.json`, request ids, JSON logs, and a clean
//! exit on SIGTERM.

use crate::helpers::*;
use serde_json::Value;
use std::collections::BTreeSet;

/// The value of one sample (`name{labels}`) in a Prometheus text exposition; `None` when the
/// series is absent (a gauge that vanished fails a test instead of reading 0).
pub(crate) fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().unwrap())
    })
}

pub(crate) async fn metrics(app: &TestApp) -> String {
    let r = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    r.text().await.unwrap()
}

/// After an upload (`size` bytes) whose `POST` is counted as `ok_uploads`, its check, its
/// download, one chunk and a request to no route: each is counted.
fn requests_bytes_and_jobs_are_counted(text: &str, ok_uploads: &str, size: f64) {
    let upload_route = "/image-management/v1/images";
    assert_eq!(sample(text, ok_uploads), Some(1.0), "{text}");
    let download = format!(
        r#"fs_http_requests_total{{method="GET",route="{upload_route}/{{image_id}}/action/download",status="200"}}"#
    );
    assert_eq!(sample(text, &download), Some(1.0), "{text}");
    assert_eq!(
        sample(
            text,
            r#"fs_http_requests_total{method="GET",route="unmatched",status="404"}"#
        ),
        Some(1.0),
        "{text}"
    );
    let seconds = format!(
        r#"fs_http_request_duration_seconds_count{{method="POST",route="{upload_route}",status="200"}}"#
    );
    assert_eq!(sample(text, &seconds), Some(1.0), "{text}");
    assert!(sample(text, "fs_http_received_bytes_total").unwrap() >= size + 1000.0);
    assert!(sample(text, "fs_http_sent_bytes_total").unwrap() >= size);
    assert_eq!(sample(text, "fs_upload_sessions_open"), Some(1.0), "{text}");
    assert_eq!(
        sample(text, r#"fs_jobs{kind="check",state="done"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            text,
            r#"fs_job_duration_seconds_count{kind="check",outcome="done"}"#
        ),
        Some(1.0),
        "{text}"
    );
}

async fn metrics_count_requests_bytes_sessions_and_jobs(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    let before = metrics(&app).await;
    let upload_route = "/image-management/v1/images";
    let ok_uploads =
        format!(r#"fs_http_requests_total{{method="POST",route="{upload_route}",status="200"}}"#);
    // A labelled counter appears with its first sample; a gauge is there from the start.
    assert_eq!(sample(&before, &ok_uploads), None);
    assert_eq!(sample(&before, "fs_upload_sessions_open"), Some(0.0));
    // Every kind and state is reported from the start.
    assert!(
        before.contains(r#"fs_jobs{kind="slim",state="failed"} 0"#),
        "{before}"
    );

    let img = make_qcow2(app.dir.path(), "m.qcow2", 64, 3);
    let size = std::fs::metadata(&img).unwrap().len() as f64;
    let id = app.upload_ok("m.qcow2", std::fs::read(&img).unwrap()).await;
    app.wait_jobs_idle().await;
    let body = app
        .client
        .get(app.url(&format!("/images/{id}/action/download")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body.len() as f64, size);
    assert_eq!(app.chunk("open-one", 1, vec![7; 1000]).await.status(), 200);
    let _ = app.client.get(app.url("/nowhere")).send().await.unwrap();

    requests_bytes_and_jobs_are_counted(&metrics(&app).await, &ok_uploads, size);

    // Cancelled: no session open any more.
    let r = app
        .client
        .delete(app.url("/images/upload?identifier=open-one"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        sample(&metrics(&app).await, "fs_upload_sessions_open"),
        Some(0.0)
    );
    app.stop().await;
}

/// Every route of the router, as (method, path) of the OpenAPI document.
const ROUTES: &[(&str, &str)] = &[
    ("post", "/image-management/v1/images"),
    ("get", "/image-management/v1/images"),
    ("post", "/image-management/v1/images/upload"),
    ("get", "/image-management/v1/images/upload"),
    ("delete", "/image-management/v1/images/upload"),
    ("post", "/image-management/v1/images/merge"),
    ("get", "/image-management/v1/images/{image_id}"),
    ("delete", "/image-management/v1/images/{image_id}"),
    (
        "get",
        "/image-management/v1/images/{image_id}/action/download",
    ),
    ("post", "/image-management/v1/images/{image_id}/action/slim"),
    (
        "post",
        "/image-management/v1/images/{image_id}/action/check",
    ),
    ("get", "/image-management/v1/quotas/{user_id}"),
    ("put", "/image-management/v1/quotas/{user_id}"),
    ("get", "/image-management/v1/usage"),
    ("get", "/health"),
    ("get", "/ready"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
];

async fn openapi_documents_every_route(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    let r = app
        .client
        .get(format!("{}/openapi.json", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    // Counting body bytes for /metrics keeps the length known: no chunked encoding.
    let length: usize = r.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let doc: Value = r.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert!(length > 1000);
    // A valid OpenAPI document, by an independent validator.
    let file = app.dir.path().join("openapi.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    run(
        "python3",
        &[
            "-c",
            "import json, sys; from openapi_spec_validator import validate; validate(json.load(open(sys.argv[1])))",
            file.to_str().unwrap(),
        ],
    );
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.clone(), path.clone()));
        }
    }
    let expected: BTreeSet<_> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, expected);
    // Each documented route is served (a made-up id gives the JSON 404 of a missing image,
    // never the router's 404 or 405).
    let some_id = "0b6a2f4e-5c1d-4e8f-9a7b-3c2d1e0f9a8b";
    for (m, p) in ROUTES {
        let url = format!("{}{}", app.base, p.replace("{image_id}", some_id));
        let method = reqwest::Method::from_bytes(m.to_uppercase().as_bytes()).unwrap();
        let r = app.client.request(method, &url).send().await.unwrap();
        let status = r.status().as_u16();
        assert_ne!(status, 405, "{m} {p}");
        if status == 404 {
            let v: Value = r.json().await.unwrap();
            assert_ne!(v["message"], "no such resource", "{m} {p} is not routed");
        }
    }
    // The shapes clients read are described.
    let image = &doc["components"]["schemas"]["ImageView"]["properties"];
    for field in ["imageId", "fileName", "checkStatusResponse", "slimStatus"] {
        assert!(image.get(field).is_some(), "ImageView.{field}: {image}");
    }
    app.stop().await;
}

/// The database goes away and comes back: liveness and metrics stay up, readiness and every
/// request that needs the database answer 503 `DATABASE_UNAVAILABLE` (promptly, not after a
/// long hang), nothing is left behind, and the service recovers by itself.
async fn database_outage_and_recovery(b: Backend) {
    let server = std::env::var("FS_TEST_PG_URL").expect("FS_TEST_PG_URL (scripts/test)");
    let proxy = FaultProxy::start(server.rsplit('@').next().unwrap()).await;
    let app = TestApp::spawn(
        b,
        Options {
            database_via: Some(proxy.url.clone()),
            ..Default::default()
        },
    )
    .await;
    let before = app.upload_ok("before.qcow2", pattern(1, 4096)).await;
    app.wait_jobs_idle().await;
    proxy.set(Fault::Refuse);
    let started = std::time::Instant::now();
    let get = |path: String| app.client.get(path).send();
    assert_eq!(
        get(format!("{}/health", app.base)).await.unwrap().status(),
        200
    );
    assert_error(get(format!("{}/ready", app.base)).await.unwrap(), 503, None).await;
    assert_eq!(
        get(format!("{}/metrics", app.base)).await.unwrap().status(),
        200
    );
    let v = assert_error(get(app.url("/images")).await.unwrap(), 503, None).await;
    assert_eq!(v["code"], "DATABASE_UNAVAILABLE", "{v}");
    let v = assert_error(
        get(app.url(&format!("/images/{before}"))).await.unwrap(),
        503,
        None,
    )
    .await;
    assert_eq!(v["code"], "DATABASE_UNAVAILABLE", "{v}");
    let r = app
        .upload("during.qcow2", pattern(2, 100_000), &[("userId", "u")])
        .await;
    let v = assert_error(r, 503, None).await;
    assert_eq!(v["code"], "DATABASE_UNAVAILABLE", "{v}");
    let elapsed = started.elapsed();
    assert!(elapsed < std::time::Duration::from_secs(60), "{elapsed:?}");
    silent_database_bounds(&app, &proxy).await;

    proxy.set(Fault::Pass);
    let (status, list) = app.get_json("/images").await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let r = app.delete_image(&before).await;
    assert_eq!(r.status(), 200);
    let left = app.leftovers().await;
    assert!(left.is_empty(), "{left:?}");
    app.stop().await;
}

/// A database that takes connections and never answers (a dead route): `/ready` still answers
/// 503 within the 5 s a probe waits, and `/metrics` is served within them too.
async fn silent_database_bounds(app: &TestApp, proxy: &FaultProxy) {
    proxy.set(Fault::Blackhole);
    for path in ["ready", "metrics"] {
        let started = std::time::Instant::now();
        let r = app
            .client
            .get(format!("{}/{path}", app.base))
            .send()
            .await
            .unwrap();
        let took = started.elapsed();
        match path {
            "ready" => {
                let v = assert_error(r, 503, None).await;
                assert_eq!(v["code"], "DATABASE_UNAVAILABLE", "{v}");
            }
            _ => assert_eq!(r.status(), 200),
        }
        assert!(
            took < std::time::Duration::from_secs(5),
            "/{path} took {took:?}"
        );
    }
}

/// With `FS_STARTUP_WAIT_SECS`, a database and a store that cannot be reached yet when the
/// service starts (they start beside it, as in a helm release) are waited for: the process says
/// why and keeps trying, then serves once both answer, instead of exiting.
async fn a_start_waits_for_its_database_and_store(b: Backend) {
    let server = std::env::var("FS_TEST_PG_URL").expect("FS_TEST_PG_URL (scripts/test)");
    let database = FaultProxy::start(server.rsplit('@').next().unwrap()).await;
    let store = FaultProxy::start(&s3_env().0).await;
    database.set(Fault::Refuse);
    store.set(Fault::Refuse);
    let mut app = TestApp::spawn(
        b,
        Options {
            database_via: Some(database.url.clone()),
            s3_endpoint: Some(store.url.clone()),
            no_server: true,
            ..Default::default()
        },
    )
    .await;
    let port = free_port();
    let log = app.dir.path().join("server.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_file-system"))
        .envs(app.vars.iter().filter(|(k, _)| k != "FS_LISTEN").cloned())
        .env("FS_LISTEN", format!("127.0.0.1:{port}"))
        .env("FS_STARTUP_WAIT_SECS", "120")
        .env("RUST_LOG", "info")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let mut waited_for = |what: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
        loop {
            let text = std::fs::read_to_string(&log).unwrap();
            if text.contains(&format!("{what} cannot be reached yet; waiting for it")) {
                return;
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "the start gave up instead of waiting for {what}: {text}"
            );
            assert!(std::time::Instant::now() < deadline, "{what}: {text}");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    waited_for("the database");
    database.set(Fault::Pass);
    waited_for("the store");
    store.set(Fault::Pass);
    app.base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let r = client.get(format!("{}/ready", app.base)).send().await;
        if matches!(&r, Ok(r) if r.status() == 200) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not ready once both answer: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let bytes = pattern(7, 300_000);
    let id = app.upload_ok("late.qcow2", bytes.clone()).await;
    assert_eq!(app.download(&id).await, bytes);
    child.kill().unwrap();
    child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY").unwrap();
    assert!(!text.contains(&secret), "a secret in the log: {text}");
}

mod late_dependencies {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_s3() {
        super::a_start_waits_for_its_database_and_store(crate::helpers::Backend::PostgresS3).await
    }
}

mod postgres_outage {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_local() {
        super::database_outage_and_recovery(crate::helpers::Backend::PostgresLocal).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_s3() {
        super::database_outage_and_recovery(crate::helpers::Backend::PostgresS3).await
    }
}

/// Clients cannot grow the metrics at will: unknown methods and unmatched paths share one label
/// each, whatever was sent.
async fn metric_labels_stay_bounded(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    let series = |t: &str| t.lines().filter(|l| !l.starts_with('#')).count();
    // Warm up one request of each kind so their series exist.
    let send = |method: String, path: String| {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        app.client.request(m, format!("{}{path}", app.base)).send()
    };
    send("FOO0".into(), "/x0".into()).await.unwrap();
    send("GET".into(), "/nope/0".into()).await.unwrap();
    metrics(&app).await; // the scrape itself is counted from the next one on
    let before = metrics(&app).await;
    for i in 1..200 {
        let r = send(format!("M{i}X"), format!("/random/{i}"))
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        send("GET".into(), format!("/nope/{i}")).await.unwrap();
    }
    let after = metrics(&app).await;
    assert_eq!(series(&after), series(&before), "new series appeared");
    assert!(
        after.contains(r#"method="OTHER",route="unmatched""#),
        "{after}"
    );
    app.stop().await;
}

crate::backend_tests!(
    metrics_count_requests_bytes_sessions_and_jobs,
    openapi_documents_every_route,
    metric_labels_stay_bounded
);

/// The real binary with `FS_LOG_FORMAT=json`: every log line is a JSON object, a request's
/// lines carry its request id (the client's, echoed back), and SIGTERM ends it with status 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_request_ids_and_sigterm_exits_0() {
    let app = TestApp::config_only(Backend::SqliteLocal).await;
    let log = app.dir.path().join("json.log");
    let mut server =
        Replica::start(&app.vars, free_port(), &log, &[("FS_LOG_FORMAT", "json")]).await;
    let r = app
        .client
        .get(server.api("/images"))
        .header("x-request-id", "trace-me-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "trace-me-123");
    // Without one, the service makes one up.
    let r = app.client.get(server.api("/images")).send().await.unwrap();
    let made = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(made.len(), 36, "{made}");
    server.terminate();
    let status = server.child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 3, "{text}");
    let tagged: Vec<_> = lines
        .iter()
        .filter(|v| v.to_string().contains("trace-me-123"))
        .collect();
    assert!(!tagged.is_empty(), "no line carries the request id: {text}");
    assert!(text.contains(&made), "{text}");
    app.stop().await;
}

/// Requests generated from `/openapi.json` by schemathesis (random and boundary values, and
/// sequences of calls) against the real binary: whatever a client sends, never a 5xx.
async fn generated_requests_never_get_a_server_error(b: Backend) {
    let app = TestApp::spawn(
        b,
        Options {
            no_server: true,
            max_image_bytes: Some(10 << 20),
            ..Default::default()
        },
    )
    .await;
    let server = Replica::start(
        &app.vars,
        free_port(),
        &app.dir.path().join("server.log"),
        &[],
    )
    .await;
    // Through python3 (where pip put it), not a console script that may not be on PATH.
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys; from schemathesis.cli import schemathesis; sys.argv[0] = 'schemathesis'; schemathesis()",
            "run",
            &format!("{}/openapi.json", server.base),
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "60",
            "--seed",
            "20261128",
            "--generation-deterministic",
            "--no-color",
        ])
        .current_dir(app.dir.path())
        .output()
        .expect("schemathesis must be installed (scripts/test installs it)");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("passed"), "{report}");
    drop(server);
    app.stop().await;
}

mod generated {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_local() {
        super::generated_requests_never_get_a_server_error(crate::helpers::Backend::SqliteLocal)
            .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_s3() {
        super::generated_requests_never_get_a_server_error(crate::helpers::Backend::PostgresS3)
            .await
    }
}
