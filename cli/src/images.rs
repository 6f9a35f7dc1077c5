//! Image records and the commands on them: `ls`, `info`, `rm`, `slim`, `check`, `cancel`, and
//! following a check or a slim to its end (`--wait`).

use crate::{
    api::{read_json, Api},
    error::{Error, ExitCode, Result},
    progress,
    report::Report,
    units,
};
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;

/// The service's plain-text answers (SPEC section 2: the original's texts).
mod texts {
    pub const DELETED: &str = "delete success";
    pub const CANCELLED: &str = "cancel success";
    /// A check queued, or one already running.
    pub const CHECK: &[&str] = &[
        "check in progress",
        "The image is being checked. No need to check again.",
    ];
    /// A slim queued, one already running, or the image slimmed before.
    pub const SLIM: &[&str] = &[
        "compress in progress",
        "The image file is being slimmed. No need to slim again.",
        "The image file has already been slimmed. No need to slim again. Pls request to check directly",
    ];
}

/// How often a check or slim is polled.
const POLL: Duration = Duration::from_millis(500);

/// `checkStatusResponse.status` (SPEC section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckStatus {
    Consistent,
    Corrupted,
    LeakedClusters,
    Failed,
    InProgress,
    NotChecked,
    TimedOut,
    /// A value this client does not know.
    Unknown(i64),
}

impl CheckStatus {
    /// From the record's number.
    pub fn from_code(n: i64) -> CheckStatus {
        match n {
            0 => CheckStatus::Consistent,
            1 => CheckStatus::Corrupted,
            2 => CheckStatus::LeakedClusters,
            3 => CheckStatus::Failed,
            4 => CheckStatus::InProgress,
            5 => CheckStatus::NotChecked,
            6 => CheckStatus::TimedOut,
            n => CheckStatus::Unknown(n),
        }
    }

    /// Whether the image can be used: consistent, leaked clusters only (nothing lost), or a
    /// type that is not checked (raw, ISO: its checksums still verified).
    pub fn usable(self) -> bool {
        matches!(
            self,
            CheckStatus::Consistent | CheckStatus::LeakedClusters | CheckStatus::NotChecked
        )
    }

    /// A readable name.
    pub fn label(self) -> String {
        match self {
            CheckStatus::Consistent => "consistent".into(),
            CheckStatus::Corrupted => "corrupted".into(),
            CheckStatus::LeakedClusters => "leaked clusters".into(),
            CheckStatus::Failed => "check failed".into(),
            CheckStatus::InProgress => "checking".into(),
            CheckStatus::NotChecked => "not checked (type)".into(),
            CheckStatus::TimedOut => "check timed out".into(),
            CheckStatus::Unknown(n) => format!("status {n}"),
        }
    }
}

/// `slimStatus` (SPEC section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlimStatus {
    NotSlimmed,
    Slimming,
    Slimmed,
    Failed,
    Unknown(i64),
}

impl SlimStatus {
    /// From the record's number.
    pub fn from_code(n: i64) -> SlimStatus {
        match n {
            0 => SlimStatus::NotSlimmed,
            1 => SlimStatus::Slimming,
            2 => SlimStatus::Slimmed,
            3 => SlimStatus::Failed,
            n => SlimStatus::Unknown(n),
        }
    }

    /// A readable name.
    pub fn label(self) -> String {
        match self {
            SlimStatus::NotSlimmed => "-".into(),
            SlimStatus::Slimming => "slimming".into(),
            SlimStatus::Slimmed => "slimmed".into(),
            SlimStatus::Failed => "slim failed".into(),
            SlimStatus::Unknown(n) => format!("status {n}"),
        }
    }
}

/// The fields of an image record (`GET /images/{id}`) this client reads; the whole record is
/// kept as JSON for `--json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageView {
    pub image_id: String,
    pub file_name: String,
    #[serde(default)]
    pub user_id: String,
    #[serde(default)]
    pub upload_time: String,
    #[serde(default)]
    pub slim_status: i64,
    /// Bytes served.
    #[serde(default)]
    pub size: i64,
    /// SHA-256 (hex) of the bytes served; empty until known.
    #[serde(default)]
    pub sha256: String,
    pub check_status_response: CheckView,
    #[serde(default)]
    pub compress_info: CompressView,
}

