//! Chunked uploads: any order, concurrent, re-sent, gaps, resume, cancel, idempotent merge.

use crate::helpers::*;
use futures::future::join_all;

/// Splits `data` into chunks of `size` (the last one shorter).
fn split(data: &[u8], size: usize) -> Vec<Vec<u8>> {
    data.chunks(size).map(<[u8]>::to_vec).collect()
}

async fn out_of_order_concurrent_chunks_merge(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    let data = pattern(7, 3 * 1024 * 1024 + 12345);
    let chunks = split(&data, 256 * 1024);
    let n = chunks.len() as u32;
    // All chunks at once, in reverse order.
    let sends = chunks
        .iter()
        .enumerate()
        .rev()
        .map(|(i, c)| app.chunk("file-a", i as u32 + 1, c.clone()));
    for r in join_all(sends).await {
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "ok.");
    }
    resume_queries_answer(&app, n, data.len()).await;

    let r = app.merge("file-a", "merged.qcow2").await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["fileName"], "merged.qcow2");
    assert_eq!(v["checkStatus"], 0);
    let id = v["imageId"].as_str().unwrap().to_string();
    let dl = app
        .client
        .get(app.url(&format!("/images/{id}/action/download")))
        .send()
        .await
        .unwrap();
    assert_eq!(sha256(&dl.bytes().await.unwrap()), sha256(&data));
    let (_, rec) = app.get_json(&format!("/images/{id}")).await;
    assert_eq!(
        rec["checkStatusResponse"]["checkInfo"]["imageInfo"]["disk_size"],
        data.len().to_string()
    );

    // Merging again returns the same image, not a second one.
    let again: serde_json::Value = app
        .merge("file-a", "merged.qcow2")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["imageId"], id.as_str());
    let (_, all) = app.get_json("/images").await;
    assert_eq!(all.as_array().unwrap().len(), 1);
    // Zip download of a merged image: its CRC came from the parts' CRCs.
    let zip = app.dir.path().join("m.zip");
    app.download_to(&format!("/images/{id}/action/download?isZip=true"), &zip)
        .await;
    run("unzip", &["-tq", zip.to_str().unwrap()]);
    // Parts are gone from the store once merged: only the image remains.
    let files = app.leftovers().await;
    assert_eq!(files.len(), 1, "{files:?}");
    app.stop().await;
}

