//! Host files never enter an image: qcow2 images that name a backing file (absolute, relative,
//! `json:` pseudo-protocol, a chain) or an external data file (`data_file`, `data_file_raw`) are
//! refused at check time and at slim time, their download is the uploaded bytes, and no message
//! a client reads holds a server path. Every fixture points at a marker file of the host.

use crate::{checks::wait_checked, helpers::*};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use std::path::{Path, PathBuf};

/// A host file with a recognizable content: what must never appear in a download.
fn marker(dir: &Path) -> (PathBuf, Vec<u8>) {
    let path = dir.join("marker.raw");
    let tag = format!("HOST-MARKER-{}", uuid::Uuid::new_v4().simple());
    let mut bytes = tag.repeat((1 << 20) / tag.len() + 1).into_bytes();
    bytes.truncate(1 << 20);
    std::fs::write(&path, &bytes).unwrap();
    (path, tag.into_bytes())
}

fn qemu_img(args: &[&str]) {
    run("qemu-img", args);
}

/// An overlay of 1 MiB whose backing file is `backing` (as written in its header).
fn overlay(dir: &Path, name: &str, backing: &str, backing_fmt: &str) -> PathBuf {
    let p = dir.join(name);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        backing,
        "-F",
        backing_fmt,
        p.to_str().unwrap(),
        "1M",
    ]);
    p
}

/// A qcow2 whose guest data lives in an external data file, which is then replaced by the
/// marker's content (so following it would read the host file).
fn with_data_file(dir: &Path, name: &str, raw: bool, marker: &Path) -> PathBuf {
    let p = dir.join(name);
    let data = dir.join(format!("{name}.data"));
    let opts = format!(
        "data_file={},data_file_raw={}",
        data.display(),
        if raw { "on" } else { "off" }
    );
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &opts,
        p.to_str().unwrap(),
        "1M",
    ]);
    run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x11 0 1M",
            p.to_str().unwrap(),
        ],
    );
    std::fs::copy(marker, &data).unwrap();
    p
}

