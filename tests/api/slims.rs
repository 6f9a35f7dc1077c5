//! Slimming: a compressed, checked copy served under the original name; failures keep the
//! original; deletion during a slim leaves nothing.

use crate::{checks::wait_checked, helpers::*, integrity::md5_hex};
use std::time::{Duration, Instant};

/// Polls an image until its slim is no longer in progress.
pub async fn wait_slim_done(app: &TestApp, id: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, v) = app.get_json(&format!("/images/{id}")).await;
        if v["slimStatus"] != 1 {
            return v;
        }
        assert!(Instant::now() < deadline, "slim never finished: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn slimmed_image_is_smaller_identical_and_served(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    // 24 MiB of compressible data and 8 MiB of explicit zeros in a 256 MiB disk.
    let img = make_qcow2(app.dir.path(), "fat.qcow2", 256, 24);
    run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -z 64M 8M",
            img.to_str().unwrap(),
        ],
    );
    let original = std::fs::read(&img).unwrap();
    let id = app.upload_ok("fat.qcow2", original.clone()).await;
    // Requested before the check ran: the slim waits for it.
    let r = app.slim(&id).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "compress in progress");
    let v = wait_slim_done(&app, &id).await;
    assert_eq!(v["slimStatus"], 2, "{v}");
    assert_eq!(v["compressInfo"]["compressStatus"], 0);
    assert_eq!(v["compressInfo"]["compressRate"], 1.0);
    assert_eq!(v["fileName"], "fat.qcow2");
    jobs_end_done(&app, &id).await;
    let slim = slimmed_copy_is_served(&app, &id, &v, &img, original.len() as u64).await;
    // Zipped download carries the slimmed bytes too.
    let zip = app.dir.path().join("slim.zip");
    app.download_to(&format!("/images/{id}/action/download?isZip=true"), &zip)
        .await;
    crate::downloads::verify_zip(&zip, "fat/fat.qcow2", &sha256_file(&slim));

    let r = app.slim(&id).await;
    assert_eq!(
        r.text().await.unwrap(),
        "The image file has already been slimmed. No need to slim again. Pls request to check directly"
    );
    // Deleting removes the original and the slimmed copy.
    app.delete_image(&id).await;
    assert_eq!(app.leftovers().await, Vec::<String>::new());
    app.stop().await;
}

