//! Exclusive ownership of a directory by one process.
//!
//! The scratch directory (private to a replica) and the local store's directory are emptied or
//! swept at start-up on the assumption that no other process writes there. A second process
//! started on the same directories by mistake must fail before it touches them. The lock is
//! `flock(2)` on the directory itself (through `std::fs::File::try_lock`): the kernel drops it
//! when the process dies, even by SIGKILL, so a crash never leaves a stale lock behind.

use std::{fs::File, io, path::Path};

/// Holds the exclusive lock on a directory for as long as it lives.
#[derive(Debug)]
pub struct DirLock {
    _dir: File,
}

/// Locks `dir` (which must exist) for this process, or fails at once when another process
/// holds it. The error names the directory and says what to do.
pub fn lock(dir: &Path, what: &str) -> io::Result<DirLock> {
    let file = File::open(dir)?;
    match file.try_lock() {
        Ok(()) => Ok(DirLock { _dir: file }),
        Err(std::fs::TryLockError::WouldBlock) => Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!(
                "the {what} {} is in use by another file-system process; give each process \
                 its own (or stop the other one)",
                dir.display()
            ),
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_fails_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock(dir.path(), "scratch directory").unwrap();
        let err = lock(dir.path(), "scratch directory").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert!(err.to_string().contains("in use by another"), "{err}");
        drop(first);
        lock(dir.path(), "scratch directory").unwrap();
    }
}
