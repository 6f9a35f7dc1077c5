//! S3 object store (AWS S3, MinIO, Garage, Ceph RGW) through aws-sdk-s3.
//!
//! - `put` streams a body into bounded parts (a few in flight) of one multipart upload, or one
//!   `PutObject` when it is small; a failure aborts the upload.
//! - Chunk n of a chunked upload is part n (`UploadPart` from the spooled file, retried by the
//!   SDK) when the caller says `direct`. Strict stores reject non-final parts under 5 MiB, so a
//!   chunk below the minimum, or one the caller does not send directly, is held as a staging
//!   object (`staging/{upload_id}/{n}`).
//! - Completion follows [`plan`]: direct parts stay, staged chunks are copied inside the store
//!   (`UploadPartCopy`) or joined through a spool file into parts of at least the minimum;
//!   then `CompleteMultipartUpload`. For direct parts no image byte passes through.

use super::{
    ByteRange, ByteStream, CompletedPart, ObjectStore, PutOptions, Result, SpooledPart,
    StorageError, UploadedPart,
};
use crate::cleanup::Cleanup;
use async_trait::async_trait;
use aws_sdk_s3::{
    config::http::HttpResponse,
    error::{DisplayErrorContext, ProvideErrorMetadata, SdkError},
    primitives::ByteStream as S3Body,
    types::{
        AbortIncompleteMultipartUpload, BucketLifecycleConfiguration, BucketLocationConstraint,
        ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart as S3Part,
        CreateBucketConfiguration, ExpirationStatus, LifecycleExpiration, LifecycleRule,
        LifecycleRuleFilter, StorageClass,
    },
    Client,
};
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use std::{path::PathBuf, sync::Arc, time::Duration};
use tokio::{io::AsyncWriteExt, sync::Semaphore, task::JoinSet};

pub mod plan;
mod readahead;

/// Settings of the S3 store.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// Empty = AWS.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub force_path_style: bool,
    /// Smallest non-final part the store accepts (5 MiB on AWS and MinIO).
    pub min_part_bytes: u64,
    /// Part size of streamed single uploads (grows for very large bodies).
    pub part_bytes: u64,
    /// Parts of one streamed upload in flight at once.
    pub upload_concurrency: usize,
    /// Memory all downloads together may hold read ahead of what they send, in windows of
    /// `part_bytes` (each download reads up to 3 windows ahead); 0 reads with one GET.
    pub readahead_bytes: u64,
    /// Prepended to every key (several deployments, or test runs, can share buckets).
    pub key_prefix: String,
    /// Where staged chunks are joined into a part at completion (the scratch directory).
    pub spool_dir: PathBuf,
    /// The checksum sent with every put and part, verified by the store.
    pub checksum: S3Checksum,
}

/// The checksum sent with every `PutObject` and `UploadPart` (S3's additional checksums:
/// `x-amz-checksum-crc32c` or `-sha256`, computed by the SDK while it sends), which the store
/// verifies before it accepts the bytes. A multipart upload declares it when it is created and
/// hands each part's value back at completion. `Off` for stores that reject these headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum S3Checksum {
    #[default]
    Crc32c,
    Sha256,
    Off,
}

impl S3Checksum {
    fn algorithm(self) -> Option<ChecksumAlgorithm> {
        match self {
            S3Checksum::Crc32c => Some(ChecksumAlgorithm::Crc32C),
            S3Checksum::Sha256 => Some(ChecksumAlgorithm::Sha256),
            S3Checksum::Off => None,
        }
    }

    /// The checksum of `bytes` (base64, as S3 headers carry it).
    fn of_bytes(self, bytes: &[u8]) -> Option<String> {
        use base64::{engine::general_purpose::STANDARD as B64, Engine};
        use sha2::Digest;
        match self {
            S3Checksum::Crc32c => Some(B64.encode(crc32c::crc32c(bytes).to_be_bytes())),
            S3Checksum::Sha256 => Some(B64.encode(sha2::Sha256::digest(bytes))),
            S3Checksum::Off => None,
        }
    }

    /// The checksum of a local file (one read, off the async threads).
    async fn of_file(self, path: &std::path::Path) -> Result<Option<String>> {
        use crate::domain::integrity::{digest_file, Wanted};
        use base64::{engine::general_purpose::STANDARD as B64, Engine};
        let wanted = match self {
            S3Checksum::Off => return Ok(None),
            S3Checksum::Crc32c => Wanted {
                crc32c: true,
                ..Default::default()
            },
            S3Checksum::Sha256 => Wanted {
                sha256: true,
                ..Default::default()
            },
        };
        let path = path.to_path_buf();
        let d = tokio::task::spawn_blocking(move || digest_file(&path, wanted))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))??;
        Ok(match self {
            S3Checksum::Crc32c => d.crc32c.map(|c| B64.encode(c.to_be_bytes())),
            _ => d.sha256.map(|h| B64.encode(h)),
        })
    }

    /// A checksum as the (crc32c, sha256) request fields.
    fn fields(self, value: Option<String>) -> (Option<String>, Option<String>) {
        match self {
            S3Checksum::Crc32c => (value, None),
            S3Checksum::Sha256 => (None, value),
            S3Checksum::Off => (None, None),
        }
    }

    /// The value of this algorithm among those a response carries.
    fn pick(self, crc32c: Option<&str>, sha256: Option<&str>) -> Option<String> {
        match self {
            S3Checksum::Crc32c => crc32c.map(str::to_string),
            S3Checksum::Sha256 => sha256.map(str::to_string),
            S3Checksum::Off => None,
        }
    }

    /// A completed part with its etag and (this algorithm's) checksum.
    fn part(self, number: u32, etag: Option<String>, checksum: Option<String>) -> S3Part {
        let b = S3Part::builder().part_number(number as i32).set_e_tag(etag);
        match self {
            S3Checksum::Crc32c => b.set_checksum_crc32_c(checksum),
            S3Checksum::Sha256 => b.set_checksum_sha256(checksum),
            S3Checksum::Off => b,
        }
        .build()
    }
}

