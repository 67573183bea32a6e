//! `GET /v1/audit` (admin): the audit projection.

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::db::Source;
use crate::problem::{ApiError, ApiResult};
use crate::request::{Caller, Params, ReadConsistency, TimeId};
use crate::state::{Answer, AppState, Page};

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct AuditRow {
    /// The event's id.
    pub id: Uuid,
    pub occurred_at: DateTime<Utc>,
    /// A user id, `bootstrap` or `system`.
    pub actor: Option<String>,
    pub actor_user_id: Option<Uuid>,
    /// The event type.
    pub action: String,
    pub resource_type: String,
    pub resource_id: Uuid,
    pub version: i64,
    pub before: Option<serde_json::Value>,
    /// The event's facts, personal data redacted.
    pub after: serde_json::Value,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    pub correlation_id: Option<Uuid>,
    pub command_id: Option<Uuid>,
}

/// Audit rows, newest first (admin).
#[utoipa::path(get, path = "/v1/audit", tag = "log",
    params(("actor_id" = Option<Uuid>, Query, description = "the acting user"),
           ("resource_type" = Option<String>, Query, description = "a stream type: user, session, conversation, workflow, execution, incident, runbook, knowledge"),
           ("resource_id" = Option<Uuid>, Query),
           ("action" = Option<String>, Query, description = "an event type, e.g. incident_opened"),
           ("from" = Option<DateTime<Utc>>, Query, description = "occurred at or after (RFC 3339)"),
           ("to" = Option<DateTime<Utc>>, Query, description = "occurred before (RFC 3339)"),
           ("limit" = Option<i64>, Query, minimum = 1, maximum = 200),
           ("cursor" = Option<String>, Query)),
    responses((status = 200, body = Page<AuditRow>)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ReadConsistency(consistency): ReadConsistency,
    params: Params,
) -> ApiResult<Answer> {
    if !caller.admin {
        return Err(ApiError::Forbidden);
    }
    params.only(&[
        "actor_id",
        "resource_type",
        "resource_id",
        "action",
        "from",
        "to",
        "limit",
        "cursor",
    ])?;
    let actor = params.uuid("actor_id")?;
    let resource_type = params.one_of(
        "resource_type",
        &[
            "user",
            "session",
            "conversation",
            "workflow",
            "execution",
            "incident",
            "runbook",
            "knowledge",
        ],
    )?;
    let resource_id = params.uuid("resource_id")?;
    let action = params.text("action")?;
    let from = params.time("from")?;
    let to = params.time("to")?;
    if let (Some(from), Some(to)) = (from, to) {
        if from > to {
            return Err(ApiError::bad("from", "`from` is after `to`"));
        }
    }
    let limit = params.limit()?;
    let after: Option<TimeId> = params.cursor()?;
    let mut read = state
        .db
        .read(Some(&caller.principal), Source::Audit, consistency)
        .await?;
    let rows: Vec<AuditRow> = sqlx::query_as(
        "SELECT id, occurred_at, actor, actor_user_id, action, resource_type, resource_id, version,
                before, after, ip_address, user_agent, correlation_id, command_id
           FROM audit.audit_logs
          WHERE ($1::uuid IS NULL OR actor_user_id = $1)
            AND ($2::text IS NULL OR resource_type = $2)
            AND ($3::uuid IS NULL OR resource_id = $3)
            AND ($4::text IS NULL OR action = $4)
            AND ($5::timestamptz IS NULL OR occurred_at >= $5)
            AND ($6::timestamptz IS NULL OR occurred_at < $6)
            AND ($7::timestamptz IS NULL OR (occurred_at, id) < ($7, $8))
          ORDER BY occurred_at DESC, id DESC
          LIMIT $9",
    )
    .bind(actor)
    .bind(resource_type)
    .bind(resource_id)
    .bind(action)
    .bind(from)
    .bind(to)
    .bind(after.map(|k| k.0))
    .bind(after.map(|k| k.1))
    .bind(limit + 1)
    .fetch_all(&mut *read.tx)
    .await?;
    state
        .page(read, rows, limit, |r| TimeId(r.occurred_at, r.id), None)
        .await
}
