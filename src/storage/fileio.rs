//! Streaming between async bodies and local files with few copies: writes are batched
//! (about 1 MiB of received buffers, written with one vectored call on a blocking thread while
//! the next batch arrives); reads are positional reads, one block read ahead: 1 MiB blocks
//! while the process-wide [`READ_BUDGET`] has room, 64 KiB blocks when it has not, so that
//! many readers that stop taking bytes (stalled download clients) hold bounded memory.

use super::ByteStream;
use bytes::Bytes;
use futures::StreamExt;
use std::{
    fs::File,
    io::{self, IoSlice, Write},
    os::unix::fs::FileExt,
    sync::Arc,
};
use tokio::task::JoinHandle;

const BATCH: usize = 1 << 20;

fn joined<T>(r: Result<io::Result<T>, tokio::task::JoinError>) -> io::Result<T> {
    r.map_err(|e| io::Error::other(e.to_string()))?
}

/// How far ahead of what the disk holds a durable sink lets written data go: write-back of
/// each window is started as soon as it is written, and waited for one window later, so that
/// the sync at the end finds little left to do (the streaming-write pattern of
/// `sync_file_range(2)`).
const WRITE_BACK_WINDOW: u64 = 8 << 20;

/// An append-only writer for a new file, fed with `Bytes` as they arrive.
pub struct FileSink {
    file: Arc<File>,
    pending: Vec<Bytes>,
    pending_len: usize,
    in_flight: Option<JoinHandle<io::Result<()>>>,
    written: u64,
    /// Overlap write-back with receiving (for a sink that will be synced at the end).
    durable: bool,
    /// Bytes handed to a write: the offset of the next batch.
    submitted: u64,
    /// Write-back started up to here.
    started: u64,
}

impl FileSink {
    pub fn new(file: File) -> Self {
        Self {
            file: Arc::new(file),
            pending: vec![],
            pending_len: 0,
            in_flight: None,
            written: 0,
            durable: false,
            submitted: 0,
            started: 0,
        }
    }

    /// A sink whose file will be synced when it is finished: the disk writes as the bytes
    /// arrive (in windows of 8 MiB), so the final sync is short and dirty pages stay few.
    pub fn durable(file: File) -> Self {
        Self {
            durable: true,
            ..Self::new(file)
        }
    }

    /// A durable sink (see [`FileSink::durable`]) that writes into an existing file from
    /// `offset` (bytes) on, over whatever lies there.
    pub fn durable_at(mut file: File, offset: u64) -> io::Result<Self> {
        use std::io::Seek;
        file.seek(io::SeekFrom::Start(offset))?;
        Ok(Self {
            submitted: offset,
            started: offset,
            ..Self::durable(file)
        })
    }

    pub async fn write(&mut self, b: Bytes) -> io::Result<()> {
        if b.is_empty() {
            return Ok(());
        }
        self.pending_len += b.len();
        self.written += b.len() as u64;
        self.pending.push(b);
        if self.pending_len >= BATCH {
            self.flush_batch().await?;
        }
        Ok(())
    }

    async fn flush_batch(&mut self) -> io::Result<()> {
        if let Some(h) = self.in_flight.take() {
            joined(h.await)?;
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        let bufs = std::mem::take(&mut self.pending);
        self.submitted += self.pending_len as u64;
        self.pending_len = 0;
        let file = self.file.clone();
        // A window filled: start its write-back, and wait for the one before it.
        let write_back =
            (self.durable && self.submitted - self.started >= WRITE_BACK_WINDOW).then(|| {
                let range = (self.started, self.submitted);
                self.started = self.submitted;
                range
            });
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            write_all_vectored(&file, &bufs)?;
            if let Some((from, to)) = write_back {
                start_write_back(&file, from, to);
            }
            Ok(())
        }));
        Ok(())
    }

    /// Writes what is left, optionally syncs, and returns the number of bytes written.
    pub async fn finish(mut self, sync: bool) -> io::Result<u64> {
        self.flush_batch().await?;
        if let Some(h) = self.in_flight.take() {
            joined(h.await)?;
        }
        if sync {
            let file = self.file.clone();
            joined(tokio::task::spawn_blocking(move || file.sync_all()).await)?;
        }
        Ok(self.written)
    }

    /// Copies a whole body into the file; body errors come back as `Err(Left)`, file errors as `Err(Right)`.
    pub async fn drain(&mut self, mut body: ByteStream) -> Result<(), BodyOrFile> {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(BodyOrFile::Body)?;
            self.write(chunk).await.map_err(BodyOrFile::File)?;
        }
        Ok(())
    }
}

