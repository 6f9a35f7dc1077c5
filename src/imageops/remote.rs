//! Client of the imageops HTTP API (the original sidecar's, or `file-system imageops`). Files
//! are exchanged through a directory both sides mount: paths handed to it must lie inside.

use super::{
    result, CheckReport, CheckStatus, CompressFailure, CompressStatus, Declared, Image, ImageOps,
    Progress,
};
use async_trait::async_trait;
use sea_orm::ActiveEnum;
use serde_json::{json, Value};
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

const POLL: Duration = Duration::from_millis(250);

pub struct RemoteImageOps {
    base: String,
    shared_dir: PathBuf,
    http: reqwest::Client,
    check_timeout: Duration,
    slim_timeout: Duration,
}

impl RemoteImageOps {
    pub fn new(
        base: &str,
        shared_dir: PathBuf,
        check_timeout: Duration,
        slim_timeout: Duration,
    ) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            shared_dir,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
            check_timeout,
            slim_timeout,
        }
    }

    /// The name of a file in the shared directory, as the sidecar knows it (an NBD export is
    /// never handed to a sidecar: `shares_files`).
    fn name(&self, image: &Image) -> Result<String, String> {
        let Some(p) = image.file() else {
            return Err("the image is not where imageops can read it".to_string());
        };
        p.strip_prefix(&self.shared_dir)
            .map(|r| r.to_string_lossy().to_string())
            .map_err(|_| {
                tracing::error!(path = %p.display(), "a file for imageops is outside the shared directory");
                "the image is not where imageops can read it".to_string()
            })
    }

    /// One call to the sidecar. Errors are fit for clients (they end up in check and compress
    /// messages): the sidecar's address and its raw answers are logged, not returned.
    async fn call(&self, req: reqwest::RequestBuilder) -> Result<Value, String> {
        let resp = req.send().await.map_err(|e| {
            tracing::warn!(error = %e, "imageops unreachable");
            "imageops is unavailable".to_string()
        })?;
        let status = resp.status();
        let v: Value = resp.json().await.map_err(|e| {
            tracing::warn!(error = %e, "imageops answered garbage");
            "imageops gave an unreadable answer".to_string()
        })?;
        if !status.is_success() {
            tracing::warn!(%status, answer = %v, "imageops refused a request");
            let shared = Image::File(self.shared_dir.clone());
            let msg = super::qemu::public_message(&s(&v["msg"]), &[&shared]);
            return Err(format!("imageops refused: {msg}"));
        }
        Ok(v)
    }

    async fn start(&self, what: &str, body: Value) -> Result<String, String> {
        let v = self
            .call(
                self.http
                    .post(format!("{}/api/v1/vmimage/{what}", self.base))
                    .json(&body),
            )
            .await?;
        v["requestId"].as_str().map(str::to_string).ok_or_else(|| {
            tracing::warn!(answer = %v, "imageops gave no requestId");
            "imageops gave no request id".to_string()
        })
    }
}

/// A status number of the sidecar's answers as its type; `None` when absent or unknown.
fn wire<E: ActiveEnum<Value = i32>>(v: &Value) -> Option<E> {
    let n = i32::try_from(v.as_i64()?).ok()?;
    E::try_from_value(&n).ok()
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[async_trait]
impl ImageOps for RemoteImageOps {
    async fn check(&self, image: &Image, declared: Declared) -> CheckReport {
        // Whatever the sidecar does, an image that names other files never reaches it.
        if declared == Declared::Qcow2 {
            if let Err(refusal) = super::qcow2::refuse_foreign_files(image).await {
                return CheckReport::failed(refusal);
            }
        }
        let run = async {
            let id = self
                .start("check", json!({ "inputImageName": self.name(image)? }))
                .await?;
            let deadline = Instant::now() + self.check_timeout;
            loop {
                let v = self
                    .call(
                        self.http
                            .get(format!("{}/api/v1/vmimage/check/{id}", self.base)),
                    )
                    .await?;
                let st = wire(&v["status"]).unwrap_or(CheckStatus::Failed);
                if st != CheckStatus::InProgress {
                    let info = &v["checkInfo"];
                    let ii = &info["imageInfo"];
                    return Ok(CheckReport {
                        status: st,
                        msg: super::qemu::public_message(&s(&v["msg"]), &[image]),
                        check_result: info["checkResult"].as_i64().unwrap_or(result::ERROR as i64)
                            as i32,
                        format: s(&ii["format"]),
                        virtual_size_gib: ii["virtual_size"].as_f64().unwrap_or(0.0),
                        image_end_offset: s(&ii["image-end-offset"]),
                        check_errors: s(&ii["check-errors"]),
                    });
                }
                if Instant::now() > deadline {
                    return Ok(CheckReport {
                        status: CheckStatus::TimedOut,
                        check_result: result::TIMEOUT,
                        ..CheckReport::failed("check timed out")
                    });
                }
                tokio::time::sleep(POLL).await;
            }
        };
        run.await
            .unwrap_or_else(|e: String| CheckReport::failed(format!("check failed: {e}")))
    }

    async fn compress(
        &self,
        input: &Image,
        output: &Path,
        progress: Progress,
    ) -> Result<(), CompressFailure> {
        let failed = CompressFailure::failed;
        super::qcow2::refuse_foreign_files(input)
            .await
            .map_err(failed)?;
        let body = json!({
            "inputImageName": self.name(input).map_err(failed)?,
            "outputImageName": self.name(&Image::File(output.into())).map_err(failed)?,
        });
        let id = self.start("compress", body).await.map_err(failed)?;
        let deadline = Instant::now() + self.slim_timeout;
        loop {
            let v = self
                .call(
                    self.http
                        .get(format!("{}/api/v1/vmimage/compress/{id}", self.base)),
                )
                .await
                .map_err(failed)?;
            match wire(&v["status"]).unwrap_or(CompressStatus::Failed) {
                CompressStatus::Completed => return Ok(()),
                CompressStatus::InProgress => progress(v["rate"].as_f64().unwrap_or(0.0)),
                other => {
                    return Err(CompressFailure {
                        status: other,
                        msg: super::qemu::public_message(
                            &s(&v["msg"]),
                            &[input, &Image::File(output.into())],
                        ),
                    })
                }
            }
            if Instant::now() > deadline {
                return Err(CompressFailure {
                    status: CompressStatus::TimedOut,
                    msg: "compression timed out".into(),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn shares_files(&self) -> bool {
        true
    }
}
