//! A deleted image's objects outlive the downloads reading them, on every store.
//!
//! A delete retires the image's objects in the transaction that removes its record, then
//! deletes each one that no download reads; the last download of an object to end deletes
//! it, and the sweep deletes what a lost download or a crash left retired. A download holds
//! its object with a leased row, but only on a store whose streams a delete would cut
//! ([`ObjectStore::reads_outlive_delete`](crate::storage::ObjectStore::reads_outlive_delete)):
//! it records its read, then makes sure the object is not retired, so that a delete either
//! sees the read or the download sees the delete (both write before they read).

use super::{now_secs, Error, Result, Service};
use crate::{db, storage::ByteStream};
use futures::StreamExt;
use sea_orm::DatabaseConnection;
use tokio_util::task::AbortOnDropHandle;

/// How long a download's hold on its object lasts unless renewed, in seconds. A replica that
/// dies mid-download stops renewing; its objects can go that long after.
pub const READ_LEASE_SECS: i64 = 60;

/// How many retired objects one sweep deletes at most.
const SWEEP_BATCH: u64 = 1000;

/// A download's hold on its object: renewed while it lives; dropped, it ends the hold and
/// deletes the object when it was retired meanwhile and no other download reads it.
pub(crate) struct ReadHold {
    svc: Service,
    id: String,
    bucket: String,
    key: String,
    _renewal: AbortOnDropHandle<()>,
}

impl ReadHold {
    /// Ends the hold now and deletes its object when it was retired meanwhile and no other
    /// download reads it. The work runs in a tracked task: a download dropped while it waits
    /// (the client went at its last chunk) does not cut it short.
    async fn end(mut self) {
        let (id, bucket, key) = self.take();
        let svc = self.svc.clone();
        let ending = self
            .svc
            .hold_ends
            .spawn(async move { end(&svc, &id, &bucket, &key).await });
        if let Err(e) = ending.await {
            tracing::warn!(error = %e, "ending a download's hold failed");
        }
    }

    fn take(&mut self) -> (String, String, String) {
        (
            std::mem::take(&mut self.id),
            std::mem::take(&mut self.bucket),
            std::mem::take(&mut self.key),
        )
    }
}

impl Drop for ReadHold {
    /// A download dropped before its end (the client went): the hold ends in a task, which
    /// shutdown waits for ([`Service::end_read_holds`]).
    fn drop(&mut self) {
        let (id, bucket, key) = self.take();
        if id.is_empty() {
            return; // Ended already.
        }
        let svc = self.svc.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let tracker = svc.hold_ends.clone();
            tracker.spawn_on(async move { end(&svc, &id, &bucket, &key).await }, &rt);
        }
    }
}

/// Ends the hold `id` on `bucket`/`key` and deletes the object when it is retired and unread.
async fn end(svc: &Service, id: &str, bucket: &str, key: &str) {
    if let Err(e) = db::objects::end_read(&svc.db, id).await {
        // Its lease ends it anyway.
        tracing::warn!(error = %e, "could not end a download's hold on its object");
    }
    svc.delete_if_unread(bucket, key).await;
}

/// Renews a hold's lease while its download streams.
fn renew(db: DatabaseConnection, id: String) -> AbortOnDropHandle<()> {
    super::keep_renewed(
        READ_LEASE_SECS,
        "a download's hold",
        move |now, expires_at| {
            let (db, id) = (db.clone(), id.clone());
            async move { db::objects::renew_read(&db, &id, now, expires_at).await }
        },
    )
}

impl Service {
    /// Holds `bucket`/`key` of image `image_id` for a download, when the store needs it
    /// (`None`: reads outlive deletes there). An object already retired is the image gone:
    /// `ImageNotFound`.
    async fn hold_read(&self, image_id: &str, bucket: &str, key: &str) -> Result<Option<ReadHold>> {
        if self.store.reads_outlive_delete() {
            return Ok(None);
        }
        let id = uuid::Uuid::new_v4().to_string();
        let expires = now_secs() + READ_LEASE_SECS;
        db::objects::begin_read(&self.db, &id, bucket, key, expires).await?;
        let hold = ReadHold {
            svc: self.clone(),
            id: id.clone(),
            bucket: bucket.to_string(),
            key: key.to_string(),
            _renewal: renew(self.db.clone(), id),
        };
        // Written before this read: a delete that retired the object before the hold was
        // recorded is seen here; one after it sees the hold.
        if db::objects::is_retired(&self.db, bucket, key).await? {
            return Err(Error::ImageNotFound(image_id.to_string()));
        }
        Ok(Some(hold))
    }

