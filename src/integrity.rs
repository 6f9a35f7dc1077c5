//! Checksums clients declare, and digests computed while bytes stream past.
//!
//! Declared forms: form fields `md5:<hex>` | `sha256:<hex>` | `crc32c:<hex>`; the headers
//! `Content-MD5` (base64 of the 16 bytes, RFC 1864), `Repr-Digest` / `Content-Digest`
//! (`sha-256=:<base64>:`, RFC 9530) and `Digest` (`SHA-256=<base64>`, `MD5=<base64>`,
//! RFC 3230). Digests of other algorithms in the digest headers are ignored, as RFC 9530
//! section 3 lets a recipient do.

use crate::awslc_md5::Md5;
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use md5::Digest as _;
use sha2::Sha256;
use std::{fmt, path::Path};

/// A hash function the service computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Md5,
    Sha256,
    /// CRC-32C (Castagnoli), as S3's `x-amz-checksum-crc32c`.
    Crc32c,
}

impl Algorithm {
    /// The prefix of the `algorithm:hex` form.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "md5",
            Algorithm::Sha256 => "sha256",
            Algorithm::Crc32c => "crc32c",
        }
    }

    fn digest_len(self) -> usize {
        match self {
            Algorithm::Md5 => 16,
            Algorithm::Sha256 => 32,
            Algorithm::Crc32c => 4,
        }
    }
}

/// A checksum a client declared: an algorithm and the digest bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    pub algorithm: Algorithm,
    pub digest: Vec<u8>,
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), hex::encode(&self.digest))
    }
}

impl Checksum {
    fn new(algorithm: Algorithm, digest: Vec<u8>, what: &str) -> Result<Self, String> {
        if digest.len() != algorithm.digest_len() {
            return Err(format!(
                "{what}: a {} digest has {} bytes, not {}",
                algorithm.name(),
                algorithm.digest_len(),
                digest.len()
            ));
        }
        Ok(Checksum { algorithm, digest })
    }

    /// Parses `md5:<hex>`, `sha256:<hex>` or `crc32c:<hex>` (algorithm case-insensitive),
    /// allowing only the algorithms in `allowed`. `field` names the field in messages.
    pub fn parse_field(value: &str, field: &str, allowed: &[Algorithm]) -> Result<Self, String> {
        let forms: Vec<String> = allowed
            .iter()
            .map(|a| format!("{}:<hex>", a.name()))
            .collect();
        let bad = || format!("{field} must be {}", forms.join(" or "));
        let (alg, hex_digest) = value.trim().split_once(':').ok_or_else(bad)?;
        let algorithm = allowed
            .iter()
            .copied()
            .find(|a| a.name().eq_ignore_ascii_case(alg.trim()))
            .ok_or_else(bad)?;
        let digest = hex::decode(hex_digest.trim()).map_err(|_| bad())?;
        Checksum::new(algorithm, digest, field)
    }

    /// Parses a `Content-MD5` header: base64 of the 16 digest bytes (RFC 1864).
    pub fn parse_content_md5(value: &str) -> Result<Self, String> {
        let bad = || {
            "Content-MD5 must be the base64 of the 16-byte MD5 digest (24 characters, not hex)"
                .to_string()
        };
        let digest = B64.decode(value.trim()).map_err(|_| bad())?;
        if digest.len() != 16 {
            return Err(bad());
        }
        Checksum::new(Algorithm::Md5, digest, "Content-MD5")
    }

