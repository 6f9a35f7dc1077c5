//! `fsctl download`: a resumable, verified download.
//!
//! Bytes go to `<target>.fsctl-part`, and the ETag they came with to `<target>.fsctl-part.json`
//! (written before the first byte). A rerun, or a retry after a dropped connection, asks for
//! the rest with `Range: bytes=N-` and `If-Range: <etag>` (RFC 9110 sections 14.2 and 13.1.5):
//! 206 continues the partial file; 200 means the image changed (e.g. it was slimmed), so the
//! download starts again from byte 0. At the end the SHA-256 of the whole file is compared with
//! the download's `Repr-Digest: sha-256=:<base64>:` (RFC 9530), or the record's `sha256` when
//! the answer carries none. A zip (`--zip`, built on the fly, no digest of its own) is verified
//! by reading it back: exactly one entry, its CRC-32 as the archive declares, and its SHA-256
//! equal to the record's. On a mismatch the partial file and its ETag are removed (a rerun
//! downloads afresh), the target is never written, and the exit code is 5.
//!
//! The partial file is locked (`flock`) for the whole run: a second run to the same target is
//! refused. A target that is not a regular file (a device such as `/dev/null`, a FIFO) is
//! written into directly and never renamed over; a symbolic link is followed to what it names.

use crate::{
    api::{transport_error, Api, Retry},
    error::{Error, Result},
    images::{self, ImageView},
    pacer::{self, Pacer},
    progress,
    report::Report,
    units,
};
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use futures::StreamExt;
use indicatif::ProgressBar;
use reqwest::{header, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    sync::Arc,
};

/// What `fsctl download` was asked to do.
#[derive(Debug, Clone)]
pub struct DownloadArgs {
    pub id: String,
    pub output: Option<PathBuf>,
    pub zip: bool,
}

/// The sidecar of a partial file: which download its bytes belong to.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct PartMeta {
    #[serde(rename = "imageId")]
    image_id: String,
    zip: bool,
    etag: String,
}

/// Paths of one download.
struct Paths {
    target: PathBuf,
    part: PathBuf,
    meta: PathBuf,
    /// The target is a device, a FIFO or a socket (`-o /dev/null`, `-o >(...)`): the bytes
    /// are written straight into it, with no partial file, no rename over it and no resume
    /// across runs (a dropped connection is still resumed within the run).
    stream: bool,
}

impl Paths {
    /// Where the bytes are written: the partial file, or the target itself when it streams.
    fn sink(&self) -> &Path {
        if self.stream {
            &self.target
        } else {
            &self.part
        }
    }
}

/// The state of a download in progress.
struct Transfer {
    /// Bytes in the partial file.
    have: u64,
    /// SHA-256 of those bytes.
    hasher: Sha256,
    /// The last answer's `Repr-Digest` SHA-256, if it sent one.
    repr_digest: Option<String>,
    /// The answer was a 200 to a range request: the image changed, the download restarted.
    restarted: bool,
    /// The ETag of the bytes written so far, for `If-Range`.
    etag: Option<String>,
}

/// How one request of the download ended.
enum Fetch {
    Complete,
    /// The connection broke: worth resuming from where the file is.
    Broken(Error),
}