/// Every kind of image that names another file, with what its refusal must mention.
fn hostile_images(dir: &Path, marker: &Path) -> Vec<(String, PathBuf, &'static str)> {
    let m = marker.to_str().unwrap();
    let json = format!(r#"json:{{"driver":"raw","file":{{"driver":"file","filename":"{m}"}}}}"#);
    let base = overlay(dir, "base.qcow2", m, "raw");
    let mut out = vec![
        (
            "absolute",
            overlay(dir, "abs.qcow2", m, "raw"),
            "backing file",
        ),
        // Relative to where the image is opened: the local store's object, or a scratch copy.
        (
            "relative-store",
            overlay(dir, "rel1.qcow2", "../../../marker.raw", "raw"),
            "backing file",
        ),
        (
            "relative-scratch",
            overlay(dir, "rel2.qcow2", "../marker.raw", "raw"),
            "backing file",
        ),
        (
            "json",
            overlay(dir, "json.qcow2", &json, "raw"),
            "backing file",
        ),
        (
            "chain",
            overlay(dir, "top.qcow2", base.to_str().unwrap(), "qcow2"),
            "backing file",
        ),
        (
            "data-file",
            with_data_file(dir, "df.qcow2", false, marker),
            "data file",
        ),
        (
            "data-file-raw",
            with_data_file(dir, "dfr.qcow2", true, marker),
            "data file",
        ),
    ];
    out.sort_by_key(|(n, _, _)| *n);
    out.into_iter()
        .map(|(n, p, why)| (n.to_string(), p, why))
        .collect()
}

/// No server path in what a client reads: the test's directories (store, scratch, marker).
fn assert_no_paths(app: &TestApp, what: &str, text: &str) {
    let root = app.dir.path().to_str().unwrap();
    assert!(!text.contains(root), "{what}: a server path leaked: {text}");
    assert!(!text.contains("marker.raw"), "{what}: {text}");
    assert!(!text.contains("/scratch"), "{what}: {text}");
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

async fn wait_slim_ended(app: &TestApp, id: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (_, v) = app.get_json(&format!("/images/{id}")).await;
        if v["slimStatus"] != 1 {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "slim never ended: {v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Uploads `bytes` as `name` and follows it through every step: its check refuses it (status
/// 3, saying `why`), so does a slim, the download is the uploaded bytes without the host
/// file's `tag`, and no answer shows a server path.
async fn refused_at_every_step(app: &TestApp, name: &str, bytes: Vec<u8>, why: &str, tag: &[u8]) {
    let what = name;
    let id = app.upload_ok(name, bytes.clone()).await;
    let v = wait_checked(app, &id).await;
    assert_eq!(v["checkStatusResponse"]["status"], 3, "{what}: {v}");
    let msg = v["checkStatusResponse"]["msg"].as_str().unwrap();
    assert!(msg.contains(why), "{what}: {msg}");
    assert_no_paths(app, what, &v.to_string());

    let v = assert_error(app.slim(&id).await, 400, None).await;
    assert_eq!(v["code"], "SLIM_REFUSED", "{what}: {v}");
    assert!(v["message"].as_str().unwrap().contains(why), "{what}: {v}");
    assert_no_paths(app, what, &v.to_string());
    let (_, v) = app.get_json(&format!("/images/{id}")).await;
    assert_eq!(v["slimStatus"], 3, "{what}: {v}");
    assert_eq!(v["compressInfo"]["compressStatus"], 2, "{what}: {v}");
    assert_no_paths(app, what, &v.to_string());

    let got = app.download(&id).await;
    assert!(
        !contains(&got, tag),
        "{what}: the download carried the host file"
    );
    assert_eq!(got, bytes, "{what}: the download is not the uploaded image");
}

/// Upload, check, slim and download of every hostile image: refused at each step, the
/// download is the uploaded bytes, nothing of the host file and no path is ever shown.
async fn images_naming_host_files_never_serve_them(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    let (marker_path, tag) = marker(app.dir.path());
    for (what, path, why) in hostile_images(app.dir.path(), &marker_path) {
        let bytes = std::fs::read(&path).unwrap();
        refused_at_every_step(&app, &format!("{what}.qcow2"), bytes, why, &tag).await;
    }
    app.stop().await;
}

/// The slim inspects the image again: even a record that says "consistent" (a stale or forged
/// check) does not make a slim follow a backing or data file.
async fn slim_never_trusts_the_check_alone(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    let (marker_path, tag) = marker(app.dir.path());
    let db = file_system::db::connect(&app.database_url).await.unwrap();
    for (what, path, why) in hostile_images(app.dir.path(), &marker_path) {
        let bytes = std::fs::read(&path).unwrap();
        let id = app.upload_ok(&format!("{what}.qcow2"), bytes.clone()).await;
        wait_checked(&app, &id).await;
        entity::image::Entity::update_many()
            .col_expr(entity::image::Column::CheckStatus, 0.into())
            .col_expr(entity::image::Column::SlimStatus, 0.into())
            .filter(entity::image::Column::Id.eq(&id))
            .exec(&db)
            .await
            .unwrap();
        let r = app.slim(&id).await;
        assert_eq!(r.text().await.unwrap(), "compress in progress", "{what}");
        let v = wait_slim_ended(&app, &id).await;
        assert_eq!(v["slimStatus"], 3, "{what}: {v}");
        assert_eq!(v["compressInfo"]["compressStatus"], 2, "{what}: {v}");
        let msg = v["compressInfo"]["compressMsg"].as_str().unwrap();
        assert!(msg.contains(why), "{what}: {msg}");
        assert_no_paths(&app, &what, &v.to_string());
        let got = app.download(&id).await;
        assert!(
            !contains(&got, &tag),
            "{what}: the download carried the host file"
        );
        assert_eq!(got, bytes, "{what}");
    }
    db.close().await.unwrap();
    let left = app.leftovers().await;
    assert_eq!(left.len(), 7, "only the seven originals stay: {left:?}");
    app.stop().await;
}

/// Slims are accepted only for images whose check found them usable: consistent (0) or with
/// leaked clusters only (2); a corrupted image (1) is refused with 400 and slimStatus 3.
async fn slim_needs_a_usable_check(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    let bad =
        crate::checks::damaged_qcow2(app.dir.path(), "bad.qcow2", crate::checks::Damage::Corrupt);
    let bytes = std::fs::read(&bad).unwrap();
    let id = app.upload_ok("bad.qcow2", bytes.clone()).await;
    let v = wait_checked(&app, &id).await;
    assert_eq!(v["checkStatusResponse"]["status"], 1, "{v}");
    let v = assert_error(app.slim(&id).await, 400, None).await;
    assert_eq!(v["code"], "SLIM_REFUSED");
    assert!(v["message"].as_str().unwrap().contains("corrupted"), "{v}");
    let (_, v) = app.get_json(&format!("/images/{id}")).await;
    assert_eq!(v["slimStatus"], 3, "{v}");
    assert_eq!(app.download(&id).await, bytes);

    let leak =
        crate::checks::damaged_qcow2(app.dir.path(), "leak.qcow2", crate::checks::Damage::Leak);
    let id = app
        .upload_ok("leak.qcow2", std::fs::read(&leak).unwrap())
        .await;
    assert_eq!(
        wait_checked(&app, &id).await["checkStatusResponse"]["status"],
        2
    );
    assert_eq!(
        app.slim(&id).await.text().await.unwrap(),
        "compress in progress"
    );
    let v = wait_slim_ended(&app, &id).await;
    assert_eq!(v["slimStatus"], 2, "{v}");
    assert_eq!(v["checkStatusResponse"]["status"], 0, "{v}");
    app.stop().await;
}

/// A raw name (`.img`, `.iso`) hides nothing: this service reads such an image as raw bytes,
/// but a consumer that probes formats would follow what its header names, so the same images
/// are refused under a raw name (and a VMDK, which names its extents); a self-contained qcow2
/// named `.img`, as cloud images often are, stays a raw image that is not checked (status 5).
async fn raw_names_do_not_hide_images_naming_host_files(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    let (marker_path, tag) = marker(app.dir.path());
    let mut cases = hostile_images(app.dir.path(), &marker_path);
    let descriptor = app.dir.path().join("desc.vmdk");
    let text = format!(
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
         createType=\"monolithicFlat\"\nRW 2048 FLAT \"{}\" 0\n",
        marker_path.display()
    );
    std::fs::write(&descriptor, text).unwrap();
    cases.push(("vmdk-descriptor".into(), descriptor, "VMDK"));
    // Descriptors QEMU's probe takes without that first line: a bare version line, CRLF.
    for (name, eol) in [("vmdk-bare", "\n"), ("vmdk-crlf", "\r\n")] {
        let path = app.dir.path().join(format!("{name}.vmdk"));
        let text = format!(
            "version=1{eol}CID=fffffffe{eol}parentCID=ffffffff{eol}\
             createType=\"monolithicFlat\"{eol}RW 2048 FLAT \"{}\" 0{eol}",
            marker_path.display()
        );
        std::fs::write(&path, text).unwrap();
        cases.push((name.into(), path, "VMDK"));
    }
    // The old qcow format (version 1) with a backing file.
    let qcow1 = app.dir.path().join("v1.qcow");
    let made = std::process::Command::new("qemu-img")
        .args(["create", "-f", "qcow", "-F", "raw", "-b"])
        .arg(&marker_path)
        .arg(&qcow1)
        .arg("1M")
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    cases.push(("qcow1-backing".into(), qcow1, "backing file"));
    for (what, path, why) in cases {
        for ext in ["img", "iso"] {
            let bytes = std::fs::read(&path).unwrap();
            refused_at_every_step(&app, &format!("{what}.{ext}"), bytes, why, &tag).await;
        }
    }
    let cloud = make_qcow2(app.dir.path(), "cloud.qcow2", 16, 4);
    let id = app
        .upload_ok("cloud.img", std::fs::read(&cloud).unwrap())
        .await;
    let v = wait_checked(&app, &id).await;
    assert_eq!(v["checkStatusResponse"]["status"], 5, "{v}");
    app.stop().await;
}

/// A valid qcow2 of 2 MiB clusters whose `copies` guest clusters all map to one stored cluster
/// of random bytes, its refcount set to match: `qemu-img check` finds it consistent, and a
/// conversion writes the cluster out `copies` times.
fn amplifying_qcow2(dir: &Path, copies: u64) -> PathBuf {
    use std::io::{Read, Seek, SeekFrom, Write};
    const CLUSTER: u64 = 2 << 20;
    let raw = dir.join("one-cluster.raw");
    std::fs::write(&raw, pattern(99, CLUSTER as usize)).unwrap();
    let out = dir.join("amplifying.qcow2");
    let (raw_s, out_s) = (raw.to_str().unwrap(), out.to_str().unwrap());
    let options = "cluster_size=2M,refcount_bits=16";
    qemu_img(&[
        "convert", "-q", "-f", "raw", "-O", "qcow2", "-o", options, raw_s, out_s,
    ]);
    qemu_img(&["resize", "-q", out_s, &(copies * CLUSTER).to_string()]);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&out)
        .unwrap();
    let u64_at = |f: &mut std::fs::File, at: u64| {
        let mut b = [0u8; 8];
        f.seek(SeekFrom::Start(at)).unwrap();
        f.read_exact(&mut b).unwrap();
        u64::from_be_bytes(b)
    };
    const OFFSET: u64 = 0x00ff_ffff_ffff_fe00;
    let (l1, refcount_table) = (u64_at(&mut f, 40), u64_at(&mut f, 48));
    let l2 = u64_at(&mut f, l1) & OFFSET;
    let data = u64_at(&mut f, l2) & OFFSET;
    let entries: Vec<u8> = (0..copies).flat_map(|_| data.to_be_bytes()).collect();
    f.seek(SeekFrom::Start(l2)).unwrap();
    f.write_all(&entries).unwrap();
    let block = u64_at(&mut f, refcount_table);
    f.seek(SeekFrom::Start(block + data / CLUSTER * 2)).unwrap();
    f.write_all(&(copies as u16).to_be_bytes()).unwrap();
    out
}

/// An image whose conversion would write far more than it holds (guest clusters sharing one
/// stored cluster) checks consistent, but its slim stops at the output limit: the slim fails
/// saying so, the image stays as it was, and scratch is empty.
async fn a_slim_may_not_amplify_an_image(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    let img = amplifying_qcow2(app.dir.path(), 128);
    let bytes = std::fs::read(&img).unwrap();
    assert!(bytes.len() < 32 << 20, "{}", bytes.len());
    let id = app.upload_ok("amp.qcow2", bytes.clone()).await;
    let v = wait_checked(&app, &id).await;
    assert_eq!(v["checkStatusResponse"]["status"], 0, "{v}");
    assert_eq!(app.slim(&id).await.status(), 200);
    let v = wait_slim_ended(&app, &id).await;
    assert_eq!(v["slimStatus"], 3, "{v}");
    assert_eq!(v["compressInfo"]["compressStatus"], 2, "{v}");
    let msg = v["compressInfo"]["compressMsg"].as_str().unwrap();
    assert!(msg.contains("would be larger than"), "{v}");
    assert_no_paths(&app, "amplifying slim", msg);
    assert_eq!(app.download(&id).await, bytes);
    let left = app.leftovers().await;
    assert_eq!(left.len(), 1, "only the original: {left:?}");
    app.stop().await;
}

crate::backend_tests!(
    images_naming_host_files_never_serve_them,
    slim_never_trusts_the_check_alone,
    slim_needs_a_usable_check,
    raw_names_do_not_hide_images_naming_host_files,
    a_slim_may_not_amplify_an_image
);
