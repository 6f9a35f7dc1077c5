//! Reads image headers without qemu, to refuse images that name other files before any tool
//! opens them: a qcow2 (or, under a raw name, any header a format-probing consumer would follow
//! to other files; see [`inspect_raw_bytes`]). qcow2 layout from QEMU's
//! `docs/interop/qcow2.txt` (all fields big-endian):
//!
//! - bytes 0..4 magic `QFI\xfb`, 4..8 version (2 or 3), 8..16 backing file offset,
//!   16..20 backing file name length;
//! - version 3: 72..80 incompatible features (bit 2: external data file), 88..96 autoclear
//!   features (bit 1: raw external data file), 100..104 header length;
//! - header extensions follow the header (version 2: at byte 72): type (u32), length (u32),
//!   data padded to 8 bytes; type 0 ends the list, `0x44415441` names the external data file.

use super::{Declared, Image};
use std::{io::Read, path::Path};

pub const MAGIC: &[u8; 4] = b"QFI\xfb";
/// Incompatible feature bit: qemu marked the image corrupt.
const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// Incompatible feature bit: the guest data lives in an external data file.
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// Autoclear feature bit: the external data file is a raw image of the guest.
const AUTOCLEAR_DATA_FILE_RAW: u64 = 1 << 1;
/// Header extension naming the external data file (`"DATA"`).
const EXT_DATA_FILE: u32 = 0x4441_5441;
/// Header extension listing persistent dirty bitmaps (`0x23852875`).
const EXT_BITMAPS: u32 = 0x2385_2875;
/// Autoclear feature bit: the bitmaps extension is valid (qemu ignores it otherwise).
const AUTOCLEAR_BITMAPS: u64 = 1;
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
    /// Under a raw name (`.img`, `.iso`), the header of a format whose images name other
    /// files (VMDK: extent files; VHDX: a parent).
    ForeignFormat(&'static str),
    /// Header extensions that do not end within the first [`HEAD_BYTES`]: qemu reads them to
    /// the end of the first cluster (up to 2 MiB), so what they hold (persistent bitmaps, a
    /// slim would drop) cannot be seen here.
    ExtensionsPastHead,
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
            Refusal::ExtensionsPastHead => write!(
                f,
                "the qcow2 header extensions run past the first {} KiB of the file; such \
                 images are refused",
                HEAD_BYTES >> 10
            ),
            Refusal::ForeignFormat(format) => write!(
                f,
                "the file has a raw image's name but its content is {format}, a format whose \
                 images name other files; images that refer to other files are refused"
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

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
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
    if extensions(b, extensions_at).any(|kind| kind == EXT_DATA_FILE) {
        return Err(Refusal::DataFile);
    }
    // A list cut off by the end of what was read (not by the end of the file, past which
    // qemu reads zeros: the end of the list).
    if b.len() >= HEAD_BYTES && !extensions_end_within(b, extensions_at) {
        return Err(Refusal::ExtensionsPastHead);
    }
    Ok(())
}

/// Whether the header extensions that begin at byte `at` end (type 0) within `b`.
fn extensions_end_within(b: &[u8], mut at: usize) -> bool {
    loop {
        let (Some(kind), Some(len)) = (be32(b, at), be32(b, at + 4)) else {
            return false;
        };
        if kind == 0 {
            return true;
        }
        at = at
            .saturating_add(8)
            .saturating_add((len as usize).div_ceil(8) * 8);
    }
}

/// The types of the header extensions that begin at byte `at`, in order. Extensions end with
/// type 0; a list that runs past what was read names nothing we saw, and qemu itself stops at
/// the end of the first cluster.
fn extensions(b: &[u8], mut at: usize) -> impl Iterator<Item = u32> + '_ {
    std::iter::from_fn(move || {
        let (kind, len) = (be32(b, at)?, be32(b, at + 4)?);
        if kind == 0 {
            return None;
        }
        at = at
            .saturating_add(8)
            .saturating_add((len as usize).div_ceil(8) * 8);
        Some(kind)
    })
}

