//! The job runner: every replica runs a few workers that claim due jobs from the database
//! (see `db::jobs`), keep their lease alive while they work (writing the job's progress to its
//! row), retry failures with backoff, treat a panic as a failed attempt and hand their jobs
//! back on shutdown. A worker that dies just stops renewing its lease; another picks the job
//! up after it runs out. What a job does is its kind's [`Job`] (`jobs.rs`: check and slim).

use super::{now_secs, Error, Result, Service};
use crate::db;
use async_trait::async_trait;
use entity::{
    job,
    status::{JobKind, JobState},
};
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio_util::sync::CancellationToken;

/// A kind of job: only its work. Leases, renewal, backoff, cancellation, shutdown and panics
/// are the runner's.
#[async_trait]
pub(super) trait Job: Send + Sync {
    /// Does the job on the image `image_id`, setting `progress` as it goes.
    async fn run(&self, svc: &Service, image_id: &str, progress: &JobProgress) -> Result<Step>;

    /// Records on the image that the job failed for good with `error` (after its last
    /// attempt).
    async fn give_up(&self, svc: &Service, image_id: &str, error: &Error) -> Result<()>;

    /// Shows the job's progress (0.0..=1.0, as just written to its row) on the image, where
    /// clients see it; nothing by default. Called by the runner at most every
    /// [`PROGRESS_EVERY`], only when the progress changed.
    async fn show_progress(&self, _svc: &Service, _image_id: &str, _fraction: f64) {}
}

/// The job that runs rows of `kind`.
fn job_of(kind: JobKind) -> &'static dyn Job {
    match kind {
        JobKind::Check => &super::jobs::CheckJob,
        JobKind::Slim => &super::jobs::SlimJob,
    }
}

/// Attempts a job gets before it fails for good (but for an outage: [`Service::tries_again`]);
/// between them it waits 2^attempt seconds, at most `FS_JOB_RETRY_MAX_SECS`.
const MAX_ATTEMPTS: i32 = 5;
/// How often a running job's progress is written to its row (when it changed).
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// How often an idle worker looks for due jobs (besides being woken when one is queued).
const IDLE_POLL: Duration = Duration::from_millis(500);

/// How a job run ended.
pub(super) enum Step {
    Done,
    /// Not yet possible (a slim waits for the check): run again after this many seconds.
    WaitSecs(i64),
}

/// How far a running job got, 0.0..=1.0, shared between the job and its lease renewals, which
/// write it to the job's row (`jobs.progress`).
#[derive(Clone, Default)]
pub(super) struct JobProgress(Arc<AtomicU64>);

impl JobProgress {
    pub(super) fn set(&self, fraction: f64) {
        self.0
            .store(fraction.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
    }

    fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

impl Service {
    /// Runs `FS_JOB_CONCURRENCY` workers until `token` is cancelled, then hands back the jobs
    /// they held so another replica (or the next start) takes them at once.
    pub async fn run_workers(self, token: CancellationToken) {
        // Who holds a lease is visible in the database: host (the pod's name), process, run.
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "file-system".into());
        let run = uuid::Uuid::new_v4().simple().to_string();
        let owner = format!("{host}/{}/{}", std::process::id(), &run[..12]);
        let mut set = tokio::task::JoinSet::new();
        for i in 0..self.cfg.job_concurrency {
            let (svc, token, owner) = (self.clone(), token.clone(), format!("{owner}-{i}"));
            set.spawn(async move { svc.worker(owner, token).await });
        }
        while set.join_next().await.is_some() {}
        match db::jobs::release_owner_prefix(&self.db, &owner, now_secs()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "released jobs on shutdown"),
            Err(e) => tracing::warn!(error = %e, "could not release jobs on shutdown"),
        }
    }

