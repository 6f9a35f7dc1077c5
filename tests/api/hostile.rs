//! The hostile-input matrix (issue 17, section 3): one named test per hostile case and backend.
//!
//! Every case starts a fresh server, sends its hostile request(s), asserts the exact status and
//! error `code` of each answer (never a 5xx), and then what the case leaves: the harness compares
//! objects, staging objects, multipart uploads and scratch files (`TestApp::leftovers`) and the
//! rows of images, upload sessions, upload parts and jobs with what the case says it leaves —
//! nothing for a refused request, exactly its image (and that image's check job) for an
//! accepted one. Each case runs on the embedded default (SQLite + local store) and on Garage +
//! PostgreSQL: `cargo test --test api hostile::` lists `hostile::embedded::<case>` and
//! `hostile::garage_postgres::<case>`.

use crate::helpers::*;
use reqwest::Response;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// The harness
// ---------------------------------------------------------------------------------------------

/// What the service holds: stored things (objects, staging objects, multipart uploads, scratch
/// files) and database rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Held {
    leftovers: usize,
    images: u64,
    sessions: u64,
    parts: u64,
    jobs: u64,
}

/// A refused request leaves nothing.
const NOTHING: Held = Held {
    leftovers: 0,
    images: 0,
    sessions: 0,
    parts: 0,
    jobs: 0,
};

/// `n` accepted single uploads: their objects, records and (finished) check jobs.
const fn images(n: usize) -> Held {
    Held {
        leftovers: n,
        images: n as u64,
        sessions: 0,
        parts: 0,
        jobs: n as u64,
    }
}

/// One merged image of one chunk: its object, record, check job, and the completed session
/// (with its part row) that makes a repeated merge idempotent until the TTL sweeps it.
const MERGED: Held = Held {
    leftovers: 1,
    images: 1,
    sessions: 1,
    parts: 1,
    jobs: 1,
};

impl Held {
    async fn take(app: &TestApp) -> (Held, Vec<String>) {
        use sea_orm::{EntityTrait, PaginatorTrait};
        let left = app.leftovers().await;
        let db = file_system::db::connect(&app.database_url).await.unwrap();
        let held = Held {
            leftovers: left.len(),
            images: entity::image::Entity::find().count(&db).await.unwrap(),
            sessions: entity::upload_session::Entity::find()
                .count(&db)
                .await
                .unwrap(),
            parts: entity::upload_part::Entity::find()
                .count(&db)
                .await
                .unwrap(),
            jobs: entity::job::Entity::find().count(&db).await.unwrap(),
        };
        db.close().await.unwrap();
        (held, left)
    }

    fn plus(self, o: Held) -> Held {
        Held {
            leftovers: self.leftovers + o.leftovers,
            images: self.images + o.images,
            sessions: self.sessions + o.sessions,
            parts: self.parts + o.parts,
            jobs: self.jobs + o.jobs,
        }
    }
}

/// Runs one case: a fresh server, what it holds before, the case, then exactly what the case
/// says it leaves.
macro_rules! hostile_cases {
    ($($name:ident $(with $opts:expr)?),* $(,)?) => {
        hostile_cases!(@backend embedded, SqliteLocal; $($name $(with $opts)?),*);
        hostile_cases!(@backend garage_postgres, PostgresS3; $($name $(with $opts)?),*);
    };
    (@backend $module:ident, $backend:ident; $($name:ident $(with $opts:expr)?),*) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let opts = hostile_cases!(@opts $($opts)?);
                    let app = TestApp::spawn(Backend::$backend, opts).await;
                    let (before, _) = Held::take(&app).await;
                    let expected = before.plus(super::$name(&app).await);
                    let (after, left) = Held::take(&app).await;
                    assert_eq!(after, expected, "{}: left {left:?}", stringify!($name));
                    app.stop().await;
                }
            )*
        }
    };
    (@opts) => { Options::default() };
    (@opts $opts:expr) => { $opts };
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// Asserts an error answer: exact status and `code`; returns the body.
async fn refused(resp: Response, status: u16, code: &str) -> serde_json::Value {
    let v = assert_error(resp, status, None).await;
    assert_eq!(v["code"], code, "{v}");
    v
}

/// Asserts an error answer as [`refused`] does, whose message says `says`.
async fn refused_saying(resp: Response, status: u16, code: &str, says: &str) {
    let v = refused(resp, status, code).await;
    let message = v["message"].as_str().unwrap();
    assert!(message.contains(says), "{v}");
}

/// Asserts a 200 and returns the JSON body.
async fn ok_json(resp: Response) -> serde_json::Value {
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

const BOUNDARY: &str = "hostileXyZ";
const MULTIPART: &str = "multipart/form-data; boundary=hostileXyZ";

/// A multipart body built byte by byte: names and file names go out exactly as given (reqwest
/// would percent-encode them).
#[derive(Default)]
struct Raw(Vec<u8>);

impl Raw {
    fn new() -> Raw {
        Raw::default()
    }

    /// A part with the given header block (without the trailing blank line) and content.
    fn part(mut self, headers: &[u8], content: &[u8]) -> Raw {
        self.0
            .extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        self.0.extend_from_slice(headers);
        self.0.extend_from_slice(b"\r\n\r\n");
        self.0.extend_from_slice(content);
        self.0.extend_from_slice(b"\r\n");
        self
    }

    fn text(self, name: &str, value: &[u8]) -> Raw {
        let h = format!("Content-Disposition: form-data; name=\"{name}\"");
        self.part(h.as_bytes(), value)
    }

    /// A file part whose `filename="..."` holds `file_name` as raw bytes.
    fn file(self, name: &str, file_name: &[u8], content: &[u8]) -> Raw {
        let mut h =
            format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"").into_bytes();
        h.extend_from_slice(file_name);
        h.extend_from_slice(b"\"\r\nContent-Type: application/octet-stream");
        self.part(&h, content)
    }

    /// A file part named only by `filename*=` (RFC 5987), value as given.
    fn file_ext(self, name: &str, ext_value: &str, content: &[u8]) -> Raw {
        let h = format!(
            "Content-Disposition: form-data; name=\"{name}\"; filename*={ext_value}\r\nContent-Type: application/octet-stream"
        );
        self.part(h.as_bytes(), content)
    }

    fn finish(mut self) -> Vec<u8> {
        self.0
            .extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
        self.0
    }
}

async fn post_raw(app: &TestApp, path: &str, content_type: &str, body: Vec<u8>) -> Response {
    app.client
        .post(app.url(path))
        .header("Content-Type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn post_multipart(app: &TestApp, path: &str, body: Raw) -> Response {
    post_raw(app, path, MULTIPART, body.finish()).await
}

/// `POST /images` of `content` under a raw `filename="..."`.
async fn upload_raw_name(app: &TestApp, file_name: &[u8], content: &[u8]) -> Response {
    let body = Raw::new()
        .text("userId", b"hostile")
        .text("priority", b"0")
        .file("file", file_name, content);
    post_multipart(app, "/images", body).await
}

/// `POST /images` of `content` named by `filename*=`.
async fn upload_ext_name(app: &TestApp, ext_value: &str, content: &[u8]) -> Response {
    let body = Raw::new()
        .text("userId", b"hostile")
        .file_ext("file", ext_value, content);
    post_multipart(app, "/images", body).await
}

/// A chunk of `identifier` whose part has the raw file name `part_name`.
async fn chunk_raw_name(app: &TestApp, identifier: &str, part_name: &[u8]) -> Response {
    let body = Raw::new().text("identifier", identifier.as_bytes()).file(
        "part",
        part_name,
        &pattern(1, 1000),
    );
    post_multipart(app, "/images/upload", body).await
}

/// The chunk numbers held for `identifier` (resume query).
async fn held_chunks(app: &TestApp, identifier: &str) -> Vec<u64> {
    let (status, v) = app
        .get_json(&format!("/images/upload?identifier={identifier}"))
        .await;
    assert_eq!(status, 200, "{v}");
    v["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["chunkNumber"].as_u64().unwrap())
        .collect()
}

async fn cancel(app: &TestApp, identifier: &str) {
    let r = app
        .client
        .delete(app.url("/images/upload"))
        .query(&[("identifier", identifier)])
        .send()
        .await
        .unwrap();
    ok_text(r, "cancel success").await;
}

/// Merge with url-encoded fields (as the Java clients send it).
async fn merge_form(app: &TestApp, identifier: &str, file_name: &str) -> Response {
    app.client
        .post(app.url("/images/merge"))
        .form(&[
            ("identifier", identifier),
            ("filename", file_name),
            ("userId", "hostile"),
            ("priority", "0"),
        ])
        .send()
        .await
        .unwrap()
}

fn image_id(v: &serde_json::Value) -> String {
    v["imageId"].as_str().unwrap().to_string()
}

/// Every byte percent-encoded (for query strings that must carry exactly these bytes).
fn pct(raw: &[u8]) -> String {
    raw.iter().map(|b| format!("%{b:02X}")).collect()
}

/// The `Content-Disposition` of an image's download (asserting a 200).
async fn disposition(app: &TestApp, id: &str, zip: bool) -> String {
    let q = if zip { "?isZip=true" } else { "" };
    let r = app
        .client
        .get(app.url(&format!("/images/{id}/action/download{q}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cd = r.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_string();
    assert_well_formed_disposition(&cd);
    cd
}

/// `attachment; filename="<qdtext only>"` optionally followed by `; filename*=UTF-8''<attr-char
/// or %HH>` (RFC 6266 / RFC 8187): visible ASCII only, no quote or backslash inside the quoted
/// string, nothing after.
fn assert_well_formed_disposition(cd: &str) {
    assert!(
        cd.bytes().all(|b| b == b' ' || b.is_ascii_graphic()),
        "{cd:?}"
    );
    let rest = cd
        .strip_prefix("attachment; filename=\"")
        .unwrap_or_else(|| panic!("{cd:?}"));
    let (quoted, tail) = rest.split_once('"').unwrap_or_else(|| panic!("{cd:?}"));
    assert!(!quoted.contains('\\') && !quoted.is_empty(), "{cd:?}");
    if tail.is_empty() {
        return;
    }
    let ext = tail
        .strip_prefix("; filename*=UTF-8''")
        .unwrap_or_else(|| panic!("{cd:?}"));
    let mut bytes = ext.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let h: Vec<u8> = bytes.by_ref().take(2).collect();
            assert!(
                h.len() == 2 && h.iter().all(u8::is_ascii_hexdigit),
                "{cd:?}"
            );
        } else {
            assert!(
                b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b),
                "{cd:?}"
            );
        }
    }
}

/// No file named `name` anywhere in the test's directory, nor beside it (where a name that
/// escaped a path would land).
fn assert_no_stray(app: &TestApp, name: &str) {
    fn walk(dir: &std::path::Path, name: &str, depth: usize) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            assert!(
                p.file_name().and_then(|n| n.to_str()) != Some(name),
                "a client name became a path: {}",
                p.display()
            );
            if depth > 0 && p.is_dir() {
                walk(&p, name, depth - 1);
            }
        }
    }
    let root = app.dir.path();
    walk(root, name, 8);
    let mut up = root.parent();
    for _ in 0..2 {
        if let Some(d) = up {
            walk(d, name, 0);
            up = d.parent();
        }
    }
}

/// Polls until the service holds nothing (a request it noticed late cleans up), or panics.
async fn wait_nothing_left(app: &TestApp, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (held, left) = Held::take(app).await;
        if held == NOTHING {
            return;
        }
        assert!(Instant::now() < deadline, "left behind: {held:?} {left:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How many `POST {path}` requests the server answered with `status` (its own metrics).
async fn answered(app: &TestApp, path: &str, status: u16) -> u64 {
    let text = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!(
        "fs_http_requests_total{{method=\"POST\",route=\"{API}{path}\",status=\"{status}\"}} "
    );
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// Sends a request's head and the start of its body on a raw connection, then drops the
/// connection (a client that dies mid-body), and waits until the server has ended that request
/// with a 400 (the body could not be read).
async fn stop_mid_body(app: &TestApp, path: &str, headers: &str, body_start: &[u8]) {
    use tokio::io::AsyncWriteExt;
    let seen = answered(app, path, 400).await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!("POST {API}{path} HTTP/1.1\r\nHost: {addr}\r\n{headers}\r\n");
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(body_start).await.unwrap();
    conn.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(conn);
    let deadline = Instant::now() + Duration::from_secs(20);
    while answered(app, path, 400).await == seen {
        assert!(
            Instant::now() < deadline,
            "the server never ended the cut request"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The start of a multipart body: text fields, then a file part's headers and `content`.
fn multipart_start(
    fields: &[(&str, &str)],
    part: &str,
    file_name: &str,
    content: &[u8],
) -> Vec<u8> {
    let mut raw = Raw::new();
    for (k, v) in fields {
        raw = raw.text(k, v.as_bytes());
    }
    let mut b = raw.0;
    b.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{part}\"; filename=\"{file_name}\"\r\n\r\n"
        )
        .as_bytes(),
    );
    b.extend_from_slice(content);
    b
}

// ---------------------------------------------------------------------------------------------
// Archives
// ---------------------------------------------------------------------------------------------

/// A zip made by Python's zipfile (`z` is the open ZipFile, deflated by default).
fn py_zip(app: &TestApp, script: &str) -> Vec<u8> {
    let path = app
        .dir
        .path()
        .join(format!("{}.zip", uuid::Uuid::new_v4().simple()));
    python_zip(&path, script);
    std::fs::read(&path).unwrap()
}

/// One entry of a zip built by hand (STORED), with whatever its headers should claim.
struct Entry<'a> {
    name: &'a [u8],
    data: &'a [u8],
    /// Uncompressed size the headers declare (default: the real one).
    declared: Option<u64>,
    /// Sizes in a zip64 extra field (both headers), 0xFFFFFFFF in the classic fields.
    zip64: bool,
    /// Unix mode in the external attributes (made by Unix).
    mode: Option<u32>,
    /// General-purpose flag 11: the name is UTF-8.
    utf8: bool,
}

impl<'a> Entry<'a> {
    fn new(name: &'a [u8], data: &'a [u8]) -> Entry<'a> {
        Entry {
            name,
            data,
            declared: None,
            zip64: false,
            mode: None,
            utf8: false,
        }
    }
}

fn le16(v: &mut Vec<u8>, x: u16) {
    v.extend_from_slice(&x.to_le_bytes());
}

fn le32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes());
}

fn le64(v: &mut Vec<u8>, x: u64) {
    v.extend_from_slice(&x.to_le_bytes());
}

/// A zip of STORED entries, byte by byte (APPNOTE.TXT 4.3), so that names and sizes can lie.
fn build_zip(entries: &[Entry]) -> Vec<u8> {
    let mut out = vec![];
    let mut central = vec![];
    for e in entries {
        let offset = out.len() as u32;
        let crc = crc32fast::hash(e.data);
        let size = e.declared.unwrap_or(e.data.len() as u64);
        let comp = e.data.len() as u64;
        let flags: u16 = if e.utf8 { 0x0800 } else { 0 };
        let version: u16 = if e.zip64 { 45 } else { 20 };
        let mut extra = vec![];
        if e.zip64 {
            le16(&mut extra, 0x0001);
            le16(&mut extra, 16);
            le64(&mut extra, size);
            le64(&mut extra, comp);
        }
        let (size32, comp32) = if e.zip64 {
            (u32::MAX, u32::MAX)
        } else {
            (size as u32, comp as u32)
        };
        // Local file header.
        le32(&mut out, 0x0403_4b50);
        le16(&mut out, version);
        le16(&mut out, flags);
        le16(&mut out, 0); // stored
        le16(&mut out, 0); // time
        le16(&mut out, 0x21); // 1980-01-01
        le32(&mut out, crc);
        le32(&mut out, comp32);
        le32(&mut out, size32);
        le16(&mut out, e.name.len() as u16);
        le16(&mut out, extra.len() as u16);
        out.extend_from_slice(e.name);
        out.extend_from_slice(&extra);
        out.extend_from_slice(e.data);
        // Central directory record.
        le32(&mut central, 0x0201_4b50);
        le16(
            &mut central,
            if e.mode.is_some() {
                (3 << 8) | version
            } else {
                version
            },
        );
        le16(&mut central, version);
        le16(&mut central, flags);
        le16(&mut central, 0);
        le16(&mut central, 0);
        le16(&mut central, 0x21);
        le32(&mut central, crc);
        le32(&mut central, comp32);
        le32(&mut central, size32);
        le16(&mut central, e.name.len() as u16);
        le16(&mut central, extra.len() as u16);
        le16(&mut central, 0); // comment
        le16(&mut central, 0); // disk
        le16(&mut central, 0); // internal attributes
        le32(&mut central, e.mode.map_or(0, |m| m << 16));
        le32(&mut central, offset);
        central.extend_from_slice(e.name);
        central.extend_from_slice(&extra);
    }
    let cd_offset = out.len() as u32;
    out.extend_from_slice(&central);
    le32(&mut out, 0x0605_4b50);
    le16(&mut out, 0);
    le16(&mut out, 0);
    le16(&mut out, entries.len() as u16);
    le16(&mut out, entries.len() as u16);
    le32(&mut out, central.len() as u32);
    le32(&mut out, cd_offset);
    le16(&mut out, 0);
    out
}

