//! Merging a chunked upload: the chunks (parts of one multipart upload) are joined into the
//! image, verified against the client's checksum, unpacked when they form a zip, and recorded;
//! a merge another process left half done is finished (`recover_merges`).

use super::{
    caller::{self, Caller},
    form::{Field, Fields},
    ids::{ImageId, ObjectKey},
    integrity::{Algorithm, Checksum, Digests, Wanted},
    meter::{combine_crc32, Meter},
    now_secs,
    objects::{multipart_of, spool, NewImage},
    texts,
    uploads::{image_checksum, other_priority, SessionRef, Totals},
    validate, Error, Result, Service,
};
use crate::{
    config::Tier,
    db,
    storage::{
        CompletedPart, MultipartUpload, Part, PutOptions, SpooledPart, StorageError, UploadedPart,
    },
};
use entity::{
    image,
    status::{
        JobKind,
        SessionState::{Completed, Open},
    },
    upload_session,
};
use futures::StreamExt;
use sea_orm::TransactionTrait;
use std::time::Duration;
use tokio_util::task::AbortOnDropHandle;

/// A merge whose merger has not renewed its claim for this long is dead (its process was
/// killed) and is taken over: finished by the recovery loop of any replica, or by a repeated
/// merge request.
const MERGE_LEASE_SECS: i64 = 15;
/// How often a running merge renews its claim.
pub const MERGE_RENEW: Duration = Duration::from_secs(5);
/// How often a repeated merge looks at the outcome of the merge it waits for.
const MERGE_POLL: Duration = Duration::from_millis(200);
/// How long a repeated merge waits for another, live merger before it answers 409 (below the
/// 60 s that proxies commonly allow a response).
const MERGE_WAIT: Duration = Duration::from_secs(30);

/// The image a zipped upload's merge extracts (recorded in `upload_sessions.merge_unpacked`).
#[derive(serde::Serialize, serde::Deserialize)]
struct Unpacked {
    #[serde(rename = "fileName")]
    file_name: String,
    size: u64,
    crc32: u32,
}

/// Why chunks must be sent again, naming them.
fn resend_message(numbers: &[u32], min: u64) -> String {
    let list: Vec<String> = numbers.iter().map(u32::to_string).collect();
    let (what, it) = match numbers.len() {
        1 => ("chunk", "it"),
        _ => ("chunks", "each of them"),
    };
    format!(
        "{what} {} must be sent again: the chunks just before {it} are smaller than {min} \
         bytes together and cannot be joined to a part already stored; sent again, {it} is \
         joined with them",
        list.join(", ")
    )
}

/// A chunk copied back into a multipart upload by a split.
struct CopiedChunk {
    number: u32,
    len: u64,
    uploaded: UploadedPart,
    crc32: u32,
    staged: bool,
}

/// Where a merge request finds its upload.
enum MergeTarget {
    /// Merged before, into this image.
    Merged(Box<image::Model>),
    /// Still open (or being merged), with the chunks it holds, ascending.
    Open(Box<upload_session::Model>, Vec<entity::upload_part::Model>),
}

/// A merge as it was asked for (recorded in the session, so another process can finish it).
struct MergeJob {
    file_name: String,
    user_id: String,
    /// The whole image's checksum to verify, if the client sent one.
    checksum: Option<Checksum>,
}