/// Runs `fsctl download`.
pub async fn run(api: &Api, args: DownloadArgs, pacer: Option<Arc<Pacer>>) -> Result<Report> {
    let (view, _) = images::fetch(api, &args.id).await?;
    let paths = paths_for(&view, args.output.as_deref(), args.zip)?;
    // Held to the end: a second fsctl downloading to the same target is refused.
    let _lock = lock_part(&paths)?;
    let mut t = open_partial(&paths, &view.image_id, args.zip)?;
    let resumed_from = t.have;
    let mut sink = open_sink(&paths)?;
    let bar = progress::bytes(view.size.max(0) as u64, &view.file_name);
    let mut broken = 0;
    loop {
        bar.set_position(t.have);
        let to = Sink {
            paths: &paths,
            file: &mut sink,
        };
        match fetch(api, &view, to, args.zip, &mut t, pacer.as_deref(), &bar).await? {
            Fetch::Complete => break,
            Fetch::Broken(e) if broken >= api.retry.retries => return Err(e),
            Fetch::Broken(_) => {
                tokio::time::sleep(Retry::delay(broken)).await;
                broken += 1;
            }
        }
    }
    bar.finish_and_clear();
    drop(sink);
    let sha256 = hex::encode(std::mem::take(&mut t.hasher).finalize());
    let verified = verify(&view, &paths, args.zip, &sha256, t.repr_digest.as_deref()).await;
    if let Err(e) = verified {
        if !paths.stream {
            let _ = std::fs::remove_file(&paths.part);
            let _ = std::fs::remove_file(&paths.meta);
        }
        return Err(e);
    }
    if !paths.stream {
        std::fs::rename(&paths.part, &paths.target).map_err(Error::io(format!(
            "cannot move the download to {}",
            paths.target.display()
        )))?;
        let _ = std::fs::remove_file(&paths.meta);
    }
    let verified_by = verified.unwrap_or_default();
    let doc = json!({
        "imageId": view.image_id,
        "path": paths.target,
        "bytes": t.have,
        "sha256": sha256,
        "zip": args.zip,
        "resumedFrom": if t.restarted { 0 } else { resumed_from },
        "restarted": t.restarted,
        "verifiedBy": verified_by,
    });
    let human = format!(
        "downloaded {} ({}) to {}{}\nsha256 {sha256} ({verified_by})",
        view.image_id,
        units::human(t.have),
        paths.target.display(),
        match (t.restarted, resumed_from) {
            (true, _) => ", restarted: the image changed since the partial download".to_string(),
            (false, 0) => String::new(),
            (false, n) => format!(", resumed at byte {n}"),
        }
    );
    Ok(Report::ok(doc, human))
}

/// Whether `name`, given by the service, may be a download's default target: a name the service
/// accepts for an image (`.qcow2`, `.img` or `.iso`, not hidden, only characters its
/// `name_char` takes). A hostile or broken server naming `.bashrc` replaced that file.
fn default_name(name: &str) -> bool {
    let image = [".qcow2", ".img", ".iso"]
        .iter()
        .any(|e| name.len() > e.len() && name.ends_with(e));
    image && !name.starts_with('.') && name.chars().all(crate::upload::name_char)
}

/// The target (`-o`, a directory or a file; else the image's name in the current
/// directory) and its partial files.
fn paths_for(view: &ImageView, output: Option<&Path>, zip: bool) -> Result<Paths> {
    // The server's name is only a default: its last component, never a path it chose, and
    // only a name the service itself would take for an image.
    let name = Path::new(&view.file_name)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| default_name(n))
        .unwrap_or_else(|| {
            let id = &view.image_id;
            let plain = !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
            format!("{}.img", if plain { id.as_str() } else { "image" })
        });
    let name = if zip {
        let base = name.rsplit_once('.').map_or(name.as_str(), |(b, _)| b);
        format!("{base}.zip")
    } else {
        name
    };
    let target = match output {
        Some(o) if o.is_dir() => o.join(name),
        Some(o) => o.to_path_buf(),
        None => PathBuf::from(name),
    };
    // A symbolic link is written through, as a shell's `>` does: the link stays.
    let target = through_links(target)?;
    if target.is_dir() {
        return Err(Error::Usage(format!("{} is a directory", target.display())));
    }
    let stream = std::fs::metadata(&target).is_ok_and(|m| !m.is_file());
    if stream && zip {
        return Err(Error::Usage(format!(
            "{} is not a regular file: a --zip download is verified by reading the archive back, so it must go to a file",
            target.display()
        )));
    }
    let mut part = target.clone().into_os_string();
    part.push(".fsctl-part");
    let mut meta = part.clone();
    meta.push(".json");
    Ok(Paths {
        target,
        part: part.into(),
        meta: meta.into(),
        stream,
    })
}

