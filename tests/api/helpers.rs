//! Test harness: a real server on 127.0.0.1:0 per test, its own database and store, driven by a
//! real HTTP client. Test bodies take a `Backend` so the same body runs on every combination.

use file_system::config::Config;
use reqwest::{multipart, Client, Response};
use std::{
    path::{Path, PathBuf},
    process::Command,
};
use tokio::sync::oneshot;

pub use crate::common::{
    files::{assert_same_qcow2, make_qcow2, pattern, python_zip, run, sha256, sha256_file},
    free_port,
};

pub const API: &str = "/image-management/v1";

/// Database + storage combination a test body runs on. `...S3` is Garage; `...Rgw` is Ceph's
/// RADOS Gateway, a strict store (5 MiB parts, storage classes, error codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    SqliteLocal,
    SqliteS3,
    PostgresLocal,
    PostgresS3,
    SqliteRgw,
    PostgresRgw,
}

/// The S3 server a test uses, both started by scripts/lib.sh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3Server {
    /// Garage (`start_garage`): lenient, takes parts of any size.
    Garage,
    /// Ceph's RADOS Gateway (`start_rgw`): strict like AWS and MinIO.
    Rgw,
}

impl Backend {
    pub fn is_s3(self) -> bool {
        self.s3_server().is_some()
    }

    /// The S3 server of an S3 backend.
    pub fn s3_server(self) -> Option<S3Server> {
        match self {
            Backend::SqliteLocal | Backend::PostgresLocal => None,
            Backend::SqliteS3 | Backend::PostgresS3 => Some(S3Server::Garage),
            Backend::SqliteRgw | Backend::PostgresRgw => Some(S3Server::Rgw),
        }
    }

    pub fn is_postgres(self) -> bool {
        matches!(
            self,
            Backend::PostgresLocal | Backend::PostgresS3 | Backend::PostgresRgw
        )
    }

    /// A fresh, empty database for one test: a SQLite file in `dir`, or a new database in the
    /// PostgreSQL cluster scripts/test started.
    pub async fn new_database(self, dir: &Path) -> String {
        if !self.is_postgres() {
            return format!("sqlite://{}/meta.db?mode=rwc", dir.display());
        }
        use sea_orm::ConnectionTrait;
        let server = std::env::var("FS_TEST_PG_URL").unwrap_or_else(|_| {
            panic!("FS_TEST_PG_URL is not set: the PostgreSQL tests need a server; run them through scripts/test")
        });
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let admin = sea_orm::Database::connect(format!("{server}/postgres"))
            .await
            .expect("PostgreSQL is reachable");
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        admin.close().await.unwrap();
        format!("{server}/{name}")
    }
}