/// Replaces the end record of a (classic) zip by a zip64 end record and locator declaring
/// `entries` entries, and a classic end record saying 0xFFFF (look in the zip64 record).
fn zip64_count_lie(mut zip: Vec<u8>, entries: u64) -> Vec<u8> {
    let eocd = zip.len() - 22;
    assert_eq!(&zip[eocd..eocd + 4], b"PK\x05\x06");
    let cd_size = u32::from_le_bytes(zip[eocd + 12..eocd + 16].try_into().unwrap()) as u64;
    let cd_offset = u32::from_le_bytes(zip[eocd + 16..eocd + 20].try_into().unwrap()) as u64;
    zip.truncate(eocd);
    let record_at = zip.len() as u64;
    le32(&mut zip, 0x0606_4b50);
    le64(&mut zip, 44);
    le16(&mut zip, 45);
    le16(&mut zip, 45);
    le32(&mut zip, 0);
    le32(&mut zip, 0);
    le64(&mut zip, entries);
    le64(&mut zip, entries);
    le64(&mut zip, cd_size);
    le64(&mut zip, cd_offset);
    le32(&mut zip, 0x0706_4b50);
    le32(&mut zip, 0);
    le64(&mut zip, record_at);
    le32(&mut zip, 1);
    le32(&mut zip, 0x0605_4b50);
    le16(&mut zip, 0);
    le16(&mut zip, 0);
    le16(&mut zip, 0xFFFF);
    le16(&mut zip, 0xFFFF);
    le32(&mut zip, u32::MAX);
    le32(&mut zip, u32::MAX);
    le16(&mut zip, 0);
    zip
}

/// Sets the declared uncompressed size (and optionally the CRC-32) of the first entry of a
/// zip, in its local header and its central directory record.
fn patch_declared(bytes: &mut [u8], size: u32, crc: Option<u32>) {
    bytes[22..26].copy_from_slice(&size.to_le_bytes());
    let cd = bytes
        .windows(4)
        .rposition(|w| w == [0x50, 0x4b, 0x01, 0x02])
        .unwrap();
    bytes[cd + 24..cd + 28].copy_from_slice(&size.to_le_bytes());
    if let Some(c) = crc {
        bytes[14..18].copy_from_slice(&c.to_le_bytes());
        bytes[cd + 16..cd + 20].copy_from_slice(&c.to_le_bytes());
    }
}

/// Uploads `zip` as `x.zip` and asserts it is refused as an archive (400 INVALID_ZIP) whose
/// message mentions `says`.
async fn zip_refused(app: &TestApp, zip: Vec<u8>, says: &str) -> Held {
    let v = refused(app.upload("x.zip", zip, &[]).await, 400, "INVALID_ZIP").await;
    assert!(v["message"].as_str().unwrap().contains(says), "{v}");
    NOTHING
}

/// Uploads `zip` and asserts the image inside is stored as `file_name` with `content`.
async fn zip_accepted(app: &TestApp, zip: Vec<u8>, file_name: &str, content: &[u8]) -> Held {
    let v = ok_json(app.upload("x.zip", zip, &[]).await).await;
    assert_eq!(v["fileName"], file_name, "{v}");
    assert_eq!(app.download(&image_id(&v)).await, content);
    images(1)
}

