//! Settings, read from environment variables (and `./.env` when present).
//!
//! Every variable is listed with its default in `.env.example`: `FS_*` for the service,
//! `DATABASE_URL` / `POSTGRES_*` for the database. Sizes take units (`8MiB`, `500GiB`, plain
//! numbers are bytes), times take units (`30s`, `24h`, plain numbers are seconds), choices
//! ignore case; every error names the variable, the value and the form expected.

mod settings;

use crate::{
    auth::{jwt::JwtKey, AuthSettings, JwtSettings, Secret},
    storage::{s3::S3Checksum, S3Settings},
};
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
};

/// One storage tier: where images of a priority live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    pub priority: i32,
    pub bucket: String,
    pub storage_class: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageKind {
    Local,
    S3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
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
    /// The most chunked uploads one user may have open (or merging) at once; 0 = no limit.
    pub max_open_uploads: u64,
    /// `None` = any origin; an empty list = none (the default with authentication on).
    pub cors_origins: Option<Vec<String>>,
    pub log_format: LogFormat,
    /// Chunk and upload bodies handled at once (bounds disk and memory use).
    pub upload_concurrency: usize,
    /// How long a request body waits for an upload slot (seconds) before it is answered
    /// 503 `SERVICE_BUSY` with `Retry-After`.
    pub upload_queue_timeout_secs: u64,
    pub shutdown_grace_secs: u64,
    /// A request body that sends nothing for this long fails (408) and frees its upload slot.
    pub body_idle_timeout_secs: u64,
    /// A request body must bring at least this many bytes per second, on average over each
    /// `body_idle_timeout_secs` the service waits for it, or it fails (408); 0: no minimum.
    pub body_min_bytes_per_sec: u64,
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
    /// The longest wait between two attempts of a failed job (seconds); the waits double
    /// from 2 s up to it.
    pub job_retry_max_secs: u64,
    /// A job that fails because the store or the database cannot be reached is tried again,
    /// past its usual attempts, until it is this old (seconds since it was queued): an outage
    /// is waited out, not made the image's verdict.
    pub job_outage_secs: u64,
    /// How long `serve` waits at start for a database or a store that cannot be reached yet
    /// (seconds; 0: it stops at the first failure). For deployments whose database and store
    /// start beside the service (a helm release): the start waits instead of crash-looping.
    pub startup_wait_secs: u64,
    pub check_timeout_secs: u64,
    pub slim_timeout_secs: u64,
    /// Remote imageops base URL; `None` = in process.
    pub imageops_url: Option<String>,
    /// Where `file-system imageops` serves.
    pub imageops_listen: SocketAddr,
    /// Authentication, the metrics token and trusted proxies.
    pub auth: AuthSettings,
    /// Settings that were ignored, to be logged once logging is up.
    pub warnings: Vec<String>,
    /// Bytes each user may hold (images as uploaded and chunks not merged yet) unless an
    /// admin set its own limit; 0 = unlimited.
    pub quota_bytes: u64,
    /// Images each user may hold unless an admin set its own limit; 0 = unlimited.
    pub quota_images: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Every setting that could not be used, each naming its variable, the value given and
    /// the form expected.
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
    #[error("invalid FS_TIERS entry {0:?}: expected PRIORITY=BUCKET[:STORAGE_CLASS]")]
    Tier(String),
    #[error("FS_TIERS must define priority 0 (the default tier)")]
    NoDefaultTier,
    #[error("FS_TIERS names priority {0} twice: each priority has one bucket")]
    DuplicateTier(i32),
    #[error(
        "FS_TIERS bucket {0:?} is not a bucket name: 3 to 63 characters of a-z, 0-9, '-' and '.', \
         beginning and ending with a letter or digit (S3's rules)"
    )]
    BadBucket(String),
}

/// What `Config::from_env` read besides the process environment.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// `.env` of the working directory, when there was one.
    pub dotenv: Option<PathBuf>,
}

impl Config {
    /// Reads `./.env` when the working directory has one (only there: never a parent's), then
    /// the process environment, which wins.
    pub fn from_env() -> Result<(Self, Sources), ConfigError> {
        let mut sources = Sources::default();
        let dotenv = PathBuf::from(".env");
        if dotenv.is_file() {
            dotenvy::from_path(&dotenv).map_err(|e| dotenv_error(&dotenv, e))?;
            sources.dotenv = Some(dotenv);
        }
        Ok((Self::from_vars(std::env::vars())?, sources))
    }

