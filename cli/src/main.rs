//! `fsctl`: the command-line client of file-system. Resumable, parallel, verified uploads and
//! downloads of VM images, and the image commands (list, info, delete, slim, check, cancel).
//!
//! Exit codes: see [`error::ExitCode`] (0 ok, 1 other failure, 2 usage, 3 not found,
//! 4 refused, 5 verification failed, 6 server unavailable, 7 job failed).

mod api;
mod download;
mod error;
mod images;
mod pacer;
mod plan;
mod progress;
mod report;
mod units;
mod upload;

use clap::{error::ErrorKind, Parser, Subcommand};
use error::Error;
use report::Report;
use std::{io::Write, path::PathBuf, sync::Arc};

/// Command-line client of file-system, the S3-backed store for VM images.
///
/// Uploads resume by themselves: rerun the same command after an interruption and only the
/// chunks the server lacks are sent. Downloads resume from their partial file and verify the
/// SHA-256. Exit codes: 0 ok, 1 other failure, 2 usage, 3 not found, 4 refused by the server,
/// 5 verification failed (checksum mismatch, image corrupted), 6 server unavailable,
/// 7 a slim failed.
#[derive(Parser)]
#[command(name = "fsctl", version)]
struct Cli {
    /// The service's base URL.
    #[arg(
        long,
        env = "FS_SERVER",
        default_value = "http://127.0.0.1:9500",
        global = true
    )]
    server: String,
    /// API token or JWT, sent as `Authorization: Bearer <token>`.
    #[arg(long, env = "FS_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Print exactly one JSON document on stdout (errors too).
    #[arg(long, global = true)]
    json: bool,
    /// Retries of a request after a transient failure (connection error, timeout, 5xx), with
    /// exponential backoff from 0.5 s to 16 s.
    #[arg(long, default_value_t = 5, global = true)]
    retries: u32,
    /// Seconds without a byte from the service (before its answer or inside a body) after which
    /// a request has timed out (and is retried); a merge waits 30 minutes at least.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86_400), global = true)]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Upload an image (.qcow2, .img, .iso, or a .zip holding one) in chunks; rerun to resume.
    Upload {
        /// The file to upload.
        file: PathBuf,
        /// The user the image belongs to (`userId`).
        #[arg(long)]
        user: Option<String>,
        /// The storage tier (`priority`; 0 is the default tier).
        #[arg(long)]
        priority: Option<String>,
        /// Bytes per chunk, at most 1GiB (raised when the file would need more than 10000 chunks).
        #[arg(long, default_value = "50MiB", value_parser = units::parse_chunk_size)]
        chunk_size: u64,
        /// Chunks in flight (each holds one chunk buffer in memory).
        #[arg(long, default_value = "4", value_parser = units::parse_parallel)]
        parallel: usize,
        /// Follow the image's check; exit 5 when it is not usable.
        #[arg(long)]
        wait: bool,
        /// Bytes per second at most, over all chunks in flight (e.g. 10MiB).
        #[arg(long, value_parser = units::parse_rate)]
        limit_rate: Option<u64>,
    },
    /// Download an image (resumes a partial download; verifies its SHA-256).
    Download {
        /// The image id.
        id: String,
        /// Where to write it (a file, or a directory); default: its name, here.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Download it as a zip (`{base}/{fileName}` inside).
        #[arg(long)]
        zip: bool,
        /// Bytes per second at most (e.g. 10MiB).
        #[arg(long, value_parser = units::parse_rate)]
        limit_rate: Option<u64>,
    },
    /// List images.
    Ls {
        /// Only this user's images.
        #[arg(long)]
        user: Option<String>,
        /// At most this many.
        #[arg(long)]
        limit: Option<u64>,
        /// Skip this many.
        #[arg(long)]
        offset: Option<u64>,
    },
    /// Show one image: check and slim status, sizes, checksums.
    Info {
        /// The image id.
        id: String,
    },
    /// Delete an image.
    Rm {
        /// The image id.
        id: String,
    },
    /// Slim (compress) an image; --wait shows its progress and result.
    Slim {
        /// The image id.
        id: String,
        /// Follow the slim to its end; exit 7 when it failed.
        #[arg(long)]
        wait: bool,
    },
    /// Check an image again (re-read its bytes); --wait prints the result.
    Check {
        /// The image id.
        id: String,
        /// Follow the check to its end; exit 5 when the image is not usable.
        #[arg(long)]
        wait: bool,
    },
    /// Cancel a chunked upload: the server drops its chunks.
    Cancel {
        /// The upload's identifier (`fsctl upload` prints it).
        identifier: String,
        /// The user the upload was sent for (`fsctl upload --user`; with authentication on,
        /// the caller is the user).
        #[arg(long)]
        user: Option<String>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let json = cli.json;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return finish(Err(Error::io("cannot start the runtime")(e)), json),
    };
    let result = runtime.block_on(run(cli));
    finish(result, json)
}

