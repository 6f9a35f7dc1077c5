//! Settings, read from environment variables (and `.env` when present).
//!
//! Every variable is listed with its default in `.env.example`. Flat keys, one `envy` call per
//! group: `FS_*` for the service, `DATABASE_URL` / `POSTGRES_*` for the database.

use crate::storage::S3Settings;
use serde::Deserialize;
use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf};

/// One storage tier: where images of a priority live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    pub priority: i32,
    pub bucket: String,
    pub storage_class: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    Local,
    S3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
struct FsVars {
    #[serde(default = "default_listen")]
    listen: SocketAddr,
    #[serde(default = "default_storage")]
    storage: StorageKind,
    #[serde(default = "default_local_dir")]
    local_dir: PathBuf,
    #[serde(default = "default_scratch_dir")]
    scratch_dir: PathBuf,
    #[serde(default = "default_tiers")]
    tiers: String,
    #[serde(default = "default_max_image_bytes")]
    max_image_bytes: u64,
    #[serde(default = "default_upload_ttl")]
    upload_ttl_secs: u64,
    #[serde(default = "default_zip_max_ratio")]
    zip_max_ratio: u64,
    #[serde(default = "default_cors")]
    cors_origins: String,
    #[serde(default = "default_log_format")]
    log_format: LogFormat,
    #[serde(default = "default_data_dir")]
    data_dir: PathBuf,
    #[serde(default = "default_upload_concurrency")]
    upload_concurrency: usize,
    #[serde(default = "default_shutdown_grace")]
    shutdown_grace_secs: u64,
    #[serde(default = "default_body_idle_timeout")]
    body_idle_timeout_secs: u64,
    #[serde(default = "default_header_timeout")]
    header_timeout_secs: u64,
    #[serde(default = "default_drain_max_bytes")]
    drain_max_bytes: u64,
    #[serde(default = "default_drain_timeout")]
    drain_timeout_secs: u64,
    s3_endpoint: Option<String>,
    s3_region: Option<String>,
    s3_force_path_style: Option<bool>,
    #[serde(default = "default_min_part")]
    s3_min_part_bytes: u64,
    #[serde(default = "default_part")]
    s3_part_bytes: u64,
    #[serde(default = "default_s3_concurrency")]
    s3_upload_concurrency: usize,
    #[serde(default)]
    s3_key_prefix: String,
    #[serde(default = "default_job_concurrency")]
    job_concurrency: usize,
    #[serde(default = "default_job_lease")]
    job_lease_secs: u64,
    #[serde(default = "default_job_retention")]
    job_retention_secs: u64,
    #[serde(default = "default_check_timeout")]
    check_timeout_secs: u64,
    #[serde(default = "default_slim_timeout")]
    slim_timeout_secs: u64,
    imageops_url: Option<String>,
    #[serde(default = "default_imageops_listen")]
    imageops_listen: SocketAddr,
}

#[derive(Debug, Clone, Deserialize, Default)]
struct DbVars {
    database_url: Option<String>,
}

