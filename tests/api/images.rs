//! Single uploads, queries, listing, deletion and the slim request contract.

use crate::helpers::*;

async fn upload_query_delete_round_trip(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    let img = make_qcow2(app.dir.path(), "disk.qcow2", 64, 2);
    let bytes = std::fs::read(&img).unwrap();
    let (id, upload_time) = the_upload_answer_is_flat(&app, &bytes).await;
    the_query_answer_is_nested(&app, &id, &upload_time, &bytes).await;
    // Download gives the same bytes.
    let dl = app
        .client
        .get(app.url(&format!("/images/{id}/action/download")))
        .send()
        .await
        .unwrap();
    assert_eq!(dl.status(), 200);
    assert_eq!(
        dl.headers()["content-length"],
        bytes.len().to_string().as_str()
    );
    assert_eq!(sha256(&dl.bytes().await.unwrap()), sha256(&bytes));

    list_filter_and_paging(&app, &id).await;
    delete_is_idempotent(&app, &id).await;
    app.stop().await;
}

/// POST /images answers the original's flat record. Gives the image's id and upload time.
async fn the_upload_answer_is_flat(app: &TestApp, bytes: &[u8]) -> (String, String) {
    let resp = app
        .upload(
            "disk.qcow2",
            bytes.to_vec(),
            &[("userId", "u-1"), ("priority", "0")],
        )
        .await;
    assert_eq!(resp.status(), 200);
    let flat: serde_json::Value = resp.json().await.unwrap();
    let obj = flat.as_object().unwrap();
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "checkStatus",
            "fileName",
            "imageId",
            "msg",
            "sha256",
            "slimStatus",
            "storageMedium",
            "uploadTime",
            "userId"
        ]
    );
    assert!(
        obj.values().all(|v| !v.is_object() && !v.is_array()),
        "flat: {flat}"
    );
    assert_eq!(flat["fileName"], "disk.qcow2");
    assert_eq!(flat["userId"], "u-1");
    assert_eq!(flat["slimStatus"], 0);
    assert_eq!(flat["checkStatus"], 0);
    assert_eq!(flat["msg"], "Check In Progress");
    assert_eq!(flat["storageMedium"], "images");
    let id = flat["imageId"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 36);
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 4);
    let upload_time = flat["uploadTime"].as_str().unwrap().to_string();
    assert!(chrono::NaiveDateTime::parse_from_str(&upload_time, "%Y-%m-%d %H:%M:%S").is_ok());
    (id, upload_time)
}

