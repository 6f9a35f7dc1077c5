//! In-process imageops: qemu-img run through `super::qemu` (explicit formats, no backing
//! files, time and memory limits), and a refusal of images that would make qemu-img open other
//! files (backing files, external data files) before it runs.

use super::{
    qcow2,
    qemu::{self, Format},
    result, CheckReport, CheckStatus, CompressFailure, CompressStatus, Compressed, Declared, Image,
    ImageOps, Progress,
};
use async_trait::async_trait;
use serde_json::Value;
use std::{path::Path, time::Duration};
use tokio::io::{AsyncRead, AsyncReadExt};

const INFO_TIMEOUT: Duration = Duration::from_secs(60);

pub struct LocalImageOps {
    pub check_timeout: Duration,
    pub slim_timeout: Duration,
    /// Whether this qemu-img writes zstd-compressed qcow2 (probed once).
    zstd: tokio::sync::OnceCell<bool>,
}

impl LocalImageOps {
    pub fn new(check_timeout: Duration, slim_timeout: Duration) -> Self {
        Self {
            check_timeout,
            slim_timeout,
            zstd: tokio::sync::OnceCell::new(),
        }
    }

    async fn supports_zstd(&self) -> bool {
        *self
            .zstd
            .get_or_init(|| async {
                let probe = std::env::temp_dir()
                    .join(format!("fs-zstd-probe-{}", uuid::Uuid::new_v4().simple()));
                let ok = matches!(
                    qemu_img(&qemu::zstd_probe(&probe), INFO_TIMEOUT, None).await,
                    Ok(Run { code: Some(0), .. })
                );
                let _ = tokio::fs::remove_file(&probe).await;
                ok
            })
            .await
    }
}

/// Parses qemu-img's `-p` progress lines, `    (12.34/100%)`.
fn parse_progress(line: &str) -> Option<f64> {
    let inner = line.trim().strip_prefix('(')?.split('/').next()?;
    inner
        .trim()
        .parse::<f64>()
        .ok()
        .map(|p| (p / 100.0).clamp(0.0, 1.0))
}

/// Output of one qemu-img run.
struct Run {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
}

enum RunError {
    Timeout,
    /// Stopped by its CPU limit ([`qemu::cpu_budget`]): seconds it was given.
    OutOfCpu(u64),
    Spawn(std::io::Error),
}

/// The most of a qemu-img's stdout kept (bytes). Its JSON is a few KiB; output cut here no
/// longer parses, and the image is reported as one whose metadata could not be read.
const MAX_STDOUT: usize = 4 << 20;
/// The most of a qemu-img's stderr kept (bytes): what went wrong is said first. `qemu-img
/// check` writes a line per bad table entry, and a small image can make that gigabytes.
const MAX_STDERR: usize = 64 << 10;

/// Reads `from` to its end (so that the writer is never blocked), keeping at most the first
/// `cap` bytes: memory stays bounded whatever a tool prints.
async fn read_capped(mut from: impl AsyncRead + Unpin, cap: usize) -> std::io::Result<Vec<u8>> {
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(kept);
        }
        let room = cap.saturating_sub(kept.len()).min(n);
        kept.extend_from_slice(&buf[..room]);
    }
}

/// Runs qemu-img with `args` for at most `timeout`, and at most `cpu_secs` of CPU time when
/// given (else a little more than `timeout`).
async fn qemu_img(
    args: &[String],
    timeout: Duration,
    cpu_secs: Option<u64>,
) -> Result<Run, RunError> {
    let cpu_secs = cpu_secs.unwrap_or(timeout.as_secs().max(1) + 5);
    let limits = qemu::Limits {
        cpu_secs: Some(cpu_secs),
        file_bytes: None,
    };
    let mut child = qemu::command(args, limits)
        .spawn()
        .map_err(RunError::Spawn)?;
    let out = child.stdout.take().expect("piped");
    let err = child.stderr.take().expect("piped");
    let work = async {
        let (stdout, stderr) =
            tokio::join!(read_capped(out, MAX_STDOUT), read_capped(err, MAX_STDERR));
        let (stdout, stderr) = (
            stdout.map_err(RunError::Spawn)?,
            stderr.map_err(RunError::Spawn)?,
        );
        let exit = child.wait().await.map_err(RunError::Spawn)?;
        if qemu::out_of_cpu(&exit) {
            return Err(RunError::OutOfCpu(cpu_secs));
        }
        Ok(Run {
            code: exit.code(),
            stdout,
            stderr: String::from_utf8_lossy(&stderr).trim().to_string(),
        })
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(RunError::Timeout),
    }
}

