//! How a file is cut into chunks, and the identifier its chunked upload goes by.
//!
//! Field names follow resumable.js / simple-uploader.js (`identifier`, `chunkNumber` from 1,
//! `totalChunks`, `chunkSize`, `totalSize`, `currentChunkSize`), which the service reads.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The most chunks one upload may have (the service accepts chunk numbers 1..=10000).
pub const MAX_CHUNKS: u64 = 10_000;
/// Chunk sizes raised to fit [`MAX_CHUNKS`] are rounded up to a multiple of this (1 MiB).
const CHUNK_ROUNDING: u64 = 1 << 20;
/// Longest identifier the service accepts.
const MAX_IDENTIFIER: usize = 128;
/// Characters of the file name kept in the identifier (for people reading `fsctl cancel`).
const NAME_IN_IDENTIFIER: usize = 48;

/// The chunk layout of one file: every chunk `chunk_size` bytes but the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPlan {
    /// The file's length in bytes.
    pub total_size: u64,
    /// Bytes per chunk (the last one may be shorter).
    pub chunk_size: u64,
    /// Number of chunks, at least 1 (an empty file is one empty chunk).
    pub total_chunks: u64,
}

impl ChunkPlan {
    /// Plans `total_size` bytes in chunks of `requested` bytes, raising the chunk size (to a
    /// whole MiB) when that would take more than [`MAX_CHUNKS`] chunks. `requested` > 0.
    pub fn new(total_size: u64, requested: u64) -> ChunkPlan {
        let requested = requested.max(1);
        let mut chunk_size = requested;
        if total_size.div_ceil(chunk_size) > MAX_CHUNKS {
            chunk_size = total_size.div_ceil(MAX_CHUNKS).div_ceil(CHUNK_ROUNDING) * CHUNK_ROUNDING;
        }
        let total_chunks = total_size.div_ceil(chunk_size).max(1);
        ChunkPlan {
            total_size,
            chunk_size,
            total_chunks,
        }
    }

    /// Length in bytes of chunk `n` (1-based; 0 for numbers past the end).
    pub fn chunk_len(&self, n: u64) -> u64 {
        if n == 0 || n > self.total_chunks {
            return 0;
        }
        let start = (n - 1) * self.chunk_size;
        self.chunk_size.min(self.total_size - start)
    }
}

/// What identifies one upload of one file: the file as it is on disk (not its content: files
/// of hundreds of GiB are not read twice), and what the upload is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// The canonical (absolute, links resolved) path.
    pub path: PathBuf,
    /// Length in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch (negative before it).
    pub mtime_ns: i128,
}

impl Fingerprint {
    /// Reads the fingerprint of the regular file at `path`.
    pub fn of(path: &Path) -> std::io::Result<Fingerprint> {
        let path = std::fs::canonicalize(path)?;
        let meta = std::fs::metadata(&path)?;
        if !meta.is_file() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        let mtime_ns = match meta.modified()?.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => d.as_nanos() as i128,
            Err(e) => -(e.duration().as_nanos() as i128),
        };
        Ok(Fingerprint {
            path,
            size: meta.len(),
            mtime_ns,
        })
    }
}

/// The identifier of the chunked upload of `file` for `user` into tier `priority` with
/// chunks of `chunk_size`: `fsctl-<name>-<hash>`, where `<name>` is the file name reduced to
/// the identifier charset `[A-Za-z0-9._-]` and `<hash>` 32 hex digits of SHA-256 over the
/// canonical path, size, modification time, user, priority and chunk size. A rerun on the
/// unchanged file finds its session; a changed file (size or mtime), another user or another
/// chunk layout gets a new one.
pub fn identifier(file: &Fingerprint, user: &str, priority: &str, chunk_size: u64) -> String {
    let mut h = Sha256::new();
    h.update(file.path.as_os_str().as_encoded_bytes());
    for part in [
        file.size.to_string(),
        file.mtime_ns.to_string(),
        user.to_string(),
        priority.to_string(),
        chunk_size.to_string(),
    ] {
        h.update([0u8]);
        h.update(part.as_bytes());
    }
    let hash = hex::encode(&h.finalize()[..16]);
    let name: String = file
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(NAME_IN_IDENTIFIER)
        .collect();
    let id = format!("fsctl-{name}-{hash}");
    debug_assert!(id.len() <= MAX_IDENTIFIER);
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(path: &str, size: u64, mtime_ns: i128) -> Fingerprint {
        Fingerprint {
            path: PathBuf::from(path),
            size,
            mtime_ns,
        }
    }

    fn valid(id: &str) -> bool {
        (1..=MAX_IDENTIFIER).contains(&id.len())
            && id != "."
            && id != ".."
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    }

    #[test]
    fn identifier_is_stable_and_valid() {
        let f = fp("/data/disk.qcow2", 10, 5);
        let a = identifier(&f, "me", "0", 1 << 20);
        assert_eq!(a, identifier(&f.clone(), "me", "0", 1 << 20));
        assert!(a.starts_with("fsctl-disk.qcow2-"), "{a}");
        assert!(valid(&a), "{a}");
    }

    #[test]
    fn identifier_changes_with_what_the_upload_is() {
        let base = identifier(&fp("/d/a.img", 10, 5), "me", "0", 1 << 20);
        for other in [
            identifier(&fp("/d/b.img", 10, 5), "me", "0", 1 << 20),
            identifier(&fp("/e/a.img", 10, 5), "me", "0", 1 << 20),
            identifier(&fp("/d/a.img", 11, 5), "me", "0", 1 << 20),
            identifier(&fp("/d/a.img", 10, 6), "me", "0", 1 << 20),
            identifier(&fp("/d/a.img", 10, 5), "you", "0", 1 << 20),
            identifier(&fp("/d/a.img", 10, 5), "me", "1", 1 << 20),
            identifier(&fp("/d/a.img", 10, 5), "me", "0", 2 << 20),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn identifier_of_hostile_names_stays_in_the_charset() {
        for name in [
            "/d/ünïcødé disk (1).qcow2",
            "/d/a;rm -rf b.img",
            &format!("/d/{}.img", "x".repeat(300)),
            "/d/..",
            "/",
        ] {
            let id = identifier(&fp(name, 1, 1), "u\0ser", "", 1);
            assert!(valid(&id), "{name}: {id}");
        }
    }

    #[test]
    fn plan_cuts_chunks() {
        let p = ChunkPlan::new(10 << 20, 4 << 20);
        assert_eq!(p.total_chunks, 3);
        assert_eq!(p.chunk_len(1), 4 << 20);
        assert_eq!(p.chunk_len(3), 2 << 20);
        assert_eq!(p.chunk_len(4), 0);
        assert_eq!(p.chunk_len(0), 0);
        assert_eq!(ChunkPlan::new(8 << 20, 4 << 20).total_chunks, 2);
        assert_eq!(ChunkPlan::new(0, 4 << 20).total_chunks, 1);
    }

    #[test]
    fn plan_raises_the_chunk_size_past_ten_thousand_chunks() {
        // 500 GiB in 50 MiB chunks would be 10240 chunks.
        let p = ChunkPlan::new(500 << 30, 50 << 20);
        assert!(p.total_chunks <= MAX_CHUNKS, "{p:?}");
        assert_eq!(p.chunk_size % (1 << 20), 0);
        assert!(p.chunk_size > 50 << 20);
        let sum: u64 = (1..=p.total_chunks).map(|n| p.chunk_len(n)).sum();
        assert_eq!(sum, 500 << 30);
    }
}
