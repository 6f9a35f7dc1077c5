//! Integrity end to end: declared totals, per-chunk and whole-image checksums, SHA-256 of every
//! image, validators and conditional downloads, and re-checks that find corruption.

use crate::{checks::wait_checked, helpers::*, slims::wait_slim_done};
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use md5::Digest as _;
use reqwest::multipart;

pub(crate) fn md5_hex(b: &[u8]) -> String {
    hex::encode(md5::Md5::digest(b))
}

fn crc32c_hex(b: &[u8]) -> String {
    format!("{:08x}", crc32c::crc32c(b))
}

/// Sends chunk `n` with extra text fields (before the part, or after it) and headers.
async fn chunk_with(
    app: &TestApp,
    identifier: &str,
    n: u32,
    bytes: Vec<u8>,
    before: &[(&str, String)],
    after: &[(&str, String)],
    headers: &[(&str, String)],
) -> reqwest::Response {
    let mut form = multipart::Form::new().text("identifier", identifier.to_string());
    for (k, v) in before {
        form = form.text(k.to_string(), v.clone());
    }
    form = form.part(
        "part",
        multipart::Part::bytes(bytes).file_name(format!("{n}.part")),
    );
    for (k, v) in after {
        form = form.text(k.to_string(), v.clone());
    }
    let mut req = app.client.post(app.url("/images/upload")).multipart(form);
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    req.send().await.unwrap()
}

async fn merge_with(
    app: &TestApp,
    identifier: &str,
    file_name: &str,
    fields: &[(&str, String)],
) -> reqwest::Response {
    let mut form = multipart::Form::new()
        .text("identifier", identifier.to_string())
        .text("filename", file_name.to_string())
        .text("userId", "tester")
        .text("priority", "0");
    for (k, v) in fields {
        form = form.text(k.to_string(), v.clone());
    }
    app.client
        .post(app.url("/images/merge"))
        .multipart(form)
        .send()
        .await
        .unwrap()
}

/// The chunk numbers the resume query reports.
/// Sends `chunks` as chunks 1, 2, ... of `identifier`, each answered 200.
async fn send_chunks(app: &TestApp, identifier: &str, chunks: &[Vec<u8>]) {
    for (i, c) in chunks.iter().enumerate() {
        let r = app.chunk(identifier, i as u32 + 1, c.clone()).await;
        assert_eq!(r.status(), 200, "chunk {} of {identifier}", i + 1);
    }
}

async fn held(app: &TestApp, identifier: &str) -> Vec<u64> {
    let (_, v) = app
        .get_json(&format!("/images/upload?identifier={identifier}"))
        .await;
    v["chunks"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| c["chunkNumber"].as_u64().unwrap())
                .collect()
        })
        .unwrap_or_default()
}

async fn declared_totals_are_enforced(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    let chunks: Vec<Vec<u8>> = (0..3).map(|i| pattern(i, 10_000 + i as usize)).collect();
    chunks_declaring_totals(&app, &chunks).await;
    late_totals_hold_for_held_chunks(&app).await;
    merges_enforce_totals(&app, &chunks).await;
    merges_count_the_bytes(&app, &chunks).await;
    app.stop().await;
}

/// The totals a chunk `c` of the three in `declared_totals_are_enforced` declares: `total`
/// bytes in 3 chunks of 10000 bytes, this one `c.len()` bytes.
fn totals(total: usize, c: &[u8]) -> Vec<(&'static str, String)> {
    vec![
        ("totalSize", total.to_string()),
        ("totalChunks", "3".to_string()),
        ("chunkSize", "10000".to_string()),
        ("currentChunkSize", c.len().to_string()),
    ]
}

