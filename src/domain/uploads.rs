//! Chunked uploads: chunks are parts of one multipart upload per identifier (`merge.rs`
//! joins them); resume status, cancel and expiry.

use super::{
    caller::{self, Caller},
    error::echoed,
    form::{Field, Fields, FilePart, FormReader, FormSource},
    ids::{ChunkNumber, Identifier, ImageId, ObjectKey},
    integrity::{self, Algorithm, Checksum, Digests, Wanted},
    meter::Meter,
    now_secs,
    objects::{body_error, multipart_of, spool},
    placement::{self, Received},
    quota::Reservation,
    validate, Error, Result, Service,
};
use crate::{
    config::Tier,
    db,
    storage::{
        fileio::BodyOrFile, InPlacePart, MultipartUpload, Part, PutOptions, SpooledPart,
        StorageError, UploadedPart,
    },
};
use entity::{
    status::SessionState::{Completed, Merging, Open},
    upload_session,
};
use sea_orm::{ActiveValue::Set, TransactionTrait};

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

/// The `checksum` field of an upload or a merge: `md5:<hex>` or `sha256:<hex>` of the whole
/// file as sent.
pub(crate) fn image_checksum(fields: &Fields) -> Result<Option<Checksum>> {
    let field = Field::Checksum;
    match fields.get(field).map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => Checksum::parse_field(v, field.name(), &[Algorithm::Md5, Algorithm::Sha256])
            .map(Some)
            .map_err(Error::InvalidInput),
    }
}

fn chunk_checksum(value: &str) -> std::result::Result<Checksum, String> {
    Checksum::parse_field(
        value,
        Field::ChunkChecksum.name(),
        &[Algorithm::Md5, Algorithm::Sha256, Algorithm::Crc32c],
    )
}

/// Where a chunk's bytes were received.
enum ChunkBody {
    /// In a scratch file, to be handed to the store.
    Spooled(SpooledPart),
    /// Straight into its place in the store's upload, to be committed there.
    InPlace {
        part: Box<dyn InPlacePart>,
        len: u64,
    },
}

impl ChunkBody {
    /// Bytes received.
    fn len(&self) -> u64 {
        match self {
            ChunkBody::Spooled(p) => p.len,
            ChunkBody::InPlace { len, .. } => *len,
        }
    }
}

/// A chunk's file part, received, with what was computed while it passed.
struct SpooledChunk {
    body: ChunkBody,
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
    async fn verify(
        &mut self,
        number: ChunkNumber,
        declared: &[Checksum],
        totals: &Totals,
    ) -> Result<()> {
        let needed = Wanted::for_checksums(declared);
        if !self.computed.covers(needed) {
            self.digests = match &self.body {
                ChunkBody::Spooled(spooled) => {
                    let path = spooled.path();
                    tokio::task::spawn_blocking(move || integrity::digest_file(&path, needed))
                        .await
                        .map_err(|e| Error::Internal(e.to_string()))??
                }
                ChunkBody::InPlace { part, .. } => {
                    integrity::digest_stream(part.read_back()?, needed).await?
                }
            };
        }
        self.digests
            .verify(declared, &format!("chunk {number}"))
            .map_err(Error::ChecksumMismatch)?;
        match totals.current_chunk_size {
            Some(expected) if expected != self.body.len() => Err(Error::SizeMismatch(format!(
                "chunk {number} has {} bytes; currentChunkSize says {expected}",
                self.body.len()
            ))),
            _ => Ok(()),
        }
    }
}

/// The most chunks an upload may declare (`totalChunks`): one per chunk number.
const MAX_CHUNKS: u64 = ChunkNumber::MAX as u64;

/// The totals resumable-upload clients send with every chunk and the merge, under the names
/// simple-uploader.js and resumable.js use: `totalSize` and `chunkSize` (bytes),
/// `totalChunks`, `currentChunkSize` (bytes of this chunk). All optional.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Totals {
    pub(super) total_size: Option<u64>,
    pub(super) total_chunks: Option<u32>,
    pub(super) current_chunk_size: Option<u64>,
}

