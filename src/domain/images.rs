//! Images once stored: queries, deletion, check and slim requests.

use super::{
    caller::Caller,
    ids::{ImageId, ObjectKey},
    now_secs, texts, Error, Result, Service,
};
use crate::{db, metrics::SlimOutcome};
use entity::{
    image,
    status::{CheckStatus, CompressStatus, JobKind, SlimStatus},
};
use sea_orm::TransactionTrait;

/// What a filter on the image list may hold.
#[derive(Debug, Default)]
pub struct ListQuery {
    pub user_id: Option<String>,
    pub limit: Option<u64>,
    pub offset: Option<u64>,
}

impl Service {
    /// One image record the caller may see: another user's image is `ImageNotFound`, the
    /// same answer as a missing one, so that ids do not reveal what exists.
    pub async fn image(&self, caller: &Caller, raw_id: &str) -> Result<image::Model> {
        let not_found = || Error::ImageNotFound(raw_id.to_string());
        let id = ImageId::parse(raw_id).ok_or_else(not_found)?;
        self.visible_image(caller, &id).await?.ok_or_else(not_found)
    }

    /// The image `id`, when it exists and the caller may see it.
    async fn visible_image(&self, caller: &Caller, id: &ImageId) -> Result<Option<image::Model>> {
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

    /// Removes an image's record and retires its objects in one transaction, then deletes
    /// the objects no download reads ([`Service::delete_retired`]; a download in flight
    /// completes and the last one to end deletes them); `true` when it did. Succeeds
    /// (`false`) when it is already gone, or is another user's: nothing changes, and the
    /// answer does not tell.
    pub async fn delete_image(&self, caller: &Caller, raw_id: &str) -> Result<bool> {
        let id = ImageId::parse(raw_id).ok_or_else(|| Error::ImageNotFound(raw_id.to_string()))?;
        let Some(img) = self.visible_image(caller, &id).await? else {
            return Ok(false);
        };
        // Work on the image stops first (a running job loses its lease and ends), and a slim
        // in progress can no longer be recorded: its job then removes what it stored.
        db::jobs::cancel_for_image(&self.db, &id, now_secs()).await?;
        let stopped = "slim stopped: the image was deleted";
        db::images::slim_failed(&self.db, &id, CompressStatus::Failed, stopped, now_secs()).await?;
        // The slimmed copy's key whether or not it was recorded: a slim may have stored it
        // and been recorded since `img` was read.
        let slim = img
            .slim_object_key
            .clone()
            .unwrap_or_else(|| ObjectKey::slim(&img.object_key).into_string());
        let keys = [img.object_key.as_str(), slim.as_str()];
        let txn = self.db.begin().await?;
        db::objects::retire(&txn, &img.bucket, &keys, now_secs()).await?;
        db::uploads::delete_for_image(&txn, &id).await?;
        db::images::delete(&txn, &id).await?;
        txn.commit().await?;
        tracing::info!(image.id = %id, "image deleted");
        self.delete_retired(&img.bucket, &keys).await;
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
        let id = ImageId::parse(raw_id).ok_or_else(not_found)?;
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
            self.metrics.image_slimmed(SlimOutcome::Unsupported);
            return Err(Error::SlimRefused(texts::SLIM_UNSUPPORTED.to_string()));
        }
        if let Some(refusal) = slim_refusal(&img) {
            db::images::refuse_slim(&self.db, &id, &refusal, now_secs()).await?;
            self.metrics.image_slimmed(SlimOutcome::Refused);
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
