//! S3 object store (AWS S3, MinIO, Garage, Ceph RGW) through aws-sdk-s3.
//!
//! - `put` streams a body into bounded parts (a few in flight) of one multipart upload, or one
//!   `PutObject` when it is small; a failure aborts the upload.
//! - Chunk n of a chunked upload is part n (`UploadPart` from the spooled file, retried by the
//!   SDK) when the caller says `direct`. Strict stores reject non-final parts under 5 MiB, so a
//!   chunk below the minimum, or one the caller does not send directly, is held as a staging
//!   object (`staging/{upload_id}/{n}`).
//! - Completion follows [`plan`]: direct parts stay, staged chunks are copied inside the store
//!   (`UploadPartCopy`) or joined through a spool file into parts of at least the minimum;
//!   then `CompleteMultipartUpload`. For direct parts no image byte passes through.

//!
//! By concern: [`client`] (SDK client, settings, bucket), [`error`] (SDK errors as
//! [`StorageError`]), [`checksum`], [`put`] (streamed puts), [`multipart`] (chunks as parts or
//! staging objects, completion, abort), [`pack`] (the parts a completion is made of, by
//! [`plan`]), [`copy`], [`read`] (GET with [`readahead`], HEAD), [`stale`] (uploads nobody
//! writes to) and [`lifecycle`].

use super::{
    ByteRange, ByteStream, CompletedPart, MultipartUpload, ObjectRef, ObjectStore, OpenUpload,
    Part, PutOptions, Result, StorageError, UploadedPart,
};
use async_trait::async_trait;
use aws_sdk_s3::Client;
use std::sync::Arc;

mod checksum;
mod client;
mod copy;
mod error;
mod lifecycle;
mod multipart;
mod pack;
pub mod plan;
mod put;
mod read;
mod readahead;
mod stale;

pub use checksum::S3Checksum;
pub use client::{S3Settings, StoreKey};
pub use pack::Packed;

/// An S3 object store. Cheap to clone (the SDK client and the settings are shared), so parts
/// upload on tasks of their own.
#[derive(Clone)]
pub struct S3Store {
    client: Client,
    settings: Arc<S3Settings>,
    readahead: readahead::Budget,
}

/// Every method maps its logical key to the store key (`FS_S3_KEY_PREFIX` + key) and hands it
/// to the module of its concern.
#[async_trait]
impl ObjectStore for S3Store {
    async fn ensure_bucket(&self, bucket: &str) -> Result<()> {
        self.create_bucket(bucket).await
    }

    async fn put(&self, to: ObjectRef<'_>, body: ByteStream, opts: &PutOptions) -> Result<u64> {
        self.put_streamed(to.bucket, &self.store_key(to.key), body, opts)
            .await
    }

    async fn create_multipart(&self, bucket: &str, key: &str, opts: &PutOptions) -> Result<String> {
        self.create_upload(bucket, &self.store_key(key), opts).await
    }

    async fn upload_part(&self, u: MultipartUpload<'_>, part: Part) -> Result<UploadedPart> {
        let key = self.store_key(u.key);
        self.put_chunk(u.bucket, &key, u.upload_id, part).await
    }

    async fn complete_multipart(
        &self,
        u: MultipartUpload<'_>,
        parts: &[CompletedPart],
    ) -> Result<()> {
        let key = self.store_key(u.key);
        self.complete_chunks(u.bucket, &key, u.upload_id, parts)
            .await
    }

    async fn abort_multipart(&self, u: MultipartUpload<'_>) -> Result<()> {
        let key = self.store_key(u.key);
        self.abort_chunks(u.bucket, &key, u.upload_id).await
    }

    async fn get(&self, bucket: &str, key: &str, range: Option<ByteRange>) -> Result<ByteStream> {
        self.get_stream(bucket, &self.store_key(key), range).await
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<Option<u64>> {
        self.head_object(bucket, &self.store_key(key)).await
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<()> {
        self.delete_object(bucket, &self.store_key(key)).await
    }

    async fn copy(&self, from: ObjectRef<'_>, to: ObjectRef<'_>, opts: &PutOptions) -> Result<()> {
        let (src_key, dst_key) = (self.store_key(from.key), self.store_key(to.key));
        self.copy_object(from.bucket, &src_key, to.bucket, &dst_key, opts)
            .await
    }

    async fn ping(&self, bucket: &str) -> Result<()> {
        self.ping_bucket(bucket).await
    }

    async fn stale_uploads(
        &self,
        bucket: &str,
        idle: std::time::Duration,
    ) -> Result<Vec<OpenUpload>> {
        self.stale_uploads_in(bucket, idle).await
    }

    fn min_part_size(&self) -> u64 {
        self.settings.min_part_bytes
    }
}