/// A Python expression for `data` (written to a file: command lines are bounded).
fn py_bytes(app: &TestApp, data: &[u8]) -> String {
    let path = app
        .dir
        .path()
        .join(format!("{}.bin", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, data).unwrap();
    format!("open({:?}, 'rb').read()", path.to_str().unwrap())
}

// ---------------------------------------------------------------------------------------------
// Traversal: identifier (chunk, merge, cancel, resume query), in every spelling
// ---------------------------------------------------------------------------------------------

/// `identifier` is refused by every request that takes one: 400 INVALID_PARAMETER.
async fn identifier_refused_everywhere(app: &TestApp, ident: &[u8]) -> Held {
    let chunk = Raw::new()
        .text("identifier", ident)
        .file("part", b"1.part", &pattern(1, 1000));
    refused(
        post_multipart(app, "/images/upload", chunk).await,
        400,
        "INVALID_PARAMETER",
    )
    .await;
    let merge = Raw::new()
        .text("identifier", ident)
        .text("filename", b"a.img");
    refused(
        post_multipart(app, "/images/merge", merge).await,
        400,
        "INVALID_PARAMETER",
    )
    .await;
    let r = app
        .client
        .delete(app.url(&format!("/images/upload?identifier={}", pct(ident))))
        .send()
        .await
        .unwrap();
    refused(r, 400, "INVALID_PARAMETER").await;
    let r = app
        .client
        .get(app.url(&format!("/images/upload?identifier={}", pct(ident))))
        .send()
        .await
        .unwrap();
    refused(r, 400, "INVALID_PARAMETER").await;
    NOTHING
}

async fn traversal_identifier_dotdot(app: &TestApp) -> Held {
    identifier_refused_everywhere(app, b"..").await
}

async fn traversal_identifier_dotdot_path(app: &TestApp) -> Held {
    identifier_refused_everywhere(app, b"../../etc").await
}

async fn traversal_identifier_absolute(app: &TestApp) -> Held {
    identifier_refused_everywhere(app, b"/etc/passwd").await
}

async fn traversal_identifier_backslash(app: &TestApp) -> Held {
    identifier_refused_everywhere(app, b"..\\..\\windows").await
}

async fn traversal_identifier_nul(app: &TestApp) -> Held {
    identifier_refused_everywhere(app, b"ok\0/../x").await
}

async fn traversal_identifier_percent_encoded(app: &TestApp) -> Held {
    identifier_refused_everywhere(app, b"..%2F..%2Fetc").await;
    // Decoded by the query string: `../../etc`.
    let r = app
        .client
        .delete(app.url("/images/upload?identifier=..%2F..%2Fetc"))
        .send()
        .await
        .unwrap();
    refused(r, 400, "INVALID_PARAMETER").await;
    NOTHING
}

async fn traversal_identifier_overlong_utf8(app: &TestApp) -> Held {
    // `../` with each byte in a 2-byte overlong form.
    identifier_refused_everywhere(app, b"\xC0\xAE\xC0\xAE\xC0\xAFetc").await
}

// ---------------------------------------------------------------------------------------------
// Traversal: image ids in the path (only ever looked up as UUIDs)
// ---------------------------------------------------------------------------------------------

/// `raw` (already percent-encoded for the path) is no image on any route: 404 in JSON.
async fn image_id_unknown_everywhere(app: &TestApp, raw: &str) -> Held {
    let id = app.upload_ok("known.img", pattern(30, 1000)).await;
    let url = |tail: &str| app.url(&format!("/images/{raw}{tail}"));
    refused(
        app.client.get(url("")).send().await.unwrap(),
        404,
        "IMAGE_NOT_FOUND",
    )
    .await;
    for q in ["", "?isZip=true"] {
        let r = app
            .client
            .get(url(&format!("/action/download{q}")))
            .send()
            .await
            .unwrap();
        refused(r, 404, "IMAGE_NOT_FOUND").await;
    }
    let r = app.client.post(url("/action/slim")).send().await.unwrap();
    let v = refused(r, 404, "NOT_FOUND").await;
    assert_eq!(v["message"], "file path doesn't exist");
    refused(
        app.client.delete(url("")).send().await.unwrap(),
        404,
        "IMAGE_NOT_FOUND",
    )
    .await;
    // The image that exists is untouched.
    assert_eq!(app.download(&id).await, pattern(30, 1000));
    images(1)
}

async fn traversal_image_id_dotdot(app: &TestApp) -> Held {
    image_id_unknown_everywhere(app, "%2E%2E%2F%2E%2E%2Fetc%2Fpasswd").await
}

async fn traversal_image_id_absolute(app: &TestApp) -> Held {
    image_id_unknown_everywhere(app, "%2Fetc%2Fpasswd").await
}

async fn traversal_image_id_backslash(app: &TestApp) -> Held {
    image_id_unknown_everywhere(app, "..%5C..%5Cwindows").await
}

async fn traversal_image_id_nul(app: &TestApp) -> Held {
    // A UUID with a NUL after it is no UUID.
    image_id_unknown_everywhere(app, "0e0c8a52-6b3b-4f8c-9e5d-0f1a2b3c4d5e%00").await
}

async fn traversal_image_id_overlong_utf8(app: &TestApp) -> Held {
    // Overlong `..` and a lone 0xFF: not UTF-8 once decoded, still a JSON 404 (not axum's
    // plain-text 400).
    image_id_unknown_everywhere(app, "%C0%AE%C0%AE").await;
    image_id_unknown_everywhere(app, "%FF").await;
    images(2)
}

async fn traversal_image_id_uuid_lookalike(app: &TestApp) -> Held {
    // 36 characters once decoded (as long as a UUID), with traversal in it.
    let raw = format!("{}etc%2Fpassw", "..%2F".repeat(9));
    image_id_unknown_everywhere(app, &raw).await
}

// ---------------------------------------------------------------------------------------------
// Traversal: chunk part names. The number is taken from the base name; the name is never a path.
// ---------------------------------------------------------------------------------------------

/// A chunk whose part name holds a path is stored as chunk `n` of its identifier, nowhere else.
async fn part_name_is_chunk(app: &TestApp, part_name: &[u8], n: u64) -> Held {
    ok_text(chunk_raw_name(app, "pn", part_name).await, "ok.").await;
    assert_eq!(held_chunks(app, "pn").await, [n]);
    assert_no_stray(app, &format!("{n}.part"));
    cancel(app, "pn").await;
    NOTHING
}

async fn traversal_part_name_dotdot(app: &TestApp) -> Held {
    part_name_is_chunk(app, b"../../1.part", 1).await
}

async fn traversal_part_name_absolute(app: &TestApp) -> Held {
    part_name_is_chunk(app, b"/tmp/2.part", 2).await
}

async fn traversal_part_name_backslash(app: &TestApp) -> Held {
    part_name_is_chunk(app, b"..\\\\..\\\\3.part", 3).await;
    // Unescaped backslashes: still chunk 4.
    part_name_is_chunk(app, b"..\\..\\4.part", 4).await;
    let body =
        Raw::new()
            .text("identifier", b"pn")
            .file_ext("part", "UTF-8''..%5C..%5C8.part", b"data");
    ok_text(post_multipart(app, "/images/upload", body).await, "ok.").await;
    assert_eq!(held_chunks(app, "pn").await, [8]);
    cancel(app, "pn").await;
    NOTHING
}

async fn traversal_part_name_nul(app: &TestApp) -> Held {
    // A raw NUL cannot be in a header: the body is malformed.
    refused(
        chunk_raw_name(app, "pn", b"1\0.part").await,
        400,
        "BAD_BODY",
    )
    .await;
    // Encoded, it reaches the number parser.
    let body = Raw::new()
        .text("identifier", b"pn")
        .file_ext("part", "UTF-8''1%00.part", b"data");
    refused(
        post_multipart(app, "/images/upload", body).await,
        400,
        "INVALID_PARAMETER",
    )
    .await;
    NOTHING
}

async fn traversal_part_name_percent_encoded(app: &TestApp) -> Held {
    // Not decoded in `filename=`: no number.
    refused(
        chunk_raw_name(app, "pn", b"..%2F..%2F1.part").await,
        400,
        "INVALID_PARAMETER",
    )
    .await;
    // Decoded in `filename*=`: a path whose base is `4.part`.
    let body =
        Raw::new()
            .text("identifier", b"pn")
            .file_ext("part", "UTF-8''..%2F..%2F4.part", b"data");
    ok_text(post_multipart(app, "/images/upload", body).await, "ok.").await;
    assert_eq!(held_chunks(app, "pn").await, [4]);
    cancel(app, "pn").await;
    NOTHING
}

async fn traversal_part_name_overlong_utf8(app: &TestApp) -> Held {
    // Invalid UTF-8 in `filename*=`: undecodable, so no name and no number.
    let body = Raw::new().text("identifier", b"pn").file_ext(
        "part",
        "UTF-8''%C0%AE%C0%AE%C0%AF6.part",
        b"data",
    );
    refused(
        post_multipart(app, "/images/upload", body).await,
        400,
        "INVALID_PARAMETER",
    )
    .await;
    // Raw in `filename=`: the overlong bytes are not separators; the base is the whole name.
    refused(
        chunk_raw_name(app, "pn", b"\xC0\xAE\xC0\xAE\xC0\xAF5.part").await,
        400,
        "INVALID_PARAMETER",
    )
    .await;
    NOTHING
}

// ---------------------------------------------------------------------------------------------
// Traversal: upload file names. Reduced to their base name, only ever shown back.
// ---------------------------------------------------------------------------------------------

/// An upload named `raw` is stored under the base name `stored`, nowhere but under its id.
async fn upload_name_becomes(app: &TestApp, raw: &[u8], stored: &str) -> String {
    let data = pattern(2, 4000);
    let v = ok_json(upload_raw_name(app, raw, &data).await).await;
    assert_eq!(v["fileName"], stored, "{v}");
    let id = image_id(&v);
    assert_eq!(app.download(&id).await, data);
    assert_no_stray(app, stored);
    id
}

async fn traversal_file_name_dotdot(app: &TestApp) -> Held {
    upload_name_becomes(app, b"../../evil-dotdot.img", "evil-dotdot.img").await;
    images(1)
}

async fn traversal_file_name_absolute(app: &TestApp) -> Held {
    upload_name_becomes(app, b"/etc/cron.d/evil-abs.img", "evil-abs.img").await;
    images(1)
}

async fn traversal_file_name_backslash(app: &TestApp) -> Held {
    // Backslashes escaped in the quoted string, and percent-encoded in `filename*=`: `\` is a
    // separator, the name is reduced to its base.
    upload_name_becomes(app, b"..\\\\..\\\\evil-bs.img", "evil-bs.img").await;
    upload_name_becomes(app, b"C:\\\\Windows\\\\evil-drive.img", "evil-drive.img").await;
    // Unescaped, as old browsers send a Windows path: a backslash that escapes nothing
    // special stays, and is a separator.
    upload_name_becomes(app, b"C:\\Windows\\evil-raw.img", "evil-raw.img").await;
    upload_name_becomes(app, b"..\\..\\evil-rawdot.img", "evil-rawdot.img").await;
    let v = ok_json(upload_ext_name(app, "UTF-8''..%5C..%5Cevil-ext.img", b"data").await).await;
    assert_eq!(v["fileName"], "evil-ext.img");
    images(5)
}

async fn traversal_file_name_nul(app: &TestApp) -> Held {
    refused(
        upload_raw_name(app, b"evil\0.img", b"data").await,
        400,
        "BAD_BODY",
    )
    .await;
    refused(
        upload_ext_name(app, "UTF-8''evil%00.img", b"data").await,
        400,
        "INVALID_FILE_NAME",
    )
    .await;
    NOTHING
}

async fn traversal_file_name_percent_encoded(app: &TestApp) -> Held {
    // `filename=` is not decoded: the name is kept as sent.
    let id = upload_name_becomes(app, b"%2E%2E%2Fevil-pct.img", "%2E%2E%2Fevil-pct.img").await;
    // Some user agents percent-decode `filename` (RFC 6266 appendix D): there `%` is replaced
    // and the exact name is in `filename*`.
    assert_eq!(
        disposition(app, &id, false).await,
        "attachment; filename=\"_2E_2E_2Fevil-pct.img\"; filename*=UTF-8''%252E%252E%252Fevil-pct.img"
    );
    // `filename*=` is: a path, reduced to its base.
    let v = ok_json(upload_ext_name(app, "UTF-8''..%2F..%2Fevil-ext.img", b"data").await).await;
    assert_eq!(v["fileName"], "evil-ext.img");
    images(2)
}

async fn traversal_file_name_overlong_utf8(app: &TestApp) -> Held {
    // Raw overlong bytes are not separators; they are invalid UTF-8, and a name that is not
    // UTF-8 is not the client's name: refused.
    refused(
        upload_raw_name(app, b"\xC0\xAE\xC0\xAE\xC0\xAFevil.img", b"data").await,
        400,
        "INVALID_FILE_NAME",
    )
    .await;
    // In `filename*=` they do not decode: no file name at all.
    refused(
        upload_ext_name(app, "UTF-8''%C0%AE%C0%AE%C0%AFevil.img", b"data").await,
        400,
        "INVALID_FILE_NAME",
    )
    .await;
    NOTHING
}

// ---------------------------------------------------------------------------------------------
// Traversal: merge file names.
// ---------------------------------------------------------------------------------------------

/// One chunk, merged under `raw` (url-encoded form): stored as `stored`.
async fn merge_name_becomes(app: &TestApp, raw: &str, stored: &str) -> Held {
    ok_text(app.chunk("mn", 1, pattern(3, 5000)).await, "ok.").await;
    let v = ok_json(merge_form(app, "mn", raw).await).await;
    assert_eq!(v["fileName"], stored, "{v}");
    assert_eq!(app.download(&image_id(&v)).await, pattern(3, 5000));
    assert_no_stray(app, stored);
    MERGED
}

/// One chunk, merged under a refused name: 400 INVALID_FILE_NAME, the chunk kept (the client
/// may merge again under a good name), then cancelled.
async fn merge_name_refused(app: &TestApp, body: Raw, code: &str) -> Held {
    ok_text(app.chunk("mn", 1, pattern(3, 5000)).await, "ok.").await;
    let body = body.text("identifier", b"mn");
    refused(post_multipart(app, "/images/merge", body).await, 400, code).await;
    assert_eq!(held_chunks(app, "mn").await, [1]);
    cancel(app, "mn").await;
    NOTHING
}

async fn traversal_merge_filename_dotdot(app: &TestApp) -> Held {
    merge_name_becomes(app, "../../merged-dotdot.img", "merged-dotdot.img").await
}

async fn traversal_merge_filename_absolute(app: &TestApp) -> Held {
    merge_name_becomes(app, "/var/lib/merged-abs.img", "merged-abs.img").await
}

async fn traversal_merge_filename_backslash(app: &TestApp) -> Held {
    merge_name_becomes(app, "..\\..\\merged-bs.img", "merged-bs.img").await
}

async fn traversal_merge_filename_nul(app: &TestApp) -> Held {
    let v = merge_name_refused(
        app,
        Raw::new().text("filename", b"m\0.img"),
        "INVALID_FILE_NAME",
    )
    .await;
    // Url-encoded too.
    ok_text(app.chunk("mn", 1, vec![1; 10]).await, "ok.").await;
    refused(
        merge_form(app, "mn", "m\0.img").await,
        400,
        "INVALID_FILE_NAME",
    )
    .await;
    cancel(app, "mn").await;
    v
}

async fn traversal_merge_filename_percent_encoded(app: &TestApp) -> Held {
    // The form decodes `..%2F..%2F` to `../../`; reduced to its base.
    ok_text(app.chunk("mn", 1, pattern(3, 5000)).await, "ok.").await;
    let r = app
        .client
        .post(app.url("/images/merge"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("identifier=mn&filename=..%2F..%2Fmerged-pct.img&userId=u")
        .send()
        .await
        .unwrap();
    let v = ok_json(r).await;
    assert_eq!(v["fileName"], "merged-pct.img", "{v}");
    MERGED
}

async fn traversal_merge_filename_overlong_utf8(app: &TestApp) -> Held {
    merge_name_refused(
        app,
        Raw::new().text("filename", b"\xC0\xAE\xC0\xAE\xC0\xAFm.img"),
        "INVALID_PARAMETER",
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// Traversal: zip entry names
// ---------------------------------------------------------------------------------------------

async fn zip_entry_dotdot(app: &TestApp) -> Held {
    let zip = py_zip(app, "z.writestr('d/../../evil.img', b'x' * 1000)");
    zip_refused(app, zip, "unsafe entry path").await
}

async fn zip_entry_absolute(app: &TestApp) -> Held {
    // Python's zipfile would drop the leading '/': the name is written by hand.
    let zip = build_zip(&[Entry::new(b"/etc/evil.img", b"data")]);
    zip_refused(app, zip, "unsafe entry path").await
}

async fn zip_entry_backslash(app: &TestApp) -> Held {
    for name in [
        &b"..\\evil.img"[..],
        b"d\\..\\..\\evil.img",
        b"\\etc\\evil.img",
    ] {
        zip_refused(
            app,
            build_zip(&[Entry::new(name, b"data")]),
            "unsafe entry path",
        )
        .await;
    }
    NOTHING
}

async fn zip_entry_drive_letter(app: &TestApp) -> Held {
    for name in [&b"C:\\d\\evil.img"[..], b"c:evil.img", b"d/C:/evil.img"] {
        zip_refused(
            app,
            build_zip(&[Entry::new(name, b"data")]),
            "unsafe entry path",
        )
        .await;
    }
    NOTHING
}

async fn zip_entry_nul(app: &TestApp) -> Held {
    let zip = build_zip(&[Entry::new(b"d/evil\0/../../x.img", b"data")]);
    zip_refused(app, zip, "unsafe entry path").await
}

async fn zip_entry_percent_encoded(app: &TestApp) -> Held {
    // Not decoded: a folder literally named `%2e%2e`, holding the image.
    let zip = build_zip(&[Entry::new(b"%2e%2e/%2e%2e/evil.img", b"data")]);
    zip_accepted(app, zip, "evil.img", b"data").await
}

async fn zip_entry_overlong_utf8(app: &TestApp) -> Held {
    // Flagged UTF-8, the name is invalid UTF-8: the overlong bytes are no `.` or `/`, so the
    // image sits in a folder of an odd name, no traversal.
    let zip = build_zip(&[Entry {
        utf8: true,
        ..Entry::new(b"d/\xC0\xAE\xC0\xAE/\xC0\xAF/evil.img", b"data")
    }]);
    zip_accepted(app, zip, "evil.img", b"data").await
}

// ---------------------------------------------------------------------------------------------
// Zips
// ---------------------------------------------------------------------------------------------

async fn zip_lying_size_smaller(app: &TestApp) -> Held {
    let mut zip = py_zip(
        app,
        &format!(
            "z.writestr('d/disk.img', {})",
            py_bytes(app, &pattern(3, 200_000))
        ),
    );
    patch_declared(&mut zip, 64 << 10, None);
    zip_refused(app, zip, "declares").await
}

async fn zip_lying_size_larger(app: &TestApp) -> Held {
    let mut zip = py_zip(
        app,
        &format!(
            "z.writestr('d/disk.img', {})",
            py_bytes(app, &pattern(3, 200_000))
        ),
    );
    patch_declared(&mut zip, 200_005, None);
    zip_refused(app, zip, "declared size").await
}

async fn zip_lying_crc(app: &TestApp) -> Held {
    let mut zip = py_zip(
        app,
        &format!(
            "z.writestr('d/disk.img', {})",
            py_bytes(app, &pattern(3, 200_000))
        ),
    );
    patch_declared(&mut zip, 200_000, Some(0x1234_5678));
    zip_refused(app, zip, "CRC").await
}

async fn zip_lying_size_stored(app: &TestApp) -> Held {
    // STORED, declared smaller than the bytes that follow.
    let data = pattern(4, 100_000);
    let zip = build_zip(&[Entry {
        declared: Some(1000),
        ..Entry::new(b"d/disk.img", &data)
    }]);
    zip_refused(app, zip, "declares").await
}

async fn zip_bomb_deflate_ratio(app: &TestApp) -> Held {
    let zip = py_zip(app, "z.writestr('d/zeros.img', bytes(16 << 20))");
    zip_refused(app, zip, "zip bomb").await
}

async fn zip_bomb_bzip2_ratio(app: &TestApp) -> Held {
    let zip = py_zip(
        app,
        "z.writestr(zipfile.ZipInfo('d/zeros.img'), bytes(16 << 20), compress_type=zipfile.ZIP_BZIP2)",
    );
    zip_refused(app, zip, "zip bomb").await
}

async fn zip_bomb_past_size_limit(app: &TestApp) -> Held {
    // Honest headers, more than FS_MAX_IMAGE_BYTES (1 MiB here) inflated.
    let zip = py_zip(app, "z.writestr('d/big.img', bytes(2 << 20))");
    zip_refused(app, zip, "past the limit").await
}

async fn zip_nested_zip_only(app: &TestApp) -> Held {
    let inner = py_zip(app, "z.writestr('in/disk.img', b'x' * 1000)");
    let zip = py_zip(
        app,
        &format!("z.writestr('d/inner.zip', {})", py_bytes(app, &inner)),
    );
    zip_refused(app, zip, "no image").await
}

async fn zip_nested_zip_beside_image(app: &TestApp) -> Held {
    // The inner archive is not an image: never unpacked, never stored.
    let inner = py_zip(app, "z.writestr('in/other.img', b'y' * 1000)");
    let zip = py_zip(
        app,
        &format!(
            "z.writestr('d/inner.zip', {})\nz.writestr('d/disk.img', b'x' * 1000)",
            py_bytes(app, &inner)
        ),
    );
    zip_accepted(app, zip, "disk.img", &[b'x'; 1000]).await
}

async fn zip_symlink_as_image(app: &TestApp) -> Held {
    let zip = build_zip(&[Entry {
        mode: Some(0o120777),
        ..Entry::new(b"d/link.img", b"/etc/passwd")
    }]);
    zip_refused(app, zip, "links").await
}

async fn zip_symlink_beside_image(app: &TestApp) -> Held {
    let zip = build_zip(&[
        Entry::new(b"d/disk.img", b"data"),
        Entry {
            mode: Some(0o120777),
            ..Entry::new(b"d/etc", b"/etc")
        },
    ]);
    zip_refused(app, zip, "links").await
}

async fn zip_char_device(app: &TestApp) -> Held {
    let zip = build_zip(&[Entry {
        mode: Some(0o020644),
        ..Entry::new(b"d/null.img", b"")
    }]);
    zip_refused(app, zip, "special file").await
}

async fn zip_block_device(app: &TestApp) -> Held {
    let zip = build_zip(&[
        Entry::new(b"d/disk.img", b"data"),
        Entry {
            mode: Some(0o060660),
            ..Entry::new(b"d/sda", b"")
        },
    ]);
    zip_refused(app, zip, "special file").await
}

async fn zip_fifo(app: &TestApp) -> Held {
    let zip = build_zip(&[Entry {
        mode: Some(0o010644),
        ..Entry::new(b"d/pipe.img", b"")
    }]);
    zip_refused(app, zip, "special file").await
}

async fn zip_no_image(app: &TestApp) -> Held {
    let zip = py_zip(
        app,
        "z.writestr('d/readme.txt', 'hello')\nz.writestr('d/disk.QCOW2', 'x')",
    );
    zip_refused(app, zip, "no image").await
}

async fn zip_empty_archive(app: &TestApp) -> Held {
    zip_refused(app, py_zip(app, ""), "no image").await
}

async fn zip_two_images(app: &TestApp) -> Held {
    let zip = py_zip(
        app,
        "z.writestr('d/a.qcow2', 'a')\nz.writestr('e/b.img', 'b')",
    );
    zip_refused(app, zip, "more than one image").await
}

async fn zip_image_not_in_folder(app: &TestApp) -> Held {
    let zip = py_zip(app, "z.writestr('disk.img', 'x')");
    zip_refused(app, zip, "inside a folder").await
}

async fn zip_metadata_only(app: &TestApp) -> Held {
    let zip = py_zip(
        app,
        "z.writestr('__MACOSX/d/._disk.img', b'\\0\\5\\x16\\7' + bytes(100))\n\
         z.writestr('d/._disk.img', 'x')\nz.writestr('d/.DS_Store', bytes(100))\n\
         z.writestr('d/Thumbs.db', 'x')",
    );
    zip_refused(app, zip, "no image").await
}

async fn zip_metadata_beside_image(app: &TestApp) -> Held {
    let zip = py_zip(
        app,
        "z.writestr('d/disk.img', b'x' * 1000)\n\
         z.writestr('__MACOSX/d/._disk.img', b'\\0\\5\\x16\\7' + bytes(100))\n\
         z.writestr('d/._other.qcow2', 'x')\nz.writestr('d/.DS_Store', bytes(100))",
    );
    zip_accepted(app, zip, "disk.img", &[b'x'; 1000]).await
}

async fn zip_duplicate_entry_names(app: &TestApp) -> Held {
    let zip = build_zip(&[
        Entry::new(b"d/disk.img", b"first"),
        Entry::new(b"d/disk.img", b"second"),
    ]);
    zip_refused(app, zip, "same name").await
}

async fn zip_too_many_entries(app: &TestApp) -> Held {
    let zip = py_zip(app, "for i in range(10001): z.writestr(f'd/{i}', '')");
    zip_refused(app, zip, "holds 10001 entries").await
}

async fn zip64_entry_count_lie(app: &TestApp) -> Held {
    let zip = zip64_count_lie(build_zip(&[Entry::new(b"d/disk.img", b"data")]), 1 << 40);
    zip_refused(app, zip, "holds 1099511627776 entries").await
}

async fn zip64_size_past_limit(app: &TestApp) -> Held {
    // The zip64 extra field declares 1 TiB for 4 bytes.
    let zip = build_zip(&[Entry {
        zip64: true,
        declared: Some(1 << 40),
        ..Entry::new(b"d/disk.img", b"data")
    }]);
    zip_refused(app, zip, "past the limit").await
}

async fn zip64_size_smaller_than_data(app: &TestApp) -> Held {
    let data = pattern(6, 100_000);
    let zip = build_zip(&[Entry {
        zip64: true,
        declared: Some(10),
        ..Entry::new(b"d/disk.img", &data)
    }]);
    zip_refused(app, zip, "declares").await
}

async fn zip_not_a_zip(app: &TestApp) -> Held {
    zip_refused(app, pattern(5, 5000), "not a valid zip").await
}

async fn zip_truncated(app: &TestApp) -> Held {
    let zip = py_zip(
        app,
        &format!(
            "z.writestr('d/disk.img', {})",
            py_bytes(app, &pattern(7, 50_000))
        ),
    );
    zip_refused(app, zip[..zip.len() / 2].to_vec(), "not a valid zip").await
}

async fn zip_lying_size_via_merge(app: &TestApp) -> Held {
    // A chunked zip that lies: refused at merge; its chunks are consumed with it.
    let mut zip = py_zip(
        app,
        &format!(
            "z.writestr('d/disk.img', {})",
            py_bytes(app, &pattern(3, 200_000))
        ),
    );
    patch_declared(&mut zip, 64 << 10, None);
    let half = zip.len() / 2;
    ok_text(app.chunk("lz", 1, zip[..half].to_vec()).await, "ok.").await;
    ok_text(app.chunk("lz", 2, zip[half..].to_vec()).await, "ok.").await;
    let v = refused(app.merge("lz", "lz.zip").await, 400, "INVALID_ZIP").await;
    let message = v["message"].as_str().unwrap();
    assert!(message.contains("declares"), "{v}");
    // The joined chunks went with the archive, and the answer says so.
    assert!(message.contains("chunks of upload lz were dropped"), "{v}");
    assert_eq!(held_chunks(app, "lz").await, Vec::<u64>::new());
    NOTHING
}

// ---------------------------------------------------------------------------------------------
// Multipart abuse
// ---------------------------------------------------------------------------------------------

async fn multipart_no_boundary(app: &TestApp) -> Held {
    for path in ["/images", "/images/upload", "/images/merge"] {
        let body = Raw::new().file("file", b"a.img", b"data").finish();
        refused(
            post_raw(app, path, "multipart/form-data", body).await,
            400,
            "BAD_BODY",
        )
        .await;
    }
    NOTHING
}

async fn multipart_empty_boundary(app: &TestApp) -> Held {
    for ct in [
        "multipart/form-data; boundary=",
        "multipart/form-data; boundary=\"\"",
    ] {
        let body = Raw::new().file("file", b"a.img", b"data").finish();
        refused(post_raw(app, "/images", ct, body).await, 400, "BAD_BODY").await;
    }
    NOTHING
}

async fn multipart_not_multipart(app: &TestApp) -> Held {
    refused(
        post_raw(app, "/images", MULTIPART, b"not multipart at all".to_vec()).await,
        400,
        "BAD_BODY",
    )
    .await;
    NOTHING
}

async fn multipart_truncated(app: &TestApp) -> Held {
    let mut body = Raw::new().file("file", b"a.img", &pattern(8, 10_000)).0;
    body.truncate(body.len() - 100);
    for path in ["/images", "/images/upload"] {
        refused(
            post_raw(app, path, MULTIPART, body.clone()).await,
            400,
            "BAD_BODY",
        )
        .await;
    }
    NOTHING
}

async fn multipart_huge_header_line(app: &TestApp) -> Held {
    let pad = format!(
        "Content-Disposition: form-data; name=\"file\"; filename=\"a.img\"\r\nX-Pad: {}",
        "a".repeat(64 << 10)
    );
    let body = Raw::new().part(pad.as_bytes(), b"data");
    let v = refused(post_multipart(app, "/images", body).await, 400, "BAD_BODY").await;
    assert!(v["message"].as_str().unwrap().contains("header"), "{v}");
    NOTHING
}

async fn multipart_header_flood(app: &TestApp) -> Held {
    // Many short header lines in one part: the block is bounded, not the line.
    let mut h = String::from("Content-Disposition: form-data; name=\"file\"; filename=\"a.img\"");
    for i in 0..2000 {
        h.push_str(&format!("\r\nX-H{i}: v"));
    }
    let body = Raw::new().part(h.as_bytes(), b"data");
    refused(post_multipart(app, "/images", body).await, 400, "BAD_BODY").await;
    NOTHING
}

async fn multipart_preamble_flood(app: &TestApp) -> Held {
    let mut body = vec![b'p'; 64 << 10];
    body.extend_from_slice(b"\r\n");
    body.extend_from_slice(&Raw::new().file("file", b"a.img", b"data").finish());
    refused(
        post_raw(app, "/images", MULTIPART, body).await,
        400,
        "BAD_BODY",
    )
    .await;
    NOTHING
}

async fn multipart_thousands_of_fields(app: &TestApp) -> Held {
    let mut body = Raw::new().file("file", b"a.img", &pattern(9, 10_000));
    for i in 0..1000 {
        body = body.text(&format!("f{i}"), b"v");
    }
    let v = refused(
        post_multipart(app, "/images", body).await,
        400,
        "INVALID_PARAMETER",
    )
    .await;
    assert!(
        v["message"].as_str().unwrap().contains("200 form fields"),
        "{v}"
    );
    let pairs: String = (0..1000).map(|i| format!("f{i}=v&")).collect();
    let r = post_raw(
        app,
        "/images/merge",
        "application/x-www-form-urlencoded",
        pairs.into_bytes(),
    )
    .await;
    refused(r, 400, "INVALID_PARAMETER").await;
    NOTHING
}

async fn multipart_thousands_of_file_parts(app: &TestApp) -> Held {
    let mut body = Raw::new();
    for i in 0..1000 {
        body = body.file("file", format!("{i}.img").as_bytes(), b"x");
    }
    refused(
        post_multipart(app, "/images", body).await,
        400,
        "INVALID_PARAMETER",
    )
    .await;
    NOTHING
}

async fn multipart_giant_text_field(app: &TestApp) -> Held {
    // After the file: the file was already stored, and must go.
    let body = Raw::new()
        .file("file", b"a.img", &pattern(10, 100_000))
        .text("userId", &vec![b'u'; 1 << 20]);
    refused_saying(
        post_multipart(app, "/images", body).await,
        400,
        "INVALID_PARAMETER",
        "longer than",
    )
    .await;
    // Before the chunk and in a merge.
    let body = Raw::new()
        .text("identifier", &vec![b'i'; 1 << 20])
        .file("part", b"1.part", b"data");
    refused(
        post_multipart(app, "/images/upload", body).await,
        400,
        "INVALID_PARAMETER",
    )
    .await;
    let body = Raw::new()
        .text("identifier", b"g")
        .text("filename", &vec![b'f'; 1 << 20]);
    refused(
        post_multipart(app, "/images/merge", body).await,
        400,
        "INVALID_PARAMETER",
    )
    .await;
    NOTHING
}

async fn multipart_duplicate_file_fields(app: &TestApp) -> Held {
    // A second `file` part is refused, not read past: the client would believe it stored (as
    // a zip with two images is refused). Whatever came first is dropped with it.
    let second = |body: Raw| body.file("file", b"second.img", b"second bytes");
    for body in [
        second(Raw::new().file("file", b"first.img", b"first bytes")).text("userId", b"u"),
        second(
            Raw::new()
                .text("userId", b"u")
                .file("file", b"first.img", b"first"),
        ),
        second(Raw::new().file(
            "file",
            b"a.zip",
            &build_zip(&[Entry::new(b"a/a.img", b"x")]),
        )),
    ] {
        refused_saying(
            post_multipart(app, "/images", body).await,
            400,
            "INVALID_PARAMETER",
            "more than one file",
        )
        .await;
    }
    NOTHING
}

async fn multipart_duplicate_chunk_parts(app: &TestApp) -> Held {
    // Two chunk bodies in one request (`part` twice, or `file` and `part`), with the fields
    // first (the chunk is written in place) or last (it is spooled): refused, nothing held.
    let fields = |body: Raw| body.text("identifier", b"dup").text("chunkNumber", b"1");
    for (first, second) in [("part", "part"), ("file", "part"), ("part", "file")] {
        let early = fields(Raw::new())
            .file(first, b"1.part", b"one")
            .file(second, b"2.part", b"two");
        let late = fields(
            Raw::new()
                .file(first, b"1.part", b"one")
                .file(second, b"2.part", b"two"),
        );
        for body in [early, late] {
            refused(
                post_multipart(app, "/images/upload", body).await,
                400,
                "INVALID_PARAMETER",
            )
            .await;
            assert!(held_chunks(app, "dup").await.is_empty());
        }
    }
    NOTHING
}

async fn multipart_file_part_without_filename(app: &TestApp) -> Held {
    let body = Raw::new()
        .part(b"Content-Disposition: form-data; name=\"file\"", b"data")
        .text("userId", b"u");
    refused(
        post_multipart(app, "/images", body).await,
        400,
        "INVALID_FILE_NAME",
    )
    .await;
    let body = Raw::new()
        .text("identifier", b"nf")
        .part(b"Content-Disposition: form-data; name=\"part\"", b"data");
    refused(
        post_multipart(app, "/images/upload", body).await,
        400,
        "INVALID_PARAMETER",
    )
    .await;
    NOTHING
}

async fn multipart_part_without_name(app: &TestApp) -> Held {
    let body = Raw::new().part(
        b"Content-Disposition: form-data; filename=\"a.img\"",
        b"data",
    );
    refused(post_multipart(app, "/images", body).await, 400, "NO_FILE").await;
    NOTHING
}

async fn multipart_filename_with_quotes(app: &TestApp) -> Held {
    // An escaped quote inside the quoted string.
    let v = ok_json(upload_raw_name(app, b"a\\\"b.img", b"data").await).await;
    assert_eq!(v["fileName"], "a\"b.img");
    assert_eq!(
        disposition(app, &image_id(&v), false).await,
        "attachment; filename=\"a_b.img\"; filename*=UTF-8''a%22b.img"
    );
    assert_eq!(
        disposition(app, &image_id(&v), true).await,
        "attachment; filename=\"a_b.zip\"; filename*=UTF-8''a%22b.zip"
    );
    images(1)
}

async fn multipart_filename_with_semicolon_and_equals(app: &TestApp) -> Held {
    let v = ok_json(upload_raw_name(app, b"a; filename=b.img", b"data").await).await;
    assert_eq!(v["fileName"], "a; filename=b.img");
    assert_eq!(
        disposition(app, &image_id(&v), false).await,
        "attachment; filename=\"a; filename=b.img\""
    );
    images(1)
}

async fn multipart_filename_raw_crlf(app: &TestApp) -> Held {
    // CR LF inside the header ends it: the next "line" is no header.
    refused(
        upload_raw_name(app, b"a\r\nX-Injected: 1\r\n.img", b"data").await,
        400,
        "BAD_BODY",
    )
    .await;
    NOTHING
}

async fn multipart_filename_encoded_crlf(app: &TestApp) -> Held {
    refused(
        upload_ext_name(app, "UTF-8''a%0D%0AX-Injected%3A%201.img", b"data").await,
        400,
        "INVALID_FILE_NAME",
    )
    .await;
    // And as a merge name.
    ok_text(app.chunk("crlf", 1, vec![1; 10]).await, "ok.").await;
    refused(
        merge_form(app, "crlf", "a\r\nb.img").await,
        400,
        "INVALID_FILE_NAME",
    )
    .await;
    cancel(app, "crlf").await;
    NOTHING
}

async fn multipart_filename_control_chars(app: &TestApp) -> Held {
    // A raw control byte is not allowed in a header.
    refused(
        upload_raw_name(app, b"a\x01b.img", b"data").await,
        400,
        "BAD_BODY",
    )
    .await;
    // HTAB is allowed in a header, not in a name; DEL and C1 controls encoded.
    refused(
        upload_raw_name(app, b"a\tb.img", b"data").await,
        400,
        "INVALID_FILE_NAME",
    )
    .await;
    for ext in [
        "UTF-8''a%7Fb.img",
        "UTF-8''a%C2%85b.img",
        "UTF-8''a%1Bb.img",
    ] {
        refused(
            upload_ext_name(app, ext, b"data").await,
            400,
            "INVALID_FILE_NAME",
        )
        .await;
    }
    NOTHING
}

async fn multipart_filename_invalid_utf8(app: &TestApp) -> Held {
    // Decoded, it would be U+FFFD twice: not the name the client had, so refused like any bad
    // name (and a download name is never a replacement character).
    refused(
        upload_raw_name(app, b"\xFF\xFEdisk.img", b"data").await,
        400,
        "INVALID_FILE_NAME",
    )
    .await;
    NOTHING
}

async fn multipart_filename_non_ascii_and_quote(app: &TestApp) -> Held {
    let v =
        ok_json(upload_ext_name(app, "UTF-8''%E9%95%9C%22%E5%83%8F%20x.img", b"data").await).await;
    assert_eq!(v["fileName"], "镜\"像 x.img");
    assert_eq!(
        disposition(app, &image_id(&v), false).await,
        "attachment; filename=\"___ x.img\"; filename*=UTF-8''%E9%95%9C%22%E5%83%8F%20x.img"
    );
    images(1)
}

async fn multipart_transfer_coding_other_than_chunked(app: &TestApp) -> Held {
    // hyper takes the chunks apart; the gzip it leaves on the bytes is no route's to decode.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = Raw::new().file("file", b"a.img", b"data").finish();
    let addr = app.base.trim_start_matches("http://").to_string();
    for coding in ["gzip, chunked", "x-custom,chunked"] {
        let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST {API}/images HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {MULTIPART}\r\n\
             Transfer-Encoding: {coding}\r\nConnection: close\r\n\r\n{:x}\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        conn.write_all(&body).await.unwrap();
        conn.write_all(b"\r\n0\r\n\r\n").await.unwrap();
        let mut answer = vec![];
        tokio::time::timeout(Duration::from_secs(20), conn.read_to_end(&mut answer))
            .await
            .unwrap()
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 501 "), "{answer}");
        assert!(
            answer.contains("\"UNSUPPORTED_TRANSFER_CODING\""),
            "{answer}"
        );
    }
    NOTHING
}

async fn multipart_repeated_disposition_parameters(app: &TestApp) -> Held {
    // Parsers disagree on which of two file names counts: refused, on a file part and on a
    // chunk, and a field named twice in one header too.
    for (path, headers) in [
        (
            "/images",
            &br#"Content-Disposition: form-data; name="file"; filename="a.img"; filename="b.txt""#
                [..],
        ),
        (
            "/images/upload",
            br#"Content-Disposition: form-data; name="part"; filename="1.part"; FILENAME="2.part""#,
        ),
        (
            "/images",
            br#"Content-Disposition: form-data; name="file"; name="userId"; filename="a.img""#,
        ),
    ] {
        let body = Raw::new().text("identifier", b"dup").part(headers, b"data");
        let v = refused(
            post_multipart(app, path, body).await,
            400,
            "INVALID_PARAMETER",
        )
        .await;
        assert!(v["message"].as_str().unwrap().contains("twice"), "{v}");
    }
    NOTHING
}

async fn multipart_long_epilogue(app: &TestApp) -> Held {
    // RFC 2046 section 5.1.1: what follows the close delimiter is ignored, however long.
    let mut body = Raw::new()
        .text("userId", b"hostile")
        .file("file", b"e.img", &pattern(12, 5000))
        .finish();
    body.extend_from_slice(&vec![b'e'; 64 << 10]);
    let r = post_raw(app, "/images", MULTIPART, body).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    images(1)
}

async fn multipart_wrong_content_type(app: &TestApp) -> Held {
    let body = Raw::new().file("file", b"a.img", b"data").finish();
    refused(
        post_raw(app, "/images", "text/plain", body).await,
        400,
        "NO_FILE",
    )
    .await;
    NOTHING
}

async fn content_coded_bodies(app: &TestApp) -> Held {
    // No route decodes a content coding: a gzip body stored as it came would be the wrong
    // bytes. 415 with Accept-Encoding (RFC 9110 15.5.16), on every route that reads a body.
    let upload = || Raw::new().file("file", b"a.img", b"data");
    let chunk = || {
        Raw::new()
            .text("identifier", b"coded")
            .text("chunkNumber", b"1")
            .file("file", b"1.part", b"data")
    };
    for coding in [
        "gzip",
        "br",
        "gzip, identity",
        "x-unknown",
        "identity,,deflate",
    ] {
        for (path, body) in [
            ("/images", upload()),
            ("/images/upload", chunk()),
            ("/images/merge", Raw::new().text("identifier", b"coded")),
        ] {
            let resp = app
                .client
                .post(app.url(path))
                .header("Content-Type", MULTIPART)
                .header("Content-Encoding", coding)
                .body(body.finish())
                .send()
                .await
                .unwrap();
            assert_eq!(resp.headers()["accept-encoding"], "identity", "{path}");
            refused(resp, 415, "UNSUPPORTED_ENCODING").await;
        }
    }
    assert!(held_chunks(app, "coded").await.is_empty());
    // `identity` is no coding at all.
    let resp = app
        .client
        .post(app.url("/images"))
        .header("Content-Type", MULTIPART)
        .header("Content-Encoding", "Identity")
        .body(upload().finish())
        .send()
        .await
        .unwrap();
    ok_json(resp).await;
    images(1)
}

async fn merge_filename_with_quotes(app: &TestApp) -> Held {
    ok_text(app.chunk("mq2", 1, pattern(31, 2000)).await, "ok.").await;
    let v = ok_json(merge_form(app, "mq2", "say \"hi\".img").await).await;
    assert_eq!(v["fileName"], "say \"hi\".img");
    assert_eq!(
        disposition(app, &image_id(&v), false).await,
        "attachment; filename=\"say _hi_.img\"; filename*=UTF-8''say%20%22hi%22.img"
    );
    MERGED
}

/// A field the service reads sent twice with different values, in one place (the query, a
/// url-encoded body, a multipart body), is refused: which one was meant is not known, and a
/// proxy reading the first would see another request. The same value twice is one value, and a
/// body field still wins over a query parameter.
async fn field_sent_twice_differently(app: &TestApp) -> Held {
    let twice = "is sent more than once, with different values";
    for query in [
        "/images/upload?identifier=a&identifier=b",
        "/images/upload?identifier=a&priority=0&priority=",
        "/images?limit=1&limit=2",
        "/images?userId=u&userId=v",
        "/usage?userId=u&userId=v",
    ] {
        let r = app.client.get(app.url(query)).send().await.unwrap();
        refused_saying(r, 400, "INVALID_PARAMETER", twice).await;
    }
    let id = "00000000-0000-4000-8000-000000000000";
    let r = app
        .client
        .get(app.url(&format!(
            "/images/{id}/action/download?isZip=true&isZip=false"
        )))
        .send()
        .await
        .unwrap();
    refused_saying(r, 400, "INVALID_PARAMETER", twice).await;
    let r = app
        .client
        .delete(app.url("/images/upload"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("identifier=a&identifier=b")
        .send()
        .await
        .unwrap();
    refused_saying(r, 400, "INVALID_PARAMETER", twice).await;
    // A chunk whose identifier is sent twice, before or after its part: nothing is held.
    for (first, after) in [(true, false), (false, true)] {
        let mut body = Raw::new().text("identifier", b"da");
        if first {
            body = body.text("identifier", b"db");
        }
        body = body.file("part", b"1.part", &pattern(3, 1000));
        if after {
            body = body.text("identifier", b"db");
        }
        let r = post_multipart(app, "/images/upload", body).await;
        refused_saying(r, 400, "INVALID_PARAMETER", twice).await;
    }
    assert!(held_chunks(app, "da").await.is_empty());
    assert!(held_chunks(app, "db").await.is_empty());
    let body = Raw::new().text("userId", b"u1").text("userId", b"u2").file(
        "file",
        b"t.img",
        &pattern(4, 1000),
    );
    let r = post_multipart(app, "/images", body).await;
    refused_saying(r, 400, "INVALID_PARAMETER", twice).await;
    // The same value twice, and a body field over a query parameter: accepted.
    let body = Raw::new()
        .text("identifier", b"same")
        .text("identifier", b"same")
        .file("part", b"1.part", &pattern(5, 1000));
    let r = post_multipart(app, "/images/upload?identifier=other", body).await;
    ok_text(r, "ok.").await;
    assert_eq!(held_chunks(app, "same").await, vec![1]);
    let r = app
        .client
        .get(app.url("/images/upload?identifier=same&identifier=same"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v = ok_json(merge_form(app, "same", "same.img").await).await;
    assert_eq!(v["fileName"], "same.img");
    MERGED
}

async fn field_priority_hostile(app: &TestApp) -> Held {
    // After the file part: the file was stored on the default tier before the priority came,
    // and must go.
    for prio in ["-1", "../1", "99999999999999999999", "0 OR 1=1", "\u{0660}"] {
        let body = Raw::new()
            .file("file", b"p.img", &pattern(32, 50_000))
            .text("priority", prio.as_bytes());
        refused_saying(
            post_multipart(app, "/images", body).await,
            400,
            "INVALID_PARAMETER",
            "unknown priority",
        )
        .await;
        let body = Raw::new()
            .text("identifier", b"pr")
            .file("part", b"1.part", b"data")
            .text("priority", prio.as_bytes());
        refused(
            post_multipart(app, "/images/upload", body).await,
            400,
            "INVALID_PARAMETER",
        )
        .await;
        // Every request that takes a priority refuses it: the merge, the cancel and the
        // resume query too.
        let body = Raw::new()
            .text("identifier", b"pr")
            .text("filename", b"p.img")
            .text("priority", prio.as_bytes());
        refused_saying(
            post_multipart(app, "/images/merge", body).await,
            400,
            "INVALID_PARAMETER",
            "unknown priority",
        )
        .await;
        for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
            let r = app
                .client
                .request(method, app.url("/images/upload"))
                .query(&[("identifier", "pr"), ("priority", prio)])
                .send()
                .await
                .unwrap();
            refused_saying(r, 400, "INVALID_PARAMETER", "unknown priority").await;
        }
    }
    NOTHING
}

// ---------------------------------------------------------------------------------------------
// Chunk numbers
// ---------------------------------------------------------------------------------------------

async fn chunk_name_refused(app: &TestApp, part_name: &[u8]) -> Held {
    refused(
        chunk_raw_name(app, "cn", part_name).await,
        400,
        "INVALID_PARAMETER",
    )
    .await;
    assert_eq!(held_chunks(app, "cn").await, Vec::<u64>::new());
    NOTHING
}

async fn chunk_number_zero(app: &TestApp) -> Held {
    chunk_name_refused(app, b"0.part").await
}

async fn chunk_number_over_max(app: &TestApp) -> Held {
    chunk_name_refused(app, b"10001.part").await
}

async fn chunk_number_negative(app: &TestApp) -> Held {
    chunk_name_refused(app, b"-1.part").await
}

async fn chunk_number_plus_sign(app: &TestApp) -> Held {
    chunk_name_refused(app, b"+5.part").await
}

async fn chunk_number_overflow(app: &TestApp) -> Held {
    chunk_name_refused(app, b"4294967297.part").await;
    chunk_name_refused(app, b"99999999999999999999999999.part").await
}

async fn chunk_number_not_a_number(app: &TestApp) -> Held {
    for name in [
        &b"x.part"[..],
        b".part",
        b"1.5.part",
        b"0x10.part",
        b"1 .part",
    ] {
        chunk_name_refused(app, name).await;
    }
    NOTHING
}

async fn chunk_number_unicode_digits(app: &TestApp) -> Held {
    // Arabic-Indic three, full-width one.
    chunk_name_refused(app, "\u{0663}.part".as_bytes()).await;
    chunk_name_refused(app, "\u{FF11}.part".as_bytes()).await
}

async fn chunk_number_missing(app: &TestApp) -> Held {
    chunk_name_refused(app, b"blob").await
}

async fn chunk_number_field_malformed(app: &TestApp) -> Held {
    for n in ["0", "10001", "1e3", "-2", "two", "1.0", "4294967296"] {
        let body = Raw::new()
            .text("identifier", b"cf")
            .text("chunkNumber", n.as_bytes())
            .file("part", b"1.part", b"data");
        refused(
            post_multipart(app, "/images/upload", body).await,
            400,
            "INVALID_PARAMETER",
        )
        .await;
    }
    assert_eq!(held_chunks(app, "cf").await, Vec::<u64>::new());
    NOTHING
}

async fn chunk_number_field_wins_over_hostile_name(app: &TestApp) -> Held {
    let body = Raw::new()
        .text("identifier", b"cw")
        .text("chunkNumber", b"7")
        .file("part", b"../../../etc/passwd", b"data");
    ok_text(post_multipart(app, "/images/upload", body).await, "ok.").await;
    assert_eq!(held_chunks(app, "cw").await, [7]);
    cancel(app, "cw").await;
    NOTHING
}

async fn chunk_number_bounds_accepted(app: &TestApp) -> Held {
    ok_text(chunk_raw_name(app, "cb", b"10000.part").await, "ok.").await;
    ok_text(chunk_raw_name(app, "cb", b"1.part").await, "ok.").await;
    assert_eq!(held_chunks(app, "cb").await, [1, 10000]);
    // Chunks 2..9999 missing: named as one run (not 9998 numbers), chunks kept.
    let v = refused(app.merge("cb", "cb.img").await, 400, "MISSING_CHUNKS").await;
    assert_eq!(v["message"], "missing chunks: 2-9999", "{v}");
    cancel(app, "cb").await;
    NOTHING
}

async fn chunk_number_in_resume_query(app: &TestApp) -> Held {
    for n in ["0", "10001", "-1", "x", "99999999999"] {
        let r = app
            .client
            .get(app.url(&format!("/images/upload?identifier=q&chunkNumber={n}")))
            .send()
            .await
            .unwrap();
        refused(r, 400, "INVALID_PARAMETER").await;
    }
    NOTHING
}

// ---------------------------------------------------------------------------------------------
// Clients that stop mid-body
// ---------------------------------------------------------------------------------------------

fn content_length_headers(len: usize) -> String {
    format!("Content-Type: {MULTIPART}\r\nContent-Length: {len}\r\n")
}

async fn stop_mid_body_upload(app: &TestApp) -> Held {
    // Past one S3 part (8 MiB) of a declared 20 MiB.
    let body = multipart_start(&[("userId", "u")], "file", "cut.img", &pattern(11, 9 << 20));
    stop_mid_body(app, "/images", &content_length_headers(20 << 20), &body).await;
    wait_nothing_left(app, Duration::from_secs(20)).await;
    NOTHING
}

async fn stop_mid_body_zip_upload(app: &TestApp) -> Held {
    let body = multipart_start(&[], "file", "cut.zip", &pattern(12, 1 << 20));
    stop_mid_body(app, "/images", &content_length_headers(4 << 20), &body).await;
    wait_nothing_left(app, Duration::from_secs(20)).await;
    NOTHING
}

async fn stop_mid_body_chunk(app: &TestApp) -> Held {
    let body = multipart_start(
        &[("identifier", "cut")],
        "part",
        "1.part",
        &pattern(13, 1 << 20),
    );
    stop_mid_body(
        app,
        "/images/upload",
        &content_length_headers(8 << 20),
        &body,
    )
    .await;
    wait_nothing_left(app, Duration::from_secs(20)).await;
    assert_eq!(held_chunks(app, "cut").await, Vec::<u64>::new());
    NOTHING
}

async fn stop_mid_body_second_chunk(app: &TestApp) -> Held {
    // An upload in progress keeps what it held; the cut chunk is not added.
    ok_text(app.chunk("cut2", 1, pattern(14, 6 << 20)).await, "ok.").await;
    let body = multipart_start(
        &[("identifier", "cut2")],
        "part",
        "2.part",
        &pattern(15, 1 << 20),
    );
    stop_mid_body(
        app,
        "/images/upload",
        &content_length_headers(6 << 20),
        &body,
    )
    .await;
    assert_eq!(held_chunks(app, "cut2").await, [1]);
    cancel(app, "cut2").await;
    wait_nothing_left(app, Duration::from_secs(20)).await;
    NOTHING
}

async fn stop_mid_body_chunked_encoding(app: &TestApp) -> Held {
    let content = multipart_start(&[], "file", "te.img", &pattern(16, 1 << 20));
    let mut body = format!("{:x}\r\n", content.len()).into_bytes();
    body.extend_from_slice(&content);
    body.extend_from_slice(b"\r\n");
    let headers = format!("Content-Type: {MULTIPART}\r\nTransfer-Encoding: chunked\r\n");
    stop_mid_body(app, "/images", &headers, &body).await;
    wait_nothing_left(app, Duration::from_secs(20)).await;
    NOTHING
}

async fn stop_after_file_part(app: &TestApp) -> Held {
    // The whole file part arrived (and was stored); the closing boundary never does.
    let mut body = Raw::new()
        .file("file", b"whole.img", &pattern(17, 1 << 20))
        .0;
    body.extend_from_slice(
        format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"us").as_bytes(),
    );
    stop_mid_body(
        app,
        "/images",
        &content_length_headers(body.len() + 1000),
        &body,
    )
    .await;
    wait_nothing_left(app, Duration::from_secs(20)).await;
    NOTHING
}

async fn stop_mid_body_merge(app: &TestApp) -> Held {
    ok_text(app.chunk("cm", 1, pattern(18, 1000)).await, "ok.").await;
    let body = b"identifier=cm&filename=cm.im";
    let headers = format!(
        "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
        body.len() + 10
    );
    stop_mid_body(app, "/images/merge", &headers, body).await;
    // Not merged: the chunk is still there, no image.
    assert_eq!(held_chunks(app, "cm").await, [1]);
    let (_, all) = app.get_json("/images").await;
    assert_eq!(all, serde_json::json!([]));
    cancel(app, "cm").await;
    NOTHING
}

async fn silent_client_times_out(app: &TestApp) -> Held {
    let body = multipart_start(&[], "file", "slow.img", &pattern(19, 100_000));
    let answer = silent_answer(app, "POST /images", &content_length_headers(1 << 20), &body).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"REQUEST_TIMEOUT\""), "{answer}");
    wait_nothing_left(app, Duration::from_secs(20)).await;
    NOTHING
}

/// Every body read whole (a urlencoded form, a JSON quota change) times out like a multipart
/// one: a client that goes silent gets 408 `REQUEST_TIMEOUT` after the idle timeout, not a
/// 400 once the server's drain gives up.
async fn silent_small_bodies_time_out(app: &TestApp) -> Held {
    let urlencoded = |len: usize| {
        format!("Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len}\r\n")
    };
    let id = uuid::Uuid::new_v4();
    let cases = [
        (
            format!("DELETE /images/{id}"),
            urlencoded(100),
            &b"userId="[..],
        ),
        (
            "DELETE /images/upload".into(),
            urlencoded(100),
            b"identifier=sil",
        ),
        (
            "POST /images/merge".into(),
            urlencoded(100),
            b"identifier=sil&file",
        ),
        (
            "PUT /quotas/someone".into(),
            "Content-Type: application/json\r\nContent-Length: 100\r\n".into(),
            b"{\"maxBytes\":",
        ),
    ];
    for (request, headers, body) in cases {
        let started = Instant::now();
        let answer = silent_answer(app, &request, &headers, body).await;
        assert_timed_out(&request, &answer, started);
    }
    NOTHING
}

/// Asserts that `request`, begun at `started`, was answered 408 `REQUEST_TIMEOUT` within
/// 10 s.
#[track_caller]
fn assert_timed_out(request: &str, answer: &str, started: Instant) {
    assert!(answer.starts_with("HTTP/1.1 408"), "{request}: {answer}");
    assert!(
        answer.contains("\"code\":\"REQUEST_TIMEOUT\""),
        "{request}: {answer}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{request}: answered after {:?}",
        started.elapsed()
    );
}

/// A body kept alive with a trickle (a byte every 200 ms: never silent for the idle timeout)
/// fails with 408 once a window of waiting brought less than `FS_BODY_MIN_BYTES_PER_SEC`, for
/// a chunk and for a single upload, and frees its upload slot (there is one): an upload after
/// it is served. A slow body above the rate (32 KiB/s over several windows) is served.
async fn trickling_bodies_time_out(app: &TestApp) -> Held {
    for (request, fields, file_name) in [
        ("POST /images/upload", &[("identifier", "tr")][..], "1.part"),
        ("POST /images", &[][..], "trickle.img"),
    ] {
        let body = multipart_start(fields, "file", file_name, &pattern(51, 1000));
        let started = Instant::now();
        let answer = paced_answer(
            app,
            request,
            &content_length_headers(1 << 20),
            &body,
            &[0u8],
            Duration::from_millis(200),
        )
        .await;
        assert_timed_out(request, &answer, started);
    }
    let id = app.upload_ok("after.img", pattern(52, 4096)).await;
    // 8 KiB every 250 ms for 2.5 s (the window is 1 s), then the end of the form.
    let content = pattern(53, 80 << 10);
    let head = multipart_start(&[], "file", "slow.img", &[]);
    let tail = format!("\r\n--{BOUNDARY}--\r\n");
    let len = head.len() + content.len() + tail.len();
    let mut pieces: Vec<Vec<u8>> = content.chunks(8 << 10).map(<[u8]>::to_vec).collect();
    pieces.push(tail.into_bytes());
    let answer = paced_pieces(
        app,
        "POST /images",
        &content_length_headers(len),
        &head,
        pieces,
        Duration::from_millis(250),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let slow =
        serde_json::from_str::<serde_json::Value>(&answer[answer.find('{').unwrap()..]).unwrap();
    assert_eq!(app.download(&image_id(&slow)).await, content);
    ok_text(app.delete_image(&id).await, "delete success").await;
    ok_text(app.delete_image(&image_id(&slow)).await, "delete success").await;
    wait_nothing_left_but_jobs(app, 2).await;
    Held { jobs: 2, ..NOTHING }
}

/// Sends a request's head and `body_start`, then `piece` every `every` until the answer
/// comes (or 20 s pass): the answer.
async fn paced_answer(
    app: &TestApp,
    request: &str,
    headers: &str,
    body_start: &[u8],
    piece: &[u8],
    every: Duration,
) -> String {
    let pieces = vec![piece.to_vec(); (20 * 1000 / every.as_millis().max(1)) as usize];
    paced_pieces(app, request, headers, body_start, pieces, every).await
}

/// Sends a request's head and `body_start`, then one of `pieces` every `every` while reading
/// the answer (for at most 20 s): the answer.
async fn paced_pieces(
    app: &TestApp,
    request: &str,
    headers: &str,
    body_start: &[u8],
    pieces: Vec<Vec<u8>>,
    every: Duration,
) -> String {
    use tokio::io::AsyncWriteExt;
    let addr = app.base.trim_start_matches("http://").to_string();
    let conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut rd, mut wr) = conn.into_split();
    let (method, path) = request.split_once(' ').unwrap();
    let head = format!("{method} {API}{path} HTTP/1.1\r\nHost: {addr}\r\n{headers}\r\n");
    wr.write_all(head.as_bytes()).await.unwrap();
    wr.write_all(body_start).await.unwrap();
    let writer = tokio::spawn(async move {
        for piece in pieces {
            tokio::time::sleep(every).await;
            if wr.write_all(&piece).await.is_err() {
                return;
            }
        }
    });
    let answer = read_answer(&mut rd, Duration::from_secs(20)).await;
    writer.abort();
    answer
}

/// A body read whole whose chunked framing breaks is a 400 `BAD_BODY`, as a broken multipart
/// body is.
async fn broken_small_bodies_are_bad_bodies(app: &TestApp) -> Held {
    let chunked = |ct: &str| format!("Content-Type: {ct}\r\nTransfer-Encoding: chunked\r\n");
    let form = chunked("application/x-www-form-urlencoded");
    let id = uuid::Uuid::new_v4();
    let cases = [
        (format!("DELETE /images/{id}"), form.clone()),
        ("POST /images/merge".into(), form),
        ("PUT /quotas/someone".into(), chunked("application/json")),
    ];
    for (request, headers) in cases {
        let answer = silent_answer(app, &request, &headers, b"5\r\nabcde\r\nzz\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{request}: {answer}");
        assert!(
            answer.contains("\"code\":\"BAD_BODY\""),
            "{request}: {answer}"
        );
    }
    NOTHING
}

/// Query and urlencoded form values are UTF-8 once percent-decoded, or refused (400
/// `INVALID_PARAMETER`) as a path's are: never decoded lossily into another name (`%FF%FE`
/// is not the user `"\u{fffd}\u{fffd}"`).
async fn undecodable_form_values_are_refused(app: &TestApp) -> Held {
    for query in [
        "/usage?userId=%FF%FE",
        "/images?userId=%C3",
        "/images?%FF=1",
    ] {
        let r = app.client.get(app.url(query)).send().await.unwrap();
        refused(r, 400, "INVALID_PARAMETER").await;
    }
    for (path, body) in [
        ("/images/merge", &b"identifier=a%FF&filename=a.img"[..]),
        ("/images/merge", b"identifier=ok&filename=%E9%95.img"),
        ("/images/upload", b"identifier=%FE"),
    ] {
        let method = match path {
            "/images/upload" => reqwest::Method::DELETE,
            _ => reqwest::Method::POST,
        };
        let r = app
            .client
            .request(method, app.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        refused(r, 400, "INVALID_PARAMETER").await;
    }
    NOTHING
}

/// A first chunk refused for its own totals (larger than its `totalSize`, a `totalSize` of
/// 0) or its priority opens no upload: nothing is left to expire a day later.
async fn refused_first_chunks_open_no_upload(app: &TestApp) -> Held {
    let cases = [
        (("totalSize", "1000"), "SIZE_MISMATCH"),
        (("totalSize", "0"), "SIZE_MISMATCH"),
        (("priority", "5"), "INVALID_PARAMETER"),
    ];
    for ((name, value), code) in cases {
        let body = Raw::new()
            .text("identifier", b"first")
            .text(name, value.as_bytes())
            .file("part", b"1.part", &pattern(21, 100_000));
        let v = refused(post_multipart(app, "/images/upload", body).await, 400, code).await;
        let (_, state) = app.get_json("/images/upload?identifier=first").await;
        assert_eq!(state["state"], "none", "{name}={value}: {v} {state}");
    }
    // A cancel naming no tier is refused too, as a chunk and a merge are.
    let r = app
        .client
        .delete(app.url("/images/upload?identifier=first&priority=5"))
        .send()
        .await
        .unwrap();
    refused(r, 400, "INVALID_PARAMETER").await;
    NOTHING
}

/// Sends `request` (`"METHOD /path"` below the API), its `headers` and the start of its body,
/// then goes silent; the server's whole answer (empty when it gave none within 15 s).
async fn silent_answer(app: &TestApp, request: &str, headers: &str, body_start: &[u8]) -> String {
    use tokio::io::AsyncWriteExt;
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (method, path) = request.split_once(' ').unwrap();
    let head = format!("{method} {API}{path} HTTP/1.1\r\nHost: {addr}\r\n{headers}\r\n");
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(body_start).await.unwrap();
    read_answer(&mut conn, Duration::from_secs(15)).await
}

/// Reads an answer until its JSON body ends, the connection closes or `within` passes: what
/// was read, as text.
async fn read_answer(conn: &mut (impl tokio::io::AsyncRead + Unpin), within: Duration) -> String {
    use tokio::io::AsyncReadExt;
    let mut answer = vec![];
    let _ = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
            if answer.ends_with(b"}") {
                break;
            }
        }
    })
    .await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// An upload or a chunk declaring a body larger than FS_MAX_IMAGE_BYTES (plus the form's
/// bounded fields) is answered 413 FILE_TOO_LARGE before a byte of it is read: with
/// `Expect: 100-continue` no 100 comes first and nothing need be sent; without it the answer
/// comes at once too. Nothing is left.
async fn declared_oversize_bodies_are_refused_at_once(app: &TestApp) -> Held {
    let huge =
        "Content-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: 999999999999999\r\n";
    for request in ["POST /images", "POST /images/upload"] {
        for expect in [true, false] {
            let headers = match expect {
                true => format!("{huge}Expect: 100-continue\r\n"),
                false => huge.to_string(),
            };
            let body: &[u8] = if expect { b"" } else { b"--XyZ\r\n" };
            let started = Instant::now();
            let answer = silent_answer(app, request, &headers, body).await;
            assert!(answer.starts_with("HTTP/1.1 413"), "{request}: {answer}");
            assert!(answer.contains("FILE_TOO_LARGE"), "{answer}");
            assert!(started.elapsed() < Duration::from_secs(5), "{request}");
        }
    }
    NOTHING
}

/// Sends `requests` on a new connection to `addr` (then shuts its sending side down when
/// `half_close`), and reads until the server closes it (at most 15 s): what came back.
async fn exchange(addr: &str, requests: &str, half_close: bool) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(requests.as_bytes()).await.unwrap();
    if half_close {
        conn.shutdown().await.unwrap();
    }
    let mut answer = vec![];
    tokio::time::timeout(Duration::from_secs(15), conn.read_to_end(&mut answer))
        .await
        .expect("the server closes once it has answered")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status lines in `text` (`HTTP/1.1 200`), not other mentions of the protocol.
fn status_lines(text: &str) -> Vec<&str> {
    text.match_indices("HTTP/1.")
        .filter_map(|(i, _)| text.get(i..i + 12))
        .filter(|line| line.as_bytes()[8] == b' ' && line[9..].bytes().all(|b| b.is_ascii_digit()))
        .collect()
}

/// An HTTP/1.1 request without a Host header, with two, or with an invalid one, is a 400
/// (RFC 9112 section 3.2), its body is drained, and the connection serves the next request.
async fn requests_without_one_host(app: &TestApp) -> Held {
    let addr = app.base.trim_start_matches("http://").to_string();
    let next =
        format!("GET {API}/images?limit=1 HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let body = "x".repeat(5000);
    for first in [
        format!("GET {API}/images HTTP/1.1\r\n\r\n"),
        format!("GET {API}/images HTTP/1.1\r\nHost: {addr}\r\nHost: other\r\n\r\n"),
        format!("GET {API}/images HTTP/1.1\r\nHost: a, b\r\n\r\n"),
        format!("GET {API}/images HTTP/1.1\r\nHost: a b\r\n\r\n"),
        format!("GET {API}/images HTTP/1.1\r\nHost: u@{addr}\r\n\r\n"),
        format!("GET {API}/images HTTP/1.1\r\nHost: a/b\r\n\r\n"),
        format!("GET {API}/images HTTP/1.1\r\nHost: a:99999\r\n\r\n"),
        format!(
            "POST {API}/images HTTP/1.1\r\nContent-Type: {MULTIPART}\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    ] {
        let text = exchange(&addr, &format!("{first}{next}"), false).await;
        let got = status_lines(&text);
        assert_eq!(got, ["HTTP/1.1 400", "HTTP/1.1 200"], "{first:?}: {text}");
        assert!(text.contains("\"code\":\"INVALID_PARAMETER\""), "{text}");
        assert!(text.contains("exactly one valid Host header"), "{text}");
    }
    NOTHING
}

/// A client that shuts down its sending side once its request is out (`nc -N`, one-shot
/// HTTP/1.0 clients) gets its answer, in HTTP/1.1 and 1.0; two pipelined requests (the last
/// asking to close) get both. (Pipelined requests followed by a half-close get the first
/// answer only: hyper stops at the end of input.)
async fn half_closed_clients_get_their_answers(app: &TestApp) -> Held {
    let addr = app.base.trim_start_matches("http://").to_string();
    let missing = "0b5e4f2c-1111-4222-8333-944455556666";
    for (requests, half_close, statuses) in [
        (
            format!("GET {API}/images?limit=1 HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
            true,
            &["HTTP/1.1 200"][..],
        ),
        (
            format!("GET {API}/images?limit=1 HTTP/1.0\r\n\r\n"),
            true,
            &["HTTP/1.0 200"],
        ),
        (
            format!(
                "GET /ready HTTP/1.1\r\nHost: {addr}\r\n\r\n\
                 GET {API}/images/{missing} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
            ),
            false,
            &["HTTP/1.1 200", "HTTP/1.1 404"],
        ),
    ] {
        let text = exchange(&addr, &requests, half_close).await;
        let got = status_lines(&text);
        assert_eq!(got, statuses, "{requests:?}: {text}");
    }
    NOTHING
}

/// A client's `X-Request-Id` is written into every log line of its request and echoed back:
/// one that could break a log line (quotes, spaces, non-ASCII, control characters), an
/// overlong one or two of them are replaced by a fresh UUID; a plain one is kept.
async fn unsafe_request_ids_are_replaced(app: &TestApp) -> Held {
    let plain = ["abc-123_X.9:z", &"a".repeat(128)];
    let unsafe_ = [
        "abc\" outcome=\"success\" role=\"admin",
        "two words",
        &"a".repeat(129),
        "tab\there",
    ];
    let send = |values: &[&[u8]]| {
        let mut req = app.client.get(app.url("/images"));
        for v in values {
            req = req.header(
                "x-request-id",
                reqwest::header::HeaderValue::from_bytes(v).unwrap(),
            );
        }
        req.send()
    };
    for id in plain {
        let r = send(&[id.as_bytes()]).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-request-id"], id);
    }
    let non_ascii = "ünïcode".as_bytes();
    let two: &[&[u8]] = &[b"first", b"second"];
    let sent: Vec<Vec<&[u8]>> = unsafe_
        .iter()
        .map(|v| vec![v.as_bytes()])
        .chain([vec![non_ascii], two.to_vec()])
        .collect();
    for values in sent {
        let r = send(&values).await.unwrap();
        assert_eq!(r.status(), 200);
        let got = r
            .headers()
            .get_all("x-request-id")
            .iter()
            .collect::<Vec<_>>();
        assert_eq!(got.len(), 1, "{values:?}");
        let got = got[0].to_str().unwrap();
        assert!(uuid::Uuid::parse_str(got).is_ok(), "{values:?}: {got}");
    }
    NOTHING
}

// ---------------------------------------------------------------------------------------------
// Range and conditional headers
// ---------------------------------------------------------------------------------------------

const RANGE_LEN: usize = 10_000;

/// A download of a 10,000-byte image with extra request headers.
async fn download_with(app: &TestApp, id: &str, zip: bool, headers: &[(&str, &str)]) -> Response {
    let q = if zip { "?isZip=true" } else { "" };
    let mut req = app
        .client
        .get(app.url(&format!("/images/{id}/action/download{q}")));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

async fn range_image(app: &TestApp) -> (String, Vec<u8>) {
    let data = pattern(20, RANGE_LEN);
    (app.upload_ok("range.img", data.clone()).await, data)
}

/// The whole image with a 200: the header was ignored.
async fn whole(resp: Response, data: &[u8]) {
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-length"],
        RANGE_LEN.to_string().as_str()
    );
    assert!(resp.headers().get("content-range").is_none());
    assert_eq!(resp.bytes().await.unwrap().to_vec(), data);
}

async fn unsatisfiable(resp: Response) {
    assert_eq!(
        resp.headers()["content-range"],
        format!("bytes */{RANGE_LEN}").as_str()
    );
    refused(resp, 416, "RANGE_NOT_SATISFIABLE").await;
}

async fn range_past_end(app: &TestApp) -> Held {
    let (id, _) = range_image(app).await;
    for r in [
        "bytes=10000-",
        "bytes=10000-20000",
        "bytes=18446744073709551615-",
    ] {
        unsatisfiable(download_with(app, &id, false, &[("Range", r)]).await).await;
    }
    images(1)
}

async fn range_suffix_zero(app: &TestApp) -> Held {
    let (id, _) = range_image(app).await;
    unsatisfiable(download_with(app, &id, false, &[("Range", "bytes=-0")]).await).await;
    images(1)
}

async fn range_on_empty_image(app: &TestApp) -> Held {
    let id = app.upload_ok("empty.img", vec![]).await;
    for r in ["bytes=0-", "bytes=-1"] {
        let resp = download_with(app, &id, false, &[("Range", r)]).await;
        assert_eq!(resp.headers()["content-range"], "bytes */0");
        refused(resp, 416, "RANGE_NOT_SATISFIABLE").await;
    }
    images(1)
}

async fn range_multiple(app: &TestApp) -> Held {
    let (id, data) = range_image(app).await;
    whole(
        download_with(app, &id, false, &[("Range", "bytes=0-1,5-6")]).await,
        &data,
    )
    .await;
    images(1)
}

async fn range_malformed(app: &TestApp) -> Held {
    let (id, data) = range_image(app).await;
    for r in [
        "bytes=abc",
        "bytes=9-2",
        "items=0-1",
        "bytes=",
        "bytes=--5",
        "bytes=0x10-",
    ] {
        whole(download_with(app, &id, false, &[("Range", r)]).await, &data).await;
    }
    images(1)
}

async fn range_overflowing_numbers(app: &TestApp) -> Held {
    let (id, data) = range_image(app).await;
    // Past u64 (RFC 9110 puts no bound on the digits): a last position is past the end,
    // clamped; a first position is past the end, unsatisfiable; a suffix is the whole.
    let huge = "99999999999999999999999";
    let r = download_with(app, &id, false, &[("Range", &format!("bytes=0-{huge}"))]).await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 0-9999/10000");
    assert_eq!(r.bytes().await.unwrap().to_vec(), data);
    unsatisfiable(download_with(app, &id, false, &[("Range", &format!("bytes={huge}-"))]).await)
        .await;
    let r = download_with(app, &id, false, &[("Range", &format!("bytes=-{huge}"))]).await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().to_vec(), data);
    // A huge (u64) end is clamped.
    let r = download_with(
        app,
        &id,
        false,
        &[("Range", "bytes=9990-18446744073709551615")],
    )
    .await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 9990-9999/10000");
    assert_eq!(r.bytes().await.unwrap().to_vec(), data[9990..]);
    images(1)
}

async fn range_on_zip_download(app: &TestApp) -> Held {
    let (id, _) = range_image(app).await;
    let r = download_with(app, &id, true, &[("Range", "bytes=0-9")]).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("content-range").is_none());
    assert_eq!(r.headers()["content-type"], "application/zip");
    let len: usize = r.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().len(), len);
    images(1)
}

async fn range_with_a_stale_if_range_is_whole(app: &TestApp) -> Held {
    // An If-Range that names other bytes (another tag, a weak one, another date, garbage):
    // the whole image, never a range that a client would splice onto bytes it holds
    // (RFC 9110 section 13.1.5).
    let (id, data) = range_image(app).await;
    for v in [
        "\"bogus\"",
        "W/\"x\"",
        "Sat, 01 Jan 2000 00:00:00 GMT",
        "garbage",
    ] {
        let r = download_with(app, &id, false, &[("Range", "bytes=0-9"), ("If-Range", v)]).await;
        whole(r, &data).await;
    }
    images(1)
}

async fn conditional_headers_that_do_not_hold_are_whole(app: &TestApp) -> Held {
    // Conditions that name other bytes or an earlier time, or cannot be read: the whole
    // image. A date past the server's clock cannot come from it, and is ignored (RFC 2616
    // 14.25). (A condition that holds answers 304: see the integrity tests.)
    let (id, data) = range_image(app).await;
    for (k, v) in [
        ("If-None-Match", "\"abc\""),
        ("If-Modified-Since", "Sat, 01 Jan 2000 00:00:00 GMT"),
        ("If-Modified-Since", "Fri, 01 Jan 2100 00:00:00 GMT"),
        ("If-Modified-Since", "garbage"),
        ("If-Unmodified-Since", "garbage"),
    ] {
        whole(download_with(app, &id, false, &[(k, v)]).await, &data).await;
    }
    images(1)
}

// ---------------------------------------------------------------------------------------------
// qcow2 images that name host files, lie about their size, or are not qcow2
// ---------------------------------------------------------------------------------------------

/// Uploads `bytes` as `name`, waits for its check and asserts its status and that `msg`
/// mentions `says`; returns the image id.
async fn checked_as(app: &TestApp, name: &str, bytes: Vec<u8>, status: u64, says: &str) -> String {
    let id = app.upload_ok(name, bytes.clone()).await;
    let v = crate::checks::wait_checked(app, &id).await;
    assert_eq!(v["checkStatusResponse"]["status"], status, "{v}");
    let msg = v["checkStatusResponse"]["msg"].as_str().unwrap();
    assert!(msg.contains(says), "{msg}");
    let root = app.dir.path().to_str().unwrap();
    assert!(!v.to_string().contains(root), "a server path leaked: {v}");
    assert_eq!(app.download(&id).await, bytes);
    id
}

/// A refused image: check status 3, then slim refused (400 SLIM_REFUSED, slimStatus 3).
async fn refused_image(app: &TestApp, name: &str, bytes: Vec<u8>, says: &str) -> Held {
    let id = checked_as(app, name, bytes, 3, says).await;
    let v = refused(app.slim(&id).await, 400, "SLIM_REFUSED").await;
    assert!(v["message"].as_str().unwrap().contains(says), "{v}");
    let (_, v) = app.get_json(&format!("/images/{id}")).await;
    assert_eq!(v["slimStatus"], 3, "{v}");
    images(1)
}

fn qemu_img(args: &[&str]) {
    run("qemu-img", args);
}

/// What `qemu-img args` (with `--output=json`) prints.
fn qemu_img_json(args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new("qemu-img")
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "qemu-img {args:?}: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn qcow2_backing_file(app: &TestApp) -> Held {
    let p = app.dir.path().join("overlay.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "/etc/passwd",
        "-F",
        "raw",
        p.to_str().unwrap(),
        "1M",
    ]);
    refused_image(
        app,
        "overlay.qcow2",
        std::fs::read(&p).unwrap(),
        "backing file",
    )
    .await
}

async fn qcow2_backing_file_json(app: &TestApp) -> Held {
    let p = app.dir.path().join("json.qcow2");
    let json = r#"json:{"driver":"raw","file":{"driver":"file","filename":"/etc/hostname"}}"#;
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        json,
        "-F",
        "raw",
        p.to_str().unwrap(),
        "1M",
    ]);
    refused_image(
        app,
        "json.qcow2",
        std::fs::read(&p).unwrap(),
        "backing file",
    )
    .await
}

async fn qcow2_data_file(app: &TestApp) -> Held {
    let p = app.dir.path().join("df.qcow2");
    let data = app.dir.path().join("df.data");
    let opts = format!("data_file={},data_file_raw=on", data.display());
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &opts,
        p.to_str().unwrap(),
        "1M",
    ]);
    refused_image(app, "df.qcow2", std::fs::read(&p).unwrap(), "data file").await
}

