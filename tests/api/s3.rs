//! What only the S3 backend does: chunks as multipart parts, packing small chunks for strict
//! stores, faults of the store. Every body runs against a real Garage (which takes parts of any
//! size, so the tests check part sizes themselves) and against Ceph's RADOS Gateway, which
//! enforces the 5 MiB minimum as AWS and MinIO do.

use crate::helpers::*;
use file_system::storage::{CompletedPart, ObjectStore, S3Settings, S3Store};

/// 1 MiB chunks on a store with a 5 MiB minimum: before completion, ListParts shows only parts
/// of at least 5 MiB (but the last), and the object is right.
async fn small_chunks_are_packed_into_valid_parts(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("pack-{}/", uuid::Uuid::new_v4().simple());
    let settings = S3Settings {
        min_part_bytes: 5 << 20,
        part_bytes: 5 << 20,
        ..s3_settings_of(b.s3_server().unwrap(), &prefix)
    };
    let store = S3Store::new(settings).await.unwrap();
    let inner = store.clone();
    store.ensure_bucket("images").await.unwrap();
    let id = store
        .create_multipart("images", "images/packed", &Default::default())
        .await
        .unwrap();
    let chunks: Vec<Vec<u8>> = (0..12)
        .map(|i| pattern(i, 1 << 20))
        .chain([pattern(99, 300_000)])
        .collect();
    let mut parts = vec![];
    for (i, c) in chunks.iter().enumerate() {
        let n = i as u32 + 1;
        let etag = store
            .upload_part(
                upload_of("images", "images/packed", &id),
                part(n, spooled(dir.path(), c), false),
            )
            .await
            .unwrap();
        parts.push(CompletedPart::new(n, etag, c.len() as u64));
    }
    let key = inner.store_key("images/packed");
    let packed = inner
        .pack_parts("images", &key, &id, &parts)
        .await
        .unwrap()
        .parts;
    let listed = inner
        .client()
        .list_parts()
        .bucket("images")
        .key(&key)
        .upload_id(&id)
        .send()
        .await
        .unwrap();
    let sizes: Vec<i64> = listed.parts().iter().map(|p| p.size().unwrap()).collect();
    assert_eq!(sizes.len(), packed.len());
    assert!(sizes.len() >= 2, "{sizes:?}");
    for s in &sizes[..sizes.len() - 1] {
        assert!(*s >= 5 << 20, "a non-final part under 5 MiB: {sizes:?}");
    }
    assert_eq!(
        sizes.iter().sum::<i64>() as usize,
        chunks.iter().map(Vec::len).sum::<usize>()
    );
    store
        .complete_multipart(upload_of("images", "images/packed", &id), &parts)
        .await
        .unwrap();
    let got = futures::StreamExt::collect::<Vec<_>>(
        store.get("images", "images/packed", None).await.unwrap(),
    )
    .await;
    let got: Vec<u8> = got.into_iter().flat_map(|b| b.unwrap().to_vec()).collect();
    assert!(got == chunks.concat());
    // Staging objects are gone.
    let left = inner
        .client()
        .list_objects_v2()
        .bucket("images")
        .prefix(&prefix)
        .send()
        .await
        .unwrap();
    let keys: Vec<&str> = left.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, [key.as_str()]);
    store.delete("images", "images/packed").await.unwrap();
}

/// Chunks of 5 MiB and more sent in order are parts of the upload as soon as they arrive;
/// merge only completes it.
async fn big_chunks_become_parts_directly(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    let chunks = [
        pattern(1, 6 << 20),
        pattern(2, 6 << 20),
        pattern(3, 6 << 20),
        pattern(4, 1 << 20),
    ];
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(
            app.chunk("big", i as u32 + 1, c.clone()).await.status(),
            200
        );
    }
    let (s3, prefix) = app.s3();
    let ups = s3
        .list_multipart_uploads()
        .bucket("images")
        .prefix(prefix)
        .send()
        .await
        .unwrap();
    assert_eq!(ups.uploads().len(), 1);
    let up = &ups.uploads()[0];
    let listed = s3
        .list_parts()
        .bucket("images")
        .key(up.key().unwrap())
        .upload_id(up.upload_id().unwrap())
        .send()
        .await
        .unwrap();
    let got: Vec<(i32, i64)> = listed
        .parts()
        .iter()
        .map(|p| (p.part_number().unwrap(), p.size().unwrap()))
        .collect();
    assert_eq!(got, [(1, 6 << 20), (2, 6 << 20), (3, 6 << 20)]);
    let r = app.merge("big", "big.qcow2").await;
    assert_eq!(r.status(), 200);
    let id = r.json::<serde_json::Value>().await.unwrap()["imageId"]
        .as_str()
        .unwrap()
        .to_string();
    let dl = app
        .client
        .get(app.url(&format!("/images/{id}/action/download")))
        .send()
        .await
        .unwrap();
    assert_eq!(sha256(&dl.bytes().await.unwrap()), sha256(&chunks.concat()));
    let left = app.leftovers().await;
    assert_eq!(left.len(), 1, "{left:?}");
    app.stop().await;
}

