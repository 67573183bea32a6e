//! Reading one stream, and the whole log in the gap-safe global order.

use sqlx::postgres::PgRow;
use sqlx::Row;
use uuid::Uuid;

use crate::{EventStore, Metadata, Position, ReadError, RecordedEvent, StoreError};

const COLUMNS: &str = "stream_id, version, generation, tx_id, seq, event_id, stream_type, \
                       event_type, schema_version, payload, metadata, recorded_at";

/// A batch read from the global order, with how far the log is safely readable.
#[derive(Debug, Clone)]
pub struct ReadBatch {
    pub events: Vec<RecordedEvent>,
    /// True when the batch was shorter than asked: the reader has caught up
    /// with everything that is visible now.
    pub caught_up: bool,
}

/// The first event after a position, if any. Every statement over a range
/// of the log is ordered by the log's index: after five runs the server may
/// plan a prepared statement once for any parameters, and without the order
/// (an `EXISTS`, a bare `LIMIT`) that plan is a scan of the whole table from
/// its start (it expects a third of the rows to match), paid by every
/// caught-up subscriber each time it looks.
pub(crate) const HAS_EVENTS_AFTER: &str = "SELECT 1 FROM events
  WHERE (generation, tx_id, seq) > ($1, $2, $3) ORDER BY generation, tx_id, seq LIMIT 1";

/// How many events lie after a position, up to a limit.
pub(crate) const COUNT_AFTER: &str = "SELECT count(*) FROM (SELECT 1 FROM events
  WHERE (generation, tx_id, seq) > ($1, $2, $3) ORDER BY generation, tx_id, seq LIMIT $4) behind";

impl EventStore {
    /// Events of one stream with `version >= from_version`, in version order,
    /// at most `limit` of them. [`ReadError::StreamNotFound`] if the stream
    /// has never been appended to.
    pub async fn read_stream(
        &self,
        stream_id: Uuid,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, ReadError> {
        let events = self
            .read_stream_from(stream_id, from_version, limit)
            .await?;
        if events.is_empty() && self.stream_version(stream_id).await?.is_none() {
            return Err(ReadError::StreamNotFound(stream_id));
        }
        Ok(events)
    }

    /// Like [`EventStore::read_stream`], but an unknown stream is simply
    /// empty (one query: for callers that catch up from a known version).
    pub async fn read_stream_from(
        &self,
        stream_id: Uuid,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM events
              WHERE stream_id = $1 AND version >= $2
              ORDER BY version
              LIMIT $3"
        ))
        .bind(stream_id)
        .bind(i64::try_from(from_version).unwrap_or(i64::MAX))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(self.pool())
        .await?;
        let mut events = rows.iter().map(decode_row).collect::<Result<Vec<_>, _>>()?;
        self.open(&mut events).await?;
        Ok(events)
    }

    /// The current version of a stream, `None` if it does not exist.
    pub async fn stream_version(&self, stream_id: Uuid) -> Result<Option<u64>, StoreError> {
        let version: Option<i64> =
            sqlx::query_scalar("SELECT max(version) FROM events WHERE stream_id = $1")
                .bind(stream_id)
                .fetch_one(self.pool())
                .await?;
        Ok(version.map(i64::unsigned_abs))
    }

    /// Up to `limit` events after `after`, in the global order, never past an
    /// event whose transaction might still commit (see the crate documentation).
    pub async fn read_all_after(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<ReadBatch, StoreError> {
        use futures_util::TryStreamExt;

        // The upper bound is evaluated once per statement (InitPlans), and both
        // bounds are row comparisons on the index, so this is a range scan.
        // Rows are decoded as they arrive, overlapping with the server's work.
        let mut events: Vec<RecordedEvent> = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM events
              WHERE (generation, tx_id, seq) > ($1, $2, $3)
                AND (generation, tx_id) < ((SELECT max(generation) FROM store_generations),
                                           (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint))
              ORDER BY generation, tx_id, seq
              LIMIT $4"
        ))
        .bind(after.generation)
        .bind(after.tx_id)
        .bind(after.seq)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch(self.pool())
        .map_err(StoreError::from)
        .and_then(|row| std::future::ready(decode_row(&row)))
        .try_collect()
        .await?;
        self.open(&mut events).await?;
        Ok(ReadBatch {
            caught_up: events.len() < limit,
            events,
        })
    }

    /// Whether any committed event lies after `after`, readable or held back
    /// by an older open transaction. A reader that found nothing should look
    /// again soon when this is true: no notification tells it when the older
    /// transaction ends, and events that became readable since its read were
    /// notified before it looked. Checking only the held-back ones would miss
    /// the second case, when the older transaction ends between the two
    /// statements, and leave the reader waiting for a notification already
    /// spent.
    pub async fn has_events_after(&self, after: Position) -> Result<bool, StoreError> {
        let first: Option<i32> = sqlx::query_scalar(HAS_EVENTS_AFTER)
            .bind(after.generation)
            .bind(after.tx_id)
            .bind(after.seq)
            .fetch_optional(self.pool())
            .await?;
        Ok(first.is_some())
    }

    /// How many events lie after `after`, committed or not yet readable,
    /// counted up to `limit` (a gauge's lag, cheap however far behind).
    pub async fn count_after(&self, after: Position, limit: i64) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(COUNT_AFTER)
            .bind(after.generation)
            .bind(after.tx_id)
            .bind(after.seq)
            .bind(limit)
            .fetch_one(self.pool())
            .await?)
    }

    /// How many events lie after `after` and up to `upto` (a progress total).
    pub async fn count_between(&self, after: Position, upto: Position) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE (generation, tx_id, seq) > ($1, $2, $3)
                AND (generation, tx_id, seq) <= ($4, $5, $6)",
        )
        .bind(after.generation)
        .bind(after.tx_id)
        .bind(after.seq)
        .bind(upto.generation)
        .bind(upto.tx_id)
        .bind(upto.seq)
        .fetch_one(self.pool())
        .await?;
        Ok(n.unsigned_abs())
    }

    /// The position of the newest event that is safely readable now, or
    /// [`Position::START`] for an empty log. Projections compare their
    /// checkpoint with it to know their lag.
    pub async fn head_position(&self) -> Result<Position, StoreError> {
        let row = sqlx::query(
            "SELECT generation, tx_id, seq FROM events
              WHERE (generation, tx_id) < ((SELECT max(generation) FROM store_generations),
                                           (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint))
              ORDER BY generation DESC, tx_id DESC, seq DESC
              LIMIT 1",
        )
        .fetch_optional(self.pool())
        .await?;
        match row {
            None => Ok(Position::START),
            Some(row) => Ok(Position {
                generation: row.try_get(0)?,
                tx_id: row.try_get(1)?,
                seq: row.try_get(2)?,
            }),
        }
    }
}