/// Marks an ETag of a part held as a staging object.
const STAGED: &str = "staged:";
/// Objects larger than this are copied part by part (`CopyObject` stops at 5 GiB).
const COPY_PART: u64 = 1 << 30;

pub struct S3Store {
    client: Client,
    settings: S3Settings,
    readahead: readahead::Budget,
}

/// Where the staged chunks of an upload live. Upload ids are opaque (and may hold characters
/// awkward in keys), so the prefix is their MD5.
fn staging_prefix(upload_id: &str) -> String {
    use md5::Digest;
    format!(
        "staging/{}/",
        hex::encode(md5::Md5::digest(upload_id.as_bytes()))
    )
}

fn staging_key(upload_id: &str, number: u32) -> String {
    format!("{}{number:05}", staging_prefix(upload_id))
}

impl S3Store {
    /// The store key of a logical key.
    fn k(&self, key: &str) -> String {
        format!("{}{key}", self.settings.key_prefix)
    }
}

/// Maps SDK failures: the network or a 5xx means the store is unavailable.
/// An SDK error as the variant callers act on, with a short message an operator can read:
/// the HTTP status with the store's error code and message, a hint for the bodiless 400/403
/// answers of HEAD requests, or why the endpoint could not be reached. The SDK's whole
/// nested structure goes to the DEBUG log only.
fn s3_err<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    e: SdkError<E, HttpResponse>,
) -> StorageError {
    s3_err_at(None, e)
}

/// `s3_err`, naming `endpoint` when it cannot be reached.
fn s3_err_at<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    endpoint: Option<&str>,
    e: SdkError<E, HttpResponse>,
) -> StorageError {
    tracing::debug!(error = %DisplayErrorContext(&e), "S3 request failed");
    let msg = describe(endpoint, &e);
    match &e {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            StorageError::Unavailable(msg)
        }
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or("");
            if matches!(
                code,
                "ServiceUnavailable" | "SlowDown" | "InternalError" | "RequestTimeout"
            ) {
                StorageError::Unavailable(msg)
            } else if matches!(code, "NoSuchUpload") {
                StorageError::NoSuchUpload
            } else if matches!(code, "NoSuchKey" | "NotFound") {
                StorageError::NotFound
            } else if matches!(code, "EntityTooSmall" | "InvalidPart" | "InvalidPartOrder") {
                StorageError::InvalidPart(msg)
            } else {
                StorageError::Io(std::io::Error::other(msg))
            }
        }
        _ => StorageError::Io(std::io::Error::other(msg)),
    }
}

/// The message of `s3_err`: one short line.
fn describe<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    endpoint: Option<&str>,
    e: &SdkError<E, HttpResponse>,
) -> String {
    let at = endpoint.unwrap_or("the S3 endpoint");
    match e {
        SdkError::ServiceError(se) => {
            let raw = se.raw();
            let status = raw.status().as_u16();
            let err = se.err();
            match (err.code(), err.message()) {
                (Some(code), Some(message)) if !message.is_empty() => {
                    format!("S3 {status} {code}: {}", clip(message))
                }
                (Some(code), _) => format!("S3 {status} {code}"),
                // HEAD answers have no body, so no code: say what the status usually means.
                (None, _) => match status {
                    403 => {
                        "S3 403 Forbidden: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY".into()
                    }
                    400 => "S3 400 Bad Request: check FS_S3_REGION".into(),
                    301 => match raw.headers().get("x-amz-bucket-region") {
                        Some(r) => format!(
                            "S3 301: the bucket is in region {}: check FS_S3_REGION",
                            clip(r)
                        ),
                        None => "S3 301: the bucket is elsewhere: check FS_S3_REGION".into(),
                    },
                    404 => "S3 404 Not Found".into(),
                    s => format!("S3 {s}"),
                },
            }
        }
        SdkError::DispatchFailure(df) => {
            if chain(e).contains("loading credentials") {
                // The AWS chain found no credentials (it ends asking the EC2 metadata service).
                format!(
                    "no S3 credentials: set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (the AWS \
                     credentials chain ended with: {})",
                    root_cause(e)
                )
            } else if df.is_timeout() {
                format!("S3 at {at} did not answer in time")
            } else {
                format!("cannot reach S3 at {at}: {}", root_cause(e))
            }
        }
        SdkError::TimeoutError(_) => format!("S3 at {at} did not answer in time"),
        SdkError::ResponseError(re) => format!(
            "S3 at {at} sent an answer that cannot be read (HTTP {})",
            re.raw().status().as_u16()
        ),
        SdkError::ConstructionFailure(_) => {
            format!("S3 request could not be built: {}", root_cause(e))
        }
        _ => format!("S3 request failed: {}", root_cause(e)),
    }
}

/// Every cause's text, outermost first.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut inner = e;
    while let Some(next) = inner.source() {
        text.push_str(": ");
        text.push_str(&next.to_string());
        inner = next;
    }
    text
}

/// The innermost cause's own text (`Connection refused (os error 111)`, `failed to lookup
/// address information: ...`), without the SDK's wrappers.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    clip(&inner.to_string())
}

/// At most 200 characters of `s`, on one line.
fn clip(s: &str) -> String {
    let line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &line[..i]),
        None => line,
    }
}

fn class(opts: &PutOptions) -> Option<StorageClass> {
    opts.storage_class.as_deref().map(StorageClass::from)
}

/// Part size for part `n` of a streamed upload of unknown length: the configured size, doubled
/// every 1250 parts, so 10000 parts reach far past the image size limit.
fn part_size(base: u64, n: u32) -> u64 {
    (base << ((n.saturating_sub(1)) / 1250).min(10)).min(5 << 30)
}

