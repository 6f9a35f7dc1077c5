//! Images: single uploads (plain or zipped), queries, deletion, slim requests.

use super::{
    caller::{Caller, Role},
    form::{Fields, FormReader, FormSource},
    integrity::{Digests, Wanted},
    meter::Meter,
    now_secs,
    quota::Reservation,
    texts, validate, zipin, Error, Result, Service,
};
use crate::{
    cleanup::Cleanup,
    config::Tier,
    db,
    storage::{
        fileio::{BodyOrFile, FileSink},
        ByteStream, PutOptions, StorageError,
    },
};
use entity::{
    image,
    status::{CheckStatus, JobKind, SlimStatus},
};
use futures::StreamExt;
use sea_orm::{ActiveValue::Set, TransactionTrait};
use std::path::Path;

/// Object key of an image's bytes. Keys are made from ids only.
pub fn object_key(image_id: &str) -> String {
    format!("images/{image_id}")
}

/// What a filter on the image list may hold.
#[derive(Debug, Default)]
pub struct ListQuery {
    pub user_id: Option<String>,
    pub limit: Option<u64>,
    pub offset: Option<u64>,
}

/// Bytes of an image already in the store, not yet recorded. Removed from the store when
/// dropped before `recorded` (a failure, or the client going away mid-form).
struct StoredObject {
    tier: Tier,
    key: String,
    size: u64,
    crc32: u32,
    /// MD5 and SHA-256 of the bytes, computed while they streamed in.
    digests: Digests,
    unreferenced: Cleanup,
}

impl StoredObject {
    /// The image record now references the object: it stays.
    fn recorded(self) {
        self.unreferenced.disarm();
    }

    /// Removes the object now.
    async fn discard(self) {
        self.unreferenced.run().await;
    }
}

/// A file part received by `POST /images`, before the rest of the form is known.
enum Staged {
    Image {
        file_name: String,
        object: StoredObject,
    },
    Zip {
        file: tempfile::TempPath,
        /// Of the archive as received.
        digests: Digests,
    },
}

impl Staged {
    /// Digests of the file as the client sent it (the archive, for a zip).
    fn sent_digests(&self) -> &Digests {
        match self {
            Staged::Image { object, .. } => &object.digests,
            Staged::Zip { digests, .. } => digests,
        }
    }
}

/// The image a zip held, once stored.
pub(crate) struct Extracted {
    pub file_name: String,
    /// Bytes.
    pub size: u64,
    pub crc32: u32,
    /// MD5 and SHA-256 of the image, computed as it was extracted.
    pub digests: Digests,
}

/// The fields of a new image record.
pub(crate) struct NewImage<'a> {
    pub id: &'a str,
    pub file_name: &'a str,
    pub user_id: &'a str,
    pub tier: &'a Tier,
    pub key: &'a str,
    pub size: u64,
    pub crc32: u32,
    /// MD5 and SHA-256 of the image as received, when they were computed on the way in.
    pub digests: Option<&'a Digests>,
    pub source_identifier: Option<&'a str>,
}

impl NewImage<'_> {
    pub(crate) fn into_active_model(self) -> image::ActiveModel {
        let now = now_secs();
        image::ActiveModel {
            id: Set(self.id.to_string()),
            file_name: Set(self.file_name.to_string()),
            user_id: Set(self.user_id.to_string()),
            upload_time: Set(chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string()),
            priority: Set(self.tier.priority),
            bucket: Set(self.tier.bucket.clone()),
            object_key: Set(self.key.to_string()),
            size_bytes: Set(self.size as i64),
            crc32: Set(Some(self.crc32 as i64)),
            source_identifier: Set(self.source_identifier.map(str::to_string)),
            slim_status: Set(SlimStatus::NotSlimmed),
            check_status: Set(CheckStatus::InProgress),
            check_msg: Set(texts::CHECK_IN_PROGRESS.to_string()),
            check_result: Set(crate::imageops::result::IN_PROGRESS),
            checksum: Set(None),
            image_end_offset: Set(None),
            check_errors: Set(None),
            format: Set(None),
            virtual_size: Set(None),
            compress_status: Set(None),
            compress_msg: Set(None),
            compress_rate: Set(None),
            slim_object_key: Set(None),
            slim_size_bytes: Set(None),
            slim_crc32: Set(None),
            original_md5: Set(self.digests.and_then(Digests::md5_hex)),
            original_sha256: Set(self.digests.and_then(Digests::sha256_hex)),
            slim_md5: Set(None),
            slim_sha256: Set(None),
            sha256: Set(None),
            slimmed_at: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
        }
    }
}

