//! The parts of one local multipart upload, kept so that completing it copies nothing in the
//! common case.
//!
//! An upload directory holds `data`, the parts 1..k laid end to end at their final offsets
//! (listed with their lengths in `data.idx`), and `NNNNN.part` files for parts that arrived
//! before their predecessors. A part that extends the contiguous run is appended to `data`
//! (inside the kernel, and synced, so the acknowledgement of a chunk means it is durable), and
//! any waiting part files that now follow are absorbed. Clients that send chunks in order (the
//! existing ones send 50 MiB chunks one after another) therefore end with the whole image in
//! `data`, and completion is a rename.
//!
//! The part that extends the run can also be received straight into `data`
//! ([`begin_in_place`], then [`commit_in_place`]), so that its bytes are written once: the
//! writer writes after the end of the listed parts, and only the index makes them a part. Bytes
//! a writer left there without committing (a dropped request) are not listed, and the next
//! part overwrites them.
//!
//! Locks, always taken in this order: an exclusive `flock` on `data`, the right to write into
//! it (held by an in-place writer for as long as it receives, and by a completion until `data`
//! is published), then one on the directory's `lock` file for each change of the index or the
//! part files. So concurrent chunks of one upload (from any process) are safe. Nothing waits
//! for an in-place writer, whose client may stall: a second writer is not given one (the part
//! is spooled), a part out of order or of the writer's own number waits in a part file (the
//! writer's commit, coming last, replaces the latter), and a completion copies the parts into
//! a new file instead of taking `data`. Only a part already in `data` sent again waits for it.

use super::fileio::copy_between;
use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

/// Held while the directory is changed; released on drop.
struct DirLock {
    _file: File,
}

impl DirLock {
    fn take(dir: &Path) -> io::Result<DirLock> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(DirLock { _file: f })
    }
}

fn part_file(dir: &Path, number: u32) -> PathBuf {
    dir.join(format!("{number:05}.part"))
}

/// Lengths of parts 1..=k stored in `data`, in order. Errors: `NotFound` when the directory
/// itself is gone (the upload was aborted or completed, even while the caller held its `lock`:
/// a discard moves the directory away without it), never an empty index.
fn read_index(dir: &Path) -> io::Result<Vec<u64>> {
    match fs::read_to_string(dir.join("data.idx")) {
        Ok(s) => s
            .lines()
            .map(|l| {
                l.trim()
                    .parse::<u64>()
                    .map_err(|_| io::Error::other("corrupt data.idx"))
            })
            .collect(),
        // The directory is never moved back: found now, it was there when the index was read.
        Err(e) if e.kind() == io::ErrorKind::NotFound && dir.try_exists()? => Ok(vec![]),
        Err(e) => Err(e),
    }
}

fn write_index(dir: &Path, lens: &[u64]) -> io::Result<()> {
    let tmp = dir.join("data.idx.tmp");
    let mut f = File::create(&tmp)?;
    for l in lens {
        writeln!(f, "{l}")?;
    }
    f.sync_all()?;
    fs::rename(tmp, dir.join("data.idx"))
}

/// The error for an upload whose joined parts were moved out by a completion.
fn published() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        "the joined parts are no longer in the upload",
    )
}

/// Opens `data` (creating it while no part is listed) and takes its exclusive lock, the right
/// to change it: waiting for it with `wait`, or `None` when another holder has it.
fn lock_data(dir: &Path, wait: bool) -> io::Result<Option<File>> {
    use std::os::unix::fs::MetadataExt;
    for _ in 0..3 {
        let data = match OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join("data"))
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let _lock = DirLock::take(dir)?;
                if !read_index(dir)?.is_empty() {
                    // Never recreate `data` empty under an index that lists parts in it.
                    return Err(published());
                }
                open_data(dir)?
            }
            Err(e) => return Err(e),
        };
        let op = if wait {
            libc::LOCK_EX
        } else {
            libc::LOCK_EX | libc::LOCK_NB
        };
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(data.as_raw_fd(), op) } != 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EWOULDBLOCK) if !wait => Ok(None),
                _ => Err(e),
            };
        }
        // Still the upload's `data`, not a file a completion moved out meanwhile?
        match fs::metadata(dir.join("data")) {
            Ok(m) if m.ino() == data.metadata()?.ino() => return Ok(Some(data)),
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
    Err(published())
}

fn open_data(dir: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(dir.join("data"))
}

