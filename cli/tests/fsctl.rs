//! `fsctl` against the real service: started in-process on a loopback port 0 (SQLite and the
//! local store in a temp dir), driven by the built binary as a child process, and judged from
//! the server's side (its `/metrics` counters, the resume query, the stored bytes).

use sha2::{Digest, Sha256};
use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
    sync::oneshot,
};

const MIB: usize = 1 << 20;

/// The real service, in this test's runtime.
struct Server {
    base: String,
    dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), Box<dyn std::error::Error + Send + Sync>>>,
}

/// Where the service keeps the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Store {
    /// A directory in the test's temp dir.
    Local,
    /// Garage, as `scripts/lib.sh start_garage` exports it (scripts/test starts it).
    Garage,
}

impl Server {
    async fn start() -> Server {
        Server::start_on(Store::Local).await
    }

    async fn start_on(store: Store) -> Server {
        Server::start_with(store, vec![]).await
    }

    /// A server on `store` with further settings (`FS_...` variables).
    async fn start_with(store: Store, extra: Vec<(&'static str, String)>) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut vars = vec![
            ("FS_LISTEN", "127.0.0.1:0".to_string()),
            ("FS_SCRATCH_DIR", root.join("scratch").display().to_string()),
            (
                "DATABASE_URL",
                format!("sqlite://{}/meta.db?mode=rwc", root.display()),
            ),
        ];
        match store {
            Store::Local => {
                vars.push(("FS_STORAGE", "local".into()));
                vars.push(("FS_LOCAL_DIR", root.join("objects").display().to_string()));
            }
            Store::Garage => {
                let get = |k: &str| {
                    std::env::var(k).unwrap_or_else(|_| {
                        panic!("{k} is not set: this test needs Garage; run it through scripts/test or after `source scripts/lib.sh; start_garage`")
                    })
                };
                get("AWS_ACCESS_KEY_ID");
                vars.push(("FS_STORAGE", "s3".into()));
                vars.push(("FS_S3_ENDPOINT", get("FS_TEST_S3_ENDPOINT")));
                vars.push(("FS_S3_REGION", get("FS_TEST_S3_REGION")));
                let prefix = root.file_name().unwrap().to_string_lossy().replace('.', "");
                vars.push(("FS_S3_KEY_PREFIX", format!("fsctl-{prefix}/")));
            }
        }
        vars.extend(extra);
        let cfg = file_system::config::Config::from_vars(
            vars.into_iter().map(|(k, v)| (k.to_string(), v)),
        )
        .expect("test config");
        let svc = file_system::build(cfg).await.expect("service starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            file_system::serve(listener, svc, async {
                let _ = rx.await;
            })
            .await
            .map_err(|e| e.to_string().into())
        });
        std::fs::create_dir_all(root.join("work")).unwrap();
        Server {
            base,
            dir,
            shutdown: Some(tx),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await.unwrap().unwrap();
    }

    /// Where the tests keep their files (and where fsctl runs).
    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    fn url(&self, path: &str) -> String {
        format!("{}/image-management/v1{path}", self.base)
    }

    /// `fsctl ARGS` against this server, in the work directory.
    fn fsctl(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_fsctl"));
        c.args(args)
            .env("FS_SERVER", &self.base)
            .env_remove("FS_TOKEN")
            .current_dir(self.work())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    /// Runs fsctl to its end: exit code, stdout, stderr.
    async fn run(&self, args: &[&str]) -> (i32, String, String) {
        self.run_on(&self.base, args).await
    }

    /// Runs fsctl to its end against `server` (a proxy in front of this one).
    async fn run_on(&self, server: &str, args: &[&str]) -> (i32, String, String) {
        let out = self
            .fsctl(args)
            .env("FS_SERVER", server)
            .output()
            .await
            .unwrap();
        let r = (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        eprintln!(
            "fsctl {args:?} -> {}\nstdout: {}\nstderr: {}",
            r.0, r.1, r.2
        );
        r
    }

    /// Runs fsctl with `--json`, expects `code`, parses its single JSON document.
    async fn json(&self, args: &[&str], code: i32) -> serde_json::Value {
        self.json_on(&self.base, args, code).await
    }

    /// [`Server::json`] against `server` (a proxy in front of this one).
    async fn json_on(&self, server: &str, args: &[&str], code: i32) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        let (c, out, err) = self.run_on(server, &all).await;
        assert_eq!(c, code, "fsctl {args:?}: {err}");
        serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("not one JSON document ({e}): {out}"))
    }

    /// The sum of a metric's samples whose line holds every one of `labels`.
    async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
            .filter(|l| labels.iter().all(|x| l.contains(x)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// A metric's value once it has stopped moving (what a killed client left in flight has
    /// ended on the server).
    async fn settled_metric(&self, name: &str) -> f64 {
        let mut last = self.metric(name, &[]).await;
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let now = self.metric(name, &[]).await;
            if now == last {
                return now;
            }
            last = now;
        }
    }

    /// The chunk numbers the server holds for an identifier (the resume query).
    async fn held_chunks(&self, identifier: &str) -> Vec<u64> {
        let v: serde_json::Value = reqwest::Client::new()
            .get(self.url("/images/upload"))
            .query(&[("identifier", identifier)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["chunks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["chunkNumber"].as_u64().unwrap())
            .collect()
    }

    /// The stored object holding exactly `bytes` (the local store's file).
    fn stored_object(&self, bytes: &[u8]) -> PathBuf {
        let mut files = vec![];
        walk(&self.dir.path().join("objects"), &mut files);
        files
            .into_iter()
            .find(|f| std::fs::read(f).map(|b| b == bytes).unwrap_or(false))
            .expect("the stored object")
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Deterministic incompressible bytes (xorshift), different per seed.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Makes a FIFO at `path` and a thread that reads it to its end (what it read, joined).
fn fifo_with_reader(path: &Path) -> std::thread::JoinHandle<Vec<u8>> {
    let ok = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(ok.success());
    let fifo = path.to_path_buf();
    std::thread::spawn(move || std::fs::read(fifo).unwrap())
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Flips one byte in the middle of a file, keeping its length.
fn tamper(path: &Path) {
    let mut b = std::fs::read(path).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0xff;
    std::fs::write(path, b).unwrap();
}

/// Uploads `bytes` as `name` with fsctl; the image id.
async fn upload(s: &Server, name: &str, bytes: &[u8], extra: &[&str]) -> String {
    let path = s.work().join(name);
    std::fs::write(&path, bytes).unwrap();
    let mut args = vec!["upload", path.to_str().unwrap(), "--chunk-size", "1MiB"];
    args.extend_from_slice(extra);
    let v = s.json(&args, 0).await;
    v["image"]["imageId"].as_str().unwrap().to_string()
}

/// Downloads an image with fsctl and checks its bytes are `expected`.
async fn download_matches(s: &Server, id: &str, expected: &[u8]) {
    let out = s.work().join(format!("{id}.out"));
    let v = s
        .json(&["download", id, "-o", out.to_str().unwrap()], 0)
        .await;
    let got = std::fs::read(&out).unwrap();
    assert_eq!(got.len(), expected.len());
    assert_eq!(sha(&got), sha(expected));
    assert_eq!(v["sha256"], sha(expected));
}

/// `fsctl ARGS` in the background with its output discarded (a run a test kills or races).
fn spawn_quiet(s: &Server, args: &[&str]) -> tokio::process::Child {
    s.fsctl(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Runs `fsctl upload ARGS` (rate-limited by the caller) until the server holds `chunks` of
/// its chunks, then kills it with SIGKILL; the upload's identifier (fsctl's first stderr line).
async fn upload_killed_after(s: &Server, args: &[&str], chunks: usize) -> String {
    let (mut child, identifier) = upload_holding(s, args, Stdio::null(), chunks).await;
    child.start_kill().unwrap();
    let status = child.wait().await.unwrap();
    assert!(!status.success(), "fsctl was killed, not finished");
    identifier
}

/// Starts `fsctl upload ARGS` (rate-limited by the caller, its stdout to `stdout`) and waits
/// until the server holds `chunks` of its chunks; the running process and the upload's
/// identifier (fsctl's first stderr line).
async fn upload_holding(
    s: &Server,
    args: &[&str],
    stdout: Stdio,
    chunks: usize,
) -> (tokio::process::Child, String) {
    let mut child = s
        .fsctl(args)
        .stderr(Stdio::piped())
        .stdout(stdout)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines
        .next_line()
        .await
        .unwrap()
        .expect("fsctl names its upload");
    let identifier = first
        .split_whitespace()
        .nth(2)
        .expect("fsctl: upload IDENTIFIER ...")
        .to_string();
    until("chunks stored", || async {
        s.held_chunks(&identifier).await.len() >= chunks
    })
    .await;
    (child, identifier)
}

/// Waits until `cond` holds (polling), up to 60 s.
async fn until<F: std::future::Future<Output = bool>>(what: &str, mut cond: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGKILL half way through an upload; the rerun sends exactly the chunks the server lacked
/// (its chunk counter grows by that many), and the image's bytes are the file's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_upload_resumes_sending_only_missing_chunks() {
    killed_upload_resumes(Store::Local).await;
}

/// The same on Garage: chunks become multipart parts or staging objects, merged at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_upload_resumes_on_s3() {
    killed_upload_resumes(Store::Garage).await;
}

async fn killed_upload_resumes(store: Store) {
    let s = Server::start_on(store).await;
    let total = 12u64;
    let bytes = noise(total as usize * MIB, 1);
    let path = s.work().join("disk.img");
    std::fs::write(&path, &bytes).unwrap();
    let file = path.to_str().unwrap();
    let args = [
        "upload",
        file,
        "--chunk-size",
        "1MiB",
        "--parallel",
        "1",
        "--limit-rate",
        "2MiB",
    ];
    let identifier = upload_killed_after(&s, &args, 4).await;
    // Let a chunk request cut off by the kill end on the server.
    let before = s.settled_metric("fs_upload_chunks_received_total").await;
    let held = s.held_chunks(&identifier).await;
    assert!(
        held.len() >= 4 && (held.len() as u64) < total,
        "held {held:?}"
    );

    let v = s.json(&args[..6], 0).await;
    let after = s.metric("fs_upload_chunks_received_total", &[]).await;
    let missing = total - held.len() as u64;
    assert_eq!(after - before, missing as f64, "chunks sent by the rerun");
    assert_eq!(v["identifier"], identifier.as_str());
    assert_eq!(v["chunksSent"], missing);
    assert_eq!(v["chunksSkipped"], held.len() as u64);
    assert_eq!(v["sha256"], sha(&bytes));
    let id = v["image"]["imageId"].as_str().unwrap();
    download_matches(&s, id, &bytes).await;
    s.stop().await;
}

/// SIGKILL half way through a rate-limited download; the rerun asks for the rest (a 206), the
/// server sends only the missing bytes, and the file's bytes are the image's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_download_resumes_with_range() {
    let s = Server::start().await;
    let bytes = noise(16 * MIB, 2);
    let id = upload(&s, "big.img", &bytes, &[]).await;
    let out = s.work().join("copy.img");
    let part = s.work().join("copy.img.fsctl-part");
    let args = ["download", id.as_str(), "-o", out.to_str().unwrap()];
    let mut child = spawn_quiet(&s, &[&args[..], &["--limit-rate", "2MiB"]].concat());
    until("4 MiB downloaded", || async {
        std::fs::metadata(&part)
            .map(|m| m.len() >= 4 * MIB as u64)
            .unwrap_or(false)
    })
    .await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let have = std::fs::metadata(&part).unwrap().len();
    assert!(
        have > 0 && have < bytes.len() as u64,
        "partial file of {have} bytes"
    );
    assert!(!out.exists());
    let partials = s
        .metric(
            "fs_http_requests_total",
            &["action/download", "status=\"206\""],
        )
        .await;
    // The killed download's response has ended on the server (its duration is recorded when
    // its body is dropped), so every byte it sent is counted before this reading.
    until("the killed download to end on the server", || async {
        s.metric(
            "fs_http_request_duration_seconds_count",
            &["action/download", "status=\"200\""],
        )
        .await
            >= 1.0
    })
    .await;
    let sent_before = s.metric("fs_http_sent_bytes_total", &[]).await;

    let v = s.json(&args, 0).await;
    assert_eq!(v["resumedFrom"], have);
    assert_eq!(v["restarted"], false);
    let sent = s.metric("fs_http_sent_bytes_total", &[]).await - sent_before;
    let rest = (bytes.len() as u64 - have) as f64;
    assert!(
        sent >= rest && sent < rest + 64.0 * 1024.0,
        "sent {sent}, rest {rest}"
    );
    assert_eq!(
        s.metric(
            "fs_http_requests_total",
            &["action/download", "status=\"206\""]
        )
        .await,
        partials + 1.0
    );
    assert_eq!(sha(&std::fs::read(&out).unwrap()), sha(&bytes));
    assert!(!part.exists(), "the partial file became the target");

    // A partial file whose ETag is not the image's: If-Range fails, the service answers 200
    // with the whole image, and fsctl starts again instead of splicing.
    let stale = s.work().join("stale.img");
    std::fs::write(s.work().join("stale.img.fsctl-part"), noise(MIB, 9)).unwrap();
    let meta = serde_json::json!({"imageId": id, "zip": false, "etag": "\"not-these-bytes\""});
    std::fs::write(s.work().join("stale.img.fsctl-part.json"), meta.to_string()).unwrap();
    let v = s
        .json(&["download", id.as_str(), "-o", stale.to_str().unwrap()], 0)
        .await;
    assert_eq!(v["restarted"], true, "{v}");
    assert_eq!(v["resumedFrom"], 0);
    assert_eq!(sha(&std::fs::read(&stale).unwrap()), sha(&bytes));
    s.stop().await;
}

/// Four chunks in flight: every chunk arrives once, the bytes match; the zip form verifies too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_upload_then_plain_and_zip_download() {
    let s = Server::start().await;
    let bytes = noise(10 * MIB + 123, 3);
    let path = s.work().join("multi.img");
    std::fs::write(&path, &bytes).unwrap();
    let v = s
        .json(
            &[
                "upload",
                path.to_str().unwrap(),
                "--chunk-size",
                "1MiB",
                "--parallel",
                "4",
            ],
            0,
        )
        .await;
    assert_eq!(v["totalChunks"], 11);
    assert_eq!(v["chunksSent"], 11);
    assert_eq!(s.metric("fs_upload_chunks_received_total", &[]).await, 11.0);
    let id = v["image"]["imageId"].as_str().unwrap().to_string();
    download_matches(&s, &id, &bytes).await;

    // The same command again: the upload is merged, nothing is sent, the image is the same.
    let again = s
        .json(
            &["upload", path.to_str().unwrap(), "--chunk-size", "1MiB"],
            0,
        )
        .await;
    assert_eq!(again["chunksSent"], 0);
    assert_eq!(again["image"]["imageId"], id.as_str());
    assert_eq!(s.metric("fs_upload_chunks_received_total", &[]).await, 11.0);

    let zip = s.work().join("multi.zip");
    let z = s
        .json(&["download", &id, "--zip", "-o", zip.to_str().unwrap()], 0)
        .await;
    assert!(
        z["verifiedBy"].as_str().unwrap().contains("SHA-256 match"),
        "{z}"
    );
    assert!(zip.metadata().unwrap().len() > bytes.len() as u64);
    s.stop().await;
}

/// A `.zip` holding one image uploads in chunks; the image is the entry, and it downloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zip_upload() {
    let s = Server::start().await;
    let inner = noise(3 * MIB, 4);
    std::fs::write(s.work().join("inner.img"), &inner).unwrap();
    let made = std::process::Command::new("python3")
        .current_dir(s.work())
        .args([
            "-c",
            "import zipfile; zipfile.ZipFile('pack.zip','w').write('inner.img','pack/pack.img')",
        ])
        .status()
        .unwrap();
    assert!(made.success());
    let zip = s.work().join("pack.zip");
    let v = s
        .json(
            &["upload", zip.to_str().unwrap(), "--chunk-size", "1MiB"],
            0,
        )
        .await;
    assert_eq!(v["image"]["fileName"], "pack.img");
    let id = v["image"]["imageId"].as_str().unwrap();
    download_matches(&s, id, &inner).await;
    s.stop().await;
}

/// `--wait` follows the check of real qcow2 images (qemu-img): a good one exits 0; one that
/// is not qcow2, or whose stored bytes were damaged afterwards, exits 5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_reports_unusable_images() {
    let s = Server::start().await;
    let good = s.work().join("good.qcow2");
    let made = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&good)
        .arg("64M")
        .status()
        .expect("qemu-img");
    assert!(made.success());
    let good_bytes = std::fs::read(&good).unwrap();
    let v = s
        .json(&["upload", good.to_str().unwrap(), "--wait"], 0)
        .await;
    assert_eq!(v["check"]["checkStatusResponse"]["status"], 0, "{v}");
    let id = v["image"]["imageId"].as_str().unwrap().to_string();

    let bad = s.work().join("fake.qcow2");
    std::fs::write(&bad, noise(MIB, 5)).unwrap();
    let (code, out, _) = s.run(&["upload", bad.to_str().unwrap(), "--wait"]).await;
    assert_eq!(code, 5, "a .qcow2 that is not qcow2 is not usable");
    assert!(out.contains("check failed"), "{out}");

    tamper(&s.stored_object(&good_bytes));
    let v = s.json(&["check", &id, "--wait"], 5).await;
    assert_eq!(v["checkStatusResponse"]["status"], 1, "{v}");
    // The bad news is also where scripts look for failures.
    assert_eq!(v["error"]["kind"], "verification_failed", "{v}");
    assert_eq!(v["error"]["exitCode"], 5, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("check of"),
        "{v}"
    );
    s.stop().await;
}

/// A download whose bytes differ from the recorded SHA-256 fails with exit code 5, and
/// leaves neither the target nor a partial file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_download_fails_verification() {
    let s = Server::start().await;
    let bytes = noise(3 * MIB, 6);
    let id = upload(&s, "t.img", &bytes, &[]).await;
    tamper(&s.stored_object(&bytes));
    let out = s.work().join("t-copy.img");
    let v = s
        .json(&["download", &id, "-o", out.to_str().unwrap()], 5)
        .await;
    assert_eq!(v["error"]["kind"], "verification_failed");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&sha(&bytes)),
        "{v}"
    );
    assert!(!out.exists());
    assert!(!s.work().join("t-copy.img.fsctl-part").exists());
    s.stop().await;
}

