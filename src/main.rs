//! `file-system [serve]` runs the service; `file-system migrate` applies database migrations.

use anyhow::Context;
use file_system::{build, config::Config, db, serve, telemetry};

const USAGE: &str = "usage: file-system [serve | migrate | help]
  serve    run the HTTP service (default)
  migrate  apply database migrations and exit
  imageops serve the imageops HTTP API (sidecar) on FS_IMAGEOPS_LISTEN over FS_SCRATCH_DIR
Settings come from environment variables (and .env); see .env.example.";

fn main() -> anyhow::Result<()> {
    // Part buffers are megabytes: keep them out of glibc's heap arenas (whose dynamic mmap
    // threshold would otherwise grow and hold freed buffers), so memory goes back when freed.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(run());
    // `serve` bounded the shutdown by the grace period; whatever still runs (a blocking call
    // into a file system or database that no longer answers) must not hold the exit.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

async fn run() -> anyhow::Result<()> {
    let cmd = std::env::args().nth(1).unwrap_or_else(|| "serve".into());
    if matches!(cmd.as_str(), "help" | "-h" | "--help") {
        println!("{USAGE}");
        return Ok(());
    }
    let cfg = Config::from_env()?;
    telemetry::init(cfg.log_format);
    match cmd.as_str() {
        "serve" => {
            let listen = cfg.listen;
            // The port first: a second process started by mistake on the same data directory
            // fails here, before it touches what the running one uses (its scratch files).
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            let svc = build(cfg).await?;
            tracing::info!(addr = %listener.local_addr()?, "file-system listening");
            serve(listener, svc, shutdown_signal()).await
        }
        "imageops" => {
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
            let app = file_system::imageops::server::router(dir, ops);
            let header_timeout = std::time::Duration::from_secs(cfg.header_timeout_secs);
            file_system::routes::serve::serve(listener, app, header_timeout, shutdown_signal())
                .await;
            Ok(())
        }
        "migrate" => {
            let conn = db::connect(&cfg.database_url).await?;
            db::migrate(&conn).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        other => {
            eprintln!("unknown command {other:?}\n{USAGE}");
            std::process::exit(2);
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
