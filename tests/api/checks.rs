//! Image checks in the background, with real images made by qemu-img and damaged on purpose.

use crate::helpers::*;
use std::path::{Path, PathBuf};

/// Polls an image until its check is no longer in progress ([`wait_check_done`]).
pub async fn wait_checked(app: &TestApp, id: &str) -> serde_json::Value {
    wait_check_done(&app.client, &app.url(&format!("/images/{id}"))).await
}

fn md5_file(p: &Path) -> String {
    use md5::Digest;
    hex::encode(md5::Md5::digest(std::fs::read(p).unwrap()))
}

pub enum Damage {
    /// Two L2 entries point at the same data cluster: `qemu-img check` exits 2.
    Corrupt,
    /// An allocated L2 entry set to zero: its cluster leaks, `qemu-img check` exits 3.
    Leak,
}

/// A small qcow2 (64 KiB clusters) with two data clusters, then its L2 table edited.
pub fn damaged_qcow2(dir: &Path, name: &str, damage: Damage) -> PathBuf {
    let path = make_qcow2(dir, name, 16, 0);
    run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x11 0 128k",
            path.to_str().unwrap(),
        ],
    );
    let mut b = std::fs::read(&path).unwrap();
    let be = |b: &[u8], at: usize| u64::from_be_bytes(b[at..at + 8].try_into().unwrap());
    let l1 = be(&b, 40) as usize;
    let l2 = (be(&b, l1) & 0x00ff_ffff_ffff_fe00) as usize;
    let first = be(&b, l2);
    let second = match damage {
        Damage::Corrupt => first,
        Damage::Leak => 0,
    };
    b[l2 + 8..l2 + 16].copy_from_slice(&second.to_be_bytes());
    std::fs::write(&path, b).unwrap();
    let code = std::process::Command::new("qemu-img")
        .args(["check", "-f", "qcow2", path.to_str().unwrap()])
        .output()
        .unwrap()
        .status
        .code();
    let want = match damage {
        Damage::Corrupt => 2,
        Damage::Leak => 3,
    };
    assert_eq!(code, Some(want), "fixture {name} is not what it should be");
    path
}

async fn consistent_corrupted_and_leaking_qcow2(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    let good = make_qcow2(app.dir.path(), "good.qcow2", 64, 3);
    let id = app
        .upload_ok("good.qcow2", std::fs::read(&good).unwrap())
        .await;
    let v = wait_checked(&app, &id).await;
    let csr = &v["checkStatusResponse"];
    assert_eq!(csr["status"], 0, "{v}");
    assert_eq!(csr["checkInfo"]["checkResult"], 0);
    assert_eq!(csr["checkInfo"]["checksum"], md5_file(&good));
    let ii = &csr["checkInfo"]["imageInfo"];
    assert_eq!(ii["format"], "qcow2");
    assert_eq!(ii["virtual_size"], 0.063);
    assert!(
        ii["image-end-offset"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0,
        "{ii}"
    );
    assert_eq!(ii["check-errors"], "0");
    assert_eq!(
        ii["disk_size"],
        std::fs::metadata(&good).unwrap().len().to_string()
    );

    for (name, damage, status, result) in [
        ("bad.qcow2", Damage::Corrupt, 1, 2),
        ("leak.qcow2", Damage::Leak, 2, 3),
    ] {
        let img = damaged_qcow2(app.dir.path(), name, damage);
        let id = app.upload_ok(name, std::fs::read(&img).unwrap()).await;
        let v = wait_checked(&app, &id).await;
        assert_eq!(v["checkStatusResponse"]["status"], status, "{name}: {v}");
        assert_eq!(
            v["checkStatusResponse"]["checkInfo"]["checkResult"], result,
            "{name}: {v}"
        );
        assert_eq!(
            v["checkStatusResponse"]["checkInfo"]["checksum"],
            md5_file(&img)
        );
    }
    app.stop().await;
}

async fn raw_and_iso_are_not_checked_but_measured(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    for name in ["disk.img", "cd.iso"] {
        let data = pattern(5, 3 << 20);
        let id = app.upload_ok(name, data.clone()).await;
        let v = wait_checked(&app, &id).await;
        let csr = &v["checkStatusResponse"];
        assert_eq!(csr["status"], 5, "{v}");
        assert_eq!(csr["checkInfo"]["checkResult"], 63);
        use md5::Digest;
        assert_eq!(
            csr["checkInfo"]["checksum"],
            hex::encode(md5::Md5::digest(&data))
        );
        assert_eq!(
            csr["checkInfo"]["imageInfo"]["disk_size"],
            (3 << 20).to_string()
        );
        assert_eq!(csr["checkInfo"]["imageInfo"]["format"], "raw");
        // Such images cannot be slimmed.
        let r = app.slim(&id).await;
        assert_error(
            r,
            400,
            Some("This image cannot be slimmed because the type of image is not supported."),
        )
        .await;
        let (_, v) = app.get_json(&format!("/images/{id}")).await;
        assert_eq!(v["slimStatus"], 3);
    }
    app.stop().await;
}

async fn images_that_point_at_host_files_are_refused(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    let secret = app.dir.path().join("host-secret.raw");
    let mut host = b"TOP-SECRET-HOST-CONTENT".repeat(1000);
    host.resize(1 << 20, 0);
    std::fs::write(&secret, &host).unwrap();
    let overlay = app.dir.path().join("overlay.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            secret.to_str().unwrap(),
            "-F",
            "raw",
            overlay.to_str().unwrap(),
        ],
    );
    let id = app
        .upload_ok("overlay.qcow2", std::fs::read(&overlay).unwrap())
        .await;
    let v = wait_checked(&app, &id).await;
    assert_eq!(v["checkStatusResponse"]["status"], 3, "{v}");
    assert!(
        v["checkStatusResponse"]["msg"]
            .as_str()
            .unwrap()
            .contains("backing file"),
        "{v}"
    );
    let body = v.to_string();
    assert!(!body.contains("TOP-SECRET"), "{body}");
    let dl = app
        .client
        .get(app.url(&format!("/images/{id}/action/download")))
        .send()
        .await
        .unwrap();
    let bytes = dl.bytes().await.unwrap();
    assert!(
        !bytes.windows(10).any(|w| w == b"TOP-SECRET"),
        "the download carried host content"
    );
    assert_eq!(bytes.to_vec(), std::fs::read(&overlay).unwrap());

    // Content must match the extension: raw bytes named .qcow2.
    let id = app.upload_ok("fake.qcow2", pattern(8, 1 << 20)).await;
    let v = wait_checked(&app, &id).await;
    assert_eq!(v["checkStatusResponse"]["status"], 3, "{v}");
    app.stop().await;
}

