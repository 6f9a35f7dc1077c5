//! Killing the real server process in the middle of a job: after a restart the job is picked
//! up again and finishes; nothing stays "in progress" forever and scratch is clean.

use crate::helpers::*;
use std::time::{Duration, Instant};

async fn sigkill_during_a_slim_then_restart(b: Backend) {
    // The in-process app only provides a configuration (and the S3 prefix); it runs no jobs.
    let app = TestApp::config_only(b).await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let api = format!("{base}{API}");
    let log = app.dir.path().join("server.log");
    let mut server = Replica::start(&app.vars, port, &log, &[]).await;
    let (id, img) = upload_and_slim(&app, &api).await;
    let db = file_system::db::connect(&app.database_url).await.unwrap();
    until_the_slim_runs(&app, &api, &id, &db).await;
    kill_during_the_convert(&app, &mut server, &id, &db).await;

    // A new process takes the job over once its lease has run out, and finishes it.
    let mut server = Replica::start(&app.vars, port, &log, &[]).await;
    let v = until_slimmed(&app, &api, &id).await;
    assert_eq!(v["slimStatus"], 2, "{v}");
    assert_eq!(v["checkStatusResponse"]["status"], 0, "{v}");
    // Served bytes are the slimmed image, identical in content to the original.
    let out = app.dir.path().join("after.qcow2");
    let bytes = download(&app.client, &api, &id).await;
    std::fs::write(&out, &bytes).unwrap();
    assert_same_qcow2(&img, &out);
    server.kill();
    // Scratch holds nothing of the killed run.
    let scratch: Vec<_> = std::fs::read_dir(app.dir.path().join("scratch"))
        .unwrap()
        .collect();
    assert!(scratch.is_empty(), "{scratch:?}");
    app.stop().await;
}

crate::backend_tests!(sigkill_during_a_slim_then_restart);

/// `GET {api}/images/{id}/action/download`'s bytes.
async fn download(client: &reqwest::Client, api: &str, id: &str) -> bytes::Bytes {
    let r = client
        .get(format!("{api}/images/{id}/action/download"))
        .send()
        .await
        .unwrap();
    r.bytes().await.unwrap()
}

/// `GET {api}/images/{id}`'s JSON.
async fn image_json(client: &reqwest::Client, api: &str, id: &str) -> serde_json::Value {
    let r = client
        .get(format!("{api}/images/{id}"))
        .send()
        .await
        .unwrap();
    r.json().await.unwrap()
}

