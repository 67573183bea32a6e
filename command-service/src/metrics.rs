//! The command service's metrics, registered in the process registry.

use std::sync::OnceLock;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
};

pub struct Metrics {
    /// Commands by type and status.
    pub commands: IntCounterVec,
    /// Handling time by command type.
    pub latency: HistogramVec,
    /// Commands being handled, by transport.
    pub in_flight: IntGaugeVec,
    /// Rate-limit checks skipped because Redis failed (fail open).
    pub rate_limit_fail_open: IntCounter,
    /// Conflicts retried by reloading the aggregate.
    pub conflict_retries: IntCounter,
    /// Preflights (stored outcome and session) answered by one query.
    pub preflight_batch_size: Histogram,
    /// Commands decided under a session verified before, by how that went:
    /// `accepted` (one guarded append) or `rechecked` (handled again after
    /// the full check).
    pub fast_path: IntCounterVec,
}

pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let m = Metrics {
            commands: IntCounterVec::new(
                Opts::new(
                    "copilot_commands_total",
                    "Commands handled, by type and status",
                ),
                &["type", "status"],
            )
            .expect("valid metric"),
            latency: HistogramVec::new(
                HistogramOpts::new(
                    "copilot_command_duration_seconds",
                    "Time to handle a command, by type",
                )
                .buckets(vec![
                    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ]),
                &["type"],
            )
            .expect("valid metric"),
            in_flight: IntGaugeVec::new(
                Opts::new(
                    "copilot_commands_in_flight",
                    "Commands being handled, by transport",
                ),
                &["transport"],
            )
            .expect("valid metric"),
            rate_limit_fail_open: IntCounter::new(
                "copilot_rate_limit_fail_open_total",
                "Rate-limit checks skipped because Redis failed",
            )
            .expect("valid metric"),
            conflict_retries: IntCounter::new(
                "copilot_command_conflict_retries_total",
                "Commands retried after losing a version race",
            )
            .expect("valid metric"),
            preflight_batch_size: eventstore::metrics::batch_histogram(
                "copilot_command_preflight_batch_size",
                "Preflights (stored outcome and session) answered by one query",
            ),
            fast_path: IntCounterVec::new(
                Opts::new(
                    "copilot_command_fast_path_total",
                    "Commands decided under a credential verified before, by outcome \
                     (accepted in a task of their own or in the request/reply lane, or rechecked in full)",
                ),
                &["outcome"],
            )
            .expect("valid metric"),
        };
        let registry = infra::metrics::registry();
        for collector in [
            Box::new(m.commands.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.latency.clone()),
            Box::new(m.in_flight.clone()),
            Box::new(m.rate_limit_fail_open.clone()),
            Box::new(m.conflict_retries.clone()),
            Box::new(m.preflight_batch_size.clone()),
            Box::new(m.fast_path.clone()),
        ]
        .into_iter()
        .chain(eventstore::metrics::collectors())
        {
            // Registered once per process; a second registration is harmless.
            let _ = registry.register(collector);
        }
        m
    })
}
