//! `cargo bench --bench throughput`: runs the real server binary and measures, in one run,
//! upload throughput against nginx's WebDAV PUT of the same bytes on the same disk (with
//! `dd conv=fsync` beside it), download throughput against a plain file copy, check and slim
//! against `md5sum` and a bare `qemu-img convert`, and the server's peak RSS during each
//! operation. Prints a table; asserts nothing.
//!
//! Sizes (MiB) come from `FS_BENCH_SIZES_MIB` (default `512,2048`); the work directory from
//! `FS_BENCH_DIR` (default: the system temp directory). With `FS_BENCH_FSCTL` naming an fsctl
//! binary (scripts/bench builds one), a client table compares `fsctl upload --parallel 4` and
//! `--parallel 1` with one `curl -F` POST of the same file (`FS_BENCH_CLIENT_MIB`, default 2048).
//! `FS_BENCH_ONLY` (a comma-separated list of `transfers`, `jobs`, `clients`; default all)
//! keeps only those rows: uploads and downloads, check and slim, the fsctl client rows.

#[path = "../tests/common/mod.rs"]
mod common;

use common::nginx::{Nginx, Site};
use file_system::storage::fileio::{read_stream, FileSink};
use futures::StreamExt;
use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

const MIB: u64 = 1 << 20;
const CHUNK: u64 = 50 * MIB;