/// `path` with symbolic links followed to what they name (up to 40, as the kernel does); a
/// link to nothing yet gives the path it names, which the download creates.
fn through_links(mut path: PathBuf) -> Result<PathBuf> {
    for _ in 0..40 {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            return Ok(path);
        };
        if !meta.file_type().is_symlink() {
            return Ok(path);
        }
        let to = std::fs::read_link(&path).map_err(Error::io(format!(
            "cannot read the link {}",
            path.display()
        )))?;
        path = match path.parent() {
            Some(dir) => dir.join(to),
            None => to,
        };
    }
    Err(Error::Usage(format!(
        "{}: too many levels of symbolic links",
        path.display()
    )))
}

/// Opens one of the download's own files (the partial file, its ETag) without following a
/// symbolic link (`O_NOFOLLOW`): a link planted there (in a shared directory) must not make
/// fsctl write where it points. Anything but a regular file there is refused.
fn open_own(path: &Path, opts: &mut std::fs::OpenOptions) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = opts
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(Error::io(format!(
            "cannot open {} (it must be a regular file, not a link)",
            path.display()
        )))?;
    let meta = file
        .metadata()
        .map_err(Error::io(format!("cannot read {}", path.display())))?;
    if !meta.is_file() {
        return Err(Error::Usage(format!(
            "{} is not a regular file; remove it",
            path.display()
        )));
    }
    Ok(file)
}

/// Takes the partial file's lock (an exclusive `flock`), so that two runs never write one
/// partial file; `None` for a target that streams (nothing partial to share). The lock taken
/// must be on the file the path still names: a run that finished meanwhile has renamed its
/// partial file to the target, and its lock no longer guards the path.
fn lock_part(paths: &Paths) -> Result<Option<std::fs::File>> {
    use std::os::unix::fs::MetadataExt;
    if paths.stream {
        return Ok(None);
    }
    let busy = |why: &str| {
        Error::io(format!(
            "another fsctl is downloading to {}",
            paths.target.display()
        ))(std::io::Error::other(why.to_string()))
    };
    for _ in 0..10 {
        let file = open_own(
            &paths.part,
            std::fs::OpenOptions::new().create(true).append(true),
        )?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(busy("its partial file is locked"))
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::io(format!("cannot lock {}", paths.part.display()))(
                    e,
                ))
            }
        }
        let locked = file.metadata().map(|m| (m.dev(), m.ino())).ok();
        let named = std::fs::symlink_metadata(&paths.part)
            .map(|m| (m.dev(), m.ino()))
            .ok();
        if locked.is_some() && locked == named {
            return Ok(Some(file));
        }
    }
    Err(busy("its partial file keeps changing"))
}

/// The partial file left by an earlier run of the same download, hashed so far; or none.
fn open_partial(paths: &Paths, image_id: &str, zip: bool) -> Result<Transfer> {
    let mut t = Transfer {
        have: 0,
        hasher: Sha256::new(),
        repr_digest: None,
        restarted: false,
        etag: None,
    };
    // A zip is built anew for every request (the service ignores Range for it): it never
    // resumes, and starting it again says nothing about the image.
    if paths.stream || zip {
        return Ok(t);
    }
    let meta: Option<PartMeta> = std::fs::read(&paths.meta)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let Some(meta) = meta.filter(|m| m.image_id == image_id && m.zip == zip && !m.etag.is_empty())
    else {
        return Ok(t);
    };
    t.etag = Some(meta.etag);
    let Ok(mut f) = open_own(&paths.part, std::fs::OpenOptions::new().read(true)) else {
        return Ok(t);
    };
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(Error::io(format!("cannot read {}", paths.part.display())))?;
        if n == 0 {
            break;
        }
        t.hasher.update(&buf[..n]);
        t.have += n as u64;
    }
    Ok(t)
}

/// Opens where the bytes are written, once for the whole run: the partial file (appended to),
/// or the device or FIFO itself. A FIFO reopened after a dropped connection would show its
/// reader an end, and the next open would then block for a reader that is gone.
fn open_sink(paths: &Paths) -> Result<std::fs::File> {
    let sink = paths.sink();
    if paths.stream {
        std::fs::OpenOptions::new()
            .append(true)
            .open(sink)
            .map_err(Error::io(format!("cannot open {}", sink.display())))
    } else {
        open_own(sink, std::fs::OpenOptions::new().create(true).append(true))
    }
}

