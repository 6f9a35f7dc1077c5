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

/// A merge that has not finished after this long is considered dead and may be taken over.
const MERGE_LEASE_SECS: i64 = 1800;
const MERGE_POLL: Duration = Duration::from_millis(200);

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
        inserted?;
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
        let tier = self.tier_for(fields.get("priority"))?.clone();
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
                return Err(Error::MissingChunks(missing));
            }
            let now = now_secs();
            if !db::uploads::claim_merge(&self.db, &session.id, now, now - MERGE_LEASE_SECS).await?
            {
                // Someone else merges it: wait for the outcome, then answer from it.
                tokio::time::sleep(MERGE_POLL).await;
                continue;
            }
            let result = self
                .complete(&session, &parts, &file_name, &user_id, &tier, &identifier)
                .await;
            if let Err(e) = &result {
                // The chunks were joined: a result that cannot be used consumed them.
                let reopen = !matches!(e, Error::InvalidZip(_) | Error::TooLarge);
                if reopen {
                    db::uploads::set_state(&self.db, &session.id, OPEN, now_secs()).await?;
                } else {
                    self.delete_object(&session.bucket, &session.object_key)
                        .await;
                    db::uploads::delete(&self.db, &session.id).await?;
                }
            }
            return result;
        }
    }

    async fn complete(
        &self,
        session: &upload_session::Model,
        parts: &[entity::upload_part::Model],
        file_name: &str,
        user_id: &str,
        tier: &Tier,
        identifier: &str,
    ) -> Result<image::Model> {
        let session_tier = Tier {
            priority: session.priority,
            bucket: session.bucket.clone(),
            storage_class: tier.storage_class.clone(),
        };
        self.complete_upload(session, parts, identifier).await?;
        let (name, size, crc32) = if validate::is_zip(file_name) {
            self.unpack_merged_zip(session, &session_tier).await?
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
        db::images::insert(&txn, record.into_active_model()).await?;
        db::uploads::set_state(&txn, &session.id, COMPLETED, now_secs()).await?;
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
    /// copy where the store has no local file).
    async fn unpack_merged_zip(
        &self,
        session: &upload_session::Model,
        tier: &Tier,
    ) -> Result<(String, u64, u32)> {
        // A store that keeps the archive as a file is read in place (the image replaces it by
        // a rename once extracted, while the archive stays open).
        if let Some(path) = self.store.local_path(&session.bucket, &session.object_key) {
            return self.unpack_zip(&path, tier, &session.object_key).await;
        }
        let (file, path) = self.scratch_file().await?;
        let body = self
            .store
            .get(&session.bucket, &session.object_key, None)
            .await?;
        spool(file, body, &Meter::default())
            .await
            .map_err(|e| match e {
                Error::BadBody(io) => Error::Storage(StorageError::Io(io)),
                other => other,
            })?;
        self.unpack_zip(&path, tier, &session.object_key).await
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

    /// Aborts chunked uploads untouched for longer than the configured TTL, and merges whose
    /// merger went silent for longer than that and the merge lease.
    pub async fn sweep_abandoned_uploads(&self) -> Result<usize> {
        let before = now_secs() - self.cfg.upload_ttl_secs as i64;
        // A merge is given up only when both the TTL and the merge lease have passed.
        let merging_before = before.min(now_secs() - MERGE_LEASE_SECS);
        let stale = db::uploads::stale(&self.db, before, merging_before).await?;
        let mut swept = 0;
        for s in stale {
            // Re-check under the claim so a chunk or merge arriving now is not lost.
            if !db::uploads::claim_merge(&self.db, &s.id, now_secs(), merging_before).await? {
                continue;
            }
            self.store
                .abort_multipart(&s.bucket, &s.object_key, &s.upload_id)
                .await?;
            db::uploads::delete(&self.db, &s.id).await?;
            tracing::info!(identifier = %s.identifier, "abandoned upload expired");
            swept += 1;
        }
        Ok(swept)
    }
}