impl S3Store {
    pub async fn new(settings: S3Settings) -> Result<Self> {
        use aws_config::{retry::RetryConfig, timeout::TimeoutConfig, BehaviorVersion, Region};
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(RetryConfig::standard().with_max_attempts(5))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .read_timeout(Duration::from_secs(120))
                    .build(),
            );
        let endpoint = settings.endpoint.as_deref().filter(|e| !e.is_empty());
        if let Some(r) = settings.region.clone().filter(|r| !r.is_empty()) {
            loader = loader.region(Region::new(r));
        } else if endpoint.is_some() {
            // An S3-compatible store: the SDK's default region chain would end asking the EC2
            // instance metadata service (a WARN and seconds at every start off EC2). Take
            // AWS_REGION / AWS_DEFAULT_REGION when set, else us-east-1, which such stores
            // accept (Garage excepted: it wants its own s3_region).
            use aws_config::{environment::EnvironmentVariableRegionProvider, meta::region};
            loader = loader.region(
                region::RegionProviderChain::first_try(EnvironmentVariableRegionProvider::new())
                    .or_else(Region::new("us-east-1")),
            );
        }
        let shared = loader.load().await;
        let mut b = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(settings.force_path_style)
            // Some S3-compatible stores reject the SDK's default CRC checksums, and Garage the
            // signed trailers it sends them in: FS_S3_CHECKSUM values are computed here and
            // sent as plain headers instead.
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            );
        if shared.region().is_none() {
            b = b.region(Region::new("us-east-1"));
        }
        if let Some(ep) = settings.endpoint.clone().filter(|e| !e.is_empty()) {
            b = b.endpoint_url(ep);
        }
        Ok(Self {
            client: Client::from_conf(b.build()),
            readahead: readahead::Budget::new(settings.readahead_bytes, settings.part_bytes),
            settings,
        })
    }

    /// Where the store is, for messages.
    fn endpoint(&self) -> &str {
        self.settings
            .endpoint
            .as_deref()
            .unwrap_or("the AWS default endpoint")
    }

    /// `s3_err`, naming this store's endpoint when it cannot be reached.
    fn err<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
        &self,
        e: SdkError<E, HttpResponse>,
    ) -> StorageError {
        s3_err_at(Some(self.endpoint()), e)
    }

    /// `err` of a write with `opts`, saying so when the store refused the storage class a tier
    /// names (AWS: InvalidStorageClass; Ceph's RGW: InvalidArgument for a class its zone
    /// placement does not list).
    fn class_err<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
        &self,
        e: SdkError<E, HttpResponse>,
        opts: &PutOptions,
    ) -> StorageError {
        let refused = matches!(&e, SdkError::ServiceError(se)
            if matches!(se.err().code(), Some("InvalidStorageClass" | "InvalidArgument")));
        match (self.err(e), opts.storage_class.as_deref()) {
            (StorageError::Io(io), Some(c)) if refused => StorageError::Io(std::io::Error::other(
                format!("{io} (storage class {c} of FS_TIERS: does the store offer it?)"),
            )),
            (other, _) => other,
        }
    }

    /// The SDK client (tests and tools inspect the store with it).
    pub fn client(&self) -> &Client {
        &self.client
    }

    async fn put_small(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        opts: &PutOptions,
    ) -> Result<()> {
        let len = body.len() as i64;
        let c = self.settings.checksum;
        let (crc, sha) = c.fields(c.of_bytes(&body));
        self.client
            .put_object()
            .bucket(bucket)
            .key(key)
            .set_storage_class(class(opts))
            .set_checksum_crc32_c(crc)
            .set_checksum_sha256(sha)
            .content_length(len)
            .body(S3Body::from(body))
            .send()
            .await
            .map_err(|e| self.class_err(e, opts))?;
        Ok(())
    }

    async fn upload_bytes(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        n: u32,
        body: Bytes,
    ) -> Result<S3Part> {
        let len = body.len() as i64;
        let c = self.settings.checksum;
        let checksum = c.of_bytes(&body);
        let (crc, sha) = c.fields(checksum.clone());
        let out = self
            .client
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(n as i32)
            .set_checksum_crc32_c(crc)
            .set_checksum_sha256(sha)
            .content_length(len)
            .body(S3Body::from(body))
            .send()
            .await
            .map_err(|e| self.err(e))?;
        Ok(c.part(n, out.e_tag, checksum))
    }

    /// Opens a multipart upload (declaring the checksum its parts carry).
    async fn create_upload(&self, bucket: &str, key: &str, opts: &PutOptions) -> Result<String> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .set_storage_class(class(opts))
            .set_checksum_algorithm(self.settings.checksum.algorithm())
            .send()
            .await
            .map_err(|e| self.class_err(e, opts))?;
        out.upload_id()
            .map(str::to_string)
            .ok_or_else(|| StorageError::Io(std::io::Error::other("store returned no upload id")))
    }

    async fn complete(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: Vec<S3Part>,
    ) -> Result<()> {
        self.client
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Streams `body` (after `prefilled`, a first part already read) into the open multipart
    /// upload as parts of at least `part_bytes`, with a bounded number in flight; returns the
    /// parts in order and the number of bytes sent.
    async fn stream_parts(
        self: &Arc<Self>,
        bucket: &str,
        key: &str,
        upload_id: &str,
        first: u32,
        mut filler: Filler,
        mut body: ByteStream,
    ) -> Result<(Vec<S3Part>, u64)> {
        let slots = Arc::new(Semaphore::new(self.settings.upload_concurrency.max(1)));
        let mut tasks: JoinSet<Result<S3Part>> = JoinSet::new();
        let mut n = first;
        let mut ended = false;
        let mut sent = 0u64;
        let mut parts = vec![];
        while !ended {
            let target = part_size(self.settings.part_bytes, n) as usize;
            let (chunk, end) = match filler.fill(&mut body, target).await {
                Ok(x) => x,
                Err(e) => {
                    tasks.abort_all();
                    return Err(StorageError::Body(e));
                }
            };
            ended = end;
            if chunk.is_empty() {
                break;
            }
            sent += chunk.len() as u64;
            let permit = slots.clone().acquire_owned().await.expect("semaphore open");
            let (me, bucket, key, upload_id) = (
                self.clone(),
                bucket.to_string(),
                key.to_string(),
                upload_id.to_string(),
            );
            let number = n;
            tasks.spawn(async move {
                let _permit = permit;
                me.upload_bytes(&bucket, &key, &upload_id, number, chunk.freeze())
                    .await
            });
            n += 1;
            // Collect finished parts as we go so a failure stops the stream early.
            while let Some(done) = tasks.try_join_next() {
                parts.push(
                    done.map_err(|e| StorageError::Io(std::io::Error::other(e.to_string())))??,
                );
            }
        }
        while let Some(done) = tasks.join_next().await {
            parts.push(done.map_err(|e| StorageError::Io(std::io::Error::other(e.to_string())))??);
        }
        parts.sort_by_key(|p| p.part_number());
        Ok((parts, sent))
    }

    async fn delete_staging(&self, bucket: &str, upload_id: &str) -> Result<()> {
        let prefix = self.k(&staging_prefix(upload_id));
        let mut token = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(bucket)
                .prefix(&prefix)
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| self.err(e))?;
            for obj in page.contents() {
                if let Some(k) = obj.key() {
                    self.client
                        .delete_object()
                        .bucket(bucket)
                        .key(k)
                        .send()
                        .await
                        .map_err(|e| self.err(e))?;
                }
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => return Ok(()),
            }
        }
    }

    /// Streams an object, or `range` of it. Longer than one read-ahead window, it is read as
    /// a few ranged GETs at once, in order ([`readahead`]).
    async fn get_stream(
        &self,
        bucket: &str,
        key: &str,
        range: Option<ByteRange>,
    ) -> Result<ByteStream> {
        let window = self.readahead.window;
        let single =
            self.settings.readahead_bytes == 0 || range.is_some_and(|r| r.length() <= window);
        if single {
            return self.get_once(bucket, key, range).await;
        }
        let start = range.map_or(0, |r| r.start);
        let first_end = range.map_or(start + window - 1, |r| r.end.min(start + window - 1));
        let out = match self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .range(format!("bytes={start}-{first_end}"))
            .send()
            .await
        {
            Ok(out) => out,
            // An empty object has no byte 0.
            Err(SdkError::ServiceError(se)) if se.raw().status().as_u16() == 416 => {
                return match range {
                    Some(r) => Err(outside(r)),
                    None => self.get_once(bucket, key, None).await,
                };
            }
            Err(e) => return Err(self.err(e)),
        };
        let total = out.content_range().and_then(readahead::total_of);
        // Stores clamp an end past the object; the contract refuses such a range instead.
        if let (Some(r), Some(t)) = (range, total) {
            if r.end >= t {
                return Err(outside(r));
            }
        }
        let Some(end) = range.map(|r| r.end).or(total.map(|t| t.saturating_sub(1))) else {
            // A store that ignored the range sent the whole object.
            return Ok(body_stream(out.body));
        };
        let end = total.map_or(end, |t| end.min(t.saturating_sub(1)));
        let first_end = first_end.min(end);
        let first = readahead::exact(body_stream(out.body), first_end - start + 1);
        if first_end >= end {
            return Ok(first);
        }
        let windows = Windows {
            client: self.client.clone(),
            endpoint: self.settings.endpoint.clone(),
            bucket: bucket.to_string(),
            key: key.to_string(),
            etag: out.e_tag,
        };
        Ok(readahead::ordered(
            windows,
            self.readahead.clone(),
            first,
            first_end,
            end,
        ))
    }

    /// Streams an object, or `range` of it, with one GET.
    async fn get_once(
        &self,
        bucket: &str,
        key: &str,
        range: Option<ByteRange>,
    ) -> Result<ByteStream> {
        let out = match self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .set_range(range.map(|r| format!("bytes={}-{}", r.start, r.end)))
            .send()
            .await
        {
            Ok(out) => out,
            Err(SdkError::ServiceError(se)) if se.raw().status().as_u16() == 416 => {
                return Err(range.map_or_else(|| self.err(SdkError::ServiceError(se)), outside));
            }
            Err(e) => return Err(self.err(e)),
        };
        // Stores clamp an end past the object (a shorter answer); the contract refuses it.
        if let Some(r) = range {
            if out.content_length().is_some_and(|n| n as u64 != r.length()) {
                return Err(outside(r));
            }
        }
        Ok(body_stream(out.body))
    }

    /// Turns the parts of an upload into valid multipart parts by the merge plan (see
    /// [`plan`]): direct parts stay; staged chunks are copied inside the store or streamed
    /// into parts of at least the minimum, a few at once. Returns the list to complete with.
    /// `Resend` when no plan exists; `NotFound` when the staging objects are gone (the upload
    /// completed before).
    pub async fn pack_parts(
        self: &Arc<Self>,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
    ) -> Result<Packed> {
        let chunks: Vec<plan::Chunk> = parts
            .iter()
            .map(|p| plan::Chunk {
                number: p.number,
                len: p.size,
                held: match p.etag.starts_with(STAGED) {
                    true => plan::Held::Staged,
                    false => plan::Held::Direct {
                        etag: p.etag.clone(),
                    },
                },
            })
            .collect();
        let min = self.settings.min_part_bytes;
        let mut planned = plan::plan(&chunks, min).map_err(|e| StorageError::Resend(e.resend))?;
        let mut left_behind = vec![];
        if let Some(first) = chunks.iter().find(|c| c.held == plan::Held::Staged) {
            self.probe_staging(bucket, upload_id, first.number).await?;
        }
        // Parts sent directly before their chunk came again as a staging object are still in
        // the upload: strict stores (Ceph's RGW) complete only from all of them, so they are
        // overwritten when the sizes allow. Otherwise the plan stays (AWS and others take it).
        if planned
            .iter()
            .any(|p| matches!(p.source, plan::Source::Upload { .. }))
        {
            match self.held_parts(bucket, key, upload_id).await {
                Ok(held) => match plan::cover(planned.clone(), &held, min) {
                    Some(covered) => planned = covered,
                    None => {
                        left_behind = held
                            .into_iter()
                            .filter(|n| !planned.iter().any(|p| p.number == *n))
                            .collect()
                    }
                },
                // Completed before (a retried merge): the caller looks for the object.
                Err(e @ (StorageError::NoSuchUpload | StorageError::NotFound)) => return Err(e),
                // Credentials without ListParts (s3:ListMultipartUploadParts): the plan as it
                // is, which stores other than RGW complete.
                Err(e) => {
                    tracing::warn!(bucket, error = %e, "cannot list the parts of an upload; completing without checking for parts left behind");
                }
            }
        }
        let jobs = planned.into_iter().map(|p| {
            let kept = parts
                .iter()
                .find(|c| c.number == p.number)
                .and_then(|c| c.checksum.clone());
            self.make_part(bucket, key, upload_id, p, kept)
        });
        let parts = futures::stream::iter(jobs)
            .buffered(self.settings.upload_concurrency.max(1))
            .try_collect()
            .await?;
        Ok(Packed { parts, left_behind })
    }

    /// The part numbers the store holds for an upload (`ListParts`).
    async fn held_parts(&self, bucket: &str, key: &str, upload_id: &str) -> Result<Vec<u32>> {
        let mut numbers = vec![];
        let mut marker = None;
        loop {
            let page = self
                .client
                .list_parts()
                .bucket(bucket)
                .key(key)
                .upload_id(upload_id)
                .set_part_number_marker(marker)
                .send()
                .await
                .map_err(|e| self.err(e))?;
            numbers.extend(
                page.parts()
                    .iter()
                    .filter_map(|p| p.part_number())
                    .map(|n| n as u32),
            );
            match page.next_part_number_marker() {
                Some(m) if page.is_truncated() == Some(true) => marker = Some(m.to_string()),
                _ => return Ok(numbers),
            }
        }
    }

    /// Staging objects are gone once an upload completed (a retried merge): `NotFound` then.
    async fn probe_staging(&self, bucket: &str, upload_id: &str, number: u32) -> Result<()> {
        let probe = self.k(&staging_key(upload_id, number));
        match self
            .client
            .head_object()
            .bucket(bucket)
            .key(&probe)
            .send()
            .await
        {
            Err(SdkError::ServiceError(se))
                if se.err().is_not_found() || se.raw().status().as_u16() == 404 =>
            {
                Err(StorageError::NotFound)
            }
            _ => Ok(()),
        }
    }

    /// Makes one planned part (`key` is the store key).
    async fn make_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part: plan::Part,
        kept_checksum: Option<String>,
    ) -> Result<S3Part> {
        let c = self.settings.checksum;
        let (etag, checksum) = match part.source {
            plan::Source::Keep { etag } => (etag, kept_checksum),
            plan::Source::Copy => {
                let source = copy_source(bucket, &self.k(&staging_key(upload_id, part.number)));
                let out = self
                    .client
                    .upload_part_copy()
                    .copy_source(source)
                    .bucket(bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .part_number(part.number as i32)
                    .customize()
                    .mutate_request(empty_body_length)
                    .send()
                    .await
                    .map_err(|e| self.err(e))?;
                let result = out.copy_part_result();
                let etag = result
                    .and_then(|r| r.e_tag())
                    .map(str::to_string)
                    .ok_or_else(|| std::io::Error::other("store returned no ETag"))?;
                let checksum =
                    result.and_then(|r| c.pick(r.checksum_crc32_c(), r.checksum_sha256()));
                (etag, checksum)
            }
            plan::Source::Upload { chunks } => {
                self.upload_staged(bucket, key, upload_id, part.number, &chunks, None, part.len)
                    .await?
            }
            plan::Source::Slice { chunks, skip } => {
                self.upload_staged(
                    bucket,
                    key,
                    upload_id,
                    part.number,
                    &chunks,
                    Some(skip),
                    part.len,
                )
                .await?
            }
        };
        Ok(c.part(part.number, Some(etag), checksum))
    }

    /// Streams staged chunks, in order, through a spool file (memory stays bounded, and the
    /// SDK can retry from the file) into part `number`: all their `len` bytes, or with `slice`
    /// `len` bytes from that many in; returns its ETag.
    #[allow(clippy::too_many_arguments)]
    async fn upload_staged(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        number: u32,
        chunks: &[u32],
        slice: Option<u64>,
        len: u64,
    ) -> Result<(String, Option<String>)> {
        let (file, path) = tempfile::Builder::new()
            .prefix(".s3-part-")
            .tempfile_in(&self.settings.spool_dir)?
            .into_parts();
        let mut file = tokio::fs::File::from_std(file);
        let (mut skip, mut seen, mut written) = (slice.unwrap_or(0), 0u64, 0u64);
        for &n in chunks {
            let mut body = self
                .get_stream(bucket, &self.k(&staging_key(upload_id, n)), None)
                .await?;
            while let Some(b) = body.next().await {
                let b = b?;
                seen += b.len() as u64;
                let dropped = skip.min(b.len() as u64);
                skip -= dropped;
                let b = &b[dropped as usize..];
                let kept = (len - written).min(b.len() as u64) as usize;
                file.write_all(&b[..kept]).await?;
                written += kept as u64;
            }
        }
        file.flush().await?;
        drop(file);
        if written != len || (slice.is_none() && seen != len) {
            return Err(StorageError::Io(std::io::Error::other(format!(
                "staged chunks {chunks:?} hold {seen} bytes, too few or many for {len}"
            ))));
        }
        let body = S3Body::from_path(&path)
            .await
            .map_err(|e| StorageError::Io(std::io::Error::other(e.to_string())))?;
        let c = self.settings.checksum;
        let checksum = c.of_file(&path).await?;
        let (crc, sha) = c.fields(checksum.clone());
        let out = self
            .client
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number as i32)
            .set_checksum_crc32_c(crc)
            .set_checksum_sha256(sha)
            .content_length(len as i64)
            .body(body)
            .send()
            .await
            .map_err(|e| self.err(e))?;
        let etag = out
            .e_tag()
            .map(str::to_string)
            .ok_or_else(|| StorageError::Io(std::io::Error::other("store returned no ETag")))?;
        Ok((etag, checksum))
    }
}

