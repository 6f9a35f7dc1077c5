//! The one place that builds the qemu-img command lines the service runs (info, check, convert,
//! and the zstd probe), and the limits every run gets.
//!
//! An uploaded image is never named by its bare path: it is handed over as a `json:`
//! description with the driver given explicitly (the format is never probed) and, for qcow2,
//! `"backing": null`, so qemu-img cannot open a backing file even if the header names one
//! (QEMU block layer, `BlockdevOptionsGenericCOWFormat.backing`). External data files cannot
//! be switched off that way: they are refused before qemu-img runs (`super::qcow2`, and
//! `qemu-img info`'s report).

use super::Image;
use std::{path::Path, process::Stdio};
use tokio::process::Command;

/// Address-space limit of a qemu-img process (bytes).
pub const MEMORY_LIMIT: u64 = 4 << 30;

/// The CPU time (seconds) a qemu-img check or conversion of an image of `size` stored bytes
/// may take: 60 s, plus 1 s per 8 MiB stored. Either walks each stored cluster about once
/// (a conversion compresses it; zstd does 200 MiB/s and more per core), so that is a margin of
/// 25 times and more; an image made to make qemu walk far more than it stores (tables or
/// clusters mapped many times over, snapshots sharing tables) is stopped in minutes, not
/// after the wall-clock budget of hours.
pub fn cpu_budget(size: u64) -> u64 {
    60 + size / (8 << 20)
}

/// Whether a process that ended with `status` was stopped by its CPU limit (SIGXCPU at the
/// limit, SIGKILL if it ignored that).
pub fn out_of_cpu(status: &std::process::ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    matches!(status.signal(), Some(libc::SIGXCPU | libc::SIGKILL))
}

/// The format an image is opened as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Qcow2,
    Raw,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Qcow2 => "qcow2",
            Format::Raw => "raw",
        }
    }
}

/// The image argument: a `json:` pseudo-protocol description of `image` opened as `format`
/// through the `file` protocol (a local file) or the `nbd` one (an export on a Unix socket,
/// QEMU's `BlockdevOptionsNbd`), without any backing file.
pub fn image_arg(image: &Image, format: Format) -> String {
    let file = match image {
        Image::File(path) => {
            serde_json::json!({ "driver": "file", "filename": path.to_string_lossy() })
        }
        Image::Nbd { socket, .. } => serde_json::json!({
            "driver": "nbd",
            "server": { "type": "unix", "path": socket.to_string_lossy() },
        }),
    };
    let spec = match format {
        Format::Qcow2 => serde_json::json!({ "driver": "qcow2", "backing": null, "file": file }),
        Format::Raw => serde_json::json!({ "driver": "raw", "file": file }),
    };
    format!("json:{spec}")
}

/// `qemu-img info --output=json IMAGE`.
pub fn info(image: &Image, format: Format) -> Vec<String> {
    vec![
        "info".into(),
        "--output=json".into(),
        image_arg(image, format),
    ]
}

/// `qemu-img check --output=json IMAGE` (qcow2 only).
pub fn check(image: &Image) -> Vec<String> {
    vec![
        "check".into(),
        "--output=json".into(),
        image_arg(image, Format::Qcow2),
    ]
}

