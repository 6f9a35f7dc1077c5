//! The remote imageops mode, through the real `file-system imageops` subcommand serving the
//! original imageops API over a shared scratch directory.

use crate::{checks::wait_checked, helpers::*};
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

struct Sidecar(std::process::Child);

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `file-system imageops` over `shared`; the sidecar (killed when dropped) and its URL.
async fn spawn_sidecar(shared: &std::path::Path) -> (Sidecar, String) {
    let port = crate::common::free_port();
    let sidecar = Sidecar(
        Command::new(env!("CARGO_BIN_EXE_file-system"))
            .arg("imageops")
            .env("FS_IMAGEOPS_LISTEN", format!("127.0.0.1:{port}"))
            .env("FS_SCRATCH_DIR", shared)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.get(format!("{url}/health")).send().await.is_err() {
        assert!(Instant::now() < deadline, "imageops sidecar did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (sidecar, url)
}

async fn checks_and_slims_through_the_sidecar(b: Backend) {
    let shared = tempfile::tempdir().unwrap();
    let (_sidecar, url) = spawn_sidecar(shared.path()).await;
    let client = reqwest::Client::new();
    // The original API answers as the clients of the original expect.
    let r = client
        .post(format!("{url}/api/v1/vmimage/check"))
        .json(&serde_json::json!({"inputImageName": "../etc/passwd"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let opts = Options {
        imageops_url: Some(url),
        scratch_dir: Some(shared.path().to_path_buf()),
        ..Default::default()
    };
    let app = TestApp::spawn(b, opts).await;
    let good = make_qcow2(app.dir.path(), "good.qcow2", 128, 16);
    let good_id = app
        .upload_ok("good.qcow2", std::fs::read(&good).unwrap())
        .await;
    let v = wait_checked(&app, &good_id).await;
    assert_eq!(v["checkStatusResponse"]["status"], 0, "{v}");
    assert_eq!(
        v["checkStatusResponse"]["checkInfo"]["imageInfo"]["format"],
        "qcow2"
    );
    let raw_id = app.upload_ok("disk.img", pattern(3, 1 << 20)).await;
    let v = wait_checked(&app, &raw_id).await;
    assert_eq!(v["checkStatusResponse"]["status"], 5, "{v}");
    let fake_id = app.upload_ok("fake.qcow2", pattern(4, 1 << 20)).await;
    let v = wait_checked(&app, &fake_id).await;
    assert_eq!(v["checkStatusResponse"]["status"], 3, "{v}");

    let r = app.slim(&good_id).await;
    assert_eq!(r.text().await.unwrap(), "compress in progress");
    let deadline = Instant::now() + Duration::from_secs(120);
    let v = loop {
        let (_, v) = app.get_json(&format!("/images/{good_id}")).await;
        if v["slimStatus"] != 1 {
            break v;
        }
        assert!(Instant::now() < deadline, "slim never finished: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(v["slimStatus"], 2, "{v}");
    let slim = app.dir.path().join("slim.qcow2");
    app.download_to(&format!("/images/{good_id}/action/download"), &slim)
        .await;
    assert_same_qcow2(&good, &slim);
    // The shared directory is left clean.
    let left = app.leftovers().await;
    assert_eq!(
        left.iter()
            .filter(|f| f.starts_with(&shared.path().display().to_string()))
            .count(),
        0,
        "{left:?}"
    );
    app.stop().await;
}

crate::backend_tests!(checks_and_slims_through_the_sidecar);

/// The sidecar answers every bad request in the original's JSON (`status` 3 and why, or the
/// 404 of an unknown request id), never with a framework's plain-text rejection, and refuses
/// an output that would overwrite its input or is a directory before any work starts.
#[tokio::test]
async fn the_sidecar_refuses_bad_requests_in_json() {
    let shared = tempfile::tempdir().unwrap();
    std::fs::write(shared.path().join("in.qcow2"), b"not really").unwrap();
    std::fs::create_dir(shared.path().join("out.d")).unwrap();
    let (_sidecar, url) = spawn_sidecar(shared.path()).await;
    let client = reqwest::Client::new();
    let api = format!("{url}/api/v1/vmimage");
    let json = "application/json";
    let cases: Vec<(&str, &str, String, u16)> = vec![
        ("check", json, "not json".into(), 400),
        ("check", json, r#"{"inputImageName": 5}"#.into(), 400),
        ("check", json, "{}".into(), 400),
        (
            "check",
            "text/plain",
            r#"{"inputImageName": "in.qcow2"}"#.into(),
            400,
        ),
        ("compress", json, "[".into(), 400),
        (
            "compress",
            json,
            r#"{"inputImageName": "in.qcow2", "outputImageName": "in.qcow2"}"#.into(),
            400,
        ),
        (
            "compress",
            json,
            r#"{"inputImageName": "in.qcow2", "outputImageName": "out.d"}"#.into(),
            400,
        ),
    ];
    for (op, content_type, body, status) in cases {
        let r = client
            .post(format!("{api}/{op}"))
            .header("content-type", content_type)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{op} {body}");
        let v: serde_json::Value = r.json().await.expect("a JSON answer");
        assert_eq!(v["status"], 3, "{op} {body}: {v}");
        assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(v.get("requestId").is_none(), "{v}");
    }
    for op in ["check", "compress"] {
        for id in ["%FF%FE", "nope"] {
            let r = client.get(format!("{api}/{op}/{id}")).send().await.unwrap();
            assert_eq!(r.status(), 404, "{op}/{id}");
            let v: serde_json::Value = r.json().await.expect("a JSON answer");
            assert!(v["status"].is_number(), "{v}");
        }
    }
    // Nothing was started, nothing was written.
    let mut names: Vec<_> = std::fs::read_dir(shared.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["in.qcow2", "out.d"]);
}
