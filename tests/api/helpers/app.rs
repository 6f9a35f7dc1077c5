//! The server under test: started on port 0 with its own database and store, and the calls
//! tests make on it.

use super::{s3_client_of, s3_env_of, send_chunk, send_file, send_merge, Backend, Options, API};
use file_system::config::Config;
use reqwest::{multipart, Client, Response};
use std::path::{Path, PathBuf};
use tokio::sync::oneshot;

/// The S3 side of a test on an S3 backend: a client, the test's key prefix and its buckets.
pub(super) struct S3View {
    pub(super) client: aws_sdk_s3::Client,
    pub(super) prefix: String,
    pub(super) buckets: Vec<String>,
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
    pub(super) s3: Option<S3View>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    /// The configuration, database and store view of `backend` with default options, and no
    /// server: the test runs the real binary ([`super::Replica`]) on them.
    pub async fn config_only(backend: Backend) -> TestApp {
        let opts = Options {
            no_server: true,
            ..Default::default()
        };
        TestApp::spawn(backend, opts).await
    }

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
        let s3 = store_vars(backend, &opts, root, &mut vars).await;
        option_vars(&opts, &mut vars);
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

    /// `POST /images/{id}/action/slim`.
    pub async fn slim(&self, id: &str) -> Response {
        self.client
            .post(self.url(&format!("/images/{id}/action/slim")))
            .send()
            .await
            .unwrap()
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

    /// `DELETE .../images/{id}` with the app's client.
    pub async fn delete_image(&self, id: &str) -> reqwest::Response {
        self.client
            .delete(self.url(&format!("/images/{id}")))
            .send()
            .await
            .unwrap()
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

impl TestApp {
    /// Sends a chunk whose part has the given file name.
    pub async fn chunk_named(&self, identifier: &str, part_name: &str, bytes: Vec<u8>) -> Response {
        let form = multipart::Form::new()
            .text("identifier", identifier.to_string())
            .part(
                "part",
                multipart::Part::bytes(bytes).file_name(part_name.to_string()),
            );
        self.post_form("/images/upload", form).await
    }

    /// Posts a multipart `form` to `path` (under the API root).
    pub async fn post_form(&self, path: &str, form: multipart::Form) -> Response {
        self.client
            .post(self.url(path))
            .multipart(form)
            .send()
            .await
            .unwrap()
    }
}

/// The store's variables of `backend` (pushed to `vars`): a directory under `root` for the
/// local store; for S3 the server's endpoint and a fresh key prefix, whose view it gives.
async fn store_vars(
    backend: Backend,
    opts: &Options,
    root: &Path,
    vars: &mut Vec<(String, String)>,
) -> Option<S3View> {
    match backend {
        Backend::SqliteLocal | Backend::PostgresLocal => {
            vars.push(("FS_STORAGE".into(), "local".into()));
            vars.push((
                "FS_LOCAL_DIR".into(),
                root.join("objects").display().to_string(),
            ));
            None
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
            let tiers = file_system::config::parse_tiers(opts.tiers.unwrap_or("0=images")).unwrap();
            Some(S3View {
                client: s3_client_of(server).await,
                prefix,
                buckets: tiers.values().map(|t| t.bucket.clone()).collect(),
            })
        }
    }
}

/// The variables of the options that set one (pushed to `vars`).
fn option_vars(opts: &Options, vars: &mut Vec<(String, String)>) {
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
}