/// Stores part `number` from the spooled file `src` (which is consumed).
pub fn put_part(dir: &Path, number: u32, src: &Path, len: u64) -> io::Result<()> {
    {
        // A part out of order waits in a file of its own; `data` is not touched (nor waited
        // for, while a part is received into it).
        let _lock = DirLock::take(dir)?;
        if number as usize > read_index(dir)?.len() + 1 {
            return park(dir, number, src, len);
        }
    }
    let data = match lock_data(dir, false)? {
        Some(data) => data,
        None => {
            // A writer holds `data`, receiving part k+1 in place. This part, when it is that
            // same number, waits aside like a part out of order (whichever of the two finishes
            // last is kept: the writer's commit drops it); never wait for a writer, whose
            // client may be slow.
            let _lock = DirLock::take(dir)?;
            if number as usize == read_index(dir)?.len() + 1 {
                return park(dir, number, src, len);
            }
            drop(_lock);
            // A part already in `data` sent again: its bytes are needed in their place.
            lock_data(dir, true)?.ok_or_else(published)?
        }
    };
    let _lock = DirLock::take(dir)?;
    let mut lens = read_index(dir)?;
    let n = number as usize;
    if n <= lens.len() {
        let offset: u64 = lens[..n - 1].iter().sum();
        if lens[n - 1] == len {
            // Re-sent with the same length: overwrite in place.
            copy_between(&File::open(src)?, 0, &data, offset, len)?;
            data.sync_all()?;
            return fs::remove_file(src);
        }
        // Another length: parts after it move out of `data` into part files of their own.
        let mut off = offset + lens[n - 1];
        for (i, l) in lens.iter().enumerate().skip(n) {
            let tmp = dir.join(format!("{:05}.part.tmp", i + 1));
            let out = File::create(&tmp)?;
            copy_between(&data, off, &out, 0, *l)?;
            out.sync_all()?;
            fs::rename(&tmp, part_file(dir, i as u32 + 1))?;
            off += l;
        }
        lens.truncate(n - 1);
        write_index(dir, &lens)?;
        data.set_len(offset)?;
    }
    if n == lens.len() + 1 {
        let end: u64 = lens.iter().sum();
        let end = copy_between(&File::open(src)?, 0, &data, end, len)?;
        fs::remove_file(src)?;
        return extend(dir, &data, lens, number, len, end);
    }
    park(dir, number, src, len)
}

/// Records part `number` (`len` bytes), just written into `data` after the parts of `lens`
/// and ending at `end`, absorbs the parts that were waiting for it, and makes it all durable.
fn extend(
    dir: &Path,
    data: &File,
    mut lens: Vec<u64>,
    number: u32,
    len: u64,
    mut end: u64,
) -> io::Result<()> {
    lens.push(len);
    let _ = fs::remove_file(part_file(dir, number));
    // Absorb parts that were waiting for this one.
    loop {
        let next = part_file(dir, lens.len() as u32 + 1);
        let f = match File::open(&next) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => break,
            Err(e) => return Err(e),
        };
        let l = f.metadata()?.len();
        end = copy_between(&f, 0, data, end, l)?;
        lens.push(l);
        fs::remove_file(&next)?;
    }
    data.set_len(end)?;
    data.sync_all()?;
    write_index(dir, &lens)
}

/// Keeps part `number` (the spooled file `src`, `len` bytes) in a file of its own, until the
/// parts before it are in `data`.
fn park(dir: &Path, number: u32, src: &Path, len: u64) -> io::Result<()> {
    File::open(src)?.sync_all()?;
    match fs::rename(src, part_file(dir, number)) {
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            let tmp = dir.join(format!("{number:05}.part.tmp"));
            let f = File::open(src)?;
            let out = File::create(&tmp)?;
            copy_between(&f, 0, &out, 0, len)?;
            out.sync_all()?;
            fs::rename(&tmp, part_file(dir, number))?;
            fs::remove_file(src)
        }
        other => other,
    }
}

/// Whether the contiguous parts were already moved out as a finished object (by a completion
/// that died before it removed the directory): the index lists parts but `data` is gone.
pub fn data_published(dir: &Path) -> io::Result<bool> {
    Ok(!read_index(dir)?.is_empty() && !dir.join("data").try_exists()?)
}

