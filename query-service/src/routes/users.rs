//! `GET /v1/me`, `/v1/users`, `/v1/users/{id}`, `/v1/sessions`.

use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::db::Source;
use crate::problem::{ApiError, ApiResult};
use crate::request::{path_id, Caller, Params, ReadConsistency, TimeId};
use crate::state::{Answer, AppState, Cached, Page};

/// A user as the caller may see them: no password or key hashes, no
/// addresses; personal fields are null once the user is forgotten.
#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct User {
    pub id: Uuid,
    pub email: Option<String>,
    pub display_name: Option<String>,
    /// `admin`, `operator` or `viewer`.
    pub role: String,
    pub mfa_enabled: bool,
    pub is_locked: bool,
    pub locked_reason: Option<String>,
    pub failed_login_attempts: i32,
    pub last_login_at: Option<DateTime<Utc>>,
    pub active_api_keys: i32,
    pub preferences: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
    pub forgotten_at: Option<DateTime<Utc>>,
}

const USER_COLUMNS: &str =
    "id, email, display_name, role::text AS role, mfa_enabled, is_locked, locked_reason,
    failed_login_attempts, last_login_at, active_api_keys, preferences, created_at, updated_at,
    deleted_at, forgotten_at";

/// The signed-in user.
#[utoipa::path(get, path = "/v1/me", tag = "users", responses((status = 200, body = User)))]
pub async fn me(
    State(state): State<AppState>,
    caller: Caller,
    ReadConsistency(consistency): ReadConsistency,
) -> ApiResult<Answer> {
    one_user(&state, &caller, caller.user_id, consistency).await
}

/// One user: admins see anyone, others only themselves.
#[utoipa::path(get, path = "/v1/users/{id}", tag = "users",
    params(("id" = Uuid, Path, description = "user id")),
    responses((status = 200, body = User)))]
pub async fn get_user(
    State(state): State<AppState>,
    caller: Caller,
    ReadConsistency(consistency): ReadConsistency,
    Path(id): Path<String>,
) -> ApiResult<Answer> {
    let id = path_id(&id, "id")?;
    if !caller.admin && id != caller.user_id {
        return Err(ApiError::NotFound("user"));
    }
    one_user(&state, &caller, id, consistency).await
}

async fn one_user(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    consistency: crate::db::Consistency,
) -> ApiResult<Answer> {
    let sql = format!("SELECT {USER_COLUMNS} FROM read_model.users WHERE id = $1");
    state
        .one::<User>(caller, consistency, "user", id, &sql)
        .await
}

/// Users, newest first: every user for admins, only yourself otherwise.
#[utoipa::path(get, path = "/v1/users", tag = "users",
    params(("role" = Option<String>, Query, description = "admin | operator | viewer"),
           ("limit" = Option<i64>, Query, minimum = 1, maximum = 200),
           ("cursor" = Option<String>, Query)),
    responses((status = 200, body = Page<User>)))]
pub async fn list_users(
    State(state): State<AppState>,
    caller: Caller,
    ReadConsistency(consistency): ReadConsistency,
    params: Params,
) -> ApiResult<Answer> {
    params.only(&["role", "limit", "cursor"])?;
    let role = params.one_of("role", &["admin", "operator", "viewer"])?;
    let limit = params.limit()?;
    let after: Option<TimeId> = params.cursor()?;
    let spec = caller.cache_spec(vec!["user:all".into()]);
    let mut read = match state.cached_or_read(&spec, &caller, consistency).await? {
        Cached::Miss(read) => read,
        Cached::Hit(hit) => return Ok(hit),
    };
    let rows: Vec<User> = sqlx::query_as(&format!(
        "SELECT {USER_COLUMNS} FROM read_model.users
          WHERE ($1 OR id = $2)
            AND ($3::text IS NULL OR role::text = $3)
            AND ($4::timestamptz IS NULL OR (created_at, id) < ($4, $5))
          ORDER BY created_at DESC, id DESC
          LIMIT $6"
    ))
    .bind(caller.admin)
    .bind(caller.user_id)
    .bind(role)
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
            |u| TimeId(u.created_at, u.id),
            Some(&spec),
        )
        .await
}

/// An active session of the caller (no token hash, no address).
#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct Session {
    pub id: Uuid,
    pub role: String,
    pub device_fingerprint: Option<String>,
    pub started_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// What the client keeps with its session (`session.start`'s `context`).
    pub context: Option<serde_json::Value>,
}

/// The caller's own active sessions, newest first.
#[utoipa::path(get, path = "/v1/sessions", tag = "users",
    params(("limit" = Option<i64>, Query, minimum = 1, maximum = 200), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = Page<Session>)))]
pub async fn list_sessions(
    State(state): State<AppState>,
    caller: Caller,
    ReadConsistency(consistency): ReadConsistency,
    params: Params,
) -> ApiResult<Answer> {
    params.only(&["limit", "cursor"])?;
    let limit = params.limit()?;
    let after: Option<TimeId> = params.cursor()?;
    // Not cached: "active" depends on the clock as well as on events.
    let mut read = state
        .db
        .read(Some(&caller.principal), Source::Relational, consistency)
        .await?;
    let rows: Vec<Session> = sqlx::query_as(
        "SELECT id, role::text AS role, device_fingerprint, started_at, last_seen_at, expires_at, context
           FROM read_model.active_sessions
          WHERE user_id = $1
            AND ($2::timestamptz IS NULL OR (started_at, id) < ($2, $3))
          ORDER BY started_at DESC, id DESC
          LIMIT $4",
    )
    .bind(caller.user_id)
    .bind(after.map(|k| k.0))
    .bind(after.map(|k| k.1))
    .bind(limit + 1)
    .fetch_all(&mut *read.tx)
    .await?;
    state
        .page(read, rows, limit, |s| TimeId(s.started_at, s.id), None)
        .await
}
