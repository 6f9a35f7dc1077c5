//! Chunked uploads: chunks are parts of one multipart upload per identifier; merge completes it.

use super::{
    caller::{self, Caller},
    form::{Fields, FormReader, FormSource},
    images::{object_key, spool, NewImage},
    integrity::{self, Algorithm, Checksum, Digests, Wanted},
    meter::{combine_crc32, Meter},
    now_secs,
    placement::{self, Received},
    texts, validate, Error, Result, Service,
};
use crate::{
    config::Tier,
    db,
    storage::{CompletedPart, PutOptions, SpooledPart, StorageError, UploadedPart},
};
use entity::{
    image,
    status::{
        JobKind,
        SessionState::{Completed, Merging, Open},
    },
    upload_session,
};
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

/// What a chunk request got to, whether it succeeded or not (for the audit trail).
#[derive(Debug, Clone, Default)]
pub struct ChunkTrace {
    /// The client's identifier, once read and valid.
    pub identifier: Option<String>,
    /// Whether this request opened the upload session (also when the chunk was then refused).
    pub session_opened: bool,
    /// The user the session belongs to, if any.
    pub owner: Option<String>,
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

/// The `checksum` field of an upload or a merge: `md5:<hex>` or `sha256:<hex>` of the whole
/// file as sent.
pub(crate) fn image_checksum(fields: &Fields) -> Result<Option<Checksum>> {
    match fields
        .get("checksum")
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        None => Ok(None),
        Some(v) => Checksum::parse_field(v, "checksum", &[Algorithm::Md5, Algorithm::Sha256])
            .map(Some)
            .map_err(Error::InvalidInput),
    }
}

/// The form field that carries a chunk's checksum.
const CHUNK_CHECKSUM: &str = "chunkChecksum";

fn chunk_checksum(value: &str) -> std::result::Result<Checksum, String> {
    Checksum::parse_field(
        value,
        CHUNK_CHECKSUM,
        &[Algorithm::Md5, Algorithm::Sha256, Algorithm::Crc32c],
    )
}

/// A chunk's file part, spooled to scratch, with what was computed while it passed.
struct SpooledChunk {
    body: SpooledPart,
    /// The part's file name, where some clients put the chunk number.
    file_name: Option<String>,
    crc32: u32,
    /// The digests computed on the way.
    computed: Wanted,
    digests: Digests,
}

impl SpooledChunk {
    /// Verifies chunk `number` against every `declared` checksum (one more pass over the
    /// spooled copy for an algorithm not computed on the way, when a checksum field came after
    /// the chunk) and against `currentChunkSize`.
    async fn verify(&mut self, number: u32, declared: &[Checksum], totals: &Totals) -> Result<()> {
        let needed = Wanted::for_checksums(declared);
        if !self.computed.covers(needed) {
            let path = self.body.path();
            self.digests =
                tokio::task::spawn_blocking(move || integrity::digest_file(&path, needed))
                    .await
                    .map_err(|e| Error::Internal(e.to_string()))??;
        }
        self.digests
            .verify(declared, &format!("chunk {number}"))
            .map_err(Error::ChecksumMismatch)?;
        match totals.current_chunk_size {
            Some(expected) if expected != self.body.len => Err(Error::SizeMismatch(format!(
                "chunk {number} has {} bytes; currentChunkSize says {expected}",
                self.body.len
            ))),
            _ => Ok(()),
        }
    }
}

/// The totals resumable-upload clients send with every chunk and the merge, under the names
/// simple-uploader.js and resumable.js use: `totalSize` and `chunkSize` (bytes),
/// `totalChunks`, `currentChunkSize` (bytes of this chunk). All optional.
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    total_size: Option<u64>,
    total_chunks: Option<u32>,
    current_chunk_size: Option<u64>,
}