/// Assembles `numbers` (ascending) into the file `out_tmp`, or returns `data` itself when it
/// already holds them: the path of the finished, synced file, and `data` with its lock held
/// when it is that file (keep it until the file is published: no part is written into `data`
/// meanwhile). While a writer receives a part into `data`, the parts are copied into
/// `out_tmp` instead (the writer's bytes lie after them, uncommitted): never wait for it.
pub fn assemble(
    dir: &Path,
    numbers: &[u32],
    out_tmp: &Path,
) -> io::Result<(PathBuf, Option<File>)> {
    let held = lock_data(dir, false)?;
    let _lock = DirLock::take(dir)?;
    let lens = read_index(dir)?;
    let k = lens.len() as u32;
    let in_data: Vec<u32> = numbers.iter().copied().filter(|&n| n <= k).collect();
    let prefix = in_data.iter().enumerate().all(|(i, &n)| n == i as u32 + 1);
    let missing = |n: u32| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("part {n} was never stored"),
        )
    };
    if let (true, Some(data)) = (prefix, held.as_ref()) {
        // Fast path: keep `data`, cut it after the parts asked for, append the rest.
        let mut end: u64 = lens[..in_data.len()].iter().sum();
        for &n in numbers.iter().filter(|&&n| n > k) {
            let f = File::open(part_file(dir, n)).map_err(|_| missing(n))?;
            let l = f.metadata()?.len();
            end = copy_between(&f, 0, data, end, l)?;
        }
        data.set_len(end)?;
        data.sync_all()?;
        return Ok((dir.join("data"), held));
    }
    let data = match &held {
        Some(data) => data.try_clone()?,
        None => File::open(dir.join("data"))?,
    };
    // General case (a subset of the contiguous parts): copy the pieces into a new file.
    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out_tmp)?;
    let mut end = 0u64;
    for &n in numbers {
        if n <= k {
            let off: u64 = lens[..n as usize - 1].iter().sum();
            end = copy_between(&data, off, &out, end, lens[n as usize - 1])?;
        } else {
            let f = File::open(part_file(dir, n)).map_err(|_| missing(n))?;
            let l = f.metadata()?.len();
            end = copy_between(&f, 0, &out, end, l)?;
        }
    }
    out.sync_all()?;
    Ok((out_tmp.to_path_buf(), None))
}

/// Opens `data` for part `number` to be received into it in place, when that part is the one
/// that extends the run in `data` and no other writer holds `data`: the locked file and the
/// offset (bytes) where the part begins. `None` otherwise (spool it and use [`put_part`]).
pub fn begin_in_place(dir: &Path, number: u32) -> io::Result<Option<(File, u64)>> {
    let Some(data) = lock_data(dir, false)? else {
        return Ok(None);
    };
    let _lock = DirLock::take(dir)?;
    let lens = read_index(dir)?;
    if number as usize != lens.len() + 1 {
        return Ok(None);
    }
    Ok(Some((data, lens.iter().sum())))
}

/// Records part `number`, received into `data` (the file [`begin_in_place`] returned, whose
/// lock is still held) from `offset` for `len` bytes, as [`put_part`] would have stored it.
pub fn commit_in_place(
    dir: &Path,
    data: &File,
    number: u32,
    offset: u64,
    len: u64,
) -> io::Result<()> {
    let _lock = DirLock::take(dir)?;
    let lens = read_index(dir)?;
    if number as usize != lens.len() + 1 || lens.iter().sum::<u64>() != offset {
        // Cannot happen while the lock on `data` was held; never record a part elsewhere.
        return Err(io::Error::other(
            "the upload's parts changed under a part in place",
        ));
    }
    extend(dir, data, lens, number, len, offset + len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upload discarded while a part is received in place (its directory moved away, as
    /// `LocalStore::discard_upload_dir` does, between the commit's lock and its read of the
    /// index): the commit finds the upload gone (`NotFound`, a 409 for the chunk), not an
    /// empty index it would call "the parts changed" (a 500).
    #[test]
    fn a_directory_moved_away_is_gone_not_empty() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("upload");
        fs::create_dir(&dir).unwrap();
        let src = root.path().join("one");
        fs::write(&src, b"first").unwrap();
        put_part(&dir, 1, &src, 5).unwrap();
        let (data, offset) = begin_in_place(&dir, 2).unwrap().unwrap();
        assert_eq!(offset, 5);
        assert_eq!(read_index(&dir).unwrap(), vec![5]);
        fs::rename(&dir, root.path().join("trash")).unwrap();
        let e = read_index(&dir).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let e = commit_in_place(&dir, &data, 2, offset, 3).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        // A directory without an index yet holds no part.
        let fresh = root.path().join("fresh");
        fs::create_dir(&fresh).unwrap();
        assert!(read_index(&fresh).unwrap().is_empty());
    }
}
