//! `GET /v1/incidents`, `/v1/incidents/{id}` (with its timeline),
//! `/v1/runbooks`, `/v1/runbooks/{id}`.

use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use eventstore::Position;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::problem::{ApiError, ApiResult};
use crate::request::{path_id, Caller, Params, ReadConsistency, TimeId};
use crate::state::{Answer, AppState, Cached, Page};

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct Incident {
    pub id: Uuid,
    pub title: String,
    pub description: String,
    /// `critical`, `high`, `medium` or `low`.
    pub severity: String,
    /// `open`, `investigating`, `mitigated`, `resolved` or `closed`.
    pub status: String,
    pub affected_services: Vec<String>,
    pub blast_radius: Option<String>,
    pub opened_by: Option<Uuid>,
    pub assignee_id: Option<Uuid>,
    pub note_count: i32,
    pub mitigation_summary: Option<String>,
    pub root_cause: Option<String>,
    pub remediation_steps: Option<Vec<String>>,
    pub reopen_count: i32,
    pub opened_at: DateTime<Utc>,
    pub mitigated_at: Option<DateTime<Utc>>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub closed_at: Option<DateTime<Utc>>,
    pub time_to_mitigate_ms: Option<i64>,
    pub time_to_resolve_ms: Option<i64>,
    pub updated_at: DateTime<Utc>,
    /// Every event of the incident, oldest first (only on `GET /v1/incidents/{id}`).
    #[sqlx(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeline: Option<Vec<TimelineEntry>>,
}

/// One thing that happened to an incident.
#[derive(Debug, Serialize, ToSchema)]
pub struct TimelineEntry {
    pub at: DateTime<Utc>,
    pub version: i64,
    /// The event type, e.g. `incident.assigned`.
    pub event_type: String,
    /// Who did it: a user id, `bootstrap` or `system`.
    pub actor: Option<String>,
    /// The event's fields.
    pub details: serde_json::Value,
}

const INCIDENT_COLUMNS: &str = "id, title, description, severity::text AS severity, status::text AS status,
    affected_services, blast_radius, opened_by, assignee_id, note_count, mitigation_summary, root_cause,
    remediation_steps, reopen_count, opened_at, mitigated_at, resolved_at, closed_at,
    time_to_mitigate_ms, time_to_resolve_ms, updated_at";

/// Incidents, newest first.
#[utoipa::path(get, path = "/v1/incidents", tag = "incidents",
    params(("status" = Option<String>, Query, description = "open | investigating | mitigated | resolved | closed"),
           ("severity" = Option<String>, Query, description = "critical | high | medium | low"),
           ("service" = Option<String>, Query, description = "only incidents affecting this service"),
           ("limit" = Option<i64>, Query, minimum = 1, maximum = 200),
           ("cursor" = Option<String>, Query)),
    responses((status = 200, body = Page<Incident>)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ReadConsistency(consistency): ReadConsistency,
    params: Params,
) -> ApiResult<Answer> {
    params.only(&["status", "severity", "service", "limit", "cursor"])?;
    let status = params.one_of(
        "status",
        &["open", "investigating", "mitigated", "resolved", "closed"],
    )?;
    let severity = params.one_of("severity", &["critical", "high", "medium", "low"])?;
    let service = params.text("service")?;
    let limit = params.limit()?;
    let after: Option<TimeId> = params.cursor()?;
    let spec = caller.cache_spec(vec!["incident:all".into()]);
    let mut read = match state.cached_or_read(&spec, &caller, consistency).await? {
        Cached::Miss(read) => read,
        Cached::Hit(hit) => return Ok(hit),
    };
    let rows: Vec<Incident> = sqlx::query_as(&format!(
        "SELECT {INCIDENT_COLUMNS} FROM read_model.incidents
          WHERE ($1::text IS NULL OR status::text = $1)
            AND ($2::text IS NULL OR severity::text = $2)
            AND ($3::text IS NULL OR affected_services @> ARRAY[$3])
            AND ($4::timestamptz IS NULL OR (opened_at, id) < ($4, $5))
          ORDER BY opened_at DESC, id DESC
          LIMIT $6"
    ))
    .bind(status)
    .bind(severity)
    .bind(service)
    .bind(after.map(|k| k.0))
    .bind(after.map(|k| k.1))
    .bind(limit + 1)
    .fetch_all(&mut *read.tx)
    .await?;
    state
        .page(
            read,
            rows,
            limit,
            |i| TimeId(i.opened_at, i.id),
            Some(&spec),
        )
        .await
}