    /// Builds the configuration from explicit variables (used by tests). Every problem is
    /// reported at once.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut r = settings::Reader::new(vars);
        use settings::{
            bytes, bytes_up_to, choice, number, number_in, secs, secs_from, socket_addr,
        };
        let data_dir = r.path("FS_DATA_DIR", "./data");
        // The store's directory and scratch are under FS_DATA_DIR unless set apart.
        let scratch_dir = r.path_under("FS_SCRATCH_DIR", &data_dir, "scratch");
        let mut warnings = vec![];
        let mut config = Config {
            listen: r.get("FS_LISTEN", default_addr(9500), socket_addr),
            storage: r.get(
                "FS_STORAGE",
                StorageKind::Local,
                choice(&[("local", StorageKind::Local), ("s3", StorageKind::S3)]),
            ),
            local_dir: r.path_under("FS_LOCAL_DIR", &data_dir, "objects"),
            s3: read_s3(&mut r, &scratch_dir),
            database_url: read_database_url(&mut r, &data_dir),
            scratch_dir,
            // Parsed below, from FS_TIERS.
            tiers: BTreeMap::new(),
            max_image_bytes: r.get("FS_MAX_IMAGE_BYTES", 500 << 30, bytes),
            // Deflate cannot pass about 1032:1, so this refuses near-maximal deflate streams
            // and the far higher ratios of bzip2, zstd or deflate64 bombs, while real disk
            // images (sparse ones included) stay below it.
            zip_max_ratio: r.get("FS_ZIP_MAX_RATIO", 1000, number),
            upload_ttl_secs: r.get("FS_UPLOAD_TTL_SECS", 86_400, secs_from(1)),
            max_open_uploads: r.get("FS_MAX_OPEN_UPLOADS", 1000, number_in(0, i64::MAX as u64)),
            // Decided below, once authentication is known.
            cors_origins: None,
            log_format: r.get(
                "FS_LOG_FORMAT",
                LogFormat::Text,
                choice(&[("text", LogFormat::Text), ("json", LogFormat::Json)]),
            ),
            upload_concurrency: r.get("FS_UPLOAD_CONCURRENCY", 64, number_in(1, 100_000)),
            upload_queue_timeout_secs: r.get("FS_UPLOAD_QUEUE_TIMEOUT_SECS", 30, secs_from(1)),
            shutdown_grace_secs: r.get("FS_SHUTDOWN_GRACE_SECS", 30, secs),
            body_idle_timeout_secs: r.get("FS_BODY_IDLE_TIMEOUT_SECS", 60, secs_from(1)),
            body_min_bytes_per_sec: r.get("FS_BODY_MIN_BYTES_PER_SEC", 1024, bytes),
            header_timeout_secs: r.get("FS_HEADER_TIMEOUT_SECS", 30, secs_from(1)),
            drain_max_bytes: r.get("FS_DRAIN_MAX_BYTES", 256 << 20, bytes),
            drain_timeout_secs: r.get("FS_DRAIN_TIMEOUT_SECS", 30, secs),
            job_concurrency: r.get("FS_JOB_CONCURRENCY", 2, number_in(0, 1024)),
            job_lease_secs: r.get("FS_JOB_LEASE_SECS", 60, secs_from(3)),
            job_retention_secs: r.get("FS_JOB_RETENTION_SECS", 7 * 24 * 3600, secs_from(1)),
            job_retry_max_secs: r.get("FS_JOB_RETRY_MAX_SECS", 300, secs_from(1)),
            job_outage_secs: r.get("FS_JOB_OUTAGE_SECS", 24 * 3600, secs),
            startup_wait_secs: r.get("FS_STARTUP_WAIT_SECS", 0, secs),
            check_timeout_secs: r.get("FS_CHECK_TIMEOUT_SECS", 1800, secs_from(1)),
            slim_timeout_secs: r.get("FS_SLIM_TIMEOUT_SECS", 7200, secs_from(1)),
            imageops_url: r.opt("FS_IMAGEOPS_URL", settings::http_url),
            imageops_listen: r.get("FS_IMAGEOPS_LISTEN", default_addr(5000), socket_addr),
            quota_bytes: r.get("FS_QUOTA_BYTES", 0, bytes_up_to(i64::MAX as u64)),
            quota_images: r.get("FS_QUOTA_IMAGES", 0, number_in(0, i64::MAX as u64)),
            auth: read_auth(&mut r, &mut warnings),
            warnings: vec![],
        };
        let local_dir_set = r.string("FS_LOCAL_DIR").is_some();
        warnings.extend(old_store_warning(&config, local_dir_set));
        config.warnings = warnings;
        if config.max_image_bytes == 0 {
            r.problem("FS_MAX_IMAGE_BYTES must be more than 0 bytes");
        }
        let tiers_spec = r.string("FS_TIERS").unwrap_or_else(|| "0=images".into());
        match parse_tiers(&tiers_spec) {
            Ok(t) => config.tiers = t,
            Err(e) => r.problem(&e.to_string()),
        }
        let cors = r.string("FS_CORS_ORIGINS");
        if let Some(e) = cors.as_deref().and_then(cors_problem) {
            r.problem(&e);
        }
        r.finish()?;
        config.cors_origins = cors_origins(cors.as_deref(), &config.auth);
        Ok(config)
    }
}

