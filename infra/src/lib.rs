//! What the copilot-data services share that is neither domain nor event
//! store: typed configuration, telemetry, and connection set-up.

pub mod auth;
pub mod auth_epoch;
pub mod circuit;
pub mod config;
pub mod metrics;
pub mod nats;
pub mod postgres;
pub mod ratelimit;
pub mod redact;
pub mod redis_conn;
pub mod telemetry;
pub mod tls;
pub mod traces;

pub use config::{ConfigError, Settings};

/// The Redis key (after the deployment's prefix) where the Redis projection
/// says how far its cache invalidation has got: the sort key
/// (`eventstore::Position::sort_key`) of the last position of the batch
/// it is applying, set before that batch's invalidations run. The query
/// service stores a response only if it was read at or after that position.
pub const REDIS_INVALIDATED_KEY: &str = "projection:redis:invalidated";