/// Usage errors clap finds are one JSON document too, naming what is missing.
async fn usage_errors_are_json(s: &Server, path: &std::path::Path) {
    let file = path.to_str().unwrap();
    for bad in [
        &["upload", file, "--chunk-size", "0"][..],
        &["upload", file, "--parallel", "abc"],
        &["upload", file, "--limit-rate", "-1"],
        &["ls", "--limit", "-1"],
        &["frobnicate"],
        &["download"],
    ] {
        let v = s.json(bad, 2).await;
        assert_eq!(v["error"]["kind"], "usage", "{bad:?}");
        assert_eq!(v["error"]["exitCode"], 2, "{bad:?}");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
    let v = s.json(&["download"], 2).await;
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("<ID>"), "the missing argument is named: {msg}");
    let (code, out, _) = s.run(&["--json", "--help"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("Usage"), "{out}");
}

/// `--json` documents parse for upload, ls and info; exit codes for usage, not found,
/// refused and an unreachable server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_output_and_exit_codes() {
    let s = Server::start().await;
    let bytes = noise(MIB + 5, 7);
    let id = upload(&s, "j.img", &bytes, &["--user", "alice"]).await;
    let list = s.json(&["ls", "--user", "alice", "--limit", "10"], 0).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["imageId"], id.as_str());
    assert_eq!(
        s.json(&["ls", "--user", "bob"], 0).await,
        serde_json::json!([])
    );
    let info = s.json(&["info", &id], 0).await;
    assert_eq!(info["fileName"], "j.img");
    assert_eq!(info["userId"], "alice");
    let (code, out, _) = s.run(&["info", &id]).await;
    assert_eq!(code, 0);
    assert!(out.contains("j.img") && out.contains("alice"), "{out}");

    let missing = "0b5e4f2c-1111-4222-8333-944455556666";
    let v = s.json(&["info", missing], 3).await;
    assert_eq!(v["error"]["kind"], "not_found");
    assert!(
        v["error"]["message"].as_str().unwrap().contains(missing),
        "the service's message"
    );
    let path = s.work().join("j.img");
    let v = s
        .json(&["upload", path.to_str().unwrap(), "--priority", "9"], 4)
        .await;
    assert_eq!(v["error"]["kind"], "refused");
    let (code, _, err) = s
        .run(&["upload", path.to_str().unwrap(), "--chunk-size", "lots"])
        .await;
    assert_eq!(code, 2, "{err}");
    usage_errors_are_json(&s, &path).await;
    // A reader that went away (`fsctl ls | head -c 0`) is no crash: the command's exit code.
    let mut child = s
        .fsctl(&["--json", "info", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let v = s
        .json(
            &[
                "ls",
                "--server",
                &format!("http://127.0.0.1:{port}"),
                "--retries",
                "1",
            ],
            6,
        )
        .await;
    assert_eq!(v["error"]["kind"], "unavailable");

    let v = s.json(&["rm", &id], 0).await;
    assert_eq!(v["message"], "delete success");
    s.json(&["info", &id], 3).await;
    let v = s.json(&["cancel", "fsctl-nothing-here"], 0).await;
    assert_eq!(v["message"], "cancel success");
    s.stop().await;
}

/// A service that accepts connections and then says nothing, or stops in the middle of a
/// body, is a timeout after `--timeout` seconds: retried, then exit 6 (it waited forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_service_times_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Server::start().await;
    for cut_short in [false, true] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent = format!("http://{}", listener.local_addr().unwrap());
        let held = tokio::spawn(async move {
            let mut conns = vec![];
            loop {
                let (mut c, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf).await;
                if cut_short {
                    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                                content-length: 100\r\n\r\n[{\"imageId\"";
                    c.write_all(head.as_bytes()).await.unwrap();
                }
                conns.push(c);
            }
        });
        let started = Instant::now();
        let v = s
            .json_on(&silent, &["ls", "--timeout", "1", "--retries", "1"], 6)
            .await;
        assert_eq!(v["error"]["kind"], "unavailable", "{v}");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{:?}",
            started.elapsed()
        );
        held.abort();
    }
    s.stop().await;
}

