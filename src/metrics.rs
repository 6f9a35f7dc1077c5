//! Prometheus metrics (`GET /metrics`, OpenMetrics text format, see [`CONTENT_TYPE`]).
//!
//! Request, byte, store, upload and job counters are this replica's; the open-session and job
//! gauges are read from the database at scrape time, so they describe the whole deployment and
//! every replica reports the same values (aggregate them with `max`, not `sum`). The process
//! metrics (`process_*`) and scratch bytes are read at scrape time too. Every metric is listed
//! in the README's metrics section.

use entity::status::{CheckStatus, CompressStatus, JobKind, JobState};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::{Family, MetricConstructor},
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
        info::Info,
    },
    registry::{Metric, Registry},
};
use sea_orm::Iterable;
use std::time::Duration;

/// The content type of [`Metrics::encode`]'s output: prometheus-client writes OpenMetrics text
/// (ending with `# EOF`), which Prometheus reads when it is announced as such.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    /// The route's pattern (`/image-management/v1/images/{image_id}`), never the raw path.
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub kind: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobStateLabels {
    pub kind: String,
    pub state: String,
}

/// One object-store call: which trait method, and how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    /// `put`, `create_multipart`, `upload_part`, `complete_multipart`, `abort_multipart`,
    /// `get`, `head`, `delete`, `copy`, `ensure_bucket`, `ping`, `sweep_stale_temp`,
    /// `stale_uploads`.
    pub operation: String,
    /// `ok`, `not_found` (missing object or upload) or `error`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadLabels {
    pub via: String,
}

/// How a check or slim had qemu-img read a stored image (`fs_image_reads_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageRead {
    /// The store's own file, in place (the local store).
    File,
    /// A read-only NBD export of the object, read in place with ranged reads (S3).
    Nbd,
    /// A scratch copy of the object (a sidecar imageops, which sees only the shared directory).
    Copy,
}

impl ImageRead {
    pub const ALL: [ImageRead; 3] = [ImageRead::File, ImageRead::Nbd, ImageRead::Copy];

    pub fn label(self) -> &'static str {
        match self {
            ImageRead::File => "file",
            ImageRead::Nbd => "nbd",
            ImageRead::Copy => "copy",
        }
    }
}

/// How a merge request or a merge run ended (`fs_upload_merges_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergeOutcome {
    /// The merge ran and created the image.
    Completed,
    /// Refused before it started: chunks are missing (400, chunks kept).
    MissingChunks,
    /// The merge ran and failed (its session reopened, or dropped when unusable).
    Failed,
}

impl MergeOutcome {
    const ALL: [MergeOutcome; 3] = [Self::Completed, Self::MissingChunks, Self::Failed];

    fn label(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::MissingChunks => "missing_chunks",
            Self::Failed => "failed",
        }
    }
}

/// `checkStatusResponse.status` values (SPEC section 3) as label values of
/// `fs_image_checks_total`, each named after its meaning.
/// A check that ended (`InProgress` is not an outcome).
fn check_label(status: CheckStatus) -> Option<&'static str> {
    Some(match status {
        CheckStatus::Consistent => "consistent",
        CheckStatus::Corrupted => "corrupted",
        CheckStatus::LeakedClusters => "leaked_clusters",
        CheckStatus::Failed => "failed",
        CheckStatus::NotCheckedType => "not_checked_type",
        CheckStatus::TimedOut => "timed_out",
        CheckStatus::InProgress => return None,
    })
}

/// How a slim job ended, as label values of `fs_image_slims_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlimOutcome {
    /// `slimStatus` 2: the slimmed copy checked consistent and is served.
    Slimmed,
    /// `compressStatus` 2: the conversion failed, or its result did not check consistent.
    Failed,
    /// `compressStatus` 3: not enough scratch space.
    NoSpace,
    /// `compressStatus` 4: the conversion timed out.
    TimedOut,
    /// `slimStatus` 3 for an image type that cannot be slimmed (check status 5).
    Unsupported,
    /// `slimStatus` 3 because the image's check refused it or found it damaged.
    Refused,
}

