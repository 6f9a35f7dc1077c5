//! What a command prints: one JSON document (`--json`) or text for people, and the exit code.

use crate::error::ExitCode;
use serde_json::Value;

/// The outcome of a command that ran to its end (also when its result is bad news, e.g. a
/// check that found the image corrupted: then `exit` says so).
#[derive(Debug)]
pub struct Report {
    /// The document printed with `--json`.
    pub json: Value,
    /// The text printed otherwise.
    pub human: String,
    /// The process exit code.
    pub exit: ExitCode,
}

impl Report {
    /// A successful report.
    pub fn ok(json: Value, human: impl Into<String>) -> Report {
        Report {
            json,
            human: human.into(),
            exit: ExitCode::Ok,
        }
    }
}