    /// Parses a `Repr-Digest`, `Content-Digest` (RFC 9530: `sha-256=:<base64>:`) or `Digest`
    /// (RFC 3230: `SHA-256=<base64>`) header: the checksums of the algorithms known here.
    pub fn parse_digest_header(header: &str, value: &str) -> Result<Vec<Self>, String> {
        let mut out = vec![];
        let malformed = || {
            let example = match header {
                "digest" => "SHA-256=<base64>",
                _ => "sha-256=:<base64>:",
            };
            format!("{header} must be a list of algorithm=digest, e.g. {example}")
        };
        // An algorithm is a token (RFC 3230) or a structured-field key (RFC 8941): one that is
        // neither is a malformed header, not an algorithm unknown here.
        let is_name = |a: &str| {
            !a.is_empty()
                && a.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"-_.*+".contains(&c))
        };
        for member in value.split(',') {
            let Some((alg, v)) = member.split_once('=').filter(|(a, _)| is_name(a.trim())) else {
                return Err(malformed());
            };
            let algorithm = match alg.trim().to_ascii_lowercase().as_str() {
                "sha-256" => Algorithm::Sha256,
                "md5" => Algorithm::Md5,
                _ => continue,
            };
            // RFC 9530 wraps the base64 in colons (a structured-field byte sequence); RFC 3230
            // does not. Parameters (`;...`) are not part of the value.
            let v = v.split(';').next().unwrap_or("").trim();
            let v = v
                .strip_prefix(':')
                .and_then(|s| s.strip_suffix(':'))
                .unwrap_or(v);
            let digest = B64
                .decode(v)
                .map_err(|_| format!("{header}: the {} digest is not base64", algorithm.name()))?;
            out.push(Checksum::new(algorithm, digest, header)?);
        }
        Ok(out)
    }

    /// The checksums declared in request headers (`name`, `value` pairs; names in any case).
    pub fn from_headers<'a>(
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Vec<Self>, String> {
        let mut out = vec![];
        for (name, value) in headers {
            match name.to_ascii_lowercase().as_str() {
                "content-md5" => out.push(Checksum::parse_content_md5(value)?),
                h @ ("repr-digest" | "content-digest" | "digest") => {
                    out.extend(Checksum::parse_digest_header(h, value)?)
                }
                _ => {}
            }
        }
        Ok(out)
    }
}

/// Which digests to compute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wanted {
    pub md5: bool,
    pub sha256: bool,
    pub crc32c: bool,
}

impl Wanted {
    /// Both digests recorded for an image (MD5 for the API's `checksum`, SHA-256 for
    /// `sha256` and `Repr-Digest`).
    pub const IMAGE: Wanted = Wanted {
        md5: true,
        sha256: true,
        crc32c: false,
    };

    /// What an upload always computes while the bytes stream in: SHA-256 (several times faster
    /// than MD5 on CPUs with SHA extensions). The domain adds MD5 where the image's first
    /// check could not record it cheaply (an S3 store).
    pub const STORED: Wanted = Wanted {
        md5: false,
        sha256: true,
        crc32c: false,
    };

    /// The digests `checksums` need.
    pub fn for_checksums<'a>(checksums: impl IntoIterator<Item = &'a Checksum>) -> Self {
        let mut w = Wanted::default();
        for c in checksums {
            w.add(c.algorithm);
        }
        w
    }

    pub fn add(&mut self, a: Algorithm) {
        match a {
            Algorithm::Md5 => self.md5 = true,
            Algorithm::Sha256 => self.sha256 = true,
            Algorithm::Crc32c => self.crc32c = true,
        }
    }

    pub fn has(&self, a: Algorithm) -> bool {
        match a {
            Algorithm::Md5 => self.md5,
            Algorithm::Sha256 => self.sha256,
            Algorithm::Crc32c => self.crc32c,
        }
    }

    /// Whether every digest `needed` asks for is among these.
    pub fn covers(&self, needed: Wanted) -> bool {
        (!needed.md5 || self.md5)
            && (!needed.sha256 || self.sha256)
            && (!needed.crc32c || self.crc32c)
    }

    pub fn any(&self) -> bool {
        self.md5 || self.sha256 || self.crc32c
    }
}

/// Digests being computed over bytes fed in order.
///
/// MD5 and SHA-256 together cost about twice what one does, and both are wanted for every
/// image. Once more than [`PARALLEL_FROM`] bytes have come, each moves to a thread of its own
/// (fed the same refcounted buffers through a queue of at most [`QUEUE_BYTES`]) and only
/// CRC-32C stays on the caller's: a pass takes about as long as its slowest digest (MD5), and a caller on an async
/// runtime's worker (a request body arriving) is not held up by hashing.
#[derive(Default)]
pub struct Hasher {
    md5: Lane<Md5>,
    sha256: Lane<Sha256>,
    crc32c: Option<u32>,
    fed: u64,
}