impl Totals {
    pub(super) fn of(fields: &Fields) -> Result<Self> {
        let number = |name: Field| -> Result<Option<u64>> {
            match fields.get(name).map(str::trim).filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) if v.bytes().all(|c| c.is_ascii_digit()) => {
                    v.parse().map(Some).map_err(|_| {
                        Error::InvalidInput(format!("{name} {:?} is too large", echoed(v)))
                    })
                }
                Some(v) => Err(Error::InvalidInput(format!(
                    "{name} {:?} must be a non-negative integer",
                    echoed(v)
                ))),
            }
        };
        let total_chunks = match number(Field::TotalChunks)? {
            None => None,
            Some(n @ 1..=MAX_CHUNKS) => Some(n as u32),
            Some(n) => {
                return Err(Error::InvalidInput(format!(
                    "{} {n} must be from 1 to {MAX_CHUNKS}",
                    Field::TotalChunks
                )))
            }
        };
        if number(Field::ChunkSize)? == Some(0) {
            let field = Field::ChunkSize;
            return Err(Error::InvalidInput(format!("{field} must be at least 1")));
        }
        Ok(Totals {
            total_size: number(Field::TotalSize)?,
            total_chunks,
            current_chunk_size: number(Field::CurrentChunkSize)?,
        })
    }

    /// Chunk `number` of `len` bytes fits the declared totals (and the image size limit).
    fn check_chunk(&self, number: ChunkNumber, len: u64, max_image_bytes: u64) -> Result<()> {
        if let Some(total) = self.total_chunks {
            if number.get() > total {
                return Err(Error::InvalidInput(format!(
                    "chunk {number} is beyond totalChunks {total}"
                )));
            }
        }
        if self.total_size.is_some_and(|t| t > max_image_bytes) {
            return Err(Error::TooLarge);
        }
        if let Some(total) = self.total_size.filter(|t| len > *t) {
            return Err(Error::SizeMismatch(format!(
                "chunk {number} has {len} bytes, more than the upload's totalSize {total}"
            )));
        }
        Ok(())
    }

    /// The chunks held cover the totals exactly: no number missing up to `totalChunks` (or up
    /// to the highest received), none beyond it, and `totalSize` bytes in all.
    pub(super) fn covered_by(&self, parts: &[entity::upload_part::Model]) -> Result<()> {
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
    pub(super) fn agrees_with(mut self, session: &upload_session::Model) -> Result<Self> {
        let recorded_size = session.total_size.map(|t| t as u64);
        let recorded_chunks = session.total_chunks.map(|t| t as u32);
        let conflict = |name: Field, now: u64, before: u64| {
            Error::InvalidInput(format!(
                "{name} {now} differs from {before}, declared earlier for upload {}; cancel it to \
                 start again",
                caller::client_identifier(&session.identifier)
            ))
        };
        match (self.total_size, recorded_size) {
            (Some(now), Some(before)) if now != before => {
                return Err(conflict(Field::TotalSize, now, before))
            }
            (None, before) => self.total_size = before,
            _ => {}
        }
        match (self.total_chunks, recorded_chunks) {
            (Some(now), Some(before)) if now != before => {
                return Err(conflict(Field::TotalChunks, now as u64, before as u64))
            }
            (None, before) => self.total_chunks = before,
            _ => {}
        }
        Ok(self)
    }
}

/// An upload session as a request names it: the client's `identifier`, the owner the caller
/// addresses it as (see `Caller::session_owner`) and the key it is stored under.
pub(super) struct SessionRef {
    pub(super) identifier: Identifier,
    pub(super) owner: Option<String>,
    pub(super) key: String,
}

/// The error of a request whose priority is not the one its upload was started with: the
/// chunks of an upload all go to one tier (SPEC section 5).
pub(super) fn other_priority(identifier: &Identifier, started: i32, asked: i32) -> Error {
    Error::InvalidInput(format!(
        "upload {identifier} was started with priority {started}, not {asked}"
    ))
}

impl SessionRef {
    /// From the request's `identifier` and `userId` fields.
    pub(super) fn of(caller: &Caller, fields: &Fields) -> Result<Self> {
        let identifier = identifier_of(fields)?;
        let user_field =
            validate::user_id(fields.get(Field::UserId)).map_err(Error::InvalidInput)?;
        let owner = caller.session_owner(&user_field)?;
        Ok(SessionRef {
            key: caller::session_key(owner.as_deref(), &identifier),
            identifier,
            owner,
        })
    }
}

fn identifier_of(fields: &Fields) -> Result<Identifier> {
    Identifier::parse(fields.get(Field::Identifier).unwrap_or("")).map_err(Error::InvalidInput)
}

impl Service {
    /// `POST /images/upload`: stores one chunk as part n of the identifier's upload.
    /// `declared` holds the chunk's checksums from the request headers (`Content-MD5`,
    /// `Repr-Digest`, ...); a `chunkChecksum` field adds one. Every checksum and the declared
    /// `currentChunkSize` are verified before anything is stored. `least_bytes`, the least
    /// the chunk can be (from a declared `Content-Length`), is checked against the quota of
    /// a user known before the body before anything is read (see `chunk_room_for`).
    pub async fn upload_chunk(
        &self,
        caller: &Caller,
        query: Fields,
        declared: Vec<Checksum>,
        form: &mut dyn FormSource,
        least_bytes: Option<u64>,
        trace: &mut ChunkTrace,
    ) -> Result<()> {
        if let Some(least) = least_bytes {
            self.chunk_room_for(caller, &query, least).await?;
        }
        // Noted before anything is received: a cancel after this point is one the chunk,
        // sent before it, must yield to.
        let mark = db::uploads::cancel_mark(&self.db).await?;
        let _slot = self.upload_slot().await?;
        let (mut chunk, fields) = self.receive_chunk(caller, form, query, &declared).await?;
        trace.identifier = identifier_of(&fields).ok().map(|i| i.to_string());
        let target = SessionRef::of(caller, &fields)?;
        let number = ChunkNumber::parse(fields.get(Field::ChunkNumber), chunk.file_name.as_deref())
            .map_err(Error::InvalidInput)?;
        let totals = Totals::of(&fields)?;
        let mut declared = declared;
        if let Some(c) = fields.get(Field::ChunkChecksum) {
            declared.push(chunk_checksum(c).map_err(Error::InvalidInput)?);
        }
        chunk.verify(number, &declared, &totals).await?;
        let len = chunk.body.len();
        totals.check_chunk(number, len, self.cfg.max_image_bytes)?;
        // A chunk without a priority goes where its upload is; the first opens it in the
        // default tier.
        let asked = self.asked_priority(&fields)?;
        let tier = self.tier_for(fields.get(Field::Priority))?.clone();
        // With authentication off, the session records the `userId` a client sends with its
        // chunks (the user its chunks count against), as it did not belong to anyone before.
        let owner = target.owner.clone().or_else(|| {
            fields
                .get(Field::UserId)
                .filter(|u| !u.is_empty() && !u.contains('\0'))
                .map(str::to_string)
        });
        // The quota is reserved before a session is opened: a first chunk refused for it
        // leaves no session behind (nor does one refused for the request's own totals, above).
        let quota = self
            .reserve_chunk(&target, owner.as_deref(), number, len)
            .await?;
        self.yield_to_cancel(&target, mark, None).await?;
        let (session, opened) = self.open_session(&target, owner, &tier, asked).await?;
        if opened {
            // A cancel that came while the session was being opened.
            self.yield_to_cancel(&target, mark, Some(&session)).await?;
        }
        trace.session_opened = opened;
        trace.owner = session.owner.clone();
        // The same chunk sent twice at once (a retry while the first try still arrives):
        // each is stored and recorded in turn, so the row describes the bytes stored.
        let writer = self
            .part_writers(&session, &[number.get()], YieldTo::Merge)
            .await?;
        let others = self.admit_chunk(&session, totals, number, len).await?;
        let stored = self
            .store_chunk(&session, number, chunk, &others, quota)
            .await;
        writer.end().await;
        stored
    }

