//! Queries on `upload_sessions` and `upload_parts`.

use entity::{
    part_writer::{self, Entity as Writers},
    upload_cancel::{self, Entity as Cancels},
    upload_part::{self, Entity as Parts},
    upload_session::{self, Entity as Sessions},
};
use sea_orm::{
    sea_query::{Expr, OnConflict, SimpleExpr},
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    TransactionTrait,
};

use entity::status::SessionState::{self, Merging, Open};

pub async fn find(
    db: &impl ConnectionTrait,
    identifier: &str,
) -> Result<Option<upload_session::Model>, DbErr> {
    Sessions::find()
        .filter(upload_session::Column::Identifier.eq(identifier))
        .one(db)
        .await
}

/// Inserts a session unless one exists for its identifier; `true` when this one was inserted.
pub async fn insert_if_absent(
    db: &impl ConnectionTrait,
    s: upload_session::ActiveModel,
) -> Result<bool, DbErr> {
    let res = Sessions::insert(s)
        .on_conflict(
            OnConflict::column(upload_session::Column::Identifier)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    Ok(res == 1)
}

/// A part as the store took it.
pub struct NewPart<'a> {
    pub number: u32,
    pub size: u64,
    pub etag: &'a str,
    pub crc32: u32,
    /// Held as a staging object rather than sent as a multipart part of its own.
    pub staged: bool,
    /// The checksum the store verified when it took the part.
    pub checksum: Option<&'a str>,
}

/// Records a part, replacing an earlier one of that number.
pub async fn upsert_part(
    db: &impl ConnectionTrait,
    session_id: &str,
    p: NewPart<'_>,
    now: i64,
) -> Result<(), DbErr> {
    write_part(db, session_id, p, now).await?;
    touch(db, session_id, now).await
}

/// Records part `p` (inserted, or replacing the part of its number) of a session that is still
/// `open`, in one transaction whose first step touches the session on that condition: a merge
/// or a cancel that took the session meanwhile wins (its row is locked or changed first).
/// `false` when the session is no longer open: nothing is recorded. The quota `reservation`
/// that held the part's bytes while it was received is deleted in the same transaction, so
/// that a user's usage never counts them twice.
pub async fn upsert_part_if_open<C>(
    db: &C,
    session_id: &str,
    p: NewPart<'_>,
    reservation: Option<&str>,
    now: i64,
) -> Result<bool, DbErr>
where
    C: ConnectionTrait + TransactionTrait,
{
    let txn = db.begin().await?;
    let touched = Sessions::update_many()
        .col_expr(upload_session::Column::UpdatedAt, Expr::value(now))
        .filter(upload_session::Column::Id.eq(session_id))
        .filter(upload_session::Column::State.eq(Open))
        .exec(&txn)
        .await?
        .rows_affected;
    if touched == 0 {
        txn.rollback().await?;
        return Ok(false);
    }
    write_part(&txn, session_id, p, now).await?;
    if let Some(id) = reservation {
        crate::db::quotas::delete_reservation(&txn, id).await?;
    }
    txn.commit().await?;
    Ok(true)
}