struct Server {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Server {
    fn start(dir: &Path, extra: &[(String, String)]) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_file-system"))
            .env_clear()
            .envs(extra.iter().cloned())
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("FS_LISTEN", format!("127.0.0.1:{port}"))
            .env("FS_DATA_DIR", dir.join("data"))
            .env("FS_LOCAL_DIR", dir.join("data/objects"))
            .env("FS_SCRATCH_DIR", dir.join("data/scratch"))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::from(
                std::fs::File::create(dir.join("server.log")).unwrap(),
            ))
            .spawn()
            .expect("start server");
        let base = format!("http://127.0.0.1:{port}");
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Server {
                    child,
                    base,
                    log: dir.join("server.log"),
                };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
        panic!("server did not start");
    }

    fn status(&self, field: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = s.lines().find(|l| l.starts_with(field)).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    }

    /// Resets the peak-RSS counter to the current RSS.
    fn reset_peak(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5").unwrap();
    }

    /// CPU time (seconds) the server and the children it has reaped (qemu-img) have used.
    fn cpu_secs(&self) -> f64 {
        cpu_secs_of(self.child.id(), true)
    }

    fn peak_rss(&self) -> u64 {
        self.status("VmHWM:")
    }

    /// Fails with the response body and the end of the server log.
    async fn expect_ok(&self, r: reqwest::Response) -> reqwest::Response {
        if r.status() == 200 {
            return r;
        }
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        panic!(
            "{status}: {body}\nserver log:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }

    /// Waits until no check or slim job is queued or running (`fs_jobs` in `/metrics`, read
    /// fresh from the database on each scrape).
    async fn wait_idle(&self) {
        let url = format!("{}/metrics", self.base);
        for _ in 0..6000 {
            let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
            let busy = text.lines().any(|l| {
                l.starts_with("fs_jobs{")
                    && (l.contains("state=\"queued\"") || l.contains("state=\"running\""))
                    && !l.ends_with(" 0")
            });
            if !busy {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the server's jobs did not end in 10 minutes");
    }

    fn url(&self, p: &str) -> String {
        format!("{}/image-management/v1{p}", self.base)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn make_source(path: &Path, size: u64) {
    let mut f = std::fs::File::create(path).unwrap();
    let mut block = vec![0u8; MIB as usize];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for chunk in block.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    for i in 0..size / MIB {
        block[0..8].copy_from_slice(&i.to_le_bytes());
        f.write_all(&block).unwrap();
    }
    f.sync_all().unwrap();
}

/// CPU time (seconds) of process `pid` (`/proc/PID/stat`: utime + stime, and with `children`
/// cutime + cstime of the children it has waited for); 0 when it is gone.
fn cpu_secs_of(pid: u32, children: bool) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces) in parentheses.
    let fields: Vec<u64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .filter_map(|f| f.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    // utime, stime, cutime, cstime are fields 14-17 of stat(5): 11-14 after the state field.
    let field = |i: usize| fields.get(i).copied().unwrap_or(0);
    let ticks = field(10) + field(11) + if children { field(12) + field(13) } else { 0 };
    ticks as f64 / 100.0
}

/// The throw-away Garage's process (`scripts/bench` exports its configuration), so that the
/// store's CPU time shows beside the service's: on one machine they share the cores.
fn store_pid() -> Option<u32> {
    let config = std::env::var("FS_TEST_GARAGE_CONFIG").ok()?;
    let out = Command::new("pgrep")
        .args(["-f", &format!("garage -c {config} server")])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Plain file copy, 1 MiB at a time, optionally synced: the baseline.
fn copy_file(src: &Path, dst: &Path, sync: bool) -> Duration {
    let t = Instant::now();
    let mut i = std::fs::File::open(src).unwrap();
    let mut o = std::fs::File::create(dst).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    loop {
        let n = i.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        o.write_all(&buf[..n]).unwrap();
    }
    if sync {
        o.sync_all().unwrap();
    }
    let d = t.elapsed();
    std::fs::remove_file(dst).unwrap();
    d
}

async fn upload(client: &reqwest::Client, srv: &Server, src: &Path, size: u64) -> String {
    upload_named(client, srv, src, size, "bench.img").await
}

async fn upload_named(
    client: &reqwest::Client,
    srv: &Server,
    src: &Path,
    size: u64,
    name: &str,
) -> String {
    let file = std::fs::File::open(src).unwrap();
    let body = reqwest::Body::wrap_stream(read_stream(file, 0, size));
    let form = reqwest::multipart::Form::new()
        .text("userId", "bench")
        .text("priority", "0")
        .part(
            "file",
            reqwest::multipart::Part::stream_with_length(body, size).file_name(name.to_string()),
        );
    let r = srv
        .expect_ok(
            client
                .post(srv.url("/images"))
                .multipart(form)
                .send()
                .await
                .unwrap(),
        )
        .await;
    r.json::<serde_json::Value>().await.unwrap()["imageId"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Sends 50 MiB chunks one after another (as the existing clients do); returns the image id
/// and the merge time.
async fn chunked(
    client: &reqwest::Client,
    srv: &Server,
    src: &Path,
    size: u64,
    ident: &str,
) -> (String, Duration) {
    let mut n = 1;
    let mut off = 0;
    while off < size {
        let len = CHUNK.min(size - off);
        // Streamed from the file as the single POST is (not a 50 MiB buffer filled first, which
        // timed the client's reads and page faults into the chunked row).
        let file = std::fs::File::open(src).unwrap();
        let body = reqwest::Body::wrap_stream(read_stream(file, off, len));
        let form = reqwest::multipart::Form::new()
            .text("identifier", ident.to_string())
            .text("priority", "0")
            .part(
                "part",
                reqwest::multipart::Part::stream_with_length(body, len)
                    .file_name(format!("{n}.part")),
            );
        let r = client
            .post(srv.url("/images/upload"))
            .multipart(form)
            .send()
            .await
            .unwrap();
        srv.expect_ok(r).await;
        off += len;
        n += 1;
    }
    let t = Instant::now();
    let r = client
        .post(srv.url("/images/merge"))
        .form(&[
            ("identifier", ident),
            ("filename", "bench.img"),
            ("userId", "bench"),
            ("priority", "0"),
        ])
        .send()
        .await
        .unwrap();
    let r = srv.expect_ok(r).await;
    let merge = t.elapsed();
    let id = r.json::<serde_json::Value>().await.unwrap()["imageId"]
        .as_str()
        .unwrap()
        .to_string();
    (id, merge)
}

/// Downloads into `dst` (synced, like the baseline copy) or, without `dst`, discards the bytes.
async fn download(
    client: &reqwest::Client,
    srv: &Server,
    id: &str,
    zip: bool,
    dst: Option<&Path>,
) -> u64 {
    let q = if zip { "?isZip=true" } else { "" };
    let r = client
        .get(srv.url(&format!("/images/{id}/action/download{q}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The client writes the way the server does (batched, vectored), so it is not the bottleneck.
    let mut out = dst.map(|p| FileSink::new(std::fs::File::create(p).unwrap()));
    let mut s = r.bytes_stream();
    let mut n = 0;
    while let Some(c) = s.next().await {
        let c = c.unwrap();
        n += c.len() as u64;
        if let Some(o) = out.as_mut() {
            o.write(c).await.unwrap();
        }
    }
    if let (Some(o), Some(p)) = (out, dst) {
        o.finish(true).await.unwrap();
        std::fs::remove_file(p).unwrap();
    }
    n
}

/// Reads a file and discards it: the baseline for a discarded download.
fn read_file(src: &Path) -> Duration {
    let t = Instant::now();
    let mut i = std::fs::File::open(src).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    while i.read(&mut buf).unwrap() > 0 {}
    t.elapsed()
}

/// Flushes every dirty page first, so one measurement does not pay for the previous one's
/// writes. Before an upload (`warm`: its source file), also drops the clean page cache and reads
/// the source back in: every upload, baseline or service, then writes into the same amount of
/// free memory from a cached source. Without that, the runs late in the benchmark paid for
/// reclaiming the gigabytes the earlier ones left cached (on the 2-core test machine a 2 GiB
/// `dd` took 6.5 s with a full page cache and 2.6 s with an empty one).
fn settle(warm: Option<&Path>) {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    if let Some(src) = warm {
        drop_clean_pages();
        read_file(src);
    }
}

/// Drops the clean page cache ("1"); needs root, and without it every run starts as it finds
/// the cache.
fn drop_clean_pages() {
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "1");
}

/// Runs `op` three times, each once the server's background jobs are done (the check every
/// upload queues) and with dirty pages flushed (see [`settle`] for `warm`): the median time and
/// the highest server peak RSS.
async fn measure<F, Fut>(srv: &Server, warm: Option<&Path>, mut op: F) -> (f64, u64)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut times = vec![];
    let mut peak = 0;
    for _ in 0..3 {
        srv.wait_idle().await;
        settle(warm);
        srv.reset_peak();
        let t = Instant::now();
        op().await;
        times.push(t.elapsed().as_secs_f64());
        peak = peak.max(srv.peak_rss());
    }
    times.sort_by(f64::total_cmp);
    (times[1], peak)
}

/// Median of three runs (see [`settle`] for `warm`).
fn median3(warm: Option<&Path>, mut f: impl FnMut() -> Duration) -> f64 {
    let mut run = || {
        settle(warm);
        f().as_secs_f64()
    };
    let mut v = [run(), run(), run()];
    v.sort_by(f64::total_cmp);
    v[1]
}

struct Row {
    op: String,
    mib: u64,
    secs: f64,
    base_secs: f64,
    peak: u64,
    note: String,
}

fn mibs(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / MIB as f64 / secs
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let sizes: Vec<u64> = std::env::var("FS_BENCH_SIZES_MIB")
        .unwrap_or_else(|_| "512,2048".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("FS_BENCH_SIZES_MIB: comma-separated MiB")
        })
        .collect();
    let root: PathBuf = std::env::var("FS_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let dir = tempfile::tempdir_in(root).unwrap();
    let only = Only::from_env();
    let (idle, rows) = local_rows(dir.path(), &sizes, only).await;
    print_table(
        &format!("local store, SQLite; server idle RSS {:.1} MiB", idle as f64 / MIB as f64),
        "baseline: the same bytes copied file to file on the same disk, synced where the service syncs",
        &rows,
    );
    match std::env::var("FS_BENCH_FSCTL") {
        Ok(_) if !only.clients => {}
        Ok(fsctl) => {
            let rows = client_rows(dir.path(), Path::new(&fsctl)).await;
            print_table(
                "clients, local store, SQLite",
                "baseline: one `curl -F file=@...` POST /images of the same file",
                &rows,
            );
        }
        Err(_) => println!("\n(no client rows: FS_BENCH_FSCTL unset; scripts/bench builds fsctl)"),
    }
    match std::env::var("FS_TEST_S3_ENDPOINT") {
        Ok(endpoint) => {
            let rows = s3_rows(dir.path(), &sizes, &endpoint, only).await;
            print_table(
                "S3 store (Garage on loopback), SQLite",
                "baseline: the same bytes through aws-sdk-s3 directly (8 MiB parts, 4 in flight), same Garage",
                &rows,
            );
        }
        Err(_) => {
            println!("\n(no S3 rows: FS_TEST_S3_ENDPOINT unset; scripts/bench starts Garage)")
        }
    }
}

/// The rows a run measures (`FS_BENCH_ONLY`).
#[derive(Clone, Copy)]
struct Only {
    /// Uploads and downloads, with their baselines.
    transfers: bool,
    /// Check and slim.
    jobs: bool,
    /// The fsctl client rows.
    clients: bool,
}

impl Only {
    fn from_env() -> Only {
        let Ok(list) = std::env::var("FS_BENCH_ONLY") else {
            return Only {
                transfers: true,
                jobs: true,
                clients: true,
            };
        };
        let names: Vec<&str> = list.split(',').map(str::trim).collect();
        for n in &names {
            assert!(
                ["transfers", "jobs", "clients"].contains(n),
                "FS_BENCH_ONLY: transfers, jobs or clients, not {n:?}"
            );
        }
        Only {
            transfers: names.contains(&"transfers"),
            jobs: names.contains(&"jobs"),
            clients: names.contains(&"clients"),
        }
    }
}

fn print_table(title: &str, baseline: &str, rows: &[Row]) {
    println!("\nfile-system benchmark: {title}");
    println!("every row: median of 3 runs; {baseline}");
    println!("| operation | size MiB | time s | MiB/s | baseline MiB/s | ratio | server peak RSS MiB | note |");
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    for r in rows {
        let bytes = r.mib * MIB;
        println!(
            "| {} | {} | {:.2} | {:.0} | {:.0} | {:.2}x | {:.1} | {} |",
            r.op,
            r.mib,
            r.secs,
            mibs(bytes, r.secs),
            mibs(bytes, r.base_secs),
            r.base_secs / r.secs,
            r.peak as f64 / MIB as f64,
            r.note
        );
    }
}

async fn local_rows(dir: &Path, sizes: &[u64], only: Only) -> (u64, Vec<Row>) {
    let srv = Server::start(dir, &[]);
    let client = reqwest::Client::new();
    let idle = srv.status("VmRSS:");
    let mut rows = vec![];
    for &mib in sizes.iter().filter(|_| only.transfers) {
        let size = mib * MIB;
        let src = dir.join(format!("src-{mib}.bin"));
        make_source(&src, size);
        let dst = dir.join("copy.bin");
        let base_sync = median3(None, || copy_file(&src, &dst, true));
        let base_read = median3(None, || read_file(&src));

        let (webdav, dd) = plain_uploads(&srv, &client, dir, &src, size).await;
        for (op, secs, note) in [
            (
                "nginx WebDAV PUT",
                webdav,
                "the baseline of the uploads (not synced)",
            ),
            ("dd bs=1M conv=fsync", dd, "vs nginx WebDAV PUT"),
        ] {
            rows.push(Row {
                op: op.into(),
                mib,
                secs,
                base_secs: webdav,
                peak: 0,
                note: note.into(),
            });
        }
        let (upload_rows, ids) =
            upload_rows(&srv, &client, &src, mib, webdav, "vs nginx WebDAV PUT").await;
        rows.extend(upload_rows);
        let id = ids[0].clone();

        let bases = (base_sync, base_read);
        rows.extend(local_download_rows(&srv, &client, &id, mib, &dst, bases).await);

        for i in ids {
            client
                .delete(srv.url(&format!("/images/{i}")))
                .send()
                .await
                .unwrap();
        }
        std::fs::remove_file(&src).unwrap();
    }
    let largest = sizes.iter().copied().max().unwrap_or(512);
    if only.jobs {
        rows.extend(imageops_rows(&srv, &client, dir, largest, None).await);
    }
    (idle, rows)
}

/// The download rows of the local store for image `id` (`mib` MiB): to the file `dst` (synced),
/// plain and `isZip`, against a synced file copy, and discarded, against a read of the file;
/// `bases` holds these two baselines (seconds).
async fn local_download_rows(
    srv: &Server,
    client: &reqwest::Client,
    id: &str,
    mib: u64,
    dst: &Path,
    bases: (f64, f64),
) -> Vec<Row> {
    let (size, (base_sync, base_read)) = (mib * MIB, bases);
    let cases = [
        (
            "download to file",
            false,
            Some(dst),
            base_sync,
            "vs copy+fsync",
        ),
        (
            "download isZip to file",
            true,
            Some(dst),
            base_sync,
            "vs copy+fsync",
        ),
        (
            "download, discarded",
            false,
            None,
            base_read,
            "vs reading the file (page cache)",
        ),
    ];
    let mut rows = vec![];
    for (op, zip, to, base_secs, note) in cases {
        let (secs, peak) = measure(srv, None, || async move {
            let n = download(client, srv, id, zip, to).await;
            // A zip holds the image and its headers.
            assert!(if zip { n > size } else { n == size });
        })
        .await;
        rows.push(Row {
            op: op.into(),
            mib,
            secs,
            base_secs,
            peak,
            note: note.into(),
        });
    }
    rows
}

fn s3_env(endpoint: &str, prefix: &str) -> Vec<(String, String)> {
    let mut v = vec![
        ("FS_STORAGE".to_string(), "s3".to_string()),
        ("FS_S3_ENDPOINT".into(), endpoint.to_string()),
        ("FS_S3_KEY_PREFIX".into(), prefix.to_string()),
        ("FS_TIERS".into(), "0=bench".into()),
    ];
    for k in [
        "FS_TEST_S3_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ] {
        let name = if k == "FS_TEST_S3_REGION" {
            "FS_S3_REGION"
        } else {
            k
        };
        v.push((name.to_string(), std::env::var(k).unwrap_or_default()));
    }
    v
}

/// A direct aws-sdk-s3 client for the baseline, configured like the service's.
async fn sdk_client(endpoint: &str) -> aws_sdk_s3::Client {
    let settings = file_system::storage::S3Settings {
        endpoint: Some(endpoint.to_string()),
        region: std::env::var("FS_TEST_S3_REGION").ok(),
        force_path_style: true,
        min_part_bytes: 5 * MIB,
        part_bytes: 8 * MIB,
        upload_concurrency: 4,
        readahead_bytes: 128 << 20,
        key_prefix: String::new(),
        spool_dir: std::env::temp_dir(),
        checksum: Default::default(),
    };
    file_system::storage::S3Store::new(settings)
        .await
        .unwrap()
        .client()
        .clone()
}

/// The baseline upload: a multipart upload of the file in 8 MiB parts, 4 in flight.
async fn sdk_upload(c: &aws_sdk_s3::Client, src: &Path, key: &str) {
    use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
    use std::os::unix::fs::FileExt;
    let up = c
        .create_multipart_upload()
        .bucket("bench")
        .key(key)
        .send()
        .await
        .unwrap();
    let id = up.upload_id().unwrap().to_string();
    let file = Arc::new(std::fs::File::open(src).unwrap());
    let size = file.metadata().unwrap().len();
    let part = 8 * MIB;
    let slots = Arc::new(tokio::sync::Semaphore::new(4));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, off) in (0..size).step_by(part as usize).enumerate() {
        let permit = slots.clone().acquire_owned().await.unwrap();
        let (c, id, key, file) = (c.clone(), id.clone(), key.to_string(), file.clone());
        tasks.spawn(async move {
            let len = part.min(size - off) as usize;
            let buf = tokio::task::spawn_blocking(move || {
                let mut b = vec![0u8; len];
                file.read_exact_at(&mut b, off).unwrap();
                b
            })
            .await
            .unwrap();
            let out = c
                .upload_part()
                .bucket("bench")
                .key(key)
                .upload_id(id)
                .part_number(i as i32 + 1)
                .body(buf.into())
                .send()
                .await
                .unwrap();
            drop(permit);
            CompletedPart::builder()
                .part_number(i as i32 + 1)
                .set_e_tag(out.e_tag)
                .build()
        });
    }
    let mut parts = tasks.join_all().await;
    parts.sort_by_key(|p| p.part_number());
    c.complete_multipart_upload()
        .bucket("bench")
        .key(key)
        .upload_id(id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .unwrap();
}

async fn sdk_download(c: &aws_sdk_s3::Client, key: &str) -> u64 {
    let mut body = c
        .get_object()
        .bucket("bench")
        .key(key)
        .send()
        .await
        .unwrap()
        .body;
    let mut n = 0;
    while let Some(b) = body.next().await {
        n += b.unwrap().len() as u64;
    }
    n
}

/// boto3's `download_file` of `key` in the bench bucket into `dst` (its default transfer
/// settings: 8 MiB ranges, 10 at once), written and closed like the service's downloads.
fn boto3_download(endpoint: &str, key: &str, dst: &Path) {
    let script = "import boto3, os, sys\n\
        s3 = boto3.client('s3', endpoint_url=sys.argv[1], region_name=os.environ.get('FS_TEST_S3_REGION'))\n\
        s3.download_file('bench', sys.argv[2], sys.argv[3])\n\
        f = os.open(sys.argv[3], os.O_RDONLY); os.fsync(f); os.close(f)\n";
    let out = std::process::Command::new("python3")
        .args(["-c", script, endpoint, key])
        .arg(dst)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "boto3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn s3_rows(dir: &Path, sizes: &[u64], endpoint: &str, only: Only) -> Vec<Row> {
    let prefix = format!("bench-{}/", std::process::id());
    std::fs::create_dir_all(dir.join("s3")).unwrap();
    let srv = Server::start(&dir.join("s3"), &s3_env(endpoint, &prefix));
    let client = reqwest::Client::new();
    let sdk = sdk_client(endpoint).await;
    let mut rows = vec![];
    for &mib in sizes.iter().filter(|_| only.transfers) {
        let size = mib * MIB;
        let src = dir.join(format!("src-{mib}.bin"));
        make_source(&src, size);
        let key = format!("{prefix}direct-{mib}");
        let (base_up, _) = measure(&srv, Some(&src), || sdk_upload(&sdk, &src, &key)).await;
        let (base_down, _) = measure(&srv, None, || async {
            assert_eq!(sdk_download(&sdk, &key).await, size);
        })
        .await;
        sdk.delete_object()
            .bucket("bench")
            .key(&key)
            .send()
            .await
            .unwrap();

        let (upload_rows, ids) =
            upload_rows(&srv, &client, &src, mib, base_up, "vs SDK multipart upload").await;
        rows.extend(upload_rows);
        let id = ids[0].clone();

        let stored = format!("{prefix}images/{id}");
        let to = (endpoint, stored.as_str(), dir);
        rows.extend(s3_download_rows(&srv, &client, &id, mib, to, base_down).await);

        for i in ids {
            client
                .delete(srv.url(&format!("/images/{i}")))
                .send()
                .await
                .unwrap();
        }
        std::fs::remove_file(&src).unwrap();
    }
    let largest = sizes.iter().copied().max().unwrap_or(512);
    if only.jobs {
        let s3 = S3Steps {
            sdk: &sdk,
            endpoint,
            prefix: &prefix,
        };
        rows.extend(imageops_rows(&srv, &client, dir, largest, Some(&s3)).await);
    }
    rows
}

/// The download rows of the S3 store for image `id` (`mib` MiB), stored at `to.1` of the store
/// at `to.0`: discarded and `isZip`, against the SDK's GetObject (`base_down`, seconds), and to
/// a file in `to.2`, against boto3's `download_file`, measured here.
async fn s3_download_rows(
    srv: &Server,
    client: &reqwest::Client,
    id: &str,
    mib: u64,
    to: (&str, &str, &Path),
    base_down: f64,
) -> Vec<Row> {
    let (size, (endpoint, stored, dir)) = (mib * MIB, to);
    let mut rows = vec![];
    let (secs, peak) = measure(srv, None, || async {
        assert_eq!(download(client, srv, id, false, None).await, size);
    })
    .await;
    rows.push(Row {
        op: "download".into(),
        mib,
        secs,
        base_secs: base_down,
        peak,
        note: "vs SDK GetObject".into(),
    });
    // boto3's download_file reads several ranges at once (its transfer manager): the
    // baseline the service's read-ahead answers.
    let dst = dir.join("s3").join("download.bin");
    let (base_boto3, _) = measure(srv, None, || async {
        boto3_download(endpoint, stored, &dst);
        assert_eq!(std::fs::metadata(&dst).unwrap().len(), size);
        std::fs::remove_file(&dst).unwrap();
    })
    .await;
    let (secs, peak) = measure(srv, None, || async {
        assert_eq!(download(client, srv, id, false, Some(&dst)).await, size);
    })
    .await;
    rows.push(Row {
        op: "download to file".into(),
        mib,
        secs,
        base_secs: base_boto3,
        peak,
        note: "vs boto3 download_file".into(),
    });

    let (secs, peak) = measure(srv, None, || async {
        assert!(download(client, srv, id, true, None).await > size);
    })
    .await;
    rows.push(Row {
        op: "download isZip".into(),
        mib,
        secs,
        base_secs: base_down,
        peak,
        note: "vs SDK GetObject".into(),
    });

    rows
}

/// The upload baselines on the same disk, each the median of 3 runs: nginx's WebDAV PUT of
/// the same bytes through the same HTTP client (nginx writes the body to a temporary file and
/// renames it into place, never syncing), and `dd bs=1M conv=fsync` (the bytes durable).
async fn plain_uploads(
    srv: &Server,
    client: &reqwest::Client,
    dir: &Path,
    src: &Path,
    size: u64,
) -> (f64, f64) {
    let nginx = Nginx::start(Some(dir), |d| {
        std::fs::create_dir_all(d.join("dav")).unwrap();
        Site {
            http: String::new(),
            server: format!(
                "        client_max_body_size 0;
        location /dav/ {{
            root {};
            dav_methods PUT;
        }}",
                d.display()
            ),
        }
    })
    .await;
    let url = format!("{}/dav/bench.img", nginx.base);
    let (webdav, _) = measure(srv, Some(src), || async {
        let file = std::fs::File::open(src).unwrap();
        let body = reqwest::Body::wrap_stream(read_stream(file, 0, size));
        let r = client
            .put(&url)
            .header(reqwest::header::CONTENT_LENGTH, size)
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "WebDAV PUT: {}", r.status());
    })
    .await;
    let dst = dir.join("dd.bin");
    let (input, output) = (
        format!("if={}", src.display()),
        format!("of={}", dst.display()),
    );
    let dd = median3(Some(src), || {
        timed(
            "dd",
            &[&input, &output, "bs=1M", "conv=fsync", "status=none"],
        )
    });
    std::fs::remove_file(&dst).unwrap();
    (webdav, dd)
}

/// A single upload and a chunked upload (50 MiB chunks + merge) of `src`, each measured three
/// times: their rows, and the ids of every image made.
async fn upload_rows(
    srv: &Server,
    client: &reqwest::Client,
    src: &Path,
    mib: u64,
    base_secs: f64,
    note: &str,
) -> (Vec<Row>, Vec<String>) {
    let size = mib * MIB;
    let ids = Mutex::new(vec![]);
    let (secs, peak) = measure(srv, Some(src), || async {
        let id = upload(client, srv, src, size).await;
        ids.lock().unwrap().push(id);
    })
    .await;
    let single = Row {
        op: "upload (single POST)".into(),
        mib,
        secs,
        base_secs,
        peak,
        note: note.into(),
    };
    let merges = Mutex::new(vec![]);
    let run = AtomicUsize::new(0);
    let (secs, peak) = measure(srv, Some(src), || async {
        let ident = format!("bench-{mib}-{}", run.fetch_add(1, Ordering::Relaxed));
        let (cid, merge) = chunked(client, srv, src, size, &ident).await;
        ids.lock().unwrap().push(cid);
        merges.lock().unwrap().push(merge.as_secs_f64());
    })
    .await;
    let mut merges = merges.into_inner().unwrap();
    merges.sort_by(f64::total_cmp);
    let chunked_row = Row {
        op: "upload (50 MiB chunks + merge)".into(),
        mib,
        secs,
        base_secs: single.secs,
        peak,
        note: format!("vs the single POST; merge {:.3} s", merges[1]),
    };
    (vec![single, chunked_row], ids.into_inner().unwrap())
}

/// Runs a command, returning how long it took.
fn timed(cmd: &str, args: &[&str]) -> Duration {
    let t = Instant::now();
    let ok = Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "{cmd} {args:?} failed");
    t.elapsed()
}

async fn image_json(client: &reqwest::Client, srv: &Server, id: &str) -> serde_json::Value {
    client
        .get(srv.url(&format!("/images/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Check and slim of a qcow2 of `mib` MiB, all of it allocated: the first half pseudo-random
/// bytes, the second half zeros (the image issue 16 measures: the random half does not
/// compress, so the slim's output is about half the input), against `md5sum` and a bare
/// `qemu-img convert -c` of the same local file. The slim's note adds the same steps done one
/// after the other by standard tools: the bare convert, then `md5sum` of its output (a slim's
/// MD5 is the image's `checksum`, and the output's bytes are final only once qemu-img is
/// done), and on S3 the store's own transfers of the slim's bytes (`s3`: boto3's download of
/// the stored input, then the SDK's multipart upload of the output, 8 MiB parts, 4 in flight,
/// as the service sends it).
async fn imageops_rows(
    srv: &Server,
    client: &reqwest::Client,
    dir: &Path,
    mib: u64,
    s3: Option<&S3Steps<'_>>,
) -> Vec<Row> {
    let img = bench_qcow2(dir, mib);
    let size = std::fs::metadata(&img).unwrap().len();
    let out = dir.join("bench-out.qcow2");
    let base = JobBaselines::measure(&img, &out);
    let runs = JobRuns::measure(srv, client, &img, size, &out, s3).await;
    std::fs::remove_file(&img).unwrap();
    std::fs::remove_file(&out).unwrap();
    let where_ = if s3.is_some() {
        "S3, with transfers"
    } else {
        "local store"
    };
    let store_note = match s3 {
        Some(_) => format!(", the store {:.1}", runs.store_cpu),
        None => String::new(),
    };
    let steps = base.convert + base.output_md5 + runs.store_steps;
    let steps_note = match s3 {
        Some(_) => "boto3 GET of the input, convert, md5sum and SDK PUT of the output",
        None => "convert, md5sum of the output",
    };
    let data_mib = size / MIB;
    vec![
        Row {
            op: format!("check of a qcow2 ({where_})"),
            mib: data_mib,
            secs: runs.check,
            base_secs: base.md5,
            peak: runs.peak_check,
            note: format!(
                "vs md5sum of the file: {:.2}x its time",
                runs.check / base.md5
            ),
        },
        Row {
            op: format!("slim of a qcow2 ({where_})"),
            mib: data_mib,
            secs: runs.slim,
            base_secs: base.convert,
            peak: runs.peak_slim,
            note: format!(
                "vs bare qemu-img convert -c: {:.2}x its time; vs its steps in series \
                 ({steps_note}) {steps:.2} s: {:.2}x; CPU s: service and qemu-img {:.1}{store_note}",
                runs.slim / base.convert,
                runs.slim / steps,
                runs.service_cpu,
            ),
        },
    ]
}

/// What the store's own transfers of a slim's bytes are measured with: an SDK client, the store's endpoint (for
/// boto3) and the key prefix the bench server stores under.
struct S3Steps<'a> {
    sdk: &'a aws_sdk_s3::Client,
    endpoint: &'a str,
    prefix: &'a str,
}

/// A qcow2 of `mib` MiB in `dir` (see [`imageops_rows`]).
fn bench_qcow2(dir: &Path, mib: u64) -> PathBuf {
    let img = dir.join("bench.qcow2");
    let raw = dir.join("bench.raw");
    make_source(&raw, mib / 2 * MIB);
    let f = std::fs::File::options().append(true).open(&raw).unwrap();
    f.set_len(mib * MIB).unwrap();
    drop(f);
    // -S 0: the zeros are written as data clusters, not left unallocated.
    let (r, p) = (raw.to_str().unwrap(), img.to_str().unwrap());
    timed(
        "qemu-img",
        &["convert", "-S", "0", "-f", "raw", "-O", "qcow2", r, p],
    );
    std::fs::remove_file(&raw).unwrap();
    img
}

/// The baselines of the check and slim rows (seconds, each the median of 3 runs).
struct JobBaselines {
    /// `md5sum` of the image.
    md5: f64,
    /// A bare `qemu-img convert -c` of the image.
    convert: f64,
    /// `md5sum` of the convert's output, as the convert left it (cached).
    output_md5: f64,
}

impl JobBaselines {
    /// Measures them on `img`; the convert's output stays at `out`.
    fn measure(img: &Path, out: &Path) -> JobBaselines {
        let (p, o) = (img.to_str().unwrap(), out.to_str().unwrap());
        let md5 = median3(None, || timed("md5sum", &[p]));
        // Each convert, bare or in the service, starts from the same state: dirty pages
        // flushed, clean ones dropped, the input read back in (see `settle`). Without that the
        // service's slims, run later, paid for reclaiming what the earlier runs left cached.
        let args = [
            "convert",
            "-f",
            "qcow2",
            "-O",
            "qcow2",
            "-c",
            "-o",
            "compression_type=zstd",
            p,
            o,
        ];
        let convert = median3(Some(img), || timed("qemu-img", &args));
        let output_md5 = median3(None, || timed("md5sum", &[o]));
        JobBaselines {
            md5,
            convert,
            output_md5,
        }
    }
}

/// The service's checks and slims of one image, 3 of each: medians (seconds), peaks (bytes),
/// the CPU seconds of the median slim, and the median of the store's own transfers of the
/// slim's bytes (0 on the local store).
struct JobRuns {
    check: f64,
    slim: f64,
    peak_check: u64,
    peak_slim: u64,
    service_cpu: f64,
    store_cpu: f64,
    store_steps: f64,
}

impl JobRuns {
    /// Uploads `img` (`size` bytes) 3 times; each time times its check, then its slim, then
    /// (on S3) the store's own transfers of the slim's bytes (`out` is the bare convert's
    /// output), then deletes it.
    async fn measure(
        srv: &Server,
        client: &reqwest::Client,
        img: &Path,
        size: u64,
        out: &Path,
        s3: Option<&S3Steps<'_>>,
    ) -> JobRuns {
        let (mut checks, mut slims, mut steps) = (vec![], vec![], vec![]);
        let (mut peak_check, mut peak_slim) = (0, 0);
        // CPU seconds of each slim: the service with qemu-img, and the store (S3 only).
        let store = store_pid().filter(|_| s3.is_some());
        let store_cpu = || store.map_or(0.0, |pid| cpu_secs_of(pid, false));
        let mut slim_cpu = vec![];
        for _ in 0..3 {
            srv.wait_idle().await;
            settle(None);
            srv.reset_peak();
            let id = upload_named(client, srv, img, size, "bench.qcow2").await;
            // The check is queued with the record, as the upload is answered.
            let t = Instant::now();
            while image_json(client, srv, &id).await["checkStatusResponse"]["status"] == 4 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            checks.push(t.elapsed().as_secs_f64());
            peak_check = peak_check.max(srv.peak_rss());
            settle(None);
            drop_clean_pages();
            // The stored original read back in, through the service (into the page cache of
            // the local store's file, or of Garage's blocks), as the bare convert's input is.
            download(client, srv, &id, false, None).await;
            srv.reset_peak();
            let cpu = (srv.cpu_secs(), store_cpu());
            let t = Instant::now();
            let v = slim(client, srv, &id).await;
            slims.push(t.elapsed().as_secs_f64());
            slim_cpu.push((
                t.elapsed().as_secs_f64(),
                srv.cpu_secs() - cpu.0,
                store_cpu() - cpu.1,
            ));
            peak_slim = peak_slim.max(srv.peak_rss());
            assert_eq!(v["slimStatus"], 2, "{v}");
            if let Some(s3) = s3 {
                steps.push(s3.transfers(&id, img, out).await);
            }
            client
                .delete(srv.url(&format!("/images/{id}")))
                .send()
                .await
                .unwrap();
        }
        checks.sort_by(f64::total_cmp);
        slims.sort_by(f64::total_cmp);
        steps.sort_by(f64::total_cmp);
        slim_cpu.sort_by(|a, b| a.0.total_cmp(&b.0));
        JobRuns {
            check: checks[1],
            slim: slims[1],
            peak_check,
            peak_slim,
            service_cpu: slim_cpu[1].1,
            store_cpu: slim_cpu[1].2,
            store_steps: steps.get(1).copied().unwrap_or(0.0),
        }
    }
}

/// Asks for a slim of image `id` and waits until it ends: the image's JSON then.
async fn slim(client: &reqwest::Client, srv: &Server, id: &str) -> serde_json::Value {
    let r = client
        .post(srv.url(&format!("/images/{id}/action/slim")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "compress in progress");
    loop {
        let v = image_json(client, srv, id).await;
        if v["slimStatus"] != 1 {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl S3Steps<'_> {
    /// Seconds the store's own transfers of a slim's bytes take: boto3's download of image
    /// `id`'s stored original (as the service's slim reads it back in, from the store's cache),
    /// then the SDK's multipart upload of `out`, with what it adds to the page cache dropped
    /// between them as the service's runs have it.
    async fn transfers(&self, id: &str, img: &Path, out: &Path) -> f64 {
        let dst = img.with_extension("steps");
        let stored = format!("{}images/{id}", self.prefix);
        let key = format!("{}steps-output", self.prefix);
        settle(None);
        let t = Instant::now();
        boto3_download(self.endpoint, &stored, &dst);
        let down = t.elapsed().as_secs_f64();
        std::fs::remove_file(&dst).unwrap();
        settle(None);
        let t = Instant::now();
        sdk_upload(self.sdk, out, &key).await;
        let up = t.elapsed().as_secs_f64();
        self.sdk
            .delete_object()
            .bucket("bench")
            .key(&key)
            .send()
            .await
            .unwrap();
        down + up
    }
}

/// Client rows: `fsctl upload` with 4 and with 1 chunk in flight (50 MiB chunks) against one
/// `curl -F` POST of the same file (`FS_BENCH_CLIENT_MIB`, default 2048), each the median of
/// 3 fresh uploads (the file's mtime is changed before each fsctl run, so it never resumes).
async fn client_rows(dir: &Path, fsctl: &Path) -> Vec<Row> {
    let mib: u64 = std::env::var("FS_BENCH_CLIENT_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048);
    std::fs::create_dir_all(dir.join("clients")).unwrap();
    let srv = Server::start(&dir.join("clients"), &[]);
    let client = reqwest::Client::new();
    let src = dir.join(format!("client-{mib}.img"));
    make_source(&src, mib * MIB);
    let src_s = src.to_str().unwrap().to_string();
    let curl = client_median(&srv, &client, &src, || {
        let url = srv.url("/images");
        let out = Command::new("curl")
            .args([
                "-sS",
                "-f",
                "-F",
                &format!("file=@{src_s}"),
                "-F",
                "userId=bench",
                &url,
            ])
            .output()
            .expect("curl");
        assert!(out.status.success(), "curl failed");
        json_id(&out.stdout, "imageId")
    })
    .await;
    let mut rows = vec![];
    let mut p1 = 0.0;
    for parallel in ["1", "4"] {
        let (secs, peak) = client_median(&srv, &client, &src, || {
            let f = std::fs::File::options().write(true).open(&src).unwrap();
            f.set_modified(std::time::SystemTime::now()).unwrap();
            let out = Command::new(fsctl)
                .args([
                    "upload",
                    &src_s,
                    "--parallel",
                    parallel,
                    "--json",
                    "--server",
                    &srv.base,
                ])
                .output()
                .expect("fsctl");
            assert!(
                out.status.success(),
                "fsctl failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            v["image"]["imageId"].as_str().unwrap().to_string()
        })
        .await;
        if parallel == "1" {
            p1 = secs;
        }
        rows.push(Row {
            op: format!("fsctl upload --parallel {parallel}"),
            mib,
            secs,
            base_secs: curl.0,
            peak,
            note: format!(
                "vs curl -F ({:.2} s); vs --parallel 1: {:.2}x",
                curl.0,
                p1 / secs
            ),
        });
    }
    std::fs::remove_file(&src).unwrap();
    rows
}

/// Runs an upload of `src` three times (deleting its image after each; see [`settle`]): median seconds, server peak RSS.
async fn client_median(
    srv: &Server,
    client: &reqwest::Client,
    src: &Path,
    mut upload: impl FnMut() -> String,
) -> (f64, u64) {
    let mut times = vec![];
    let mut peak = 0;
    for _ in 0..3 {
        srv.wait_idle().await;
        settle(Some(src));
        srv.reset_peak();
        let t = Instant::now();
        let id = upload();
        times.push(t.elapsed().as_secs_f64());
        peak = peak.max(srv.peak_rss());
        client
            .delete(srv.url(&format!("/images/{id}")))
            .send()
            .await
            .unwrap();
    }
    times.sort_by(f64::total_cmp);
    (times[1], peak)
}

/// A string field of a JSON answer.
fn json_id(body: &[u8], field: &str) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).expect("a JSON answer");
    v[field].as_str().expect("the field").to_string()
}
