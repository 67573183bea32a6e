//! The projector: every read model is a projection of the event log.
//!
//! Two SQL projections run here: `relational` (the nine operational tables
//! of the read model, schema `read_model`) and `audit` (the partitioned,
//! append-only audit log, schema `audit`). Each one
//!
//! * reads the store's gap-safe subscription in batches and writes each
//!   batch and its checkpoint in one transaction (exactly-once effect); the
//!   checkpoint row is locked and compared first, so a writer that lost its
//!   lease, or a blue/green swap that moved the checkpoint, makes the batch
//!   roll back instead of applying it twice;
//! * holds a lease (a session advisory lock on the connection it writes
//!   with), so it runs in exactly one projector process; when that process
//!   dies its connection closes and another process takes over;
//! * parks a poison event (one that cannot be decoded or applied) in
//!   `projection_errors` and stops there, or, if configured, skips it after
//!   parking it; never silently.
//!
//! [`rebuild`] replays projections from the start of the log into a shadow
//! schema and swaps it in (blue/green), builds point-in-time copies, and
//! verifies that a fresh rebuild equals what is live.
//!
//! Three sinks outside PostgreSQL follow the same log with their own
//! checkpoints and leases, at least once and idempotently: the event relay
//! ([`relay`], JetStream), the Redis patterns ([`redis_model`]) and the
//! vector collections ([`vector_model`]).
//!
//! Each of them, SQL or sink, is a [`Projection`]: a name, a
//! [`Delivery`] and `apply` for a batch. One step, `batch::run_once`
//! (lock the checkpoint row and compare it, apply, save the checkpoint,
//! commit), moves every projection forward, and one loop follows the log
//! with it for the live projector; `replay`'s catch-up of a sink and a
//! blue/green rebuild take the same step. Exactly-once projections apply
//! inside that transaction; sinks apply just before it.

pub mod audit;
mod batch;
mod batch_spans;
pub mod changes;
pub mod copy;
mod embedding_cache;
pub mod events;
mod lag_history;
mod metrics;
pub mod parked;
mod projection;
pub mod rebuild;
pub mod redis_model;
pub mod relational;
pub mod relay;
mod runner;
pub mod table;
pub mod tables;
pub mod vector_model;

pub use batch::{run_once, Outcome, PoisonPolicy};
pub use projection::{Delivery, Kind, Projection, SqlProjection};
pub use runner::{catch_up_sink, maintain_audit, run, ProjectorConfig, Sink, SinkError};
pub use vector_model::{BreakerConfig, VectorConfig};

use crate::changes::FlushError;
use crate::copy::EncodeError;

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// The event at `index` of the batch cannot be projected.
    #[error("event #{index} of the batch cannot be projected: {reason}")]
    Poison { index: usize, reason: String },
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error(transparent)]
    Store(#[from] eventstore::StoreError),
    /// The live schema could not be brought to this code's version.
    #[error("schema upgrade: {0}")]
    Upgrade(Box<crate::rebuild::RebuildError>),
    /// The checkpoint is not where this writer left it: another writer (a
    /// projector that took the lease over, or a blue/green swap) moved it.
    #[error("checkpoint of {0} moved under this writer")]
    Moved(String),
}

impl From<FlushError> for ProjectionError {
    fn from(error: FlushError) -> Self {
        match error {
            FlushError::Db(e) => ProjectionError::Db(e),
            FlushError::Encode(e) => ProjectionError::Encode(e),
        }
    }
}

impl ProjectionError {
    /// `error`, blamed on event `index` when it is about the data (a
    /// constraint or a value PostgreSQL refuses) rather than the connection.
    pub(crate) fn at(index: usize, error: impl Into<ProjectionError>) -> Self {
        let error = error.into();
        if error.is_data_error() {
            ProjectionError::Poison {
                index,
                reason: error.to_string(),
            }
        } else {
            error
        }
    }

    /// A failure caused by what was written (SQLSTATE classes 22 and 23,
    /// or a value that does not fit its column), which retrying cannot fix.
    pub fn is_data_error(&self) -> bool {
        match self {
            ProjectionError::Db(sqlx::Error::Database(e)) => e
                .code()
                .is_some_and(|code| code.starts_with("22") || code.starts_with("23")),
            ProjectionError::Encode(_) | ProjectionError::Poison { .. } => true,
            _ => false,
        }
    }
}