/// Knobs a test may turn.
#[derive(Default, Clone)]
pub struct Options {
    pub max_image_bytes: Option<u64>,
    pub tiers: Option<&'static str>,
    pub upload_ttl_secs: Option<u64>,
    pub min_part_bytes: Option<u64>,
    /// Replaces the S3 endpoint (e.g. a fault-injecting proxy in front of Garage).
    pub s3_endpoint: Option<String>,
    pub job_concurrency: Option<usize>,
    pub job_lease_secs: Option<u64>,
    /// Use a remote imageops at this URL (sharing the app's scratch directory).
    pub imageops_url: Option<String>,
    /// Use this scratch directory instead of one in the test's temp dir.
    pub scratch_dir: Option<PathBuf>,
    /// The service reaches PostgreSQL through this address (e.g. a fault-injecting proxy)
    /// instead of the server's own; the test itself still uses the direct one.
    pub database_via: Option<String>,
    /// Further settings, as environment variables (`FS_...`).
    pub env: Vec<(&'static str, String)>,
    /// Prepare the configuration, database and store view only: the test runs the real
    /// binary (`Replica`) on them, which must then own the directories alone.
    pub no_server: bool,
}

/// The S3 server the tests use (Garage, started by scripts/test): endpoint and region.
pub fn s3_env() -> (String, String) {
    s3_env_of(S3Server::Garage)
}

/// Endpoint and region of one S3 server. The service takes its keys from AWS_ACCESS_KEY_ID /
/// AWS_SECRET_ACCESS_KEY, one pair per process: `start_rgw` gives its user Garage's keys.
pub fn s3_env_of(server: S3Server) -> (String, String) {
    let get = |k: &str| {
        std::env::var(k).unwrap_or_else(|_| match server {
            S3Server::Garage => {
                panic!("{k} is not set: the S3 tests need Garage; run them through scripts/test")
            }
            S3Server::Rgw => panic!(
                "{k} is not set: the RGW tests need Ceph's RADOS Gateway; \
                 `source scripts/lib.sh; start_garage; start_rgw` first"
            ),
        })
    };
    let key_id = get("AWS_ACCESS_KEY_ID");
    get("AWS_SECRET_ACCESS_KEY");
    match server {
        S3Server::Garage => (get("FS_TEST_S3_ENDPOINT"), get("FS_TEST_S3_REGION")),
        S3Server::Rgw => {
            assert_eq!(
                get("FS_TEST_RGW_ACCESS_KEY_ID"),
                key_id,
                "the RGW user must have AWS_ACCESS_KEY_ID's key: start_rgw after start_garage"
            );
            (get("FS_TEST_RGW_ENDPOINT"), get("FS_TEST_RGW_REGION"))
        }
    }
}

/// S3 settings for a test on `server`: path-style, the real 5 MiB minimum part size, keys
/// under a prefix of the test's own.
pub fn s3_settings_of(server: S3Server, prefix: &str) -> file_system::storage::S3Settings {
    let (endpoint, region) = s3_env_of(server);
    file_system::storage::S3Settings {
        endpoint: Some(endpoint),
        region: Some(region),
        force_path_style: true,
        min_part_bytes: 5 << 20,
        part_bytes: 8 << 20,
        upload_concurrency: 4,
        readahead_bytes: 128 << 20,
        key_prefix: prefix.to_string(),
        spool_dir: std::env::temp_dir(),
        checksum: Default::default(),
    }
}

pub async fn s3_client_of(server: S3Server) -> aws_sdk_s3::Client {
    let store = file_system::storage::S3Store::new(s3_settings_of(server, ""))
        .await
        .unwrap();
    store.client().clone()
}

struct S3View {
    client: aws_sdk_s3::Client,
    prefix: String,
    buckets: Vec<String>,
}

pub struct TestApp {
    /// The service's configuration, as environment variables (to start the real binary).
    pub vars: Vec<(String, String)>,
    pub database_url: String,
    pub base: String,
    pub scratch: PathBuf,
    pub client: Client,
    pub dir: tempfile::TempDir,
    #[allow(dead_code)]
    pub backend: Backend,
    s3: Option<S3View>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    pub async fn spawn(backend: Backend, opts: Options) -> TestApp {
        // Server logs go to the test's captured output (shown when it fails).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        let scratch = opts
            .scratch_dir
            .clone()
            .unwrap_or_else(|| root.join("scratch"));
        let mut vars = vec![
            ("FS_LISTEN".to_string(), "127.0.0.1:0".to_string()),
            ("FS_SCRATCH_DIR".into(), scratch.display().to_string()),
            (
                "FS_UPLOAD_TTL_SECS".into(),
                opts.upload_ttl_secs.unwrap_or(86_400).to_string(),
            ),
        ];
        let database_url = backend.new_database(root).await;
        let service_url = match &opts.database_via {
            None => database_url.clone(),
            Some(via) => {
                let server = std::env::var("FS_TEST_PG_URL").unwrap();
                let host = server.rsplit('@').next().unwrap();
                database_url.replace(host, via.trim_start_matches("http://"))
            }
        };
        vars.push(("DATABASE_URL".into(), service_url));
        let mut s3 = None;
        match backend {
            Backend::SqliteLocal | Backend::PostgresLocal => {
                vars.push(("FS_STORAGE".into(), "local".into()));
                vars.push((
                    "FS_LOCAL_DIR".into(),
                    root.join("objects").display().to_string(),
                ));
            }
            Backend::SqliteS3 | Backend::PostgresS3 | Backend::SqliteRgw | Backend::PostgresRgw => {
                let server = backend.s3_server().unwrap();
                let (endpoint, region) = s3_env_of(server);
                let prefix = format!("t-{}/", uuid::Uuid::new_v4().simple());
                vars.push(("FS_STORAGE".into(), "s3".into()));
                vars.push((
                    "FS_S3_ENDPOINT".into(),
                    opts.s3_endpoint.clone().unwrap_or(endpoint),
                ));
                vars.push(("FS_S3_REGION".into(), region));
                vars.push(("FS_S3_KEY_PREFIX".into(), prefix.clone()));
                if let Some(m) = opts.min_part_bytes {
                    vars.push(("FS_S3_MIN_PART_BYTES".into(), m.to_string()));
                    vars.push(("FS_S3_PART_BYTES".into(), m.max(8 << 20).to_string()));
                }
                let tiers =
                    file_system::config::parse_tiers(opts.tiers.unwrap_or("0=images")).unwrap();
                s3 = Some(S3View {
                    client: s3_client_of(server).await,
                    prefix,
                    buckets: tiers.values().map(|t| t.bucket.clone()).collect(),
                });
            }
        }
        if let Some(m) = opts.max_image_bytes {
            vars.push(("FS_MAX_IMAGE_BYTES".into(), m.to_string()));
        }
        if let Some(u) = &opts.imageops_url {
            vars.push(("FS_IMAGEOPS_URL".into(), u.clone()));
        }
        if let Some(n) = opts.job_concurrency {
            vars.push(("FS_JOB_CONCURRENCY".into(), n.to_string()));
        }
        if let Some(n) = opts.job_lease_secs {
            vars.push(("FS_JOB_LEASE_SECS".into(), n.to_string()));
        }
        if let Some(t) = opts.tiers {
            vars.push(("FS_TIERS".into(), t.to_string()));
        }
        vars.extend(opts.env.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let cfg = Config::from_vars(vars.clone()).expect("test config");
        if opts.no_server {
            return TestApp {
                vars,
                database_url,
                scratch,
                base: String::new(),
                client: Client::builder().build().unwrap(),
                dir,
                backend,
                s3,
                shutdown: None,
                server: None,
            };
        }
        let svc = file_system::build(cfg).await.expect("service starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(file_system::serve(listener, svc, async {
            let _ = rx.await;
        }));
        TestApp {
            vars,
            database_url,
            scratch,
            base: format!("http://{addr}"),
            client: Client::builder().build().unwrap(),
            dir,
            backend,
            s3,
            shutdown: Some(tx),
            server: Some(server),
        }
    }