/// S3's largest part (and so the largest part size that makes sense anywhere), in bytes.
const MAX_PART: u64 = 5 << 30;

/// The `FS_S3_*` settings; `scratch_dir` is where parts are spooled.
fn read_s3(r: &mut settings::Reader, scratch_dir: &Path) -> S3Settings {
    use settings::{bytes, bytes_up_to, choice, number_in};
    let endpoint = r.opt("FS_S3_ENDPOINT", settings::http_url);
    let region = r.string("FS_S3_REGION");
    let force_path_style = r.opt("FS_S3_FORCE_PATH_STYLE", settings::boolean);
    let min_part_bytes = r.get("FS_S3_MIN_PART_BYTES", 5 << 20, bytes_up_to(MAX_PART));
    let part_bytes = r.get("FS_S3_PART_BYTES", 8 << 20, bytes_up_to(MAX_PART));
    let upload_concurrency: usize = r.get("FS_S3_UPLOAD_CONCURRENCY", 4, number_in(1, 64));
    let readahead_bytes = r.get("FS_S3_READAHEAD_BYTES", 128 << 20, bytes);
    let key_prefix = r.string("FS_S3_KEY_PREFIX").unwrap_or_default();
    // S3 keys are UTF-8 of at most 1024 bytes; a control character broke the bucket's
    // lifecycle configuration for every deployment sharing it.
    if key_prefix.chars().any(char::is_control) || key_prefix.len() > 512 {
        r.problem(
            "FS_S3_KEY_PREFIX is not valid: expected at most 512 bytes without control \
             characters (e.g. file-system/)",
        );
    }
    let checksum = r.get(
        "FS_S3_CHECKSUM",
        S3Checksum::default(),
        choice(&[
            ("crc32c", S3Checksum::Crc32c),
            ("sha256", S3Checksum::Sha256),
            ("off", S3Checksum::Off),
        ]),
    );
    if part_bytes < min_part_bytes {
        r.problem("FS_S3_PART_BYTES must be at least FS_S3_MIN_PART_BYTES");
    }
    S3Settings {
        force_path_style: force_path_style.unwrap_or(endpoint.is_some()),
        endpoint,
        region,
        min_part_bytes,
        part_bytes,
        upload_concurrency,
        readahead_bytes,
        key_prefix,
        spool_dir: scratch_dir.to_path_buf(),
        checksum,
    }
}

/// `DATABASE_URL`, else one made of `POSTGRES_*` (the original's variables), else SQLite in
/// `data_dir`.
fn read_database_url(r: &mut settings::Reader, data_dir: &Path) -> String {
    let url = match r.string("DATABASE_URL") {
        Some(url) => url,
        None => match r.string("POSTGRES_HOST") {
            Some(host) => format!(
                "postgres://{}:{}@{}:{}/{}",
                pct(&r
                    .string("POSTGRES_USERNAME")
                    .unwrap_or_else(|| "postgres".into())),
                pct(&r.secret("POSTGRES_PASSWORD").unwrap_or_default()),
                host,
                r.get::<u16>("POSTGRES_PORT", 5432, settings::number),
                r.string("POSTGRES_DB_NAME")
                    .unwrap_or_else(|| "postgres".into())
            ),
            None => format!(
                "sqlite://{}?mode=rwc",
                data_dir.join("file-system.db").display()
            ),
        },
    };
    let scheme = url.split(':').next().unwrap_or("");
    if !matches!(scheme, "sqlite" | "postgres" | "postgresql") {
        // Named without its value, which may hold a password.
        r.problem(
            "DATABASE_URL is not valid: expected sqlite://PATH or \
             postgres://USER:PASSWORD@HOST:PORT/DATABASE",
        );
    }
    url
}

/// Before FS_DATA_DIR placed the local store, it was ./data/objects whatever FS_DATA_DIR said:
/// a warning when that directory is there and the store, not set apart, is now elsewhere.
fn old_store_warning(config: &Config, local_dir_set: bool) -> Option<String> {
    let before = Path::new("./data/objects");
    let same = |a: &Path, b: &Path| {
        a == b || std::fs::canonicalize(a).ok() == std::fs::canonicalize(b).ok()
    };
    let moved = config.storage == StorageKind::Local
        && !local_dir_set
        && before.is_dir()
        && !same(&config.local_dir, before);
    moved.then(|| {
        format!(
            "FS_LOCAL_DIR is not set, so the local store is {} (under FS_DATA_DIR); \
             ./data/objects, the local store when FS_DATA_DIR did not place it, is there too: \
             set FS_LOCAL_DIR=./data/objects to keep using the objects in it",
            config.local_dir.display()
        )
    })
}

