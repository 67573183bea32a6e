//! `copilot-data up`: every role in one process (today the command service;
//! the projector and query service join as they are built), and the
//! single-role commands.

use std::future::Future;

use anyhow::Context;
use eventstore::data_keys::MasterKeys;
use eventstore::{EventStore, StoreOptions};
use infra::Settings;
use secrecy::ExposeSecret;

pub fn store_options(settings: &Settings) -> anyhow::Result<StoreOptions> {
    let es = &settings.event_store;
    Ok(StoreOptions {
        max_payload_bytes: es.max_payload_bytes,
        max_events_per_append: es.max_events_per_append,
        poll_interval: es.poll_interval,
        batch_size: es.batch_size,
        max_concurrent_batches: es.group_commits_in_flight,
        master_keys: master_keys(settings)?,
        ..StoreOptions::default()
    })
}

/// The configured master keys (`COPILOT_MASTER_KEY[_FILE]`), if any.
pub fn master_keys(settings: &Settings) -> anyhow::Result<Option<MasterKeys>> {
    settings
        .master_key
        .as_ref()
        .map(|text| MasterKeys::parse(text.expose_secret()))
        .transpose()
        .context("COPILOT_MASTER_KEY")
}

/// A service role, for the database login it runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Command,
    Projector,
    Query,
}

/// The pool `role` runs on: its own least-privilege login when one is
/// configured (`COPILOT_COMMAND_DATABASE_URL`, ...; the migrations and the
/// logins are then `copilot-data migrate`'s job), else the owner's login,
/// which migrates first.
pub async fn role_pool(settings: &Settings, role: Role) -> anyhow::Result<sqlx::PgPool> {
    let db = &settings.database;
    let login = match role {
        Role::Command => &db.command_url,
        Role::Projector => &db.projector_url,
        Role::Query => &db.query_url,
    };
    Ok(match login {
        Some(url) => infra::postgres::pool_for(db, url).await?,
        None => infra::postgres::prepare(db).await?,
    })
}

pub async fn open_store(settings: &Settings, role: Role) -> anyhow::Result<EventStore> {
    let pool = role_pool(settings, role).await?;
    let store = EventStore::connect(pool, store_options(settings)?).await?;
    match store.data_keys() {
        Some(keys) => tracing::info!(
            master_key = keys.master().current_id(),
            "personal data is sealed"
        ),
        None => tracing::warn!(
            "no master key (COPILOT_MASTER_KEY_FILE): personal data is written in the clear \
             and user.forget cannot erase it from the log"
        ),
    }
    tracing::info!(
        generation = store.generation().await?,
        head = %store.head_position().await?,
        "event store ready"
    );
    Ok(store)
}

/// Serves `/metrics` on the configured address (`COPILOT_METRICS_ADDR`,
/// `off` for none) for as long as the returned guard lives.
pub async fn serve_metrics(settings: &Settings) -> anyhow::Result<Option<MetricsServer>> {
    let Some(addr) = settings.commands.metrics_addr else {
        return Ok(None);
    };
    let (bound, task) = infra::metrics::serve(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e}"))?;
    tracing::info!(%bound, "Prometheus metrics at /metrics");
    Ok(Some(MetricsServer(task)))
}

/// Stops the metrics endpoint when dropped.
pub struct MetricsServer(tokio::task::JoinHandle<()>);

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn qdrant(
    v: &infra::config::VectorSettings,
    url: &str,
    dimension: usize,
) -> anyhow::Result<vectors::qdrant::QdrantStore> {
    let connection = vectors::qdrant::QdrantConnection {
        url,
        api_key: v.qdrant_api_key.as_ref().map(|k| k.expose_secret()),
        timeout: Some(v.qdrant_timeout),
    };
    Ok(vectors::qdrant::QdrantStore::connect(
        connection, dimension, "",
    )?)
}

/// The vector projection's store and embedder, if it is enabled.
pub async fn vector_config(settings: &Settings) -> anyhow::Result<Option<projector::VectorConfig>> {
    let v = &settings.vectors;
    if !v.enabled {
        return Ok(None);
    }
    let embedder = open_embedder(settings)?;
    let dimension = embedder.info().dimension;
    tracing::info!(dir = %v.dir.display(), model = %embedder.info().name, dimension, "vector projection configured");
    Ok(Some(projector::VectorConfig {
        store: match &v.qdrant_url {
            Some(url) => {
                projector::vector_model::opener_of(std::sync::Arc::new(qdrant(v, url, dimension)?))
            }
            None => projector::vector_model::edge_opener(v.dir.clone(), dimension),
        },
        embedder,
        breakers: Some(projector::BreakerConfig {
            redis_url: (&settings.redis).into(),
            prefix: settings.redis.prefix.clone(),
            threshold: v.breaker_threshold,
            timeout: v.breaker_timeout,
        }),
    }))
}