/// Chunks 1 and 2 of "tot" stored; chunks that are truncated, declare garbage, lie beyond
/// totalChunks or declare other totals refused.
async fn chunks_declaring_totals(app: &TestApp, chunks: &[Vec<u8>]) {
    let total: usize = chunks.iter().map(Vec::len).sum();
    // A body shorter than currentChunkSize (a truncated chunk): refused, nothing stored.
    let mut short = chunks[0].clone();
    short.truncate(9_000);
    let r = chunk_with(app, "tot", 1, short, &totals(total, &chunks[0]), &[], &[]).await;
    let v = assert_error(r, 400, None).await;
    assert_eq!(v["code"], "SIZE_MISMATCH", "{v}");
    assert!(held(app, "tot").await.is_empty());
    // Garbage totals: 400.
    for (k, bad) in [
        ("totalSize", "-1"),
        ("totalChunks", "0"),
        ("totalChunks", "x"),
        ("chunkSize", "0"),
    ] {
        let r = chunk_with(
            app,
            "tot",
            1,
            chunks[0].clone(),
            &[(k, bad.to_string())],
            &[],
            &[],
        )
        .await;
        assert_error(r, 400, None).await;
    }
    // Chunks 1 and 2 of 3, the totals after the part (as some clients send them).
    for (i, c) in chunks.iter().enumerate().take(2) {
        let r = chunk_with(
            app,
            "tot",
            i as u32 + 1,
            c.clone(),
            &[],
            &totals(total, c),
            &[],
        )
        .await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    // A chunk beyond totalChunks, or declaring other totals: 400.
    let r = chunk_with(
        app,
        "tot",
        4,
        chunks[0].clone(),
        &totals(total, &chunks[0]),
        &[],
        &[],
    )
    .await;
    assert!(assert_error(r, 400, None).await["message"]
        .as_str()
        .unwrap()
        .contains("totalChunks"));
    let r = chunk_with(
        app,
        "tot",
        3,
        chunks[2].clone(),
        &[("totalSize", "5".into())],
        &[],
        &[],
    )
    .await;
    assert_error(r, 400, None).await;
}

/// Totals declared late hold for the chunks already held: chunk 3 of an upload is there,
/// so a chunk declaring totalChunks 2 is refused and nothing is recorded.
async fn late_totals_hold_for_held_chunks(app: &TestApp) {
    for n in 1..=3 {
        let r = chunk_with(app, "late", n, vec![n as u8; 100], &[], &[], &[]).await;
        assert_eq!(r.status(), 200);
    }
    let two = [("totalChunks", "2".to_string())];
    let r = chunk_with(app, "late", 1, vec![1; 100], &two, &[], &[]).await;
    let v = assert_error(r, 400, None).await;
    assert!(v["message"].as_str().unwrap().contains("chunk 3"), "{v}");
    assert_eq!(held(app, "late").await, vec![1, 2, 3]);
    let three = [("totalChunks", "3".to_string())];
    let r = chunk_with(app, "late", 1, vec![1; 100], &three, &[], &[]).await;
    assert_eq!(r.status(), 200);
}

/// The merge of "tot" knows the totals from its chunks, and checks its own.
async fn merges_enforce_totals(app: &TestApp, chunks: &[Vec<u8>]) {
    let total: usize = chunks.iter().map(Vec::len).sum();
    // The merge knows the totals from the chunks: chunk 3 is missing, named; chunks kept.
    let r = app.merge("tot", "disk.img").await;
    let v = assert_error(r, 400, None).await;
    assert_eq!(v["code"], "MISSING_CHUNKS", "{v}");
    assert!(v["message"].as_str().unwrap().contains('3'), "{v}");
    assert_eq!(held(app, "tot").await, vec![1, 2]);
    // A chunk that would take the upload past its totalSize: refused at once.
    let big = pattern(9, total);
    let r = chunk_with(app, "tot", 3, big, &[], &[], &[]).await;
    assert_eq!(assert_error(r, 400, None).await["code"], "SIZE_MISMATCH");
    assert_eq!(held(app, "tot").await, vec![1, 2]);
    // The merge's own totals are checked as well.
    let r = merge_with(app, "tot", "disk.img", &[("totalChunks", "2".into())]).await;
    assert_error(r, 400, None).await;
    // Chunk 3 arrives; a merge that declares another size is refused, the right one works.
    let r = chunk_with(
        app,
        "tot",
        3,
        chunks[2].clone(),
        &totals(total, &chunks[2]),
        &[],
        &[],
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = merge_with(
        app,
        "tot",
        "disk.img",
        &[("totalSize", (total + 1).to_string())],
    )
    .await;
    assert_error(r, 400, None).await;
    let r = app.merge("tot", "disk.img").await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        app.download(v["imageId"].as_str().unwrap()).await,
        chunks.concat()
    );
}

/// Without totals the merge checks what it can (no gaps), as before; with totalSize it also
/// counts the bytes: 2 of 3 chunks are not a complete image.
async fn merges_count_the_bytes(app: &TestApp, chunks: &[Vec<u8>]) {
    let total: usize = chunks.iter().map(Vec::len).sum();
    send_chunks(app, "part2", &chunks[..2]).await;
    let r = merge_with(
        app,
        "part2",
        "disk.img",
        &[("totalSize", total.to_string())],
    )
    .await;
    let v = assert_error(r, 400, None).await;
    assert_eq!(v["code"], "SIZE_MISMATCH", "{v}");
    assert_eq!(held(app, "part2").await, vec![1, 2]);
}

/// A chunk's checksum as a header, or as a `chunkChecksum` field before or after the part.
type Form = Vec<(&'static str, String)>;

/// Every form a chunk's checksum of `good` can take: (what, fields before the part, fields
/// after it, headers).
fn checksum_forms(good: &[u8]) -> Vec<(&'static str, Form, Form, Form)> {
    let sha = sha2::Sha256::digest(good);
    let md5 = md5::Md5::digest(good);
    vec![
        (
            "content-md5",
            vec![],
            vec![],
            vec![("Content-MD5", B64.encode(md5))],
        ),
        (
            "repr-digest",
            vec![],
            vec![],
            vec![("Repr-Digest", format!("sha-256=:{}:", B64.encode(sha)))],
        ),
        (
            "content-digest",
            vec![],
            vec![],
            vec![("Content-Digest", format!("sha-256=:{}:", B64.encode(sha)))],
        ),
        (
            "digest",
            vec![],
            vec![],
            vec![("Digest", format!("SHA-256={}", B64.encode(sha)))],
        ),
        (
            "field md5 before",
            vec![("chunkChecksum", format!("md5:{}", md5_hex(good)))],
            vec![],
            vec![],
        ),
        (
            "field sha256 after",
            vec![],
            vec![("chunkChecksum", format!("sha256:{}", hex::encode(sha)))],
            vec![],
        ),
        (
            "field crc32c after",
            vec![],
            vec![("chunkChecksum", format!("crc32c:{}", crc32c_hex(good)))],
            vec![],
        ),
    ]
}

async fn chunk_checksums_in_every_form(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    let good = pattern(7, 70_000);
    let other = pattern(8, 70_000);
    let forms = checksum_forms(&good);
    for (i, (what, before, after, headers)) in forms.iter().enumerate() {
        let id = format!("ck{i}");
        // The right bytes with their checksum: stored.
        let r = chunk_with(&app, &id, 1, good.clone(), before, after, headers).await;
        assert_eq!(r.status(), 200, "{what}: {}", r.text().await.unwrap());
        // Other bytes with the same checksum: refused, the stored copy kept.
        let r = chunk_with(&app, &id, 1, other.clone(), before, after, headers).await;
        let v = assert_error(r, 400, None).await;
        assert_eq!(v["code"], "CHECKSUM_MISMATCH", "{what}: {v}");
        // The same for a chunk never stored before: nothing stored.
        let r = chunk_with(&app, &id, 2, other.clone(), before, after, headers).await;
        assert_eq!(
            assert_error(r, 400, None).await["code"],
            "CHECKSUM_MISMATCH"
        );
        assert_eq!(held(&app, &id).await, vec![1], "{what}");
        let r = app.merge(&id, "disk.img").await;
        assert_eq!(r.status(), 200, "{what}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            app.download(v["imageId"].as_str().unwrap()).await,
            good,
            "{what}"
        );
    }
    malformed_checksums_are_refused(&app, &good).await;
    assert!(held(&app, "bad").await.is_empty());
    assert!(app.leftovers().await.iter().all(|l| !l.contains("scratch")));
    app.stop().await;
}

/// Malformed declarations: 400, not ignored.
async fn malformed_checksums_are_refused(app: &TestApp, good: &[u8]) {
    for (h, v) in [
        ("Content-MD5", "not base64"),
        ("Content-MD5", "AAAA"),
        ("Repr-Digest", "sha-256=:AAAA:"),
        ("Repr-Digest", ";;;==="),
        ("Content-Digest", "=:AAAA:"),
    ] {
        let r = chunk_with(
            app,
            "bad",
            1,
            good.to_vec(),
            &[],
            &[],
            &[(h, v.to_string())],
        )
        .await;
        assert_error(r, 400, None).await;
    }
    for v in ["md5", "sha1:00", "md5:xyz", "crc32c:123"] {
        let r = chunk_with(
            app,
            "bad",
            1,
            good.to_vec(),
            &[("chunkChecksum", v.into())],
            &[],
            &[],
        )
        .await;
        assert_error(r, 400, None).await;
    }
}

async fn whole_image_checksums(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    let data = pattern(21, 300_000);
    let sha = hex::encode(sha2::Sha256::digest(&data));
    wrong_whole_checksums_keep_nothing(&app, &data, &sha).await;
    right_whole_checksums_are_recorded(&app, &data, &sha).await;
    let parts: Vec<Vec<u8>> = data.chunks(100_000).map(<[u8]>::to_vec).collect();
    merges_verify_whole_checksums(&app, &data, &sha, &parts).await;
    repeated_merges_verify_checksums(&app, &data, &sha, &parts).await;
    app.stop().await;
}

/// POST /images with a wrong checksum records nothing and keeps nothing.
async fn wrong_whole_checksums_keep_nothing(app: &TestApp, data: &[u8], sha: &str) {
    // POST /images: a wrong checksum records nothing and keeps nothing, whether it came
    // before the file (hashed on the way) or after it (the stored bytes read again), for a
    // plain image and for a zip.
    let on_disk = app.dir.path().join("sent.img");
    std::fs::write(&on_disk, data).unwrap();
    let zip_on_disk = app.dir.path().join("sent.zip");
    python_zip(
        &zip_on_disk,
        &format!("z.write({:?}, 'd/disk.img')", on_disk.to_str().unwrap()),
    );
    for wrong in [
        format!("md5:{}", md5_hex(b"x")),
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(b"x"))),
    ] {
        let r = app
            .upload("disk.img", data.to_vec(), &[("checksum", &wrong)])
            .await;
        assert_eq!(
            assert_error(r, 400, None).await["code"],
            "CHECKSUM_MISMATCH"
        );
        for (path, name) in [(&on_disk, "disk.img"), (&zip_on_disk, "disk.zip")] {
            let r = app.upload_path(path, name, &[("checksum", &wrong)]).await;
            let v = assert_error(r, 400, None).await;
            assert_eq!(v["code"], "CHECKSUM_MISMATCH", "{name} {wrong}: {v}");
        }
    }
    // The archive's own MD5, declared after it: it is read again and verified.
    let archive = std::fs::read(&zip_on_disk).unwrap();
    let declared = format!("md5:{}", md5_hex(&archive));
    let r = app
        .upload_path(&zip_on_disk, "disk.zip", &[("checksum", &declared)])
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let zipped: serde_json::Value = r.json().await.unwrap();
    let zipped = zipped["imageId"].as_str().unwrap().to_string();
    assert_eq!(app.download(&zipped).await, data);
    let v = wait_checked(app, &zipped).await;
    assert_eq!(v["originalChecksum"], md5_hex(data), "{v}");
    assert_eq!(v["originalSha256"], sha, "{v}");
    let r = app.delete_image(&zipped).await;
    assert_eq!(r.status(), 200);
    let r = app
        .upload("disk.img", data.to_vec(), &[("checksum", "sha1:00")])
        .await;
    assert_error(r, 400, None).await;
    let (_, list) = app.get_json("/images").await;
    assert_eq!(list.as_array().unwrap().len(), 0, "{list}");
    assert!(
        app.leftovers().await.is_empty(),
        "{:?}",
        app.leftovers().await
    );
}

