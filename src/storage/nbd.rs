//! A read-only NBD export of one stored object on a Unix socket, so that qemu-img reads an
//! image where it is stored (ranged GETs on S3) instead of from a scratch copy.
//!
//! The protocol is the Network Block Device protocol's fixed newstyle negotiation and simple
//! replies (NetworkBlockDevice/nbd, `doc/proto.md`): options `NBD_OPT_GO`, `NBD_OPT_INFO`,
//! `NBD_OPT_EXPORT_NAME` and `NBD_OPT_ABORT` are served, every other option is answered
//! `NBD_REP_ERR_UNSUP` (qemu then goes on without structured replies or metadata contexts);
//! commands `NBD_CMD_READ`, `NBD_CMD_FLUSH` and `NBD_CMD_DISC` are served, writes are refused
//! with `EPERM` (the export is flagged read-only). Reads run concurrently (at most
//! [`IN_FLIGHT`] per connection, each at most [`MAX_READ`] bytes, as advertised in
//! `NBD_INFO_BLOCK_SIZE`), and their replies may come back out of order, matched by cookie.
//!
//! qemu-img reads a qcow2 a cluster (64 KiB) at a time; one ranged GET each would cost a round
//! trip per cluster. The store is read in aligned blocks of [`BLOCK`] bytes instead, the last
//! [`CACHED_BLOCKS`] kept, and while the reads go forward the next [`PREFETCH_BLOCKS`] are
//! fetched ahead (at most `(CACHED_BLOCKS + IN_FLIGHT) * BLOCK` bytes held per export, plus
//! the read-ahead of [`Export::stream`], which hashes the object through the same blocks).
//!
//! The export's size is the object's rounded up to a multiple of [`SECTOR`], the bytes past the
//! object's end read as zeros. qemu's block layer rounds a device's size up to 512 bytes and,
//! with simple replies, waits for the whole rounded read while asking the server only for the
//! bytes up to the advertised size, so an object of another length (a truncated or compressed
//! qcow2) would stall its reader until the job's timeout (qemu 10, `block/nbd.c`
//! `nbd_client_co_preadv`). A file read past its end reads zeros too, so qemu-img sees what a
//! local copy would show.
//!
//! The socket lives in the process's scratch directory with mode 0600: only this service's
//! user can connect. Dropping the [`Export`] stops it, ends its connections and removes the
//! socket.

use super::{ByteRange, ObjectStore, StorageError};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use std::{
    io,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{unix::OwnedWriteHalf, UnixListener, UnixStream},
    sync::{Mutex, Semaphore},
};

/// The largest read served (bytes): advertised as the maximum block size, so a request stays
/// one bounded buffer.
pub const MAX_READ: u32 = 4 << 20;
/// Reads served at once per connection (so at most `IN_FLIGHT * MAX_READ` bytes buffered).
pub const IN_FLIGHT: usize = 8;
/// The unit the export's size is rounded up to (bytes): qemu's sector.
pub const SECTOR: u64 = 512;
/// The longest option a client may send (bytes); longer ones end the connection.
const MAX_OPTION: u32 = 4096;
/// The longest request the protocol allows a client to send (32 MiB); a larger read or write
/// ends the connection.
const MAX_REQUEST: u32 = 32 << 20;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
const FLAG_NO_ZEROES: u16 = 1 << 1;
const FLAG_C_NO_ZEROES: u32 = 1 << 1;
/// Transmission flags: has flags, read only, can take several connections.
const TRANSMISSION_FLAGS: u16 = (1 << 0) | (1 << 1) | (1 << 8);

/// The options served (`NBD_OPT_*`); any other is answered `NBD_REP_ERR_UNSUP`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opt {
    ExportName,
    Abort,
    Info,
    Go,
}

impl Opt {
    fn parse(code: u32) -> Option<Opt> {
        Some(match code {
            1 => Opt::ExportName,
            2 => Opt::Abort,
            6 => Opt::Info,
            7 => Opt::Go,
            _ => return None,
        })
    }
}

