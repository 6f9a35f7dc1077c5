//! Per-user quotas: bytes and images a user may hold (`FS_QUOTA_BYTES`, `FS_QUOTA_IMAGES`,
//! and per-user overrides an admin sets).
//!
//! Usage is read from the truth, never kept as a counter that could drift: the bytes of the
//! user's images (as uploaded: slimmed copies the service makes are not counted) and of the
//! chunks of its uploads not merged yet, the number of its images, plus what its requests in
//! flight hold as *reservations*. A request reserves before it stores: a single upload its
//! image slot, then its bytes in steps as they arrive; a chunk its bytes; a merge its image
//! (and the chunks' bytes when they counted for no one, or for someone else). Each reservation
//! is granted in a transaction that first takes the user's `quotas` row lock, so that two
//! requests, on any replicas, never both take the same room. A reservation is deleted once what
//! it became (an image, a chunk) is recorded, or when its request fails or goes away; a lease
//! (`expires_at`) ends the reservations of a replica that died.

use super::{caller::Caller, ids::ChunkNumber, now_secs, Error, Result, Service};
use crate::{db, storage::ByteStream};
use entity::{quota, upload_part, upload_session};
use futures::StreamExt;
use sea_orm::{DatabaseConnection, TransactionTrait};
use std::sync::Arc;
use tokio_util::task::AbortOnDropHandle;

/// The most bytes a single upload reserves ahead of what arrived (16 MiB): one database
/// transaction per step.
pub const STEP_BYTES: u64 = 16 << 20;
/// The least it reserves ahead (1 MiB). Between the two, a step is as large as what arrived,
/// so that an upload never holds more than twice its bytes plus this: small uploads in
/// parallel do not hold each other's room.
pub const MIN_STEP_BYTES: u64 = 1 << 20;
/// A refusal is settled only after this many tries, a short wait apart: bytes other requests
/// of the user reserved ahead and do not need are released meanwhile.
const REFUSAL_TRIES: u32 = 4;
const REFUSAL_WAIT: std::time::Duration = std::time::Duration::from_millis(150);

/// The step a growing reservation takes once `seen` bytes arrived.
pub fn step_for(seen: u64) -> u64 {
    seen.clamp(MIN_STEP_BYTES, STEP_BYTES)
}
/// A reservation not renewed for this long (seconds) no longer counts: its request was lost
/// with its replica (killed, or its database connection gone). Short, so that a user is not
/// held back by a dead process for long (it was 15 minutes: a retried upload after a
/// crash was refused for that long); renewed three times per lease, one small write each.
pub const LEASE_SECS: i64 = 60;

/// A user's effective limits; 0 = unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// Bytes the user may hold.
    pub max_bytes: u64,
    /// Images the user may hold.
    pub max_images: u64,
}

impl Limits {
    /// The limits of a user with the overrides of its `quotas` row (`None`: the configured
    /// default; 0: unlimited) over the configured defaults (bytes, images; 0: unlimited).
    pub fn resolve(row: Option<(Option<i64>, Option<i64>)>, defaults: Limits) -> Limits {
        let (bytes, images) = row.unwrap_or((None, None));
        let pick = |v: Option<i64>, default: u64| v.map_or(default, |n| n.max(0) as u64);
        Limits {
            max_bytes: pick(bytes, defaults.max_bytes),
            max_images: pick(images, defaults.max_images),
        }
    }

    fn of(row: Option<&quota::Model>, defaults: Limits) -> Limits {
        Limits::resolve(row.map(|r| (r.max_bytes, r.max_images)), defaults)
    }

    /// Nothing to enforce: no database work at all.
    pub fn unlimited(&self) -> bool {
        self.max_bytes == 0 && self.max_images == 0
    }
}

/// The bytes a growing reservation should hold once `seen` bytes have arrived: it holds `held`
/// and the user holds `used` in all (this reservation included) against `limit` (0 =
/// unlimited). A full step beyond `seen` when it fits, else the remainder up to the limit;
/// `None` when even `seen` does not fit (the byte that crosses the limit has arrived).
pub fn grow(limit: u64, used: u64, held: u64, seen: u64, step: u64) -> Option<u64> {
    let wanted = seen.max(held.saturating_add(step));
    if limit == 0 {
        return Some(wanted);
    }
    let room = limit.saturating_sub(used);
    let granted = wanted.min(held.saturating_add(room));
    (granted >= seen).then_some(granted)
}