    /// Stops the server gracefully and checks it exited cleanly.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(s) = self.server.take() {
            s.await.unwrap().unwrap();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{API}{path}", self.base)
    }

    /// Whether the store holds `key` in `bucket`.
    pub async fn object_exists(&self, bucket: &str, key: &str) -> bool {
        match &self.s3 {
            None => self
                .dir
                .path()
                .join("objects")
                .join(bucket)
                .join(key)
                .is_file(),
            Some(s3) => s3
                .client
                .head_object()
                .bucket(bucket)
                .key(format!("{}{key}", s3.prefix))
                .send()
                .await
                .is_ok(),
        }
    }

    /// Everything the service keeps: objects, parts and uploads in progress, scratch files
    /// (to prove nothing is left behind).
    pub async fn leftovers(&self) -> Vec<String> {
        self.wait_jobs_idle().await;
        // A worker whose job was cancelled (its image deleted) lets go of its scratch files
        // when it notices, at its next lease renewal: give it that long.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut files = vec![];
        loop {
            files.clear();
            walk(&self.scratch, &mut files);
            if files.is_empty() || std::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        if self.s3.is_none() {
            walk(&self.dir.path().join("objects"), &mut files);
        }
        let mut out: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        if let Some(s3) = &self.s3 {
            for b in &s3.buckets {
                let objs = s3
                    .client
                    .list_objects_v2()
                    .bucket(b)
                    .prefix(&s3.prefix)
                    .send()
                    .await
                    .unwrap();
                out.extend(
                    objs.contents()
                        .iter()
                        .map(|o| format!("{b}/{}", o.key().unwrap_or(""))),
                );
                let ups = s3
                    .client
                    .list_multipart_uploads()
                    .bucket(b)
                    .prefix(&s3.prefix)
                    .send()
                    .await
                    .unwrap();
                out.extend(
                    ups.uploads()
                        .iter()
                        .map(|u| format!("upload {b}/{}", u.key().unwrap_or(""))),
                );
            }
        }
        out
    }

    /// Waits until no check or slim job is queued or running (they use scratch space).
    pub async fn wait_jobs_idle(&self) {
        use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
        let db = file_system::db::connect(&self.database_url).await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let active = entity::job::Entity::find()
                .filter(entity::job::Column::State.is_in(["queued", "running"]))
                .count(&db)
                .await
                .unwrap();
            if active == 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{active} jobs still active"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        db.close().await.unwrap();
    }

    /// The S3 client and this test's key prefix (S3 backends only).
    pub fn s3(&self) -> (&aws_sdk_s3::Client, &str) {
        let s3 = self.s3.as_ref().expect("an S3 backend");
        (&s3.client, &s3.prefix)
    }

    /// `POST /images` with the given file part and text fields.
    pub async fn upload(
        &self,
        file_name: &str,
        bytes: Vec<u8>,
        fields: &[(&str, &str)],
    ) -> Response {
        let mut form = multipart::Form::new();
        for (k, v) in fields {
            form = form.text(k.to_string(), v.to_string());
        }
        form = form.part(
            "file",
            multipart::Part::bytes(bytes).file_name(file_name.to_string()),
        );
        self.client
            .post(self.url("/images"))
            .multipart(form)
            .send()
            .await
            .unwrap()
    }

    /// Uploads a file from disk (streamed), file part first, fields after it.
    pub async fn upload_path(
        &self,
        path: &Path,
        file_name: &str,
        fields: &[(&str, &str)],
    ) -> Response {
        send_file(&self.client, &self.url(""), path, file_name, fields).await
    }

    /// Uploads and returns the new image id, asserting success.
    pub async fn upload_ok(&self, file_name: &str, bytes: Vec<u8>) -> String {
        let resp = self
            .upload(file_name, bytes, &[("userId", "tester"), ("priority", "0")])
            .await;
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
        let v: serde_json::Value = resp.json().await.unwrap();
        v["imageId"].as_str().unwrap().to_string()
    }

    /// Sends chunk `n` as the original clients do: a `part` named `"{n}.part"`.
    pub async fn chunk(&self, identifier: &str, n: u32, bytes: Vec<u8>) -> Response {
        send_chunk(&self.client, &self.url(""), identifier, n, bytes).await
    }

    pub async fn merge(&self, identifier: &str, file_name: &str) -> Response {
        send_merge(&self.client, &self.url(""), identifier, file_name).await
    }

    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let resp = self.client.get(self.url(path)).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// The bytes `GET .../images/{id}/action/download` serves (asserting a 200).
    pub async fn download(&self, id: &str) -> Vec<u8> {
        let r = self
            .client
            .get(self.url(&format!("/images/{id}/action/download")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap().to_vec()
    }

    /// Downloads to a file, returning the response headers' status and the file.
    pub async fn download_to(&self, path: &str, dst: &Path) -> reqwest::header::HeaderMap {
        use futures::StreamExt;
        use tokio::io::AsyncWriteExt;
        let resp = self.client.get(self.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let headers = resp.headers().clone();
        let mut out = tokio::fs::File::create(dst).await.unwrap();
        let mut s = resp.bytes_stream();
        while let Some(c) = s.next().await {
            out.write_all(&c.unwrap()).await.unwrap();
        }
        out.flush().await.unwrap();
        headers
    }
}

/// `POST {api}/images` of a file from disk (streamed), file part first, fields after it.
pub async fn send_file(
    client: &Client,
    api: &str,
    path: &Path,
    file_name: &str,
    fields: &[(&str, &str)],
) -> Response {
    let file = tokio::fs::File::open(path).await.unwrap();
    let len = file.metadata().await.unwrap().len();
    let body =
        reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(file, 1 << 20));
    let mut form = multipart::Form::new().part(
        "file",
        multipart::Part::stream_with_length(body, len).file_name(file_name.to_string()),
    );
    for (k, v) in fields {
        form = form.text(k.to_string(), v.to_string());
    }
    client
        .post(format!("{api}/images"))
        .multipart(form)
        .send()
        .await
        .unwrap()
}

/// `POST {api}/images/upload`: chunk `n` of `identifier`, as the original clients send it.
pub async fn send_chunk(
    client: &Client,
    api: &str,
    identifier: &str,
    n: u32,
    bytes: Vec<u8>,
) -> Response {
    let form = multipart::Form::new()
        .text("identifier", identifier.to_string())
        .text("priority", "0")
        .part(
            "part",
            multipart::Part::bytes(bytes).file_name(format!("{n}.part")),
        );
    client
        .post(format!("{api}/images/upload"))
        .multipart(form)
        .send()
        .await
        .unwrap()
}

/// `POST {api}/images/merge` for `identifier`.
pub async fn send_merge(client: &Client, api: &str, identifier: &str, file_name: &str) -> Response {
    let form = multipart::Form::new()
        .text("identifier", identifier.to_string())
        .text("filename", file_name.to_string())
        .text("userId", "tester")
        .text("priority", "0");
    client
        .post(format!("{api}/images/merge"))
        .multipart(form)
        .send()
        .await
        .unwrap()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Asserts an error response: status, JSON `{code, message}`, and the message (when given).
pub async fn assert_error(resp: Response, status: u16, message: Option<&str>) -> serde_json::Value {
    assert_eq!(resp.status().as_u16(), status, "unexpected status");
    assert_eq!(
        resp.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap(),
        "application/json"
    );
    let v: serde_json::Value = resp.json().await.unwrap();
    assert!(v["code"].as_str().is_some_and(|c| !c.is_empty()), "{v}");
    if let Some(m) = message {
        assert_eq!(v["message"], m, "{v}");
    }
    v
}

/// Declares tokio tests that run each named body on every backend (SQLite on RGW too).
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite_local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::SqliteLocal).await
                }
            )*
        }
        mod sqlite_s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::SqliteS3).await
                }
            )*
        }
        mod postgres_local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::PostgresLocal).await
                }
            )*
        }
        mod postgres_s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::PostgresS3).await
                }
            )*
        }
        // On Ceph's RADOS Gateway too (started by scripts/test).
        mod sqlite_rgw {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::SqliteRgw).await
                }
            )*
        }
    };
}