/// Which side of a copy failed.
#[derive(Debug)]
pub enum BodyOrFile {
    Body(io::Error),
    File(io::Error),
}

/// Starts write-back of `[from, to)` and waits for the window before it to be on disk. Only a
/// hint: the sync at the end is what makes the file durable, so failures are ignored here
/// (that sync reports them).
fn start_write_back(file: &File, from: u64, to: u64) {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: sync_file_range(2) on an open descriptor with in-range offsets; it reads no
    // memory of ours.
    unsafe {
        libc::sync_file_range(
            fd,
            from as libc::off64_t,
            (to - from) as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
        if let Some(before) = from.checked_sub(WRITE_BACK_WINDOW) {
            libc::sync_file_range(
                fd,
                before as libc::off64_t,
                WRITE_BACK_WINDOW as libc::off64_t,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER,
            );
        }
    }
}

fn write_all_vectored(mut file: &File, bufs: &[Bytes]) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = bufs.iter().map(|b| IoSlice::new(b)).collect();
    let mut slices = &mut slices[..];
    let mut remaining: usize = bufs.iter().map(Bytes::len).sum();
    while remaining > 0 {
        let n = file.write_vectored(slices)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "file write returned 0",
            ));
        }
        remaining -= n;
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

/// Bytes all readers of [`read_stream`] may hold in large blocks at once (64 MiB): blocks read
/// and not yet dropped by whoever took them (for a download, until hyper has written them).
pub const READ_BUDGET: usize = 64 << 20;
/// The block size of a read when [`READ_BUDGET`] is spent (bytes).
pub const SMALL_BLOCK: usize = 64 << 10;

/// [`READ_BUDGET`] as permits of one large block ([`BATCH`] bytes) each.
static READ_PERMITS: std::sync::LazyLock<Arc<tokio::sync::Semaphore>> =
    std::sync::LazyLock::new(|| Arc::new(tokio::sync::Semaphore::new(READ_BUDGET / BATCH)));

/// A large block's bytes and its share of [`READ_BUDGET`], given back when the block is dropped.
struct Budgeted {
    bytes: Vec<u8>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Budgeted {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Reads up to `remaining` bytes at `off`: a [`BATCH`] block when a permit of
/// [`READ_BUDGET`] is free, a [`SMALL_BLOCK`] otherwise.
fn read_block(
    permits: &Arc<tokio::sync::Semaphore>,
    file: Arc<File>,
    off: u64,
    remaining: u64,
) -> JoinHandle<io::Result<Bytes>> {
    let permit = permits.clone().try_acquire_owned().ok();
    let size = if permit.is_some() { BATCH } else { SMALL_BLOCK };
    let n = (remaining as usize).min(size);
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; n];
        file.read_exact_at(&mut buf, off)?;
        Ok(match permit {
            Some(permit) => Bytes::from_owner(Budgeted {
                bytes: buf,
                _permit: permit,
            }),
            None => Bytes::from(buf),
        })
    })
}

/// Streams `len` bytes of `file` from `offset`, in blocks of 1 MiB (64 KiB when
/// [`READ_BUDGET`] is spent) with one block read ahead.
pub fn read_stream(file: File, offset: u64, len: u64) -> ByteStream {
    read_stream_within(&READ_PERMITS, file, offset, len)
}

/// [`read_stream`] with large blocks taken from `permits`.
fn read_stream_within(
    permits: &Arc<tokio::sync::Semaphore>,
    file: File,
    offset: u64,
    len: u64,
) -> ByteStream {
    let file = Arc::new(file);
    let permits = permits.clone();
    let end = offset + len;
    let first = (len > 0).then(|| read_block(&permits, file.clone(), offset, len));
    futures::stream::unfold((first, offset), move |(current, off)| {
        let (file, permits) = (file.clone(), permits.clone());
        async move {
            let handle = current?;
            let block = joined(handle.await);
            let Ok(block) = block else {
                return Some((block, (None, end)));
            };
            let next_off = off + block.len() as u64;
            let next =
                (next_off < end).then(|| read_block(&permits, file, next_off, end - next_off));
            Some((Ok(block), (next, next_off)))
        }
    })
    .boxed()
}

