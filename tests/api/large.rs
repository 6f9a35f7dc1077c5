//! An image over 4 GiB through upload and `isZip` download (zip64), hashed end to end.

use crate::helpers::*;
use futures::StreamExt;
use sha2::{Digest, Sha256};

/// 4 GiB + 1 MiB + 7 bytes of a repeating pattern, generated while it is sent.
const SIZE: u64 = (4 << 30) + (1 << 20) + 7;

async fn image_over_4_gib_through_zip64(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    let block = bytes::Bytes::from(pattern(42, 1 << 20));
    let mut expected = Sha256::new();
    let mut sent = 0u64;
    while sent < SIZE {
        let n = (SIZE - sent).min(block.len() as u64) as usize;
        expected.update(&block[..n]);
        sent += n as u64;
    }
    let expected = hex::encode(expected.finalize());
    let body_block = block.clone();
    let body = futures::stream::unfold(0u64, move |off| {
        let block = body_block.clone();
        async move {
            if off >= SIZE {
                return None;
            }
            let n = (SIZE - off).min(block.len() as u64) as usize;
            Some((Ok::<_, std::io::Error>(block.slice(..n)), off + n as u64))
        }
    })
    .boxed();
    let form = reqwest::multipart::Form::new().text("userId", "big").part(
        "file",
        reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(body), SIZE)
            .file_name("huge.img"),
    );
    let resp = app
        .client
        .post(app.url("/images"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let id = resp.json::<serde_json::Value>().await.unwrap()["imageId"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, rec) = app.get_json(&format!("/images/{id}")).await;
    assert_eq!(
        rec["checkStatusResponse"]["checkInfo"]["imageInfo"]["disk_size"],
        SIZE.to_string()
    );

    let zip = app.dir.path().join("huge.zip");
    let h = app
        .download_to(&format!("/images/{id}/action/download?isZip=true"), &zip)
        .await;
    let zip_len = std::fs::metadata(&zip).unwrap().len();
    assert_eq!(h["content-length"], zip_len.to_string().as_str());
    assert!(zip_len > SIZE);
    crate::downloads::verify_zip(&zip, "huge/huge.img", &expected);
    std::fs::remove_file(&zip).unwrap();

    // The plain download hashes the same.
    let resp = app
        .client
        .get(app.url(&format!("/images/{id}/action/download")))
        .send()
        .await
        .unwrap();
    let mut h = Sha256::new();
    let mut s = resp.bytes_stream();
    while let Some(c) = s.next().await {
        h.update(c.unwrap());
    }
    assert_eq!(hex::encode(h.finalize()), expected);
    app.stop().await;
}

// Not on RGW: the test cluster's in-memory OSD is too small for a 4 GiB image and its
// multipart copies.
mod sqlite_local {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn image_over_4_gib_through_zip64() {
        super::image_over_4_gib_through_zip64(crate::helpers::Backend::SqliteLocal).await
    }
}
mod sqlite_s3 {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn image_over_4_gib_through_zip64() {
        super::image_over_4_gib_through_zip64(crate::helpers::Backend::SqliteS3).await
    }
}
mod postgres_local {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn image_over_4_gib_through_zip64() {
        super::image_over_4_gib_through_zip64(crate::helpers::Backend::PostgresLocal).await
    }
}
mod postgres_s3 {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn image_over_4_gib_through_zip64() {
        super::image_over_4_gib_through_zip64(crate::helpers::Backend::PostgresS3).await
    }
}
