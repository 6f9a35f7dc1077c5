//! What an operator needs to know before trusting a start: the start-up summary and
//! `file-system check-config`, which reaches every dependency and lists every problem.

use crate::{
    config::{Config, StorageKind},
    db,
    storage::{ObjectStore, S3Store, StorageError},
};
use std::{path::Path, time::Duration};

/// The crate version and the git revision it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("FS_GIT_REVISION"),
    ")"
);

/// Free bytes on the file system holding `dir`, or its nearest existing ancestor (a first
/// start creates it later); `None` when it cannot be read.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let dir = dir
        .ancestors()
        .find(|d| d.exists())
        .unwrap_or(Path::new("."));
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid C string and `st` a properly sized out-parameter.
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// `qemu-img --version`'s first line, or why it cannot run.
pub async fn qemu_img_version() -> Result<String, String> {
    let out = tokio::process::Command::new("qemu-img")
        .arg("--version")
        .output()
        .await
        .map_err(|e| format!("qemu-img cannot run ({e}); install qemu-utils"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().next().unwrap_or("").trim().to_string())
}

/// The settings that shape a deployment, as `(what, value)` lines without secrets.
pub fn summary(cfg: &Config) -> Vec<(&'static str, String)> {
    let store = match cfg.storage {
        StorageKind::Local => format!("local directory {}", cfg.local_dir.display()),
        StorageKind::S3 => format!(
            "S3 at {}",
            cfg.s3
                .endpoint
                .as_deref()
                .unwrap_or("the AWS default endpoint")
        ),
    };
    let tiers: Vec<String> = cfg
        .tiers
        .values()
        .map(|t| match &t.storage_class {
            Some(c) => format!("{}={}:{c}", t.priority, t.bucket),
            None => format!("{}={}", t.priority, t.bucket),
        })
        .collect();
    let free = free_bytes(&cfg.scratch_dir).map_or("unknown".into(), size);
    vec![
        ("version", VERSION.to_string()),
        ("database", db::redact_url(&cfg.database_url)),
        ("store", store),
        ("tiers", tiers.join(", ")),
        (
            "scratch",
            format!("{} ({free} free)", cfg.scratch_dir.display()),
        ),
        ("max image size", size(cfg.max_image_bytes)),
        (
            "uploads at once",
            format!(
                "{} (then 503 after {} s)",
                cfg.upload_concurrency, cfg.upload_queue_timeout_secs
            ),
        ),
        ("job concurrency", cfg.job_concurrency.to_string()),
        ("auth", auth_summary(&cfg.auth)),
    ]
}

/// How requests are authenticated, never printing a secret.
fn auth_summary(a: &crate::auth::AuthSettings) -> String {
    let mut parts = vec![];
    if let Some(file) = &a.tokens_file {
        parts.push(format!("tokens from {}", file.display()));
    }
    if let Some(jwt) = &a.jwt {
        let mut text = format!("JWT {:?}", jwt.key.algorithm());
        if let Some(iss) = &jwt.issuer {
            text.push_str(&format!(" from {iss}"));
        }
        text.push_str(&format!(", user claim {}", jwt.user_claim));
        parts.push(text);
    }
    let mut text = match parts.is_empty() {
        true => "none: keep the service behind a gateway that authenticates".to_string(),
        false => parts.join("; "),
    };
    if a.metrics_token.is_some() {
        text.push_str("; /metrics needs its token");
    }
    text
}

/// A byte count with binary units: `500 GiB`, `8 MiB`, `1.5 GiB`, `37.2 GiB`.
pub fn size(bytes: u64) -> String {
    let text = bytesize::ByteSize::b(bytes).display().iec().to_string();
    // `500.0 GiB` reads better as `500 GiB`.
    text.replace(".0 ", " ")
}

/// Whether the imageops sidecar at `url` answers HTTP at all (any status).
async fn imageops_answers(url: &str) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    client
        .get(url)
        .send()
        .await
        .map(drop)
        .map_err(|e| format!("imageops sidecar {url} does not answer: {e}"))
}

/// Logs the summary at INFO, and qemu-img's version (a WARN when it cannot run) or the
/// imageops sidecar that runs it.
pub async fn log_summary(cfg: &Config) {
    for (what, value) in summary(cfg) {
        tracing::info!(setting = what, value = %value, "configuration");
    }
    if let Some(url) = &cfg.imageops_url {
        tracing::info!(setting = "imageops", value = %url, "configuration");
        return;
    }
    match qemu_img_version().await {
        Ok(v) => tracing::info!(setting = "qemu-img", value = %v, "configuration"),
        Err(e) => tracing::warn!("{e}: image checks and slims will fail"),
    }
}

/// Reaches the database, the store (every tier's bucket) and qemu-img (or the imageops
/// sidecar); returns every problem found (empty: all good). Takes no lock.
pub async fn check(cfg: &Config) -> Vec<String> {
    let mut problems = vec![];
    match tokio::time::timeout(Duration::from_secs(15), db::connect(&cfg.database_url)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
        }
        Ok(Err(sea_orm::DbErr::Custom(e))) => problems.push(format!("database: {e}")),
        Ok(Err(e)) => problems.push(format!("database: {e}")),
        Err(_) => problems.push(format!(
            "database: {} did not answer within 15 s",
            db::redact_url(&cfg.database_url)
        )),
    }
    match cfg.storage {
        StorageKind::Local => {
            if let Err(e) = writable(&cfg.local_dir) {
                problems.push(format!("store: {}: {e}", cfg.local_dir.display()));
            }
        }
        StorageKind::S3 => match S3Store::new(cfg.s3.clone()).await {
            Ok(store) => {
                for tier in cfg.tiers.values() {
                    let reached =
                        tokio::time::timeout(Duration::from_secs(15), store.ping(&tier.bucket))
                            .await;
                    match reached {
                        Ok(Ok(())) => {}
                        Ok(Err(StorageError::NotFound)) => problems.push(format!(
                            "store: bucket {} does not exist at {} (`serve` creates it when \
                             the credentials allow creating buckets)",
                            tier.bucket,
                            cfg.s3.endpoint.as_deref().unwrap_or("AWS")
                        )),
                        Ok(Err(e)) => problems.push(format!("store: bucket {}: {e}", tier.bucket)),
                        Err(_) => problems.push(format!(
                            "store: bucket {} did not answer within 15 s",
                            tier.bucket
                        )),
                    }
                }
            }
            Err(e) => problems.push(format!("store: {e}")),
        },
    }
    if let Err(e) = writable(&cfg.scratch_dir) {
        problems.push(format!("scratch: {}: {e}", cfg.scratch_dir.display()));
    }
    // Checks and slims run qemu-img here, or in the sidecar that FS_IMAGEOPS_URL names.
    let imageops = match &cfg.imageops_url {
        Some(url) => imageops_answers(url).await,
        None => qemu_img_version().await.map(drop),
    };
    if let Err(e) = imageops {
        problems.push(e);
    }
    problems
}

/// `dir` exists (or can be created) and a file can be written in it.
fn writable(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    tempfile::tempfile_in(dir).map(drop)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_have_units() {
        assert_eq!(super::size(536_870_912_000), "500 GiB");
        assert_eq!(super::size(8 << 20), "8 MiB");
        assert_eq!(super::size(3 << 29), "1.5 GiB");
        assert_eq!(super::size(0), "0 B");
    }
}
