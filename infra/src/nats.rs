//! NATS naming shared by the services.

/// A JetStream stream's name for a subject prefix: `base` itself for the
/// default prefix `copilot`, else `base_<PREFIX>` (upper-cased, anything
/// but letters and digits as `_`), so deployments sharing a server do not
/// share streams.
pub fn stream_name(base: &str, prefix: &str) -> String {
    if prefix == "copilot" {
        return base.to_string();
    }
    let suffix: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("{base}_{suffix}")
}
