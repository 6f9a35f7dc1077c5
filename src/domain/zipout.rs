//! A one-entry zip archive streamed on the fly around an object's bytes.
//!
//! The entry is STORED with its CRC-32 and sizes in the local header (no data descriptor), so
//! Java's `ZipInputStream` reads it; entries from 4 GiB on use zip64. The total length is known
//! up front, so the response carries `Content-Length`.

use crate::storage::ByteStream;
use bytes::{BufMut, Bytes, BytesMut};
use futures::{stream, StreamExt};

/// Sizes from which zip64 records are written (a margin below 4 GiB keeps every offset, the
/// central directory's included, inside 32 bits when zip64 is off).
const ZIP64_FROM: u64 = 0xFFFF_0000;
const FLAG_UTF8: u16 = 1 << 11;

/// Describes the single entry of the archive.
pub struct ZipEntry {
    pub name: String,
    pub size: u64,
    pub crc32: u32,
    /// DOS date and time of the entry.
    pub dos_date: u16,
    pub dos_time: u16,
}

impl ZipEntry {
    fn zip64(&self) -> bool {
        self.size >= ZIP64_FROM
    }

    fn version(&self) -> u16 {
        if self.zip64() {
            45
        } else {
            20
        }
    }

    fn local_header(&self) -> Bytes {
        let name = self.name.as_bytes();
        let mut b = BytesMut::with_capacity(30 + name.len() + 20);
        b.put_u32_le(0x0403_4b50);
        b.put_u16_le(self.version());
        self.put_entry_fields(&mut b);
        b.put_slice(name);
        self.put_zip64_extra(&mut b);
        b.freeze()
    }

    /// The fields the local header and the central directory header share, from the flags to
    /// the extra field's length (APPNOTE 4.3.7 and 4.3.12): UTF-8 name, stored, the DOS time
    /// and date, CRC-32, sizes (`u32::MAX` with zip64), name length, extra length.
    fn put_entry_fields(&self, b: &mut BytesMut) {
        b.put_u16_le(FLAG_UTF8);
        b.put_u16_le(0); // stored
        b.put_u16_le(self.dos_time);
        b.put_u16_le(self.dos_date);
        b.put_u32_le(self.crc32);
        let size32 = if self.zip64() {
            u32::MAX
        } else {
            self.size as u32
        };
        b.put_u32_le(size32); // compressed
        b.put_u32_le(size32); // uncompressed
        b.put_u16_le(self.name.len() as u16);
        b.put_u16_le(if self.zip64() { 20 } else { 0 });
    }

    /// The zip64 extended information extra field (APPNOTE 4.5.3: tag 0x0001, both sizes),
    /// when the entry needs zip64; nothing otherwise.
    fn put_zip64_extra(&self, b: &mut BytesMut) {
        if self.zip64() {
            b.put_u16_le(0x0001);
            b.put_u16_le(16);
            b.put_u64_le(self.size);
            b.put_u64_le(self.size);
        }
    }

    fn trailer(&self, cd_offset: u64) -> Bytes {
        let name = self.name.as_bytes();
        let mut b = BytesMut::with_capacity(46 + name.len() + 20 + 56 + 20 + 22);
        // Central directory header.
        b.put_u32_le(0x0201_4b50);
        b.put_u16_le((3 << 8) | self.version()); // made by: Unix
        b.put_u16_le(self.version());
        self.put_entry_fields(&mut b);
        b.put_u16_le(0); // comment
        b.put_u16_le(0); // disk
        b.put_u16_le(0); // internal attributes
        b.put_u32_le(0o100644 << 16); // regular file, rw-r--r--
        b.put_u32_le(0); // local header offset
        b.put_slice(name);
        self.put_zip64_extra(&mut b);
        let cd_size = b.len() as u64;
        if self.zip64() {
            let z64_offset = cd_offset + cd_size;
            b.put_u32_le(0x0606_4b50);
            b.put_u64_le(44);
            b.put_u16_le((3 << 8) | 45);
            b.put_u16_le(45);
            b.put_u32_le(0);
            b.put_u32_le(0);
            b.put_u64_le(1);
            b.put_u64_le(1);
            b.put_u64_le(cd_size);
            b.put_u64_le(cd_offset);
            b.put_u32_le(0x0706_4b50);
            b.put_u32_le(0);
            b.put_u64_le(z64_offset);
            b.put_u32_le(1);
        }
        b.put_u32_le(0x0605_4b50);
        b.put_u16_le(0);
        b.put_u16_le(0);
        b.put_u16_le(1);
        b.put_u16_le(1);
        b.put_u32_le(cd_size as u32);
        b.put_u32_le(if self.zip64() {
            u32::MAX
        } else {
            cd_offset as u32
        });
        b.put_u16_le(0);
        b.freeze()
    }

