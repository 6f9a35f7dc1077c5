//! Queries on `jobs`: the queue of image checks and slims.
//!
//! On PostgreSQL a job is claimed with `SELECT … FOR UPDATE SKIP LOCKED` inside a transaction,
//! so replicas claiming at once each get a different job without waiting on each other. SQLite
//! (one writer at a time, no row locks) uses a compare-and-set on the attempt counter instead.
//! Either way exactly one claimer wins a job; a worker that dies stops renewing its lease and the
//! job becomes claimable again when the lease runs out.

use entity::job::{self, Entity as Jobs};
use sea_orm::{
    sea_query::{Expr, LockBehavior, LockType},
    ActiveValue::Set,
    ColumnTrait, Condition, ConnectionTrait, DatabaseBackend, DbErr, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, TransactionTrait,
};

use entity::status::{
    JobKind,
    JobState::{self, Cancelled, Done, Failed, Queued, Running},
};

/// An update that moves a job to `state` and gives up its lease.
fn unleased(state: JobState, now: i64) -> sea_orm::UpdateMany<Jobs> {
    Jobs::update_many()
        .col_expr(job::Column::State, Expr::value(state))
        .col_expr(job::Column::LeaseOwner, Expr::value(Option::<String>::None))
        .col_expr(job::Column::LeaseUntil, Expr::value(Option::<i64>::None))
        .col_expr(job::Column::UpdatedAt, Expr::value(now))
}

/// Adds a job, due now.
pub async fn enqueue(
    db: &impl ConnectionTrait,
    kind: JobKind,
    image_id: &str,
    now: i64,
) -> Result<String, DbErr> {
    let id = uuid::Uuid::new_v4().to_string();
    let row = job::ActiveModel {
        id: Set(id.clone()),
        kind: Set(kind),
        image_id: Set(image_id.to_string()),
        state: Set(Queued),
        attempts: Set(0),
        run_after: Set(now),
        lease_owner: Set(None),
        lease_until: Set(None),
        progress: Set(0.0),
        error: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    };
    Jobs::insert(row).exec_without_returning(db).await?;
    Ok(id)
}

/// Jobs that may be claimed at `now`: queued and due, or running under an expired lease.
fn due(now: i64) -> Condition {
    Condition::any()
        .add(
            job::Column::State
                .eq(Queued)
                .and(job::Column::RunAfter.lte(now)),
        )
        .add(
            job::Column::State
                .eq(Running)
                .and(job::Column::LeaseUntil.lt(now)),
        )
}

/// Takes `candidate` for `owner`, provided nobody changed it since it was read.
async fn take(
    db: &impl ConnectionTrait,
    candidate: &job::Model,
    owner: &str,
    now: i64,
    lease_secs: i64,
) -> Result<bool, DbErr> {
    let res = Jobs::update_many()
        .col_expr(job::Column::State, Expr::value(Running))
        .col_expr(job::Column::LeaseOwner, Expr::value(owner))
        .col_expr(job::Column::LeaseUntil, Expr::value(now + lease_secs))
        .col_expr(job::Column::Attempts, Expr::value(candidate.attempts + 1))
        .col_expr(job::Column::UpdatedAt, Expr::value(now))
        .filter(job::Column::Id.eq(&candidate.id))
        .filter(job::Column::Attempts.eq(candidate.attempts))
        .filter(job::Column::State.eq(candidate.state))
        .exec(db)
        .await?;
    Ok(res.rows_affected == 1)
}

/// Claims the oldest job that is due (queued, or running under an expired lease).
pub async fn claim<C>(
    db: &C,
    owner: &str,
    now: i64,
    lease_secs: i64,
) -> Result<Option<job::Model>, DbErr>
where
    C: ConnectionTrait + TransactionTrait,
{
    if db.get_database_backend() == DatabaseBackend::Postgres {
        let txn = db.begin().await?;
        let candidate = Jobs::find()
            .filter(due(now))
            .order_by_asc(job::Column::CreatedAt)
            .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
            .one(&txn)
            .await?;
        let Some(candidate) = candidate else {
            txn.commit().await?;
            return Ok(None);
        };
        // The row is locked by this transaction: the update cannot lose.
        let won = take(&txn, &candidate, owner, now, lease_secs).await?;
        let claimed = Jobs::find_by_id(candidate.id).one(&txn).await?;
        txn.commit().await?;
        return Ok(claimed.filter(|_| won));
    }
    for _ in 0..8 {
        let Some(candidate) = Jobs::find()
            .filter(due(now))
            .order_by_asc(job::Column::CreatedAt)
            .one(db)
            .await?
        else {
            return Ok(None);
        };
        if take(db, &candidate, owner, now, lease_secs).await? {
            return Jobs::find_by_id(candidate.id).one(db).await;
        }
    }
    Ok(None)
}

/// Records the progress (0.0..=1.0) of a running job and, with `until` (Unix seconds),
/// extends its lease; `false` when the job is no longer this worker's.
pub async fn heartbeat(
    db: &impl ConnectionTrait,
    id: &str,
    owner: &str,
    until: Option<i64>,
    progress: f64,
    now: i64,
) -> Result<bool, DbErr> {
    let mut q = Jobs::update_many()
        .col_expr(job::Column::Progress, Expr::value(progress))
        .col_expr(job::Column::UpdatedAt, Expr::value(now));
    if let Some(until) = until {
        q = q.col_expr(job::Column::LeaseUntil, Expr::value(until));
    }
    let res = held_by(q, id, owner).exec(db).await?;
    Ok(res.rows_affected == 1)
}