/// A success that is not the service's own text answer (a web page from a proxy or from a
/// wrong `--server`, JSON, several lines, another text, another type, another 2xx) does not
/// count as done: `rm`, `cancel`, `check` and `slim` exit 1 with a `protocol` error naming
/// what came back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_that_is_not_the_services_is_no_success() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Server::start().await;
    // Each answer is wrong for all four commands: by status, type or text.
    let answers = [
        (
            "200 OK",
            "text/html",
            "<html><body>Welcome to nginx!</body></html>",
        ),
        ("200 OK", "application/json", "{\"ok\":true}"),
        ("200 OK", "text/plain", "delete success\nand more"),
        ("200 OK", "text/plain", ""),
        ("200 OK", "text/plain", "ok."),
        ("200 OK", "text/plain", "DELETE SUCCESS"),
        ("200 OK", "text/plainx", "delete success"),
        ("201 Created", "text/plain", "delete success"),
    ];
    for (status, content_type, body) in answers {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let other = format!("http://{}", listener.local_addr().unwrap());
        let page = format!(
            "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        );
        let served = tokio::spawn(async move {
            loop {
                let (mut c, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf).await;
                let _ = c.write_all(page.as_bytes()).await;
            }
        });
        let id = "0b6c5c38-1d2e-4c1a-9a57-3f2e8b0f5d11";
        for args in [
            &["rm", id][..],
            &["cancel", "some-upload"],
            &["check", id],
            &["slim", id],
        ] {
            let v = s.json_on(&other, args, 1).await;
            assert_eq!(
                v["error"]["kind"], "protocol",
                "{args:?} {content_type}: {v}"
            );
            let message = v["error"]["message"].as_str().unwrap();
            assert!(message.contains("HTTP 20"), "{args:?}: {message}");
        }
        served.abort();
    }
    s.stop().await;
}

