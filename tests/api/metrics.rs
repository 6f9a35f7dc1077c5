//! `/metrics`: its format, what the service counts (store calls, the upload lifecycle, checks,
//! the process, scratch space), the Grafana dashboard's queries against a real scrape, and the
//! access log's latency of a streamed response.

use crate::helpers::*;
use serde_json::Value;
use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

/// The content type an OpenMetrics body is served with.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One scrape of `{base}/metrics`: served as OpenMetrics, and its body is OpenMetrics text.
pub async fn scrape(client: &reqwest::Client, base: &str) -> Scrape {
    let r = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], OPENMETRICS);
    Scrape::parse(&r.text().await.unwrap())
}

/// The samples of a scrape, by series (`name{labels}` exactly as exposed).
pub struct Scrape {
    pub text: String,
    pub series: BTreeMap<String, f64>,
}

impl Scrape {
    /// Parses OpenMetrics text, failing on what it does not allow: a sample outside the
    /// family its `# TYPE` line announced, a value that is not a number, text after `# EOF`
    /// or no `# EOF` at all.
    pub fn parse(text: &str) -> Scrape {
        assert!(
            text.ends_with("# EOF\n"),
            "no EOF marker at the end:\n{text}"
        );
        let body = &text[..text.len() - "# EOF\n".len()];
        assert!(
            !body.contains("# EOF"),
            "EOF marker before the end:\n{text}"
        );
        let mut family: Option<(String, String)> = None;
        let mut series = BTreeMap::new();
        for line in body.lines() {
            if let Some(comment) = line.strip_prefix("# ") {
                let mut words = comment.splitn(3, ' ');
                let (kind, name) = (words.next().unwrap(), words.next().unwrap_or(""));
                assert!(matches!(kind, "HELP" | "TYPE" | "UNIT"), "{line}");
                assert!(!name.is_empty(), "{line}");
                if kind == "TYPE" {
                    let t = words.next().unwrap_or("");
                    assert!(
                        matches!(
                            t,
                            "counter" | "gauge" | "histogram" | "info" | "summary" | "unknown"
                        ),
                        "{line}"
                    );
                    family = Some((name.to_string(), t.to_string()));
                }
                continue;
            }
            let (key, value) = split_sample(line);
            let name = key.split('{').next().unwrap();
            let (fam, t) = family
                .as_ref()
                .unwrap_or_else(|| panic!("sample before any TYPE: {line}"));
            let suffixes: &[&str] = match t.as_str() {
                "counter" => &["_total", "_created"],
                "histogram" => &["_bucket", "_sum", "_count", "_created"],
                "info" => &["_info"],
                _ => &[""],
            };
            assert!(
                suffixes.iter().any(|s| name == format!("{fam}{s}")),
                "sample {name} outside its family {fam} ({t})"
            );
            let v: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("not a number: {line}"));
            series.insert(key.to_string(), v);
        }
        Scrape {
            text: text.to_string(),
            series,
        }
    }

    /// The value of `series`, which must be there: a gauge or counter that vanished fails the
    /// test instead of reading 0.
    pub fn get(&self, series: &str) -> f64 {
        self.series
            .get(series)
            .copied()
            .unwrap_or_else(|| panic!("{series} is not exported:\n{}", self.text))
    }

    /// The names of every sample (`fs_http_requests_total`, `fs_jobs`, ...).
    pub fn names(&self) -> BTreeSet<String> {
        self.series
            .keys()
            .map(|k| k.split('{').next().unwrap().to_string())
            .collect()
    }
}

/// `name{labels} value` -> (`name{labels}`, `value`); label values may hold `}` and spaces.
fn split_sample(line: &str) -> (&str, &str) {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            ' ' if !in_quotes => {
                let value = line[i + 1..].split(' ').next().unwrap();
                return (&line[..i], value);
            }
            _ => {}
        }
    }
    panic!("a sample without a value: {line}");
}