impl SlimOutcome {
    const ALL: [SlimOutcome; 6] = [
        Self::Slimmed,
        Self::Failed,
        Self::NoSpace,
        Self::TimedOut,
        Self::Unsupported,
        Self::Refused,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Slimmed => "slimmed",
            Self::Failed => "failed",
            Self::NoSpace => "no_space",
            Self::TimedOut => "timed_out",
            Self::Unsupported => "unsupported",
            Self::Refused => "refused",
        }
    }

    /// The outcome a failed compression with `compressStatus` `status` stands for.
    pub fn from_compress_status(status: CompressStatus) -> Self {
        match status {
            CompressStatus::NoSpace => Self::NoSpace,
            CompressStatus::TimedOut => Self::TimedOut,
            _ => Self::Failed,
        }
    }
}

/// Registers `metric` under `name` with its `help` text; returns it (a handle on the same
/// values).
fn registered<M: Metric + Clone>(r: &mut Registry, name: &str, help: &str, metric: M) -> M {
    r.register(name, help, metric.clone());
    metric
}

/// Every label value of a small, fixed set created at once, so the series never appear out of
/// nothing (rate() needs their first sample).
fn prime<L, M>(family: &Family<L, M>, labels: impl IntoIterator<Item = L>)
where
    L: Clone + std::hash::Hash + Eq,
    M: Default,
{
    for l in labels {
        let _ = family.get_or_create(&l);
    }
}

type HttpMetrics = (
    Family<RequestLabels, Counter>,
    Family<RequestLabels, Histogram, Buckets>,
    Counter,
    Counter,
);

/// Requests by method, route and status; their durations; body bytes in and out.
fn http_metrics(r: &mut Registry) -> HttpMetrics {
    (
        registered(
            r,
            "http_requests",
            "HTTP requests answered, by method, route and status",
            Family::default(),
        ),
        // 1 ms .. ~4.6 h: from a query to a multi-GiB transfer.
        registered(
            r,
            "http_request_duration_seconds",
            "Time from a request's arrival until its response body was sent (or dropped)",
            Family::new_with_constructor(Buckets {
                start: 0.001,
                count: 12,
            }),
        ),
        registered(
            r,
            "http_received_bytes",
            "Request body bytes received",
            Counter::default(),
        ),
        registered(
            r,
            "http_sent_bytes",
            "Response body bytes sent",
            Counter::default(),
        ),
    )
}

/// Object-store calls and their durations, by operation and outcome.
fn store_metrics(
    r: &mut Registry,
) -> (
    Family<StoreLabels, Counter>,
    Family<StoreLabels, Histogram, Buckets>,
) {
    (
        registered(
            r,
            "store_operations",
            "Object-store calls, by operation and outcome",
            Family::default(),
        ),
        // 1 ms .. ~4.6 h: a HEAD to the put of a whole image.
        registered(
            r,
            "store_operation_duration_seconds",
            "Time an object-store call took, by operation and outcome (for get: until the \
             object's stream was open)",
            Family::new_with_constructor(Buckets {
                start: 0.001,
                count: 12,
            }),
        ),
    )
}

type JobMetrics = (
    Family<JobStateLabels, Gauge>,
    Family<JobLabels, Histogram, Buckets>,
    Family<StatusLabels, Counter>,
    Family<StatusLabels, Counter>,
    Family<ReadLabels, Counter>,
);

