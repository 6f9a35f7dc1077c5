//! Domain logic: images, chunked uploads, downloads. Free of HTTP types; talks to the
//! metadata database (`crate::db`) and the object store (`crate::storage`).

pub mod caller;
pub mod download;
mod error;
pub mod form;
pub mod ids;
pub mod images;
/// Declared checksums and digests (pure; imageops uses them too).
pub use crate::integrity;
pub mod jobs;
pub mod merge;
pub mod meter;
mod objects;
pub mod placement;
pub mod quota;
mod retire;
mod runner;
pub mod upload;
pub mod uploads;
pub mod validate;
pub mod zipin;
pub mod zipout;

pub use error::{Answer, Code, Error, Result};

use crate::{
    config::{Config, Tier},
    imageops::ImageOps,
    metrics::Metrics,
    storage::{ObjectStore, StorageError},
};
use entity::status::{JobKind, JobState};
use sea_orm::DatabaseConnection;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// How long readiness waits for the database and for the store (seconds): below the 5 s a
/// Kubernetes probe of the chart waits for the answer.
pub const READINESS_WITHIN: std::time::Duration = std::time::Duration::from_secs(3);

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
    /// The tasks that end downloads' holds on their objects ([`retire`]), awaited at
    /// shutdown so that a replica that stops gracefully leaves no hold behind.
    pub(crate) hold_ends: tokio_util::task::TaskTracker,
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
            hold_ends: tokio_util::task::TaskTracker::new(),
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

    /// Whether this replica can serve: the metadata database answers `SELECT 1` and the
    /// default tier's bucket answers, each within [`READINESS_WITHIN`] (checked at once, so the
    /// answer comes within it: the chart's probe gives up after 5 s). Errors:
    /// [`Error::DatabaseUnreachable`], [`Error::StoreUnreachable`] (one that stays silent
    /// counts as unreachable).
    pub async fn readiness(&self) -> Result<()> {
        use sea_orm::ConnectionTrait;
        let silent = || format!("no answer within {} s", READINESS_WITHIN.as_secs());
        let database = async {
            match tokio::time::timeout(READINESS_WITHIN, self.db.execute_unprepared("SELECT 1"))
                .await
            {
                Ok(done) => done.map(|_| ()).map_err(Error::DatabaseUnreachable),
                Err(_) => Err(Error::DatabaseUnreachable(sea_orm::DbErr::Custom(silent()))),
            }
        };
        let store = async {
            let ping = self.store.ping(&self.cfg.tiers[&0].bucket);
            match tokio::time::timeout(READINESS_WITHIN, ping).await {
                Ok(done) => done.map_err(Error::StoreUnreachable),
                Err(_) => Err(Error::StoreUnreachable(StorageError::Unavailable(silent()))),
            }
        };
        // Both at once: the answer comes within the bound even when both are silent.
        let (database, store) = tokio::join!(database, store);
        database.and(store)
    }

    /// Every metric in OpenMetrics text format, with the deployment-wide gauges (open uploads,
    /// jobs by kind and state) read fresh from the database and the scratch directory's usage
    /// measured now. When the database cannot be read, those gauges keep their last values and
    /// this replica's own metrics are still served; so too when it does not answer within
    /// [`READINESS_WITHIN`] (a scrape is not held by a database behind a dead route).
    pub async fn metrics_text(&self) -> String {
        match tokio::time::timeout(READINESS_WITHIN, self.read_state_gauges()).await {
            Ok(Ok((open, jobs))) => self.metrics.set_state(open, &jobs),
            Ok(Err(e)) => tracing::warn!(error = %e, "metrics: the database could not be read"),
            Err(_) => tracing::warn!("metrics: the database did not answer in time"),
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

    /// Bounds how many request bodies are handled at once: a slot, or [`Error::Busy`] once
    /// none came free within `FS_UPLOAD_QUEUE_TIMEOUT_SECS` (a client is told to come back
    /// instead of waiting behind slow uploads for as long as they last).
    pub(crate) async fn upload_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit> {
        let wait = std::time::Duration::from_secs(self.cfg.upload_queue_timeout_secs);
        let slot = self.upload_slots.clone().acquire_owned();
        match tokio::time::timeout(wait, slot).await {
            Ok(permit) => Ok(permit.expect("upload semaphore is never closed")),
            Err(_) => {
                tracing::warn!(
                    slots = self.cfg.upload_concurrency,
                    "every upload slot stayed taken: answered 503"
                );
                Err(Error::Busy)
            }
        }
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
            "unknown priority {:?}; valid priorities: {}",
            error::echoed(p),
            valid.join(", ")
        ))
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Keeps a row's lease of `lease_secs` seconds alive while the returned handle lives: every
/// third of it, `renew(now, expires_at)` (Unix seconds) extends it. Renewal stops when `renew`
/// finds the lease gone (`Ok(false)`: it expired, so it may no longer hold what it held);
/// errors are logged with `what` and retried at the next turn.
pub(crate) fn keep_renewed<F, Fut>(
    lease_secs: i64,
    what: &'static str,
    renew: F,
) -> tokio_util::task::AbortOnDropHandle<()>
where
    F: Fn(i64, i64) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = std::result::Result<bool, sea_orm::DbErr>> + Send,
{
    let every = std::time::Duration::from_secs(lease_secs.max(3) as u64 / 3);
    tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let now = now_secs();
            match renew(now, now + lease_secs).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => tracing::warn!(error = %e, "could not renew {what}"),
            }
        }
    }))
}

/// The `wanted` digests of a stream's bytes, read to its end (those only: no CRC-32, which
/// cost a check of an S3 object about 7 % of the service's CPU when it was computed here too).
pub(crate) async fn stream_digests(
    mut body: crate::storage::ByteStream,
    wanted: integrity::Wanted,
) -> Result<integrity::Digests> {
    use futures::StreamExt;
    let mut hasher = integrity::Hasher::new(wanted);
    while let Some(chunk) = body.next().await {
        hasher.update_bytes(chunk?);
    }
    Ok(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::keep_renewed;
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };
    use std::time::{Duration, Instant};

    /// Waits (at most 10 s) until `calls` reaches `n`.
    async fn until_calls(calls: &AtomicUsize, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while calls.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline,
                "renewed {calls:?} times, not {n}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A lease is renewed while its handle lives, to `now + lease`, past errors (retried at
    /// the next turn), and no more once the handle is dropped.
    #[tokio::test]
    async fn a_lease_is_renewed_past_errors_until_dropped() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let handle = keep_renewed(3, "a test lease", move |now, expires_at| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move {
                assert_eq!(expires_at - now, 3);
                if n == 0 {
                    Err(sea_orm::DbErr::Custom("the database is away".into()))
                } else {
                    Ok(true)
                }
            }
        });
        until_calls(&calls, 3).await;
        drop(handle);
        let after = calls.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            after,
            "renewed after its drop"
        );
    }

    /// A lease found gone (expired) is not renewed again: it may no longer hold anything.
    #[tokio::test]
    async fn a_lease_found_gone_is_not_renewed_again() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let handle = keep_renewed(3, "a test lease", move |_, _| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Ok(false) }
        });
        until_calls(&calls, 1).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !handle.is_finished() {
            assert!(Instant::now() < deadline, "the renewal went on");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