/// `qemu-img convert -p -W -t unsafe -O qcow2 -c [-o compression_type=zstd] IMAGE OUTPUT`: a
/// compressed copy of the qcow2 `input`, without unallocated or zero clusters; `-p` prints
/// progress.
///
/// `-W` lets qemu-img write clusters out of order, so its coroutines compress in parallel
/// (in order, each waits for the one before to be written and compression runs about one
/// core): 2 GiB half random, half zeros took 2.4 s instead of 3.4 s here (median of 4). The
/// output is an equally valid qcow2 whose compressed clusters may lie in another order, so
/// two slims of one image need not give the same bytes (the record keeps each output's own
/// digests).
///
/// `-t unsafe` (the output's cache mode) leaves out qemu-img's flush of the whole output when
/// it ends: the output is scratch until it is stored, and the store makes it durable itself
/// (the local store syncs the file before publishing it, while it is hashed; S3 is sent the
/// bytes). Flushed by qemu-img, the write-back of the whole output is paid before the hashing
/// can start, and on S3 for nothing: 2 GiB half random, half zeros converted in 1.45 s instead
/// of 1.9-2.3 s here.
///
/// With `bitmaps` (the input has persistent bitmaps), `--bitmaps --skip-broken-bitmaps`
/// copies them, but for those left inconsistent (in use when their writer stopped), which
/// no one can use; qemu-img refuses `--bitmaps` for an input without bitmap support (qcow2
/// version 2), so it is only given when there are some.
pub fn convert(input: &Image, output: &Path, zstd: bool, bitmaps: bool) -> Vec<String> {
    let mut args: Vec<String> = ["convert", "-p", "-W", "-t", "unsafe", "-O", "qcow2", "-c"]
        .map(String::from)
        .into();
    if zstd {
        args.extend(["-o".into(), "compression_type=zstd".into()]);
    }
    if bitmaps {
        args.extend(["--bitmaps".into(), "--skip-broken-bitmaps".into()]);
    }
    args.push(image_arg(input, Format::Qcow2));
    args.push(output.to_string_lossy().into_owned());
    args
}

/// `qemu-img create -q -f qcow2 -o compression_type=zstd PATH 1M`: succeeds when this
/// qemu-img writes zstd-compressed qcow2.
pub fn zstd_probe(path: &Path) -> Vec<String> {
    [
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "compression_type=zstd",
        &path.to_string_lossy(),
        "1M",
    ]
    .map(String::from)
    .into()
}

/// The limits of one qemu-img process beyond [`MEMORY_LIMIT`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// CPU time (seconds): past it the process gets SIGXCPU, then SIGKILL.
    pub cpu_secs: Option<u64>,
    /// The largest file it may write (bytes): a write past it kills it with SIGXFSZ
    /// (`RLIMIT_FSIZE`, setrlimit(2)), or fails with EFBIG where it ignores that signal.
    pub file_bytes: Option<u64>,
}

/// A qemu-img process for `args`: no stdin, piped output, killed when dropped or when the
/// service dies, limited to `MEMORY_LIMIT` of address space and to `limits`, and never
/// dumping core.
pub fn command(args: &[String], limits: Limits) -> Command {
    let mut cmd = Command::new("qemu-img");
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let parent = std::process::id();
    // SAFETY: only async-signal-safe calls (prctl, getppid, setrlimit, _exit) run between fork
    // and exec.
    unsafe {
        cmd.pre_exec(move || {
            // The child dies with the service, even with a SIGKILL (which runs no cleanup):
            // no qemu-img goes on writing into scratch for a job another replica took over.
            // The signal follows the forking thread, a runtime worker that lives as long as
            // the service (this is never called from a blocking-pool thread).
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            );
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            let mem = libc::rlimit {
                rlim_cur: MEMORY_LIMIT,
                rlim_max: MEMORY_LIMIT,
            };
            libc::setrlimit(libc::RLIMIT_AS, &mem);
            let limit = |n: u64| libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &limit(0));
            if let Some(secs) = limits.cpu_secs {
                libc::setrlimit(libc::RLIMIT_CPU, &limit(secs));
            }
            if let Some(bytes) = limits.file_bytes {
                libc::setrlimit(libc::RLIMIT_FSIZE, &limit(bytes));
            }
            Ok(())
        });
    }
    cmd
}

/// A tool's message made fit for clients: every image the service handed to the tool (and any
/// absolute path, e.g. of a file named inside an image or of a socket) is replaced by
/// `<image>` or `<path>`, so no server path or scratch file name leaves the service.
pub fn public_message(msg: &str, images: &[&Image]) -> String {
    let mut out = msg.to_string();
    for image in images {
        let path = match image {
            Image::File(p) => p,
            Image::Nbd { socket, .. } => socket,
        };
        for spec in [
            image_arg(image, Format::Qcow2),
            image_arg(image, Format::Raw),
            path.to_string_lossy().into_owned(),
        ] {
            out = out.replace(&spec, "<image>");
        }
    }
    redact_paths(&out)
}