impl Service {
    /// `POST /images`: streams the `file` part into the store and records the image.
    pub async fn upload_image(
        &self,
        caller: &Caller,
        query: Fields,
        form: &mut dyn FormSource,
    ) -> Result<image::Model> {
        let _slot = self.upload_slot().await;
        let (staged, quota, fields) = self.receive_image(caller, query, form).await?;
        let sent = staged.sent_digests().clone();
        let settled = self.settle_upload(caller, &fields, &sent, &quota).await;
        let (tier, user_id) = match settled {
            Ok(v) => v,
            Err(e) => {
                self.discard(staged).await;
                return Err(e);
            }
        };
        let (file_name, object) = match staged {
            Staged::Image { file_name, object } => {
                (file_name, self.move_to_tier(object, &tier).await?)
            }
            Staged::Zip { file, .. } => self.unpack_upload(&file, tier, &quota).await?,
        };
        self.record_upload(&file_name, &user_id, object, quota)
            .await
    }

    /// Reads a `POST /images` form: its fields (over `query`) and its `file` part, staged
    /// under a quota reservation for the user named before the file (if any).
    async fn receive_image(
        &self,
        caller: &Caller,
        query: Fields,
        form: &mut dyn FormSource,
    ) -> Result<(Staged, Reservation, Fields)> {
        let mut form = FormReader::new(form, query);
        let (file_name, body) = form.file(&["file"]).await?.ok_or(Error::NoFile)?;
        let file_name = validate::file_name(file_name.as_deref().unwrap_or(""))
            .ok_or(Error::InvalidFileName(texts::BAD_UPLOAD_NAME))?;
        // The tier is known now only if priority came first; it is settled later.
        let tier = self.tier_for(form.fields().get("priority"))?.clone();
        let (reservation, body) = self
            .quota_upload(quota_user(caller, form.fields())?.as_deref(), body)
            .await?;
        let stage = self.stage(file_name, body, tier).await;
        let staged = reservation.checked(stage).await?;
        match form.finish().await {
            Ok(fields) => Ok((staged, reservation, fields)),
            Err(e) => {
                self.discard(staged).await;
                Err(e)
            }
        }
    }

    /// What the whole form decides once the file is staged: the tier (`priority`), the whole
    /// file's `checksum` verified against the digests `sent` computed, and the user it belongs to (`userId`), to whom the bytes
    /// are counted from now on.
    async fn settle_upload(
        &self,
        caller: &Caller,
        fields: &Fields,
        sent: &Digests,
        quota: &Reservation,
    ) -> Result<(Tier, String)> {
        let tier = self.tier_for(fields.get("priority"))?.clone();
        if let Some(expected) = super::uploads::image_checksum(fields)? {
            sent.verify(std::slice::from_ref(&expected), "the uploaded file")
                .map_err(Error::ChecksumMismatch)?;
        }
        let user_id = validate::user_id(fields.get("userId")).map_err(Error::InvalidInput)?;
        let user_id = caller.acting_for(&user_id)?;
        // The bytes counted for the user named when the file began; it may be named later.
        quota.rebind(&user_id).await?;
        Ok((tier, user_id))
    }

    /// Extracts the image of an uploaded zip (spooled at `file`) into `tier`, once its
    /// declared size fits the quota: its file name and the stored object.
    async fn unpack_upload(
        &self,
        file: &Path,
        tier: Tier,
        quota: &Reservation,
    ) -> Result<(String, StoredObject)> {
        let id = uuid::Uuid::new_v4().to_string();
        let key = object_key(&id);
        let found = self.find_zip_image(file).await?;
        quota.settle(found.declared_size).await?;
        let x = self.extract_zip_image(file, found, &tier, &key).await?;
        let unreferenced = self.unreferenced(&tier.bucket, &key);
        let object = StoredObject {
            tier,
            key,
            size: x.size,
            crc32: x.crc32,
            digests: x.digests,
            unreferenced,
        };
        Ok((x.file_name, object))
    }

