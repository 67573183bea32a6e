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
mod tls;

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

/// The statements whose plans the index tests check with `EXPLAIN`.
pub mod statements {
    pub use crate::routes::conversations::{
        list_sql as conversations_list_sql, ListShape as ConversationsListShape,
    };
    pub use crate::routes::dashboard::ACTIVE_STEPS_SQL as active_steps_sql;
    pub use crate::routes::series::series_sql;
}

/// What the service needs besides its database pool.
#[derive(Clone)]
pub struct QueryConfig {
    pub addr: SocketAddr,
    pub redis: infra::redis_conn::RedisTarget,
    pub redis_prefix: String,
    /// The NATS server checked by `/readyz` (`None`: not checked).
    pub nats: Option<infra::nats::NatsTarget>,
    /// A read replica's pool: reads go there first.
    pub replica: Option<PgPool>,
    pub cache_ttl: Duration,
    /// Requests per minute per principal (`None`: unlimited).
    pub rate_limit_per_minute: Option<u32>,
    pub request_timeout: Duration,
    /// Semantic search, when a vector store and embedder are configured.
    pub search: Option<Arc<Search>>,
    /// HTTPS: the certificate chain and key (PEM files); `None`: HTTP.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Origins allowed to call the API from a browser (CORS).
    pub cors_origins: Vec<String>,
    /// The master keys that open personal data in the raw log (see
    /// `eventstore::data_keys`); `None`: sealed values show as `null`.
    pub master_keys: Option<eventstore::data_keys::MasterKeys>,
}

impl QueryConfig {
    pub fn new(
        addr: SocketAddr,
        redis: impl Into<infra::redis_conn::RedisTarget>,
        redis_prefix: &str,
    ) -> QueryConfig {
        QueryConfig {
            addr,
            redis: redis.into(),
            redis_prefix: redis_prefix.to_string(),
            nats: None,
            replica: None,
            cache_ttl: Duration::from_secs(300),
            rate_limit_per_minute: Some(6000),
            request_timeout: Duration::from_secs(35),
            search: None,
            tls: None,
            cors_origins: Vec::new(),
            master_keys: None,
        }
    }

    /// The query service as `settings` describe it (what `copilot-data`
    /// and the tests both start), without what needs opening first: the
    /// replica's pool, the master keys and search.
    pub fn from_settings(settings: &infra::Settings) -> QueryConfig {
        let http = &settings.http;
        let mut config = QueryConfig::new(http.addr, &settings.redis, &settings.redis.prefix);
        config.nats = Some((&settings.nats).into());
        config.tls = http.tls_cert.clone().zip(http.tls_key.clone());
        config.cors_origins = http.cors_origins.clone();
        config.cache_ttl = http.cache_ttl;
        config.rate_limit_per_minute =
            (http.rate_limit_per_minute > 0).then_some(http.rate_limit_per_minute);
        config.request_timeout = http.request_timeout;
        config
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
    Database(#[from] eventstore::StoreError),
    #[error("the server failed: {0}")]
    Serve(std::io::Error),
    #[error("HTTPS: {0}")]
    Tls(#[from] tls::TlsSetupError),
    #[error("CORS origin {0:?} is not a valid origin")]
    Cors(String),
}

/// A bound, not yet serving, query service (so callers learn the port
/// before serving, e.g. with port 0).
pub struct Bound {
    listener: Listening,
    router: axum::Router,
    progress_task: tokio::task::JoinHandle<()>,
}

enum Listening {
    Plain(tokio::net::TcpListener),
    Tls(tls::TlsListener),
}

impl Bound {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match &self.listener {
            Listening::Plain(listener) => listener.local_addr(),
            Listening::Tls(listener) => axum::serve::Listener::local_addr(listener),
        }
    }

    /// Serves until `shutdown` resolves, then finishes open requests.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let result = match self.listener {
            Listening::Plain(listener) => {
                axum::serve(listener, self.router)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
            Listening::Tls(listener) => {
                axum::serve(listener, self.router)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
        }
        .map_err(ServeError::Serve);
        self.progress_task.abort();
        result
    }
}

/// Binds the address and builds the service.
pub async fn bind(config: QueryConfig, pool: PgPool) -> Result<Bound, ServeError> {
    let (progress, progress_task) = progress::Progress::follow(pool.clone()).await?;
    let cache = cache::Cache::new(&config.redis, &config.redis_prefix, config.cache_ttl);
    let rate_limit = match (config.rate_limit_per_minute, cache.connection()) {
        (Some(limit), Some(conn)) => Some(SlidingWindow::new(
            conn,
            format!("{}ratelimit:query:", config.redis_prefix),
            limit,
            Duration::from_secs(60),
        )),
        _ => None,
    };
    let nats = match &config.nats {
        Some(target) => match target.options("copilot-data query-service").await {
            Ok(options) => options
                .retry_on_initial_connect()
                .connect(target.url.as_str())
                .await
                .ok(),
            Err(error) => {
                tracing::warn!(%error, "/readyz cannot check NATS");
                None
            }
        },
        None => None,
    };
    let data_keys = config
        .master_keys
        .clone()
        .map(|master| Arc::new(eventstore::data_keys::DataKeys::new(pool.clone(), master)));
    let state = state::AppState::new(state::Shared {
        data_keys,
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
        pubsub: config.redis.client().ok(),
        request_timeout: config.request_timeout,
    });
    let tcp = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.addr,
            source,
        })?;
    let listener = match &config.tls {
        Some((cert, key)) => Listening::Tls(
            tls::TlsListener::new(tcp, tls::acceptor(cert, key)?).map_err(ServeError::Serve)?,
        ),
        None => Listening::Plain(tcp),
    };
    let web = routes::WebSecurity::new(config.tls.is_some(), &config.cors_origins)
        .map_err(ServeError::Cors)?;
    Ok(Bound {
        listener,
        router: routes::router(state, &web),
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
