//! The checksum every put and part carries (S3's additional checksums), computed here and sent
//! as plain headers.

use super::Result;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedPart as S3Part};

/// The checksum sent with every `PutObject` and `UploadPart` (S3's additional checksums:
/// `x-amz-checksum-crc32c` or `-sha256`, computed by the SDK while it sends), which the store
/// verifies before it accepts the bytes. A multipart upload declares it when it is created and
/// hands each part's value back at completion. `Off` for stores that reject these headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum S3Checksum {
    #[default]
    Crc32c,
    Sha256,
    Off,
}

impl S3Checksum {
    pub(super) fn algorithm(self) -> Option<ChecksumAlgorithm> {
        match self {
            S3Checksum::Crc32c => Some(ChecksumAlgorithm::Crc32C),
            S3Checksum::Sha256 => Some(ChecksumAlgorithm::Sha256),
            S3Checksum::Off => None,
        }
    }

    /// The checksum of `bytes` (base64, as S3 headers carry it).
    pub(super) fn of_bytes(self, bytes: &[u8]) -> Option<String> {
        use base64::{engine::general_purpose::STANDARD as B64, Engine};
        use sha2::Digest;
        match self {
            S3Checksum::Crc32c => Some(B64.encode(crc32c::crc32c(bytes).to_be_bytes())),
            S3Checksum::Sha256 => Some(B64.encode(sha2::Sha256::digest(bytes))),
            S3Checksum::Off => None,
        }
    }

    /// The checksum of a local file (one read, off the async threads).
    pub(super) async fn of_file(self, path: &std::path::Path) -> Result<Option<String>> {
        use crate::domain::integrity::{digest_file, Wanted};
        use base64::{engine::general_purpose::STANDARD as B64, Engine};
        let wanted = match self {
            S3Checksum::Off => return Ok(None),
            S3Checksum::Crc32c => Wanted {
                crc32c: true,
                ..Default::default()
            },
            S3Checksum::Sha256 => Wanted {
                sha256: true,
                ..Default::default()
            },
        };
        let path = path.to_path_buf();
        let d = tokio::task::spawn_blocking(move || digest_file(&path, wanted))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))??;
        Ok(match self {
            S3Checksum::Crc32c => d.crc32c.map(|c| B64.encode(c.to_be_bytes())),
            _ => d.sha256.map(|h| B64.encode(h)),
        })
    }

    /// A checksum as the (crc32c, sha256) request fields.
    pub(super) fn fields(self, value: Option<String>) -> (Option<String>, Option<String>) {
        match self {
            S3Checksum::Crc32c => (value, None),
            S3Checksum::Sha256 => (None, value),
            S3Checksum::Off => (None, None),
        }
    }

    /// The value of this algorithm among those a response carries.
    pub(super) fn pick(self, crc32c: Option<&str>, sha256: Option<&str>) -> Option<String> {
        match self {
            S3Checksum::Crc32c => crc32c.map(str::to_string),
            S3Checksum::Sha256 => sha256.map(str::to_string),
            S3Checksum::Off => None,
        }
    }

    /// A completed part with its etag and (this algorithm's) checksum.
    pub(super) fn part(
        self,
        number: u32,
        etag: Option<String>,
        checksum: Option<String>,
    ) -> S3Part {
        let b = S3Part::builder().part_number(number as i32).set_e_tag(etag);
        match self {
            S3Checksum::Crc32c => b.set_checksum_crc32_c(checksum),
            S3Checksum::Sha256 => b.set_checksum_sha256(checksum),
            S3Checksum::Off => b,
        }
        .build()
    }
}
