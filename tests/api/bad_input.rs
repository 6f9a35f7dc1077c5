//! Bad input: every error SPEC lists, malformed bodies, ids and names. Never a 500, and a
//! refused upload leaves nothing behind.

use crate::helpers::*;

const BAD_UPLOAD_NAME: &str =
    "File shouldn't contains any extension or filename is larger than max size";

async fn upload_errors(b: Backend) {
    let app = TestApp::spawn(
        b,
        Options {
            max_image_bytes: Some(1 << 20),
            ..Default::default()
        },
    )
    .await;

    // No file part at all, as multipart, url-encoded and bare.
    let form = reqwest::multipart::Form::new().text("userId", "u");
    let resp = app
        .client
        .post(app.url("/images"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_error(resp, 400, Some("Upload package file error")).await;
    let resp = app
        .client
        .post(app.url("/images"))
        .form(&[("userId", "u")])
        .send()
        .await
        .unwrap();
    assert_error(resp, 400, Some("Upload package file error")).await;
    let resp = app.client.post(app.url("/images")).send().await.unwrap();
    assert_error(resp, 400, Some("Upload package file error")).await;

    // Names: case-sensitive extensions, other extensions, no extension, 129 characters.
    let long = format!("{}.qcow2", "n".repeat(123));
    assert_eq!(long.chars().count(), 129);
    // Names that disguise themselves (a right-to-left override shows x\u{202E}gmi.exe.img as
    // x.gmi.exe...) or that were not UTF-8 (decoded to U+FFFD) are refused as well.
    for name in [
        "a.QCOW2",
        "a.exe",
        "noext",
        ".qcow2",
        long.as_str(),
        "x\u{202E}gmi.exe.img",
        "\u{FFFD}\u{FFFD}.qcow2",
    ] {
        let resp = app.upload(name, vec![1; 100], &[]).await;
        assert_error(resp, 400, Some(BAD_UPLOAD_NAME)).await;
    }
    let ok128 = &long[1..];
    let resp = app.upload(ok128, vec![1; 100], &[]).await;
    assert_eq!(resp.status(), 200);
    let stored_after_ok = app.leftovers().await.len();

    // Over the (lowered) size limit: 413, nothing kept.
    let resp = app.upload("big.img", pattern(1, (1 << 20) + 1), &[]).await;
    assert_error(resp, 413, Some("File size is larger than max size")).await;
    let resp = app.upload("big.zip", pattern(1, (1 << 20) + 1), &[]).await;
    assert_error(resp, 413, Some("File size is larger than max size")).await;
    // Exactly the limit is fine.
    let resp = app.upload("edge.img", pattern(1, 1 << 20), &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(app.leftovers().await.len(), stored_after_ok + 1);
    app.stop().await;
}

async fn malformed_bodies(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    let before = app.leftovers().await;
    // Truncated multipart body: the closing boundary never comes.
    let body = "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.qcow2\"\r\n\r\nsome bytes but no end";
    for path in ["/images", "/images/upload"] {
        let resp = app
            .client
            .post(app.url(path))
            .header("Content-Type", "multipart/form-data; boundary=XyZ")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_error(resp, 400, None).await;
    }
    // Multipart without a boundary.
    let resp = app
        .client
        .post(app.url("/images"))
        .header("Content-Type", "multipart/form-data")
        .body("whatever")
        .send()
        .await
        .unwrap();
    assert_error(resp, 400, None).await;
    // Garbage instead of parts.
    let resp = app
        .client
        .post(app.url("/images/merge"))
        .header("Content-Type", "multipart/form-data; boundary=abc")
        .body("not multipart at all")
        .send()
        .await
        .unwrap();
    assert_error(resp, 400, None).await;
    // Broken url-encoding in the query.
    let resp = app
        .client
        .delete(app.url("/images/upload?identifier=%ZZ"))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_client_error());
    assert_eq!(
        app.leftovers().await,
        before,
        "malformed requests left files behind"
    );
    app.stop().await;
}

async fn image_ids_that_are_not_uuids(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    for id in [
        "abc",
        "123",
        "not-a-uuid-at-all-but-36-characters!",
        "0e0c8a526b3b4f8c9e5d0f1a2b3c4d5e",
    ] {
        let msg = format!("there is no record in database with imageId: {id}");
        let r = app
            .client
            .get(app.url(&format!("/images/{id}")))
            .send()
            .await
            .unwrap();
        assert_error(r, 404, Some(&msg)).await;
        let r = app
            .client
            .get(app.url(&format!("/images/{id}/action/download")))
            .send()
            .await
            .unwrap();
        assert_error(r, 404, Some(&msg)).await;
        let r = app
            .client
            .get(app.url(&format!("/images/{id}/action/download?isZip=true")))
            .send()
            .await
            .unwrap();
        assert_error(r, 404, Some(&msg)).await;
        let r = app.delete_image(id).await;
        assert_error(r, 404, None).await;
    }
    long_values_come_back_cut(&app).await;
    // `merge` is never an image id: other methods on it are not allowed (never a 500).
    let r = app
        .client
        .delete(app.url("/images/merge"))
        .send()
        .await
        .unwrap();
    assert_error(r, 405, None).await;
    let r = app
        .client
        .get(app.url("/images/merge"))
        .send()
        .await
        .unwrap();
    assert_error(r, 405, None).await;
    let r = app
        .client
        .get(app.url("/images/merge/action/download"))
        .send()
        .await
        .unwrap();
    assert_error(r, 404, None).await;
    // A well-formed id nobody has.
    let id = uuid::Uuid::new_v4();
    let r = app.delete_image(&id.to_string()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "delete success");
    app.stop().await;
}

/// A long id is repeated cut short (64 characters and "..."), not sent back whole; so is a
/// long identifier or chunk number in a 400.
async fn long_values_come_back_cut(app: &TestApp) {
    let long = "i".repeat(5000);
    let msg = format!(
        "there is no record in database with imageId: {}...",
        &long[..64]
    );
    let r = app
        .client
        .get(app.url(&format!("/images/{long}")))
        .send()
        .await
        .unwrap();
    assert_error(r, 404, Some(&msg)).await;
    let form = reqwest::multipart::Form::new()
        .text("identifier", "x".repeat(100_000))
        .text("chunkNumber", "7".repeat(100_000))
        .part(
            "part",
            reqwest::multipart::Part::bytes(vec![1; 10]).file_name("1.part"),
        );
    let r = app.post_form("/images/upload", form).await;
    let v = assert_error(r, 400, None).await;
    let message = v["message"].as_str().unwrap();
    assert!(message.len() < 300, "{message}");
    // And a long priority, on an upload and on a chunk.
    for path in ["/images", "/images/upload"] {
        let form = reqwest::multipart::Form::new()
            .text("identifier", "long-priority")
            .text("priority", "9".repeat(20_000))
            .part(
                "file",
                reqwest::multipart::Part::bytes(vec![1; 10]).file_name("a.img"),
            );
        let v = assert_error(app.post_form(path, form).await, 400, None).await;
        let message = v["message"].as_str().unwrap();
        assert!(message.len() < 300, "{path}: {message}");
    }
}

/// An identifier that is empty, a path or too long: refused by chunk, cancel and merge.
async fn bad_identifiers_are_refused_everywhere(app: &TestApp) {
    for ident in ["", ".", "..", "a/b", "../x", "a b", &"i".repeat(129)] {
        let form = reqwest::multipart::Form::new()
            .text("identifier", ident.to_string())
            .part(
                "part",
                reqwest::multipart::Part::bytes(vec![1; 10]).file_name("1.part"),
            );
        let r = app.post_form("/images/upload", form).await;
        assert_error(r, 400, None).await;
        let r = app
            .client
            .delete(app.url("/images/upload"))
            .query(&[("identifier", ident)])
            .send()
            .await
            .unwrap();
        assert_error(r, 400, None).await;
        let r = app
            .client
            .post(app.url("/images/merge"))
            .form(&[("identifier", ident), ("filename", "a.qcow2")])
            .send()
            .await
            .unwrap();
        assert_error(r, 400, None).await;
    }
}

async fn chunk_and_merge_errors(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    bad_identifiers_are_refused_everywhere(&app).await;
    // Cancel without any identifier must not wipe anything.
    let r = app
        .client
        .delete(app.url("/images/upload"))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, None).await;
    // Chunk numbers.
    for name in ["0.part", "10001.part", "x.part", "chunk", "-1.part"] {
        let r = app.chunk_named("ident-1", name, vec![1; 10]).await;
        assert_error(r, 400, None).await;
    }
    // No chunk in the request.
    let r = app
        .client
        .post(app.url("/images/upload"))
        .form(&[("identifier", "ident-1")])
        .send()
        .await
        .unwrap();
    assert_error(r, 400, Some("Upload package file error")).await;
    // Merge: bad names, nothing received.
    assert_eq!(app.chunk("ident-2", 1, vec![1; 10]).await.status(), 200);
    for name in [
        "a.exe",
        "a.QCOW2",
        "",
        &format!("{}.img", "x".repeat(125)),
        "a\u{2067}.qcow2",
    ] {
        let r = app.merge("ident-2", name).await;
        assert_error(
            r,
            400,
            Some("File should only be image file or filename is larger than max size"),
        )
        .await;
    }
    let r = app.merge("never-sent", "a.qcow2").await;
    assert_error(r, 400, None).await;
    // Unknown priority on a chunk.
    let form = reqwest::multipart::Form::new()
        .text("identifier", "ident-3")
        .text("priority", "9")
        .part(
            "part",
            reqwest::multipart::Part::bytes(vec![1; 10]).file_name("1.part"),
        );
    let r = app
        .client
        .post(app.url("/images/upload"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_error(r, 400, None).await;
    app.stop().await;
}

/// What a parser would have to hold is bounded: part headers and preambles (16 KiB), the
/// number of fields (200) in multipart, url-encoded and query form. 400, nothing kept.
async fn oversized_headers_and_field_floods(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    let ct = "multipart/form-data; boundary=XyZ";
    let post = |path: &'static str, ct: &'static str, body: reqwest::Body| {
        app.client
            .post(app.url(path))
            .header("Content-Type", ct)
            .body(body)
            .send()
    };
    // One header line of 1 MiB.
    let long = format!(
        "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.img\"\r\nX-Pad: {}\r\n\r\ndata\r\n--XyZ--\r\n",
        "a".repeat(1 << 20)
    );
    let v = assert_error(post("/images", ct, long.into()).await.unwrap(), 400, None).await;
    assert!(v["message"].as_str().unwrap().contains("header"), "{v}");
    // A header block that never ends (48 MiB, streamed), and a body without any delimiter.
    for start in [
        "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.img\"\r\nX: ",
        "",
    ] {
        let frames = std::iter::once(Ok::<_, std::io::Error>(bytes::Bytes::from(start)))
            .chain((0..48).map(|_| Ok(bytes::Bytes::from(vec![b'a'; 1 << 20]))));
        let body = reqwest::Body::wrap_stream(futures::stream::iter(frames));
        let r = post("/images/upload", ct, body).await.unwrap();
        let v = assert_error(r, 400, None).await;
        // Without a delimiter, the message points at the boundary (a client's usual mistake).
        let expected = if start.is_empty() {
            "boundary"
        } else {
            "header"
        };
        assert!(v["message"].as_str().unwrap().contains(expected), "{v}");
    }
    // Field floods.
    let mut many = String::new();
    for i in 0..1000 {
        many.push_str(&format!(
            "--XyZ\r\nContent-Disposition: form-data; name=\"f{i}\"\r\n\r\nv\r\n"
        ));
    }
    many.push_str("--XyZ--\r\n");
    let v = assert_error(
        post("/images/merge", ct, many.into()).await.unwrap(),
        400,
        None,
    )
    .await;
    assert!(
        v["message"].as_str().unwrap().contains("200 form fields"),
        "{v}"
    );
    let pairs: String = (0..1000).map(|i| format!("f{i}=v&")).collect();
    let r = post(
        "/images/merge",
        "application/x-www-form-urlencoded",
        pairs.clone().into(),
    );
    assert_error(r.await.unwrap(), 400, None).await;
    let r = app
        .client
        .get(app.url(&format!("/images?{pairs}")))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, None).await;
    assert!(
        app.leftovers().await.is_empty(),
        "{:?}",
        app.leftovers().await
    );
    // Ordinary requests still work.
    app.upload_ok("after.img", pattern(1, 1000)).await;
    app.stop().await;
}

/// Starts a request whose body never comes: headers, the start of a multipart body, then
/// silence. Returns the connection and what the server answered (read until it closes or
/// `within` passes).
async fn silent_upload(
    app: &TestApp,
    path: &str,
    within: std::time::Duration,
) -> (tokio::net::TcpStream, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST {API}{path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: multipart/form-data; boundary=XyZ\r\n\
         Content-Length: 10000000\r\n\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; \
         filename=\"slow.img\"\r\n\r\nfirst bytes"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![];
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(within, async {
        while let Ok(n) = conn.read(&mut buf).await {
            if n == 0 || answer.ends_with(b"}") {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&answer).contains("\r\n\r\n{") && answer.ends_with(b"}") {
                break;
            }
        }
    })
    .await;
    (conn, String::from_utf8_lossy(&answer).into_owned())
}

/// A body that stops arriving fails with 408 after FS_BODY_IDLE_TIMEOUT_SECS, and silent
/// clients cannot hold the upload slots: with every slot taken by one, a normal upload is
/// served once they time out. Nothing is left behind.
async fn silent_bodies_time_out(b: Backend) {
    let app = TestApp::spawn(
        b,
        Options {
            env: vec![
                ("FS_BODY_IDLE_TIMEOUT_SECS", "2".into()),
                ("FS_UPLOAD_CONCURRENCY", "2".into()),
            ],
            ..Default::default()
        },
    )
    .await;
    let started = std::time::Instant::now();
    let hold = |path: &'static str| silent_upload(&app, path, std::time::Duration::from_secs(15));
    let (a, b2, good) = tokio::join!(hold("/images"), hold("/images/upload"), async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let upload = app.upload_ok("normal.img", pattern(2, 1000));
        tokio::time::timeout(std::time::Duration::from_secs(12), upload)
            .await
            .expect("a normal upload waited behind silent clients")
    });
    assert!(
        started.elapsed() < std::time::Duration::from_secs(12),
        "{:?}",
        started.elapsed()
    );
    for (_, answer) in [&a, &b2] {
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("REQUEST_TIMEOUT"), "{answer}");
    }
    assert!(!good.is_empty());
    let left = app.leftovers().await;
    assert_eq!(left.len(), 1, "only the normal upload stays: {left:?}");
    app.stop().await;
}

/// With every upload slot taken (here by a client that went silent mid-body), an upload
/// waits FS_UPLOAD_QUEUE_TIMEOUT_SECS for one, then is answered 503 SERVICE_BUSY with
/// Retry-After instead of waiting as long as the slow client lasts; a chunk too. Once the slot
/// is free, uploads are served again, and nothing is left behind.
async fn full_upload_slots_answer_busy(b: Backend) {
    let app = TestApp::spawn(
        b,
        Options {
            env: vec![
                ("FS_BODY_IDLE_TIMEOUT_SECS", "30".into()),
                ("FS_UPLOAD_CONCURRENCY", "1".into()),
                ("FS_UPLOAD_QUEUE_TIMEOUT_SECS", "1".into()),
            ],
            ..Default::default()
        },
    )
    .await;
    let within = std::time::Duration::from_secs(5);
    let ((holder, answer), ()) = tokio::join!(silent_upload(&app, "/images", within), async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let started = std::time::Instant::now();
        let r = app
            .upload("busy.img", pattern(3, 1000), &[("userId", "tester")])
            .await;
        assert!(started.elapsed() < std::time::Duration::from_secs(4));
        assert_eq!(r.headers()["retry-after"], "5");
        let v = assert_error(r, 503, None).await;
        assert_eq!(v["code"], "SERVICE_BUSY", "{v}");
        let r = app.chunk("busy-chunks", 1, b"part".to_vec()).await;
        let v = assert_error(r, 503, None).await;
        assert_eq!(v["code"], "SERVICE_BUSY", "{v}");
    });
    assert_eq!(answer, "", "the silent upload still holds its slot");
    drop(holder);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let r = app
            .upload("after.img", pattern(4, 1000), &[("userId", "tester")])
            .await;
        if r.status() == 200 {
            break;
        }
        assert_eq!(r.status(), 503);
        assert!(
            std::time::Instant::now() < deadline,
            "the slot never came free"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let left = app.leftovers().await;
    assert_eq!(left.len(), 1, "only the last upload stays: {left:?}");
    app.stop().await;
}

/// Sends `head` and `body` raw, then drops the connection without a word (a client killed,
/// a proxy giving up).
async fn send_then_vanish(app: &TestApp, path: &str, parts: &[&[u8]], declared: usize) {
    use tokio::io::AsyncWriteExt;
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST {API}{path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: multipart/form-data; \
         boundary=XyZ\r\nContent-Length: {declared}\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    for p in parts {
        conn.write_all(p).await.unwrap();
    }
    conn.flush().await.unwrap();
    // Give the server time to take what was sent, then vanish.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    drop(conn);
}

/// Requests dropped mid-body leave nothing: not in the middle of the file (a multipart upload
/// to S3 under way, a scratch spool), not after a complete file part while the form goes on
/// (the object already stored), for single uploads, zips and chunks alike.
async fn dropped_requests_leave_nothing(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    let file_part = |name: &str, file: &str| {
        format!(
            "--XyZ\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{file}\"\r\n\r\n"
        )
        .into_bytes()
    };
    // Past the first S3 part (8 MiB), so a multipart upload is under way.
    let big = pattern(3, 12 << 20);
    let small = pattern(4, 1000);
    let end_file =
        b"\r\n--XyZ\r\nContent-Disposition: form-data; name=\"userId\"\r\n\r\nsomeo".to_vec();
    let chunk_head =
        b"--XyZ\r\nContent-Disposition: form-data; name=\"identifier\"\r\n\r\ndropped\r\n".to_vec();
    let cases: Vec<(&str, &str, Vec<Vec<u8>>)> = vec![
        (
            "mid-file, large",
            "/images",
            vec![file_part("file", "a.img"), big.clone()],
        ),
        (
            "mid-file, small",
            "/images",
            vec![file_part("file", "b.img"), small.clone()],
        ),
        (
            "after the file part",
            "/images",
            vec![file_part("file", "c.img"), big.clone(), end_file.clone()],
        ),
        (
            "after a small file part",
            "/images",
            vec![file_part("file", "d.img"), small.clone(), end_file.clone()],
        ),
        (
            "mid-zip",
            "/images",
            vec![file_part("file", "e.zip"), big.clone()],
        ),
        (
            "mid-chunk",
            "/images/upload",
            vec![chunk_head.clone(), file_part("part", "1"), big.clone()],
        ),
        (
            "after the chunk",
            "/images/upload",
            vec![chunk_head, file_part("part", "1"), big.clone(), end_file],
        ),
    ];
    for (what, path, parts) in &cases {
        let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        send_then_vanish(&app, path, &parts, 64 << 20).await;
        // Cleanup runs when the server notices; give it a moment.
        app.until_no_leftovers(what, 15).await;
        let (_, list) = app.get_json("/images").await;
        assert_eq!(list, serde_json::json!([]), "{what}");
        let (_, st) = app.get_json("/images/upload?identifier=dropped").await;
        assert_eq!(st["state"], "none", "{what}: {st}");
    }
    app.stop().await;
}

/// The image size limit holds for chunked uploads as chunks arrive: the chunk that would take
/// an upload past it is refused (413), what was held stays and the resume query tells the
/// truth, also after a merge whose archive expands past the limit (its chunks are gone then).
async fn chunks_respect_the_size_limit(b: Backend) {
    let app = TestApp::spawn(
        b,
        Options {
            max_image_bytes: Some(4 << 20),
            ..Default::default()
        },
    )
    .await;
    let two = |seed| pattern(seed, 2 << 20);
    assert_eq!(app.chunk("lim", 1, two(1)).await.status(), 200);
    assert_eq!(app.chunk("lim", 2, two(2)).await.status(), 200);
    let r = app.chunk("lim", 3, two(3)).await;
    assert_error(r, 413, Some("File size is larger than max size")).await;
    // Sending chunk 2 again replaces it: still within the limit.
    assert_eq!(app.chunk("lim", 2, two(2)).await.status(), 200);
    let (_, v) = app.get_json("/images/upload?identifier=lim").await;
    let numbers: Vec<u64> = v["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["chunkNumber"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [1, 2], "{v}");
    let r = app.merge("lim", "lim.img").await;
    assert_eq!(r.status(), 200);
    let id = r.json::<serde_json::Value>().await.unwrap()["imageId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(app.download(&id).await, [two(1), two(2)].concat());

    // A zip of 1 MiB whose image expands past the limit: refused at merge, chunks consumed,
    // and the resume query says so.
    let zip = app.dir.path().join("exp.zip");
    python_zip(&zip, "z.writestr('d/big.img', bytes(6 << 20))");
    let bytes = std::fs::read(&zip).unwrap();
    assert_eq!(app.chunk("zz", 1, bytes).await.status(), 200);
    let v = assert_error(app.merge("zz", "exp.zip").await, 400, None).await;
    assert_eq!(v["code"], "INVALID_ZIP", "{v}");
    let (_, v) = app.get_json("/images/upload?identifier=zz").await;
    assert_eq!(v["state"], "none", "{v}");
    assert_eq!(v["chunks"], serde_json::json!([]), "{v}");
    let left = app.leftovers().await;
    assert_eq!(left.len(), 1, "only the merged image stays: {left:?}");
    app.stop().await;
}

/// A NUL character in a userId (query, multipart or url-encoded form), the one free-text field
/// stored and compared as sent, is a client's mistake: 400, never the database's 500
/// (PostgreSQL cannot hold NUL in text). Found by schemathesis with
/// `GET /images?userId=...%00...`. (Names and identifiers have their own rules.)
async fn nul_characters_in_fields(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    let r = app
        .client
        .get(app.url("/images?userId=a%00b"))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, None).await;
    let r = app
        .upload("disk.img", pattern(1, 100), &[("userId", "u\0x")])
        .await;
    assert_error(r, 400, None).await;
    let r = app
        .client
        .post(app.url("/images/merge"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("identifier=abc&filename=a.img&userId=x%00y")
        .send()
        .await
        .unwrap();
    assert_error(r, 400, None).await;
    // The same kind: past the 255 bytes every user id column holds (PostgreSQL refused a
    // longer one with a 500), another control character, or a bidirectional formatting one
    // (a right-to-left override made "bob\u{202E}ecila" show as "bobalice" in the console), on
    // every route that takes one.
    let long = "u".repeat(256);
    for user in [
        long.as_str(),
        "a\u{1}b",
        "line\nbreak",
        "bob\u{202E}ecila",
        "\u{FFFD}",
    ] {
        let refused = |v: serde_json::Value| {
            assert_eq!(v["code"], "INVALID_PARAMETER", "{user:?}: {v}");
        };
        let r = app
            .upload("disk.img", pattern(1, 100), &[("userId", user)])
            .await;
        refused(assert_error(r, 400, None).await);
        let form = reqwest::multipart::Form::new()
            .text("identifier", "long-user")
            .text("chunkNumber", "1")
            .text("totalChunks", "1")
            .text("userId", user.to_string())
            .part(
                "file",
                reqwest::multipart::Part::bytes(pattern(2, 100)).file_name("disk.img"),
            );
        let r = app.post_form("/images/upload", form).await;
        refused(assert_error(r, 400, None).await);
        let r = app
            .client
            .get(app.url("/images"))
            .query(&[("userId", user)])
            .send()
            .await
            .unwrap();
        refused(assert_error(r, 400, None).await);
    }
    // 255 bytes is a user id like any other.
    let longest = "u".repeat(255);
    let r = app
        .upload("disk.img", pattern(3, 100), &[("userId", longest.as_str())])
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let (_, list) = app.get_json("/images").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["userId"], longest.as_str());
    app.stop().await;
}

crate::backend_tests!(
    nul_characters_in_fields,
    dropped_requests_leave_nothing,
    chunks_respect_the_size_limit,
    silent_bodies_time_out,
    full_upload_slots_answer_busy,
    upload_errors,
    malformed_bodies,
    image_ids_that_are_not_uuids,
    chunk_and_merge_errors,
    oversized_headers_and_field_floods
);

/// Request headers that never finish (sent slowly, or not at all) cannot hold a connection:
/// it is closed after FS_HEADER_TIMEOUT_SECS, and other clients are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_headers_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn(
        Backend::SqliteLocal,
        Options {
            env: vec![("FS_HEADER_TIMEOUT_SECS", "2".into())],
            ..Default::default()
        },
    )
    .await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let started = std::time::Instant::now();
    let mut conns = vec![];
    for opening in [
        "",
        "POST /image-management/v1/images HTTP/1.1\r\nHost: a\r\nX-Slow: ",
    ] {
        let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
        c.write_all(opening.as_bytes()).await.unwrap();
        conns.push(c);
    }
    // Others are served while those wait.
    assert_eq!(app.get_json("/images").await.0, 200);
    for mut c in conns {
        let mut buf = vec![];
        let read =
            tokio::time::timeout(std::time::Duration::from_secs(10), c.read_to_end(&mut buf))
                .await
                .expect("the connection stayed open past the header timeout");
        // Closed (possibly after a 408), never answered as a request.
        assert!(
            read.is_err() || buf.is_empty() || buf.starts_with(b"HTTP/1.1 408"),
            "{:?}",
            String::from_utf8_lossy(&buf)
        );
    }
    let took = started.elapsed();
    assert!(took >= std::time::Duration::from_millis(1500), "{took:?}");
    app.stop().await;
}