/// The option replies sent (`NBD_REP_*`).
#[derive(Debug, Clone, Copy)]
#[repr(u32)]
enum Rep {
    Ack = 1,
    Info = 3,
    ErrUnsup = (1 << 31) + 1,
    ErrInvalid = (1 << 31) + 3,
}

/// The information an `NBD_REP_INFO` carries (`NBD_INFO_*`).
#[derive(Debug, Clone, Copy)]
#[repr(u16)]
enum Info {
    Export = 0,
    BlockSize = 3,
}

/// The commands of the transmission phase (`NBD_CMD_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmd {
    Read,
    Write,
    Disc,
    Flush,
}

impl Cmd {
    fn parse(code: u16) -> Option<Cmd> {
        Some(match code {
            0 => Cmd::Read,
            1 => Cmd::Write,
            2 => Cmd::Disc,
            3 => Cmd::Flush,
            _ => return None,
        })
    }
}

/// The error of a failed request's simple reply (errno values: `NBD_EPERM`, ...).
#[derive(Debug, Clone, Copy)]
#[repr(u32)]
enum ReplyError {
    Perm = 1,
    Io = 5,
    Inval = 22,
}

/// Bytes read from the store at a time (aligned to multiples of it): one ranged GET each.
/// A check of a 2 GiB image on Garage is bound by requests, not by bytes: 4 MiB blocks took
/// it from 4.7-5.0 s (1 MiB blocks) to 3.6-3.9 s, and 8 MiB blocks were no faster.
pub const BLOCK: u64 = 4 << 20;
/// Blocks kept once read (32 MiB): enough for qemu-img's concurrent reads, their read-ahead
/// and a reader of [`Export::stream`] a little behind or ahead of them to share each block.
pub const CACHED_BLOCKS: usize = 8;
/// Blocks fetched ahead of reads that go forward.
pub const PREFETCH_BLOCKS: u64 = 2;
/// Clients that asked for no read for this long (milliseconds) are idle: a reader of
/// [`Export::stream`] no longer waits for them.
pub const PACE_IDLE_MS: u64 = 100;

/// A block's bytes as the store sent them: its chunks in order, each with its offset in the
/// block (bytes). They are never joined into one buffer: a fresh 4 MiB buffer per block cost
/// the server more in page faults than relaying the bytes did.
type Chunks = Arc<Vec<(u64, Bytes)>>;

/// A block, fetched once by whichever read or prefetch comes first.
type Block = Arc<tokio::sync::OnceCell<Chunks>>;

/// The object an export serves.
struct Object {
    store: Arc<dyn ObjectStore>,
    bucket: String,
    key: String,
    size: u64,
    /// Reads the store failed (answered `EIO`).
    failed_reads: AtomicU64,
    /// The blocks read last, oldest first.
    cache: std::sync::Mutex<std::collections::VecDeque<(u64, Block)>>,
    /// The last block the latest read needed (`u64::MAX` before any).
    last_block: AtomicU64,
    /// When the export started; `last_read_ms` counts from it.
    started: std::time::Instant,
    /// When a client last asked for a read (milliseconds after `started`).
    last_read_ms: AtomicU64,
}

impl Object {
    /// The size advertised to clients (bytes): the object's, rounded up to [`SECTOR`].
    fn export_size(&self) -> u64 {
        self.size.next_multiple_of(SECTOR)
    }

    /// The cache entry of block `index` (a new, empty one when it is not there).
    fn entry(&self, index: u64) -> Block {
        let mut cache = self.cache.lock().expect("cache lock");
        if let Some((_, b)) = cache.iter().find(|(i, _)| *i == index) {
            return b.clone();
        }
        let b = Block::default();
        cache.push_back((index, b.clone()));
        if cache.len() > CACHED_BLOCKS {
            cache.pop_front();
        }
        b
    }

    /// Block `index`'s bytes, fetched from the store unless they are cached.
    async fn block(&self, index: u64) -> Result<Chunks, StorageError> {
        let entry = self.entry(index);
        let start = index * BLOCK;
        let len = BLOCK.min(self.size - start) as u32;
        entry
            .get_or_try_init(|| fetch(self, start, len))
            .await
            .cloned()
    }