/// With authentication on, `FS_TOKEN` (or `--token`) is the Bearer credential: without it the
/// service's 401 is exit 4 with its message; with it the image is the token's user's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_from_env_or_flag() {
    let tokens = tempfile::NamedTempFile::new().unwrap();
    let token = "fsctl-test-token-4f1d9a0c7e2b";
    std::fs::write(
        tokens.path(),
        format!("sha256:{} alice user\n", sha(token.as_bytes())),
    )
    .unwrap();
    let s = Server::start_with(
        Store::Local,
        vec![
            ("FS_AUTH", "token".into()),
            ("FS_AUTH_TOKENS_FILE", tokens.path().display().to_string()),
        ],
    )
    .await;
    let v = s.json(&["ls"], 4).await;
    assert!(
        v["error"]["message"].as_str().unwrap().contains("401"),
        "{v}"
    );

    let path = s.work().join("mine.img");
    std::fs::write(&path, noise(MIB, 10)).unwrap();
    let out = s
        .fsctl(&["upload", path.to_str().unwrap(), "--json"])
        .env("FS_TOKEN", token)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let up: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(up["image"]["userId"], "alice");
    let list = s.json(&["ls", "--token", token], 0).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    s.json(&["ls", "--token", "wrong"], 4).await;
    s.stop().await;
}