/// Replaces every absolute path (a `/` that starts a word, up to the next space or quote)
/// by `<path>`.
fn redact_paths(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    let mut prev: Option<char> = None;
    while let Some(c) = chars.next() {
        let starts_word = prev.is_none_or(|p| p.is_whitespace() || "'\"(=:`,[{".contains(p));
        if c == '/' && starts_word {
            while chars
                .peek()
                .is_some_and(|n| !n.is_whitespace() && !"'\"`),]}".contains(*n))
            {
                chars.next();
            }
            out.push_str("<path>");
            prev = Some('>');
            continue;
        }
        out.push(c);
        prev = Some(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_described_without_backing_files() {
        let file = |p: &str| Image::File(p.into());
        let a = image_arg(&file("/s/x \"y\".qcow2"), Format::Qcow2);
        let v: serde_json::Value = serde_json::from_str(a.strip_prefix("json:").unwrap()).unwrap();
        assert_eq!(v["driver"], "qcow2");
        assert!(v["backing"].is_null() && v.get("backing").is_some());
        assert_eq!(v["file"]["filename"], "/s/x \"y\".qcow2");
        let r = image_arg(&file("/s/d.img"), Format::Raw);
        assert!(
            r.starts_with("json:{") && r.contains("\"driver\":\"raw\""),
            "{r}"
        );
        let c = convert(&file("/i"), Path::new("/o"), true, false);
        assert_eq!(c.last().unwrap(), "/o");
        // The store makes the output durable, not qemu-img.
        assert!(c.windows(2).any(|w| w == ["-t", "unsafe"]), "{c:?}");
        assert!(c[c.len() - 2].starts_with("json:"));
        assert!(!c.iter().any(|a| a.contains("bitmaps")));
        let c = convert(&file("/i"), Path::new("/o"), false, true);
        assert!(c.contains(&"--bitmaps".to_string()), "{c:?}");
        assert!(c.contains(&"--skip-broken-bitmaps".to_string()), "{c:?}");
        let nbd = Image::Nbd {
            socket: "/s/nbd.sock".into(),
            head: bytes::Bytes::new(),
            l1: bytes::Bytes::new(),
            size: 0,
        };
        let n: serde_json::Value = serde_json::from_str(
            image_arg(&nbd, Format::Qcow2)
                .strip_prefix("json:")
                .unwrap(),
        )
        .unwrap();
        assert!(n["backing"].is_null() && n.get("backing").is_some());
        assert_eq!(
            n["file"],
            serde_json::json!({ "driver": "nbd", "server": { "type": "unix", "path": "/s/nbd.sock" } })
        );
    }

    #[test]
    fn messages_lose_their_paths() {
        let file = Image::File("/data/scratch/.tmpAbC.qcow2".into());
        let nbd = Image::Nbd {
            socket: "/data/scratch/nbd-1.sock".into(),
            head: bytes::Bytes::new(),
            l1: bytes::Bytes::new(),
            size: 0,
        };
        let cases = [
            (
                &file,
                Format::Qcow2,
                "Could not open backing file /etc/passwd",
                "Could not open backing file <path>",
            ),
            (
                &nbd,
                Format::Raw,
                "Requested export not available",
                "Requested export not available",
            ),
        ];
        for (image, format, said, public) in cases {
            let msg = format!(
                "qemu-img: Could not open '{}': {said}",
                image_arg(image, format)
            );
            assert_eq!(
                public_message(&msg, &[image]),
                format!("qemu-img: Could not open '<image>': {public}")
            );
        }
        assert_eq!(
            public_message("failed: /var/lib/x.db: No space left", &[]),
            "failed: <path> No space left"
        );
        assert_eq!(public_message("1/2 done, 50%", &[]), "1/2 done, 50%");
    }
}