/// What is wrong with an `FS_CORS_ORIGINS` value: `*` among other origins (any origin, or
/// those: a browser is sent one or the other), or an origin that is not `http(s)://host[:port]`
/// (the Fetch standard's serialized origin: no path, no trailing `/`).
fn cors_problem(value: &str) -> Option<String> {
    let origins: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .collect();
    if origins.len() > 1 && origins.contains(&"*") {
        return Some(
            "FS_CORS_ORIGINS mixes * with other origins: give * alone (any origin) or the \
             origins alone"
                .into(),
        );
    }
    let bad = origins.iter().find(|o| {
        let rest = o
            .strip_prefix("https://")
            .or_else(|| o.strip_prefix("http://"));
        **o != "*"
            && !rest.is_some_and(|r| {
                !r.is_empty()
                    && r.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c))
            })
    })?;
    Some(format!(
        "FS_CORS_ORIGINS {bad:?} is not valid: expected * or origins such as \
         https://console.example or http://127.0.0.1:8080 (no path), comma-separated"
    ))
}

/// The origins `FS_CORS_ORIGINS` allows (`None`: any).
fn cors_origins(setting: Option<&str>, auth: &AuthSettings) -> Option<Vec<String>> {
    match setting.map(str::trim) {
        // With authentication on, browsers of other origins get nothing unless allowed.
        None if auth.enabled() => Some(vec![]),
        None | Some("*") => None,
        Some(list) => Some(
            list.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        ),
    }
}

/// `FS_AUTH` and what goes with it. Every inconsistency is a problem; `FS_JWT_*` or a tokens
/// file set while their mode is off is ignored with a warning (a half-finished roll-out
/// should not stop the service, but should not go unnoticed either).
fn read_auth(r: &mut settings::Reader, warnings: &mut Vec<String>) -> AuthSettings {
    let (token_on, jwt_on) = r.get("FS_AUTH", (false, false), |v| {
        let mut modes = (false, false);
        for m in v.split(',').map(|m| m.trim().to_ascii_lowercase()) {
            match m.as_str() {
                "none" if v.trim().eq_ignore_ascii_case("none") => {}
                "token" => modes.0 = true,
                "jwt" => modes.1 = true,
                _ => return Err("none, token, jwt or token,jwt".into()),
            }
        }
        Ok(modes)
    });
    AuthSettings {
        tokens_file: read_tokens_file(r, token_on, warnings),
        jwt: read_jwt(r, jwt_on, warnings),
        metrics_token: r.secret("FS_METRICS_TOKEN").map(Secret::new),
        trusted_proxies: r.get("FS_TRUSTED_PROXIES", vec![], trusted_proxies),
    }
}

/// `FS_AUTH_TOKENS_FILE`, loaded once to find its problems, when token mode is on.
fn read_tokens_file(
    r: &mut settings::Reader,
    token_on: bool,
    warnings: &mut Vec<String>,
) -> Option<PathBuf> {
    match (token_on, r.string("FS_AUTH_TOKENS_FILE").map(PathBuf::from)) {
        (true, None) => {
            r.problem(
                "FS_AUTH=token needs FS_AUTH_TOKENS_FILE (lines `sha256:<hex> <userId> <role>`)",
            );
            None
        }
        (true, Some(path)) => {
            if let Err((e, _)) = crate::auth::tokens::load(&path) {
                r.problem(&e);
            }
            Some(path)
        }
        (false, Some(_)) => {
            warnings.push(
                "FS_AUTH_TOKENS_FILE is set but FS_AUTH does not include token: ignored".into(),
            );
            None
        }
        (false, None) => None,
    }
}

