//! The store's SDK client, its settings, and the bucket it works in.

use super::{error::s3_err_at, readahead, S3Checksum, S3Store};
use crate::storage::{PutOptions, Result, StorageError};
use aws_sdk_s3::{
    config::http::HttpResponse,
    error::{ProvideErrorMetadata, SdkError},
    types::{BucketLocationConstraint, CreateBucketConfiguration},
    Client,
};
use std::{path::PathBuf, sync::Arc, time::Duration};

/// The longest a call without image bytes may take, retries included ([`S3Store::quick`]).
pub const QUICK_CALL: Duration = Duration::from_secs(20);

/// The slowest link to the store a call's bytes are given time for (bytes per second):
/// see [`S3Store::sized`].
pub const SEND_RATE: u64 = 1 << 20;

/// The slowest a store copies or joins bytes inside itself that a call is given time for
/// (bytes per second): see [`S3Store::sized`].
pub const COPY_RATE: u64 = 16 << 20;

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

impl S3Store {
    /// A store with the SDK's standard retries (5 attempts) and timeouts (connect 5 s, read
    /// 120 s), which every call narrows to its kind: [`Self::quick`] for calls without image
    /// bytes, [`Self::sized`] for the others. Nothing is sent to the store yet.
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
            settings: Arc::new(settings),
        })
    }

    /// The timeouts of calls that send no image bytes (bucket checks, listings, lifecycle
    /// rules, HEAD, DELETE, creating and aborting uploads, and GETs up to their first byte:
    /// the body streams after, unbounded), as a per-call override. A store that does not answer
    /// such a call in seconds is not going to: start-up, readiness and downloads report it
    /// after at most [`QUICK_CALL`], not after the patience that uploads of parts and copies
    /// need (5 attempts of up to 120 s each to the first byte of the answer).
    pub(super) fn quick() -> aws_sdk_s3::config::Builder {
        use aws_config::timeout::TimeoutConfig;
        aws_sdk_s3::config::Builder::default().timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .read_timeout(Duration::from_secs(10))
                .operation_timeout(QUICK_CALL)
                .build(),
        )
    }

    /// The timeouts of a call that sends `len` bytes (PutObject, UploadPart), or makes the
    /// store copy or join that many (UploadPartCopy, CopyObject, CompleteMultipartUpload), at
    /// `rate` bytes per second ([`SEND_RATE`], [`COPY_RATE`]), as a per-call override: the
    /// answer's first byte is awaited 30 s plus the time the bytes take at that rate, the
    /// call with its retries twice as long. A store that stopped answering fails a part of a
    /// few MiB in about a minute, not after 5 attempts of 120 s each, while a slow link or a
    /// large part still gets the time it needs.
    pub(super) fn sized(len: u64, rate: u64) -> aws_sdk_s3::config::Builder {
        use aws_config::timeout::TimeoutConfig;
        let first_byte = Duration::from_secs(30 + len / rate.max(1));
        aws_sdk_s3::config::Builder::default().timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .read_timeout(first_byte)
                .operation_timeout(first_byte * 2)
                .build(),
        )
    }

    /// Where the store is, for messages.
    pub(super) fn endpoint(&self) -> &str {
        self.settings
            .endpoint
            .as_deref()
            .unwrap_or("the AWS default endpoint")
    }

    /// `s3_err`, naming this store's endpoint when it cannot be reached.
    pub(super) fn err<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
        &self,
        e: SdkError<E, HttpResponse>,
    ) -> StorageError {
        s3_err_at(Some(self.endpoint()), e)
    }

    /// `err` of a write with `opts`, saying so when the store refused the storage class a tier
    /// names (AWS: InvalidStorageClass; Ceph's RGW: InvalidArgument for a class its zone
    /// placement does not list).
    pub(super) fn class_err<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
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

    /// The store key of a service key (`domain::ids::ObjectKey`, or a staging key): the key
    /// under this deployment's `key_prefix`. The only maker of a [`StoreKey`].
    pub fn store_key(&self, key: &str) -> StoreKey {
        StoreKey(format!("{}{key}", self.settings.key_prefix))
    }

    /// Creates `bucket` when it does not exist (in the client's region on AWS), then sets this
    /// deployment's lifecycle rules where the store supports them.
    pub(super) async fn create_bucket(&self, bucket: &str) -> Result<()> {
        let c = &self.client;
        let head = c.head_bucket().bucket(bucket).customize();
        match head.config_override(Self::quick()).send().await {
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
                if self.settings.endpoint.is_none() && region != "us-east-1" && !region.is_empty() {
                    req = req.create_bucket_configuration(
                        CreateBucketConfiguration::builder()
                            .location_constraint(BucketLocationConstraint::from(region.as_str()))
                            .build(),
                    );
                }
                let created = req.customize().config_override(Self::quick()).send().await;
                match created.map_err(|e| self.err(e)) {
                    Ok(_) => tracing::info!(bucket, "bucket created"),
                    // Another replica (or test) created it at the same moment.
                    Err(StorageError::Io(e)) if e.to_string().contains("BucketAlready") => {}
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(self.err(e)),
        }
        self.lists(bucket).await?;
        // Backup for the sweeper: stores that support it drop stale uploads and staging objects.
        if let Err(e) = self.ensure_lifecycle(bucket).await {
            tracing::info!(bucket, error = %e, "lifecycle rules not set; the sweeper alone expires abandoned uploads");
        }
        Ok(())
    }

    /// The ETag an S3 write answered with, which every S3 API sends: without one the bytes
    /// cannot be said to be stored (an endpoint that is not an S3 API, such as a web console
    /// answering 200 to everything, kept nothing). `what` names the request.
    pub(super) fn stored_etag(&self, etag: Option<&str>, what: &str) -> Result<String> {
        etag.filter(|e| !e.is_empty())
            .map(str::to_string)
            .ok_or_else(|| {
                StorageError::Io(std::io::Error::other(format!(
                    "the store at {} answered {what} without an ETag: is FS_S3_ENDPOINT an S3 API \
                 endpoint?",
                    self.endpoint()
                )))
            })
    }

    /// Whether the bucket answers (`HeadBucket`) as an S3 API does ([`Self::lists`]), for
    /// readiness and `check-config`.
    pub(super) async fn ping_bucket(&self, bucket: &str) -> Result<()> {
        self.client
            .head_bucket()
            .bucket(bucket)
            .customize()
            .config_override(Self::quick())
            .send()
            .await
            .map_err(|e| self.err(e))?;
        self.lists(bucket).await
    }

    /// Lists one key under this deployment's prefix: an S3 API answers in its XML, which the
    /// SDK reads; a web page answering 200 to everything (a store's console port) does not,
    /// and would keep nothing it is sent.
    async fn lists(&self, bucket: &str) -> Result<()> {
        self.client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(self.store_key(""))
            .max_keys(1)
            .customize()
            .config_override(Self::quick())
            .send()
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}

/// A key as the store holds it: a service key under this deployment's `key_prefix`
/// (`FS_S3_KEY_PREFIX`). Made only by [`S3Store::k`], and the only key type the requests in
/// this module take, so a key without its prefix (or with it twice) cannot reach the store.
/// Goes into the SDK's `key` and `prefix` setters as is (`Into<String>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreKey(String);

impl StoreKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&StoreKey> for String {
    fn from(key: &StoreKey) -> String {
        key.0.clone()
    }
}

impl From<StoreKey> for String {
    fn from(key: StoreKey) -> String {
        key.0
    }
}
