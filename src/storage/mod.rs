//! The object store: one trait, shaped after S3 (buckets, keys, multipart uploads), with a local
//! directory implementation (and an S3 one).
//!
//! Bodies are streams only: no method takes or returns a whole object in memory.

pub mod fileio;
pub mod local;
mod local_parts;
pub mod metered;
pub mod nbd;
pub mod s3;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use std::{
    io,
    path::{Path, PathBuf},
};

pub use local::LocalStore;
pub use s3::{S3Settings, S3Store};

/// A stream of object bytes.
pub type ByteStream = BoxStream<'static, io::Result<Bytes>>;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object not found")]
    NotFound,
    #[error("multipart upload not found")]
    NoSuchUpload,
    #[error("invalid part list: {0}")]
    InvalidPart(String),
    /// The parts cannot be joined into valid multipart parts unless these are sent again.
    #[error("parts {0:?} must be sent again")]
    Resend(Vec<u32>),
    /// The body handed to the store failed (client went away, size limit hit, ...).
    #[error("request body failed: {0}")]
    Body(io::Error),
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("storage I/O error: {0}")]
    Io(#[from] io::Error),
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Inclusive byte range of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    pub fn length(&self) -> u64 {
        self.end - self.start + 1
    }
}

/// A part as the store took it (`upload_part`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadedPart {
    pub etag: String,
    /// The checksum the store verified on receipt and must be given back at completion
    /// (S3's `x-amz-checksum-crc32c` or `-sha256`, base64), when one was sent.
    pub checksum: Option<String>,
    /// Whether the chunk was kept as a staging object (not sent directly, or below the store's
    /// minimum part size) to be packed into a part at completion, rather than stored as its
    /// part. The store decides (it knows its minimum); the caller records what it decided.
    pub staged: bool,
}

/// A part recorded at upload time, handed back at completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletedPart {
    pub number: u32,
    pub etag: String,
    /// The part's length in bytes.
    pub size: u64,
    /// As `UploadedPart::checksum`.
    pub checksum: Option<String>,
    /// As `UploadedPart::staged`.
    pub staged: bool,
}

impl CompletedPart {
    pub fn new(number: u32, part: UploadedPart, size: u64) -> Self {
        CompletedPart {
            number,
            etag: part.etag,
            size,
            checksum: part.checksum,
            staged: part.staged,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    pub storage_class: Option<String>,
}

/// An object of the store: its bucket and its key as the domain names it (a store may add its
/// own prefix).
#[derive(Debug, Clone, Copy)]
pub struct ObjectRef<'a> {
    pub bucket: &'a str,
    pub key: &'a str,
}

/// A part to store in a multipart upload (S3 UploadPart): its number (1..=10000), its body,
/// and whether it must go to the upload now (`direct`). With `direct` false the store may hold
/// the part aside and pack it at completion; a store with a `min_part_size` also holds aside a
/// part below it.
pub struct Part {
    pub number: u32,
    pub body: SpooledPart,
    pub direct: bool,
}

/// An open multipart upload (S3 CreateMultipartUpload): the bucket and key of the object it
/// becomes, and the upload id the store gave it.
#[derive(Debug, Clone, Copy)]
pub struct MultipartUpload<'a> {
    pub bucket: &'a str,
    pub key: &'a str,
    pub upload_id: &'a str,
}

/// A multipart upload the store holds: the key of the object it becomes (as the domain names
/// it; empty for a store that aborts by upload id alone) and its upload id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenUpload {
    pub key: String,
    pub upload_id: String,
}

/// A part body already spooled to a local file; the store may move the file instead of
/// copying it. The file is deleted when this value is dropped without being consumed.
pub struct SpooledPart {
    pub file: tempfile::TempPath,
    pub len: u64,
}

impl SpooledPart {
    pub fn path(&self) -> PathBuf {
        self.file.to_path_buf()
    }
}

/// A part being received straight into its final place in a multipart upload, instead of being
/// spooled and handed to [`ObjectStore::upload_part`] (see [`ObjectStore::part_in_place`]).
/// Until [`InPlacePart::commit`], the bytes are not part of the upload: dropping the value
/// leaves the upload as it was (the space the bytes took is reused by the next part).
#[async_trait]
pub trait InPlacePart: Send {
    /// The upload id and part number this part was opened for.
    fn target(&self) -> (&str, u32);

    /// Writes all of `body` (once; the bytes are received as they arrive, the disk writing
    /// behind them). Returns the number of bytes written.
    ///
    /// Errors: `BodyOrFile::Body` when the body failed, `BodyOrFile::File` when the store did.
    async fn receive(&mut self, body: ByteStream) -> std::result::Result<u64, fileio::BodyOrFile>;

    /// The bytes received so far, read back (for a digest not computed while they passed).
    fn read_back(&self) -> Result<ByteStream>;

