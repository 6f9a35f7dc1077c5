//! Files, images and zips: deterministic bytes, digests, real qcow2 images made by qemu-img,
//! zips made by Python's zipfile, and the commands that make them.

use sha2::{Digest, Sha256};
use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Lower-case hex SHA-256 of a file, read 1 MiB at a time.
pub fn sha256_file(path: &Path) -> String {
    use std::io::Read;
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// Deterministic pseudo-random bytes.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Runs a command, asserting success; returns stdout.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} must be installed for the tests: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A real qcow2 made by qemu-img, with `data_mib` MiB of pattern written by qemu-io.
pub fn make_qcow2(dir: &Path, name: &str, virtual_mib: u64, data_mib: u64) -> PathBuf {
    let path = dir.join(name);
    let p = path.to_str().unwrap();
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", p, &format!("{virtual_mib}M")],
    );
    if data_mib > 0 {
        run(
            "qemu-io",
            &[
                "-f",
                "qcow2",
                "-c",
                &format!("write -P 0x5a 0 {data_mib}M"),
                p,
            ],
        );
    }
    path
}

/// Asserts that two qcow2 files hold the same guest content (`qemu-img compare`).
pub fn assert_same_qcow2(a: &Path, b: &Path) {
    run(
        "qemu-img",
        &[
            "compare",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
        ],
    );
}

/// Builds a zip with Python's zipfile from a small script body (`z` is the open ZipFile).
pub fn python_zip(path: &Path, script: &str) {
    let code = format!(
        "import zipfile, sys\nz = zipfile.ZipFile(sys.argv[1], 'w', zipfile.ZIP_DEFLATED)\n{script}\nz.close()\n"
    );
    run("python3", &["-c", &code, path.to_str().unwrap()]);
}
