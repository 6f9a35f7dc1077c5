//! The original imageops HTTP API, served by this binary (`file-system imageops`), so a sidecar
//! deployment needs nothing else. Image names are relative to a directory both containers
//! mount; requests run in the background and are polled by id. Its messages are
//! `imageops::wire`'s, shared with the client (`imageops::remote`).

use crate::imageops::{
    local::LocalImageOps,
    wire::{
        self, CheckAnswer, CheckInfo, CheckRequest, CompressAnswer, CompressRequest, ImageInfo,
        Started,
    },
    CheckReport, CheckStatus, CompressStatus, Declared, Image, ImageOps,
};
use axum::{
    extract::{
        rejection::{JsonRejection, PathRejection},
        Path as UrlPath, State,
    },
    http::StatusCode,
    routing::{get, post},
    Json, Router,
};
use sea_orm::ActiveEnum;
use std::{
    collections::HashMap,
    path::{Component, Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// A finished check: the report, the file's MD5, its size and its name.
type CheckDone = (CheckReport, String, u64, String);
/// Running checks (`None`) and finished ones, by request id.
type Checks = Arc<Mutex<Requests<Option<CheckDone>>>>;
/// Compressions by request id: status, message, progress.
type Compressions = Arc<Mutex<Requests<(CompressStatus, String, f64)>>>;

/// How long a finished request's result is kept for its poller (which asks every second or
/// so); then it is forgotten, so the table does not grow with every request ever made.
const RETAIN: Duration = Duration::from_secs(600);

/// Requests by id: running ones, and finished ones for [`RETAIN`].
struct Requests<T> {
    by_id: HashMap<String, (T, Option<Instant>)>,
}

impl<T> Default for Requests<T> {
    fn default() -> Self {
        Requests {
            by_id: HashMap::new(),
        }
    }
}

impl<T> Requests<T> {
    /// Records a new running request (and forgets results older than [`RETAIN`]).
    fn start(&mut self, id: &str, value: T) {
        self.prune(Instant::now());
        self.by_id.insert(id.to_string(), (value, None));
    }

    /// Records a request's result.
    fn finish(&mut self, id: &str, value: T) {
        self.by_id
            .insert(id.to_string(), (value, Some(Instant::now())));
    }

    fn get(&self, id: &str) -> Option<&T> {
        self.by_id.get(id).map(|(v, _)| v)
    }

    fn get_mut(&mut self, id: &str) -> Option<&mut T> {
        self.by_id.get_mut(id).map(|(v, _)| v)
    }

    fn prune(&mut self, now: Instant) {
        self.by_id
            .retain(|_, (_, done)| done.is_none_or(|t| now.duration_since(t) < RETAIN));
    }
}

/// What the sidecar's handlers share: the shared directory, the local image operations, and
/// the requests started (running and recently finished).
#[derive(Clone)]
pub struct OpsState {
    dir: PathBuf,
    ops: Arc<LocalImageOps>,
    checks: Checks,
    compressions: Compressions,
}

/// A refused start: 400 with `status` 3 and why.
/// The answer to a start request: a status and what was started, or why not.
type StartReply = (StatusCode, Json<Started>);

fn bad(msg: &str) -> StartReply {
    let refusal = Started {
        status: CheckStatus::Failed.to_value(),
        msg: msg.to_string(),
        request_id: None,
    };
    (StatusCode::BAD_REQUEST, Json(refusal))
}

/// A started request: its id, and the text the original answers with.
fn started(msg: &str, id: String) -> StartReply {
    let answer = Started {
        status: wire::ACCEPTED,
        msg: msg.to_string(),
        request_id: Some(id),
    };
    (StatusCode::OK, Json(answer))
}

/// A plain relative name inside the shared directory.
fn resolve(dir: &Path, name: &str) -> Option<PathBuf> {
    let p = Path::new(name);
    let plain = !name.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    plain.then(|| dir.join(p))
}

/// The refusal of a start request whose body is not the JSON message (as the original's JSON
/// answer, not axum's plain-text one).
fn not_json(e: JsonRejection) -> StartReply {
    bad(&format!("bad request body: {}", e.body_text()))
}

/// The request id of a status path; one that is not text (bad percent-encoding) names no
/// request, so it gets the JSON 404 of any unknown id.
fn request_id(id: Result<UrlPath<String>, PathRejection>) -> String {
    id.map(|UrlPath(id)| id).unwrap_or_default()
}

/// The input image a request names: an existing file inside the shared directory.
fn input_file(dir: &Path, name: &str) -> Result<PathBuf, StartReply> {
    resolve(dir, name)
        .filter(|p| p.is_file())
        .ok_or_else(|| bad("input image not found"))
}

/// The imageops API over `dir` (the directory shared with the service): starting and polling
/// checks and compressions, and `/health`.
pub fn router(dir: PathBuf, ops: LocalImageOps) -> Router {
    let state = OpsState {
        dir,
        ops: Arc::new(ops),
        checks: Arc::default(),
        compressions: Arc::default(),
    };
    Router::new()
        .route(wire::CHECK_PATH, post(start_check))
        .route(&format!("{}/{{id}}", wire::CHECK_PATH), get(check_status))
        .route(wire::COMPRESS_PATH, post(start_compress))
        .route(
            &format!("{}/{{id}}", wire::COMPRESS_PATH),
            get(compress_status),
        )
        .route("/health", get(|| async { "ok" }))
        .with_state(state)
}

async fn start_check(
    State(st): State<OpsState>,
    req: Result<Json<CheckRequest>, JsonRejection>,
) -> Result<StartReply, StartReply> {
    let Json(req) = req.map_err(not_json)?;
    let path = input_file(&st.dir, &req.input_image_name)?;
    let id = uuid::Uuid::new_v4().to_string();
    st.checks.lock().expect("lock").start(&id, None);
    let (ops, checks, rid, name) = (
        st.ops.clone(),
        st.checks.clone(),
        id.clone(),
        req.input_image_name,
    );
    tokio::spawn(async move {
        let image = Image::File(path.clone());
        let report = ops.check(&image, Declared::from_file_name(&name)).await;
        let p = path.clone();
        let wanted = crate::integrity::Wanted {
            md5: true,
            ..Default::default()
        };
        let md5 = tokio::task::spawn_blocking(move || crate::integrity::digest_file(&p, wanted))
            .await
            .ok()
            .and_then(Result::ok)
            .and_then(|d| d.md5_hex())
            .unwrap_or_default();
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        checks
            .lock()
            .expect("lock")
            .finish(&rid, Some((report, md5, size, name)));
    });
    Ok(started("Check In Progress", id))
}

async fn check_status(
    State(st): State<OpsState>,
    id: Result<UrlPath<String>, PathRejection>,
) -> (StatusCode, Json<CheckAnswer>) {
    let id = request_id(id);
    let answer = |status: CheckStatus, msg: &str, check_info| CheckAnswer {
        status: status.to_value(),
        msg: msg.to_string(),
        check_info,
    };
    match st.checks.lock().expect("lock").get(&id) {
        None => (
            StatusCode::NOT_FOUND,
            Json(answer(CheckStatus::Failed, "no such request", None)),
        ),
        Some(None) => (
            StatusCode::OK,
            Json(answer(CheckStatus::InProgress, "Check In Progress", None)),
        ),
        Some(Some((r, md5, size, name))) => {
            let info = CheckInfo {
                checksum: md5.clone(),
                check_result: Some(r.check_result),
                image_info: ImageInfo {
                    image_end_offset: r.image_end_offset.clone(),
                    check_errors: r.check_errors.clone(),
                    format: r.format.clone(),
                    filename: name.clone(),
                    virtual_size: Some(r.virtual_size_gib),
                    disk_size: size.to_string(),
                },
            };
            (StatusCode::OK, Json(answer(r.status, &r.msg, Some(info))))
        }
    }
}

async fn start_compress(
    State(st): State<OpsState>,
    req: Result<Json<CompressRequest>, JsonRejection>,
) -> Result<StartReply, StartReply> {
    let Json(req) = req.map_err(not_json)?;
    let input = input_file(&st.dir, &req.input_image_name)?;
    let output = resolve(&st.dir, &req.output_image_name)
        .filter(|out| *out != input && !out.is_dir())
        .ok_or_else(|| bad("invalid output image name"))?;
    let id = uuid::Uuid::new_v4().to_string();
    st.compressions.lock().expect("lock").start(
        &id,
        (
            CompressStatus::InProgress,
            "Compress In Progress".into(),
            0.0,
        ),
    );
    let (ops, table, rid) = (st.ops.clone(), st.compressions.clone(), id.clone());
    tokio::spawn(async move {
        let t2 = table.clone();
        let r2 = rid.clone();
        let progress = Box::new(move |p: f64| {
            if let Some(e) = t2.lock().expect("lock").get_mut(&r2) {
                e.2 = p;
            }
        });
        let outcome = match ops.compress(&Image::File(input), &output, progress).await {
            Ok(()) => (
                CompressStatus::Completed,
                "Compress Completed".to_string(),
                1.0,
            ),
            Err(f) => (f.status, f.msg, 0.0),
        };
        table.lock().expect("lock").finish(&rid, outcome);
    });
    Ok(started("Compress In Progress", id))
}

async fn compress_status(
    State(st): State<OpsState>,
    id: Result<UrlPath<String>, PathRejection>,
) -> (StatusCode, Json<CompressAnswer>) {
    let id = request_id(id);
    let (code, status, msg, rate) = match st.compressions.lock().expect("lock").get(&id) {
        None => (
            StatusCode::NOT_FOUND,
            CompressStatus::Failed,
            "no such request".to_string(),
            None,
        ),
        Some((status, msg, rate)) => (StatusCode::OK, *status, msg.clone(), Some(*rate)),
    };
    let answer = CompressAnswer {
        status: status.to_value(),
        msg,
        rate,
    };
    (code, Json(answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Finished requests are forgotten after `RETAIN`; running ones never are.
    #[test]
    fn finished_requests_are_forgotten() {
        let mut r = Requests::default();
        r.start("running", 1);
        r.start("done", 2);
        r.finish("done", 3);
        assert_eq!(r.get("done"), Some(&3));
        let later = Instant::now() + RETAIN + Duration::from_secs(1);
        r.prune(later);
        assert_eq!(r.get("done"), None);
        assert_eq!(r.get("running"), Some(&1));
        *r.get_mut("running").unwrap() = 4;
        assert_eq!(r.get("running"), Some(&4));
    }
}
