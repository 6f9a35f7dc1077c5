//! Streamed puts: a body cut into exact-size parts, a bounded number in flight, aborted on
//! failure or when the request goes away.

use super::{client::SEND_RATE, error::s3_err, S3Store, StoreKey};
use crate::{
    cleanup::Cleanup,
    storage::{ByteStream, PutOptions, Result, StorageError},
};
use aws_sdk_s3::{
    primitives::ByteStream as S3Body,
    types::{CompletedPart as S3Part, StorageClass},
};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use std::sync::Arc;
use tokio::{sync::Semaphore, task::JoinSet};

pub(super) fn class(opts: &PutOptions) -> Option<StorageClass> {
    opts.storage_class.as_deref().map(StorageClass::from)
}

/// Part size for part `n` of a streamed upload of unknown length: the configured size, doubled
/// every 1250 parts, so 10000 parts reach far past the image size limit.
fn part_size(base: u64, n: u32) -> u64 {
    (base << ((n.saturating_sub(1)) / 1250).min(10)).min(5 << 30)
}

impl S3Store {
    /// Streams `body` to `key` (a store key): one `PutObject` when it fits in the first part,
    /// else a multipart upload in parts of `part_bytes` (growing for very large bodies), a few
    /// in flight. Returns the number of bytes stored.
    pub(super) async fn put_streamed(
        &self,
        bucket: &str,
        key: &StoreKey,
        mut body: ByteStream,
        opts: &PutOptions,
    ) -> Result<u64> {
        let s = self;
        let first_size = part_size(s.settings.part_bytes, 1) as usize;
        let mut filler = Filler::default();
        let (first, ended) = filler
            .fill(&mut body, first_size)
            .await
            .map_err(StorageError::Body)?;
        let total = first.len() as u64;
        if ended {
            s.put_small(bucket, key, first.freeze(), opts).await?;
            return Ok(total);
        }
        let upload_id = s.create_upload(bucket, key, opts).await?;
        // Aborted on failure, and also when this future is dropped mid-body (the client went
        // away): no multipart upload is left behind either way.
        let abort = {
            let (client, bucket, key, id) = (
                s.client.clone(),
                bucket.to_string(),
                key.clone(),
                upload_id.clone(),
            );
            Cleanup::new(async move {
                let aborted = client
                    .abort_multipart_upload()
                    .bucket(&bucket)
                    .key(&key)
                    .upload_id(&id)
                    .customize()
                    .config_override(S3Store::quick())
                    .send()
                    .await;
                if let Err(e) = aborted {
                    tracing::warn!(bucket, error = %s3_err(e), "could not abort an unfinished upload");
                }
            })
        };
        filler.ready = Some(first);
        let result = async {
            let (parts, size) = s
                .stream_parts(bucket, key, &upload_id, 1, filler, body)
                .await?;
            s.complete(bucket, key, &upload_id, parts)
                .await
                .map(|()| size)
        }
        .await;
        match result {
            Ok(_) => abort.disarm(),
            Err(_) => abort.run().await,
        }
        result
    }

