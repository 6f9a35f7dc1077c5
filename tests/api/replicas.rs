//! Two real server processes sharing one PostgreSQL database and one S3 store (Garage), as
//! replicas behind a Kubernetes Service: any request may land on either.
//!
//! The replicas get the database through the original's `POSTGRES_*` variables, not
//! `DATABASE_URL`, and each has its own scratch directory (an emptyDir per pod).

use crate::helpers::*;
use futures::{future::join_all, StreamExt};
use reqwest::Client;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::Value;
use std::{
    path::Path,
    time::{Duration, Instant},
};

/// The app's variables with `DATABASE_URL` replaced by the `POSTGRES_*` ones.
fn postgres_vars(app: &TestApp) -> Vec<(String, String)> {
    // postgres://user@host:port/name (the test cluster trusts loopback: no password).
    let rest = app.database_url.strip_prefix("postgres://").unwrap();
    let (user, rest) = rest.split_once('@').unwrap();
    let (host_port, name) = rest.split_once('/').unwrap();
    let (host, port) = host_port.split_once(':').unwrap();
    let mut vars: Vec<_> = app
        .vars
        .iter()
        .filter(|(k, _)| k != "DATABASE_URL")
        .cloned()
        .collect();
    for (k, v) in [
        ("POSTGRES_HOST", host),
        ("POSTGRES_PORT", port),
        ("POSTGRES_USERNAME", user),
        ("POSTGRES_PASSWORD", ""),
        ("POSTGRES_DB_NAME", name),
    ] {
        vars.push((k.into(), v.into()));
    }
    vars
}

async fn start(vars: &[(String, String)], dir: &Path, name: &str) -> Replica {
    let scratch = dir.join(format!("scratch-{name}"));
    Replica::start(
        vars,
        free_port(),
        &dir.join(format!("{name}.log")),
        &[("FS_SCRATCH_DIR", scratch.to_str().unwrap())],
    )
    .await
}