async fn qcow2_absurd_virtual_size(app: &TestApp) -> Held {
    // A valid small image whose header claims 2^62 bytes of guest disk: qemu-img refuses to
    // open it; the check fails (3) and no slim is attempted.
    let p = make_qcow2(app.dir.path(), "huge.qcow2", 1, 0);
    let mut b = std::fs::read(&p).unwrap();
    b[24..32].copy_from_slice(&(1u64 << 62).to_be_bytes());
    refused_image(app, "huge.qcow2", b, "too big").await
}

async fn qcow2_absurd_cluster_size(app: &TestApp) -> Held {
    // cluster_bits 40: a cluster of 1 TiB.
    let p = make_qcow2(app.dir.path(), "cb.qcow2", 1, 0);
    let mut b = std::fs::read(&p).unwrap();
    b[20..24].copy_from_slice(&40u32.to_be_bytes());
    refused_image(app, "cb.qcow2", b, "cluster size").await
}

async fn qcow2_truncated_header(app: &TestApp) -> Held {
    let p = make_qcow2(app.dir.path(), "t.qcow2", 1, 0);
    let b = std::fs::read(&p).unwrap()[..40].to_vec();
    refused_image(app, "t.qcow2", b, "truncated").await
}

async fn qcow2_length_not_a_sector_multiple(app: &TestApp) -> Held {
    // On S3 qemu-img reads the object over NBD, which qemu rounds up to 512 bytes: a length
    // of another kind once stalled the check until qemu-img's own timeout (status 6). With bytes after its last
    // cluster it is consistent; cut short inside its metadata it is corrupted, at once.
    let p = make_qcow2(app.dir.path(), "odd.qcow2", 64, 4);
    let whole = std::fs::read(&p).unwrap();
    let trailing = [&whole[..], &[7u8; 100]].concat();
    checked_as(app, "trailing.qcow2", trailing, 0, "consistent").await;
    checked_as(app, "cut.qcow2", whole[..100_000].to_vec(), 1, "corrupted").await;
    images(2)
}