/// The download's paths and its open sink.
struct Sink<'a> {
    paths: &'a Paths,
    file: &'a mut std::fs::File,
}

/// One GET of the download: from byte `t.have` (with `If-Range`; a zip always from its start)
/// to the end, appended to the sink.
async fn fetch(
    api: &Api,
    view: &ImageView,
    Sink { paths, file }: Sink<'_>,
    zip: bool,
    t: &mut Transfer,
    pacer: Option<&Pacer>,
    bar: &ProgressBar,
) -> Result<Fetch> {
    let url = api.url(&format!("/images/{}/action/download", view.image_id));
    let etag = t.etag.clone();
    let have = t.have;
    let make = || {
        let mut req = api.http().get(&url);
        if zip {
            req = req.query(&[("isZip", "true")]);
        }
        match (&etag, have) {
            (Some(tag), n) if n > 0 && !zip => req
                .header(header::RANGE, format!("bytes={n}-"))
                .header(header::IF_RANGE, tag.as_str()),
            _ => req,
        }
    };
    let r = match api.send("download", make).await {
        Err(Error::Refused { status: 416, .. }) => {
            // The partial file is not a prefix of these bytes any more: start again.
            reset(paths, t)?;
            return Ok(Fetch::Broken(Error::Unavailable(
                "range not satisfiable".into(),
            )));
        }
        other => other?,
    };
    let append = r.status() == StatusCode::PARTIAL_CONTENT && t.have > 0;
    if !append {
        t.restarted |= t.have > 0 && !zip;
        reset(paths, t)?;
        let tag = header_str(&r, header::ETAG).unwrap_or_default();
        t.etag = Some(tag.clone()).filter(|t| !t.is_empty());
        if !paths.stream {
            let meta = PartMeta {
                image_id: view.image_id.clone(),
                zip,
                etag: tag,
            };
            let mut file = open_own(
                &paths.meta,
                std::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(true),
            )?;
            file.write_all(&serde_json::to_vec(&meta).unwrap_or_default())
                .map_err(Error::io(format!("cannot write {}", paths.meta.display())))?;
        }
        bar.set_position(0);
    }
    t.repr_digest = header_str(&r, "repr-digest").and_then(|v| parse_repr_digest(&v));
    let sink = paths.sink();
    let mut body = r.bytes_stream();
    while let Some(piece) = body.next().await {
        let piece = match piece {
            Ok(p) => p,
            Err(e) => return Ok(Fetch::Broken(transport_error("download", &e))),
        };
        pacer::take(pacer, piece.len() as u64).await;
        file.write_all(&piece)
            .map_err(Error::io(format!("cannot write {}", sink.display())))?;
        t.hasher.update(&piece);
        t.have += piece.len() as u64;
        bar.inc(piece.len() as u64);
    }
    Ok(Fetch::Complete)
}

/// Empties the partial file and its hash. Bytes already streamed into a device or pipe
/// cannot be taken back: starting again there is an error.
fn reset(paths: &Paths, t: &mut Transfer) -> Result<()> {
    if paths.stream && t.have > 0 {
        return Err(Error::Verification(format!(
            "the image changed while it was being written to {}, which cannot start again; download it again",
            paths.target.display()
        )));
    }
    if !paths.stream {
        open_own(&paths.part, std::fs::OpenOptions::new().write(true))?
            .set_len(0)
            .map_err(Error::io(format!("cannot write {}", paths.part.display())))?;
    }
    t.have = 0;
    t.hasher = Sha256::new();
    Ok(())
}

/// A response header as text.
fn header_str(r: &reqwest::Response, name: impl header::AsHeaderName) -> Option<String> {
    r.headers().get(name)?.to_str().ok().map(str::to_string)
}