/// `1.0 GiB`-style text of a byte count.
pub fn human(bytes: u64) -> String {
    bytesize::ByteSize::b(bytes).display().iec().to_string()
}

fn bytes_refusal(user: &str, limit: u64, used: u64, total: u64, what: &str) -> Error {
    Error::QuotaExceeded(format!(
        "quota exceeded: user {user:?} may hold {} ({limit} bytes); it holds or is receiving \
         {used} bytes, and this {what} would take it to {total} bytes",
        human(limit)
    ))
}

fn images_refusal(user: &str, limit: u64, held: u64) -> Error {
    Error::QuotaExceeded(format!(
        "quota exceeded: user {user:?} may hold {limit} images and holds or is receiving {held}"
    ))
}

/// What a request holds against its user's quota (see the module's documentation). Dropping
/// the last handle releases it (in the background); [`Reservation::release`] does it now.
#[derive(Clone)]
pub struct Reservation(Arc<tokio::sync::Mutex<Held>>);

struct Held {
    db: DatabaseConnection,
    defaults: Limits,
    id: String,
    /// The user the reservation is for; `false`: not known yet (its `userId` field had not
    /// arrived when the file began), nothing enforced until it is.
    bound: bool,
    user: String,
    limits: Limits,
    /// Bytes reserved.
    bytes: u64,
    /// Images reserved (0 or 1).
    images: u32,
    /// Bytes that went through [`Reservation::wrap`].
    seen: u64,
    /// Bytes of what the request makes that already count for the user elsewhere (a merge of
    /// the user's own chunks): [`Reservation::settle`] reserves only beyond them.
    base: u64,
    /// What the request is (`upload`, `chunk`, `merge`), for the refusal's message.
    what: &'static str,
    /// Why the wrapped stream stopped, when the quota stopped it.
    failure: Option<Error>,
    /// A row may exist in `quota_reservations`.
    row: bool,
    renewal: Option<AbortOnDropHandle<()>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.row {
            let (db, id) = (self.db.clone(), self.id.clone());
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { delete_row(&db, &id).await });
            }
        }
    }
}

async fn delete_row(db: &DatabaseConnection, id: &str) {
    if let Err(e) = db::quotas::delete_reservation(db, id).await {
        // Its lease ends it anyway.
        tracing::warn!(reservation = id, error = %e, "could not delete a quota reservation");
    }
}

impl Held {
    /// Runs one reservation transaction for `user`: takes the user's quota lock, reads the
    /// limits and the usage (without this reservation), lets `decide` choose the bytes and
    /// images to hold (or refuse), and records them with a fresh lease.
    async fn transact(
        &mut self,
        user: &str,
        decide: impl FnOnce(&Limits, u64, u64) -> Result<(u64, u32)>,
    ) -> Result<()> {
        let now = now_secs();
        let txn = self.db.begin().await?;
        let row = db::quotas::lock(&txn, user, now).await?;
        let limits = Limits::of(Some(&row), self.defaults);
        let u = db::quotas::usage(&txn, user, now, Some(&self.id)).await?;
        let bytes = (u.image_bytes + u.chunk_bytes + u.reserved_bytes).max(0) as u64;
        let images = (u.images + u.reserved_images).max(0) as u64;
        let (b, i) = decide(&limits, bytes, images)?;
        db::quotas::put_reservation(&txn, &self.id, user, b as i64, i as i32, now + LEASE_SECS)
            .await?;
        txn.commit().await?;
        self.row = true;
        self.user = user.to_string();
        self.limits = limits;
        self.bytes = b;
        self.images = i;
        if self.renewal.is_none() {
            self.renewal = Some(renew(self.db.clone(), self.id.clone()));
        }
        Ok(())
    }

