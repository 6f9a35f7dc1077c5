//! `fsctl upload`: a resumable, parallel chunked upload (`POST /images/upload` per chunk, then
//! `POST /images/merge`), in the resumable.js / simple-uploader.js protocol the service reads.
//!
//! The file is read once, in order: every chunk read feeds the whole-file SHA-256 (sent as the
//! merge's `checksum`); chunks the server already holds (the resume query) are read for that
//! hash but not sent. At most `parallel` chunk buffers exist at any time: a buffer is read only
//! after one of `parallel` permits is taken, and the permit goes back when its chunk is stored.

use crate::{
    api::{read_json, Api, Retry},
    error::{Error, Result},
    images,
    pacer::{self, Pacer},
    plan::{self, ChunkPlan, Fingerprint},
    progress,
    report::Report,
    units,
};
use bytes::Bytes;
use indicatif::ProgressBar;
use reqwest::multipart::{Form, Part};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::{
    collections::BTreeMap,
    io::Read,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};
use tokio::{sync::Semaphore, task::JoinSet};

/// Request bodies are sent in slices of this many bytes (the unit of pacing and progress).
const SLICE: usize = 64 << 10;

/// What `fsctl upload` was asked to do.
#[derive(Debug, Clone)]
pub struct UploadArgs {
    pub file: PathBuf,
    pub user: Option<String>,
    pub priority: Option<String>,
    /// Requested chunk size in bytes (raised when the file needs more than 10000 chunks).
    pub chunk_size: u64,
    /// Chunks in flight.
    pub parallel: usize,
    pub wait: bool,
}

/// The session state the resume query reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum SessionState {
    None,
    Open,
    Merging,
    Completed,
    #[serde(other)]
    Unknown,
}

/// The resume query's answer (`GET /images/upload?identifier=X`).
#[derive(Debug, Deserialize)]
struct UploadStatus {
    state: SessionState,
    #[serde(default)]
    chunks: Vec<HeldChunk>,
}

/// A chunk the server holds.
#[derive(Debug, Deserialize)]
struct HeldChunk {
    #[serde(rename = "chunkNumber")]
    number: u64,
    size: u64,
}

/// Everything the chunk requests of one upload share.
struct Session {
    api: Api,
    identifier: String,
    plan: ChunkPlan,
    /// `userId` and `priority`, sent on every chunk and on the merge.
    owner: Vec<(&'static str, String)>,
    pacer: Option<Arc<Pacer>>,
    bar: ProgressBar,
    /// Chunks of this upload the server holds: those it held before this run, and those sent.
    chunks_held: AtomicU64,
}

impl Session {
    /// The session of `fp`'s upload: its chunk plan and derived identifier.
    fn new(
        api: &Api,
        args: &UploadArgs,
        fp: &Fingerprint,
        file_name: &str,
        pacer: Option<Arc<Pacer>>,
    ) -> Session {
        let plan = ChunkPlan::new(fp.size, args.chunk_size);
        let user = args.user.clone().unwrap_or_default();
        let priority = args.priority.clone().unwrap_or_default();
        let identifier = plan::identifier(fp, &user, &priority, plan.chunk_size);
        let mut owner = vec![];
        if let Some(u) = &args.user {
            owner.push(("userId", u.clone()));
        }
        if let Some(p) = &args.priority {
            owner.push(("priority", p.clone()));
        }
        Session {
            api: api.clone(),
            identifier,
            plan,
            owner,
            pacer,
            bar: progress::bytes(fp.size, file_name),
            chunks_held: AtomicU64::new(0),
        }
    }
}

impl Session {
    /// The query naming this upload on `/images/upload` (the resume query, a cancel): its
    /// identifier and, when given, its user.
    fn query(&self) -> Vec<(&'static str, String)> {
        let mut query = vec![("identifier", self.identifier.clone())];
        query.extend(self.owner.iter().filter(|(k, _)| *k == "userId").cloned());
        query
    }
}

/// One chunk read from the file.
struct ReadChunk {
    number: u64,
    bytes: Bytes,
    crc32c: u32,
}

/// Runs `fsctl upload`.
pub async fn run(api: &Api, args: UploadArgs, pacer: Option<Arc<Pacer>>) -> Result<Report> {
    let fp = Fingerprint::of(&args.file)
        .map_err(Error::io(format!("cannot read {}", args.file.display())))?;
    // The name as typed (a link uploads under its own name, not its target's).
    let file_name = args
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::Usage(format!("{} has no file name", args.file.display())))?;
    check_name(&file_name)?;
    let session = Arc::new(Session::new(api, &args, &fp, &file_name, pacer));
    let held = held_chunks(&session).await?;
    let skipped = held.len() as u64;
    session.chunks_held.store(skipped, Ordering::Relaxed);
    // On stderr whatever the output format: the name to give `fsctl cancel`.
    crate::print_err(&format!(
        "fsctl: upload {} ({} chunks of {}, {skipped} already on the server)",
        session.identifier,
        session.plan.total_chunks,
        units::human(session.plan.chunk_size)
    ));
    let sent = send_chunks(&session, &fp, &held, args.parallel).await;
    session.bar.finish_and_clear();
    if Fingerprint::of(&args.file).ok().as_ref() != Some(&fp) {
        // A rerun would be another upload (the identifier follows the file): these chunks
        // can never be merged. So also when the change made sending fail (a file that shrank
        // cannot be read to its old end).
        drop_upload(&session).await;
        return Err(Error::Verification(format!(
            "{} changed while it was being uploaded; the chunks sent were dropped, upload it again",
            args.file.display()
        )));
    }
    let sha256 = sent.map_err(|e| kept_for_a_rerun(&session, e))?;
    let record = match merge(&session, &file_name, &sha256).await {
        Ok(record) => record,
        Err(e) => return Err(merge_failed(&session, e).await),
    };
    let image_id = record
        .get("imageId")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::Protocol(format!("merge answer without imageId: {record}")))?
        .to_string();
    let sent = session.plan.total_chunks - skipped;
    let mut doc = json!({
        "image": record,
        "identifier": session.identifier,
        "sha256": sha256,
        "totalSize": fp.size,
        "chunkSize": session.plan.chunk_size,
        "totalChunks": session.plan.total_chunks,
        "chunksSent": sent,
        "chunksSkipped": skipped,
    });
    let mut human = format!(
        "uploaded {file_name} ({}) as image {image_id}: {sent} of {} chunks sent, {skipped} already on the server\nsha256 {sha256}",
        units::human(fp.size),
        session.plan.total_chunks
    );
    if !args.wait {
        return Ok(Report::ok(doc, human));
    }
    let checked = images::wait_check(api, &image_id).await?;
    doc["check"] = checked.json;
    human.push('\n');
    human.push_str(&checked.human);
    Ok(Report {
        json: doc,
        human,
        exit: checked.exit,
    })
}

