//! Unpacking an uploaded zip: exactly one image, inside a folder, nothing unsafe.
//!
//! Every entry is inspected before anything is extracted: absolute paths, `..`, drive letters,
//! links and special files reject the whole archive. `\` separates path components as it does
//! for common unzip tools (Windows archivers write it). Metadata that archivers add (macOS
//! `__MACOSX/` folders and AppleDouble `._*` files, `.DS_Store`, `Thumbs.db`, `desktop.ini`) is
//! ignored: never stored, never counted as an image. The image is then streamed out of the
//! archive and refused when its bytes do not match what the archive declares (size and CRC-32,
//! from the central directory), when it grows past the size limit, or when it inflates more
//! than `max_ratio` times its compressed size (a zip bomb), whatever its headers say.

use super::{error::echoed, validate};
use bytes::Bytes;
use std::{fs::File, io::Read, path::Path};
use tokio::sync::mpsc;

/// The image entry found in an archive.
#[derive(Debug, Clone)]
pub struct ZipImage {
    pub index: usize,
    /// Base name of the entry: the stored image's `fileName`.
    pub file_name: String,
    /// Uncompressed size and CRC-32 the archive declares for the entry.
    pub declared_size: u64,
    pub declared_crc32: u32,
    /// Compressed size of the entry (bytes).
    pub compressed_size: u64,
}

/// What an archive may expand to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest image (bytes).
    pub max_bytes: u64,
    /// Largest inflated/compressed ratio of the image entry; 0 = no bound.
    pub max_ratio: u64,
}

/// Inflated bytes below which the ratio is not judged (tiny entries compress oddly).
const RATIO_GRACE_BYTES: u64 = 64 << 10;

/// Why an archive was refused (shown to the client).
pub type Refusal = String;

/// An entry name with `\` read as a separator, or a refusal when it could leave the folder it
/// is unpacked into: absolute, a drive letter, `..` in any spelling, NUL.
fn normalized(raw: &str) -> Result<String, Refusal> {
    let name = raw.replace('\\', "/");
    let unsafe_path = name.starts_with('/')
        || name.contains('\0')
        || name.split('/').any(|c| c == ".." || c.contains(':'));
    if unsafe_path {
        return Err(format!("unsafe entry path in archive: {:?}", echoed(raw)));
    }
    Ok(name)
}

/// Files archivers add beside the content (resource forks, folder settings, thumbnails).
fn is_archiver_metadata(name: &str) -> bool {
    let base = name.rsplit('/').next().unwrap_or(name);
    name.split('/').any(|c| c == "__MACOSX")
        || base.starts_with("._")
        || matches!(base, ".DS_Store" | "Thumbs.db" | "desktop.ini")
}

/// Inflated bytes past the allowed ratio to `compressed` bytes.
fn past_ratio(inflated: u64, compressed: u64, max_ratio: u64) -> bool {
    max_ratio > 0
        && inflated > RATIO_GRACE_BYTES
        && inflated > compressed.max(1).saturating_mul(max_ratio)
}

fn open(path: &Path) -> Result<zip::ZipArchive<File>, Refusal> {
    let file = File::open(path).map_err(|e| format!("cannot read the uploaded archive: {e}"))?;
    zip::ZipArchive::new(file).map_err(|e| format!("not a valid zip archive: {e}"))
}

/// Most entries an uploaded archive may hold (an image, its folder and a few notes are
/// usual): listing an archive costs memory per entry, so millions are refused unread.
pub const MAX_ENTRIES: u64 = 10_000;