/// A small chunk between big ones: the big one after it is staged too, and merge joins them
/// into one part.
async fn small_chunk_between_big_ones_is_joined(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    let big = |s| pattern(s, 5 << 20);
    assert_eq!(app.chunk("mix", 1, big(1)).await.status(), 200);
    assert_eq!(app.chunk("mix", 2, pattern(2, 1000)).await.status(), 200);
    assert_eq!(app.chunk("mix", 3, big(3)).await.status(), 200);
    let id = merged(app.merge("mix", "mix.img").await).await;
    assert_eq!(
        download_sha(&app, &id).await,
        sha256(&[big(1), pattern(2, 1000), big(3)].concat())
    );
    assert_parts(&app, &id, &[5 << 20, (5 << 20) + 1000]).await;
    assert_eq!(app.leftovers().await, [image_object(&app, &id)]);
    app.stop().await;
}

/// Chunks sent as parts directly, then one of them sent again too small to be a part: merge
/// names the chunk after it, forgets it (the resume query lists it missing), and works once it
/// is sent again.
async fn smaller_resend_names_the_chunk_to_send_again(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    let big = |s| pattern(s, 6 << 20);
    for n in 1..=3 {
        assert_eq!(app.chunk("again", n, big(n as u64)).await.status(), 200);
    }
    assert_eq!(app.chunk("again", 2, pattern(2, 1000)).await.status(), 200);
    let v = assert_error(app.merge("again", "again.img").await, 400, None).await;
    let msg = v["message"].as_str().unwrap();
    assert!(msg.contains("chunk 3 "), "{v}");
    let (_, st) = app.get_json("/images/upload?identifier=again").await;
    let listed: Vec<u64> = st["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["chunkNumber"].as_u64().unwrap())
        .collect();
    assert_eq!(listed, [1, 2], "{st}");
    assert_eq!(app.chunk("again", 3, big(3)).await.status(), 200);
    let id = merged(app.merge("again", "again.img").await).await;
    assert_eq!(
        download_sha(&app, &id).await,
        sha256(&[big(1), pattern(2, 1000), big(3)].concat())
    );
    // Parts 2 and 3 the store holds from the first sending are both overwritten (strict stores
    // complete only from every part they hold): chunks 2 and 3 are cut into two parts.
    assert_parts(&app, &id, &[6 << 20, 5 << 20, (1 << 20) + 1000]).await;
    assert_eq!(app.leftovers().await, [image_object(&app, &id)]);
    app.stop().await;
}

/// Chunks first sent as parts of 6 MiB, then again at 1 MiB: no valid part list can overwrite
/// both earlier parts. Garage (and AWS) complete without them; RGW, which completes only from
/// every part it holds, refuses, and the merge says what to do (400, not a 500); the chunks
/// are kept, and a cancel leaves nothing.
async fn smaller_resends_a_strict_store_cannot_complete(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    for n in 1..=2 {
        assert_eq!(
            app.chunk("shrunk", n, pattern(n as u64, 6 << 20))
                .await
                .status(),
            200
        );
    }
    let small = |n: u32| pattern(10 + n as u64, 1 << 20);
    for n in 1..=2 {
        assert_eq!(app.chunk("shrunk", n, small(n)).await.status(), 200);
    }
    let r = app.merge("shrunk", "shrunk.img").await;
    match b.s3_server() {
        Some(S3Server::Rgw) => {
            let v = assert_error(r, 400, None).await;
            let msg = v["message"].as_str().unwrap();
            assert!(msg.contains("chunk 2 was sent again smaller"), "{v}");
            assert!(msg.contains("cancel the upload"), "{v}");
            let (_, st) = app.get_json("/images/upload?identifier=shrunk").await;
            assert_eq!(st["chunks"].as_array().unwrap().len(), 2, "{st}");
            let r = app
                .client
                .delete(app.url("/images/upload?identifier=shrunk"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(app.leftovers().await, Vec::<String>::new());
        }
        _ => {
            let id = merged(r).await;
            assert_eq!(
                download_sha(&app, &id).await,
                sha256(&[small(1), small(2)].concat())
            );
            assert_eq!(app.leftovers().await, [image_object(&app, &id)]);
        }
    }
    app.stop().await;
}

/// Every arrival order of chunks around the 5 MiB minimum merges into the right bytes, with
/// every part but the last at least 5 MiB, and leaves only the image behind.
async fn any_arrival_order_merges(b: Backend) {
    const MIB: usize = 1 << 20;
    let app = TestApp::spawn(b, Options::default()).await;
    let sets: [&[usize]; 7] = [
        &[4, 4, 6],
        &[6, 6, 1],
        &[1, 6, 6],
        &[5, 5, 5],
        &[4, 1, 6, 1],
        &[6, 4, 6, 2],
        &[1, 1, 1, 6],
    ];
    for (s, sizes) in sets.iter().enumerate() {
        let chunks: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, m)| pattern((s * 10 + i) as u64, m * MIB))
            .collect();
        let want = sha256(&chunks.concat());
        for (k, order) in permutations(chunks.len()).into_iter().enumerate() {
            let ident = format!("order-{s}-{k}");
            let what = format!("{sizes:?} MiB in order {order:?}");
            for &i in &order {
                let r = app.chunk(&ident, i as u32 + 1, chunks[i].clone()).await;
                assert_eq!(r.status(), 200, "{what}");
            }
            let r = app.merge(&ident, "order.img").await;
            if r.status() != 200 {
                panic!("{what}: merge {}: {}", r.status(), r.text().await.unwrap());
            }
            let id = merged(r).await;
            assert_eq!(download_sha(&app, &id).await, want, "{what}");
            // (RGW refused any non-final part under 5 MiB itself.)
            let sizes = part_sizes(&app, &id).await.unwrap_or_default();
            for p in sizes.iter().rev().skip(1) {
                assert!(
                    *p >= 5 << 20,
                    "{what}: a non-final part under 5 MiB: {sizes:?}"
                );
            }
            assert_eq!(app.leftovers().await, [image_object(&app, &id)], "{what}");
            let r = app.delete_image(&id).await;
            assert_eq!(r.status(), 200, "{what}");
        }
    }
    app.stop().await;
}

fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![vec![]];
    }
    let mut out = vec![];
    for p in permutations(n - 1) {
        for at in 0..=p.len() {
            let mut q = p.clone();
            q.insert(at, n - 1);
            out.push(q);
        }
    }
    out
}

