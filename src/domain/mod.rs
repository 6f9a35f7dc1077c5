//! Domain logic: images, chunked uploads, downloads. Free of HTTP types; talks to the
//! metadata database (`crate::db`) and the object store (`crate::storage`).

pub mod caller;
pub mod download;
pub mod form;
pub mod images;
/// Declared checksums and digests (pure; imageops uses them too).
pub use crate::integrity;
pub mod jobs;
pub mod meter;
pub mod placement;
pub mod quota;
pub mod uploads;
pub mod validate;
pub mod zipin;
pub mod zipout;

use crate::{
    config::{Config, Tier},
    imageops::ImageOps,
    metrics::Metrics,
    storage::{ObjectStore, StorageError},
};
use entity::status::{JobKind, JobState};
use sea_orm::{DatabaseConnection, DbErr};
use std::{io, sync::Arc};
use tokio::sync::Semaphore;

/// Texts the existing clients compare against (SPEC section 2).
pub mod texts {
    pub const NO_FILE: &str = "Upload package file error";
    pub const BAD_UPLOAD_NAME: &str =
        "File shouldn't contains any extension or filename is larger than max size";
    pub const BAD_MERGE_NAME: &str =
        "File should only be image file or filename is larger than max size";
    pub const TOO_LARGE: &str = "File size is larger than max size";
    pub const CHECK_IN_PROGRESS: &str = "Check In Progress";
    pub const SLIM_NOT_FOUND: &str = "file path doesn't exist";
    pub const SLIM_RUNNING: &str = "The image file is being slimmed. No need to slim again.";
    pub const SLIM_DONE: &str =
        "The image file has already been slimmed. No need to slim again. Pls request to check directly";
    pub const SLIM_UNSUPPORTED: &str =
        "This image cannot be slimmed because the type of image is not supported.";
    pub const SLIM_ACCEPTED: &str = "compress in progress";
    pub const CHECK_ACCEPTED: &str = "check in progress";
    pub const CHECK_RUNNING: &str = "The image is being checked. No need to check again.";
}

