//! Downloads: the stored bytes (whole or one range), or a one-entry zip made on the fly.

use super::{caller::Caller, meter::Meter, validate, zipout, Error, Result, Service};
use crate::{
    db,
    storage::{ByteRange, ByteStream, StorageError},
};
use entity::{image, status::SlimStatus};
use futures::StreamExt;

/// A `Range: bytes=...` request, as sent (resolved against the size later).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// `bytes=a-` or `bytes=a-b`
    From { start: u64, end: Option<u64> },
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

impl RangeRequest {
    /// The inclusive byte range within an object of `size` bytes, if satisfiable.
    pub fn resolve(self, size: u64) -> Option<ByteRange> {
        match self {
            RangeRequest::From { start, end } => {
                if start >= size {
                    return None;
                }
                let end = end.map_or(size - 1, |e| e.min(size - 1));
                (end >= start).then_some(ByteRange { start, end })
            }
            RangeRequest::Suffix(0) => None,
            RangeRequest::Suffix(_) if size == 0 => None,
            RangeRequest::Suffix(n) => Some(ByteRange {
                start: size.saturating_sub(n),
                end: size - 1,
            }),
        }
    }
}

/// What a download serves, before any byte is read: its headers and validators (RFC 9110
/// section 8.8). The bytes of one image never change under one key, so the validators name
/// the image, the copy served (original or slimmed) and the form (plain or zipped).
pub struct Representation {
    /// Name the client should save it as.
    pub file_name: String,
    pub content_type: &'static str,
    /// Length of the whole representation in bytes.
    pub length: u64,
    /// A strong entity tag, quoted: `"<image id>.<o|s>.<size hex>.<crc32 hex>[.zip]"`.
    pub etag: String,
    /// When these bytes started to be served, in Unix seconds (`Last-Modified`).
    pub last_modified: i64,
    /// Whether `last_modified` is a strong validator (RFC 9110 section 8.8.2.2), which
    /// `If-Range` may match by date (section 13.1.5).
    pub last_modified_strong: bool,
    /// Lower-case hex SHA-256 of the representation, when known (the plain form only).
    pub sha256: Option<String>,
    /// Whether ranges are served (the plain form).
    pub ranges: bool,
    image_id: String,
    bucket: String,
    key: String,
    /// The size of the stored object in bytes.
    size: u64,
    zip: Option<zipout::ZipEntry>,
}

/// A download ready to stream.
pub struct Download {
    /// Length of `body`.
    pub length: u64,
    /// `Some` for a partial response: the range served and the full size.
    pub partial: Option<(ByteRange, u64)>,
    pub body: ByteStream,
}

/// The bytes a download of an image serves, as its record describes them: once slimmed, the
/// slimmed copy (under the original name).
struct Served {
    key: String,
    /// Bytes.
    size: u64,
    crc32: Option<u32>,
    /// Lower-case hex SHA-256, when recorded.
    sha256: Option<String>,
    /// When these bytes began to be served (Unix seconds).
    since: i64,
    /// Whether `since` is a strong validator (RFC 9110 section 8.8.2.2): what the image
    /// served did not change twice in that second (a slim that ended in the second of its
    /// upload did).
    since_strong: bool,
    /// `o` (the original) or `s` (the slimmed copy), for the ETag.
    copy: char,
}

impl Served {
    fn of(img: &image::Model) -> Self {
        match (img.slim_status, &img.slim_object_key, img.slim_size_bytes) {
            (SlimStatus::Slimmed, Some(k), Some(s)) => Served {
                key: k.clone(),
                size: s as u64,
                crc32: img.slim_crc32.map(|c| c as u32),
                sha256: img.slim_sha256.clone().or_else(|| img.sha256.clone()),
                since: img.slimmed_at.unwrap_or(img.updated_at),
                since_strong: img.slimmed_at.unwrap_or(img.updated_at) != img.created_at,
                copy: 's',
            },
            _ => Served {
                key: img.object_key.clone(),
                size: img.size_bytes as u64,
                crc32: img.crc32.map(|c| c as u32),
                sha256: img.original_sha256.clone().or_else(|| img.sha256.clone()),
                since: img.created_at,
                since_strong: true,
                copy: 'o',
            },
        }
    }
}

/// How long a download that found an image's bytes gone waits for the image's record to go
/// too (a delete in progress) before it reports the bytes missing.
const DELETE_SETTLES: std::time::Duration = std::time::Duration::from_secs(5);