fn timed_out() -> CheckReport {
    CheckReport {
        status: CheckStatus::TimedOut,
        msg: "check timed out".into(),
        check_result: result::TIMEOUT,
        ..CheckReport::failed("")
    }
}

fn gib(bytes: u64) -> f64 {
    (bytes as f64 / (1u64 << 30) as f64 * 1000.0).round() / 1000.0
}

/// Reads a number or a numeric string of a JSON object.
fn num(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(|x| {
        x.as_u64()
            .or_else(|| x.as_str().and_then(|s| s.parse().ok()))
    })
}

impl Declared {
    fn format(self) -> Format {
        match self {
            Declared::Qcow2 => Format::Qcow2,
            Declared::Raw => Format::Raw,
        }
    }
}

/// The check report of a qcow2 that qemu-img said it could check, from `qemu-img check`'s exit
/// code and JSON output.
fn check_report(run: &Run, image: &Image, virtual_size_gib: f64) -> CheckReport {
    let out: Value = serde_json::from_slice(&run.stdout).unwrap_or(Value::Null);
    let end = num(&out, "image-end-offset")
        .map(|n| n.to_string())
        .unwrap_or_default();
    let errors = num(&out, "check-errors").unwrap_or(0).to_string();
    let code = run.code.unwrap_or(-1);
    let (st, msg) = match code {
        0 => (
            CheckStatus::Consistent,
            "check completed, the image is consistent".to_string(),
        ),
        2 => (
            CheckStatus::Corrupted,
            "check completed, the image is corrupted".to_string(),
        ),
        3 => (
            CheckStatus::LeakedClusters,
            "check completed, the image has leaked clusters, but is not corrupted".to_string(),
        ),
        _ => (
            CheckStatus::Failed,
            format!(
                "check failed: {}",
                if run.stderr.is_empty() {
                    "qemu-img check could not complete".to_string()
                } else {
                    qemu::public_message(&run.stderr, &[image])
                }
            ),
        ),
    };
    CheckReport {
        status: st,
        msg,
        check_result: if st == CheckStatus::Failed {
            result::ERROR
        } else {
            code
        },
        format: Format::Qcow2.name().into(),
        virtual_size_gib,
        image_end_offset: end,
        check_errors: errors,
    }
}

/// A report of a usable image (consistent, or leaked clusters only) whose header marks it
/// corrupt says it is corrupted: qemu opens such an image read-only and `qemu-img check` may
/// find nothing, but qemu marked it because its metadata went wrong, and a slim would clear
/// the mark.
fn marked_corrupt(report: CheckReport, extras: qcow2::Extras) -> CheckReport {
    let usable = matches!(
        report.status,
        CheckStatus::Consistent | CheckStatus::LeakedClusters
    );
    if !(usable && extras.marked_corrupt) {
        return report;
    }
    CheckReport {
        status: CheckStatus::Corrupted,
        msg: "check completed, the image is corrupted (its header marks it corrupt)".into(),
        check_result: result::CORRUPTED,
        ..report
    }
}

/// What `qemu-img info` says of the image, or the report that ends the check.
async fn image_info(image: &Image, format: Format) -> Result<Value, CheckReport> {
    let info = match qemu_img(&qemu::info(image, format), INFO_TIMEOUT, None).await {
        Ok(r) if r.code == Some(0) => r,
        Ok(r) => {
            return Err(CheckReport::failed(format!(
                "qemu-img info failed: {}",
                qemu::public_message(&r.stderr, &[image])
            )))
        }
        Err(RunError::Timeout | RunError::OutOfCpu(_)) => return Err(timed_out()),
        Err(RunError::Spawn(e)) => {
            return Err(CheckReport::failed(format!(
                "cannot run qemu-img: {}",
                e.kind()
            )))
        }
    };
    if info.stdout.len() >= MAX_STDOUT {
        return Err(CheckReport::failed(format!(
            "the image's metadata is too large to inspect: qemu-img info described it in more \
             than {} MiB (very many snapshots or bitmaps)",
            MAX_STDOUT >> 20
        )));
    }
    serde_json::from_slice(&info.stdout)
        .map_err(|e| CheckReport::failed(format!("unreadable qemu-img info output: {e}")))
}