/// `checkStatusResponse`.
#[derive(Debug, Clone, Deserialize)]
pub struct CheckView {
    pub status: i64,
    #[serde(default)]
    pub msg: String,
}

/// `compressInfo`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompressView {
    #[serde(default)]
    pub compress_msg: String,
    /// Progress 0..1 while slimming.
    #[serde(default)]
    pub compress_rate: f64,
}

impl ImageView {
    /// The check status.
    pub fn check(&self) -> CheckStatus {
        CheckStatus::from_code(self.check_status_response.status)
    }

    /// The slim status.
    pub fn slim(&self) -> SlimStatus {
        SlimStatus::from_code(self.slim_status)
    }
}

/// Reads one image: its typed view and its whole record.
pub async fn fetch(api: &Api, id: &str) -> Result<(ImageView, Value)> {
    let raw: Value = api
        .get_json(&format!("/images/{}", path_segment(id)?))
        .await?;
    let view: ImageView = serde_json::from_value(raw.clone())
        .map_err(|e| Error::Protocol(format!("image record: {e}")))?;
    Ok((view, raw))
}

/// Refuses ids that would change the URL's path (the service takes UUIDs only).
pub fn path_segment(id: &str) -> Result<&str> {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(Error::NotFound(format!("no image has the id {id:?}")));
    }
    Ok(id)
}

/// `fsctl ls`: the images, as a table or the service's JSON array.
pub async fn list(
    api: &Api,
    user: Option<&str>,
    limit: Option<u64>,
    offset: Option<u64>,
) -> Result<Report> {
    let mut query: Vec<(&str, String)> = vec![];
    if let Some(u) = user {
        query.push(("userId", u.to_string()));
    }
    if let Some(l) = limit {
        query.push(("limit", l.to_string()));
    }
    if let Some(o) = offset {
        query.push(("offset", o.to_string()));
    }
    let url = api.url("/images");
    let r = api
        .send("GET /images", || api.http().get(&url).query(&query))
        .await?;
    let raw: Value = read_json(r, "GET /images").await?;
    let views: Vec<ImageView> = serde_json::from_value(raw.clone())
        .map_err(|e| Error::Protocol(format!("image list: {e}")))?;
    let mut human = format!(
        "{:<36}  {:<32}  {:<12}  {:>10}  {:<19}  {:<18}  {}\n",
        "IMAGE ID", "NAME", "USER", "SIZE", "UPLOADED", "CHECK", "SLIM"
    );
    for v in &views {
        human.push_str(&format!(
            "{:<36}  {:<32}  {:<12}  {:>10}  {:<19}  {:<18}  {}\n",
            v.image_id,
            v.file_name,
            v.user_id,
            units::human(v.size.max(0) as u64),
            v.upload_time,
            v.check().label(),
            v.slim().label()
        ));
    }
    Ok(Report::ok(raw, human.trim_end()))
}

/// `fsctl info ID`: one image's record.
pub async fn info(api: &Api, id: &str) -> Result<Report> {
    let (v, raw) = fetch(api, id).await?;
    Ok(Report::ok(raw, describe(&v)))
}

/// A few lines about an image, for people.
pub fn describe(v: &ImageView) -> String {
    let mut s = format!(
        "image    {}\nname     {}\nuser     {}\nuploaded {}\nsize     {} ({} bytes)\nsha256   {}\ncheck    {}",
        v.image_id,
        v.file_name,
        v.user_id,
        v.upload_time,
        units::human(v.size.max(0) as u64),
        v.size,
        if v.sha256.is_empty() { "(not known yet)" } else { &v.sha256 },
        v.check().label(),
    );
    if !v.check_status_response.msg.is_empty() {
        s.push_str(&format!(": {}", v.check_status_response.msg));
    }
    s.push_str(&format!("\nslim     {}", v.slim().label()));
    if v.slim() != SlimStatus::NotSlimmed && !v.compress_info.compress_msg.is_empty() {
        s.push_str(&format!(": {}", v.compress_info.compress_msg));
    }
    s
}