/// Inserts part `p`, or replaces the part of its number.
async fn write_part(
    db: &impl ConnectionTrait,
    session_id: &str,
    p: NewPart<'_>,
    now: i64,
) -> Result<(), DbErr> {
    let part = upload_part::ActiveModel {
        session_id: Set(session_id.to_string()),
        part_number: Set(p.number as i32),
        size_bytes: Set(p.size as i64),
        etag: Set(p.etag.to_string()),
        crc32: Set(p.crc32 as i64),
        staged: Set(p.staged),
        checksum: Set(p.checksum.map(str::to_string)),
        updated_at: Set(now),
    };
    Parts::insert(part)
        .on_conflict(
            OnConflict::columns([
                upload_part::Column::SessionId,
                upload_part::Column::PartNumber,
            ])
            .update_columns([
                upload_part::Column::SizeBytes,
                upload_part::Column::Etag,
                upload_part::Column::Crc32,
                upload_part::Column::Staged,
                upload_part::Column::Checksum,
                upload_part::Column::UpdatedAt,
            ])
            .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    Ok(())
}

/// Marks a session as changed at `now` (seconds), whatever its state.
pub async fn touch(db: &impl ConnectionTrait, session_id: &str, now: i64) -> Result<(), DbErr> {
    Sessions::update_many()
        .col_expr(upload_session::Column::UpdatedAt, Expr::value(now))
        .filter(upload_session::Column::Id.eq(session_id))
        .exec(db)
        .await
        .map(|_| ())
}

/// Marks an open session as sent to at `now` (seconds): a chunk is arriving for it, so it is
/// not abandoned (see `stale_open`). `false` when it is no longer open (a merge's or cancel's
/// claim, whose lease the same column keeps, is never extended by it).
pub async fn touch_open(
    db: &impl ConnectionTrait,
    session_id: &str,
    now: i64,
) -> Result<bool, DbErr> {
    let res = Sessions::update_many()
        .col_expr(upload_session::Column::UpdatedAt, Expr::value(now))
        .filter(upload_session::Column::Id.eq(session_id))
        .filter(upload_session::Column::State.eq(Open))
        .exec(db)
        .await?;
    Ok(res.rows_affected == 1)
}

pub async fn parts(
    db: &impl ConnectionTrait,
    session_id: &str,
) -> Result<Vec<upload_part::Model>, DbErr> {
    Parts::find()
        .filter(upload_part::Column::SessionId.eq(session_id))
        .order_by_asc(upload_part::Column::PartNumber)
        .all(db)
        .await
}

/// Who claims a merge, and (from a merge request) what it was asked.
pub struct MergeClaim<'a> {
    /// A fresh value per claim; later writes of the merge are conditional on it.
    pub token: &'a str,
    /// The request; `None` keeps the one recorded (a recovery).
    pub request: Option<MergeRequest<'a>>,
}

/// What a merge request asked for, recorded so that another process can finish the merge.
#[derive(Clone, Copy)]
pub struct MergeRequest<'a> {
    pub file_name: &'a str,
    pub user_id: &'a str,
    /// The whole-image checksum to verify (`md5:<hex>` or `sha256:<hex>`).
    pub checksum: Option<&'a str>,
}

/// Moves a session from `open` (or from a `merging` whose merger went silent before
/// `stale_before`) to `merging`, owned by `claim.token`. `true` when this caller now owns the
/// merge.
pub async fn claim_merge(
    db: &impl ConnectionTrait,
    session_id: &str,
    now: i64,
    stale_before: i64,
    claim: &MergeClaim<'_>,
) -> Result<bool, DbErr> {
    use upload_session::Column as C;
    let mut update = Sessions::update_many()
        .col_expr(C::State, Expr::value(Merging))
        .col_expr(C::MergeToken, Expr::value(claim.token))
        .col_expr(C::UpdatedAt, Expr::value(now));
    if let Some(r) = claim.request {
        update = update
            .col_expr(C::MergeFileName, Expr::value(r.file_name))
            .col_expr(C::MergeUserId, Expr::value(r.user_id))
            .col_expr(C::MergeChecksum, Expr::value(r.checksum));
    }
    let res = update
        .filter(C::Id.eq(session_id))
        .filter(
            C::State
                .eq(Open)
                .or(C::State.eq(Merging).and(C::UpdatedAt.lt(stale_before))),
        )
        .exec(db)
        .await?;
    Ok(res.rows_affected == 1)
}

/// Claims an open session untouched since `before` (to expire it), re-checked in the same
/// statement so that a chunk arriving meanwhile wins. `true` when `token` now owns it.
pub async fn claim_stale_open(
    db: &impl ConnectionTrait,
    session_id: &str,
    before: i64,
    token: &str,
    now: i64,
) -> Result<bool, DbErr> {
    use upload_session::Column as C;
    let res = Sessions::update_many()
        .col_expr(C::State, Expr::value(Merging))
        .col_expr(C::MergeToken, Expr::value(token))
        // Fresh, so the merge recovery leaves it to this claimer.
        .col_expr(C::UpdatedAt, Expr::value(now))
        .filter(C::Id.eq(session_id))
        .filter(C::State.eq(Open))
        .filter(C::UpdatedAt.lt(before))
        .exec(db)
        .await?;
    Ok(res.rows_affected == 1)
}

/// The session `session_id` while it is being merged under `token` (every write of a merge
/// is conditional on it, so a merger that was taken over writes nothing).
fn merge_of(session_id: &str, token: &str) -> sea_orm::Condition {
    use upload_session::Column as C;
    sea_orm::Condition::all()
        .add(C::Id.eq(session_id))
        .add(C::State.eq(Merging))
        .add(C::MergeToken.eq(token))
}