    /// `body`, read from `bucket`/`key` of image `image_id` by `get`, held against a delete
    /// until the stream is dropped (see [`Service::hold_read`]).
    pub(crate) async fn held_read<F>(
        &self,
        image_id: &str,
        bucket: &str,
        key: &str,
        get: F,
    ) -> Result<ByteStream>
    where
        F: std::future::Future<Output = Result<ByteStream>>,
    {
        let Some(hold) = self.hold_read(image_id, bucket, key).await? else {
            return get.await;
        };
        let body = get.await?;
        Ok(until_last_chunk(body, hold))
    }

    /// Waits until the downloads that ended have let go of their objects (and deleted those
    /// retired meanwhile), at shutdown: a replica that stops gracefully leaves no hold to
    /// lapse. Holds of downloads still streaming are not waited for (their leases lapse).
    pub async fn end_read_holds(&self) {
        self.hold_ends.close();
        self.hold_ends.wait().await;
    }

    /// Deletes the retired `keys` of `bucket` that no download reads now; the last download
    /// to end, or the sweep, deletes the others. Failures are logged: the sweep retries.
    pub(crate) async fn delete_retired(&self, bucket: &str, keys: &[&str]) {
        // At once, not one after the other: a store that does not answer costs one call's
        // bound (S3Store::quick, 20 s), not one per key.
        let deletes = keys.iter().map(|key| self.delete_if_unread(bucket, key));
        futures::future::join_all(deletes).await;
    }

    /// Deletes `bucket`/`key` when it is retired and no live download holds it.
    async fn delete_if_unread(&self, bucket: &str, key: &str) {
        let step = async {
            if !db::objects::is_retired(&self.db, bucket, key).await? {
                return Ok(false);
            }
            if !self.store.reads_outlive_delete()
                && db::objects::is_read(&self.db, bucket, key, now_secs()).await?
            {
                return Ok(false);
            }
            self.store.delete(bucket, key).await?;
            db::objects::deleted(&self.db, bucket, key).await?;
            Ok::<_, Error>(true)
        };
        match step.await {
            Ok(true) => tracing::debug!(bucket, key, "retired object deleted"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(bucket, key, error = %e, "could not delete a retired object yet; the sweep retries")
            }
        }
    }

    /// Forgets expired download holds, then deletes retired objects no live download holds;
    /// returns how many it deleted. An object the store fails to delete is logged and left
    /// for the next sweep; a database error ends the sweep.
    pub async fn sweep_retired_objects(&self) -> Result<usize> {
        let now = now_secs();
        db::objects::prune_expired_reads(&self.db, now).await?;
        let due = db::objects::unread_retired(&self.db, now, SWEEP_BATCH).await?;
        let mut deleted = 0;
        for (bucket, key) in due {
            // One object the store refuses does not hold up the others.
            match self.store.delete(&bucket, &key).await {
                Ok(()) => {
                    db::objects::deleted(&self.db, &bucket, &key).await?;
                    deleted += 1;
                }
                Err(e) => {
                    tracing::warn!(bucket, key, error = %e, "could not delete a retired object; the next sweep retries")
                }
            }
        }
        Ok(deleted)
    }
}

/// `body`, holding `hold` until its last chunk, and ending the hold before that chunk is
/// yielded: a client that has every byte finds the hold gone (a delete right after the
/// download then deletes the objects itself). Reads one chunk ahead to know the last one.
fn until_last_chunk(body: ByteStream, hold: ReadHold) -> ByteStream {
    struct State {
        // Fused: polled once more after its end.
        body: futures::stream::Fuse<ByteStream>,
        hold: Option<ReadHold>,
        ahead: Option<std::io::Result<bytes::Bytes>>,
    }
    let state = State {
        body: body.fuse(),
        hold: Some(hold),
        ahead: None,
    };
    futures::stream::unfold(state, |mut st| async move {
        let current = match st.ahead.take() {
            Some(item) => item,
            None => st.body.next().await?,
        };
        if current.is_ok() {
            match st.body.next().await {
                Some(item) => st.ahead = Some(item),
                None => {
                    if let Some(hold) = st.hold.take() {
                        hold.end().await;
                    }
                }
            }
        }
        Some((current, st))
    })
    .boxed()
}