impl Totals {
    fn of(fields: &Fields) -> Result<Self> {
        let number = |name: &str| -> Result<Option<u64>> {
            match fields.get(name).map(str::trim).filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) if v.bytes().all(|c| c.is_ascii_digit()) => v
                    .parse()
                    .map(Some)
                    .map_err(|_| Error::InvalidInput(format!("{name} {v:?} is too large"))),
                Some(v) => Err(Error::InvalidInput(format!(
                    "{name} {v:?} must be a non-negative integer"
                ))),
            }
        };
        let total_chunks = match number("totalChunks")? {
            None => None,
            Some(n @ 1..=10_000) => Some(n as u32),
            Some(n) => {
                return Err(Error::InvalidInput(format!(
                    "totalChunks {n} must be from 1 to {}",
                    validate::MAX_CHUNK_NUMBER
                )))
            }
        };
        if number("chunkSize")? == Some(0) {
            return Err(Error::InvalidInput("chunkSize must be at least 1".into()));
        }
        Ok(Totals {
            total_size: number("totalSize")?,
            total_chunks,
            current_chunk_size: number("currentChunkSize")?,
        })
    }

    /// Chunk `number` fits the declared totals (and the image size limit).
    fn check_chunk(&self, number: u32, max_image_bytes: u64) -> Result<()> {
        if let Some(total) = self.total_chunks {
            if number > total {
                return Err(Error::InvalidInput(format!(
                    "chunk {number} is beyond totalChunks {total}"
                )));
            }
        }
        if self.total_size.is_some_and(|t| t > max_image_bytes) {
            return Err(Error::TooLarge);
        }
        Ok(())
    }

    /// The chunks held cover the totals exactly: no number missing up to `totalChunks` (or up
    /// to the highest received), none beyond it, and `totalSize` bytes in all.
    fn covered_by(&self, parts: &[entity::upload_part::Model]) -> Result<()> {
        let highest = parts.last().map_or(0, |p| p.part_number as u32);
        let last = self.total_chunks.unwrap_or(highest);
        let beyond: Vec<String> = parts
            .iter()
            .map(|p| p.part_number as u32)
            .filter(|n| *n > last)
            .map(|n| n.to_string())
            .collect();
        if !beyond.is_empty() {
            let what = match beyond.len() {
                1 => "chunk {} is",
                _ => "chunks {} are",
            }
            .replace("{}", &beyond.join(", "));
            return Err(Error::InvalidInput(format!(
                "{what} beyond totalChunks {last}; cancel the upload to start again"
            )));
        }
        let missing: Vec<u32> = (1..=last)
            .filter(|n| {
                parts
                    .binary_search_by_key(&(*n as i32), |p| p.part_number)
                    .is_err()
            })
            .collect();
        if !missing.is_empty() {
            return Err(Error::MissingChunks(missing));
        }
        let held: u64 = parts.iter().map(|p| p.size_bytes as u64).sum();
        if let Some(total) = self.total_size.filter(|t| *t != held) {
            return Err(Error::SizeMismatch(format!(
                "the chunks hold {held} bytes, totalSize is {total}"
            )));
        }
        Ok(())
    }

    /// The totals agree with those recorded from earlier chunks; fills in what this request
    /// did not declare.
    fn agrees_with(mut self, session: &upload_session::Model) -> Result<Self> {
        let recorded_size = session.total_size.map(|t| t as u64);
        let recorded_chunks = session.total_chunks.map(|t| t as u32);
        let conflict = |name: &str, now: u64, before: u64| {
            Error::InvalidInput(format!(
                "{name} {now} differs from {before}, declared earlier for upload {}; cancel it to \
                 start again",
                caller::client_identifier(&session.identifier)
            ))
        };
        match (self.total_size, recorded_size) {
            (Some(now), Some(before)) if now != before => {
                return Err(conflict("totalSize", now, before))
            }
            (None, before) => self.total_size = before,
            _ => {}
        }
        match (self.total_chunks, recorded_chunks) {
            (Some(now), Some(before)) if now != before => {
                return Err(conflict("totalChunks", now as u64, before as u64))
            }
            (None, before) => self.total_chunks = before,
            _ => {}
        }
        Ok(self)
    }
}

/// An upload session as a request names it: the client's `identifier`, the owner the caller
/// addresses it as (see `Caller::session_owner`) and the key it is stored under.
struct SessionRef {
    identifier: String,
    owner: Option<String>,
    key: String,
}

