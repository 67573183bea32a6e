//! Workflow definitions and their runs: `GET /v1/workflows`,
//! `/v1/workflows/{id}`, `/v1/executions`, `/v1/executions/{id}`.

use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::problem::{ApiError, ApiResult};
use crate::request::{page, path_id, Caller, Params, ReadConsistency, TimeId};
use crate::state::{Answer, AppState, Cached, Page};

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct Workflow {
    pub id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub definition: serde_json::Value,
    pub triggers: Option<serde_json::Value>,
    pub parameters: Option<serde_json::Value>,
    pub tags: Vec<String>,
    /// Environment variables of the workflow's runs (not secrets).
    pub environment: serde_json::Value,
    pub version: i32,
    pub max_retries: i32,
    /// `draft`, `active`, `inactive` or `deleted`.
    pub status: String,
    pub created_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
}

const WORKFLOW_COLUMNS: &str =
    "id, name, description, definition, triggers, parameters, tags, environment, version,
    max_retries, status::text AS status, created_by, created_at, updated_at, deleted_at";

/// Workflow definitions, newest first.
#[utoipa::path(get, path = "/v1/workflows", tag = "workflows",
    params(("status" = Option<String>, Query, description = "draft | active | inactive | deleted"),
           ("tag" = Option<String>, Query),
           ("limit" = Option<i64>, Query, minimum = 1, maximum = 200),
           ("cursor" = Option<String>, Query)),
    responses((status = 200, body = Page<Workflow>)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ReadConsistency(consistency): ReadConsistency,
    params: Params,
) -> ApiResult<Answer> {
    params.only(&["status", "tag", "limit", "cursor"])?;
    let status = params.one_of("status", &["draft", "active", "inactive", "deleted"])?;
    let tag = params.text("tag")?;
    let limit = params.limit()?;
    let after: Option<TimeId> = params.cursor()?;
    let spec = caller.cache_spec(vec!["workflow:all".into()]);
    let mut read = match state.cached_or_read(&spec, &caller, consistency).await? {
        Cached::Miss(read) => read,
        Cached::Hit(hit) => return Ok(hit),
    };
    let rows: Vec<Workflow> = sqlx::query_as(&format!(
        "SELECT {WORKFLOW_COLUMNS} FROM read_model.workflows
          WHERE ($1::text IS NULL OR status::text = $1)
            AND ($2::text IS NULL OR tags @> ARRAY[$2])
            AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4))
          ORDER BY created_at DESC, id DESC
          LIMIT $5"
    ))
    .bind(status)
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
            |w| TimeId(w.created_at, w.id),
            Some(&spec),
        )
        .await
}

/// One workflow definition (its current version).
#[utoipa::path(get, path = "/v1/workflows/{id}", tag = "workflows",
    params(("id" = Uuid, Path)), responses((status = 200, body = Workflow)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    ReadConsistency(consistency): ReadConsistency,
    Path(id): Path<String>,
) -> ApiResult<Answer> {
    let id = path_id(&id, "id")?;
    let sql = format!("SELECT {WORKFLOW_COLUMNS} FROM read_model.workflows WHERE id = $1");
    state
        .one::<Workflow>(&caller, consistency, "workflow", id, &sql)
        .await
}

/// A workflow run with its steps.
#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct Execution {
    pub id: Uuid,
    pub workflow_id: Uuid,
    /// The workflow's name (none when the caller may not see the workflow).
    pub workflow_name: Option<String>,
    pub workflow_version: i32,
    /// `pending`, `running`, `succeeded`, `failed` or `cancelled`.
    pub status: String,
    pub trigger_source: String,
    pub inputs: Option<serde_json::Value>,
    pub outputs: Option<serde_json::Value>,
    pub error: Option<String>,
    pub priority: i16,
    pub max_retries: i32,
    pub started_by: Option<Uuid>,
    /// Steps started (each once, however often it was retried).
    pub steps_total: i32,
    /// Steps the workflow's definition lists (`definition.steps`), when the
    /// run is of the workflow's current version: "N of M" before every step
    /// has started.
    pub steps_planned: Option<i32>,
    pub steps_succeeded: i32,
    /// Steps whose latest attempt failed (a retried step is not counted).
    pub steps_failed: i32,
    /// Retries of failed steps (not counted as steps).
    pub step_retries: i32,
    /// Steps finished by their latest attempt (succeeded or failed) over
    /// the steps planned or started, whichever is more; 0 to 1.
    pub progress: f64,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    #[sqlx(skip)]
    pub steps: Vec<Step>,
}

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct Step {
    pub id: Uuid,
    #[serde(skip)]
    pub execution_id: Uuid,
    pub name: String,
    /// `pending`, `running`, `succeeded`, `failed`, `skipped` or `retrying`.
    pub status: String,
    pub attempt: i32,
    pub input: Option<serde_json::Value>,
    pub output: Option<serde_json::Value>,
    pub error: Option<String>,
    pub retryable: Option<bool>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
}

