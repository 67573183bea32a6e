//! The query service's metrics, registered in the process registry.

use std::sync::OnceLock;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};

pub struct Metrics {
    /// Requests by route (the matched pattern), method and status.
    pub requests: IntCounterVec,
    /// Request latency by route.
    pub latency: HistogramVec,
    /// Response-cache lookups by outcome (`hit`, `miss`, `stale`, `error`).
    pub cache: IntCounterVec,
    /// Transactions by where they read (`primary`, `replica`).
    pub reads: IntCounterVec,
    /// Reads that left the replica, by reason (`down`, `behind`).
    pub replica_fallbacks: IntCounterVec,
    /// Requests refused by the rate limit.
    pub rate_limited: IntCounterVec,
    /// Connections of the PostgreSQL pools, by pool and state.
    pub pool: IntGaugeVec,
}

pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let m = Metrics {
            requests: IntCounterVec::new(
                Opts::new(
                    "copilot_http_requests_total",
                    "HTTP requests by route, method and status",
                ),
                &["route", "method", "status"],
            )
            .expect("valid metric"),
            latency: HistogramVec::new(
                HistogramOpts::new(
                    "copilot_http_request_seconds",
                    "HTTP request latency by route",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
                &["route"],
            )
            .expect("valid metric"),
            cache: IntCounterVec::new(
                Opts::new(
                    "copilot_http_cache_total",
                    "Response-cache lookups by outcome",
                ),
                &["outcome"],
            )
            .expect("valid metric"),
            reads: IntCounterVec::new(
                Opts::new("copilot_http_reads_total", "Read transactions by database"),
                &["target"],
            )
            .expect("valid metric"),
            replica_fallbacks: IntCounterVec::new(
                Opts::new(
                    "copilot_http_replica_fallbacks_total",
                    "Reads sent to the primary instead of the replica",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            rate_limited: IntCounterVec::new(
                Opts::new(
                    "copilot_http_rate_limited_total",
                    "Requests refused by the rate limit",
                ),
                &["kind"],
            )
            .expect("valid metric"),
            pool: IntGaugeVec::new(
                Opts::new(
                    "copilot_http_db_connections",
                    "PostgreSQL pool connections by pool and state",
                ),
                &["pool", "state"],
            )
            .expect("valid metric"),
        };
        let registry = infra::metrics::registry();
        for collector in [
            Box::new(m.requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.latency.clone()),
            Box::new(m.cache.clone()),
            Box::new(m.reads.clone()),
            Box::new(m.replica_fallbacks.clone()),
            Box::new(m.rate_limited.clone()),
            Box::new(m.pool.clone()),
        ] {
            if let Err(error) = registry.register(collector) {
                tracing::warn!(%error, "metric registered twice");
            }
        }
        m
    })
}
