//! `GET /v1/conversations`, `/v1/conversations/{id}`,
//! `/v1/conversations/{id}/messages`: the caller's own (row-level
//! security), every user's for admins.

use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::problem::{ApiError, ApiResult};
use crate::request::{path_id, Caller, Params, ReadConsistency, Seq, TimeId};
use crate::state::{Answer, AppState, Cached, Page};

/// A conversation with its message count and token and cost totals.
#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct Conversation {
    pub id: Uuid,
    pub user_id: Uuid,
    pub title: Option<String>,
    pub model: Option<String>,
    /// How the model is asked: temperature, top_p, max_tokens, penalties, stop, seed.
    pub model_config: Option<serde_json::Value>,
    /// `active`, `archived` or `deleted`.
    pub status: String,
    pub tags: Vec<String>,
    pub context: Option<serde_json::Value>,
    pub message_count: i32,
    pub total_tokens: i64,
    pub total_cost_usd: f64,
    pub last_message_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub archived_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct Message {
    pub id: Uuid,
    pub conversation_id: Uuid,
    pub sequence: i32,
    /// `user`, `assistant`, `system` or `tool`.
    pub role: String,
    pub content: Option<String>,
    pub tool_calls: Option<serde_json::Value>,
    pub tool_results: Option<serde_json::Value>,
    pub tokens_in: i32,
    pub tokens_out: i32,
    pub cost_usd: f64,
    pub rating: Option<i16>,
    pub feedback: Option<String>,
    pub created_at: DateTime<Utc>,
    pub rated_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str =
    "id, user_id, title, model, model_config, status::text AS status, tags, context, message_count,
    total_tokens, total_cost_usd::float8 AS total_cost_usd, last_message_at, created_at, updated_at,
    archived_at, deleted_at";

/// Which filters a list request carries. Each shape is its own statement
/// holding only the filters it has, so every one gets a plan on its index
/// whichever plan (custom or generic) PostgreSQL settles on: optional
/// filters written as `($n IS NULL OR …)` hide the selectivity from a
/// generic plan, which then scans the table.
#[derive(Debug, Clone, Copy, Default)]
pub struct ListShape {
    /// A plain user's own conversations (on `conversations_user_created`);
    /// otherwise everyone's, for an administrator (on `conversations_created`).
    pub own: bool,
    pub status: bool,
    pub tag: bool,
    pub after: bool,
}

/// The statement for `shape`; its parameters, in order: the user (when
/// `own`), the status, the tag, the cursor's time and id, the limit.
pub fn list_sql(shape: ListShape) -> String {
    let mut filters = Vec::new();
    let mut n = 0;
    let mut next = || {
        n += 1;
        format!("${n}")
    };
    if shape.own {
        filters.push(format!("user_id = {}", next()));
    }
    if shape.status {
        filters.push(format!("status::text = {}", next()));
    }
    if shape.tag {
        filters.push(format!("tags @> ARRAY[{}::text]", next()));
    }
    if shape.after {
        let (at, id) = (next(), next());
        filters.push(format!(
            "(created_at, id) < ({at}::timestamptz, {id}::uuid)"
        ));
    }
    let limit = next();
    let filter = if filters.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", filters.join(" AND "))
    };
    format!(
        "SELECT {COLUMNS} FROM read_model.conversations {filter}
          ORDER BY created_at DESC, id DESC
          LIMIT {limit}"
    )
}