/// Sets `columns` of the session `session_id` while it is being merged under `token`; `false`
/// (nothing written) when another merger took the session over.
async fn set_while_merging(
    db: &impl ConnectionTrait,
    session_id: &str,
    token: &str,
    columns: impl IntoIterator<Item = (upload_session::Column, SimpleExpr)>,
) -> Result<bool, DbErr> {
    let mut update = Sessions::update_many().filter(merge_of(session_id, token));
    for (column, value) in columns {
        update = update.col_expr(column, value);
    }
    Ok(update.exec(db).await?.rows_affected == 1)
}

/// Renews the merge lease of `token`; `false` when another merger took the session over.
pub async fn renew_merge(
    db: &impl ConnectionTrait,
    session_id: &str,
    token: &str,
    now: i64,
) -> Result<bool, DbErr> {
    let columns = [(upload_session::Column::UpdatedAt, Expr::value(now))];
    set_while_merging(db, session_id, token, columns).await
}

/// Ends the merge of `token`: the session becomes `state` (`completed`, or `open` again) and
/// forgets the merge request.
/// `false` (nothing written) when another merger took the session over.
pub async fn end_merge(
    db: &impl ConnectionTrait,
    session_id: &str,
    token: &str,
    state: SessionState,
    now: i64,
) -> Result<bool, DbErr> {
    use upload_session::Column as C;
    let none = || Expr::value(Option::<String>::None);
    let columns = [
        (C::State, Expr::value(state)),
        (C::MergeToken, none()),
        (C::MergeFileName, none()),
        (C::MergeUserId, none()),
        (C::MergeUnpacked, none()),
        (C::MergeChecksum, none()),
        (C::UpdatedAt, Expr::value(now)),
    ];
    set_while_merging(db, session_id, token, columns).await
}

/// Points the session being merged by `token` at a new multipart upload of a new image id and
/// key (its chunks were stored again there). `false` (nothing written) when another merger
/// took it over.
pub async fn replace_upload(
    db: &impl ConnectionTrait,
    session_id: &str,
    token: &str,
    upload: (&str, &str, &str),
) -> Result<bool, DbErr> {
    use upload_session::Column as C;
    let (upload_id, image_id, object_key) = upload;
    let columns = [
        (C::UploadId, Expr::value(upload_id)),
        (C::ImageId, Expr::value(image_id)),
        (C::ObjectKey, Expr::value(object_key)),
    ];
    set_while_merging(db, session_id, token, columns).await
}

/// Records the totals a client declared (`totalSize` in bytes, `totalChunks`) where none was
/// recorded yet; the caller compares with what was recorded before.
pub async fn record_totals(
    db: &impl ConnectionTrait,
    session_id: &str,
    total_size: Option<u64>,
    total_chunks: Option<u32>,
) -> Result<(), DbErr> {
    use upload_session::Column as C;
    if let Some(size) = total_size {
        Sessions::update_many()
            .col_expr(C::TotalSize, Expr::value(size as i64))
            .filter(C::Id.eq(session_id))
            .filter(C::TotalSize.is_null())
            .exec(db)
            .await?;
    }
    if let Some(chunks) = total_chunks {
        Sessions::update_many()
            .col_expr(C::TotalChunks, Expr::value(chunks as i32))
            .filter(C::Id.eq(session_id))
            .filter(C::TotalChunks.is_null())
            .exec(db)
            .await?;
    }
    Ok(())
}

/// Records, for the merge of `token`, the image about to replace the merged archive.
/// `false` (nothing written) when another merger took the session over.
pub async fn record_unpacked(
    db: &impl ConnectionTrait,
    session_id: &str,
    token: &str,
    unpacked: &str,
) -> Result<bool, DbErr> {
    let columns = [(upload_session::Column::MergeUnpacked, Expr::value(unpacked))];
    set_while_merging(db, session_id, token, columns).await
}

/// Deletes a session being merged by `token`, with its part rows. `false` (nothing deleted)
/// when another merger took it over.
pub async fn delete_merging(
    db: &impl ConnectionTrait,
    session_id: &str,
    token: &str,
) -> Result<bool, DbErr> {
    use upload_session::Column as C;
    let res = Sessions::delete_many()
        .filter(C::Id.eq(session_id))
        .filter(C::MergeToken.eq(token))
        .exec(db)
        .await?;
    if res.rows_affected == 1 {
        Parts::delete_many()
            .filter(upload_part::Column::SessionId.eq(session_id))
            .exec(db)
            .await?;
    }
    Ok(res.rows_affected == 1)
}

