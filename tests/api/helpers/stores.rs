//! S3 servers the tests reach (started by scripts/lib.sh), byte streams for store-level tests,
//! and a TCP proxy that fails on demand.

use super::S3Server;
use bytes::Bytes;
use file_system::storage::{ByteStream, MultipartUpload, ObjectRef, Part, SpooledPart};
use futures::StreamExt;

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

/// `data` as a store body, in 10,000-byte pieces.
pub fn stream_of(data: Vec<u8>) -> ByteStream {
    let chunks: Vec<std::io::Result<Bytes>> = data
        .chunks(10_000)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures::stream::iter(chunks).boxed()
}

/// A store body read to its end (a failed read fails the test).
pub async fn read_all(s: ByteStream) -> Vec<u8> {
    s.map(|c| c.unwrap().to_vec())
        .collect::<Vec<_>>()
        .await
        .concat()
}

/// The multipart upload `upload_id` of `bucket`/`key`.
pub fn upload_of<'a>(bucket: &'a str, key: &'a str, upload_id: &'a str) -> MultipartUpload<'a> {
    MultipartUpload {
        bucket,
        key,
        upload_id,
    }
}

/// The object `key` of `bucket`.
pub fn obj<'a>(bucket: &'a str, key: &'a str) -> ObjectRef<'a> {
    ObjectRef { bucket, key }
}

/// Part `number` with `body`, sent to the upload now when `direct`.
pub fn part(number: u32, body: SpooledPart, direct: bool) -> Part {
    Part {
        number,
        body,
        direct,
    }
}

/// `data` spooled to a file in `dir`, as a part body.
pub fn spooled(dir: &std::path::Path, data: &[u8]) -> SpooledPart {
    let mut f = tempfile::NamedTempFile::new_in(dir).unwrap();
    std::io::Write::write_all(&mut f, data).unwrap();
    SpooledPart {
        file: f.into_temp_path(),
        len: data.len() as u64,
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
