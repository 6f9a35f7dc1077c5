//! What the use cases share about objects and scratch files: new image records, guards for
//! objects not yet referenced, digests of stored objects, zip images extracted into the store,
//! scratch files and spooled bodies.

use super::{
    integrity::{self, Digests, Wanted},
    meter::Meter,
    now_secs, stream_digests, texts, zipin, Error, Result, Service,
};
use crate::{
    cleanup::Cleanup,
    config::Tier,
    storage::{
        fileio::{BodyOrFile, FileSink},
        ByteStream, MultipartUpload, ObjectRef, PutOptions, StorageError,
    },
};
use entity::{
    image,
    status::{CheckStatus, SlimStatus},
};
use futures::StreamExt;
use sea_orm::ActiveValue::Set;
use std::path::Path;

/// The image a zip held, once stored.
pub(crate) struct Extracted {
    pub file_name: String,
    /// Bytes.
    pub size: u64,
    pub crc32: u32,
    /// Of the image, computed as it was extracted: SHA-256, and MD5 on an S3 store (else its
    /// first check records it).
    pub digests: Digests,
}

/// The fields of a new image record.
pub(crate) struct NewImage<'a> {
    pub id: &'a str,
    pub file_name: &'a str,
    pub user_id: &'a str,
    pub tier: &'a Tier,
    pub key: &'a str,
    pub size: u64,
    pub crc32: u32,
    /// MD5 and SHA-256 of the image as received, when they were computed on the way in.
    pub digests: Option<&'a Digests>,
    pub source_identifier: Option<&'a str>,
}

impl NewImage<'_> {
    pub(crate) fn into_active_model(self) -> image::ActiveModel {
        let now = now_secs();
        image::ActiveModel {
            id: Set(self.id.to_string()),
            file_name: Set(self.file_name.to_string()),
            user_id: Set(self.user_id.to_string()),
            upload_time: Set(chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string()),
            priority: Set(self.tier.priority),
            bucket: Set(self.tier.bucket.clone()),
            object_key: Set(self.key.to_string()),
            size_bytes: Set(self.size as i64),
            crc32: Set(Some(self.crc32 as i64)),
            source_identifier: Set(self.source_identifier.map(str::to_string)),
            slim_status: Set(SlimStatus::NotSlimmed),
            check_status: Set(CheckStatus::InProgress),
            check_msg: Set(texts::CHECK_IN_PROGRESS.to_string()),
            check_result: Set(crate::imageops::result::IN_PROGRESS),
            checksum: Set(None),
            image_end_offset: Set(None),
            check_errors: Set(None),
            format: Set(None),
            virtual_size: Set(None),
            compress_status: Set(None),
            compress_msg: Set(None),
            compress_rate: Set(None),
            slim_object_key: Set(None),
            slim_size_bytes: Set(None),
            slim_crc32: Set(None),
            original_md5: Set(self.digests.and_then(Digests::md5_hex)),
            original_sha256: Set(self.digests.and_then(Digests::sha256_hex)),
            slim_md5: Set(None),
            slim_sha256: Set(None),
            sha256: Set(None),
            slimmed_at: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
        }
    }
}

impl Service {
    /// A guard that removes `bucket`/`key` unless disarmed: for objects not yet referenced by
    /// a record.
    pub(crate) fn unreferenced(&self, bucket: &str, key: &str) -> Cleanup {
        let (store, bucket, key) = (self.store.clone(), bucket.to_string(), key.to_string());
        Cleanup::new(async move {
            if let Err(e) = store.delete(&bucket, &key).await {
                tracing::warn!(bucket, key, error = %e, "could not remove an unreferenced object");
            }
        })
    }

    /// A guard that aborts the multipart upload `upload_id` of `bucket`/`key` unless disarmed:
    /// for uploads not yet recorded (or not to be recorded).
    pub(crate) fn unfinished_upload(&self, bucket: &str, key: &str, upload_id: &str) -> Cleanup {
        let (store, bucket, key) = (self.store.clone(), bucket.to_string(), key.to_string());
        let upload_id = upload_id.to_string();
        Cleanup::new(async move {
            let upload = MultipartUpload {
                bucket: &bucket,
                key: &key,
                upload_id: &upload_id,
            };
            if let Err(e) = store.abort_multipart(upload).await {
                tracing::warn!(bucket, key, error = %e, "could not abort an unrecorded upload");
            }
        })
    }

    /// Best-effort removal of an object nobody will reference; failures are logged.
    pub(crate) async fn delete_object(&self, bucket: &str, key: &str) {
        if let Err(e) = self.store.delete(bucket, key).await {
            tracing::warn!(bucket, key, error = %e, "could not remove an unreferenced object");
        }
    }

