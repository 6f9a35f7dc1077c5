//! Local-directory object store: `{root}/{bucket}/{key}` for objects,
//! `{root}/.uploads/{upload_id}/{part}` for multipart parts, `{root}/.tmp` for writes in flight.
//!
//! Objects appear atomically (written to `.tmp`, synced, renamed). Completing a multipart upload
//! joins the parts with `copy_file_range`, so no byte passes through user space (and file
//! systems with reflinks share the blocks instead of copying them).

use super::fileio::copy_between;
use super::{
    fileio::{self, BodyOrFile, FileSink},
    local_parts, ByteRange, ByteStream, CompletedPart, InPlacePart, MultipartUpload, ObjectRef,
    ObjectStore, OpenUpload, Part, PutOptions, Result, SpooledPart, StorageError, UploadedPart,
};
use crate::dirlock::{self, DirLock};
use async_trait::async_trait;
use std::{
    io,
    path::{Component, Path, PathBuf},
    sync::Arc,
};

#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
    /// One process owns the directory (see `crate::dirlock`).
    _lock: Arc<DirLock>,
}

impl LocalStore {
    /// Opens (creating when needed) a store rooted at `root`, owned by this process: fails
    /// with `ErrorKind::WouldBlock` when another process has it open. Temporary files of
    /// writes an earlier process left unfinished (it was killed) are removed.
    pub async fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        for sub in [".tmp", ".uploads"] {
            tokio::fs::create_dir_all(root.join(sub)).await?;
        }
        let lock = dirlock::lock(&root, "local store directory")?;
        // Owned by this process alone now: whatever is in `.tmp` belongs to nobody.
        let mut rd = tokio::fs::read_dir(root.join(".tmp")).await?;
        let mut left = 0;
        while let Some(e) = rd.next_entry().await? {
            let kind = e.file_type().await?;
            if kind.is_file() {
                tokio::fs::remove_file(e.path()).await?;
                left += 1;
            } else if kind.is_dir() {
                // An upload's directory on its way out (see `discard_upload_dir`).
                tokio::fs::remove_dir_all(e.path()).await?;
                left += 1;
            }
        }
        if left > 0 {
            tracing::info!(
                files = left,
                "removed temporary files of writes a previous run left unfinished"
            );
        }
        Ok(Self {
            root,
            _lock: Arc::new(lock),
        })
    }

    fn bucket_dir(&self, bucket: &str) -> Result<PathBuf> {
        if bucket.is_empty()
            || bucket.starts_with('.')
            || !is_plain_relative(bucket)
            || bucket.contains('/')
        {
            return Err(StorageError::InvalidPart(format!(
                "invalid bucket {bucket:?}"
            )));
        }
        Ok(self.root.join(bucket))
    }

    fn object_path(&self, bucket: &str, key: &str) -> Result<PathBuf> {
        if key.is_empty() || !is_plain_relative(key) {
            return Err(StorageError::InvalidPart(format!("invalid key {key:?}")));
        }
        Ok(self.bucket_dir(bucket)?.join(key))
    }

    fn upload_dir(&self, upload_id: &str) -> Result<PathBuf> {
        uuid::Uuid::parse_str(upload_id).map_err(|_| StorageError::NoSuchUpload)?;
        Ok(self.root.join(".uploads").join(upload_id))
    }

    fn tmp_path(&self) -> PathBuf {
        self.root
            .join(".tmp")
            .join(uuid::Uuid::new_v4().to_string())
    }

    /// Removes an upload's directory in one step a crash cannot cut in half (a completion
    /// killed while its directory is half removed would find parts gone that it needs): it is
    /// renamed into `.tmp`, whose leftovers are removed at start, then deleted. A directory
    /// already gone is fine.
    ///
    /// A writer of a chunk that had looked the directory up just before the rename may still
    /// create a file in it (its own next step then fails, the directory being gone): the
    /// removal that meets such a newcomer (`ENOTEMPTY`) goes over it again.
    async fn discard_upload_dir(&self, dir: &Path) -> io::Result<()> {
        let trash = self.tmp_path();
        match tokio::fs::rename(dir, &trash).await {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            other => other?,
        }
        let mut tries = 0;
        loop {
            tries += 1;
            match tokio::fs::remove_dir_all(&trash).await {
                Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty && tries < 5 => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                other => return other,
            }
        }
    }

    /// Moves a finished temp file to its final place, durably.
    async fn publish(&self, tmp: &Path, dst: &Path) -> Result<()> {
        if let Some(parent) = dst.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        tokio::fs::rename(tmp, dst).await?;
        if let Some(parent) = dst.parent() {
            sync_dir(parent).await;
        }
        Ok(())
    }
}

