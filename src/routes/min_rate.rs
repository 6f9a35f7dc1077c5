//! A minimum rate for request bodies: a client that keeps a body alive with a trickle (a byte
//! every few seconds, never silent long enough for the idle timeout) would hold an upload slot
//! for as long as it likes, and a few dozen such clients lock every upload out. Like Apache's
//! `mod_reqtimeout` (`MinRate`), a body must bring at least `FS_BODY_MIN_BYTES_PER_SEC` on
//! average over each window of `FS_BODY_IDLE_TIMEOUT_SECS`, or it fails with a `TimedOut`
//! I/O error (the 408 `REQUEST_TIMEOUT` of an idle body).
//!
//! Only time spent waiting for the client counts: while the service itself is busy (a slow
//! store, a full scratch write) it does not read, and a client it keeps waiting is not slow.

use axum::body::{Body, Bytes};
use http_body::{Frame, SizeHint};
use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

/// The least a body must bring.
#[derive(Debug, Clone, Copy)]
pub struct MinRate {
    /// Bytes per second, on average over a window (0: no minimum).
    pub bytes_per_sec: u64,
    /// How long the client is waited for before its rate is judged.
    pub window: Duration,
}

impl MinRate {
    /// `body`, failing once a window of waiting for it brought less than the rate.
    pub fn wrap(self, body: Body) -> Body {
        if self.bytes_per_sec == 0 {
            return body;
        }
        Body::new(MinRateBody {
            inner: body,
            rate: self,
            waiting_since: None,
            waited: Duration::ZERO,
            received: 0,
        })
    }
}

struct MinRateBody {
    inner: Body,
    rate: MinRate,
    /// When the current wait for a frame began (`None`: the body is not being waited for).
    waiting_since: Option<Instant>,
    /// Time spent waiting in the current window.
    waited: Duration,
    /// Bytes received in the current window.
    received: u64,
}

impl MinRateBody {
    /// Counts a frame that arrived after a wait begun at `since`: an error when it closes a
    /// window that brought too little.
    fn arrived(&mut self, since: Instant, bytes: usize) -> Result<(), io::Error> {
        self.waited += since.elapsed();
        self.received += bytes as u64;
        if self.waited < self.rate.window {
            return Ok(());
        }
        let least = self.rate.bytes_per_sec as f64 * self.waited.as_secs_f64();
        if (self.received as f64) < least {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the client sent {} bytes in {:.1} s, less than {} bytes per second",
                    self.received,
                    self.waited.as_secs_f64(),
                    self.rate.bytes_per_sec
                ),
            ));
        }
        self.waited = Duration::ZERO;
        self.received = 0;
        Ok(())
    }
}

impl http_body::Body for MinRateBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let since = *self.waiting_since.get_or_insert_with(Instant::now);
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let Poll::Ready(frame) = polled else {
            return Poll::Pending;
        };
        self.waiting_since = None;
        if let Some(Ok(f)) = &frame {
            let len = f.data_ref().map_or(0, |d| d.len());
            if let Err(e) = self.arrived(since, len) {
                return Poll::Ready(Some(Err(axum::Error::new(e))));
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    /// A body of `frames` frames of `len` bytes, one every `every`.
    fn trickle(frames: usize, len: usize, every: Duration) -> Body {
        let s = futures::stream::iter(0..frames).then(move |_| async move {
            tokio::time::sleep(every).await;
            Ok::<_, io::Error>(Bytes::from(vec![7u8; len]))
        });
        Body::from_stream(s)
    }

    fn rate(bytes_per_sec: u64, window_ms: u64) -> MinRate {
        MinRate {
            bytes_per_sec,
            window: Duration::from_millis(window_ms),
        }
    }

    /// Reads `body` to its end: the bytes read, or the error's kind.
    async fn read(body: Body) -> Result<usize, io::ErrorKind> {
        let mut s = body.into_data_stream();
        let mut n = 0;
        while let Some(f) = s.next().await {
            match f {
                Ok(b) => n += b.len(),
                Err(e) => {
                    // The I/O error somewhere in the chain (each body layer wraps it).
                    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&e);
                    while let Some(err) = cur {
                        if let Some(io) = err.downcast_ref::<io::Error>() {
                            return Err(io.kind());
                        }
                        cur = err.source();
                    }
                    return Err(io::ErrorKind::Other);
                }
            }
        }
        Ok(n)
    }

    #[tokio::test]
    async fn a_trickle_fails_once_a_window_brought_too_little() {
        // 1 byte every 20 ms is 50 bytes/s; 1000 are asked for.
        let body = rate(1000, 200).wrap(trickle(100, 1, Duration::from_millis(20)));
        let started = Instant::now();
        assert_eq!(read(body).await, Err(io::ErrorKind::TimedOut));
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_body_above_the_rate_passes_every_window() {
        // 100 bytes every 20 ms is 5000 bytes/s, over five windows.
        let body = rate(1000, 200).wrap(trickle(50, 100, Duration::from_millis(20)));
        assert_eq!(read(body).await, Ok(5000));
    }

    #[tokio::test]
    async fn time_the_reader_is_busy_does_not_count() {
        // Every frame is ready at once; the reader takes 50 ms over each.
        let frames =
            futures::stream::iter((0..20).map(|_| Ok::<_, io::Error>(Bytes::from_static(b"x"))));
        let mut s = rate(1000, 100)
            .wrap(Body::from_stream(frames))
            .into_data_stream();
        let mut n = 0;
        while let Some(f) = s.next().await {
            n += f.unwrap().len();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(n, 20);
    }

    #[tokio::test]
    async fn zero_is_no_minimum() {
        let body = rate(0, 10).wrap(trickle(5, 1, Duration::from_millis(20)));
        assert_eq!(read(body).await, Ok(5));
    }
}
