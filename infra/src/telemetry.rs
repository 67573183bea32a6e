//! Tracing set-up: structured logs on standard error, filtered by `COPILOT_LOG`.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `json` selects one JSON object per line,
/// for log shippers; otherwise compact human-readable lines.
pub fn init(filter: &str, json: bool) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    let result = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.compact().try_init()
    };
    // Already installed (tests, or `up` running several roles): keep the first.
    drop(result);
}