/// Refuses, before anything is sent, a name the service refuses at the merge or would store
/// as another name (the service's `validate::file_name`): it must end in `.qcow2`, `.img`,
/// `.iso` or `.zip` (case-sensitive, after at least one character, not starting with a dot),
/// at most 128 characters, none of them one the service refuses ([`name_char`]). A backslash
/// (the service keeps only what follows it, as browsers send Windows paths) or white space at
/// either end (trimmed) would change the name.
fn check_name(name: &str) -> Result<()> {
    let ext = [".qcow2", ".img", ".iso", ".zip"]
        .iter()
        .any(|ext| name.len() > ext.len() && name.ends_with(ext));
    let problem = if !ext || name.chars().count() > 128 || name.starts_with('.') {
        "the service takes files named *.qcow2, *.img, *.iso or *.zip (a zip holding one image \
         in a folder), at most 128 characters"
    } else if !name.chars().all(name_char) {
        "it holds a character the service refuses in names (a control or bidirectional \
         formatting character, or bytes that are not UTF-8): rename the file"
    } else if name.contains('\\') {
        "it holds a backslash, after which the service keeps only the rest of the name (a \
         Windows folder separator): rename the file"
    } else if name.trim() != name {
        "it begins or ends with white space, which the service trims: rename the file"
    } else {
        return Ok(());
    };
    Err(Error::Usage(format!("{name:?}: {problem}")))
}

/// Whether the service takes `c` in a file name (its `validate::name_char`, written again here
/// so that the client does not link the server; a test holds the two equal): no control
/// character, no bidirectional formatting character (a name could show as another), no line
/// or paragraph separator, no invisible U+200B, U+2060 or U+FEFF, no U+FFFD (what bytes that
/// are not UTF-8 become).
pub(crate) fn name_char(c: char) -> bool {
    !c.is_control()
        && !matches!(
            c,
            '\u{061C}'
                | '\u{200B}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'
                | '\u{2066}'..='\u{2069}'
                | '\u{FEFF}'
                | '\u{FFFD}'
        )
}