    /// Holds a reader of [`Export::stream`] back while clients are reading (one asked within
    /// [`PACE_IDLE_MS`]) and block `index` is more than half the cache ahead of them, so that
    /// the blocks it fetches are still cached when they get there. A client that reads only
    /// some blocks (qemu-img check reads the metadata) stops holding it back once it is idle.
    async fn pace(&self, index: u64) {
        loop {
            let last = self.last_block.load(Ordering::Relaxed);
            let now = self.started.elapsed().as_millis() as u64;
            let idle =
                now.saturating_sub(self.last_read_ms.load(Ordering::Relaxed)) >= PACE_IDLE_MS;
            if last == u64::MAX || idle || index <= last + CACHED_BLOCKS as u64 / 2 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }

    /// `len` bytes from `offset` (inside the export): the object's bytes, then zeros for the
    /// part past its end (see the module's note on sizes).
    async fn read(self: &Arc<Self>, offset: u64, len: u32) -> Result<Bytes, StorageError> {
        let stored = self.size.saturating_sub(offset).min(len as u64) as u32;
        if stored == len {
            return self.read_stored(offset, len).await;
        }
        let mut out = BytesMut::with_capacity(len as usize);
        if stored > 0 {
            out.extend_from_slice(&self.read_stored(offset, stored).await?);
        }
        out.resize(len as usize, 0);
        Ok(out.freeze())
    }

    /// `len` bytes from `offset` (inside the object), from its blocks; when the reads go
    /// forward, the blocks after these are fetched ahead on tasks of their own.
    async fn read_stored(self: &Arc<Self>, offset: u64, len: u32) -> Result<Bytes, StorageError> {
        let end = offset + len as u64;
        let (first, last) = (offset / BLOCK, (end - 1) / BLOCK);
        let previous = self.last_block.swap(last, Ordering::Relaxed);
        self.last_read_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        // Only a read that goes on into the next block starts prefetches: the many small
        // reads inside a block (qemu-img's 64 KiB) would start the same ones again.
        if previous != u64::MAX && last == previous + 1 {
            for index in last + 1..=last + PREFETCH_BLOCKS {
                if index * BLOCK >= self.size {
                    break;
                }
                let object = self.clone();
                tokio::spawn(async move {
                    // A failed prefetch is only a miss: the read that needs it fetches again.
                    let _ = object.block(index).await;
                });
            }
        }
        let mut out = BytesMut::new();
        for index in first..=last {
            let chunks = self.block(index).await?;
            let start = index * BLOCK;
            let (from, to) = (offset.max(start) - start, end.min(start + BLOCK) - start);
            let at = chunks.partition_point(|(at, b)| at + b.len() as u64 <= from);
            for (at, b) in chunks[at..].iter().take_while(|(at, _)| *at < to) {
                let piece = b.slice(
                    (from.max(*at) - at) as usize..(to.min(at + b.len() as u64) - at) as usize,
                );
                if piece.len() == len as usize {
                    // Inside one chunk: no copy.
                    return Ok(piece);
                }
                if out.is_empty() {
                    out.reserve(len as usize);
                }
                out.extend_from_slice(&piece);
            }
        }
        Ok(out.freeze())
    }
}

/// A running export of one object; stopped, with its connections, when dropped.
pub struct Export {
    socket: PathBuf,
    object: Arc<Object>,
    _server: tokio_util::task::AbortOnDropHandle<()>,
}

impl Export {
    /// Starts serving `bucket/key` (of `size` bytes) on a new Unix socket at `socket`.
    ///
    /// Errors: the socket cannot be created (for example a path longer than the 107 bytes a
    /// Unix socket address holds).
    pub fn start(
        store: Arc<dyn ObjectStore>,
        bucket: &str,
        key: &str,
        size: u64,
        socket: PathBuf,
    ) -> io::Result<Export> {
        let listener = UnixListener::bind(&socket)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
        let object = Arc::new(Object {
            store,
            bucket: bucket.to_string(),
            key: key.to_string(),
            size,
            failed_reads: AtomicU64::new(0),
            cache: Default::default(),
            last_block: AtomicU64::new(u64::MAX),
            started: std::time::Instant::now(),
            last_read_ms: AtomicU64::new(0),
        });
        let server = tokio::spawn(accept(listener, object.clone()));
        Ok(Export {
            socket,
            object,
            _server: tokio_util::task::AbortOnDropHandle::new(server),
        })
    }