/// POST /images with the right checksum: recorded.
async fn right_whole_checksums_are_recorded(app: &TestApp, data: &[u8], sha: &str) {
    // The right one (either algorithm, checksum before or after the file): recorded.
    let r = app
        .upload(
            "disk.img",
            data.to_vec(),
            &[("checksum", &format!("sha256:{sha}"))],
        )
        .await;
    assert_eq!(r.status(), 200);
    let flat: serde_json::Value = r.json().await.unwrap();
    assert_eq!(flat["sha256"], sha, "{flat}");
    let id = flat["imageId"].as_str().unwrap().to_string();
    let r = app
        .upload_path(
            &{
                let p = app.dir.path().join("d.img");
                std::fs::write(&p, data).unwrap();
                p
            },
            "d.img",
            &[("checksum", &format!("md5:{}", md5_hex(data)))],
        )
        .await;
    assert_eq!(r.status(), 200);
    let v = wait_checked(app, &id).await;
    assert_eq!(v["sha256"], sha, "{v}");
    assert_eq!(v["originalSha256"], sha, "{v}");
    assert_eq!(v["originalChecksum"], md5_hex(data), "{v}");
    assert_eq!(
        v["checkStatusResponse"]["checkInfo"]["checksum"],
        md5_hex(data)
    );
    assert_eq!(v["checkStatusResponse"]["checkInfo"]["sha256"], sha);
}

