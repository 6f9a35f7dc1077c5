//! Cleanup that happens even when the work it guards is cancelled.
//!
//! A request's future is dropped at whatever `.await` it waits on when its client disconnects
//! (or a proxy gives up), so "on failure, undo" written after an `.await` never runs then. A
//! [`Cleanup`] holds the undo step instead: dropped while armed, it spawns the step on the
//! runtime; `disarm` keeps what was done; `run` undoes now and waits for it.

use futures::future::BoxFuture;
use std::future::Future;

/// An undo step (removing an object, aborting a multipart upload) that runs unless disarmed.
#[must_use = "a Cleanup dropped at once undoes at once"]
pub struct Cleanup(Option<BoxFuture<'static, ()>>);

impl Cleanup {
    /// Arms `undo`; it is not started until this guard is dropped armed or `run`.
    pub fn new(undo: impl Future<Output = ()> + Send + 'static) -> Self {
        Cleanup(Some(Box::pin(undo)))
    }

    /// What was guarded is kept: the undo step never runs.
    pub fn disarm(mut self) {
        self.0 = None;
    }

    /// Undoes now and waits until it is done.
    pub async fn run(mut self) {
        if let Some(undo) = self.0.take() {
            undo.await;
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(undo) = self.0.take() {
            // Outside a runtime (only at process exit) there is nothing left to run it on;
            // the sweepers and the store's lifecycle rules are the backstop.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(undo);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    };

    fn flagged() -> (Arc<AtomicBool>, Cleanup) {
        let ran = Arc::new(AtomicBool::new(false));
        let r = ran.clone();
        (
            ran,
            Cleanup::new(async move { r.store(true, Ordering::SeqCst) }),
        )
    }

    #[tokio::test]
    async fn dropped_armed_it_undoes() {
        let (ran, guard) = flagged();
        drop(guard);
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        assert!(ran.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn disarmed_it_keeps() {
        let (ran, guard) = flagged();
        guard.disarm();
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        assert!(!ran.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_cancelled_future_still_undoes() {
        let (ran, guard) = flagged();
        let work = async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        };
        let _ = tokio::time::timeout(std::time::Duration::from_millis(5), work).await;
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        assert!(ran.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn run_undoes_now() {
        let (ran, guard) = flagged();
        guard.run().await;
        assert!(ran.load(Ordering::SeqCst));
    }
}
