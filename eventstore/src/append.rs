//! Appending: one stream, a batch, or inside the caller's transaction.

use sqlx::{PgConnection, Postgres, Row, Transaction};

use crate::committers::CommitterQuery;
use crate::{
    AppendError, AppendOutcome, AppendRequest, EventStore, ExpectedVersion, Guard, Position,
    StoreError,
};

/// [`Guard::NONE`] to borrow (a constant holding a `String` is not promoted).
static NO_GUARD: Guard = Guard::NONE;

impl EventStore {
    /// Appends events to one stream atomically (see [`AppendRequest`]).
    ///
    /// Appends that arrive while others are being written are grouped into
    /// one statement and one transaction (group commit); each keeps its own
    /// outcome, and a refusal of one does not affect the others.
    pub async fn append(&self, request: &AppendRequest) -> Result<AppendOutcome, AppendError> {
        self.append_guarded(request.clone(), Guard::NONE).await
    }

    /// [`EventStore::append`], written only if `guard` still holds and the
    /// command id has no stored outcome (see [`Guard`]); otherwise
    /// [`AppendError::Unverified`] or [`AppendError::Decided`] and nothing
    /// is written.
    pub async fn append_guarded(
        &self,
        request: AppendRequest,
        guard: Guard,
    ) -> Result<AppendOutcome, AppendError> {
        self.validate(&request)?;
        self.inner.committer.submit(request, guard).await
    }

    /// Appends several requests at once, an outcome for each, in order:
    /// each request is checked and applied on its own (a conflict in one
    /// does not undo the others), and requests for one stream apply in the
    /// order given, each seeing the ones before it. Requests that name no
    /// stream or command id twice are one statement and one transaction;
    /// a later request for a stream already named goes in a later one. If
    /// one request breaks a statement, the others are written without it.
    pub async fn append_batch(
        &self,
        requests: &[AppendRequest],
    ) -> Vec<Result<AppendOutcome, AppendError>> {
        let entries: Vec<(&AppendRequest, &Guard)> =
            requests.iter().map(|r| (r, &NO_GUARD)).collect();
        self.append_batch_guarded(&entries).await
    }

