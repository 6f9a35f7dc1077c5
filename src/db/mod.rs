//! Metadata queries (SeaORM). Every update is a partial update of the columns it means to
//! change; whole rows are written only when they are created.

pub mod images;
pub mod jobs;
pub mod objects;
pub mod quotas;
pub mod uploads;

use migration::MigratorTrait;
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseBackend, DatabaseConnection, DbErr,
    TransactionTrait,
};
use std::time::Duration;

/// Connects to the database (creating the SQLite file's directory when needed).
pub async fn connect(url: &str) -> Result<DatabaseConnection, DbErr> {
    if let Some(rest) = url.strip_prefix("sqlite://") {
        let path = rest.split('?').next().unwrap_or(rest);
        if let Some(parent) = std::path::Path::new(path).parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|e| {
                    DbErr::Custom(format!("cannot create {}: {e}", parent.display()))
                })?;
            }
        }
    }
    if let Some((host, port)) = postgres_host_port(url) {
        // A closed port or an unreachable host fails now, named, rather than as the pool's
        // "timed out" after its acquire timeout.
        let probe = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await;
        let why = match probe {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("no answer within 5 s".into()),
        };
        if let Some(why) = why {
            return Err(DbErr::Custom(format!(
                "cannot reach PostgreSQL at {host}:{port}: {why}"
            )));
        }
    }
    // A SQLite file that does not exist yet is created (sqlx opens read-write only, unless
    // the URL says `mode=`).
    let url =
        &match url.starts_with("sqlite:") && !url.contains("mode=") && !url.contains(":memory:") {
            true if url.contains('?') => format!("{url}&mode=rwc"),
            true => format!("{url}?mode=rwc"),
            false => url.to_string(),
        };
    let mut opts = ConnectOptions::new(url.to_string());
    opts.connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(30))
        .sqlx_logging(false);
    if url.starts_with("sqlite:") {
        opts.max_connections(8);
    } else {
        opts.max_connections(20);
    }
    // A server that accepts connections but never answers must not hold a start for the
    // pool's timeouts.
    let connecting = tokio::time::timeout(Duration::from_secs(10), Database::connect(opts));
    let connected = connecting.await.map_err(|_| {
        DbErr::Custom(format!(
            "the database at {} did not answer within 10 s",
            redact_url(url)
        ))
    })?;
    let db = connected.map_err(|e| {
        // Drivers echo the URL in their errors: never its password.
        let redacted = redact_url(url);
        let mut msg = e.to_string().replace(url, &redacted);
        if let Some(pw) = password(url).filter(|p| !p.is_empty()) {
            msg = msg.replace(pw, "***");
        }
        DbErr::Custom(format!("cannot connect to {redacted}: {msg}"))
    })?;
    if url.starts_with("sqlite:") && !url.contains(":memory:") {
        // WAL lets readers run while a writer commits; it sticks to the database file.
        db.execute_unprepared("PRAGMA journal_mode=WAL").await?;
    }
    Ok(db)
}

/// A database error as an operator should read it (without SeaORM's "Custom Error:" prefix
/// on the messages `connect` makes).
pub fn describe(e: &DbErr) -> String {
    match e {
        DbErr::Custom(m) => m.clone(),
        other => other.to_string(),
    }
}

/// Host and port of a `postgres://` / `postgresql://` URL with a TCP host (port 5432 when
/// not given); `None` for other URLs and Unix sockets.
fn postgres_host_port(url: &str) -> Option<(String, u16)> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))?;
    let authority = rest.split(['/', '?']).next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match hostport.strip_prefix('[') {
        Some(v6) => {
            let (h, after) = v6.split_once(']')?;
            (h, after.strip_prefix(':'))
        }
        None => match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        },
    };
    if host.is_empty() || host.starts_with('%') {
        return None;
    }
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => 5432,
    };
    Some((host.to_string(), port))
}

/// The password of a `scheme://user:password@host/...` URL, as written.
fn password(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let userinfo = &rest[..rest.rfind('@')?];
    userinfo.split_once(':').map(|(_, pw)| pw)
}

/// The URL with its password replaced by `***` (for logs and error messages).
pub fn redact_url(url: &str) -> String {
    let mut out = match password(url).filter(|p| !p.is_empty()) {
        Some(pw) => url.replacen(&format!(":{pw}@"), ":***@", 1),
        None => url.to_string(),
    };
    // `?password=...` (URL query) and `password=...` (key=value form) too.
    let mut from = 0;
    while let Some(at) = out[from..].to_ascii_lowercase().find("password=") {
        let start = from + at + "password=".len();
        let end = out[start..]
            .find(['&', ' ', ';'])
            .map_or(out.len(), |e| start + e);
        out.replace_range(start..end, "***");
        from = start + 3;
    }
    out
}

/// Key of the PostgreSQL advisory lock that serializes migrations (any fixed number).
const MIGRATION_LOCK: i64 = 0x6669_6c65_7379_7300; // "filesys\0"

/// Applies all pending migrations. On PostgreSQL several replicas (or the migration Job and a
/// replica) may start at once: they take turns under an advisory lock held by the migration's
/// transaction, so the second finds nothing left to do instead of failing half way.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    if db.get_database_backend() != DatabaseBackend::Postgres {
        return migration::Migrator::up(db, None).await;
    }
    let txn = db.begin().await?;
    txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
        .await?;
    migration::Migrator::up(&txn, None).await?;
    txn.commit().await
}

#[cfg(test)]
mod tests {
    use super::{postgres_host_port, redact_url};

    #[test]
    fn passwords_in_queries_and_key_value_forms_are_hidden() {
        assert_eq!(
            redact_url("postgres://u@h:1/db?password=qsecret&sslmode=disable"),
            "postgres://u@h:1/db?password=***&sslmode=disable"
        );
        assert_eq!(
            redact_url("host=h user=u PASSWORD=s3cret dbname=x"),
            "host=h user=u PASSWORD=*** dbname=x"
        );
        assert_eq!(redact_url("postgres://u:pw@h/db"), "postgres://u:***@h/db");
    }

    #[test]
    fn postgres_hosts_and_ports_are_found() {
        let hp = |u: &str| postgres_host_port(u);
        assert_eq!(hp("postgres://u:p@db:6543/fs"), Some(("db".into(), 6543)));
        assert_eq!(hp("postgres://u:p@db/fs"), Some(("db".into(), 5432)));
        assert_eq!(hp("postgresql://db"), Some(("db".into(), 5432)));
        assert_eq!(hp("postgres://u@[::1]:5433/fs"), Some(("::1".into(), 5433)));
        assert_eq!(hp("postgres://u:p@h@db:1/x"), Some(("db".into(), 1)));
        assert_eq!(hp("sqlite://./x.db"), None);
        assert_eq!(hp("postgres://u:p@db:notaport/fs"), None);
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://fs:S3cret@db:5432/x"),
            "postgres://fs:***@db:5432/x"
        );
        assert_eq!(
            redact_url("postgres://fs:p%40ss:w@rd@db/x"),
            "postgres://fs:***@db/x"
        );
        assert_eq!(redact_url("postgres://fs@db/x"), "postgres://fs@db/x");
        assert_eq!(
            redact_url("sqlite://./data/a.db?mode=rwc"),
            "sqlite://./data/a.db?mode=rwc"
        );
    }
}