/// `fsctl rm ID`: deletes the image (the service answers success also for a missing one).
pub async fn remove(api: &Api, id: &str) -> Result<Report> {
    let url = api.url(&format!("/images/{}", path_segment(id)?));
    let r = api
        .send("DELETE /images/{id}", || api.http().delete(&url))
        .await?;
    let msg = Api::text(r, "DELETE /images/{id}", &[texts::DELETED]).await?;
    Ok(Report::ok(json!({"imageId": id, "message": msg}), msg))
}

/// `fsctl cancel IDENTIFIER`: drops a chunked upload's chunks.
pub async fn cancel(api: &Api, identifier: &str, user: Option<&str>) -> Result<Report> {
    let url = api.url("/images/upload");
    let mut query = vec![("identifier", identifier)];
    query.extend(user.map(|u| ("userId", u)));
    let r = api
        .send("DELETE /images/upload", || {
            api.http().delete(&url).query(&query)
        })
        .await?;
    let msg = Api::text(r, "DELETE /images/upload", &[texts::CANCELLED]).await?;
    Ok(Report::ok(
        json!({"identifier": identifier, "message": msg}),
        msg,
    ))
}

/// `fsctl check ID [--wait]`: asks for a fresh check; with `wait`, follows it to its result
/// (exit code 5 when the image is not usable).
pub async fn check(api: &Api, id: &str, wait: bool) -> Result<Report> {
    let url = api.url(&format!("/images/{}/action/check", path_segment(id)?));
    let r = api.send("POST check", || api.http().post(&url)).await?;
    let msg = Api::text(r, "POST check", texts::CHECK).await?;
    if !wait {
        return Ok(Report::ok(json!({"imageId": id, "message": msg}), msg));
    }
    wait_check(api, id).await
}

/// Polls an image until its check has ended; the report's exit code says whether the image is
/// usable ([`CheckStatus::usable`]).
pub async fn wait_check(api: &Api, id: &str) -> Result<Report> {
    let (v, raw) = loop {
        let (v, raw) = fetch(api, id).await?;
        if v.check() != CheckStatus::InProgress {
            break (v, raw);
        }
        tokio::time::sleep(POLL).await;
    };
    let exit = if v.check().usable() {
        ExitCode::Ok
    } else {
        ExitCode::Verification
    };
    let human = format!(
        "check of {}: {}{}",
        v.image_id,
        v.check().label(),
        if v.check_status_response.msg.is_empty() {
            String::new()
        } else {
            format!(" ({})", v.check_status_response.msg)
        }
    );
    Ok(Report {
        json: raw,
        human,
        exit,
    })
}

/// `fsctl slim ID [--wait]`: asks for a slim; with `wait`, follows `compressRate` on a
/// progress bar until the slim ends (exit code 7 when it failed).
pub async fn slim(api: &Api, id: &str, wait: bool) -> Result<Report> {
    let url = api.url(&format!("/images/{}/action/slim", path_segment(id)?));
    let r = api.send("POST slim", || api.http().post(&url)).await?;
    let msg = Api::text(r, "POST slim", texts::SLIM).await?;
    if !wait {
        return Ok(Report::ok(json!({"imageId": id, "message": msg}), msg));
    }
    let bar = progress::percent("slim");
    let (v, raw) = loop {
        let (v, raw) = fetch(api, id).await?;
        match v.slim() {
            SlimStatus::Slimming | SlimStatus::NotSlimmed => {
                bar.set_position((v.compress_info.compress_rate.clamp(0.0, 1.0) * 100.0) as u64);
                tokio::time::sleep(POLL).await;
            }
            _ => break (v, raw),
        }
    };
    bar.finish_and_clear();
    let human = format!(
        "slim of {}: {}{}",
        v.image_id,
        v.slim().label(),
        if v.compress_info.compress_msg.is_empty() {
            String::new()
        } else {
            format!(" ({})", v.compress_info.compress_msg)
        }
    );
    let exit = if v.slim() == SlimStatus::Slimmed {
        ExitCode::Ok
    } else {
        ExitCode::JobFailed
    };
    Ok(Report {
        json: raw,
        human,
        exit,
    })
}
