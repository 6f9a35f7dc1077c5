//! The command line and configuration as an operator meets them: subcommands, `--version`,
//! `--help`, refused arguments, settings errors that name the variable, a database that is
//! not there, `.env`, `check-config` and the start-up summary. The real binary, every time.

use crate::helpers::free_port;
use std::{
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

/// The binary in `dir` with only `vars` set (and PATH, for qemu-img).
fn file_system(dir: &Path, args: &[&str], vars: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_file-system"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(vars.iter().copied())
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Settings of a service kept entirely in `dir`, listening on a port of its own (tests run at
/// once: two on the default port would stop each other).
fn local(dir: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("FS_LISTEN", "127.0.0.1:0".to_string()),
        ("FS_DATA_DIR", dir.join("data").display().to_string()),
        (
            "FS_LOCAL_DIR",
            dir.join("data/objects").display().to_string(),
        ),
        (
            "FS_SCRATCH_DIR",
            dir.join("data/scratch").display().to_string(),
        ),
    ]
}

fn with<'a>(
    base: &'a [(&'static str, String)],
    more: &[(&'static str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    base.iter()
        .map(|(k, v)| (*k, v.as_str()))
        .chain(more.iter().copied())
        .collect()
}

#[test]
fn version_help_and_unknown_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let out = file_system(dir.path(), &["--version"], &[]);
    assert!(out.status.success());
    let v = String::from_utf8_lossy(&out.stdout);
    assert!(
        v.starts_with(&format!("file-system {} (", env!("CARGO_PKG_VERSION"))),
        "{v}"
    );
    let out = file_system(dir.path(), &["--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in ["serve", "migrate", "imageops", "check-config"] {
        assert!(help.contains(cmd), "{cmd} missing from {help}");
    }
    for cmd in ["serve", "migrate", "imageops", "check-config"] {
        let out = file_system(dir.path(), &[cmd, "--help"], &[]);
        assert!(out.status.success(), "{cmd} --help: {}", text(&out));
    }
    for args in [&["--bogus"][..], &["frobnicate"], &["serve", "extra"]] {
        let out = file_system(dir.path(), args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains("error:"), "{args:?}: {}", text(&out));
    }
}

#[test]
fn every_bad_setting_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = file_system(
        dir.path(),
        &[],
        &[
            ("FS_STORAGE", "s4"),
            ("FS_LISTEN", "garbage"),
            ("FS_MAX_IMAGE_BYTES", "500 gigs"),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let t = text(&out);
    for name in [
        "FS_STORAGE=\"s4\"",
        "FS_LISTEN=\"garbage\"",
        "FS_MAX_IMAGE_BYTES=\"500 gigs\"",
    ] {
        assert!(t.contains(name), "{name} missing: {t}");
    }
    assert!(
        !dir.path().join("data").exists(),
        "a refused start created files"
    );
}

#[test]
fn a_closed_database_port_fails_within_seconds_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().to_string();
    let url = format!("postgres://fs:S3cretPw@127.0.0.1:{port}/fs");
    let base = local(dir.path());
    let listen = format!("127.0.0.1:{}", free_port());
    for cmd in ["serve", "migrate"] {
        let started = Instant::now();
        let out = file_system(
            dir.path(),
            &[cmd],
            &with(&base, &[("DATABASE_URL", &url), ("FS_LISTEN", &listen)]),
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{cmd}: {:?}",
            started.elapsed()
        );
        assert!(!out.status.success());
        let t = text(&out);
        assert!(t.contains(&format!("127.0.0.1:{port}")), "{cmd}: {t}");
        assert!(!t.contains("S3cretPw"), "{cmd}: {t}");
    }
}

#[test]
fn a_relative_sqlite_file_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let out = file_system(
        dir.path(),
        &["migrate"],
        &[("DATABASE_URL", "sqlite://./my.db")],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(dir.path().join("my.db").is_file());
}

#[test]
fn dotenv_is_read_from_the_working_directory_only_and_said() {
    let dir = tempfile::tempdir().unwrap();
    let child = dir.path().join("child");
    std::fs::create_dir_all(&child).unwrap();
    let base = local(dir.path());
    std::fs::write(dir.path().join(".env"), "FS_MAX_IMAGE_BYTES=2GiB\n").unwrap();
    // In the directory that has it: read, and the log says so.
    let out = file_system(dir.path(), &["check-config"], &with(&base, &[]));
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("settings read from .env"), "{t}");
    assert!(t.contains("max image size: 2 GiB"), "{t}");
    // In a directory below it: not read.
    let out = file_system(&child, &["check-config"], &with(&base, &[]));
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(!t.contains("settings read from .env"), "{t}");
    assert!(t.contains("max image size: 500 GiB"), "{t}");
}