/// Decodes a row selected with [`COLUMNS`], by position: this is the hot
/// path of replays and subscriptions, and name lookups cost more than the rest.
fn decode_row(row: &PgRow) -> Result<RecordedEvent, StoreError> {
    let version: i64 = row.try_get(1)?;
    let sqlx::types::Json(metadata): sqlx::types::Json<Metadata> = row
        .try_get(10)
        .map_err(|e| StoreError::Corrupt(format!("metadata: {e}")))?;
    Ok(RecordedEvent {
        position: Position {
            generation: row.try_get(2)?,
            tx_id: row.try_get(3)?,
            seq: row.try_get(4)?,
        },
        stream_id: row.try_get(0)?,
        stream_type: row.try_get(6)?,
        version: version.unsigned_abs(),
        event_id: row.try_get(5)?,
        event_type: row.try_get(7)?,
        schema_version: row.try_get(8)?,
        payload: row.try_get(9)?,
        metadata,
        recorded_at: row.try_get(11)?,
    })
}

#[cfg(test)]
mod tests {
    use sqlx::{Connection, PgPool};
    use uuid::Uuid;

    use super::{COUNT_AFTER, HAS_EVENTS_AFTER};
    use crate::{AppendRequest, EventStore, ExpectedVersion, Metadata, NewEvent, StoreOptions};

    /// The plan the server keeps for `sql` once it plans it for any
    /// parameters (what a prepared statement gets after five runs).
    async fn generic_plan(pool: &PgPool, sql: &str, parameters: &str) -> String {
        let mut conn = pool.acquire().await.expect("connection");
        let mut tx = conn.begin().await.expect("begin");
        for statement in [
            "SET LOCAL plan_cache_mode = force_generic_plan".to_string(),
            format!("PREPARE probe AS {sql}"),
        ] {
            sqlx::query(&statement)
                .execute(&mut *tx)
                .await
                .expect("prepare");
        }
        let lines: Vec<String> = sqlx::query_scalar(&format!(
            "EXPLAIN (FORMAT TEXT) EXECUTE probe({parameters})"
        ))
        .fetch_all(&mut *tx)
        .await
        .expect("explain");
        sqlx::query("DEALLOCATE probe")
            .execute(&mut *tx)
            .await
            .expect("deallocate");
        lines.join("\n")
    }

    /// Caught-up subscribers ask "anything after my position?" many times a
    /// second under load: it must be a probe of the log's index, not a scan
    /// of the log, also once the server plans it for any position.
    #[sqlx::test(migrations = "../migrations")]
    async fn range_checks_of_the_log_use_its_index_in_generic_plans(pool: PgPool) {
        let store = EventStore::connect(pool.clone(), StoreOptions::default())
            .await
            .expect("open store");
        for _ in 0..20 {
            let request = AppendRequest {
                stream_id: Uuid::now_v7(),
                stream_type: "test".into(),
                expected: ExpectedVersion::NoStream,
                events: (0..250)
                    .map(|_| NewEvent::new("thing_happened", 1, vec![0x80]))
                    .collect(),
                metadata: Metadata::default(),
            };
            store.append(&request).await.expect("append");
        }
        sqlx::query("ANALYZE events")
            .execute(&pool)
            .await
            .expect("analyze");
        for (sql, parameters) in [
            (HAS_EVENTS_AFTER, "1, 0, 0"),
            (COUNT_AFTER, "1, 0, 0, 1000"),
        ] {
            let plan = generic_plan(&pool, sql, parameters).await;
            assert!(
                plan.contains("events_global_order") && !plan.contains("Seq Scan"),
                "{sql}\n{plan}"
            );
        }
    }
}