/// How many entries the archive's end-of-central-directory record declares (the zip64 record
/// when the classic one says 0xFFFF), read before the directory itself; `None` when no such
/// record is found (the zip crate then says why the archive is invalid). Layout: APPNOTE.TXT
/// sections 4.3.14 to 4.3.16.
fn declared_entries(path: &Path) -> std::io::Result<Option<u64>> {
    use std::io::{Seek, SeekFrom};
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let tail_len = len.min(22 + 65_535 + 20);
    f.seek(SeekFrom::Start(len - tail_len))?;
    let mut tail = vec![0u8; tail_len as usize];
    f.read_exact(&mut tail)?;
    let Some(eocd) = tail.windows(4).rposition(|w| w == b"PK\x05\x06") else {
        return Ok(None);
    };
    let Some(count) = tail.get(eocd + 10..eocd + 12) else {
        return Ok(None);
    };
    let count = u16::from_le_bytes([count[0], count[1]]);
    if count != u16::MAX {
        return Ok(Some(count.into()));
    }
    // Zip64: a locator just before the record gives the offset of the zip64 record.
    let locator = eocd.checked_sub(20).and_then(|at| tail.get(at..at + 20));
    let Some(offset) = locator
        .filter(|l| l.starts_with(b"PK\x06\x07"))
        .map(|l| u64::from_le_bytes(l[8..16].try_into().expect("8 bytes")))
    else {
        return Ok(Some(count.into()));
    };
    let mut record = [0u8; 40];
    if offset.saturating_add(40) > len {
        return Ok(None);
    }
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(&mut record)?;
    if !record.starts_with(b"PK\x06\x06") {
        return Ok(None);
    }
    Ok(Some(u64::from_le_bytes(
        record[32..40].try_into().expect("8 bytes"),
    )))
}

/// Opens the archive after checking how many entries it declares; refuses archives whose
/// directory holds two entries of one name (readers disagree on which one counts: the zip
/// crate keeps the last, Java's streaming reader the first).
fn open_listed(path: &Path) -> Result<zip::ZipArchive<File>, Refusal> {
    let declared =
        declared_entries(path).map_err(|e| format!("cannot read the uploaded archive: {e}"))?;
    if let Some(n) = declared.filter(|n| *n > MAX_ENTRIES) {
        return Err(format!(
            "the archive holds {n} entries; at most {MAX_ENTRIES} are accepted"
        ));
    }
    let archive = open(path)?;
    if declared.is_some_and(|n| n != archive.len() as u64) {
        return Err("the archive holds several entries with the same name".into());
    }
    Ok(archive)
}

/// Finds the single image of the archive at `path`, checking every entry.
pub fn find_image(path: &Path, limits: Limits) -> Result<ZipImage, Refusal> {
    let mut archive = open_listed(path)?;
    let mut found: Option<ZipImage> = None;
    for i in 0..archive.len() {
        let entry = archive
            .by_index_raw(i)
            .map_err(|e| format!("damaged zip entry {i}: {e}"))?;
        let name = normalized(entry.name())?;
        if entry.is_symlink() {
            return Err(format!(
                "links are not allowed in the archive: {:?}",
                echoed(&name)
            ));
        }
        if entry.is_dir() || name.ends_with('/') {
            continue;
        }
        if let Some(mode) = entry.unix_mode() {
            let kind = mode & 0o170000;
            if kind != 0 && kind != 0o100000 {
                return Err(format!("special file in archive: {:?}", echoed(&name)));
            }
        }
        let base = name.rsplit('/').next().unwrap_or(&name);
        if is_archiver_metadata(&name) || !validate::is_image_name(base) {
            continue;
        }
        if found.is_some() {
            return Err("the archive holds more than one image".into());
        }
        if !name.trim_start_matches("./").contains('/') {
            return Err(format!(
                "the image {:?} must be inside a folder in the archive (e.g. myimg/myimg.qcow2)",
                echoed(&name)
            ));
        }
        let file_name = validate::file_name(base).ok_or_else(|| {
            format!(
                "image name {:?} in the archive is not allowed (its extension, over 128 \
                 characters, or a control or bidirectional formatting character)",
                echoed(base)
            )
        })?;
        found = Some(ZipImage {
            index: i,
            file_name,
            declared_size: entry.size(),
            declared_crc32: entry.crc32(),
            compressed_size: entry.compressed_size(),
        });
    }
    let image = found.ok_or("the archive holds no image (.qcow2, .img or .iso)")?;
    if image.declared_size > limits.max_bytes {
        return Err(format!(
            "the image in the archive expands to {} bytes, past the limit of {}",
            image.declared_size, limits.max_bytes
        ));
    }
    if past_ratio(image.declared_size, image.compressed_size, limits.max_ratio) {
        return Err(bomb(limits.max_ratio));
    }
    Ok(image)
}

