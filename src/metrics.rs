//! Prometheus metrics (`GET /metrics`, text exposition format).
//!
//! Request and byte counters are this replica's; the open-session and job gauges are read from
//! the database at scrape time, so they describe the whole deployment and every replica reports
//! the same values (aggregate them with `max`, not `sum`).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::{Family, MetricConstructor},
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};
use std::time::Duration;

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
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("fs");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route and status",
            requests.clone(),
        );
        // 1 ms .. ~4.6 h: from a query to a multi-GiB transfer.
        let request_seconds = Family::new_with_constructor(Buckets {
            start: 0.001,
            count: 12,
        });
        registry.register(
            "http_request_duration_seconds",
            "Time from a request's arrival until its response body was sent",
            request_seconds.clone(),
        );
        let bytes_received = Counter::default();
        registry.register(
            "http_received_bytes",
            "Request body bytes received",
            bytes_received.clone(),
        );
        let bytes_sent = Counter::default();
        registry.register(
            "http_sent_bytes",
            "Response body bytes sent",
            bytes_sent.clone(),
        );
        let upload_sessions = Gauge::default();
        registry.register(
            "upload_sessions_open",
            "Chunked uploads opened and not yet merged or cancelled (all replicas)",
            upload_sessions.clone(),
        );
        let jobs = Family::<JobStateLabels, Gauge>::default();
        registry.register(
            "jobs",
            "Check and slim jobs by kind and state (all replicas)",
            jobs.clone(),
        );
        // 10 ms .. ~11.6 h.
        let job_seconds = Family::new_with_constructor(Buckets {
            start: 0.01,
            count: 12,
        });
        registry.register(
            "job_duration_seconds",
            "Time a worker of this replica spent on a job run, by kind and outcome",
            job_seconds.clone(),
        );
        Metrics {
            registry,
            requests,
            request_seconds,
            bytes_received,
            bytes_sent,
            upload_sessions,
            jobs,
            job_seconds,
        }
    }

    /// Records one answered request, once its body has been sent (or dropped).
    pub fn request_done(&self, labels: RequestLabels, elapsed: Duration) {
        self.requests.get_or_create(&labels).inc();
        self.request_seconds
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    pub fn received(&self, bytes: usize) {
        self.bytes_received.inc_by(bytes as u64);
    }

    pub fn sent(&self, bytes: usize) {
        self.bytes_sent.inc_by(bytes as u64);
    }

    pub fn job_done(&self, kind: &str, outcome: &str, elapsed: Duration) {
        self.job_seconds
            .get_or_create(&JobLabels {
                kind: kind.to_string(),
                outcome: outcome.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Sets the deployment-wide gauges from fresh counts.
    pub fn set_state(&self, open_sessions: u64, jobs: &[((String, String), u64)]) {
        self.upload_sessions.set(open_sessions as i64);
        for ((kind, state), n) in jobs {
            self.jobs
                .get_or_create(&JobStateLabels {
                    kind: kind.clone(),
                    state: state.clone(),
                })
                .set(*n as i64);
        }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