/// Uploads a 1 GiB qcow2 with 600 MiB of data and asks for its slim. Gives its id and file.
async fn upload_and_slim(app: &TestApp, api: &str) -> (String, std::path::PathBuf) {
    let img = make_qcow2(app.dir.path(), "k.qcow2", 1024, 600);
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(std::fs::read(&img).unwrap()).file_name("k.qcow2"),
    );
    let r = app
        .client
        .post(format!("{api}/images"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.json::<serde_json::Value>().await.unwrap()["imageId"]
        .as_str()
        .unwrap()
        .to_string();
    let r = app
        .client
        .post(format!("{api}/images/{id}/action/slim"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "compress in progress");
    (id, img)
}

/// Waits until the image is checked and its slim job claimed by a worker.
async fn until_the_slim_runs(app: &TestApp, api: &str, id: &str, db: &sea_orm::DatabaseConnection) {
    // Kill it while the slim job runs: checked, and the slim job claimed by a worker.
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    // Generous: on S3 the check before the slim reads and hashes 600 MiB from the store,
    // minutes under a loaded test run.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let v = image_json(&app.client, api, id).await;
        let running = entity::job::Entity::find()
            .filter(entity::job::Column::Kind.eq("slim"))
            .filter(entity::job::Column::State.eq("running"))
            .one(db)
            .await
            .unwrap();
        if v["checkStatusResponse"]["status"] != 4 && running.is_some() {
            break;
        }
        assert_ne!(
            v["slimStatus"], 2,
            "the slim finished before it could be interrupted"
        );
        assert!(Instant::now() < deadline, "the slim never started: {v}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// SIGKILLs `server` while qemu-img converts this test's image: qemu-img dies with it, and the
/// image stays `Slimming`.
async fn kill_during_the_convert(
    app: &TestApp,
    server: &mut Replica,
    id: &str,
    db: &sea_orm::DatabaseConnection,
) {
    use sea_orm::EntityTrait;
    // qemu-img is converting this test's image when the server dies ...
    // (On S3 the slim reads 600 MiB from the store twice at once, through the NBD export and
    // for its hash: under a loaded test run that can take half a minute.)
    let marker = app.dir.path().to_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(300);
    while qemu_img_processes(&marker).is_empty() {
        assert!(Instant::now() < deadline, "qemu-img never ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill(); // SIGKILL
                   // ... and dies with it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !qemu_img_processes(&marker).is_empty() {
        assert!(
            Instant::now() < deadline,
            "qemu-img outlived its server: {:?}",
            qemu_img_processes(&marker)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let killed = entity::image::Entity::find_by_id(id.to_string())
        .one(db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        killed.slim_status,
        entity::status::SlimStatus::Slimming,
        "the process died after the slim had finished"
    );
}

/// Polls the image until its slim is no longer in progress (at most 120 s); gives its record.
async fn until_slimmed(app: &TestApp, api: &str, id: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v = image_json(&app.client, api, id).await;
        if v["slimStatus"] != 1 {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "the slim stayed in progress after the restart: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A second process started by mistake with the same settings fails on the busy port before it
/// touches the running one's state: the scratch files of the running server stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_the_same_port_leaves_the_first_alone() {
    let app = TestApp::config_only(Backend::SqliteLocal).await;
    let port = free_port();
    let log = app.dir.path().join("first.log");
    let first = Replica::start(&app.vars, port, &log, &[]).await;
    let held = app.scratch.join("in-use-by-the-first");
    std::fs::write(&held, b"x").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_file-system"))
        .envs(app.vars.iter().filter(|(k, _)| k != "FS_LISTEN").cloned())
        .env("FS_LISTEN", format!("127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "the second process started");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot listen"), "{stderr}");
    assert!(
        held.exists(),
        "the second process emptied the first one's scratch directory"
    );
    let r = reqwest::get(format!("{}/health", first.base))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    std::fs::remove_file(&held).unwrap();
    drop(first);
    app.stop().await;
}

/// SIGKILL at moments in and around a merge (plain and zipped), then a restart: the merge is
/// finished by the new process within seconds (not after a long lease), a repeated merge
/// answers with the same image in bounded time, the image holds the bytes sent, and nothing
/// is left behind (no partial file, no multipart upload, no staging object, no second object).
async fn sigkill_during_a_merge_then_restart(b: Backend) {
    let app = TestApp::config_only(b).await;
    let port = free_port();
    let log = app.dir.path().join("server.log");
    let api = format!("http://127.0.0.1:{port}{API}");
    let client = reqwest::Client::new();
    // Chunks of 6 MiB (above S3's 5 MiB minimum part), so each is a part of its own.
    let chunk = 6 << 20;
    let plain = pattern(7, 4 * chunk);
    let zipped = zip_of(app.dir.path(), &plain);
    let cases = [
        ("plain-0", "a.qcow2", &plain, 0u64),
        ("plain-30", "b.qcow2", &plain, 30),
        ("zip-80", "c.zip", &zipped, 80),
    ];
    let mut server = Replica::start(&app.vars, port, &log, &[]).await;
    let mut ids = vec![];
    for (identifier, name, bytes, kill_after_ms) in cases {
        for (i, c) in bytes.chunks(chunk).enumerate() {
            let r = send_chunk(&client, &api, identifier, i as u32 + 1, c.to_vec()).await;
            assert_eq!(r.status(), 200, "{identifier} chunk {}", i + 1);
        }
        let merge = merge_in_background(&client, &api, identifier, name);
        tokio::time::sleep(Duration::from_millis(kill_after_ms)).await;
        server.kill();
        let _ = merge.await;
        server = Replica::start(&app.vars, port, &log, &[]).await;
        until_merged_by_itself(&client, &api, identifier).await;
        // A repeated merge answers promptly, with the image.
        let started = Instant::now();
        let r = send_merge(&client, &api, identifier, name).await;
        assert!(started.elapsed() < Duration::from_secs(40));
        assert_eq!(r.status(), 200, "{identifier}");
        let img: serde_json::Value = r.json().await.unwrap();
        let id = img["imageId"].as_str().unwrap().to_string();
        let got = download(&client, &api, &id).await;
        assert!(
            got[..] == plain[..],
            "{identifier}: the image is not what was sent"
        );
        ids.push(id);
    }
    // Exactly one object per image, and nothing else.
    let left = app.leftovers().await;
    assert_eq!(left.len(), ids.len(), "{left:?}");
    for id in &ids {
        assert!(
            left.iter().any(|l| l.ends_with(id)),
            "{id} missing from {left:?}"
        );
    }
    drop(server);
}

/// A zip of `plain` as `imgs/inner.qcow2`, written in `dir`.
fn zip_of(dir: &std::path::Path, plain: &[u8]) -> Vec<u8> {
    let zip_path = dir.join("z.zip");
    std::fs::write(dir.join("inner.img"), plain).unwrap();
    python_zip(
        &zip_path,
        &format!(
            "z.write({:?}, 'imgs/inner.qcow2')",
            dir.join("inner.img").display()
        ),
    );
    std::fs::read(&zip_path).unwrap()
}

/// A merge of `identifier` into `name`, sent on a task of its own: the server dies under it,
/// so an error is expected, not a panic.
fn merge_in_background(
    client: &reqwest::Client,
    api: &str,
    identifier: &'static str,
    name: &'static str,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn({
        let (client, api) = (client.clone(), api.to_string());
        async move {
            let form = reqwest::multipart::Form::new()
                .text("identifier", identifier)
                .text("filename", name)
                .text("userId", "tester");
            let _ = client
                .post(format!("{api}/images/merge"))
                .multipart(form)
                .send()
                .await;
        }
    })
}

/// The merge of `identifier` is taken over and finished (or reopened) by the restarted server
/// by itself, within seconds.
async fn until_merged_by_itself(client: &reqwest::Client, api: &str, identifier: &str) {
    let started = Instant::now();
    let v = loop {
        let v: serde_json::Value = client
            .get(format!("{api}/images/upload?identifier={identifier}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["state"] != "merging" {
            break v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "{identifier}: still merging after the restart: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        matches!(v["state"].as_str(), Some("completed" | "open")),
        "{identifier}: {v}"
    );
    eprintln!(
        "{identifier}: {} {:?} after the restart",
        v["state"],
        started.elapsed()
    );
}

mod merge_crash {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_local() {
        super::sigkill_during_a_merge_then_restart(crate::helpers::Backend::SqliteLocal).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_s3() {
        super::sigkill_during_a_merge_then_restart(crate::helpers::Backend::PostgresS3).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_rgw() {
        super::sigkill_during_a_merge_then_restart(crate::helpers::Backend::PostgresRgw).await
    }
}

/// A second process started by mistake on the same directories (another port) fails at once,
/// naming the directory, before it touches what the running one uses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_the_same_directories_leaves_the_first_alone() {
    let app = TestApp::config_only(Backend::SqliteLocal).await;
    let log = app.dir.path().join("first.log");
    let first = Replica::start(&app.vars, free_port(), &log, &[]).await;
    let held = app.scratch.join("in-use-by-the-first");
    std::fs::write(&held, b"x").unwrap();
    let tmp = app.dir.path().join("objects/.tmp/being-written");
    std::fs::write(&tmp, b"x").unwrap();
    let second = app.dir.path().join("second-scratch");
    for extra in [
        vec![],
        vec![("FS_SCRATCH_DIR", second.display().to_string())],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_file-system"))
            .envs(app.vars.iter().filter(|(k, _)| k != "FS_LISTEN").cloned())
            .env("FS_LISTEN", format!("127.0.0.1:{}", free_port()))
            .envs(extra.clone())
            .output()
            .unwrap();
        assert!(!out.status.success(), "the second process started");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("in use by another file-system process"),
            "{stderr}"
        );
        assert!(
            held.exists(),
            "the second process emptied the first one's scratch"
        );
        assert!(
            tmp.exists(),
            "the second process swept the first one's writes"
        );
    }
    let r = reqwest::get(format!("{}/health", first.base))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    std::fs::remove_file(&held).unwrap();
    drop(first);
    // Once the first is gone, the next owner removes what the dead writes left.
    let next = Replica::start(&app.vars, free_port(), &log, &[]).await;
    assert!(!tmp.exists(), "a dead write's temporary file stayed");
    drop(next);
}

/// SIGTERM with PostgreSQL unreachable (packets swallowed, as behind a dead route), while
/// requests wait on it: the process ends within the grace period, not after the pool's
/// timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_database_unreachable_ends_within_the_grace_period() {
    let pg = std::env::var("FS_TEST_PG_URL").expect("FS_TEST_PG_URL (scripts/test)");
    let proxy = FaultProxy::start(pg.rsplit('@').next().unwrap()).await;
    let app = TestApp::spawn(
        Backend::PostgresLocal,
        Options {
            no_server: true,
            database_via: Some(proxy.url.clone()),
            ..Default::default()
        },
    )
    .await;
    let log = app.dir.path().join("server.log");
    let mut server = Replica::start(
        &app.vars,
        free_port(),
        &log,
        &[("FS_SHUTDOWN_GRACE_SECS", "3")],
    )
    .await;
    let img = app.dir.path().join("a.qcow2");
    std::fs::write(&img, pattern(1, 4096)).unwrap();
    let r = send_file(&app.client, &server.api(""), &img, "a.qcow2", &[]).await;
    assert_eq!(r.status(), 200);
    proxy.set(Fault::Blackhole);
    // Requests now hang on the database.
    let waiting: Vec<_> = (0..3)
        .map(|_| tokio::spawn(reqwest::get(server.api("/images"))))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    server.terminate();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running 30 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = started.elapsed();
    eprintln!("SIGTERM to exit with PostgreSQL black-holed: {took:?} (grace 3 s)");
    assert!(
        took < Duration::from_secs(6),
        "shutdown took {took:?} (grace 3 s)"
    );
    assert!(status.success(), "{status:?}");
    for w in waiting {
        let _ = w.await;
    }
}

/// A database URL the service cannot use (malformed, an unknown scheme) is named in the error,
/// but never its password, for `serve` and `migrate` alike.
#[test]
fn database_errors_never_show_the_password() {
    let dir = tempfile::tempdir().unwrap();
    for url in [
        "postgres://fs:S3cretPw@127.0.0.1:notaport/db",
        "mysql://fs:S3cretPw@db.example/fs",
        "postgres://fs:S3cret%40Pw@127.0.0.1:notaport/db",
    ] {
        for cmd in ["serve", "migrate"] {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_file-system"))
                .arg(cmd)
                .env("DATABASE_URL", url)
                .env("FS_LISTEN", "127.0.0.1:0")
                .env("FS_DATA_DIR", dir.path())
                .env("FS_LOCAL_DIR", dir.path().join("objects"))
                .env("FS_SCRATCH_DIR", dir.path().join("scratch"))
                .env("RUST_BACKTRACE", "0")
                .output()
                .unwrap();
            assert!(!out.status.success(), "{cmd} {url}");
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!all.contains("S3cret"), "{cmd} {url}: {all}");
            if url.starts_with("mysql") {
                assert!(
                    all.contains("DATABASE_URL is not valid"),
                    "{cmd} {url}: {all}"
                );
            } else {
                assert!(all.contains("fs:***@"), "{cmd} {url}: {all}");
            }
        }
    }
}

/// Files a killed write left in the local store's `.tmp` are removed once untouched for long
/// enough; files of writes in progress stay.
#[tokio::test]
async fn stale_temporary_files_are_swept() {
    use file_system::storage::{LocalStore, ObjectStore};
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).await.unwrap();
    let tmp = dir.path().join(".tmp");
    let dead = tmp.join("killed-mid-write");
    let live = tmp.join("being-written");
    std::fs::write(&dead, b"half").unwrap();
    std::fs::write(&live, b"growing").unwrap();
    let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    std::fs::File::options()
        .write(true)
        .open(&dead)
        .unwrap()
        .set_modified(two_hours_ago)
        .unwrap();
    let hour = std::time::Duration::from_secs(3600);
    assert_eq!(store.sweep_stale_temp(hour).await.unwrap(), 1);
    assert!(!dead.exists());
    assert!(live.exists());
    assert_eq!(store.sweep_stale_temp(hour).await.unwrap(), 0);
}

/// Pids of running qemu-img processes whose command line mentions `marker`.
fn qemu_img_processes(marker: &str) -> Vec<u32> {
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        let zombie = std::fs::read_to_string(e.path().join("stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        });
        if cmd.starts_with("qemu-img") && cmd.contains(marker) && !zombie {
            out.push(pid);
        }
    }
    out
}
