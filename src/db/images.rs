//! Queries on `images`.

use entity::image::{self, Entity as Images};
use entity::status::{CheckStatus, CompressStatus, SlimStatus};
use sea_orm::{
    sea_query::Expr, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};

pub async fn insert(db: &impl ConnectionTrait, model: image::ActiveModel) -> Result<(), DbErr> {
    Images::insert(model)
        .exec_without_returning(db)
        .await
        .map(|_| ())
}

pub async fn find(db: &impl ConnectionTrait, id: &str) -> Result<Option<image::Model>, DbErr> {
    Images::find_by_id(id.to_string()).one(db).await
}

pub async fn find_by_identifier(
    db: &impl ConnectionTrait,
    identifier: &str,
) -> Result<Option<image::Model>, DbErr> {
    Images::find()
        .filter(image::Column::SourceIdentifier.eq(identifier))
        .one(db)
        .await
}

/// Frees an upload identifier (a session key) for a new upload: the images merged from it
/// keep their bytes and ids, but a merge of that identifier no longer finds them.
pub async fn release_identifier(db: &impl ConnectionTrait, identifier: &str) -> Result<(), DbErr> {
    Images::update_many()
        .col_expr(
            image::Column::SourceIdentifier,
            Expr::value(Option::<String>::None),
        )
        .filter(image::Column::SourceIdentifier.eq(identifier))
        .exec(db)
        .await
        .map(|_| ())
}

pub async fn list(
    db: &impl ConnectionTrait,
    user_id: Option<&str>,
    limit: Option<u64>,
    offset: Option<u64>,
) -> Result<Vec<image::Model>, DbErr> {
    let mut q = Images::find();
    if let Some(u) = user_id {
        q = q.filter(image::Column::UserId.eq(u));
    }
    // Databases take 64-bit signed numbers; SQLite also wants a LIMIT before any OFFSET.
    let most = i64::MAX as u64;
    let offset = offset.map(|o| o.min(most));
    let limit = limit.map(|l| l.min(most)).or(offset.map(|_| most));
    q.order_by_desc(image::Column::CreatedAt)
        .order_by_asc(image::Column::Id)
        .limit(limit)
        .offset(offset)
        .all(db)
        .await
}

pub async fn delete(db: &impl ConnectionTrait, id: &str) -> Result<(), DbErr> {
    Images::delete_by_id(id.to_string())
        .exec(db)
        .await
        .map(|_| ())
}

/// Marks a slim as requested when none is running or done; `false` when the state did not allow it.
pub async fn request_slim(db: &impl ConnectionTrait, id: &str, now: i64) -> Result<bool, DbErr> {
    let res = slim_state(
        Images::update_many(),
        (SlimStatus::Slimming, CompressStatus::InProgress),
        "compress in progress",
        now,
    )
    .col_expr(image::Column::CompressRate, Expr::value(0.0))
    .filter(image::Column::Id.eq(id))
    .filter(image::Column::SlimStatus.is_in([SlimStatus::NotSlimmed, SlimStatus::Failed]))
    .exec(db)
    .await?;
    Ok(res.rows_affected == 1)
}

/// Marks a fresh check as requested unless one is pending or running (a check in progress always
/// has a check job); `false` when one is.
pub async fn request_check(
    db: &impl ConnectionTrait,
    id: &str,
    in_progress_msg: &str,
    now: i64,
) -> Result<bool, DbErr> {
    let res = Images::update_many()
        .col_expr(
            image::Column::CheckStatus,
            Expr::value(CheckStatus::InProgress),
        )
        .col_expr(
            image::Column::CheckResult,
            Expr::value(entity::check::result::IN_PROGRESS),
        )
        .col_expr(image::Column::CheckMsg, Expr::value(in_progress_msg))
        .col_expr(image::Column::UpdatedAt, Expr::value(now))
        .filter(image::Column::Id.eq(id))
        .filter(image::Column::CheckStatus.ne(CheckStatus::InProgress))
        .exec(db)
        .await?;
    Ok(res.rows_affected == 1)
}

/// Records that an image cannot be slimmed.
pub async fn refuse_slim(
    db: &impl ConnectionTrait,
    id: &str,
    msg: &str,
    now: i64,
) -> Result<(), DbErr> {
    slim_state(
        Images::update_many(),
        (SlimStatus::Failed, CompressStatus::Failed),
        msg,
        now,
    )
    .filter(image::Column::Id.eq(id))
    .exec(db)
    .await
    .map(|_| ())
}

