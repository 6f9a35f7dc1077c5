//! Multipart uploads of chunked uploads: chunk n as part n or as a staging object, completion
//! after packing, abort. Every key here is a store key (prefixed).

use super::{client::SEND_RATE, pack::Packed, put::class, S3Store, StoreKey};

/// How long past the 30 s every call gets a completion's answer may take to begin (seconds):
/// stores join the parts before they answer (see [`S3Store::sized`]).
const COMPLETE_GRACE: u64 = 30;
use crate::storage::{CompletedPart, Part, PutOptions, Result, StorageError, UploadedPart};
use aws_sdk_s3::{
    primitives::ByteStream as S3Body,
    types::{CompletedMultipartUpload, CompletedPart as S3Part},
};

/// A request body streaming the file at `path`.
pub(super) async fn file_body(path: &std::path::Path) -> Result<S3Body> {
    S3Body::from_path(path)
        .await
        .map_err(|e| StorageError::Io(std::io::Error::other(e.to_string())))
}

/// Where the staged chunks of an upload live. Upload ids are opaque (and may hold characters
/// awkward in keys), so the prefix is their MD5.
fn staging_prefix(upload_id: &str) -> String {
    use md5::Digest;
    format!(
        "staging/{}/",
        hex::encode(md5::Md5::digest(upload_id.as_bytes()))
    )
}

/// The staging object of chunk `number`.
pub(super) fn staging_key(upload_id: &str, number: u32) -> String {
    format!("{}{number:05}", staging_prefix(upload_id))
}

