//! Packing at completion: the parts an upload completes with, made by the merge [`plan`]
//! (direct parts kept, staged chunks copied inside the store or joined through a spool file).

use super::{
    copy::copy_source,
    multipart::{file_body, staging_key},
    plan, S3Store, StoreKey,
};
use crate::storage::{CompletedPart, Result, StorageError};
use aws_sdk_s3::{error::SdkError, types::CompletedPart as S3Part};
use futures::{StreamExt, TryStreamExt};
use tokio::io::AsyncWriteExt;

/// What an upload completes with: its parts, and the part numbers the store holds that no
/// valid part list could overwrite (a store that completes only from every part it holds
/// refuses the completion then).
pub struct Packed {
    pub parts: Vec<S3Part>,
    pub left_behind: Vec<u32>,
}

impl S3Store {
    /// Turns the parts of an upload into valid multipart parts by the merge plan (see
    /// [`plan`]): direct parts stay; staged chunks are copied inside the store or streamed
    /// into parts of at least the minimum, a few at once. Returns the list to complete with.
    /// `Resend` when no plan exists; `NotFound` when the staging objects are gone (the upload
    /// completed before).
    pub async fn pack_parts(
        &self,
        bucket: &str,
        key: &StoreKey,
        upload_id: &str,
        parts: &[CompletedPart],
    ) -> Result<Packed> {
        // An empty chunk adds no byte: it is no part (S3 stores may refuse an empty part).
        let chunks: Vec<plan::Chunk> = parts
            .iter()
            .filter(|p| p.size > 0)
            .map(|p| plan::Chunk {
                number: p.number,
                len: p.size,
                held: match p.staged {
                    true => plan::Held::Staged,
                    false => plan::Held::Direct {
                        etag: p.etag.clone(),
                    },
                },
            })
            .collect();
        let min = self.settings.min_part_bytes;
        let mut planned = plan::plan(&chunks, min).map_err(|e| StorageError::Resend(e.resend))?;
        let mut left_behind = vec![];
        if let Some(first) = chunks.iter().find(|c| c.held == plan::Held::Staged) {
            self.probe_staging(bucket, upload_id, first.number).await?;
        }
        // Parts sent directly before their chunk came again as a staging object are still in
        // the upload: strict stores (Ceph's RGW) complete only from all of them, so they are
        // overwritten when the sizes allow. Otherwise the plan stays (AWS and others take it).
        if planned
            .iter()
            .any(|p| matches!(p.source, plan::Source::Upload { .. }))
        {
            match self.held_parts(bucket, key, upload_id).await {
                Ok(held) => match plan::cover(planned.clone(), &held, min) {
                    Some(covered) => planned = covered,
                    None => {
                        left_behind = held
                            .into_iter()
                            .filter(|n| !planned.iter().any(|p| p.number == *n))
                            .collect()
                    }
                },
                // Completed before (a retried merge): the caller looks for the object.
                Err(e @ (StorageError::NoSuchUpload | StorageError::NotFound)) => return Err(e),
                // Credentials without ListParts (s3:ListMultipartUploadParts): the plan as it
                // is, which stores other than RGW complete.
                Err(e) => {
                    tracing::warn!(bucket, error = %e, "cannot list the parts of an upload; completing without checking for parts left behind");
                }
            }
        }
        let jobs = planned.into_iter().map(|p| {
            let kept = parts
                .iter()
                .find(|c| c.number == p.number)
                .and_then(|c| c.checksum.clone());
            self.make_part(bucket, key, upload_id, p, kept)
        });
        let parts = futures::stream::iter(jobs)
            .buffered(self.settings.upload_concurrency.max(1))
            .try_collect()
            .await?;
        Ok(Packed { parts, left_behind })
    }

    /// The part numbers the store holds for an upload (`ListParts`).
    pub(super) async fn held_parts(
        &self,
        bucket: &str,
        key: &StoreKey,
        upload_id: &str,
    ) -> Result<Vec<u32>> {
        let mut numbers = vec![];
        let mut marker = None;
        loop {
            let page = self
                .client
                .list_parts()
                .bucket(bucket)
                .key(key)
                .upload_id(upload_id)
                .set_part_number_marker(marker)
                .customize()
                .config_override(S3Store::quick())
                .send()
                .await
                .map_err(|e| self.err(e))?;
            numbers.extend(
                page.parts()
                    .iter()
                    .filter_map(|p| p.part_number())
                    .map(|n| n as u32),
            );
            match page.next_part_number_marker() {
                Some(m) if page.is_truncated() == Some(true) => marker = Some(m.to_string()),
                _ => return Ok(numbers),
            }
        }
    }