impl Service {
    /// Describes the download of an image, plain or zipped, without reading it.
    pub async fn representation(
        &self,
        caller: &Caller,
        raw_id: &str,
        zip: bool,
    ) -> Result<Representation> {
        let img = self.image(caller, raw_id).await?;
        let Served {
            key,
            size,
            crc32,
            sha256,
            since,
            since_strong,
            copy,
        } = Served::of(&img);
        let crc32 = match crc32 {
            Some(c) => c,
            // Older records may lack it: one pass over the object, then remember it.
            None if zip => self.crc32_of(&img, &key).await?,
            None => 0,
        };
        let tag = format!("{}.{copy}.{size:x}.{crc32:08x}", img.id);
        if zip {
            let stem = validate::stem(&img.file_name);
            let (dos_date, dos_time) = zipout::dos_datetime(&img.upload_time);
            let entry = zipout::ZipEntry {
                name: format!("{stem}/{}", img.file_name),
                size,
                crc32,
                dos_date,
                dos_time,
            };
            return Ok(Representation {
                image_id: img.id,
                file_name: format!("{stem}.zip"),
                content_type: "application/zip",
                length: entry.length(),
                etag: format!("\"{tag}.zip\""),
                last_modified: since,
                last_modified_strong: since_strong,
                sha256: None,
                ranges: false,
                bucket: img.bucket,
                key,
                size,
                zip: Some(entry),
            });
        }
        Ok(Representation {
            image_id: img.id,
            file_name: img.file_name,
            content_type: "application/octet-stream",
            length: size,
            etag: format!("\"{tag}\""),
            last_modified: since,
            last_modified_strong: since_strong,
            sha256,
            ranges: true,
            bucket: img.bucket,
            key,
            size,
            zip: None,
        })
    }

    /// The CRC-32 of `key` (the image's original or slimmed bytes), computed in one pass;
    /// recorded when it is the original's.
    async fn crc32_of(&self, img: &image::Model, key: &str) -> Result<u32> {
        let meter = Meter::default();
        let body = self.stored(&img.id, &img.bucket, key, None).await?;
        let mut s = meter.wrap(body, u64::MAX);
        while let Some(chunk) = s.next().await {
            chunk?;
        }
        if key == img.object_key {
            db::images::set_crc32(&self.db, &img.id, meter.crc32()).await?;
        }
        Ok(meter.crc32())
    }

    /// The bytes of image `image_id` stored at `bucket`/`key` (or a range of them), held
    /// against a delete until the stream is dropped ([`Service::held_read`]): a download that
    /// started completes. Bytes found missing while the record goes away (within
    /// [`DELETE_SETTLES`]) belong to an image being deleted, not found (404) as it is a
    /// moment later; bytes missing from a record that stays are `OBJECT_MISSING` (500), a
    /// fault of the store.
    async fn stored(
        &self,
        image_id: &str,
        bucket: &str,
        key: &str,
        range: Option<ByteRange>,
    ) -> Result<ByteStream> {
        let get = async {
            match self.store.get(bucket, key, range).await {
                Err(StorageError::NotFound) => Err(self.missing(image_id).await),
                other => Ok(other?),
            }
        };
        self.held_read(image_id, bucket, key, get).await
    }

    /// Why the bytes of image `image_id` are missing: the image is gone (or goes within
    /// [`DELETE_SETTLES`]), else the store lost them.
    async fn missing(&self, image_id: &str) -> Error {
        let until = std::time::Instant::now() + DELETE_SETTLES;
        loop {
            match db::images::find(&self.db, image_id).await {
                Err(e) => return e.into(),
                Ok(None) => return Error::ImageNotFound(image_id.to_string()),
                Ok(Some(_)) if std::time::Instant::now() >= until => {
                    return StorageError::NotFound.into()
                }
                Ok(Some(_)) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
    }

    /// Opens the bytes of `repr`, or one range of them (plain form only).
    pub async fn open(
        &self,
        repr: Representation,
        range: Option<RangeRequest>,
    ) -> Result<Download> {
        if let Some(entry) = repr.zip {
            let data = self
                .stored(&repr.image_id, &repr.bucket, &repr.key, None)
                .await?;
            let (length, body) = entry.stream(data);
            return Ok(Download {
                length,
                partial: None,
                body,
            });
        }
        let size = repr.size;
        let range = match range {
            None => None,
            Some(r) => Some(r.resolve(size).ok_or(Error::RangeNotSatisfiable { size })?),
        };
        let body = self
            .stored(&repr.image_id, &repr.bucket, &repr.key, range)
            .await?;
        Ok(Download {
            length: range.map_or(size, |r| r.length()),
            partial: range.map(|r| (r, size)),
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::RangeRequest::*;

    #[test]
    fn ranges_resolve_like_rfc_9110() {
        let from = |start, end| From { start, end };
        let cases = [
            (from(0, Some(9)), 100, Some((0, 9))),
            (from(90, None), 100, Some((90, 99))),
            (from(90, Some(500)), 100, Some((90, 99))),
            (Suffix(10), 100, Some((90, 99))),
            (Suffix(1000), 100, Some((0, 99))),
            (from(100, None), 100, None),
            (Suffix(0), 100, None),
            (Suffix(5), 0, None),
            // Positions past u64 (saturated by the parser).
            (from(u64::MAX, None), 100, None),
            (from(0, Some(u64::MAX)), 100, Some((0, 99))),
            (Suffix(u64::MAX), 100, Some((0, 99))),
        ];
        for (asked, size, want) in cases {
            let got = asked.resolve(size).map(|r| (r.start, r.end));
            assert_eq!(got, want, "{asked:?} of {size} bytes");
        }
    }
}