    /// The Unix socket qemu connects to (`{"driver": "nbd", "server": {"type": "unix",
    /// "path": ...}}`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The whole object in order, read through the export's blocks (the next
    /// `2 * PREFETCH_BLOCKS` fetched ahead): a reader that goes along with qemu-img shares its
    /// ranged reads, each block fetched once while the two stay within [`CACHED_BLOCKS`] of
    /// each other, so hashing the object while qemu-img reads it costs no second read of the
    /// store. Errors: a failed store read ends the stream with it.
    pub fn stream(&self) -> super::ByteStream {
        let object = self.object.clone();
        let blocks = object.size.div_ceil(BLOCK);
        futures::stream::iter(0..blocks)
            .map(move |index| {
                let object = object.clone();
                async move {
                    object.pace(index).await;
                    object.block(index).await.map_err(io::Error::other)
                }
            })
            .buffered(2 * PREFETCH_BLOCKS as usize)
            .map_ok(|chunks| {
                let chunks: Vec<io::Result<Bytes>> =
                    chunks.iter().map(|(_, b)| Ok(b.clone())).collect();
                futures::stream::iter(chunks)
            })
            .try_flatten()
            .boxed()
    }

    /// How many reads of the store failed so far (their clients got `EIO`): a tool's verdict
    /// on the image is then a verdict on a read error, not on the image.
    pub fn failed_reads(&self) -> u64 {
        self.object.failed_reads.load(Ordering::Relaxed)
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Accepts connections until aborted; each is served on a task that ends with the server.
async fn accept(listener: UnixListener, object: Arc<Object>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((conn, _)) => {
                    let object = object.clone();
                    connections.spawn(async move {
                        if let Err(e) = serve(conn, object).await {
                            tracing::debug!(error = %e, "NBD connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "NBD export cannot accept");
                    return;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Serves one connection: negotiation, then requests until the client disconnects.
async fn serve(conn: UnixStream, object: Arc<Object>) -> io::Result<()> {
    let (mut rd, mut wr) = conn.into_split();
    let mut hello = BytesMut::with_capacity(18);
    hello.put_u64(NBDMAGIC);
    hello.put_u64(IHAVEOPT);
    hello.put_u16(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    wr.write_all(&hello).await?;
    let client_flags = rd.read_u32().await?;
    if client_flags & !0b11 != 0 {
        return Err(protocol("unknown client flags"));
    }
    let no_zeroes = client_flags & FLAG_C_NO_ZEROES != 0;
    if !negotiate(&mut rd, &mut wr, object.export_size(), no_zeroes).await? {
        return Ok(());
    }
    transmit(rd, wr, object).await
}

fn protocol(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("NBD: {what}"))
}

/// Option haggling; true when transmission begins, false when the client aborted.
async fn negotiate(
    rd: &mut (impl AsyncReadExt + Unpin),
    wr: &mut OwnedWriteHalf,
    size: u64,
    no_zeroes: bool,
) -> io::Result<bool> {
    loop {
        if rd.read_u64().await? != IHAVEOPT {
            return Err(protocol("bad option magic"));
        }
        let option = rd.read_u32().await?;
        let len = rd.read_u32().await?;
        if len > MAX_OPTION {
            return Err(protocol("option too long"));
        }
        let mut data = vec![0u8; len as usize];
        rd.read_exact(&mut data).await?;
        match Opt::parse(option) {
            Some(Opt::ExportName) => {
                // Any name: a socket serves one object.
                let mut b = BytesMut::with_capacity(10 + 124);
                b.put_u64(size);
                b.put_u16(TRANSMISSION_FLAGS);
                if !no_zeroes {
                    b.put_bytes(0, 124);
                }
                wr.write_all(&b).await?;
                return Ok(true);
            }
            Some(Opt::Abort) => {
                option_reply(wr, option, Rep::Ack, &[]).await?;
                return Ok(false);
            }
            Some(opt @ (Opt::Info | Opt::Go)) => {
                let Some(block_size_asked) = info_requests(&data) else {
                    option_reply(wr, option, Rep::ErrInvalid, &[]).await?;
                    continue;
                };
                let mut export = BytesMut::with_capacity(12);
                export.put_u16(Info::Export as u16);
                export.put_u64(size);
                export.put_u16(TRANSMISSION_FLAGS);
                option_reply(wr, option, Rep::Info, &export).await?;
                if block_size_asked {
                    let mut sizes = BytesMut::with_capacity(14);
                    sizes.put_u16(Info::BlockSize as u16);
                    sizes.put_u32(1); // minimum
                    sizes.put_u32(64 << 10); // preferred: a qcow2 cluster
                    sizes.put_u32(MAX_READ); // maximum
                    option_reply(wr, option, Rep::Info, &sizes).await?;
                }
                option_reply(wr, option, Rep::Ack, &[]).await?;
                if opt == Opt::Go {
                    return Ok(true);
                }
            }
            None => option_reply(wr, option, Rep::ErrUnsup, &[]).await?,
        }
    }
}

/// Parses `NBD_OPT_INFO`/`NBD_OPT_GO` data (name length, name, request count, requests);
/// whether `NBD_INFO_BLOCK_SIZE` was asked for, or `None` when the data is malformed.
fn info_requests(data: &[u8]) -> Option<bool> {
    let name_len = u32::from_be_bytes(data.get(0..4)?.try_into().ok()?) as usize;
    let rest = data.get(4usize.checked_add(name_len)?..)?;
    let count = u16::from_be_bytes(rest.get(0..2)?.try_into().ok()?) as usize;
    let requests = rest.get(2..)?;
    if requests.len() != count * 2 {
        return None;
    }
    Some(
        requests
            .chunks_exact(2)
            .any(|r| u16::from_be_bytes([r[0], r[1]]) == Info::BlockSize as u16),
    )
}

async fn option_reply(
    wr: &mut OwnedWriteHalf,
    option: u32,
    kind: Rep,
    data: &[u8],
) -> io::Result<()> {
    let mut b = BytesMut::with_capacity(20 + data.len());
    b.put_u64(REPLY_MAGIC);
    b.put_u32(option);
    b.put_u32(kind as u32);
    b.put_u32(data.len() as u32);
    b.put_slice(data);
    wr.write_all(&b).await
}

/// The transmission phase: requests read in order, reads served concurrently.
async fn transmit(
    rd: tokio::net::unix::OwnedReadHalf,
    wr: OwnedWriteHalf,
    object: Arc<Object>,
) -> io::Result<()> {
    // Requests come pipelined: their headers are read from one buffer, not a call each.
    let mut rd = tokio::io::BufReader::new(rd);
    let wr = Arc::new(Mutex::new(wr));
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut reads = tokio::task::JoinSet::new();
    loop {
        let mut header = [0u8; 28];
        rd.read_exact(&mut header).await?;
        let field = |at: usize, n: usize| &header[at..at + n];
        let be32 = |b: &[u8]| u32::from_be_bytes(b.try_into().expect("4 bytes"));
        let be64 = |b: &[u8]| u64::from_be_bytes(b.try_into().expect("8 bytes"));
        if be32(field(0, 4)) != REQUEST_MAGIC {
            return Err(protocol("bad request magic"));
        }
        let kind = u16::from_be_bytes([header[6], header[7]]);
        let cookie = be64(field(8, 8));
        let offset = be64(field(16, 8));
        let len = be32(field(24, 4));
        if len > MAX_REQUEST {
            return Err(protocol("request too long"));
        }
        // Finished reads are collected as we go, so the set stays small.
        while reads.try_join_next().is_some() {}
        match Cmd::parse(kind) {
            Some(Cmd::Read) => {
                let in_range = offset
                    .checked_add(len as u64)
                    .is_some_and(|end| end <= object.export_size());
                if !in_range || len == 0 {
                    reply(&wr, cookie, Err(ReplyError::Inval)).await?;
                    continue;
                }
                let slot = slots.clone().acquire_owned().await.expect("never closed");
                let (object, wr) = (object.clone(), wr.clone());
                reads.spawn(async move {
                    let data = object.read(offset, len).await;
                    let sent = match data {
                        Ok(bytes) => reply(&wr, cookie, Ok(&bytes)).await,
                        Err(e) => {
                            object.failed_reads.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(error = %e, offset, len, "NBD read failed");
                            reply(&wr, cookie, Err(ReplyError::Io)).await
                        }
                    };
                    drop(slot);
                    sent
                });
            }
            Some(Cmd::Write) => {
                // Read and dropped: the export is read-only.
                tokio::io::copy(&mut (&mut rd).take(len as u64), &mut tokio::io::sink()).await?;
                reply(&wr, cookie, Err(ReplyError::Perm)).await?;
            }
            Some(Cmd::Disc) => {
                // Replies still owed go out before the connection closes.
                while reads.join_next().await.is_some() {}
                return Ok(());
            }
            // Nothing is written, so nothing is to be flushed.
            Some(Cmd::Flush) => reply(&wr, cookie, Ok(&[])).await?,
            None => reply(&wr, cookie, Err(ReplyError::Inval)).await?,
        }
    }
}

/// `len` bytes of the object from `offset`, read from the store in one ranged read.
async fn fetch(object: &Object, offset: u64, len: u32) -> Result<Chunks, StorageError> {
    let range = ByteRange {
        start: offset,
        end: offset + len as u64 - 1,
    };
    let mut body = object
        .store
        .get(&object.bucket, &object.key, Some(range))
        .await?;
    let (mut chunks, mut got) = (Vec::new(), 0u64);
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        let n = chunk.len() as u64;
        if n > 0 {
            chunks.push((got, chunk));
        }
        got += n;
        if got > len as u64 {
            break;
        }
    }
    if got != len as u64 {
        return Err(StorageError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("a ranged read gave {got} bytes, {len} asked"),
        )));
    }
    Ok(Arc::new(chunks))
}

/// One simple reply: its header (error 0 for a success), then the data of a successful read.
async fn reply(
    wr: &Mutex<OwnedWriteHalf>,
    cookie: u64,
    outcome: Result<&[u8], ReplyError>,
) -> io::Result<()> {
    let (error, data) = match outcome {
        Ok(data) => (0, data),
        Err(e) => (e as u32, &[][..]),
    };
    let mut head = BytesMut::with_capacity(16);
    head.put_u32(SIMPLE_REPLY_MAGIC);
    head.put_u32(error);
    head.put_u64(cookie);
    // Header and data in one vectored write where the socket takes it all.
    let mut reply = head.freeze().chain(data);
    wr.lock().await.write_all_buf(&mut reply).await
}

#[cfg(test)]
mod tests {
    use super::info_requests;

    #[test]
    fn info_requests_are_parsed_strictly() {
        // name "ab", two requests: NBD_INFO_NAME (1) and NBD_INFO_BLOCK_SIZE (3).
        let go = [0, 0, 0, 2, b'a', b'b', 0, 2, 0, 1, 0, 3];
        assert_eq!(info_requests(&go), Some(true));
        let no_block_size = [0, 0, 0, 0, 0, 1, 0, 1];
        assert_eq!(info_requests(&no_block_size), Some(false));
        assert_eq!(info_requests(&[0, 0, 0, 9, b'a']), None);
        assert_eq!(info_requests(&[0, 0, 0, 0, 0, 2, 0, 1]), None);
        assert_eq!(info_requests(&[0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(info_requests(&[]), None);
    }
}
