//! What can go wrong in the domain, and how each error is answered: an HTTP status, a stable
//! machine code and a message, decided here, once. The HTTP layer only renders an [`Answer`]
//! (and adds the few codes of its own requests, such as `METHOD_NOT_ALLOWED`, from the same
//! list, [`Code`]).

use super::{caller, texts};
use crate::storage::StorageError;
use sea_orm::DbErr;
use std::io;

/// Chunk numbers (ascending) as a message names them: each of them when there are at most
/// 32, else runs of three or more as `first-last` (a merge of chunk 1 of 10000 would name
/// 9999 numbers).
fn chunk_list(numbers: &[u32]) -> String {
    if numbers.len() <= 32 {
        let each: Vec<String> = numbers.iter().map(u32::to_string).collect();
        return each.join(", ");
    }
    let mut runs: Vec<(u32, u32)> = vec![];
    for &n in numbers {
        match runs.last_mut() {
            Some((_, last)) if n == *last + 1 => *last = n,
            _ => runs.push((n, n)),
        }
    }
    let named: Vec<String> = runs
        .iter()
        .flat_map(|&(first, last)| match last - first {
            0 => vec![first.to_string()],
            1 => vec![first.to_string(), last.to_string()],
            _ => vec![format!("{first}-{last}")],
        })
        .collect();
    // Past a bound, the first runs and the count: every other chunk of 10000 missing would
    // be some 30 kB of numbers.
    if named.len() > MAX_RUNS_NAMED {
        return format!(
            "{}, ... ({} missing in all)",
            named[..MAX_RUNS_NAMED].join(", "),
            numbers.len()
        );
    }
    named.join(", ")
}

/// How many runs of missing chunks a message names at most ([`chunk_list`]).
const MAX_RUNS_NAMED: usize = 64;