/// Declares tokio tests that run each named body on each S3 server: Garage (`mod garage`) and
/// Ceph's RADOS Gateway (`mod rgw`), both started by scripts/test (by hand:
/// `start_garage; start_postgres; start_rgw` from scripts/lib.sh).
#[macro_export]
macro_rules! s3_server_tests {
    ($($name:ident),* $(,)?) => {
        mod garage {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::SqliteS3).await
                }
            )*
        }
        mod rgw {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::SqliteRgw).await
                }
            )*
        }
    };
}

impl TestApp {
    /// Sends a chunk whose part has the given file name.
    pub async fn chunk_named(&self, identifier: &str, part_name: &str, bytes: Vec<u8>) -> Response {
        let form = multipart::Form::new()
            .text("identifier", identifier.to_string())
            .part(
                "part",
                multipart::Part::bytes(bytes).file_name(part_name.to_string()),
            );
        self.client
            .post(self.url("/images/upload"))
            .multipart(form)
            .send()
            .await
            .unwrap()
    }
}

/// A TCP proxy in front of the S3 server that can fail on demand.
pub struct FaultProxy {
    pub url: String,
    mode: std::sync::Arc<std::sync::atomic::AtomicU8>,
    task: tokio::task::JoinHandle<()>,
}

/// What the proxy does with connections.
#[derive(Clone, Copy)]
pub enum Fault {
    /// Forwards everything.
    Pass = 0,
    /// Drops every new connection at once (the store is unreachable).
    Refuse = 1,
    /// Cuts a connection once a request sends more than 1 MiB (uploads fail half way; small
    /// requests still pass).
    CutLarge = 2,
    /// Swallows everything without closing (the server hangs, as behind a dead route).
    Blackhole = 3,
}

