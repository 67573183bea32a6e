//! Appending: one stream, a batch of streams, or inside the caller's transaction.

use sqlx::{PgConnection, Postgres, Row, Transaction};

use crate::{
    AppendError, AppendOutcome, AppendRequest, EventStore, ExpectedVersion, Position, StoreError,
};

/// How often a batch is retried after a deadlock or serialisation failure.
const TRANSIENT_RETRIES: usize = 3;

impl EventStore {
    /// Appends events to one stream atomically (see [`AppendRequest`]).
    pub async fn append(&self, request: &AppendRequest) -> Result<AppendOutcome, AppendError> {
        self.validate(request)?;
        let mut attempt = 0;
        loop {
            let mut conn = self.pool().acquire().await.map_err(StoreError::from)?;
            // A single statement is its own transaction: one round trip.
            match append_on(&mut conn, request).await {
                Err(AppendError::Store(e)) if e.is_transient() && attempt < TRANSIENT_RETRIES => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "retrying append");
                }
                // Cannot happen to a transaction of one append (it takes its
                // id after the stream lock), but a new transaction fixes it.
                Err(AppendError::StaleTransaction { .. }) if attempt < TRANSIENT_RETRIES => {
                    attempt += 1;
                }
                Ok(outcome) => {
                    if !outcome.replayed {
                        self.inner.notifier.wake();
                    }
                    return Ok(outcome);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Appends to several streams in one transaction. Each request is checked
    /// and applied on its own (a conflict in one does not undo the others);
    /// all that were applied commit together. The outer error means nothing
    /// was committed.
    pub async fn append_batch(
        &self,
        requests: &[AppendRequest],
    ) -> Result<Vec<Result<AppendOutcome, AppendError>>, StoreError> {
        let mut attempt = 0;
        loop {
            match self.try_append_batch(requests).await {
                Err(e) if e.is_transient() && attempt < TRANSIENT_RETRIES => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "retrying append batch");
                }
                other => return other,
            }
        }
    }

    async fn try_append_batch(
        &self,
        requests: &[AppendRequest],
    ) -> Result<Vec<Result<AppendOutcome, AppendError>>, StoreError> {
        let mut tx = self.begin().await?;
        let streams: Vec<uuid::Uuid> = requests.iter().map(|r| r.stream_id).collect();
        sqlx::query(LOCK_STREAMS)
            .bind(&streams)
            .execute(tx.conn())
            .await?;
        let mut outcomes = Vec::with_capacity(requests.len());
        for request in requests {
            match tx.append(request).await {
                Err(AppendError::Store(e)) => return Err(e),
                other => outcomes.push(other),
            }
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    /// Starts a transaction in which events can be appended and the caller
    /// can run its own SQL (inline projections) that commits with them.
    pub async fn begin(&self) -> Result<AppendTx<'_>, StoreError> {
        Ok(AppendTx {
            tx: self.pool().begin().await?,
            store: self,
            wrote: false,
        })
    }

    pub(crate) fn validate(&self, request: &AppendRequest) -> Result<(), AppendError> {
        let options = self.options();
        let stream_id = request.stream_id;
        if request.events.is_empty() {
            return Err(AppendError::Empty { stream_id });
        }
        if request.events.len() > options.max_events_per_append {
            return Err(AppendError::TooManyEvents {
                stream_id,
                count: request.events.len(),
                limit: options.max_events_per_append,
            });
        }
        if request.stream_type.is_empty() || request.events.iter().any(|e| e.event_type.is_empty())
        {
            return Err(AppendError::MissingType { stream_id });
        }
        if let Some((index, event)) = request
            .events
            .iter()
            .enumerate()
            .find(|(_, e)| e.payload.len() > options.max_payload_bytes)
        {
            return Err(AppendError::PayloadTooLarge {
                stream_id,
                index,
                size: event.payload.len(),
                limit: options.max_payload_bytes,
            });
        }
        Ok(())
    }
}

/// A transaction on the event store. Dropped without [`AppendTx::commit`],
/// it rolls back and nothing of it is kept.
pub struct AppendTx<'s> {
    tx: Transaction<'static, Postgres>,
    store: &'s EventStore,
    wrote: bool,
}