/// `slim --wait` follows a real qcow2's slim to "slimmed" (exit 0); the download then serves
/// and verifies the slimmed bytes. A raw image cannot be slimmed: the service's 400, exit 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slim_wait_follows_the_slim() {
    let s = Server::start().await;
    let img = s.work().join("data.qcow2");
    for args in [
        vec![
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            img.to_str().unwrap(),
            "64M",
        ],
        vec!["qemu-io", "-c", "write -P 0x5a 0 8M", img.to_str().unwrap()],
    ] {
        let out = std::process::Command::new(args[0])
            .args(&args[1..])
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
    }
    let v = s
        .json(&["upload", img.to_str().unwrap(), "--wait"], 0)
        .await;
    let id = v["image"]["imageId"].as_str().unwrap().to_string();
    let slimmed = s.json(&["slim", &id, "--wait"], 0).await;
    assert_eq!(slimmed["slimStatus"], 2, "{slimmed}");
    let (code, out, _) = s.run(&["slim", &id]).await;
    assert_eq!(code, 0);
    assert!(out.contains("already been slimmed"), "{out}");
    let target = s.work().join("slim.qcow2");
    let d = s
        .json(&["download", &id, "-o", target.to_str().unwrap()], 0)
        .await;
    assert_eq!(
        d["sha256"], slimmed["sha256"],
        "the slimmed bytes are served"
    );
    assert_ne!(d["sha256"], sha(&std::fs::read(&img).unwrap()));

    let raw = upload(&s, "raw.img", &noise(MIB, 11), &["--wait"]).await;
    let v = s.json(&["slim", &raw, "--wait"], 4).await;
    assert_eq!(v["error"]["kind"], "refused", "{v}");
    s.stop().await;
}