impl FaultProxy {
    pub async fn start(upstream: &str) -> FaultProxy {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let mode = std::sync::Arc::new(std::sync::atomic::AtomicU8::new(0));
        let m = mode.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let mode = m.load(Ordering::SeqCst);
                if mode == Fault::Refuse as u8 {
                    drop(client);
                    continue;
                }
                if mode == Fault::Blackhole as u8 {
                    tokio::spawn(async move {
                        let mut client = client;
                        let mut buf = vec![0u8; 64 * 1024];
                        while matches!(client.read(&mut buf).await, Ok(n) if n > 0) {}
                    });
                    continue;
                }
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                let m2 = m.clone();
                tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        let mut sent = 0usize;
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            sent += n;
                            let mode = m2.load(Ordering::SeqCst);
                            if mode == Fault::Refuse as u8
                                || (mode == Fault::CutLarge as u8 && sent > (1 << 20))
                            {
                                return;
                            }
                            if mode == Fault::Blackhole as u8 {
                                continue;
                            }
                            if sw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    let down = async move {
                        let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    };
                    // Whichever side ends first ends the connection.
                    tokio::select! { _ = up => {}, _ = down => {} }
                });
            }
        });
        FaultProxy { url, mode, task }
    }

    pub fn set(&self, fault: Fault) {
        self.mode
            .store(fault as u8, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The real server binary running as a separate process (a replica), on `port`.
pub struct Replica {
    pub child: std::process::Child,
    pub base: String,
}

impl Replica {
    /// Starts the binary with the app's variables (jobs: 2 workers, 3 s leases) plus `extra`,
    /// and waits until it answers.
    pub async fn start(
        vars: &[(String, String)],
        port: u16,
        log: &Path,
        extra: &[(&str, &str)],
    ) -> Replica {
        use std::process::Stdio;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_file-system"))
            .envs(
                vars.iter()
                    .filter(|(k, _)| k != "FS_LISTEN" && k != "FS_JOB_CONCURRENCY")
                    .cloned(),
            )
            .env("FS_JOB_CONCURRENCY", "2")
            .env("FS_LISTEN", format!("127.0.0.1:{port}"))
            .env("FS_JOB_LEASE_SECS", "3")
            .env("RUST_LOG", "info")
            .envs(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start the server binary");
        let base = format!("http://127.0.0.1:{port}");
        let client = Client::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while client.get(format!("{base}/health")).send().await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "server did not come up"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Replica { child, base }
    }

    pub fn api(&self, path: &str) -> String {
        format!("{}{API}{path}", self.base)
    }

    /// SIGKILL: the process dies at once, holding whatever it held.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends SIGTERM (what Kubernetes sends to stop a pod); `child.wait()` gives the exit.
    pub fn terminate(&self) {
        // SAFETY: kill(2) on our own child's pid, which has not been waited for yet.
        let rc = unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        assert_eq!(rc, 0, "SIGTERM could not be sent");
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