    /// Grows the bytes reserved to cover `seen` (in steps).
    async fn cover(&mut self, seen: u64) -> Result<()> {
        self.seen = seen;
        if !self.bound || seen <= self.bytes || self.limits.max_bytes == 0 {
            return Ok(());
        }
        let (held, images, what, user) = (self.bytes, self.images, self.what, self.user.clone());
        let mut tries = 0;
        loop {
            let outcome = self
                .transact(&user.clone(), |limits, used, _| {
                    let total = used + held;
                    match grow(limits.max_bytes, total, held, seen, step_for(seen)) {
                        Some(b) => Ok((b, images)),
                        None => Err(bytes_refusal(
                            &user,
                            limits.max_bytes,
                            used,
                            used + seen,
                            what,
                        )),
                    }
                })
                .await;
            tries += 1;
            match outcome {
                Err(Error::QuotaExceeded(_)) if tries < REFUSAL_TRIES => {
                    tokio::time::sleep(REFUSAL_WAIT).await
                }
                other => return other,
            }
        }
    }

    /// Reserves exactly `bytes` and `images` for `user` (replacing what this reservation held,
    /// possibly for another user), or refuses.
    async fn exactly(&mut self, user: &str, bytes: u64, images: u32) -> Result<()> {
        let what = self.what;
        self.transact(user, |limits, used, held_images| {
            if images > 0 && limits.max_images > 0 && held_images + 1 > limits.max_images {
                return Err(images_refusal(user, limits.max_images, held_images));
            }
            if limits.max_bytes > 0 && used + bytes > limits.max_bytes {
                return Err(bytes_refusal(
                    user,
                    limits.max_bytes,
                    used,
                    used + bytes,
                    what,
                ));
            }
            Ok((bytes, images))
        })
        .await
    }
}

/// Renews a reservation's lease while its request runs.
fn renew(db: DatabaseConnection, id: String) -> AbortOnDropHandle<()> {
    super::keep_renewed(LEASE_SECS, "a quota reservation", move |now, expires_at| {
        let (db, id) = (db.clone(), id.clone());
        async move { db::quotas::renew_reservation(&db, &id, now, expires_at).await }
    })
}

impl Reservation {
    /// Wraps a request body so that the bytes reserved grow as they arrive; the stream fails
    /// at the chunk that would cross the limit ([`Reservation::error_or`] then gives the
    /// refusal).
    pub fn wrap(&self, body: ByteStream) -> ByteStream {
        let r = self.clone();
        futures::stream::unfold((body, r, false), |(mut body, r, done)| async move {
            if done {
                return None;
            }
            match body.next().await? {
                Err(e) => Some((Err(e), (body, r, true))),
                Ok(chunk) => {
                    let mut held = r.0.lock().await;
                    let seen = held.seen + chunk.len() as u64;
                    match held.cover(seen).await {
                        Ok(()) => {
                            drop(held);
                            Some((Ok(chunk), (body, r, false)))
                        }
                        Err(e) => {
                            let msg = e.to_string();
                            held.failure = Some(e);
                            drop(held);
                            Some((Err(std::io::Error::other(msg)), (body, r, true)))
                        }
                    }
                }
            }
        })
        .boxed()
    }

    /// The quota's refusal when it stopped the wrapped body, else `e`.
    pub async fn error_or(&self, e: Error) -> Error {
        self.0.lock().await.failure.take().unwrap_or(e)
    }

    /// `outcome` of consuming the wrapped body, with the quota's refusal when it stopped it.
    pub async fn checked<T>(&self, outcome: Result<T>) -> Result<T> {
        match outcome {
            Ok(v) => Ok(v),
            Err(e) => Err(self.error_or(e).await),
        }
    }

    /// Moves the reservation to `user` (the image's user, once the whole form is read), with
    /// everything it must cover (the bytes seen and the image); refused when that does not fit
    /// the user's quota.
    pub async fn rebind(&self, user: &str) -> Result<()> {
        let mut held = self.0.lock().await;
        if held.bound && held.user == user {
            return Ok(());
        }
        held.bound = true;
        let limits = limits_of(&held.db, user, held.defaults).await?;
        if limits.unlimited() {
            // Nothing to hold for this user: what was held for the other one goes now.
            if held.row {
                delete_row(&held.db, &held.id).await;
                held.row = false;
                held.renewal = None;
            }
            held.user = user.to_string();
            held.limits = limits;
            return Ok(());
        }
        // The form has ended: every byte was seen, and exactly those count.
        let bytes = held.seen;
        held.exactly(user, bytes, 1).await
    }

