//! The real server binary running as a separate process (a replica).

use super::API;
use reqwest::Client;
use std::{path::Path, process::Command};

/// The real server binary running as a separate process (a replica), on `port`.
pub struct Replica {
    pub child: std::process::Child,
    pub base: String,
}

impl Replica {
    /// Starts the binary with the app's variables (jobs: 2 workers, 3 s leases) plus `extra`,
    /// and waits until it answers.
    pub async fn start(
        vars: &[(String, String)],
        port: u16,
        log: &Path,
        extra: &[(&str, &str)],
    ) -> Replica {
        use std::process::Stdio;
        let log_path = log;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_file-system"))
            .envs(
                vars.iter()
                    .filter(|(k, _)| k != "FS_LISTEN" && k != "FS_JOB_CONCURRENCY")
                    .cloned(),
            )
            .env("FS_JOB_CONCURRENCY", "2")
            .env("FS_LISTEN", format!("127.0.0.1:{port}"))
            .env("FS_JOB_LEASE_SECS", "3")
            .env("RUST_LOG", "info")
            .envs(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start the server binary");
        let base = format!("http://127.0.0.1:{port}");
        let client = Client::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while client.get(format!("{base}/health")).send().await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "server did not come up: {}",
                std::fs::read_to_string(log_path).unwrap_or_default()
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Replica { child, base }
    }

    pub fn api(&self, path: &str) -> String {
        format!("{}{API}{path}", self.base)
    }

    /// SIGKILL: the process dies at once, holding whatever it held.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends SIGTERM (what Kubernetes sends to stop a pod); `child.wait()` gives the exit.
    pub fn terminate(&self) {
        // SAFETY: kill(2) on our own child's pid, which has not been waited for yet.
        let rc = unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        assert_eq!(rc, 0, "SIGTERM could not be sent");
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