/// A part received straight into its upload's `data` file (see `local_parts::begin_in_place`).
/// It holds the lock on `data` until it is committed or dropped; a write still in flight when
/// it is dropped keeps the lock until that write is done.
struct LocalPart {
    dir: PathBuf,
    upload_id: String,
    number: u32,
    /// Where the part begins in `data` (bytes).
    offset: u64,
    /// Bytes received.
    len: u64,
    /// Writes from `offset` on; taken by `receive`.
    sink: Option<FileSink>,
    data: Arc<std::fs::File>,
}

impl LocalPart {
    /// Opens part `number` of the upload in `dir` in place, when `local_parts::begin_in_place`
    /// allows it (blocking: run it off the runtime's threads).
    fn begin(dir: PathBuf, upload_id: String, number: u32) -> io::Result<Option<LocalPart>> {
        let Some((data, offset)) = local_parts::begin_in_place(&dir, number)? else {
            return Ok(None);
        };
        // A second descriptor of the same open file: the lock lasts while either is open.
        let reader = data.try_clone()?;
        Ok(Some(LocalPart {
            dir,
            upload_id,
            number,
            offset,
            len: 0,
            sink: Some(FileSink::durable_at(data, offset)?),
            data: Arc::new(reader),
        }))
    }
}

#[async_trait]
impl InPlacePart for LocalPart {
    fn target(&self) -> (&str, u32) {
        (&self.upload_id, self.number)
    }

    async fn receive(&mut self, body: ByteStream) -> std::result::Result<u64, BodyOrFile> {
        let mut sink = self
            .sink
            .take()
            .ok_or_else(|| BodyOrFile::File(io::Error::other("part already received")))?;
        sink.drain(body).await?;
        self.len = sink.finish(false).await.map_err(BodyOrFile::File)?;
        Ok(self.len)
    }

    fn read_back(&self) -> Result<ByteStream> {
        let file = self.data.try_clone()?;
        Ok(fileio::read_stream(file, self.offset, self.len))
    }

    async fn commit(self: Box<Self>) -> Result<UploadedPart> {
        if self.sink.is_some() {
            return Err(StorageError::InvalidPart("part never received".into()));
        }
        let etag = format!("{}-{}", self.len, uuid::Uuid::new_v4().simple());
        let LocalPart {
            dir,
            number,
            offset,
            len,
            data,
            ..
        } = *self;
        store_part(etag, false, move || {
            local_parts::commit_in_place(&dir, &data, number, offset, len)
        })
        .await
    }
}

/// Runs `store` (a blocking step of `local_parts` that stores a part) off the runtime's
/// threads: the part, with `etag`, as `upload_part` answers it. A file of the upload gone
/// means the upload was aborted or completed meanwhile (`NoSuchUpload`).
async fn store_part(
    etag: String,
    staged: bool,
    store: impl FnOnce() -> io::Result<()> + Send + 'static,
) -> Result<UploadedPart> {
    match tokio::task::spawn_blocking(store)
        .await
        .map_err(|e| io::Error::other(e.to_string()))?
    {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StorageError::NoSuchUpload),
        Err(e) => Err(e.into()),
        // Local writes are not corrupted in transit: no store-side checksum.
        Ok(()) => Ok(UploadedPart {
            etag,
            checksum: None,
            staged,
        }),
    }
}

