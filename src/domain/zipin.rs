//! Unpacking an uploaded zip: exactly one image, inside a folder, nothing unsafe.
//!
//! Every entry is inspected before anything is extracted: absolute paths, `..`, links and
//! special files reject the whole archive. The image is then streamed out of the archive with
//! the size limit enforced on the bytes actually produced (declared sizes can lie), and the zip
//! crate verifies the entry's CRC-32 at its end.

use super::validate;
use bytes::Bytes;
use std::{fs::File, io::Read, path::Path};
use tokio::sync::mpsc;

/// The image entry found in an archive.
#[derive(Debug, Clone)]
pub struct ZipImage {
    pub index: usize,
    /// Base name of the entry: the stored image's `fileName`.
    pub file_name: String,
}

/// Why an archive was refused (shown to the client).
pub type Refusal = String;

fn open(path: &Path) -> Result<zip::ZipArchive<File>, Refusal> {
    let file = File::open(path).map_err(|e| format!("cannot read the uploaded archive: {e}"))?;
    zip::ZipArchive::new(file).map_err(|e| format!("not a valid zip archive: {e}"))
}

/// Finds the single image of the archive at `path`, checking every entry.
pub fn find_image(path: &Path, max_bytes: u64) -> Result<ZipImage, Refusal> {
    let mut archive = open(path)?;
    let mut found: Option<(ZipImage, u64)> = None;
    for i in 0..archive.len() {
        let entry = archive
            .by_index_raw(i)
            .map_err(|e| format!("damaged zip entry {i}: {e}"))?;
        let name = entry.name().to_string();
        let unsafe_path = entry.enclosed_name().is_none()
            || name.starts_with('/')
            || name.contains('\\')
            || name.contains('\0')
            || name.split('/').any(|c| c == "..");
        if unsafe_path {
            return Err(format!("unsafe entry path in archive: {name:?}"));
        }
        if entry.is_symlink() {
            return Err(format!("links are not allowed in the archive: {name:?}"));
        }
        if entry.is_dir() {
            continue;
        }
        if let Some(mode) = entry.unix_mode() {
            let kind = mode & 0o170000;
            if kind != 0 && kind != 0o100000 {
                return Err(format!("special file in archive: {name:?}"));
            }
        }
        let base = name.rsplit('/').next().unwrap_or(&name);
        if !validate::is_image_name(base) {
            continue;
        }
        if found.is_some() {
            return Err("the archive holds more than one image".into());
        }
        if !name.trim_start_matches("./").contains('/') {
            return Err(format!(
                "the image {name:?} must be inside a folder in the archive (e.g. myimg/myimg.qcow2)"
            ));
        }
        let file_name = validate::file_name(base).ok_or_else(|| {
            format!("image name {base:?} in the archive is not allowed (extension or over 128 characters)")
        })?;
        found = Some((
            ZipImage {
                index: i,
                file_name,
            },
            entry.size(),
        ));
    }
    let (image, declared) = found.ok_or("the archive holds no image (.qcow2, .img or .iso)")?;
    if declared > max_bytes {
        return Err(format!(
            "the image in the archive expands to {declared} bytes, past the limit of {max_bytes}"
        ));
    }
    Ok(image)
}

/// Streams the entry's bytes into `tx` (blocking; run it on a blocking thread). Stops with a
/// refusal when the entry grows past `max_bytes` or fails its CRC check.
pub fn extract(
    path: &Path,
    index: usize,
    max_bytes: u64,
    tx: mpsc::Sender<std::io::Result<Bytes>>,
) -> Result<(), Refusal> {
    let mut archive = open(path)?;
    let mut entry = archive
        .by_index(index)
        .map_err(|e| format!("cannot read the image in the archive: {e}"))?;
    let mut total = 0u64;
    loop {
        let mut buf = vec![0u8; 256 * 1024];
        let n = match entry.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) => {
                let msg = format!("the image in the archive is damaged: {e}");
                let _ = tx.blocking_send(Err(std::io::Error::other(msg.clone())));
                return Err(msg);
            }
        };
        total += n as u64;
        if total > max_bytes {
            let msg =
                format!("the image in the archive expands past the limit of {max_bytes} bytes");
            let _ = tx.blocking_send(Err(std::io::Error::other(msg.clone())));
            return Err(msg);
        }
        buf.truncate(n);
        if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
            return Err("extraction stopped".into());
        }
    }
}