    async fn worker(&self, owner: String, token: CancellationToken) {
        let lease = self.cfg.job_lease_secs as i64;
        loop {
            if token.is_cancelled() {
                return;
            }
            let claimed = match db::jobs::claim(&self.db, &owner, now_secs(), lease).await {
                Ok(j) => j,
                Err(e) => {
                    tracing::warn!(error = %e, "claiming a job failed");
                    None
                }
            };
            let Some(job) = claimed else {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = self.job_wake.notified() => continue,
                    _ = tokio::time::sleep(IDLE_POLL) => continue,
                }
            };
            let started = std::time::Instant::now();
            tracing::info!(job.id = %job.id, job.kind = %job.kind, image.id = %job.image_id, attempt = job.attempts, "job started");
            // The job runs while its lease is renewed; losing the lease (the job was cancelled,
            // or taken over) or shutting down stops it.
            let progress = JobProgress::default();
            let outcome = tokio::select! {
                r = isolated(self.run_job(&job, &progress)) => Some(r),
                _ = self.keep_lease(&job, &owner, progress.clone()) => None,
                _ = token.cancelled() => None,
            };
            self.record_outcome(&job, &owner, outcome, started).await;
        }
    }

    /// Records how a job run ended: done, deferred, retried with backoff (until
    /// `MAX_ATTEMPTS`) or failed for good; `None` (interrupted: lease lost or shutting down)
    /// leaves the row to whoever holds it next.
    async fn record_outcome(
        &self,
        job: &job::Model,
        owner: &str,
        outcome: Option<Result<Step>>,
        started: std::time::Instant,
    ) {
        let now = now_secs();
        let label = match &outcome {
            None => "interrupted",
            Some(Ok(Step::Done)) => "done",
            Some(Ok(Step::WaitSecs(_))) => "deferred",
            Some(Err(e)) if self.tries_again(job, e, now) => "retry",
            Some(Err(_)) => "failed",
        };
        self.metrics.job_done(job.kind, label, started.elapsed());
        let logged = match outcome {
            None => Ok(()),
            Some(Ok(Step::Done)) => {
                db::jobs::finish(&self.db, &job.id, owner, JobState::Done, None, now)
                    .await
                    .map(|_| ())
            }
            Some(Ok(Step::WaitSecs(secs))) => {
                db::jobs::defer(&self.db, &job.id, owner, now + secs, now).await
            }
            Some(Err(e)) if self.tries_again(job, &e, now) => {
                let most = i64::try_from(self.cfg.job_retry_max_secs).unwrap_or(i64::MAX);
                let backoff = 2i64.pow(job.attempts.clamp(0, 20) as u32).min(most);
                tracing::warn!(job.id = %job.id, error = %e, attempt = job.attempts, retry_in_secs = backoff, "job failed; will retry");
                db::jobs::retry_at(&self.db, &job.id, owner, now + backoff, &e.to_string(), now)
                    .await
            }
            Some(Err(e)) => {
                tracing::error!(job.id = %job.id, error = %e, "job failed for good");
                if let Err(recording) = job_of(job.kind).give_up(self, &job.image_id, &e).await {
                    tracing::warn!(error = %recording, "could not record a failed job on its image");
                }
                db::jobs::finish(
                    &self.db,
                    &job.id,
                    owner,
                    JobState::Failed,
                    Some(&e.to_string()),
                    now,
                )
                .await
                .map(|_| ())
            }
        };
        if let Err(e) = logged {
            tracing::warn!(job.id = %job.id, error = %e, "recording a job outcome failed");
        }
        tracing::info!(job.id = %job.id, duration_ms = started.elapsed().as_millis() as u64, "job ended");
    }

    /// Whether a job that failed with `e` (at `now`, unix seconds) gets another attempt: any
    /// failure within its first [`MAX_ATTEMPTS`]; after them, an outage of the store or the
    /// database ([`Error::is_outage`]) until the job is `FS_JOB_OUTAGE_SECS` old. An outage
    /// says nothing about the image: making it the image's verdict (check status 3, a failed
    /// slim) would leave the image so after the store is back.
    fn tries_again(&self, job: &job::Model, e: &Error, now: i64) -> bool {
        let patience = i64::try_from(self.cfg.job_outage_secs).unwrap_or(i64::MAX);
        job.attempts < MAX_ATTEMPTS
            || (e.is_outage() && now.saturating_sub(job.created_at) < patience)
    }

    /// Deletes finished jobs older than `FS_JOB_RETENTION_SECS`, so the queue stays small.
    pub async fn prune_finished_jobs(&self) -> Result<u64> {
        let before = now_secs().saturating_sub(self.cfg.job_retention_secs as i64);
        Ok(db::jobs::prune_finished(&self.db, before).await?)
    }

    /// Renews the lease until it is lost; returns then. Between renewals, writes the job's
    /// progress to its row when it changed (at most every [`PROGRESS_EVERY`]), and its kind
    /// shows it on the image ([`Job::show_progress`]: a slim's `compressRate`). The renewals
    /// run on a task of their own: a job that streams bytes already read ahead rarely yields,
    /// and renewals polled in its task were starved past the lease (the job was then taken
    /// over again and again).
    async fn keep_lease(&self, job: &job::Model, owner: &str, progress: JobProgress) {
        let lease = self.cfg.job_lease_secs as i64;
        let renew_every = Duration::from_secs((lease as u64 / 3).max(1));
        let (svc, job, owner) = (self.clone(), job.clone(), owner.to_string());
        let renewals = tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROGRESS_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let (mut renewed, mut shown) = (tokio::time::Instant::now(), 0.0);
            loop {
                tick.tick().await;
                let done = progress.get();
                let renew = renewed.elapsed() >= renew_every;
                if done == shown && !renew {
                    continue;
                }
                let now = now_secs();
                let until = match renew {
                    true => Some(now + lease),
                    false => None,
                };
                match db::jobs::heartbeat(&svc.db, &job.id, &owner, until, done, now).await {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(e) => {
                        tracing::warn!(job.id = %job.id, error = %e, "renewing a lease failed");
                        continue;
                    }
                }
                if renew {
                    renewed = tokio::time::Instant::now();
                }
                if done != shown {
                    shown = done;
                    job_of(job.kind)
                        .show_progress(&svc, &job.image_id, done)
                        .await;
                }
            }
        });
        let _ = tokio_util::task::AbortOnDropHandle::new(renewals).await;
    }

    /// Runs `job` as its kind's [`Job`].
    async fn run_job(&self, job: &job::Model, progress: &JobProgress) -> Result<Step> {
        job_of(job.kind).run(self, &job.image_id, progress).await
    }
}

/// Runs a job so that a panic in it is a failed attempt (retried with backoff, then recorded
/// on the image) instead of the end of its worker.
async fn isolated<F: std::future::Future<Output = Result<Step>>>(job: F) -> Result<Step> {
    use futures::FutureExt;
    match std::panic::AssertUnwindSafe(job).catch_unwind().await {
        Ok(r) => r,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(panic = %what, "a job panicked");
            Err(Error::Internal(format!("the job panicked: {what}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_job_is_a_failed_attempt() {
        let r = isolated(async { panic!("boom") }).await;
        assert!(matches!(r, Err(Error::Internal(m)) if m.contains("boom")));
        let r = isolated(async { Ok(Step::WaitSecs(3)) }).await;
        assert!(matches!(r, Ok(Step::WaitSecs(3))));
    }
}
