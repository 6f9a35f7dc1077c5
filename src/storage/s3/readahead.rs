//! Reading an object as a few ranged GETs at once, in order, with bounded memory.
//!
//! One `GetObject` streams at the speed of a single connection and a single read path in the
//! store; SDK download managers (boto3's `download_file`, the AWS CLI, `mc cp`) read several
//! ranges at once instead. Downloads here keep their order (they are one HTTP response), so the
//! object is cut into windows: the current one streams straight through, and the next few are
//! fetched at the same time into memory, each holding one permit of a budget shared by every
//! download of the store (see [`Budget`]). Without a permit a window is simply not fetched
//! ahead: the download goes on at single-stream speed, never waits for memory.
//!
//! Every window after the first asks for the ETag the first one came with (`If-Match`, RFC
//! 9110 section 13.1.1), so an object replaced during a download fails it instead of splicing
//! two versions.

use super::{Result, StorageError};
use bytes::Bytes;
use futures::StreamExt;
use std::{collections::VecDeque, sync::Arc};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::task::AbortOnDropHandle;

/// How many windows one download may fetch ahead of the one it is sending.
pub const AHEAD: usize = 3;

/// The memory every download of a store may hold fetched ahead, as a number of windows.
#[derive(Clone)]
pub struct Budget {
    windows: Arc<Semaphore>,
    /// Bytes per window.
    pub window: u64,
}

impl Budget {
    /// `bytes` of read-ahead in all, in windows of `window` bytes (at least one window).
    pub fn new(bytes: u64, window: u64) -> Budget {
        let window = window.max(1);
        Budget {
            windows: Arc::new(Semaphore::new((bytes / window) as usize)),
            window,
        }
    }

    fn try_take(&self) -> Option<OwnedSemaphorePermit> {
        self.windows.clone().try_acquire_owned().ok()
    }
}

/// One window's bytes as they arrive, or the error that ended it.
type Window = mpsc::UnboundedReceiver<std::io::Result<Bytes>>;

/// Fetches windows: `fetch(start, end_inclusive)` streams those bytes of the object.
pub trait Fetch: Clone + Send + Sync + 'static {
    fn fetch(
        &self,
        start: u64,
        end: u64,
    ) -> impl std::future::Future<Output = Result<super::super::ByteStream>> + Send;
}

/// A window fetched ahead: its bytes, the task fetching them (aborted when the download is
/// dropped) and the budget permit its bytes hold until they have been read.
struct Pending {
    rx: Window,
    _task: AbortOnDropHandle<()>,
    _permit: OwnedSemaphorePermit,
}

/// Starts fetching `[start, end]` into memory, under `permit`.
fn spawn_window<F: Fetch>(f: &F, start: u64, end: u64, permit: OwnedSemaphorePermit) -> Pending {
    let (tx, rx) = mpsc::unbounded_channel();
    let f = f.clone();
    let task = tokio::spawn(async move {
        let mut body = match f.fetch(start, end).await {
            Ok(body) => exact(body, end - start + 1),
            Err(e) => futures::stream::iter([Err(std::io::Error::other(e))]).boxed(),
        };
        while let Some(item) = body.next().await {
            let failed = item.is_err();
            if tx.send(item).is_err() || failed {
                return;
            }
        }
    });
    Pending {
        rx,
        _task: AbortOnDropHandle::new(task),
        _permit: permit,
    }
}

/// `body`, ending with an `UnexpectedEof` error when it brings fewer than `len` bytes (a
/// connection closed early must not look like the end of the object).
pub fn exact(body: super::super::ByteStream, len: u64) -> super::super::ByteStream {
    futures::stream::unfold(
        (body, 0u64, false),
        move |(mut body, got, done)| async move {
            if done {
                return None;
            }
            match body.next().await {
                Some(Ok(b)) => {
                    let got = got + b.len() as u64;
                    Some((Ok(b), (body, got, false)))
                }
                Some(Err(e)) => Some((Err(e), (body, got, true))),
                None if got < len => {
                    let e = std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("the store sent {got} of {len} bytes"),
                    );
                    Some((Err(e), (body, got, true)))
                }
                None => None,
            }
        },
    )
    .boxed()
}