    /// Makes the received bytes durable and part `target().1` of the upload, as
    /// [`ObjectStore::upload_part`] would have.
    async fn commit(self: Box<Self>) -> Result<UploadedPart>;
}

#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// Checks that a bucket exists, creating it when it does not.
    async fn ensure_bucket(&self, bucket: &str) -> Result<()>;

    /// Streams `body` into a new object (replacing any old one). Returns the object's length.
    /// On failure nothing is left behind.
    async fn put(&self, to: ObjectRef<'_>, body: ByteStream, opts: &PutOptions) -> Result<u64>;

    /// Stores the local file at `path` (all of it) as a new object, replacing any old one, and
    /// leaves the file as it is. Returns the object's length. A store that keeps objects as
    /// files takes it without reading it (the local store links it into place when it is on the
    /// same file system); the others stream it through [`ObjectStore::put`]. On failure
    /// nothing is left behind.
    async fn put_file(&self, to: ObjectRef<'_>, path: &Path, opts: &PutOptions) -> Result<u64> {
        let file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        self.put(to, fileio::read_stream(file, 0, len), opts).await
    }

    /// Opens a multipart upload for `key`; returns its upload id.
    async fn create_multipart(&self, bucket: &str, key: &str, opts: &PutOptions) -> Result<String>;

    /// Stores `part` of `upload`, replacing an earlier part of that number. Returns its ETag
    /// (and checksum).
    async fn upload_part(&self, upload: MultipartUpload<'_>, part: Part) -> Result<UploadedPart>;

    /// A writer for part `number` of `upload` that puts the bytes straight where the object
    /// will hold them, when the store can do that for this part now (the local store, for the
    /// part that extends the parts already in order, when no other such writer is open).
    /// `None`: spool the part and use [`ObjectStore::upload_part`]. An S3 store always says
    /// `None` (UploadPart needs the part's length before its body).
    async fn part_in_place(
        &self,
        _upload: MultipartUpload<'_>,
        _number: u32,
    ) -> Result<Option<Box<dyn InPlacePart>>> {
        Ok(None)
    }

    /// Joins `parts` (ascending numbers) of `upload` into its object. Completing an upload
    /// that already completed into an existing object succeeds. `Resend` names parts held
    /// directly that cannot follow the small parts held aside before them.
    async fn complete_multipart(
        &self,
        upload: MultipartUpload<'_>,
        parts: &[CompletedPart],
    ) -> Result<()>;

    /// Drops an upload and its parts. Aborting an unknown upload succeeds.
    async fn abort_multipart(&self, upload: MultipartUpload<'_>) -> Result<()>;

    /// Streams an object, or the given range of it.
    async fn get(&self, bucket: &str, key: &str, range: Option<ByteRange>) -> Result<ByteStream>;

    /// The object's length, or `None` when it does not exist.
    async fn head(&self, bucket: &str, key: &str) -> Result<Option<u64>>;

    /// Deletes an object; deleting a missing object succeeds.
    async fn delete(&self, bucket: &str, key: &str) -> Result<()>;

    /// Copies an object inside the store (across buckets too); a missing `from` is `NotFound`.
    async fn copy(&self, from: ObjectRef<'_>, to: ObjectRef<'_>, opts: &PutOptions) -> Result<()>;

    /// Checks the store and `bucket` are reachable (readiness).
    async fn ping(&self, bucket: &str) -> Result<()>;

    /// Whether a stream from [`ObjectStore::get`] reads to its end even when its object is
    /// deleted meanwhile: the local store's streams read one open file, which a delete only
    /// unlinks (POSIX). An S3 stream is several ranged GETs, so a delete cuts it: the service
    /// then holds objects against deletes while they are read.
    fn reads_outlive_delete(&self) -> bool {
        false
    }

    /// The object as a local file, when the store keeps it as one (the local store).
    fn local_path(&self, _bucket: &str, _key: &str) -> Option<PathBuf> {
        None
    }

    /// Removes what writes that died half way (a killed process) left in the store's own
    /// temporary area, when untouched for longer than `idle`; returns how many. Writes in
    /// progress touch their files continuously, so they are never taken.
    async fn sweep_stale_temp(&self, _idle: std::time::Duration) -> Result<usize> {
        Ok(0)
    }

    /// The multipart uploads of `bucket` nobody wrote to for longer than `idle` (opened before,
    /// and no part since), whichever process opened them. Which of them are still wanted is
    /// the caller's to know (an upload session may wait days for its next chunk).
    async fn stale_uploads(
        &self,
        _bucket: &str,
        _idle: std::time::Duration,
    ) -> Result<Vec<OpenUpload>> {
        Ok(vec![])
    }

    /// Smallest non-final multipart part the store accepts (0: no minimum).
    fn min_part_size(&self) -> u64 {
        0
    }
}
