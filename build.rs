//! Records the git revision the binary is built from (`file-system --version`,
//! `fs_build_info`): `FS_GIT_REVISION` when the build sets it (a container build without
//! `.git`), else `git rev-parse`, else "unknown".

fn main() {
    println!("cargo:rerun-if-env-changed=FS_GIT_REVISION");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    let revision = std::env::var("FS_GIT_REVISION")
        .ok()
        .filter(|r| !r.is_empty())
        .or_else(|| {
            let out = std::process::Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=FS_GIT_REVISION={revision}");
}
