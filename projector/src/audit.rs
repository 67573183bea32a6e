//! The audit projection: one row per event in the partitioned, append-only
//! `audit_logs`, with the event's facts (personal data redacted), what it
//! says was there before, who did it, from where and in which correlation.

use std::collections::BTreeSet;

use chrono::{DateTime, Datelike, Months, NaiveDate, Utc};
use eventstore::RecordedEvent;
use serde_json::{Map, Value as Json};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::changes::copy_rows;
use crate::events::DomainEvent;
use crate::table::Value;
use crate::tables::AUDIT_LOGS;
use crate::ProjectionError;
use domain::user;

/// Months of audit log kept; older partitions are dropped.
pub const RETENTION_MONTHS: u32 = 12;

#[derive(Default)]
pub struct Audit {
    /// Months whose partition is known to exist in the schema written to.
    partitions: BTreeSet<NaiveDate>,
}

/// The first day of the oldest month kept at `now`.
pub fn retention_start(now: DateTime<Utc>) -> NaiveDate {
    let this_month = first_of_month(now);
    this_month
        .checked_sub_months(Months::new(RETENTION_MONTHS - 1))
        .unwrap_or(this_month)
}

fn first_of_month(at: DateTime<Utc>) -> NaiveDate {
    NaiveDate::from_ymd_opt(at.year(), at.month(), 1).unwrap_or(NaiveDate::MIN)
}

impl Audit {
    pub fn reset(&mut self) {
        self.partitions.clear();
    }

    /// Writes the audit rows of `events` into `schema`. Events older than
    /// the retention are not written: their month would be dropped anyway,
    /// and a rebuild must equal the live, pruned log.
    pub async fn apply(
        &mut self,
        conn: &mut PgConnection,
        schema: &str,
        events: &[(&RecordedEvent, DomainEvent)],
        now: DateTime<Utc>,
    ) -> Result<(), ProjectionError> {
        let keep_from = retention_start(now);
        let mut rows = Vec::with_capacity(events.len());
        let mut months = BTreeSet::new();
        for (index, (recorded, event)) in events.iter().enumerate() {
            let month = first_of_month(recorded.recorded_at);
            if month < keep_from {
                continue;
            }
            months.insert(month);
            let row = audit_row(recorded, event)
                .map_err(|reason| ProjectionError::Poison { index, reason })?;
            rows.push(row);
        }
        for month in months {
            if self.partitions.contains(&month) {
                continue;
            }
            sqlx::query("SELECT audit_ensure_partition($1, $2)")
                .bind(schema)
                .bind(month)
                .execute(&mut *conn)
                .await?;
            self.partitions.insert(month);
        }
        if !rows.is_empty() {
            copy_rows(conn, schema, &AUDIT_LOGS, rows).await?;
        }
        let forgotten: Vec<Uuid> = events
            .iter()
            .filter(|(_, e)| matches!(e, DomainEvent::User(user::Event::Forgotten(_))))
            .map(|(recorded, _)| recorded.stream_id)
            .collect();
        if !forgotten.is_empty() {
            erase_addresses(conn, schema, &forgotten).await?;
        }
        Ok(())
    }
}

/// The addresses and programs the audit log recorded for actions of users
/// now forgotten: erased (the one change the log allows, migration 0015),
/// as a rebuild shows them once their key is destroyed.
async fn erase_addresses(
    conn: &mut PgConnection,
    schema: &str,
    users: &[Uuid],
) -> Result<(), ProjectionError> {
    sqlx::query(&format!(
        "UPDATE \"{schema}\".audit_logs SET ip_address = NULL, user_agent = NULL
          WHERE actor_user_id = ANY($1) AND (ip_address IS NOT NULL OR user_agent IS NOT NULL)"
    ))
    .bind(users)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

fn audit_row(recorded: &RecordedEvent, event: &DomainEvent) -> Result<Vec<Value>, String> {
    let facts = event
        .redacted_json()
        .map_err(|e| format!("cannot serialise the event's facts: {e}"))?;
    let (before, after) = split_before_after(facts);
    let meta = &recorded.metadata;
    let t = &AUDIT_LOGS;
    let mut row = t.new_row(recorded.event_id);
    row[t.index("occurred_at")] = Value::Ts(recorded.recorded_at);
    row[t.index("actor")] = Value::opt_text(meta.actor.as_deref());
    row[t.index("actor_user_id")] =
        Value::opt_uuid(meta.actor.as_deref().and_then(|a| Uuid::parse_str(a).ok()));
    row[t.index("action")] = Value::Text(recorded.event_type.clone());
    row[t.index("resource_type")] = Value::Text(recorded.stream_type.clone());
    row[t.index("resource_id")] = Value::Uuid(recorded.stream_id);
    row[t.index("version")] = Value::big(recorded.version);
    row[t.index("before")] = before.map_or(Value::Null, |b| Value::json(&b));
    row[t.index("after")] = Value::json(&after);
    row[t.index("ip_address")] = Value::opt_text(meta.ip.as_deref());
    row[t.index("user_agent")] = Value::opt_text(meta.user_agent.as_deref());
    row[t.index("correlation_id")] = Value::opt_uuid(meta.correlation_id);
    row[t.index("command_id")] = Value::opt_uuid(meta.command_id);
    Ok(row)
}

/// Splits an event's facts into what it says was there before (`from`,
/// `previous_*`, `*_before`) and the rest. Embeddings are summarised by
/// their dimension: an audit row records that a vector changed, not the
/// vector.
fn split_before_after(facts: Json) -> (Option<Json>, Json) {
    let Json::Object(fields) = facts else {
        return (None, facts);
    };
    let mut before = Map::new();
    let mut after = Map::new();
    for (key, value) in fields {
        let value = match (key.as_str(), value) {
            ("embedding", Json::Array(values)) => {
                serde_json::json!({ "dimensions": values.len() })
            }
            (_, value) => value,
        };
        if key == "from" || key.starts_with("previous_") || key.ends_with("_before") {
            before.insert(key, value);
        } else {
            after.insert(key, value);
        }
    }
    let before = (!before.is_empty()).then_some(Json::Object(before));
    (before, Json::Object(after))
}