fn bomb(max_ratio: u64) -> Refusal {
    format!(
        "the image in the archive expands more than {max_ratio} times its compressed size (a zip bomb)"
    )
}

/// Streams the entry's bytes into `tx` (blocking; run it on a blocking thread). Stops with a
/// refusal when the entry grows past its declared size or the size limit, past the ratio
/// bound, or ends with another size or CRC-32 than declared.
pub fn extract(
    path: &Path,
    image: &ZipImage,
    limits: Limits,
    tx: mpsc::Sender<std::io::Result<Bytes>>,
) -> Result<(), Refusal> {
    let refuse = |msg: String| {
        let _ = tx.blocking_send(Err(std::io::Error::other(msg.clone())));
        Err(msg)
    };
    let mut archive = open(path)?;
    let mut entry = archive
        .by_index(image.index)
        .map_err(|e| format!("cannot read the image in the archive: {e}"))?;
    let mut total = 0u64;
    let mut crc = crc32fast::Hasher::new();
    loop {
        let mut buf = vec![0u8; 256 * 1024];
        let n = match entry.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            // The zip crate checks the CRC-32 itself at the end of the entry.
            Err(e) if e.to_string().contains("checksum") => return refuse(mismatch(image)),
            Err(e) => return refuse(format!("the image in the archive is damaged: {e}")),
        };
        total += n as u64;
        if total > limits.max_bytes {
            return refuse(format!(
                "the image in the archive expands past the limit of {} bytes",
                limits.max_bytes
            ));
        }
        if total > image.declared_size {
            return refuse(format!(
                "the image in the archive is larger than the {} bytes the archive declares",
                image.declared_size
            ));
        }
        if past_ratio(total, image.compressed_size, limits.max_ratio) {
            return refuse(bomb(limits.max_ratio));
        }
        buf.truncate(n);
        crc.update(&buf);
        if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
            return Err("extraction stopped".into());
        }
    }
    if total != image.declared_size || crc.finalize() != image.declared_crc32 {
        return refuse(mismatch(image));
    }
    Ok(())
}

fn mismatch(image: &ZipImage) -> Refusal {
    format!(
        "the image in the archive does not match its declared size ({} bytes) and CRC-32",
        image.declared_size
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(normalized("myimg\\myimg.img").unwrap(), "myimg/myimg.img");
        for bad in [
            "../x.img",
            "a/../../x.img",
            "..\\x.img",
            "a\\..\\..\\x.img",
            "/etc/x.img",
            "\\etc\\x.img",
            "C:\\x\\y.img",
            "c:x.img",
            "a/b\0.img",
        ] {
            assert!(normalized(bad).is_err(), "{bad}");
        }
        assert!(is_archiver_metadata("__MACOSX/myimg/._myimg.img"));
        assert!(is_archiver_metadata("myimg/._myimg.img"));
        assert!(is_archiver_metadata("myimg/.DS_Store"));
        assert!(!is_archiver_metadata("myimg/myimg.img"));
    }

    #[test]
    fn ratios() {
        assert!(!past_ratio(1 << 20, 1 << 10, 0));
        assert!(past_ratio(1 << 20, 1 << 10, 1000));
        assert!(!past_ratio(1 << 20, 2 << 10, 1000));
        assert!(
            !past_ratio(60 << 10, 1, 1000),
            "small entries are not judged"
        );
        assert!(past_ratio(1 << 30, 0, 1000));
    }
}