/// The original EdgeGallery deployment's variables, honoured when `DATABASE_URL` is unset.
#[derive(Debug, Clone, Deserialize, Default)]
struct PostgresVars {
    host: Option<String>,
    port: Option<u16>,
    username: Option<String>,
    password: Option<String>,
    db_name: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub database_url: String,
    pub storage: StorageKind,
    pub local_dir: PathBuf,
    pub scratch_dir: PathBuf,
    pub tiers: BTreeMap<i32, Tier>,
    pub max_image_bytes: u64,
    /// Largest inflated/compressed ratio of the image in an uploaded zip (0 = no bound).
    pub zip_max_ratio: u64,
    pub upload_ttl_secs: u64,
    /// `None` = any origin.
    pub cors_origins: Option<Vec<String>>,
    pub log_format: LogFormat,
    /// Chunk and upload bodies handled at once (bounds disk and memory use).
    pub upload_concurrency: usize,
    pub shutdown_grace_secs: u64,
    /// A request body that sends nothing for this long fails (408) and frees its upload slot.
    pub body_idle_timeout_secs: u64,
    /// A connection must deliver a request's complete headers within this long (seconds),
    /// or it is closed.
    pub header_timeout_secs: u64,
    /// A request answered before its body was read has the rest of the body read and
    /// discarded, up to this many bytes, so the answer reaches the client (else: closed).
    pub drain_max_bytes: u64,
    /// ... and for up to this long.
    pub drain_timeout_secs: u64,
    pub s3: S3Settings,
    /// Check and slim jobs at once per replica (0: this replica runs no jobs).
    pub job_concurrency: usize,
    /// A job not renewed for this long is taken over by another worker.
    pub job_lease_secs: u64,
    /// Finished jobs (done, failed, cancelled) are deleted after this long.
    pub job_retention_secs: u64,
    pub check_timeout_secs: u64,
    pub slim_timeout_secs: u64,
    /// Remote imageops base URL; `None` = in process.
    pub imageops_url: Option<String>,
    /// Where `file-system imageops` serves.
    pub imageops_listen: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid environment variable: {0}")]
    Env(#[from] envy::Error),
    #[error("invalid FS_TIERS entry {0:?}: expected PRIORITY=BUCKET[:STORAGE_CLASS]")]
    Tier(String),
    #[error("FS_TIERS must define priority 0 (the default tier)")]
    NoDefaultTier,
    #[error("{0}")]
    Invalid(String),
}

fn default_listen() -> SocketAddr {
    "0.0.0.0:9500".parse().expect("valid default address")
}
fn default_storage() -> StorageKind {
    StorageKind::Local
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("./data")
}
fn default_local_dir() -> PathBuf {
    PathBuf::from("./data/objects")
}
fn default_scratch_dir() -> PathBuf {
    PathBuf::from("./data/scratch")
}
fn default_tiers() -> String {
    "0=images".into()
}
fn default_max_image_bytes() -> u64 {
    500 << 30
}
/// Deflate cannot pass about 1032:1, so this refuses near-maximal deflate streams and the
/// far higher ratios of bzip2, zstd or deflate64 bombs, while real disk images (sparse ones
/// included) stay below it.
fn default_zip_max_ratio() -> u64 {
    1000
}
fn default_upload_ttl() -> u64 {
    86_400
}
fn default_cors() -> String {
    "*".into()
}
fn default_log_format() -> LogFormat {
    LogFormat::Text
}
fn default_upload_concurrency() -> usize {
    64
}
fn default_shutdown_grace() -> u64 {
    30
}
fn default_body_idle_timeout() -> u64 {
    60
}
fn default_header_timeout() -> u64 {
    30
}
fn default_drain_max_bytes() -> u64 {
    256 << 20
}
fn default_drain_timeout() -> u64 {
    30
}
fn default_job_concurrency() -> usize {
    2
}
fn default_job_retention() -> u64 {
    7 * 24 * 3600
}

fn default_job_lease() -> u64 {
    60
}
fn default_check_timeout() -> u64 {
    1800
}
fn default_imageops_listen() -> SocketAddr {
    "0.0.0.0:5000".parse().expect("valid default address")
}
fn default_slim_timeout() -> u64 {
    7200
}
fn default_min_part() -> u64 {
    5 << 20
}
fn default_part() -> u64 {
    8 << 20
}
fn default_s3_concurrency() -> usize {
    4
}

impl Config {
    /// Reads `.env` (if any) and the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        let _ = dotenvy::dotenv();
        Self::from_vars(std::env::vars())
    }

    /// Builds the configuration from explicit variables (used by tests).
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        let fs: FsVars = envy::prefixed("FS_").from_iter(vars.clone())?;
        let db: DbVars = envy::from_iter(vars.clone())?;
        let pg: PostgresVars = envy::prefixed("POSTGRES_").from_iter(vars)?;
        let database_url = match db.database_url.filter(|u| !u.is_empty()) {
            Some(url) => url,
            None => match pg.host.filter(|h| !h.is_empty()) {
                Some(host) => format!(
                    "postgres://{}:{}@{}:{}/{}",
                    pct(pg.username.as_deref().unwrap_or("postgres")),
                    pct(pg.password.as_deref().unwrap_or("")),
                    host,
                    pg.port.unwrap_or(5432),
                    pg.db_name.as_deref().unwrap_or("postgres")
                ),
                None => format!(
                    "sqlite://{}?mode=rwc",
                    fs.data_dir.join("file-system.db").display()
                ),
            },
        };
        if fs.max_image_bytes == 0 {
            return Err(ConfigError::Invalid(
                "FS_MAX_IMAGE_BYTES must be > 0".into(),
            ));
        }
        let cors_origins = match fs.cors_origins.trim() {
            "" | "*" => None,
            list => Some(list.split(',').map(|s| s.trim().to_string()).collect()),
        };
        let endpoint = fs.s3_endpoint.filter(|e| !e.is_empty());
        if fs.s3_part_bytes < fs.s3_min_part_bytes {
            return Err(ConfigError::Invalid(
                "FS_S3_PART_BYTES must be at least FS_S3_MIN_PART_BYTES".into(),
            ));
        }
        let s3 = S3Settings {
            force_path_style: fs.s3_force_path_style.unwrap_or(endpoint.is_some()),
            endpoint,
            region: fs.s3_region.filter(|r| !r.is_empty()),
            min_part_bytes: fs.s3_min_part_bytes,
            part_bytes: fs.s3_part_bytes,
            upload_concurrency: fs.s3_upload_concurrency.max(1),
            key_prefix: fs.s3_key_prefix,
            spool_dir: fs.scratch_dir.clone(),
        };
        Ok(Config {
            listen: fs.listen,
            database_url,
            storage: fs.storage,
            local_dir: fs.local_dir,
            scratch_dir: fs.scratch_dir,
            tiers: parse_tiers(&fs.tiers)?,
            max_image_bytes: fs.max_image_bytes,
            zip_max_ratio: fs.zip_max_ratio,
            upload_ttl_secs: fs.upload_ttl_secs,
            cors_origins,
            log_format: fs.log_format,
            upload_concurrency: fs.upload_concurrency.max(1),
            shutdown_grace_secs: fs.shutdown_grace_secs,
            body_idle_timeout_secs: fs.body_idle_timeout_secs.max(1),
            header_timeout_secs: fs.header_timeout_secs.max(1),
            drain_max_bytes: fs.drain_max_bytes,
            drain_timeout_secs: fs.drain_timeout_secs,
            s3,
            job_concurrency: fs.job_concurrency,
            job_lease_secs: fs.job_lease_secs.max(3),
            job_retention_secs: fs.job_retention_secs,
            check_timeout_secs: fs.check_timeout_secs.max(1),
            slim_timeout_secs: fs.slim_timeout_secs.max(1),
            imageops_url: fs.imageops_url.filter(|u| !u.trim().is_empty()),
            imageops_listen: fs.imageops_listen,
        })
    }
}

