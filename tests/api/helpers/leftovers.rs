//! What a test may not leave behind: objects, multipart uploads, scratch files.

use super::TestApp;
use std::path::{Path, PathBuf};

impl TestApp {
    /// Whether the store holds `key` in `bucket`.
    pub async fn object_exists(&self, bucket: &str, key: &str) -> bool {
        match &self.s3 {
            None => self
                .dir
                .path()
                .join("objects")
                .join(bucket)
                .join(key)
                .is_file(),
            Some(s3) => s3
                .client
                .head_object()
                .bucket(bucket)
                .key(format!("{}{key}", s3.prefix))
                .send()
                .await
                .is_ok(),
        }
    }

    /// Writes `bytes` as object `key` of bucket `images` behind the service's back (an object
    /// changed in the store, or one a crashed or failed request left).
    pub async fn write_object(&self, key: &str, bytes: Vec<u8>) {
        match &self.s3 {
            Some(s3) => {
                s3.client
                    .put_object()
                    .bucket("images")
                    .key(format!("{}{key}", s3.prefix))
                    .body(bytes.into())
                    .send()
                    .await
                    .unwrap();
            }
            None => {
                let path = self.dir.path().join("objects/images").join(key);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, bytes).unwrap();
            }
        }
    }

    /// Opens a multipart upload holding one part in the store, as a process killed in the
    /// middle of a write leaves it (no session records it); on the local store, an upload
    /// directory. Its files are dated `age_secs` back where the store lets a test do that.
    pub async fn orphan_upload(&self, key: &str, age_secs: u64) {
        match &self.s3 {
            Some(s3) => {
                let key = format!("{}{key}", s3.prefix);
                let c = &s3.client;
                let up = c
                    .create_multipart_upload()
                    .bucket("images")
                    .key(&key)
                    .send()
                    .await
                    .unwrap();
                c.upload_part()
                    .bucket("images")
                    .key(&key)
                    .upload_id(up.upload_id().unwrap())
                    .part_number(1)
                    .body(vec![7u8; 1000].into())
                    .send()
                    .await
                    .unwrap();
            }
            None => {
                let dir = self
                    .dir
                    .path()
                    .join("objects/.uploads")
                    .join(uuid::Uuid::new_v4().to_string());
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join("data"), vec![7u8; 1000]).unwrap();
                let then = std::time::SystemTime::now() - std::time::Duration::from_secs(age_secs);
                for p in [dir.join("data"), dir.clone()] {
                    std::fs::File::open(&p).unwrap().set_modified(then).unwrap();
                }
            }
        }
    }

    /// Waits until nothing is left ([`TestApp::leftovers`]), for at most `secs` seconds, and
    /// panics with `what` (the case) and what stayed: a deleted image's objects go a moment
    /// after its delete answered when a download still held them, a vanished client's files
    /// when the server notices.
    pub async fn until_no_leftovers(&self, what: &str, secs: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let left = self.leftovers().await;
            if left.is_empty() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: left after {secs} s: {left:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// Everything the service keeps: objects, parts and uploads in progress, scratch files
    /// (to prove nothing is left behind).
    pub async fn leftovers(&self) -> Vec<String> {
        self.wait_jobs_idle().await;
        // A worker whose job was cancelled (its image deleted) lets go of its scratch files
        // when it notices, at its next lease renewal: give it that long.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut files = vec![];
        loop {
            files.clear();
            walk(&self.scratch, &mut files);
            if files.is_empty() || std::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        if self.s3.is_none() {
            walk(&self.dir.path().join("objects"), &mut files);
        }
        let mut out: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        if let Some(s3) = &self.s3 {
            for b in &s3.buckets {
                let objs = s3
                    .client
                    .list_objects_v2()
                    .bucket(b)
                    .prefix(&s3.prefix)
                    .send()
                    .await
                    .unwrap();
                out.extend(
                    objs.contents()
                        .iter()
                        .map(|o| format!("{b}/{}", o.key().unwrap_or(""))),
                );
                let ups = s3
                    .client
                    .list_multipart_uploads()
                    .bucket(b)
                    .prefix(&s3.prefix)
                    .send()
                    .await
                    .unwrap();
                out.extend(
                    ups.uploads()
                        .iter()
                        .map(|u| format!("upload {b}/{}", u.key().unwrap_or(""))),
                );
            }
        }
        out
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}