    /// The archive's total length in bytes.
    pub fn length(&self) -> u64 {
        let cd_offset = self.local_header().len() as u64 + self.size;
        cd_offset + self.trailer(cd_offset).len() as u64
    }

    /// The archive's bytes and total length, with `data` (exactly `size` bytes) inside.
    pub fn stream(self, data: ByteStream) -> (u64, ByteStream) {
        let header = self.local_header();
        let cd_offset = header.len() as u64 + self.size;
        let trailer = self.trailer(cd_offset);
        let total = cd_offset + trailer.len() as u64;
        let body = stream::once(async move { Ok(header) })
            .chain(data)
            .chain(stream::once(async move { Ok(trailer) }))
            .boxed();
        (total, body)
    }
}

/// DOS (date, time) of a UTC timestamp `YYYY-MM-DD HH:MM:SS`; 1980-01-01 when unparsable.
pub fn dos_datetime(upload_time: &str) -> (u16, u16) {
    use chrono::{Datelike, NaiveDateTime, Timelike};
    match NaiveDateTime::parse_from_str(upload_time, "%Y-%m-%d %H:%M:%S") {
        Ok(t) if (1980..2108).contains(&t.year()) => (
            (((t.year() - 1980) as u16) << 9) | ((t.month() as u16) << 5) | t.day() as u16,
            ((t.hour() as u16) << 11) | ((t.minute() as u16) << 5) | (t.second() as u16 / 2),
        ),
        _ => ((1 << 5) | 1, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    async fn build(data: &'static [u8], name: &str) -> Vec<u8> {
        let entry = ZipEntry {
            name: name.into(),
            size: data.len() as u64,
            crc32: crc32fast::hash(data),
            dos_date: dos_datetime("2026-11-28 10:20:30").0,
            dos_time: dos_datetime("2026-11-28 10:20:30").1,
        };
        let (len, s) =
            entry.stream(stream::once(async move { Ok(Bytes::from_static(data)) }).boxed());
        let bytes: Vec<u8> = s
            .map(|c| c.unwrap().to_vec())
            .collect::<Vec<_>>()
            .await
            .concat();
        assert_eq!(bytes.len() as u64, len);
        bytes
    }

    #[tokio::test]
    async fn the_zip_crate_reads_the_archive() {
        let bytes = build(b"qcow2 bytes here", "disk/disk.qcow2").await;
        let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
        assert_eq!(z.len(), 1);
        let mut f = z.by_index(0).unwrap();
        assert_eq!(f.name(), "disk/disk.qcow2");
        let mut out = String::new();
        f.read_to_string(&mut out).unwrap();
        assert_eq!(out, "qcow2 bytes here");
    }

    #[test]
    fn zip64_headers_for_big_entries() {
        let e = ZipEntry {
            name: "a/a.img".into(),
            size: 5 << 30,
            crc32: 1,
            dos_date: 33,
            dos_time: 0,
        };
        let h = e.local_header();
        assert_eq!(&h[18..26], &[0xff; 8]);
        assert_eq!(
            u64::from_le_bytes(h[h.len() - 16..h.len() - 8].try_into().unwrap()),
            5 << 30
        );
    }

    #[test]
    fn dos_times() {
        let (d, t) = dos_datetime("2026-11-28 10:20:30");
        assert_eq!(d >> 9, 46);
        assert_eq!((d >> 5) & 0xf, 11);
        assert_eq!(d & 0x1f, 28);
        assert_eq!(t >> 11, 10);
        assert_eq!(dos_datetime("garbage"), (33, 0));
    }
}
