//! The check and slim jobs (run by `runner.rs`): a check hashes the image as served and has
//! qemu-img check it where it is stored; a slim compresses a qcow2, checks the result while
//! storing it beside the original, and serves it only once it checked consistent.

use super::ids::ObjectKey;
use super::integrity::{Digests, Hasher, Wanted};
use super::runner::{Job, JobProgress, Step};
use super::{now_secs, Error, Result, Service};
use crate::{
    db,
    domain::texts,
    imageops::{
        qcow2::HEAD_BYTES, CheckReport, CheckStatus, CompressFailure, CompressStatus, Declared,
        Image,
    },
    metrics::{ImageRead, SlimOutcome},
    storage::{nbd, ByteRange, ObjectRef},
};
use async_trait::async_trait;
use entity::{
    image,
    status::{JobKind, SlimStatus},
};
use std::path::PathBuf;

/// `JobKind::Check`: [`Service::run_check`].
pub(super) struct CheckJob;

/// `JobKind::Slim`: [`Service::run_slim`].
pub(super) struct SlimJob;

#[async_trait]
impl Job for CheckJob {
    async fn run(&self, svc: &Service, image_id: &str, _progress: &JobProgress) -> Result<Step> {
        svc.run_check(image_id).await.map(|()| Step::Done)
    }

    async fn give_up(&self, svc: &Service, image_id: &str, error: &Error) -> Result<()> {
        let report = CheckReport::failed(format!("check failed: {}", error.public_message()));
        svc.metrics.image_checked(report.status);
        let unread = db::images::Checked::Unread;
        db::images::set_check(&svc.db, image_id, &report, None, unread, now_secs()).await?;
        Ok(())
    }
}

#[async_trait]
impl Job for SlimJob {
    async fn run(&self, svc: &Service, image_id: &str, progress: &JobProgress) -> Result<Step> {
        svc.run_slim(image_id, progress).await
    }

    async fn give_up(&self, svc: &Service, image_id: &str, error: &Error) -> Result<()> {
        let msg = format!("slim failed: {}", error.public_message());
        svc.metrics.image_slimmed(SlimOutcome::Failed);
        let failed = CompressStatus::Failed;
        db::images::slim_failed(&svc.db, image_id, failed, &msg, now_secs()).await?;
        Ok(())
    }

    /// A slim's progress is the image's `compressRate` while it runs.
    async fn show_progress(&self, svc: &Service, image_id: &str, fraction: f64) {
        let shown = db::images::set_compress_rate(&svc.db, image_id, fraction, now_secs()).await;
        if let Err(e) = shown {
            tracing::warn!(image.id = %image_id, error = %e, "showing a slim's progress failed");
        }
    }
}

impl Service {
    /// Slims a qcow2: compressed copy, checked, stored under its own key; only a consistent
    /// result is served from then on. Waits for the image's check first.
    async fn run_slim(&self, image_id: &str, job_progress: &JobProgress) -> Result<Step> {
        let Some(img) = db::images::find(&self.db, image_id).await? else {
            return Ok(Step::Done);
        };
        if let Some(step) = self.slim_not_now(&img).await? {
            return Ok(step);
        }
        let (_, output) = self.scratch_file_with(".qcow2").await?;
        // Bytes that changed since they were recorded are never made the new reference.
        let expected = (&img.original_md5, &img.original_sha256);
        let started = std::time::Instant::now();
        let (compressed, digests) = self
            .compress_original(&img, &output, job_progress, to_verify(expected))
            .await?;
        tracing::debug!(image.id = %image_id, secs = started.elapsed().as_secs_f64(), "slim: original compressed and verified");
        if let Some(msg) = changed_since_recorded(expected, &digests) {
            tracing::warn!(image.id = %image_id, %msg, "slim refused: stored bytes changed");
            let digests = self
                .digests_of_changed(&img.bucket, &img.object_key, digests)
                .await?;
            let md5 = digests.md5_hex().unwrap_or_default();
            let sha256 = digests.sha256_hex().unwrap_or_default();
            let found = db::images::CheckHashes {
                md5: &md5,
                sha256: &sha256,
                original: false,
            };
            db::images::set_corrupted(&self.db, image_id, &msg, &found, now_secs()).await?;
            let refusal = format!("This image cannot be slimmed: {msg}.");
            return self.refuse_slim(image_id, &refusal).await;
        }
        if let Err(f) = compressed {
            tracing::info!(image.id = %image_id, msg = %f.msg, "slim failed; the original stays");
            db::images::slim_failed(&self.db, image_id, f.status, &f.msg, now_secs()).await?;
            self.metrics
                .image_slimmed(SlimOutcome::from_compress_status(f.status));
            return Ok(Step::Done);
        }
        self.keep_slimmed(&img, &output).await
    }