/// What a qcow2 holds besides its guest's current data, which a conversion (`qemu-img
/// convert`) carries only when asked (persistent bitmaps, `--bitmaps`) or not at all (internal
/// snapshots: it copies one state).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Extras {
    /// Internal snapshots (`nb_snapshots`, header bytes 60..64).
    pub snapshots: u32,
    /// Valid persistent dirty bitmaps (version 3: the bitmaps extension, with its autoclear
    /// bit set).
    pub bitmaps: bool,
    /// The header marks the image corrupt (version 3, incompatible feature bit 1: qemu found
    /// its metadata inconsistent while writing and stopped).
    pub marked_corrupt: bool,
}

impl Extras {
    /// The extras of a qcow2 whose header bytes `b` passed [`inspect_bytes`].
    pub fn of(b: &[u8]) -> Extras {
        let snapshots = be32(b, 60).unwrap_or(0);
        let bitmaps = be32(b, 4) == Some(3)
            && be64(b, 88).is_some_and(|autoclear| autoclear & AUTOCLEAR_BITMAPS != 0)
            && be32(b, 100)
                .is_some_and(|at| extensions(b, at as usize).any(|kind| kind == EXT_BITMAPS));
        let marked_corrupt = be32(b, 4) == Some(3)
            && be64(b, 72).is_some_and(|incompatible| incompatible & INCOMPAT_CORRUPT != 0);
        Extras {
            snapshots,
            bitmaps,
            marked_corrupt,
        }
    }
}

/// The largest L1 table qemu opens (bytes; `QCOW_MAX_L1_SIZE` in QEMU's `block/qcow2.h`).
const MAX_L1_BYTES: u64 = 32 << 20;
/// The offset bits of an L1 entry (bits 9-55).
const L1_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;

/// Where a qcow2's L1 table lies in its file of `size` bytes, from its header `head`: (byte
/// offset, length in bytes). `None` when `head` is no qcow2 header, or the table is empty,
/// larger than qemu opens or not within the file (qemu refuses those itself).
pub fn l1_table(head: &[u8], size: u64) -> Option<(u64, u64)> {
    if !head.starts_with(MAGIC) {
        return None;
    }
    let len = u64::from(be32(head, 36)?) * 8;
    let at = be64(head, 40)?;
    let within = at.checked_add(len).is_some_and(|end| end <= size);
    (len > 0 && len <= MAX_L1_BYTES && within).then_some((at, len))
}

/// Whether two entries of the L1 table `l1` point at the same L2 table. Never so in an image
/// qemu wrote (snapshots share L2 tables between tables, not within one); `qemu-img check`
/// walks a shared table once per entry, so a small file can keep it busy for hours.
pub fn shares_l2_tables(l1: &[u8]) -> bool {
    let mut tables: Vec<u64> = l1
        .chunks_exact(8)
        .map(|e| u64::from_be_bytes(e.try_into().expect("8 bytes")) & L1_OFFSET_MASK)
        .filter(|&at| at != 0)
        .collect();
    tables.sort_unstable();
    tables.windows(2).any(|w| w[0] == w[1])
}

/// The L1 table of the qcow2 `image` whose header is `head` (see [`l1_table`]): read from the
/// file, or the one an NBD export's image came with; empty when there is none to read. Errors
/// are texts for clients.
pub async fn l1_of(image: &Image, head: &[u8]) -> Result<Vec<u8>, String> {
    let path = match image {
        Image::File(p) => p.clone(),
        Image::Nbd { l1, .. } => return Ok(l1.to_vec()),
    };
    let head = head.to_vec();
    let read = move || -> std::io::Result<Vec<u8>> {
        use std::io::{Seek, SeekFrom};
        let mut file = std::fs::File::open(&path)?;
        let size = file.metadata()?.len();
        let Some((at, len)) = l1_table(&head, size) else {
            return Ok(vec![]);
        };
        file.seek(SeekFrom::Start(at))?;
        let mut l1 = Vec::with_capacity(len as usize);
        file.take(len).read_to_end(&mut l1)?;
        Ok(l1)
    };
    match tokio::task::spawn_blocking(read).await {
        Ok(Ok(l1)) => Ok(l1),
        Ok(Err(e)) => Err(format!("cannot read the image: {}", e.kind())),
        Err(_) => Err("cannot read the image".into()),
    }
}

