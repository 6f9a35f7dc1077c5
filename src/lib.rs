//! file-system: an S3-style store for virtual-machine images, compatible with the EdgeGallery
//! file-system REST API.
//!
//! Layers: `routes` (HTTP) -> `domain` -> (`db`, `storage`). See `docs/ARCHITECTURE.md`.

pub mod auth;
mod awslc_md5;
pub mod cleanup;
pub mod config;
pub mod db;
pub mod dirlock;
pub mod domain;
pub mod imageops;
pub mod integrity;
pub mod metrics;
pub mod preflight;
pub mod routes;
pub mod storage;
pub mod telemetry;

use anyhow::Context;
use config::{Config, StorageKind};
use domain::Service;
use std::{future::Future, sync::Arc, time::Duration};
use storage::{LocalStore, ObjectRef, ObjectStore, S3Store};
use tokio_util::sync::CancellationToken;

/// Connects the database (migrating it), opens the store and prepares every tier's bucket.
pub async fn build(cfg: Config) -> anyhow::Result<Service> {
    // The directories first: a second process started on them by mistake stops here, before
    // it touches the database or anything in them.
    tokio::fs::create_dir_all(&cfg.scratch_dir)
        .await
        .with_context(|| {
            format!(
                "cannot create scratch directory {}",
                cfg.scratch_dir.display()
            )
        })?;
    let scratch_lock =
        dirlock::lock(&cfg.scratch_dir, "scratch directory").map_err(|e| anyhow::anyhow!("{e}"))?;
    let local = match cfg.storage {
        StorageKind::Local => Some(
            LocalStore::open(&cfg.local_dir)
                .await
                .map_err(|e| anyhow::anyhow!("cannot open the local store: {e}"))?,
        ),
        StorageKind::S3 => None,
    };
    let wait = Duration::from_secs(cfg.startup_wait_secs);
    let db = waiting_for(
        "the database",
        wait,
        || db::connect(&cfg.database_url),
        db::describe,
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot connect to the database: {}", db::describe(&e)))?;
    db::migrate(&db)
        .await
        .context("database migration failed")?;
    clear_scratch(&cfg.scratch_dir).await;
    let store: Arc<dyn ObjectStore> = match local {
        Some(local) => Arc::new(local),
        // Staged chunks are joined into parts in the scratch directory.
        None => Arc::new(
            S3Store::new(storage::S3Settings {
                spool_dir: cfg.scratch_dir.clone(),
                ..cfg.s3.clone()
            })
            .await
            .context("cannot set up the S3 client")?,
        ),
    };
    for tier in cfg.tiers.values() {
        let bucket = || store.ensure_bucket(&tier.bucket);
        waiting_for("the store", wait, bucket, ToString::to_string)
            .await
            .with_context(|| {
                format!(
                    "bucket {} (priority {}) can neither be found nor created",
                    tier.bucket, tier.priority
                )
            })?;
        if let Some(class) = &tier.storage_class {
            let probe = || probe_storage_class(store.as_ref(), &tier.bucket, class);
            waiting_for("the store", wait, probe, ToString::to_string)
                .await
                .with_context(|| {
                    format!(
                        "the store refuses storage class {class} of tier {} (FS_TIERS): \
                         name one it offers, or none",
                        tier.priority
                    )
                })?;
        }
    }
    let check_t = Duration::from_secs(cfg.check_timeout_secs);
    let slim_t = Duration::from_secs(cfg.slim_timeout_secs);
    let imageops: Arc<dyn imageops::ImageOps> = match &cfg.imageops_url {
        None => Arc::new(imageops::local::LocalImageOps::new(check_t, slim_t)),
        Some(url) => {
            // The sidecar sees the scratch directory under the same names.
            let shared = std::fs::canonicalize(&cfg.scratch_dir).context("scratch directory")?;
            tracing::info!(url, "image checks and slims go to a remote imageops");
            Arc::new(imageops::remote::RemoteImageOps::new(
                url, shared, check_t, slim_t,
            ))
        }
    };
    Ok(Service::new(db, store, imageops, Arc::new(cfg)).holding(scratch_lock))
}

/// Runs `attempt` until it succeeds or `wait` (`FS_STARTUP_WAIT_SECS`) is spent, pausing
/// 1 s, then twice as long each time up to 10 s, between attempts, and logging each failure
/// (as `describe` words it, without secrets) with the time left. With a zero `wait`, the first
/// failure is the answer. Any failure is tried again: a database or store that starts beside
/// the service may refuse connections, or credentials, until it is set up.
async fn waiting_for<T, E, F, Fut>(
    what: &str,
    wait: Duration,
    mut attempt: F,
    describe: impl Fn(&E) -> String,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + wait;
    let mut pause = Duration::from_secs(1);
    loop {
        let e = match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(e);
        }
        let pause_now = pause.min(left);
        tracing::warn!(
            error = describe(&e),
            retry_in_ms = pause_now.as_millis() as u64,
            wait_left_secs = left.as_secs(),
            "{what} cannot be reached yet; waiting for it (FS_STARTUP_WAIT_SECS)"
        );
        tokio::time::sleep(pause_now).await;
        pause = (pause * 2).min(Duration::from_secs(10));
    }
}