/// The state of an [`ordered`] stream.
struct State<F> {
    f: F,
    budget: Budget,
    current: super::super::ByteStream,
    /// Windows fetched ahead, in order.
    ahead: VecDeque<Pending>,
    /// The first byte no window covers yet.
    next: u64,
    end: u64,
}
impl<F: Fetch> State<F> {
    /// Starts windows ahead while there are bytes left, room and permits.
    fn fill(&mut self) {
        while self.next <= self.end && self.ahead.len() < AHEAD {
            let Some(permit) = self.budget.try_take() else {
                return;
            };
            let stop = (self.next + self.budget.window - 1).min(self.end);
            self.ahead
                .push_back(spawn_window(&self.f, self.next, stop, permit));
            self.next = stop + 1;
        }
    }

    /// The next window once the current one ended: fetched ahead, or fetched now and
    /// streamed as it arrives. `false` after the last.
    fn advance(&mut self) -> bool {
        self.current = match self.ahead.pop_front() {
            Some(w) => futures::stream::unfold(w, |mut w| async move {
                w.rx.recv().await.map(|item| (item, w))
            })
            .boxed(),
            None if self.next <= self.end => {
                let (f, start) = (self.f.clone(), self.next);
                let stop = (start + self.budget.window - 1).min(self.end);
                self.next = stop + 1;
                futures::stream::once(async move {
                    match f.fetch(start, stop).await {
                        Ok(body) => exact(body, stop - start + 1),
                        Err(e) => futures::stream::iter([Err(std::io::Error::other(e))]).boxed(),
                    }
                })
                .flatten()
                .boxed()
            }
            None => return false,
        };
        true
    }
}

/// The bytes `[from, end]` of an object whose first window (`first`, ending at `first_end`)
/// is already streaming, as one ordered stream: later windows of `budget.window` bytes are
/// fetched up to [`AHEAD`] at once while budget permits.
pub fn ordered<F: Fetch>(
    f: F,
    budget: Budget,
    first: super::super::ByteStream,
    first_end: u64,
    end: u64,
) -> super::super::ByteStream {
    let mut st = State {
        f,
        budget,
        current: first,
        ahead: VecDeque::new(),
        next: first_end + 1,
        end,
    };
    st.fill();
    futures::stream::unfold(st, |mut st| async move {
        loop {
            match st.current.next().await {
                Some(Err(e)) => {
                    // One error ends the download; nothing after it is fetched. The client
                    // sees the connection end short of its Content-Length: say why here.
                    tracing::warn!(
                        error = %e,
                        "a download from S3 ended early: a range could not be read (the object \
                         was deleted or changed meanwhile, or S3 failed)"
                    );
                    st.ahead.clear();
                    st.next = st.end + 1;
                    st.current = futures::stream::empty().boxed();
                    return Some((Err(e), st));
                }
                Some(Ok(b)) => {
                    st.fill();
                    return Some((Ok(b), st));
                }
                None => {
                    if !st.advance() {
                        return None;
                    }
                    st.fill();
                }
            }
        }
    })
    .boxed()
}

/// `Some(total)` from a `Content-Range: bytes a-b/total` header value (RFC 9110 section
/// 14.4).
pub fn total_of(content_range: &str) -> Option<u64> {
    content_range.rsplit_once('/')?.1.trim().parse().ok()
}

