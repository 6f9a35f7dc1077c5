//! The `file-system` command: the service, its migrations, the imageops sidecar and a
//! configuration check. Settings come from environment variables (see `.env.example`).

use anyhow::Context;
use clap::{Parser, Subcommand};
use file_system::{build, config::Config, db, preflight, serve, telemetry};

/// An S3-backed store for virtual-machine images (the EdgeGallery file-system API).
///
/// Settings come from environment variables and ./.env (see .env.example).
#[derive(Parser)]
#[command(name = "file-system", version = preflight::VERSION)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP service on FS_LISTEN (the default command).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Serve the imageops HTTP API (sidecar) on FS_IMAGEOPS_LISTEN over FS_SCRATCH_DIR.
    Imageops,
    /// Validate every setting, reach the database, the store and qemu-img, print a summary;
    /// exit 1 listing every problem.
    CheckConfig,
}

fn main() -> anyhow::Result<()> {
    // Part buffers are megabytes: keep them out of glibc's heap arenas (whose dynamic mmap
    // threshold would otherwise grow and hold freed buffers), so memory goes back when freed.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(run(cli.command.unwrap_or(Command::Serve)));
    // `serve` bounded the shutdown by the grace period; whatever still runs (a blocking call
    // into a file system or database that no longer answers) must not hold the exit.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    if let Err(e) = result {
        // Through the log, so that with FS_LOG_FORMAT=json a fatal error is JSON too.
        tracing::error!(error = %chain_text(&e), "file-system stopped");
        std::process::exit(1);
    }
    Ok(())
}

/// An error and its causes, outermost first, joined by ": " as anyhow's `{:#}` does, but
/// without a cause whose text the message before it already ends with (an error that shows its
/// source in its own text, as `storage I/O error: {0}` does, would say it twice).
fn chain_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.ends_with(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// A configuration that cannot be used, before logging is set up: plain text, or one JSON
/// object when FS_LOG_FORMAT asks for JSON. `check-config` exits 1 (a problem found), other
/// commands 2.
fn config_failed(e: &file_system::config::ConfigError, check: bool) -> ! {
    let json = std::env::var("FS_LOG_FORMAT").is_ok_and(|f| f.trim().eq_ignore_ascii_case("json"));
    if json {
        let line = serde_json::json!({
            "timestamp": chrono::Utc::now().to_rfc3339(),
            "level": "ERROR",
            "message": "invalid configuration",
            "error": e.to_string(),
        });
        eprintln!("{line}");
    } else {
        eprintln!("{e}");
    }
    std::process::exit(if check { 1 } else { 2 });
}

async fn run(command: Command) -> anyhow::Result<()> {
    let (cfg, sources) = match Config::from_env() {
        Ok(c) => c,
        Err(e) => config_failed(&e, matches!(command, Command::CheckConfig)),
    };
    telemetry::init(cfg.log_format);
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    if let Some(path) = &sources.dotenv {
        tracing::info!(file = %path.display(), "settings read from .env (the environment wins)");
    }
    match command {
        Command::Serve => {
            let listen = cfg.listen;
            // The port first: a second process started by mistake fails here, before it
            // touches anything (its directories are locked next, in `build`).
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            preflight::log_summary(&cfg).await;
            let svc = build(cfg).await?;
            tracing::info!(addr = %listener.local_addr()?, "file-system listening");
            serve(listener, svc, shutdown_signal()).await
        }
        Command::Imageops => {
            // The original imageops API, on the scratch directory shared with the service.
            tokio::fs::create_dir_all(&cfg.scratch_dir).await?;
            let dir = std::fs::canonicalize(&cfg.scratch_dir)?;
            let ops = file_system::imageops::local::LocalImageOps::new(
                std::time::Duration::from_secs(cfg.check_timeout_secs),
                std::time::Duration::from_secs(cfg.slim_timeout_secs),
            );
            let listener = tokio::net::TcpListener::bind(cfg.imageops_listen)
                .await
                .with_context(|| format!("cannot listen on {}", cfg.imageops_listen))?;
            tracing::info!(addr = %listener.local_addr()?, dir = %dir.display(), "imageops listening");
            let app = file_system::routes::sidecar::router(dir, ops);
            let header_timeout = std::time::Duration::from_secs(cfg.header_timeout_secs);
            file_system::routes::serve::serve(listener, app, header_timeout, shutdown_signal())
                .await;
            Ok(())
        }
        Command::Migrate => {
            let conn = db::connect(&cfg.database_url).await.map_err(|e| {
                anyhow::anyhow!("cannot connect to the database: {}", db::describe(&e))
            })?;
            db::migrate(&conn).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::CheckConfig => {
            for (what, value) in preflight::summary(&cfg) {
                println!("{what:>16}: {value}");
            }
            match &cfg.imageops_url {
                Some(url) => println!("{:>16}: {url}", "imageops"),
                None => {
                    if let Ok(v) = preflight::qemu_img_version().await {
                        println!("{:>16}: {v}", "qemu-img");
                    }
                }
            }
            let problems = preflight::check(&cfg).await;
            if problems.is_empty() {
                println!("configuration OK: the database, the store and image checks answer");
                return Ok(());
            }
            eprintln!("{} problem(s):", problems.len());
            for p in &problems {
                eprintln!("  - {p}");
            }
            std::process::exit(1);
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