/// The SHA-256 (hex) in a `Repr-Digest` header (`sha-256=:<base64>:`, RFC 9530).
pub fn parse_repr_digest(value: &str) -> Option<String> {
    value.split(',').find_map(|member| {
        let (alg, v) = member.trim().split_once('=')?;
        if !alg.trim().eq_ignore_ascii_case("sha-256") {
            return None;
        }
        let b64 = v.trim().strip_prefix(':')?.strip_suffix(':')?;
        let digest = B64.decode(b64).ok()?;
        (digest.len() == 32).then(|| hex::encode(digest))
    })
}

/// Compares what arrived with what the service says the image is; names what it checked.
async fn verify(
    view: &ImageView,
    paths: &Paths,
    zip: bool,
    sha256: &str,
    repr_digest: Option<&str>,
) -> Result<String> {
    if zip {
        return verify_zip(view, paths).await;
    }
    let (expected, source) = match repr_digest {
        Some(d) => (d.to_string(), "Repr-Digest"),
        None if !view.sha256.is_empty() => (view.sha256.clone(), "the record's sha256"),
        None => return Ok("not verified: the service knows no SHA-256 yet".into()),
    };
    if expected != sha256 {
        return Err(Error::Verification(format!(
            "the downloaded bytes have SHA-256 {sha256}, {source} says {expected}{}",
            if paths.stream {
                ""
            } else {
                "; the partial file was removed"
            }
        )));
    }
    Ok(format!("matches {source}"))
}

/// Reads a downloaded zip back: one entry, its CRC-32 holds, its SHA-256 is the record's.
async fn verify_zip(view: &ImageView, paths: &Paths) -> Result<String> {
    let part = paths.part.clone();
    let entry_sha = tokio::task::spawn_blocking(move || -> std::result::Result<String, String> {
        let f = std::fs::File::open(&part).map_err(|e| e.to_string())?;
        let mut archive =
            zip::ZipArchive::new(f).map_err(|e| format!("not a readable zip: {e}"))?;
        if archive.len() != 1 {
            return Err(format!("the zip holds {} entries, not one", archive.len()));
        }
        let mut entry = archive.by_index(0).map_err(|e| e.to_string())?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            // The zip reader fails a read whose bytes miss the entry's CRC-32.
            let n = entry
                .read(&mut buf)
                .map_err(|e| format!("its entry does not read back: {e}"))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(hex::encode(h.finalize()))
    })
    .await
    .map_err(|e| Error::Protocol(format!("zip verification task: {e}")))?
    .map_err(|e| {
        Error::Verification(format!("downloaded zip: {e}; the partial file was removed"))
    })?;
    if view.sha256.is_empty() {
        return Ok("zip entry CRC-32 only: the service knows no SHA-256 yet".into());
    }
    if entry_sha != view.sha256 {
        return Err(Error::Verification(format!(
            "the zip's image has SHA-256 {entry_sha}, the record says {}; the partial file was removed",
            view.sha256
        )));
    }
    Ok("zip entry CRC-32 and SHA-256 match the record".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_image_names_are_default_targets() {
        for good in ["disk.qcow2", "a b.img", "镜像.iso", "x.y.qcow2"] {
            assert!(default_name(good), "{good}");
        }
        for bad in [
            ".bashrc",
            ".x.qcow2",
            "notes.txt",
            ".img",
            "a\u{202E}gmi.exe",
            "x\u{202E}.img",
            "a\nb.img",
        ] {
            assert!(!default_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn repr_digest_parses() {
        let d = Sha256::digest(b"abc");
        let v = format!("sha-256=:{}:", B64.encode(d));
        assert_eq!(parse_repr_digest(&v), Some(hex::encode(d)));
        let two = format!("sha-512=:AAAA:, sha-256=:{}:", B64.encode(d));
        assert_eq!(parse_repr_digest(&two), Some(hex::encode(d)));
        assert_eq!(parse_repr_digest("sha-256=abc"), None);
        assert_eq!(parse_repr_digest("sha-256=:AAAA:"), None);
        assert_eq!(parse_repr_digest(""), None);
    }
}