    /// Makes the reservation cover `total` bytes (a zip's image, known once its archive is
    /// read), beyond the bytes that already count for the user.
    pub async fn settle(&self, total: u64) -> Result<()> {
        let mut held = self.0.lock().await;
        let need = total.saturating_sub(held.base);
        if need <= held.bytes || held.limits.max_bytes == 0 {
            return Ok(());
        }
        let (user, images) = (held.user.clone(), held.images);
        held.exactly(&user, need, images).await
    }

    /// The id of the reservation's row in `quota_reservations`, when it has one: to be deleted
    /// in the transaction that records what the reservation became (see
    /// [`Reservation::release_in`]).
    pub async fn row_id(&self) -> Option<String> {
        let held = self.0.lock().await;
        held.row.then(|| held.id.clone())
    }

    /// Deletes the reservation's row in `txn`, the transaction that records what the
    /// reservation became (the image): the user's usage, read in one statement, counts the one
    /// or the other, never both (for a moment, 4 images under a limit of 3, and requests that
    /// fit were refused). Call [`Reservation::released`] once `txn` is committed; if it is
    /// not, the reservation still holds and is released as usual.
    pub async fn release_in(&self, txn: &impl sea_orm::ConnectionTrait) -> Result<()> {
        if let Some(id) = self.row_id().await {
            db::quotas::delete_reservation(txn, &id).await?;
        }
        Ok(())
    }

    /// The transaction that deleted the reservation's row (see [`Reservation::release_in`])
    /// is committed: it holds nothing any more.
    pub async fn released(self) {
        let mut held = self.0.lock().await;
        held.renewal = None;
        held.row = false;
    }

    /// What this reservation became is recorded: it no longer holds anything.
    pub async fn release(self) {
        let mut held = self.0.lock().await;
        held.renewal = None;
        if held.row {
            held.row = false;
            delete_row(&held.db, &held.id).await;
        }
    }
}

async fn limits_of(db: &DatabaseConnection, user: &str, defaults: Limits) -> Result<Limits> {
    Ok(Limits::of(
        db::quotas::find(db, user).await?.as_ref(),
        defaults,
    ))
}

/// What `GET /usage` answers.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct UsageView {
    #[serde(rename = "userId")]
    pub user_id: String,
    /// Bytes the user holds: its images (as uploaded), the chunks of its uploads not merged
    /// yet, and what its requests in flight reserved.
    pub bytes: u64,
    /// Images the user holds (and images being made for it right now).
    pub images: u64,
    /// Chunked uploads of the user that are not merged yet.
    #[serde(rename = "openUploads")]
    pub open_uploads: u64,
    /// The user's byte limit; 0 = unlimited.
    #[serde(rename = "maxBytes")]
    pub max_bytes: u64,
    /// The user's image limit; 0 = unlimited.
    #[serde(rename = "maxImages")]
    pub max_images: u64,
}

/// A user's quota, as `GET` and `PUT /quotas/{userId}` answer it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct QuotaView {
    #[serde(rename = "userId")]
    pub user_id: String,
    /// The effective byte limit; 0 = unlimited.
    #[serde(rename = "maxBytes")]
    pub max_bytes: u64,
    /// The effective image limit; 0 = unlimited.
    #[serde(rename = "maxImages")]
    pub max_images: u64,
    /// The user's own byte limit; `null` = the configured default (`FS_QUOTA_BYTES`).
    #[serde(rename = "maxBytesOverride")]
    pub max_bytes_override: Option<u64>,
    /// The user's own image limit; `null` = the configured default (`FS_QUOTA_IMAGES`).
    #[serde(rename = "maxImagesOverride")]
    pub max_images_override: Option<u64>,
}

/// `PUT /quotas/{userId}`: the user's own limits; `None` = the configured default, 0 =
/// unlimited.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaChange {
    /// Bytes the user may hold; `null` (or absent) = `FS_QUOTA_BYTES`, 0 = unlimited.
    #[serde(rename = "maxBytes", default)]
    #[schema(minimum = 0)]
    pub max_bytes: Option<u64>,
    /// Images the user may hold; `null` (or absent) = `FS_QUOTA_IMAGES`, 0 = unlimited.
    #[serde(rename = "maxImages", default)]
    #[schema(minimum = 0)]
    pub max_images: Option<u64>,
}

