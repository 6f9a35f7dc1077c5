//! Requests refused before their body is read, as the real clients and proxies see them: the
//! answer (400, 404, 405, 413) must arrive, whole, and the connection must stay usable.
//!
//! Java's `HttpURLConnection` (under the EdgeGallery back ends' RestTemplate) writes the whole
//! body before it reads anything; nginx (`proxy_request_buffering off` and on) turns a
//! connection closed under it into a 502 and takes the upstream out for `fail_timeout`.

use crate::{common::nginx::Site, helpers::*};
use reqwest::{multipart, Client, Response};
use serde_json::{json, Value};
use std::path::PathBuf;

const MIB: usize = 1 << 20;
const LIMIT: u64 = 6 << 20;
const BAD_UPLOAD_NAME: &str =
    "File shouldn't contains any extension or filename is larger than max size";
const TOO_LARGE: &str = "File size is larger than max size";
const BAD_PRIORITY: &str = "unknown priority \"7\"; valid priorities: 0";

/// A real nginx as a reverse proxy in front of `upstreams` (round robin), a child process.
pub use crate::common::nginx::Nginx;

impl Nginx {
    /// A reverse proxy in front of `upstreams` (round robin), with `proxy_request_buffering`
    /// on or off.
    pub async fn proxy(upstreams: &[&str], request_buffering: bool) -> Nginx {
        Nginx::start(None, |_| proxy_site(upstreams, request_buffering)).await
    }

    pub fn api(&self, path: &str) -> String {
        format!("{}{API}{path}", self.base)
    }
}

fn proxy_site(upstreams: &[&str], buffering: bool) -> Site {
    // nginx's defaults, spelled out: one failure takes a server out for 10 s.
    let servers: String = upstreams
        .iter()
        .map(|u| {
            format!(
                "        server {} max_fails=1 fail_timeout=10s;\n",
                u.trim_start_matches("http://")
            )
        })
        .collect();
    let buffering = if buffering { "on" } else { "off" };
    Site {
        http: format!(
            "    upstream file_system {{
{servers}        keepalive 8;
    }}"
        ),
        server: format!(
            "        client_max_body_size 0;
        location / {{
            proxy_pass http://file_system;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_request_buffering {buffering};
        }}"
        ),
    }
}

/// `POST {api}/images`: the fields, then the file part.
async fn upload_via(
    client: &Client,
    api: &str,
    name: &str,
    bytes: Vec<u8>,
    fields: &[(&str, &str)],
) -> Response {
    let mut form = multipart::Form::new();
    for (k, v) in fields {
        form = form.text(k.to_string(), v.to_string());
    }
    form = form.part(
        "file",
        multipart::Part::bytes(bytes).file_name(name.to_string()),
    );
    client
        .post(format!("{api}/images"))
        .multipart(form)
        .send()
        .await
        .unwrap()
}

/// Asserts the exact status and JSON body of an error answer.
async fn assert_answer(resp: Response, status: u16, code: &str, message: &str, what: &str) {
    let got = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    assert_eq!(got, status, "{what}: {text}");
    let body: Value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("{what}: not JSON: {text}"));
    assert_eq!(body, json!({ "code": code, "message": message }), "{what}");
}

