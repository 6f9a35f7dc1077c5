//! Quotas (`FS_QUOTA_BYTES`, `FS_QUOTA_IMAGES`, per-user overrides) with authentication off:
//! the user is the `userId` field. Uploads stop at the bytes that cross a quota, chunks at the
//! chunk, merges at the image; refused requests leave nothing behind; usage is what is stored.

use crate::helpers::*;
use futures::future::join_all;
use reqwest::multipart;
use serde_json::{json, Value};

const MIB: usize = 1 << 20;

async fn quota_app(b: Backend, env: &[(&'static str, &str)]) -> TestApp {
    TestApp::spawn(
        b,
        Options {
            env: env.iter().map(|(k, v)| (*k, v.to_string())).collect(),
            ..Default::default()
        },
    )
    .await
}

/// `GET /usage?userId=` (asserting a 200).
async fn usage(app: &TestApp, user: &str) -> Value {
    let (status, v) = app.get_json(&format!("/usage?userId={user}")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["userId"], user, "{v}");
    v
}

/// Bytes and images of a usage answer.
async fn held(app: &TestApp, user: &str) -> (u64, u64) {
    let v = usage(app, user).await;
    (v["bytes"].as_u64().unwrap(), v["images"].as_u64().unwrap())
}

/// Asserts what a user holds. A refused request's reservation is deleted as the request ends,
/// possibly just after its answer went out: a few moments are allowed for that.
async fn assert_held(app: &TestApp, user: &str, expected: (u64, u64)) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let got = held(app, user).await;
        if got == expected || std::time::Instant::now() > deadline {
            assert_eq!(got, expected, "usage of {user:?}");
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// `POST /images` for `user`, the userId field sent before the file (or after it).
async fn upload_as(
    app: &TestApp,
    user: &str,
    len: usize,
    user_after_file: bool,
) -> reqwest::Response {
    let mut form = multipart::Form::new().text("priority", "0");
    if !user_after_file {
        form = form.text("userId", user.to_string());
    }
    form = form.part(
        "file",
        multipart::Part::bytes(pattern(len as u64, len)).file_name("q.qcow2"),
    );
    if user_after_file {
        form = form.text("userId", user.to_string());
    }
    app.client
        .post(app.url("/images"))
        .multipart(form)
        .send()
        .await
        .unwrap()
}

async fn upload_id(app: &TestApp, user: &str, len: usize) -> String {
    let r = upload_as(app, user, len, false).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["userId"], user);
    v["imageId"].as_str().unwrap().to_string()
}

/// Chunk `n` of `identifier`, with a userId field when `user` is given.
async fn chunk_as(
    app: &TestApp,
    user: Option<&str>,
    identifier: &str,
    n: u32,
    len: usize,
) -> reqwest::Response {
    let mut form = multipart::Form::new().text("identifier", identifier.to_string());
    if let Some(u) = user {
        form = form.text("userId", u.to_string());
    }
    form = form.part(
        "part",
        multipart::Part::bytes(pattern(n as u64, len)).file_name(format!("{n}.part")),
    );
    app.client
        .post(app.url("/images/upload"))
        .multipart(form)
        .send()
        .await
        .unwrap()
}

async fn merge_as(app: &TestApp, user: &str, identifier: &str) -> reqwest::Response {
    let form = multipart::Form::new()
        .text("identifier", identifier.to_string())
        .text("filename", "merged.qcow2")
        .text("userId", user.to_string());
    app.client
        .post(app.url("/images/merge"))
        .multipart(form)
        .send()
        .await
        .unwrap()
}

/// The chunk numbers held for an identifier.
async fn chunks_held(app: &TestApp, identifier: &str) -> Vec<u64> {
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

async fn delete(app: &TestApp, id: &str) {
    let r = app.delete_image(id).await;
    assert_eq!(r.status(), 200);
}

async fn put_quota(app: &TestApp, user: &str, body: &str) -> reqwest::Response {
    app.client
        .put(app.url(&format!("/quotas/{user}")))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

async fn assert_quota_exceeded(resp: reqwest::Response) -> String {
    let v = assert_error(resp, 413, None).await;
    assert_eq!(v["code"], "QUOTA_EXCEEDED", "{v}");
    v["message"].as_str().unwrap().to_string()
}

/// A single upload that crosses the byte quota fails with 413 at the crossing bytes and keeps
/// nothing; other users are not affected; a deleted image frees its bytes.
async fn single_upload_stops_at_the_byte_quota(b: Backend) {
    let app = quota_app(b, &[("FS_QUOTA_BYTES", "3MiB")]).await;
    let first = upload_id(&app, "alice", 2 * MIB).await;
    assert_held(&app, "alice", (2 * MIB as u64, 1)).await;
    let before = app.leftovers().await;

    // 2 MiB more would be 4 MiB: refused, the message names the limit.
    let msg = assert_quota_exceeded(upload_as(&app, "alice", 2 * MIB, false).await).await;
    assert!(
        msg.contains("user \"alice\" may hold 3.0 MiB (3145728 bytes)"),
        "{msg}"
    );
    // A body far past the quota: the answer still reaches the client.
    assert_quota_exceeded(upload_as(&app, "alice", 20 * MIB, false).await).await;
    // The user named after the file: refused once it is known.
    let msg = assert_quota_exceeded(upload_as(&app, "alice", 2 * MIB, true).await).await;
    assert!(msg.contains("3145728 bytes"), "{msg}");
    assert_eq!(
        app.leftovers().await,
        before,
        "a refused upload left something"
    );
    assert_held(&app, "alice", (2 * MIB as u64, 1)).await;
    let (_, list) = app.get_json("/images?userId=alice").await;
    assert_eq!(list.as_array().unwrap().len(), 1);

    // Exactly up to the limit is fine; one byte more is not.
    let second = upload_id(&app, "alice", MIB).await;
    assert_held(&app, "alice", (3 * MIB as u64, 2)).await;
    assert_quota_exceeded(upload_as(&app, "alice", 1, false).await).await;
    // Another user has a quota of its own.
    upload_id(&app, "bob", 3 * MIB).await;
    // The user "" (no userId) too.
    let v = usage(&app, "").await;
    assert_eq!(
        (v["bytes"].as_u64(), v["maxBytes"].as_u64()),
        (Some(0), Some(3 << 20))
    );

    // Deleting an image frees its bytes.
    delete(&app, &first).await;
    assert_held(&app, "alice", (MIB as u64, 1)).await;
    upload_id(&app, "alice", 2 * MIB).await;
    delete(&app, &second).await;
    app.stop().await;
}

/// Sends only the head of `POST /images?userId=user` (no query for "") declaring `len` bytes with `Expect:
/// 100-continue`: the status of the first answer (100 when the body is asked for) and its
/// text, read for at most 5 s.
async fn expect_continue_answer(app: &TestApp, user: &str, len: u64) -> (u16, String) {
    expect_continue_at(app, "/images", user, len).await
}

/// [`expect_continue_answer`] for the route `path` (a query of its own is kept).
async fn expect_continue_at(app: &TestApp, path: &str, user: &str, len: u64) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let sep = if path.contains('?') { '&' } else { '?' };
    let query = match user {
        "" => String::new(),
        user => format!("{sep}userId={user}"),
    };
    let head = format!(
        "POST {API}{path}{query} HTTP/1.1\r\nHost: {addr}\r\n\
         Content-Type: multipart/form-data; boundary=B\r\nContent-Length: {len}\r\n\
         Expect: 100-continue\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![];
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        while !answer.ends_with(b"}") && !answer.ends_with(b"\r\n\r\n") {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

/// A client that waits for `100 Continue` is refused at once (413 `QUOTA_EXCEEDED`, no 100)
/// when the declared length alone is past its user's room, or (an upload) the user holds all
/// its images; a length within the room gets its 100. Chunks as well.
async fn expect_continue_past_the_quota_is_refused_at_once(b: Backend) {
    let app = quota_app(b, &[("FS_QUOTA_BYTES", "3MiB"), ("FS_QUOTA_IMAGES", "1")]).await;
    let (status, text) = expect_continue_answer(&app, "alice", 100 << 20).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("QUOTA_EXCEEDED"), "{text}");
    assert!(text.contains("3145728 bytes"), "{text}");
    let (status, text) = expect_continue_answer(&app, "alice", 2 << 20).await;
    assert_eq!(status, 100, "{text}");
    let id = upload_id(&app, "alice", MIB).await;
    let (status, text) = expect_continue_answer(&app, "alice", 1 << 10).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("may hold 1 images"), "{text}");
    // Without a user known before the body, the reservation decides as the bytes arrive.
    let (status, text) = expect_continue_answer(&app, "", 100 << 20).await;
    assert_eq!(status, 100, "{text}");
    // A chunk: refused at once past the room (no image slot needed); the largest chunk the
    // upload holds counts as replaceable.
    let (status, text) =
        expect_continue_at(&app, "/images/upload?identifier=ec", "alice", 100 << 20).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("this chunk would take it"), "{text}");
    let (status, text) =
        expect_continue_at(&app, "/images/upload?identifier=ec", "alice", 2 << 20).await;
    assert_eq!(status, 100, "{text}");
    delete(&app, &id).await;
    assert_held(&app, "alice", (0, 0)).await;
    let r = chunk_as(&app, Some("alice"), "ec2", 1, 2 * MIB).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // 2 MiB held of 3: a resend of up to ~16.5 MiB declared may replace the 2 MiB chunk.
    let (status, text) =
        expect_continue_at(&app, "/images/upload?identifier=ec2", "alice", 16 << 20).await;
    assert_eq!(status, 100, "{text}");
    let (status, text) =
        expect_continue_at(&app, "/images/upload?identifier=ec2", "alice", 40 << 20).await;
    assert_eq!(status, 413, "{text}");
    app.stop().await;
}

/// Chunks count for the upload's user as they arrive: the chunk that crosses the quota is
/// refused (nothing stored, the chunks held are kept), a re-sent chunk replaces its old copy in
/// the count, a merge does not count the bytes twice, a cancel frees them.
async fn chunks_stop_at_the_crossing_chunk(b: Backend) {
    let app = quota_app(b, &[("FS_QUOTA_BYTES", "3MiB")]).await;
    let carol = Some("carol");
    assert_eq!(chunk_as(&app, carol, "c1", 1, MIB).await.status(), 200);
    assert_eq!(chunk_as(&app, carol, "c1", 2, MIB).await.status(), 200);
    let v = usage(&app, "carol").await;
    assert_eq!(
        (v["bytes"].as_u64(), v["openUploads"].as_u64()),
        (Some(2 << 20), Some(1))
    );
    let msg = assert_quota_exceeded(chunk_as(&app, carol, "c1", 3, MIB + 1).await).await;
    assert!(msg.contains("3145728 bytes"), "{msg}");
    assert_eq!(chunks_held(&app, "c1").await, vec![1, 2]);
    // Chunks of another upload of the same user count together.
    assert_quota_exceeded(chunk_as(&app, carol, "c2", 1, MIB + 1).await).await;
    // A refused first chunk opens no upload.
    let (_, v) = app.get_json("/images/upload?identifier=c2").await;
    assert_eq!(v["state"], "none", "{v}");
    // Chunk 2 again, larger: its old copy does not count against it (1 + 2 = 3 MiB).
    assert_eq!(chunk_as(&app, carol, "c1", 2, 2 * MIB).await.status(), 200);
    assert_held(&app, "carol", (3 << 20, 0)).await;
    assert_quota_exceeded(chunk_as(&app, carol, "c1", 3, 1).await).await;
    assert_eq!(chunks_held(&app, "c1").await, vec![1, 2]);

    // Merged for its own user: the same bytes, now an image (and no upload is open: c2's
    // refused first chunk opened none).
    let r = merge_as(&app, "carol", "c1").await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let v = usage(&app, "carol").await;
    assert_eq!(
        (
            v["bytes"].as_u64(),
            v["images"].as_u64(),
            v["openUploads"].as_u64()
        ),
        (Some(3 << 20), Some(1), Some(0))
    );
    let id = r.json::<Value>().await.unwrap()["imageId"]
        .as_str()
        .unwrap()
        .to_string();
    delete(&app, &id).await;

    // A cancel frees the chunks.
    assert_eq!(chunk_as(&app, carol, "c3", 1, 3 * MIB).await.status(), 200);
    assert_quota_exceeded(chunk_as(&app, carol, "c4", 1, 1).await).await;
    let r = app
        .client
        .delete(app.url("/images/upload?identifier=c3"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_held(&app, "carol", (0, 0)).await;
    assert_eq!(chunk_as(&app, carol, "c4", 1, 3 * MIB).await.status(), 200);

    // Chunks sent without a user count for no one until the merge names one: refused then,
    // the chunks kept.
    assert_eq!(chunk_as(&app, None, "c5", 1, 2 * MIB).await.status(), 200);
    assert_eq!(chunk_as(&app, None, "c5", 2, 2 * MIB).await.status(), 200);
    assert_quota_exceeded(merge_as(&app, "frank", "c5").await).await;
    assert_eq!(chunks_held(&app, "c5").await, vec![1, 2]);
    assert_held(&app, "frank", (0, 0)).await;
    let r = put_quota(&app, "frank", r#"{"maxBytes": 0}"#).await;
    assert_eq!(r.status(), 200);
    assert_eq!(merge_as(&app, "frank", "c5").await.status(), 200);
    assert_held(&app, "frank", (4 << 20, 1)).await;
    app.stop().await;
}

/// The image limit: an upload is refused before its bytes are stored, a merge with its chunks
/// kept.
async fn image_limit_on_upload_and_merge(b: Backend) {
    let app = quota_app(b, &[("FS_QUOTA_IMAGES", "2")]).await;
    // The user "" (no userId) at its limit...
    for _ in 0..2 {
        assert_eq!(app.upload("n.img", vec![1; 100], &[]).await.status(), 200);
    }
    assert_quota_exceeded(app.upload("n.img", vec![1; 100], &[]).await).await;
    // ... is not the user of an upload whose userId follows its file.
    let r = upload_as(&app, "dave", 1000, true).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let first = r.json::<Value>().await.unwrap()["imageId"]
        .as_str()
        .unwrap()
        .to_string();
    upload_id(&app, "dave", 1000).await;
    let before = app.leftovers().await;
    let msg = assert_quota_exceeded(upload_as(&app, "dave", 1000, false).await).await;
    assert!(msg.contains("may hold 2 images"), "{msg}");
    assert_eq!(
        app.leftovers().await,
        before,
        "a refused upload left something"
    );
    assert_eq!(
        chunk_as(&app, Some("dave"), "d1", 1, 1000).await.status(),
        200
    );
    let msg = assert_quota_exceeded(merge_as(&app, "dave", "d1").await).await;
    assert!(msg.contains("may hold 2 images"), "{msg}");
    assert_eq!(chunks_held(&app, "d1").await, vec![1]);
    let v = usage(&app, "dave").await;
    assert_eq!(
        (
            v["images"].as_u64(),
            v["maxImages"].as_u64(),
            v["maxBytes"].as_u64()
        ),
        (Some(2), Some(2), Some(0))
    );
    delete(&app, &first).await;
    let r = merge_as(&app, "dave", "d1").await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(held(&app, "dave").await.1, 2);
    app.stop().await;
}

/// `PUT /quotas/{userId}` raises, lowers and resets a user's limits; bad bodies are 400.
async fn overrides_raise_and_lower_limits(b: Backend) {
    let app = quota_app(b, &[("FS_QUOTA_BYTES", "1MiB")]).await;
    assert_quota_exceeded(upload_as(&app, "erin", 2 * MIB, false).await).await;
    let (status, v) = app.get_json("/quotas/erin").await;
    assert_eq!(status, 200);
    assert_eq!(
        v,
        json!({"userId": "erin", "maxBytes": 1 << 20, "maxImages": 0,
               "maxBytesOverride": null, "maxImagesOverride": null})
    );

    let r = put_quota(&app, "erin", r#"{"maxBytes": 4194304, "maxImages": 5}"#).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v,
        json!({"userId": "erin", "maxBytes": 4 << 20, "maxImages": 5,
               "maxBytesOverride": 4 << 20, "maxImagesOverride": 5})
    );
    upload_id(&app, "erin", 2 * MIB).await;
    // Unlimited.
    assert_eq!(
        put_quota(&app, "erin", r#"{"maxBytes": 0}"#).await.status(),
        200
    );
    upload_id(&app, "erin", 3 * MIB).await;
    let v = usage(&app, "erin").await;
    assert_eq!(
        (
            v["bytes"].as_u64(),
            v["maxBytes"].as_u64(),
            v["maxImages"].as_u64()
        ),
        (Some(5 << 20), Some(0), Some(0))
    );
    // Back to the default: lower than what erin holds, nothing more fits.
    assert_eq!(
        put_quota(&app, "erin", r#"{"maxBytes": null}"#)
            .await
            .status(),
        200
    );
    assert_eq!(usage(&app, "erin").await["maxBytes"], 1 << 20);
    assert_quota_exceeded(upload_as(&app, "erin", 1, false).await).await;
    assert_held(&app, "erin", (5 << 20, 2)).await;

    for bad in [
        r#"{"maxBytes": -1}"#,
        r#"{"maxBytes": "10GiB"}"#,
        r#"{"maxImages": 1.5}"#,
        r#"{"maxBytes": 1, "extra": 2}"#,
        r#"{"maxBytes": 1000, "maxBytes": 2000}"#,
        r#"{"maxImages": null, "maxImages": 1}"#,
        r#"{"maxBytes": 18446744073709551615}"#,
        r#"[1, 2]"#,
        "null",
        "not json",
    ] {
        let v = assert_error(put_quota(&app, "erin", bad).await, 400, None).await;
        assert_eq!(v["code"], "INVALID_PARAMETER", "{bad}: {v}");
    }
    assert_eq!(usage(&app, "erin").await["maxBytes"], 1 << 20);
    app.stop().await;
}

/// A zip counts the image it holds, not its archive: refused when the image does not fit,
/// in a single upload (nothing kept) and at a merge (the upload is dropped, its archive being
/// gone by then, as for an image over the size limit).
async fn zips_count_their_image(b: Backend) {
    let app = quota_app(b, &[("FS_QUOTA_BYTES", "2MiB")]).await;
    // 3 MiB of 2-bit noise: an archive of about 0.8 MiB.
    let zip = app.dir.path().join("noise.zip");
    python_zip(
        &zip,
        "import random\nrandom.seed(7)\n\
         z.writestr('noise/noise.img', bytes(x & 3 for x in random.randbytes(3 << 20)))",
    );
    let archive = std::fs::read(&zip).unwrap();
    assert!(archive.len() < 3 * MIB / 2, "{} bytes", archive.len());
    let before = app.leftovers().await;
    let form = multipart::Form::new().text("userId", "ivan").part(
        "file",
        multipart::Part::bytes(archive.clone()).file_name("noise.zip"),
    );
    let r = app
        .client
        .post(app.url("/images"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let msg = assert_quota_exceeded(r).await;
    assert!(msg.contains("2097152 bytes"), "{msg}");
    assert_eq!(app.leftovers().await, before);
    assert_held(&app, "ivan", (0, 0)).await;

    assert_eq!(
        chunk_as_bytes(&app, "ivan", "z1", 1, archive)
            .await
            .status(),
        200
    );
    let form = multipart::Form::new()
        .text("identifier", "z1")
        .text("filename", "noise.zip")
        .text("userId", "ivan");
    let r = app
        .client
        .post(app.url("/images/merge"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_quota_exceeded(r).await;
    assert_eq!(chunks_held(&app, "z1").await, Vec::<u64>::new());
    assert_eq!(app.leftovers().await, before);
    assert_held(&app, "ivan", (0, 0)).await;
    app.stop().await;
}

async fn chunk_as_bytes(
    app: &TestApp,
    user: &str,
    identifier: &str,
    n: u32,
    bytes: Vec<u8>,
) -> reqwest::Response {
    let form = multipart::Form::new()
        .text("identifier", identifier.to_string())
        .text("userId", user.to_string())
        .part(
            "part",
            multipart::Part::bytes(bytes).file_name(format!("{n}.part")),
        );
    app.client
        .post(app.url("/images/upload"))
        .multipart(form)
        .send()
        .await
        .unwrap()
}

/// A reservation counts while its lease runs: one left by a replica that died (here written
/// directly) holds its room until it expires, then counts no more and is pruned.
async fn reservations_count_until_their_lease_ends(b: Backend) {
    use file_system::db::quotas;
    let app = quota_app(b, &[("FS_QUOTA_BYTES", "3MiB")]).await;
    let db = file_system::db::connect(&app.database_url).await.unwrap();
    let now = chrono::Utc::now().timestamp();
    quotas::put_reservation(&db, "lost-live", "kim", 2 << 20, 1, now + 600)
        .await
        .unwrap();
    quotas::put_reservation(&db, "lost-old", "kim", 3 << 20, 1, now - 1)
        .await
        .unwrap();
    assert_held(&app, "kim", (2 << 20, 1)).await;
    assert_quota_exceeded(upload_as(&app, "kim", 2 * MIB, false).await).await;
    // The lease ends.
    quotas::put_reservation(&db, "lost-live", "kim", 2 << 20, 1, now - 1)
        .await
        .unwrap();
    assert_held(&app, "kim", (0, 0)).await;
    upload_id(&app, "kim", 2 * MIB).await;
    assert_eq!(quotas::prune_expired(&db, now).await.unwrap(), 2);
    db.close().await.unwrap();
    app.stop().await;
}

/// Many uploads of one user at once: what is stored never exceeds the quota, and the refused
/// ones leave nothing.
async fn concurrent_uploads_never_overrun(b: Backend) {
    let app = quota_app(b, &[("FS_QUOTA_BYTES", "5MiB")]).await;
    let results = join_all((0..8).map(|_| upload_as(&app, "gina", MIB + 1000, false))).await;
    let mut ok = 0;
    for r in results {
        match r.status().as_u16() {
            200 => ok += 1,
            _ => {
                assert_quota_exceeded(r).await;
            }
        }
    }
    assert!(
        (1..=4).contains(&ok),
        "{ok} uploads of 1 MiB fit a 5 MiB quota"
    );
    assert_held(&app, "gina", (ok * (MIB as u64 + 1000), ok)).await;
    let (_, list) = app.get_json("/images?userId=gina").await;
    assert_eq!(list.as_array().unwrap().len() as u64, ok);
    // Only the images' objects are stored.
    let left = app.leftovers().await;
    assert_eq!(left.len() as u64, ok, "{left:?}");
    app.stop().await;
}

/// `GET /usage?userId={user}` on `replica`: (bytes, images).
async fn usage_on(client: &reqwest::Client, replica: &Replica, user: &str) -> (u64, u64) {
    let r = client.get(replica.api(&format!("/usage?userId={user}")));
    let v: Value = r.send().await.unwrap().json().await.unwrap();
    let number = |name: &str| v[name].as_u64().unwrap_or_else(|| panic!("{name}: {v}"));
    (number("bytes"), number("images"))
}

/// A replica killed (SIGKILL) in the middle of an upload leaves its reservation behind, which
/// stops counting once its lease (60 s) ends: the user is not held back for long, and
/// `GET /usage` no longer shows the phantom image. (It was 15 minutes.)
async fn a_killed_replicas_reservation_ends_within_a_minute(b: Backend) {
    use tokio::io::AsyncWriteExt;
    let app = TestApp::spawn(
        b,
        Options {
            no_server: true,
            env: vec![("FS_QUOTA_BYTES", "10MiB".into())],
            ..Default::default()
        },
    )
    .await;
    let dir = app.dir.path();
    let start = |name: &str| {
        let scratch = dir.join(format!("scratch-{name}"));
        let log = dir.join(format!("{name}.log"));
        let vars = app.vars.clone();
        async move {
            Replica::start(
                &vars,
                free_port(),
                &log,
                &[("FS_SCRATCH_DIR", scratch.to_str().unwrap())],
            )
            .await
        }
    };
    let mut first = start("a").await;
    // 5 MiB of a 9 MiB upload, then the replica dies.
    let addr = first.base.trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST {API}/images?userId=kim HTTP/1.1\r\nHost: {addr}\r\n\
         Content-Type: multipart/form-data; boundary=B\r\nContent-Length: {}\r\n\r\n\
         --B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"k.img\"\r\n\r\n",
        9 * MIB
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&pattern(7, 5 * MIB)).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while usage_on(&app.client, &first, "kim").await.0 == 0 {
        assert!(std::time::Instant::now() < deadline, "nothing was reserved");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    first.kill();
    drop(conn);
    let second = start("b").await;
    let killed = std::time::Instant::now();
    assert_eq!(
        usage_on(&app.client, &second, "kim").await.1,
        1,
        "the lost upload's image slot"
    );
    loop {
        let held = usage_on(&app.client, &second, "kim").await;
        if held == (0, 0) {
            break;
        }
        assert!(
            killed.elapsed() < std::time::Duration::from_secs(75),
            "the dead replica's reservation still counts: {held:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let form = multipart::Form::new().text("userId", "kim").part(
        "file",
        multipart::Part::bytes(pattern(8, 6 * MIB)).file_name("k.img"),
    );
    let r = app
        .client
        .post(second.api("/images"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    drop(second);
}

/// Eight uploads of `len` bytes by one user at once, half through each replica, in four
/// rounds: never more stored than the quota allows, and a refusal is a quota refusal. How
/// many were stored.
async fn upload_in_rounds(client: &reqwest::Client, replicas: &[Replica], len: usize) -> u64 {
    let mut stored = 0u64;
    for round in 0..4u64 {
        let sends = (0..8).map(|i| {
            let (client, url) = (client.clone(), replicas[i % 2].api("/images"));
            let bytes = pattern(round * 100 + i as u64, len);
            async move {
                let form = multipart::Form::new()
                    .text("userId", "hana")
                    .part("file", multipart::Part::bytes(bytes).file_name("race.img"));
                client.post(url).multipart(form).send().await.unwrap()
            }
        });
        for r in join_all(sends).await {
            if r.status() == 200 {
                stored += 1;
            } else {
                assert_quota_exceeded(r).await;
            }
        }
        assert!(
            stored * len as u64 <= 6 << 20,
            "round {round}: {stored} images stored"
        );
    }
    assert!(stored >= 1);
    stored
}

/// Two replicas (separate processes) on one PostgreSQL database and one S3 store, many
/// uploads of one user through both at once, in rounds: the database settles every race, so
/// what is stored never exceeds the quota, and the refused uploads leave nothing.
async fn two_replicas_never_overrun_a_quota(b: Backend) {
    assert!(b.is_postgres() && b.is_s3());
    let app = TestApp::spawn(
        b,
        Options {
            no_server: true,
            env: vec![
                ("FS_QUOTA_BYTES", "6MiB".into()),
                ("FS_QUOTA_IMAGES", "5".into()),
            ],
            ..Default::default()
        },
    )
    .await;
    let dir = app.dir.path();
    let mut replicas = vec![];
    for name in ["a", "b"] {
        let scratch = dir.join(format!("scratch-{name}"));
        replicas.push(
            Replica::start(
                &app.vars,
                free_port(),
                &dir.join(format!("{name}.log")),
                &[("FS_SCRATCH_DIR", scratch.to_str().unwrap())],
            )
            .await,
        );
    }
    let client = app.client.clone();
    let len = MIB + 4321;
    let stored = upload_in_rounds(&client, &replicas, len).await;
    let images: Value = client
        .get(replicas[1].api("/images?userId=hana"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(images.as_array().unwrap().len() as u64, stored);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let got = usage_on(&client, &replicas[0], "hana").await;
        let expected = (stored * len as u64, stored);
        if got == expected || std::time::Instant::now() > deadline {
            assert_eq!(got, expected);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // In the store: the stored images' objects, nothing else (no object, no multipart upload
    // of a refused upload).
    let left = app.leftovers().await;
    assert_eq!(left.len() as u64, stored, "{left:?}");
    drop(replicas);
    app.stop().await;
}

mod replicas {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_replicas_never_overrun_a_quota() {
        super::two_replicas_never_overrun_a_quota(crate::helpers::Backend::PostgresS3).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_killed_replicas_reservation_ends_within_a_minute() {
        super::a_killed_replicas_reservation_ends_within_a_minute(
            crate::helpers::Backend::PostgresS3,
        )
        .await
    }
}

/// A user may have `FS_MAX_OPEN_UPLOADS` chunked uploads open at once: a first chunk past it
/// is refused (413, nothing kept in the store), later chunks of open uploads are not, and a
/// merged or cancelled upload makes room. Other users, and uploads without a user, are not
/// held back. (200 first chunks of one user opened 200 uploads under a 20 MiB quota, each
/// holding a multipart upload and its files for a day.)
async fn open_uploads_per_user_are_limited(b: Backend) {
    let app = quota_app(b, &[("FS_MAX_OPEN_UPLOADS", "3")]).await;
    for i in 1..=3 {
        let r = chunk_as(&app, Some("kim"), &format!("kim-{i}"), 1, 1000).await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    let before = app.leftovers().await;
    let msg = assert_quota_exceeded(chunk_as(&app, Some("kim"), "kim-4", 1, 1000).await).await;
    assert!(
        msg.contains("may have 3 chunked uploads open at once and has 3"),
        "{msg}"
    );
    assert_eq!(
        app.leftovers().await,
        before,
        "the refused chunk kept something"
    );
    assert_eq!(chunks_held(&app, "kim-4").await, Vec::<u64>::new());
    // The uploads already open take their next chunks; others are not counted.
    let r = chunk_as(&app, Some("kim"), "kim-1", 2, 1000).await;
    assert_eq!(r.status(), 200);
    let r = chunk_as(&app, Some("lee"), "lee-1", 1, 1000).await;
    assert_eq!(r.status(), 200);
    let r = chunk_as(&app, None, "nobody-1", 1, 1000).await;
    assert_eq!(r.status(), 200);
    assert_eq!(usage(&app, "kim").await["openUploads"], 3);
    // A merge and a cancel each make room for one more.
    let r = merge_as(&app, "kim", "kim-1").await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let r = chunk_as(&app, Some("kim"), "kim-4", 1, 1000).await;
    assert_eq!(r.status(), 200);
    assert_quota_exceeded(chunk_as(&app, Some("kim"), "kim-5", 1, 1000).await).await;
    let r = app
        .client
        .delete(app.url("/images/upload?identifier=kim-2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = chunk_as(&app, Some("kim"), "kim-5", 1, 1000).await;
    assert_eq!(r.status(), 200);
    app.stop().await;
}

/// First chunks of many uploads of one user at once, each upload's chunks 1 and 2 racing too,
/// under `FS_MAX_OPEN_UPLOADS=3`: exactly 3 uploads open (both their chunks taken), the others
/// are refused whole and keep nothing. (Up to 8 of 8 opened when the count and the insert were
/// apart.)
async fn racing_first_chunks_never_open_past_the_limit(b: Backend) {
    let app = quota_app(b, &[("FS_MAX_OPEN_UPLOADS", "3")]).await;
    let client = &app;
    for round in 0..3 {
        let ids: Vec<String> = (0..8).map(|i| format!("ola-{round}-{i}")).collect();
        let sent = ids
            .iter()
            .flat_map(|id| [1, 2].map(|n| (id.clone(), n)))
            .map(|(id, n)| async move {
                (
                    id.clone(),
                    chunk_as(client, Some("ola"), &id, n, 1000).await,
                )
            });
        let mut opened = std::collections::BTreeMap::<String, Vec<u16>>::new();
        for (id, r) in join_all(sent).await {
            let status = r.status().as_u16();
            if status == 413 {
                assert_quota_exceeded(r).await;
            } else {
                assert_eq!(status, 200, "{id}: {}", r.text().await.unwrap());
            }
            opened.entry(id).or_default().push(status);
        }
        let whole: Vec<_> = opened
            .iter()
            .filter(|(_, s)| s == &&vec![200, 200])
            .collect();
        let refused = opened.values().filter(|s| *s == &vec![413, 413]).count();
        assert_eq!((whole.len(), refused), (3, 5), "round {round}: {opened:?}");
        assert_eq!(usage(&app, "ola").await["openUploads"], 3);
        for (id, statuses) in &opened {
            let held = chunks_held(&app, id).await;
            match statuses[0] {
                200 => assert_eq!(held, vec![1, 2], "{id}"),
                _ => assert!(held.is_empty(), "{id} was refused and holds {held:?}"),
            }
            if statuses[0] == 200 {
                let url = app.url(&format!("/images/upload?identifier={id}"));
                assert_eq!(app.client.delete(url).send().await.unwrap().status(), 200);
            }
        }
    }
    app.until_no_leftovers("first chunks racing the open-upload limit", 20)
        .await;
    app.stop().await;
}

/// Polls `GET /usage` of `user` until `stop` is set: the most bytes and images it showed.
async fn most_usage_shown(
    app: &TestApp,
    user: &str,
    stop: &std::sync::atomic::AtomicBool,
) -> (u64, u64) {
    let mut most = (0, 0);
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let v = usage(app, user).await;
        let (bytes, images) = (v["bytes"].as_u64().unwrap(), v["images"].as_u64().unwrap());
        most = (most.0.max(bytes), most.1.max(images));
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    most
}

/// How many of `sent` were taken (200); each other one must be a quota refusal.
async fn taken_or_refused_for_quota(sent: Vec<reqwest::Response>) -> u64 {
    let mut taken = 0;
    for r in sent {
        match r.status().as_u16() {
            200 => taken += 1,
            _ => drop(assert_quota_exceeded(r).await),
        }
    }
    taken
}

/// While uploads and chunks of one user run at once, `GET /usage` never shows more than the
/// limits, and the uploads that fit are not refused: what a request reserved stops counting
/// in the same transaction as what it recorded starts. (The reservation was deleted just
/// after: usage showed 4 images under a limit of 3, or 13 MiB under 10, and uploads that fit
/// were refused meanwhile.)
async fn usage_never_shows_more_than_the_limits(b: Backend) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let app = quota_app(b, &[("FS_QUOTA_BYTES", "10MiB"), ("FS_QUOTA_IMAGES", "3")]).await;
    let stop = AtomicBool::new(false);
    let uploads = async {
        let sent = join_all((0..10).map(|_| upload_as(&app, "una", MIB, false))).await;
        stop.store(true, Ordering::SeqCst);
        sent
    };
    let (sent, most) = tokio::join!(uploads, most_usage_shown(&app, "una", &stop));
    let ok = taken_or_refused_for_quota(sent).await;
    // The image limit lets three in at once, and their bytes fit: exactly three are stored.
    assert_eq!(ok, 3, "uploads that fit were refused");
    assert!(
        most.1 <= 3 && most.0 <= 10 * MIB as u64,
        "usage showed {most:?}"
    );
    assert_held(&app, "una", (3 * MIB as u64, 3)).await;
    // Chunks of one upload of another user at once: 1 MiB each under a 10 MiB quota.
    stop.store(false, Ordering::SeqCst);
    let chunks = async {
        let sent = join_all((1..=16).map(|n| chunk_as(&app, Some("uma"), "uma-1", n, MIB))).await;
        stop.store(true, Ordering::SeqCst);
        sent
    };
    let (sent, most) = tokio::join!(chunks, most_usage_shown(&app, "uma", &stop));
    let stored = taken_or_refused_for_quota(sent).await;
    assert!(
        (1..=10).contains(&stored),
        "{stored} chunks of 1 MiB stored"
    );
    assert!(most.0 <= 10 * MIB as u64, "usage showed {most:?}");
    assert_eq!(chunks_held(&app, "uma-1").await.len() as u64, stored);
    app.stop().await;
}

crate::backend_tests!(
    usage_never_shows_more_than_the_limits,
    single_upload_stops_at_the_byte_quota,
    open_uploads_per_user_are_limited,
    racing_first_chunks_never_open_past_the_limit,
    expect_continue_past_the_quota_is_refused_at_once,
    chunks_stop_at_the_crossing_chunk,
    image_limit_on_upload_and_merge,
    overrides_raise_and_lower_limits,
    concurrent_uploads_never_overrun,
    zips_count_their_image,
    reservations_count_until_their_lease_ends,
);