impl SessionRef {
    /// From the request's `identifier` and `userId` fields.
    fn of(caller: &Caller, fields: &Fields) -> Result<Self> {
        let identifier = identifier_of(fields)?;
        let user_field = validate::user_id(fields.get("userId")).map_err(Error::InvalidInput)?;
        let owner = caller.session_owner(&user_field)?;
        Ok(SessionRef {
            key: caller::session_key(owner.as_deref(), &identifier),
            identifier,
            owner,
        })
    }
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
    /// `declared` holds the chunk's checksums from the request headers (`Content-MD5`,
    /// `Repr-Digest`, ...); a `chunkChecksum` field adds one. Every checksum and the declared
    /// `currentChunkSize` are verified before anything is stored.
    pub async fn upload_chunk(
        &self,
        caller: &Caller,
        query: Fields,
        declared: Vec<Checksum>,
        form: &mut dyn FormSource,
        trace: &mut ChunkTrace,
    ) -> Result<()> {
        let _slot = self.upload_slot().await;
        let (mut chunk, fields) = self.spool_chunk(form, query, &declared).await?;
        trace.identifier = identifier_of(&fields).ok();
        let target = SessionRef::of(caller, &fields)?;
        let number = validate::chunk_number(fields.get("chunkNumber"), chunk.file_name.as_deref())
            .map_err(Error::InvalidInput)?;
        let totals = Totals::of(&fields)?;
        let mut declared = declared;
        if let Some(c) = fields.get(CHUNK_CHECKSUM) {
            declared.push(chunk_checksum(c).map_err(Error::InvalidInput)?);
        }
        chunk.verify(number, &declared, &totals).await?;
        totals.check_chunk(number, self.cfg.max_image_bytes)?;
        let tier = self.tier_for(fields.get("priority"))?.clone();
        // With authentication off, the session records the `userId` a client sends with its
        // chunks (the user its chunks count against), as it did not belong to anyone before.
        let owner = target.owner.clone().or_else(|| {
            fields
                .get("userId")
                .filter(|u| !u.is_empty() && !u.contains('\0'))
                .map(str::to_string)
        });
        let (session, opened) = self.open_session(&target, owner, &tier).await?;
        trace.session_opened = opened;
        trace.owner = session.owner.clone();
        let others = self
            .admit_chunk(&session, totals, number, chunk.body.len)
            .await?;
        self.store_chunk(&session, number, chunk, &others).await
    }

    /// Reads a chunk request's form: its fields (over `query`) and its file part (`part` or
    /// `file`), spooled to scratch. Fields may follow the chunk, so it is spooled before
    /// anything is decided; the digests known to be needed now are computed on the way.
    async fn spool_chunk(
        &self,
        form: &mut dyn FormSource,
        query: Fields,
        declared: &[Checksum],
    ) -> Result<(SpooledChunk, Fields)> {
        let mut form = FormReader::new(form, query);
        let (file_name, body) = form.file(&["part", "file"]).await?.ok_or(Error::NoFile)?;
        let mut wanted = Wanted::for_checksums(declared);
        if let Some(Ok(c)) = form.fields().get(CHUNK_CHECKSUM).map(chunk_checksum) {
            wanted.add(c.algorithm);
        }
        let meter = Meter::hashing(wanted);
        let body = meter.wrap(body, self.cfg.max_image_bytes);
        let (file, path) = self.scratch_file().await?;
        let len = spool(file, body, &meter).await?;
        let chunk = SpooledChunk {
            body: SpooledPart { file: path, len },
            file_name,
            crc32: meter.crc32(),
            computed: wanted,
            digests: meter.digests(),
        };
        Ok((chunk, form.finish().await?))
    }

    /// Whether chunk `number` (of `len` bytes) may join the session: it is still open, and the
    /// chunk keeps the upload within the image size limit and its `totalSize`. Records totals
    /// declared for the first time. Returns the other chunks held, ascending.
    async fn admit_chunk(
        &self,
        session: &upload_session::Model,
        totals: Totals,
        number: u32,
        len: u64,
    ) -> Result<Vec<Received>> {
        let totals = totals.agrees_with(session)?;
        totals.check_chunk(number, self.cfg.max_image_bytes)?;
        if session.state != Open {
            return Err(Error::Conflict(format!(
                "upload {} is {}; cancel it to start again",
                caller::client_identifier(&session.identifier),
                if session.state == Merging {
                    "being merged"
                } else {
                    "already merged"
                }
            )));
        }
        let others = self.other_chunks(&session.id, number).await?;
        // The chunk that would take the upload past the image size limit is refused now, not
        // at the merge: what the upload holds stays within the limit.
        let held = others
            .iter()
            .map(|c| c.len)
            .sum::<u64>()
            .saturating_add(len);
        if held > self.cfg.max_image_bytes {
            return Err(Error::TooLarge);
        }
        if let Some(total) = totals.total_size.filter(|t| held > *t) {
            return Err(Error::SizeMismatch(format!(
                "with chunk {number} the upload would hold {held} bytes, more than its totalSize {total}"
            )));
        }
        let new_totals = (totals.total_size.is_some() && session.total_size.is_none())
            || (totals.total_chunks.is_some() && session.total_chunks.is_none());
        if new_totals {
            db::uploads::record_totals(
                &self.db,
                &session.id,
                totals.total_size,
                totals.total_chunks,
            )
            .await?;
        }
        Ok(others)
    }