/// The check and the slim of image `id` are done, and their rows say so (their `progress`
/// used to stay 0). The image shows the slim done a moment before the runner ends the slim's
/// job row.
async fn jobs_end_done(app: &TestApp, id: &str) {
    use entity::job::{Column, Entity};
    use entity::status::{JobKind, JobState};
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    let db = file_system::db::connect(&app.database_url).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let jobs = Entity::find()
            .filter(Column::ImageId.eq(id))
            .all(&db)
            .await
            .unwrap();
        let kinds: Vec<_> = jobs.iter().map(|j| (j.kind, j.state, j.progress)).collect();
        let done = kinds.contains(&(JobKind::Check, JobState::Done, 1.0))
            && kinds.contains(&(JobKind::Slim, JobState::Done, 1.0));
        if done {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{kinds:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    db.close().await.unwrap();
}

/// Downloads slimmed image `id` (its GET is `v`) and checks it against the original `img`
/// (`original_len` bytes): smaller, the same guest data, and described by its check fields.
/// Where the download went.
async fn slimmed_copy_is_served(
    app: &TestApp,
    id: &str,
    v: &serde_json::Value,
    img: &std::path::Path,
    original_len: u64,
) -> std::path::PathBuf {
    let slim = app.dir.path().join("slim.qcow2");
    let h = app
        .download_to(&format!("/images/{id}/action/download"), &slim)
        .await;
    assert_eq!(
        h["content-disposition"],
        "attachment; filename=\"fat.qcow2\""
    );
    let slim_len = std::fs::metadata(&slim).unwrap().len();
    assert!(
        slim_len < original_len / 4,
        "slimmed {slim_len} vs original {original_len}"
    );
    assert_same_qcow2(img, &slim);
    // The check fields describe the slimmed image.
    let csr = &v["checkStatusResponse"];
    assert_eq!(csr["status"], 0);
    assert_eq!(
        csr["checkInfo"]["imageInfo"]["disk_size"],
        slim_len.to_string()
    );
    use md5::Digest;
    assert_eq!(
        csr["checkInfo"]["checksum"],
        hex::encode(md5::Md5::digest(std::fs::read(&slim).unwrap()))
    );
    slim
}

async fn failed_slim_keeps_the_original(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    // A corrupted qcow2: the slim cannot produce a consistent copy (or fails), and the
    // original stays the one served.
    let img = make_qcow2(app.dir.path(), "c.qcow2", 16, 0);
    run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x11 0 128k",
            img.to_str().unwrap(),
        ],
    );
    let mut bytes = std::fs::read(&img).unwrap();
    let be = |b: &[u8], at: usize| u64::from_be_bytes(b[at..at + 8].try_into().unwrap());
    let l1 = be(&bytes, 40) as usize;
    let l2 = (be(&bytes, l1) & 0x00ff_ffff_ffff_fe00) as usize;
    // Cluster 2 claims to be compressed but holds plain data: reading it fails.
    let data = be(&bytes, l2) & 0x00ff_ffff_ffff_fe00;
    bytes[l2 + 8..l2 + 16].copy_from_slice(&((1u64 << 62) | data).to_be_bytes());
    let id = app.upload_ok("c.qcow2", bytes.clone()).await;
    let v = wait_checked(&app, &id).await;
    // The check finds the damage, so no slim is accepted for it ...
    assert_eq!(v["checkStatusResponse"]["status"], 1, "{v}");
    let r = app.slim(&id).await;
    let v = assert_error(r, 400, None).await;
    assert_eq!(v["code"], "SLIM_REFUSED", "{v}");
    // ... but were the record to say "consistent" (checked before the damage), the slim
    // itself fails in qemu-img, and the original stays.
    let db = file_system::db::connect(&app.database_url).await.unwrap();
    {
        use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
        entity::image::Entity::update_many()
            .col_expr(entity::image::Column::CheckStatus, 0.into())
            .col_expr(entity::image::Column::SlimStatus, 0.into())
            .filter(entity::image::Column::Id.eq(&id))
            .exec(&db)
            .await
            .unwrap();
    }
    db.close().await.unwrap();
    let r = app.slim(&id).await;
    assert_eq!(r.text().await.unwrap(), "compress in progress");
    let v = wait_slim_done(&app, &id).await;
    assert_eq!(v["slimStatus"], 3, "{v}");
    assert_eq!(v["compressInfo"]["compressStatus"], 2, "{v}");
    assert!(!v["compressInfo"]["compressMsg"]
        .as_str()
        .unwrap()
        .is_empty());
    let dl = app
        .client
        .get(app.url(&format!("/images/{id}/action/download")))
        .send()
        .await
        .unwrap();
    assert_eq!(dl.bytes().await.unwrap().to_vec(), bytes);
    // Nothing but the original is stored.
    assert_eq!(
        app.leftovers().await.len(),
        1,
        "{:?}",
        app.leftovers().await
    );
    app.stop().await;
}