/// Copies `len` bytes of `src` from `src_off` to `dst` at `dst_off` inside the kernel
/// (`copy_file_range`: no user-space pass, and shared blocks on file systems with reflinks),
/// falling back to a plain copy where that is not supported. Returns `dst_off + len`.
pub fn copy_between(
    src: &std::fs::File,
    src_off: u64,
    dst: &std::fs::File,
    dst_off: u64,
    len: u64,
) -> io::Result<u64> {
    use std::os::fd::AsRawFd;
    let mut in_off = src_off as libc::loff_t;
    let mut out_off = dst_off as libc::loff_t;
    let mut remaining = len;
    while remaining > 0 {
        let chunk = remaining.min(1 << 30) as usize;
        // SAFETY: both descriptors are open files owned by the caller; offsets are valid pointers.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut in_off,
                dst.as_raw_fd(),
                &mut out_off,
                chunk,
                0,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::EXDEV)
                | Some(libc::ENOSYS)
                | Some(libc::EOPNOTSUPP)
                | Some(libc::EINVAL) => {
                    copy_plain(src, in_off as u64, dst, out_off as u64, remaining)?;
                    Ok(dst_off + len)
                }
                _ => Err(err),
            };
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "source shorter than expected",
            ));
        }
        remaining -= n as u64;
    }
    Ok(dst_off + len)
}

fn copy_plain(
    src: &std::fs::File,
    mut in_off: u64,
    dst: &std::fs::File,
    mut out_off: u64,
    mut len: u64,
) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; BATCH];
    while len > 0 {
        let want = (len as usize).min(buf.len());
        let n = src.read_at(&mut buf[..want], in_off)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "source shorter than expected",
            ));
        }
        dst.write_all_at(&buf[..n], out_off)?;
        in_off += n as u64;
        out_off += n as u64;
        len -= n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_take_small_blocks_while_the_budget_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let want: Vec<u8> = (0..3 * BATCH).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &want).unwrap();
        let open = || File::open(&path).unwrap();
        let permits = Arc::new(tokio::sync::Semaphore::new(4));
        let read = |len| read_stream_within(&permits, open(), 0, len);
        // Blocks kept by readers that stopped (stalled clients) hold the whole budget...
        let mut kept = vec![];
        for _ in 0..4 {
            kept.push(read(BATCH as u64).next().await.unwrap().unwrap());
        }
        assert_eq!(permits.available_permits(), 0);
        // ...then a reader goes on in small blocks, with the same bytes.
        let blocks: Vec<Bytes> = read(want.len() as u64).map(|b| b.unwrap()).collect().await;
        assert!(blocks.iter().all(|b| b.len() == SMALL_BLOCK));
        assert!(blocks.concat() == want);
        // Dropping the kept blocks gives their budget back.
        drop(kept);
        assert_eq!(permits.available_permits(), 4);
        assert_eq!(
            read(want.len() as u64).next().await.unwrap().unwrap().len(),
            BATCH
        );
    }

    #[tokio::test]
    async fn sink_and_reader_round_trip_with_empty_and_odd_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut sink = FileSink::new(File::create(&path).unwrap());
        let mut want = vec![];
        for (i, n) in [0usize, 1, 0, 3_000_000, 0, 17, 1 << 20, 0]
            .into_iter()
            .enumerate()
        {
            let chunk: Vec<u8> = (0..n).map(|j| (i * 31 + j) as u8).collect();
            want.extend_from_slice(&chunk);
            sink.write(Bytes::from(chunk)).await.unwrap();
        }
        assert_eq!(sink.finish(true).await.unwrap(), want.len() as u64);
        assert_eq!(std::fs::read(&path).unwrap(), want);
        let got: Vec<u8> = read_stream(File::open(&path).unwrap(), 5, want.len() as u64 - 10)
            .map(|b| b.unwrap().to_vec())
            .collect::<Vec<_>>()
            .await
            .concat();
        assert_eq!(got, want[5..want.len() - 5]);
        let empty: Vec<_> = read_stream(File::open(&path).unwrap(), 0, 0)
            .collect()
            .await;
        assert!(empty.is_empty());
    }

    /// A durable sink starts write-back window by window: the file is the bytes written, and
    /// its pages are clean before the final sync (but for the last windows).
    #[tokio::test]
    async fn a_durable_sink_writes_back_as_it_goes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut sink = FileSink::durable(File::create(&path).unwrap());
        let mut want = vec![];
        for i in 0..40u8 {
            let chunk = vec![i; (1 << 20) + i as usize];
            want.extend_from_slice(&chunk);
            sink.write(Bytes::from(chunk)).await.unwrap();
        }
        assert!(sink.started >= want.len() as u64 - 3 * WRITE_BACK_WINDOW);
        assert_eq!(sink.finish(true).await.unwrap(), want.len() as u64);
        assert_eq!(std::fs::read(&path).unwrap(), want);
    }
}
