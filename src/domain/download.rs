//! Downloads: the stored bytes (whole or one range), or a one-entry zip made on the fly.

use super::{meter::Meter, validate, zipout, Error, Result, Service};
use crate::{
    db,
    storage::{ByteRange, ByteStream},
};
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

/// A download ready to stream.
pub struct Download {
    /// Name the client should save it as.
    pub file_name: String,
    pub content_type: &'static str,
    /// Length of `body`.
    pub length: u64,
    /// `Some` for a partial response: the range served and the full size.
    pub partial: Option<(ByteRange, u64)>,
    pub body: ByteStream,
}

impl Service {
    /// Prepares the download of an image: plain (optionally one range) or zipped.
    pub async fn download(
        &self,
        raw_id: &str,
        zip: bool,
        range: Option<RangeRequest>,
    ) -> Result<Download> {
        let img = self.image(raw_id).await?;
        // Once slimmed, the slimmed copy is what is served, under the original name.
        let (key, size, crc32) = match (img.slim_status, &img.slim_object_key, img.slim_size_bytes)
        {
            (2, Some(k), Some(s)) => (k.clone(), s as u64, img.slim_crc32),
            _ => (img.object_key.clone(), img.size_bytes as u64, img.crc32),
        };
        if zip {
            let crc32 = match crc32 {
                Some(c) => c as u32,
                None => {
                    // Older records may lack it: one pass over the object, then remember it.
                    let meter = Meter::default();
                    let mut s =
                        meter.wrap(self.store.get(&img.bucket, &key, None).await?, u64::MAX);
                    while let Some(chunk) = s.next().await {
                        chunk?;
                    }
                    if key == img.object_key {
                        db::images::set_crc32(&self.db, &img.id, meter.crc32()).await?;
                    }
                    meter.crc32()
                }
            };
            let stem = validate::stem(&img.file_name);
            let (dos_date, dos_time) = zipout::dos_datetime(&img.upload_time);
            let entry = zipout::ZipEntry {
                name: format!("{stem}/{}", img.file_name),
                size,
                crc32,
                dos_date,
                dos_time,
            };
            let data = self.store.get(&img.bucket, &key, None).await?;
            let (length, body) = entry.stream(data);
            return Ok(Download {
                file_name: format!("{stem}.zip"),
                content_type: "application/zip",
                length,
                partial: None,
                body,
            });
        }
        let range = match range {
            None => None,
            Some(r) => Some(r.resolve(size).ok_or(Error::RangeNotSatisfiable { size })?),
        };
        let body = self.store.get(&img.bucket, &key, range).await?;
        Ok(Download {
            file_name: img.file_name,
            content_type: "application/octet-stream",
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
        assert_eq!(
            From {
                start: 0,
                end: Some(9)
            }
            .resolve(100)
            .map(|r| (r.start, r.end)),
            Some((0, 9))
        );
        assert_eq!(
            From {
                start: 90,
                end: None
            }
            .resolve(100)
            .map(|r| (r.start, r.end)),
            Some((90, 99))
        );
        assert_eq!(
            From {
                start: 90,
                end: Some(500)
            }
            .resolve(100)
            .map(|r| (r.start, r.end)),
            Some((90, 99))
        );
        assert_eq!(
            Suffix(10).resolve(100).map(|r| (r.start, r.end)),
            Some((90, 99))
        );
        assert_eq!(
            Suffix(1000).resolve(100).map(|r| (r.start, r.end)),
            Some((0, 99))
        );
        assert!(From {
            start: 100,
            end: None
        }
        .resolve(100)
        .is_none());
        assert!(Suffix(0).resolve(100).is_none());
        assert!(Suffix(5).resolve(0).is_none());
    }
}