/// What can go wrong in the domain; [`Error::answer`] says how each is answered.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}", texts::NO_FILE)]
    NoFile,
    #[error("{0}")]
    InvalidFileName(&'static str),
    #[error("{}", texts::TOO_LARGE)]
    TooLarge,
    #[error("{0}")]
    InvalidInput(String),
    #[error("{0}")]
    InvalidZip(String),
    /// The chunk numbers missing, ascending.
    #[error("missing chunks: {}", chunk_list(.0))]
    MissingChunks(Vec<u32>),
    /// Bytes that do not match the checksum declared for them.
    #[error("{0}")]
    ChecksumMismatch(String),
    /// Chunks that do not add up to the totals the client declared.
    #[error("{0}")]
    SizeMismatch(String),
    #[error("the request body could not be read: {0}")]
    BadBody(io::Error),
    /// Every upload slot stayed taken (`FS_UPLOAD_CONCURRENCY`) for the whole wait
    /// (`FS_UPLOAD_QUEUE_TIMEOUT_SECS`); the body was not read.
    #[error("the service is handling as many uploads as it may; try again later")]
    Busy,
    /// The client stopped sending its body (`FS_BODY_IDLE_TIMEOUT_SECS` without data), or sent
    /// it slower than `FS_BODY_MIN_BYTES_PER_SEC` over such a window.
    #[error("the client sent no data, or too little, for too long; the request was abandoned")]
    BodyTimeout,
    #[error("there is no record in database with imageId: {}", echoed(.0))]
    ImageNotFound(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The caller may not do this: name another user without being an admin, or an admin's
    /// action as a user (403, `FORBIDDEN`).
    #[error("{0}")]
    Forbidden(String),
    /// The bytes or images would take the user past a quota (413, `QUOTA_EXCEEDED`); the
    /// message names the limit.
    #[error("{0}")]
    QuotaExceeded(String),
    /// A slim that cannot be done for this image (its check did not find it usable).
    #[error("{0}")]
    SlimRefused(String),
    #[error("requested range not satisfiable")]
    RangeNotSatisfiable { size: u64 },
    /// The metadata database cannot be reached (readiness: `SELECT 1` failed).
    #[error("database unreachable")]
    DatabaseUnreachable(#[source] DbErr),
    /// The default tier's bucket cannot be reached (readiness).
    #[error("storage unreachable")]
    StoreUnreachable(#[source] StorageError),
    #[error("storage error: {0}")]
    Storage(#[from] StorageError),
    #[error("database error: {0}")]
    Db(#[from] DbErr),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<caller::NotYours> for Error {
    fn from(e: caller::NotYours) -> Self {
        Error::Forbidden(e.to_string())
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Storage(StorageError::Io(e))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Declares [`Code`] from one table: variant, code, HTTP status, meaning.
macro_rules! codes {
    ($($variant:ident = $code:literal, $status:literal, $meaning:literal;)*) => {
        /// Every machine code of an error answer (`{"code": ..., "message": ...}`): one list
        /// for the service, the README's table and the OpenAPI document. The codes are stable;
        /// the messages are for people.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Code {
            $(#[doc = $meaning] $variant,)*
        }

        impl Code {
            /// Every code, in the order of the README's table.
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];

            /// The code as sent, e.g. `INVALID_PARAMETER`.
            pub fn as_str(self) -> &'static str {
                match self { $(Code::$variant => $code,)* }
            }

            /// The HTTP status it is answered with.
            pub fn status(self) -> u16 {
                match self { $(Code::$variant => $status,)* }
            }

            /// What it means, for people (the README's table).
            pub fn meaning(self) -> &'static str {
                match self { $(Code::$variant => $meaning,)* }
            }
        }
    };
}

codes! {
    NoFile = "NO_FILE", 400, "The form has no file part.";
    InvalidFileName = "INVALID_FILE_NAME", 400, "The file name has no image extension or is too long.";
    FileTooLarge = "FILE_TOO_LARGE", 413, "Larger than FS_MAX_IMAGE_BYTES.";
    InvalidParameter = "INVALID_PARAMETER", 400, "A field or parameter is missing or malformed.";
    InvalidZip = "INVALID_ZIP", 400, "A zip that cannot be read, or holds no single image.";
    MissingChunks = "MISSING_CHUNKS", 400, "A merge before every chunk arrived; the message lists the missing ones.";
    ChecksumMismatch = "CHECKSUM_MISMATCH", 400, "Bytes that do not match a checksum declared for them.";
    SizeMismatch = "SIZE_MISMATCH", 400, "Sizes that do not match totalSize or currentChunkSize.";
    BadBody = "BAD_BODY", 400, "A request body that cannot be read (malformed multipart, a broken stream).";
    RequestTimeout = "REQUEST_TIMEOUT", 408, "The client stopped sending its body, or sent it too slowly.";
    Unauthorized = "UNAUTHORIZED", 401, "No valid credentials (authentication on).";
    Forbidden = "FORBIDDEN", 403, "Another user's image or upload, or an admin's action.";
    ImageNotFound = "IMAGE_NOT_FOUND", 404, "No such image (or not the caller's).";
    NotFound = "NOT_FOUND", 404, "No such resource.";
    MethodNotAllowed = "METHOD_NOT_ALLOWED", 405, "The method is not served on this path.";
    Conflict = "CONFLICT", 409, "The upload is being merged, or was merged, or was cancelled while the chunk was in transfer; or another request holds it.";
    PreconditionFailed = "PRECONDITION_FAILED", 412, "If-Match or If-Unmodified-Since failed.";
    QuotaExceeded = "QUOTA_EXCEEDED", 413, "Past the user's quota of bytes or images, or of chunked uploads open at once.";
    RangeNotSatisfiable = "RANGE_NOT_SATISFIABLE", 416, "A Range outside the image.";
    UnsupportedEncoding = "UNSUPPORTED_ENCODING", 415, "A request body in a Content-Encoding other than identity (none is decoded).";
    UnsupportedTransferCoding = "UNSUPPORTED_TRANSFER_CODING", 501, "A request body in a Transfer-Encoding other than chunked (RFC 9112 6.1).";
    SlimRefused = "SLIM_REFUSED", 400, "The image cannot be slimmed (its check did not find it usable).";
    Internal = "INTERNAL", 500, "A fault of the service (logged, details not sent).";
    StorageError = "STORAGE_ERROR", 500, "The object store failed (logged, details not sent).";
    ObjectMissing = "OBJECT_MISSING", 500, "An image's bytes are missing from the object store.";
    DatabaseUnavailable = "DATABASE_UNAVAILABLE", 503, "The metadata database cannot be reached; try again later.";
    StorageUnavailable = "STORAGE_UNAVAILABLE", 503, "The object store cannot be reached; try again later.";
    ServiceBusy = "SERVICE_BUSY", 503, "Every upload slot stayed taken for FS_UPLOAD_QUEUE_TIMEOUT_SECS; try again after Retry-After seconds.";
    InsufficientStorage = "INSUFFICIENT_STORAGE", 507, "The store, the scratch space or the metadata database is full.";
}

/// How an error is answered.
#[derive(Debug)]
pub struct Answer {
    pub code: Code,
    /// What the client reads: the error itself, or for a fault of the service a public text
    /// (the details are in [`Answer::internal`]).
    pub message: String,
    /// For a fault of the service: what to log (once), never sent.
    pub internal: Option<String>,
    /// For 416: the full size, sent as `Content-Range: bytes */size`.
    pub size: Option<u64>,
}

impl Error {
    /// The code, message and (for faults of the service) the internal detail of this error.
    pub fn answer(&self) -> Answer {
        let client = |code: Code| Answer {
            code,
            message: self.to_string(),
            internal: None,
            size: None,
        };
        let fault = |code: Code, public: &str| Answer {
            code,
            message: public.to_string(),
            internal: Some(self.to_string()),
            size: None,
        };
        match self {
            Error::NoFile => client(Code::NoFile),
            Error::InvalidFileName(_) => client(Code::InvalidFileName),
            Error::TooLarge => client(Code::FileTooLarge),
            Error::InvalidInput(_) => client(Code::InvalidParameter),
            Error::InvalidZip(_) => client(Code::InvalidZip),
            Error::MissingChunks(_) => client(Code::MissingChunks),
            Error::ChecksumMismatch(_) => client(Code::ChecksumMismatch),
            Error::SizeMismatch(_) => client(Code::SizeMismatch),
            Error::BadBody(_) => client(Code::BadBody),
            Error::BodyTimeout => client(Code::RequestTimeout),
            Error::Busy => client(Code::ServiceBusy),
            Error::ImageNotFound(_) => client(Code::ImageNotFound),
            Error::NotFound(_) => client(Code::NotFound),
            Error::Conflict(_) => client(Code::Conflict),
            Error::Forbidden(_) => client(Code::Forbidden),
            Error::QuotaExceeded(_) => client(Code::QuotaExceeded),
            Error::SlimRefused(_) => client(Code::SlimRefused),
            Error::RangeNotSatisfiable { size } => Answer {
                size: Some(*size),
                ..client(Code::RangeNotSatisfiable)
            },
            Error::DatabaseUnreachable(e) => Answer {
                internal: Some(e.to_string()),
                ..client(Code::DatabaseUnavailable)
            },
            Error::StoreUnreachable(e) => Answer {
                internal: Some(e.to_string()),
                ..client(Code::StorageUnavailable)
            },
            Error::Storage(e) => match storage_code(e) {
                Code::BadBody => Answer {
                    message: format!("the request body could not be read: {}", source_text(e)),
                    ..client(Code::BadBody)
                },
                Code::RequestTimeout => Answer {
                    message: Error::BodyTimeout.to_string(),
                    ..client(Code::RequestTimeout)
                },
                code => fault(code, public_text(code)),
            },
            Error::Db(DbErr::Conn(_) | DbErr::ConnectionAcquire(_)) => fault(
                Code::DatabaseUnavailable,
                public_text(Code::DatabaseUnavailable),
            ),
            Error::Db(e) if db_full(e) => fault(
                Code::InsufficientStorage,
                "the metadata database is out of space",
            ),
            Error::Db(_) | Error::Internal(_) => fault(Code::Internal, public_text(Code::Internal)),
        }
    }

    /// Whether this is an outage of the object store or the metadata database (answered 503):
    /// trying again later may succeed, and it says nothing about the request or the image.
    pub fn is_outage(&self) -> bool {
        matches!(
            self.answer().code,
            Code::StorageUnavailable | Code::DatabaseUnavailable
        )
    }

    /// The error as a client may read it (stored in check and compress messages): faults of
    /// the service itself (storage, database, internal) say so without their details, which
    /// are logged where they are handled.
    pub fn public_message(&self) -> String {
        match self {
            Error::Storage(StorageError::Unavailable(_)) => {
                "the object store is unavailable".into()
            }
            Error::Db(_) => "the metadata database is unavailable".into(),
            Error::Storage(_) | Error::Internal(_) => "internal error".into(),
            other => other.to_string(),
        }
    }
}

/// Whether the database refused a write for want of space: SQLite's `SQLITE_FULL` ("database
/// or disk is full"), PostgreSQL's SQLSTATE 53100 `disk_full`, or the OS's ENOSPC text.
fn db_full(e: &DbErr) -> bool {
    let text = e.to_string();
    [
        "database or disk is full",
        "No space left on device",
        "53100",
    ]
    .iter()
    .any(|sign| text.contains(sign))
}

/// The code of a store error: the client's body (it broke or stalled), a full store, an
/// unreachable store, a missing object, or another fault.
fn storage_code(e: &StorageError) -> Code {
    match e {
        StorageError::NotFound => Code::ObjectMissing,
        StorageError::Unavailable(_) => Code::StorageUnavailable,
        StorageError::Io(io) if io.raw_os_error() == Some(libc::ENOSPC) => {
            Code::InsufficientStorage
        }
        StorageError::Body(io) if io.kind() == io::ErrorKind::TimedOut => Code::RequestTimeout,
        StorageError::Body(_) => Code::BadBody,
        _ => Code::StorageError,
    }
}

/// The body error's own text (a client's body error is the client's to read).
fn source_text(e: &StorageError) -> String {
    match e {
        StorageError::Body(io) => io.to_string(),
        other => other.to_string(),
    }
}

/// What a client reads of a fault of the service.
fn public_text(code: Code) -> &'static str {
    match code {
        Code::ObjectMissing => "the image's data is missing from the store",
        Code::StorageUnavailable => "the object store is unavailable, try again later",
        Code::DatabaseUnavailable => "the metadata database is unavailable, try again later",
        Code::InsufficientStorage => "the store is out of space",
        Code::StorageError => "internal storage error",
        _ => "internal error",
    }
}

/// A value the client sent, as an error message repeats it: at most [`ECHOED_CHARS`]
/// characters (an image id is 36), the rest cut with "...": a 5000-character id is not sent
/// back whole.
pub fn echoed(value: &str) -> std::borrow::Cow<'_, str> {
    match value.char_indices().nth(ECHOED_CHARS) {
        None => value.into(),
        Some((cut, _)) => format!("{}...", &value[..cut]).into(),
    }
}

/// How many characters of a client's value an error message repeats ([`echoed`]).
const ECHOED_CHARS: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_chunks_are_named_each_or_in_runs() {
        assert_eq!(chunk_list(&[3]), "3");
        assert_eq!(chunk_list(&[2, 3, 4]), "2, 3, 4");
        let many: Vec<u32> = (2..=10000).collect();
        assert_eq!(chunk_list(&many), "2-10000");
        let mut mixed: Vec<u32> = vec![1, 5, 6];
        mixed.extend(10..=40);
        mixed.push(9999);
        assert_eq!(chunk_list(&mixed), "1, 5, 6, 10-40, 9999");
        let message = Error::MissingChunks(many).to_string();
        assert_eq!(message, "missing chunks: 2-10000");
        let every_other: Vec<u32> = (1..=10_000).step_by(2).collect();
        let message = Error::MissingChunks(every_other).to_string();
        assert!(message.len() < 600, "{message}");
        assert!(message.ends_with("... (5000 missing in all)"), "{message}");
    }

    #[test]
    fn codes_are_unique_and_upper_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for c in Code::ALL {
            assert!(seen.insert(c.as_str()), "{} twice", c.as_str());
            assert!(c
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b == b'_'));
            assert!((400..600).contains(&c.status()), "{c:?}");
        }
    }

    #[test]
    fn the_readme_lists_every_code() {
        let readme = include_str!("../../README.md");
        for c in Code::ALL {
            let row = format!("| `{}` | {} |", c.as_str(), c.status());
            assert!(readme.contains(&row), "README lacks the row {row:?}");
        }
    }

    #[test]
    fn faults_of_the_service_hide_their_details() {
        let e = Error::Internal("/srv/data/scratch/x: permission denied".into());
        let a = e.answer();
        assert_eq!(
            (a.code, a.message.as_str()),
            (Code::Internal, "internal error")
        );
        assert!(a.internal.unwrap().contains("/srv/data"));
        let e = Error::Storage(StorageError::Body(io::Error::other("client gone")));
        let a = e.answer();
        assert_eq!(a.code, Code::BadBody);
        assert_eq!(a.message, "the request body could not be read: client gone");
        assert!(a.internal.is_none());
        let e = Error::Storage(StorageError::Io(io::Error::from_raw_os_error(libc::ENOSPC)));
        assert_eq!(e.answer().code.status(), 507);
    }

    #[tokio::test]
    async fn a_full_database_is_insufficient_storage() {
        use sea_orm::ConnectionTrait;
        // SQLite reports a database that reached its page limit as it reports a full disk.
        let db = sea_orm::Database::connect("sqlite::memory:").await.unwrap();
        db.execute_unprepared("CREATE TABLE t (b BLOB); PRAGMA max_page_count = 4;")
            .await
            .unwrap();
        let full = db
            .execute_unprepared("INSERT INTO t VALUES (zeroblob(1000000))")
            .await
            .unwrap_err();
        let a = Error::Db(full).answer();
        assert_eq!((a.code, a.code.status()), (Code::InsufficientStorage, 507));
        assert_eq!(a.message, "the metadata database is out of space");
        assert!(a.internal.unwrap().contains("full"));
    }

    #[test]
    fn echoed_values_are_cut() {
        assert_eq!(
            echoed("28552303-8a5b-4f3e-9b38-7f1c0a9e2d11"),
            "28552303-8a5b-4f3e-9b38-7f1c0a9e2d11"
        );
        let long = "é".repeat(5000);
        let shown = echoed(&long);
        assert_eq!(shown.chars().count(), 64 + 3);
        assert!(shown.ends_with("..."));
        let e = Error::ImageNotFound("x".repeat(5000));
        assert!(e.to_string().len() < 200, "{e}");
    }
}