/// Conversations, newest first.
#[utoipa::path(get, path = "/v1/conversations", tag = "conversations",
    params(("status" = Option<String>, Query, description = "active | archived | deleted"),
           ("tag" = Option<String>, Query, description = "only conversations carrying this tag"),
           ("limit" = Option<i64>, Query, minimum = 1, maximum = 200),
           ("cursor" = Option<String>, Query)),
    responses((status = 200, body = Page<Conversation>)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ReadConsistency(consistency): ReadConsistency,
    params: Params,
) -> ApiResult<Answer> {
    params.only(&["status", "tag", "limit", "cursor"])?;
    let status = params.one_of("status", &["active", "archived", "deleted"])?;
    let tag = params.text("tag")?;
    let limit = params.limit()?;
    let after: Option<TimeId> = params.cursor()?;
    let spec = caller.cache_spec(vec!["conversation:all".into()]);
    let mut read = match state.cached_or_read(&spec, &caller, consistency).await? {
        Cached::Miss(read) => read,
        Cached::Hit(hit) => return Ok(hit),
    };
    let shape = ListShape {
        own: !caller.admin,
        status: status.is_some(),
        tag: tag.is_some(),
        after: after.is_some(),
    };
    let sql = list_sql(shape);
    let mut query = sqlx::query_as::<_, Conversation>(&sql);
    if shape.own {
        query = query.bind(caller.user_id);
    }
    if let Some(status) = status {
        query = query.bind(status);
    }
    if let Some(tag) = tag {
        query = query.bind(tag);
    }
    if let Some(TimeId(at, id)) = after {
        query = query.bind(at).bind(id);
    }
    let rows = query.bind(limit + 1).fetch_all(&mut *read.tx).await?;
    state
        .page(
            read,
            rows,
            limit,
            |c| TimeId(c.created_at, c.id),
            Some(&spec),
        )
        .await
}

async fn visible(tx: &mut sqlx::PgConnection, id: Uuid) -> ApiResult<Conversation> {
    let found: Option<Conversation> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM read_model.conversations WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    found.ok_or(ApiError::NotFound("conversation"))
}

/// One conversation.
#[utoipa::path(get, path = "/v1/conversations/{id}", tag = "conversations",
    params(("id" = Uuid, Path, description = "conversation id")),
    responses((status = 200, body = Conversation)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    ReadConsistency(consistency): ReadConsistency,
    Path(id): Path<String>,
) -> ApiResult<Answer> {
    let id = path_id(&id, "id")?;
    let sql = format!("SELECT {COLUMNS} FROM read_model.conversations WHERE id = $1");
    state
        .one::<Conversation>(&caller, consistency, "conversation", id, &sql)
        .await
}

/// A conversation's messages, in order.
#[utoipa::path(get, path = "/v1/conversations/{id}/messages", tag = "conversations",
    params(("id" = Uuid, Path, description = "conversation id"),
           ("limit" = Option<i64>, Query, minimum = 1, maximum = 200),
           ("cursor" = Option<String>, Query)),
    responses((status = 200, body = Page<Message>)))]
pub async fn messages(
    State(state): State<AppState>,
    caller: Caller,
    ReadConsistency(consistency): ReadConsistency,
    Path(id): Path<String>,
    params: Params,
) -> ApiResult<Answer> {
    let id = path_id(&id, "id")?;
    params.only(&["limit", "cursor"])?;
    let limit = params.limit()?;
    let after: Option<Seq> = params.cursor()?;
    let spec = caller.cache_spec(vec![format!("conversation:{id}")]);
    let mut read = match state.cached_or_read(&spec, &caller, consistency).await? {
        Cached::Miss(read) => read,
        Cached::Hit(hit) => return Ok(hit),
    };
    visible(&mut read.tx, id).await?;
    let rows: Vec<Message> = sqlx::query_as(
        "SELECT id, conversation_id, sequence, role::text AS role, content, tool_calls, tool_results,
                tokens_in, tokens_out, cost_usd::float8 AS cost_usd, rating, feedback, created_at, rated_at
           FROM read_model.messages
          WHERE conversation_id = $1 AND sequence > $2
          ORDER BY sequence
          LIMIT $3",
    )
    .bind(id)
    .bind(after.map_or(0, |s| s.0))
    .bind(limit + 1)
    .fetch_all(&mut *read.tx)
    .await?;
    state
        .page(
            read,
            rows,
            limit,
            |m| Seq(i64::from(m.sequence)),
            Some(&spec),
        )
        .await
}
