//! The history of how long after its append each event was applied, kept
//! per projection and minute in `projection_lag` for the query API's
//! `projection_lag` series (Prometheus has only the latest value).
//!
//! The projection's leader adds each applied batch here and writes what it
//! gathered every [`FLUSH_EVERY`], in a statement of its own: the figures
//! are a report about the batches, not part of them, so they never lengthen
//! the batch's transaction. A crash loses at most the last few seconds of
//! figures, never an event.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use eventstore::RecordedEvent;
use sqlx::PgConnection;

use crate::metrics::metrics;

/// How often gathered figures are written.
pub const FLUSH_EVERY: Duration = Duration::from_secs(2);
/// Minutes older than this are deleted by the writer.
pub const RETENTION_DAYS: i32 = 30;
const PRUNE_EVERY: Duration = Duration::from_secs(3_600);
const BACKLOG_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Minute {
    events: i64,
    lag_ms_sum: i64,
    lag_ms_max: i64,
}

/// Figures gathered since the last write, by minute of application.
#[derive(Debug)]
pub struct LagHistory {
    projection: &'static str,
    pending: BTreeMap<DateTime<Utc>, Minute>,
    last_prune: Option<Instant>,
    last_backlog: Option<Instant>,
}

impl LagHistory {
    pub fn new(projection: &'static str) -> LagHistory {
        LagHistory {
            projection,
            pending: BTreeMap::new(),
            last_prune: None,
            last_backlog: None,
        }
    }

    /// What the leader does after committing a batch it began at
    /// `started`: notes its lag and records its spans (see `batch_spans`).
    pub fn applied(&mut self, events: &[RecordedEvent], started: Instant) {
        self.record(events.iter().map(|e| e.recorded_at), Utc::now());
        crate::batch_spans::record(self.projection, events, started);
    }

    /// Notes events recorded at `recorded` and applied (committed) at
    /// `applied_at`, and sets the lag gauge to the newest one's.
    fn record(
        &mut self,
        recorded: impl IntoIterator<Item = DateTime<Utc>>,
        applied_at: DateTime<Utc>,
    ) {
        let minute = applied_at
            .duration_trunc(TimeDelta::minutes(1))
            .unwrap_or(applied_at);
        let mut gathered = Minute::default();
        let mut newest = None;
        for recorded_at in recorded {
            // A clock step between hosts can put recorded_at after now.
            let lag = (applied_at - recorded_at).num_milliseconds().max(0);
            gathered.events += 1;
            gathered.lag_ms_sum = gathered.lag_ms_sum.saturating_add(lag);
            gathered.lag_ms_max = gathered.lag_ms_max.max(lag);
            newest = Some(lag);
        }
        let Some(newest) = newest else { return };
        let entry = self.pending.entry(minute).or_default();
        entry.events += gathered.events;
        entry.lag_ms_sum = entry.lag_ms_sum.saturating_add(gathered.lag_ms_sum);
        entry.lag_ms_max = entry.lag_ms_max.max(gathered.lag_ms_max);
        metrics()
            .lag_seconds
            .with_label_values(&[self.projection])
            .set(newest as f64 / 1000.0);
    }

    /// Adds what was gathered to `projection_lag` (and deletes minutes past
    /// retention, hourly). The figures are kept for the next try if the
    /// write fails.
    async fn flush(&mut self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        if !self.pending.is_empty() {
            let (mut minutes, mut events, mut sums, mut maxes) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for (minute, m) in &self.pending {
                minutes.push(*minute);
                events.push(m.events);
                sums.push(m.lag_ms_sum);
                maxes.push(m.lag_ms_max);
            }
            sqlx::query(
                "INSERT INTO projection_lag AS l (projection, minute, events, lag_ms_sum, lag_ms_max)
                 SELECT $1, * FROM unnest($2::timestamptz[], $3::int8[], $4::int8[], $5::int8[])
                 ON CONFLICT (projection, minute) DO UPDATE
                    SET events = l.events + EXCLUDED.events,
                        lag_ms_sum = l.lag_ms_sum + EXCLUDED.lag_ms_sum,
                        lag_ms_max = greatest(l.lag_ms_max, EXCLUDED.lag_ms_max)",
            )
            .bind(self.projection)
            .bind(&minutes)
            .bind(&events)
            .bind(&sums)
            .bind(&maxes)
            .execute(&mut *conn)
            .await?;
            self.pending.clear();
        }
        if self.last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
            sqlx::query(
                "DELETE FROM projection_lag
                  WHERE projection = $1 AND minute < now() - make_interval(days => $2)",
            )
            .bind(self.projection)
            .bind(RETENTION_DAYS)
            .execute(&mut *conn)
            .await?;
            self.last_prune = Some(Instant::now());
        }
        Ok(())
    }

    /// What the leader does every [`FLUSH_EVERY`] at `position` (and once
    /// more when it stops): writes the figures and sets the backlog gauges.
    /// A report that fails is logged and tried again; it never stops the
    /// projection it reports on.
    pub async fn report(
        &mut self,
        conn: &mut PgConnection,
        store: &eventstore::EventStore,
        position: eventstore::Position,
    ) {
        let reported = match self.flush(conn).await {
            Ok(()) => self.gauge_backlog(store, position).await,
            Err(error) => Err(error.into()),
        };
        if let Err(error) = reported {
            tracing::warn!(projection = self.projection, %error,
                "cannot record the projection's lag figures; trying again");
        }
    }

    /// Every few seconds: the events in the log after `position` as the
    /// backlog gauge, and a lag gauge of zero once there are none (the gauge
    /// otherwise keeps the last batch's figure while the projection idles).
    async fn gauge_backlog(
        &mut self,
        store: &eventstore::EventStore,
        position: eventstore::Position,
    ) -> Result<(), eventstore::StoreError> {
        if self
            .last_backlog
            .is_some_and(|at| at.elapsed() < BACKLOG_EVERY)
        {
            return Ok(());
        }
        self.last_backlog = Some(Instant::now());
        let behind = store.count_after(position, 1_000_000).await?;
        let m = metrics();
        m.lag_events
            .with_label_values(&[self.projection])
            .set(behind);
        if behind == 0 {
            m.lag_seconds.with_label_values(&[self.projection]).set(0.0);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_counts_each_event_once_by_the_minute_it_was_applied() {
        let at = |s: &str| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .expect("time")
        };
        let mut history = LagHistory::new("relational");
        let applied = at("2026-12-06T10:00:59.500Z");
        history.record(
            [
                at("2026-12-06T10:00:59.000Z"),
                at("2026-12-06T10:00:59.400Z"),
                // recorded "after" it was applied: a clock step, counted as 0
                at("2026-12-06T10:01:00.000Z"),
            ],
            applied,
        );
        history.record(
            [at("2026-12-06T10:00:58.000Z")],
            at("2026-12-06T10:01:00.250Z"),
        );
        let minutes: Vec<_> = history.pending.iter().map(|(m, f)| (*m, *f)).collect();
        assert_eq!(
            minutes,
            [
                (
                    at("2026-12-06T10:00:00Z"),
                    Minute {
                        events: 3,
                        lag_ms_sum: 600,
                        lag_ms_max: 500
                    }
                ),
                (
                    at("2026-12-06T10:01:00Z"),
                    Minute {
                        events: 1,
                        lag_ms_sum: 2_250,
                        lag_ms_max: 2_250
                    }
                ),
            ]
        );
    }
}
