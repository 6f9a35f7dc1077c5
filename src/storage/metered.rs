//! An `ObjectStore` around another that counts every call by operation and outcome and times
//! it, for `/metrics` (`fs_store_operations_total`, `fs_store_operation_duration_seconds`).
//! The backends know nothing of it: the service wraps whichever store it is given.

use super::{
    fileio::BodyOrFile, ByteRange, ByteStream, CompletedPart, InPlacePart, MultipartUpload,
    ObjectRef, ObjectStore, OpenUpload, Part, PutOptions, Result, StorageError, UploadedPart,
};
use crate::metrics::Metrics;
use async_trait::async_trait;
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

/// Times and counts the calls of the store it holds.
pub struct MeteredStore {
    inner: Arc<dyn ObjectStore>,
    metrics: Arc<Metrics>,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn ObjectStore>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }

    /// Runs one call of `operation`, recording its outcome and duration.
    async fn observe<T>(
        &self,
        operation: &str,
        call: impl std::future::Future<Output = Result<T>>,
        not_found: impl Fn(&T) -> bool,
    ) -> Result<T> {
        observe(&self.metrics, operation, call, not_found).await
    }
}

/// Runs one call of `operation`, recording its outcome and duration in `metrics`.
async fn observe<T>(
    metrics: &Metrics,
    operation: &str,
    call: impl std::future::Future<Output = Result<T>>,
    not_found: impl Fn(&T) -> bool,
) -> Result<T> {
    let started = Instant::now();
    let result = call.await;
    let outcome = match &result {
        Ok(v) if not_found(v) => "not_found",
        Ok(_) => "ok",
        Err(StorageError::NotFound | StorageError::NoSuchUpload) => "not_found",
        Err(_) => "error",
    };
    metrics.store_op(operation, outcome, started.elapsed());
    result
}

fn found<T>(_: &T) -> bool {
    false
}

/// A part received in place, whose commit is counted as an `upload_part`.
struct MeteredPart {
    inner: Box<dyn InPlacePart>,
    metrics: Arc<Metrics>,
}

#[async_trait]
impl InPlacePart for MeteredPart {
    fn target(&self) -> (&str, u32) {
        self.inner.target()
    }

    async fn receive(&mut self, body: ByteStream) -> std::result::Result<u64, BodyOrFile> {
        self.inner.receive(body).await
    }

    fn read_back(&self) -> Result<ByteStream> {
        self.inner.read_back()
    }

    async fn commit(self: Box<Self>) -> Result<UploadedPart> {
        let metrics = self.metrics.clone();
        observe(&metrics, "upload_part", self.inner.commit(), found).await
    }
}

#[async_trait]
impl ObjectStore for MeteredStore {
    async fn ensure_bucket(&self, bucket: &str) -> Result<()> {
        self.observe("ensure_bucket", self.inner.ensure_bucket(bucket), found)
            .await
    }

    async fn put(&self, to: ObjectRef<'_>, body: ByteStream, opts: &PutOptions) -> Result<u64> {
        self.observe("put", self.inner.put(to, body, opts), found)
            .await
    }

    async fn put_file(&self, to: ObjectRef<'_>, path: &Path, opts: &PutOptions) -> Result<u64> {
        let call = self.inner.put_file(to, path, opts);
        self.observe("put", call, found).await
    }

    async fn create_multipart(&self, bucket: &str, key: &str, opts: &PutOptions) -> Result<String> {
        let call = self.inner.create_multipart(bucket, key, opts);
        self.observe("create_multipart", call, found).await
    }

    async fn upload_part(&self, upload: MultipartUpload<'_>, part: Part) -> Result<UploadedPart> {
        let call = self.inner.upload_part(upload, part);
        self.observe("upload_part", call, found).await
    }

    async fn part_in_place(
        &self,
        upload: MultipartUpload<'_>,
        number: u32,
    ) -> Result<Option<Box<dyn InPlacePart>>> {
        // Counted as the `upload_part` it stands for, when it is committed.
        let part = self.inner.part_in_place(upload, number).await?;
        Ok(part.map(|inner| {
            Box::new(MeteredPart {
                inner,
                metrics: self.metrics.clone(),
            }) as Box<dyn InPlacePart>
        }))
    }

    async fn complete_multipart(
        &self,
        upload: MultipartUpload<'_>,
        parts: &[CompletedPart],
    ) -> Result<()> {
        let call = self.inner.complete_multipart(upload, parts);
        self.observe("complete_multipart", call, found).await
    }

    async fn abort_multipart(&self, upload: MultipartUpload<'_>) -> Result<()> {
        let call = self.inner.abort_multipart(upload);
        self.observe("abort_multipart", call, found).await
    }

    async fn get(&self, bucket: &str, key: &str, range: Option<ByteRange>) -> Result<ByteStream> {
        self.observe("get", self.inner.get(bucket, key, range), found)
            .await
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<Option<u64>> {
        self.observe("head", self.inner.head(bucket, key), Option::is_none)
            .await
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<()> {
        self.observe("delete", self.inner.delete(bucket, key), found)
            .await
    }

    async fn copy(&self, from: ObjectRef<'_>, to: ObjectRef<'_>, opts: &PutOptions) -> Result<()> {
        self.observe("copy", self.inner.copy(from, to, opts), found)
            .await
    }

    async fn ping(&self, bucket: &str) -> Result<()> {
        self.observe("ping", self.inner.ping(bucket), found).await
    }

    fn reads_outlive_delete(&self) -> bool {
        self.inner.reads_outlive_delete()
    }

    fn local_path(&self, bucket: &str, key: &str) -> Option<PathBuf> {
        self.inner.local_path(bucket, key)
    }

    async fn sweep_stale_temp(&self, idle: std::time::Duration) -> Result<usize> {
        let call = self.inner.sweep_stale_temp(idle);
        self.observe("sweep_stale_temp", call, found).await
    }

    async fn stale_uploads(
        &self,
        bucket: &str,
        idle: std::time::Duration,
    ) -> Result<Vec<OpenUpload>> {
        let call = self.inner.stale_uploads(bucket, idle);
        self.observe("stale_uploads", call, found).await
    }

    fn min_part_size(&self) -> u64 {
        self.inner.min_part_size()
    }
}