    /// Why a slim cannot run now: the image is gone or no longer slimming (done), its check
    /// is still running (later), its check refuses it or scratch cannot hold the result (the
    /// slim ends, recorded on the image). `None` when it can run.
    async fn slim_not_now(&self, img: &image::Model) -> Result<Option<Step>> {
        let image_id = img.id.as_str();
        if img.slim_status != SlimStatus::Slimming {
            return Ok(Some(Step::Done));
        }
        match img.check_status {
            CheckStatus::InProgress => {
                // Until the check's next attempt when it waits for one (a store outage can
                // keep it waiting for minutes at a time), else a second.
                let due = db::jobs::next_due(&self.db, image_id, JobKind::Check).await?;
                let wait = due.map_or(1, |at| at.saturating_sub(now_secs()).clamp(1, 300));
                return Ok(Some(Step::WaitSecs(wait)));
            }
            CheckStatus::NotCheckedType => {
                db::images::refuse_slim(&self.db, image_id, texts::SLIM_UNSUPPORTED, now_secs())
                    .await?;
                self.metrics.image_slimmed(SlimOutcome::Unsupported);
                return Ok(Some(Step::Done));
            }
            _ => {}
        }
        if let Some(refusal) = super::images::slim_refusal(img) {
            tracing::info!(image.id = %image_id, %refusal, "slim refused after the check");
            return self.refuse_slim(image_id, &refusal).await.map(Some);
        }
        // Only the output takes scratch space: the input is read where it is stored.
        let most = crate::imageops::slim_output_limit(img.size_bytes as u64);
        if free_bytes(&self.cfg.scratch_dir)? < most {
            let msg = "not enough scratch space to slim the image";
            db::images::slim_failed(&self.db, image_id, CompressStatus::NoSpace, msg, now_secs())
                .await?;
            self.metrics.image_slimmed(SlimOutcome::NoSpace);
            return Ok(Some(Step::Done));
        }
        Ok(None)
    }

    /// Compresses the stored original into `output` while its bytes are hashed (both read the
    /// stored object); progress goes to the job (the runner shows it as the image's
    /// `compressRate`).
    async fn compress_original(
        &self,
        img: &image::Model,
        output: &std::path::Path,
        job_progress: &JobProgress,
        wanted: Wanted,
    ) -> Result<(Result<(), CompressFailure>, Digests)> {
        let job_progress = job_progress.clone();
        let progress = Box::new(move |p| job_progress.set(p));
        let (imageops, out) = (self.imageops.clone(), output.to_path_buf());
        let compress =
            |input: Image| async move { imageops.compress(&input, &out, progress).await };
        let object = (
            img.bucket.as_str(),
            img.object_key.as_str(),
            img.size_bytes as u64,
        );
        self.on_image(object, ".qcow2", wanted, compress).await
    }

    /// Checks the compressed `output` while it is stored beside the original (hashed while it
    /// is stored: one read) and, when it checks consistent, records it; only then is it
    /// served. An output that does not check consistent is removed from the store again.
    async fn keep_slimmed(&self, img: &image::Model, output: &std::path::Path) -> Result<Step> {
        let image_id = img.id.as_str();
        let key = ObjectKey::slim(&img.object_key);
        // The stored copy goes again unless the image record takes it, on every way out: a
        // job cut short (its image deleted, its lease lost) drops this guard at an await.
        let unreferenced = self.unreferenced(&img.bucket, &key);
        let file = Image::File(output.to_path_buf());
        let started = std::time::Instant::now();
        let check = self.imageops.check(&file, Declared::Qcow2);
        let (report, stored) = tokio::join!(check, self.store_slimmed(img, &key, output));
        tracing::debug!(image.id = %image_id, secs = started.elapsed().as_secs_f64(), "slim: output checked, stored and hashed");
        if report.status != CheckStatus::Consistent {
            unreferenced.run().await;
            let msg = format!("the slimmed image did not check consistent: {}", report.msg);
            db::images::slim_failed(&self.db, image_id, CompressStatus::Failed, &msg, now_secs())
                .await?;
            self.metrics.image_slimmed(SlimOutcome::Failed);
            return Ok(Step::Done);
        }
        let (size, crc32, digests) = stored?;
        let slim = db::images::SlimResult {
            key: &key,
            size,
            crc32,
            md5: &digests.md5_hex().unwrap_or_default(),
            sha256: &digests.sha256_hex().unwrap_or_default(),
        };
        if db::images::slim_done(&self.db, image_id, &slim, &report, now_secs()).await? {
            unreferenced.disarm();
            tracing::info!(image.id = %image_id, before_bytes = img.size_bytes, after_bytes = size, "image slimmed");
            self.metrics.image_slimmed(SlimOutcome::Slimmed);
        } else {
            // Deleted (or reset) meanwhile: nothing may stay behind.
            unreferenced.run().await;
        }
        Ok(Step::Done)
    }