/// An execution's columns (`e`), with its workflow's name (`w`) and the
/// steps its definition plans (`p`), joined by [`EXECUTIONS_FROM`].
const EXECUTION_COLUMNS: &str = "e.id, e.workflow_id, w.name AS workflow_name, e.workflow_version,
    e.status::text AS status, e.trigger_source,
    e.inputs, e.outputs, e.error, e.priority, e.max_retries, e.started_by,
    e.steps_total, p.planned AS steps_planned, e.steps_succeeded, e.steps_failed, e.step_retries,
    CASE WHEN greatest(e.steps_total, coalesce(p.planned, 0)) = 0 THEN 0::float8
         ELSE least(1, (e.steps_succeeded + e.steps_failed)::float8
                       / greatest(e.steps_total, coalesce(p.planned, 0))) END AS progress,
    e.started_at, e.finished_at, e.duration_ms";

/// Executions and the workflow each ran: its name, and the steps its
/// definition lists (`definition.steps`) when the run is of the current
/// version (older definitions are not kept in the read model).
const EXECUTIONS_FROM: &str = "read_model.workflow_executions e
    LEFT JOIN read_model.workflows w ON w.id = e.workflow_id
    CROSS JOIN LATERAL (SELECT CASE WHEN w.version = e.workflow_version
                                     AND jsonb_typeof(w.definition->'steps') = 'array'
                                    THEN jsonb_array_length(w.definition->'steps') END AS planned) p";

async fn with_steps(tx: &mut sqlx::PgConnection, executions: &mut [Execution]) -> ApiResult<()> {
    let ids: Vec<Uuid> = executions.iter().map(|e| e.id).collect();
    let steps: Vec<Step> = sqlx::query_as(
        "SELECT id, execution_id, name, status::text AS status, attempt, input, output, error, retryable,
                started_at, finished_at, duration_ms
           FROM read_model.step_executions
          WHERE execution_id = ANY($1)
          ORDER BY started_at, id",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    for step in steps {
        if let Some(execution) = executions.iter_mut().find(|e| e.id == step.execution_id) {
            execution.steps.push(step);
        }
    }
    Ok(())
}

/// Workflow runs, newest first, with their steps.
#[utoipa::path(get, path = "/v1/executions", tag = "workflows",
    params(("workflow_id" = Option<Uuid>, Query),
           ("status" = Option<String>, Query, description = "pending | running | succeeded | failed | cancelled"),
           ("limit" = Option<i64>, Query, minimum = 1, maximum = 200),
           ("cursor" = Option<String>, Query)),
    responses((status = 200, body = Page<Execution>)))]
pub async fn list_executions(
    State(state): State<AppState>,
    caller: Caller,
    ReadConsistency(consistency): ReadConsistency,
    params: Params,
) -> ApiResult<Answer> {
    params.only(&["workflow_id", "status", "limit", "cursor"])?;
    let workflow = params.uuid("workflow_id")?;
    let status = params.one_of(
        "status",
        &["pending", "running", "succeeded", "failed", "cancelled"],
    )?;
    let limit = params.limit()?;
    let after: Option<TimeId> = params.cursor()?;
    let spec = caller.cache_spec(vec!["execution:all".into()]);
    let mut read = match state.cached_or_read(&spec, &caller, consistency).await? {
        Cached::Miss(read) => read,
        Cached::Hit(hit) => return Ok(hit),
    };
    let rows: Vec<Execution> = sqlx::query_as(&format!(
        "SELECT {EXECUTION_COLUMNS} FROM {EXECUTIONS_FROM}
          WHERE ($1::uuid IS NULL OR e.workflow_id = $1)
            AND ($2::text IS NULL OR e.status::text = $2)
            AND ($3::timestamptz IS NULL OR (e.started_at, e.id) < ($3, $4))
          ORDER BY e.started_at DESC, e.id DESC
          LIMIT $5"
    ))
    .bind(workflow)
    .bind(status)
    .bind(after.map(|k| k.0))
    .bind(after.map(|k| k.1))
    .bind(limit + 1)
    .fetch_all(&mut *read.tx)
    .await?;
    let (mut items, next_cursor) = page(rows, limit, |e| TimeId(e.started_at, e.id));
    with_steps(&mut read.tx, &mut items).await?;
    read.tx.commit().await?;
    state
        .answer(Some(&spec), read.position, &Page { items, next_cursor })
        .await
}

/// One workflow run with its steps.
#[utoipa::path(get, path = "/v1/executions/{id}", tag = "workflows",
    params(("id" = Uuid, Path)), responses((status = 200, body = Execution)))]
pub async fn get_execution(
    State(state): State<AppState>,
    caller: Caller,
    ReadConsistency(consistency): ReadConsistency,
    Path(id): Path<String>,
) -> ApiResult<Answer> {
    let id = path_id(&id, "id")?;
    let spec = caller.cache_spec(vec![format!("execution:{id}")]);
    let mut read = match state.cached_or_read(&spec, &caller, consistency).await? {
        Cached::Miss(read) => read,
        Cached::Hit(hit) => return Ok(hit),
    };
    let found: Option<Execution> = sqlx::query_as(&format!(
        "SELECT {EXECUTION_COLUMNS} FROM {EXECUTIONS_FROM} WHERE e.id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut *read.tx)
    .await?;
    let mut execution = found.ok_or(ApiError::NotFound("execution"))?;
    with_steps(&mut read.tx, std::slice::from_mut(&mut execution)).await?;
    read.tx.commit().await?;
    state.answer(Some(&spec), read.position, &execution).await
}