async fn deleting_during_a_slim_leaves_nothing(b: Backend) {
    let app = TestApp::spawn(
        b,
        Options {
            job_lease_secs: Some(3),
            ..Default::default()
        },
    )
    .await;
    let img = make_qcow2(app.dir.path(), "big.qcow2", 1024, 400);
    let id = app
        .upload_ok("big.qcow2", std::fs::read(&img).unwrap())
        .await;
    wait_checked(&app, &id).await;
    let r = app.slim(&id).await;
    assert_eq!(r.text().await.unwrap(), "compress in progress");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = app.delete_image(&id).await;
    assert_eq!(r.text().await.unwrap(), "delete success");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = app.leftovers().await;
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left behind: {left:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    app.stop().await;
}

/// A check that read the original while a slim of the image ran, and ends after the slim
/// (as one on a large image at an S3 store does), does not write the original's digests and
/// verdict over the slimmed copy's: the image keeps the MD5 of the bytes it serves. Its first
/// digests of the original are kept as such all the same. (The interleaving itself depends
/// on timing; the check's last step, the record, is played here at that point.)
async fn a_check_that_ends_after_a_slim_keeps_the_slims_digests(b: Backend) {
    use file_system::db::images::{set_check, CheckHashes, Checked};
    let app = TestApp::spawn(b, Options::default()).await;
    let img = make_qcow2(app.dir.path(), "both.qcow2", 64, 8);
    let id = app
        .upload_ok("both.qcow2", std::fs::read(&img).unwrap())
        .await;
    assert_eq!(app.slim(&id).await.status(), 200);
    let v = wait_slim_done(&app, &id).await;
    assert_eq!(v["slimStatus"], 2, "{v}");
    jobs_end_done(&app, &id).await;
    let served = md5_hex(&app.download(&id).await);
    let (_, before) = app.get_json(&format!("/images/{id}")).await;
    let checksum = &before["checkStatusResponse"]["checkInfo"]["checksum"];
    assert_eq!(checksum, served.as_str(), "{before}");

    let db = file_system::db::connect(&app.database_url).await.unwrap();
    let stale = entity::check::CheckReport::failed("the original's verdict");
    let original = CheckHashes {
        md5: "0123456789abcdef0123456789abcdef",
        sha256: &"ab".repeat(32),
        original: false,
    };
    let now = chrono::Utc::now().timestamp();
    let recorded = set_check(&db, &id, &stale, Some(&original), Checked::Original, now);
    assert!(
        !recorded.await.unwrap(),
        "a check of the original became the slimmed image's"
    );
    let (_, after) = app.get_json(&format!("/images/{id}")).await;
    for field in ["checkStatusResponse", "sha256", "originalChecksum"] {
        assert_eq!(after[field], before[field], "{field}: {after}");
    }
    // A check that gave up (its store unreachable for all its tries) leaves the slim's verdict.
    let gave_up = entity::check::CheckReport::failed("check failed: gave up");
    let recorded = set_check(&db, &id, &gave_up, None, Checked::Unread, now);
    assert!(
        !recorded.await.unwrap(),
        "a check that gave up wrote over the slim's verdict"
    );
    let (_, after) = app.get_json(&format!("/images/{id}")).await;
    assert_eq!(after["checkStatusResponse"], before["checkStatusResponse"]);
    // It is recorded while its check is still shown in progress.
    let asked = file_system::db::images::request_check(&db, &id, "in progress", now);
    assert!(asked.await.unwrap());
    let recorded = set_check(&db, &id, &gave_up, None, Checked::Unread, now);
    assert!(recorded.await.unwrap());
    let (_, after) = app.get_json(&format!("/images/{id}")).await;
    let msg = &after["checkStatusResponse"]["msg"];
    assert!(msg.as_str().unwrap().contains("gave up"), "{after}");
    // A check of the slimmed copy it serves is recorded.
    let key = {
        use sea_orm::EntityTrait;
        let row = entity::image::Entity::find_by_id(id.clone())
            .one(&db)
            .await
            .unwrap();
        row.unwrap().slim_object_key.unwrap()
    };
    let served_hashes = CheckHashes {
        md5: &served,
        sha256: before["sha256"].as_str().unwrap(),
        original: false,
    };
    let fresh = entity::check::CheckReport::failed("a later check");
    let recorded = set_check(
        &db,
        &id,
        &fresh,
        Some(&served_hashes),
        Checked::Slimmed(&key),
        now,
    );
    assert!(recorded.await.unwrap());
    app.stop().await;
}

crate::backend_tests!(
    slimmed_image_is_smaller_identical_and_served,
    failed_slim_keeps_the_original,
    deleting_during_a_slim_leaves_nothing,
    a_check_that_ends_after_a_slim_keeps_the_slims_digests
);