/// A target that is not a regular file is written into, never replaced: a FIFO and a device
/// node get the bytes and stay what they were (no partial file, no rename over them), a
/// symbolic link is written through (the link stays, the file it names gets the bytes), and a
/// zip, verified by reading it back, is refused for a FIFO.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_targets_that_are_not_files() {
    use std::os::unix::fs::FileTypeExt;
    let s = Server::start().await;
    let bytes = noise(3 * MIB + 11, 21);
    let id = upload(&s, "dev.img", &bytes, &[]).await;
    let work = s.work();
    let fifo = work.join("out.fifo");
    let reader = fifo_with_reader(&fifo);
    let v = s
        .json(&["download", &id, "-o", fifo.to_str().unwrap()], 0)
        .await;
    assert_eq!(v["sha256"], sha(&bytes));
    assert_eq!(sha(&reader.join().unwrap()), sha(&bytes));
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
    assert!(!work.join("out.fifo.fsctl-part").exists());
    let v = s
        .json(&["download", &id, "--zip", "-o", fifo.to_str().unwrap()], 2)
        .await;
    assert_eq!(v["error"]["kind"], "usage");

    // A node of /dev/null's kind (char 1:3), made here: the tests run as root.
    let null = work.join("null");
    let ok = std::process::Command::new("mknod")
        .args([null.to_str().unwrap(), "c", "1", "3"])
        .status()
        .unwrap();
    assert!(ok.success(), "mknod needs root");
    s.json(&["download", &id, "-o", null.to_str().unwrap()], 0)
        .await;
    let kind = std::fs::symlink_metadata(&null).unwrap().file_type();
    assert!(kind.is_char_device(), "still a device node");

    // The download's own files are never followed through a planted link, and a target
    // that is a directory is refused before anything is fetched.
    let victim = work.join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    std::os::unix::fs::symlink(&victim, work.join("z.img.fsctl-part")).unwrap();
    let z = work.join("z.img");
    s.json(&["download", &id, "-o", z.to_str().unwrap()], 1)
        .await;
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    std::fs::create_dir_all(work.join("dirs").join("dev.img")).unwrap();
    let v = s
        .json(
            &["download", &id, "-o", work.join("dirs").to_str().unwrap()],
            2,
        )
        .await;
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("is a directory"));
    assert!(!work.join("dirs").join("dev.img.fsctl-part").exists());

    let link = work.join("link.img");
    std::os::unix::fs::symlink("real.img", &link).unwrap();
    s.json(&["download", &id, "-o", link.to_str().unwrap()], 0)
        .await;
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        sha(&std::fs::read(work.join("real.img")).unwrap()),
        sha(&bytes)
    );
    s.stop().await;
}

/// A second fsctl downloading to the same target while the first runs is refused (exit 1)
/// instead of writing the same partial file; the first finishes with the image's bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_downloads_to_one_target_are_refused() {
    let s = Server::start().await;
    let bytes = noise(6 * MIB, 22);
    let id = upload(&s, "twice.img", &bytes, &[]).await;
    let out = s.work().join("twice.out");
    let part = s.work().join("twice.out.fsctl-part");
    let args = ["download", id.as_str(), "-o", out.to_str().unwrap()];
    let first = spawn_quiet(&s, &[&args[..], &["--limit-rate", "2MiB"]].concat());
    until("the first download writing", || async {
        std::fs::metadata(&part).is_ok_and(|m| m.len() > 0)
    })
    .await;
    let v = s.json(&args, 1).await;
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("another fsctl is downloading"), "{msg}");
    let done = first.wait_with_output().await.unwrap();
    assert!(done.status.success());
    assert_eq!(sha(&std::fs::read(&out).unwrap()), sha(&bytes));
    s.stop().await;
}

