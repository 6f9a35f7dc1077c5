//! One error type for every command, and the process exit code each kind of failure maps to.

use thiserror::Error;

/// The process exit codes of `fsctl` (documented in the README). Scripts branch on these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// Success.
    Ok = 0,
    /// Anything else: a local I/O error, an answer the client does not understand.
    Failure = 1,
    /// Bad command line (clap uses the same code for its own usage errors).
    Usage = 2,
    /// The image (or upload) does not exist: HTTP 404.
    NotFound = 3,
    /// The service refused the request: any other 4xx (400, 401, 403, 409, 413, 416, ...).
    Refused = 4,
    /// The bytes do not verify: a checksum mismatch, or a check reporting the image corrupted,
    /// failed or timed out (the image is not usable).
    Verification = 5,
    /// The service could not be reached or kept failing: connection errors, timeouts, 5xx,
    /// after the retries.
    Unavailable = 6,
    /// A job the client waited for ended badly (a slim that failed).
    JobFailed = 7,
}

impl ExitCode {
    /// The code as the process returns it.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The `kind` of a `--json` error document ending with this code (as [`Error::kind`]).
    pub fn kind(self) -> &'static str {
        match self {
            ExitCode::Ok => "ok",
            ExitCode::Failure => "failure",
            ExitCode::Usage => "usage",
            ExitCode::NotFound => "not_found",
            ExitCode::Refused => "refused",
            ExitCode::Verification => "verification_failed",
            ExitCode::Unavailable => "unavailable",
            ExitCode::JobFailed => "job_failed",
        }
    }
}

/// Every failure of a command. Messages carry the service's own `message` where it sent one.
#[derive(Debug, Error)]
pub enum Error {
    /// A bad argument found after parsing (e.g. a file that is not a regular file).
    #[error("{0}")]
    Usage(String),
    /// HTTP 404.
    #[error("not found: {0}")]
    NotFound(String),
    /// Any other 4xx: the status, the service's error `code` and its `message`.
    #[error("refused by the server ({status}{}): {message}", match code.as_str() { "" => String::new(), c => format!(" {c}") })]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    /// Downloaded or uploaded bytes that do not match their checksum, or an unusable image.
    #[error("verification failed: {0}")]
    Verification(String),
    /// The service is unreachable or answered 5xx (after retries).
    #[error("server unavailable: {0}")]
    Unavailable(String),
    /// A local file operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    /// An answer the client cannot read (not the JSON it expects, a bad header).
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
}

impl Error {
    /// The exit code this failure ends the process with.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Usage(_) => ExitCode::Usage,
            Error::NotFound(_) => ExitCode::NotFound,
            Error::Refused { .. } => ExitCode::Refused,
            Error::Verification(_) => ExitCode::Verification,
            Error::Unavailable(_) => ExitCode::Unavailable,
            Error::Io { .. } | Error::Protocol(_) => ExitCode::Failure,
        }
    }

    /// A short machine name of the kind, for `--json` error documents.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Usage(_) => "usage",
            Error::NotFound(_) => "not_found",
            Error::Refused { .. } => "refused",
            Error::Verification(_) => "verification_failed",
            Error::Unavailable(_) => "unavailable",
            Error::Io { .. } => "io",
            Error::Protocol(_) => "protocol",
        }
    }

    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}

/// The result of every fallible function here.
pub type Result<T> = std::result::Result<T, Error>;