/// Writes and removes an empty object of storage class `class` in `bucket`, so that a class the
/// store does not offer stops the start instead of failing every upload to its tier (AWS
/// answers `InvalidStorageClass`, Ceph's RGW `InvalidArgument` for a class its zone placement
/// lacks; Garage and the local store take any class).
async fn probe_storage_class(
    store: &dyn ObjectStore,
    bucket: &str,
    class: &str,
) -> storage::Result<()> {
    // Under staging/, which the lifecycle rules expire should the delete not happen.
    let key = format!(
        "staging/storage-class-probe-{}",
        uuid::Uuid::new_v4().simple()
    );
    let opts = storage::PutOptions {
        storage_class: Some(class.to_string()),
    };
    let empty: storage::ByteStream = Box::pin(futures::stream::empty());
    store
        .put(ObjectRef { bucket, key: &key }, empty, &opts)
        .await?;
    store.delete(bucket, &key).await?;
    Ok(())
}

/// Serves the API on `listener` until `shutdown` resolves, then lets requests in flight finish
/// and stops background work, all within the configured grace period: a database or store
/// that does not answer cannot hold the process past it (the leases it could not release
/// lapse, and another replica takes that work over).
pub async fn serve(
    listener: tokio::net::TcpListener,
    svc: Service,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let token = CancellationToken::new();
    // The tokens file and key were checked with the settings; read them for good now.
    let authenticator = auth::Authenticator::new(&svc.config().auth)
        .map_err(|e| anyhow::anyhow!("authentication: {e}"))?
        .map(Arc::new);
    let mut background = vec![
        tokio::spawn(sweep_loop(svc.clone(), token.clone())),
        tokio::spawn(recovery_loop(svc.clone(), token.clone())),
        tokio::spawn(svc.clone().run_workers(token.clone())),
    ];
    if let Some(a) = &authenticator {
        background.push(tokio::spawn(a.clone().watch_tokens(token.clone())));
    }
    let grace = Duration::from_secs(svc.config().shutdown_grace_secs);
    let header_timeout = Duration::from_secs(svc.config().header_timeout_secs);
    let holds = svc.clone();
    let app = routes::router(svc, authenticator);
    let stop = token.clone();
    let server = tokio::spawn(routes::serve::serve(
        listener,
        app,
        header_timeout,
        async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections, finishing requests in flight");
            stop.cancel();
        },
    ));
    token.cancelled().await;
    let deadline = tokio::time::Instant::now() + grace;
    if tokio::time::timeout_at(deadline, server).await.is_err() {
        tracing::warn!(
            grace_secs = grace.as_secs(),
            "requests still running after the grace period; stopping"
        );
    }
    // Downloads that ended let go of their objects before the process goes.
    let background = futures::future::join(
        futures::future::join_all(background),
        holds.end_read_holds(),
    );
    if tokio::time::timeout_at(deadline, background).await.is_err() {
        tracing::warn!(
            grace_secs = grace.as_secs(),
            "background work still running after the grace period; stopping (its leases lapse \
             and another replica takes it over)"
        );
    }
    Ok(())
}