/// Stores a CRC-32 computed after the fact.
pub async fn set_crc32(db: &impl ConnectionTrait, id: &str, crc: u32) -> Result<(), DbErr> {
    Images::update_many()
        .col_expr(image::Column::Crc32, Expr::value(crc as i64))
        .filter(image::Column::Id.eq(id))
        .exec(db)
        .await
        .map(|_| ())
}

/// Sets a slim's state: `slimStatus`, `compressStatus` and `compressMsg` (and `updated_at`).
fn slim_state(
    q: sea_orm::UpdateMany<Images>,
    (slim, compress): (SlimStatus, CompressStatus),
    msg: impl Into<sea_orm::Value>,
    now: i64,
) -> sea_orm::UpdateMany<Images> {
    q.col_expr(image::Column::SlimStatus, Expr::value(slim))
        .col_expr(image::Column::CompressStatus, Expr::value(compress))
        .col_expr(image::Column::CompressMsg, Expr::value(msg))
        .col_expr(image::Column::UpdatedAt, Expr::value(now))
}

/// Sets the columns that describe a check report, but for its message (callers differ there).
fn with_report(
    q: sea_orm::UpdateMany<Images>,
    r: &entity::check::CheckReport,
) -> sea_orm::UpdateMany<Images> {
    q.col_expr(image::Column::CheckStatus, Expr::value(r.status))
        .col_expr(image::Column::CheckResult, Expr::value(r.check_result))
        .col_expr(image::Column::Format, Expr::value(r.format.clone()))
        .col_expr(image::Column::VirtualSize, Expr::value(r.virtual_size_gib))
        .col_expr(
            image::Column::ImageEndOffset,
            Expr::value(r.image_end_offset.clone()),
        )
        .col_expr(
            image::Column::CheckErrors,
            Expr::value(r.check_errors.clone()),
        )
}

/// Digests a check computed over the bytes it read (lower-case hex).
pub struct CheckHashes<'a> {
    pub md5: &'a str,
    pub sha256: &'a str,
    /// They are the first computed of the original as received: recorded as such too.
    pub original: bool,
}

/// Which of an image's objects a check read.
#[derive(Clone, Copy, Debug)]
pub enum Checked<'a> {
    /// None: the check gave up without a verdict. Its failure is recorded only while the image
    /// still shows a check in progress, never over a result recorded meanwhile (the slimmed
    /// copy's check, when a slim finished while the check was being retried).
    Unread,
    /// The original, served while the image has no slimmed copy.
    Original,
    /// The slimmed copy under this key.
    Slimmed(&'a str),
}

/// Records a check's outcome (and the digests of the checked bytes, when known), unless the
/// image serves other bytes than those `checked` by now (a slim finished while the check
/// ran: the slim's own check describes the image). `false` then, or when the image is gone;
/// digests of the original as received (`CheckHashes::original`) are recorded all the same.
pub async fn set_check(
    db: &impl ConnectionTrait,
    id: &str,
    r: &entity::check::CheckReport,
    hashes: Option<&CheckHashes<'_>>,
    checked: Checked<'_>,
    now: i64,
) -> Result<bool, DbErr> {
    let mut q = with_report(Images::update_many(), r)
        .col_expr(
            image::Column::CheckMsg,
            Expr::value(r.msg.chars().take(500).collect::<String>()),
        )
        .col_expr(image::Column::UpdatedAt, Expr::value(now));
    let original = hashes.filter(|h| h.original);
    if let Some(h) = hashes {
        q = q
            .col_expr(image::Column::Checksum, Expr::value(h.md5))
            .col_expr(image::Column::Sha256, Expr::value(h.sha256));
    }
    if let Some(h) = original {
        q = q
            .col_expr(image::Column::OriginalMd5, Expr::value(h.md5))
            .col_expr(image::Column::OriginalSha256, Expr::value(h.sha256));
    }
    q = q.filter(image::Column::Id.eq(id));
    q = match checked {
        Checked::Unread => q.filter(image::Column::CheckStatus.eq(CheckStatus::InProgress)),
        Checked::Original => q.filter(image::Column::SlimObjectKey.is_null()),
        Checked::Slimmed(key) => q.filter(image::Column::SlimObjectKey.eq(key)),
    };
    if q.exec(db).await?.rows_affected == 1 {
        return Ok(true);
    }
    if let Some(h) = original {
        Images::update_many()
            .col_expr(image::Column::OriginalMd5, Expr::value(h.md5))
            .col_expr(image::Column::OriginalSha256, Expr::value(h.sha256))
            .filter(image::Column::Id.eq(id))
            .filter(image::Column::OriginalMd5.is_null())
            .exec(db)
            .await?;
    }
    Ok(false)
}