/// GET /images/{id} answers the original's nested record.
async fn the_query_answer_is_nested(app: &TestApp, id: &str, upload_time: &str, bytes: &[u8]) {
    let (status, v) = app.get_json(&format!("/images/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(v["imageId"], id);
    assert_eq!(v["fileName"], "disk.qcow2");
    assert_eq!(v["userId"], "u-1");
    assert_eq!(v["uploadTime"], upload_time);
    assert_eq!(v["storageMedium"], "images");
    assert_eq!(v["slimStatus"], 0);
    let csr = &v["checkStatusResponse"];
    // 4 until the background check has run (see checks.rs for its outcomes).
    assert!(csr["status"].is_i64());
    assert!(csr["msg"].is_string());
    let info = &csr["checkInfo"];
    assert!(info["checksum"].is_string());
    assert!(info["checkResult"].is_i64());
    let ii = &info["imageInfo"];
    for k in ["image-end-offset", "check-errors", "format", "filename"] {
        assert!(ii[k].is_string(), "{k} must be a string: {ii}");
    }
    assert!(ii["virtual_size"].is_number());
    assert_eq!(ii["disk_size"], bytes.len().to_string());
    let ci = &v["compressInfo"];
    assert!(
        ci["compressStatus"].is_i64()
            && ci["compressMsg"].is_string()
            && ci["compressRate"].is_number()
    );
}

/// GET /images lists, filters by user and pages; numbers past what databases hold are no
/// error, a negative one is.
async fn list_filter_and_paging(app: &TestApp, id: &str) {
    app.upload_ok("second.iso", pattern(2, 1000)).await;
    let (_, all) = app.get_json("/images").await;
    assert_eq!(all.as_array().unwrap().len(), 2);
    let (_, mine) = app.get_json("/images?userId=u-1").await;
    assert_eq!(mine.as_array().unwrap().len(), 1);
    assert_eq!(mine[0]["imageId"], id);
    assert!(mine[0]["checkStatusResponse"]["checkInfo"]["imageInfo"].is_object());
    // An offset alone, and numbers past what databases hold, are not errors.
    for (q, n) in [
        ("offset=1", 1),
        ("offset=18446744073709551615", 0),
        ("limit=18446744073709551615&offset=0", 2),
        // Past u64 too: as many as there are.
        ("limit=99999999999999999999", 2),
        ("offset=99999999999999999999", 0),
    ] {
        let (status, v) = app.get_json(&format!("/images?{q}")).await;
        assert_eq!(status, 200, "{q}: {v}");
        assert_eq!(v.as_array().unwrap().len(), n, "{q}: {v}");
    }
    let (_, page) = app.get_json("/images?limit=1&offset=1").await;
    assert_eq!(page.as_array().unwrap().len(), 1);
    let (_, none) = app.get_json("/images?userId=nobody").await;
    assert_eq!(none, serde_json::json!([]));
    assert_error(
        app.client
            .get(app.url("/images?limit=-1"))
            .send()
            .await
            .unwrap(),
        400,
        None,
    )
    .await;
}

/// DELETE is idempotent and removes the bytes.
async fn delete_is_idempotent(app: &TestApp, id: &str) {
    for _ in 0..2 {
        let resp = app.delete_image(id).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "delete success");
    }
    let resp = app
        .client
        .get(app.url(&format!("/images/{id}")))
        .send()
        .await
        .unwrap();
    assert_error(
        resp,
        404,
        Some(&format!(
            "there is no record in database with imageId: {id}"
        )),
    )
    .await;
    let (_, all) = app.get_json("/images").await;
    assert_eq!(all.as_array().unwrap().len(), 1);
}

async fn fields_after_the_file_and_tiers(b: Backend) {
    let app = TestApp::spawn(
        b,
        Options {
            tiers: Some("0=images,1=archive"),
            ..Default::default()
        },
    )
    .await;
    let img = make_qcow2(app.dir.path(), "t.qcow2", 16, 1);
    // The Java clients add the file before the other fields.
    let resp = app
        .upload_path(
            &img,
            "t.qcow2",
            &[("userId", "late-user"), ("priority", "1")],
        )
        .await;
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["userId"], "late-user");
    assert_eq!(v["storageMedium"], "archive");
    let id = v["imageId"].as_str().unwrap();
    assert!(app.object_exists("archive", &format!("images/{id}")).await);
    assert!(!app.object_exists("images", &format!("images/{id}")).await);

    // Priority in the query string, overridden by a body field.
    let form = reqwest::multipart::Form::new().text("priority", "0").part(
        "file",
        reqwest::multipart::Part::bytes(vec![1u8; 10]).file_name("q.img"),
    );
    let resp = app
        .client
        .post(app.url("/images?priority=1"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["storageMedium"], "images");

    // Missing and empty priority are the default tier; unknown lists the valid ones.
    let resp = app.upload("e.img", vec![1; 10], &[("priority", "")]).await;
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["storageMedium"],
        "images"
    );
    let before = app.leftovers().await.len();
    for p in ["7", "x"] {
        let resp = app.upload("e.img", vec![1; 10], &[("priority", p)]).await;
        let v = assert_error(resp, 400, None).await;
        assert!(v["message"].as_str().unwrap().contains("0, 1"), "{v}");
        let resp = app.upload_path(&img, "t.qcow2", &[("priority", p)]).await;
        assert_error(resp, 400, None).await;
    }
    assert_eq!(
        app.leftovers().await.len(),
        before,
        "a refused upload left files behind"
    );
    app.stop().await;
}

async fn slim_request_contract(b: Backend) {
    // A replica that runs no jobs: the slim stays requested, so the texts are deterministic.
    let app = TestApp::spawn(
        b,
        Options {
            job_concurrency: Some(0),
            ..Default::default()
        },
    )
    .await;
    let id = app
        .upload_ok(
            "s.qcow2",
            std::fs::read(make_qcow2(app.dir.path(), "s.qcow2", 16, 1)).unwrap(),
        )
        .await;
    let unknown = uuid::Uuid::new_v4();
    let resp = app.slim(&unknown.to_string()).await;
    assert_error(resp, 404, Some("file path doesn't exist")).await;
    let resp = app
        .client
        .post(app.url("/images/not-a-uuid/action/slim"))
        .send()
        .await
        .unwrap();
    assert_error(resp, 404, Some("file path doesn't exist")).await;

    let resp = app.slim(&id).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "compress in progress");
    let (_, v) = app.get_json(&format!("/images/{id}")).await;
    assert_eq!(v["slimStatus"], 1);
    assert_eq!(v["compressInfo"]["compressStatus"], 1);
    let resp = app.slim(&id).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.text().await.unwrap(),
        "The image file is being slimmed. No need to slim again."
    );
    app.stop().await;
}