    /// Records an uploaded image and its check job together (or discards the object), then
    /// releases the quota reservation: the image as `GET /images/{id}` shows it.
    async fn record_upload(
        &self,
        file_name: &str,
        user_id: &str,
        object: StoredObject,
        quota: Reservation,
    ) -> Result<image::Model> {
        let id = object.key.trim_start_matches("images/").to_string();
        let record = NewImage {
            id: &id,
            file_name,
            user_id,
            tier: &object.tier,
            key: &object.key,
            size: object.size,
            crc32: object.crc32,
            digests: Some(&object.digests),
            source_identifier: None,
        };
        // The record and its check job appear together, or not at all.
        let recorded = async {
            let txn = self.db.begin().await?;
            db::images::insert(&txn, record.into_active_model()).await?;
            db::jobs::enqueue(&txn, JobKind::Check, &id, now_secs()).await?;
            txn.commit().await
        }
        .await;
        if let Err(e) = recorded {
            object.discard().await;
            return Err(e.into());
        }
        let size = object.size;
        let bucket = object.tier.bucket.clone();
        object.recorded();
        quota.release().await;
        self.job_wake.notify_one();
        tracing::info!(image.id = %id, size_bytes = size, bucket = %bucket, "image uploaded");
        self.metrics.image_uploaded();
        self.image(&Caller::Anonymous, &id).await
    }

    /// Streams one file part into the store (plain image) or a scratch file (zip).
    async fn stage(&self, file_name: String, body: ByteStream, tier: Tier) -> Result<Staged> {
        let limit = self.cfg.max_image_bytes;
        // MD5 and SHA-256 in the same pass as the bytes go to the store.
        let meter = Meter::hashing(Wanted::IMAGE);
        let body = meter.wrap(body, limit);
        if validate::is_zip(&file_name) {
            let (file, path) = self.scratch_file().await?;
            spool(file, body, &meter).await?;
            return Ok(Staged::Zip {
                file: path,
                digests: meter.digests(),
            });
        }
        let key = object_key(&uuid::Uuid::new_v4().to_string());
        let opts = PutOptions {
            storage_class: tier.storage_class.clone(),
        };
        match self.store.put(&tier.bucket, &key, body, &opts).await {
            Ok(size) => Ok(Staged::Image {
                file_name,
                object: StoredObject {
                    unreferenced: self.unreferenced(&tier.bucket, &key),
                    tier,
                    key,
                    size,
                    crc32: meter.crc32(),
                    digests: meter.digests(),
                },
            }),
            Err(StorageError::Body(e)) => Err(body_error(e, &meter)),
            Err(e) => Err(e.into()),
        }
    }

    /// Moves a stored object to the tier chosen once the whole form was read.
    async fn move_to_tier(&self, object: StoredObject, tier: &Tier) -> Result<StoredObject> {
        if object.tier.bucket == tier.bucket && object.tier.storage_class == tier.storage_class {
            return Ok(StoredObject {
                tier: tier.clone(),
                ..object
            });
        }
        // The copy is guarded from the moment it may exist; the original goes either way.
        let copy = self.unreferenced(&tier.bucket, &object.key);
        let opts = PutOptions {
            storage_class: tier.storage_class.clone(),
        };
        let copied = self
            .store
            .copy(
                &object.tier.bucket,
                &object.key,
                &tier.bucket,
                &object.key,
                &opts,
            )
            .await;
        let StoredObject {
            key,
            size,
            crc32,
            digests,
            unreferenced,
            ..
        } = object;
        unreferenced.run().await;
        if let Err(e) = copied {
            copy.run().await;
            return Err(e.into());
        }
        Ok(StoredObject {
            tier: tier.clone(),
            key,
            size,
            crc32,
            digests,
            unreferenced: copy,
        })
    }

    async fn discard(&self, staged: Staged) {
        if let Staged::Image { object, .. } = staged {
            object.discard().await;
        }
    }

    /// A guard that removes `bucket`/`key` unless disarmed: for objects not yet referenced by
    /// a record.
    pub(crate) fn unreferenced(&self, bucket: &str, key: &str) -> Cleanup {
        let (store, bucket, key) = (self.store.clone(), bucket.to_string(), key.to_string());
        Cleanup::new(async move {
            if let Err(e) = store.delete(&bucket, &key).await {
                tracing::warn!(bucket, key, error = %e, "could not remove an unreferenced object");
            }
        })
    }

    /// Best-effort removal of an object nobody will reference; failures are logged.
    pub(crate) async fn delete_object(&self, bucket: &str, key: &str) {
        if let Err(e) = self.store.delete(bucket, key).await {
            tracing::warn!(bucket, key, error = %e, "could not remove an unreferenced object");
        }
    }

    /// The single image of the zip at `zip`, as its listing declares it (refusals: 400).
    pub(crate) async fn find_zip_image(&self, zip: &Path) -> Result<zipin::ZipImage> {
        let limits = self.zip_limits();
        let path = zip.to_path_buf();
        tokio::task::spawn_blocking(move || zipin::find_image(&path, limits))
            .await
            .map_err(|e| Error::Internal(e.to_string()))?
            .map_err(Error::InvalidZip)
    }