/// A relative path of normal components only: nothing can climb out of the store.
fn is_plain_relative(p: &str) -> bool {
    !p.contains('\0')
        && Path::new(p)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

async fn sync_dir(dir: &Path) {
    if let Ok(d) = tokio::fs::File::open(dir).await {
        let _ = d.sync_all().await;
    }
}

/// Removes a temp file when dropped unless disarmed.
struct TmpGuard(Option<PathBuf>);

impl TmpGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for TmpGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[async_trait]
impl ObjectStore for LocalStore {
    async fn ensure_bucket(&self, bucket: &str) -> Result<()> {
        tokio::fs::create_dir_all(self.bucket_dir(bucket)?).await?;
        Ok(())
    }

    async fn put(&self, to: ObjectRef<'_>, body: ByteStream, _: &PutOptions) -> Result<u64> {
        let dst = self.object_path(to.bucket, to.key)?;
        let tmp = self.tmp_path();
        let guard = TmpGuard(Some(tmp.clone()));
        let mut sink = FileSink::durable(std::fs::File::create(&tmp)?);
        match sink.drain(body).await {
            Ok(()) => {}
            Err(BodyOrFile::Body(e)) => return Err(StorageError::Body(e)),
            Err(BodyOrFile::File(e)) => return Err(e.into()),
        }
        let len = sink.finish(true).await?;
        self.publish(&tmp, &dst).await?;
        guard.disarm();
        Ok(len)
    }

    /// Links the file into place (a hard link: no copy, and the file stays where it is) once
    /// its data is on disk; a file on another file system, or one that cannot be linked, is
    /// copied inside the kernel instead.
    async fn put_file(&self, to: ObjectRef<'_>, path: &Path, _: &PutOptions) -> Result<u64> {
        let dst = self.object_path(to.bucket, to.key)?;
        let tmp = self.tmp_path();
        let guard = TmpGuard(Some(tmp.clone()));
        let (src, at) = (path.to_path_buf(), tmp.clone());
        let len = tokio::task::spawn_blocking(move || -> io::Result<u64> {
            let file = std::fs::File::open(&src)?;
            // Durable before it is published, as a streamed put is.
            file.sync_all()?;
            let len = file.metadata()?.len();
            if std::fs::hard_link(&src, &at).is_err() {
                let out = std::fs::File::create(&at)?;
                copy_between(&file, 0, &out, 0, len)?;
                out.sync_all()?;
            }
            Ok(len)
        })
        .await
        .map_err(|e| io::Error::other(e.to_string()))??;
        self.publish(&tmp, &dst).await?;
        guard.disarm();
        Ok(len)
    }

    async fn create_multipart(
        &self,
        bucket: &str,
        key: &str,
        _opts: &PutOptions,
    ) -> Result<String> {
        self.object_path(bucket, key)?;
        let id = uuid::Uuid::new_v4().to_string();
        tokio::fs::create_dir_all(self.upload_dir(&id)?).await?;
        Ok(id)
    }

    async fn upload_part(&self, upload: MultipartUpload<'_>, part: Part) -> Result<UploadedPart> {
        let dir = self.upload_dir(upload.upload_id)?;
        if !tokio::fs::try_exists(&dir).await? {
            return Err(StorageError::NoSuchUpload);
        }
        let Part {
            number,
            body,
            direct,
        } = part;
        let etag = format!("{}-{}", body.len, uuid::Uuid::new_v4().simple());
        // No minimum part size here: a chunk is staged only when the caller asks.
        store_part(etag, !direct, move || {
            let SpooledPart { file, len } = body;
            local_parts::put_part(&dir, number, &file, len)
        })
        .await
    }

    async fn part_in_place(
        &self,
        upload: MultipartUpload<'_>,
        number: u32,
    ) -> Result<Option<Box<dyn InPlacePart>>> {
        let dir = self.upload_dir(upload.upload_id)?;
        if !tokio::fs::try_exists(&dir).await? {
            return Ok(None);
        }
        let upload_id = upload.upload_id.to_string();
        let part = tokio::task::spawn_blocking(move || LocalPart::begin(dir, upload_id, number))
            .await
            .map_err(|e| io::Error::other(e.to_string()))??;
        Ok(part.map(|p| Box::new(p) as Box<dyn InPlacePart>))
    }

    async fn complete_multipart(
        &self,
        upload: MultipartUpload<'_>,
        parts: &[CompletedPart],
    ) -> Result<()> {
        let dst = self.object_path(upload.bucket, upload.key)?;
        let dir = self.upload_dir(upload.upload_id)?;
        if !tokio::fs::try_exists(&dir).await? {
            // Completed before (e.g. a retried merge): the object is the proof.
            return match tokio::fs::try_exists(&dst).await? {
                true => Ok(()),
                false => Err(StorageError::NoSuchUpload),
            };
        }
        if parts.is_empty() || parts.windows(2).any(|w| w[0].number >= w[1].number) {
            return Err(StorageError::InvalidPart(
                "parts must be ascending and non-empty".into(),
            ));
        }
        if local_parts::data_published(&dir)? && tokio::fs::try_exists(&dst).await? {
            // A completion died after publishing the joined parts, before removing their
            // directory: the object is the proof; finish its cleanup.
            self.discard_upload_dir(&dir).await?;
            return Ok(());
        }
        let numbers: Vec<u32> = parts.iter().map(|p| p.number).collect();
        let tmp = self.tmp_path();
        let guard = TmpGuard(Some(tmp.clone()));
        let dir2 = dir.clone();
        // `_held` keeps the lock on the upload's `data` until the object is published: no part
        // can be written into a file that is being moved into place.
        let (assembled, _held) =
            tokio::task::spawn_blocking(move || local_parts::assemble(&dir2, &numbers, &tmp))
                .await
                .map_err(|e| io::Error::other(e.to_string()))?
                .map_err(|e| match e.kind() {
                    io::ErrorKind::NotFound => StorageError::InvalidPart(e.to_string()),
                    _ => StorageError::Io(e),
                })?;
        self.publish(&assembled, &dst).await?;
        guard.disarm();
        self.discard_upload_dir(&dir).await?;
        Ok(())
    }

    async fn abort_multipart(&self, upload: MultipartUpload<'_>) -> Result<()> {
        let dir = match self.upload_dir(upload.upload_id) {
            Ok(d) => d,
            Err(_) => return Ok(()),
        };
        Ok(self.discard_upload_dir(&dir).await?)
    }

    async fn get(&self, bucket: &str, key: &str, range: Option<ByteRange>) -> Result<ByteStream> {
        let path = self.object_path(bucket, key)?;
        let file = match tokio::fs::File::open(&path).await {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StorageError::NotFound),
            other => other?,
        };
        let len = file.metadata().await?.len();
        let (start, count) = match range {
            Some(r) => {
                if r.start > r.end || r.end >= len {
                    return Err(StorageError::InvalidPart(format!(
                        "range {r:?} outside object of {len} bytes"
                    )));
                }
                (r.start, r.length())
            }
            None => (0, len),
        };
        Ok(fileio::read_stream(file.into_std().await, start, count))
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<Option<u64>> {
        match tokio::fs::metadata(self.object_path(bucket, key)?).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<()> {
        match tokio::fs::remove_file(self.object_path(bucket, key)?).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    async fn copy(&self, from: ObjectRef<'_>, to: ObjectRef<'_>, _: &PutOptions) -> Result<()> {
        let src = self.object_path(from.bucket, from.key)?;
        let dst = self.object_path(to.bucket, to.key)?;
        let tmp = self.tmp_path();
        let guard = TmpGuard(Some(tmp.clone()));
        let tmp2 = tmp.clone();
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            let f = match std::fs::File::open(&src) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(e),
                other => other?,
            };
            let out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp2)?;
            copy_between(&f, 0, &out, 0, f.metadata()?.len())?;
            out.sync_all()
        })
        .await
        .map_err(|e| io::Error::other(e.to_string()))?
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StorageError::NotFound,
            _ => StorageError::Io(e),
        })?;
        self.publish(&tmp, &dst).await?;
        guard.disarm();
        Ok(())
    }

    fn reads_outlive_delete(&self) -> bool {
        true
    }

    fn local_path(&self, bucket: &str, key: &str) -> Option<PathBuf> {
        self.object_path(bucket, key).ok()
    }

    async fn sweep_stale_temp(&self, idle: std::time::Duration) -> Result<usize> {
        let mut rd = tokio::fs::read_dir(self.root.join(".tmp")).await?;
        let mut removed = 0;
        while let Some(e) = rd.next_entry().await? {
            let Ok(meta) = e.metadata().await else {
                continue;
            };
            let stale = meta
                .modified()
                .ok()
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|age| age > idle);
            if meta.is_file() && stale && tokio::fs::remove_file(e.path()).await.is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Every upload directory untouched for longer than `idle` (its newest file's mtime: a
    /// part written, the index changed), whatever `bucket`: upload directories are kept apart
    /// from buckets, and aborted by upload id alone (the key is empty).
    async fn stale_uploads(
        &self,
        _bucket: &str,
        idle: std::time::Duration,
    ) -> Result<Vec<OpenUpload>> {
        let root = self.root.join(".uploads");
        tokio::task::spawn_blocking(move || {
            let Ok(rd) = std::fs::read_dir(&root) else {
                return Ok(vec![]);
            };
            let mut stale = vec![];
            for e in rd.flatten() {
                let dir = e.path();
                let Some(id) = dir.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                if uuid::Uuid::parse_str(id).is_ok() && untouched_for(&dir, idle) {
                    stale.push(OpenUpload {
                        key: String::new(),
                        upload_id: id.to_string(),
                    });
                }
            }
            Ok(stale)
        })
        .await
        .map_err(|e| StorageError::Io(io::Error::other(e)))?
    }

    async fn ping(&self, _bucket: &str) -> Result<()> {
        tokio::fs::metadata(self.root.join(".tmp")).await?;
        Ok(())
    }
}

/// Whether the directory `dir` and every file in it were last modified more than `idle` ago.
fn untouched_for(dir: &Path, idle: std::time::Duration) -> bool {
    let old = |p: &Path| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > idle)
    };
    old(dir)
        && std::fs::read_dir(dir)
            .map(|rd| rd.flatten().all(|e| old(&e.path())))
            .unwrap_or(false)
}
