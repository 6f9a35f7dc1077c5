//! Reading objects: one GET, or a few ranged GETs at once in order ([`readahead`]); HEAD.

use super::{
    error::{outside, s3_err_at},
    readahead, S3Store, StoreKey,
};
use crate::storage::{ByteRange, ByteStream, Result};
use aws_sdk_s3::{error::SdkError, primitives::ByteStream as S3Body, Client};
use futures::StreamExt;

impl S3Store {
    /// Streams an object, or `range` of it. Longer than one read-ahead window, it is read as
    /// a few ranged GETs at once, in order ([`readahead`]).
    pub(super) async fn get_stream(
        &self,
        bucket: &str,
        key: &StoreKey,
        range: Option<ByteRange>,
    ) -> Result<ByteStream> {
        let window = self.readahead.window;
        let single =
            self.settings.readahead_bytes == 0 || range.is_some_and(|r| r.length() <= window);
        if single {
            return self.get_once(bucket, key, range).await;
        }
        let start = range.map_or(0, |r| r.start);
        let first_end = range.map_or(start + window - 1, |r| r.end.min(start + window - 1));
        let out = match self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .range(format!("bytes={start}-{first_end}"))
            .customize()
            .config_override(Self::quick())
            .send()
            .await
        {
            Ok(out) => out,
            // An empty object has no byte 0.
            Err(SdkError::ServiceError(se)) if se.raw().status().as_u16() == 416 => {
                return match range {
                    Some(r) => Err(outside(r)),
                    None => self.get_once(bucket, key, None).await,
                };
            }
            Err(e) => return Err(self.err(e)),
        };
        let total = out.content_range().and_then(readahead::total_of);
        // Stores clamp an end past the object; the contract refuses such a range instead.
        if let (Some(r), Some(t)) = (range, total) {
            if r.end >= t {
                return Err(outside(r));
            }
        }
        let Some(end) = range.map(|r| r.end).or(total.map(|t| t.saturating_sub(1))) else {
            // A store that ignored the range sent the whole object.
            return Ok(body_stream(out.body));
        };
        let end = total.map_or(end, |t| end.min(t.saturating_sub(1)));
        let first_end = first_end.min(end);
        let first = readahead::exact(body_stream(out.body), first_end - start + 1);
        if first_end >= end {
            return Ok(first);
        }
        let windows = Windows {
            client: self.client.clone(),
            endpoint: self.settings.endpoint.clone(),
            bucket: bucket.to_string(),
            key: key.clone(),
            etag: out.e_tag,
        };
        Ok(readahead::ordered(
            windows,
            self.readahead.clone(),
            first,
            first_end,
            end,
        ))
    }

    /// Streams an object, or `range` of it, with one GET.
    async fn get_once(
        &self,
        bucket: &str,
        key: &StoreKey,
        range: Option<ByteRange>,
    ) -> Result<ByteStream> {
        let out = match self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .set_range(range.map(|r| format!("bytes={}-{}", r.start, r.end)))
            .customize()
            .config_override(Self::quick())
            .send()
            .await
        {
            Ok(out) => out,
            Err(SdkError::ServiceError(se)) if se.raw().status().as_u16() == 416 => {
                return Err(range.map_or_else(|| self.err(SdkError::ServiceError(se)), outside));
            }
            Err(e) => return Err(self.err(e)),
        };
        // Stores clamp an end past the object (a shorter answer); the contract refuses it.
        if let Some(r) = range {
            if out.content_length().is_some_and(|n| n as u64 != r.length()) {
                return Err(outside(r));
            }
        }
        Ok(body_stream(out.body))
    }

    /// The size of the object at `key` (a store key), or `None` when there is none.
    pub(super) async fn head_object(&self, bucket: &str, key: &StoreKey) -> Result<Option<u64>> {
        match self
            .client
            .head_object()
            .bucket(bucket)
            .key(key)
            .customize()
            .config_override(Self::quick())
            .send()
            .await
        {
            Ok(o) => Ok(Some(o.content_length().unwrap_or(0) as u64)),
            Err(SdkError::ServiceError(se))
                if se.err().is_not_found() || se.raw().status().as_u16() == 404 =>
            {
                Ok(None)
            }
            Err(e) => Err(self.err(e)),
        }
    }
}

/// An SDK body as a stream of byte chunks.
pub(super) fn body_stream(body: S3Body) -> ByteStream {
    futures::stream::unfold(body, |mut b| async move {
        b.next()
            .await
            .map(|r| (r.map_err(std::io::Error::other), b))
    })
    .boxed()
}

/// The later windows of one download: ranged GETs of the object the first window came from
/// (`If-Match` its ETag).
#[derive(Clone)]
struct Windows {
    client: Client,
    endpoint: Option<String>,
    bucket: String,
    key: StoreKey,
    etag: Option<String>,
}

impl readahead::Fetch for Windows {
    async fn fetch(&self, start: u64, end: u64) -> Result<ByteStream> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .range(format!("bytes={start}-{end}"))
            .set_if_match(self.etag.clone())
            .customize()
            .config_override(S3Store::quick())
            .send()
            .await;
        match out {
            Ok(out) => Ok(body_stream(out.body)),
            Err(SdkError::ServiceError(se)) if se.raw().status().as_u16() == 412 => {
                Err(readahead::changed())
            }
            Err(e) => Err(s3_err_at(self.endpoint.as_deref(), e)),
        }
    }
}
