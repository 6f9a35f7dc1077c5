//! Slimming: a compressed, checked copy served under the original name; failures keep the
//! original; deletion during a slim leaves nothing.

use crate::{checks::wait_checked, helpers::*};
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

crate::backend_tests!(
    slimmed_image_is_smaller_identical_and_served,
    failed_slim_keeps_the_original,
    deleting_during_a_slim_leaves_nothing
);