async fn image(client: &Client, r: &Replica, id: &str) -> Value {
    client
        .get(r.api(&format!("/images/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn download(client: &Client, r: &Replica, id: &str) -> bytes::Bytes {
    let resp = client
        .get(r.api(&format!("/images/{id}/action/download")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap()
}

fn split(data: &[u8], size: usize) -> Vec<Vec<u8>> {
    data.chunks(size).map(<[u8]>::to_vec).collect()
}

/// Sends the chunks alternately to `a` and `b`, then merges through `via`.
async fn alternate_and_merge(
    client: &Client,
    reps: [&Replica; 2],
    via: &Replica,
    identifier: &str,
    data: &[u8],
    chunk: usize,
) -> String {
    for (i, c) in split(data, chunk).into_iter().enumerate() {
        let r = send_chunk(client, &reps[i % 2].api(""), identifier, i as u32 + 1, c).await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    let r = send_merge(client, &via.api(""), identifier, "alt.qcow2").await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    r.json::<Value>().await.unwrap()["imageId"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn upload(client: &Client, r: &Replica, path: &Path, name: &str) -> String {
    let resp = send_file(
        client,
        &r.api(""),
        path,
        name,
        &[("userId", "tester"), ("priority", "0")],
    )
    .await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    resp.json::<Value>().await.unwrap()["imageId"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn slim(client: &Client, r: &Replica, id: &str) {
    let resp = client
        .post(r.api(&format!("/images/{id}/action/slim")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), "compress in progress");
}

/// Waits for the image's slim to end; returns the image.
async fn slimmed(client: &Client, r: &Replica, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let v = image(client, r, id).await;
        if v["slimStatus"] != 1 {
            assert_eq!(v["slimStatus"], 2, "{v}");
            return v;
        }
        assert!(Instant::now() < deadline, "slim still in progress: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the image's check has ended ([`wait_check_done`]); returns the image.
async fn checked(client: &Client, r: &Replica, id: &str) -> Value {
    wait_check_done(client, &r.api(&format!("/images/{id}"))).await
}

/// The slim job of `id` once a worker runs it, with the owner's process id.
async fn running_slim(db: &sea_orm::DatabaseConnection, id: &str) -> (entity::job::Model, u32) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let job = entity::job::Entity::find()
            .filter(entity::job::Column::ImageId.eq(id))
            .filter(entity::job::Column::Kind.eq("slim"))
            .one(db)
            .await
            .unwrap()
            .expect("the slim job exists");
        assert_ne!(
            job.state,
            entity::status::JobState::Done,
            "the slim finished before it was caught"
        );
        if job.state == entity::status::JobState::Running {
            // The owner is host/pid/run.
            let owner = job.lease_owner.clone().unwrap();
            let pid = owner.split('/').nth(1).unwrap().parse().unwrap();
            return (job, pid);
        }
        assert!(Instant::now() < deadline, "the slim never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What the phases of [`two_replicas_share_one_database_and_store`] share: two replicas, the
/// client and the database they share.
struct Pair {
    client: Client,
    db: sea_orm::DatabaseConnection,
    ra: Replica,
    rb: Replica,
}

async fn two_replicas_share_one_database_and_store(b: Backend) {
    assert!(b.is_postgres() && b.is_s3());
    // The in-process app only provides the database, the S3 prefix and a view of both.
    let app = TestApp::spawn(
        b,
        Options {
            job_concurrency: Some(0),
            ..Default::default()
        },
    )
    .await;
    let vars = postgres_vars(&app);
    let dir = app.dir.path();
    let mut pair = Pair {
        client: app.client.clone(),
        db: file_system::db::connect(&app.database_url).await.unwrap(),
        ra: start(&vars, dir, "a").await,
        rb: start(&vars, dir, "b").await,
    };
    let (id_big, big) = chunks_through_both(&pair).await;
    merges_race_and_cancels_cross(&pair).await;
    jobs_run_once(&pair, &app, dir).await;
    let (id, img, job) = a_killed_slim_moves_over(&mut pair, dir).await;
    graceful_stop(&mut pair, &id_big, &big).await;
    let released = file_system::db::jobs::find(&pair.db, &job.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        released.state,
        entity::status::JobState::Queued,
        "{released:?}"
    );
    assert_eq!(released.lease_owner, None);

    // A fresh replica takes the released job at once and finishes it.
    let rc = start(&vars, dir, "c").await;
    a_fresh_replica_finishes(&pair, &rc, &id, &job.id, &img, dir).await;
    delete_everything(&pair.client, &rc).await;
    // (A download's hold ends before its last bytes go out: nothing to wait for.)
    let left = app.leftovers().await;
    assert!(left.is_empty(), "{left:?}");
    drop(rc);
    drop(pair);
    app.stop().await;
}

/// Chunks sent alternately to both, merged through either: S3 parts (6 MiB chunks) and
/// packed staging objects (1 MiB chunks). Gives the big image's id and bytes.
async fn chunks_through_both(p: &Pair) -> (String, Vec<u8>) {
    let (client, ra, rb) = (&p.client, &p.ra, &p.rb);
    let big = pattern(41, (31 << 20) + 333);
    let id_big = alternate_and_merge(client, [ra, rb], rb, "alt-big", &big, 6 << 20).await;
    assert_eq!(sha256(&download(client, ra, &id_big).await), sha256(&big));
    let small = pattern(42, (7 << 20) + 5);
    let id_small = alternate_and_merge(client, [rb, ra], ra, "alt-small", &small, 1 << 20).await;
    assert_eq!(
        sha256(&download(client, rb, &id_small).await),
        sha256(&small)
    );
    (id_big, big)
}

/// The same identifier merged through both at once gives one image; an upload opened on one
/// is cancelled on the other, leaving nothing.
async fn merges_race_and_cancels_cross(p: &Pair) {
    let (client, ra, rb) = (&p.client, &p.ra, &p.rb);
    let data = pattern(43, 3_000_000);
    for (i, c) in split(&data, 700_000).into_iter().enumerate() {
        let r = [ra, rb][i % 2];
        let sent = send_chunk(client, &r.api(""), "race", i as u32 + 1, c).await;
        assert_eq!(sent.status(), 200);
    }
    let merges = join_all((0..4).map(|i| {
        let (client, api) = (client.clone(), [ra, rb][i % 2].api(""));
        async move { send_merge(&client, &api, "race", "race.qcow2").await }
    }))
    .await;
    let mut ids = vec![];
    for r in merges {
        assert_eq!(r.status(), 200);
        let v = r.json::<Value>().await.unwrap();
        ids.push(v["imageId"].as_str().unwrap().to_string());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let raced = entity::image::Entity::find()
        .filter(entity::image::Column::FileName.eq("race.qcow2"))
        .all(&p.db)
        .await
        .unwrap();
    assert_eq!(raced.len(), 1);
    assert_eq!(sha256(&download(client, rb, &ids[0]).await), sha256(&data));

    for n in 1..=2 {
        let r = send_chunk(client, &ra.api(""), "cx", n, pattern(n as u64, 6 << 20)).await;
        assert_eq!(r.status(), 200);
    }
    let r = client
        .delete(rb.api("/images/upload?identifier=cx"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "cancel success");
    let r = send_merge(client, &ra.api(""), "cx", "cx.qcow2").await;
    assert_error(r, 400, None).await;
}

/// Checks and slims of images uploaded to both run exactly once each.
async fn jobs_run_once(p: &Pair, app: &TestApp, dir: &Path) {
    let (client, ra, rb) = (&p.client, &p.ra, &p.rb);
    let mut small_ids = vec![];
    for i in 0..6 {
        let img = make_qcow2(dir, &format!("s{i}.qcow2"), 64, 4 + i);
        let r = [ra, rb][i as usize % 2];
        let id = upload(client, r, &img, &format!("s{i}.qcow2")).await;
        slim(client, [rb, ra][i as usize % 2], &id).await;
        small_ids.push(id);
    }
    for id in &small_ids {
        let v = slimmed(client, ra, id).await;
        assert_eq!(v["checkStatusResponse"]["status"], 0, "{v}");
    }
    // A worker records its job's end just after the image's.
    app.wait_jobs_idle().await;
    let jobs = entity::job::Entity::find()
        .filter(entity::job::Column::ImageId.is_in(small_ids.clone()))
        .all(&p.db)
        .await
        .unwrap();
    assert_eq!(jobs.len(), 12, "one check and one slim per image");
    for j in &jobs {
        assert_eq!((j.state.as_str(), j.attempts), ("done", 1), "{j:?}");
    }
}

/// SIGKILL of the replica running a slim: the other takes it over when the lease runs out.
/// Afterwards `p.ra` is the survivor and `p.rb` the killed one. Gives the image's id, its
/// uploaded file and the job as the survivor runs it.
async fn a_killed_slim_moves_over(
    p: &mut Pair,
    dir: &Path,
) -> (String, std::path::PathBuf, entity::job::Model) {
    let img = make_qcow2(dir, "k.qcow2", 1024, 600);
    let id = upload(&p.client, &p.ra, &img, "k.qcow2").await;
    // Once checked, a worker that claims the slim runs it (before, it would put it back).
    let v = checked(&p.client, &p.rb, &id).await;
    assert_eq!(v["checkStatusResponse"]["status"], 0);
    slim(&p.client, &p.rb, &id).await;
    let (_, pid) = running_slim(&p.db, &id).await;
    if pid == p.ra.child.id() {
        std::mem::swap(&mut p.ra, &mut p.rb);
    } else {
        assert_eq!(pid, p.rb.child.id(), "a replica runs the slim");
    }
    // Now rb runs the slim: it is the victim.
    p.rb.kill();
    // The survivor claims it (after the 3 s lease)...
    let deadline = Instant::now() + Duration::from_secs(60);
    let job = loop {
        let (job, pid) = running_slim(&p.db, &id).await;
        if pid == p.ra.child.id() {
            break job;
        }
        let waited = Instant::now() < deadline;
        assert!(waited, "the survivor never took the slim over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(job.attempts, 2);
    (id, img, job)
}
/// A SIGTERM to the survivor (`p.ra`) is graceful: a download in flight completes, the
/// slim's lease is handed back at once, and the process exits 0.
async fn graceful_stop(p: &mut Pair, id_big: &str, big: &[u8]) {
    let resp = p
        .client
        .get(p.ra.api(&format!("/images/{id_big}/action/download")))
        .send()
        .await
        .unwrap();
    let mut body = resp.bytes_stream();
    let mut got = body.next().await.unwrap().unwrap().to_vec();
    p.ra.terminate();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // It no longer takes new connections while it finishes.
    let health = Client::new()
        .get(format!("{}/health", p.ra.base))
        .send()
        .await;
    assert!(health.is_err());
    while let Some(c) = body.next().await {
        got.extend_from_slice(&c.unwrap());
    }
    assert_eq!(
        sha256(&got),
        sha256(big),
        "the download in flight completed"
    );
    let status = p.ra.child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    // Its download let go of the object before it exited (a hold left behind would keep a
    // deleted image's object for a minute).
    let holds = entity::object_read::Entity::find()
        .all(&p.db)
        .await
        .unwrap();
    assert!(holds.is_empty(), "holds left behind: {holds:?}");
}

/// A fresh replica `rc` takes the released slim of `id` at once and finishes it: the slimmed
/// image holds what `img` held.
async fn a_fresh_replica_finishes(
    p: &Pair,
    rc: &Replica,
    id: &str,
    job_id: &str,
    img: &Path,
    dir: &Path,
) {
    let started = Instant::now();
    let v = slimmed(&p.client, rc, id).await;
    assert_eq!(v["checkStatusResponse"]["status"], 0, "{v}");
    // The worker records the job's end just after the image's: wait for it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let done = loop {
        let j = file_system::db::jobs::find(&p.db, job_id)
            .await
            .unwrap()
            .unwrap();
        if j.state != entity::status::JobState::Running || Instant::now() > deadline {
            break j;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((done.state.as_str(), done.attempts), ("done", 3));
    eprintln!("slim finished {:?} after the restart", started.elapsed());
    let out = dir.join("after.qcow2");
    std::fs::write(&out, download(&p.client, rc, id).await).unwrap();
    assert_same_qcow2(img, &out);
}

/// Deletes every image through `r`.
async fn delete_everything(client: &Client, r: &Replica) {
    let all: Value = client
        .get(r.api("/images"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for v in all.as_array().unwrap() {
        let id = v["imageId"].as_str().unwrap();
        let r = client
            .delete(r.api(&format!("/images/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

/// A replica killed while it streams a download of an image that another replica deletes:
/// the object is held while the download runs, the dead replica's hold ends with its lease,
/// and the sweep of the replica left then deletes the object (S3, where downloads hold
/// their objects against deletes).
async fn a_killed_replicas_download_lets_go_within_a_minute(b: Backend) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    assert!(b.is_postgres() && b.is_s3());
    // A short upload TTL makes the sweep run every second.
    let env = vec![("FS_UPLOAD_TTL_SECS", "4".to_string())];
    let app = TestApp::spawn(
        b,
        Options {
            env,
            ..Default::default()
        },
    )
    .await;
    let id = app.upload_ok("held.img", pattern(41, 24 << 20)).await;
    let stored = app.leftovers().await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    let mut replica = start(&app.vars, app.dir.path(), "a").await;
    let addr = replica.base.trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let get = format!("GET {API}/images/{id}/action/download HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    conn.write_all(get.as_bytes()).await.unwrap();
    let mut head = vec![0; 64 << 10];
    let n = conn.read(&mut head).await.unwrap();
    assert!(
        head[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head[..n])
    );
    let deleted = app.delete_image(&id).await;
    assert_eq!(deleted.status(), 200);
    assert_eq!(app.get_json(&format!("/images/{id}")).await.0, 404);
    assert_eq!(
        app.leftovers().await,
        stored,
        "the object went under its download"
    );
    replica.kill();
    drop(conn);
    // The dead replica's hold lapses within its 60 s lease; the sweep then deletes it.
    app.until_no_leftovers("a killed replica's hold", 75).await;
    app.stop().await;
}

mod postgres_s3 {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_replicas_share_one_database_and_store() {
        super::two_replicas_share_one_database_and_store(crate::helpers::Backend::PostgresS3).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_killed_replicas_download_lets_go_within_a_minute() {
        super::a_killed_replicas_download_lets_go_within_a_minute(
            crate::helpers::Backend::PostgresS3,
        )
        .await
    }
}

mod postgres_rgw {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_replicas_share_one_database_and_store() {
        super::two_replicas_share_one_database_and_store(crate::helpers::Backend::PostgresRgw).await
    }
}

/// Replicas (or the migration Job and a replica) starting at once on an empty database: every
/// one of them migrates it, or finds it migrated, without failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_on_a_fresh_database() {
    let dir = tempfile::tempdir().unwrap();
    let url = Backend::PostgresLocal.new_database(dir.path()).await;
    let runs: Vec<_> = (0..6)
        .map(|_| {
            std::process::Command::new(env!("CARGO_BIN_EXE_file-system"))
                .arg("migrate")
                .env("DATABASE_URL", &url)
                .env("FS_SCRATCH_DIR", dir.path().join("scratch"))
                .env("RUST_LOG", "warn")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for run in runs {
        let out = run.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    use sea_orm::ConnectionTrait;
    let db = file_system::db::connect(&url).await.unwrap();
    let applied = db
        .query_one(sea_orm::Statement::from_string(
            sea_orm::DatabaseBackend::Postgres,
            "SELECT count(*) AS n FROM seaql_migrations",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get::<i64>("", "n")
        .unwrap();
    use migration::MigratorTrait;
    let known = migration::Migrator::migrations().len() as i64;
    assert_eq!(applied, known, "each migration recorded once");
}
