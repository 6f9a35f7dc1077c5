//! Chunked uploads: chunks are parts of one multipart upload per identifier; merge completes it.

use super::{
    form::{Fields, FormPart, FormSource},
    images::{object_key, spool, NewImage},
    meter::{combine_crc32, Meter},
    now_secs,
    placement::{self, Received},
    texts, validate, Error, Result, Service,
};
use crate::{
    config::Tier,
    db::{
        self,
        uploads::{COMPLETED, MERGING, OPEN},
    },
    storage::{CompletedPart, PutOptions, SpooledPart, StorageError},
};
use entity::{image, upload_session};
use futures::StreamExt;
use sea_orm::{ActiveValue::Set, TransactionTrait};
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

/// A received chunk, as reported by the resume query.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ChunkInfo {
    #[serde(rename = "chunkNumber")]
    pub number: u32,
    pub size: u64,
}

/// What the server holds for an identifier.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct UploadStatus {
    pub identifier: String,
    /// `none`, `open`, `merging` or `completed`.
    pub state: String,
    pub chunks: Vec<ChunkInfo>,
    #[serde(rename = "totalBytes")]
    pub total_bytes: u64,
    #[serde(rename = "imageId", skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
}

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

fn identifier_of(fields: &Fields) -> Result<String> {
    let id = fields.get("identifier").unwrap_or("");
    if validate::identifier(id) {
        Ok(id.to_string())
    } else {
        Err(Error::InvalidInput(format!(
            "identifier {id:?} must be 1 to 128 characters of A-Z, a-z, 0-9, '.', '_' or '-' (not '.' or '..')"
        )))
    }
}

impl Service {
    /// `POST /images/upload`: stores one chunk as part n of the identifier's upload.
    pub async fn upload_chunk(&self, query: Fields, form: &mut dyn FormSource) -> Result<()> {
        let _slot = self.upload_slot().await;
        let mut fields = query;
        let mut spooled: Option<(SpooledPart, Option<String>, u32)> = None;
        while let Some(part) = form.next_part().await? {
            match part {
                FormPart::Text { name, value } => fields.set(name, value),
                FormPart::File {
                    name,
                    file_name,
                    body,
                } if spooled.is_none() && (name == "part" || name == "file") => {
                    // Fields may follow the chunk, so it is spooled before anything is decided.
                    let meter = Meter::default();
                    let body = meter.wrap(body, self.cfg.max_image_bytes);
                    let (file, path) = self.scratch_file().await?;
                    let len = spool(file, body, &meter).await?;
                    spooled = Some((SpooledPart { file: path, len }, file_name, meter.crc32()));
                }
                FormPart::File { mut body, .. } => while body.next().await.is_some() {},
            }
        }
        let (body, file_name, crc32) = spooled.ok_or(Error::NoFile)?;
        let identifier = identifier_of(&fields)?;
        let number = validate::chunk_number(fields.get("chunkNumber"), file_name.as_deref())
            .map_err(Error::InvalidInput)?;
        let tier = self.tier_for(fields.get("priority"))?.clone();
        let session = self.open_session(&identifier, &tier).await?;
        if session.state != OPEN {
            return Err(Error::Conflict(format!(
                "upload {identifier} is {}; cancel it to start again",
                if session.state == MERGING {
                    "being merged"
                } else {
                    "already merged"
                }
            )));
        }
        let len = body.len;
        let others = self.other_chunks(&session.id, number).await?;
        // The chunk that would take the upload past the image size limit is refused now, not
        // at the merge: what the upload holds stays within the limit.
        let held: u64 = others.iter().map(|c| c.len).sum();
        if held.saturating_add(len) > self.cfg.max_image_bytes {
            return Err(Error::TooLarge);
        }
        let min = self.store.min_part_size();
        let direct = placement::send_direct(number, len, min, &others);
        let etag = self
            .store
            .upload_part(
                &session.bucket,
                &session.object_key,
                &session.upload_id,
                number,
                body,
                direct,
            )
            .await?;
        // The store stages a chunk below its minimum even when asked to send it directly.
        let staged = !direct || len < min;
        let part = db::uploads::NewPart {
            number,
            size: len,
            etag: &etag,
            crc32,
            staged,
        };
        db::uploads::upsert_part(&self.db, &session.id, part, now_secs()).await?;
        tracing::debug!(
            identifier,
            chunk = number,
            size_bytes = len,
            staged,
            "chunk stored"
        );
        self.metrics.upload_chunk_received();
        Ok(())
    }