    /// Stores the slimmed `output` under `key` in the image's tier, hashed while it is read:
    /// its size (bytes), CRC-32 and digests. A store that keeps objects as files takes the
    /// file as it is (no copy; the one read hashes it), any other is sent the bytes as they
    /// are hashed. A failed or abandoned put leaves no object.
    async fn store_slimmed(
        &self,
        img: &image::Model,
        key: &str,
        output: &std::path::Path,
    ) -> Result<(u64, u32, Digests)> {
        let meter = super::meter::Meter::hashing(Wanted::IMAGE);
        let file = std::fs::File::open(output)?;
        let len = file.metadata()?.len();
        let body = meter.wrap(crate::storage::fileio::read_stream(file, 0, len), u64::MAX);
        let class = self
            .cfg
            .tiers
            .get(&img.priority)
            .and_then(|t| t.storage_class.clone());
        let opts = crate::storage::PutOptions {
            storage_class: class,
        };
        let to = ObjectRef {
            bucket: &img.bucket,
            key,
        };
        let size = if self.store.local_path(&img.bucket, key).is_some() {
            let hashed = futures::TryStreamExt::try_for_each(body, |_| std::future::ready(Ok(())));
            let (stored, hashed) = tokio::join!(self.store.put_file(to, output, &opts), hashed);
            hashed?;
            stored?
        } else {
            self.store.put(to, body, &opts).await?
        };
        Ok((size, meter.crc32(), meter.digests()))
    }

    /// Ends a slim the image's state refuses: `slimStatus` 3 with `refusal` as its message.
    async fn refuse_slim(&self, image_id: &str, refusal: &str) -> Result<Step> {
        let now = now_secs();
        db::images::slim_failed(&self.db, image_id, CompressStatus::Failed, refusal, now).await?;
        self.metrics.image_slimmed(SlimOutcome::Refused);
        Ok(Step::Done)
    }

    /// Checks the image as served (its slimmed copy once there is one): MD5 and SHA-256 of its
    /// bytes in one pass, compared with those recorded when the bytes were stored, then
    /// qemu-img through the imageops interface. Bytes that no longer match what was recorded
    /// are reported corrupted, whatever qemu-img says.
    async fn run_check(&self, image_id: &str) -> Result<()> {
        let Some(img) = db::images::find(&self.db, image_id).await? else {
            return Ok(());
        };
        let slimmed = img.slim_status == SlimStatus::Slimmed && img.slim_object_key.is_some();
        let (key, size, expected) = match (&img.slim_object_key, img.slim_size_bytes) {
            (Some(k), Some(s)) if slimmed => {
                (k.clone(), s as u64, (&img.slim_md5, &img.slim_sha256))
            }
            _ => (
                img.object_key.clone(),
                img.size_bytes as u64,
                (&img.original_md5, &img.original_sha256),
            ),
        };
        // qemu-img checks the bytes while they are hashed: both read the stored object.
        let (imageops, declared) = (
            self.imageops.clone(),
            Declared::from_file_name(&img.file_name),
        );
        let check = |image: Image| async move { imageops.check(&image, declared).await };
        let suffix = extension(&img.file_name);
        let read = self
            .on_image(
                (&img.bucket, &key, size),
                &suffix,
                to_verify(expected),
                check,
            )
            .await;
        let checked = match slimmed {
            true => db::images::Checked::Slimmed(&key),
            false => db::images::Checked::Original,
        };
        let (mut report, digests) = match read {
            // Retrying cannot bring it back: the check's verdict, at once.
            Err(e) if object_missing(&e) => {
                return self.check_found_missing(image_id, checked).await
            }
            other => other?,
        };
        let changed = changed_since_recorded(expected, &digests);
        let digests = match changed {
            Some(_) => self.digests_of_changed(&img.bucket, &key, digests).await?,
            None => digests,
        };
        // Unchanged bytes have the recorded digests, computed or not.
        let md5 = digests
            .md5_hex()
            .or_else(|| expected.0.clone())
            .unwrap_or_default();
        let sha256 = digests
            .sha256_hex()
            .or_else(|| expected.1.clone())
            .unwrap_or_default();
        // The first check of an original records the digests not recorded when it was received
        // (MD5, on the local store): only when the bytes are those received, so that changed
        // bytes never become the reference a download is verified against.
        let first_of_original = !slimmed && img.original_md5.is_none() && changed.is_none();
        if let Some(msg) = changed {
            tracing::warn!(image.id = %image_id, %msg, "stored bytes changed since they were recorded");
            report.status = CheckStatus::Corrupted;
            report.msg = msg;
        }
        let hashes = db::images::CheckHashes {
            md5: &md5,
            sha256: &sha256,
            original: first_of_original,
        };
        let now = now_secs();
        if !db::images::set_check(&self.db, image_id, &report, Some(&hashes), checked, now).await? {
            tracing::info!(image.id = %image_id, "the image was slimmed (or deleted) while it was checked: the check of the bytes it no longer serves is not its verdict");
            return Ok(());
        }
        tracing::info!(image.id = %image_id, status = ?report.status, "image checked");
        self.metrics.image_checked(report.status);
        Ok(())
    }

