//! The event store's own metrics; whoever serves metrics registers them
//! (see [`collectors`]).

use std::sync::OnceLock;

use prometheus::{Histogram, HistogramOpts, IntCounter};

/// Appends per group-commit transaction.
pub fn append_batch_size() -> &'static Histogram {
    static HISTOGRAM: OnceLock<Histogram> = OnceLock::new();
    HISTOGRAM.get_or_init(|| {
        batch_histogram(
            "copilot_eventstore_append_batch_size",
            "Appends committed together by one group-commit transaction",
        )
    })
}

/// Requests the exact set append left to the set append.
pub fn exact_append_taken() -> &'static IntCounter {
    static COUNTER: OnceLock<IntCounter> = OnceLock::new();
    COUNTER.get_or_init(|| {
        IntCounter::new(
            "copilot_eventstore_exact_append_taken_total",
            "Requests the exact set append left to the full set append \
             (a stream another writer moved on, a command appended before)",
        )
        .expect("valid metric")
    })
}

/// A histogram of batch sizes (1 to 512, by powers of two).
pub fn batch_histogram(name: &str, help: &str) -> Histogram {
    let buckets = (0..10).map(|i| f64::from(1u32 << i)).collect();
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid metric")
}

/// The store's collectors, to register in a service's registry.
pub fn collectors() -> Vec<Box<dyn prometheus::core::Collector>> {
    vec![
        Box::new(append_batch_size().clone()),
        Box::new(exact_append_taken().clone()),
    ]
}
