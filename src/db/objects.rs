//! Queries on `object_reads` and `object_deletes`: downloads in flight hold their objects
//! against a delete (see the migration `m20261206_000010_object_reads` for the design).

use entity::{
    object_delete::{self, Entity as Deletes},
    object_read::{self, Entity as Reads},
};
use sea_orm::{
    sea_query::{Expr, OnConflict, Query},
    ActiveValue::Set,
    ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, PaginatorTrait, QueryFilter,
    QuerySelect,
};

/// An object, as `(bucket, key)`.
pub type ObjectName = (String, String);

/// Records a read of `bucket`/`key` under `id`, held until `expires_at` (Unix seconds).
pub async fn begin_read(
    db: &impl ConnectionTrait,
    id: &str,
    bucket: &str,
    key: &str,
    expires_at: i64,
) -> Result<(), DbErr> {
    Reads::insert(object_read::ActiveModel {
        id: Set(id.to_string()),
        bucket: Set(bucket.to_string()),
        object_key: Set(key.to_string()),
        expires_at: Set(expires_at),
    })
    .exec_without_returning(db)
    .await
    .map(|_| ())
}

/// Extends a live read's lease; `false` when it is gone or already expired (an expired read
/// may no longer hold its object).
pub async fn renew_read(
    db: &impl ConnectionTrait,
    id: &str,
    now: i64,
    expires_at: i64,
) -> Result<bool, DbErr> {
    let res = Reads::update_many()
        .col_expr(object_read::Column::ExpiresAt, Expr::value(expires_at))
        .filter(object_read::Column::Id.eq(id))
        .filter(object_read::Column::ExpiresAt.gt(now))
        .exec(db)
        .await?;
    Ok(res.rows_affected == 1)
}

pub async fn end_read(db: &impl ConnectionTrait, id: &str) -> Result<(), DbErr> {
    Reads::delete_by_id(id.to_string())
        .exec(db)
        .await
        .map(|_| ())
}

/// Deletes reads whose lease ended before `now` (their downloads were lost); returns how many.
pub async fn prune_expired_reads(db: &impl ConnectionTrait, now: i64) -> Result<u64, DbErr> {
    let res = Reads::delete_many()
        .filter(object_read::Column::ExpiresAt.lte(now))
        .exec(db)
        .await?;
    Ok(res.rows_affected)
}

/// Whether a live read (lease past `now`) holds `bucket`/`key`.
pub async fn is_read(
    db: &impl ConnectionTrait,
    bucket: &str,
    key: &str,
    now: i64,
) -> Result<bool, DbErr> {
    use object_read::Column as C;
    Ok(Reads::find()
        .filter(C::ObjectKey.eq(key))
        .filter(C::Bucket.eq(bucket))
        .filter(C::ExpiresAt.gt(now))
        .count(db)
        .await?
        > 0)
}

/// Records that `keys` of `bucket` are to be deleted (their image is gone). Already recorded
/// keys stay as they are.
pub async fn retire(
    db: &impl ConnectionTrait,
    bucket: &str,
    keys: &[&str],
    now: i64,
) -> Result<(), DbErr> {
    if keys.is_empty() {
        return Ok(());
    }
    let rows = keys.iter().map(|k| object_delete::ActiveModel {
        bucket: Set(bucket.to_string()),
        object_key: Set(k.to_string()),
        requested_at: Set(now),
    });
    Deletes::insert_many(rows)
        .on_conflict(
            OnConflict::columns([
                object_delete::Column::Bucket,
                object_delete::Column::ObjectKey,
            ])
            .do_nothing()
            .to_owned(),
        )
        .exec_without_returning(db)
        .await
        .map(|_| ())
}

/// Whether `bucket`/`key` is to be deleted: a download must not start reading it.
pub async fn is_retired(db: &impl ConnectionTrait, bucket: &str, key: &str) -> Result<bool, DbErr> {
    use object_delete::Column as C;
    Ok(Deletes::find()
        .filter(C::Bucket.eq(bucket))
        .filter(C::ObjectKey.eq(key))
        .count(db)
        .await?
        > 0)
}

/// Up to `limit` objects to be deleted that no live read holds at `now`.
pub async fn unread_retired(
    db: &impl ConnectionTrait,
    now: i64,
    limit: u64,
) -> Result<Vec<ObjectName>, DbErr> {
    use object_delete::Column as D;
    use object_read::Column as R;
    let live = Query::select()
        .expr(Expr::val(1))
        .from(Reads)
        .and_where(Expr::col((Reads, R::Bucket)).equals((Deletes, D::Bucket)))
        .and_where(Expr::col((Reads, R::ObjectKey)).equals((Deletes, D::ObjectKey)))
        .and_where(Expr::col((Reads, R::ExpiresAt)).gt(now))
        .to_owned();
    Deletes::find()
        .select_only()
        .column(D::Bucket)
        .column(D::ObjectKey)
        .filter(Condition::all().add(Expr::exists(live).not()))
        .limit(limit)
        .into_tuple()
        .all(db)
        .await
}

/// Forgets a deleted object.
pub async fn deleted(db: &impl ConnectionTrait, bucket: &str, key: &str) -> Result<(), DbErr> {
    use object_delete::Column as C;
    Deletes::delete_many()
        .filter(C::Bucket.eq(bucket))
        .filter(C::ObjectKey.eq(key))
        .exec(db)
        .await
        .map(|_| ())
}
