//! Counting and hashing bytes while they stream past, with a size limit.

use super::integrity::{Digests, Hasher, Wanted};
use crate::storage::ByteStream;
use futures::StreamExt;
use std::{
    io,
    sync::{Arc, Mutex},
};

#[derive(Default)]
struct State {
    bytes: u64,
    crc: crc32fast::Hasher,
    exceeded: bool,
    /// The other digests asked for (none by default).
    digests: Hasher,
}

/// Shared view of a metered stream: how many bytes went through, their CRC-32, and whether the
/// limit was hit.
#[derive(Clone, Default)]
pub struct Meter(Arc<Mutex<State>>);

impl Meter {
    /// A meter that also computes the digests in `wanted`, in the same pass.
    pub fn hashing(wanted: Wanted) -> Self {
        let meter = Meter::default();
        meter.0.lock().expect("meter lock").digests = Hasher::new(wanted);
        meter
    }

    /// Wraps `body` so it fails once more than `limit` bytes have passed.
    pub fn wrap(&self, body: ByteStream, limit: u64) -> ByteStream {
        let meter = self.clone();
        body.map(move |item| {
            let chunk = item?;
            let mut st = meter.0.lock().expect("meter lock");
            st.bytes += chunk.len() as u64;
            if st.bytes > limit {
                st.exceeded = true;
                return Err(io::Error::other("size limit exceeded"));
            }
            st.crc.update(&chunk);
            st.digests.update_bytes(chunk.clone());
            Ok(chunk)
        })
        .boxed()
    }

    pub fn bytes(&self) -> u64 {
        self.0.lock().expect("meter lock").bytes
    }

    pub fn crc32(&self) -> u32 {
        self.0.lock().expect("meter lock").crc.clone().finalize()
    }

    /// The digests asked for at creation, over the bytes that went through; once, when the
    /// stream has ended (a second call finds none).
    pub fn digests(&self) -> Digests {
        std::mem::take(&mut self.0.lock().expect("meter lock").digests).finish()
    }

    pub fn exceeded(&self) -> bool {
        self.0.lock().expect("meter lock").exceeded
    }
}

/// CRC-32 of a concatenation, from the CRC-32 and length of each piece, in order.
pub fn combine_crc32(pieces: impl IntoIterator<Item = (u32, u64)>) -> u32 {
    let mut acc = crc32fast::Hasher::new();
    for (crc, len) in pieces {
        let piece = crc32fast::Hasher::new_with_initial_len(crc, len);
        acc.combine(&piece);
    }
    acc.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_crc_equals_crc_of_whole() {
        let a = b"hello ".repeat(1000);
        let b = b"world".repeat(777);
        let whole = [a.clone(), b.clone()].concat();
        let got = combine_crc32([
            (crc32fast::hash(&a), a.len() as u64),
            (crc32fast::hash(&b), b.len() as u64),
        ]);
        assert_eq!(got, crc32fast::hash(&whole));
    }
}