/// The `FS_JWT_*` settings when JWT mode is on (`None` with a problem when they do not make
/// a whole); with it off, a warning names those that are set.
fn read_jwt(
    r: &mut settings::Reader,
    jwt_on: bool,
    warnings: &mut Vec<String>,
) -> Option<JwtSettings> {
    let secret = r.secret("FS_JWT_HS256_SECRET").map(Secret::new);
    let key_file = r.string("FS_JWT_PUBLIC_KEY_FILE").map(PathBuf::from);
    let issuer = r.string("FS_JWT_ISSUER");
    let audience = r.string("FS_JWT_AUDIENCE");
    let user_claim = r.string("FS_JWT_USER_CLAIM");
    let admin_claim = r.string("FS_JWT_ADMIN_CLAIM");
    let admin_value = r.string("FS_JWT_ADMIN_VALUE");
    let leeway_secs = r.get("FS_JWT_LEEWAY_SECS", 60, settings::secs);
    if !jwt_on {
        let set: Vec<&str> = [
            ("FS_JWT_HS256_SECRET", secret.is_some()),
            ("FS_JWT_PUBLIC_KEY_FILE", key_file.is_some()),
            ("FS_JWT_ISSUER", issuer.is_some()),
            ("FS_JWT_AUDIENCE", audience.is_some()),
            ("FS_JWT_USER_CLAIM", user_claim.is_some()),
            ("FS_JWT_ADMIN_CLAIM", admin_claim.is_some()),
            ("FS_JWT_ADMIN_VALUE", admin_value.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        if !set.is_empty() {
            warnings.push(format!(
                "{} set but FS_AUTH does not include jwt: ignored",
                set.join(", ")
            ));
        }
        return None;
    }
    let key = jwt_key(r, secret, key_file);
    let admin = match (admin_claim, admin_value) {
        (Some(c), Some(v)) => Some((c, v)),
        (None, None) => None,
        _ => {
            r.problem("FS_JWT_ADMIN_CLAIM and FS_JWT_ADMIN_VALUE go together: set both or neither");
            None
        }
    };
    key.map(|key| JwtSettings {
        key,
        issuer,
        audience,
        user_claim: user_claim.unwrap_or_else(|| "sub".into()),
        admin,
        leeway_secs,
    })
}

/// The one JWT key: an HS256 secret of at least 32 bytes or a PEM public key file.
fn jwt_key(
    r: &mut settings::Reader,
    secret: Option<Secret>,
    key_file: Option<PathBuf>,
) -> Option<JwtKey> {
    match (secret, key_file) {
        (Some(_), Some(_)) => {
            r.problem("FS_AUTH=jwt takes one key: FS_JWT_HS256_SECRET or FS_JWT_PUBLIC_KEY_FILE, not both");
            None
        }
        (None, None) => {
            r.problem("FS_AUTH=jwt needs a key: FS_JWT_HS256_SECRET or FS_JWT_PUBLIC_KEY_FILE (PEM, RSA or P-256)");
            None
        }
        (Some(s), None) => {
            if s.expose().len() < 32 {
                r.problem("FS_JWT_HS256_SECRET must be at least 32 bytes (RFC 7518 asks for at least 256 bits)");
            }
            Some(JwtKey::Hs256(s))
        }
        (None, Some(path)) => match JwtKey::from_pem_file(path.clone()) {
            Ok(k) => Some(k),
            Err(e) => {
                r.problem(&format!("FS_JWT_PUBLIC_KEY_FILE {}: {e}", path.display()));
                None
            }
        },
    }
}

/// `FS_TRUSTED_PROXIES`: a comma list of IP addresses and CIDRs.
fn trusted_proxies(v: &str) -> Result<Vec<ipnet::IpNet>, String> {
    v.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<ipnet::IpNet>()
                .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    format!("a comma list of IP addresses or CIDRs (e.g. 10.0.0.0/8, 127.0.0.1); {p:?} is neither")
                })
        })
        .collect()
}

/// A `.env` that cannot be read, named by line number and variable, never by its value
/// (which may be a secret; dotenvy's message quotes the whole line).
fn dotenv_error(path: &std::path::Path, e: dotenvy::Error) -> ConfigError {
    let text = match e {
        dotenvy::Error::LineParse(fragment, _) => {
            // `fragment` is the unparsed rest of the line (often the value): find its line.
            let content = std::fs::read_to_string(path).unwrap_or_default();
            let found = content
                .lines()
                .enumerate()
                .find(|(_, l)| !fragment.trim().is_empty() && l.contains(fragment.trim()));
            // Only the variable's name: the leading name characters, never what follows them
            // (a line without `=`, `KEY: secret`, is all value).
            let name_of = |l: &str| -> String {
                let l = l.trim_start();
                let l = l.strip_prefix("export ").unwrap_or(l).trim_start();
                l.chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
                    .collect()
            };
            let (number, name) = match found {
                Some((i, l)) => ((i + 1).to_string(), name_of(l)),
                None => ("?".to_string(), "?".to_string()),
            };
            format!(
                "{}: line {number} ({name}) cannot be parsed: quote a value that holds spaces, \
                 quotes or '#' (VAR='value')",
                path.display()
            )
        }
        other => format!("{}: {other}", path.display()),
    };
    ConfigError::Invalid(vec![text])
}