async fn health_and_unknown_routes(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    let r = app
        .client
        .get(format!("{}/health", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .client
        .get(format!("{}/ready", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-request-id"));
    assert_error(
        app.client.get(app.url("/nothing")).send().await.unwrap(),
        404,
        None,
    )
    .await;
    assert_error(
        app.client.put(app.url("/images")).send().await.unwrap(),
        405,
        None,
    )
    .await;
    // CORS: any origin by default.
    let r = app
        .client
        .get(app.url("/images"))
        .header("Origin", "http://example.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    app.stop().await;
}

crate::backend_tests!(
    upload_query_delete_round_trip,
    fields_after_the_file_and_tiers,
    slim_request_contract,
    health_and_unknown_routes,
    streamed_upload_with_odd_frames,
    extended_file_names_are_decoded
);

/// A multipart body with one file part whose `Content-Disposition` parameters are `params`.
fn raw_multipart(params: &str, body: &[u8]) -> (String, Vec<u8>) {
    let boundary = "b0undaryXyZ";
    let mut out = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"userId\"\r\n\r\nu\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; {params}\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    out.extend_from_slice(body);
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), out)
}

/// `filename*=UTF-8''...` (RFC 5987 / 7578, sent by .NET's HttpClient and others), alone or
/// beside `filename=`, is decoded and preferred, then validated like any name.
async fn extended_file_names_are_decoded(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    let data = pattern(9, 5000);
    let cases = [
        (
            "filename*=UTF-8''%E9%95%9C%E5%83%8F.qcow2",
            Some("\u{955c}\u{50cf}.qcow2"),
        ),
        (
            "filename=\"fallback.img\"; filename*=UTF-8''disk%20one.img",
            Some("disk one.img"),
        ),
        (
            "filename*=utf-8''plain.iso; filename=\"other.iso\"",
            Some("plain.iso"),
        ),
        ("filename*=UTF-8''evil.exe", None),
        (
            "filename=\"ok.img\"; filename*=UTF-8''..%2F..%2Fevil.sh",
            None,
        ),
    ];
    for (params, want) in cases {
        let (ct, body) = raw_multipart(params, &data);
        let r = app
            .client
            .post(app.url("/images"))
            .header("Content-Type", ct)
            .body(body)
            .send()
            .await
            .unwrap();
        let Some(name) = want else {
            let v = assert_error(r, 400, None).await;
            assert_eq!(v["code"], "INVALID_FILE_NAME", "{params}: {v}");
            continue;
        };
        assert_eq!(r.status(), 200, "{params}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["fileName"], name, "{params}");
        let id = v["imageId"].as_str().unwrap();
        let dl = app
            .client
            .get(app.url(&format!("/images/{id}/action/download")))
            .send()
            .await
            .unwrap();
        let cd = dl.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(cd.starts_with("attachment; filename="), "{cd}");
        assert_eq!(dl.bytes().await.unwrap().to_vec(), data, "{params}");
    }
    app.stop().await;
}

/// A body over several S3 parts, arriving in frames that straddle part boundaries.
async fn streamed_upload_with_odd_frames(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    let data = bytes::Bytes::from(pattern(77, (21 << 20) + 123));
    let frames: Vec<Result<bytes::Bytes, std::io::Error>> = (0..data.len())
        .step_by(100_003)
        .map(|i| Ok(data.slice(i..(i + 100_003).min(data.len()))))
        .collect();
    let body = reqwest::Body::wrap_stream(futures::stream::iter(frames));
    let part =
        reqwest::multipart::Part::stream_with_length(body, data.len() as u64).file_name("odd.img");
    let form = reqwest::multipart::Form::new().part("file", part);
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
    let (_, rec) = app.get_json(&format!("/images/{id}")).await;
    assert_eq!(
        rec["checkStatusResponse"]["checkInfo"]["imageInfo"]["disk_size"],
        data.len().to_string()
    );
    let dl = app
        .client
        .get(app.url(&format!("/images/{id}/action/download")))
        .send()
        .await
        .unwrap();
    assert_eq!(sha256(&dl.bytes().await.unwrap()), sha256(&data));
    app.stop().await;
}
