//! `--limit-rate`: a byte pacer shared by every transfer of one command (all chunks in
//! flight together stay under the rate, like curl's `--limit-rate` for one transfer).
//!
//! Own code rather than a rate-limiting crate: it is a dozen lines of virtual scheduling
//! (each caller reserves the next free slot of `n / rate` seconds and sleeps until it ends),
//! while `governor` counts cells of a fixed burst size and would need chunking by hand anyway.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

/// Paces byte transfers to a rate in bytes per second.
#[derive(Debug)]
pub struct Pacer {
    bytes_per_sec: u64,
    /// When the bytes reserved so far are due: the start of the next free slot.
    next: Mutex<Instant>,
}

impl Pacer {
    /// A pacer of `bytes_per_sec` (positive).
    pub fn new(bytes_per_sec: u64) -> Pacer {
        Pacer {
            bytes_per_sec: bytes_per_sec.max(1),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits until `n` more bytes may go (or come) without exceeding the rate.
    pub async fn take(&self, n: u64) {
        let due = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let start = (*next).max(Instant::now());
            let end = start + Duration::from_secs_f64(n as f64 / self.bytes_per_sec as f64);
            *next = end;
            end
        };
        tokio::time::sleep_until(due.into()).await;
    }
}

/// Waits on an optional pacer (no `--limit-rate`: no wait).
pub async fn take(pacer: Option<&Pacer>, n: u64) {
    if let Some(p) = pacer {
        p.take(n).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn paces_to_the_rate() {
        let p = Pacer::new(1 << 20);
        let t = Instant::now();
        for _ in 0..4 {
            p.take(128 << 10).await;
        }
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(450), "{took:?}");
        assert!(took < Duration::from_millis(1500), "{took:?}");
    }
}