/// Records that an image's stored bytes no longer match those recorded (found outside a check,
/// by a slim that re-hashed its input): check status 1 with `msg` and the digests found.
pub async fn set_corrupted(
    db: &impl ConnectionTrait,
    id: &str,
    msg: &str,
    found: &CheckHashes<'_>,
    now: i64,
) -> Result<(), DbErr> {
    Images::update_many()
        .col_expr(
            image::Column::CheckStatus,
            Expr::value(CheckStatus::Corrupted),
        )
        .col_expr(
            image::Column::CheckMsg,
            Expr::value(msg.chars().take(500).collect::<String>()),
        )
        .col_expr(image::Column::Checksum, Expr::value(found.md5))
        .col_expr(image::Column::Sha256, Expr::value(found.sha256))
        .col_expr(image::Column::UpdatedAt, Expr::value(now))
        .filter(image::Column::Id.eq(id))
        .exec(db)
        .await
        .map(|_| ())
}

/// Progress of a running slim (0..1).
pub async fn set_compress_rate(
    db: &impl ConnectionTrait,
    id: &str,
    rate: f64,
    now: i64,
) -> Result<(), DbErr> {
    Images::update_many()
        .col_expr(image::Column::CompressRate, Expr::value(rate))
        .col_expr(image::Column::UpdatedAt, Expr::value(now))
        .filter(image::Column::Id.eq(id))
        .filter(image::Column::SlimStatus.eq(SlimStatus::Slimming))
        .exec(db)
        .await
        .map(|_| ())
}

/// A slim that did not produce a servable image: the original stays.
pub async fn slim_failed(
    db: &impl ConnectionTrait,
    id: &str,
    compress_status: CompressStatus,
    msg: &str,
    now: i64,
) -> Result<(), DbErr> {
    let msg: String = msg.chars().take(500).collect();
    slim_state(
        Images::update_many(),
        (SlimStatus::Failed, compress_status),
        msg,
        now,
    )
    .filter(image::Column::Id.eq(id))
    .filter(image::Column::SlimStatus.eq(SlimStatus::Slimming))
    .exec(db)
    .await
    .map(|_| ())
}

/// The slimmed copy of an image.
pub struct SlimResult<'a> {
    pub key: &'a str,
    pub size: u64,
    pub crc32: u32,
    /// Lower-case hex digests of the slimmed copy.
    pub md5: &'a str,
    pub sha256: &'a str,
}

/// Points the image at its slimmed copy (served from now on, and described by the check
/// fields). `false` when the image is gone or no longer slimming.
pub async fn slim_done(
    db: &impl ConnectionTrait,
    id: &str,
    slim: &SlimResult<'_>,
    r: &entity::check::CheckReport,
    now: i64,
) -> Result<bool, DbErr> {
    let state = (SlimStatus::Slimmed, CompressStatus::Completed);
    let res = slim_state(
        with_report(Images::update_many(), r),
        state,
        "compress completed",
        now,
    )
    .col_expr(image::Column::CompressRate, Expr::value(1.0))
    .col_expr(image::Column::SlimObjectKey, Expr::value(slim.key))
    .col_expr(image::Column::SlimSizeBytes, Expr::value(slim.size as i64))
    .col_expr(image::Column::SlimCrc32, Expr::value(slim.crc32 as i64))
    .col_expr(image::Column::CheckMsg, Expr::value(r.msg.clone()))
    .col_expr(image::Column::Checksum, Expr::value(slim.md5))
    .col_expr(image::Column::Sha256, Expr::value(slim.sha256))
    .col_expr(image::Column::SlimMd5, Expr::value(slim.md5))
    .col_expr(image::Column::SlimSha256, Expr::value(slim.sha256))
    .col_expr(image::Column::SlimmedAt, Expr::value(now))
    .filter(image::Column::Id.eq(id))
    .filter(image::Column::SlimStatus.eq(SlimStatus::Slimming))
    .exec(db)
    .await?;
    Ok(res.rows_affected == 1)
}
