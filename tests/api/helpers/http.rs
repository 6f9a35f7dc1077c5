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
