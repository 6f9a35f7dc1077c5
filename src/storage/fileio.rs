//! Streaming between async bodies and local files with few copies: writes are batched
//! (about 1 MiB of received buffers, written with one vectored call on a blocking thread while
//! the next batch arrives); reads are 1 MiB positional reads, one block read ahead.

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

/// An append-only writer for a new file, fed with `Bytes` as they arrive.
pub struct FileSink {
    file: Arc<File>,
    pending: Vec<Bytes>,
    pending_len: usize,
    in_flight: Option<JoinHandle<io::Result<()>>>,
    written: u64,
}

impl FileSink {
    pub fn new(file: File) -> Self {
        Self {
            file: Arc::new(file),
            pending: vec![],
            pending_len: 0,
            in_flight: None,
            written: 0,
        }
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
        self.pending_len = 0;
        let file = self.file.clone();
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            write_all_vectored(&file, &bufs)
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

/// Streams `len` bytes of `file` from `offset`, in 1 MiB blocks with one block read ahead.
pub fn read_stream(file: File, offset: u64, len: u64) -> ByteStream {
    let file = Arc::new(file);
    let read = move |file: Arc<File>, off: u64, n: usize| -> JoinHandle<io::Result<Bytes>> {
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; n];
            file.read_exact_at(&mut buf, off)?;
            Ok(Bytes::from(buf))
        })
    };
    let end = offset + len;
    let first = (len > 0).then(|| read(file.clone(), offset, (len as usize).min(BATCH)));
    futures::stream::unfold((first, offset), move |(current, off)| {
        let file = file.clone();
        async move {
            let handle = current?;
            let block = joined(handle.await);
            let Ok(block) = block else {
                return Some((block, (None, end)));
            };
            let next_off = off + block.len() as u64;
            let next = (next_off < end)
                .then(|| read(file, next_off, ((end - next_off) as usize).min(BATCH)));
            Some((Ok(block), (next, next_off)))
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