/// A refusal when `qemu-img info` reports a backing file or an external data file (a second
/// line of defence behind the header check).
fn names_other_files(info: &Value) -> Option<qcow2::Refusal> {
    let backing = [
        "backing-filename",
        "full-backing-filename",
        "backing-filename-format",
        "backing-image",
    ]
    .iter()
    .any(|k| info.get(*k).is_some());
    if backing {
        return Some(qcow2::Refusal::BackingFile);
    }
    info.pointer("/format-specific/data/data-file")
        .map(|_| qcow2::Refusal::DataFile)
}

#[async_trait]
impl ImageOps for LocalImageOps {
    async fn check(&self, image: &Image, declared: Declared) -> CheckReport {
        let format = declared.format();
        let head = match qcow2::refuse_foreign_files(image, declared).await {
            Ok(head) => head,
            Err(refusal) => return CheckReport::failed(refusal),
        };
        let info = match image_info(image, format).await {
            Ok(v) => v,
            Err(report) => return report,
        };
        let virtual_size = gib(num(&info, "virtual-size").unwrap_or(0));
        if declared == Declared::Raw {
            return CheckReport {
                status: CheckStatus::NotCheckedType,
                msg: "this type of image is not checked".into(),
                check_result: result::NOT_QCOW2,
                format: "raw".into(),
                virtual_size_gib: virtual_size,
                image_end_offset: String::new(),
                check_errors: String::new(),
            };
        }
        if let Some(refusal) = names_other_files(&info) {
            return CheckReport {
                format: format.name().into(),
                virtual_size_gib: virtual_size,
                ..CheckReport::failed(refusal.to_string())
            };
        }
        match qcow2::l1_of(image, &head).await {
            Ok(l1) if qcow2::shares_l2_tables(&l1) => {
                return CheckReport {
                    status: CheckStatus::Corrupted,
                    msg: "check completed, the image is corrupted (entries of its L1 table \
                          point at the same L2 table)"
                        .into(),
                    check_result: result::CORRUPTED,
                    format: format.name().into(),
                    virtual_size_gib: virtual_size,
                    ..CheckReport::failed("")
                }
            }
            Ok(_) => {}
            Err(e) => return CheckReport::failed(e),
        }
        let cpu = match image.size().await {
            Ok(size) => qemu::cpu_budget(size),
            Err(e) => return CheckReport::failed(format!("cannot read the image: {}", e.kind())),
        };
        match qemu_img(&qemu::check(image), self.check_timeout, Some(cpu)).await {
            Ok(run) => {
                let report = check_report(&run, image, virtual_size);
                marked_corrupt(report, qcow2::Extras::of(&head))
            }
            Err(RunError::Timeout) => CheckReport {
                format: format.name().into(),
                virtual_size_gib: virtual_size,
                ..timed_out()
            },
            Err(RunError::OutOfCpu(secs)) => CheckReport {
                format: format.name().into(),
                virtual_size_gib: virtual_size,
                msg: format!(
                    "check timed out: qemu-img used {secs} s of CPU time, far more than an \
                     image of this size needs (its tables make the check walk them many times)"
                ),
                ..timed_out()
            },
            Err(RunError::Spawn(e)) => {
                CheckReport::failed(format!("cannot run qemu-img: {}", e.kind()))
            }
        }
    }

    async fn convert(
        &self,
        input: &Image,
        output: &Path,
        extras: qcow2::Extras,
        progress: Progress,
    ) -> Compressed {
        let failed = CompressFailure::failed;
        let args = qemu::convert(input, output, self.supports_zstd().await, extras.bitmaps);
        // A slimmed copy larger than its original is refused: an image can map many guest
        // clusters to one stored cluster, which a conversion writes out once for each.
        let size = input.size().await;
        let size = size.map_err(|e| failed(format!("cannot read the image: {}", e.kind())))?;
        let most = super::slim_output_limit(size);
        let cpu = qemu::cpu_budget(size);
        let limits = qemu::Limits {
            cpu_secs: Some(cpu),
            file_bytes: Some(most),
        };
        let mut child = qemu::command(&args, limits)
            .spawn()
            .map_err(|e| failed(format!("cannot run qemu-img: {}", e.kind())))?;
        let out = child.stdout.take().expect("piped");
        let err = child.stderr.take().expect("piped");
        let work = async {
            let ((), stderr) =
                tokio::join!(read_progress(out, &progress), read_capped(err, MAX_STDERR));
            let stderr = stderr.unwrap_or_default();
            let exit = child
                .wait()
                .await
                .map_err(|e| failed(format!("qemu-img did not finish: {}", e.kind())))?;
            if exit.success() {
                return Ok(());
            }
            if qemu::out_of_cpu(&exit) {
                return Err(CompressFailure {
                    status: CompressStatus::TimedOut,
                    msg: format!(
                        "compression timed out: qemu-img used {cpu} s of CPU time, far more \
                         than an image of {size} bytes needs (it maps guest data to stored \
                         data many times over); the image stays as it is"
                    ),
                });
            }
            let msg = String::from_utf8_lossy(&stderr).trim().to_string();
            // Past RLIMIT_FSIZE a write fails with EFBIG (qemu ignores SIGXFSZ), or the
            // signal ends the process.
            let signal = std::os::unix::process::ExitStatusExt::signal(&exit);
            if signal == Some(libc::SIGXFSZ) || msg.contains("File too large") {
                return Err(failed(format!(
                    "the slimmed copy would be larger than {most} bytes, well beyond the \
                     original's {size} (the image maps guest data to stored data more than \
                     once); the image stays as it is"
                )));
            }
            Err(CompressFailure {
                status: if msg.contains("No space left") {
                    CompressStatus::NoSpace
                } else {
                    CompressStatus::Failed
                },
                msg: format!(
                    "compression failed: {}",
                    qemu::public_message(&msg, &[input, &Image::File(output.into())])
                ),
            })
        };
        match tokio::time::timeout(self.slim_timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(CompressFailure::timed_out()),
        }
    }
}