impl Service {
    /// `POST /images/merge`: joins chunks 1..N into the image. Repeating it returns the same image.
    pub async fn merge(&self, caller: &Caller, fields: Fields) -> Result<image::Model> {
        let target = SessionRef::of(caller, &fields)?;
        let identifier = target.identifier.to_string();
        let file_name = validate::file_name(fields.get(Field::FileName).unwrap_or(""))
            .ok_or(Error::InvalidFileName(texts::BAD_MERGE_NAME))?;
        let user_id = validate::user_id(fields.get(Field::UserId)).map_err(Error::InvalidInput)?;
        let request = MergeJob {
            file_name,
            user_id: caller.acting_for(&user_id)?,
            checksum: image_checksum(&fields)?,
        };
        let totals = Totals::of(&fields)?;
        // The session's own tier is used; a priority that names none is an error, and so is
        // one that is not the session's.
        let asked = self.asked_priority(&fields)?;
        let deadline = tokio::time::Instant::now() + MERGE_WAIT;
        let mut waited = false;
        loop {
            let (session, parts) = match self.merge_target(&target).await {
                Ok(MergeTarget::Merged(img)) => {
                    if let Some(asked) = asked.filter(|p| *p != img.priority) {
                        return Err(other_priority(&target.identifier, img.priority, asked));
                    }
                    let (checksum, name) = (request.checksum.as_ref(), &request.file_name);
                    return self.merged_before(*img, checksum, &totals, name).await;
                }
                Ok(MergeTarget::Open(session, parts)) => (*session, parts),
                // It was there when this merge began to wait for another claim.
                Err(Error::InvalidInput(_)) if waited => {
                    return Err(Error::Conflict(format!(
                        "upload {identifier} was cancelled while this merge waited for it"
                    )))
                }
                Err(e) => return Err(e),
            };
            if let Some(asked) = asked.filter(|p| *p != session.priority) {
                return Err(other_priority(&target.identifier, session.priority, asked));
            }
            self.all_chunks_received(&session, &parts, &totals)?;
            // No chunk it joins is stored again while it merges (a resend in flight finishes
            // first): the parts it completes are those recorded.
            let numbers: Vec<u32> = parts.iter().map(|p| p.part_number as u32).collect();
            let writers = self
                .part_writers(&session, &numbers, super::uploads::YieldTo::Nothing)
                .await?;
            let token = uuid::Uuid::new_v4().simple().to_string();
            if !self.claim_for(&session, &token, &request).await? {
                writers.end().await;
                // Someone else merges it: wait for the outcome (or for its lease to lapse, then
                // take over), within bounds.
                if tokio::time::Instant::now() >= deadline {
                    return Err(Error::Conflict(format!(
                        "upload {identifier} is still being merged; ask again later"
                    )));
                }
                waited = true;
                tokio::time::sleep(MERGE_POLL).await;
                continue;
            }
            // On a task of its own: a client that goes away does not cut a merge in half.
            let svc = self.clone();
            let run = tokio::spawn(async move {
                let merged = svc.run_merge(session, token, request, identifier).await;
                writers.end().await;
                merged
            });
            return run.await.map_err(|e| Error::Internal(e.to_string()))?;
        }
    }

    /// Whether `parts` hold every chunk the session (and the merge's declared totals) calls
    /// for. Errors: the totals disagree with the session's, or chunks are missing (counted).
    fn all_chunks_received(
        &self,
        session: &upload_session::Model,
        parts: &[entity::upload_part::Model],
        totals: &Totals,
    ) -> Result<()> {
        let covered = totals
            .agrees_with(session)
            .and_then(|t| t.covered_by(parts));
        if let Err(Error::MissingChunks(_)) = &covered {
            self.metrics
                .upload_merge(crate::metrics::MergeOutcome::MissingChunks);
        }
        covered
    }

    /// Claims the session for this merge under `token`, recording the request so that another
    /// process can finish it. `false` when another merge (or a cancel) holds a live claim.
    async fn claim_for(
        &self,
        session: &upload_session::Model,
        token: &str,
        request: &MergeJob,
    ) -> Result<bool> {
        let checksum = request.checksum.as_ref().map(Checksum::to_string);
        let claim = db::uploads::MergeClaim {
            token,
            request: Some(db::uploads::MergeRequest {
                file_name: &request.file_name,
                user_id: &request.user_id,
                checksum: checksum.as_deref(),
            }),
        };
        let now = now_secs();
        let stale_before = now - MERGE_LEASE_SECS;
        Ok(db::uploads::claim_merge(&self.db, &session.id, now, stale_before, &claim).await?)
    }

    /// The upload a merge request names: an open session with its chunks (at least one), or
    /// the image it was merged into before. Errors: no chunks were received for it (also when
    /// its image was deleted since, which frees the identifier).
    async fn merge_target(&self, target: &SessionRef) -> Result<MergeTarget> {
        let no_chunks = || {
            Error::InvalidInput(format!(
                "no chunks received for identifier {}",
                target.identifier
            ))
        };
        let Some(session) = db::uploads::find(&self.db, &target.key).await? else {
            // Merged before and its session swept: still the same image.
            return match db::images::find_by_identifier(&self.db, &target.key).await? {
                Some(img) => Ok(MergeTarget::Merged(Box::new(img))),
                None => Err(no_chunks()),
            };
        };
        if session.state == Completed {
            if let Some(img) = db::images::find(&self.db, &session.image_id).await? {
                return Ok(MergeTarget::Merged(Box::new(img)));
            }
            // The merged image was deleted since: the identifier is free again.
            db::uploads::delete(&self.db, &session.id).await?;
            return Err(no_chunks());
        }
        let parts = db::uploads::parts(&self.db, &session.id).await?;
        if parts.is_empty() {
            return Err(no_chunks());
        }
        Ok(MergeTarget::Open(Box::new(session), parts))
    }

