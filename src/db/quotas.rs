//! Queries on `quotas` and `quota_reservations`, and a user's usage (see the migration
//! `m20261201_000007_users` for the design: the `quotas` row serialises a user's reservations).

use entity::{
    image::{self, Entity as Images},
    quota::{self, Entity as Quotas},
    quota_reservation::{self, Entity as Reservations},
    upload_part::{self, Entity as Parts},
    upload_session::{self, Entity as Sessions},
};
use sea_orm::{
    sea_query::{
        Alias, Expr, Func, OnConflict, Query, SelectStatement, SimpleExpr, SubQueryStatement,
    },
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, FromQueryResult, QueryFilter,
};

use entity::status::SessionState;

/// What a user holds, read in one statement (one snapshot: a request that turns its
/// reservation into an image or a chunk between two reads cannot be missed by both).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, FromQueryResult)]
pub struct Usage {
    /// Bytes of the user's images (as uploaded; slimmed copies are not counted).
    pub image_bytes: i64,
    /// How many images the user has.
    pub images: i64,
    /// Bytes of the chunks of the user's uploads that are not merged yet.
    pub chunk_bytes: i64,
    /// How many of the user's chunked uploads are not merged yet.
    pub open_uploads: i64,
    /// Bytes held by the user's live reservations (requests in flight).
    pub reserved_bytes: i64,
    /// Images held by the user's live reservations.
    pub reserved_images: i64,
}

/// `CAST(COALESCE(expr, 0) AS BIGINT)`: PostgreSQL sums BIGINTs as NUMERIC.
fn bigint(expr: SimpleExpr) -> SimpleExpr {
    Func::cast_as(
        Func::coalesce([expr, Expr::value(0i64)]),
        Alias::new("BIGINT"),
    )
    .into()
}

fn sub(select: SelectStatement) -> SimpleExpr {
    SimpleExpr::SubQuery(None, Box::new(SubQueryStatement::SelectStatement(select)))
}

/// Sessions of `user` that are not merged yet (`open` or `merging`: a merge records the
/// image and completes its session in one transaction).
fn unmerged_sessions(user: &str) -> SelectStatement {
    Query::select()
        .column(upload_session::Column::Id)
        .from(Sessions)
        .and_where(upload_session::Column::Owner.eq(user))
        .and_where(upload_session::Column::State.ne(SessionState::Completed))
        .to_owned()
}

/// What `user` holds at `now` (Unix seconds), not counting the reservation `except`.
pub async fn usage(
    db: &impl ConnectionTrait,
    user: &str,
    now: i64,
    except: Option<&str>,
) -> Result<Usage, DbErr> {
    let images = |e: SimpleExpr| {
        sub(Query::select()
            .expr(bigint(e))
            .from(Images)
            .and_where(image::Column::UserId.eq(user))
            .to_owned())
    };
    let reservations = |col: quota_reservation::Column| {
        let mut q = Query::select()
            .expr(bigint(Expr::col(col).sum()))
            .from(Reservations)
            .and_where(quota_reservation::Column::UserId.eq(user))
            .and_where(quota_reservation::Column::ExpiresAt.gt(now))
            .to_owned();
        if let Some(id) = except {
            q.and_where(quota_reservation::Column::Id.ne(id));
        }
        sub(q)
    };
    let chunk_bytes = sub(Query::select()
        .expr(bigint(Expr::col(upload_part::Column::SizeBytes).sum()))
        .from(Parts)
        .and_where(upload_part::Column::SessionId.in_subquery(unmerged_sessions(user)))
        .to_owned());
    let open_uploads = sub(Query::select()
        .expr(bigint(Expr::col(upload_session::Column::Id).count()))
        .from(Sessions)
        .and_where(upload_session::Column::Owner.eq(user))
        .and_where(upload_session::Column::State.ne(SessionState::Completed))
        .to_owned());
    let stmt = Query::select()
        .expr_as(
            images(Expr::col(image::Column::SizeBytes).sum()),
            Alias::new("image_bytes"),
        )
        .expr_as(
            images(Expr::col(image::Column::Id).count()),
            Alias::new("images"),
        )
        .expr_as(chunk_bytes, Alias::new("chunk_bytes"))
        .expr_as(open_uploads, Alias::new("open_uploads"))
        .expr_as(
            reservations(quota_reservation::Column::Bytes),
            Alias::new("reserved_bytes"),
        )
        .expr_as(
            reservations(quota_reservation::Column::Images),
            Alias::new("reserved_images"),
        )
        .to_owned();
    let backend = db.get_database_backend();
    let row = db.query_one(backend.build(&stmt)).await?;
    match row {
        Some(r) => Usage::from_query_result(&r, ""),
        None => Ok(Usage::default()),
    }
}