#[test]
fn check_config_lists_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let base = local(dir.path());
    let out = file_system(dir.path(), &["check-config"], &with(&base, &[]));
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    for line in [
        "version: ",
        "database: sqlite://",
        "store: local directory",
        "configuration OK",
    ] {
        assert!(t.contains(line), "{line:?} missing: {t}");
    }
    let db = format!("postgres://fs:S3cretPw@127.0.0.1:{}/fs", free_port());
    let s3 = format!("http://127.0.0.1:{}", free_port());
    let imageops = format!("http://127.0.0.1:{}", free_port());
    let out = file_system(
        dir.path(),
        &["check-config"],
        &with(
            &base,
            &[
                ("DATABASE_URL", &db),
                ("FS_STORAGE", "s3"),
                ("FS_S3_ENDPOINT", &s3),
                ("FS_S3_REGION", "r"),
                ("AWS_ACCESS_KEY_ID", "k"),
                ("AWS_SECRET_ACCESS_KEY", "s"),
                ("FS_IMAGEOPS_URL", &imageops),
            ],
        ),
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("3 problem(s)"), "{t}");
    assert!(
        t.contains(&format!("  - imageops sidecar {imageops} does not answer")),
        "{t}"
    );
    assert!(
        t.contains("  - database: cannot reach PostgreSQL at 127.0.0.1:"),
        "{t}"
    );
    assert!(t.contains("  - store: bucket images"), "{t}");
    assert!(!t.contains("S3cretPw"), "{t}");
}

/// `FS_LISTEN` takes a host name; the start logs the summary an operator needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_on_a_host_name_and_logs_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = dir.path().join("server.log");
    let f = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_file-system"))
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(local(dir.path()))
        .env("FS_LISTEN", format!("localhost:{port}"))
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let url = format!("http://127.0.0.1:{port}/health");
    while reqwest::get(&url).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "{}",
            std::fs::read_to_string(&log).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let t = std::fs::read_to_string(&log).unwrap();
    for what in [
        "version",
        "database",
        "store",
        "scratch",
        "max image size",
        "job concurrency",
        "auth",
        "qemu-img",
    ] {
        assert!(
            t.contains(&format!("setting={what} ")) || t.contains(&format!("setting=\"{what}\"")),
            "{what} missing from the summary: {t}"
        );
    }
    assert!(
        !t.contains("\u{1b}["),
        "colour codes in a log that is not a terminal"
    );
}