impl Service {
    /// The configured defaults (`FS_QUOTA_BYTES`, `FS_QUOTA_IMAGES`).
    fn quota_defaults(&self) -> Limits {
        Limits {
            max_bytes: self.cfg.quota_bytes,
            max_images: self.cfg.quota_images,
        }
    }

    fn reservation(&self, user: &str, limits: Limits, what: &'static str) -> Held {
        Held {
            db: self.db.clone(),
            defaults: self.quota_defaults(),
            id: uuid::Uuid::new_v4().to_string(),
            bound: true,
            user: user.to_string(),
            limits,
            bytes: 0,
            images: 0,
            seen: 0,
            base: 0,
            what,
            failure: None,
            row: false,
            renewal: None,
        }
    }

    /// A user's effective limits (one read of its `quotas` row).
    pub async fn quota_limits(&self, user: &str) -> Result<Limits> {
        limits_of(&self.db, user, self.quota_defaults()).await
    }

    /// Refuses at once (`QuotaExceeded`) a request adding at least `least` bytes (and, with
    /// `image`, an image) that `user` has no room for: not `least` bytes left, or all its
    /// images. Read without reserving (two such checks may both pass): the reservation made
    /// as the bytes arrive still decides; this only spares a client that waits for `100
    /// Continue` sending a body bound to fail.
    pub async fn quota_room_for(&self, user: &str, least: u64, image: bool) -> Result<()> {
        let limits = self.quota_limits(user).await?;
        if limits.unlimited() {
            return Ok(());
        }
        let u = db::quotas::usage(&self.db, user, now_secs(), None).await?;
        let used = (u.image_bytes + u.chunk_bytes + u.reserved_bytes).max(0) as u64;
        let images = (u.images + u.reserved_images).max(0) as u64;
        if image && limits.max_images > 0 && images >= limits.max_images {
            return Err(images_refusal(user, limits.max_images, images));
        }
        if limits.max_bytes > 0 && used.saturating_add(least) > limits.max_bytes {
            return Err(bytes_refusal(
                user,
                limits.max_bytes,
                used,
                used.saturating_add(least),
                if image { "upload" } else { "chunk" },
            ));
        }
        Ok(())
    }

    /// A single upload for `user` (as far as known when its file part starts) begins: its
    /// image slot is reserved (refused at once when the user has all its images) and its
    /// bytes will be as they arrive ([`Reservation::wrap`]).
    pub async fn reserve_upload(&self, user: &str) -> Result<Reservation> {
        let limits = self.quota_limits(user).await?;
        let mut held = self.reservation(user, limits, "upload");
        if !limits.unlimited() {
            held.exactly(user, 0, 1).await?;
        }
        Ok(Reservation(Arc::new(tokio::sync::Mutex::new(held))))
    }

    /// The `file` part of a single upload begins (the hook in `upload_image`): its
    /// reservation, for the user its `userId` field names, and the body wrapped to grow it.
    /// When that field has not arrived yet (it may follow the file), the user is not known:
    /// nothing is enforced while the bytes arrive, and the whole upload is reserved at once
    /// when the form ends ([`Reservation::rebind`]).
    pub async fn quota_upload(
        &self,
        user_field: Option<&str>,
        body: ByteStream,
    ) -> Result<(Reservation, ByteStream)> {
        let reservation = match user_field {
            Some(field) => {
                let user = super::validate::user_id(Some(field)).map_err(Error::InvalidInput)?;
                self.reserve_upload(&user).await?
            }
            None => {
                let mut held = self.reservation("", Limits::default(), "upload");
                held.bound = false;
                Reservation(Arc::new(tokio::sync::Mutex::new(held)))
            }
        };
        let body = reservation.wrap(body);
        Ok((reservation, body))
    }

