//! Errors of the event store. Conflicts and limits are typed so callers can
//! answer clients precisely; database failures are kept apart from them.

use uuid::Uuid;

use crate::ExpectedVersion;

/// The store could not do its work (connection, SQL, corrupt row).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("corrupt event row: {0}")]
    Corrupt(String),
    #[error("the event store is shut down")]
    Closed,
    /// Sealed personal data cannot be opened (a master key missing or
    /// wrong): an operator's matter, never retried.
    #[error("data keys: {0}")]
    Keys(String),
    /// The statement this request shared with others failed for a reason
    /// not its own (the database unreachable, a deadlock), already retried.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// Whether retrying the same work later may succeed: a lost connection,
    /// a server shutting down, a pool timeout, a deadlock or serialisation failure.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Database(e) => is_transient(e),
            StoreError::Unavailable(_) => true,
            StoreError::Corrupt(_) | StoreError::Closed | StoreError::Keys(_) => false,
        }
    }
}

/// How often a statement is run again after a transient failure.
const TRANSIENT_RETRIES: usize = 3;

/// Runs `statement` until it succeeds, fails for good, or has failed
/// transiently (see [`is_transient`]) more than three times.
pub async fn retry_transient<T, F>(statement: impl Fn() -> F) -> Result<T, sqlx::Error>
where
    F: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let mut attempt = 0;
    loop {
        match statement().await {
            Err(e) if is_transient(&e) && attempt < TRANSIENT_RETRIES => {
                attempt += 1;
                tracing::debug!(error = %e, attempt, "retrying a statement");
            }
            done => return done,
        }
    }
}

/// Whether a failed statement may succeed if simply run again (a lost
/// connection, a deadlock, a serialisation failure, a concurrent duplicate).
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") // connection exception
                || code == "40001" // serialization_failure
                || code == "40P01" // deadlock_detected
                || code == "57P01" // admin_shutdown (pg_terminate_backend)
                || code == "57P02" // crash_shutdown
                || code == "57P03" // cannot_connect_now
                // A concurrent duplicate of a command committed first (see
                // eventstore_append); the retry answers its outcome.
                || (code == "23505" && db.constraint() == Some("events_command"))
        }),
        _ => false,
    }
}

/// Why an append wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("append to stream {stream_id} has no events")]
    Empty { stream_id: Uuid },
    #[error("append to stream {stream_id} has {count} events, more than the limit of {limit}")]
    TooManyEvents {
        stream_id: Uuid,
        count: usize,
        limit: usize,
    },
    #[error("event {index} of the append to stream {stream_id} has a payload of {size} bytes, over the limit of {limit} bytes")]
    PayloadTooLarge {
        stream_id: Uuid,
        index: usize,
        size: usize,
        limit: usize,
    },
    #[error("append to stream {stream_id} has an empty stream type or event type")]
    MissingType { stream_id: Uuid },
    #[error("stream {stream_id} is at version {}, expected {expected}", actual.map_or("none (no stream)".to_string(), |v| v.to_string()))]
    Conflict {
        stream_id: Uuid,
        expected: ExpectedVersion,
        /// The stream's version when the append was refused; `None` if it does not exist.
        actual: Option<u64>,
    },
    /// The transaction took its id before another one that has since
    /// committed to this stream; appending here would put the stream's
    /// events out of order in the global order. Retry in a new transaction.
    #[error(
        "stream {stream_id} was appended to by a newer transaction; retry in a new transaction"
    )]
    StaleTransaction { stream_id: Uuid },
    /// The command id has a stored outcome (a rejection): that is the
    /// answer, and the command is not decided again. Nothing was written.
    #[error("the command was decided before")]
    Decided,
    /// The request's [`crate::Guard`] no longer holds: its session ended,
    /// expired or went idle, its API key was revoked or expired, or its user
    /// was locked, deleted or given another role. Nothing was written.
    #[error("the credential the command was decided under no longer holds")]
    Unverified,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for AppendError {
    fn from(e: sqlx::Error) -> Self {
        AppendError::Store(StoreError::Database(e))
    }
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("stream {0} does not exist")]
    StreamNotFound(Uuid),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for ReadError {
    fn from(e: sqlx::Error) -> Self {
        ReadError::Store(StoreError::Database(e))
    }
}
