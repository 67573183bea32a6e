//! The log itself: `GET /v1/streams/{id}/events` (admin) and
//! `GET /v1/commands/{command_id}`.

use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::db::Source;
use crate::problem::{ApiError, ApiResult};
use crate::request::{page, path_id, Caller, Params, ReadConsistency, Seq};
use crate::state::{Answer, AppState, Page};

/// A stored event, its MessagePack payload decoded to JSON.
#[derive(Debug, Serialize, ToSchema)]
pub struct StoredEvent {
    pub event_id: Uuid,
    pub stream_id: Uuid,
    pub stream_type: String,
    pub version: i64,
    pub event_type: String,
    pub schema_version: i32,
    /// The global position (`generation.tx_id.seq`), usable as `X-Min-Position`.
    pub position: String,
    pub recorded_at: DateTime<Utc>,
    pub payload: serde_json::Value,
    /// Command, correlation and causation ids, the actor, the client.
    pub metadata: serde_json::Value,
}

/// A stored event's facts as JSON with its secrets (credential hashes, MFA
/// seeds) redacted; `null` if this build cannot decode it (its raw bytes
/// are not shown: they could hold secrets).
pub fn payload_json(stored: domain::any_event::Stored<'_>) -> serde_json::Value {
    domain::any_event::decode(stored)
        .ok()
        .and_then(|event| event.json_without_secrets().ok())
        .unwrap_or(serde_json::Value::Null)
}

/// A payload that cannot be opened is the operator's matter (a master key
/// missing), not the caller's.
fn keys_error(error: eventstore::StoreError) -> ApiError {
    ApiError::unavailable("the data keys", error)
}

type EventRow = (
    Uuid,
    Uuid,
    String,
    i64,
    String,
    i32,
    i32,
    i64,
    i64,
    DateTime<Utc>,
    Vec<u8>,
    serde_json::Value,
);

/// The raw history of one aggregate, oldest first (admin).
#[utoipa::path(get, path = "/v1/streams/{id}/events", tag = "log",
    params(("id" = Uuid, Path, description = "aggregate (stream) id"),
           ("limit" = Option<i64>, Query, minimum = 1, maximum = 200),
           ("cursor" = Option<String>, Query)),
    responses((status = 200, body = Page<StoredEvent>)))]
pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    ReadConsistency(consistency): ReadConsistency,
    Path(id): Path<String>,
    params: Params,
) -> ApiResult<Answer> {
    let id = path_id(&id, "id")?;
    if !caller.admin {
        return Err(ApiError::Forbidden);
    }
    params.only(&["limit", "cursor"])?;
    let limit = params.limit()?;
    let after: Option<Seq> = params.cursor()?;
    let mut read = state
        .db
        .read(Some(&caller.principal), Source::Relational, consistency)
        .await?;
    let rows: Vec<EventRow> = sqlx::query_as(
        "SELECT event_id, stream_id, stream_type, version, event_type, schema_version,
                generation, tx_id, seq, recorded_at, payload, metadata
           FROM events
          WHERE stream_id = $1 AND version > $2
          ORDER BY version
          LIMIT $3",
    )
    .bind(id)
    .bind(after.map_or(0, |s| s.0))
    .bind(limit + 1)
    .fetch_all(&mut *read.tx)
    .await?;
    read.tx.commit().await?;
    if rows.is_empty() && after.is_none() {
        return Err(ApiError::NotFound("stream"));
    }
    let (mut rows, next_cursor) = page(rows, limit, |r| Seq(r.3));
    if let Some(keys) = &state.data_keys {
        for row in &mut rows {
            keys.open_payload(&mut row.10).await.map_err(keys_error)?;
            keys.open_json(&mut row.11).await.map_err(keys_error)?;
        }
    }
    let items = rows
        .into_iter()
        .map(
            |(
                event_id,
                stream_id,
                stream_type,
                version,
                event_type,
                schema_version,
                generation,
                tx_id,
                seq,
                recorded_at,
                payload,
                metadata,
            )| {
                let payload = payload_json(domain::any_event::Stored {
                    stream_type: &stream_type,
                    event_type: &event_type,
                    schema_version,
                    payload: &payload,
                });
                StoredEvent {
                    event_id,
                    stream_id,
                    stream_type,
                    version,
                    event_type,
                    schema_version,
                    position: format!("{generation}.{tx_id}.{seq}"),
                    recorded_at,
                    payload,
                    metadata,
                }
            },
        )
        .collect();
    state
        .answer(None, read.position, &Page { items, next_cursor })
        .await
}

/// The stored result of a command, as the command service answered it
/// (`replayed: true`). Plain users see only the commands they sent.
#[utoipa::path(get, path = "/v1/commands/{command_id}", tag = "log",
    params(("command_id" = Uuid, Path)),
    responses((status = 200, description = "the command's result (the NATS result envelope)", body = Object)))]
pub async fn command(
    State(state): State<AppState>,
    caller: Caller,
    ReadConsistency(consistency): ReadConsistency,
    Path(command_id): Path<String>,
) -> ApiResult<Answer> {
    let command_id = path_id(&command_id, "command_id")?;
    let mut read = state
        .db
        .read(Some(&caller.principal), Source::Relational, consistency)
        .await?;
    let found: Option<(serde_json::Value, Option<String>)> = sqlx::query_as(
        "SELECT o.result,
                coalesce((SELECT r.actor FROM command_results r WHERE r.command_id = $1),
                         (SELECT e.metadata->>'actor' FROM events e WHERE e.command_id = $1))
           FROM command_outcomes o
          WHERE o.command_id = $1",
    )
    .bind(command_id)
    .fetch_optional(&mut *read.tx)
    .await?;
    read.tx.commit().await?;
    let caller_id = caller.user_id.to_string();
    match found {
        Some((result, actor)) if caller.admin || actor.as_deref() == Some(caller_id.as_str()) => {
            state.answer(None, read.position, &result).await
        }
        _ => Err(ApiError::NotFound("command")),
    }
}
