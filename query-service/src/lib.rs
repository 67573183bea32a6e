//! The query service: the HTTP API dashboards read the projections through.
//!
//! * Every request is authenticated against the auth index (a session
//!   token or an API key), rate limited per principal, and read in one
//!   repeatable-read transaction that acts as the caller, so row-level
//!   security hides other users' conversations, messages and sessions.
//! * Answers are cached in Redis (cache-aside, tag invalidation by the
//!   Redis projection, never older than the projection they came from).
//! * `X-Min-Position` waits for the projections, woken by their progress;
//!   `X-Projection-Position` says what every answer reflects.
//! * Semantic search goes through the vector-store port; `/v1/live` relays
//!   the Redis projection's pub/sub as server-sent events.

mod auth;
mod cache;
mod db;
mod health;
mod metrics;
mod openapi;
mod problem;
mod progress;
mod request;
mod routes;
mod search;
mod state;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use infra::ratelimit::SlidingWindow;
use sqlx::PgPool;

pub use auth::Principal;
pub use openapi::ApiDoc;
pub use problem::{ApiError, Problem};
pub use routes::live::MAX_STREAMS_PER_USER as LIVE_STREAMS_PER_USER;
pub use search::Search;

/// What the service needs besides its database pool.
#[derive(Clone)]
pub struct QueryConfig {
    pub addr: SocketAddr,
    pub redis_url: String,
    pub redis_prefix: String,
    /// The NATS server checked by `/readyz` (`None`: not checked).
    pub nats_url: Option<String>,
    /// A read replica's pool: reads go there first.
    pub replica: Option<PgPool>,
    pub cache_ttl: Duration,
    /// Requests per minute per principal (`None`: unlimited).
    pub rate_limit_per_minute: Option<u32>,
    pub request_timeout: Duration,
    /// Semantic search, when a vector store and embedder are configured.
    pub search: Option<Arc<Search>>,
}

impl QueryConfig {
    pub fn new(addr: SocketAddr, redis_url: &str, redis_prefix: &str) -> QueryConfig {
        QueryConfig {
            addr,
            redis_url: redis_url.to_string(),
            redis_prefix: redis_prefix.to_string(),
            nats_url: None,
            replica: None,
            cache_ttl: Duration::from_secs(300),
            rate_limit_per_minute: Some(6000),
            request_timeout: Duration::from_secs(35),
            search: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot read the projection checkpoints: {0}")]
    Database(#[from] sqlx::Error),
    #[error("the server failed: {0}")]
    Serve(std::io::Error),
}

/// A bound, not yet serving, query service (so callers learn the port
/// before serving, e.g. with port 0).
pub struct Bound {
    listener: tokio::net::TcpListener,
    router: axum::Router,
    progress_task: tokio::task::JoinHandle<()>,
}

impl Bound {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then finishes open requests.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let result = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(ServeError::Serve);
        self.progress_task.abort();
        result
    }
}

/// Binds the address and builds the service.
pub async fn bind(config: QueryConfig, pool: PgPool) -> Result<Bound, ServeError> {
    let (progress, progress_task) = progress::Progress::follow(pool.clone()).await?;
    let cache = cache::Cache::new(&config.redis_url, &config.redis_prefix, config.cache_ttl);
    let rate_limit = match (config.rate_limit_per_minute, cache.connection()) {
        (Some(limit), Some(conn)) => Some(SlidingWindow::new(
            conn,
            format!("{}ratelimit:query:", config.redis_prefix),
            limit,
            Duration::from_secs(60),
        )),
        _ => None,
    };
    let nats = match &config.nats_url {
        Some(url) => async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(url.as_str())
            .await
            .ok(),
        None => None,
    };
    let state = state::AppState {
        db: Arc::new(db::Db {
            primary: pool.clone(),
            replica: config.replica.clone(),
            progress,
        }),
        auth: Arc::new(auth::Authenticator::new(
            pool,
            cache
                .connection()
                .map(|conn| auth::CredentialCache::new(conn, &config.redis_prefix)),
        )),
        cache,
        rate_limit,
        search: config.search.clone(),
        live_streams: routes::live::OpenStreams::default(),
        health: Arc::new(health::Health { nats }),
        pubsub: redis::Client::open(config.redis_url.as_str()).ok(),
        request_timeout: config.request_timeout,
    };
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.addr,
            source,
        })?;
    Ok(Bound {
        listener,
        router: routes::router(state),
        progress_task,
    })
}

/// Binds and serves until `shutdown` resolves.
pub async fn run(
    config: QueryConfig,
    pool: PgPool,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let bound = bind(config, pool).await?;
    if let Ok(addr) = bound.local_addr() {
        tracing::info!(%addr, "query API listening");
    }
    bound.serve(shutdown).await
}
