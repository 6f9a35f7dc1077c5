//! In-process imageops: qemu-img with the format always given (`-f`), time limits, a memory
//! limit, and a refusal of images that would make qemu-img open other files (backing files,
//! external data files).

use super::{compress, result, status, CheckReport, CompressFailure, Declared, ImageOps, Progress};
use async_trait::async_trait;
use serde_json::Value;
use std::{path::Path, process::Stdio, time::Duration};
use tokio::{io::AsyncReadExt, process::Command};

const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";
/// Address-space limit of a qemu-img process.
const MEMORY_LIMIT: u64 = 4 << 30;
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
                let dir = std::env::temp_dir()
                    .join(format!("fs-zstd-probe-{}", uuid::Uuid::new_v4().simple()));
                let p = dir.to_string_lossy().to_string();
                let ok = matches!(
                    qemu_img(
                        &[
                            "create",
                            "-q",
                            "-f",
                            "qcow2",
                            "-o",
                            "compression_type=zstd",
                            &p,
                            "1M"
                        ],
                        INFO_TIMEOUT
                    )
                    .await,
                    Ok(Run { code: Some(0), .. })
                );
                let _ = tokio::fs::remove_file(&dir).await;
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
    Spawn(std::io::Error),
}

async fn qemu_img(args: &[&str], timeout: Duration) -> Result<Run, RunError> {
    let mut cmd = Command::new("qemu-img");
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let cpu_secs = timeout.as_secs().max(1) + 5;
    // SAFETY: only async-signal-safe calls (setrlimit) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let mem = libc::rlimit {
                rlim_cur: MEMORY_LIMIT,
                rlim_max: MEMORY_LIMIT,
            };
            let cpu = libc::rlimit {
                rlim_cur: cpu_secs,
                rlim_max: cpu_secs,
            };
            libc::setrlimit(libc::RLIMIT_AS, &mem);
            libc::setrlimit(libc::RLIMIT_CPU, &cpu);
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(RunError::Spawn)?;
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let work = async {
        let mut stdout = vec![];
        let mut stderr = vec![];
        let (a, b) = tokio::join!(out.read_to_end(&mut stdout), err.read_to_end(&mut stderr));
        a.and(b).map_err(RunError::Spawn)?;
        let code = child.wait().await.map_err(RunError::Spawn)?.code();
        Ok(Run {
            code,
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
        status: status::TIMED_OUT,
        msg: "check timed out".into(),
        check_result: result::TIMEOUT,
        ..CheckReport::failed("")
    }
}

fn gib(bytes: u64) -> f64 {
    (bytes as f64 / (1u64 << 30) as f64 * 1000.0).round() / 1000.0
}

async fn starts_with_qcow2_magic(path: &Path) -> std::io::Result<bool> {
    let mut f = tokio::fs::File::open(path).await?;
    let mut magic = [0u8; 4];
    match f.read_exact(&mut magic).await {
        Ok(_) => Ok(&magic == QCOW2_MAGIC),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Reads a number or a numeric string of a JSON object.
fn num(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(|x| {
        x.as_u64()
            .or_else(|| x.as_str().and_then(|s| s.parse().ok()))
    })
}

#[async_trait]
impl ImageOps for LocalImageOps {
    async fn check(&self, path: &Path, declared: Declared) -> CheckReport {
        let p = path.to_string_lossy().to_string();
        let fmt = match declared {
            Declared::Qcow2 => "qcow2",
            Declared::Raw => "raw",
        };
        if declared == Declared::Qcow2 {
            match starts_with_qcow2_magic(path).await {
                Ok(true) => {}
                Ok(false) => {
                    return CheckReport::failed(
                        "the file is named .qcow2 but its content is not qcow2",
                    )
                }
                Err(e) => return CheckReport::failed(format!("cannot read the image: {e}")),
            }
        }
        let info = match qemu_img(&["info", "-f", fmt, "--output=json", &p], INFO_TIMEOUT).await {
            Ok(r) if r.code == Some(0) => r,
            Ok(r) => return CheckReport::failed(format!("qemu-img info failed: {}", r.stderr)),
            Err(RunError::Timeout) => return timed_out(),
            Err(RunError::Spawn(e)) => {
                return CheckReport::failed(format!("cannot run qemu-img: {e}"))
            }
        };
        let info: Value = match serde_json::from_slice(&info.stdout) {
            Ok(v) => v,
            Err(e) => return CheckReport::failed(format!("unreadable qemu-img info output: {e}")),
        };
        let virtual_size = gib(num(&info, "virtual-size").unwrap_or(0));
        if declared == Declared::Raw {
            return CheckReport {
                status: status::NOT_CHECKED_TYPE,
                msg: "this type of image is not checked".into(),
                check_result: result::NOT_QCOW2,
                format: "raw".into(),
                virtual_size_gib: virtual_size,
                image_end_offset: String::new(),
                check_errors: String::new(),
            };
        }
        // Images that point at other files would make qemu-img read them: refused.
        let backing = info
            .get("backing-filename")
            .or_else(|| info.get("full-backing-filename"));
        if let Some(b) = backing {
            return CheckReport {
                format: fmt.into(),
                virtual_size_gib: virtual_size,
                ..CheckReport::failed(format!("the image has a backing file ({b}); refused"))
            };
        }
        let data_file = info.pointer("/format-specific/data/data-file");
        if let Some(d) = data_file {
            return CheckReport {
                format: fmt.into(),
                virtual_size_gib: virtual_size,
                ..CheckReport::failed(format!(
                    "the image has an external data file ({d}); refused"
                ))
            };
        }
        let run = match qemu_img(
            &["check", "-f", fmt, "--output=json", &p],
            self.check_timeout,
        )
        .await
        {
            Ok(r) => r,
            Err(RunError::Timeout) => {
                return CheckReport {
                    format: fmt.into(),
                    virtual_size_gib: virtual_size,
                    ..timed_out()
                }
            }
            Err(RunError::Spawn(e)) => {
                return CheckReport::failed(format!("cannot run qemu-img: {e}"))
            }
        };
        let out: Value = serde_json::from_slice(&run.stdout).unwrap_or(Value::Null);
        let end = num(&out, "image-end-offset")
            .map(|n| n.to_string())
            .unwrap_or_default();
        let errors = num(&out, "check-errors").unwrap_or(0).to_string();
        let code = run.code.unwrap_or(-1);
        let (st, msg) = match code {
            0 => (
                status::CONSISTENT,
                "check completed, the image is consistent".to_string(),
            ),
            2 => (
                status::CORRUPTED,
                "check completed, the image is corrupted".to_string(),
            ),
            3 => (
                status::LEAKED,
                "check completed, the image has leaked clusters, but is not corrupted".to_string(),
            ),
            _ => (
                status::FAILED,
                format!(
                    "check failed: {}",
                    if run.stderr.is_empty() {
                        "qemu-img check could not complete"
                    } else {
                        &run.stderr
                    }
                ),
            ),
        };
        CheckReport {
            status: st,
            msg,
            check_result: if st == status::FAILED {
                result::ERROR
            } else {
                code
            },
            format: fmt.into(),
            virtual_size_gib: virtual_size,
            image_end_offset: end,
            check_errors: errors,
        }
    }

    async fn compress(
        &self,
        input: &Path,
        output: &Path,
        progress: Progress,
    ) -> Result<(), CompressFailure> {
        let failed = |msg: String| CompressFailure {
            status: compress::FAILED,
            msg,
        };
        let (i, o) = (
            input.to_string_lossy().to_string(),
            output.to_string_lossy().to_string(),
        );
        let mut args = vec!["convert", "-p", "-f", "qcow2", "-O", "qcow2", "-c"];
        if self.supports_zstd().await {
            args.extend(["-o", "compression_type=zstd"]);
        }
        args.extend([i.as_str(), o.as_str()]);
        let mut cmd = Command::new("qemu-img");
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // SAFETY: only setrlimit between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                let mem = libc::rlimit {
                    rlim_cur: MEMORY_LIMIT,
                    rlim_max: MEMORY_LIMIT,
                };
                libc::setrlimit(libc::RLIMIT_AS, &mem);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| failed(format!("cannot run qemu-img: {e}")))?;
        let mut out = child.stdout.take().expect("piped");
        let mut err = child.stderr.take().expect("piped");
        let work = async {
            let read_progress = async {
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
                                } else {
                                    line.push(ch);
                                }
                            }
                        }
                    }
                }
            };
            let mut stderr = vec![];
            let ((), _) = tokio::join!(read_progress, err.read_to_end(&mut stderr));
            let code = child
                .wait()
                .await
                .map_err(|e| failed(e.to_string()))?
                .code();
            match code {
                Some(0) => Ok(()),
                _ => {
                    let msg = String::from_utf8_lossy(&stderr).trim().to_string();
                    let no_space = msg.contains("No space left");
                    Err(CompressFailure {
                        status: if no_space {
                            compress::NO_SPACE
                        } else {
                            compress::FAILED
                        },
                        msg: format!("compression failed: {msg}"),
                    })
                }
            }
        };
        match tokio::time::timeout(self.slim_timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(CompressFailure {
                status: compress::TIMED_OUT,
                msg: "compression timed out".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_progress;

    #[test]
    fn progress_lines() {
        assert_eq!(parse_progress("    (12.50/100%)"), Some(0.125));
        assert_eq!(parse_progress("(100.00/100%)"), Some(1.0));
        assert_eq!(parse_progress("garbage"), None);
    }
}