/// An error of a window (`If-Match` failed: the object changed under the download).
pub fn changed() -> StorageError {
    StorageError::Io(std::io::Error::other(
        "the object changed during the download",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// An object in memory that records the ranges asked for.
    #[derive(Clone)]
    struct Mem {
        data: Arc<Vec<u8>>,
        asked: Arc<Mutex<Vec<(u64, u64)>>>,
        fail_at: Option<u64>,
    }

    impl Fetch for Mem {
        async fn fetch(&self, start: u64, end: u64) -> Result<super::super::super::ByteStream> {
            self.asked.lock().unwrap().push((start, end));
            if self.fail_at.is_some_and(|f| (start..=end).contains(&f)) {
                return Err(StorageError::Unavailable("down".into()));
            }
            let bytes = Bytes::copy_from_slice(&self.data[start as usize..=end as usize]);
            // Several pieces per window, as a body arrives.
            let pieces: Vec<std::io::Result<Bytes>> = bytes
                .chunks(7)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            Ok(futures::stream::iter(pieces).boxed())
        }
    }

    fn mem(len: usize, fail_at: Option<u64>) -> Mem {
        Mem {
            data: Arc::new((0..len).map(|i| (i * 31 % 251) as u8).collect()),
            asked: Arc::default(),
            fail_at,
        }
    }

    async fn read(
        m: &Mem,
        budget: Budget,
        from: u64,
        end: u64,
    ) -> (Vec<u8>, Option<std::io::Error>) {
        let first_end = (from + budget.window - 1).min(end);
        let first = m.fetch(from, first_end).await.unwrap();
        let mut s = ordered(m.clone(), budget, first, first_end, end);
        let mut out = vec![];
        while let Some(item) = s.next().await {
            match item {
                Ok(b) => out.extend_from_slice(&b),
                Err(e) => return (out, Some(e)),
            }
        }
        (out, None)
    }

    #[tokio::test]
    async fn windows_arrive_in_order_whatever_the_budget() {
        let m = mem(1000, None);
        for (budget_bytes, window) in [(0, 100), (100, 100), (1000, 64), (10_000, 1), (10, 333)] {
            let (got, err) = read(&m, Budget::new(budget_bytes, window), 0, 999).await;
            assert!(err.is_none());
            assert_eq!(got, *m.data, "budget {budget_bytes}, window {window}");
        }
        let (got, _) = read(&m, Budget::new(1000, 64), 130, 870).await;
        assert_eq!(got, m.data[130..=870]);
    }

    #[tokio::test]
    async fn ranges_cover_the_object_once() {
        let m = mem(1000, None);
        read(&m, Budget::new(10_000, 100), 0, 999).await;
        let mut asked = m.asked.lock().unwrap().clone();
        asked.sort();
        let want: Vec<(u64, u64)> = (0..10).map(|i| (i * 100, i * 100 + 99)).collect();
        assert_eq!(asked, want);
    }

    #[tokio::test]
    async fn a_failed_window_ends_the_stream_with_its_error() {
        let m = mem(1000, Some(550));
        let (got, err) = read(&m, Budget::new(10_000, 100), 0, 999).await;
        assert_eq!(got, m.data[..500]);
        assert!(err.unwrap().to_string().contains("down"));
    }

    #[tokio::test]
    async fn permits_come_back_when_a_download_ends_or_is_dropped() {
        let m = mem(1000, None);
        let budget = Budget::new(300, 100);
        read(&m, budget.clone(), 0, 999).await;
        assert_eq!(budget.windows.available_permits(), 3);
        let first = m.fetch(0, 99).await.unwrap();
        let s = ordered(m.clone(), budget.clone(), first, 99, 999);
        drop(s);
        tokio::task::yield_now().await;
        for _ in 0..100 {
            if budget.windows.available_permits() == 3 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(budget.windows.available_permits(), 3);
    }

    #[test]
    fn content_range_totals() {
        assert_eq!(total_of("bytes 0-99/1000"), Some(1000));
        assert_eq!(total_of("bytes 0-99/*"), None);
        assert_eq!(total_of("nonsense"), None);
    }
}