/// Bytes hashed on the caller's thread before the digests move to their own (small bodies
/// never pay for a thread).
pub const PARALLEL_FROM: u64 = 4 << 20;

/// Bytes queued for a digest's thread before the caller waits for it (one buffer of any size
/// when none is queued). Bounded in bytes, not buffers: 32 uploads whose bodies arrive in
/// buffers of a few hundred KiB each held 16 of them per digest, and the server's peak RSS
/// under the load test passed 256 MiB.
pub const QUEUE_BYTES: usize = 2 << 20;

/// The bytes queued for a digest's thread, and the caller waiting for room.
#[derive(Default)]
struct Backlog {
    queued: std::sync::Mutex<usize>,
    drained: std::sync::Condvar,
}

impl Backlog {
    /// Waits until `len` more bytes fit (or nothing is queued), then counts them.
    fn admit(&self, len: usize) {
        let mut queued = self.queued.lock().expect("backlog lock");
        while *queued > 0 && *queued + len > QUEUE_BYTES {
            queued = self.drained.wait(queued).expect("backlog lock");
        }
        *queued += len;
    }

    /// `len` bytes were hashed.
    fn release(&self, len: usize) {
        *self.queued.lock().expect("backlog lock") -= len;
        self.drained.notify_one();
    }
}

/// Where one digest is computed: not at all, on the caller's thread, or on a thread of its
/// own fed through a bounded queue (which hands the state back when the queue closes).
#[derive(Default)]
enum Lane<D> {
    #[default]
    Off,
    Inline(D),
    Thread {
        queue: std::sync::mpsc::Sender<bytes::Bytes>,
        backlog: std::sync::Arc<Backlog>,
        done: std::thread::JoinHandle<D>,
    },
}

impl<D: md5::Digest + Clone + Send + 'static> Lane<D> {
    fn new(wanted: bool) -> Self {
        match wanted {
            true => Lane::Inline(D::new()),
            false => Lane::Off,
        }
    }

    fn on_thread(&self) -> bool {
        matches!(self, Lane::Thread { .. })
    }

    fn feed(&mut self, bytes: &[u8], owned: Option<&bytes::Bytes>) {
        match self {
            Lane::Off => {}
            Lane::Inline(h) => h.update(bytes),
            Lane::Thread { queue, backlog, .. } => {
                // Copied by the caller once for every lane on a thread.
                let owned = owned
                    .cloned()
                    .unwrap_or_else(|| bytes::Bytes::copy_from_slice(bytes));
                backlog.admit(owned.len());
                // The thread only ends when the queue's sender is dropped.
                queue.send(owned).expect("the digest's thread runs");
            }
        }
    }

    /// Moves the digest (as far as it got) to a thread of its own named `name`.
    fn go_parallel(&mut self, name: &str) {
        let Lane::Inline(h) = self else {
            return;
        };
        let mut moved = h.clone();
        let (queue, rx) = std::sync::mpsc::channel::<bytes::Bytes>();
        let backlog = std::sync::Arc::new(Backlog::default());
        let drained = backlog.clone();
        let spawned = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                for b in rx {
                    moved.update(&b);
                    drained.release(b.len());
                }
                moved
            });
        match spawned {
            Ok(done) => {
                *self = Lane::Thread {
                    queue,
                    backlog,
                    done,
                }
            }
            // No thread to be had (a process at its limit): it stays on the caller's.
            Err(e) => tracing::debug!(error = %e, digest = name, "hashing on the caller's thread"),
        }
    }

    fn finish(self) -> Option<D> {
        match self {
            Lane::Off => None,
            Lane::Inline(h) => Some(h),
            Lane::Thread { queue, done, .. } => {
                drop(queue);
                Some(done.join().expect("a digest's thread does not panic"))
            }
        }
    }
}

impl Hasher {
    pub fn new(w: Wanted) -> Self {
        Hasher {
            md5: Lane::new(w.md5),
            sha256: Lane::new(w.sha256),
            crc32c: w.crc32c.then_some(0),
            fed: 0,
        }
    }