/// Merges whose merger stopped renewing its lease before `before` (its process died).
pub async fn stale_merges(
    db: &impl ConnectionTrait,
    before: i64,
) -> Result<Vec<upload_session::Model>, DbErr> {
    use upload_session::Column as C;
    Sessions::find()
        .filter(C::State.eq(Merging).and(C::UpdatedAt.lt(before)))
        .all(db)
        .await
}

/// Deletes a session and its part rows.
pub async fn delete(db: &impl ConnectionTrait, session_id: &str) -> Result<(), DbErr> {
    Parts::delete_many()
        .filter(upload_part::Column::SessionId.eq(session_id))
        .exec(db)
        .await?;
    Sessions::delete_by_id(session_id.to_string())
        .exec(db)
        .await
        .map(|_| ())
}

/// Deletes the completed session rows that point at an image (when the image is deleted).
pub async fn delete_for_image(db: &impl ConnectionTrait, image_id: &str) -> Result<(), DbErr> {
    for s in Sessions::find()
        .filter(upload_session::Column::ImageId.eq(image_id))
        .all(db)
        .await?
    {
        delete(db, &s.id).await?;
    }
    Ok(())
}

/// Abandoned sessions: open ones untouched since `before`.
pub async fn stale_open(
    db: &impl ConnectionTrait,
    before: i64,
) -> Result<Vec<upload_session::Model>, DbErr> {
    use upload_session::Column as C;
    Sessions::find()
        .filter(C::State.eq(Open).and(C::UpdatedAt.lt(before)))
        .all(db)
        .await
}

/// Which of `upload_ids` a session records (in any state).
pub async fn known_upload_ids(
    db: &impl ConnectionTrait,
    upload_ids: &[String],
) -> Result<std::collections::HashSet<String>, DbErr> {
    use sea_orm::QuerySelect;
    let mut known = std::collections::HashSet::new();
    // A bounded IN list per query (databases limit the parameters of one statement).
    for ids in upload_ids.chunks(500) {
        let found: Vec<String> = Sessions::find()
            .select_only()
            .column(upload_session::Column::UploadId)
            .filter(upload_session::Column::UploadId.is_in(ids.iter().cloned()))
            .into_tuple()
            .all(db)
            .await?;
        known.extend(found);
    }
    Ok(known)
}

/// Forgets parts of a session (they must be sent again).
pub async fn delete_parts(
    db: &impl ConnectionTrait,
    session_id: &str,
    numbers: &[u32],
) -> Result<(), DbErr> {
    Parts::delete_many()
        .filter(upload_part::Column::SessionId.eq(session_id))
        .filter(upload_part::Column::PartNumber.is_in(numbers.iter().map(|n| *n as i32)))
        .exec(db)
        .await
        .map(|_| ())
}

/// How many uploads are open (or merging): neither merged nor cancelled yet.
pub async fn count_open(db: &impl ConnectionTrait) -> Result<u64, DbErr> {
    Sessions::find()
        .filter(upload_session::Column::State.is_in([Open, Merging]))
        .count(db)
        .await
}

/// How many uploads of `owner` are open or merging.
pub async fn count_open_of(db: &impl ConnectionTrait, owner: &str) -> Result<u64, DbErr> {
    Sessions::find()
        .filter(upload_session::Column::State.is_in([Open, Merging]))
        .filter(upload_session::Column::Owner.eq(owner))
        .count(db)
        .await
}

/// The order of cancels so far: the highest `upload_cancels.id` (0 before the first cancel).
/// A chunk request notes it when it begins; see [`cancelled_since`].
pub async fn cancel_mark(db: &impl ConnectionTrait) -> Result<i64, DbErr> {
    use sea_orm::QuerySelect;
    let max: Option<Option<i64>> = Cancels::find()
        .select_only()
        .column_as(upload_cancel::Column::Id.max(), "max_id")
        .into_tuple()
        .one(db)
        .await?;
    Ok(max.flatten().unwrap_or(0))
}

/// Remembers a cancel of the upload under `identifier` (a session key), ordered after every
/// chunk request that began before it.
pub async fn record_cancel(
    db: &impl ConnectionTrait,
    identifier: &str,
    now: i64,
) -> Result<(), DbErr> {
    Cancels::insert(upload_cancel::ActiveModel {
        identifier: Set(identifier.to_string()),
        cancelled_at: Set(now),
        ..Default::default()
    })
    .exec_without_returning(db)
    .await
    .map(|_| ())
}

