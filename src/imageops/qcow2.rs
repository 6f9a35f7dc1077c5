//! Reads a qcow2 header without qemu, to refuse images that name other files before any tool
//! opens them. Layout from QEMU's `docs/interop/qcow2.txt` (all fields big-endian):
//!
//! - bytes 0..4 magic `QFI\xfb`, 4..8 version (2 or 3), 8..16 backing file offset,
//!   16..20 backing file name length;
//! - version 3: 72..80 incompatible features (bit 2: external data file), 88..96 autoclear
//!   features (bit 1: raw external data file), 100..104 header length;
//! - header extensions follow the header (version 2: at byte 72): type (u32), length (u32),
//!   data padded to 8 bytes; type 0 ends the list, `0x44415441` names the external data file.

use super::Image;
use std::{io::Read, path::Path};

pub const MAGIC: &[u8; 4] = b"QFI\xfb";
/// Incompatible feature bit: the guest data lives in an external data file.
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// Autoclear feature bit: the external data file is a raw image of the guest.
const AUTOCLEAR_DATA_FILE_RAW: u64 = 1 << 1;
/// Header extension naming the external data file (`"DATA"`).
const EXT_DATA_FILE: u32 = 0x4441_5441;
/// How much of the file is read: the header and its extensions fit in the first cluster, and
/// the smallest cluster is 512 bytes; 64 KiB covers the default cluster size.
pub const HEAD_BYTES: usize = 64 << 10;

/// Why a qcow2 is refused. Texts are shown to clients: they never repeat a name found in the
/// image (it could be a path of the server host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NotQcow2,
    Truncated,
    UnsupportedVersion(u32),
    BackingFile,
    DataFile,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NotQcow2 => f.write_str("the file is named .qcow2 but its content is not qcow2"),
            Refusal::Truncated => f.write_str("the qcow2 header is truncated"),
            Refusal::UnsupportedVersion(v) => write!(f, "unsupported qcow2 version {v}"),
            Refusal::BackingFile => f.write_str(
                "the image names a backing file; images that refer to other files are refused",
            ),
            Refusal::DataFile => f.write_str(
                "the image names an external data file; images that refer to other files are refused",
            ),
        }
    }
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Checks the header bytes of a qcow2 image: `Ok` when it is a qcow2 that refers to no other
/// file (no backing file, no external data file).
pub fn inspect_bytes(b: &[u8]) -> Result<(), Refusal> {
    if b.len() < 4 || &b[..4] != MAGIC {
        return Err(Refusal::NotQcow2);
    }
    let version = be32(b, 4).ok_or(Refusal::Truncated)?;
    if version != 2 && version != 3 {
        return Err(Refusal::UnsupportedVersion(version));
    }
    let backing_offset = be64(b, 8).ok_or(Refusal::Truncated)?;
    let backing_len = be32(b, 16).ok_or(Refusal::Truncated)?;
    if backing_offset != 0 || backing_len != 0 {
        return Err(Refusal::BackingFile);
    }
    let extensions_at = if version == 2 {
        72
    } else {
        let incompatible = be64(b, 72).ok_or(Refusal::Truncated)?;
        let autoclear = be64(b, 88).ok_or(Refusal::Truncated)?;
        if incompatible & INCOMPAT_DATA_FILE != 0 || autoclear & AUTOCLEAR_DATA_FILE_RAW != 0 {
            return Err(Refusal::DataFile);
        }
        be32(b, 100).ok_or(Refusal::Truncated)? as usize
    };
    let mut at = extensions_at;
    // Extensions end with type 0; a list that runs past what was read names nothing we saw,
    // and qemu itself stops at the end of the first cluster.
    while let (Some(kind), Some(len)) = (be32(b, at), be32(b, at + 4)) {
        if kind == 0 {
            break;
        }
        if kind == EXT_DATA_FILE {
            return Err(Refusal::DataFile);
        }
        at = at
            .saturating_add(8)
            .saturating_add((len as usize).div_ceil(8) * 8);
    }
    Ok(())
}

/// Reads the start of the file at `path` and checks it (see `inspect_bytes`).
pub fn inspect(path: &Path) -> std::io::Result<Result<(), Refusal>> {
    let mut head = Vec::with_capacity(HEAD_BYTES);
    std::fs::File::open(path)?
        .take(HEAD_BYTES as u64)
        .read_to_end(&mut head)?;
    Ok(inspect_bytes(&head))
}

/// Refuses a qcow2 whose header is not qcow2 or names another file (read without qemu): from
/// the file, or from the first bytes an NBD export's image came with.
pub async fn refuse_foreign_files(image: &Image) -> Result<(), String> {
    let path = match image {
        Image::File(p) => p.clone(),
        Image::Nbd { head, .. } => return inspect_bytes(head).map_err(|r| r.to_string()),
    };
    match tokio::task::spawn_blocking(move || inspect(&path)).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(refusal))) => Err(refusal.to_string()),
        Ok(Err(e)) => Err(format!("cannot read the image: {}", e.kind())),
        Err(_) => Err("cannot read the image".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(version: u32) -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[..4].copy_from_slice(MAGIC);
        b[4..8].copy_from_slice(&version.to_be_bytes());
        if version == 3 {
            b[100..104].copy_from_slice(&112u32.to_be_bytes());
        }
        b
    }

    #[test]
    fn plain_images_pass() {
        assert_eq!(inspect_bytes(&header(2)), Ok(()));
        assert_eq!(inspect_bytes(&header(3)), Ok(()));
    }

    #[test]
    fn other_files_are_refused() {
        let mut b = header(3);
        b[8..16].copy_from_slice(&512u64.to_be_bytes());
        assert_eq!(inspect_bytes(&b), Err(Refusal::BackingFile));
        let mut b = header(2);
        b[16..20].copy_from_slice(&9u32.to_be_bytes());
        assert_eq!(inspect_bytes(&b), Err(Refusal::BackingFile));
        let mut b = header(3);
        b[79] = INCOMPAT_DATA_FILE as u8;
        assert_eq!(inspect_bytes(&b), Err(Refusal::DataFile));
        let mut b = header(3);
        b[95] = AUTOCLEAR_DATA_FILE_RAW as u8;
        assert_eq!(inspect_bytes(&b), Err(Refusal::DataFile));
        // A data file named in an extension after an unrelated one.
        let mut b = header(3);
        b[112..116].copy_from_slice(&0x6803_f857u32.to_be_bytes());
        b[116..120].copy_from_slice(&5u32.to_be_bytes());
        b[128..132].copy_from_slice(&EXT_DATA_FILE.to_be_bytes());
        b[132..136].copy_from_slice(&4u32.to_be_bytes());
        assert_eq!(inspect_bytes(&b), Err(Refusal::DataFile));
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        assert_eq!(inspect_bytes(b""), Err(Refusal::NotQcow2));
        assert_eq!(inspect_bytes(b"QFI"), Err(Refusal::NotQcow2));
        assert_eq!(inspect_bytes(&header(3)[..20]), Err(Refusal::Truncated));
        assert_eq!(
            inspect_bytes(&header(7)),
            Err(Refusal::UnsupportedVersion(7))
        );
        let mut b = header(3);
        b[100..104].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(inspect_bytes(&b), Ok(()));
        let mut b = header(3);
        b[112..116].copy_from_slice(&1u32.to_be_bytes());
        b[116..120].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(inspect_bytes(&b), Ok(()));
    }
}