    /// The chunks an upload holds besides (an earlier copy of) chunk `number`, ascending.
    async fn other_chunks(&self, session_id: &str, number: u32) -> Result<Vec<Received>> {
        Ok(db::uploads::parts(&self.db, session_id)
            .await?
            .iter()
            .filter(|p| p.part_number as u32 != number)
            .map(|p| Received {
                number: p.part_number as u32,
                len: p.size_bytes as u64,
                staged: p.staged,
            })
            .collect())
    }

    /// Finds the identifier's session or opens one (with its multipart upload). Safe when
    /// several first chunks race: one insert wins, the others drop their multipart uploads.
    async fn open_session(&self, identifier: &str, tier: &Tier) -> Result<upload_session::Model> {
        if let Some(s) = db::uploads::find(&self.db, identifier).await? {
            if s.priority != tier.priority {
                return Err(Error::InvalidInput(format!(
                    "upload {identifier} was started with priority {}, not {}",
                    s.priority, tier.priority
                )));
            }
            return Ok(s);
        }
        let image_id = uuid::Uuid::new_v4().to_string();
        let key = object_key(&image_id);
        let opts = PutOptions {
            storage_class: tier.storage_class.clone(),
        };
        let upload_id = self
            .store
            .create_multipart(&tier.bucket, &key, &opts)
            .await?;
        let now = now_secs();
        let row = upload_session::ActiveModel {
            id: Set(uuid::Uuid::new_v4().to_string()),
            identifier: Set(identifier.to_string()),
            priority: Set(tier.priority),
            bucket: Set(tier.bucket.clone()),
            image_id: Set(image_id),
            object_key: Set(key.clone()),
            upload_id: Set(upload_id.clone()),
            state: Set(OPEN.to_string()),
            // Legacy: each part records whether it is staged (see `placement`).
            packed: Set(false),
            merge_token: Set(None),
            merge_file_name: Set(None),
            merge_user_id: Set(None),
            merge_unpacked: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
        };
        let inserted = db::uploads::insert_if_absent(&self.db, row).await;
        if !matches!(inserted, Ok(true)) {
            let _ = self
                .store
                .abort_multipart(&tier.bucket, &key, &upload_id)
                .await;
        }
        if inserted? {
            self.metrics.upload_session_opened();
        }
        db::uploads::find(&self.db, identifier)
            .await?
            .ok_or_else(|| Error::Internal("upload session vanished after insert".into()))
    }

    /// `POST /images/merge`: joins chunks 1..N into the image. Repeating it returns the same image.
    pub async fn merge(&self, fields: Fields) -> Result<image::Model> {
        let identifier = identifier_of(&fields)?;
        let file_name = validate::file_name(fields.get("filename").unwrap_or(""))
            .ok_or(Error::InvalidFileName(texts::BAD_MERGE_NAME))?;
        let user_id = fields.get("userId").unwrap_or("").to_string();
        // The session's own tier is used; a priority that names none is still an error.
        self.tier_for(fields.get("priority"))?;
        let deadline = tokio::time::Instant::now() + MERGE_WAIT;
        loop {
            let Some(session) = db::uploads::find(&self.db, &identifier).await? else {
                // Merged before and its session swept: still the same image.
                if let Some(img) = db::images::find_by_identifier(&self.db, &identifier).await? {
                    return Ok(img);
                }
                return Err(Error::InvalidInput(format!(
                    "no chunks received for identifier {identifier}"
                )));
            };
            if session.state == COMPLETED {
                if let Some(img) = db::images::find(&self.db, &session.image_id).await? {
                    return Ok(img);
                }
                // The merged image was deleted since: the identifier is free again.
                db::uploads::delete(&self.db, &session.id).await?;
                return Err(Error::InvalidInput(format!(
                    "no chunks received for identifier {identifier}"
                )));
            }
            let parts = db::uploads::parts(&self.db, &session.id).await?;
            let max = parts.last().map(|p| p.part_number as u32).unwrap_or(0);
            if max == 0 {
                return Err(Error::InvalidInput(format!(
                    "no chunks received for identifier {identifier}"
                )));
            }
            let missing: Vec<u32> = (1..=max)
                .filter(|n| {
                    parts
                        .binary_search_by_key(&(*n as i32), |p| p.part_number)
                        .is_err()
                })
                .collect();
            if !missing.is_empty() {
                self.metrics
                    .upload_merge(crate::metrics::MergeOutcome::MissingChunks);
                return Err(Error::MissingChunks(missing));
            }
            let token = uuid::Uuid::new_v4().simple().to_string();
            let claim = db::uploads::MergeClaim {
                token: &token,
                request: Some((&file_name, &user_id)),
            };
            let now = now_secs();
            if !db::uploads::claim_merge(&self.db, &session.id, now, now - MERGE_LEASE_SECS, &claim)
                .await?
            {
                // Someone else merges it: wait for the outcome (or for its lease to lapse, then
                // take over), within bounds.
                if tokio::time::Instant::now() >= deadline {
                    return Err(Error::Conflict(format!(
                        "upload {identifier} is still being merged; ask again later"
                    )));
                }
                tokio::time::sleep(MERGE_POLL).await;
                continue;
            }
            // On a task of its own: a client that goes away does not cut a merge in half.
            let svc = self.clone();
            let run = tokio::spawn(async move {
                svc.run_merge(session, token, file_name, user_id, identifier)
                    .await
            });
            return run.await.map_err(|e| Error::Internal(e.to_string()))?;
        }
    }