/// QED's magic (`QED\0`, little-endian fields; QEMU's `docs/interop/qed_spec.txt`).
const QED_MAGIC: &[u8; 4] = b"QED\0";
/// QED feature bit: the image has a backing file.
const QED_F_BACKING_FILE: u64 = 1;

/// Checks the first bytes of an image stored under a raw name (`.img`, `.iso`). This service
/// reads such an image as raw bytes (it never probes a format), but a consumer that probes
/// would follow what a recognised header names, so content that names other files is refused
/// as it is under a `.qcow2` name: a qcow2 with a backing or an external data file, a QED with
/// a backing file, a VMDK (sparse or descriptor: it names extent files) and a VHDX (it can
/// name a parent). Anything else, a self-contained qcow2 included (cloud images often come
/// as `.img`), is raw content.
pub fn inspect_raw_bytes(b: &[u8]) -> Result<(), Refusal> {
    if b.starts_with(MAGIC) {
        // Every qcow version (1 as well as 2 and 3) keeps the backing file's offset and
        // length at bytes 8 and 16; QEMU opens a version 1 image and follows its backing file.
        if be64(b, 8).unwrap_or(0) != 0 || be32(b, 16).unwrap_or(0) != 0 {
            return Err(Refusal::BackingFile);
        }
        return match inspect_bytes(b) {
            Err(r @ (Refusal::BackingFile | Refusal::DataFile)) => Err(r),
            _ => Ok(()),
        };
    }
    if b.starts_with(QED_MAGIC) {
        let features = le64(b, 16).unwrap_or(0);
        let backing_len = le32(b, 60).unwrap_or(0);
        if features & QED_F_BACKING_FILE != 0 || backing_len != 0 {
            return Err(Refusal::BackingFile);
        }
        return Ok(());
    }
    // VMDK: the sparse extent magics (`KDMV`, `COWD`) and the text descriptor (by QEMU's
    // probe, or by the first line VMware writes).
    let descriptor = b.starts_with(b"# Disk DescriptorFile") || vmdk_descriptor(b);
    if b.starts_with(b"KDMV") || b.starts_with(b"COWD") || descriptor {
        return Err(Refusal::ForeignFormat("VMDK"));
    }
    if b.starts_with(b"vhdxfile") {
        return Err(Refusal::ForeignFormat("VHDX"));
    }
    Ok(())
}