/// Takes over merges whose process died, at start-up and then every few seconds.
async fn recovery_loop(svc: Service, token: CancellationToken) {
    loop {
        match svc.recover_merges().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(merges = n, "took over interrupted merges"),
            Err(e) => tracing::warn!(error = %e, "recovering interrupted merges failed"),
        }
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(domain::merge::MERGE_RENEW) => {}
        }
    }
}

/// Empties the scratch directory: what a previous run of this replica left there (killed in
/// the middle of a job or an upload) belongs to nobody now. The directory is private to a
/// replica (an emptyDir in Kubernetes).
async fn clear_scratch(dir: &std::path::Path) {
    let Ok(mut rd) = tokio::fs::read_dir(dir).await else {
        return;
    };
    let mut removed = 0;
    while let Ok(Some(e)) = rd.next_entry().await {
        let ok = match e.file_type().await {
            Ok(t) if t.is_dir() => tokio::fs::remove_dir_all(e.path()).await.is_ok(),
            _ => tokio::fs::remove_file(e.path()).await.is_ok(),
        };
        removed += ok as usize;
    }
    if removed > 0 {
        tracing::info!(files = removed, dir = %dir.display(), "removed leftovers of a previous run from scratch");
    }
}

/// Logs one sweep of [`sweep_loop`]: how many `what` it removed (nothing when none), or why
/// it failed.
fn sweep_logged<N, E>(result: Result<N, E>, what: &str)
where
    N: std::fmt::Display + Default + PartialEq,
    E: std::fmt::Display,
{
    match result {
        Ok(removed) if removed == N::default() => {}
        Ok(removed) => tracing::info!(%removed, "swept {what}"),
        Err(e) => tracing::warn!(error = %e, "sweeping {what} failed"),
    }
}

/// How long a multipart upload no session records must have gone without a new part before
/// the sweep takes it for a dead process's: `FS_UPLOAD_TTL_SECS`, and never less than a write
/// in progress can take to fill a part (S3: `FS_S3_PART_BYTES`) at the slowest rate a body may
/// arrive (`FS_BODY_MIN_BYTES_PER_SEC` over windows of `FS_BODY_IDLE_TIMEOUT_SECS`), twice
/// over; a day when no rate is enforced. Another replica's slow upload is so never taken.
fn orphan_idle(cfg: &Config) -> Duration {
    let part = cfg.s3.part_bytes.max(cfg.s3.min_part_bytes);
    let live = match cfg.body_min_bytes_per_sec {
        0 => 86_400,
        rate => 2 * (part / rate + cfg.body_idle_timeout_secs),
    };
    Duration::from_secs(cfg.upload_ttl_secs.max(live))
}

/// Periodically expires abandoned chunked uploads and deletes old finished jobs.
async fn sweep_loop(svc: Service, token: CancellationToken) {
    let every = Duration::from_secs((svc.config().upload_ttl_secs / 4).clamp(1, 300));
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        // A write is idle at most FS_BODY_IDLE_TIMEOUT_SECS before it fails; twice that, and
        // at least an hour, is safely dead.
        let idle = Duration::from_secs((svc.config().body_idle_timeout_secs * 2).max(3600));
        sweep_logged(
            svc.store().sweep_stale_temp(idle).await,
            "temporary files of writes that died",
        );
        sweep_logged(svc.sweep_abandoned_uploads().await, "abandoned uploads");
        sweep_logged(
            svc.sweep_orphan_uploads(orphan_idle(svc.config())).await,
            "multipart uploads of writes that died",
        );
        sweep_logged(
            svc.sweep_retired_objects().await,
            "objects of deleted images",
        );
        sweep_logged(
            svc.prune_quota_reservations().await,
            "expired quota reservations",
        );
        sweep_logged(
            svc.prune_finished_jobs().await,
            "finished jobs past their retention",
        );
    }
}