    /// A chunk of `len` bytes is about to be stored as chunk `number` of the upload `target`
    /// names: its bytes count for the session's owner (`owner`, the user the request names,
    /// when no session is open yet; a session without one counts at its merge), less those of
    /// the copy of that chunk it replaces.
    pub(super) async fn reserve_chunk(
        &self,
        target: &super::uploads::SessionRef,
        owner: Option<&str>,
        number: ChunkNumber,
        len: u64,
    ) -> Result<Reservation> {
        let session = db::uploads::find(&self.db, &target.key).await?;
        let owner = match &session {
            Some(s) => s.owner.clone(),
            None => owner.map(str::to_string),
        };
        let limits = match &owner {
            Some(owner) => self.quota_limits(owner).await?,
            None => Limits::default(),
        };
        let owner = owner.unwrap_or_default();
        let mut held = self.reservation(&owner, limits, "chunk");
        if limits.max_bytes > 0 {
            let replaced: u64 = match &session {
                Some(s) => db::uploads::parts(&self.db, &s.id)
                    .await?
                    .iter()
                    .filter(|p| p.part_number as u32 == number.get())
                    .map(|p| p.size_bytes as u64)
                    .sum(),
                None => 0,
            };
            held.exactly(&owner, len.saturating_sub(replaced), 0)
                .await?;
        }
        Ok(Reservation(Arc::new(tokio::sync::Mutex::new(held))))
    }

    /// A merge of `session` into an image of `user` begins: the image's slot is reserved, and
    /// the chunks' bytes when they do not already count for that user.
    pub async fn reserve_merge(
        &self,
        session: &upload_session::Model,
        parts: &[upload_part::Model],
        user: &str,
    ) -> Result<Reservation> {
        let limits = self.quota_limits(user).await?;
        let mut held = self.reservation(user, limits, "merge");
        let chunks: u64 = parts.iter().map(|p| p.size_bytes as u64).sum();
        let own = session.owner.as_deref() == Some(user);
        held.base = if own { chunks } else { 0 };
        if !limits.unlimited() {
            let bytes = if own || limits.max_bytes == 0 {
                0
            } else {
                chunks
            };
            let images = u32::from(limits.max_images > 0);
            held.exactly(user, bytes, images).await?;
        }
        Ok(Reservation(Arc::new(tokio::sync::Mutex::new(held))))
    }

    /// A merge joined `session`'s chunks into an image of `size` bytes (the hook in the
    /// merge): the reservation must cover it. Only a zip's image can need more than its
    /// chunks; refused, its archive is gone (replaced by the image), so the upload is dropped,
    /// as for an image over the size limit.
    pub async fn settle_merged(
        &self,
        quota: &Reservation,
        session: &upload_session::Model,
        token: &str,
        size: u64,
    ) -> Result<()> {
        match quota.settle(size).await {
            Err(e @ Error::QuotaExceeded(_)) => {
                if db::uploads::delete_merging(&self.db, &session.id, token).await? {
                    self.delete_object(&session.bucket, &session.object_key)
                        .await;
                }
                Err(e)
            }
            other => other,
        }
    }

    /// Deletes reservations whose lease ended (their requests were lost); returns how many.
    pub async fn prune_quota_reservations(&self) -> Result<u64> {
        Ok(db::quotas::prune_expired(&self.db, now_secs()).await?)
    }

    /// `GET /usage`: what a user holds and may hold. A user asks for itself; an admin (or
    /// anyone with authentication off) for the user it names (`userId`; with authentication
    /// off, empty names the user "").
    pub async fn usage(&self, caller: &Caller, asked: Option<&str>) -> Result<UsageView> {
        let user = caller.acting_for(asked.unwrap_or(""))?;
        let limits = self.quota_limits(&user).await?;
        let u = db::quotas::usage(&self.db, &user, now_secs(), None).await?;
        let n = |v: i64| v.max(0) as u64;
        Ok(UsageView {
            bytes: n(u.image_bytes + u.chunk_bytes + u.reserved_bytes),
            images: n(u.images + u.reserved_images),
            open_uploads: n(u.open_uploads),
            max_bytes: limits.max_bytes,
            max_images: limits.max_images,
            user_id: user,
        })
    }

    /// `GET /quotas/{userId}`: a user's quota (a user may read its own; an admin anyone's).
    pub async fn quota(&self, caller: &Caller, user: &str) -> Result<QuotaView> {
        let user = &super::validate::user_id(Some(user)).map_err(Error::InvalidInput)?;
        if !caller.may_access(user) {
            return Err(Error::Forbidden(format!(
                "only an admin may read the quota of user {user:?}"
            )));
        }
        self.quota_view(user).await
    }