    /// The answer to a repeated merge of an identifier merged into `img`: the image, when what
    /// the repetition declares holds for it (`totalSize`, `checksum`; a zipped upload's
    /// archive is gone, so neither can be compared again).
    async fn merged_before(
        &self,
        img: image::Model,
        checksum: Option<&Checksum>,
        totals: &Totals,
        file_name: &str,
    ) -> Result<image::Model> {
        if validate::is_zip(file_name) {
            return Ok(img);
        }
        if let Some(total) = totals.total_size.filter(|t| *t != img.size_bytes as u64) {
            return Err(Error::SizeMismatch(format!(
                "this upload was merged into image {} of {} bytes, not totalSize {total}",
                img.id, img.size_bytes
            )));
        }
        let Some(expected) = checksum else {
            return Ok(img);
        };
        let recorded = match expected.algorithm {
            Algorithm::Md5 => img.original_md5.as_deref(),
            Algorithm::Sha256 => img.original_sha256.as_deref(),
            Algorithm::Crc32c => None,
        };
        let digests = match recorded.and_then(|h| hex::decode(h).ok()) {
            Some(bytes) => {
                let mut d = Digests::default();
                match expected.algorithm {
                    Algorithm::Md5 => d.md5 = bytes.try_into().ok(),
                    _ => d.sha256 = bytes.try_into().ok(),
                }
                d
            }
            None => {
                let wanted = Wanted::for_checksums([expected]);
                self.object_digests(&img.bucket, &img.object_key, wanted)
                    .await?
            }
        };
        digests
            .verify(std::slice::from_ref(expected), "the merged image")
            .map_err(Error::ChecksumMismatch)?;
        Ok(img)
    }

    /// Copies bytes read from the store into a scratch file (removed when the path drops). A
    /// read that fails is the store's fault, not a client's body.
    async fn spool_stored(&self, body: crate::storage::ByteStream) -> Result<tempfile::TempPath> {
        let (file, path) = self.scratch_file().await?;
        spool(file, body, &Meter::default())
            .await
            .map_err(|e| match e {
                Error::BadBody(io) => Error::Storage(StorageError::Io(io)),
                other => other,
            })?;
        Ok(path)
    }

    /// Runs a merge this process claimed with `token`, renewing its claim while it runs; a
    /// failure reopens the session (chunks kept) or, when the joined result is unusable,
    /// drops it.
    async fn run_merge(
        &self,
        session: upload_session::Model,
        token: String,
        request: MergeJob,
        identifier: String,
    ) -> Result<image::Model> {
        let _renewal = AbortOnDropHandle::new(tokio::spawn({
            let (db, id, token) = (self.db.clone(), session.id.clone(), token.clone());
            async move {
                loop {
                    tokio::time::sleep(MERGE_RENEW).await;
                    match db::uploads::renew_merge(&db, &id, &token, now_secs()).await {
                        Ok(true) => {}
                        Ok(false) => return tracing::warn!("a merge was taken over by another"),
                        Err(e) => tracing::warn!(error = %e, "could not renew a merge claim"),
                    }
                }
            }
        }));
        let parts = db::uploads::parts(&self.db, &session.id).await?;
        let result = self
            .complete(&session, &parts, &request, &token, &identifier)
            .await;
        self.metrics.upload_merge(match &result {
            Ok(_) => crate::metrics::MergeOutcome::Completed,
            Err(_) => crate::metrics::MergeOutcome::Failed,
        });
        let Err(e) = result else {
            return result;
        };
        // The chunks were joined: a result that cannot be used consumed them.
        let reopen = !matches!(e, Error::InvalidZip(_) | Error::TooLarge);
        if reopen {
            db::uploads::end_merge(&self.db, &session.id, &token, Open, now_secs()).await?;
            return Err(e);
        }
        if db::uploads::delete_merging(&self.db, &session.id, &token).await? {
            self.delete_object(&session.bucket, &session.object_key)
                .await;
        }
        Err(match e {
            Error::InvalidZip(why) => Error::InvalidZip(format!(
                "{why}; the chunks of upload {identifier} were dropped with it: send them \
                 again to merge them once more"
            )),
            e => e,
        })
    }