impl AppendTx<'_> {
    /// Appends within this transaction. A refused append (conflict, limit,
    /// stale) leaves the transaction usable; a store error means it must be
    /// dropped. Appending to several streams here can deadlock with another
    /// transaction doing the same in another order (PostgreSQL then aborts
    /// one of them); [`EventStore::append_batch`] avoids that by locking its
    /// streams first.
    pub async fn append(&mut self, request: &AppendRequest) -> Result<AppendOutcome, AppendError> {
        self.store.validate(request)?;
        let outcome = append_on(&mut self.tx, request).await?;
        self.wrote |= !outcome.replayed;
        Ok(outcome)
    }

    /// The transaction's connection, for the caller's own statements.
    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    pub async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await?;
        if self.wrote {
            self.store.inner.notifier.wake();
        }
        Ok(())
    }
}

/// Takes the stream locks of a whole batch up front, in one global order:
/// no deadlock between batches, and every append of the batch sees its
/// stream's head committed by an older transaction (never `stale`).
const LOCK_STREAMS: &str = "
SELECT count(pg_advisory_xact_lock(k)) FROM (
    SELECT DISTINCT hashtextextended(s::text, 0) AS k FROM unnest($1::uuid[]) AS s ORDER BY k
) AS keys";

async fn append_on(
    conn: &mut PgConnection,
    request: &AppendRequest,
) -> Result<AppendOutcome, AppendError> {
    let metadata = serde_json::to_value(&request.metadata)
        .map_err(|e| StoreError::Corrupt(format!("metadata does not encode as JSON: {e}")))?;
    let n = request.events.len();
    let mut ids = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    let mut versions = Vec::with_capacity(n);
    let mut payloads = Vec::with_capacity(n);
    for event in &request.events {
        ids.push(event.event_id);
        types.push(event.event_type.as_str());
        versions.push(event.schema_version);
        payloads.push(event.payload.as_slice());
    }
    let expected = match request.expected {
        ExpectedVersion::Any => -1,
        ExpectedVersion::NoStream => 0,
        ExpectedVersion::Exact(v) => i64::try_from(v).unwrap_or(i64::MAX),
    };
    let row = sqlx::query(
        "SELECT status, out_stream_id, first_version, last_version, generation, tx_id, seq
           FROM eventstore_append($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(request.stream_id)
    .bind(&request.stream_type)
    .bind(expected)
    .bind(request.metadata.command_id)
    .bind(&ids)
    .bind(&types)
    .bind(&versions)
    .bind(&payloads)
    .bind(sqlx::types::Json(metadata))
    .fetch_one(&mut *conn)
    .await?;

    let status: String = row.try_get("status")?;
    let last_version: Option<i64> = row.try_get("last_version")?;
    match status.as_str() {
        "ok" | "duplicate" => {
            let missing =
                || StoreError::Corrupt(format!("append answered {status} without a position"));
            let first_version: Option<i64> = row.try_get("first_version")?;
            Ok(AppendOutcome {
                stream_id: row.try_get("out_stream_id")?,
                first_version: first_version.ok_or_else(missing)?.unsigned_abs(),
                version: last_version.ok_or_else(missing)?.unsigned_abs(),
                position: Position {
                    generation: row
                        .try_get::<Option<i32>, _>("generation")?
                        .ok_or_else(missing)?,
                    tx_id: row
                        .try_get::<Option<i64>, _>("tx_id")?
                        .ok_or_else(missing)?,
                    seq: row.try_get::<Option<i64>, _>("seq")?.ok_or_else(missing)?,
                },
                replayed: status == "duplicate",
            })
        }
        "conflict" => Err(AppendError::Conflict {
            stream_id: request.stream_id,
            expected: match request.expected {
                ExpectedVersion::Exact(0) => ExpectedVersion::NoStream,
                other => other,
            },
            actual: last_version.map(i64::unsigned_abs),
        }),
        "stale" => Err(AppendError::StaleTransaction {
            stream_id: request.stream_id,
        }),
        other => Err(StoreError::Corrupt(format!("unknown append status {other:?}")).into()),
    }
}
