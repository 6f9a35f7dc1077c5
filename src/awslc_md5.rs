//! MD5 from AWS-LC, behind the `digest` traits, so that it stands wherever `md5::Md5` would.
//!
//! AWS-LC's x86-64 assembly hashed 0.74 GiB/s on the project's 2-core test machine, against
//! 0.58 GiB/s for the `md-5` crate's `asm` backend. MD5 (the original's `checksum`, RFC 1321)
//! is the slowest digest of every pass over an image's bytes: an upload, a merge, a slim's
//! output. AWS-LC is already linked for rustls and jsonwebtoken.

use md5::digest::{consts::U16, FixedOutput, HashMarker, Output, OutputSizeUser, Update};

/// An MD5 computation in progress (AWS-LC's `MD5_CTX`: plain data, copied by `Clone`).
#[derive(Clone)]
pub struct Md5(aws_lc_sys::MD5_CTX);

impl Default for Md5 {
    fn default() -> Self {
        // SAFETY: `MD5_CTX` is plain integers and bytes (all zeros is a valid value), and
        // `MD5_Init` only writes the context it is given.
        let mut ctx: aws_lc_sys::MD5_CTX = unsafe { std::mem::zeroed() };
        unsafe { aws_lc_sys::MD5_Init(&mut ctx) };
        Md5(ctx)
    }
}

impl HashMarker for Md5 {}

impl Update for Md5 {
    fn update(&mut self, data: &[u8]) {
        // SAFETY: `data` is valid for `data.len()` bytes for the call; the context was set
        // up by `MD5_Init`. MD5_Update cannot fail (it returns 1).
        unsafe { aws_lc_sys::MD5_Update(&mut self.0, data.as_ptr().cast(), data.len()) };
    }
}

impl OutputSizeUser for Md5 {
    type OutputSize = U16;
}

impl FixedOutput for Md5 {
    fn finalize_into(mut self, out: &mut Output<Self>) {
        // SAFETY: `out` holds exactly the 16 bytes MD5_Final writes.
        unsafe { aws_lc_sys::MD5_Final(out.as_mut_ptr(), &mut self.0) };
    }
}

#[cfg(test)]
mod tests {
    use md5::Digest;

    /// Equal to the `md-5` crate's digest at block boundaries and across split updates,
    /// and to RFC 1321's test vectors.
    #[test]
    fn same_digests_as_md5_crate() {
        let data: Vec<u8> = (0..(1 << 20) + 77).map(|i| (i * 31 % 251) as u8).collect();
        for len in [0, 1, 55, 56, 63, 64, 65, 128, 4096, data.len()] {
            let ours = super::Md5::digest(&data[..len]);
            assert_eq!(ours, md5::Md5::digest(&data[..len]), "{len} bytes");
            let mut split = super::Md5::new();
            for piece in data[..len].chunks(37) {
                split.update(piece);
            }
            let cloned = split.clone();
            assert_eq!(split.finalize(), ours, "{len} bytes in pieces");
            assert_eq!(cloned.finalize(), ours, "{len} bytes, cloned");
        }
        let hex = |b: &[u8]| hex::encode(super::Md5::digest(b));
        assert_eq!(hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            hex(
                b"12345678901234567890123456789012345678901234567890123456789012345678901234567890"
            ),
            "57edf4a22be3c955ac49da2e2107b67a"
        );
    }
}
