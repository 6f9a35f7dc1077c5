//! Requests as the original clients send them, and error answers.

use reqwest::{multipart, Client, Response};
use std::path::Path;

/// `POST {api}/images` of a file from disk (streamed), file part first, fields after it.
pub async fn send_file(
    client: &Client,
    api: &str,
    path: &Path,
    file_name: &str,
    fields: &[(&str, &str)],
) -> Response {
    let file = tokio::fs::File::open(path).await.unwrap();
    let len = file.metadata().await.unwrap().len();
    let body =
        reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(file, 1 << 20));
    let mut form = multipart::Form::new().part(
        "file",
        multipart::Part::stream_with_length(body, len).file_name(file_name.to_string()),
    );
    for (k, v) in fields {
        form = form.text(k.to_string(), v.to_string());
    }
    client
        .post(format!("{api}/images"))
        .multipart(form)
        .send()
        .await
        .unwrap()
}

/// Polls the image at `url` (`GET {api}/images/{id}`, answered 200) until its check is no
/// longer in progress (status 4); the image. The bound is generous: on S3 a check of a few
/// hundred MiB reads and hashes them through ranged GETs, which a loaded test run (two cores,
/// every backend at once) slows by minutes.
pub async fn wait_check_done(client: &Client, url: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let r = client.get(url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        if v["checkStatusResponse"]["status"] != 4 {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "check never finished: {v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// `POST {api}/images/upload`: chunk `n` of `identifier`, as the original clients send it.
pub async fn send_chunk(
    client: &Client,
    api: &str,
    identifier: &str,
    n: u32,
    bytes: Vec<u8>,
) -> Response {
    let form = multipart::Form::new()
        .text("identifier", identifier.to_string())
        .text("priority", "0")
        .part(
            "part",
            multipart::Part::bytes(bytes).file_name(format!("{n}.part")),
        );
    client
        .post(format!("{api}/images/upload"))
        .multipart(form)
        .send()
        .await
        .unwrap()
}

/// `POST {api}/images/merge` for `identifier`.
pub async fn send_merge(client: &Client, api: &str, identifier: &str, file_name: &str) -> Response {
    let form = multipart::Form::new()
        .text("identifier", identifier.to_string())
        .text("filename", file_name.to_string())
        .text("userId", "tester")
        .text("priority", "0");
    client
        .post(format!("{api}/images/merge"))
        .multipart(form)
        .send()
        .await
        .unwrap()
}

/// Asserts a 200 with a plain-text body.
pub async fn ok_text(resp: Response, text: &str) {
    let status = resp.status();
    let body = resp.text().await.unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (200, text));
}

/// Asserts an error response: status, JSON `{code, message}`, and the message (when given).
pub async fn assert_error(resp: Response, status: u16, message: Option<&str>) -> serde_json::Value {
    assert_eq!(resp.status().as_u16(), status, "unexpected status");
    assert_eq!(
        resp.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap(),
        "application/json"
    );
    let v: serde_json::Value = resp.json().await.unwrap();
    assert!(v["code"].as_str().is_some_and(|c| !c.is_empty()), "{v}");
    if let Some(m) = message {
        assert_eq!(v["message"], m, "{v}");
    }
    v
}
