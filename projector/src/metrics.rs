//! The projector's metrics, registered in the process registry.

use std::sync::OnceLock;

use prometheus::{GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};

pub struct Metrics {
    /// Events applied, by projection.
    pub events: IntCounterVec,
    /// Time to apply and commit one batch, by projection.
    pub batch_seconds: HistogramVec,
    /// Failures, by projection and kind (`poison`, `database`, `moved`).
    pub errors: IntCounterVec,
    /// Seconds between the newest applied event's recording and now.
    pub lag_seconds: GaugeVec,
    /// Events in the log after the projection's checkpoint.
    pub lag_events: IntGaugeVec,
    /// 1 while this process holds the projection's lease.
    pub leader: IntGaugeVec,
    /// 1 when the projection stopped at a poison event.
    pub stopped: IntGaugeVec,
    /// 1 while the circuit breaker of a service the vector projection calls
    /// (`embedder`, `vector_store`) refuses calls.
    pub circuit_open: IntGaugeVec,
}

pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let labels = &["projection"];
        let m = Metrics {
            events: IntCounterVec::new(
                Opts::new(
                    "copilot_projection_events_total",
                    "Events applied, by projection",
                ),
                labels,
            )
            .expect("valid metric"),
            batch_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "copilot_projection_batch_seconds",
                    "Time to apply and commit one batch",
                )
                .buckets(vec![
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
                labels,
            )
            .expect("valid metric"),
            errors: IntCounterVec::new(
                Opts::new(
                    "copilot_projection_errors_total",
                    "Projection failures, by kind",
                ),
                &["projection", "kind"],
            )
            .expect("valid metric"),
            lag_seconds: GaugeVec::new(
                Opts::new(
                    "copilot_projection_lag_seconds",
                    "Age of the newest applied event when it was applied",
                ),
                labels,
            )
            .expect("valid metric"),
            lag_events: IntGaugeVec::new(
                Opts::new(
                    "copilot_projection_lag_events",
                    "Events in the log after the projection's checkpoint",
                ),
                labels,
            )
            .expect("valid metric"),
            leader: IntGaugeVec::new(
                Opts::new(
                    "copilot_projection_leader",
                    "1 while this process holds the lease",
                ),
                labels,
            )
            .expect("valid metric"),
            stopped: IntGaugeVec::new(
                Opts::new(
                    "copilot_projection_stopped",
                    "1 when stopped at a poison event",
                ),
                labels,
            )
            .expect("valid metric"),
            circuit_open: IntGaugeVec::new(
                Opts::new(
                    "copilot_circuit_open",
                    "1 while the service's circuit breaker refuses calls",
                ),
                &["service"],
            )
            .expect("valid metric"),
        };
        let registry = infra::metrics::registry();
        for collector in [
            Box::new(m.events.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.batch_seconds.clone()),
            Box::new(m.errors.clone()),
            Box::new(m.lag_seconds.clone()),
            Box::new(m.lag_events.clone()),
            Box::new(m.leader.clone()),
            Box::new(m.stopped.clone()),
            Box::new(m.circuit_open.clone()),
        ] {
            let _ = registry.register(collector);
        }
        m
    })
}
