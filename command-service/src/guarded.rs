//! Group commit for commands decided under a session the service verified a
//! moment ago: the session (and whether the command was decided before) is
//! checked again by the append's own statement (`command_append_set`,
//! migration 0007), so the common command costs one shared statement and
//! no lookup of its own. What fails the check is written nowhere and goes
//! back to the handler, which then handles the command the slow way.

use chrono::Utc;
use domain::session::IDLE_TIMEOUT;
use eventstore::coalesce::{Coalescer, Pending};
use eventstore::{
    outcome_from_row, retry_transient, serve_batch, AppendArgs, AppendError, AppendOutcome,
    AppendRequest, EventStore, StoreError,
};
use uuid::Uuid;

/// The credential a command was decided under, to be checked again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    /// Hash of the session token (as in `auth_sessions`).
    pub token_hash: String,
    /// The user and role the command was decided as.
    pub user_id: Uuid,
    pub role: String,
}

/// Why a guarded append wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum GuardedError {
    #[error(transparent)]
    Append(#[from] AppendError),
    /// The command id already has a stored outcome.
    #[error("the command was decided before")]
    Decided,
    /// The session no longer holds as it was verified (ended, expired,
    /// idle, its user locked, deleted or given another role).
    #[error("the session is no longer what it was verified as")]
    Unverified,
}

impl From<StoreError> for GuardedError {
    fn from(e: StoreError) -> Self {
        GuardedError::Append(e.into())
    }
}

type Entry = (AppendRequest, Guard);
type Guarded = Pending<Entry, Result<AppendOutcome, GuardedError>>;

pub struct GuardedCommit {
    store: EventStore,
    queue: Coalescer<Entry, Result<AppendOutcome, GuardedError>>,
}

impl GuardedCommit {
    /// Starts the task that commits batches, with the store's group-commit
    /// limits (needs a runtime).
    pub fn spawn(store: EventStore) -> Self {
        let options = store.options().clone();
        let committer = store.clone();
        let queue = Coalescer::spawn(
            options.max_concurrent_batches,
            options.max_batch_events,
            |(request, _): &Entry| request.events.len(),
            move |batch| commit(committer.clone(), batch),
        );
        GuardedCommit { store, queue }
    }

    /// Appends `request` if `guard` still holds and the command was not
    /// decided before, together with the guarded appends that arrive meanwhile.
    pub async fn append(
        &self,
        request: AppendRequest,
        guard: Guard,
    ) -> Result<AppendOutcome, GuardedError> {
        self.store.validate(&request)?;
        self.queue
            .call((request, guard))
            .await
            .map_err(|_| StoreError::Closed)?
    }
}

async fn commit(store: EventStore, batch: Vec<Guarded>) {
    eventstore::metrics::append_batch_size().observe(batch.len() as f64);
    serve_batch(batch, |entries| {
        let store = store.clone();
        Box::pin(async move { write(&store, entries).await })
    })
    .await;
}

/// One statement, one transaction: every entry's checks and append.
async fn write(
    store: &EventStore,
    entries: &[&Entry],
) -> Result<Vec<Result<AppendOutcome, GuardedError>>, StoreError> {
    let requests: Vec<&AppendRequest> = entries.iter().map(|(r, _)| r).collect();
    let args = AppendArgs::new(&requests)?;
    let tokens: Vec<&str> = entries.iter().map(|(_, g)| g.token_hash.as_str()).collect();
    let users: Vec<Uuid> = entries.iter().map(|(_, g)| g.user_id).collect();
    let roles: Vec<&str> = entries.iter().map(|(_, g)| g.role.as_str()).collect();
    let now = Utc::now();
    let rows = retry_transient(|| {
        let query = sqlx::query(
            "SELECT idx, status, out_stream_id, first_version, last_version, generation, tx_id, seq
               FROM command_append_set($1, $2, $3, $4, $5, $6,
                                       $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
              ORDER BY idx",
        )
        .bind(now)
        .bind(now - IDLE_TIMEOUT)
        .bind(&tokens)
        .bind(&users)
        .bind(&roles)
        .bind(args.independent());
        args.bind(query).fetch_all(store.pool())
    })
    .await?;
    if rows.len() != entries.len() {
        return Err(StoreError::Corrupt(format!(
            "batch of {} guarded appends answered {} rows",
            entries.len(),
            rows.len()
        )));
    }
    let mut outcomes = Vec::with_capacity(rows.len());
    for (row, request) in rows.iter().zip(&requests) {
        let status: String = sqlx::Row::try_get(row, "status").map_err(StoreError::from)?;
        outcomes.push(match status.as_str() {
            "decided" => Err(GuardedError::Decided),
            "unverified" => Err(GuardedError::Unverified),
            _ => outcome_from_row(row, request).map_err(GuardedError::from),
        });
    }
    if outcomes.iter().any(|o| matches!(o, Ok(o) if !o.replayed)) {
        store.wake_subscribers();
    }
    Ok(outcomes)
}