#[test]
fn settings_out_of_range_secrets_and_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let base = local(dir.path());
    // Values a semaphore or a worker pool cannot take are refused up front, with the range.
    let out = file_system(
        dir.path(),
        &["check-config"],
        &with(
            &base,
            &[
                ("FS_UPLOAD_CONCURRENCY", "18446744073709551615"),
                ("FS_JOB_CONCURRENCY", "100000"),
                ("FS_S3_PART_BYTES", "10GiB"),
                ("FS_S3_ENDPOINT", "notaurl"),
                ("DATABASE_URL", "mysql://u:S3cretPw@h/db"),
            ],
        ),
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    for expected in [
        "FS_UPLOAD_CONCURRENCY=\"18446744073709551615\" is not valid: expected a whole number from 1 to 100000",
        "FS_JOB_CONCURRENCY=\"100000\" is not valid: expected a whole number from 0 to 1024",
        "FS_S3_PART_BYTES=\"10GiB\" is not valid: expected a size of at most",
        "FS_S3_ENDPOINT=\"notaurl\" is not valid: expected an http:// or https:// URL",
        "DATABASE_URL is not valid",
    ] {
        assert!(t.contains(expected), "{expected:?} missing: {t}");
    }
    assert!(!t.contains("S3cretPw"), "{t}");
    // A password in the query is hidden in the summary.
    let url = format!(
        "postgres://u@127.0.0.1:{}/db?password=QuerySecret",
        free_port()
    );
    let out = file_system(
        dir.path(),
        &["check-config"],
        &with(&base, &[("DATABASE_URL", &url)]),
    );
    let t = text(&out);
    assert!(t.contains("password=***"), "{t}");
    assert!(!t.contains("QuerySecret"), "{t}");
    // A .env line that cannot be parsed is named by number and variable, not shown.
    std::fs::write(
        dir.path().join(".env"),
        "FS_LISTEN=127.0.0.1:1\nPOSTGRES_PASSWORD=hunter 2 secret\n",
    )
    .unwrap();
    let out = file_system(dir.path(), &["check-config"], &with(&base, &[]));
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("line 2 (POSTGRES_PASSWORD) cannot be parsed"),
        "{t}"
    );
    assert!(!t.contains("hunter"), "{t}");
    // A line without `=` is all value after its name: `KEY: secret`, `KEY secret`.
    for line in [
        "AWS_SECRET_ACCESS_KEY: s3cr3tpw",
        "DATABASE_URL postgres://u:s3cr3tpw@h/db",
    ] {
        std::fs::write(dir.path().join(".env"), format!("{line}\n")).unwrap();
        let out = file_system(dir.path(), &["check-config"], &with(&base, &[]));
        let t = text(&out);
        assert_eq!(out.status.code(), Some(1), "{t}");
        let name = line.split([':', ' ']).next().unwrap();
        assert!(t.contains(&format!("line 1 ({name}) cannot")), "{t}");
        assert!(!t.contains("s3cr3tpw"), "{t}");
    }
    std::fs::remove_file(dir.path().join(".env")).unwrap();
    fatal_errors_follow_the_log_format(dir.path(), &base);
}

/// With JSON logs, fatal errors are JSON too: a bad setting, and a start that fails.
fn fatal_errors_follow_the_log_format(dir: &Path, base: &[(&'static str, String)]) {
    let out = file_system(
        dir,
        &[],
        &with(base, &[("FS_LOG_FORMAT", "json"), ("FS_STORAGE", "s4")]),
    );
    assert_eq!(out.status.code(), Some(2));
    let url = format!("postgres://u:pw@127.0.0.1:{}/db", free_port());
    let failed = file_system(
        dir,
        &[],
        &with(base, &[("FS_LOG_FORMAT", "json"), ("DATABASE_URL", &url)]),
    );
    assert_eq!(failed.status.code(), Some(1));
    for out in [out, failed] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.trim().is_empty());
        for line in stderr.lines() {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            assert_eq!(v["level"], "ERROR", "{line}");
        }
    }
}