    /// Waits until this request may store chunks `numbers` (ascending) of `session`: no other
    /// request stores one of them now (see the `part_writers` migration). A chunk takes its
    /// own; a merge takes those it joins, so that none is stored again under it. The right is
    /// held, and renewed, until [`PartWriters::end`] or the value is dropped.
    ///
    /// With `YieldTo::Merge` (a chunk), an upload found merging (or cancelling) while it waits
    /// is its answer at once (409), as when the chunk came after the claim: a merge may take
    /// minutes, and the chunk would be refused at its end anyway.
    pub(super) async fn part_writers(
        &self,
        session: &upload_session::Model,
        numbers: &[u32],
        yield_to: YieldTo,
    ) -> Result<PartWriters> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        // Held from the first: a wait for a later chunk cannot let earlier ones lapse.
        let mut held = PartWriters {
            db: self.db.clone(),
            session_id: session.id.clone(),
            token: token.clone(),
            _renewal: None,
            ended: false,
        };
        for &number in numbers {
            let mut pause = std::time::Duration::from_millis(20);
            loop {
                let now = now_secs();
                let expires = now + PART_WRITER_LEASE_SECS;
                let db = &self.db;
                if db::uploads::take_part_writer(db, &session.id, number, &token, now, expires)
                    .await?
                {
                    break;
                }
                if yield_to == YieldTo::Merge {
                    let now = db::uploads::find(&self.db, &session.identifier).await?;
                    match now {
                        Some(s) if s.id == session.id && s.state == Open => {}
                        Some(s) if s.id == session.id => return Err(not_open(&s)),
                        _ => return Err(gone(session)),
                    }
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_millis(500));
            }
            if held._renewal.is_none() {
                let (db, session_id, token) = (self.db.clone(), session.id.clone(), token.clone());
                held._renewal = Some(super::keep_renewed(
                    PART_WRITER_LEASE_SECS,
                    "a chunk's writer",
                    move |now, expires_at| {
                        let (db, session_id, token) =
                            (db.clone(), session_id.clone(), token.clone());
                        async move {
                            db::uploads::renew_part_writers(
                                &db,
                                &session_id,
                                &token,
                                now,
                                expires_at,
                            )
                            .await
                        }
                    },
                ));
            }
        }
        Ok(held)
    }

    /// Reads a chunk request's form: its fields (over `query`) and its file part (`part` or
    /// `file`). Fields may follow the chunk, so it is received before anything is decided:
    /// straight into its place in the upload when the fields before it name an open upload
    /// and the store can take the chunk there now (see `ObjectStore::part_in_place`), spooled
    /// to scratch otherwise. The digests known to be needed now are computed on the way.
    async fn receive_chunk(
        &self,
        caller: &Caller,
        form: &mut dyn FormSource,
        query: Fields,
        declared: &[Checksum],
    ) -> Result<(SpooledChunk, Fields)> {
        let mut form = FormReader::new(form, query);
        let (file_name, body) = form
            .file(&[FilePart::Part, FilePart::File])
            .await?
            .ok_or(Error::NoFile)?;
        let mut wanted = Wanted::for_checksums(declared);
        if let Some(Ok(c)) = form.fields().get(Field::ChunkChecksum).map(chunk_checksum) {
            wanted.add(c.algorithm);
        }
        let meter = Meter::hashing(wanted);
        let body = meter.wrap(body, self.cfg.max_image_bytes);
        // The open upload the fields before the chunk name is being sent to: it does not
        // expire as abandoned while the chunk arrives, however long that takes.
        let named = self
            .open_upload_named(caller, form.fields(), file_name.as_deref())
            .await;
        let _alive = match &named {
            Some((session, _)) => Some(self.kept_alive(session).await),
            None => None,
        };
        let in_place = match &named {
            Some((session, number)) => self.part_in_place(session, *number).await,
            None => None,
        };
        let body = match in_place {
            Some(mut part) => {
                let len = part.receive(body).await.map_err(|e| match e {
                    BodyOrFile::Body(e) => body_error(e, &meter),
                    BodyOrFile::File(e) => e.into(),
                })?;
                ChunkBody::InPlace { part, len }
            }
            None => {
                let (file, path) = self.scratch_file().await?;
                let len = spool(file, body, &meter).await?;
                ChunkBody::Spooled(SpooledPart { file: path, len })
            }
        };
        let chunk = SpooledChunk {
            body,
            file_name,
            crc32: meter.crc32(),
            computed: wanted,
            digests: meter.digests(),
        };
        Ok((chunk, form.finish().await?))
    }

    /// The upload that `fields` (those read before the chunk) and the part's file name name,
    /// with the chunk's number, when that upload is open; `None` otherwise (anything wrong
    /// with the request is reported once the whole form is read).
    async fn open_upload_named(
        &self,
        caller: &Caller,
        fields: &Fields,
        file_name: Option<&str>,
    ) -> Option<(upload_session::Model, ChunkNumber)> {
        let target = SessionRef::of(caller, fields).ok()?;
        let number = ChunkNumber::parse(fields.get(Field::ChunkNumber), file_name).ok()?;
        let session = db::uploads::find(&self.db, &target.key).await.ok()??;
        (session.state == Open).then_some((session, number))
    }

    /// Keeps the open `session` from reading as abandoned (`FS_UPLOAD_TTL_SECS` without a part
    /// written) while a chunk for it arrives: marked sent to now when a third of the TTL has
    /// passed since, then every third of the TTL, until the value is dropped or the session is
    /// no longer open.
    async fn kept_alive(
        &self,
        session: &upload_session::Model,
    ) -> tokio_util::task::AbortOnDropHandle<()> {
        let ttl = self.cfg.upload_ttl_secs.min(i64::MAX as u64) as i64;
        let now = now_secs();
        if now - session.updated_at >= ttl / 3 {
            if let Err(e) = db::uploads::touch_open(&self.db, &session.id, now).await {
                tracing::warn!(error = %e, "could not mark an upload as sent to");
            }
        }
        let (db, id) = (self.db.clone(), session.id.clone());
        super::keep_renewed(ttl, "an upload a chunk is sent to", move |now, _| {
            let (db, id) = (db.clone(), id.clone());
            async move { db::uploads::touch_open(&db, &id, now).await }
        })
    }

    /// A writer for the chunk `number` in its place in the open `session`, when the store can
    /// take it there now; `None` otherwise (the chunk is spooled).
    async fn part_in_place(
        &self,
        session: &upload_session::Model,
        number: ChunkNumber,
    ) -> Option<Box<dyn InPlacePart>> {
        self.store
            .part_in_place(multipart_of(session), number.get())
            .await
            .ok()?
    }

    /// Whether chunk `number` (of `len` bytes) may join the session: it is still open, and the
    /// chunk keeps the upload within the image size limit and its `totalSize`. Records totals
    /// declared for the first time. Returns the other chunks held, ascending.
    async fn admit_chunk(
        &self,
        session: &upload_session::Model,
        totals: Totals,
        number: ChunkNumber,
        len: u64,
    ) -> Result<Vec<Received>> {
        let totals = totals.agrees_with(session)?;
        totals.check_chunk(number, len, self.cfg.max_image_bytes)?;
        if session.state != Open {
            return Err(not_open(session));
        }
        let others = self.other_chunks(&session.id, number).await?;
        // Totals declared now hold for the chunks already held too.
        let beyond = totals.total_chunks.and_then(|total| {
            others
                .iter()
                .rev()
                .find(|c| c.number > total)
                .zip(Some(total))
        });
        if let Some((held, total)) = beyond {
            return Err(Error::InvalidInput(format!(
                "chunk {} is held, beyond totalChunks {total}; cancel the upload to start again",
                held.number
            )));
        }
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
    /// or staged when the store's minimum part size asks for it) and records it; `quota`, the
    /// reservation of its bytes, is released once the part row counts them.
    async fn store_chunk(
        &self,
        session: &upload_session::Model,
        number: ChunkNumber,
        chunk: SpooledChunk,
        others: &[Received],
        quota: Reservation,
    ) -> Result<()> {
        let (len, number) = (chunk.body.len(), number.get());
        let min = self.store.min_part_size();
        let direct = placement::send_direct(number, len, min, others);
        let body = match chunk.body {
            ChunkBody::InPlace { part, .. }
                if part.target() == (session.upload_id.as_str(), number) =>
            {
                return self
                    .record_chunk(
                        session,
                        number,
                        len,
                        chunk.crc32,
                        quota,
                        part.commit().await.map_err(|e| stored_error(e, session))?,
                    )
                    .await;
            }
            // Received in place for another upload or number than the whole form names (a
            // field after the chunk changed it): copied to scratch, then stored as any chunk.
            ChunkBody::InPlace { part, .. } => {
                let (file, path) = self.scratch_file().await?;
                spool(file, part.read_back()?, &Meter::default()).await?;
                SpooledPart { file: path, len }
            }
            ChunkBody::Spooled(spooled) => spooled,
        };
        let uploaded = self
            .store
            .upload_part(
                multipart_of(session),
                Part {
                    number,
                    body,
                    direct,
                },
            )
            .await
            .map_err(|e| stored_error(e, session))?;
        self.record_chunk(session, number, len, chunk.crc32, quota, uploaded)
            .await
    }

    /// Records chunk `number` (`len` bytes, CRC-32 `crc32`) of the session as the store took
    /// it, and releases `quota`, the reservation of its bytes, now that the part row counts
    /// them.
    async fn record_chunk(
        &self,
        session: &upload_session::Model,
        number: u32,
        len: u64,
        crc32: u32,
        quota: Reservation,
        uploaded: UploadedPart,
    ) -> Result<()> {
        let staged = uploaded.staged;
        let part = db::uploads::NewPart {
            number,
            size: len,
            etag: &uploaded.etag,
            crc32,
            staged,
            checksum: uploaded.checksum.as_deref(),
        };
        // The reservation's row goes with the part's recording: usage counts the chunk once.
        let reservation = quota.row_id().await;
        let (id, now) = (&session.id, now_secs());
        if !db::uploads::upsert_part_if_open(&self.db, id, part, reservation.as_deref(), now)
            .await?
        {
            // Merged or cancelled while the chunk was stored: it is not part of the upload.
            quota.release().await;
            self.drop_late_chunk(session);
            return Err(gone(session));
        }
        quota.released().await;
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

    /// Removes what a chunk stored after its upload was cancelled, expired or merged: that
    /// cleanup (aborting the upload, deleting its staging objects) may have run before the
    /// chunk's staging object landed, which nothing would remove then. A cancel or a merge
    /// holds the session (`merging`) while it works, so this waits on a task of its own (the
    /// chunk's 409 does not) until the session settles, for at most [`LATE_CHUNK_WAIT`]: gone
    /// or completed, the upload is aborted again (safe then); open again (a merge that
    /// failed), it is left to that upload's merge, cancel or expiry.
    fn drop_late_chunk(&self, session: &upload_session::Model) {
        let (svc, session) = (self.clone(), session.clone());
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + LATE_CHUNK_WAIT;
            loop {
                match db::uploads::find(&svc.db, &session.identifier).await {
                    Ok(Some(s)) if s.id == session.id && s.state == Merging => {
                        if tokio::time::Instant::now() > deadline {
                            return;
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    }
                    Ok(Some(s)) if s.id == session.id && s.state == Open => return,
                    Err(_) => return,
                    _ => break,
                }
            }
            if let Err(e) = svc.store.abort_multipart(multipart_of(&session)).await {
                tracing::warn!(error = %e, "could not remove a chunk stored after its upload ended");
            }
        });
    }

    /// The chunks an upload holds besides (an earlier copy of) chunk `number`, ascending.
    async fn other_chunks(&self, session_id: &str, number: ChunkNumber) -> Result<Vec<Received>> {
        Ok(db::uploads::parts(&self.db, session_id)
            .await?
            .iter()
            .filter(|p| p.part_number as u32 != number.get())
            .map(|p| Received {
                number: p.part_number as u32,
                len: p.size_bytes as u64,
                staged: p.staged,
            })
            .collect())
    }

    /// Refuses at once a chunk of at least `least` bytes (its declared length less the form's
    /// bounded fields) that its user has no room for, so that a client waiting for `100
    /// Continue` does not send it: when the user is known before the body (the upload's
    /// owner when the query names it, else the caller or `userId` in the query). It may
    /// replace an earlier copy of its number: the largest chunk the upload holds (or, when
    /// the query names no upload, the largest the user holds) is counted as freed. A read,
    /// no reservation: `reserve_chunk` still decides.
    async fn chunk_room_for(&self, caller: &Caller, query: &Fields, least: u64) -> Result<()> {
        let session = match SessionRef::of(caller, query) {
            Ok(target) if query.get(Field::Identifier).is_some() => {
                db::uploads::find(&self.db, &target.key).await?
            }
            _ => None,
        };
        let field = query.get(Field::UserId);
        let field = field
            .map(|f| validate::user_id(Some(f)).map_err(Error::InvalidInput))
            .transpose()?;
        let user = match session.as_ref().map(|s| s.owner.clone()) {
            Some(owner) => owner,
            None => match caller.role() {
                Some(_) => Some(caller.acting_for(field.as_deref().unwrap_or(""))?),
                None => field.map(|u| caller.acting_for(&u)).transpose()?,
            },
        };
        let Some(user) = user else {
            return Ok(());
        };
        // Without a byte limit (the default) nothing more is read.
        if self.quota_limits(&user).await?.max_bytes == 0 {
            return Ok(());
        }
        let replaced = match &session {
            Some(s) => db::uploads::parts(&self.db, &s.id)
                .await?
                .iter()
                .map(|p| p.size_bytes as u64)
                .max()
                .unwrap_or(0),
            None => db::uploads::largest_part_of(&self.db, &user).await?,
        };
        self.quota_room_for(&user, least.saturating_sub(replaced), false)
            .await
    }

    /// Refuses a chunk whose upload was cancelled after the chunk's request began (`mark`, from
    /// `db::uploads::cancel_mark`): the chunk was in transfer when the cancel came and must
    /// neither open the upload again nor join one the client started anew under the same
    /// identifier. `opened`, the session this chunk's request has just opened, is discarded.
    async fn yield_to_cancel(
        &self,
        target: &SessionRef,
        mark: i64,
        opened: Option<&upload_session::Model>,
    ) -> Result<()> {
        if !db::uploads::cancelled_since(&self.db, &target.key, mark).await? {
            return Ok(());
        }
        if let Some(session) = opened {
            // The cancel may be discarding it as well: both may find it gone.
            let discarded = self.discard_upload(session).await;
            db::uploads::delete(&self.db, &session.id).await?;
            discarded?;
        }
        Err(Error::Conflict(format!(
            "upload {} was cancelled or expired while this chunk was in transfer",
            target.identifier
        )))
    }

    /// Finds the identifier's session or opens one (with its multipart upload). Safe when
    /// several first chunks race: one insert wins, the others drop their multipart uploads.
    /// The session that won may be gone by the time a loser reads it (a cancel, or the winner
    /// yielding to one): the loser then tries again, and opens one itself.
    async fn open_session(
        &self,
        target: &SessionRef,
        owner: Option<String>,
        tier: &Tier,
        asked: Option<i32>,
    ) -> Result<(upload_session::Model, bool)> {
        const TRIES: usize = 3;
        for _ in 1..TRIES {
            if let Some(found) = self
                .try_open_session(target, owner.clone(), tier, asked)
                .await?
            {
                return Ok(found);
            }
        }
        self.try_open_session(target, owner, tier, asked)
            .await?
            .ok_or_else(|| {
                Error::Conflict(format!(
                    "upload {} was opened and cancelled again while this chunk was stored; \
                     send it again",
                    target.identifier
                ))
            })
    }

    /// One try of `open_session`: `None` when another request's session won the insert and
    /// was removed before it could be read.
    async fn try_open_session(
        &self,
        target: &SessionRef,
        owner: Option<String>,
        tier: &Tier,
        asked: Option<i32>,
    ) -> Result<Option<(upload_session::Model, bool)>> {
        let identifier = &target.identifier;
        // Joined as it is, in the tier this chunk asked for.
        let join = |s: upload_session::Model| match asked.filter(|p| *p != s.priority) {
            Some(asked) => Err(other_priority(identifier, s.priority, asked)),
            None => Ok(Some((s, false))),
        };
        if let Some(s) = db::uploads::find(&self.db, &target.key).await? {
            return join(s);
        }
        if let Err(full) = self.room_for_an_upload(owner.as_deref()).await {
            // The upload the user filled the limit with may be this one, opened since by a
            // first chunk racing this one: this chunk joins it.
            return match db::uploads::find(&self.db, &target.key).await? {
                Some(s) => join(s),
                None => Err(full),
            };
        }
        let image_id = ImageId::new();
        let key = ObjectKey::image(&image_id);
        let opts = PutOptions {
            storage_class: tier.storage_class.clone(),
        };
        let upload_id = self
            .store
            .create_multipart(&tier.bucket, &key, &opts)
            .await?;
        // Aborted unless the session row takes it: another request's row won, the insert
        // failed, or this request was dropped while inserting.
        let abort = self.unfinished_upload(&tier.bucket, &key, &upload_id);
        let now = now_secs();
        let row = upload_session::ActiveModel {
            id: Set(uuid::Uuid::new_v4().to_string()),
            identifier: Set(target.key.clone()),
            priority: Set(tier.priority),
            bucket: Set(tier.bucket.clone()),
            image_id: Set(image_id.to_string()),
            object_key: Set(key.to_string()),
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
            owner: Set(owner.clone()),
            created_at: Set(now),
            updated_at: Set(now),
        };
        let inserted = self
            .insert_session(row, &target.key, owner.as_deref())
            .await;
        match inserted {
            Ok(true) => abort.disarm(),
            _ => abort.run().await,
        }
        let opened = inserted?;
        if opened {
            self.metrics.upload_session_opened();
        }
        let Some(session) = db::uploads::find(&self.db, &target.key).await? else {
            // Removed before it could be read: by a cancel (or expiry), or by the request
            // whose row won, yielding to one. Whether this chunk must yield too is decided
            // once it has a session (see `yield_to_cancel`).
            return Ok(None);
        };
        // Another first chunk's session won the race: it must be in the tier this one asked.
        if let Some(asked) = asked.filter(|p| !opened && *p != session.priority) {
            return Err(other_priority(identifier, session.priority, asked));
        }
        Ok(Some((session, opened)))
    }

    /// Whether `owner` may open one more chunked upload (`FS_MAX_OPEN_UPLOADS`), as far as can
    /// be seen now (a read before the multipart upload is created; `insert_session` decides).
    /// Uploads without a user (authentication off, no `userId` with the chunk) are not one
    /// user's and are not limited. Errors: `QuotaExceeded` when the user has as many open (or
    /// merging) as it may.
    async fn room_for_an_upload(&self, owner: Option<&str>) -> Result<()> {
        let Some(owner) = owner.filter(|_| self.cfg.max_open_uploads > 0) else {
            return Ok(());
        };
        let open = db::uploads::count_open_of(&self.db, owner).await?;
        self.open_uploads_within(owner, open)
    }

    /// `Ok` when `owner`, holding `open` chunked uploads, may open one more.
    fn open_uploads_within(&self, owner: &str, open: u64) -> Result<()> {
        let most = self.cfg.max_open_uploads;
        if open < most {
            return Ok(());
        }
        Err(Error::QuotaExceeded(format!(
            "quota exceeded: user {owner:?} may have {most} chunked uploads open at once and has \
             {open}; merge or cancel one (DELETE /images/upload?identifier=...) first"
        )))
    }

    /// Inserts the session `row` (session key `key`) unless one is there for its key: `false`
    /// then. For a limited `owner` (`FS_MAX_OPEN_UPLOADS`) the count and the insert are one
    /// transaction under the user's quota lock (`db::quotas::lock`), so that first chunks of
    /// several uploads racing, on one replica or several, never open more than the limit; a
    /// first chunk racing the one that opened its own upload joins it, whatever the count.
    /// Errors: `QuotaExceeded` past the limit.
    async fn insert_session(
        &self,
        row: upload_session::ActiveModel,
        key: &str,
        owner: Option<&str>,
    ) -> Result<bool> {
        let Some(owner) = owner.filter(|_| self.cfg.max_open_uploads > 0) else {
            return Ok(db::uploads::insert_if_absent(&self.db, row).await?);
        };
        let txn = self.db.begin().await?;
        db::quotas::lock(&txn, owner, now_secs()).await?;
        if db::uploads::find(&txn, key).await?.is_some() {
            return Ok(false);
        }
        let open = db::uploads::count_open_of(&txn, owner).await?;
        self.open_uploads_within(owner, open)?;
        let inserted = db::uploads::insert_if_absent(&txn, row).await?;
        txn.commit().await?;
        Ok(inserted)
    }

    /// `DELETE /images/upload`: drops every chunk of an identifier.
    pub async fn cancel_upload(&self, caller: &Caller, fields: Fields) -> Result<()> {
        let target = SessionRef::of(caller, &fields)?;
        // A priority, when sent, names a tier (as for chunks and the merge, SPEC section 5).
        let asked = self.asked_priority(&fields)?;
        let identifier: &str = &target.identifier;
        // A cancel refused for its priority must not make chunks in transfer yield to it.
        if let Some(asked) = asked {
            let found = db::uploads::find(&self.db, &target.key).await?;
            if let Some(s) = found.filter(|s| s.priority != asked) {
                return Err(other_priority(&target.identifier, s.priority, asked));
            }
        }
        // Remembered before the session is looked up: a chunk in transfer now, which began
        // before the cancel, yields to it whether it finds this session, none, or one it
        // opens meanwhile (see `yield_to_cancel`).
        db::uploads::record_cancel(&self.db, &target.key, now_secs()).await?;
        let Some(session) = db::uploads::find(&self.db, &target.key).await? else {
            return Ok(());
        };
        match session.state {
            Merging => Err(Error::Conflict(format!(
                "upload {identifier} is being merged or cancelled by another request"
            ))),
            // To start again: the image stays, the identifier is free for a new upload.
            Completed => {
                let txn = self.db.begin().await?;
                db::uploads::delete(&txn, &session.id).await?;
                db::images::release_identifier(&txn, &session.identifier).await?;
                txn.commit().await?;
                tracing::info!(identifier, image.id = %session.image_id, "merged upload released");
                Ok(())
            }
            Open => {
                // Claimed first, as a merge claims it: a merge that comes now waits for the
                // cancel instead of joining parts the cancel is aborting, and a merge that
                // claimed it first keeps it.
                let token = uuid::Uuid::new_v4().simple().to_string();
                let claim = db::uploads::MergeClaim {
                    token: &token,
                    request: None,
                };
                if !db::uploads::claim_merge(&self.db, &session.id, now_secs(), i64::MIN, &claim)
                    .await?
                {
                    return match db::uploads::find(&self.db, &target.key).await? {
                        None => Ok(()),
                        Some(_) => Err(Error::Conflict(format!(
                            "upload {identifier} is being merged or cancelled by another request"
                        ))),
                    };
                }
                if let Err(e) = self.discard_upload(&session).await {
                    db::uploads::end_merge(&self.db, &session.id, &token, Open, now_secs()).await?;
                    return Err(e);
                }
                db::uploads::delete_merging(&self.db, &session.id, &token).await?;
                tracing::info!(identifier, "upload cancelled");
                self.metrics.upload_session_cancelled();
                Ok(())
            }
        }
    }

    /// The priority a request names, when it names one (an empty field names none). Errors:
    /// a priority no tier has.
    pub(super) fn asked_priority(&self, fields: &Fields) -> Result<Option<i32>> {
        match fields.get(Field::Priority).map(str::trim) {
            None | Some("") => Ok(None),
            p => Ok(Some(self.tier_for(p)?.priority)),
        }
    }

    /// `GET /images/upload?identifier=`: the chunks already received.
    ///
    /// Errors: a bad identifier or user, a priority no tier has or another one than the
    /// upload was started with (as a chunk, a merge and a cancel are refused).
    pub async fn upload_status(&self, caller: &Caller, fields: Fields) -> Result<UploadStatus> {
        let target = SessionRef::of(caller, &fields)?;
        let asked = self.asked_priority(&fields)?;
        let identifier = target.identifier.to_string();
        let found = db::uploads::find(&self.db, &target.key).await?;
        if let Some((s, asked)) = found.as_ref().zip(asked) {
            if s.priority != asked {
                return Err(other_priority(&target.identifier, s.priority, asked));
            }
        }
        let Some(session) = found else {
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
            // As a cancel: a chunk in transfer for longer than the TTL, which began before
            // this, yields to it (409) instead of opening the upload anew without its chunks.
            db::uploads::record_cancel(&self.db, &s.identifier, now_secs()).await?;
            let aborted = self.discard_upload(&s).await;
            if let Err(e) = aborted {
                db::uploads::end_merge(&self.db, &s.id, &token, Open, now_secs()).await?;
                return Err(e);
            }
            db::uploads::delete_merging(&self.db, &s.id, &token).await?;
            tracing::info!(
                identifier = caller::client_identifier(&s.identifier),
                "abandoned upload expired"
            );
            self.metrics.upload_session_expired();
            swept += 1;
        }
        // A chunk in transfer for longer than the TTL no longer yields to a cancel.
        db::uploads::prune_cancels(&self.db, before).await?;
        // Writers whose replica died (and whose chunk nobody sent again).
        db::uploads::prune_part_writers(&self.db, now_secs()).await?;
        Ok(swept)
    }

    /// Aborts the multipart uploads the store holds that no upload session records and
    /// nobody wrote to for longer than `idle`: those a process killed in the middle of a
    /// single upload, a slim's output or a merge left open (its undo step never ran), which
    /// would otherwise hold their parts until the bucket's lifecycle rule (2 days), or for
    /// ever on a store without one. Returns how many.
    pub async fn sweep_orphan_uploads(&self, idle: std::time::Duration) -> Result<usize> {
        let mut buckets: Vec<&str> = self.cfg.tiers.values().map(|t| &*t.bucket).collect();
        buckets.sort_unstable();
        buckets.dedup();
        let mut swept = std::collections::HashSet::new();
        for bucket in buckets {
            let stale = self.store.stale_uploads(bucket, idle).await?;
            if stale.is_empty() {
                continue;
            }
            let ids: Vec<String> = stale.iter().map(|u| u.upload_id.clone()).collect();
            let known = db::uploads::known_upload_ids(&self.db, &ids).await?;
            for u in stale {
                if known.contains(&u.upload_id) || swept.contains(&u.upload_id) {
                    continue;
                }
                let upload = MultipartUpload {
                    bucket,
                    key: &u.key,
                    upload_id: &u.upload_id,
                };
                self.store.abort_multipart(upload).await?;
                tracing::info!(bucket, key = %u.key, "aborted a multipart upload nobody records");
                swept.insert(u.upload_id);
            }
        }
        Ok(swept.len())
    }

    /// Drops what the store holds for a session that is not merged: its multipart upload and
    /// the object a merge joined it into but could not record (the failed merge reopened the
    /// session to be merged again, which would have reused that object).
    async fn discard_upload(&self, session: &upload_session::Model) -> Result<()> {
        self.store.abort_multipart(multipart_of(session)).await?;
        self.store
            .delete(&session.bucket, &session.object_key)
            .await?;
        Ok(())
    }
}