/// The resume queries of upload `file-a`, which holds all its `n` chunks (`total` bytes):
/// the chunk list, one chunk held, one not, and the bare query's text.
async fn resume_queries_answer(app: &TestApp, n: u32, total: usize) {
    let (status, v) = app.get_json("/images/upload?identifier=file-a").await;
    assert_eq!(status, 200);
    let got: Vec<u64> = v["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["chunkNumber"].as_u64().unwrap())
        .collect();
    assert_eq!(got, (1..=n as u64).collect::<Vec<_>>());
    assert_eq!(v["chunks"][0]["size"], 256 * 1024);
    assert_eq!(v["totalBytes"], total as u64);
    let r = app
        .client
        .get(app.url("/images/upload?identifier=file-a&chunkNumber=3"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .client
        .get(app.url(&format!(
            "/images/upload?identifier=file-a&chunkNumber={}",
            n + 1
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = app
        .client
        .get(app.url("/images/upload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "Upload get request received.");
}

async fn resent_chunks_gaps_and_resume(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    let data = pattern(9, 5 * 100_000);
    let chunks = split(&data, 100_000);
    resent_and_missing_chunks(&app, &chunks).await;
    let id = merged_from_a_java_form(&app, &data).await;
    let id = id.as_str();
    // A chunk for a merged identifier is refused, not silently lost.
    let r = app.chunk("res", 6, vec![1; 10]).await;
    assert_error(r, 409, None).await;
    // Cancel of a merged identifier frees it; the image stays.
    let r = app
        .client
        .delete(app.url("/images/upload?identifier=res"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "cancel success");
    assert_eq!(app.get_json(&format!("/images/{id}")).await.0, 200);
    // A merge no longer names the old image: there is nothing to merge.
    assert_error(app.merge("res", "r.img").await, 400, None).await;
    let merged = the_identifier_starts_again(&app, id, &data).await;
    for image in [id, merged[0].as_str()] {
        let r = app.delete_image(image).await;
        assert_eq!(r.status(), 200);
    }
    assert_eq!(app.leftovers().await, Vec::<String>::new());
    app.stop().await;
}

/// Chunk 2 first arrives damaged, then again correctly (the second replaces it); a merge with
/// chunk 3 missing names it and keeps every chunk; the rest comes, chunk 5 by an explicit
/// chunkNumber that wins over the part's file name.
async fn resent_and_missing_chunks(app: &TestApp, chunks: &[Vec<u8>]) {
    assert_eq!(app.chunk("res", 2, vec![0xee; 777]).await.status(), 200);
    for i in [1usize, 2, 4] {
        assert_eq!(
            app.chunk("res", i as u32, chunks[i - 1].clone())
                .await
                .status(),
            200
        );
    }
    // Gaps: 3 missing below the highest received (4).
    let r = app.merge("res", "r.img").await;
    let v = assert_error(r, 400, None).await;
    assert_eq!(v["code"], "MISSING_CHUNKS");
    assert!(v["message"].as_str().unwrap().contains('3'), "{v}");
    // Everything received is kept: the client sends the rest and merges again.
    let (_, st) = app.get_json("/images/upload?identifier=res").await;
    assert_eq!(st["chunks"].as_array().unwrap().len(), 3);
    for i in [3usize, 5] {
        assert_eq!(
            app.chunk("res", i as u32, chunks[i - 1].clone())
                .await
                .status(),
            200
        );
    }
    // The explicit chunkNumber field wins over the part's file name.
    let form = reqwest::multipart::Form::new()
        .text("identifier", "res")
        .text("chunkNumber", "5")
        .part(
            "part",
            reqwest::multipart::Part::bytes(chunks[4].clone()).file_name("99.part"),
        );
    assert_eq!(
        app.client
            .post(app.url("/images/upload"))
            .multipart(form)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

/// Java clients merge with a url-encoded form: the image holds `data`. Gives its id.
async fn merged_from_a_java_form(app: &TestApp, data: &[u8]) -> String {
    let r = app
        .client
        .post(app.url("/images/merge"))
        .form(&[
            ("identifier", "res"),
            ("filename", "r.img"),
            ("userId", "java"),
            ("priority", "0"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["userId"], "java");
    let id = v["imageId"].as_str().unwrap();
    let dl = app
        .client
        .get(app.url(&format!("/images/{id}/action/download")))
        .send()
        .await
        .unwrap();
    assert_eq!(sha256(&dl.bytes().await.unwrap()), sha256(data));
    id.to_string()
}

/// After a cancel freed the merged identifier, a new upload under it merges (repeatably) into
/// a new image; the first image (`id`, holding `data`) stays. Gives the new image's ids.
async fn the_identifier_starts_again(app: &TestApp, id: &str, data: &[u8]) -> Vec<String> {
    // The identifier starts again: a new upload merges into a new image (it once hit the
    // image's unique identifier: 500, and the joined object was left behind).
    let again = pattern(8, 70_000);
    assert_eq!(app.chunk("res", 1, again.clone()).await.status(), 200);
    let mut merged = vec![];
    for _ in 0..2 {
        let r = app.merge("res", "again.img").await;
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        merged.push(v["imageId"].as_str().unwrap().to_string());
    }
    assert_eq!(merged[0], merged[1], "a repeated merge is the same image");
    assert_ne!(merged[0], id);
    assert!(app.download(&merged[0]).await == again);
    assert_eq!(sha256(&app.download(id).await), sha256(data));
    let (_, st) = app.get_json("/images/upload?identifier=res").await;
    assert_eq!(st["imageId"], merged[0].as_str(), "{st}");
    merged
}

/// The key of the object the upload `identifier` becomes (authentication off: the identifier
/// is the session's key).
async fn session_object_key(app: &TestApp, identifier: &str) -> String {
    use entity::upload_session::{Column, Entity};
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    let db = file_system::db::connect(&app.database_url).await.unwrap();
    let session = Entity::find()
        .filter(Column::Identifier.eq(identifier))
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    db.close().await.unwrap();
    session.object_key
}

async fn cancel_drops_every_chunk(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    let before = app.leftovers().await.len();
    for n in 1..=3 {
        assert_eq!(
            app.chunk("cx", n, pattern(n as u64, 50_000)).await.status(),
            200
        );
    }
    assert!(app.leftovers().await.len() > before);
    // Fields as query parameters on DELETE, as a form body, and as multipart all work.
    let r = app
        .client
        .delete(app.url("/images/upload?identifier=cx&priority=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "cancel success");
    assert_eq!(
        app.leftovers().await.len(),
        before,
        "cancel left chunks behind"
    );
    // A merge that joined the chunks but could not record its image reopens the upload and
    // keeps the joined object for the next merge: a cancel removes it too.
    assert_eq!(app.chunk("joined", 1, vec![3; 1000]).await.status(), 200);
    let key = session_object_key(&app, "joined").await;
    app.write_object(&key, vec![3; 1000]).await;
    let r = app
        .client
        .delete(app.url("/images/upload?identifier=joined"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "cancel success");
    assert!(
        !app.object_exists("images", &key).await,
        "{key} left behind"
    );
    assert_eq!(app.leftovers().await.len(), before);
    let (_, st) = app.get_json("/images/upload?identifier=cx").await;
    assert_eq!(st["chunks"], serde_json::json!([]));
    let r = app.merge("cx", "c.img").await;
    assert_error(r, 400, None).await;
    // Nothing there: still a success.
    let r = app
        .client
        .delete(app.url("/images/upload"))
        .form(&[("identifier", "cx")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "cancel success");
    let form = reqwest::multipart::Form::new().text("identifier", "cx");
    let r = app
        .client
        .delete(app.url("/images/upload"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "cancel success");
    // The identifier can be used again from scratch.
    assert_eq!(app.chunk("cx", 1, vec![5; 10]).await.status(), 200);
    let v: serde_json::Value = app.merge("cx", "c.img").await.json().await.unwrap();
    let dl = app
        .client
        .get(app.url(&format!(
            "/images/{}/action/download",
            v["imageId"].as_str().unwrap()
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(dl.bytes().await.unwrap().to_vec(), vec![5; 10]);
    app.stop().await;
}

async fn concurrent_merges_make_one_image(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    let data = pattern(3, 2_000_000);
    for (i, c) in split(&data, 500_000).into_iter().enumerate() {
        assert_eq!(app.chunk("race", i as u32 + 1, c).await.status(), 200);
    }
    let results = join_all((0..4).map(|_| app.merge("race", "race.qcow2"))).await;
    let mut ids = vec![];
    for r in results {
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        ids.push(v["imageId"].as_str().unwrap().to_string());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let (_, all) = app.get_json("/images").await;
    assert_eq!(all.as_array().unwrap().len(), 1);
    app.stop().await;
}

async fn chunked_zip_is_unpacked(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    let img = make_qcow2(app.dir.path(), "inner.qcow2", 32, 3);
    let zip = app.dir.path().join("up.zip");
    python_zip(
        &zip,
        &format!("z.write({:?}, 'inner/inner.qcow2')", img.to_str().unwrap()),
    );
    let bytes = std::fs::read(&zip).unwrap();
    for (i, c) in split(&bytes, 40_000).into_iter().enumerate() {
        assert_eq!(app.chunk("zipped", i as u32 + 1, c).await.status(), 200);
    }
    let r = app.merge("zipped", "up.zip").await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["fileName"], "inner.qcow2");
    let dl = app
        .client
        .get(app.url(&format!(
            "/images/{}/action/download",
            v["imageId"].as_str().unwrap()
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(sha256(&dl.bytes().await.unwrap()), sha256_file(&img));
    // A chunked zip without an image: 400, and nothing is left.
    let bad = app.dir.path().join("bad.zip");
    python_zip(&bad, "z.writestr('dir/readme.txt', 'hello')");
    assert_eq!(
        app.chunk("badzip", 1, std::fs::read(&bad).unwrap())
            .await
            .status(),
        200
    );
    let r = app.merge("badzip", "bad.zip").await;
    assert_error(r, 400, None).await;
    // Only the first image remains: the refused archive's chunks are gone, nothing was added.
    let left = app.leftovers().await;
    assert_eq!(left.len(), 1, "{left:?}");
    app.stop().await;
}

crate::backend_tests!(
    out_of_order_concurrent_chunks_merge,
    resent_chunks_gaps_and_resume,
    cancel_drops_every_chunk,
    concurrent_merges_make_one_image,
    chunked_zip_is_unpacked,
    abandoned_uploads_expire,
    merges_whose_merger_died_are_taken_over,
    merge_and_cancel_keep_the_upload_priority,
    a_cancel_racing_merges,
    empty_chunks_merge,
    orphan_multipart_uploads_are_aborted,
    a_cancel_racing_chunks,
    a_chunk_in_transfer_yields_to_expiry,
    a_chunk_in_transfer_keeps_its_upload,
    the_same_chunk_sent_twice_at_once,
    a_chunk_sent_again_while_merging
);

/// A chunk sent again with other bytes while its upload is merged: the merge joins the bytes
/// its answer says were kept. Stored under the merge, it left the upload unmergeable (S3:
/// the part's ETag no longer the one recorded).
async fn a_chunk_sent_again_while_merging(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    let sizes = std::iter::repeat_n((6 << 20, (11 << 20) / 2), 3)
        .chain(std::iter::repeat_n((200_000, 150_000), 8));
    for (round, (first, second)) in sizes.enumerate() {
        let id = format!("again{round}");
        let seed = 10 * round as u64;
        let (one, old, new) = (
            pattern(seed, first),
            pattern(seed + 1, first),
            pattern(seed + 2, second),
        );
        assert_eq!(app.chunk(&id, 1, one.clone()).await.status(), 200);
        assert_eq!(app.chunk(&id, 2, old.clone()).await.status(), 200);
        let resend = async { app.chunk(&id, 2, new.clone()).await };
        // The merge a moment after the resend began: it finds the chunk's earlier bytes
        // recorded while the resend is being stored.
        let merge = async {
            tokio::time::sleep(std::time::Duration::from_millis(5 * (round as u64 % 4))).await;
            app.merge(&id, "again.img").await
        };
        let (resent, merged) = tokio::join!(resend, merge);
        let kept = match resent.status().as_u16() {
            200 => &new,
            409 => &old,
            s => panic!("round {round}: resend {s} {}", resent.text().await.unwrap()),
        };
        let status = merged.status();
        let v: serde_json::Value = merged.json().await.unwrap();
        assert_eq!(status, 200, "round {round}: {v}");
        let got = app.download(v["imageId"].as_str().unwrap()).await;
        assert!(
            got.len() == one.len() + kept.len() && got[one.len()..] == kept[..],
            "round {round}: {} bytes, not chunk 1 and the chunk 2 kept",
            got.len()
        );
    }
    app.stop().await;
}

/// The same chunk sent twice at once with other bytes (a client's retry while its first try
/// still arrives, at this replica or another): the upload keeps one of the two whole and the
/// merge joins it. Storing a chunk and recording it used to interleave, leaving one request's
/// bytes under the other's size: an image cut short or served short of its length (local
/// store), or merges failing for good (S3).
async fn the_same_chunk_sent_twice_at_once(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    // Chunks the S3 stores keep as staging objects, then ones past the 5 MiB minimum part.
    let sizes = std::iter::repeat_n((200_000, 150_000), 8).chain([(6 << 20, (11 << 20) / 2)]);
    for (round, (first, second)) in sizes.enumerate() {
        let id = format!("twice{round}");
        let seed = 10 * round as u64;
        let one = pattern(seed, first);
        assert_eq!(app.chunk(&id, 1, one.clone()).await.status(), 200);
        let (tries, alone) = (
            [pattern(seed + 1, first), pattern(seed + 2, second)],
            pattern(seed + 3, first),
        );
        let sent = join_all(
            tries
                .iter()
                .chain([&alone])
                .map(|bytes| app.chunk(&id, 2, bytes.clone())),
        )
        .await;
        for r in sent {
            assert_eq!(
                r.status(),
                200,
                "round {round}: {}",
                r.text().await.unwrap()
            );
        }
        let r = app.merge(&id, "twice.img").await;
        let status = r.status();
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(status, 200, "round {round}: {v}");
        let got = app.download(v["imageId"].as_str().unwrap()).await;
        let whole = tries.iter().chain([&alone]).any(|two| {
            got.len() == one.len() + two.len()
                && got[..one.len()] == one[..]
                && got[one.len()..] == two[..]
        });
        assert!(
            whole,
            "round {round}: {} bytes, not chunk 1 and one whole chunk 2",
            got.len()
        );
    }
    app.stop().await;
}

/// Three uploads of two chunks each, left `merging` by a process that is gone: `dead-merge`
/// silent for a minute with its request recorded, `legacy-merge` silent for two hours without
/// one (as rows written before requests were), `live-merge` renewed just now.
async fn merges_left_by_a_dead_process(app: &TestApp) {
    use entity::upload_session::{Column, Entity};
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    let db = file_system::db::connect(&app.database_url).await.unwrap();
    let now = chrono::Utc::now().timestamp();
    let sessions = [
        ("dead-merge", 60, Some("dead.qcow2")),
        ("legacy-merge", 7200, None),
        ("live-merge", 0, Some("live.qcow2")),
    ];
    for (ident, silent_for, file_name) in sessions {
        assert_eq!(app.chunk(ident, 1, pattern(4, 6 << 20)).await.status(), 200);
        assert_eq!(app.chunk(ident, 2, pattern(5, 1000)).await.status(), 200);
        Entity::update_many()
            .col_expr(Column::State, "merging".into())
            .col_expr(Column::MergeToken, "a-dead-process".into())
            .col_expr(Column::MergeFileName, file_name.into())
            .col_expr(Column::MergeUserId, file_name.map(|_| "merger").into())
            .col_expr(Column::UpdatedAt, (now - silent_for).into())
            .filter(Column::Identifier.eq(ident))
            .exec(&db)
            .await
            .unwrap();
    }
    db.close().await.unwrap();
}

/// Sets upload `identifier` back to `open` behind the service's back.
async fn reopen(app: &TestApp, identifier: &str) {
    use entity::upload_session::{Column, Entity};
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    let db = file_system::db::connect(&app.database_url).await.unwrap();
    Entity::update_many()
        .col_expr(Column::State, "open".into())
        .filter(Column::Identifier.eq(identifier))
        .exec(&db)
        .await
        .unwrap();
    db.close().await.unwrap();
}

/// A session left `merging` by a process that died (its claim no longer renewed) is taken
/// over within seconds: finished as its merge request asked when that was recorded, reopened
/// (chunks kept) when not. A merge whose claim is fresh is left to its merger.
async fn merges_whose_merger_died_are_taken_over(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    merges_left_by_a_dead_process(&app).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (dead, legacy) = loop {
        let (_, dead) = app.get_json("/images/upload?identifier=dead-merge").await;
        let (_, legacy) = app.get_json("/images/upload?identifier=legacy-merge").await;
        if dead["state"] != "merging" && legacy["state"] != "merging" {
            break (dead, legacy);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not taken over: {dead} {legacy}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    // Finished as asked: the image exists under the requested name and user.
    assert_eq!(dead["state"], "completed", "{dead}");
    let id = dead["imageId"].as_str().unwrap().to_string();
    let (_, img) = app.get_json(&format!("/images/{id}")).await;
    assert_eq!(img["fileName"], "dead.qcow2", "{img}");
    assert_eq!(img["userId"], "merger", "{img}");
    let mut expected = pattern(4, 6 << 20);
    expected.extend(pattern(5, 1000));
    assert!(app.download(&id).await == expected);
    // Reopened with its chunks: a merge now makes the image.
    assert_eq!(legacy["state"], "open", "{legacy}");
    assert_eq!(legacy["chunks"].as_array().unwrap().len(), 2, "{legacy}");
    let r = app.merge("legacy-merge", "legacy.qcow2").await;
    assert_eq!(r.status(), 200);
    let legacy_id = r.json::<serde_json::Value>().await.unwrap()["imageId"]
        .as_str()
        .unwrap()
        .to_string();
    // The live merge is its merger's.
    let (_, st) = app.get_json("/images/upload?identifier=live-merge").await;
    assert_eq!(st["state"], "merging", "a live merge was taken: {st}");
    // Once the live one is cancelled and the images deleted, nothing is held.
    reopen(&app, "live-merge").await;
    let r = app
        .client
        .delete(app.url("/images/upload?identifier=live-merge"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "cancel success");
    for id in [id, legacy_id] {
        let r = app.delete_image(&id).await;
        assert_eq!(r.status(), 200);
    }
    assert_eq!(app.leftovers().await, Vec::<String>::new());
    app.stop().await;
}

/// Empty chunks: an upload of one 0-byte chunk is an empty image, and an empty chunk between
/// others adds nothing, on every store (S3 stores refuse an empty part: Garage says "Empty body").
async fn empty_chunks_merge(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    assert_eq!(app.chunk("empty", 1, vec![]).await.status(), 200);
    let r = app.merge("empty", "empty.img").await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    let empty = v["imageId"].as_str().unwrap().to_string();
    assert!(app.download(&empty).await.is_empty());

    for (n, part) in [b"abc".to_vec(), vec![], b"def".to_vec()]
        .into_iter()
        .enumerate()
    {
        assert_eq!(app.chunk("gap", n as u32 + 1, part).await.status(), 200);
    }
    let r = app.merge("gap", "gap.img").await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    let gap = v["imageId"].as_str().unwrap().to_string();
    assert_eq!(app.download(&gap).await, b"abcdef");
    // The two images, nothing else: no part, no staging object, no open upload.
    let left = app.leftovers().await;
    assert_eq!(left.len(), 2, "{left:?}");
    app.stop().await;
}

/// Multipart uploads no session records (a process was killed in the middle of a single
/// upload, a slim or a merge) are aborted once nobody wrote to them for the upload TTL (and
/// for longer than a live write takes to fill a part), while a single upload that keeps
/// sending parts for longer than that is not disturbed.
async fn orphan_multipart_uploads_are_aborted(b: Backend) {
    let app = TestApp::spawn(
        b,
        Options {
            upload_ttl_secs: Some(3),
            min_part_bytes: Some(5 << 20),
            // A live write fills a part within 2 x (5 MiB / 2 MiB/s + 2 s) = 8 s at worst:
            // the sweep takes what went without a new part for longer.
            env: vec![
                ("FS_S3_PART_BYTES", (5u64 << 20).to_string()),
                ("FS_BODY_MIN_BYTES_PER_SEC", (2u64 << 20).to_string()),
                ("FS_BODY_IDLE_TIMEOUT_SECS", "2".to_string()),
            ],
            ..Default::default()
        },
    )
    .await;
    app.orphan_upload("images/killed-mid-put", 10).await;
    // 14 parts of 5 MiB, one every 0.8 s: the upload lives past the 8 s, its parts do not.
    const PART: u64 = 5 << 20;
    const PARTS: u64 = 14;
    let body = futures::stream::unfold(0u64, |n| async move {
        if n == PARTS {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(800)).await;
        Some((
            Ok::<_, std::io::Error>(bytes::Bytes::from(pattern(n, PART as usize))),
            n + 1,
        ))
    });
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::stream_with_length(
            reqwest::Body::wrap_stream(body),
            PARTS * PART,
        )
        .file_name("slow.img"),
    );
    let r = app
        .client
        .post(app.url("/images"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.json::<serde_json::Value>().await.unwrap()["imageId"]
        .as_str()
        .unwrap()
        .to_string();
    let got = app.download(&id).await;
    let want: Vec<u8> = (0..PARTS).flat_map(|n| pattern(n, PART as usize)).collect();
    assert!(got == want, "the slow upload's bytes differ");
    // The orphan goes (the sweep runs every second); only the image stays.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let left = app.leftovers().await;
        if left.len() == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not swept: {left:?}");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    app.stop().await;
}

/// Chunks in flight while their upload is cancelled: each is stored or refused 409, and
/// whatever they stored after the cancel's cleanup ran (a staging object on S3) is removed:
/// nothing is left once the cancel and the chunks have answered.
async fn a_cancel_racing_chunks(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    for round in 0..10u64 {
        let id = format!("chunk-race{round}");
        assert_eq!(
            app.chunk(&id, 1, pattern(round, 3 << 20)).await.status(),
            200
        );
        // Several chunks racing each other too: after the cancel, those that began before it
        // may all find no upload and race to open one (the winner yielding to the cancel).
        let chunks = join_all((2..=6).map(|n| app.chunk(&id, n, pattern(n as u64, 3 << 20))));
        let cancel = async {
            tokio::time::sleep(std::time::Duration::from_millis(10 + round * 10)).await;
            let url = app.url(&format!("/images/upload?identifier={id}"));
            app.client.delete(url).send().await.unwrap().status()
        };
        let (chunks, cancelled) = tokio::join!(chunks, cancel);
        assert_eq!(cancelled, 200, "round {round}");
        let mut reopened = false;
        for r in chunks {
            match r.status().as_u16() {
                // Stored before the cancel, or after it as a new upload's chunk.
                200 => reopened = true,
                409 => {}
                s => panic!("round {round}: {s} {}", r.text().await.unwrap()),
            }
        }
        if reopened {
            let url = app.url(&format!("/images/upload?identifier={id}"));
            assert_eq!(app.client.delete(url).send().await.unwrap().status(), 200);
        }
    }
    app.until_no_leftovers("chunks racing a cancel", 20).await;
    app.stop().await;
}

/// A body of six 4 KiB pieces, one every half second (3 s in all): byte `n` in piece `n`.
fn slow_body() -> reqwest::Body {
    reqwest::Body::wrap_stream(futures::stream::unfold(0u32, |n| async move {
        if n == 6 {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        Some((
            Ok::<_, std::io::Error>(bytes::Bytes::from(vec![n as u8; 4096])),
            n + 1,
        ))
    }))
}

/// A chunk still arriving when its upload expires (it began before the expiry, and named its
/// upload only after its bytes, so the server could not know it was sent to) is refused 409,
/// as when a cancel comes: it does not open the upload anew without its first chunks.
async fn a_chunk_in_transfer_yields_to_expiry(b: Backend) {
    let app = TestApp::spawn(
        b,
        Options {
            upload_ttl_secs: Some(4),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        app.chunk("slow-second", 1, pattern(1, 1000)).await.status(),
        200
    );
    // Chunk 2 begins 3 s later and takes 3 s to arrive: the upload expires meanwhile (idle
    // for the TTL, 4 s), and the chunk ends within a TTL of that (a chunk in transfer longer
    // than the TTL after the expiry no longer yields to it).
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let part = reqwest::multipart::Part::stream_with_length(slow_body(), 6 * 4096);
    let form = reqwest::multipart::Form::new()
        .part("part", part.file_name("2.part"))
        .text("identifier", "slow-second");
    let r = reqwest::Client::new()
        .post(app.url("/images/upload"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(status, 409, "{v}");
    assert!(v["message"].as_str().unwrap().contains("expired"), "{v}");
    let (_, st) = app.get_json("/images/upload?identifier=slow-second").await;
    assert_eq!(st["state"], "none", "{st}");
    app.until_no_leftovers("a chunk that yielded to expiry", 20)
        .await;
    app.stop().await;
}

/// A chunk whose fields come before its bytes names its upload before it arrives: the upload
/// is being sent to, not abandoned, and does not expire while the chunk arrives, however much
/// longer than the TTL that takes (in the query string or in the form). (The upload expired
/// under it, its first chunk lost, and the chunk was refused 409.)
async fn a_chunk_in_transfer_keeps_its_upload(b: Backend) {
    let app = TestApp::spawn(
        b,
        Options {
            upload_ttl_secs: Some(2),
            ..Default::default()
        },
    )
    .await;
    for (i, in_query) in [false, true].into_iter().enumerate() {
        let id = format!("kept-{i}");
        assert_eq!(app.chunk(&id, 1, pattern(1, 1000)).await.status(), 200);
        // Idle for most of the TTL, then 3 s (longer than the TTL) to arrive.
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        let part = reqwest::multipart::Part::stream_with_length(slow_body(), 6 * 4096);
        let (url, mut form) = match in_query {
            true => (
                app.url(&format!("/images/upload?identifier={id}&chunkNumber=2")),
                reqwest::multipart::Form::new(),
            ),
            false => (
                app.url("/images/upload"),
                reqwest::multipart::Form::new()
                    .text("identifier", id.clone())
                    .text("chunkNumber", "2"),
            ),
        };
        form = form.part("part", part.file_name("blob"));
        let r = app.client.post(url).multipart(form).send().await.unwrap();
        assert_eq!(r.status(), 200, "{id}: {}", r.text().await.unwrap());
        let r = app.merge(&id, "kept.img").await;
        assert_eq!(r.status(), 200, "{id}: {}", r.text().await.unwrap());
        let image = r.json::<serde_json::Value>().await.unwrap();
        let got = app.download(image["imageId"].as_str().unwrap()).await;
        let mut want = pattern(1, 1000);
        want.extend((0..6u8).flat_map(|n| vec![n; 4096]));
        assert!(got == want, "{id}: the merged bytes differ");
    }
    app.stop().await;
}

/// Uploads nobody touched for longer than the TTL are aborted and their storage freed.
async fn abandoned_uploads_expire(b: Backend) {
    let app = TestApp::spawn(
        b,
        Options {
            upload_ttl_secs: Some(2),
            ..Default::default()
        },
    )
    .await;
    // One upload of small chunks (packed on S3), one of a big chunk (a part of its own on S3).
    for n in 1..=3 {
        assert_eq!(
            app.chunk("old-small", n, pattern(n as u64, 100_000))
                .await
                .status(),
            200
        );
    }
    assert_eq!(
        app.chunk("old-big", 1, pattern(9, 6 << 20)).await.status(),
        200
    );
    // As if a merge of it had joined the chunks and failed to record its image: expiry
    // removes that object too.
    let key = session_object_key(&app, "old-big").await;
    app.write_object(&key, vec![9; 1000]).await;
    assert!(!app.leftovers().await.is_empty());
    // Expiry aborts the upload, then deletes the session: wait for both.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let left = app.leftovers().await;
        let mut states = vec![];
        for ident in ["old-small", "old-big"] {
            let (_, st) = app
                .get_json(&format!("/images/upload?identifier={ident}"))
                .await;
            states.push(st);
        }
        if left.is_empty() && states.iter().all(|st| st["state"] == "none") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not expired: {left:?} {states:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    // Counted as expired, not as cancelled (the count follows the deletion at once).
    loop {
        let m = crate::metrics::scrape(&app.client, &app.base).await;
        if m.get("fs_upload_sessions_expired_total") == 2.0 {
            assert_eq!(m.get("fs_upload_sessions_cancelled_total"), 0.0);
            assert_eq!(m.get("fs_upload_sessions_opened_total"), 2.0);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", m.text);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    app.stop().await;
}

/// A form with `identifier`, and `priority` when given.
fn tier_form(identifier: &str, priority: Option<&str>) -> reqwest::multipart::Form {
    let form = reqwest::multipart::Form::new().text("identifier", identifier.to_string());
    match priority {
        Some(p) => form.text("priority", p.to_string()),
        None => form,
    }
}

/// An upload's chunks all go to the tier its first chunk named: a merge or a cancel that
/// names another priority is refused as such a chunk is (400, chunks kept); one that names
/// the same priority, or none, works.
async fn merge_and_cancel_keep_the_upload_priority(b: Backend) {
    let app = TestApp::spawn(
        b,
        Options {
            tiers: Some("0=images,1=archive"),
            ..Default::default()
        },
    )
    .await;
    let post = |path: &str, form: reqwest::multipart::Form| {
        app.client.post(app.url(path)).multipart(form).send()
    };
    let chunk = |id: &str, n: u64, priority| {
        let part = reqwest::multipart::Part::bytes(pattern(n, 1000)).file_name(format!("{n}.part"));
        tier_form(id, priority).part("part", part)
    };
    for id in ["tiered", "dropped", "plain"] {
        // A chunk that names no priority goes where its upload is.
        for (n, priority) in [(1, Some("1")), (2, None)] {
            let r = post("/images/upload", chunk(id, n, priority))
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        }
    }
    let r = post("/images/upload", chunk("tiered", 3, Some("0")))
        .await
        .unwrap();
    assert_error(
        r,
        400,
        Some("upload tiered was started with priority 1, not 0"),
    )
    .await;
    let started = "upload tiered was started with priority 1, not 0";
    let merge = |p| tier_form("tiered", p).text("filename", "t.img");
    let r = post("/images/merge", merge(Some("0"))).await.unwrap();
    let v = assert_error(r, 400, Some(started)).await;
    assert_eq!(v["code"], "INVALID_PARAMETER", "{v}");
    let r = app
        .client
        .delete(app.url("/images/upload?identifier=tiered&priority=0"))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, Some(started)).await;
    let r = app
        .client
        .get(app.url("/images/upload?identifier=tiered&priority=0"))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, Some(started)).await;
    for query in ["", "&priority=1", "&priority="] {
        let path = format!("/images/upload?identifier=tiered{query}");
        let (_, held) = app.get_json(&path).await;
        assert_eq!(held["chunks"].as_array().unwrap().len(), 2, "{held}");
    }
    // The same priority, or none: merged into its tier; a repeated merge naming another is
    // refused as the first was.
    for p in [Some("1"), None] {
        let r = post("/images/merge", merge(p)).await.unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["storageMedium"], "archive", "{v}");
    }
    let r = post("/images/merge", merge(Some("0"))).await.unwrap();
    assert_error(r, 400, Some(started)).await;
    for (id, query) in [("dropped", "&priority=1"), ("plain", "")] {
        let r = app
            .client
            .delete(app.url(&format!("/images/upload?identifier={id}{query}")))
            .send()
            .await
            .unwrap();
        ok_text(r, "cancel success").await;
        let (_, held) = app
            .get_json(&format!("/images/upload?identifier={id}"))
            .await;
        assert_eq!(held["state"], "none", "{held}");
    }
    app.stop().await;
}

/// A cancel racing three merges of the same upload, at several delays: each merge answers
/// the image, a conflict that says the upload was cancelled or is being merged, or (the
/// cancel done before it looked) that there are no chunks; never that the store lost the
/// upload. Afterwards the image holds the bytes sent, or nothing is left at all.
async fn a_cancel_racing_merges(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    let data = pattern(77, 12 << 20);
    for round in 0..5u64 {
        let id = format!("race{round}");
        for (i, c) in split(&data, 6 << 20).into_iter().enumerate() {
            assert_eq!(app.chunk(&id, i as u32 + 1, c).await.status(), 200);
        }
        let merges = join_all((0..3).map(|_| app.merge(&id, "r.img")));
        let cancel = async {
            tokio::time::sleep(std::time::Duration::from_millis(round * 40)).await;
            let url = app.url(&format!("/images/upload?identifier={id}"));
            let r = app.client.delete(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        };
        let (merges, cancelled) = tokio::join!(merges, cancel);
        let mut image = None;
        for r in merges {
            let status = r.status().as_u16();
            let v: serde_json::Value = r.json().await.unwrap();
            let message = v["message"].as_str().unwrap_or_default().to_string();
            match status {
                200 => image = Some(v["imageId"].as_str().unwrap().to_string()),
                409 => assert!(
                    message.contains("was cancelled") || message.contains("being merged"),
                    "round {round}: {v}"
                ),
                400 => assert!(
                    message.starts_with("no chunks received"),
                    "round {round}: {v}"
                ),
                _ => panic!("round {round}: {status} {v}"),
            }
        }
        match image {
            Some(image) => {
                assert_eq!(app.download(&image).await, data, "round {round}");
                assert_eq!(app.delete_image(&image).await.status(), 200);
            }
            None => assert_eq!(cancelled.0, 200, "round {round}: {cancelled:?}"),
        }
    }
    let left = app.leftovers().await;
    assert!(left.is_empty(), "{left:?}");
    app.stop().await;
}
