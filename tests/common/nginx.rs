//! A real nginx (Debian's package; `scripts/lib.sh`'s `ensure_tools` installs it) as a child
//! process on a free loopback port: the reverse proxy of the proxy and replica tests, the
//! WebDAV server of the benchmark's upload baseline.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A running nginx; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Nginx {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    dir: tempfile::TempDir,
}

/// What an nginx serves: lines of its `http` block before the server (upstreams, ...) and the
/// body of its one `server` block (after `listen`).
pub struct Site {
    pub http: String,
    pub server: String,
}

impl Nginx {
    /// Starts nginx with its own directory (logs, pid, request-body temp files) made in
    /// `parent` (the system temp directory when `None`); `site` gets that directory and makes
    /// what is served. Waits until it accepts connections.
    pub async fn start(parent: Option<&Path>, site: impl FnOnce(&Path) -> Site) -> Nginx {
        let dir = match parent {
            Some(p) => tempfile::tempdir_in(p).unwrap(),
            None => tempfile::tempdir().unwrap(),
        };
        let port = super::free_port();
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, config(dir.path(), port, site(dir.path()))).unwrap();
        let mut child = Command::new(nginx_binary())
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("stderr.log")).unwrap(),
            ))
            .spawn()
            .expect(
                "nginx must be installed (scripts/lib.sh's ensure_tools installs Debian's nginx)",
            );
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let log = || std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
            if let Some(status) = child.try_wait().unwrap() {
                panic!("nginx exited ({status}): {}", log());
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not come up: {}",
                log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Nginx {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir,
        }
    }

    /// The error log's lines at level error or worse (a failed upstream, a 502, ...).
    pub fn errors(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("error.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                ["[error]", "[crit]", "[alert]", "[emerg]"]
                    .iter()
                    .any(|lvl| l.contains(lvl))
            })
            .map(str::to_string)
            .collect()
    }
}

/// The whole configuration: one worker, everything nginx writes kept in `dir`.
fn config(dir: &Path, port: u16, site: Site) -> String {
    let d = dir.display();
    // Workers run as the user nginx starts as (a root master would switch to nobody).
    // SAFETY: geteuid(2) only reads the process's effective user id; it cannot fail.
    let user = if unsafe { libc::geteuid() } == 0 {
        "user root;"
    } else {
        ""
    };
    let Site { http, server } = site;
    format!(
        "{user}
worker_processes 1;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
{http}
    server {{
        listen 127.0.0.1:{port};
{server}
    }}
}}
"
    )
}

/// `nginx` on PATH, else Debian's /usr/sbin/nginx (sbin is not on every user's PATH).
fn nginx_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file());
    on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx"))
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers and exits.
        // SAFETY: kill(2) on our own child, which has not been waited for yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