/// How long a chunk stored after its upload ended waits for a cancel or merge holding the
/// session to end before it gives up removing what it stored (the bucket's lifecycle rule for
/// staging objects is the backstop then).
const LATE_CHUNK_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

/// Lease of a chunk's writer (seconds), renewed every third of it while the chunk is stored;
/// a replica that dies holding one delays a resend of that chunk by at most this long.
const PART_WRITER_LEASE_SECS: i64 = 15;

/// The right of one request to store chunks of an upload (see `Service::part_writers`).
pub(super) struct PartWriters {
    db: sea_orm::DatabaseConnection,
    session_id: String,
    token: String,
    _renewal: Option<tokio_util::task::AbortOnDropHandle<()>>,
    ended: bool,
}

impl PartWriters {
    /// Lets go of the chunks (a failure is logged: the leases end them anyway).
    pub(super) async fn end(mut self) {
        self.ended = true;
        let ended = db::uploads::end_part_writers(&self.db, &self.session_id, &self.token).await;
        if let Err(e) = ended {
            tracing::warn!(error = %e, "could not let go of chunks' writers; their leases end them");
        }
    }
}

impl Drop for PartWriters {
    /// A request dropped while it held them (its client went): let go in a task.
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let db = self.db.clone();
        let (session_id, token) = (
            std::mem::take(&mut self.session_id),
            std::mem::take(&mut self.token),
        );
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = db::uploads::end_part_writers(&db, &session_id, &token).await;
            });
        }
    }
}

/// Whether a request waiting for chunks' writers gives up when the upload stops being open.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum YieldTo {
    /// A chunk: a merge or cancel that claimed the upload is its answer (409).
    Merge,
    /// A merge: it waits for every writer.
    Nothing,
}

/// The error of a chunk for an upload that is no longer open (merging, cancelling, merged).
fn not_open(session: &upload_session::Model) -> Error {
    Error::Conflict(format!(
        "upload {} is {}; cancel it to start again",
        caller::client_identifier(&session.identifier),
        if session.state == Merging {
            // A cancel claims the upload as a merge does.
            "being merged or cancelled"
        } else {
            "already merged"
        }
    ))
}

/// The error of a chunk whose session was merged or cancelled while the chunk was stored.
fn gone(session: &upload_session::Model) -> Error {
    Error::Conflict(format!(
        "upload {} was merged or cancelled while this chunk was stored; cancel it to start again",
        caller::client_identifier(&session.identifier)
    ))
}

/// The error of storing a chunk: an upload the store no longer has was merged or cancelled
/// meanwhile (a conflict, not a fault of the store).
fn stored_error(e: StorageError, session: &upload_session::Model) -> Error {
    match e {
        StorageError::NoSuchUpload => gone(session),
        e => e.into(),
    }
}