    /// Runs `op` on the object's bytes as qemu-img reads them while their `wanted` digests are
    /// computed, at the same time: qemu-img reads the store's own file when it has one (hashed
    /// in one more read of it), else a read-only NBD export of the object (`storage::nbd`:
    /// ranged reads, no copy; hashed through the export's blocks, so that each is fetched
    /// once). Only a sidecar imageops, which sees nothing
    /// but the shared scratch directory, gets a scratch copy (hashed while it is written,
    /// removed afterwards).
    ///
    /// Errors: the object cannot be read (a missing one is [`object_missing`]), or a copy finds
    /// no scratch space.
    async fn on_image<T, F, Fut>(
        &self,
        object: (&str, &str, u64),
        suffix: &str,
        wanted: Wanted,
        op: F,
    ) -> Result<(T, Digests)>
    where
        F: FnOnce(Image) -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        let (bucket, key, size) = object;
        if !self.imageops.shares_files() {
            if let Some(path) = self.store.local_path(bucket, key) {
                self.metrics.image_read(ImageRead::File);
                let digests = self.object_digests(bucket, key, wanted);
                let (out, digests) = tokio::join!(op(Image::File(path)), digests);
                return Ok((out, digests?));
            }
            let socket = self
                .cfg
                .scratch_dir
                .join(format!("nbd-{}.sock", uuid::Uuid::new_v4().simple()));
            // A Unix socket's address holds 107 bytes: a longer scratch path copies instead.
            if socket.as_os_str().len() < 100 {
                let head = self.object_range(bucket, key, 0, size.min(HEAD_BYTES as u64));
                let head = head.await?;
                let l1 = match crate::imageops::qcow2::l1_table(&head, size) {
                    Some((at, len)) => self.object_range(bucket, key, at, len).await?,
                    None => bytes::Bytes::new(),
                };
                let export = nbd::Export::start(self.store.clone(), bucket, key, size, socket)?;
                let image = Image::Nbd {
                    socket: export.socket().to_path_buf(),
                    head,
                    l1,
                    size,
                };
                self.metrics.image_read(ImageRead::Nbd);
                // Hashed through the export: the blocks qemu-img reads are read once.
                let digests = super::stream_digests(export.stream(), wanted);
                let (out, digests) = tokio::join!(op(image), digests);
                let (digests, failed) = (digests?, export.failed_reads());
                if failed > 0 {
                    // qemu-img's verdict was on read errors, not on the image: try again
                    // (an outage of the store, waited out like any other).
                    return Err(Error::Storage(crate::storage::StorageError::Unavailable(
                        format!("{failed} reads of the stored image failed"),
                    )));
                }
                return Ok((out, digests));
            }
        }
        self.metrics.image_read(ImageRead::Copy);
        let (path, _copy, digests) = self.scratch_copy(bucket, key, size, suffix, wanted).await?;
        Ok((op(Image::File(path)).await, digests))
    }

    /// Records the verdict of a check that found the image's object missing from the store:
    /// corrupted, with no digests.
    async fn check_found_missing(
        &self,
        image_id: &str,
        checked: db::images::Checked<'_>,
    ) -> Result<()> {
        let mut report =
            CheckReport::failed("image corrupted: the image's data is missing from the store");
        report.status = CheckStatus::Corrupted;
        tracing::warn!(image.id = %image_id, "stored object missing");
        let none = db::images::CheckHashes {
            md5: "",
            sha256: "",
            original: false,
        };
        let now = now_secs();
        if db::images::set_check(&self.db, image_id, &report, Some(&none), checked, now).await? {
            self.metrics.image_checked(report.status);
        }
        Ok(())
    }

    /// Both digests of bytes found changed, for the record: those computed when they are both
    /// there, else one more read of the object.
    async fn digests_of_changed(&self, bucket: &str, key: &str, found: Digests) -> Result<Digests> {
        if found.md5.is_some() && found.sha256.is_some() {
            return Ok(found);
        }
        self.object_digests(bucket, key, Wanted::IMAGE).await
    }

    /// `n` bytes of the object from byte `start` (its first bytes and a qcow2's L1 table, for
    /// the checks made before qemu-img runs).
    async fn object_range(
        &self,
        bucket: &str,
        key: &str,
        start: u64,
        n: u64,
    ) -> Result<bytes::Bytes> {
        use futures::StreamExt;
        if n == 0 {
            // Nothing to read; whether the object is there shows when it is hashed.
            return Ok(bytes::Bytes::new());
        }
        let range = ByteRange {
            start,
            end: start + n - 1,
        };
        let mut body = self.store.get(bucket, key, Some(range)).await?;
        let mut head = bytes::BytesMut::with_capacity(n as usize);
        while let Some(chunk) = body.next().await {
            head.extend_from_slice(&chunk?);
        }
        Ok(head.freeze())
    }

    /// A scratch copy of the object (its name ending in `suffix`: a sidecar derives the format
    /// from it) and the digests of its bytes, computed while it is written.
    async fn scratch_copy(
        &self,
        bucket: &str,
        key: &str,
        size: u64,
        suffix: &str,
        wanted: Wanted,
    ) -> Result<(PathBuf, tempfile::TempPath, Digests)> {
        let free = free_bytes(&self.cfg.scratch_dir)?;
        if free < size + (64 << 20) {
            tracing::warn!(dir = %self.cfg.scratch_dir.display(), free_bytes = free, needed_bytes = size, "not enough scratch space");
            return Err(Error::Internal(format!(
                "not enough scratch space: {free} bytes free, {size} needed"
            )));
        }
        let (file, path) = self.scratch_file_with(suffix).await?;
        let mut sink = crate::storage::fileio::FileSink::new(file.into_std().await);
        let mut body = self.store.get(bucket, key, None).await?;
        let mut hasher = Hasher::new(wanted);
        use futures::StreamExt;
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            hasher.update_bytes(chunk.clone());
            sink.write(chunk).await?;
        }
        sink.finish(false).await?;
        Ok((path.to_path_buf(), path, hasher.finish()))
    }
}