/// Uploads a good image through `api` and returns its id.
async fn good_upload(client: &Client, api: &str, bytes: Vec<u8>) -> String {
    let resp = upload_via(
        client,
        api,
        "good.img",
        bytes,
        &[("userId", "tester"), ("priority", "0")],
    )
    .await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    resp.json::<Value>().await.unwrap()["imageId"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn download_via(client: &Client, api: &str, id: &str) -> bytes::Bytes {
    let resp = client
        .get(format!("{api}/images/{id}/action/download"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap()
}

/// A request the service refuses, with a body of several MiB, and the answer it must get.
#[derive(Debug, Clone, Copy)]
enum Refused {
    BadName,
    OverLimit,
    BadPriority,
    BadChunkIdentifier,
    MalformedForm,
    NoRoute,
    BadMethod,
}

impl Refused {
    const ALL: [Refused; 7] = [
        Refused::BadName,
        Refused::OverLimit,
        Refused::BadPriority,
        Refused::BadChunkIdentifier,
        Refused::MalformedForm,
        Refused::NoRoute,
        Refused::BadMethod,
    ];

    async fn send(self, client: &Client, api: &str, seed: u64) -> Response {
        let fields = [("userId", "tester"), ("priority", "0")];
        match self {
            Refused::BadName => {
                upload_via(client, api, "disk.exe", pattern(seed, 8 * MIB), &fields).await
            }
            Refused::OverLimit => {
                upload_via(client, api, "big.img", pattern(seed, 14 * MIB), &fields).await
            }
            // The priority comes before the file: the file is refused before a byte of it is read.
            Refused::BadPriority => {
                let fields = [("priority", "7"), ("userId", "tester")];
                upload_via(client, api, "prio.img", pattern(seed, 8 * MIB), &fields).await
            }
            Refused::BadChunkIdentifier => {
                let form = multipart::Form::new()
                    .text("identifier", "bad identifier!")
                    .part(
                        "part",
                        multipart::Part::bytes(pattern(seed, 4 * MIB)).file_name("1.part"),
                    );
                client
                    .post(format!("{api}/images/upload"))
                    .multipart(form)
                    .send()
                    .await
                    .unwrap()
            }
            Refused::MalformedForm => {
                let mut body = b"--XyZ\r\nthis is no header line\r\n\r\n".to_vec();
                body.extend(pattern(seed, 8 * MIB));
                client
                    .post(format!("{api}/images"))
                    .header("Content-Type", "multipart/form-data; boundary=XyZ")
                    .body(body)
                    .send()
                    .await
                    .unwrap()
            }
            Refused::NoRoute => client
                .post(format!("{api}/no-such-thing"))
                .body(pattern(seed, 8 * MIB))
                .send()
                .await
                .unwrap(),
            Refused::BadMethod => client
                .put(format!("{api}/images"))
                .body(pattern(seed, 8 * MIB))
                .send()
                .await
                .unwrap(),
        }
    }

    /// Status, code and message.
    fn answer(self) -> (u16, &'static str, &'static str) {
        match self {
            Refused::BadName => (400, "INVALID_FILE_NAME", BAD_UPLOAD_NAME),
            Refused::OverLimit => (413, "FILE_TOO_LARGE", TOO_LARGE),
            Refused::BadPriority => (400, "INVALID_PARAMETER", BAD_PRIORITY),
            Refused::BadChunkIdentifier => (
                400,
                "INVALID_PARAMETER",
                "identifier \"bad identifier!\" must be 1 to 128 characters of A-Z, a-z, 0-9, '.', '_' or '-' (not '.' or '..')",
            ),
            Refused::MalformedForm => (400, "BAD_BODY", "the request body could not be read: malformed multipart body: failed to read headers: invalid header name"),
            Refused::NoRoute => (404, "NOT_FOUND", "no such resource"),
            Refused::BadMethod => (405, "METHOD_NOT_ALLOWED", "method not allowed on this resource"),
        }
    }

    async fn check(self, client: &Client, api: &str, seed: u64) {
        let resp = self.send(client, api, seed).await;
        let (status, code, message) = self.answer();
        assert_answer(resp, status, code, message, &format!("{self:?}")).await;
    }
}

/// Java's HttpURLConnection, as RestTemplate drives it, gets every answer, then uploads on.
async fn java_client_reads_every_refusal(b: Backend) {
    let app = TestApp::spawn(
        b,
        Options {
            max_image_bytes: Some(LIMIT),
            ..Default::default()
        },
    )
    .await;
    let dir = app.dir.path();
    let file = |name: &str, seed: u64, len: usize| {
        let path = dir.join(name);
        std::fs::write(&path, pattern(seed, len)).unwrap();
        path
    };
    let spec =
        |path: PathBuf, name: &str, fields: &str| format!("{};{name};{fields}", path.display());
    let good = pattern(4, 3 * MIB + 17);
    std::fs::write(dir.join("good.img"), &good).unwrap();
    let args = [
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/Upload.java").to_string(),
        app.url("/images"),
        spec(
            file("disk.exe", 1, 8 * MIB),
            "disk.exe",
            "userId=tester;priority=0",
        ),
        spec(
            file("big.img", 2, 14 * MIB),
            "big.img",
            "userId=tester;priority=0",
        ),
        spec(
            file("prio.img", 3, 8 * MIB),
            "prio.img",
            "priority=7;userId=tester",
        ),
        spec(dir.join("good.img"), "good.img", "userId=tester;priority=0"),
    ];
    let out = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run("java", &args)
    })
    .await
    .unwrap();
    let answers: Vec<(u16, Value)> = out
        .lines()
        .map(|l| {
            let (status, body) = l.split_once(' ').unwrap_or_else(|| panic!("{out}"));
            (
                status.parse().unwrap(),
                serde_json::from_str(body).unwrap_or_else(|_| panic!("{out}")),
            )
        })
        .collect();
    assert_eq!(answers.len(), 4, "{out}");
    let error = |code: &str, message: &str| json!({ "code": code, "message": message });
    assert_eq!(
        answers[0],
        (400, error("INVALID_FILE_NAME", BAD_UPLOAD_NAME))
    );
    assert_eq!(answers[1], (413, error("FILE_TOO_LARGE", TOO_LARGE)));
    assert_eq!(answers[2], (400, error("INVALID_PARAMETER", BAD_PRIORITY)));
    assert_eq!(answers[3].0, 200, "{out}");
    let id = answers[3].1["imageId"].as_str().unwrap();
    assert_eq!(
        sha256(&download_via(&app.client, &app.url(""), id).await),
        sha256(&good)
    );
    app.stop().await;
}

/// Every refusal through nginx arrives as sent (never a 502), and the next upload through the
/// same nginx (the same single upstream) is served.
async fn refusals_through_nginx(b: Backend, request_buffering: bool) {
    let app = TestApp::spawn(
        b,
        Options {
            max_image_bytes: Some(LIMIT),
            ..Default::default()
        },
    )
    .await;
    let nginx = Nginx::proxy(&[&app.base], request_buffering).await;
    let api = nginx.api("");
    for (i, refused) in Refused::ALL.into_iter().enumerate() {
        refused.check(&app.client, &api, i as u64).await;
        let good = pattern(100 + i as u64, MIB + i);
        let id = good_upload(&app.client, &api, good.clone()).await;
        assert_eq!(
            sha256(&download_via(&app.client, &api, &id).await),
            sha256(&good)
        );
    }
    assert_eq!(nginx.errors(), Vec::<String>::new());
    drop(nginx);
    app.stop().await;
}

async fn refusals_through_nginx_streaming(b: Backend) {
    refusals_through_nginx(b, false).await;
}

async fn refusals_through_nginx_buffering(b: Backend) {
    refusals_through_nginx(b, true).await;
}

crate::backend_tests!(
    java_client_reads_every_refusal,
    refusals_through_nginx_streaming,
    refusals_through_nginx_buffering,
);

/// Two replica processes behind nginx round robin (one failure takes a server out for 10 s):
/// refusals mixed with good uploads, every answer as expected and every good image intact.
async fn two_replicas_behind_nginx(b: Backend) {
    assert!(b.is_postgres() && b.is_s3());
    let opts = Options {
        max_image_bytes: Some(LIMIT),
        job_concurrency: Some(0),
        ..Default::default()
    };
    let app = TestApp::spawn(b, opts).await;
    let dir = app.dir.path();
    let mut replicas = vec![];
    for name in ["a", "b"] {
        let scratch = dir.join(format!("scratch-{name}"));
        let extra = [("FS_SCRATCH_DIR", scratch.to_str().unwrap())];
        let log = dir.join(format!("{name}.log"));
        replicas.push(Replica::start(&app.vars, free_port(), &log, &extra).await);
    }
    let nginx = Nginx::proxy(&[&replicas[0].base, &replicas[1].base], false).await;
    let api = nginx.api("");
    let refusals = [Refused::BadName, Refused::OverLimit, Refused::BadPriority];
    let mut stored = vec![];
    for i in 0..40u64 {
        if i % 2 == 1 {
            refusals[(i / 2) as usize % 3]
                .check(&app.client, &api, i)
                .await;
            continue;
        }
        let good = pattern(200 + i, MIB + i as usize * 4099);
        stored.push((good_upload(&app.client, &api, good.clone()).await, good));
    }
    for (id, good) in &stored {
        assert_eq!(
            sha256(&download_via(&app.client, &api, id).await),
            sha256(good)
        );
    }
    assert_eq!(nginx.errors(), Vec::<String>::new());
}

mod replicas_behind_nginx {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_replicas_behind_nginx() {
        super::two_replicas_behind_nginx(crate::helpers::Backend::PostgresS3).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_rgw() {
        super::two_replicas_behind_nginx(crate::helpers::Backend::PostgresRgw).await
    }
}