    fn zip_limits(&self) -> zipin::Limits {
        zipin::Limits {
            max_bytes: self.cfg.max_image_bytes,
            max_ratio: self.cfg.zip_max_ratio,
        }
    }

    /// Extracts `found` from the zip at `zip` into `tier`/`key`, checking its size and CRC-32
    /// as it streams.
    pub(crate) async fn extract_zip_image(
        &self,
        zip: &Path,
        found: zipin::ZipImage,
        tier: &Tier,
        key: &str,
    ) -> Result<Extracted> {
        let limits = self.zip_limits();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let path = zip.to_path_buf();
        let entry = found.clone();
        let extractor =
            tokio::task::spawn_blocking(move || zipin::extract(&path, &entry, limits, tx));
        let body = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })
        .boxed();
        let meter = Meter::hashing(Wanted::IMAGE);
        let body = meter.wrap(body, u64::MAX);
        let opts = PutOptions {
            storage_class: tier.storage_class.clone(),
        };
        let stored = self.store.put(&tier.bucket, key, body, &opts).await;
        let extracted = extractor
            .await
            .map_err(|e| Error::Internal(e.to_string()))?;
        match (stored, extracted) {
            (Ok(size), Ok(())) => Ok(Extracted {
                file_name: found.file_name,
                size,
                crc32: meter.crc32(),
                digests: meter.digests(),
            }),
            (Err(StorageError::Body(_)), Err(refusal)) => Err(Error::InvalidZip(refusal)),
            (Err(e), _) => Err(e.into()),
            (Ok(_), Err(refusal)) => {
                self.delete_object(&tier.bucket, key).await;
                Err(Error::InvalidZip(refusal))
            }
        }
    }

    /// One image record the caller may see: another user's image is `ImageNotFound`, the
    /// same answer as a missing one, so that ids do not reveal what exists.
    pub async fn image(&self, caller: &Caller, raw_id: &str) -> Result<image::Model> {
        let not_found = || Error::ImageNotFound(raw_id.to_string());
        let id = validate::image_id(raw_id).ok_or_else(not_found)?;
        self.visible_image(caller, &id).await?.ok_or_else(not_found)
    }

    /// The image `id`, when it exists and the caller may see it.
    async fn visible_image(&self, caller: &Caller, id: &str) -> Result<Option<image::Model>> {
        Ok(db::images::find(&self.db, id)
            .await?
            .filter(|img| caller.may_access(&img.user_id)))
    }

    /// The images the caller may see, newest first: a user's own (asking for another user's
    /// is `Forbidden`), else those of `q.user_id` when given.
    pub async fn list_images(&self, caller: &Caller, q: ListQuery) -> Result<Vec<image::Model>> {
        let user = caller.list_filter(q.user_id.as_deref())?;
        Ok(db::images::list(&self.db, user, q.limit, q.offset).await?)
    }

    /// Removes an image's objects, then its record; `true` when it did. Succeeds (`false`)
    /// when it is already gone, or is another user's: nothing changes, and the answer does
    /// not tell.
    pub async fn delete_image(&self, caller: &Caller, raw_id: &str) -> Result<bool> {
        let id =
            validate::image_id(raw_id).ok_or_else(|| Error::ImageNotFound(raw_id.to_string()))?;
        let Some(img) = self.visible_image(caller, &id).await? else {
            return Ok(false);
        };
        // Work on the image stops first (a running job loses its lease and ends).
        db::jobs::cancel_for_image(&self.db, &id, now_secs()).await?;
        self.store.delete(&img.bucket, &img.object_key).await?;
        if let Some(slim) = &img.slim_object_key {
            self.store.delete(&img.bucket, slim).await?;
        }
        db::uploads::delete_for_image(&self.db, &id).await?;
        db::images::delete(&self.db, &id).await?;
        tracing::info!(image.id = %id, "image deleted");
        Ok(true)
    }

    /// `POST .../action/check`: queues a fresh check of the bytes served (MD5 and SHA-256
    /// compared with those recorded, then qemu-img), one at a time per image. Returns the
    /// text to answer with.
    pub async fn request_check(&self, caller: &Caller, raw_id: &str) -> Result<&'static str> {
        let img = self.image(caller, raw_id).await?;
        let txn = self.db.begin().await?;
        let msg = texts::CHECK_IN_PROGRESS;
        if !db::images::request_check(&txn, &img.id, msg, now_secs()).await? {
            return Ok(texts::CHECK_RUNNING);
        }
        db::jobs::enqueue(&txn, JobKind::Check, &img.id, now_secs()).await?;
        txn.commit().await?;
        self.job_wake.notify_one();
        tracing::info!(image.id = %img.id, "check requested");
        Ok(texts::CHECK_ACCEPTED)
    }

    /// `POST .../action/slim`: returns the text to answer with.
    pub async fn request_slim(&self, caller: &Caller, raw_id: &str) -> Result<&'static str> {
        let not_found = || Error::NotFound(texts::SLIM_NOT_FOUND.to_string());
        let id = validate::image_id(raw_id).ok_or_else(not_found)?;
        let img = self
            .visible_image(caller, &id)
            .await?
            .ok_or_else(not_found)?;
        match img.slim_status {
            SlimStatus::Slimming => return Ok(texts::SLIM_RUNNING),
            SlimStatus::Slimmed => return Ok(texts::SLIM_DONE),
            SlimStatus::NotSlimmed | SlimStatus::Failed => {}
        }
        if img.check_status == CheckStatus::NotCheckedType {
            db::images::refuse_slim(&self.db, &id, texts::SLIM_UNSUPPORTED, now_secs()).await?;
            return Err(Error::InvalidInput(texts::SLIM_UNSUPPORTED.to_string()));
        }
        if let Some(refusal) = slim_refusal(&img) {
            db::images::refuse_slim(&self.db, &id, &refusal, now_secs()).await?;
            return Err(Error::SlimRefused(refusal));
        }
        // The state change and its job are one transaction: slimStatus 1 always has a job.
        let txn = self.db.begin().await?;
        let accepted = db::images::request_slim(&txn, &id, now_secs()).await?;
        if accepted {
            db::jobs::enqueue(&txn, JobKind::Slim, &id, now_secs()).await?;
        }
        txn.commit().await?;
        if accepted {
            self.job_wake.notify_one();
            Ok(texts::SLIM_ACCEPTED)
        } else {
            // Another request changed the state in between; answer from the new state.
            match db::images::find(&self.db, &id)
                .await?
                .map(|i| i.slim_status)
            {
                Some(SlimStatus::Slimmed) => Ok(texts::SLIM_DONE),
                Some(_) => Ok(texts::SLIM_RUNNING),
                None => Err(not_found()),
            }
        }
    }
}