/// Runs the command.
async fn run(cli: Cli) -> error::Result<Report> {
    let api = api::Api::new(
        &cli.server,
        cli.token.as_deref(),
        api::Retry {
            retries: cli.retries,
        },
        std::time::Duration::from_secs(cli.timeout),
    )?;
    let pacer = |rate: Option<u64>| rate.map(|r| Arc::new(pacer::Pacer::new(r)));
    match cli.command {
        Command::Upload {
            file,
            user,
            priority,
            chunk_size,
            parallel,
            wait,
            limit_rate,
        } => {
            let args = upload::UploadArgs {
                file,
                user,
                priority,
                chunk_size,
                parallel,
                wait,
            };
            upload::run(&api, args, pacer(limit_rate)).await
        }
        Command::Download {
            id,
            output,
            zip,
            limit_rate,
        } => {
            let args = download::DownloadArgs { id, output, zip };
            download::run(&api, args, pacer(limit_rate)).await
        }
        Command::Ls {
            user,
            limit,
            offset,
        } => images::list(&api, user.as_deref(), limit, offset).await,
        Command::Info { id } => images::info(&api, &id).await,
        Command::Rm { id } => images::remove(&api, &id).await,
        Command::Slim { id, wait } => images::slim(&api, &id, wait).await,
        Command::Check { id, wait } => images::check(&api, &id, wait).await,
        Command::Cancel { identifier, user } => {
            images::cancel(&api, &identifier, user.as_deref()).await
        }
    }
}

/// A command line clap refused (or `--help` / `--version`, printed as asked): its message on
/// stderr and, with `--json` anywhere on the line, the same JSON error document as any other
/// failure on stdout; exit 2.
fn usage_error(e: clap::Error) -> std::process::ExitCode {
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return std::process::ExitCode::SUCCESS;
    }
    let json = std::env::args_os()
        .skip(1)
        .any(|a| a == "--json" || a.to_str().is_some_and(|a| a.starts_with("--json=")));
    let _ = e.print();
    if json {
        // clap's message up to its usage lines, on one line, without its "error: " lead.
        let rendered = e.render().to_string();
        let message = rendered
            .lines()
            .take_while(|l| !l.trim().is_empty() && !l.starts_with("Usage:"))
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(" ");
        let message = message.strip_prefix("error: ").unwrap_or(&message);
        let code = error::ExitCode::Usage.code();
        let doc = serde_json::json!({
            "error": {"kind": "usage", "message": message, "exitCode": code}
        });
        print_out(&doc.to_string());
    }
    std::process::ExitCode::from(error::ExitCode::Usage.code())
}

/// Writes a line to stdout; a reader that went away (a closed pipe: `fsctl ls | head`) is not
/// an error of the command, whose exit code stands. The text is [`terminal_safe`].
fn print_out(line: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{}", terminal_safe(line));
}

/// Writes a line to stderr, ignoring a closed stderr as [`print_out`] does stdout.
pub(crate) fn print_err(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{}", terminal_safe(line));
}

/// `text` with every character that could drive a terminal or reorder what it shows (control
/// characters but newline and tab, DEL and C1, bidirectional formatting characters) written
/// as `\uXXXX`: what a server or a proxy sends (a message, a file name) cannot rewrite the
/// screen. In a JSON document the same escape means the same character, so `--json` output
/// stays the same data.
fn terminal_safe(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        (c.is_control() && c != '\n' && c != '\t')
            || matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(unsafe_char) {
        return text.into();
    }
    text.chars()
        .map(|c| match unsafe_char(c) {
            true => format!("\\u{:04x}", c as u32),
            false => c.to_string(),
        })
        .collect::<String>()
        .into()
}

/// Prints the report (stdout) or the error (stderr; with `--json` also a JSON document on
/// stdout), and returns the exit code.
fn finish(result: error::Result<Report>, json: bool) -> std::process::ExitCode {
    let code = match result {
        Ok(mut report) => {
            if report.exit != error::ExitCode::Ok {
                report.add_error();
            }
            print_out(&if json {
                report.json.to_string()
            } else {
                report.human
            });
            report.exit
        }
        Err(e) => {
            print_err(&format!("fsctl: {e}"));
            if json {
                let doc = serde_json::json!({
                    "error": {"kind": e.kind(), "message": e.to_string(), "exitCode": e.exit_code().code()}
                });
                print_out(&doc.to_string());
            }
            e.exit_code()
        }
    };
    std::process::ExitCode::from(code.code())
}

#[cfg(test)]
mod tests {
    use super::terminal_safe;

    #[test]
    fn server_text_cannot_drive_the_terminal() {
        assert_eq!(terminal_safe("delete success"), "delete success");
        assert_eq!(terminal_safe("a\nb\tc"), "a\nb\tc");
        assert_eq!(
            terminal_safe("\u{1b}[2Jx\u{7}\r\u{202e}gmi.img\u{9b}"),
            "\\u001b[2Jx\\u0007\\u000d\\u202egmi.img\\u009b"
        );
        // In JSON the escape is the same character: the document reads back unchanged.
        let doc = serde_json::json!({"message": "bob\u{202e}gmi.img \u{9b}"}).to_string();
        let read: serde_json::Value = serde_json::from_str(&terminal_safe(&doc)).unwrap();
        assert_eq!(read["message"], "bob\u{202e}gmi.img \u{9b}");
    }
}
