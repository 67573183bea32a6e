//! `GET /v1/dashboard/summary`: the views, counted as the caller may see
//! them (row-level security makes a plain user's counts their own).

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::db::LAG_MS_SQL;
use crate::problem::ApiResult;
use crate::request::{Caller, ReadConsistency};
use crate::state::{Answer, AppState, Cached};

#[derive(Debug, Serialize, ToSchema)]
pub struct Summary {
    pub active_sessions: i64,
    pub open_incidents: Vec<SeverityCount>,
    pub running_executions: i64,
    pub active_steps: ActiveSteps,
    pub today: Usage,
    pub last_7_days: Usage,
    pub projections: Vec<ProjectionLag>,
}

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct SeverityCount {
    pub severity: String,
    pub open_count: i64,
    pub unassigned: i64,
    pub oldest_opened_at: Option<DateTime<Utc>>,
}

/// Workflow steps in flight: running now, waiting to retry, and when the
/// oldest of them started (a stuck step shows up here first).
#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct ActiveSteps {
    pub running: i64,
    pub retrying: i64,
    pub oldest_started_at: Option<DateTime<Utc>>,
}

/// The statement behind [`ActiveSteps`], on `steps_status_started`.
pub const ACTIVE_STEPS_SQL: &str = "SELECT count(*) FILTER (WHERE status = 'running') AS running,
        count(*) FILTER (WHERE status = 'retrying') AS retrying,
        min(started_at) AS oldest_started_at
   FROM read_model.step_executions
  WHERE status IN ('running', 'retrying')";

/// Conversations started, messages written, their tokens and cost.
#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct Usage {
    pub conversations: i64,
    pub messages: i64,
    pub tokens: i64,
    pub cost_usd: f64,
}

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct ProjectionLag {
    pub name: String,
    /// The checkpoint: the position of the last event applied.
    pub position: String,
    /// Events in the log after the checkpoint (counted up to 10,000).
    pub events_behind: i64,
    /// Age of the oldest event not yet applied; 0 when caught up.
    pub lag_ms: i64,
}

/// The dashboard's figures.
#[utoipa::path(get, path = "/v1/dashboard/summary", tag = "dashboard",
    responses((status = 200, body = Summary)))]
pub async fn summary(
    State(state): State<AppState>,
    caller: Caller,
    ReadConsistency(consistency): ReadConsistency,
) -> ApiResult<Answer> {
    let spec = caller.cache_spec(
        ["session", "incident", "execution", "conversation"]
            .iter()
            .map(|t| format!("{t}:all"))
            .collect(),
    );
    let mut read = match state.cached_or_read(&spec, &caller, consistency).await? {
        Cached::Miss(read) => read,
        Cached::Hit(hit) => return Ok(hit),
    };
    let tx = &mut *read.tx;
    let active_sessions: i64 =
        sqlx::query_scalar("SELECT count(*) FROM read_model.active_sessions")
            .fetch_one(&mut *tx)
            .await?;
    let open_incidents: Vec<SeverityCount> = sqlx::query_as(
        "SELECT severity::text AS severity, open_count, unassigned, oldest_opened_at
           FROM read_model.open_incidents_by_severity ORDER BY severity",
    )
    .fetch_all(&mut *tx)
    .await?;
    let running_executions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM read_model.workflow_executions WHERE status IN ('pending', 'running')",
    )
    .fetch_one(&mut *tx)
    .await?;
    let active_steps: ActiveSteps = sqlx::query_as(ACTIVE_STEPS_SQL).fetch_one(&mut *tx).await?;
    let usage = |interval: &'static str| {
        format!(
            "SELECT (SELECT count(*) FROM read_model.conversations WHERE created_at >= {interval}) AS conversations,
                    count(*) AS messages,
                    coalesce(sum(tokens_in + tokens_out), 0)::int8 AS tokens,
                    coalesce(sum(cost_usd), 0)::float8 AS cost_usd
               FROM read_model.messages WHERE created_at >= {interval}"
        )
    };
    let today: Usage = sqlx::query_as(&usage(
        "date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'",
    ))
    .fetch_one(&mut *tx)
    .await?;
    let last_7_days: Usage = sqlx::query_as(&usage("now() - interval '7 days'"))
        .fetch_one(&mut *tx)
        .await?;
    let projections: Vec<ProjectionLag> = sqlx::query_as(&format!(
        "SELECT c.name, c.generation || '.' || c.tx_id || '.' || c.seq AS position,
                (SELECT count(*) FROM (SELECT 1 FROM events e
                   WHERE (e.generation, e.tx_id, e.seq) > (c.generation, c.tx_id, c.seq)
                   ORDER BY e.generation, e.tx_id, e.seq LIMIT 10000) AS behind) AS events_behind,
                {LAG_MS_SQL} AS lag_ms
           FROM projection_checkpoints c
          ORDER BY c.name"
    ))
    .fetch_all(&mut *tx)
    .await?;
    read.tx.commit().await?;
    let summary = Summary {
        active_sessions,
        open_incidents,
        running_executions,
        active_steps,
        today,
        last_7_days,
        projections,
    };
    state.answer(Some(&spec), read.position, &summary).await
}