/// Jobs by kind and state, their run times, checks and slims by outcome, image reads by way.
fn job_metrics(r: &mut Registry) -> JobMetrics {
    let jobs = registered(
        r,
        "jobs",
        "Check and slim jobs by kind and state (all replicas)",
        Family::default(),
    );
    // 10 ms .. ~11.6 h.
    let job_seconds = registered(
        r,
        "job_duration_seconds",
        "Time a worker of this replica spent on a job run, by kind and outcome",
        Family::new_with_constructor(Buckets {
            start: 0.01,
            count: 12,
        }),
    );
    let checks = registered(
        r,
        "image_checks",
        "Image checks recorded, by check status",
        Family::default(),
    );
    let slims = registered(
        r,
        "image_slims",
        "Slim jobs ended, by outcome",
        Family::default(),
    );
    let image_reads = registered(
        r,
        "image_reads",
        "Stored images read by check and slim jobs, by how qemu-img read them (file: the \
         store's own file; nbd: an NBD export of the object; copy: a scratch copy)",
        Family::default(),
    );
    let status = |name: &str| StatusLabels {
        status: name.into(),
    };
    prime(
        &checks,
        CheckStatus::iter().filter_map(check_label).map(status),
    );
    prime(&slims, SlimOutcome::ALL.map(|o| status(o.label())));
    prime(
        &image_reads,
        ImageRead::ALL.map(|v| ReadLabels {
            via: v.label().into(),
        }),
    );
    (jobs, job_seconds, checks, slims, image_reads)
}

/// Open chunked uploads (all replicas) and this replica's upload lifecycle counters.
fn upload_metrics(r: &mut Registry) -> (Gauge, UploadCounters) {
    let open = registered(
        r,
        "upload_sessions_open",
        "Chunked uploads opened and not yet merged or cancelled (all replicas)",
        Gauge::default(),
    );
    let mut counter = |name: &str, help: &str| registered(r, name, help, Counter::default());
    let sessions_opened = counter(
        "upload_sessions_opened",
        "Chunked uploads opened (first chunk of an identifier)",
    );
    let chunks_received = counter(
        "upload_chunks_received",
        "Chunks stored as parts of a chunked upload",
    );
    let sessions_cancelled = counter(
        "upload_sessions_cancelled",
        "Chunked uploads cancelled by a client (DELETE /images/upload)",
    );
    let sessions_expired = counter(
        "upload_sessions_expired",
        "Abandoned chunked uploads expired by the sweeper",
    );
    let images_uploaded = counter(
        "image_uploads",
        "Single-request image uploads (POST /images) stored and recorded",
    );
    let merges = registered(
        r,
        "upload_merges",
        "Merges of chunked uploads, by outcome (completed, missing_chunks, failed)",
        Family::default(),
    );
    prime(
        &merges,
        MergeOutcome::ALL.map(|o| OutcomeLabels {
            outcome: o.label().into(),
        }),
    );
    let counters = UploadCounters {
        sessions_opened,
        chunks_received,
        merges,
        sessions_cancelled,
        sessions_expired,
        images_uploaded,
    };
    (open, counters)
}

/// Chunked-upload lifecycle counters (this replica's).
struct UploadCounters {
    sessions_opened: Counter,
    chunks_received: Counter,
    merges: Family<OutcomeLabels, Counter>,
    sessions_cancelled: Counter,
    sessions_expired: Counter,
    images_uploaded: Counter,
}

/// Histogram buckets in seconds, from `start` growing ×4 over `count` buckets.
#[derive(Clone)]
pub struct Buckets {
    start: f64,
    count: u16,
}

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(self.start, 4.0, self.count))
    }
}