/// A qcow2 holding an internal snapshot is not slimmed (`qemu-img convert` copies the current
/// state only; the snapshot would be silently lost): `slimStatus` 3 with a message that says
/// why, and the original, snapshot included, stays the one served.
async fn qcow2_internal_snapshot_is_not_slimmed(app: &TestApp) -> Held {
    let p = make_qcow2(app.dir.path(), "snap.qcow2", 16, 1);
    qemu_img(&["snapshot", "-c", "before", p.to_str().unwrap()]);
    let bytes = std::fs::read(&p).unwrap();
    let id = app.upload_ok("snap.qcow2", bytes.clone()).await;
    let v = crate::checks::wait_checked(app, &id).await;
    assert_eq!(v["checkStatusResponse"]["status"], 0, "{v}");
    let v = slim_to_end(app, &id).await;
    assert_eq!(v["slimStatus"], 3, "{v}");
    assert_eq!(v["compressInfo"]["compressStatus"], 2, "{v}");
    let msg = v["compressInfo"]["compressMsg"].as_str().unwrap();
    assert!(msg.contains("1 internal snapshot"), "{msg}");
    assert_eq!(app.download(&id).await, bytes);
    Held {
        jobs: 2,
        ..images(1)
    }
}

/// Slims image `id` (accepted) and waits for the slim to end: the image's record then.
async fn slim_to_end(app: &TestApp, id: &str) -> serde_json::Value {
    assert_eq!(
        app.slim(id).await.text().await.unwrap(),
        "compress in progress"
    );
    crate::slims::wait_slim_done(app, id).await
}