/// Whether QEMU's VMDK probe (`vmdk_probe` in `block/vmdk.c`) takes `b` for a text descriptor:
/// after any comment lines (`#` to the end of the line) and blank lines (spaces only, LF or
/// CRLF), a line `version=1`, `version=2` or `version=3`. A `# Disk DescriptorFile` first line
/// is one such comment.
fn vmdk_descriptor(b: &[u8]) -> bool {
    let mut p = 0;
    while p < b.len() {
        match b[p] {
            b'#' => {
                p += b[p..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(b.len() - p, |n| n + 1);
            }
            b' ' | b'\r' | b'\n' => {
                while p < b.len() && b[p] == b' ' {
                    p += 1;
                }
                if p < b.len() && b[p] == b'\r' {
                    p += 1;
                }
                if p == b.len() || b[p] != b'\n' {
                    return false;
                }
                p += 1;
            }
            _ => {
                let rest = &b[p..];
                return [b"version=1", b"version=2", b"version=3"].iter().any(|v| {
                    rest.starts_with(*v)
                        && (rest[v.len()..].starts_with(b"\n")
                            || rest[v.len()..].starts_with(b"\r\n"))
                });
            }
        }
    }
    false
}

/// Checks the first bytes of an image of the `declared` format: [`inspect_bytes`] for a qcow2,
/// [`inspect_raw_bytes`] for a raw one.
pub fn inspect_declared(b: &[u8], declared: Declared) -> Result<(), Refusal> {
    match declared {
        Declared::Qcow2 => inspect_bytes(b),
        Declared::Raw => inspect_raw_bytes(b),
    }
}

/// Reads the start of the file at `path` (at most [`HEAD_BYTES`]).
fn read_head(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(HEAD_BYTES);
    std::fs::File::open(path)?
        .take(HEAD_BYTES as u64)
        .read_to_end(&mut head)?;
    Ok(head)
}

/// Refuses an image of the `declared` format whose header says it is not that format (a
/// `.qcow2` that is not qcow2) or names another file, read without qemu (see
/// [`inspect_declared`]). Returns the header bytes read ([`head_of`]). Errors are texts for
/// clients (they never name a path).
pub async fn refuse_foreign_files(image: &Image, declared: Declared) -> Result<Vec<u8>, String> {
    let head = head_of(image).await?;
    inspect_declared(&head, declared).map_err(|r| r.to_string())?;
    Ok(head)
}

/// The first bytes of `image` (at most [`HEAD_BYTES`]): from the file, or those an NBD
/// export's image came with. Errors are texts for clients (they never name a path).
pub async fn head_of(image: &Image) -> Result<Vec<u8>, String> {
    let path = match image {
        Image::File(p) => p.clone(),
        Image::Nbd { head, .. } => return Ok(head.to_vec()),
    };
    match tokio::task::spawn_blocking(move || read_head(&path)).await {
        Ok(Ok(head)) => Ok(head),
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
    fn extension_lists_must_end_within_what_was_read() {
        let mut b = header(3);
        b.resize(HEAD_BYTES, 0);
        assert_eq!(inspect_bytes(&b), Ok(()));
        // An unknown extension whose length runs past the first 64 KiB.
        b[112..116].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        b[116..120].copy_from_slice(&70_000u32.to_be_bytes());
        assert_eq!(inspect_bytes(&b), Err(Refusal::ExtensionsPastHead));
        // The same list in a file that ends there: past the end of a file qemu reads zeros.
        b.truncate(4096);
        assert_eq!(inspect_bytes(&b), Ok(()));
    }

    #[test]
    fn l1_tables_are_found_and_shared_l2_tables_seen() {
        let mut b = header(3);
        b[36..40].copy_from_slice(&4u32.to_be_bytes());
        b[40..48].copy_from_slice(&(3u64 << 16).to_be_bytes());
        assert_eq!(l1_table(&b, 1 << 20), Some((3 << 16, 32)));
        assert_eq!(
            l1_table(&b, (3 << 16) + 31),
            None,
            "past the end of the file"
        );
        assert_eq!(l1_table(b"QED\0", 1 << 20), None);
        b[36..40].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(l1_table(&b, u64::MAX), None, "larger than qemu opens");
        let entry = |at: u64| (at | 1 << 63).to_be_bytes();
        let l1: Vec<u8> = [entry(0x10000), entry(0x20000), [0; 8], [0; 8]].concat();
        assert!(!shares_l2_tables(&l1));
        let l1: Vec<u8> = [entry(0x10000), [0; 8], entry(0x20000), entry(0x10000)].concat();
        assert!(shares_l2_tables(&l1));
    }

    #[test]
    fn a_header_marked_corrupt_is_seen() {
        assert!(!Extras::of(&header(3)).marked_corrupt);
        let mut b = header(3);
        b[72..80].copy_from_slice(&2u64.to_be_bytes());
        assert!(Extras::of(&b).marked_corrupt);
        assert!(!Extras::of(&header(2)).marked_corrupt);
    }

    #[test]
    fn extras_name_snapshots_and_valid_bitmaps() {
        assert_eq!(Extras::of(&header(3)), Extras::default());
        let mut b = header(3);
        b[60..64].copy_from_slice(&2u32.to_be_bytes());
        b[112..116].copy_from_slice(&EXT_BITMAPS.to_be_bytes());
        b[116..120].copy_from_slice(&24u32.to_be_bytes());
        assert_eq!(Extras::of(&b).snapshots, 2);
        // Listed, but invalidated (autoclear bit clear): qemu ignores the bitmaps.
        assert!(!Extras::of(&b).bitmaps);
        b[95] = AUTOCLEAR_BITMAPS as u8;
        assert!(Extras::of(&b).bitmaps);
        // Version 2 has no bitmaps.
        b[4..8].copy_from_slice(&2u32.to_be_bytes());
        assert!(!Extras::of(&b).bitmaps);
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

    /// Under a raw name: content that names other files is refused, a self-contained qcow2
    /// and anything else is raw.
    #[test]
    fn raw_names_refuse_headers_that_name_other_files() {
        assert_eq!(inspect_raw_bytes(b""), Ok(()));
        assert_eq!(inspect_raw_bytes(&[0u8; 4096]), Ok(()));
        assert_eq!(inspect_raw_bytes(b"CD001 an ISO, say"), Ok(()));
        assert_eq!(inspect_raw_bytes(&header(3)), Ok(()));
        assert_eq!(inspect_raw_bytes(&header(3)[..20]), Ok(()));
        let mut b = header(3);
        b[8..16].copy_from_slice(&512u64.to_be_bytes());
        assert_eq!(inspect_raw_bytes(&b), Err(Refusal::BackingFile));
        let mut b = header(3);
        b[79] = INCOMPAT_DATA_FILE as u8;
        assert_eq!(inspect_raw_bytes(&b), Err(Refusal::DataFile));
        let mut qed = vec![0u8; 512];
        qed[..4].copy_from_slice(QED_MAGIC);
        assert_eq!(inspect_raw_bytes(&qed), Ok(()));
        qed[16] = QED_F_BACKING_FILE as u8;
        assert_eq!(inspect_raw_bytes(&qed), Err(Refusal::BackingFile));
        for vmdk in [
            &b"KDMV\x01\x00\x00\x00"[..],
            b"COWD",
            b"# Disk DescriptorFile\nRW 8 FLAT \"/etc/passwd\" 0\n",
            // As QEMU's probe reads a descriptor: comments and blank lines, then a version.
            b"version=1\nRW 1 FLAT \"/etc/passwd\" 0\n",
            b"version=3\r\nRW 1 FLAT \"/etc/passwd\" 0\r\n",
            b"# any comment\n  \n\r\nversion=2\n",
        ] {
            assert_eq!(inspect_raw_bytes(vmdk), Err(Refusal::ForeignFormat("VMDK")));
        }
        for not_vmdk in [
            &b"version=4\n"[..],
            b"  version=1\n",
            b"version=1",
            b"xversion=1\n",
        ] {
            assert_eq!(inspect_raw_bytes(not_vmdk), Ok(()), "{not_vmdk:?}");
        }
        // A qcow version 1 with a backing file (its offset at byte 8, as in qcow2).
        let mut qcow1 = header(3);
        qcow1[4..8].copy_from_slice(&1u32.to_be_bytes());
        assert_eq!(inspect_raw_bytes(&qcow1), Ok(()));
        qcow1[8..16].copy_from_slice(&48u64.to_be_bytes());
        assert_eq!(inspect_raw_bytes(&qcow1), Err(Refusal::BackingFile));
        assert_eq!(
            inspect_raw_bytes(b"vhdxfile"),
            Err(Refusal::ForeignFormat("VHDX"))
        );
        // The qcow2 rules stay the qcow2 name's.
        assert_eq!(
            inspect_declared(b"CD001", Declared::Qcow2),
            Err(Refusal::NotQcow2)
        );
        assert_eq!(inspect_declared(b"CD001", Declared::Raw), Ok(()));
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
