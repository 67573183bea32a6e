//! What the handlers share, and the path every cached read takes.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use eventstore::Position;
use infra::ratelimit::SlidingWindow;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::auth::{Authenticator, Principal};
use crate::cache::Cache;
use crate::db::{Consistency, Db};
use crate::problem::ApiError;
use crate::search::Search;

pub const POSITION_HEADER: HeaderName = HeaderName::from_static("x-projection-position");
pub const CACHE_HEADER: HeaderName = HeaderName::from_static("x-cache");

#[derive(Clone)]
pub struct AppState {
    pub db: Arc<Db>,
    pub auth: Arc<Authenticator>,
    pub cache: Cache,
    pub rate_limit: Option<SlidingWindow>,
    pub search: Option<Arc<Search>>,
    pub health: Arc<crate::health::Health>,
    /// For `/v1/live`: each stream has its own pub/sub connection.
    pub pubsub: Option<redis::Client>,
    /// The live streams each user has open (capped).
    pub live_streams: crate::routes::live::OpenStreams,
    pub request_timeout: Duration,
    /// Open the personal data of the raw log for admins.
    pub data_keys: Option<Arc<eventstore::data_keys::DataKeys>>,
}

/// What [`AppState::cached_or_read`] found: the cached answer, or a read
/// transaction to make it with.
pub enum Cached {
    Hit(Answer),
    Miss(crate::db::ReadTx),
}

/// A response body and the projection position it reflects.
pub struct Answer {
    pub position: Position,
    pub body: Bytes,
    /// `hit`, `miss` (stored or not) or `none` (not cacheable).
    pub cache: &'static str,
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut response = (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.body,
        )
            .into_response();
        let headers = response.headers_mut();
        if let Ok(value) = HeaderValue::from_str(&self.position.to_string()) {
            headers.insert(POSITION_HEADER, value);
        }
        headers.insert(CACHE_HEADER, HeaderValue::from_static(self.cache));
        response
    }
}

/// A page of a list: `limit` items and the cursor of the next page.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; null on the last one.
    pub next_cursor: Option<String>,
}

/// Where a cacheable answer lives and which resources it depends on.
pub struct CacheSpec {
    pub key: String,
    /// `{stream type}:{id}` or `{stream type}:all`.
    pub tags: Vec<String>,
}

impl CacheSpec {
    /// The key of `route` with `parts` (path ids, canonical parameters) as
    /// the caller sees it.
    pub fn new(route: &str, caller: &Principal, parts: &[&str], tags: Vec<String>) -> CacheSpec {
        let mut hash = Sha256::new();
        for part in parts {
            hash.update(part.as_bytes());
            hash.update([0]);
        }
        let digest = infra::auth::lower_hex(&hash.finalize()[..16]);
        CacheSpec {
            key: format!("cache:resp:{route}:{}:{digest}", caller.visibility()),
            tags,
        }
    }
}

impl AppState {
    /// One row by id (`sql` selects it with `$1`), as `kind` (the stream
    /// type: the cache tag and the 404's noun), through the cache.
    pub async fn one<T>(
        &self,
        caller: &Principal,
        consistency: Consistency,
        kind: &'static str,
        id: uuid::Uuid,
        sql: &str,
    ) -> Result<Answer, ApiError>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Serialize + Send + Unpin,
    {
        let spec = CacheSpec::new(
            kind,
            caller,
            &[&id.to_string()],
            vec![format!("{kind}:{id}")],
        );
        let mut read = match self.cached_or_read(&spec, caller, consistency).await? {
            Cached::Miss(read) => read,
            Cached::Hit(hit) => return Ok(hit),
        };
        let found: Option<T> = sqlx::query_as(sql)
            .bind(id)
            .fetch_optional(&mut *read.tx)
            .await?;
        read.tx.commit().await?;
        let row = found.ok_or(ApiError::NotFound(kind))?;
        self.answer(Some(&spec), read.position, &row).await
    }

    /// Commits `read`, pages `rows` (`limit` + 1 fetched) by `key`, and
    /// answers (storing it under `spec`).
    pub async fn page<T, K>(
        &self,
        read: crate::db::ReadTx,
        rows: Vec<T>,
        limit: i64,
        key: impl Fn(&T) -> K,
        spec: Option<&CacheSpec>,
    ) -> Result<Answer, ApiError>
    where
        T: Serialize,
        K: crate::request::CursorKey,
    {
        read.tx.commit().await?;
        let (items, next_cursor) = crate::request::page(rows, limit, key);
        self.answer(spec, read.position, &Page { items, next_cursor })
            .await
    }

    /// The cached answer for `spec`, or else a read of the relational
    /// model acting as `caller`, to make the answer with.
    pub async fn cached_or_read(
        &self,
        spec: &CacheSpec,
        caller: &Principal,
        consistency: Consistency,
    ) -> Result<Cached, ApiError> {
        if let Some(hit) = self.cached(spec, consistency).await {
            return Ok(Cached::Hit(hit));
        }
        let read = self
            .db
            .read(Some(caller), crate::db::Source::Relational, consistency)
            .await?;
        Ok(Cached::Miss(read))
    }

    /// A cached answer good for `consistency`, if Redis has one.
    pub async fn cached(&self, spec: &CacheSpec, consistency: Consistency) -> Option<Answer> {
        if consistency.fresh {
            crate::metrics::metrics()
                .cache
                .with_label_values(&["bypass"])
                .inc();
            return None;
        }
        self.cache
            .get(&spec.key, consistency.min)
            .await
            .map(|entry| Answer {
                position: entry.position,
                body: entry.body,
                cache: "hit",
            })
    }

    /// Serialises `value` read at `position`, storing it under `spec`.
    pub async fn answer<T: Serialize>(
        &self,
        spec: Option<&CacheSpec>,
        position: Position,
        value: &T,
    ) -> Result<Answer, ApiError> {
        let body =
            serde_json::to_vec(value).map_err(|e| ApiError::Internal(format!("encode: {e}")))?;
        let cache = match spec {
            Some(spec) => {
                self.cache.put(&spec.key, &spec.tags, position, &body).await;
                "miss"
            }
            None => "none",
        };
        Ok(Answer {
            position,
            body: Bytes::from(body),
            cache,
        })
    }
}