    /// Whether `caller` may set quotas: an admin (or anyone with authentication off).
    /// Errors: `Forbidden` otherwise (asked before a change is read, so that a user learns
    /// nothing from how its change would have been judged).
    pub fn may_set_quotas(&self, caller: &Caller) -> Result<()> {
        match caller.sees_all() {
            true => Ok(()),
            false => Err(Error::Forbidden("only an admin may set quotas".into())),
        }
    }

    /// `PUT /quotas/{userId}`: sets a user's own limits (an admin only, when authentication
    /// is on).
    pub async fn set_quota(
        &self,
        caller: &Caller,
        user: &str,
        change: QuotaChange,
    ) -> Result<QuotaView> {
        self.may_set_quotas(caller)?;
        let user = super::validate::user_id(Some(user)).map_err(Error::InvalidInput)?;
        let stored = |v: Option<u64>, name: &str| -> Result<Option<i64>> {
            v.map(|n| {
                i64::try_from(n).map_err(|_| {
                    Error::InvalidInput(format!("{name} {n} is larger than {}", i64::MAX))
                })
            })
            .transpose()
        };
        let max_bytes = stored(change.max_bytes, "maxBytes")?;
        let max_images = stored(change.max_images, "maxImages")?;
        db::quotas::set_limits(&self.db, &user, max_bytes, max_images, now_secs()).await?;
        tracing::info!(user, ?max_bytes, ?max_images, "quota set");
        self.quota_view(&user).await
    }

    async fn quota_view(&self, user: &str) -> Result<QuotaView> {
        let row = db::quotas::find(&self.db, user).await?;
        let limits = Limits::of(row.as_ref(), self.quota_defaults());
        let own = |v: Option<i64>| v.map(|n| n.max(0) as u64);
        Ok(QuotaView {
            user_id: user.to_string(),
            max_bytes: limits.max_bytes,
            max_images: limits.max_images,
            max_bytes_override: row.as_ref().and_then(|r| own(r.max_bytes)),
            max_images_override: row.as_ref().and_then(|r| own(r.max_images)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_win_over_defaults_and_zero_is_unlimited() {
        let defaults = Limits {
            max_bytes: 100,
            max_images: 3,
        };
        assert_eq!(Limits::resolve(None, defaults), defaults);
        assert_eq!(Limits::resolve(Some((None, None)), defaults), defaults);
        assert_eq!(
            Limits::resolve(Some((Some(0), Some(7))), defaults),
            Limits {
                max_bytes: 0,
                max_images: 7
            }
        );
        assert_eq!(
            Limits::resolve(Some((Some(5), None)), Limits::default()),
            Limits {
                max_bytes: 5,
                max_images: 0
            }
        );
        assert!(Limits::default().unlimited());
        assert!(!defaults.unlimited());
    }

    #[test]
    fn growth_takes_steps_then_the_remainder_then_refuses() {
        const S: u64 = 16;
        // Unlimited: a full step ahead.
        assert_eq!(grow(0, 1_000, 0, 5, S), Some(16));
        // Plenty of room: a full step beyond what is held.
        assert_eq!(grow(100, 10, 0, 5, S), Some(16));
        assert_eq!(grow(100, 26, 16, 17, S), Some(32));
        // A bigger piece than a step arrived at once: at least what arrived.
        assert_eq!(grow(100, 10, 0, 40, S), Some(40));
        // A full step does not fit: the remainder (the user holds 90 of 100 with these 16).
        assert_eq!(grow(100, 90, 16, 20, S), Some(26));
        // Exactly at the limit is allowed, one byte over is not.
        assert_eq!(grow(100, 90, 16, 26, S), Some(26));
        assert_eq!(grow(100, 90, 16, 27, S), None);
        // Others took the room meanwhile.
        assert_eq!(grow(100, 120, 16, 17, S), None);
    }

    #[test]
    fn steps_follow_what_arrived() {
        assert_eq!(step_for(0), MIN_STEP_BYTES);
        assert_eq!(step_for(3 << 20), 3 << 20);
        assert_eq!(step_for(1 << 30), STEP_BYTES);
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human(1 << 30), "1.0 GiB");
        assert_eq!(human(512), "512 B");
    }
}
