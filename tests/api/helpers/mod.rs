//! Test harness: a real server on 127.0.0.1:0 per test, its own database and store, driven by a
//! real HTTP client. Test bodies take a `Backend` so the same body runs on every combination.
//! Split by concern: `app.rs` (the server under test and its client calls), `stores.rs` (S3
//! servers, store-level byte streams, a faulty proxy), `http.rs` (requests as the original
//! clients send them, error answers), `leftovers.rs` (what a test may not leave behind),
//! `replica.rs` (the real binary as a separate process).

mod app;
mod http;
mod leftovers;
mod replica;
mod stores;

pub use app::TestApp;
pub use http::{assert_error, ok_text, send_chunk, send_file, send_merge, wait_check_done};
pub use replica::Replica;
pub use stores::{
    obj, part, read_all, s3_client_of, s3_env, s3_env_of, s3_settings_of, spooled, stream_of,
    upload_of, Fault, FaultProxy,
};

pub use crate::common::{
    files::{assert_same_qcow2, make_qcow2, pattern, python_zip, run, sha256, sha256_file},
    free_port,
};
use std::path::{Path, PathBuf};

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