/// A slim keeps the image's persistent dirty bitmaps (`--bitmaps`; they drive incremental
/// backups), enabled or not, and slims a version 2 qcow2 (no bitmap support) as before.
async fn qcow2_bitmaps_survive_a_slim(app: &TestApp) -> Held {
    let p = make_qcow2(app.dir.path(), "bm.qcow2", 16, 1);
    let path = p.to_str().unwrap();
    qemu_img(&["bitmap", "--add", path, "kept"]);
    qemu_img(&["bitmap", "--add", "--disable", path, "disabled"]);
    let id = app.upload_ok("bm.qcow2", std::fs::read(&p).unwrap()).await;
    let v = slim_to_end(app, &id).await;
    assert_eq!(v["slimStatus"], 2, "{v}");
    let out = app.dir.path().join("bm.slim.qcow2");
    app.download_to(&format!("/images/{id}/action/download"), &out)
        .await;
    let info = qemu_img_json(&["info", "--output=json", out.to_str().unwrap()]);
    let names: Vec<&str> = info["format-specific"]["data"]["bitmaps"]
        .as_array()
        .unwrap_or_else(|| panic!("no bitmaps: {info}"))
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["kept", "disabled"], "{info}");
    ok_text(app.delete_image(&id).await, "delete success").await;
    // Version 2.
    let v2 = app.dir.path().join("v2.qcow2");
    let v2s = v2.to_str().unwrap();
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "compat=0.10",
        v2s,
        "16M",
    ]);
    let id = app.upload_ok("v2.qcow2", std::fs::read(&v2).unwrap()).await;
    let v = slim_to_end(app, &id).await;
    assert_eq!(v["slimStatus"], 2, "{v}");
    ok_text(app.delete_image(&id).await, "delete success").await;
    wait_nothing_left_but_jobs(app, 4).await;
    Held { jobs: 4, ..NOTHING }
}