/// Uploads that can never be merged leave nothing on the server. A name the service refuses
/// is refused before a byte is sent (exit 2); a link uploads under its own name. A chunk the
/// server holds that is not the file's (damaged at rest) fails the merge's checksum: the
/// upload is dropped (exit 5), and the rerun sends the file afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_uploads_leave_nothing() {
    let s = Server::start().await;
    let bytes = noise(4 * MIB, 23);
    let raw = s.work().join("disk.raw");
    std::fs::write(&raw, &bytes).unwrap();
    let v = s
        .json(
            &["upload", raw.to_str().unwrap(), "--chunk-size", "1MiB"],
            2,
        )
        .await;
    assert_eq!(v["error"]["kind"], "usage");
    // Names the service would refuse at the merge (a right-to-left override, bytes that are
    // not UTF-8) or keep as another name (after a backslash; trimmed), each before a byte goes.
    use std::os::unix::ffi::OsStrExt;
    let names: [&std::ffi::OsStr; 4] = [
        "bob\u{202E}gmi.img".as_ref(),
        std::ffi::OsStr::from_bytes(b"bytes-\xff.img"),
        "dir\\disk.img".as_ref(),
        " spaced.img".as_ref(),
    ];
    for name in names {
        let path = s.work().join(name);
        std::fs::write(&path, b"image").unwrap();
        let done = s
            .fsctl(&["upload", "--json"])
            .arg(&path)
            .output()
            .await
            .unwrap();
        let (code, out, err) = (
            done.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&done.stdout),
            String::from_utf8_lossy(&done.stderr),
        );
        assert_eq!(code, 2, "{name:?}: {out} {err}");
        assert!(out.contains("rename the file"), "{name:?}: {out}");
    }
    assert_eq!(s.metric("fs_upload_chunks_received_total", &[]).await, 0.0);
    let link = s.work().join("linked.img");
    std::os::unix::fs::symlink(&raw, &link).unwrap();
    let v = s
        .json(
            &["upload", link.to_str().unwrap(), "--chunk-size", "1MiB"],
            0,
        )
        .await;
    assert_eq!(v["image"]["fileName"], "linked.img");

    let path = s.work().join("damaged.img");
    std::fs::write(&path, &bytes).unwrap();
    let file = path.to_str().unwrap();
    let args = ["upload", file, "--chunk-size", "1MiB", "--parallel", "1"];
    let limited = [&args[..], &["--limit-rate", "1MiB"]].concat();
    let identifier = upload_killed_after(&s, &limited, 2).await;
    s.settled_metric("fs_upload_chunks_received_total").await;
    // The held chunks, damaged at rest.
    let mut files = vec![];
    walk(&s.dir.path().join("objects").join(".uploads"), &mut files);
    let data = files
        .iter()
        .find(|f| f.file_name().is_some_and(|n| n == "data"))
        .expect("the upload's data file");
    tamper(data);
    let v = s.json(&args, 5).await;
    assert_eq!(v["error"]["kind"], "verification_failed");
    assert!(
        s.held_chunks(&identifier).await.is_empty(),
        "the upload was dropped"
    );
    let v = s.json(&args, 0).await;
    assert_eq!(v["chunksSkipped"], 0);
    let id = v["image"]["imageId"].as_str().unwrap();
    download_matches(&s, id, &bytes).await;
    s.stop().await;
}

/// A file that shrinks while it is uploaded cannot be read to its old end: fsctl says it
/// changed (exit 5) and drops the chunks it sent, which could never be merged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_shrinks_during_its_upload_leaves_nothing() {
    let s = Server::start().await;
    let path = s.work().join("shrinking.img");
    std::fs::write(&path, noise(6 * MIB, 31)).unwrap();
    let file = path.to_str().unwrap();
    let args = [
        "upload",
        file,
        "--chunk-size",
        "1MiB",
        "--parallel",
        "1",
        "--limit-rate",
        "2MiB",
        "--json",
    ];
    let (child, identifier) = upload_holding(&s, &args, Stdio::piped(), 1).await;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(2 * MIB as u64)
        .unwrap();
    let out = child.wait_with_output().await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(5), "{v}");
    assert_eq!(v["error"]["kind"], "verification_failed", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("changed while"),
        "{v}"
    );
    assert!(s.held_chunks(&identifier).await.is_empty(), "chunks left");
    s.stop().await;
}