fn pct(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Parses `0=bucket-a,1=bucket-b:STANDARD_IA`.
pub fn parse_tiers(spec: &str) -> Result<BTreeMap<i32, Tier>, ConfigError> {
    let mut tiers = BTreeMap::new();
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let bad = || ConfigError::Tier(entry.to_string());
        let (prio, rest) = entry.split_once('=').ok_or_else(bad)?;
        let priority: i32 = prio.trim().parse().map_err(|_| bad())?;
        let (bucket, class) = match rest.split_once(':') {
            Some((b, c)) => (
                b.trim(),
                Some(c.trim().to_string()).filter(|c| !c.is_empty()),
            ),
            None => (rest.trim(), None),
        };
        if !valid_bucket(bucket) || tiers.contains_key(&priority) {
            return Err(bad());
        }
        tiers.insert(
            priority,
            Tier {
                priority,
                bucket: bucket.to_string(),
                storage_class: class,
            },
        );
    }
    if !tiers.contains_key(&0) {
        return Err(ConfigError::NoDefaultTier);
    }
    Ok(tiers)
}

/// S3 bucket naming rules (also keeps local tier directories tame).
fn valid_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
        && b.as_bytes()[0].is_ascii_alphanumeric()
        && b.as_bytes()[b.len() - 1].is_ascii_alphanumeric()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_need_no_configuration() {
        let c = Config::from_vars(vec![]).unwrap();
        assert_eq!(c.listen.port(), 9500);
        assert_eq!(c.database_url, "sqlite://./data/file-system.db?mode=rwc");
        assert_eq!(c.tiers[&0].bucket, "images");
        assert_eq!(c.max_image_bytes, 500 << 30);
        assert!(c.cors_origins.is_none());
        assert_eq!(c.drain_max_bytes, 256 << 20);
        assert_eq!(c.drain_timeout_secs, 30);
    }

    #[test]
    fn tiers_parse_and_reject_garbage() {
        let t = parse_tiers("0=bucket-a, 1=bucket-b:STANDARD_IA").unwrap();
        assert_eq!(t[&1].storage_class.as_deref(), Some("STANDARD_IA"));
        assert!(parse_tiers("1=only-one").is_err());
        assert!(parse_tiers("0=Bad_Bucket").is_err());
        assert!(parse_tiers("x=abc").is_err());
        assert!(parse_tiers("0=abc,0=def").is_err());
    }

    #[test]
    fn postgres_variables_used_without_database_url() {
        let c = Config::from_vars(vars(&[
            ("POSTGRES_HOST", "db"),
            ("POSTGRES_USERNAME", "u"),
            ("POSTGRES_PASSWORD", "p@ss"),
            ("POSTGRES_DB_NAME", "fs"),
        ]))
        .unwrap();
        assert_eq!(c.database_url, "postgres://u:p%40ss@db:5432/fs");
        let c = Config::from_vars(vars(&[
            ("DATABASE_URL", "sqlite::memory:"),
            ("POSTGRES_HOST", "db"),
        ]))
        .unwrap();
        assert_eq!(c.database_url, "sqlite::memory:");
    }
}