/// `Content-Length: 0` on a request without a body. The SDK sends none on `UploadPartCopy`,
/// and Ceph's RADOS Gateway refuses such a PUT (411 MissingContentLength).
fn empty_body_length(req: &mut aws_sdk_s3::config::http::HttpRequest) {
    req.headers_mut().insert("content-length", "0");
}

/// The `x-amz-copy-source` of an object: bucket and key, the key URL-encoded ('/' kept).
fn copy_source(bucket: &str, key: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    const KEEP: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'/')
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    format!("{bucket}/{}", utf8_percent_encode(key, KEEP))
}

impl S3Store {
    /// Adds (or refreshes) this deployment's lifecycle rules, keeping every other rule.
    async fn ensure_lifecycle(&self, bucket: &str) -> Result<()> {
        let c = &self.client;
        let tag = format!(
            "file-system-{:08x}",
            crc32fast::hash(self.settings.key_prefix.as_bytes())
        );
        let mut rules: Vec<LifecycleRule> = match c
            .get_bucket_lifecycle_configuration()
            .bucket(bucket)
            .send()
            .await
        {
            Ok(out) => out.rules().to_vec(),
            Err(SdkError::ServiceError(se))
                if se.err().code() == Some("NoSuchLifecycleConfiguration") =>
            {
                vec![]
            }
            Err(e) => return Err(self.err(e)),
        };
        rules.retain(|r| !r.id().is_some_and(|id| id.starts_with(&tag)));
        let built = [
            LifecycleRule::builder()
                .id(format!("{tag}-abort-incomplete-uploads"))
                .status(ExpirationStatus::Enabled)
                .filter(LifecycleRuleFilter::builder().prefix(self.k("")).build())
                .abort_incomplete_multipart_upload(
                    AbortIncompleteMultipartUpload::builder()
                        .days_after_initiation(2)
                        .build(),
                )
                .build(),
            LifecycleRule::builder()
                .id(format!("{tag}-expire-staging"))
                .status(ExpirationStatus::Enabled)
                .filter(
                    LifecycleRuleFilter::builder()
                        .prefix(self.k("staging/"))
                        .build(),
                )
                .expiration(LifecycleExpiration::builder().days(3).build())
                .build(),
        ];
        for r in built {
            rules.push(r.map_err(|e| StorageError::Io(std::io::Error::other(e.to_string())))?);
        }
        let cfg = BucketLifecycleConfiguration::builder()
            .set_rules(Some(rules))
            .build()
            .map_err(|e| StorageError::Io(std::io::Error::other(e.to_string())))?;
        c.put_bucket_lifecycle_configuration()
            .bucket(bucket)
            .lifecycle_configuration(cfg)
            .send()
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}

/// Cuts a body into parts of an exact size, each in one buffer allocated once (growing
/// buffers would leave the allocator holding twice the memory).
#[derive(Default)]
pub struct Filler {
    /// A whole part read before, handed out first.
    ready: Option<BytesMut>,
    /// What was read past the end of the previous part.
    carry: Option<Bytes>,
}

impl Filler {
    /// The next part (up to `target` bytes) and whether the body ended.
    async fn fill(
        &mut self,
        body: &mut ByteStream,
        target: usize,
    ) -> std::io::Result<(BytesMut, bool)> {
        if let Some(part) = self.ready.take() {
            return Ok((part, false));
        }
        let mut part = BytesMut::with_capacity(target);
        while part.len() < target {
            let chunk = match self.carry.take() {
                Some(c) => c,
                None => match body.next().await {
                    Some(c) => c?,
                    None => return Ok((part, true)),
                },
            };
            let room = target - part.len();
            if chunk.len() > room {
                part.extend_from_slice(&chunk[..room]);
                self.carry = Some(chunk.slice(room..));
            } else {
                part.extend_from_slice(&chunk);
            }
        }
        Ok((part, false))
    }
}

/// What an upload completes with: its parts, and the part numbers the store holds that no
/// valid part list could overwrite (a store that completes only from every part it holds
/// refuses the completion then).
pub struct Packed {
    pub parts: Vec<S3Part>,
    pub left_behind: Vec<u32>,
}

/// The error for a range that does not lie inside the object (HTTP 416 from the store, or a
/// store that clamped the end): the same `InvalidPart` the local store gives.
fn outside(r: ByteRange) -> StorageError {
    StorageError::InvalidPart(format!(
        "bytes {}-{} are outside the object",
        r.start, r.end
    ))
}

/// An SDK body as a stream of byte chunks.
fn body_stream(body: S3Body) -> ByteStream {
    futures::stream::unfold(body, |mut b| async move {
        b.next()
            .await
            .map(|r| (r.map_err(std::io::Error::other), b))
    })
    .boxed()
}

/// The later windows of one download: ranged GETs of the object the first window came from
/// (`If-Match` its ETag).
#[derive(Clone)]
struct Windows {
    client: Client,
    endpoint: Option<String>,
    bucket: String,
    key: String,
    etag: Option<String>,
}

impl readahead::Fetch for Windows {
    async fn fetch(&self, start: u64, end: u64) -> Result<ByteStream> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .range(format!("bytes={start}-{end}"))
            .set_if_match(self.etag.clone())
            .send()
            .await;
        match out {
            Ok(out) => Ok(body_stream(out.body)),
            Err(SdkError::ServiceError(se)) if se.raw().status().as_u16() == 412 => {
                Err(readahead::changed())
            }
            Err(e) => Err(s3_err_at(self.endpoint.as_deref(), e)),
        }
    }
}