async fn qcow2_raw_bytes_named_qcow2(app: &TestApp) -> Held {
    refused_image(app, "raw.qcow2", pattern(21, 100_000), "not qcow2").await
}

async fn qcow2_unsupported_version(app: &TestApp) -> Held {
    let p = make_qcow2(app.dir.path(), "v.qcow2", 1, 0);
    let mut b = std::fs::read(&p).unwrap();
    b[4..8].copy_from_slice(&7u32.to_be_bytes());
    refused_image(app, "v.qcow2", b, "version 7").await
}

async fn qcow2_empty_file(app: &TestApp) -> Held {
    refused_image(app, "empty.qcow2", vec![], "not qcow2").await
}

async fn qcow2_named_img_is_raw(app: &TestApp) -> Held {
    // A self-contained qcow2 named `.img` is raw bytes: never opened as qcow2.
    let plain = app.dir.path().join("plain.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", plain.to_str().unwrap(), "1M"]);
    let id = app.upload_ok("p.img", std::fs::read(&plain).unwrap()).await;
    let v = crate::checks::wait_checked(app, &id).await;
    assert_eq!(v["checkStatusResponse"]["status"], 5, "{v}");
    assert_eq!(
        v["checkStatusResponse"]["checkInfo"]["imageInfo"]["format"], "raw",
        "{v}"
    );
    let v = refused(app.slim(&id).await, 400, "SLIM_REFUSED").await;
    assert_eq!(
        v["message"],
        "This image cannot be slimmed because the type of image is not supported."
    );
    // One that names a backing file is refused under a raw name as well: whoever downloads
    // it might probe its format and follow the reference.
    let p = app.dir.path().join("o.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "/etc/passwd",
        "-F",
        "raw",
        p.to_str().unwrap(),
        "1M",
    ]);
    let id = app.upload_ok("o.img", std::fs::read(&p).unwrap()).await;
    let v = crate::checks::wait_checked(app, &id).await;
    assert_eq!(v["checkStatusResponse"]["status"], 3, "{v}");
    let msg = v["checkStatusResponse"]["msg"].as_str().unwrap();
    assert!(
        msg.contains("backing file") && !msg.contains("passwd"),
        "{msg}"
    );
    refused(app.slim(&id).await, 400, "SLIM_REFUSED").await;
    images(2)
}

async fn qcow2_backing_file_inside_zip(app: &TestApp) -> Held {
    let p = app.dir.path().join("zipped.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "/etc/passwd",
        "-F",
        "raw",
        p.to_str().unwrap(),
        "1M",
    ]);
    let bytes = std::fs::read(&p).unwrap();
    let zip = py_zip(
        app,
        &format!("z.writestr('d/zipped.qcow2', {})", py_bytes(app, &bytes)),
    );
    let v = ok_json(app.upload("z.zip", zip, &[]).await).await;
    let id = image_id(&v);
    let v = crate::checks::wait_checked(app, &id).await;
    assert_eq!(v["checkStatusResponse"]["status"], 3, "{v}");
    refused(app.slim(&id).await, 400, "SLIM_REFUSED").await;
    images(1)
}

// ---------------------------------------------------------------------------------------------
// Concurrent delete while downloading, slimming, merging
// ---------------------------------------------------------------------------------------------