    /// Stores an admitted chunk as part `number` of the session's multipart upload (directly,
    /// or staged when the store's minimum part size asks for it) and records it.
    async fn store_chunk(
        &self,
        session: &upload_session::Model,
        number: u32,
        chunk: SpooledChunk,
        others: &[Received],
    ) -> Result<()> {
        let len = chunk.body.len;
        let quota = self.reserve_chunk(session, number, len).await?;
        let min = self.store.min_part_size();
        let direct = placement::send_direct(number, len, min, others);
        let uploaded = self
            .store
            .upload_part(
                &session.bucket,
                &session.object_key,
                &session.upload_id,
                number,
                chunk.body,
                direct,
            )
            .await?;
        let staged = uploaded.staged;
        let part = db::uploads::NewPart {
            number,
            size: len,
            etag: &uploaded.etag,
            crc32: chunk.crc32,
            staged,
            checksum: uploaded.checksum.as_deref(),
        };
        db::uploads::upsert_part(&self.db, &session.id, part, now_secs()).await?;
        quota.release().await;
        tracing::debug!(
            identifier = caller::client_identifier(&session.identifier),
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
    async fn open_session(
        &self,
        target: &SessionRef,
        owner: Option<String>,
        tier: &Tier,
    ) -> Result<(upload_session::Model, bool)> {
        let identifier = target.identifier.as_str();
        if let Some(s) = db::uploads::find(&self.db, &target.key).await? {
            if s.priority != tier.priority {
                return Err(Error::InvalidInput(format!(
                    "upload {identifier} was started with priority {}, not {}",
                    s.priority, tier.priority
                )));
            }
            return Ok((s, false));
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
            identifier: Set(target.key.clone()),
            priority: Set(tier.priority),
            bucket: Set(tier.bucket.clone()),
            image_id: Set(image_id),
            object_key: Set(key.clone()),
            upload_id: Set(upload_id.clone()),
            state: Set(Open),
            // Legacy: each part records whether it is staged (see `placement`).
            packed: Set(false),
            merge_token: Set(None),
            merge_file_name: Set(None),
            merge_user_id: Set(None),
            merge_unpacked: Set(None),
            total_size: Set(None),
            total_chunks: Set(None),
            merge_checksum: Set(None),
            owner: Set(owner),
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
        let opened = inserted?;
        if opened {
            self.metrics.upload_session_opened();
        }
        let session = db::uploads::find(&self.db, &target.key)
            .await?
            .ok_or_else(|| Error::Internal("upload session vanished after insert".into()))?;
        Ok((session, opened))
    }

    /// `POST /images/merge`: joins chunks 1..N into the image. Repeating it returns the same image.
    pub async fn merge(&self, caller: &Caller, fields: Fields) -> Result<image::Model> {
        let target = SessionRef::of(caller, &fields)?;
        let identifier = target.identifier.clone();
        let file_name = validate::file_name(fields.get("filename").unwrap_or(""))
            .ok_or(Error::InvalidFileName(texts::BAD_MERGE_NAME))?;
        let user_id = validate::user_id(fields.get("userId")).map_err(Error::InvalidInput)?;
        let user_id = caller.acting_for(&user_id)?;
        let checksum = image_checksum(&fields)?;
        let totals = Totals::of(&fields)?;
        // The session's own tier is used; a priority that names none is still an error.
        self.tier_for(fields.get("priority"))?;
        let deadline = tokio::time::Instant::now() + MERGE_WAIT;
        loop {
            let (session, parts) = match self.merge_target(&target).await? {
                MergeTarget::Merged(img) => {
                    return self
                        .merged_before(*img, checksum.as_ref(), &totals, &file_name)
                        .await
                }
                MergeTarget::Open(session, parts) => (*session, parts),
            };
            let covered = totals
                .agrees_with(&session)
                .and_then(|t| t.covered_by(&parts));
            if let Err(e) = covered {
                if matches!(e, Error::MissingChunks(_)) {
                    self.metrics
                        .upload_merge(crate::metrics::MergeOutcome::MissingChunks);
                }
                return Err(e);
            }
            let token = uuid::Uuid::new_v4().simple().to_string();
            let checksum_text = checksum.as_ref().map(Checksum::to_string);
            let claim = db::uploads::MergeClaim {
                token: &token,
                request: Some(db::uploads::MergeRequest {
                    file_name: &file_name,
                    user_id: &user_id,
                    checksum: checksum_text.as_deref(),
                }),
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
            let request = MergeJob {
                file_name,
                user_id,
                checksum,
            };
            let run =
                tokio::spawn(
                    async move { svc.run_merge(session, token, request, identifier).await },
                );
            return run.await.map_err(|e| Error::Internal(e.to_string()))?;
        }
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
        if let Err(e) = &result {
            // The chunks were joined: a result that cannot be used consumed them.
            let reopen = !matches!(e, Error::InvalidZip(_) | Error::TooLarge);
            if reopen {
                db::uploads::end_merge(&self.db, &session.id, &token, Open, now_secs()).await?;
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
        db::images::insert(&txn, record.into_active_model()).await?;
        db::jobs::enqueue(&txn, JobKind::Check, &session.image_id, now_secs()).await?;
        txn.commit().await?;
        quota.release().await;
        self.job_wake.notify_one();
        tracing::info!(image.id = %session.image_id, identifier, size_bytes = size, parts = parts.len(), "chunks merged");
        db::images::find(&self.db, &session.image_id)
            .await?
            .ok_or_else(|| Error::Internal("merged image vanished".into()))
    }

    /// Verifies the merged object against the checksum the merge was asked to verify, and
    /// returns its MD5 and SHA-256 (one read). On a mismatch its chunks are stored again
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
        let digests = self.object_digests(bucket, key, Wanted::IMAGE).await?;
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
        let image_id = uuid::Uuid::new_v4().to_string();
        let new_key = object_key(&image_id);
        let upload_id = self.store.create_multipart(bucket, &new_key, &opts).await?;
        let abort = {
            let (store, bucket, key, id) = (
                self.store.clone(),
                bucket.clone(),
                new_key.clone(),
                upload_id.clone(),
            );
            crate::cleanup::Cleanup::new(async move {
                let _ = store.abort_multipart(&bucket, &key, &id).await;
            })
        };
        let stored = self
            .copy_chunks(bucket, key, parts, (&new_key, &upload_id))
            .await?;
        let txn = self.db.begin().await?;
        let upload = (upload_id.as_str(), image_id.as_str(), new_key.as_str());
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
            let spooled = SpooledPart { file: path, len };
            let uploaded = self
                .store
                .upload_part(bucket, new_key, upload_id, number, spooled, direct)
                .await?;
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

    /// `DELETE /images/upload`: drops every chunk of an identifier.
    pub async fn cancel_upload(&self, caller: &Caller, fields: Fields) -> Result<()> {
        let target = SessionRef::of(caller, &fields)?;
        let identifier = target.identifier.as_str();
        let Some(session) = db::uploads::find(&self.db, &target.key).await? else {
            return Ok(());
        };
        match session.state {
            Merging => Err(Error::Conflict(format!(
                "upload {identifier} is being merged"
            ))),
            Completed => Ok(db::uploads::delete(&self.db, &session.id).await?),
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
    pub async fn upload_status(&self, caller: &Caller, fields: Fields) -> Result<UploadStatus> {
        let target = SessionRef::of(caller, &fields)?;
        let identifier = target.identifier;
        let Some(session) = db::uploads::find(&self.db, &target.key).await? else {
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
            image_id: (session.state == Completed).then_some(session.image_id),
            state: session.state.as_str().into(),
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
                db::uploads::end_merge(&self.db, &s.id, &token, Open, now_secs()).await?;
                return Err(e.into());
            }
            db::uploads::delete_merging(&self.db, &s.id, &token).await?;
            tracing::info!(
                identifier = caller::client_identifier(&s.identifier),
                "abandoned upload expired"
            );
            self.metrics.upload_session_expired();
            swept += 1;
        }
        Ok(swept)
    }
}
