//! What the copilot-data services share that is neither domain nor event
//! store: typed configuration, telemetry, and connection set-up.

pub mod auth;
pub mod circuit;
pub mod config;
pub mod metrics;
pub mod nats;
pub mod postgres;
pub mod ratelimit;
pub mod telemetry;

pub use config::{ConfigError, Settings};