    /// [`EventStore::append_batch`] with each request's [`Guard`], for a
    /// caller that gathers its own batches (the command service's
    /// request/reply lane).
    pub async fn append_batch_guarded(
        &self,
        entries: &[(&AppendRequest, &Guard)],
    ) -> Vec<Result<AppendOutcome, AppendError>> {
        let mut outcomes: Vec<Option<Result<AppendOutcome, AppendError>>> = Vec::new();
        let mut valid = Vec::new();
        for &(request, guard) in entries {
            match self.validate(request) {
                Ok(()) => {
                    valid.push((request, guard));
                    outcomes.push(None);
                }
                Err(e) => outcomes.push(Some(Err(e))),
            }
        }
        let mut written = if valid.is_empty() {
            Vec::new()
        } else {
            self.writer().write(&valid).await
        }
        .into_iter();
        outcomes
            .into_iter()
            .map(|slot| match slot {
                Some(refused) => refused,
                None => written.next().unwrap_or_else(|| {
                    Err(
                        StoreError::Corrupt("batch answered fewer rows than requests".into())
                            .into(),
                    )
                }),
            })
            .collect()
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

    /// Checks a request against the store's limits, as every append does
    /// first (for a caller that must know before it queues the request).
    pub fn validate(&self, request: &AppendRequest) -> Result<(), AppendError> {
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
    let row = sqlx::query(
        "SELECT status, out_stream_id, first_version, last_version, generation, tx_id, seq
           FROM eventstore_append($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(request.stream_id)
    .bind(&request.stream_type)
    .bind(expected_to_sql(request.expected))
    .bind(request.metadata.command_id)
    .bind(&ids)
    .bind(&types)
    .bind(&versions)
    .bind(&payloads)
    .bind(sqlx::types::Json(metadata))
    .fetch_one(&mut *conn)
    .await?;

    outcome_from_row(&row, request)
}

/// A round of appends (no stream or command id twice, see
/// [`crate::write`]) as the arguments of the set appends
/// ([`crate::set_append`]): ten arrays, one entry per request, then one per
/// event, request i owning `p_counts[i]` consecutive events.
pub(crate) struct AppendArgs<'a> {
    stream_ids: Vec<uuid::Uuid>,
    stream_types: Vec<&'a str>,
    expected: Vec<i64>,
    command_ids: Vec<Option<uuid::Uuid>>,
    counts: Vec<i32>,
    metadata: Vec<String>,
    event_ids: Vec<uuid::Uuid>,
    event_types: Vec<&'a str>,
    schema_versions: Vec<i32>,
    payloads: Vec<&'a [u8]>,
}

impl<'a> AppendArgs<'a> {
    pub(crate) fn new(
        requests: impl ExactSizeIterator<Item = &'a AppendRequest> + Clone,
    ) -> Result<Self, StoreError> {
        let n = requests.len();
        let events: usize = requests.clone().map(|r| r.events.len()).sum();
        let mut args = AppendArgs {
            stream_ids: Vec::with_capacity(n),
            stream_types: Vec::with_capacity(n),
            expected: Vec::with_capacity(n),
            command_ids: Vec::with_capacity(n),
            counts: Vec::with_capacity(n),
            metadata: Vec::with_capacity(n),
            event_ids: Vec::with_capacity(events),
            event_types: Vec::with_capacity(events),
            schema_versions: Vec::with_capacity(events),
            payloads: Vec::with_capacity(events),
        };
        for request in requests {
            args.stream_ids.push(request.stream_id);
            args.stream_types.push(request.stream_type.as_str());
            args.expected.push(expected_to_sql(request.expected));
            args.command_ids.push(request.metadata.command_id);
            args.counts
                .push(i32::try_from(request.events.len()).unwrap_or(i32::MAX));
            args.metadata
                .push(serde_json::to_string(&request.metadata).map_err(|e| {
                    StoreError::Corrupt(format!("metadata does not encode as JSON: {e}"))
                })?);
            for event in &request.events {
                args.event_ids.push(event.event_id);
                args.event_types.push(event.event_type.as_str());
                args.schema_versions.push(event.schema_version);
                args.payloads.push(event.payload.as_slice());
            }
        }
        Ok(args)
    }

    /// Whether the exact set append can take the round (see
    /// [`crate::set_append::EXACT_APPEND`]): each request one event at an
    /// exact expected version (or to a new stream).
    pub(crate) fn single_exact(&self) -> bool {
        self.counts.iter().all(|&count| count == 1)
            && self.expected.iter().all(|&expected| expected >= 0)
    }

    /// Binds the ten arrays, in order, as the query's next parameters.
    pub(crate) fn bind<'q>(&'q self, query: CommitterQuery<'q>) -> CommitterQuery<'q> {
        query
            .bind(&self.stream_ids)
            .bind(&self.stream_types)
            .bind(&self.expected)
            .bind(&self.command_ids)
            .bind(&self.counts)
            .bind(&self.metadata)
            .bind(&self.event_ids)
            .bind(&self.event_types)
            .bind(&self.schema_versions)
            .bind(&self.payloads)
    }
}

fn expected_to_sql(expected: ExpectedVersion) -> i64 {
    match expected {
        ExpectedVersion::Any => -1,
        ExpectedVersion::NoStream => 0,
        ExpectedVersion::Exact(v) => i64::try_from(v).unwrap_or(i64::MAX),
    }
}

/// One row of `eventstore_append` or of a set append
/// ([`crate::set_append`]) (columns `status`, `out_stream_id`,
/// `first_version`, `last_version`, `generation`, `tx_id`, `seq`) as the
/// outcome of `request`.
pub(crate) fn outcome_from_row(
    row: &sqlx::postgres::PgRow,
    request: &AppendRequest,
) -> Result<AppendOutcome, AppendError> {
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