/// Deletes an image while its download streams: the delete succeeds at once, the image is
/// gone for every new request, and the download in flight still gets every byte, plain or
/// zipped, on every store (on S3 the objects are held until it ends). Then the objects go.
async fn delete_during_download(app: &TestApp, zip: bool) -> Held {
    use futures::StreamExt;
    let data = pattern(22, 24 << 20);
    let id = app.upload_ok("dl.img", data.clone()).await;
    let before = app.leftovers().await;
    let q = if zip { "?isZip=true" } else { "" };
    let resp = app
        .client
        .get(app.url(&format!("/images/{id}/action/download{q}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let length = resp.content_length().unwrap() as usize;
    let mut stream = resp.bytes_stream();
    let mut got = stream.next().await.unwrap().unwrap().to_vec();
    ok_text(app.delete_image(&id).await, "delete success").await;
    assert_eq!(app.get_json(&format!("/images/{id}")).await.0, 404);
    refused(
        download_with(app, &id, zip, &[]).await,
        404,
        "IMAGE_NOT_FOUND",
    )
    .await;
    if app.backend.is_s3() {
        // Held while read: the image's object is still in the store. (A local file is
        // unlinked at once; its open file reads on.)
        assert_eq!(
            app.leftovers().await,
            before,
            "the object went under its download"
        );
    }
    while let Some(c) = stream.next().await {
        got.extend_from_slice(&c.expect("the download in flight was cut"));
    }
    assert_eq!(got.len(), length);
    if !zip {
        assert!(got == data, "other bytes were served");
    }
    // The last download to end deletes the objects.
    app.until_no_leftovers("a delete during a download", 10)
        .await;
    // Its check job stays in the history (cancelled or done).
    Held { jobs: 1, ..NOTHING }
}

async fn concurrent_delete_while_downloading(app: &TestApp) -> Held {
    delete_during_download(app, false).await
}

async fn concurrent_delete_while_zip_downloading(app: &TestApp) -> Held {
    delete_during_download(app, true).await
}

async fn concurrent_delete_while_slimming(app: &TestApp) -> Held {
    let img = make_qcow2(app.dir.path(), "s.qcow2", 256, 48);
    let id = app.upload_ok("s.qcow2", std::fs::read(&img).unwrap()).await;
    crate::checks::wait_checked(app, &id).await;
    ok_text(app.slim(&id).await, "compress in progress").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (a, b) = tokio::join!(app.delete_image(&id), app.slim(&id));
    ok_text(a, "delete success").await;
    let status = b.status().as_u16();
    assert!(status == 200 || status == 404, "{status}");
    // The check and the slim; a slim asked for in the moment the delete ended the first one
    // (the image still there, its slim no longer running) has a job of its own.
    let jobs = wait_nothing_left_but_jobs_within(app, 2..=3).await;
    Held { jobs, ..NOTHING }
}

/// Waits until nothing is stored and no row is left but `jobs` finished jobs.
async fn wait_nothing_left_but_jobs(app: &TestApp, jobs: u64) {
    wait_nothing_left_but_jobs_within(app, jobs..=jobs).await;
}

/// Waits until nothing is stored and no row is left but finished jobs, as many as `jobs`
/// allows (every request that could add one has been answered): their number.
async fn wait_nothing_left_but_jobs_within(
    app: &TestApp,
    jobs: std::ops::RangeInclusive<u64>,
) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (held, left) = Held::take(app).await;
        if jobs.contains(&held.jobs)
            && held
                == (Held {
                    jobs: held.jobs,
                    ..NOTHING
                })
        {
            return held.jobs;
        }
        assert!(Instant::now() < deadline, "left behind: {held:?} {left:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn concurrent_cancel_while_merging(app: &TestApp) -> Held {
    // A zip merge takes a while (unpacking); a cancel meanwhile is refused (409) or comes first.
    let data = pattern(23, 6 << 20);
    let zip = py_zip(
        app,
        &format!("z.writestr('d/m.img', {})", py_bytes(app, &data)),
    );
    let half = zip.len() / 2;
    ok_text(app.chunk("cc", 1, zip[..half].to_vec()).await, "ok.").await;
    ok_text(app.chunk("cc", 2, zip[half..].to_vec()).await, "ok.").await;
    let merge = app.merge("cc", "cc.zip");
    let cancel = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        app.client
            .delete(app.url("/images/upload?identifier=cc"))
            .send()
            .await
            .unwrap()
    };
    let (m, c) = tokio::join!(merge, cancel);
    let (ms, cs) = (m.status().as_u16(), c.status().as_u16());
    assert!(ms < 500 && cs < 500, "merge {ms}, cancel {cs}");
    if ms == 200 {
        let v: serde_json::Value = m.json().await.unwrap();
        let id = image_id(&v);
        assert_eq!(app.download(&id).await, data);
        ok_text(app.delete_image(&id).await, "delete success").await;
        cancel_idempotent(app, "cc").await;
        wait_nothing_left_but_jobs(app, 1).await;
        Held { jobs: 1, ..NOTHING }
    } else {
        // The cancel came first: nothing to merge.
        assert_eq!(ms, 400);
        assert_eq!(cs, 200);
        wait_nothing_left(app, Duration::from_secs(20)).await;
        NOTHING
    }
}

async fn cancel_idempotent(app: &TestApp, identifier: &str) {
    cancel(app, identifier).await;
    cancel(app, identifier).await;
}

async fn concurrent_chunk_while_merging(app: &TestApp) -> Held {
    ok_text(app.chunk("cw2", 1, pattern(24, 3 << 20)).await, "ok.").await;
    ok_text(app.chunk("cw2", 2, pattern(25, 3 << 20)).await, "ok.").await;
    let (m, c) = tokio::join!(app.merge("cw2", "cw2.img"), async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        app.chunk("cw2", 3, pattern(26, 1000)).await
    });
    let v = ok_json(m).await;
    let cs = c.status().as_u16();
    assert!(cs == 200 || cs == 409, "{cs}");
    let id = image_id(&v);
    let got = app.download(&id).await;
    let two = [pattern(24, 3 << 20), pattern(25, 3 << 20)].concat();
    // The chunk either made it in before the merge took the upload, or was refused.
    if cs == 409 {
        assert_eq!(got, two);
    } else {
        assert!(got == two || got == [two.clone(), pattern(26, 1000)].concat());
    }
    ok_text(app.delete_image(&id).await, "delete success").await;
    cancel(app, "cw2").await;
    wait_nothing_left_but_jobs(app, 1).await;
    Held { jobs: 1, ..NOTHING }
}

/// A chunk in flight whose client stalls: its head and the first half of its body sent on a
/// raw connection, kept open. Returns the connection and the rest of the body.
async fn stall_chunk(
    app: &TestApp,
    identifier: &str,
    n: u32,
    content: &[u8],
) -> (tokio::net::TcpStream, Vec<u8>) {
    let mut body = multipart_start(
        &[("identifier", identifier)],
        "part",
        &format!("{n}.part"),
        content,
    );
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    stall_form(app, body).await
}

/// Sends the first half of the chunk request `body` (a multipart form) and stops: the
/// connection and the rest of the body.
async fn stall_form(app: &TestApp, mut body: Vec<u8>) -> (tokio::net::TcpStream, Vec<u8>) {
    use tokio::io::AsyncWriteExt;
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST {API}/images/upload HTTP/1.1\r\nHost: {addr}\r\n{}\r\n",
        content_length_headers(body.len())
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let rest = body.split_off(body.len() / 2);
    conn.write_all(&body).await.unwrap();
    conn.flush().await.unwrap();
    // Let the server take the chunk in (on the local store: into its place in the upload).
    tokio::time::sleep(Duration::from_millis(300)).await;
    (conn, rest)
}

/// Sends `rest` on a stalled chunk's connection: the status it is answered with.
async fn finish_stalled(mut conn: tokio::net::TcpStream, rest: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(rest).await.unwrap();
    let mut head = [0u8; 64];
    let mut got = 0;
    while got < 12 {
        let n = conn.read(&mut head[got..]).await.unwrap();
        assert!(n > 0, "closed without an answer");
        got += n;
    }
    String::from_utf8_lossy(&head[9..12]).parse().unwrap()
}

/// A stalled chunk holds up nobody: the same chunk sent again and a merge are answered at
/// once (the resend is kept), and the stalled one, finished after the merge, is refused.
async fn stalled_chunk_holds_up_no_resend_or_merge(app: &TestApp) -> Held {
    let within = Duration::from_secs(20);
    ok_text(app.chunk("st", 1, pattern(30, 1 << 20)).await, "ok.").await;
    let (stalled, rest) = stall_chunk(app, "st", 2, &pattern(34, 1 << 20)).await;
    let r = tokio::time::timeout(within, app.chunk("st", 2, pattern(31, 1 << 20)))
        .await
        .expect("the resend waited for the stalled chunk");
    ok_text(r, "ok.").await;
    let m = tokio::time::timeout(within, app.merge("st", "st.img"))
        .await
        .expect("the merge waited for the stalled chunk");
    let id = image_id(&ok_json(m).await);
    assert_eq!(finish_stalled(stalled, &rest).await, 409);
    let two = [pattern(30, 1 << 20), pattern(31, 1 << 20)].concat();
    assert_eq!(app.download(&id).await, two);
    let (_, st) = app.get_json("/images/upload?identifier=st").await;
    assert_eq!(st["totalBytes"], two.len() as u64, "{st}");
    ok_text(app.delete_image(&id).await, "delete success").await;
    cancel(app, "st").await;
    wait_nothing_left_but_jobs(app, 1).await;
    Held { jobs: 1, ..NOTHING }
}

/// A stalled chunk, the same chunk sent again, then a cancel: all answered at once, and the
/// stalled chunk, cut off afterwards, leaves nothing.
async fn stalled_chunk_then_cancel(app: &TestApp) -> Held {
    let within = Duration::from_secs(20);
    ok_text(app.chunk("st2", 1, pattern(32, 1 << 20)).await, "ok.").await;
    let (stalled, _) = stall_chunk(app, "st2", 2, &pattern(35, 1 << 20)).await;
    let r = tokio::time::timeout(within, app.chunk("st2", 2, pattern(33, 1 << 20)))
        .await
        .expect("the resend waited for the stalled chunk");
    ok_text(r, "ok.").await;
    tokio::time::timeout(within, cancel(app, "st2"))
        .await
        .expect("the cancel waited for the stalled chunk");
    drop(stalled);
    wait_nothing_left(app, Duration::from_secs(20)).await;
    assert_eq!(held_chunks(app, "st2").await, Vec::<u64>::new());
    NOTHING
}

/// A chunk in transfer when its upload is cancelled is refused once it ends (409): it opens
/// nothing again, and the cancel leaves nothing behind. With `fields_after`, the identifier
/// follows the chunk in the form (the chunk is spooled, not received in place).
async fn chunk_in_transfer_during_cancel(app: &TestApp, fields_after: bool) -> Held {
    let id = if fields_after { "ctf" } else { "ct" };
    ok_text(app.chunk(id, 1, pattern(40, 1 << 20)).await, "ok.").await;
    let (stalled, rest) = if fields_after {
        let body = Raw::new()
            .file("part", b"2.part", &pattern(41, 1 << 20))
            .text("identifier", id.as_bytes())
            .finish();
        stall_form(app, body).await
    } else {
        stall_chunk(app, id, 2, &pattern(41, 1 << 20)).await
    };
    cancel(app, id).await;
    assert_eq!(finish_stalled(stalled, &rest).await, 409);
    let (_, st) = app
        .get_json(&format!("/images/upload?identifier={id}"))
        .await;
    assert_eq!(st["state"], "none", "{st}");
    wait_nothing_left(app, Duration::from_secs(20)).await;
    NOTHING
}

async fn chunk_in_transfer_during_cancel_fields_first(app: &TestApp) -> Held {
    chunk_in_transfer_during_cancel(app, false).await
}

async fn chunk_in_transfer_during_cancel_fields_after(app: &TestApp) -> Held {
    chunk_in_transfer_during_cancel(app, true).await
}

/// The first chunk of an upload, in transfer when the upload is cancelled (nothing is held
/// yet), does not open it once it ends.
async fn first_chunk_in_transfer_during_cancel(app: &TestApp) -> Held {
    let (stalled, rest) = stall_chunk(app, "cf", 1, &pattern(42, 1 << 20)).await;
    cancel(app, "cf").await;
    assert_eq!(finish_stalled(stalled, &rest).await, 409);
    let (_, st) = app.get_json("/images/upload?identifier=cf").await;
    assert_eq!(st["state"], "none", "{st}");
    wait_nothing_left(app, Duration::from_secs(20)).await;
    NOTHING
}

/// An upload cancelled and started anew under the same identifier while a chunk of the old
/// one is in transfer: that chunk is refused and its bytes never join the new upload.
async fn chunk_in_transfer_across_restart(app: &TestApp) -> Held {
    ok_text(app.chunk("cr", 1, pattern(43, 1 << 20)).await, "ok.").await;
    let (stalled, rest) = stall_chunk(app, "cr", 2, &pattern(44, 1 << 20)).await;
    cancel(app, "cr").await;
    let fresh = pattern(45, 1 << 20);
    ok_text(app.chunk("cr", 1, fresh.clone()).await, "ok.").await;
    assert_eq!(finish_stalled(stalled, &rest).await, 409);
    assert_eq!(held_chunks(app, "cr").await, vec![1]);
    let id = image_id(&ok_json(app.merge("cr", "cr.img").await).await);
    assert!(
        app.download(&id).await == fresh,
        "the merged image is not the new upload"
    );
    ok_text(app.delete_image(&id).await, "delete success").await;
    cancel(app, "cr").await;
    wait_nothing_left_but_jobs(app, 1).await;
    Held { jobs: 1, ..NOTHING }
}

async fn concurrent_delete_of_merged_image_while_checking(app: &TestApp) -> Held {
    ok_text(app.chunk("dc", 1, pattern(27, 4 << 20)).await, "ok.").await;
    let v = ok_json(app.merge("dc", "dc.img").await).await;
    let id = image_id(&v);
    let (a, b, c) = tokio::join!(
        app.delete_image(&id),
        app.delete_image(&id),
        app.merge("dc", "dc.img")
    );
    ok_text(a, "delete success").await;
    ok_text(b, "delete success").await;
    // The repeated merge answers the image while it exists, or finds the identifier free.
    let cs = c.status().as_u16();
    assert!(cs == 200 || cs == 400, "{cs}");
    cancel(app, "dc").await;
    wait_nothing_left_but_jobs(app, 1).await;
    Held { jobs: 1, ..NOTHING }
}

async fn concurrent_slim_requests(app: &TestApp) -> Held {
    let img = make_qcow2(app.dir.path(), "c.qcow2", 64, 4);
    let id = app.upload_ok("c.qcow2", std::fs::read(&img).unwrap()).await;
    crate::checks::wait_checked(app, &id).await;
    let answers = futures::future::join_all((0..8).map(|_| app.slim(&id))).await;
    let mut accepted = 0;
    for r in answers {
        assert_eq!(r.status(), 200);
        let t = r.text().await.unwrap();
        match t.as_str() {
            "compress in progress" => accepted += 1,
            "The image file is being slimmed. No need to slim again."
            | "The image file has already been slimmed. No need to slim again. Pls request to check directly" => {}
            other => panic!("{other}"),
        }
    }
    assert_eq!(accepted, 1);
    app.wait_jobs_idle().await;
    let (_, v) = app.get_json(&format!("/images/{id}")).await;
    assert_eq!(v["slimStatus"], 2, "{v}");
    // The original and its slimmed copy; one check and one slim job.
    Held {
        leftovers: 2,
        images: 1,
        jobs: 2,
        ..NOTHING
    }
}

// ---------------------------------------------------------------------------------------------
// The matrix
// ---------------------------------------------------------------------------------------------

fn small_limit() -> Options {
    Options {
        max_image_bytes: Some(1 << 20),
        ..Default::default()
    }
}

/// One upload slot, a window of 1 s and the default minimum rate (1 KiB/s).
fn one_slot_min_rate() -> Options {
    Options {
        env: vec![
            ("FS_BODY_IDLE_TIMEOUT_SECS", "1".into()),
            ("FS_UPLOAD_CONCURRENCY", "1".into()),
        ],
        ..Default::default()
    }
}

fn idle_timeout() -> Options {
    Options {
        env: vec![("FS_BODY_IDLE_TIMEOUT_SECS", "1".into())],
        ..Default::default()
    }
}

hostile_cases! {
    // Traversal: identifier.
    traversal_identifier_dotdot,
    traversal_identifier_dotdot_path,
    traversal_identifier_absolute,
    traversal_identifier_backslash,
    traversal_identifier_nul,
    traversal_identifier_percent_encoded,
    traversal_identifier_overlong_utf8,
    // Traversal: image id in the path.
    traversal_image_id_dotdot,
    traversal_image_id_absolute,
    traversal_image_id_backslash,
    traversal_image_id_nul,
    traversal_image_id_overlong_utf8,
    traversal_image_id_uuid_lookalike,
    // Traversal: chunk part name.
    traversal_part_name_dotdot,
    traversal_part_name_absolute,
    traversal_part_name_backslash,
    traversal_part_name_nul,
    traversal_part_name_percent_encoded,
    traversal_part_name_overlong_utf8,
    // Traversal: upload file name.
    traversal_file_name_dotdot,
    traversal_file_name_absolute,
    traversal_file_name_backslash,
    traversal_file_name_nul,
    traversal_file_name_percent_encoded,
    traversal_file_name_overlong_utf8,
    // Traversal: merge file name.
    traversal_merge_filename_dotdot,
    traversal_merge_filename_absolute,
    traversal_merge_filename_backslash,
    traversal_merge_filename_nul,
    traversal_merge_filename_percent_encoded,
    traversal_merge_filename_overlong_utf8,
    // Traversal: zip entries.
    zip_entry_dotdot,
    zip_entry_absolute,
    zip_entry_backslash,
    zip_entry_drive_letter,
    zip_entry_nul,
    zip_entry_percent_encoded,
    zip_entry_overlong_utf8,
    // Zips.
    zip_lying_size_smaller,
    zip_lying_size_larger,
    zip_lying_crc,
    zip_lying_size_stored,
    zip_bomb_deflate_ratio,
    zip_bomb_bzip2_ratio,
    zip_bomb_past_size_limit with small_limit(),
    zip_nested_zip_only,
    zip_nested_zip_beside_image,
    zip_symlink_as_image,
    zip_symlink_beside_image,
    zip_char_device,
    zip_block_device,
    zip_fifo,
    zip_no_image,
    zip_empty_archive,
    zip_two_images,
    zip_image_not_in_folder,
    zip_metadata_only,
    zip_metadata_beside_image,
    zip_duplicate_entry_names,
    zip_too_many_entries,
    zip64_entry_count_lie,
    zip64_size_past_limit,
    zip64_size_smaller_than_data,
    zip_not_a_zip,
    zip_truncated,
    zip_lying_size_via_merge,
    // Multipart abuse.
    multipart_no_boundary,
    multipart_empty_boundary,
    multipart_not_multipart,
    multipart_truncated,
    multipart_huge_header_line,
    multipart_header_flood,
    multipart_preamble_flood,
    multipart_thousands_of_fields,
    multipart_thousands_of_file_parts,
    multipart_giant_text_field,
    multipart_duplicate_file_fields,
    multipart_duplicate_chunk_parts,
    multipart_file_part_without_filename,
    multipart_part_without_name,
    multipart_filename_with_quotes,
    multipart_filename_with_semicolon_and_equals,
    multipart_filename_raw_crlf,
    multipart_filename_encoded_crlf,
    multipart_filename_control_chars,
    multipart_filename_invalid_utf8,
    multipart_filename_non_ascii_and_quote,
    multipart_long_epilogue,
    multipart_repeated_disposition_parameters,
    multipart_wrong_content_type,
    multipart_transfer_coding_other_than_chunked,
    content_coded_bodies,
    merge_filename_with_quotes,
    field_priority_hostile,
    field_sent_twice_differently,
    // Chunk numbers.
    chunk_number_zero,
    chunk_number_over_max,
    chunk_number_negative,
    chunk_number_plus_sign,
    chunk_number_overflow,
    chunk_number_not_a_number,
    chunk_number_unicode_digits,
    chunk_number_missing,
    chunk_number_field_malformed,
    chunk_number_field_wins_over_hostile_name,
    chunk_number_bounds_accepted,
    chunk_number_in_resume_query,
    // Clients that stop mid-body.
    stop_mid_body_upload,
    stop_mid_body_zip_upload,
    stop_mid_body_chunk,
    stop_mid_body_second_chunk,
    stop_mid_body_chunked_encoding,
    stop_after_file_part,
    stop_mid_body_merge,
    silent_client_times_out with idle_timeout(),
    silent_small_bodies_time_out with idle_timeout(),
    trickling_bodies_time_out with one_slot_min_rate(),
    broken_small_bodies_are_bad_bodies,
    undecodable_form_values_are_refused,
    refused_first_chunks_open_no_upload,
    // Range and conditional headers.
    range_past_end,
    range_suffix_zero,
    range_on_empty_image,
    range_multiple,
    range_malformed,
    range_overflowing_numbers,
    range_on_zip_download,
    range_with_a_stale_if_range_is_whole,
    conditional_headers_that_do_not_hold_are_whole,
    // qcow2.
    qcow2_backing_file,
    qcow2_internal_snapshot_is_not_slimmed,
    qcow2_bitmaps_survive_a_slim,
    qcow2_backing_file_json,
    qcow2_data_file,
    qcow2_absurd_virtual_size,
    qcow2_absurd_cluster_size,
    qcow2_truncated_header,
    qcow2_length_not_a_sector_multiple,
    qcow2_raw_bytes_named_qcow2,
    qcow2_unsupported_version,
    qcow2_empty_file,
    qcow2_named_img_is_raw,
    qcow2_backing_file_inside_zip,
    // Connections and headers.
    declared_oversize_bodies_are_refused_at_once,
    half_closed_clients_get_their_answers,
    requests_without_one_host,
    unsafe_request_ids_are_replaced,
    // Concurrency.
    concurrent_delete_while_downloading,
    concurrent_delete_while_zip_downloading,
    concurrent_delete_while_slimming,
    concurrent_cancel_while_merging,
    concurrent_chunk_while_merging,
    stalled_chunk_holds_up_no_resend_or_merge,
    stalled_chunk_then_cancel,
    chunk_in_transfer_during_cancel_fields_first,
    chunk_in_transfer_during_cancel_fields_after,
    first_chunk_in_transfer_during_cancel,
    chunk_in_transfer_across_restart,
    concurrent_delete_of_merged_image_while_checking,
    concurrent_slim_requests,
}