    /// Feeds bytes (copied once when the digests run on their own threads; see
    /// [`Hasher::update_bytes`]).
    pub fn update(&mut self, bytes: &[u8]) {
        self.feed(bytes, None);
    }

    /// Feeds a buffer without copying it.
    pub fn update_bytes(&mut self, bytes: bytes::Bytes) {
        self.feed(&bytes.clone(), Some(bytes));
    }

    fn feed(&mut self, bytes: &[u8], owned: Option<bytes::Bytes>) {
        self.fed += bytes.len() as u64;
        if self.fed > PARALLEL_FROM {
            self.md5.go_parallel("md5");
            self.sha256.go_parallel("sha256");
        }
        let owned = match owned {
            None if self.md5.on_thread() || self.sha256.on_thread() => {
                Some(bytes::Bytes::copy_from_slice(bytes))
            }
            owned => owned,
        };
        self.sha256.feed(bytes, owned.as_ref());
        self.md5.feed(bytes, owned.as_ref());
        if let Some(c) = &mut self.crc32c {
            *c = crc32c::crc32c_append(*c, bytes);
        }
    }

    pub fn finish(self) -> Digests {
        Digests {
            md5: self.md5.finish().map(|h| h.finalize().into()),
            sha256: self.sha256.finish().map(|h| h.finalize().into()),
            crc32c: self.crc32c,
        }
    }
}

/// Computed digests (those that were wanted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Digests {
    pub md5: Option<[u8; 16]>,
    pub sha256: Option<[u8; 32]>,
    pub crc32c: Option<u32>,
}

impl Digests {
    pub fn md5_hex(&self) -> Option<String> {
        self.md5.map(hex::encode)
    }

    pub fn sha256_hex(&self) -> Option<String> {
        self.sha256.map(hex::encode)
    }

    /// Whether the digest of `a` was computed.
    pub fn has(&self, a: Algorithm) -> bool {
        self.get(a).is_some()
    }

    /// Takes every digest `other` has that these lack.
    pub fn fill_from(&mut self, other: Digests) {
        self.md5 = self.md5.or(other.md5);
        self.sha256 = self.sha256.or(other.sha256);
        self.crc32c = self.crc32c.or(other.crc32c);
    }

    fn get(&self, a: Algorithm) -> Option<Vec<u8>> {
        match a {
            Algorithm::Md5 => self.md5.map(|d| d.to_vec()),
            Algorithm::Sha256 => self.sha256.map(|d| d.to_vec()),
            Algorithm::Crc32c => self.crc32c.map(|c| c.to_be_bytes().to_vec()),
        }
    }

    /// Checks every declared checksum; the message names the first that does not match.
    /// A checksum whose digest was not computed is a bug of the caller.
    pub fn verify(&self, declared: &[Checksum], what: &str) -> Result<(), String> {
        for c in declared {
            let Some(got) = self.get(c.algorithm) else {
                return Err(format!("{} was not computed", c.algorithm.name()));
            };
            if got != c.digest {
                return Err(format!(
                    "{what} does not match its checksum: {} {} was declared, {} was received",
                    c.algorithm.name(),
                    hex::encode(&c.digest),
                    hex::encode(&got)
                ));
            }
        }
        Ok(())
    }
}

/// Digests of a whole local file, in one pass (blocking).
pub fn digest_file(path: &Path, w: Wanted) -> std::io::Result<Digests> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = Hasher::new(w);
    loop {
        let mut buf = bytes::BytesMut::zeroed(1 << 20);
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finish());
        }
        buf.truncate(n);
        h.update_bytes(buf.freeze());
    }
}