/// What can go wrong in the domain. The HTTP layer maps each variant to a status code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}", texts::NO_FILE)]
    NoFile,
    #[error("{0}")]
    InvalidFileName(&'static str),
    #[error("{}", texts::TOO_LARGE)]
    TooLarge,
    #[error("{0}")]
    InvalidInput(String),
    #[error("{0}")]
    InvalidZip(String),
    #[error("missing chunks: {}", .0.iter().map(u32::to_string).collect::<Vec<_>>().join(", "))]
    MissingChunks(Vec<u32>),
    /// Bytes that do not match the checksum declared for them.
    #[error("{0}")]
    ChecksumMismatch(String),
    /// Chunks that do not add up to the totals the client declared.
    #[error("{0}")]
    SizeMismatch(String),
    #[error("the request body could not be read: {0}")]
    BadBody(io::Error),
    /// The client stopped sending its body (`FS_BODY_IDLE_TIMEOUT_SECS` without data).
    #[error("the client sent no data for too long; the request was abandoned")]
    BodyTimeout,
    #[error("there is no record in database with imageId: {0}")]
    ImageNotFound(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The caller may not do this: name another user without being an admin, or an admin's
    /// action as a user (403, `FORBIDDEN`).
    #[error("{0}")]
    Forbidden(String),
    /// The bytes or images would take the user past a quota (413, `QUOTA_EXCEEDED`); the
    /// message names the limit.
    #[error("{0}")]
    QuotaExceeded(String),
    /// A slim that cannot be done for this image (its check did not find it usable).
    #[error("{0}")]
    SlimRefused(String),
    #[error("requested range not satisfiable")]
    RangeNotSatisfiable { size: u64 },
    #[error("storage error: {0}")]
    Storage(#[from] StorageError),
    #[error("database error: {0}")]
    Db(#[from] DbErr),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The error as a client may read it (stored in check and compress messages): faults of
    /// the service itself (storage, database, internal) say so without their details, which
    /// are logged where they are handled.
    pub fn public_message(&self) -> String {
        match self {
            Error::Storage(StorageError::Unavailable(_)) => {
                "the object store is unavailable".into()
            }
            Error::Db(_) => "the metadata database is unavailable".into(),
            Error::Storage(_) | Error::Internal(_) => "internal error".into(),
            other => other.to_string(),
        }
    }
}

impl From<caller::NotYours> for Error {
    fn from(e: caller::NotYours) -> Self {
        Error::Forbidden(e.to_string())
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Storage(StorageError::Io(e))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The application's services, shared by all requests (cheap to clone).
#[derive(Clone)]
pub struct Service {
    pub(crate) db: DatabaseConnection,
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) cfg: Arc<Config>,
    pub(crate) imageops: Arc<dyn ImageOps>,
    upload_slots: Arc<Semaphore>,
    pub(crate) metrics: Arc<Metrics>,
    /// Wakes this replica's idle workers when it queued a job (others find it by polling).
    pub(crate) job_wake: Arc<tokio::sync::Notify>,
    /// Directories this process owns (its scratch directory) for as long as it runs.
    _locks: Arc<Vec<crate::dirlock::DirLock>>,
}

impl Service {
    pub fn new(
        db: DatabaseConnection,
        store: Arc<dyn ObjectStore>,
        imageops: Arc<dyn ImageOps>,
        cfg: Arc<Config>,
    ) -> Self {
        let upload_slots = Arc::new(Semaphore::new(cfg.upload_concurrency));
        let metrics = Arc::new(Metrics::new());
        // Every store call of the service is counted and timed, whichever backend it is.
        let store = Arc::new(crate::storage::metered::MeteredStore::new(
            store,
            metrics.clone(),
        ));
        Self {
            db,
            store,
            cfg,
            imageops,
            upload_slots,
            metrics,
            job_wake: Arc::new(tokio::sync::Notify::new()),
            _locks: Arc::new(vec![]),
        }
    }

    /// Keeps `lock` for the service's lifetime.
    pub fn holding(mut self, lock: crate::dirlock::DirLock) -> Self {
        let mut locks: Vec<_> = Arc::try_unwrap(self._locks).unwrap_or_default();
        locks.push(lock);
        self._locks = Arc::new(locks);
        self
    }

    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Every metric in OpenMetrics text format, with the deployment-wide gauges (open uploads,
    /// jobs by kind and state) read fresh from the database and the scratch directory's usage
    /// measured now. When the database cannot be read, those gauges keep their last values and
    /// this replica's own metrics are still served.
    pub async fn metrics_text(&self) -> String {
        match self.read_state_gauges().await {
            Ok((open, jobs)) => self.metrics.set_state(open, &jobs),
            Err(e) => tracing::warn!(error = %e, "metrics: the database could not be read"),
        }
        let scratch = self.cfg.scratch_dir.clone();
        if let Ok(bytes) =
            tokio::task::spawn_blocking(move || crate::metrics::disk_usage(&scratch)).await
        {
            self.metrics.set_scratch_bytes(bytes);
        }
        self.metrics.encode()
    }

    async fn read_state_gauges(&self) -> Result<(u64, Vec<((JobKind, JobState), u64)>)> {
        use sea_orm::Iterable;
        let open = crate::db::uploads::count_open(&self.db).await?;
        let counts = crate::db::jobs::count_by_kind_state(&self.db).await?;
        let mut jobs = vec![];
        // Every kind and state is reported, zero included, so the series never disappear.
        for kind in JobKind::iter() {
            for state in JobState::iter() {
                let n = counts
                    .iter()
                    .find(|((k, s), _)| *k == kind && *s == state)
                    .map_or(0, |(_, n)| *n);
                jobs.push(((kind, state), n));
            }
        }
        Ok((open, jobs))
    }

    /// Bounds how many request bodies are handled at once.
    pub(crate) async fn upload_slot(&self) -> tokio::sync::OwnedSemaphorePermit {
        self.upload_slots
            .clone()
            .acquire_owned()
            .await
            .expect("upload semaphore is never closed")
    }

    /// The tier a `priority` field selects; missing or empty = the default tier (0).
    pub fn tier_for(&self, priority: Option<&str>) -> Result<&Tier> {
        let prio = match priority.map(str::trim) {
            None | Some("") => 0,
            Some(p) => p.parse::<i32>().map_err(|_| self.unknown_priority(p))?,
        };
        self.cfg
            .tiers
            .get(&prio)
            .ok_or_else(|| self.unknown_priority(&prio.to_string()))
    }

    fn unknown_priority(&self, p: &str) -> Error {
        let valid: Vec<String> = self.cfg.tiers.keys().map(i32::to_string).collect();
        Error::InvalidInput(format!(
            "unknown priority {p:?}; valid priorities: {}",
            valid.join(", ")
        ))
    }

    /// Digests of a stored object, in one read (in place when the store keeps it as a file).
    pub(crate) async fn object_digests(
        &self,
        bucket: &str,
        key: &str,
        wanted: integrity::Wanted,
    ) -> Result<integrity::Digests> {
        use futures::StreamExt;
        if let Some(path) = self.store.local_path(bucket, key) {
            return tokio::task::spawn_blocking(move || integrity::digest_file(&path, wanted))
                .await
                .map_err(|e| Error::Internal(e.to_string()))?
                .map_err(Error::from);
        }
        let meter = meter::Meter::hashing(wanted);
        let mut body = meter.wrap(self.store.get(bucket, key, None).await?, u64::MAX);
        while let Some(chunk) = body.next().await {
            chunk?;
        }
        Ok(meter.digests())
    }

    /// A fresh temp file in the scratch directory, removed when dropped.
    pub(crate) async fn scratch_file(&self) -> Result<(tokio::fs::File, tempfile::TempPath)> {
        self.scratch_file_with("").await
    }

    /// Like `scratch_file`, with a name ending in `suffix`.
    pub(crate) async fn scratch_file_with(
        &self,
        suffix: &str,
    ) -> Result<(tokio::fs::File, tempfile::TempPath)> {
        let dir = self.cfg.scratch_dir.clone();
        let suffix = suffix.to_string();
        let tmp = tokio::task::spawn_blocking(move || {
            tempfile::Builder::new().suffix(&suffix).tempfile_in(dir)
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
        let (file, path) = tmp.into_parts();
        Ok((tokio::fs::File::from_std(file), path))
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}
