//! The job queue under contention, on each database: many workers claiming at once each get a
//! different job, every job is claimed exactly once, and an expired lease makes a job claimable
//! again while a live one does not.

use crate::helpers::*;
use entity::status::{JobKind, JobState};
use file_system::db::{self, jobs};
use std::collections::HashSet;

async fn queue_db(b: Backend) -> (tempfile::TempDir, sea_orm::DatabaseConnection) {
    let dir = tempfile::tempdir().unwrap();
    let url = b.new_database(dir.path()).await;
    let conn = db::connect(&url).await.unwrap();
    db::migrate(&conn).await.unwrap();
    (dir, conn)
}

/// `again`, a job of `claimed` taken over by `late` at `now + 61`: its old owner can no longer
/// finish or renew it, its new owner can (progress and lease written).
async fn an_old_owner_changes_nothing(
    conn: &sea_orm::DatabaseConnection,
    claimed: &[entity::job::Model],
    again: &entity::job::Model,
    now: i64,
) {
    // The old owner can no longer finish it.
    let old = claimed.iter().find(|j| j.id == again.id).unwrap();
    let old_owner = old.lease_owner.clone().unwrap();
    assert!(
        !jobs::finish(conn, &again.id, &old_owner, JobState::Done, None, now + 62)
            .await
            .unwrap()
    );
    // Renewals by the holder extend its lease and write its progress; the old owner's change
    // nothing.
    assert!(
        jobs::heartbeat(conn, &again.id, "late", Some(now + 200), 0.25, now + 61)
            .await
            .unwrap()
    );
    assert!(
        !jobs::heartbeat(conn, &again.id, &old_owner, Some(now + 300), 0.9, now + 61)
            .await
            .unwrap()
    );
    use sea_orm::EntityTrait;
    let row = entity::job::Entity::find_by_id(again.id.clone())
        .one(conn)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((row.progress, row.lease_until), (0.25, Some(now + 200)));
    assert!(
        jobs::finish(conn, &again.id, "late", JobState::Done, None, now + 62)
            .await
            .unwrap()
    );
}

async fn concurrent_claims_take_each_job_once(b: Backend) {
    let (_dir, conn) = queue_db(b).await;
    let now = 1_000;
    let mut ids = HashSet::new();
    for i in 0..24 {
        ids.insert(
            jobs::enqueue(&conn, JobKind::Check, &format!("img-{i}"), now)
                .await
                .unwrap(),
        );
    }
    // 24 workers on their own connections, all at once.
    let claims = futures::future::join_all((0..24).map(|w| {
        let conn = conn.clone();
        async move {
            let mut got = vec![];
            // A claimer may find nothing free for a moment (SQLite); it tries again.
            for _ in 0..50 {
                match jobs::claim(&conn, &format!("w{w}"), now, 60).await.unwrap() {
                    Some(j) => {
                        got.push(j);
                        break;
                    }
                    None => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
                }
            }
            got
        }
    }))
    .await;
    let claimed: Vec<_> = claims.into_iter().flatten().collect();
    let distinct: HashSet<_> = claimed.iter().map(|j| j.id.clone()).collect();
    assert_eq!(claimed.len(), 24, "every worker got a job");
    assert_eq!(distinct, ids, "each job went to exactly one worker");
    for j in &claimed {
        assert_eq!(j.state, JobState::Running);
        assert_eq!(j.attempts, 1);
    }
    // Nothing is left to claim while the leases live...
    assert!(jobs::claim(&conn, "late", now + 30, 60)
        .await
        .unwrap()
        .is_none());
    // ...and an expired lease is taken over, counting a second attempt.
    let again = jobs::claim(&conn, "late", now + 61, 60)
        .await
        .unwrap()
        .expect("an expired lease is claimable");
    assert_eq!(again.attempts, 2);
    assert_eq!(again.lease_owner.as_deref(), Some("late"));
    an_old_owner_changes_nothing(&conn, &claimed, &again, now).await;
}

/// Finished jobs past their retention are deleted; recent ones and live ones stay.
async fn finished_jobs_are_pruned(b: Backend) {
    let (_dir, conn) = queue_db(b).await;
    let old = jobs::enqueue(&conn, JobKind::Check, "a", 100)
        .await
        .unwrap();
    let recent = jobs::enqueue(&conn, JobKind::Check, "b", 100)
        .await
        .unwrap();
    let queued = jobs::enqueue(&conn, JobKind::Slim, "c", 100).await.unwrap();
    let failed = jobs::enqueue(&conn, JobKind::Slim, "d", 100).await.unwrap();
    let running = jobs::enqueue(&conn, JobKind::Slim, "e", 100).await.unwrap();
    // Claimed in order of creation (same second: any order), then ended at chosen times.
    for _ in 0..5 {
        assert!(jobs::claim(&conn, "w", 100, 10_000)
            .await
            .unwrap()
            .is_some());
    }
    jobs::finish(&conn, &old, "w", JobState::Done, None, 200)
        .await
        .unwrap();
    jobs::finish(&conn, &failed, "w", JobState::Failed, Some("x"), 200)
        .await
        .unwrap();
    jobs::finish(&conn, &recent, "w", JobState::Done, None, 900)
        .await
        .unwrap();
    jobs::retry_at(&conn, &queued, "w", 150, "again", 150)
        .await
        .unwrap();
    assert_eq!(jobs::prune_finished(&conn, 500).await.unwrap(), 2);
    for (id, kept) in [
        (&old, false),
        (&failed, false),
        (&recent, true),
        (&queued, true),
        (&running, true),
    ] {
        assert_eq!(jobs::find(&conn, id).await.unwrap().is_some(), kept, "{id}");
    }
    assert_eq!(jobs::prune_finished(&conn, 500).await.unwrap(), 0);
}

mod sqlite {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_claims_take_each_job_once() {
        super::concurrent_claims_take_each_job_once(crate::helpers::Backend::SqliteLocal).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn finished_jobs_are_pruned() {
        super::finished_jobs_are_pruned(crate::helpers::Backend::SqliteLocal).await
    }
}

mod postgres {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_claims_take_each_job_once() {
        super::concurrent_claims_take_each_job_once(crate::helpers::Backend::PostgresLocal).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn finished_jobs_are_pruned() {
        super::finished_jobs_are_pruned(crate::helpers::Backend::PostgresLocal).await
    }

    /// A row another transaction holds locked is skipped, not waited for.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_locked_job_is_skipped() {
        use sea_orm::{
            sea_query::LockType, EntityTrait, QueryOrder, QuerySelect, TransactionTrait,
        };
        let (_dir, conn) = super::queue_db(crate::helpers::Backend::PostgresLocal).await;
        let first = super::jobs::enqueue(&conn, super::JobKind::Slim, "a", 1)
            .await
            .unwrap();
        let second = super::jobs::enqueue(&conn, super::JobKind::Slim, "b", 2)
            .await
            .unwrap();
        let holder = conn.begin().await.unwrap();
        let locked = entity::job::Entity::find()
            .order_by_asc(entity::job::Column::CreatedAt)
            .lock(LockType::Update)
            .one(&holder)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(locked.id, first);
        let got = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            super::jobs::claim(&conn, "w", 10, 60),
        )
        .await
        .expect("the claim waited on a locked row")
        .unwrap()
        .unwrap();
        assert_eq!(got.id, second);
        holder.rollback().await.unwrap();
        let got = super::jobs::claim(&conn, "w", 10, 60)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.id, first);
    }
}