/// Whether an error says the object itself is gone (S3: no such key; local: no such file).
fn object_missing(e: &Error) -> bool {
    match e {
        Error::Storage(crate::storage::StorageError::NotFound) => true,
        Error::Storage(crate::storage::StorageError::Io(io)) => {
            io.kind() == std::io::ErrorKind::NotFound
        }
        _ => false,
    }
}

/// The digests a job computes to verify stored bytes against those `recorded` (MD5, SHA-256,
/// lower-case hex): SHA-256 alone when both were recorded (bytes with the recorded SHA-256 are
/// the recorded bytes, so their MD5 is the recorded one, and SHA-256 runs at several times
/// MD5's speed on CPUs with SHA extensions); both when either is missing (a merged image's
/// first check records them).
fn to_verify(recorded: (&Option<String>, &Option<String>)) -> Wanted {
    match recorded {
        (Some(_), Some(_)) => Wanted {
            sha256: true,
            ..Wanted::default()
        },
        _ => Wanted::IMAGE,
    }
}

/// Why bytes read now are not those recorded when they were stored (MD5 and SHA-256, lower-case
/// hex; `None` where nothing was recorded): a message naming both digests, or `None`.
fn changed_since_recorded(
    recorded: (&Option<String>, &Option<String>),
    found: &Digests,
) -> Option<String> {
    let (md5, sha256) = (found.md5_hex(), found.sha256_hex());
    [(recorded.0, md5, "MD5"), (recorded.1, sha256, "SHA-256")]
        .into_iter()
        .find_map(|(want, got, name)| {
            let (want, got) = (want.as_ref()?, got?);
            (*want != got).then(|| {
                format!(
                    "image corrupted: the stored bytes no longer match the checksums recorded \
                     when they were stored ({name} {got}, recorded {want})"
                )
            })
        })
}

/// `.qcow2`, `.img`, ... of a file name (empty when it has none).
fn extension(name: &str) -> String {
    std::path::Path::new(name)
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default()
}

/// Bytes available to unprivileged users on the file system holding `dir`.
fn free_bytes(dir: &std::path::Path) -> Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| Error::Internal(e.to_string()))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}
