//! Client of the imageops HTTP API (the original sidecar's, or `file-system imageops`). Files
//! are exchanged through a directory both sides mount: paths handed to it must lie inside.

use super::{
    result,
    wire::{self, CheckAnswer, CheckRequest, CompressAnswer, CompressRequest, Started},
    CheckReport, CheckStatus, CompressFailure, CompressStatus, Compressed, Declared, Image,
    ImageOps, Progress,
};
use async_trait::async_trait;
use sea_orm::ActiveEnum;
use serde::de::DeserializeOwned;
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
    async fn call<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<T, String> {
        let resp = req.send().await.map_err(|e| {
            tracing::warn!(error = %e, "imageops unreachable");
            "imageops is unavailable".to_string()
        })?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| {
            tracing::warn!(error = %e, "imageops unreachable");
            "imageops is unavailable".to_string()
        })?;
        let garbage = |e: serde_json::Error| {
            tracing::warn!(error = %e, answer = %String::from_utf8_lossy(&body), "imageops answered garbage");
            "imageops gave an unreadable answer".to_string()
        };
        if !status.is_success() {
            let refusal: Started = serde_json::from_slice(&body).map_err(garbage)?;
            tracing::warn!(%status, msg = refusal.msg, "imageops refused a request");
            let shared = Image::File(self.shared_dir.clone());
            let msg = super::qemu::public_message(&refusal.msg, &[&shared]);
            return Err(format!("imageops refused: {msg}"));
        }
        serde_json::from_slice(&body).map_err(garbage)
    }

    /// Starts a request at `path` (`wire::CHECK_PATH` or `COMPRESS_PATH`); its request id.
    async fn start(&self, path: &str, body: &impl serde::Serialize) -> Result<String, String> {
        let url = format!("{}{path}", self.base);
        let started: Started = self.call(self.http.post(url).json(body)).await?;
        started.request_id.ok_or_else(|| {
            tracing::warn!(msg = started.msg, "imageops gave no requestId");
            "imageops gave no request id".to_string()
        })
    }

    /// Polls the request `id` started at `path`.
    async fn poll<T: DeserializeOwned>(&self, path: &str, id: &str) -> Result<T, String> {
        self.call(self.http.get(format!("{}{path}/{id}", self.base)))
            .await
    }
}

/// A status number of the sidecar's answers as its type; `None` when unknown.
fn status<E: ActiveEnum<Value = i32>>(n: i32) -> Option<E> {
    E::try_from_value(&n).ok()
}

#[async_trait]
impl ImageOps for RemoteImageOps {
    async fn check(&self, image: &Image, declared: Declared) -> CheckReport {
        // Whatever the sidecar does, an image that names other files never reaches it.
        if let Err(refusal) = super::qcow2::refuse_foreign_files(image, declared).await {
            return CheckReport::failed(refusal);
        }
        let run = async {
            let request = CheckRequest {
                input_image_name: self.name(image)?,
            };
            let id = self.start(wire::CHECK_PATH, &request).await?;
            let deadline = Instant::now() + self.check_timeout;
            loop {
                let answer: CheckAnswer = self.poll(wire::CHECK_PATH, &id).await?;
                let st = status(answer.status).unwrap_or(CheckStatus::Failed);
                if st != CheckStatus::InProgress {
                    let info = answer.check_info.unwrap_or_default();
                    let ii = info.image_info;
                    return Ok(CheckReport {
                        status: st,
                        msg: super::qemu::public_message(&answer.msg, &[image]),
                        check_result: info.check_result.unwrap_or(result::ERROR),
                        format: ii.format,
                        virtual_size_gib: ii.virtual_size.unwrap_or(0.0),
                        image_end_offset: ii.image_end_offset,
                        check_errors: ii.check_errors,
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

    /// The sidecar's own `compress` inspects the input again and decides what goes with it
    /// (`extras` is not sent: the original API has no field for it).
    async fn convert(
        &self,
        input: &Image,
        output: &Path,
        _extras: super::qcow2::Extras,
        progress: Progress,
    ) -> Compressed {
        let failed = CompressFailure::failed;
        let request = CompressRequest {
            input_image_name: self.name(input).map_err(failed)?,
            output_image_name: self.name(&Image::File(output.into())).map_err(failed)?,
        };
        let id = self
            .start(wire::COMPRESS_PATH, &request)
            .await
            .map_err(failed)?;
        let deadline = Instant::now() + self.slim_timeout;
        loop {
            let answer: CompressAnswer =
                self.poll(wire::COMPRESS_PATH, &id).await.map_err(failed)?;
            match status(answer.status).unwrap_or(CompressStatus::Failed) {
                CompressStatus::Completed => return Ok(()),
                CompressStatus::InProgress => progress(answer.rate.unwrap_or(0.0)),
                other => {
                    return Err(CompressFailure {
                        status: other,
                        msg: super::qemu::public_message(
                            &answer.msg,
                            &[input, &Image::File(output.into())],
                        ),
                    })
                }
            }
            if Instant::now() > deadline {
                return Err(CompressFailure::timed_out());
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn shares_files(&self) -> bool {
        true
    }
}