/// A chunk refused by the user's quota: with chunks already on the server the message says
/// they stay for a rerun and how to drop them; with none, it does not speak of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_refusal_speaks_of_held_chunks_only_when_there_are_some() {
    let s = Server::start_with(Store::Local, vec![("FS_QUOTA_BYTES", "3MiB".into())]).await;
    let big = s.work().join("big.img");
    std::fs::write(&big, noise(8 * MIB, 41)).unwrap();
    let big = big.to_str().unwrap();
    let common = ["--chunk-size", "1MiB", "--parallel", "1", "--user", "alice"];
    // Alice's first three chunks fit her 3 MiB; the fourth is refused.
    let v = s.json(&[&["upload", big][..], &common].concat(), 4).await;
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("chunks held stay"), "{message}");
    assert!(message.contains("fsctl cancel"), "{message}");
    assert!(message.contains("--user alice"), "{message}");
    // Nothing of bob's is on the server when his first chunk is refused.
    let too_big = s.work().join("too-big.img");
    std::fs::write(&too_big, noise(5 * MIB, 43)).unwrap();
    let v = s
        .json(
            &[
                "upload",
                too_big.to_str().unwrap(),
                "--chunk-size",
                "4MiB",
                "--user",
                "bob",
            ],
            4,
        )
        .await;
    let message = v["error"]["message"].as_str().unwrap();
    assert!(!message.contains("chunks held stay"), "{message}");
    assert!(!message.contains("fsctl cancel"), "{message}");
    s.stop().await;
}

/// A TCP proxy in front of `base` that cuts, once, the first connection to send back more
/// than `cut_after` bytes (after forwarding exactly that many): a connection that breaks in
/// the middle of a download. Every other connection passes untouched. Returns its base URL.
async fn cutting_proxy(base: &str, cut_after: usize) -> String {
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = base.trim_start_matches("http://").to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cut = Arc::new(AtomicBool::new(false));
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (upstream, cut) = (upstream.clone(), cut.clone());
            tokio::spawn(async move {
                let server = tokio::net::TcpStream::connect(&upstream).await.unwrap();
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_server, mut to_server) = server.into_split();
                let requests = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from_client, &mut to_server).await;
                });
                let (mut sent, mut buf) = (0, vec![0u8; 64 * 1024]);
                while let Ok(n @ 1..) = from_server.read(&mut buf).await {
                    if sent + n > cut_after && !cut.swap(true, Ordering::SeqCst) {
                        let _ = to_client.write_all(&buf[..cut_after - sent]).await;
                        break;
                    }
                    sent += n;
                    if to_client.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                requests.abort();
            });
        }
    });
    format!("http://{addr}")
}

/// A connection that breaks in the middle of a download is resumed within the run. Into a
/// FIFO the rest is appended to the same open FIFO: its reader gets every byte once (the
/// FIFO was reopened, so its reader saw an end after the first part and fsctl then blocked
/// in open for a reader that was gone). A zip starts again from its first byte: the service
/// builds it anew for each request, so neither the rerun nor the retry says the image
/// changed, and a partial zip left by an earlier run is not resumed either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_connections_resume_within_the_run() {
    let s = Server::start().await;
    let bytes = noise(3 * MIB + 5, 23);
    let id = upload(&s, "cut.img", &bytes, &[]).await;
    let work = s.work();
    let downloads = || s.metric("fs_http_requests_total", &["action/download"]);
    let in_time = |what: &'static str, run| async move {
        tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .unwrap_or_else(|_| panic!("{what}: fsctl still runs after 60 s"))
    };

    let fifo = work.join("cut.fifo");
    let reader = fifo_with_reader(&fifo);
    let before = downloads().await;
    let proxy = cutting_proxy(&s.base, MIB).await;
    let args = ["download", &id, "-o", fifo.to_str().unwrap()];
    let v = in_time("into a FIFO", s.json_on(&proxy, &args, 0)).await;
    assert_eq!(v["sha256"], sha(&bytes));
    assert_eq!(v["restarted"], false, "{v}");
    let read = reader.join().unwrap();
    assert_eq!(read.len(), bytes.len());
    assert_eq!(sha(&read), sha(&bytes));
    assert_eq!(downloads().await, before + 2.0, "cut once, resumed once");

    let zip = work.join("cut.zip");
    let args = ["download", &id, "--zip", "-o", zip.to_str().unwrap()];
    let before = downloads().await;
    let proxy = cutting_proxy(&s.base, MIB).await;
    let v = in_time("a zip", s.json_on(&proxy, &args, 0)).await;
    assert_eq!(v["restarted"], false, "{v}");
    assert_eq!(v["resumedFrom"], 0);
    assert!(v["verifiedBy"].as_str().unwrap().contains("SHA-256"), "{v}");
    assert_eq!(
        downloads().await,
        before + 2.0,
        "cut once, started again once"
    );

    // What a killed zip download leaves: its partial file and the zip's ETag.
    std::fs::remove_file(&zip).unwrap();
    let part = work.join("cut.zip.fsctl-part");
    std::fs::write(&part, noise(MIB, 24)).unwrap();
    let meta = serde_json::json!({"imageId": id, "zip": true, "etag": "\"a-zip\""});
    std::fs::write(work.join("cut.zip.fsctl-part.json"), meta.to_string()).unwrap();
    let v = s.json(&args, 0).await;
    assert_eq!(v["restarted"], false, "{v}");
    assert_eq!(v["resumedFrom"], 0);
    assert!(!part.exists());
    s.stop().await;
}
