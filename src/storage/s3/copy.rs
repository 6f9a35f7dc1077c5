//! Copies inside the store.

use super::{client::COPY_RATE, pack::empty_body_length, put::class, S3Store, StoreKey};
use crate::storage::{PutOptions, Result, StorageError};

/// Objects larger than this are copied part by part (`CopyObject` stops at 5 GiB).
const COPY_PART: u64 = 1 << 30;

impl S3Store {
    /// Copies an object inside the store (`CopyObject`, or `UploadPartCopy` in 1 GiB parts
    /// past 5 GiB, where `CopyObject` stops); keys are store keys.
    pub(super) async fn copy_object(
        &self,
        src_bucket: &str,
        src_key: &StoreKey,
        dst_bucket: &str,
        dst_key: &StoreKey,
        opts: &PutOptions,
    ) -> Result<()> {
        let s = self;
        let size = self
            .head_object(src_bucket, src_key)
            .await?
            .ok_or(StorageError::NotFound)?;
        let source = copy_source(src_bucket, src_key);
        if size <= COPY_PART * 5 {
            s.client
                .copy_object()
                .copy_source(&source)
                .bucket(dst_bucket)
                .key(dst_key)
                .set_storage_class(class(opts))
                .customize()
                .config_override(Self::sized(size, COPY_RATE))
                .send()
                .await
                .map_err(|e| self.class_err(e, opts))?;
            return Ok(());
        }
        let upload_id = s.create_upload(dst_bucket, dst_key, opts).await?;
        let result = async {
            let mut parts = vec![];
            let mut off = 0u64;
            let mut n = 1;
            while off < size {
                let end = (off + COPY_PART).min(size) - 1;
                let part = (upload_id.as_str(), n);
                let (etag, checksum) = s
                    .copy_part(dst_bucket, dst_key, part, &source, Some((off, end)))
                    .await?;
                parts.push(s.settings.checksum.part(n, Some(etag), checksum));
                off = end + 1;
                n += 1;
            }
            s.complete(dst_bucket, dst_key, &upload_id, parts).await
        }
        .await;
        if result.is_err() {
            let _ = s
                .client
                .abort_multipart_upload()
                .bucket(dst_bucket)
                .key(dst_key)
                .upload_id(&upload_id)
                .customize()
                .config_override(S3Store::quick())
                .send()
                .await;
        }
        result
    }

    /// Copies `source` (an `x-amz-copy-source`), or its bytes `range` (first and last,
    /// inclusive), as part `number` of the multipart upload `upload_id` of `key` (S3
    /// UploadPartCopy): the part's ETag and, where the store gives one, its checksum. A store
    /// that answers no ETag is an error (the part could not be named at completion).
    pub(super) async fn copy_part(
        &self,
        bucket: &str,
        key: &StoreKey,
        (upload_id, number): (&str, u32),
        source: &str,
        range: Option<(u64, u64)>,
    ) -> Result<(String, Option<String>)> {
        let out = self
            .client
            .upload_part_copy()
            .copy_source(source)
            .set_copy_source_range(range.map(|(first, last)| format!("bytes={first}-{last}")))
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number as i32)
            .customize()
            .mutate_request(empty_body_length)
            .config_override(Self::sized(
                range.map_or(COPY_PART, |(first, last)| last - first + 1),
                COPY_RATE,
            ))
            .send()
            .await
            .map_err(|e| self.err(e))?;
        let result = out.copy_part_result();
        let etag = result
            .and_then(|r| r.e_tag())
            .map(str::to_string)
            .ok_or_else(|| std::io::Error::other("store returned no ETag"))?;
        let c = self.settings.checksum;
        let checksum = result.and_then(|r| c.pick(r.checksum_crc32_c(), r.checksum_sha256()));
        Ok((etag, checksum))
    }
}

/// The `x-amz-copy-source` of an object: bucket and key, the key URL-encoded ('/' kept).
pub(super) fn copy_source(bucket: &str, key: &StoreKey) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    const KEEP: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'/')
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    format!("{bucket}/{}", utf8_percent_encode(key.as_str(), KEEP))
}