/// The digests `w` asks for, over all of `body` (read as it comes, nothing kept).
pub async fn digest_stream(
    mut body: crate::storage::ByteStream,
    w: Wanted,
) -> std::io::Result<Digests> {
    use futures::StreamExt;
    let mut h = Hasher::new(w);
    while let Some(block) = body.next().await {
        h.update_bytes(block?);
    }
    Ok(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Algorithm; 3] = [Algorithm::Md5, Algorithm::Sha256, Algorithm::Crc32c];

    fn digests(bytes: &[u8]) -> Digests {
        let mut h = Hasher::new(Wanted {
            md5: true,
            sha256: true,
            crc32c: true,
        });
        h.update(bytes);
        h.finish()
    }

    /// Past `PARALLEL_FROM` SHA-256 runs on its own thread: the digests are those of one
    /// thread, whatever the piece sizes and however they are fed.
    #[test]
    fn digests_on_two_threads_are_those_of_one() {
        let data: Vec<u8> = (0..(PARALLEL_FROM as usize * 3 + 12345))
            .map(|i| (i * 7 % 253) as u8)
            .collect();
        let want = {
            use sha2::Digest as _;
            (
                <[u8; 16]>::from(Md5::digest(&data)),
                <[u8; 32]>::from(Sha256::digest(&data)),
            )
        };
        for piece in [1 << 20, 65_537, PARALLEL_FROM as usize + 1, data.len()] {
            let mut h = Hasher::new(Wanted::IMAGE);
            for (i, c) in data.chunks(piece).enumerate() {
                match i % 2 {
                    0 => h.update(c),
                    _ => h.update_bytes(bytes::Bytes::copy_from_slice(c)),
                }
            }
            let d = h.finish();
            assert_eq!(
                (d.md5.unwrap(), d.sha256.unwrap()),
                want,
                "pieces of {piece}"
            );
        }
        // Dropped unfinished: its thread ends with the queue.
        let mut h = Hasher::new(Wanted::IMAGE);
        h.update(&data);
        drop(h);
    }

    #[test]
    fn fields_parse_and_verify() {
        let d = digests(b"hello");
        let md5 = Checksum::parse_field("md5:5d41402abc4b2a76b9719d911017c592", "f", &ALL).unwrap();
        let sha = Checksum::parse_field(
            "SHA256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
            "f",
            &ALL,
        )
        .unwrap();
        // crc32c("hello") = 0x9a71bb4c
        let crc = Checksum::parse_field("crc32c:9a71bb4c", "f", &ALL).unwrap();
        d.verify(&[md5, sha, crc], "x").unwrap();
        let wrong = Checksum::parse_field("crc32c:9a71bb4d", "f", &ALL).unwrap();
        let e = d.verify(&[wrong], "chunk 3").unwrap_err();
        assert!(
            e.contains("chunk 3 does not match") && e.contains("9a71bb4d"),
            "{e}"
        );
        for bad in [
            "",
            "md5",
            "md5:zz",
            "md5:abcd",
            "sha1:00",
            ":00",
            "crc32c:9a71bb4c00",
        ] {
            assert!(Checksum::parse_field(bad, "f", &ALL).is_err(), "{bad}");
        }
        assert!(Checksum::parse_field("crc32c:9a71bb4c", "checksum", &ALL[..2]).is_err());
    }

    #[test]
    fn headers_parse() {
        let d = digests(b"hello");
        let got = Checksum::from_headers([
            ("Content-MD5", "XUFAKrxLKna5cZ2REBfFkg=="),
            (
                "repr-digest",
                "sha-512=:AAAA:, sha-256=:LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=:",
            ),
            (
                "Digest",
                "SHA-256=LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=",
            ),
            ("content-type", "multipart/form-data"),
        ])
        .unwrap();
        assert_eq!(got.len(), 3);
        d.verify(&got, "x").unwrap();
        for (h, v) in [
            ("content-md5", "not base64!"),
            ("content-md5", "AAAA"),
            ("repr-digest", "sha-256=:AAAA:"),
            ("repr-digest", "garbage"),
            ("repr-digest", ";;;==="),
            ("repr-digest", "=:AAAA:"),
            ("content-digest", "sha 256=:AAAA:"),
            ("digest", "SHA-256=x, ;="),
        ] {
            assert!(Checksum::from_headers([(h, v)]).is_err(), "{h}: {v}");
        }
        // Unknown algorithms alone: nothing declared.
        assert!(Checksum::from_headers([("repr-digest", "sha-512=:AAAA:")])
            .unwrap()
            .is_empty());
    }
}
