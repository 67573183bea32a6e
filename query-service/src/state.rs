//! What the handlers share, and the path every cached read takes.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use eventstore::Position;
use infra::ratelimit::SlidingWindow;
use serde::Serialize;

use crate::auth::{Authenticator, Prefetch, Principal};
use crate::cache::Cache;
use crate::db::{Consistency, Db};
use crate::problem::ApiError;
use crate::request::Caller;
use crate::search::Search;

pub const POSITION_HEADER: HeaderName = HeaderName::from_static("x-projection-position");
pub const CACHE_HEADER: HeaderName = HeaderName::from_static("x-cache");

/// What every request shares, behind one `Arc`: axum clones the state for
/// each extractor and middleware of every request, and a clone of the
/// fields themselves (a Redis client's connection info, the rate limit's
/// prefix) allocates.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
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

/// Where answers are cached, under the cache's prefix.
pub const ANSWER_KEYS: &str = "cache:resp:";

/// Where a cacheable answer lives, which resources it depends on, and what
/// the credential's lookup already found there.
pub struct CacheSpec {
    /// `cache:resp:{visibility}:{request digest}`: one caller's view of one
    /// path and query.
    pub key: String,
    /// `{stream type}:{id}` or `{stream type}:all`.
    pub tags: Vec<String>,
    pub prefetched: Prefetch,
}

impl CacheSpec {
    pub(crate) fn key(caller: &Principal, request: &str) -> String {
        format!("{ANSWER_KEYS}{}:{request}", caller.visibility())
    }

    /// The same answer varying also with `parts` (values a handler
    /// resolves, such as a time range ending now). The answer the
    /// credential's lookup found under the plain key is not this one.
    pub fn varying(self, parts: &[&str]) -> CacheSpec {
        CacheSpec {
            key: format!("{}:{}", self.key, crate::request::digest_of(parts)),
            tags: self.tags,
            prefetched: Prefetch::NotLooked,
        }
    }

    /// [`CacheSpec::key`] under the cache's `prefix`.
    pub(crate) fn full_key(prefix: &str, caller: &Principal, request: &str) -> String {
        format!("{prefix}{}", CacheSpec::key(caller, request))
    }
}

impl AppState {
    /// One row by id (`sql` selects it with `$1`), as `kind` (the stream
    /// type: the cache tag and the 404's noun), through the cache.
    pub async fn one<T>(
        &self,
        caller: &Caller,
        consistency: Consistency,
        kind: &'static str,
        id: uuid::Uuid,
        sql: &str,
    ) -> Result<Answer, ApiError>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Serialize + Send + Unpin,
    {
        let spec = caller.cache_spec(vec![format!("{kind}:{id}")]);
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
        let entry = match &spec.prefetched {
            Prefetch::NotLooked => self.cache.get(&spec.key, consistency.min).await,
            Prefetch::Absent => self.cache.found(None, consistency.min),
            Prefetch::Found(raw) => self.cache.found(Some(raw.clone()), consistency.min),
        };
        entry.map(|entry| Answer {
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
