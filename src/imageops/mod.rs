//! Image operations (check, and later slim) behind one interface. `local` runs qemu-img in
//! process; a remote implementation speaks the original imageops HTTP API.

pub mod local;
pub mod qcow2;
pub mod qemu;
pub mod remote;
pub mod wire;

use async_trait::async_trait;
use std::path::{Path, PathBuf};

/// An image as qemu-img opens it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Image {
    /// A local file (the local store's own, or a scratch file).
    File(PathBuf),
    /// A read-only NBD export of a stored object on a Unix socket (`crate::storage::nbd`),
    /// with the object's first bytes (at most [`qcow2::HEAD_BYTES`]) for the header checks made
    /// before qemu-img runs.
    Nbd {
        socket: PathBuf,
        head: bytes::Bytes,
        /// A qcow2's L1 table (see [`qcow2::l1_table`]); empty for other content.
        l1: bytes::Bytes,
        /// The object's length (bytes).
        size: u64,
    },
}

/// The largest slimmed copy of an original of `size` bytes: the size plus 1/16 of it, at
/// least 64 MiB more. A compressed copy of data that does not compress, or recompressed
/// differently, can be a little larger than its original (its clusters stored as they are,
/// with their tables); one much larger maps guest data to stored data more than once, which a
/// conversion writes out once for each mapping. Scratch must have this much free before a
/// slim.
pub fn slim_output_limit(size: u64) -> u64 {
    size.saturating_add((size / 16).max(64 << 20))
}

impl Image {
    /// The local file, when the image is one.
    pub fn file(&self) -> Option<&Path> {
        match self {
            Image::File(p) => Some(p),
            Image::Nbd { .. } => None,
        }
    }

    /// Its length (bytes).
    pub async fn size(&self) -> std::io::Result<u64> {
        match self {
            Image::File(p) => Ok(tokio::fs::metadata(p).await?.len()),
            Image::Nbd { size, .. } => Ok(*size),
        }
    }
}

/// The format an image must have, from its file name (never probed from its content).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Declared {
    Qcow2,
    Raw,
}

impl Declared {
    pub fn from_file_name(name: &str) -> Declared {
        if name.ends_with(".qcow2") {
            Declared::Qcow2
        } else {
            Declared::Raw
        }
    }
}

pub use entity::status::{CheckStatus, CompressStatus};

pub use entity::check::{result, CheckReport};

/// Why a compression did not produce an image.
#[derive(Debug, Clone, PartialEq)]
pub struct CompressFailure {
    /// Failed, no space or timed out.
    pub status: CompressStatus,
    pub msg: String,
}

impl CompressFailure {
    /// A compression that failed (`compressStatus` failed) for the reason `msg`.
    pub fn failed(msg: String) -> Self {
        CompressFailure {
            status: CompressStatus::Failed,
            msg,
        }
    }

    /// A compression that ran past the slim timeout.
    pub fn timed_out() -> Self {
        CompressFailure {
            status: CompressStatus::TimedOut,
            msg: "compression timed out".into(),
        }
    }
}

/// What a compression ends with: its output written, or why not.
pub type Compressed = Result<(), CompressFailure>;

/// Receives compression progress, 0.0..=1.0.
pub type Progress = Box<dyn Fn(f64) + Send + Sync>;

#[async_trait]
pub trait ImageOps: Send + Sync + 'static {
    /// Checks `image`, which must be of the `declared` format.
    async fn check(&self, image: &Image, declared: Declared) -> CheckReport;

    /// Rewrites the qcow2 `input` into the file `output`, compressed and without unallocated
    /// or zero clusters, reporting progress as it goes; its persistent bitmaps go with it.
    /// Refused before anything runs: an input whose header names another file (a backing or
    /// an external data file; the object may have changed since its check, so that check is
    /// never trusted alone), and one holding internal snapshots, which a conversion would
    /// silently drop (it copies the current state only).
    async fn compress(&self, input: &Image, output: &Path, progress: Progress) -> Compressed {
        let head = qcow2::refuse_foreign_files(input, Declared::Qcow2)
            .await
            .map_err(CompressFailure::failed)?;
        let extras = qcow2::Extras::of(&head);
        if extras.snapshots > 0 {
            return Err(CompressFailure::failed(format!(
                "the image holds {} internal snapshot(s), which a slim cannot keep (the slimmed \
                 copy would hold only the current state); the image stays as it is. Delete the \
                 snapshots (qemu-img snapshot -d) and upload it again to slim it",
                extras.snapshots
            )));
        }
        self.convert(input, output, extras, progress).await
    }

    /// [`ImageOps::compress`] of an input whose header was found to name no other file and
    /// to hold no snapshot; `extras` is what else it holds (its bitmaps are carried over).
    async fn convert(
        &self,
        input: &Image,
        output: &Path,
        extras: qcow2::Extras,
        progress: Progress,
    ) -> Compressed;

    /// Whether files must be handed over in the shared scratch directory (a sidecar sees
    /// nothing else: no store's file, no NBD export).
    fn shares_files(&self) -> bool {
        false
    }
}