    /// Finishes the merges whose merger died (its claim not renewed for the lease): a merge
    /// that recorded its request is completed as asked, an older one is reopened. Returns how
    /// many were taken over.
    pub async fn recover_merges(&self) -> Result<usize> {
        let before = now_secs() - MERGE_LEASE_SECS;
        let mut recovered = 0;
        for s in db::uploads::stale_merges(&self.db, before).await? {
            let token = uuid::Uuid::new_v4().simple().to_string();
            let claim = db::uploads::MergeClaim {
                token: &token,
                request: None,
            };
            if !db::uploads::claim_merge(&self.db, &s.id, now_secs(), before, &claim).await? {
                continue;
            }
            recovered += 1;
            let identifier = caller::client_identifier(&s.identifier).to_string();
            let Some(file_name) = s.merge_file_name.clone() else {
                db::uploads::end_merge(&self.db, &s.id, &token, Open, now_secs()).await?;
                tracing::info!(identifier, "interrupted merge reopened");
                continue;
            };
            let request = MergeJob {
                file_name,
                user_id: s.merge_user_id.clone().unwrap_or_default(),
                // Recorded in its canonical form when the merge was asked for.
                checksum: s.merge_checksum.as_deref().and_then(|c| {
                    Checksum::parse_field(c, "checksum", &[Algorithm::Md5, Algorithm::Sha256]).ok()
                }),
            };
            match self.run_merge(s, token, request, identifier.clone()).await {
                Ok(img) => {
                    tracing::info!(identifier, image.id = %img.id, "interrupted merge finished")
                }
                Err(e) => {
                    tracing::info!(identifier, error = %e, "interrupted merge could not be finished")
                }
            }
        }
        Ok(recovered)
    }

    async fn complete(
        &self,
        session: &upload_session::Model,
        parts: &[entity::upload_part::Model],
        request: &MergeJob,
        token: &str,
        identifier: &str,
    ) -> Result<image::Model> {
        let (file_name, user_id) = (request.file_name.as_str(), request.user_id.as_str());
        let quota = self.reserve_merge(session, parts, user_id).await?;
        let session_tier = Tier {
            priority: session.priority,
            bucket: session.bucket.clone(),
            storage_class: self
                .cfg
                .tiers
                .get(&session.priority)
                .and_then(|t| t.storage_class.clone()),
        };
        self.complete_upload(session, parts, identifier).await?;
        // A zipped upload that recorded its image verified the archive before that.
        let mut verified = None;
        if let (Some(expected), None) = (&request.checksum, &session.merge_unpacked) {
            verified = Some(self.verify_merged(session, parts, token, expected).await?);
        }
        let (name, size, crc32, digests) = if validate::is_zip(file_name) {
            self.unpack_merged_zip(session, &session_tier, token, identifier)
                .await?
        } else {
            let size = parts.iter().map(|p| p.size_bytes as u64).sum();
            let crc = combine_crc32(parts.iter().map(|p| (p.crc32 as u32, p.size_bytes as u64)));
            // Verified against the client's checksum, the digests are the original's; else
            // the image's first check computes them.
            (file_name.to_string(), size, crc, verified)
        };
        if size > self.cfg.max_image_bytes {
            self.delete_object(&session.bucket, &session.object_key)
                .await;
            return Err(Error::TooLarge);
        }
        self.settle_merged(&quota, session, token, size).await?;
        let record = NewImage {
            id: &session.image_id,
            file_name: &name,
            user_id,
            tier: &session_tier,
            key: &session.object_key,
            size,
            crc32,
            digests: digests.as_ref(),
            // The session's key: a repeated merge by the same owner finds this image.
            source_identifier: Some(&session.identifier),
        };
        let txn = self.db.begin().await?;
        if !db::uploads::end_merge(&txn, &session.id, token, Completed, now_secs()).await? {
            // Taken over (this merger looked dead): the other merger records the image.
            return Err(Error::Conflict(format!(
                "upload {identifier} is being merged by another request"
            )));
        }
        // An image merged from this identifier before whose session is gone (cancelled to
        // start again) keeps its bytes; the identifier is this upload's now.
        db::images::release_identifier(&txn, &session.identifier).await?;
        db::images::insert(&txn, record.into_active_model()).await?;
        db::jobs::enqueue(&txn, JobKind::Check, &session.image_id, now_secs()).await?;
        quota.release_in(&txn).await?;
        txn.commit().await?;
        quota.released().await;
        self.job_wake.notify_one();
        tracing::info!(image.id = %session.image_id, identifier, size_bytes = size, parts = parts.len(), "chunks merged");
        db::images::find(&self.db, &session.image_id)
            .await?
            // Deleted by another request between the commit and this read (its id is in the
            // upload's status once merged): no fault of the service.
            .ok_or_else(|| {
                Error::Conflict(format!(
                    "upload {identifier} was merged into image {}, which another request \
                     deleted before this answer",
                    session.image_id
                ))
            })
    }