/// Does what an operator's dashboard shows: a single upload, a chunked upload that is merged
/// once with a chunk missing and then whole, the checks of both images, a download and a
/// cancelled chunked upload.
async fn exercise(app: &TestApp) {
    let img = make_qcow2(app.dir.path(), "m.qcow2", 64, 3);
    let id = app.upload_ok("m.qcow2", std::fs::read(&img).unwrap()).await;
    for n in [1, 3] {
        let r = app.chunk("merged", n, pattern(n as u64, 300_000)).await;
        assert_eq!(r.status(), 200);
    }
    assert_error(app.merge("merged", "m.img").await, 400, None).await;
    assert_eq!(
        app.chunk("merged", 2, pattern(2, 300_000)).await.status(),
        200
    );
    assert_eq!(app.merge("merged", "m.img").await.status(), 200);
    app.wait_jobs_idle().await;
    assert_eq!(
        app.download(&id).await.len() as u64,
        std::fs::metadata(&img).unwrap().len()
    );
    assert_eq!(
        app.chunk("cancelled", 1, pattern(4, 1000)).await.status(),
        200
    );
    let r = app
        .client
        .delete(app.url("/images/upload?identifier=cancelled"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// The version and revision `file-system --version` prints.
fn version_of_binary() -> (String, String) {
    let out = run(env!("CARGO_BIN_EXE_file-system"), &["--version"]);
    // "file-system 0.1.0 (abc123def456)"
    let rest = out.trim().strip_prefix("file-system ").expect(&out);
    let (version, revision) = rest.split_once(" (").expect(&out);
    (
        version.to_string(),
        revision.trim_end_matches(')').to_string(),
    )
}

async fn metrics_count_store_calls_uploads_checks_and_the_process(b: Backend) {
    let app = TestApp::spawn(b, Options::default()).await;
    let before = scrape(&app.client, &app.base).await;
    idle_metrics_are_exported(&before);
    exercise(&app).await;
    let m = scrape(&app.client, &app.base).await;
    lifecycle_and_checks_are_counted(&m, b);
    store_calls_are_counted(&m);
    let cpu = m.get("process_cpu_seconds_total");
    assert!(cpu > 0.0 && cpu >= before.get("process_cpu_seconds_total"));
    refused_slims_and_scratch_are_measured(&app).await;
    app.stop().await;
}

/// Before anything happened: the build, the process and the fixed outcomes are exported.
fn idle_metrics_are_exported(before: &Scrape) {
    let (version, revision) = version_of_binary();
    assert_eq!(
        before.get(&format!(
            r#"fs_build_info{{version="{version}",revision="{revision}"}}"#
        )),
        1.0,
        "{}",
        before.text
    );
    assert!(before.get("process_resident_memory_bytes") > 1e6);
    assert!(before.get("process_open_fds") >= 3.0);
    assert!(before.get("process_max_fds") >= before.get("process_open_fds"));
    assert!(before.get("process_start_time_seconds") > 1.7e9);
    assert!(before.series.contains_key("process_cpu_seconds_total"));
    // The fixed outcomes are there before anything happened.
    assert_eq!(
        before
            .series
            .get(r#"fs_upload_merges_total{outcome="failed"}"#),
        Some(&0.0)
    );
    assert_eq!(
        before
            .series
            .get(r#"fs_image_slims_total{status="no_space"}"#),
        Some(&0.0)
    );
}

/// After [`exercise`]: the upload lifecycle, the checks and where qemu-img read the images.
fn lifecycle_and_checks_are_counted(m: &Scrape, b: Backend) {
    let t = &m.text;
    assert_eq!(m.get("fs_image_uploads_total"), 1.0, "{t}");
    assert_eq!(m.get("fs_upload_sessions_opened_total"), 2.0, "{t}");
    assert_eq!(m.get("fs_upload_chunks_received_total"), 4.0, "{t}");
    assert_eq!(m.get("fs_upload_sessions_cancelled_total"), 1.0, "{t}");
    assert_eq!(m.get("fs_upload_sessions_expired_total"), 0.0, "{t}");
    for (outcome, n) in [("completed", 1.0), ("missing_chunks", 1.0), ("failed", 0.0)] {
        let s = format!(r#"fs_upload_merges_total{{outcome="{outcome}"}}"#);
        assert_eq!(m.get(&s), n, "{s}\n{t}");
    }
    // The qcow2 checks consistent; a raw image is not a checked type.
    assert_eq!(
        m.get(r#"fs_image_checks_total{status="consistent"}"#),
        1.0,
        "{t}"
    );
    assert_eq!(
        m.get(r#"fs_image_checks_total{status="not_checked_type"}"#),
        1.0,
        "{t}"
    );
    // qemu-img read both where they are stored: the local store's file, or an NBD export of
    // the S3 object; never a scratch copy.
    let via = if b.is_s3() { "nbd" } else { "file" };
    assert_eq!(
        m.get(&format!(r#"fs_image_reads_total{{via="{via}"}}"#)),
        2.0,
        "{t}"
    );
    assert_eq!(m.get(r#"fs_image_reads_total{via="copy"}"#), 0.0, "{t}");
}

/// After [`exercise`]: store calls, whichever backend.
fn store_calls_are_counted(m: &Scrape) {
    let t = &m.text;
    // Store calls, whichever backend: one multipart upload per session, one part per chunk.
    let ops = |op: &str, outcome: &str| {
        m.get(&format!(
            r#"fs_store_operations_total{{operation="{op}",outcome="{outcome}"}}"#
        ))
    };
    assert_eq!(ops("create_multipart", "ok"), 2.0, "{t}");
    assert_eq!(ops("upload_part", "ok"), 4.0, "{t}");
    assert_eq!(ops("complete_multipart", "ok"), 1.0, "{t}");
    assert_eq!(ops("abort_multipart", "ok"), 1.0, "{t}");
    assert!(ops("put", "ok") >= 1.0, "{t}");
    assert!(ops("get", "ok") >= 1.0, "{t}");
    assert_eq!(
        m.get(r#"fs_store_operation_duration_seconds_count{operation="upload_part",outcome="ok"}"#),
        4.0,
        "{t}"
    );
    assert!(
        m.get(r#"fs_store_operation_duration_seconds_sum{operation="upload_part",outcome="ok"}"#)
            > 0.0,
        "{t}"
    );
}

/// A refused slim is counted, and scratch bytes follow the files in scratch.
async fn refused_slims_and_scratch_are_measured(app: &TestApp) {
    // A slim refused at once (a raw image) counts as a slim that ended unsupported.
    let raw = app.upload_ok("refused.img", pattern(6, 1000)).await;
    crate::checks::wait_checked(app, &raw).await;
    let r = app.slim(&raw).await;
    assert_eq!(r.status(), 400);
    let m = scrape(&app.client, &app.base).await;
    let unsupported = r#"fs_image_slims_total{status="unsupported"}"#;
    assert_eq!(m.get(unsupported), 1.0, "{}", m.text);

    // Scratch bytes are measured at each scrape: a file appears in them, and leaves with it.
    let base = m.get("fs_scratch_bytes");
    let file = app.scratch.join("metrics-probe.bin");
    std::fs::write(&file, pattern(5, 1 << 20)).unwrap();
    let with = scrape(&app.client, &app.base).await.get("fs_scratch_bytes");
    assert!(with >= base + (1 << 20) as f64, "{base} -> {with}");
    std::fs::remove_file(&file).unwrap();
    let without = scrape(&app.client, &app.base).await.get("fs_scratch_bytes");
    assert!(without <= with - (1 << 20) as f64, "{with} -> {without}");
}

/// PromQL keywords: never metric names.
const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
];
/// PromQL aggregation operators.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Every metric name a PromQL expression reads: identifiers that are not functions,
/// aggregations, keywords, label names or Grafana variables.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        // Label matchers, ranges and strings hold no metric names.
        let close = match c {
            '{' => Some('}'),
            '[' => Some(']'),
            '"' | '\'' => Some(c),
            _ => None,
        };
        if let Some(close) = close {
            i = past_enclosed(&chars, i + 1, close);
            continue;
        }
        if c == '$' || c.is_ascii_digit() {
            // A Grafana variable or a number (with its exponent or unit letters).
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_.".contains(chars[i])) {
                i += 1;
            }
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j] == ' ' {
                j += 1;
            }
            let called = chars.get(j) == Some(&'(');
            if AGGREGATIONS.contains(&word.as_str()) {
                // `sum by (route) (...)` as well as `sum(...) by (route)`.
                continue;
            }
            if KEYWORDS.contains(&word.as_str()) {
                if called && word != "bool" {
                    // `by (le, route)`, `on (instance)`: label names, skipped.
                    while i < chars.len() && chars[i] != ')' {
                        i += 1;
                    }
                }
                continue;
            }
            if !called {
                names.insert(word);
            }
            continue;
        }
        i += 1;
    }
    names
}

/// The index after the `close` that ends what starts at `i` (a label matcher, a range or a
/// string), skipping quoted text (with its escapes) inside it.
fn past_enclosed(chars: &[char], mut i: usize, close: char) -> usize {
    let mut quoted: Option<char> = None;
    while i < chars.len() {
        match (quoted, chars[i]) {
            (Some(_), '\\') => i += 1,
            (Some(q), ch) if ch == q => quoted = None,
            (None, ch) if ch == close => break,
            (None, ch @ ('"' | '\'')) if close != ch => quoted = Some(ch),
            _ => {}
        }
        i += 1;
    }
    i + 1
}

/// Every PromQL expression of a dashboard: the panels' targets (rows' nested panels too) and
/// the query variables' `label_values(metric, label)`.
fn dashboard_queries(dash: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                for (k, v) in o {
                    match (k.as_str(), v) {
                        ("expr", Value::String(s)) => out.push(s.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = vec![];
    walk(&dash["panels"], &mut out);
    for var in dash["templating"]["list"].as_array().unwrap() {
        if var["type"] == "query" {
            let q = var["query"]["query"].as_str().or(var["query"].as_str());
            let q = q.expect("a query variable has a query");
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|r| r.strip_suffix(')'))
                .unwrap_or_else(|| panic!("unexpected variable query {q}"));
            out.push(inner.split(',').next().unwrap().to_string());
        }
    }
    out
}

fn dashboard() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/file-system.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn promql_metric_names_are_found() {
    let expr = r#"histogram_quantile(0.95, sum by (le, route) (rate(a_bucket{job=~"$job",route="/x/{id}"}[$__rate_interval]))) / on (instance) group_left b_total{s="a,b"} * 1e3 + time() - c:rule"#;
    let want = BTreeSet::from(["a_bucket", "b_total", "c:rule"].map(String::from));
    assert_eq!(metric_names(expr), want);
    assert_eq!(
        metric_names("sum(rate(x_total[5m])) without (instance) + count by (a) (y)"),
        BTreeSet::from(["x_total", "y"].map(String::from))
    );
    assert_eq!(
        metric_names("max by (kind, state) (fs_jobs{job=~\"$job\"}) > bool 0"),
        BTreeSet::from(["fs_jobs".to_string()])
    );
}

/// The dashboard in `deploy/grafana` queries only metrics a running service exports, through
/// the `${datasource}` variable.
async fn dashboard_queries_exported_metrics(b: Backend) {
    let dash = dashboard();
    let vars = dash["templating"]["list"].as_array().unwrap();
    assert!(
        vars.iter()
            .any(|v| v["name"] == "datasource" && v["type"] == "datasource"),
        "no datasource variable"
    );
    let text = dash.to_string();
    assert!(
        !text.contains(r#""uid":"prometheus""#),
        "a fixed data source"
    );
    let queries = dashboard_queries(&dash);
    let queried: BTreeSet<String> = queries.iter().flat_map(|q| metric_names(q)).collect();
    // Each area of the dashboard is there.
    for expected in [
        "fs_http_requests_total",
        "fs_http_request_duration_seconds_bucket",
        "fs_http_sent_bytes_total",
        "fs_store_operations_total",
        "fs_store_operation_duration_seconds_bucket",
        "fs_upload_merges_total",
        "fs_jobs",
        "fs_image_checks_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "fs_scratch_bytes",
        "fs_build_info",
    ] {
        assert!(queried.contains(expected), "{expected} not queried");
    }

    let app = TestApp::spawn(b, Options::default()).await;
    exercise(&app).await;
    let exported = scrape(&app.client, &app.base).await.names();
    let missing: Vec<_> = queried.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics the service does not export: {missing:?}\nexported: {exported:?}"
    );
    app.stop().await;
}

crate::backend_tests!(
    metrics_count_store_calls_uploads_checks_and_the_process,
    dashboard_queries_exported_metrics
);

/// The access-log line of the request whose path ends with `path_end` and whose `complete`
/// field is `complete`, waiting for it to be written.
async fn access_line(log: &std::path::Path, path_end: &str, complete: bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(log).unwrap();
        let found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| {
                v["message"] == "finished processing request"
                    && v["complete"] == complete
                    && v["span"]["path"]
                        .as_str()
                        .is_some_and(|p| p.ends_with(path_end))
            });
        if let Some(v) = found {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "no access line for {path_end}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A download read slowly is logged and timed for as long as its body took, not until its
/// headers went out; one the client drops half way is logged (as incomplete) when it is
/// dropped. Only lower bounds are asserted.
async fn slow_download_latency_covers_the_body(b: Backend) {
    use futures::StreamExt;
    let app = TestApp::config_only(b).await;
    let log = app.dir.path().join("server.log");
    let server = Replica::start(&app.vars, free_port(), &log, &[("FS_LOG_FORMAT", "json")]).await;
    const MIB: usize = 1 << 20;
    let size = 80 * MIB;
    let id = upload_to(&app.client, &server, "slow.img", pattern(11, size)).await;
    let path = format!("/images/{id}/action/download");

    let r = app.client.get(server.api(&path)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // From here the server has started answering. It cannot have finished before the client
    // read all but what the socket buffers and the layers in between can hold (well below
    // 48 MiB here: 32 MiB of receive buffer at most, 4 MiB of send buffer).
    let headers_at = Instant::now();
    let in_flight_bound = 48 * MIB;
    let mut read = 0;
    let mut paced = 0;
    let mut lower_bound = None;
    let mut body = r.bytes_stream();
    while let Some(chunk) = body.next().await {
        read += chunk.unwrap().len();
        if lower_bound.is_none() && read >= size - in_flight_bound {
            lower_bound = Some(headers_at.elapsed());
        }
        // About 20 MiB/s: 100 ms per 2 MiB.
        while paced + 2 * MIB <= read {
            paced += 2 * MIB;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(read, size);
    let lower_bound = lower_bound.unwrap();
    // 32 MiB read at that pace: the pauses after the first 30 MiB (1.5 s) at least; the
    // bound is far above what logging at the headers would show (0 ms).
    assert!(
        lower_bound >= Duration::from_millis(1200),
        "{lower_bound:?}"
    );

    let line = access_line(&log, &path, true).await;
    let logged = line["latency_ms"].as_u64().expect("latency_ms is a number");
    assert!(
        logged >= lower_bound.as_millis() as u64,
        "logged {logged} ms, the body took at least {lower_bound:?}: {line}"
    );
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["sent_bytes"], size as u64, "{line}");
    let m = scrape(&app.client, &server.base).await;
    let seconds = m.get(&format!(
        r#"fs_http_request_duration_seconds_sum{{method="GET",route="{API}/images/{{image_id}}/action/download",status="200"}}"#
    ));
    assert!(
        seconds >= lower_bound.as_secs_f64(),
        "recorded {seconds} s, the body took at least {lower_bound:?}"
    );

    dropped_download_is_logged(&app.client, &server, &path, &log, size).await;
    drop(server);
    app.stop().await;
}

/// A client that reads a little of `path`, waits and goes away: the download is logged as
/// incomplete, for as long as the client held it.
async fn dropped_download_is_logged(
    client: &reqwest::Client,
    server: &Replica,
    path: &str,
    log: &std::path::Path,
    size: usize,
) {
    use futures::StreamExt;
    const MIB: usize = 1 << 20;
    let r = client.get(server.api(path)).send().await.unwrap();
    let headers_at = Instant::now();
    let mut body = r.bytes_stream();
    let mut read = 0;
    while read < 4 * MIB {
        read += body.next().await.unwrap().unwrap().len();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = headers_at.elapsed();
    drop(body);
    let line = access_line(log, path, false).await;
    let logged = line["latency_ms"].as_u64().unwrap();
    assert!(
        logged >= held.as_millis() as u64,
        "logged {logged} ms, the client held the download {held:?}: {line}"
    );
    assert!(line["sent_bytes"].as_u64().unwrap() < size as u64, "{line}");
}

/// `POST /images` of `bytes` named `name` to `server`; the new image's id.
async fn upload_to(
    client: &reqwest::Client,
    server: &Replica,
    name: &str,
    bytes: Vec<u8>,
) -> String {
    let r = client
        .post(server.api("/images"))
        .multipart(reqwest::multipart::Form::new().text("userId", "u").part(
            "file",
            reqwest::multipart::Part::bytes(bytes).file_name(name.to_string()),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.unwrap()["imageId"]
        .as_str()
        .unwrap()
        .to_string()
}

mod slow_download {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_local() {
        super::slow_download_latency_covers_the_body(crate::helpers::Backend::SqliteLocal).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_s3() {
        super::slow_download_latency_covers_the_body(crate::helpers::Backend::PostgresS3).await
    }
}