    /// Deletes the object at `key` (a store key); a missing one is no error.
    pub(super) async fn delete_object(&self, bucket: &str, key: &StoreKey) -> Result<()> {
        match self
            .client
            .delete_object()
            .bucket(bucket)
            .key(key)
            .customize()
            .config_override(Self::quick())
            .send()
            .await
            .map_err(|e| self.err(e))
        {
            Ok(_) | Err(StorageError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// One `PutObject` of a body held in memory.
    pub(super) async fn put_small(
        &self,
        bucket: &str,
        key: &StoreKey,
        body: Bytes,
        opts: &PutOptions,
    ) -> Result<()> {
        let len = body.len() as i64;
        let c = self.settings.checksum;
        let (crc, sha) = c.fields(c.of_bytes(&body));
        let out = self
            .client
            .put_object()
            .bucket(bucket)
            .key(key)
            .set_storage_class(class(opts))
            .set_checksum_crc32_c(crc)
            .set_checksum_sha256(sha)
            .content_length(len)
            .body(S3Body::from(body))
            .customize()
            .config_override(Self::sized(len as u64, SEND_RATE))
            .send()
            .await
            .map_err(|e| self.class_err(e, opts))?;
        self.stored_etag(out.e_tag(), "PutObject")?;
        Ok(())
    }

    /// Part `n` of an open multipart upload from a buffer.
    async fn upload_bytes(
        &self,
        bucket: &str,
        key: &StoreKey,
        upload_id: &str,
        n: u32,
        body: Bytes,
    ) -> Result<S3Part> {
        let len = body.len() as u64;
        let c = self.settings.checksum;
        let checksum = c.of_bytes(&body);
        let body = S3Body::from(body);
        let etag = self
            .send_part(bucket, key, (upload_id, n), len, body, checksum.clone())
            .await?;
        Ok(c.part(n, Some(etag), checksum))
    }

    /// Streams `body` (after `prefilled`, a first part already read) into the open multipart
    /// upload as parts of at least `part_bytes`, with a bounded number in flight; returns the
    /// parts in order and the number of bytes sent.
    async fn stream_parts(
        &self,
        bucket: &str,
        key: &StoreKey,
        upload_id: &str,
        first: u32,
        mut filler: Filler,
        mut body: ByteStream,
    ) -> Result<(Vec<S3Part>, u64)> {
        let slots = Arc::new(Semaphore::new(self.settings.upload_concurrency.max(1)));
        let mut tasks: JoinSet<Result<S3Part>> = JoinSet::new();
        let mut n = first;
        let mut ended = false;
        let mut sent = 0u64;
        let mut parts = vec![];
        while !ended {
            let target = part_size(self.settings.part_bytes, n) as usize;
            let (chunk, end) = match filler.fill(&mut body, target).await {
                Ok(x) => x,
                Err(e) => {
                    tasks.abort_all();
                    return Err(StorageError::Body(e));
                }
            };
            ended = end;
            if chunk.is_empty() {
                break;
            }
            sent += chunk.len() as u64;
            let permit = slots.clone().acquire_owned().await.expect("semaphore open");
            let (me, bucket, key, upload_id) = (
                self.clone(),
                bucket.to_string(),
                key.clone(),
                upload_id.to_string(),
            );
            let number = n;
            tasks.spawn(async move {
                let _permit = permit;
                me.upload_bytes(&bucket, &key, &upload_id, number, chunk.freeze())
                    .await
            });
            n += 1;
            // Collect finished parts as we go so a failure stops the stream early.
            while let Some(done) = tasks.try_join_next() {
                parts.push(
                    done.map_err(|e| StorageError::Io(std::io::Error::other(e.to_string())))??,
                );
            }
        }
        while let Some(done) = tasks.join_next().await {
            parts.push(done.map_err(|e| StorageError::Io(std::io::Error::other(e.to_string())))??);
        }
        parts.sort_by_key(|p| p.part_number());
        Ok((parts, sent))
    }
}

/// Cuts a body into parts of an exact size, each in one buffer allocated once (growing
/// buffers would leave the allocator holding twice the memory).
#[derive(Default)]
pub struct Filler {
    /// A whole part read before, handed out first.
    pub(super) ready: Option<BytesMut>,
    /// What was read past the end of the previous part.
    carry: Option<Bytes>,
}

impl Filler {
    /// The next part (up to `target` bytes) and whether the body ended.
    pub(super) async fn fill(
        &mut self,
        body: &mut ByteStream,
        target: usize,
    ) -> std::io::Result<(BytesMut, bool)> {
        if let Some(part) = self.ready.take() {
            return Ok((part, false));
        }
        let mut part = BytesMut::with_capacity(target);
        while part.len() < target {
            let chunk = match self.carry.take() {
                Some(c) => c,
                None => match body.next().await {
                    Some(c) => c?,
                    None => return Ok((part, true)),
                },
            };
            let room = target - part.len();
            if chunk.len() > room {
                part.extend_from_slice(&chunk[..room]);
                self.carry = Some(chunk.slice(room..));
            } else {
                part.extend_from_slice(&chunk);
            }
        }
        Ok((part, false))
    }
}