/// A failure while chunks were being sent: the chunks already held stay on the server for a
/// rerun (they count in the user's quota until then); the message says how to drop them, when
/// there are any.
fn kept_for_a_rerun(s: &Session, e: Error) -> Error {
    if s.chunks_held.load(Ordering::Relaxed) == 0 {
        return e;
    }
    match e {
        Error::Refused {
            status,
            code,
            message,
        } => Error::Refused {
            status,
            code,
            message: format!(
                "{message} (the chunks held stay for a rerun; `fsctl cancel {}{}` drops them)",
                s.identifier,
                s.owner
                    .iter()
                    .find(|(k, _)| *k == "userId")
                    .map(|(_, u)| format!(" --user {u}"))
                    .unwrap_or_default()
            ),
        },
        other => other,
    }
}

/// A merge that failed. A quota refusal keeps the chunks for a rerun (once there is room); a
/// checksum mismatch (a chunk the server holds is not this file's) and any other refusal can
/// never succeed with these chunks, so the upload is dropped: nothing is left on the server,
/// and a rerun sends the file afresh.
async fn merge_failed(s: &Session, e: Error) -> Error {
    let Error::Refused {
        status,
        code,
        message,
    } = e
    else {
        return e;
    };
    if status == 413 {
        return kept_for_a_rerun(
            s,
            Error::Refused {
                status,
                code,
                message,
            },
        );
    }
    drop_upload(s).await;
    if code == "CHECKSUM_MISMATCH" {
        return Error::Verification(format!(
            "the chunks on the server do not make this file ({message}); the upload was dropped: run the command again to send it afresh"
        ));
    }
    Error::Refused {
        status,
        code,
        message: format!("{message} (the upload's chunks were dropped)"),
    }
}

/// Drops the upload's chunks on the server (`DELETE /images/upload`), best effort: a failure
/// leaves them to expire.
async fn drop_upload(s: &Session) {
    let (url, query) = (s.api.url("/images/upload"), s.query());
    let _ = s
        .api
        .send("cancel", || s.api.http().delete(&url).query(&query))
        .await;
}

/// Asks the resume query which chunks the server holds with the size this plan gives them
/// (a chunk held at another size is sent again); all of them once the upload is merged.
async fn held_chunks(s: &Session) -> Result<BTreeMap<u64, u64>> {
    let (url, query) = (s.api.url("/images/upload"), s.query());
    let r = s
        .api
        .send("resume query", || s.api.http().get(&url).query(&query))
        .await?;
    let status: UploadStatus = read_json(r, "resume query").await?;
    match status.state {
        SessionState::None | SessionState::Unknown => return Ok(BTreeMap::new()),
        // Merged already, or being merged (a run killed during its merge): nothing to send;
        // the merge asked again answers with that image (or waits for the merge running).
        SessionState::Completed | SessionState::Merging => {
            return Ok((1..=s.plan.total_chunks)
                .map(|n| (n, s.plan.chunk_len(n)))
                .collect())
        }
        SessionState::Open => {}
    }
    Ok(status
        .chunks
        .into_iter()
        .filter(|c| c.size == s.plan.chunk_len(c.number))
        .map(|c| (c.number, c.size))
        .collect())
}

/// Reads the file in order, hashing all of it, and sends the chunks not in `held`, at most
/// `parallel` at once. Returns the whole file's SHA-256 (hex).
async fn send_chunks(
    s: &Arc<Session>,
    fp: &Fingerprint,
    held: &BTreeMap<u64, u64>,
    parallel: usize,
) -> Result<String> {
    let permits = Arc::new(Semaphore::new(parallel.max(1)));
    let mut file = std::fs::File::open(&fp.path)
        .map_err(Error::io(format!("cannot open {}", fp.path.display())))?;
    let mut hasher = Sha256::new();
    let mut tasks: JoinSet<Result<()>> = JoinSet::new();
    for number in 1..=s.plan.total_chunks {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Protocol("chunk permits closed".into()))?;
        while let Some(done) = tasks.try_join_next() {
            joined(done)?;
        }
        let len = s.plan.chunk_len(number);
        let skip = held.contains_key(&number);
        let (f, h, chunk) = read_chunk(file, hasher, number, len, !skip).await?;
        (file, hasher) = (f, h);
        if skip {
            s.bar.inc(len);
            continue;
        }
        let s = s.clone();
        tasks.spawn(async move {
            let r = send_chunk(&s, chunk).await;
            drop(permit);
            r
        });
    }
    while let Some(done) = tasks.join_next().await {
        joined(done)?;
    }
    Ok(hex::encode(hasher.finalize()))
}

/// A finished chunk task's result.
fn joined(r: std::result::Result<Result<()>, tokio::task::JoinError>) -> Result<()> {
    r.map_err(|e| Error::Protocol(format!("a chunk task failed: {e}")))?
}