/// A fresh qcow2 of 16 MiB with 2 MiB clusters (header extensions may fill its first 2 MiB),
/// then its header bytes edited by `edit`.
fn edited_header(dir: &Path, name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let path = dir.join(name);
    let p = path.to_str().unwrap();
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=2M",
            p,
            "16M",
        ],
    );
    let mut b = std::fs::read(&path).unwrap();
    edit(&mut b);
    std::fs::write(&path, b).unwrap();
    path
}

/// Headers qemu opens but that say more than `qemu-img check` does: one marked corrupt (by
/// qemu, when it found its metadata inconsistent) is reported corrupted and not slimmed, though
/// the check finds nothing; one whose extensions run past the first 64 KiB (where its bitmaps
/// could hide from the header check, to be dropped by a slim) is refused.
async fn headers_that_say_more_than_the_check(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    let dir = app.dir.path();
    let corrupt = edited_header(dir, "marked.qcow2", |b| b[79] |= 2);
    let id = app
        .upload_ok("marked.qcow2", std::fs::read(&corrupt).unwrap())
        .await;
    let v = wait_checked(&app, &id).await;
    assert_eq!(v["checkStatusResponse"]["status"], 1, "{v}");
    assert!(v["checkStatusResponse"]["msg"]
        .as_str()
        .unwrap()
        .contains("marks it corrupt"));
    let r = app.slim(&id).await;
    assert_eq!(assert_error(r, 400, None).await["code"], "SLIM_REFUSED");
    let far = edited_header(dir, "far.qcow2", |b| {
        let at = u32::from_be_bytes(b[100..104].try_into().unwrap()) as usize;
        b[at..at + 4].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        b[at + 4..at + 8].copy_from_slice(&70_000u32.to_be_bytes());
        b[at + 8..at + 8 + 70_000].fill(0x55);
    });
    let check = std::process::Command::new("qemu-img")
        .args(["check", "-q", "-f", "qcow2", far.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(check.success(), "qemu opens the fixture");
    let id = app
        .upload_ok("far.qcow2", std::fs::read(&far).unwrap())
        .await;
    let v = wait_checked(&app, &id).await;
    assert_eq!(v["checkStatusResponse"]["status"], 3, "{v}");
    let msg = v["checkStatusResponse"]["msg"].as_str().unwrap();
    assert!(msg.contains("extensions run past"), "{v}");
    app.stop().await;
}

/// A qcow2 whose L1 entries all point at one L2 table (`qemu-img check` walks it once per
/// entry: with 2 MiB clusters and an exabyte of virtual size, hours for a small file) is
/// found corrupted before qemu-img runs.
async fn l1_tables_sharing_l2_tables_are_corrupted(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    let path = app.dir.path().join("shared.qcow2");
    let p = path.to_str().unwrap();
    run("qemu-img", &["create", "-q", "-f", "qcow2", p, "4G"]);
    run("qemu-io", &["-f", "qcow2", "-c", "write -P 1 0 512", p]);
    let mut bytes = std::fs::read(&path).unwrap();
    let l1 = u64::from_be_bytes(bytes[40..48].try_into().unwrap()) as usize;
    let first: [u8; 8] = bytes[l1..l1 + 8].try_into().unwrap();
    for i in 1..8 {
        bytes[l1 + 8 * i..l1 + 8 * i + 8].copy_from_slice(&first);
    }
    let id = app.upload_ok("shared.qcow2", bytes).await;
    let v = wait_checked(&app, &id).await;
    assert_eq!(v["checkStatusResponse"]["status"], 1, "{v}");
    let msg = v["checkStatusResponse"]["msg"].as_str().unwrap();
    assert!(msg.contains("point at the same L2 table"), "{v}");
    app.stop().await;
}

crate::backend_tests!(
    l1_tables_sharing_l2_tables_are_corrupted,
    headers_that_say_more_than_the_check,
    consistent_corrupted_and_leaking_qcow2,
    raw_and_iso_are_not_checked_but_measured,
    images_that_point_at_host_files_are_refused
);