/// Whether the upload under `identifier` was cancelled after [`cancel_mark`] returned `mark`.
pub async fn cancelled_since(
    db: &impl ConnectionTrait,
    identifier: &str,
    mark: i64,
) -> Result<bool, DbErr> {
    use upload_cancel::Column as C;
    Ok(Cancels::find()
        .filter(C::Identifier.eq(identifier).and(C::Id.gt(mark)))
        .count(db)
        .await?
        > 0)
}

/// Forgets cancels made before `before` (Unix seconds); returns how many.
pub async fn prune_cancels(db: &impl ConnectionTrait, before: i64) -> Result<u64, DbErr> {
    Cancels::delete_many()
        .filter(upload_cancel::Column::CancelledAt.lt(before))
        .exec(db)
        .await
        .map(|r| r.rows_affected)
}

/// Takes the right to store chunk `number` of session `session_id` for the request `token`,
/// until `expires_at` (Unix seconds), when no other request holds it: a holder whose lease
/// ended before `now` lost it. `true` when `token` holds it now.
pub async fn take_part_writer(
    db: &impl ConnectionTrait,
    session_id: &str,
    number: u32,
    token: &str,
    now: i64,
    expires_at: i64,
) -> Result<bool, DbErr> {
    use part_writer::Column as C;
    Writers::delete_many()
        .filter(C::SessionId.eq(session_id))
        .filter(C::PartNumber.eq(number as i32))
        .filter(C::ExpiresAt.lte(now))
        .exec(db)
        .await?;
    let row = part_writer::ActiveModel {
        session_id: Set(session_id.to_string()),
        part_number: Set(number as i32),
        token: Set(token.to_string()),
        expires_at: Set(expires_at),
    };
    let inserted = Writers::insert(row)
        .on_conflict(
            OnConflict::columns([C::SessionId, C::PartNumber])
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    Ok(inserted == 1)
}

/// Extends the leases of the writers `token` holds in `session_id`; `false` when it holds
/// none any longer.
pub async fn renew_part_writers(
    db: &impl ConnectionTrait,
    session_id: &str,
    token: &str,
    now: i64,
    expires_at: i64,
) -> Result<bool, DbErr> {
    use part_writer::Column as C;
    let res = Writers::update_many()
        .col_expr(C::ExpiresAt, Expr::value(expires_at))
        .filter(C::SessionId.eq(session_id))
        .filter(C::Token.eq(token))
        .filter(C::ExpiresAt.gt(now))
        .exec(db)
        .await?;
    Ok(res.rows_affected > 0)
}

/// Lets go of the chunks of `session_id` that `token` holds.
pub async fn end_part_writers(
    db: &impl ConnectionTrait,
    session_id: &str,
    token: &str,
) -> Result<(), DbErr> {
    use part_writer::Column as C;
    Writers::delete_many()
        .filter(C::SessionId.eq(session_id))
        .filter(C::Token.eq(token))
        .exec(db)
        .await
        .map(|_| ())
}

/// Deletes writers whose lease ended before `before` (their requests' replicas died).
pub async fn prune_part_writers(db: &impl ConnectionTrait, before: i64) -> Result<u64, DbErr> {
    Writers::delete_many()
        .filter(part_writer::Column::ExpiresAt.lt(before))
        .exec(db)
        .await
        .map(|r| r.rows_affected)
}

/// The largest chunk (bytes) held by the open uploads `owner` owns (0 without any).
pub async fn largest_part_of(db: &impl ConnectionTrait, owner: &str) -> Result<u64, DbErr> {
    use sea_orm::QuerySelect;
    let sessions: Vec<String> = Sessions::find()
        .select_only()
        .column(upload_session::Column::Id)
        .filter(upload_session::Column::Owner.eq(owner))
        .into_tuple()
        .all(db)
        .await?;
    if sessions.is_empty() {
        return Ok(0);
    }
    let max: Option<Option<i64>> = Parts::find()
        .select_only()
        .column_as(upload_part::Column::SizeBytes.max(), "max_size")
        .filter(upload_part::Column::SessionId.is_in(sessions))
        .into_tuple()
        .one(db)
        .await?;
    Ok(max.flatten().unwrap_or(0).max(0) as u64)
}