/// The user a single upload's bytes count against while they arrive: a user's own; whom an
/// admin (or, with authentication off, the `userId` field) names; `None` when that field has
/// not arrived yet (it may follow the file: the whole upload is then reserved when the form
/// ends, for the user it names).
fn quota_user(caller: &Caller, fields: &Fields) -> Result<Option<String>> {
    match (caller.role(), fields.get("userId")) {
        (Some(Role::User), field) => Ok(Some(caller.acting_for(field.unwrap_or(""))?)),
        (_, None) => Ok(None),
        (_, Some(field)) => Ok(Some(caller.acting_for(field)?)),
    }
}

/// Why an image may not be slimmed, from its check: only an image the check found safe and
/// usable is, that is consistent (status 0) or with leaked clusters only (status 2: a leak
/// wastes space but loses nothing, and the compressed copy drops it). A corrupted image (1), a
/// refused one (3: a backing or data file, content that is not what its name says, a failed
/// check) or one whose check timed out (6) is not; `None` also while the check is in progress
/// (4; the slim waits for it) and for unsupported types (5, refused with its own text).
pub(crate) fn slim_refusal(img: &image::Model) -> Option<String> {
    let why = match img.check_status {
        CheckStatus::Corrupted => "its check found it corrupted".to_string(),
        CheckStatus::Failed => format!("its check refused it ({})", img.check_msg),
        CheckStatus::TimedOut => "its check timed out".to_string(),
        _ => return None,
    };
    Some(format!("This image cannot be slimmed: {why}."))
}

/// Writes a (metered) body to a scratch file.
pub(crate) async fn spool(file: tokio::fs::File, body: ByteStream, meter: &Meter) -> Result<u64> {
    let mut sink = FileSink::new(file.into_std().await);
    match sink.drain(body).await {
        Ok(()) => Ok(sink.finish(false).await?),
        Err(BodyOrFile::Body(e)) => Err(body_error(e, meter)),
        Err(BodyOrFile::File(e)) => Err(e.into()),
    }
}

/// The error for a body that stopped: over the limit, or the client's fault.
pub(crate) fn body_error(e: std::io::Error, meter: &Meter) -> Error {
    if meter.exceeded() {
        Error::TooLarge
    } else if e.kind() == std::io::ErrorKind::TimedOut {
        Error::BodyTimeout
    } else {
        Error::BadBody(e)
    }
}