/// A merge with a wrong checksum: 400, no image, every chunk kept; fixed, it merges.
async fn merges_verify_whole_checksums(app: &TestApp, data: &[u8], sha: &str, parts: &[Vec<u8>]) {
    send_chunks(app, "whole", parts).await;
    let wrong = format!("sha256:{}", hex::encode(sha2::Sha256::digest(b"y")));
    let r = merge_with(app, "whole", "disk.img", &[("checksum", wrong)]).await;
    let v = assert_error(r, 400, None).await;
    assert_eq!(v["code"], "CHECKSUM_MISMATCH", "{v}");
    assert_eq!(held(app, "whole").await, vec![1, 2, 3]);
    let (_, list) = app.get_json("/images").await;
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    // The client replaces a chunk and merges again, verified.
    let r = merge_with(
        app,
        "whole",
        "disk.img",
        &[("checksum", format!("md5:{}", md5_hex(data)))],
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let merged: serde_json::Value = r.json().await.unwrap();
    let mid = merged["imageId"].as_str().unwrap();
    // Verified at the merge, its digests are known (and recorded) at once.
    assert_eq!(merged["sha256"], sha, "{merged}");
    assert_eq!(app.download(mid).await, data);
    let v = wait_checked(app, mid).await;
    assert_eq!(v["sha256"], sha, "{v}");
    assert_eq!(v["originalChecksum"], md5_hex(data), "{v}");
    // A repeated merge answers with the image only when what it declares holds.
    let wrong = format!("md5:{}", md5_hex(b"z"));
    let r = merge_with(app, "whole", "disk.img", &[("checksum", wrong)]).await;
    assert_eq!(
        assert_error(r, 400, None).await["code"],
        "CHECKSUM_MISMATCH"
    );
    let r = merge_with(app, "whole", "disk.img", &[("totalSize", "5".into())]).await;
    assert_eq!(assert_error(r, 400, None).await["code"], "SIZE_MISMATCH");
    let r = merge_with(
        app,
        "whole",
        "disk.img",
        &[("checksum", format!("sha256:{sha}"))],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["imageId"], mid);
}

/// A merge repeated with a checksum, and one verified by SHA-256 only.
async fn repeated_merges_verify_checksums(
    app: &TestApp,
    data: &[u8],
    sha: &str,
    parts: &[Vec<u8>],
) {
    // Merged without a checksum, repeated with one: the object is hashed to answer.
    send_chunks(app, "plain", parts).await;
    assert_eq!(app.merge("plain", "disk.img").await.status(), 200);
    let r = merge_with(
        app,
        "plain",
        "disk.img",
        &[("checksum", format!("sha256:{}", "0".repeat(64)))],
    )
    .await;
    assert_eq!(
        assert_error(r, 400, None).await["code"],
        "CHECKSUM_MISMATCH"
    );
    let r = merge_with(
        app,
        "plain",
        "disk.img",
        &[("checksum", format!("md5:{}", md5_hex(data)))],
    )
    .await;
    assert_eq!(r.status(), 200);
    // Merged verified by SHA-256 only: the answer shows it, the MD5 comes with the first check.
    send_chunks(app, "bysha", parts).await;
    let r = merge_with(
        app,
        "bysha",
        "disk.img",
        &[("checksum", format!("sha256:{sha}"))],
    )
    .await;
    assert_eq!(r.status(), 200);
    let merged: serde_json::Value = r.json().await.unwrap();
    assert_eq!(merged["sha256"], sha, "{merged}");
    let v = wait_checked(app, merged["imageId"].as_str().unwrap()).await;
    assert_eq!(v["originalChecksum"], md5_hex(data), "{v}");
    assert_eq!(v["originalSha256"], sha, "{v}");
    assert_eq!(
        v["checkStatusResponse"]["checkInfo"]["checksum"],
        md5_hex(data),
        "{v}"
    );
}

async fn downloads_carry_validators(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    let data = pattern(31, 200_000);
    let id = app.upload_ok("disk.img", data.clone()).await;
    let url = app.url(&format!("/images/{id}/action/download"));
    let zurl = format!("{url}?isZip=true");
    let (etag, modified, zetag) = validators_are_sent(&app, &url, &zurl, &data).await;
    conditions_answer_304_and_412(&app, (&url, &etag, &modified), (&zurl, &zetag)).await;
    if_range_names_the_bytes(&app, &url, (&etag, &modified), &data).await;
    head_answers_as_get(&app, &url, &zurl).await;
    app.stop().await;
}

/// GET `u` with the headers `h`.
async fn get(app: &TestApp, u: &str, h: &[(&str, &str)]) -> reqwest::Response {
    let mut r = app.client.get(u);
    for (k, v) in h {
        r = r.header(*k, *v);
    }
    r.send().await.unwrap()
}

/// A download (`url`, zipped `zurl`) of `data` carries an ETag, Last-Modified and (plain)
/// Repr-Digest, which browser clients may read. Gives the ETag, Last-Modified and the zipped
/// form's ETag.
async fn validators_are_sent(
    app: &TestApp,
    url: &str,
    zurl: &str,
    data: &[u8],
) -> (String, String, String) {
    let r = get(app, url, &[]).await;
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let modified = r.headers()["last-modified"].to_str().unwrap().to_string();
    let digest = format!("sha-256=:{}:", B64.encode(sha2::Sha256::digest(data)));
    assert_eq!(r.headers()["repr-digest"], digest.as_str());
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    let z = get(app, zurl, &[]).await;
    let zetag = z.headers()["etag"].to_str().unwrap().to_string();
    assert_ne!(zetag, etag, "plain and zipped forms differ");
    assert!(z.headers().get("repr-digest").is_none());
    // Browser clients may read the validators.
    let r = app
        .client
        .get(url)
        .header("Origin", "http://console.example")
        .send()
        .await
        .unwrap();
    let exposed = r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    for h in ["etag", "last-modified", "repr-digest"] {
        assert!(exposed.contains(h), "{exposed}");
    }
    (etag, modified, zetag)
}

/// If-None-Match and If-Modified-Since answer 304, If-Match and If-Unmodified-Since 412, for
/// the plain (`url`, `etag`, `modified`) and the zipped form (`zurl`, `zetag`).
async fn conditions_answer_304_and_412(
    app: &TestApp,
    (url, etag, modified): (&str, &str, &str),
    (zurl, zetag): (&str, &str),
) {
    // 304s, 412s.
    for h in [
        ("If-None-Match", etag),
        ("If-None-Match", "*"),
        ("If-Modified-Since", modified),
    ] {
        let r = get(app, url, &[h]).await;
        assert_eq!(r.status(), 304, "{h:?}");
        assert_eq!(r.headers()["etag"], etag);
        assert!(r.bytes().await.unwrap().is_empty());
    }
    assert_eq!(
        get(app, zurl, &[("If-None-Match", zetag)]).await.status(),
        304
    );
    assert_eq!(
        get(app, zurl, &[("If-None-Match", etag)]).await.status(),
        200
    );
    assert_eq!(
        get(app, url, &[("If-None-Match", "\"other\"")])
            .await
            .status(),
        200
    );
    let r = get(app, url, &[("If-Match", "\"other\"")]).await;
    assert_eq!(
        assert_error(r, 412, None).await["code"],
        "PRECONDITION_FAILED"
    );
    assert_eq!(get(app, url, &[("If-Match", etag)]).await.status(), 200);
    let old = "Mon, 01 Jan 2001 00:00:00 GMT";
    assert_eq!(
        get(app, url, &[("If-Unmodified-Since", old)])
            .await
            .status(),
        412
    );
}

/// If-Range: the same bytes (`etag`, `modified`) -> the range; other bytes -> all of `data`.
async fn if_range_names_the_bytes(
    app: &TestApp,
    url: &str,
    (etag, modified): (&str, &str),
    data: &[u8],
) {
    let old = "Mon, 01 Jan 2001 00:00:00 GMT";
    for ok in [etag, modified] {
        let r = get(app, url, &[("Range", "bytes=10-19"), ("If-Range", ok)]).await;
        assert_eq!(r.status(), 206, "{ok}");
        assert_eq!(r.bytes().await.unwrap().to_vec(), data[10..20].to_vec());
    }
    // A list is not one validator, even one that names these bytes first.
    let listed = format!("{etag}, \"other\"");
    for stale in ["\"other\"", old, "W/\"x\"", listed.as_str()] {
        let r = get(app, url, &[("Range", "bytes=10-19"), ("If-Range", stale)]).await;
        assert_eq!(r.status(), 200, "{stale}");
        assert_eq!(r.bytes().await.unwrap().to_vec(), data);
    }
}

/// HEAD answers the same headers as GET, without a body.
async fn head_answers_as_get(app: &TestApp, url: &str, zurl: &str) {
    for (u, range) in [(url, None), (url, Some("bytes=0-99")), (zurl, None)] {
        let mut req = app.client.head(u);
        if let Some(rg) = range {
            req = req.header("Range", rg);
        }
        let h = req.send().await.unwrap();
        let mut g = app.client.get(u);
        if let Some(rg) = range {
            g = g.header("Range", rg);
        }
        let g = g.send().await.unwrap();
        assert_eq!(h.status(), g.status());
        for name in [
            "etag",
            "last-modified",
            "content-length",
            "content-type",
            "content-disposition",
            "content-range",
            "accept-ranges",
            "repr-digest",
        ] {
            assert_eq!(
                h.headers().get(name),
                g.headers().get(name),
                "{name} of {u} {range:?}"
            );
        }
        assert!(h.bytes().await.unwrap().is_empty());
    }
}

async fn resumed_download_across_a_slim(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    let img = make_qcow2(app.dir.path(), "s.qcow2", 64, 8);
    let r = app.upload_path(&img, "s.qcow2", &[("userId", "u")]).await;
    assert_eq!(r.status(), 200);
    let id = r.json::<serde_json::Value>().await.unwrap()["imageId"]
        .as_str()
        .unwrap()
        .to_string();
    wait_checked(&app, &id).await;
    let url = app.url(&format!("/images/{id}/action/download"));
    let first = app
        .client
        .get(&url)
        .header("Range", "bytes=0-1023")
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 206);
    let etag = first.headers()["etag"].to_str().unwrap().to_string();
    let r = app.slim(&id).await;
    assert_eq!(r.text().await.unwrap(), "compress in progress");
    let v = wait_slim_done(&app, &id).await;
    assert_eq!(v["slimStatus"], 2, "{v}");
    // The served bytes changed: the resumed request gets the whole new representation.
    let r = app
        .client
        .get(&url)
        .header("Range", "bytes=1024-")
        .header("If-Range", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let new_etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert_ne!(new_etag, etag);
    let body = r.bytes().await.unwrap();
    assert_eq!(body.len() as u64, v["size"].as_u64().unwrap());
    let sha = hex::encode(sha2::Sha256::digest(&body));
    // The record shows the served bytes' hashes and keeps the original's.
    assert_eq!(v["sha256"], sha.as_str(), "{v}");
    assert_eq!(v["originalSha256"], sha256_file(&img).as_str(), "{v}");
    assert_ne!(v["originalSha256"], v["sha256"]);
    assert_eq!(
        app.client
            .get(&url)
            .header("If-None-Match", &etag)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    app.stop().await;
}

/// Replaces a stored object's bytes behind the service's back.
async fn overwrite(app: &TestApp, key: &str, bytes: Vec<u8>) {
    assert!(app.object_exists("images", key).await, "{key}");
    app.write_object(key, bytes).await;
}

/// Removes a stored object behind the service's back.
async fn remove(app: &TestApp, key: &str) {
    if app.backend.is_s3() {
        let (client, prefix) = app.s3();
        client
            .delete_object()
            .bucket("images")
            .key(format!("{prefix}{key}"))
            .send()
            .await
            .unwrap();
    } else {
        std::fs::remove_file(app.dir.path().join("objects/images").join(key)).unwrap();
    }
}

/// Uploads a fresh 16 MiB qcow2 named `name` and waits for its (consistent) check: its id and
/// where its file is.
async fn checked_qcow2(app: &TestApp, name: &str) -> (String, std::path::PathBuf) {
    let img = make_qcow2(app.dir.path(), name, 16, 2);
    let r = app.upload_path(&img, name, &[]).await;
    let id = r.json::<serde_json::Value>().await.unwrap()["imageId"]
        .as_str()
        .unwrap()
        .to_string();
    let v = wait_checked(app, &id).await;
    assert_eq!(v["checkStatusResponse"]["status"], 0, "{v}");
    (id, img)
}

/// `POST /images/{id}/action/check`.
pub(crate) async fn recheck(app: &TestApp, id: &str) -> reqwest::Response {
    let url = app.url(&format!("/images/{id}/action/check"));
    app.client.post(url).send().await.unwrap()
}

async fn rechecks_find_corruption(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    let (id, img) = checked_qcow2(&app, "c.qcow2").await;
    // A re-check of intact bytes: consistent again.
    let r = recheck(&app, &id).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(
        [
            "check in progress",
            "The image is being checked. No need to check again."
        ]
        .contains(&text.as_str()),
        "{text}"
    );
    let v = wait_checked(&app, &id).await;
    assert_eq!(v["checkStatusResponse"]["status"], 0, "{v}");
    // One byte changed in the store: the re-check says so.
    let mut bytes = std::fs::read(&img).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    let changed_md5 = md5_hex(&bytes);
    overwrite(&app, &format!("images/{id}"), bytes).await;
    assert_eq!(recheck(&app, &id).await.status(), 200);
    let v = wait_checked(&app, &id).await;
    let st = &v["checkStatusResponse"];
    assert_eq!(st["status"], 1, "{v}");
    assert!(
        st["msg"].as_str().unwrap().contains("no longer match"),
        "{v}"
    );
    // The verdict carries the MD5 of the bytes found (a check verifies with SHA-256 alone
    // when both digests are recorded, and hashes changed bytes again for the record).
    assert_eq!(st["checkInfo"]["checksum"], changed_md5.as_str(), "{v}");
    let id2 = slim_refuses_changed_bytes(&app).await;
    // An object gone from the store: the re-check says so at once, without stale digests.
    remove(&app, &format!("images/{id2}")).await;
    assert_eq!(recheck(&app, &id2).await.status(), 200);
    let v = wait_checked(&app, &id2).await;
    let st = &v["checkStatusResponse"];
    assert_eq!(st["status"], 1, "{v}");
    assert!(
        st["msg"]
            .as_str()
            .unwrap()
            .contains("missing from the store"),
        "{v}"
    );
    assert_eq!(st["checkInfo"]["checksum"], "", "{v}");
    // Unknown ids: the usual 404.
    let r = recheck(&app, &uuid::Uuid::new_v4().to_string()).await;
    assert_eq!(assert_error(r, 404, None).await["code"], "IMAGE_NOT_FOUND");
    app.stop().await;
}

/// A slim re-hashes its input: bytes changed since the (consistent) check are refused, never
/// made the new reference, and nothing of the refused slim is left. The image's id.
async fn slim_refuses_changed_bytes(app: &TestApp) -> String {
    let (id2, img2) = checked_qcow2(app, "d.qcow2").await;
    let mut bytes = std::fs::read(&img2).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    overwrite(app, &format!("images/{id2}"), bytes).await;
    let r = app.slim(&id2).await;
    assert_eq!(r.status(), 200);
    let v = wait_slim_done(app, &id2).await;
    assert_eq!(v["slimStatus"], 3, "{v}");
    assert_eq!(v["checkStatusResponse"]["status"], 1, "{v}");
    assert!(
        v["compressInfo"]["compressMsg"]
            .as_str()
            .unwrap()
            .contains("no longer match"),
        "{v}"
    );
    // Nothing of the refused slim is left in the store.
    let left = app.leftovers().await;
    assert!(!left.iter().any(|p| p.ends_with(".slim")), "{left:?}");
    id2
}

/// A chunk is received where the fields before it point (on the local store, straight into
/// its place in the upload); fields after it (over the query's) still decide where it lands, a
/// body naming two uploads is refused, and a chunk refused
/// once received leaves nothing recorded. Two copies of a chunk sent at once both land safely.
async fn fields_after_a_chunk_decide_where_it_lands(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    let chunks: Vec<Vec<u8>> = (0..4)
        .map(|i| pattern(40 + i, 90_000 + i as usize))
        .collect();
    let send = |id: &'static str, n: u32, i: usize, after: Vec<(&'static str, String)>| {
        let body = chunks[i].clone();
        let app = &app;
        async move { chunk_with(app, id, n, body, &[], &after, &[]).await }
    };
    assert_eq!(send("late", 1, 0, vec![]).await.status(), 200);
    // Received as chunk 2 (the next in order, from its file name), then a field says 3.
    let r = send("late", 2, 2, vec![("chunkNumber", "3".into())]).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(held(&app, "late").await, vec![1, 3]);
    // Received as chunk 2 of "late" (the query's identifier), then a body field names another
    // upload (a body field wins over the query): chunk 2 of that one.
    let form = multipart::Form::new()
        .part(
            "part",
            multipart::Part::bytes(chunks[1].clone()).file_name("2.part"),
        )
        .text("identifier", "other");
    let r = app
        .client
        .post(app.url("/images/upload?identifier=late"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(held(&app, "other").await, vec![2]);
    assert_eq!(held(&app, "late").await, vec![1, 3]);
    // The body naming two uploads, before and after the part: refused, stored in neither.
    let r = send("late", 2, 1, vec![("identifier", "third".into())]).await;
    assert_eq!(
        assert_error(r, 400, None).await["code"],
        "INVALID_PARAMETER"
    );
    assert_eq!(held(&app, "late").await, vec![1, 3]);
    assert_eq!(held(&app, "third").await, Vec::<u64>::new());
    // Refused once received (the checksum follows the bytes): nothing recorded.
    let wrong = format!("sha256:{}", hex::encode(sha2::Sha256::digest(b"not it")));
    let r = send("late", 2, 1, vec![("chunkChecksum", wrong)]).await;
    assert_eq!(
        assert_error(r, 400, None).await["code"],
        "CHECKSUM_MISMATCH"
    );
    assert_eq!(held(&app, "late").await, vec![1, 3]);
    // The same chunk twice at once, and the last one beside them.
    let (a, b2, c) = tokio::join!(
        send("late", 2, 1, vec![]),
        send("late", 2, 1, vec![]),
        send("late", 4, 3, vec![])
    );
    for r in [a, b2, c] {
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    assert_eq!(held(&app, "late").await, vec![1, 2, 3, 4]);
    let r = app.merge("late", "late.img").await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        app.download(v["imageId"].as_str().unwrap()).await,
        chunks.concat()
    );
    let r = app
        .client
        .delete(app.url("/images/upload?identifier=other"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let left = app.leftovers().await;
    assert_eq!(left.len(), 1, "{left:?}");
    app.stop().await;
}

/// Bytes changed in the store before their first check (which, on the local store, records
/// the MD5 an upload left to it): the check says so, and the SHA-256 recorded when they were
/// received stays the reference downloads are verified against, for a single upload and a
/// merged one that declared its checksum. A replica without workers receives them; one with
/// workers checks them.
async fn changed_before_the_first_check(b: Backend) {
    let app = TestApp::config_only(b).await;
    let port = free_port();
    let log = app.dir.path().join("server.log");
    let receiver = Replica::start(&app.vars, port, &log, &[("FS_JOB_CONCURRENCY", "0")]).await;
    let client = app.client.clone();
    let single = pattern(71, (3 << 20) + 17);
    let path = app.dir.path().join("single.img");
    std::fs::write(&path, &single).unwrap();
    let r = send_file(&client, &receiver.api(""), &path, "single.img", &[]).await;
    assert_eq!(r.status(), 200);
    let single_id = r.json::<serde_json::Value>().await.unwrap()["imageId"]
        .as_str()
        .unwrap()
        .to_string();
    let merged = pattern(72, (2 << 20) + 5);
    for (i, c) in merged.chunks(1 << 20).enumerate() {
        let r = send_chunk(
            &client,
            &receiver.api(""),
            "changed",
            i as u32 + 1,
            c.to_vec(),
        )
        .await;
        assert_eq!(r.status(), 200);
    }
    // Declared as fsctl declares it: a merge without a checksum reads nothing back, so the
    // merged bytes have no digest before their first check.
    let form = multipart::Form::new()
        .text("identifier", "changed")
        .text("filename", "merged.img")
        .text("checksum", format!("sha256:{}", sha256(&merged)));
    let r = client
        .post(receiver.api("/images/merge"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let merged_id = r.json::<serde_json::Value>().await.unwrap()["imageId"]
        .as_str()
        .unwrap()
        .to_string();
    drop(receiver);

    for (id, bytes) in [(&single_id, &single), (&merged_id, &merged)] {
        let mut changed = bytes.clone();
        changed[bytes.len() / 2] ^= 0x40;
        overwrite(&app, &format!("images/{id}"), changed).await;
    }
    let checker = Replica::start(&app.vars, port, &log, &[]).await;
    for (id, bytes) in [(&single_id, &single), (&merged_id, &merged)] {
        let v = wait_check_done(&client, &checker.api(&format!("/images/{id}"))).await;
        let st = &v["checkStatusResponse"];
        assert_eq!(st["status"], 1, "{v}");
        assert!(
            st["msg"].as_str().unwrap().contains("no longer match"),
            "{v}"
        );
        assert_eq!(v["originalSha256"], sha256(bytes).as_str(), "{v}");
        let r = client
            .get(checker.api(&format!("/images/{id}/action/download")))
            .send()
            .await
            .unwrap();
        let want = format!("sha-256=:{}:", B64.encode(sha2::Sha256::digest(bytes)));
        assert_eq!(r.headers()["repr-digest"], want.as_str(), "{v}");
    }
    drop(checker);
    app.stop().await;
}

crate::backend_tests!(
    declared_totals_are_enforced,
    fields_after_a_chunk_decide_where_it_lands,
    chunk_checksums_in_every_form,
    whole_image_checksums,
    downloads_carry_validators,
    resumed_download_across_a_slim,
    rechecks_find_corruption,
    changed_before_the_first_check,
);
