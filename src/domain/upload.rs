//! Single uploads (`POST /images`): the file part streams into the store (a zip into scratch,
//! then its image into the store), hashed on the way; the rest of the form decides the tier
//! and the user; the image is recorded with its check job.

use super::{
    caller::{Caller, Role},
    form::{Field, Fields, FilePart, FormReader, FormSource},
    ids::{ImageId, ObjectKey},
    integrity::{digest_file, Algorithm, Digests, Wanted},
    meter::Meter,
    now_secs,
    objects::{body_error, spool, NewImage},
    quota::Reservation,
    texts, validate, Error, Result, Service,
};
use crate::{
    cleanup::Cleanup,
    config::Tier,
    db,
    storage::{ByteStream, ObjectRef, PutOptions, StorageError},
};
use entity::{image, status::JobKind};
use sea_orm::TransactionTrait;
use std::path::Path;

/// Bytes of an image already in the store, not yet recorded. Removed from the store when
/// dropped before `recorded` (a failure, or the client going away mid-form).
struct StoredObject {
    tier: Tier,
    /// The image the object will be recorded as.
    id: ImageId,
    key: ObjectKey,
    size: u64,
    crc32: u32,
    /// Of the bytes, computed while they streamed in: SHA-256, and MD5 on an S3 store or when
    /// one was declared (else the image's first check records it).
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

impl Service {
    /// `POST /images`: streams the `file` part into the store and records the image.
    /// `least_bytes`, the least the image can be (from a declared `Content-Length`), is
    /// checked against the quota of a user known before the body (the caller, or `userId` in
    /// the query) before anything is read.
    pub async fn upload_image(
        &self,
        caller: &Caller,
        query: Fields,
        form: &mut dyn FormSource,
        least_bytes: Option<u64>,
    ) -> Result<image::Model> {
        // Before a byte of the body is read: a client that sent `Expect: 100-continue` is
        // answered without sending an image its user has no room for.
        if let (Some(user), Some(least)) = (quota_user(caller, &query)?, least_bytes) {
            self.quota_room_for(&user, least, true).await?;
        }
        let _slot = self.upload_slot().await?;
        let (mut staged, quota, fields) = self.receive_image(caller, query, form).await?;
        let settled = self
            .settle_upload(caller, &fields, &mut staged, &quota)
            .await;
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
        let (file_name, body) = form.file(&[FilePart::File]).await?.ok_or(Error::NoFile)?;
        let file_name = validate::file_name(file_name.as_deref().unwrap_or(""))
            .ok_or(Error::InvalidFileName(texts::BAD_UPLOAD_NAME))?;
        // The tier is known now only if priority came first; it is settled later.
        let tier = self.tier_for(form.fields().get(Field::Priority))?.clone();
        let (reservation, body) = self
            .quota_upload(quota_user(caller, form.fields())?.as_deref(), body)
            .await?;
        // SHA-256, and the declared checksum's algorithm when the field came first; one
        // declared after the file costs one more read of the stored bytes (`settle_upload`).
        let mut wanted = Wanted::STORED;
        if let Ok(Some(declared)) = super::uploads::image_checksum(form.fields()) {
            wanted.add(declared.algorithm);
        }
        let stage = self.stage(file_name, body, tier, wanted).await;
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
    /// file's `checksum` verified against the file as sent, and the user it belongs to
    /// (`userId`), to whom the bytes are counted from now on.
    async fn settle_upload(
        &self,
        caller: &Caller,
        fields: &Fields,
        staged: &mut Staged,
        quota: &Reservation,
    ) -> Result<(Tier, String)> {
        let tier = self.tier_for(fields.get(Field::Priority))?.clone();
        if let Some(expected) = super::uploads::image_checksum(fields)? {
            self.compute_sent(staged, expected.algorithm).await?;
            staged
                .sent_digests()
                .verify(std::slice::from_ref(&expected), "the uploaded file")
                .map_err(Error::ChecksumMismatch)?;
        }
        let user_id = validate::user_id(fields.get(Field::UserId)).map_err(Error::InvalidInput)?;
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
        let id = ImageId::new();
        let key = ObjectKey::image(&id);
        let found = self.find_zip_image(file).await?;
        quota.settle(found.declared_size).await?;
        // Guarded before it exists: a request dropped at any await from here on leaves nothing.
        let unreferenced = self.unreferenced(&tier.bucket, &key);
        let x = self.extract_zip_image(file, found, &tier, &key).await?;
        let object = StoredObject {
            tier,
            id,
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
        let id = object.id.clone();
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
            quota.release_in(&txn).await?;
            txn.commit().await?;
            Ok::<_, Error>(())
        }
        .await;
        if let Err(e) = recorded {
            object.discard().await;
            return Err(e);
        }
        let size = object.size;
        let bucket = object.tier.bucket.clone();
        object.recorded();
        quota.released().await;
        self.job_wake.notify_one();
        tracing::info!(image.id = %id, size_bytes = size, bucket = %bucket, "image uploaded");
        self.metrics.image_uploaded();
        self.image(&Caller::Anonymous, &id).await
    }

    /// Streams one file part into the store (plain image) or a scratch file (zip), computing
    /// the digests `wanted` in the same pass.
    async fn stage(
        &self,
        file_name: String,
        body: ByteStream,
        tier: Tier,
        wanted: Wanted,
    ) -> Result<Staged> {
        let limit = self.cfg.max_image_bytes;
        if validate::is_zip(&file_name) {
            let meter = Meter::hashing(wanted);
            let body = meter.wrap(body, limit);
            let (file, path) = self.scratch_file().await?;
            spool(file, body, &meter).await?;
            return Ok(Staged::Zip {
                file: path,
                digests: meter.digests(),
            });
        }
        let id = ImageId::new();
        let key = ObjectKey::image(&id);
        let mut wanted = wanted;
        if self.md5_on_the_way(&tier.bucket, &key) {
            wanted.add(Algorithm::Md5);
        }
        let meter = Meter::hashing(wanted);
        let body = meter.wrap(body, limit);
        let opts = PutOptions {
            storage_class: tier.storage_class.clone(),
        };
        match self
            .store
            .put(
                ObjectRef {
                    bucket: &tier.bucket,
                    key: &key,
                },
                body,
                &opts,
            )
            .await
        {
            Ok(size) => Ok(Staged::Image {
                file_name,
                object: StoredObject {
                    unreferenced: self.unreferenced(&tier.bucket, &key),
                    tier,
                    id,
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
        let (bucket, key): (&str, &str) = (&object.tier.bucket, &object.key);
        let from = ObjectRef { bucket, key };
        let to = ObjectRef {
            bucket: &tier.bucket,
            key,
        };
        let copied = self.store.copy(from, to, &opts).await;
        let StoredObject {
            id,
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
            id,
            key,
            size,
            crc32,
            digests,
            unreferenced: copy,
        })
    }

    /// Computes the digest of `algorithm` over the file as sent when it was not computed on
    /// the way (its `checksum` field came after the file part): one more read of the stored
    /// object or the spooled archive.
    async fn compute_sent(&self, staged: &mut Staged, algorithm: Algorithm) -> Result<()> {
        if staged.sent_digests().has(algorithm) {
            return Ok(());
        }
        let mut wanted = Wanted::default();
        wanted.add(algorithm);
        let found = match staged {
            Staged::Image { object, .. } => {
                self.object_digests(&object.tier.bucket, &object.key, wanted)
                    .await?
            }
            Staged::Zip { file, .. } => {
                let path = file.to_path_buf();
                tokio::task::spawn_blocking(move || digest_file(&path, wanted))
                    .await
                    .map_err(|e| Error::Internal(e.to_string()))??
            }
        };
        match staged {
            Staged::Image { object, .. } => object.digests.fill_from(found),
            Staged::Zip { digests, .. } => digests.fill_from(found),
        }
        Ok(())
    }

    async fn discard(&self, staged: Staged) {
        if let Staged::Image { object, .. } = staged {
            object.discard().await;
        }
    }
}

/// The user a single upload's bytes count against while they arrive: a user's own; whom an
/// admin (or, with authentication off, the `userId` field) names; `None` when that field has
/// not arrived yet (it may follow the file: the whole upload is then reserved when the form
/// ends, for the user it names).
fn quota_user(caller: &Caller, fields: &Fields) -> Result<Option<String>> {
    let field = fields.get(Field::UserId);
    let field = field
        .map(|f| validate::user_id(Some(f)).map_err(Error::InvalidInput))
        .transpose()?;
    match (caller.role(), field.as_deref()) {
        (Some(Role::User), field) => Ok(Some(caller.acting_for(field.unwrap_or(""))?)),
        (_, None) => Ok(None),
        (_, Some(field)) => Ok(Some(caller.acting_for(field)?)),
    }
}