/// The user's own limits, if an admin set any (or a reservation created the row).
pub async fn find(db: &impl ConnectionTrait, user: &str) -> Result<Option<quota::Model>, DbErr> {
    Quotas::find_by_id(user.to_string()).one(db).await
}

/// Creates the user's row (no limits of its own) unless it exists.
async fn insert_if_absent(db: &impl ConnectionTrait, user: &str, now: i64) -> Result<(), DbErr> {
    let row = quota::ActiveModel {
        user_id: Set(user.to_string()),
        max_bytes: Set(None),
        max_images: Set(None),
        revision: Set(0),
        updated_at: Set(now),
    };
    Quotas::insert(row)
        .on_conflict(
            OnConflict::column(quota::Column::UserId)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(db)
        .await
        .map(|_| ())
}

/// Takes the user's quota lock for the rest of the transaction `txn`: makes sure the row
/// exists, then bumps its revision (the row lock on PostgreSQL, the write lock on SQLite, so
/// the usage read after it cannot change under a concurrent reservation). Returns the row.
pub async fn lock(txn: &impl ConnectionTrait, user: &str, now: i64) -> Result<quota::Model, DbErr> {
    insert_if_absent(txn, user, now).await?;
    Quotas::update_many()
        .col_expr(
            quota::Column::Revision,
            Expr::col(quota::Column::Revision).add(1),
        )
        .filter(quota::Column::UserId.eq(user))
        .exec(txn)
        .await?;
    find(txn, user)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(format!("quota row of {user:?}")))
}

/// Sets (or clears, with `None`) the user's own limits.
pub async fn set_limits(
    db: &impl ConnectionTrait,
    user: &str,
    max_bytes: Option<i64>,
    max_images: Option<i64>,
    now: i64,
) -> Result<(), DbErr> {
    insert_if_absent(db, user, now).await?;
    Quotas::update_many()
        .col_expr(quota::Column::MaxBytes, Expr::value(max_bytes))
        .col_expr(quota::Column::MaxImages, Expr::value(max_images))
        .col_expr(quota::Column::UpdatedAt, Expr::value(now))
        .filter(quota::Column::UserId.eq(user))
        .exec(db)
        .await
        .map(|_| ())
}

/// Records (or replaces) reservation `id`: `bytes` and `images` held by `user` until
/// `expires_at` (Unix seconds).
pub async fn put_reservation(
    db: &impl ConnectionTrait,
    id: &str,
    user: &str,
    bytes: i64,
    images: i32,
    expires_at: i64,
) -> Result<(), DbErr> {
    let row = quota_reservation::ActiveModel {
        id: Set(id.to_string()),
        user_id: Set(user.to_string()),
        bytes: Set(bytes),
        images: Set(images),
        expires_at: Set(expires_at),
    };
    Reservations::insert(row)
        .on_conflict(
            OnConflict::column(quota_reservation::Column::Id)
                .update_columns([
                    quota_reservation::Column::UserId,
                    quota_reservation::Column::Bytes,
                    quota_reservation::Column::Images,
                    quota_reservation::Column::ExpiresAt,
                ])
                .to_owned(),
        )
        .exec_without_returning(db)
        .await
        .map(|_| ())
}

/// Extends a live reservation's lease; `false` when it is gone or already expired (an
/// expired one stays expired: its room may have been granted to another request).
pub async fn renew_reservation(
    db: &impl ConnectionTrait,
    id: &str,
    now: i64,
    expires_at: i64,
) -> Result<bool, DbErr> {
    let res = Reservations::update_many()
        .col_expr(
            quota_reservation::Column::ExpiresAt,
            Expr::value(expires_at),
        )
        .filter(quota_reservation::Column::Id.eq(id))
        .filter(quota_reservation::Column::ExpiresAt.gt(now))
        .exec(db)
        .await?;
    Ok(res.rows_affected == 1)
}

pub async fn delete_reservation(db: &impl ConnectionTrait, id: &str) -> Result<(), DbErr> {
    Reservations::delete_by_id(id.to_string())
        .exec(db)
        .await
        .map(|_| ())
}

/// Deletes reservations whose lease ended before `now` (their requests were lost); returns
/// how many.
pub async fn prune_expired(db: &impl ConnectionTrait, now: i64) -> Result<u64, DbErr> {
    let res = Reservations::delete_many()
        .filter(quota_reservation::Column::ExpiresAt.lte(now))
        .exec(db)
        .await?;
    Ok(res.rows_affected)
}