    /// Verifies the merged object against the checksum the merge was asked to verify, and
    /// returns the digests computed in that one read: SHA-256 (the merge answer shows it) and
    /// the algorithm declared. MD5, several times slower, only when declared: the client waits
    /// for this read, and the image's first check, which reads the bytes anyway, computes it
    /// otherwise. On a mismatch its chunks are stored again
    /// (under a new multipart upload) and the merged object removed, so the client can
    /// replace chunks and merge again.
    async fn verify_merged(
        &self,
        session: &upload_session::Model,
        parts: &[entity::upload_part::Model],
        token: &str,
        expected: &Checksum,
    ) -> Result<Digests> {
        let (bucket, key) = (&session.bucket, &session.object_key);
        let mut wanted = Wanted::for_checksums([expected]);
        wanted.add(Algorithm::Sha256);
        let digests = self.object_digests(bucket, key, wanted).await?;
        let Err(why) = digests.verify(std::slice::from_ref(expected), "the merged upload") else {
            return Ok(digests);
        };
        self.split_back(session, parts, token).await?;
        Err(Error::ChecksumMismatch(format!(
            "{why}; the chunks are kept: send the wrong ones again, then merge"
        )))
    }

    /// Stores the chunks of a merged object again as the parts of a new multipart upload
    /// (each as it was held: a part of its own or staged), points the session at it and
    /// removes the merged object. The new upload is for a new image id and key: some stores
    /// (Garage) drop the uploads in progress of a key when an object of that key is deleted.
    async fn split_back(
        &self,
        session: &upload_session::Model,
        parts: &[entity::upload_part::Model],
        token: &str,
    ) -> Result<()> {
        let (bucket, key) = (&session.bucket, &session.object_key);
        let opts = PutOptions {
            storage_class: self
                .cfg
                .tiers
                .get(&session.priority)
                .and_then(|t| t.storage_class.clone()),
        };
        let image_id = ImageId::new();
        let new_key = ObjectKey::image(&image_id);
        let upload_id = self.store.create_multipart(bucket, &new_key, &opts).await?;
        let abort = self.unfinished_upload(bucket, &new_key, &upload_id);
        let stored = self
            .copy_chunks(bucket, key, parts, (&new_key, &upload_id))
            .await?;
        let txn = self.db.begin().await?;
        let upload = (upload_id.as_str(), &*image_id, &*new_key);
        if !db::uploads::replace_upload(&txn, &session.id, token, upload).await? {
            return Err(Error::Conflict(format!(
                "upload {} is being merged by another request",
                caller::client_identifier(&session.identifier)
            )));
        }
        for c in &stored {
            let part = db::uploads::NewPart {
                number: c.number,
                size: c.len,
                etag: &c.uploaded.etag,
                crc32: c.crc32,
                staged: c.staged,
                checksum: c.uploaded.checksum.as_deref(),
            };
            db::uploads::upsert_part(&txn, &session.id, part, now_secs()).await?;
        }
        txn.commit().await?;
        abort.disarm();
        self.delete_object(bucket, key).await;
        tracing::info!(
            identifier = caller::client_identifier(&session.identifier),
            chunks = stored.len(),
            "merged upload split back into its chunks"
        );
        Ok(())
    }