pub fn open_embedder(settings: &Settings) -> anyhow::Result<std::sync::Arc<dyn vectors::Embedder>> {
    let v = &settings.vectors;
    match v.embedder {
        infra::config::EmbedderKind::Local => {
            let dir = v
                .model_dir
                .clone()
                .unwrap_or_else(vectors::embed::MiniLm::default_dir);
            let model = vectors::embed::MiniLm::load(&dir)
                .context("the local embedding model is missing: run deploy/model.sh (or set COPILOT_MODEL_DIR)")?;
            Ok(std::sync::Arc::new(model))
        }
        infra::config::EmbedderKind::Http => {
            let url = v
                .http_url
                .as_deref()
                .context("COPILOT_EMBEDDER=http needs COPILOT_EMBEDDER_URL")?;
            let embedder = vectors::embed::HttpEmbedder::new(
                url,
                &v.http_model,
                v.http_dimension,
                v.http_api_key
                    .as_ref()
                    .map(|k| k.expose_secret().to_string()),
            )?;
            Ok(std::sync::Arc::new(embedder))
        }
    }
}

/// Every role in one process: the command service, the projector and the
/// query service, which searches the projector's own vector store (the
/// embedded store is locked to one process).
/// On a database with no admin yet, says how to make the first one.
async fn tell_how_to_get_in(pool: &sqlx::PgPool) {
    let admins: Result<i64, _> = sqlx::query_scalar(
        "SELECT count(*) FROM auth_users WHERE role = 'admin' AND NOT locked AND NOT deleted",
    )
    .fetch_one(pool)
    .await;
    if matches!(admins, Ok(0)) {
        tracing::warn!(
            "no admin yet: run `copilot-data admin create --email you@example.com` on this machine; \
             it prints a sign-in token for the dashboard"
        );
    }
}

pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let _metrics = serve_metrics(&settings).await?;
    // Migrations and the services' logins first, as the owner, once.
    let owner = infra::postgres::prepare(&settings.database).await?;
    tell_how_to_get_in(&owner).await;
    owner.close().await;
    let vectors = vector_config(&settings).await?;
    let search = vectors.as_ref().map(|v| {
        std::sync::Arc::new(query_service::Search {
            store: v.store.clone(),
            embedder: v.embedder.clone(),
        })
    });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let signal = async move {
        shutdown.await;
        let _ = stop.send(true);
        Ok::<(), anyhow::Error>(())
    };
    tokio::try_join!(
        signal,
        command_service(settings.clone(), until_stopped(stopped.clone())),
        projector(settings.clone(), until_stopped(stopped.clone()), vectors),
        query_service(settings.clone(), until_stopped(stopped.clone()), search),
    )?;
    tracing::info!("stopped");
    Ok(())
}

pub async fn projector(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send,
    vectors: Option<projector::VectorConfig>,
) -> anyhow::Result<()> {
    let config = projector::ProjectorConfig::from_settings(&settings, vectors);
    run_projector(&settings, config, shutdown).await
}

/// The vector projection alone, in a process of its own (see
/// [`projector::ProjectorConfig::embedder`]).
pub async fn embedder(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send,
    vectors: projector::VectorConfig,
) -> anyhow::Result<()> {
    let config = projector::ProjectorConfig::embedder(&settings, vectors);
    run_projector(&settings, config, shutdown).await
}

async fn run_projector(
    settings: &Settings,
    config: projector::ProjectorConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let store = open_store(settings, Role::Projector).await?;
    tracing::info!(instance = %config.instance, projections = ?config.projections,
        vectors = config.vectors.is_some(), "projector running");
    projector::run(config, store.clone(), shutdown).await?;
    store.pool().close().await;
    Ok(())
}

pub async fn command_service(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let store = open_store(&settings, Role::Command).await?;
    let config = command_service::ServiceConfig::from_settings(&settings);
    command_service::run(config, store.clone(), shutdown).await?;
    store.pool().close().await;
    Ok(())
}

/// Semantic search for a query service in a process of its own: only a
/// Qdrant server can be shared with the projector's process.
pub fn standalone_search(
    settings: &Settings,
) -> anyhow::Result<Option<std::sync::Arc<query_service::Search>>> {
    let v = &settings.vectors;
    if !v.enabled {
        return Ok(None);
    }
    let Some(url) = &v.qdrant_url else {
        tracing::warn!(
            "semantic search is off in a separate query-service process with the embedded vector store \
             (it belongs to the projector's process): use `copilot-data up` or set COPILOT_QDRANT_URL"
        );
        return Ok(None);
    };
    let embedder = open_embedder(settings)?;
    let dimension = embedder.info().dimension;
    Ok(Some(std::sync::Arc::new(query_service::Search {
        store: projector::vector_model::opener_of(std::sync::Arc::new(qdrant(v, url, dimension)?)),
        embedder,
    })))
}

pub fn query_config(
    settings: &Settings,
    search: Option<std::sync::Arc<query_service::Search>>,
) -> anyhow::Result<query_service::QueryConfig> {
    let http = &settings.http;
    let mut config = query_service::QueryConfig::from_settings(settings);
    config.master_keys = master_keys(settings)?;
    config.replica = http
        .replica_url
        .as_ref()
        .map(|url| infra::postgres::replica_pool(url.expose_secret(), &settings.database))
        .transpose()?;
    config.search = search;
    Ok(config)
}

pub async fn query_service(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
    search: Option<std::sync::Arc<query_service::Search>>,
) -> anyhow::Result<()> {
    let pool = role_pool(&settings, Role::Query).await?;
    let config = query_config(&settings, search)?;
    query_service::run(config, pool.clone(), shutdown).await?;
    pool.close().await;
    Ok(())
}