/// Every metric the service exports.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Family<RequestLabels, Histogram, Buckets>,
    bytes_received: Counter,
    bytes_sent: Counter,
    upload_sessions: Gauge,
    jobs: Family<JobStateLabels, Gauge>,
    job_seconds: Family<JobLabels, Histogram, Buckets>,
    store_ops: Family<StoreLabels, Counter>,
    store_seconds: Family<StoreLabels, Histogram, Buckets>,
    uploads: UploadCounters,
    checks: Family<StatusLabels, Counter>,
    slims: Family<StatusLabels, Counter>,
    image_reads: Family<ReadLabels, Counter>,
    scratch_bytes: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric registered (names prefixed `fs_`, beside the process metrics), each label
    /// value of the small fixed sets present from the start.
    pub fn new() -> Self {
        let mut root = Registry::default();
        // The process metrics keep the names every Prometheus client library uses.
        #[cfg(target_os = "linux")]
        root.register_collector(Box::new(process::ProcessCollector));
        let r = root.sub_registry_with_prefix("fs");
        r.register(
            "build",
            "The version and git revision of this binary (value 1)",
            Info::new(vec![
                ("version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
                ("revision".to_string(), env!("FS_GIT_REVISION").to_string()),
            ]),
        );
        let (requests, request_seconds, bytes_received, bytes_sent) = http_metrics(r);
        let (store_ops, store_seconds) = store_metrics(r);
        let (jobs, job_seconds, checks, slims, image_reads) = job_metrics(r);
        let (upload_sessions, uploads) = upload_metrics(r);
        let scratch_bytes = registered(
            r,
            "scratch_bytes",
            "Bytes of disk the files in this replica's scratch directory take",
            Gauge::default(),
        );
        Metrics {
            registry: root,
            requests,
            request_seconds,
            bytes_received,
            bytes_sent,
            upload_sessions,
            jobs,
            job_seconds,
            store_ops,
            store_seconds,
            uploads,
            checks,
            slims,
            image_reads,
            scratch_bytes,
        }
    }

    /// Records one answered request, once its body has been sent (or dropped).
    pub fn request_done(&self, labels: RequestLabels, elapsed: Duration) {
        self.requests.get_or_create(&labels).inc();
        self.request_seconds
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// Counts `bytes` of request body received.
    pub fn received(&self, bytes: usize) {
        self.bytes_received.inc_by(bytes as u64);
    }

    /// Counts `bytes` of response body sent.
    pub fn sent(&self, bytes: usize) {
        self.bytes_sent.inc_by(bytes as u64);
    }

    /// Records one job run of `kind` that took `elapsed` and ended as `outcome`.
    pub fn job_done(&self, kind: JobKind, outcome: &str, elapsed: Duration) {
        self.job_seconds
            .get_or_create(&JobLabels {
                kind: kind.as_str().to_string(),
                outcome: outcome.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Records one object-store call.
    pub fn store_op(&self, operation: &str, outcome: &str, elapsed: Duration) {
        let labels = StoreLabels {
            operation: operation.to_string(),
            outcome: outcome.to_string(),
        };
        self.store_ops.get_or_create(&labels).inc();
        self.store_seconds
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// A chunked upload was opened.
    pub fn upload_session_opened(&self) {
        self.uploads.sessions_opened.inc();
    }

    /// A chunk was stored.
    pub fn upload_chunk_received(&self) {
        self.uploads.chunks_received.inc();
    }

    /// A merge ended as `outcome`.
    pub fn upload_merge(&self, outcome: MergeOutcome) {
        self.uploads
            .merges
            .get_or_create(&OutcomeLabels {
                outcome: outcome.label().into(),
            })
            .inc();
    }

    /// A client cancelled a chunked upload.
    pub fn upload_session_cancelled(&self) {
        self.uploads.sessions_cancelled.inc();
    }

    /// The sweeper expired an abandoned chunked upload.
    pub fn upload_session_expired(&self) {
        self.uploads.sessions_expired.inc();
    }

    /// A single-request upload was stored and recorded.
    pub fn image_uploaded(&self) {
        self.uploads.images_uploaded.inc();
    }

    /// A check recorded `status` (SPEC section 3) on an image.
    pub fn image_checked(&self, status: CheckStatus) {
        let name = check_label(status).unwrap_or("other");
        self.checks
            .get_or_create(&StatusLabels {
                status: name.into(),
            })
            .inc();
    }

    /// A slim job ended as `outcome`.
    pub fn image_slimmed(&self, outcome: SlimOutcome) {
        self.slims
            .get_or_create(&StatusLabels {
                status: outcome.label().into(),
            })
            .inc();
    }

    /// A check or slim had qemu-img read a stored image `via` a file, an export or a copy.
    pub fn image_read(&self, via: ImageRead) {
        self.image_reads
            .get_or_create(&ReadLabels {
                via: via.label().into(),
            })
            .inc();
    }

    /// Sets the deployment-wide gauges from fresh counts.
    pub fn set_state(&self, open_sessions: u64, jobs: &[((JobKind, JobState), u64)]) {
        self.upload_sessions.set(open_sessions as i64);
        for ((kind, state), n) in jobs {
            self.jobs
                .get_or_create(&JobStateLabels {
                    kind: kind.as_str().to_string(),
                    state: state.as_str().to_string(),
                })
                .set(*n as i64);
        }
    }

    /// Sets the scratch gauge (bytes of disk in use).
    pub fn set_scratch_bytes(&self, bytes: u64) {
        self.scratch_bytes.set(bytes.min(i64::MAX as u64) as i64);
    }

    /// The OpenMetrics text of every metric, ending with `# EOF` (see [`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Bytes of disk the files under `dir` take (allocated blocks, as `du` counts them, so sparse
/// images count what they really hold), read now: nothing to keep in step with the code that
/// creates and removes scratch files. Files that vanish while it walks are skipped.
pub fn disk_usage(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                dirs.push(e.path());
            } else {
                // st_blocks is in 512-byte units whatever the file system's block size.
                total += meta.blocks() * 512;
            }
        }
    }
    total
}

/// The standard process metrics, read from `/proc/self` at each scrape (the `procfs` crate
/// parses it).
#[cfg(target_os = "linux")]
mod process {
    use prometheus_client::{
        collector::Collector,
        encoding::{DescriptorEncoder, EncodeMetric},
        metrics::{counter::ConstCounter, gauge::ConstGauge},
    };

    #[derive(Debug)]
    pub struct ProcessCollector;

    fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> std::fmt::Result {
        let g = ConstGauge::new(v);
        g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
    }

    impl Collector for ProcessCollector {
        fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            // A value /proc does not give is left out; the scrape itself never fails for it.
            let Ok(me) = procfs::process::Process::myself() else {
                return Ok(());
            };
            if let Ok(stat) = me.stat() {
                let ticks = procfs::ticks_per_second() as f64;
                let cpu = ConstCounter::new((stat.utime + stat.stime) as f64 / ticks);
                cpu.encode(enc.encode_descriptor(
                    "process_cpu_seconds",
                    "User and system CPU time spent, in seconds",
                    None,
                    cpu.metric_type(),
                )?)?;
                let page = procfs::page_size() as f64;
                gauge(
                    &mut enc,
                    "process_resident_memory_bytes",
                    "Resident memory size, in bytes",
                    stat.rss as f64 * page,
                )?;
                gauge(
                    &mut enc,
                    "process_virtual_memory_bytes",
                    "Virtual memory size, in bytes",
                    stat.vsize as f64,
                )?;
                if let Ok(boot) = procfs::boot_time_secs() {
                    gauge(
                        &mut enc,
                        "process_start_time_seconds",
                        "Start time of the process since the Unix epoch, in seconds",
                        boot as f64 + stat.starttime as f64 / ticks,
                    )?;
                }
            }
            if let Ok(n) = me.fd_count() {
                gauge(
                    &mut enc,
                    "process_open_fds",
                    "Open file descriptors",
                    n as f64,
                )?;
            }
            if let Ok(limits) = me.limits() {
                if let procfs::process::LimitValue::Value(max) = limits.max_open_files.soft_limit {
                    gauge(
                        &mut enc,
                        "process_max_fds",
                        "Limit on open file descriptors (soft limit)",
                        max as f64,
                    )?;
                }
            }
            Ok(())
        }
    }
}