/// Reads chunk `number` (`len` bytes) on a blocking thread, feeding the whole-file hash, and
/// its CRC-32C when it is to be sent.
async fn read_chunk(
    mut file: std::fs::File,
    mut hasher: Sha256,
    number: u64,
    len: u64,
    checksum: bool,
) -> Result<(std::fs::File, Sha256, ReadChunk)> {
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; len as usize];
        file.read_exact(&mut buf).map_err(Error::io(format!(
            "cannot read chunk {number} (the file may have shrunk)"
        )))?;
        hasher.update(&buf);
        let crc32c = if checksum { crc32c::crc32c(&buf) } else { 0 };
        let chunk = ReadChunk {
            number,
            bytes: Bytes::from(buf),
            crc32c,
        };
        Ok((file, hasher, chunk))
    })
    .await
    .map_err(|e| Error::Protocol(format!("a read task failed: {e}")))?
}

/// Sends one chunk (again after transient failures), with its size and CRC-32C.
async fn send_chunk(s: &Session, chunk: ReadChunk) -> Result<()> {
    let url = s.api.url("/images/upload");
    let sent = Arc::new(AtomicU64::new(0));
    let plan = s.plan;
    let make = || {
        let mut form = Form::new()
            .text("identifier", s.identifier.clone())
            .text("chunkNumber", chunk.number.to_string())
            .text("totalChunks", plan.total_chunks.to_string())
            .text("totalSize", plan.total_size.to_string())
            .text("chunkSize", plan.chunk_size.to_string())
            .text("currentChunkSize", chunk.bytes.len().to_string())
            .text("chunkChecksum", format!("crc32c:{:08x}", chunk.crc32c));
        for (k, v) in &s.owner {
            form = form.text(*k, v.clone());
        }
        let body = paced_body(
            chunk.bytes.clone(),
            s.pacer.clone(),
            s.bar.clone(),
            sent.clone(),
        );
        let part = Part::stream_with_length(body, chunk.bytes.len() as u64)
            .file_name(format!("{}.part", chunk.number));
        s.api.http().post(&url).multipart(form.part("part", part))
    };
    let undo = || s.bar.dec(sent.swap(0, Ordering::Relaxed));
    s.api
        .send_with(&format!("chunk {}", chunk.number), make, undo)
        .await?;
    s.chunks_held.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// A request body of `data` in [`SLICE`]s, each waiting for the pacer and counted on the bar.
fn paced_body(
    data: Bytes,
    pacer: Option<Arc<Pacer>>,
    bar: ProgressBar,
    sent: Arc<AtomicU64>,
) -> reqwest::Body {
    let stream = futures::stream::unfold(0usize, move |at| {
        let (data, pacer, bar, sent) = (data.clone(), pacer.clone(), bar.clone(), sent.clone());
        async move {
            if at >= data.len() {
                return None;
            }
            let end = (at + SLICE).min(data.len());
            let n = (end - at) as u64;
            pacer::take(pacer.as_deref(), n).await;
            bar.inc(n);
            sent.fetch_add(n, Ordering::Relaxed);
            Some((Ok::<Bytes, std::io::Error>(data.slice(at..end)), end))
        }
    });
    reqwest::Body::wrap_stream(stream)
}

/// `POST /images/merge` with the totals and the whole file's checksum; the image's record.
async fn merge(s: &Session, file_name: &str, sha256: &str) -> Result<Value> {
    let url = s.api.url("/images/merge");
    let mut fields = vec![
        ("identifier", s.identifier.clone()),
        ("filename", file_name.to_string()),
        ("totalSize", s.plan.total_size.to_string()),
        ("totalChunks", s.plan.total_chunks.to_string()),
        ("chunkSize", s.plan.chunk_size.to_string()),
        ("checksum", format!("sha256:{sha256}")),
    ];
    fields.extend(s.owner.iter().cloned());
    let mut conflicts = 0;
    loop {
        match s
            .api
            .send("merge", || s.api.patient_http().post(&url).form(&fields))
            .await
        {
            Ok(r) => return read_json(r, "merge").await,
            // Another merge of this upload runs (e.g. one a killed run started): the service
            // waited 30 s for it; ask again.
            Err(Error::Refused { status: 409, .. }) if conflicts < s.api.retry.retries => {
                tokio::time::sleep(Retry::delay(conflicts)).await;
                conflicts += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    /// The client refuses before sending exactly the characters the service refuses.
    #[test]
    fn name_char_is_the_services() {
        let service = file_system::domain::validate::name_char;
        for c in (0..=0x10FFFF).filter_map(char::from_u32) {
            assert_eq!(super::name_char(c), service(c), "U+{:04X}", c as u32);
        }
    }
}