/// One incident with its timeline.
#[utoipa::path(get, path = "/v1/incidents/{id}", tag = "incidents",
    params(("id" = Uuid, Path)), responses((status = 200, body = Incident)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    ReadConsistency(consistency): ReadConsistency,
    Path(id): Path<String>,
) -> ApiResult<Answer> {
    let id = path_id(&id, "id")?;
    let spec = caller.cache_spec(vec![format!("incident:{id}")]);
    let mut read = match state.cached_or_read(&spec, &caller, consistency).await? {
        Cached::Miss(read) => read,
        Cached::Hit(hit) => return Ok(hit),
    };
    let found: Option<Incident> = sqlx::query_as(&format!(
        "SELECT {INCIDENT_COLUMNS} FROM read_model.incidents WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut *read.tx)
    .await?;
    let mut incident = found.ok_or(ApiError::NotFound("incident"))?;
    incident.timeline = Some(timeline(&mut read.tx, id, read.position).await?);
    read.tx.commit().await?;
    state.answer(Some(&spec), read.position, &incident).await
}

type TimelineRow = (DateTime<Utc>, i64, String, i32, Option<String>, Vec<u8>);

/// The incident's events up to `position` (the rows' position), so the
/// timeline never shows what the row does not yet reflect.
async fn timeline(
    tx: &mut sqlx::PgConnection,
    id: Uuid,
    position: Position,
) -> ApiResult<Vec<TimelineEntry>> {
    let rows: Vec<TimelineRow> = sqlx::query_as(
        "SELECT recorded_at, version, event_type, schema_version, metadata->>'actor', payload
           FROM events
          WHERE stream_id = $1 AND (generation, tx_id, seq) <= ($2, $3, $4)
          ORDER BY version",
    )
    .bind(id)
    .bind(position.generation)
    .bind(position.tx_id)
    .bind(position.seq)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(at, version, event_type, schema_version, actor, payload)| TimelineEntry {
                at,
                version,
                details: crate::routes::streams::payload_json(domain::any_event::Stored {
                    stream_type: <domain::incident::Incident as domain::Aggregate>::STREAM_TYPE,
                    event_type: &event_type,
                    schema_version,
                    payload: &payload,
                }),
                event_type,
                actor,
            },
        )
        .collect())
}

/// A runbook with how often it ran and how often that went well.
#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct Runbook {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub trigger_conditions: serde_json::Value,
    pub steps: Vec<String>,
    pub tags: Vec<String>,
    pub version: i32,
    pub execution_count: i64,
    pub success_count: i64,
    /// Percent of executions that succeeded; null before the first.
    pub success_rate: Option<f64>,
    pub average_duration_ms: Option<f64>,
    pub last_executed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub archived_at: Option<DateTime<Utc>>,
}

const RUNBOOK_COLUMNS: &str = "id, name, description, trigger_conditions, steps, tags, version,
    execution_count, success_count, success_rate::float8 AS success_rate,
    CASE WHEN execution_count = 0 THEN NULL
         ELSE total_duration_ms::float8 / execution_count END AS average_duration_ms,
    last_executed_at, created_at, updated_at, archived_at";

/// Runbooks, newest first.
#[utoipa::path(get, path = "/v1/runbooks", tag = "incidents",
    params(("tag" = Option<String>, Query),
           ("limit" = Option<i64>, Query, minimum = 1, maximum = 200),
           ("cursor" = Option<String>, Query)),
    responses((status = 200, body = Page<Runbook>)))]
pub async fn list_runbooks(
    State(state): State<AppState>,
    caller: Caller,
    ReadConsistency(consistency): ReadConsistency,
    params: Params,
) -> ApiResult<Answer> {
    params.only(&["tag", "limit", "cursor"])?;
    let tag = params.text("tag")?;
    let limit = params.limit()?;
    let after: Option<TimeId> = params.cursor()?;
    let spec = caller.cache_spec(vec!["runbook:all".into()]);
    let mut read = match state.cached_or_read(&spec, &caller, consistency).await? {
        Cached::Miss(read) => read,
        Cached::Hit(hit) => return Ok(hit),
    };
    let rows: Vec<Runbook> = sqlx::query_as(&format!(
        "SELECT {RUNBOOK_COLUMNS} FROM read_model.runbooks
          WHERE ($1::text IS NULL OR tags @> ARRAY[$1])
            AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
          ORDER BY created_at DESC, id DESC
          LIMIT $4"
    ))
    .bind(tag)
    .bind(after.map(|k| k.0))
    .bind(after.map(|k| k.1))
    .bind(limit + 1)
    .fetch_all(&mut *read.tx)
    .await?;
    state
        .page(
            read,
            rows,
            limit,
            |r| TimeId(r.created_at, r.id),
            Some(&spec),
        )
        .await
}

/// One runbook.
#[utoipa::path(get, path = "/v1/runbooks/{id}", tag = "incidents",
    params(("id" = Uuid, Path)), responses((status = 200, body = Runbook)))]
pub async fn get_runbook(
    State(state): State<AppState>,
    caller: Caller,
    ReadConsistency(consistency): ReadConsistency,
    Path(id): Path<String>,
) -> ApiResult<Answer> {
    let id = path_id(&id, "id")?;
    let sql = format!("SELECT {RUNBOOK_COLUMNS} FROM read_model.runbooks WHERE id = $1");
    state
        .one::<Runbook>(&caller, consistency, "runbook", id, &sql)
        .await
}