/// `check-config` against a real Garage, each S3 problem in a short line naming its cause.
#[test]
fn check_config_names_s3_problems_in_short_lines() {
    let (endpoint, region) = crate::helpers::s3_env();
    let key = std::env::var("AWS_ACCESS_KEY_ID").unwrap();
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let base = local(dir.path());
    let missing = format!("0=missing-{}", free_port());
    let unreachable = format!("http://127.0.0.1:{}", free_port());
    let run = |args: &[&str], more: &[(&'static str, &str)]| {
        let mut vars = vec![
            ("FS_STORAGE", "s3"),
            ("FS_TIERS", missing.as_str()),
            ("AWS_ACCESS_KEY_ID", key.as_str()),
        ];
        vars.extend_from_slice(more);
        let out = file_system(dir.path(), args, &with(&base, &vars));
        let t = text(&out);
        assert_eq!(out.status.code(), Some(1), "{t}");
        for line in t.lines() {
            assert!(line.chars().count() < 300, "a long line: {line}");
        }
        assert!(
            !t.contains("StatusCode(") && !t.contains("raw: Response"),
            "{t}"
        );
        t
    };
    let unreachable_at = format!("cannot reach S3 at {unreachable}");
    let no_bucket = format!("bucket {} does not exist", &missing[2..]);
    // (endpoint, region, secret), what the message must say.
    let cases = [
        (
            (endpoint.as_str(), region.as_str(), "wrong-secret"),
            vec!["S3 403", "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"],
        ),
        (
            (endpoint.as_str(), "wrong-region", secret.as_str()),
            vec!["FS_S3_REGION"],
        ),
        (
            (unreachable.as_str(), region.as_str(), secret.as_str()),
            vec![unreachable_at.as_str(), "Connection refused"],
        ),
        (
            (endpoint.as_str(), region.as_str(), secret.as_str()),
            vec![no_bucket.as_str(), "`serve` creates it"],
        ),
    ];
    for (n, ((ep, reg, sec), expected)) in cases.into_iter().enumerate() {
        let vars = [
            ("FS_S3_ENDPOINT", ep),
            ("FS_S3_REGION", reg),
            ("AWS_SECRET_ACCESS_KEY", sec),
        ];
        // `serve` stops at start-up on the same problems, each said once (the last case's
        // bucket it would create, and serve).
        let commands: &[&[&str]] = match n {
            3 => &[&["check-config"]],
            _ => &[&["check-config"], &[]],
        };
        for args in commands {
            let t = run(args, &vars);
            for e in &expected {
                assert_eq!(
                    t.matches(e).count(),
                    1,
                    "{args:?}: {e:?} not said once: {t}"
                );
            }
        }
    }
}

/// An endpoint that is not an S3 API but answers 200 with a web page to everything (a store's
/// console port) is refused by `check-config` and at start: it kept nothing it was sent, while
/// uploads were answered 200 and `/ready` said the storage was fine.
#[test]
fn an_endpoint_that_is_not_s3_is_refused() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let page = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    let body = "<html><body>console</body></html>";
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if c.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let base = local(dir.path());
    let vars = [
        ("FS_STORAGE", "s3"),
        ("FS_S3_ENDPOINT", page.as_str()),
        ("FS_S3_REGION", "garage"),
        ("AWS_ACCESS_KEY_ID", "GKnot"),
        ("AWS_SECRET_ACCESS_KEY", "not-a-secret"),
    ];
    for args in [&["check-config"][..], &[]] {
        let out = file_system(dir.path(), args, &with(&base, &vars));
        let t = text(&out);
        assert_ne!(out.status.code(), Some(0), "{args:?}: {t}");
        assert!(t.contains(&page), "{args:?}: {t}");
    }
}

/// An endpoint that takes connections and never answers (a dead route, a hung gateway):
/// `serve` gives up at start-up within seconds, naming it, instead of waiting for the data
/// calls' retries (minutes); `check-config` likewise.
#[test]
fn a_silent_endpoint_is_reported_at_start() {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let base = local(dir.path());
    let vars = [
        ("FS_STORAGE", "s3"),
        ("FS_S3_ENDPOINT", silent.as_str()),
        ("FS_S3_REGION", "garage"),
        ("AWS_ACCESS_KEY_ID", "GKsilent"),
        ("AWS_SECRET_ACCESS_KEY", "not-a-secret"),
    ];
    for args in [&["check-config"][..], &[]] {
        let started = std::time::Instant::now();
        let out = file_system(dir.path(), args, &with(&base, &vars));
        let took = started.elapsed();
        let t = text(&out);
        assert_ne!(out.status.code(), Some(0), "{args:?}: {t}");
        assert!(t.contains("did not answer"), "{args:?}: {t}");
        assert!(
            took < std::time::Duration::from_secs(60),
            "{args:?} took {took:?}: {t}"
        );
    }
}

/// With an endpoint and no region, the SDK is not sent to the EC2 metadata service for one
/// (off EC2: a WARN and seconds lost at every start).
#[test]
fn an_endpoint_without_a_region_does_not_ask_imds() {
    let (endpoint, _) = crate::helpers::s3_env();
    let key = std::env::var("AWS_ACCESS_KEY_ID").unwrap();
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let base = local(dir.path());
    let out = file_system(
        dir.path(),
        &["check-config"],
        &with(
            &base,
            &[
                ("FS_STORAGE", "s3"),
                ("FS_S3_ENDPOINT", &endpoint),
                ("AWS_ACCESS_KEY_ID", &key),
                ("AWS_SECRET_ACCESS_KEY", &secret),
                ("RUST_LOG", "info"),
            ],
        ),
    );
    let t = text(&out);
    assert!(t.contains("store: S3 at"), "{t}");
    assert!(!t.to_ascii_lowercase().contains("imds"), "{t}");
}