/// Feeds `qemu-img convert -p` progress lines (ended by CR or LF) to `progress`.
async fn read_progress(mut out: tokio::process::ChildStdout, progress: &Progress) {
    let mut buf = [0u8; 4096];
    let mut line = String::new();
    loop {
        match out.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                for ch in String::from_utf8_lossy(&buf[..n]).chars() {
                    if ch == '\r' || ch == '\n' {
                        if let Some(p) = parse_progress(&line) {
                            progress(p);
                        }
                        line.clear();
                    } else if line.len() < 256 {
                        // A progress line is `    (12.34/100%)`: longer is no progress.
                        line.push(ch);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_progress, qemu, qemu_img, read_capped, Image, RunError};
    use std::time::{Duration, Instant};

    /// `qemu-img check` of a qcow2 (2 MiB clusters, 1 EiB) whose 2M L1 entries all point at
    /// one L2 table walks that table 2M times: stopped by its CPU budget, not its wall clock.
    #[tokio::test]
    async fn a_run_past_its_cpu_budget_is_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("walks.qcow2");
        let p = path.to_str().unwrap();
        let run = |tool: &str, args: &[&str]| {
            let ok = std::process::Command::new(tool)
                .args(args)
                .output()
                .unwrap();
            assert!(ok.status.success(), "{tool} {args:?}");
        };
        run(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "cluster_size=2M",
                p,
                "1E",
            ],
        );
        run("qemu-io", &["-f", "qcow2", "-c", "write -P 1 0 512", p]);
        let mut b = std::fs::read(&path).unwrap();
        let be64 = |b: &[u8], at: usize| u64::from_be_bytes(b[at..at + 8].try_into().unwrap());
        let entries = u32::from_be_bytes(b[36..40].try_into().unwrap()) as usize;
        let l1 = be64(&b, 40) as usize;
        let first = be64(&b, l1) & !(1 << 63);
        for i in 0..entries {
            b[l1 + 8 * i..l1 + 8 * i + 8].copy_from_slice(&first.to_be_bytes());
        }
        std::fs::write(&path, b).unwrap();
        let started = Instant::now();
        let args = qemu::check(&Image::File(path.clone()));
        let ran = qemu_img(&args, Duration::from_secs(300), Some(1)).await;
        assert!(
            matches!(ran, Err(RunError::OutOfCpu(1))),
            "not stopped by its budget"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(qemu::cpu_budget(0), 60);
        assert_eq!(qemu::cpu_budget(80 << 20), 70);
    }

    #[tokio::test]
    async fn tool_output_is_kept_up_to_its_cap_and_read_to_the_end() {
        let big = vec![b'e'; 1 << 20];
        let mut rest: &[u8] = &big;
        let kept = read_capped(&mut rest, 1000).await.unwrap();
        assert_eq!(kept.len(), 1000);
        assert!(rest.is_empty(), "read to the end");
        let small: &[u8] = b"{}";
        assert_eq!(read_capped(small, 1000).await.unwrap(), b"{}");
    }

    #[test]
    fn progress_lines() {
        assert_eq!(parse_progress("    (12.50/100%)"), Some(0.125));
        assert_eq!(parse_progress("(100.00/100%)"), Some(1.0));
        assert_eq!(parse_progress("garbage"), None);
    }
}
