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

    /// Adds to a report whose outcome is bad news (`exit` not `Ok`) the `error` object every
    /// failing command's JSON document has (`kind`, `message`, `exitCode`), beside the result
    /// it reports: scripts find the failure where they find any other. The message is the
    /// text's last line (the verdict: a check's result, a slim's end).
    pub fn add_error(&mut self) {
        let Value::Object(doc) = &mut self.json else {
            return;
        };
        let message = self.human.lines().last().unwrap_or_default();
        doc.insert(
            "error".into(),
            serde_json::json!({
                "kind": self.exit.kind(),
                "message": message,
                "exitCode": self.exit.code(),
            }),
        );
    }
}
