//! Logging: one line per request (tower-http trace), `RUST_LOG` filter, text or JSON output.

use crate::config::LogFormat;
use tracing_subscriber::{fmt::writer::MakeWriterExt, EnvFilter};

/// Installs the global subscriber: `format` lines, filtered by `RUST_LOG` (default `info`).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a terminal: log collectors would store the escape codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    // Errors and warnings on stderr (where a failed start is looked for), the rest on stdout.
    let writer = std::io::stderr
        .with_max_level(tracing::Level::WARN)
        .or_else(std::io::stdout);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(writer);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