    /// Copies each chunk's bytes out of the merged object `bucket/key` (they follow one
    /// another in part order) into part n of the multipart upload `(key, upload id)`, staged
    /// as each was before.
    async fn copy_chunks(
        &self,
        bucket: &str,
        key: &str,
        parts: &[entity::upload_part::Model],
        (new_key, upload_id): (&str, &str),
    ) -> Result<Vec<CopiedChunk>> {
        let into = MultipartUpload {
            bucket,
            key: new_key,
            upload_id,
        };
        let mut offset = 0u64;
        let mut stored = vec![];
        for p in parts {
            let len = p.size_bytes as u64;
            let body = if len == 0 {
                futures::stream::empty().boxed()
            } else {
                let range = crate::storage::ByteRange {
                    start: offset,
                    end: offset + len - 1,
                };
                self.store.get(bucket, key, Some(range)).await?
            };
            offset += len;
            let path = self.spool_stored(body).await?;
            let number = p.part_number as u32;
            let direct = !p.staged;
            let body = SpooledPart { file: path, len };
            let part = Part {
                number,
                body,
                direct,
            };
            let uploaded = self.store.upload_part(into, part).await?;
            stored.push(CopiedChunk {
                number,
                len,
                crc32: p.crc32 as u32,
                staged: uploaded.staged,
                uploaded,
            });
        }
        Ok(stored)
    }

    /// Completes the session's multipart upload from its parts. Direct chunks that cannot
    /// follow the small chunks before them are forgotten (the resume query then lists them
    /// missing) and named, so the client sends them again.
    async fn complete_upload(
        &self,
        session: &upload_session::Model,
        parts: &[entity::upload_part::Model],
        identifier: &str,
    ) -> Result<()> {
        let completed: Vec<CompletedPart> = parts
            .iter()
            .map(|p| CompletedPart {
                number: p.part_number as u32,
                etag: p.etag.clone(),
                size: p.size_bytes as u64,
                checksum: p.checksum.clone(),
                staged: p.staged,
            })
            .collect();
        match self
            .store
            .complete_multipart(multipart_of(session), &completed)
            .await
        {
            Err(StorageError::NoSuchUpload) => Err(Error::Conflict(format!(
                "upload {identifier} no longer exists in the store; cancel it and upload again"
            ))),
            Err(StorageError::InvalidPart(msg)) => Err(Error::InvalidInput(msg)),
            Err(StorageError::Resend(numbers)) => {
                db::uploads::delete_parts(&self.db, &session.id, &numbers).await?;
                tracing::info!(identifier, chunks = ?numbers, "chunks must be sent again");
                Err(Error::InvalidInput(resend_message(
                    &numbers,
                    self.store.min_part_size(),
                )))
            }
            other => Ok(other?),
        }
    }

    /// The merged object is a zip: replace the object by the image inside (through a scratch
    /// copy where the store has no local file). The image is recorded in the session before it
    /// replaces the archive, so a merge interrupted after that moment finds it in place.
    async fn unpack_merged_zip(
        &self,
        session: &upload_session::Model,
        tier: &Tier,
        token: &str,
        identifier: &str,
    ) -> Result<(String, u64, u32, Option<Digests>)> {
        let key = &session.object_key;
        if let Some(done) = session
            .merge_unpacked
            .as_deref()
            .and_then(|j| serde_json::from_str::<Unpacked>(j).ok())
        {
            // Replacing is atomic (a rename, an S3 completion): the object is the whole
            // archive or the whole image, and only the image has exactly the image's size
            // (an archive adds its headers to a stored entry; a deflated one that lands on
            // the same byte count is not an archive this merge accepted).
            if self.store.head(&session.bucket, key).await? == Some(done.size) {
                return Ok((done.file_name, done.size, done.crc32, None));
            }
        }
        // A store that keeps the archive as a file is read in place (the image replaces it by
        // a rename once extracted, while the archive stays open).
        let (path, _scratch) = match self.store.local_path(&session.bucket, key) {
            Some(path) => (path, None),
            None => {
                let body = self.store.get(&session.bucket, key, None).await?;
                let path = self.spool_stored(body).await?;
                (path.to_path_buf(), Some(path))
            }
        };
        let found = self.find_zip_image(&path).await?;
        let unpacked = Unpacked {
            file_name: found.file_name.clone(),
            size: found.declared_size,
            crc32: found.declared_crc32,
        };
        let json = serde_json::to_string(&unpacked).map_err(|e| Error::Internal(e.to_string()))?;
        if !db::uploads::record_unpacked(&self.db, &session.id, token, &json).await? {
            return Err(Error::Conflict(format!(
                "upload {identifier} is being merged by another request"
            )));
        }
        let x = self.extract_zip_image(&path, found, tier, key).await?;
        Ok((x.file_name, x.size, x.crc32, Some(x.digests)))
    }
}