    /// The single image of the zip at `zip`, as its listing declares it (refusals: 400).
    pub(crate) async fn find_zip_image(&self, zip: &Path) -> Result<zipin::ZipImage> {
        let limits = self.zip_limits();
        let path = zip.to_path_buf();
        tokio::task::spawn_blocking(move || zipin::find_image(&path, limits))
            .await
            .map_err(|e| Error::Internal(e.to_string()))?
            .map_err(Error::InvalidZip)
    }

    fn zip_limits(&self) -> zipin::Limits {
        zipin::Limits {
            max_bytes: self.cfg.max_image_bytes,
            max_ratio: self.cfg.zip_max_ratio,
        }
    }

    /// Extracts `found` from the zip at `zip` into `tier`/`key`, checking its size and CRC-32
    /// as it streams.
    pub(crate) async fn extract_zip_image(
        &self,
        zip: &Path,
        found: zipin::ZipImage,
        tier: &Tier,
        key: &str,
    ) -> Result<Extracted> {
        let limits = self.zip_limits();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let path = zip.to_path_buf();
        let entry = found.clone();
        let extractor =
            tokio::task::spawn_blocking(move || zipin::extract(&path, &entry, limits, tx));
        let body = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })
        .boxed();
        let mut wanted = Wanted::STORED;
        if self.md5_on_the_way(&tier.bucket, key) {
            wanted.add(integrity::Algorithm::Md5);
        }
        let meter = Meter::hashing(wanted);
        let body = meter.wrap(body, u64::MAX);
        let opts = PutOptions {
            storage_class: tier.storage_class.clone(),
        };
        let stored = self
            .store
            .put(
                ObjectRef {
                    bucket: &tier.bucket,
                    key,
                },
                body,
                &opts,
            )
            .await;
        let extracted = extractor
            .await
            .map_err(|e| Error::Internal(e.to_string()))?;
        match (stored, extracted) {
            (Ok(size), Ok(())) => Ok(Extracted {
                file_name: found.file_name,
                size,
                crc32: meter.crc32(),
                digests: meter.digests(),
            }),
            (Err(StorageError::Body(_)), Err(refusal)) => Err(Error::InvalidZip(refusal)),
            (Err(e), _) => Err(e.into()),
            (Ok(_), Err(refusal)) => {
                self.delete_object(&tier.bucket, key).await;
                Err(Error::InvalidZip(refusal))
            }
        }
    }

    /// Whether an image streaming into `bucket`/`key` gets its MD5 on the way, beside its
    /// SHA-256 ([`Wanted::STORED`]). Not when the store keeps the object as a local file: the
    /// image's first check reads it from disk anyway, while qemu-img runs, and records the MD5
    /// then, so the upload (whose client waits for every byte to be hashed) runs at disk speed.
    /// Over S3 the check's read is a network transfer that MD5 would slow down (measured on
    /// Garage, 2 GiB: the check went from 1.13x to 1.71x of `md5sum`), so the upload, which
    /// waits on the network anyway, computes it.
    pub(crate) fn md5_on_the_way(&self, bucket: &str, key: &str) -> bool {
        self.store.local_path(bucket, key).is_none()
    }

    /// Digests of a stored object, in one read (in place when the store keeps it as a file).
    pub(crate) async fn object_digests(
        &self,
        bucket: &str,
        key: &str,
        wanted: integrity::Wanted,
    ) -> Result<integrity::Digests> {
        if let Some(path) = self.store.local_path(bucket, key) {
            return tokio::task::spawn_blocking(move || integrity::digest_file(&path, wanted))
                .await
                .map_err(|e| Error::Internal(e.to_string()))?
                .map_err(Error::from);
        }
        stream_digests(self.store.get(bucket, key, None).await?, wanted).await
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

/// Writes a (metered) body to a scratch file.
pub(crate) async fn spool(file: tokio::fs::File, body: ByteStream, meter: &Meter) -> Result<u64> {
    let mut sink = FileSink::new(file.into_std().await);
    match sink.drain(body).await {
        Ok(()) => Ok(sink.finish(false).await?),
        Err(BodyOrFile::Body(e)) => Err(body_error(e, meter)),
        Err(BodyOrFile::File(e)) => Err(e.into()),
    }
}

/// The error for a body that stopped: over the limit, or the client's fault.
pub(crate) fn body_error(e: std::io::Error, meter: &Meter) -> Error {
    if meter.exceeded() {
        Error::TooLarge
    } else if e.kind() == std::io::ErrorKind::TimedOut {
        Error::BodyTimeout
    } else {
        Error::BadBody(e)
    }
}

/// The store's multipart upload behind an upload session.
pub(super) fn multipart_of(session: &entity::upload_session::Model) -> MultipartUpload<'_> {
    MultipartUpload {
        bucket: &session.bucket,
        key: &session.object_key,
        upload_id: &session.upload_id,
    }
}