/// Only the job `id` while `owner` runs it (its lease not lost, the job not cancelled).
fn held_by(q: sea_orm::UpdateMany<Jobs>, id: &str, owner: &str) -> sea_orm::UpdateMany<Jobs> {
    q.filter(job::Column::Id.eq(id))
        .filter(job::Column::LeaseOwner.eq(owner))
        .filter(job::Column::State.eq(Running))
}

/// Ends a job (done or failed) if this worker still holds it; a job done is all the way done
/// (`progress` 1.0).
pub async fn finish(
    db: &impl ConnectionTrait,
    id: &str,
    owner: &str,
    state: JobState,
    error: Option<&str>,
    now: i64,
) -> Result<bool, DbErr> {
    let mut q =
        unleased(state, now).col_expr(job::Column::Error, Expr::value(error.map(str::to_string)));
    if state == Done {
        q = q.col_expr(job::Column::Progress, Expr::value(1.0));
    }
    let res = held_by(q, id, owner).exec(db).await?;
    Ok(res.rows_affected == 1)
}

/// Puts a job back in the queue, due at `run_after` (a retry with backoff).
pub async fn retry_at(
    db: &impl ConnectionTrait,
    id: &str,
    owner: &str,
    run_after: i64,
    error: &str,
    now: i64,
) -> Result<(), DbErr> {
    unleased(Queued, now)
        .col_expr(job::Column::RunAfter, Expr::value(run_after))
        .col_expr(job::Column::Error, Expr::value(error))
        .filter(job::Column::Id.eq(id))
        .filter(job::Column::LeaseOwner.eq(owner))
        .exec(db)
        .await
        .map(|_| ())
}

/// Releases the jobs held by workers whose name starts with `owner` (graceful shutdown): they
/// are due again at once.
pub async fn release_owner_prefix(
    db: &impl ConnectionTrait,
    owner: &str,
    now: i64,
) -> Result<u64, DbErr> {
    let res = unleased(Queued, now)
        .col_expr(job::Column::RunAfter, Expr::value(now))
        .filter(job::Column::LeaseOwner.starts_with(owner))
        .filter(job::Column::State.eq(Running))
        .exec(db)
        .await?;
    Ok(res.rows_affected)
}

/// Cancels an image's queued and running jobs (the image is being deleted).
pub async fn cancel_for_image(
    db: &impl ConnectionTrait,
    image_id: &str,
    now: i64,
) -> Result<(), DbErr> {
    Jobs::update_many()
        .col_expr(job::Column::State, Expr::value(Cancelled))
        .col_expr(job::Column::UpdatedAt, Expr::value(now))
        .filter(job::Column::ImageId.eq(image_id))
        .filter(job::Column::State.is_in([Queued, Running]))
        .exec(db)
        .await
        .map(|_| ())
}

/// Deletes finished jobs (done, failed, cancelled) last changed before `before`; returns how
/// many. What they found lives on in the image records.
pub async fn prune_finished(db: &impl ConnectionTrait, before: i64) -> Result<u64, DbErr> {
    let res = Jobs::delete_many()
        .filter(job::Column::State.is_in([Done, Failed, Cancelled]))
        .filter(job::Column::UpdatedAt.lt(before))
        .exec(db)
        .await?;
    Ok(res.rows_affected)
}

pub async fn find(db: &impl ConnectionTrait, id: &str) -> Result<Option<job::Model>, DbErr> {
    Jobs::find_by_id(id.to_string()).one(db).await
}

/// When the image's queued job of `kind` is due next (unix seconds; its retry's `run_after`),
/// `None` when none is queued (it runs, or there is none).
pub async fn next_due(
    db: &impl ConnectionTrait,
    image_id: &str,
    kind: JobKind,
) -> Result<Option<i64>, DbErr> {
    let queued = Jobs::find()
        .filter(job::Column::ImageId.eq(image_id))
        .filter(job::Column::Kind.eq(kind))
        .filter(job::Column::State.eq(Queued))
        .order_by_asc(job::Column::RunAfter)
        .one(db)
        .await?;
    Ok(queued.map(|j| j.run_after))
}

/// Puts a job back without counting the attempt (it waits for something, e.g. a check).
pub async fn defer(
    db: &impl ConnectionTrait,
    id: &str,
    owner: &str,
    run_after: i64,
    now: i64,
) -> Result<(), DbErr> {
    unleased(Queued, now)
        .col_expr(job::Column::RunAfter, Expr::value(run_after))
        .col_expr(
            job::Column::Attempts,
            Expr::col(job::Column::Attempts).sub(1),
        )
        .filter(job::Column::Id.eq(id))
        .filter(job::Column::LeaseOwner.eq(owner))
        .exec(db)
        .await
        .map(|_| ())
}

/// How many jobs there are of each (kind, state).
pub async fn count_by_kind_state(
    db: &impl ConnectionTrait,
) -> Result<Vec<((JobKind, JobState), u64)>, DbErr> {
    let rows: Vec<(JobKind, JobState, i64)> = Jobs::find()
        .select_only()
        .column(job::Column::Kind)
        .column(job::Column::State)
        .column_as(Expr::col(job::Column::Id).count(), "n")
        .group_by(job::Column::Kind)
        .group_by(job::Column::State)
        .into_tuple()
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(kind, state, n)| ((kind, state), n.max(0) as u64))
        .collect())
}