/// The store is used through `Arc` so parts can upload on tasks of their own.
#[derive(Clone)]
pub struct SharedS3(pub Arc<S3Store>);

#[async_trait]
impl ObjectStore for SharedS3 {
    async fn ensure_bucket(&self, bucket: &str) -> Result<()> {
        let c = &self.0.client;
        match c.head_bucket().bucket(bucket).send().await {
            Ok(_) => {}
            Err(SdkError::ServiceError(se))
                if se.err().is_not_found() || se.raw().status().as_u16() == 404 =>
            {
                let mut req = c.create_bucket().bucket(bucket);
                let region = c
                    .config()
                    .region()
                    .map(|r| r.to_string())
                    .unwrap_or_default();
                if self.0.settings.endpoint.is_none() && region != "us-east-1" && !region.is_empty()
                {
                    req = req.create_bucket_configuration(
                        CreateBucketConfiguration::builder()
                            .location_constraint(BucketLocationConstraint::from(region.as_str()))
                            .build(),
                    );
                }
                match req.send().await.map_err(|e| self.0.err(e)) {
                    Ok(_) => tracing::info!(bucket, "bucket created"),
                    // Another replica (or test) created it at the same moment.
                    Err(StorageError::Io(e)) if e.to_string().contains("BucketAlready") => {}
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(self.0.err(e)),
        }
        // Backup for the sweeper: stores that support it drop stale uploads and staging objects.
        if let Err(e) = self.0.ensure_lifecycle(bucket).await {
            tracing::info!(bucket, error = %e, "lifecycle rules not set; the sweeper alone expires abandoned uploads");
        }
        Ok(())
    }

    async fn put(
        &self,
        bucket: &str,
        key: &str,
        mut body: ByteStream,
        opts: &PutOptions,
    ) -> Result<u64> {
        let key = &self.0.k(key);
        let s = &self.0;
        let first_size = part_size(s.settings.part_bytes, 1) as usize;
        let mut filler = Filler::default();
        let (first, ended) = filler
            .fill(&mut body, first_size)
            .await
            .map_err(StorageError::Body)?;
        let total = first.len() as u64;
        if ended {
            s.put_small(bucket, key, first.freeze(), opts).await?;
            return Ok(total);
        }
        let upload_id = s.create_upload(bucket, key, opts).await?;
        // Aborted on failure, and also when this future is dropped mid-body (the client went
        // away): no multipart upload is left behind either way.
        let abort = {
            let (client, bucket, key, id) = (
                s.client.clone(),
                bucket.to_string(),
                key.to_string(),
                upload_id.clone(),
            );
            Cleanup::new(async move {
                let aborted = client
                    .abort_multipart_upload()
                    .bucket(&bucket)
                    .key(&key)
                    .upload_id(&id)
                    .send()
                    .await;
                if let Err(e) = aborted {
                    tracing::warn!(bucket, error = %s3_err(e), "could not abort an unfinished upload");
                }
            })
        };
        filler.ready = Some(first);
        let result = async {
            let (parts, size) = s
                .stream_parts(bucket, key, &upload_id, 1, filler, body)
                .await?;
            s.complete(bucket, key, &upload_id, parts)
                .await
                .map(|()| size)
        }
        .await;
        match result {
            Ok(_) => abort.disarm(),
            Err(_) => abort.run().await,
        }
        result
    }

    async fn create_multipart(&self, bucket: &str, key: &str, opts: &PutOptions) -> Result<String> {
        self.0.create_upload(bucket, &self.0.k(key), opts).await
    }

    async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        number: u32,
        body: SpooledPart,
        direct: bool,
    ) -> Result<UploadedPart> {
        let key = &self.0.k(key);
        let s = &self.0;
        let c = s.settings.checksum;
        let checksum = c.of_file(&body.file).await?;
        let (crc, sha) = c.fields(checksum.clone());
        let file_body = S3Body::from_path(&body.file)
            .await
            .map_err(|e| StorageError::Io(std::io::Error::other(e.to_string())))?;
        if direct && body.len >= s.settings.min_part_bytes {
            let out = s
                .client
                .upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number as i32)
                .set_checksum_crc32_c(crc)
                .set_checksum_sha256(sha)
                .content_length(body.len as i64)
                .body(file_body)
                .send()
                .await
                .map_err(|e| self.0.err(e))?;
            // Drop a staging copy an earlier, smaller version of this chunk left.
            let _ = s
                .client
                .delete_object()
                .bucket(bucket)
                .key(self.0.k(&staging_key(upload_id, number)))
                .send()
                .await;
            let etag = out
                .e_tag()
                .map(str::to_string)
                .ok_or_else(|| StorageError::Io(std::io::Error::other("store returned no ETag")))?;
            return Ok(UploadedPart { etag, checksum });
        }
        let out = s
            .client
            .put_object()
            .bucket(bucket)
            .key(self.0.k(&staging_key(upload_id, number)))
            .set_checksum_crc32_c(crc)
            .set_checksum_sha256(sha)
            .content_length(body.len as i64)
            .body(file_body)
            .send()
            .await
            .map_err(|e| self.0.err(e))?;
        // Packed into a part at completion, which gets its own checksum then.
        Ok(UploadedPart {
            etag: format!("{STAGED}{}", out.e_tag().unwrap_or("")),
            checksum: None,
        })
    }