/// The image id of a successful merge.
async fn merged(r: reqwest::Response) -> String {
    assert_eq!(r.status(), 200);
    r.json::<serde_json::Value>().await.unwrap()["imageId"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn download_sha(app: &TestApp, id: &str) -> String {
    let dl = app
        .client
        .get(app.url(&format!("/images/{id}/action/download")))
        .send()
        .await
        .unwrap();
    assert_eq!(dl.status(), 200);
    sha256(&dl.bytes().await.unwrap())
}

/// The image's object, as `leftovers` names it.
fn image_object(app: &TestApp, id: &str) -> String {
    let (_, prefix) = app.s3();
    format!("images/{prefix}images/{id}")
}

/// The image's object was completed from parts of these sizes: exactly when the store tells
/// part sizes, else their number.
async fn assert_parts(app: &TestApp, id: &str, want: &[i64]) {
    match part_sizes(app, id).await {
        Some(sizes) => assert_eq!(sizes, want),
        None => assert_eq!(part_count(app, id).await, want.len()),
    }
}

/// The number of parts of the image's object, from its multipart ETag (`"{md5}-{parts}"`).
async fn part_count(app: &TestApp, id: &str) -> usize {
    let (s3, prefix) = app.s3();
    let head = s3
        .head_object()
        .bucket("images")
        .key(format!("{prefix}images/{id}"))
        .send()
        .await
        .unwrap();
    let etag = head.e_tag().unwrap().trim_matches('"');
    match etag.split_once('-') {
        Some((_, n)) => n.parse().unwrap(),
        None => 1,
    }
}

/// The sizes of the parts the image's object was completed from (`HeadObject` by part number),
/// `None` when the store ignores the part number (Ceph's RGW 16 answers for the whole object).
async fn part_sizes(app: &TestApp, id: &str) -> Option<Vec<i64>> {
    let (s3, prefix) = app.s3();
    let key = format!("{prefix}images/{id}");
    let head = |n| {
        s3.head_object()
            .bucket("images")
            .key(&key)
            .part_number(n)
            .send()
    };
    let first = head(1).await.unwrap();
    if app.backend.s3_server() == Some(S3Server::Rgw) && first.parts_count().is_none() {
        return None;
    }
    let count = first.parts_count().unwrap_or(1);
    let mut sizes = vec![first.content_length().unwrap()];
    for n in 2..=count {
        sizes.push(head(n).await.unwrap().content_length().unwrap());
    }
    Some(sizes)
}

/// A service whose S3 store is reached through a [`FaultProxy`] (passing everything until
/// told otherwise), with further settings `env`.
async fn behind_a_proxy(b: Backend, env: Vec<(&'static str, String)>) -> (FaultProxy, TestApp) {
    let (endpoint, _) = s3_env_of(b.s3_server().unwrap());
    let proxy = FaultProxy::start(&endpoint).await;
    let app = TestApp::spawn(
        b,
        Options {
            s3_endpoint: Some(proxy.url.clone()),
            env,
            ..Default::default()
        },
    )
    .await;
    (proxy, app)
}

/// The store unreachable or failing half way: 503, nothing recorded, nothing left, and the
/// service keeps answering.
async fn store_faults(b: Backend) {
    let (proxy, app) = behind_a_proxy(b, vec![]).await;

    proxy.set(Fault::Refuse);
    let r = app.upload("down.img", pattern(1, 1 << 20), &[]).await;
    let v = assert_error(r, 503, None).await;
    assert_eq!(v["code"], "STORAGE_UNAVAILABLE");
    assert_eq!(
        app.client
            .get(format!("{}/health", app.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        app.client
            .get(format!("{}/ready", app.base))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    let r = app.chunk("down", 1, pattern(2, 1000)).await;
    assert_error(r, 503, None).await;

    // Half way: the first part of a 40 MiB upload cannot be sent.
    proxy.set(Fault::CutLarge);
    let r = app.upload("half.img", pattern(3, 40 << 20), &[]).await;
    assert!(r.status().is_server_error(), "{}", r.status());
    let (_, list) = app.get_json("/images").await;
    assert_eq!(list, serde_json::json!([]), "a failed upload was recorded");

    proxy.set(Fault::Pass);
    assert_eq!(
        app.leftovers().await,
        Vec::<String>::new(),
        "the multipart upload was not aborted"
    );
    assert_eq!(
        app.client
            .get(format!("{}/ready", app.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    app.upload_ok("after.img", pattern(4, 1000)).await;
    app.stop().await;
}

/// A store that takes connections and never answers (a dead route, a hung gateway): `/ready`
/// still answers 503 within the bound a Kubernetes probe waits (5 s), a download, an upload
/// and a chunk fail with 503 instead of hanging, a delete succeeds within one call's bound,
/// and all come back once the store answers.
async fn a_silent_store(b: Backend) {
    let (proxy, app) = behind_a_proxy(b, vec![]).await;
    let id = app.upload_ok("kept.img", pattern(6, 1000)).await;
    let gone = app.upload_ok("gone.img", pattern(9, 1000)).await;
    proxy.set(Fault::Blackhole);
    for _ in 0..2 {
        let started = std::time::Instant::now();
        let r = app
            .client
            .get(format!("{}/ready", app.base))
            .send()
            .await
            .unwrap();
        let took = started.elapsed();
        let v = assert_error(r, 503, None).await;
        assert_eq!(v["code"], "STORAGE_UNAVAILABLE", "{v}");
        assert!(
            took < std::time::Duration::from_secs(5),
            "/ready took {took:?}"
        );
    }
    // A download, an upload and a chunk wait for the store's answer for a bounded time
    // (S3Store::quick: 20 s for the download's first byte; S3Store::sized: about a minute
    // for a small PutObject), then fail 503: nothing hangs for the SDK's 5 x 120 s.
    let started = std::time::Instant::now();
    let download = async {
        let url = app.url(&format!("/images/{id}/action/download"));
        let r = app.client.get(url).send().await.unwrap();
        (r, started.elapsed())
    };
    let upload = async {
        let r = app.upload("during.img", pattern(7, 1000), &[]).await;
        (r, started.elapsed())
    };
    let chunk = async {
        let r = app.chunk("during", 1, pattern(8, 1000)).await;
        (r, started.elapsed())
    };
    // A delete succeeds once its record is gone; its objects (the image and a slimmed copy's
    // key) are deleted at once, within one quick call's bound, not one after the other.
    let delete = async {
        let r = app.delete_image(&gone).await;
        (r, started.elapsed())
    };
    let (download, upload, chunk, (deleted, delete_took)) =
        tokio::join!(download, upload, chunk, delete);
    ok_text(deleted, "delete success").await;
    assert!(
        delete_took < std::time::Duration::from_secs(30),
        "the delete took {delete_took:?}"
    );
    for ((r, took), what, most) in [
        (download, "download", 40),
        (upload, "upload", 90),
        (chunk, "chunk", 90),
    ] {
        let v = assert_error(r, 503, None).await;
        assert_eq!(v["code"], "STORAGE_UNAVAILABLE", "{what}: {v}");
        assert!(
            took < std::time::Duration::from_secs(most),
            "the {what} took {took:?}"
        );
    }
    let health = app
        .client
        .get(format!("{}/health", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    proxy.set(Fault::Pass);
    let r = app
        .client
        .get(format!("{}/ready", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(app.download(&id).await, pattern(6, 1000));
    app.stop().await;
}

/// A client that stops reading its download for longer than the store's quick calls may take
/// (S3Store::quick: 20 s) still gets every byte: the bound is on the store's first byte, not
/// on how long the body takes to be read.
async fn a_paused_download_completes(b: Backend) {
    use futures::StreamExt;
    let app = TestApp::spawn(b, Options::default()).await;
    let data = pattern(8, 40 << 20);
    let id = app.upload_ok("paused.img", data.clone()).await;
    let r = app
        .client
        .get(app.url(&format!("/images/{id}/action/download")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let mut got = body.next().await.unwrap().unwrap().to_vec();
    tokio::time::sleep(std::time::Duration::from_secs(25)).await;
    while let Some(b) = body.next().await {
        got.extend_from_slice(&b.unwrap());
    }
    assert!(got == data, "the paused download's bytes differ");
    app.stop().await;
}

/// A delete while the store is unreachable succeeds: the image is gone at once (its record
/// and its objects' to-do go in one transaction), and the sweep deletes the objects once the
/// store is back, so nothing is left behind and no client sees a 503 for a delete.
async fn a_delete_while_the_store_is_down_finishes_later(b: Backend) {
    // A short upload TTL makes the sweep run every second.
    let (proxy, app) = behind_a_proxy(b, vec![("FS_UPLOAD_TTL_SECS", "4".to_string())]).await;
    let id = app.upload_ok("gone.img", pattern(5, 1 << 20)).await;
    proxy.set(Fault::Refuse);
    ok_text(app.delete_image(&id).await, "delete success").await;
    assert_eq!(app.get_json(&format!("/images/{id}")).await.0, 404);
    proxy.set(Fault::Pass);
    // The sweep deletes the objects once the store is back.
    app.until_no_leftovers("a delete while the store was down", 20)
        .await;
    app.stop().await;
}

/// Waits until `kind` jobs ("check", "slim") were given another attempt at least `n` times
/// (`fs_job_duration_seconds_count{outcome="retry"}`).
async fn until_retried(app: &TestApp, kind: &str, n: f64) {
    let series = format!(r#"fs_job_duration_seconds_count{{kind="{kind}",outcome="retry"}}"#);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let text = crate::operations::metrics(app).await;
        if crate::operations::sample(&text, &series).unwrap_or(0.0) >= n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{kind} not retried {n} times: {text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A slim and a check that meet a store outage lasting past their 5 attempts keep being tried
/// (`FS_JOB_OUTAGE_SECS`) and get their real result once the store is back: the image stays
/// in progress meanwhile, never "check failed" or a failed slim because of an outage. With
/// `FS_JOB_OUTAGE_SECS=0` the slim fails after its 5 attempts and says why.
async fn jobs_wait_out_a_store_outage(b: Backend) {
    let fast = ("FS_JOB_RETRY_MAX_SECS", "1".to_string());
    let (proxy, app) = behind_a_proxy(b, vec![fast.clone()]).await;
    let img = make_qcow2(app.dir.path(), "o.qcow2", 64, 4);
    let bytes = std::fs::read(&img).unwrap();
    let id = app.upload_ok("o.qcow2", bytes.clone()).await;
    let v = crate::checks::wait_checked(&app, &id).await;
    assert_eq!(v["checkStatusResponse"]["status"], 0, "{v}");

    proxy.set(Fault::Refuse);
    ok_text(app.slim(&id).await, "compress in progress").await;
    // Past the 5 attempts a job gets for any other failure.
    until_retried(&app, "slim", 7.0).await;
    let (_, v) = app.get_json(&format!("/images/{id}")).await;
    assert_eq!(v["slimStatus"], 1, "{v}");
    proxy.set(Fault::Pass);
    let v = crate::slims::wait_slim_done(&app, &id).await;
    assert_eq!(v["slimStatus"], 2, "{v}");

    proxy.set(Fault::Refuse);
    let r = crate::integrity::recheck(&app, &id).await;
    assert_eq!(r.status(), 200);
    until_retried(&app, "check", 7.0).await;
    let (_, v) = app.get_json(&format!("/images/{id}")).await;
    assert_eq!(v["checkStatusResponse"]["status"], 4, "{v}");
    proxy.set(Fault::Pass);
    let v = crate::checks::wait_checked(&app, &id).await;
    assert_eq!(v["checkStatusResponse"]["status"], 0, "{v}");
    app.stop().await;

    // No patience for outages: the slim fails after its attempts, and the original stays.
    let impatient = vec![fast, ("FS_JOB_OUTAGE_SECS", "0".to_string())];
    let (proxy, app) = behind_a_proxy(b, impatient).await;
    let id = app.upload_ok("o.qcow2", bytes.clone()).await;
    let v = crate::checks::wait_checked(&app, &id).await;
    assert_eq!(v["checkStatusResponse"]["status"], 0, "{v}");
    proxy.set(Fault::Refuse);
    ok_text(app.slim(&id).await, "compress in progress").await;
    let v = crate::slims::wait_slim_done(&app, &id).await;
    assert_eq!(v["slimStatus"], 3, "{v}");
    assert_eq!(
        v["compressInfo"]["compressMsg"], "slim failed: the object store is unavailable",
        "{v}"
    );
    proxy.set(Fault::Pass);
    assert!(app.download(&id).await == bytes, "the original changed");
    app.stop().await;
}

/// Buckets get the lifecycle rules that back the sweeper up, and rules already there stay.
async fn buckets_get_lifecycle_rules(b: Backend) {
    use aws_sdk_s3::types::{
        BucketLifecycleConfiguration, ExpirationStatus, LifecycleExpiration, LifecycleRule,
        LifecycleRuleFilter,
    };
    let client = s3_client_of(b.s3_server().unwrap()).await;
    let bucket = format!("lc-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    client.create_bucket().bucket(&bucket).send().await.unwrap();
    let theirs = LifecycleRule::builder()
        .id("someone-elses-rule")
        .status(ExpirationStatus::Enabled)
        .filter(LifecycleRuleFilter::builder().prefix("logs/").build())
        .expiration(LifecycleExpiration::builder().days(7).build())
        .build()
        .unwrap();
    client
        .put_bucket_lifecycle_configuration()
        .bucket(&bucket)
        .lifecycle_configuration(
            BucketLifecycleConfiguration::builder()
                .rules(theirs)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let tiers: &'static str = Box::leak(format!("0={bucket}").into_boxed_str());
    let app = TestApp::spawn(
        b,
        Options {
            tiers: Some(tiers),
            ..Default::default()
        },
    )
    .await;
    let rules = client
        .get_bucket_lifecycle_configuration()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    let ids: Vec<&str> = rules.rules().iter().filter_map(|r| r.id()).collect();
    assert!(ids.contains(&"someone-elses-rule"), "{ids:?}");
    let abort = rules
        .rules()
        .iter()
        .find(|r| {
            r.id()
                .is_some_and(|i| i.ends_with("abort-incomplete-uploads"))
        })
        .expect("abort rule");
    assert!(abort.abort_incomplete_multipart_upload().is_some());
    assert!(ids.iter().any(|i| i.ends_with("expire-staging")), "{ids:?}");
    app.stop().await;
}

/// A tier with a storage class: its objects get that class, sent whole (`PutObject`), in parts
/// (multipart) or moved there once the fields after the file named the tier (`CopyObject`).
/// Garage takes any class and keeps none; RGW knows the classes its zone was given
/// (`start_rgw` adds STANDARD_IA).
async fn tiers_with_a_storage_class(b: Backend) {
    let app = TestApp::spawn(
        b,
        Options {
            tiers: Some("0=images,1=archive:STANDARD_IA"),
            ..Default::default()
        },
    )
    .await;
    let mut ids = vec![];
    for (name, len) in [("small.img", 1000), ("big.img", 20 << 20)] {
        let r = app
            .upload(name, pattern(len as u64, len), &[("priority", "1")])
            .await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        ids.push(
            r.json::<serde_json::Value>().await.unwrap()["imageId"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let late = app.dir.path().join("late.img");
    std::fs::write(&late, pattern(7, 12 << 20)).unwrap();
    let r = app
        .upload_path(&late, "late.img", &[("priority", "1")])
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    ids.push(
        r.json::<serde_json::Value>().await.unwrap()["imageId"]
            .as_str()
            .unwrap()
            .to_string(),
    );
    let (s3, prefix) = app.s3();
    for id in &ids {
        let head = s3
            .head_object()
            .bucket("archive")
            .key(format!("{prefix}images/{id}"))
            .send()
            .await
            .unwrap();
        if b.s3_server() == Some(S3Server::Rgw) {
            assert_eq!(
                head.storage_class(),
                Some(&aws_sdk_s3::types::StorageClass::StandardIa),
                "{id}"
            );
        }
        assert_eq!(app.delete_image(id).await.status(), 200);
    }
    app.stop().await;
}

/// A tier naming a storage class the store does not offer stops the start, naming the class and
/// the setting, instead of failing every upload to that tier with a 500 (RGW refuses GLACIER,
/// which its zone placement lacks; Garage takes any class). Nothing is left in the bucket.
async fn a_storage_class_the_store_lacks_stops_the_start(b: Backend) {
    let app = TestApp::spawn(
        b,
        Options {
            tiers: Some("0=images,2=images:GLACIER"),
            no_server: true,
            ..Default::default()
        },
    )
    .await;
    let cfg = file_system::config::Config::from_vars(app.vars.clone()).unwrap();
    let built = file_system::build(cfg).await;
    match b.s3_server() {
        Some(S3Server::Rgw) => {
            let e = format!("{:#}", built.err().expect("GLACIER refused"));
            assert!(
                e.contains("storage class GLACIER of tier 2 (FS_TIERS)"),
                "{e}"
            );
        }
        _ => drop(built.expect("Garage takes any class")),
    }
    assert_eq!(app.leftovers().await, Vec::<String>::new());
    app.stop().await;
}

/// Reads through the store's read-ahead (windows of 1 MiB, several ranged GETs at once) give
/// exactly the object's bytes, whole and for ranges inside, across and at the ends of windows,
/// with the budget at several sizes (0: one GET); an object replaced during a download fails
/// the download (`If-Match`) instead of splicing two versions.
async fn reads_ahead_in_order_and_never_splice(b: Backend) {
    use file_system::storage::ByteRange;
    let prefix = format!("ahead-{}/", uuid::Uuid::new_v4().simple());
    let data = pattern(3, (21 << 20) + 3);
    let sdk = s3_client_of(b.s3_server().unwrap()).await;
    let key = format!("{prefix}images/ahead");
    S3Store::new(s3_settings_of(b.s3_server().unwrap(), &prefix))
        .await
        .unwrap()
        .ensure_bucket("images")
        .await
        .unwrap();
    sdk.put_object()
        .bucket("images")
        .key(&key)
        .body(data.clone().into())
        .send()
        .await
        .unwrap();
    const MIB: u64 = 1 << 20;
    let last = data.len() as u64 - 1;
    for budget in [0, MIB, 3 * MIB, 64 * MIB] {
        let store = S3Store::new(S3Settings {
            part_bytes: MIB,
            readahead_bytes: budget,
            ..s3_settings_of(b.s3_server().unwrap(), &prefix)
        })
        .await
        .unwrap();
        let whole = read_ahead_object(&store, None).await.unwrap();
        assert_eq!(whole, data, "budget {budget}");
        for (start, end) in [
            (0, 0),
            (MIB - 1, MIB),
            (7, 3 * MIB + 5),
            (5 * MIB + 7, last),
            (last, last),
            (0, last),
        ] {
            let range = Some(ByteRange { start, end });
            let got = read_ahead_object(&store, range).await.unwrap();
            assert!(
                got == data[start as usize..=end as usize],
                "budget {budget}, range {start}-{end}"
            );
        }
    }
    replaced_object_fails_the_read(b, &sdk, &prefix, data.len()).await;
}

/// All of `images/ahead` (or `range` of it) through `store`.
async fn read_ahead_object(
    store: &S3Store,
    range: Option<file_system::storage::ByteRange>,
) -> Result<Vec<u8>, std::io::Error> {
    use futures::StreamExt;
    let mut s = store.get("images", "images/ahead", range).await.unwrap();
    let mut out = vec![];
    while let Some(b) = s.next().await {
        out.extend_from_slice(&b?);
    }
    Ok(out)
}

/// `images/ahead` (`len` bytes under `prefix`) replaced after the first window of a read:
/// the rest is refused, never spliced. The object is removed after.
async fn replaced_object_fails_the_read(
    b: Backend,
    sdk: &aws_sdk_s3::Client,
    prefix: &str,
    len: usize,
) {
    use futures::StreamExt;
    const MIB: u64 = 1 << 20;
    let key = format!("{prefix}images/ahead");
    let store = S3Store::new(S3Settings {
        part_bytes: MIB,
        readahead_bytes: MIB,
        ..s3_settings_of(b.s3_server().unwrap(), prefix)
    })
    .await
    .unwrap();
    let mut s = store.get("images", "images/ahead", None).await.unwrap();
    let mut got = s.next().await.unwrap().unwrap().len();
    sdk.put_object()
        .bucket("images")
        .key(&key)
        .body(pattern(4, len).into())
        .send()
        .await
        .unwrap();
    let mut failed = None;
    while let Some(item) = s.next().await {
        match item {
            Ok(b) => got += b.len(),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let e = failed.expect("a replaced object fails the download");
    assert!(e.to_string().contains("changed"), "{e}");
    assert!(got < len);
    sdk.delete_object()
        .bucket("images")
        .key(&key)
        .send()
        .await
        .unwrap();
}

/// A copy inside the store names its source URL-encoded (`x-amz-copy-source`), so keys under a
/// prefix holding a space, `+` or `%` copy like any other (unencoded, the store reads `+` as a
/// space and `%c` as a broken escape).
async fn copies_keys_under_any_prefix(b: Backend) {
    let prefix = format!("copy a+b%c-{}/", uuid::Uuid::new_v4().simple());
    let store = S3Store::new(s3_settings_of(b.s3_server().unwrap(), &prefix))
        .await
        .unwrap();
    store.ensure_bucket("images").await.unwrap();
    let data = pattern(7, 70_001);
    let opts = Default::default();
    store
        .put(obj("images", "images/src"), stream_of(data.clone()), &opts)
        .await
        .unwrap();
    store
        .copy(
            obj("images", "images/src"),
            obj("images", "images/dst"),
            &opts,
        )
        .await
        .unwrap();
    let copied = read_all(store.get("images", "images/dst", None).await.unwrap()).await;
    assert_eq!(copied, data);
    for key in ["images/src", "images/dst"] {
        store.delete("images", key).await.unwrap();
        assert_eq!(store.head("images", key).await.unwrap(), None);
    }
}

crate::s3_server_tests!(
    copies_keys_under_any_prefix,
    reads_ahead_in_order_and_never_splice,
    tiers_with_a_storage_class,
    a_storage_class_the_store_lacks_stops_the_start,
    small_chunks_are_packed_into_valid_parts,
    big_chunks_become_parts_directly,
    small_chunk_between_big_ones_is_joined,
    smaller_resend_names_the_chunk_to_send_again,
    smaller_resends_a_strict_store_cannot_complete,
    any_arrival_order_merges,
    store_faults,
    a_silent_store,
    a_paused_download_completes,
    a_delete_while_the_store_is_down_finishes_later,
    jobs_wait_out_a_store_outage,
    buckets_get_lifecycle_rules,
);