fn default_addr(port: u16) -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], port))
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
        if !valid_bucket(bucket) {
            return Err(ConfigError::BadBucket(bucket.chars().take(70).collect()));
        }
        if tiers.contains_key(&priority) {
            return Err(ConfigError::DuplicateTier(priority));
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
        assert_eq!((c.quota_bytes, c.quota_images), (0, 0));
    }

    #[test]
    fn quotas_take_sizes_with_units() {
        let c = Config::from_vars(vars(&[
            ("FS_QUOTA_BYTES", "10GiB"),
            ("FS_QUOTA_IMAGES", "25"),
        ]))
        .unwrap();
        assert_eq!((c.quota_bytes, c.quota_images), (10 << 30, 25));
        let err = Config::from_vars(vars(&[
            ("FS_QUOTA_BYTES", "-1"),
            ("FS_QUOTA_IMAGES", "many"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("FS_QUOTA_BYTES=\"-1\" is not valid"), "{err}");
        assert!(
            err.contains("FS_QUOTA_IMAGES=\"many\" is not valid"),
            "{err}"
        );
    }

    #[test]
    fn sizes_and_times_take_units_and_choices_ignore_case() {
        let c = Config::from_vars(vars(&[
            ("FS_MAX_IMAGE_BYTES", "50GiB"),
            ("FS_S3_PART_BYTES", "16MiB"),
            ("FS_UPLOAD_TTL_SECS", "24h"),
            ("FS_BODY_IDLE_TIMEOUT_SECS", "90s"),
            ("FS_STORAGE", "S3"),
            ("FS_LOG_FORMAT", "JSON"),
            ("FS_LISTEN", "localhost:9600"),
        ]))
        .unwrap();
        assert_eq!(c.max_image_bytes, 50 << 30);
        assert_eq!(c.s3.part_bytes, 16 << 20);
        assert_eq!(c.upload_ttl_secs, 86_400);
        assert_eq!(c.max_open_uploads, 1000);
        assert_eq!(c.body_idle_timeout_secs, 90);
        assert_eq!(c.storage, StorageKind::S3);
        assert_eq!(c.log_format, LogFormat::Json);
        assert!(c.listen.ip().is_loopback() && c.listen.port() == 9600);
    }

    /// The store's directory and scratch follow FS_DATA_DIR unless set apart; unset, all three
    /// are under ./data as before.
    #[test]
    fn directories_follow_the_data_dir() {
        let c = Config::from_vars(vars(&[])).unwrap();
        assert_eq!(c.local_dir, Path::new("./data/objects"));
        assert_eq!(c.scratch_dir, Path::new("./data/scratch"));
        let c = Config::from_vars(vars(&[("FS_DATA_DIR", "/srv/fs")])).unwrap();
        assert_eq!(c.local_dir, Path::new("/srv/fs/objects"));
        assert_eq!(c.scratch_dir, Path::new("/srv/fs/scratch"));
        assert!(c.database_url.contains("/srv/fs/"), "{}", c.database_url);
        let c = Config::from_vars(vars(&[
            ("FS_DATA_DIR", "/srv/fs"),
            ("FS_LOCAL_DIR", "/big/objects"),
            ("FS_SCRATCH_DIR", "/fast/scratch"),
        ]))
        .unwrap();
        assert_eq!(c.local_dir, Path::new("/big/objects"));
        assert_eq!(c.scratch_dir, Path::new("/fast/scratch"));
    }

    /// A URL with a user and password in it is refused, and its password is not echoed; so
    /// are an S3 key prefix with a control character and a duration past 100 years.
    #[test]
    fn secrets_in_urls_and_unsafe_values_are_refused() {
        let err = Config::from_vars(vars(&[
            ("FS_S3_ENDPOINT", "http://admin:pa55word@127.0.0.1:3900"),
            ("FS_IMAGEOPS_URL", "http://u:imag3pw@127.0.0.1:5000/x"),
            ("FS_S3_KEY_PREFIX", "x\u{1}/"),
            ("FS_HEADER_TIMEOUT_SECS", "9223372036854775807"),
            ("FS_SHUTDOWN_GRACE_SECS", "18446744073709551615"),
        ]))
        .unwrap_err()
        .to_string();
        for expected in [
            "FS_S3_ENDPOINT=\"http://***@127.0.0.1:3900\" is not valid",
            "FS_IMAGEOPS_URL=\"http://***@127.0.0.1:5000/x\" is not valid",
            "without a user or password",
            "FS_S3_KEY_PREFIX is not valid",
            "FS_HEADER_TIMEOUT_SECS=\"9223372036854775807\" is not valid",
            "FS_SHUTDOWN_GRACE_SECS=\"18446744073709551615\" is not valid",
        ] {
            assert!(err.contains(expected), "{expected:?} missing: {err}");
        }
        assert!(
            !err.contains("pa55word") && !err.contains("imag3pw"),
            "{err}"
        );
    }

    #[test]
    fn every_bad_setting_is_named_with_the_form_expected() {
        let err = Config::from_vars(vars(&[
            ("FS_STORAGE", "s4"),
            ("FS_LISTEN", "garbage"),
            ("FS_MAX_IMAGE_BYTES", "lots"),
            ("FS_UPLOAD_TTL_SECS", "soon"),
            ("FS_TIERS", "1=only-one"),
        ]))
        .unwrap_err()
        .to_string();
        for expected in [
            "FS_STORAGE=\"s4\" is not valid: expected one of local, s3",
            "FS_LISTEN=\"garbage\" is not valid: expected HOST:PORT",
            "FS_MAX_IMAGE_BYTES=\"lots\" is not valid: expected a size in bytes",
            "FS_UPLOAD_TTL_SECS=\"soon\" is not valid: expected a duration",
            "FS_TIERS must define priority 0",
        ] {
            assert!(err.contains(expected), "{expected:?} not in {err}");
        }
    }

    #[test]
    fn a_zero_that_makes_no_sense_is_refused_by_name() {
        let err = Config::from_vars(vars(&[
            ("FS_UPLOAD_TTL_SECS", "0"),
            ("FS_BODY_IDLE_TIMEOUT_SECS", "0"),
            ("FS_HEADER_TIMEOUT_SECS", "0s"),
            ("FS_JOB_LEASE_SECS", "2"),
            ("FS_JOB_RETENTION_SECS", "0"),
            ("FS_CHECK_TIMEOUT_SECS", "0"),
            ("FS_SLIM_TIMEOUT_SECS", "0"),
        ]))
        .unwrap_err()
        .to_string();
        for name in [
            "FS_UPLOAD_TTL_SECS=\"0\"",
            "FS_BODY_IDLE_TIMEOUT_SECS=\"0\"",
            "FS_HEADER_TIMEOUT_SECS=\"0s\"",
            "FS_JOB_RETENTION_SECS=\"0\"",
            "FS_CHECK_TIMEOUT_SECS=\"0\"",
            "FS_SLIM_TIMEOUT_SECS=\"0\"",
        ] {
            assert!(
                err.contains(&format!(
                    "{name} is not valid: expected a duration of at least 1 s"
                )),
                "{name}: {err}"
            );
        }
        assert!(
            err.contains(
                "FS_JOB_LEASE_SECS=\"2\" is not valid: expected a duration of at least 3 s"
            ),
            "{err}"
        );
        // Where 0 has a meaning, it is taken: no grace, no drain, no zip ratio bound.
        let c = Config::from_vars(vars(&[
            ("FS_SHUTDOWN_GRACE_SECS", "0"),
            ("FS_DRAIN_TIMEOUT_SECS", "0"),
            ("FS_DRAIN_MAX_BYTES", "0"),
            ("FS_ZIP_MAX_RATIO", "0"),
        ]))
        .unwrap();
        assert_eq!(
            (
                c.shutdown_grace_secs,
                c.drain_timeout_secs,
                c.drain_max_bytes
            ),
            (0, 0, 0)
        );
    }

    #[test]
    fn tiers_parse_and_reject_garbage() {
        let t = parse_tiers("0=bucket-a, 1=bucket-b:STANDARD_IA").unwrap();
        assert_eq!(t[&1].storage_class.as_deref(), Some("STANDARD_IA"));
        assert!(parse_tiers("1=only-one").is_err());
        assert!(parse_tiers("0=Bad_Bucket").is_err());
        assert!(parse_tiers("x=abc").is_err());
        assert!(matches!(
            parse_tiers("0=abc,0=def"),
            Err(ConfigError::DuplicateTier(0))
        ));
        assert!(matches!(
            parse_tiers("0=abc, 1=Bad_Bucket"),
            Err(ConfigError::BadBucket(b)) if b == "Bad_Bucket"
        ));
    }

    #[test]
    fn postgres_variables_used_without_database_url() {
        let c = Config::from_vars(vars(&[
            ("POSTGRES_HOST", "db"),
            ("POSTGRES_USERNAME", "u"),
            ("POSTGRES_PASSWORD", "p@ss "),
            ("POSTGRES_DB_NAME", "fs"),
        ]))
        .unwrap();
        // The password as set, trailing space included.
        assert_eq!(c.database_url, "postgres://u:p%40ss%20@db:5432/fs");
        let c = Config::from_vars(vars(&[
            ("DATABASE_URL", "sqlite::memory:"),
            ("POSTGRES_HOST", "db"),
        ]))
        .unwrap();
        assert_eq!(c.database_url, "sqlite::memory:");
    }

    #[test]
    fn auth_is_off_by_default_and_cors_stays_open() {
        let c = Config::from_vars(vec![]).unwrap();
        assert!(!c.auth.enabled());
        assert!(c.cors_origins.is_none());
        assert!(c.auth.metrics_token.is_none());
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn auth_settings_are_read_and_checked_together() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::write(
            &tokens,
            format!("# ops\nsha256:{} ops admin\n", "ab".repeat(32)),
        )
        .unwrap();
        let secret = "0123456789abcdef0123456789abcdef";
        let c = Config::from_vars(vars(&[
            ("FS_AUTH", "JWT, token"),
            ("FS_AUTH_TOKENS_FILE", tokens.to_str().unwrap()),
            ("FS_JWT_HS256_SECRET", secret),
            ("FS_JWT_USER_CLAIM", "userId"),
            ("FS_JWT_ADMIN_CLAIM", "authorities"),
            ("FS_JWT_ADMIN_VALUE", "ROLE_APPSTORE_ADMIN"),
            ("FS_JWT_LEEWAY_SECS", "2m"),
            ("FS_METRICS_TOKEN", "m3trics"),
            ("FS_TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1,::1"),
        ]))
        .unwrap();
        assert!(c.auth.enabled());
        assert_eq!(c.auth.tokens_file.as_deref(), Some(tokens.as_path()));
        let jwt = c.auth.jwt.as_ref().unwrap();
        assert_eq!(jwt.user_claim, "userId");
        assert_eq!(jwt.leeway_secs, 120);
        assert_eq!(
            jwt.admin,
            Some(("authorities".into(), "ROLE_APPSTORE_ADMIN".into()))
        );
        assert_eq!(c.auth.trusted_proxies.len(), 3);
        // With auth on and no FS_CORS_ORIGINS, no origin is allowed; an explicit one wins.
        assert_eq!(c.cors_origins, Some(vec![]));
        // Secrets never print.
        let printed = format!("{c:?}");
        assert!(
            !printed.contains(secret) && !printed.contains("m3trics"),
            "{printed}"
        );
        let c = Config::from_vars(vars(&[
            ("FS_AUTH", "token"),
            ("FS_AUTH_TOKENS_FILE", tokens.to_str().unwrap()),
            ("FS_CORS_ORIGINS", "*"),
        ]))
        .unwrap();
        assert!(c.cors_origins.is_none());
        // Origins the CORS layer cannot take are refused here (`*` among others made it panic
        // once the service listened).
        let ok = Config::from_vars(vars(&[(
            "FS_CORS_ORIGINS",
            "https://console.example, http://127.0.0.1:8080,http://[::1]:3000",
        )]))
        .unwrap();
        assert_eq!(ok.cors_origins.unwrap().len(), 3);
        for bad in [
            "https://console.example,*",
            "*,*",
            "console.example",
            "https://console.example/",
            "https://a b",
            "ftp://x",
        ] {
            let err = Config::from_vars(vars(&[("FS_CORS_ORIGINS", bad)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains("FS_CORS_ORIGINS"), "{bad}: {err}");
        }
    }

    #[test]
    fn every_auth_inconsistency_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("tokens");
        std::fs::write(&bad, "\nsha256:1234 alice user\n").unwrap();
        let problems =
            |list: &[(&str, &str)]| Config::from_vars(vars(list)).unwrap_err().to_string();
        let err = problems(&[
            ("FS_AUTH", "token,jwt"),
            ("FS_TRUSTED_PROXIES", "10.0.0.0/33"),
            ("FS_JWT_ADMIN_CLAIM", "roles"),
        ]);
        for expected in [
            "FS_AUTH=token needs FS_AUTH_TOKENS_FILE",
            "FS_AUTH=jwt needs a key",
            "FS_JWT_ADMIN_CLAIM and FS_JWT_ADMIN_VALUE go together",
            "FS_TRUSTED_PROXIES=\"10.0.0.0/33\" is not valid",
        ] {
            assert!(err.contains(expected), "{expected:?} not in {err}");
        }
        let err = problems(&[
            ("FS_AUTH", "token,jwt"),
            ("FS_AUTH_TOKENS_FILE", bad.to_str().unwrap()),
            ("FS_JWT_HS256_SECRET", "short"),
            ("FS_JWT_PUBLIC_KEY_FILE", "/nonexistent.pem"),
        ]);
        assert!(err.contains("line 2: the first field"), "{err}");
        assert!(err.contains("not both"), "{err}");
        let err = problems(&[("FS_AUTH", "jwt"), ("FS_JWT_HS256_SECRET", "short")]);
        assert!(err.contains("at least 32 bytes"), "{err}");
        let err = problems(&[
            ("FS_AUTH", "jwt"),
            ("FS_JWT_PUBLIC_KEY_FILE", "/nonexistent.pem"),
        ]);
        assert!(
            err.contains("FS_JWT_PUBLIC_KEY_FILE /nonexistent.pem: cannot be read"),
            "{err}"
        );
        let err = problems(&[("FS_AUTH", "basic")]);
        assert!(
            err.contains("expected none, token, jwt or token,jwt"),
            "{err}"
        );
        let err = problems(&[("FS_AUTH", "none,token")]);
        assert!(err.contains("FS_AUTH=\"none,token\""), "{err}");
        // JWT settings without jwt on: ignored with a warning, not an error.
        let c = Config::from_vars(vars(&[("FS_JWT_ISSUER", "https://idp")])).unwrap();
        assert!(c.auth.jwt.is_none());
        assert!(c.warnings[0].contains("FS_JWT_ISSUER"), "{:?}", c.warnings);
    }
}