    async fn complete_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
    ) -> Result<()> {
        let logical = key;
        let key = &self.0.k(key);
        let s = &self.0;
        if parts.is_empty() || parts.windows(2).any(|w| w[0].number >= w[1].number) {
            return Err(StorageError::InvalidPart(
                "parts must be ascending and non-empty".into(),
            ));
        }
        let packed = match s.pack_parts(bucket, key, upload_id, parts).await {
            Err(StorageError::NoSuchUpload) | Err(StorageError::NotFound) => {
                // Completed before (a retried merge): the object is the proof.
                // Its staging objects go now if the first completion died before removing them.
                return match self.head(bucket, logical).await? {
                    Some(_) => s.delete_staging(bucket, upload_id).await,
                    None => Err(StorageError::NoSuchUpload),
                };
            }
            other => other?,
        };
        let Packed { parts, left_behind } = packed;
        let completed = match s.complete(bucket, key, upload_id, parts).await {
            // Ceph's RGW (16.x) answers the completion of an upload id it does not know with
            // 500 "multipart completion is already in progress"; ListParts tells the truth
            // (RGW's answer to that is NoSuchKey).
            Err(StorageError::Unavailable(msg))
                if matches!(
                    s.held_parts(bucket, key, upload_id).await,
                    Err(StorageError::NoSuchUpload | StorageError::NotFound)
                ) =>
            {
                tracing::debug!(bucket, %msg, "completion refused: the upload is gone");
                Err(StorageError::NoSuchUpload)
            }
            other => other,
        };
        match completed {
            Err(StorageError::NoSuchUpload) if self.head(bucket, logical).await?.is_some() => {}
            // A strict store that completes only from every part it holds.
            Err(StorageError::InvalidPart(msg)) if !left_behind.is_empty() => {
                tracing::info!(bucket, %msg, parts = ?left_behind, "completion refused: parts left behind");
                let numbers: Vec<String> = left_behind.iter().map(u32::to_string).collect();
                let (what, were) = match numbers.len() {
                    1 => ("chunk", "was"),
                    _ => ("chunks", "were"),
                };
                return Err(StorageError::InvalidPart(format!(
                    "{what} {} {were} sent again smaller than before, and this store keeps the \
                     earlier parts and completes only with all of them: cancel the upload and \
                     send it again",
                    numbers.join(", ")
                )));
            }
            other => other?,
        }
        s.delete_staging(bucket, upload_id).await
    }

    async fn abort_multipart(&self, bucket: &str, key: &str, upload_id: &str) -> Result<()> {
        let key = &self.0.k(key);
        let s = &self.0;
        match s
            .client
            .abort_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
            .map_err(|e| self.0.err(e))
        {
            Ok(_) | Err(StorageError::NoSuchUpload) | Err(StorageError::NotFound) => {}
            Err(e) => return Err(e),
        }
        s.delete_staging(bucket, upload_id).await
    }

    async fn get(&self, bucket: &str, key: &str, range: Option<ByteRange>) -> Result<ByteStream> {
        let key = &self.0.k(key);
        self.0.get_stream(bucket, key, range).await
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<Option<u64>> {
        let key = &self.0.k(key);
        match self
            .0
            .client
            .head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
        {
            Ok(o) => Ok(Some(o.content_length().unwrap_or(0) as u64)),
            Err(SdkError::ServiceError(se))
                if se.err().is_not_found() || se.raw().status().as_u16() == 404 =>
            {
                Ok(None)
            }
            Err(e) => Err(self.0.err(e)),
        }
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<()> {
        let key = &self.0.k(key);
        match self
            .0
            .client
            .delete_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.0.err(e))
        {
            Ok(_) | Err(StorageError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn copy(
        &self,
        src_bucket: &str,
        src_key: &str,
        dst_bucket: &str,
        dst_key: &str,
        opts: &PutOptions,
    ) -> Result<()> {
        let logical_src = src_key;
        let (src_key, dst_key) = (&self.0.k(src_key), &self.0.k(dst_key));
        let s = &self.0;
        let size = self
            .head(src_bucket, logical_src)
            .await?
            .ok_or(StorageError::NotFound)?;
        let source = format!("{src_bucket}/{src_key}");
        if size <= COPY_PART * 5 {
            s.client
                .copy_object()
                .copy_source(&source)
                .bucket(dst_bucket)
                .key(dst_key)
                .set_storage_class(class(opts))
                .send()
                .await
                .map_err(|e| self.0.class_err(e, opts))?;
            return Ok(());
        }
        let upload_id = s.create_upload(dst_bucket, dst_key, opts).await?;
        let result = async {
            let mut parts = vec![];
            let mut off = 0u64;
            let mut n = 1;
            while off < size {
                let end = (off + COPY_PART).min(size) - 1;
                let out = s
                    .client
                    .upload_part_copy()
                    .copy_source(&source)
                    .copy_source_range(format!("bytes={off}-{end}"))
                    .bucket(dst_bucket)
                    .key(dst_key)
                    .upload_id(&upload_id)
                    .part_number(n)
                    .customize()
                    .mutate_request(empty_body_length)
                    .send()
                    .await
                    .map_err(|e| self.0.err(e))?;
                let result = out.copy_part_result();
                let etag = result.and_then(|r| r.e_tag()).map(str::to_string);
                let c = s.settings.checksum;
                let checksum =
                    result.and_then(|r| c.pick(r.checksum_crc32_c(), r.checksum_sha256()));
                parts.push(c.part(n as u32, etag, checksum));
                off = end + 1;
                n += 1;
            }
            s.complete(dst_bucket, dst_key, &upload_id, parts).await
        }
        .await;
        if result.is_err() {
            let _ = s
                .client
                .abort_multipart_upload()
                .bucket(dst_bucket)
                .key(dst_key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }

    async fn ping(&self, bucket: &str) -> Result<()> {
        self.0
            .client
            .head_bucket()
            .bucket(bucket)
            .send()
            .await
            .map_err(|e| self.0.err(e))?;
        Ok(())
    }

    fn min_part_size(&self) -> u64 {
        self.0.settings.min_part_bytes
    }
}