impl S3Store {
    /// Opens a multipart upload (declaring the checksum its parts carry).
    pub(super) async fn create_upload(
        &self,
        bucket: &str,
        key: &StoreKey,
        opts: &PutOptions,
    ) -> Result<String> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .set_storage_class(class(opts))
            .set_checksum_algorithm(self.settings.checksum.algorithm())
            .customize()
            .config_override(Self::quick())
            .send()
            .await
            .map_err(|e| self.class_err(e, opts))?;
        out.upload_id()
            .map(str::to_string)
            .ok_or_else(|| StorageError::Io(std::io::Error::other("store returned no upload id")))
    }

    /// Completes an upload with `parts` (`CompleteMultipartUpload`).
    pub(super) async fn complete(
        &self,
        bucket: &str,
        key: &StoreKey,
        upload_id: &str,
        parts: Vec<S3Part>,
    ) -> Result<()> {
        // Not all stores name the object's ETag in the answer (Ceph's RGW leaves it out): the
        // parts' ETags, and the listing at start, have shown that the store is an S3 API.
        self.client
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .customize()
            .config_override(Self::sized(COMPLETE_GRACE * SEND_RATE, SEND_RATE))
            .send()
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Sends `len` bytes of `body` as part `number` (1-based) of the multipart upload
    /// `upload_id` of `key` (S3 UploadPart), with the checksum fields of `checksum` (see
    /// [`super::checksum::S3Checksum::fields`]): the part's ETag. A store that answers no ETag
    /// is an error (the part could not be named at completion).
    pub(super) async fn send_part(
        &self,
        bucket: &str,
        key: &StoreKey,
        (upload_id, number): (&str, u32),
        len: u64,
        body: S3Body,
        checksum: Option<String>,
    ) -> Result<String> {
        let (crc, sha) = self.settings.checksum.fields(checksum);
        let out = self
            .client
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number as i32)
            .set_checksum_crc32_c(crc)
            .set_checksum_sha256(sha)
            .content_length(len as i64)
            .body(body)
            .customize()
            .config_override(Self::sized(len, SEND_RATE))
            .send()
            .await
            .map_err(|e| self.err(e))?;
        self.stored_etag(out.e_tag(), "UploadPart")
    }

    /// A chunk of a chunked upload: part `number` itself when `direct` and at least the
    /// minimum part size, else a staging object (`staged`).
    pub(super) async fn put_chunk(
        &self,
        bucket: &str,
        key: &StoreKey,
        upload_id: &str,
        part: Part,
    ) -> Result<UploadedPart> {
        let Part {
            number,
            body,
            direct,
        } = part;
        let s = self;
        let c = s.settings.checksum;
        let checksum = c.of_file(&body.file).await?;
        let (crc, sha) = c.fields(checksum.clone());
        let file_body = file_body(&body.file).await?;
        if direct && body.len >= s.settings.min_part_bytes {
            let part = (upload_id, number);
            let etag = s
                .send_part(bucket, key, part, body.len, file_body, checksum.clone())
                .await?;
            // Drop a staging copy an earlier, smaller version of this chunk left.
            let _ = s
                .client
                .delete_object()
                .bucket(bucket)
                .key(self.store_key(&staging_key(upload_id, number)))
                .customize()
                .config_override(Self::quick())
                .send()
                .await;
            return Ok(UploadedPart {
                etag,
                checksum,
                staged: false,
            });
        }
        let out = s
            .client
            .put_object()
            .bucket(bucket)
            .key(self.store_key(&staging_key(upload_id, number)))
            .set_checksum_crc32_c(crc)
            .set_checksum_sha256(sha)
            .content_length(body.len as i64)
            .body(file_body)
            .customize()
            .config_override(Self::sized(body.len, SEND_RATE))
            .send()
            .await
            .map_err(|e| self.err(e))?;
        // Packed into a part at completion, which gets its own checksum then.
        Ok(UploadedPart {
            etag: self.stored_etag(out.e_tag(), "PutObject")?,
            checksum: None,
            staged: true,
        })
    }

    /// Completes an upload from its chunks ([`pack`](super::pack) first); a retried
    /// completion whose object exists succeeds. Staging objects are removed after.
    pub(super) async fn complete_chunks(
        &self,
        bucket: &str,
        key: &StoreKey,
        upload_id: &str,
        parts: &[CompletedPart],
    ) -> Result<()> {
        let s = self;
        if parts.is_empty() || parts.windows(2).any(|w| w[0].number >= w[1].number) {
            return Err(StorageError::InvalidPart(
                "parts must be ascending and non-empty".into(),
            ));
        }
        if parts.iter().all(|p| p.size == 0) {
            return s.complete_empty(bucket, key, upload_id).await;
        }
        let packed = match s.pack_parts(bucket, key, upload_id, parts).await {
            Err(StorageError::NoSuchUpload) | Err(StorageError::NotFound) => {
                return s.completed_before(bucket, key, upload_id).await;
            }
            other => other?,
        };
        let Packed { parts, left_behind } = packed;
        let completed = match s.complete(bucket, key, upload_id, parts).await {
            // Ceph's RGW (16.x) answers the completion of an upload id it does not know with
            // 500 "multipart completion is already in progress"; ListParts tells the truth
            // (RGW's answer to that is NoSuchKey).
            Err(StorageError::Unavailable(msg))
                if matches!(
                    s.held_parts(bucket, key, upload_id).await,
                    Err(StorageError::NoSuchUpload | StorageError::NotFound)
                ) =>
            {
                tracing::debug!(bucket, %msg, "completion refused: the upload is gone");
                Err(StorageError::NoSuchUpload)
            }
            other => other,
        };
        match completed {
            Err(StorageError::NoSuchUpload) if self.head_object(bucket, key).await?.is_some() => {}
            // A strict store that completes only from every part it holds.
            Err(StorageError::InvalidPart(msg)) if !left_behind.is_empty() => {
                tracing::info!(bucket, %msg, parts = ?left_behind, "completion refused: parts left behind");
                let numbers: Vec<String> = left_behind.iter().map(u32::to_string).collect();
                let (what, were) = match numbers.len() {
                    1 => ("chunk", "was"),
                    _ => ("chunks", "were"),
                };
                return Err(StorageError::InvalidPart(format!(
                    "{what} {} {were} sent again smaller than before, and this store keeps the \
                     earlier parts and completes only with all of them: cancel the upload and \
                     send it again",
                    numbers.join(", ")
                )));
            }
            other => other?,
        }
        s.delete_staging(bucket, upload_id).await
    }

    /// A completion that finds its upload gone: it completed before (a retried merge) when
    /// the object exists, which is the proof; its staging objects go now, should the first
    /// completion have died before removing them. `NoSuchUpload` otherwise.
    async fn completed_before(&self, bucket: &str, key: &StoreKey, upload_id: &str) -> Result<()> {
        match self.head_object(bucket, key).await? {
            Some(_) => self.delete_staging(bucket, upload_id).await,
            None => Err(StorageError::NoSuchUpload),
        }
    }

    /// Completes an upload whose chunks are all empty: its object is put empty, in the storage
    /// class the upload was opened with (ListParts tells it), then the upload is aborted. S3
    /// stores may refuse an empty part (Garage: 400 "Empty body"), and every part of an upload
    /// would be. A retried completion whose object exists succeeds.
    async fn complete_empty(&self, bucket: &str, key: &StoreKey, upload_id: &str) -> Result<()> {
        let listed = self
            .client
            .list_parts()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .customize()
            .config_override(S3Store::quick())
            .send()
            .await
            .map_err(|e| self.err(e));
        let storage_class = match listed {
            Ok(out) => out.storage_class().map(|c| c.as_str().to_string()),
            Err(StorageError::NoSuchUpload | StorageError::NotFound) => {
                return self.completed_before(bucket, key, upload_id).await;
            }
            Err(e) => return Err(e),
        };
        let opts = PutOptions { storage_class };
        self.put_small(bucket, key, bytes::Bytes::new(), &opts)
            .await?;
        self.abort_chunks(bucket, key, upload_id).await
    }

    /// Aborts an upload (an unknown one is no error) and removes its staging objects.
    pub(super) async fn abort_chunks(
        &self,
        bucket: &str,
        key: &StoreKey,
        upload_id: &str,
    ) -> Result<()> {
        let s = self;
        match s
            .client
            .abort_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .customize()
            .config_override(S3Store::quick())
            .send()
            .await
            .map_err(|e| self.err(e))
        {
            Ok(_) | Err(StorageError::NoSuchUpload) | Err(StorageError::NotFound) => {}
            Err(e) => return Err(e),
        }
        s.delete_staging(bucket, upload_id).await
    }

    /// Removes every staging object of an upload.
    pub(super) async fn delete_staging(&self, bucket: &str, upload_id: &str) -> Result<()> {
        let prefix = self.store_key(&staging_prefix(upload_id));
        let mut token = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(bucket)
                .prefix(&prefix)
                .set_continuation_token(token)
                .customize()
                .config_override(S3Store::quick())
                .send()
                .await
                .map_err(|e| self.err(e))?;
            for obj in page.contents() {
                if let Some(k) = obj.key() {
                    self.client
                        .delete_object()
                        .bucket(bucket)
                        .key(k)
                        .customize()
                        .config_override(S3Store::quick())
                        .send()
                        .await
                        .map_err(|e| self.err(e))?;
                }
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => return Ok(()),
            }
        }
    }
}