    /// Staging objects are gone once an upload completed (a retried merge): `NotFound` then.
    async fn probe_staging(&self, bucket: &str, upload_id: &str, number: u32) -> Result<()> {
        let probe = self.store_key(&staging_key(upload_id, number));
        match self
            .client
            .head_object()
            .bucket(bucket)
            .key(&probe)
            .customize()
            .config_override(S3Store::quick())
            .send()
            .await
        {
            Err(SdkError::ServiceError(se))
                if se.err().is_not_found() || se.raw().status().as_u16() == 404 =>
            {
                Err(StorageError::NotFound)
            }
            _ => Ok(()),
        }
    }

    /// Makes one planned part (`key` is the store key).
    async fn make_part(
        &self,
        bucket: &str,
        key: &StoreKey,
        upload_id: &str,
        part: plan::Part,
        kept_checksum: Option<String>,
    ) -> Result<S3Part> {
        let c = self.settings.checksum;
        let (etag, checksum) = match part.source {
            plan::Source::Keep { etag } => (etag, kept_checksum),
            plan::Source::Copy => {
                let source = copy_source(
                    bucket,
                    &self.store_key(&staging_key(upload_id, part.number)),
                );
                self.copy_part(bucket, key, (upload_id, part.number), &source, None)
                    .await?
            }
            plan::Source::Upload { chunks } => {
                self.upload_staged(bucket, key, upload_id, part.number, &chunks, None, part.len)
                    .await?
            }
            plan::Source::Slice { chunks, skip } => {
                self.upload_staged(
                    bucket,
                    key,
                    upload_id,
                    part.number,
                    &chunks,
                    Some(skip),
                    part.len,
                )
                .await?
            }
        };
        Ok(c.part(part.number, Some(etag), checksum))
    }

    /// Streams staged chunks, in order, through a spool file (memory stays bounded, and the
    /// SDK can retry from the file) into part `number`: all their `len` bytes, or with `slice`
    /// `len` bytes from that many in; returns its ETag.
    #[allow(clippy::too_many_arguments)]
    async fn upload_staged(
        &self,
        bucket: &str,
        key: &StoreKey,
        upload_id: &str,
        number: u32,
        chunks: &[u32],
        slice: Option<u64>,
        len: u64,
    ) -> Result<(String, Option<String>)> {
        let (file, path) = tempfile::Builder::new()
            .prefix(".s3-part-")
            .tempfile_in(&self.settings.spool_dir)?
            .into_parts();
        let mut file = tokio::fs::File::from_std(file);
        let (mut skip, mut seen, mut written) = (slice.unwrap_or(0), 0u64, 0u64);
        for &n in chunks {
            let mut body = self
                .get_stream(bucket, &self.store_key(&staging_key(upload_id, n)), None)
                .await?;
            while let Some(b) = body.next().await {
                let b = b?;
                seen += b.len() as u64;
                let dropped = skip.min(b.len() as u64);
                skip -= dropped;
                let b = &b[dropped as usize..];
                let kept = (len - written).min(b.len() as u64) as usize;
                file.write_all(&b[..kept]).await?;
                written += kept as u64;
            }
        }
        file.flush().await?;
        drop(file);
        if written != len || (slice.is_none() && seen != len) {
            return Err(StorageError::Io(std::io::Error::other(format!(
                "staged chunks {chunks:?} hold {seen} bytes, too few or many for {len}"
            ))));
        }
        let body = file_body(&path).await?;
        let checksum = self.settings.checksum.of_file(&path).await?;
        let part = (upload_id, number);
        let etag = self
            .send_part(bucket, key, part, len, body, checksum.clone())
            .await?;
        Ok((etag, checksum))
    }
}

/// `Content-Length: 0` on a request without a body. The SDK sends none on `UploadPartCopy`,
/// and Ceph's RADOS Gateway refuses such a PUT (411 MissingContentLength).
pub(super) fn empty_body_length(req: &mut aws_sdk_s3::config::http::HttpRequest) {
    req.headers_mut().insert("content-length", "0");
}