    /// Runs a merge this process claimed with `token`, renewing its claim while it runs; a
    /// failure reopens the session (chunks kept) or, when the joined result is unusable,
    /// drops it.
    async fn run_merge(
        &self,
        session: upload_session::Model,
        token: String,
        file_name: String,
        user_id: String,
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
            .complete(&session, &parts, &file_name, &user_id, &token, &identifier)
            .await;
        self.metrics.upload_merge(match &result {
            Ok(_) => crate::metrics::MergeOutcome::Completed,
            Err(_) => crate::metrics::MergeOutcome::Failed,
        });
        if let Err(e) = &result {
            // The chunks were joined: a result that cannot be used consumed them.
            let reopen = !matches!(e, Error::InvalidZip(_) | Error::TooLarge);
            if reopen {
                db::uploads::end_merge(&self.db, &session.id, &token, OPEN, now_secs()).await?;
            } else if db::uploads::delete_merging(&self.db, &session.id, &token).await? {
                self.delete_object(&session.bucket, &session.object_key)
                    .await;
            }
        }
        result
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
            let identifier = s.identifier.clone();
            let Some(file_name) = s.merge_file_name.clone() else {
                db::uploads::end_merge(&self.db, &s.id, &token, OPEN, now_secs()).await?;
                tracing::info!(identifier, "interrupted merge reopened");
                continue;
            };
            let user_id = s.merge_user_id.clone().unwrap_or_default();
            match self
                .run_merge(s, token, file_name, user_id, identifier.clone())
                .await
            {
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
        file_name: &str,
        user_id: &str,
        token: &str,
        identifier: &str,
    ) -> Result<image::Model> {
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
        let (name, size, crc32) = if validate::is_zip(file_name) {
            self.unpack_merged_zip(session, &session_tier, token, identifier)
                .await?
        } else {
            let size = parts.iter().map(|p| p.size_bytes as u64).sum();
            let crc = combine_crc32(parts.iter().map(|p| (p.crc32 as u32, p.size_bytes as u64)));
            (file_name.to_string(), size, crc)
        };
        if size > self.cfg.max_image_bytes {
            self.delete_object(&session.bucket, &session.object_key)
                .await;
            return Err(Error::TooLarge);
        }
        let record = NewImage {
            id: &session.image_id,
            file_name: &name,
            user_id,
            tier: &session_tier,
            key: &session.object_key,
            size,
            crc32,
            source_identifier: Some(identifier),
        };
        let txn = self.db.begin().await?;
        if !db::uploads::end_merge(&txn, &session.id, token, COMPLETED, now_secs()).await? {
            // Taken over (this merger looked dead): the other merger records the image.
            return Err(Error::Conflict(format!(
                "upload {identifier} is being merged by another request"
            )));
        }
        db::images::insert(&txn, record.into_active_model()).await?;
        db::jobs::enqueue(&txn, db::jobs::CHECK, &session.image_id, now_secs()).await?;
        txn.commit().await?;
        self.job_wake.notify_one();
        tracing::info!(image.id = %session.image_id, identifier, size_bytes = size, parts = parts.len(), "chunks merged");
        db::images::find(&self.db, &session.image_id)
            .await?
            .ok_or_else(|| Error::Internal("merged image vanished".into()))
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
            })
            .collect();
        match self
            .store
            .complete_multipart(
                &session.bucket,
                &session.object_key,
                &session.upload_id,
                &completed,
            )
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
    ) -> Result<(String, u64, u32)> {
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
                return Ok((done.file_name, done.size, done.crc32));
            }
        }
        // A store that keeps the archive as a file is read in place (the image replaces it by
        // a rename once extracted, while the archive stays open).
        let (path, _scratch) = match self.store.local_path(&session.bucket, key) {
            Some(path) => (path, None),
            None => {
                let (file, path) = self.scratch_file().await?;
                let body = self.store.get(&session.bucket, key, None).await?;
                spool(file, body, &Meter::default())
                    .await
                    .map_err(|e| match e {
                        Error::BadBody(io) => Error::Storage(StorageError::Io(io)),
                        other => other,
                    })?;
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
        self.extract_zip_image(&path, found, tier, key).await
    }

    /// `DELETE /images/upload`: drops every chunk of an identifier.
    pub async fn cancel_upload(&self, fields: Fields) -> Result<()> {
        let identifier = identifier_of(&fields)?;
        let Some(session) = db::uploads::find(&self.db, &identifier).await? else {
            return Ok(());
        };
        match session.state.as_str() {
            MERGING => Err(Error::Conflict(format!(
                "upload {identifier} is being merged"
            ))),
            COMPLETED => Ok(db::uploads::delete(&self.db, &session.id).await?),
            _ => {
                self.store
                    .abort_multipart(&session.bucket, &session.object_key, &session.upload_id)
                    .await?;
                db::uploads::delete(&self.db, &session.id).await?;
                tracing::info!(identifier, "upload cancelled");
                self.metrics.upload_session_cancelled();
                Ok(())
            }
        }
    }

    /// `GET /images/upload?identifier=`: the chunks already received.
    pub async fn upload_status(&self, identifier: &str) -> Result<UploadStatus> {
        let mut fields = Fields::default();
        fields.set("identifier".into(), identifier.into());
        let identifier = identifier_of(&fields)?;
        let Some(session) = db::uploads::find(&self.db, &identifier).await? else {
            return Ok(UploadStatus {
                identifier,
                state: "none".into(),
                chunks: vec![],
                total_bytes: 0,
                image_id: None,
            });
        };
        let chunks: Vec<ChunkInfo> = db::uploads::parts(&self.db, &session.id)
            .await?
            .into_iter()
            .map(|p| ChunkInfo {
                number: p.part_number as u32,
                size: p.size_bytes as u64,
            })
            .collect();
        Ok(UploadStatus {
            identifier,
            total_bytes: chunks.iter().map(|c| c.size).sum(),
            chunks,
            image_id: (session.state == COMPLETED).then_some(session.image_id),
            state: session.state,
        })
    }

    /// Aborts chunked uploads untouched for longer than the configured TTL (merges are
    /// `recover_merges`' concern).
    pub async fn sweep_abandoned_uploads(&self) -> Result<usize> {
        let before = now_secs() - self.cfg.upload_ttl_secs as i64;
        let mut swept = 0;
        for s in db::uploads::stale_open(&self.db, before).await? {
            // Claimed first, so that a chunk or a merge arriving now is not lost: a merge
            // claims only open sessions, and a chunk for a claimed one gets 409.
            let token = uuid::Uuid::new_v4().simple().to_string();
            if !db::uploads::claim_stale_open(&self.db, &s.id, before, &token, now_secs()).await? {
                continue;
            }
            let aborted = self
                .store
                .abort_multipart(&s.bucket, &s.object_key, &s.upload_id)
                .await;
            if let Err(e) = aborted {
                db::uploads::end_merge(&self.db, &s.id, &token, OPEN, now_secs()).await?;
                return Err(e.into());
            }
            db::uploads::delete_merging(&self.db, &s.id, &token).await?;
            tracing::info!(identifier = %s.identifier, "abandoned upload expired");
            self.metrics.upload_session_expired();
            swept += 1;
        }
        Ok(swept)
    }
}
