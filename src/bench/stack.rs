//! The whole system in this process, for the workloads that go through the
//! services (`query`, `lag`): a scratch database, the command service, the
//! projector (with the Redis model, and the vector projection when given
//! one) and the query service, on a NATS subject prefix and a Redis key
//! prefix of their own. [`Stack::finish`] removes all of it.

use std::path::PathBuf;

use anyhow::Context as _;
use command_service::ServiceConfig;
use eventstore::EventStore;
use infra::Settings;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use uuid::Uuid;

use super::scratch::{self, Scratch, ScratchDb};
use crate::agent::AgentClient;

pub struct Stack {
    pub pool: PgPool,
    pub store: EventStore,
    pub agent: AgentClient,
    /// `http://{address}` of the query API.
    pub base: String,
    /// The bootstrap token users sign up with.
    pub bootstrap: String,
    pub redis_url: String,
    pub redis_prefix: String,
    scratch: ScratchDb,
    streams: Scratch,
    redis_keys: Scratch,
    /// The embedded vector store's folder and its opener.
    vectors: Option<(PathBuf, projector::vector_model::StoreOpener)>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Stack {
    /// Starts every service; with `vectors`, the vector projection (local
    /// embedder, embedded store in a scratch folder) and search.
    pub async fn start(settings: &Settings, keep: bool, vectors: bool) -> anyhow::Result<Stack> {
        let (scratch, pool) = ScratchDb::create(&settings.database, 64, keep).await?;
        let id = &Uuid::new_v4().simple().to_string()[..8];
        let nats_prefix = format!("bench{id}");
        let redis_prefix = format!("bench:{id}:");
        let redis_url = settings.redis.url.expose_secret().to_string();
        let streams = Scratch::streams(&settings.nats.url, &nats_prefix);
        let redis_keys = Scratch::redis_keys(&redis_url, &redis_prefix);
        let bootstrap = format!("bench-{}", Uuid::new_v4());
        let store = EventStore::connect(pool.clone(), crate::up::store_options(settings)?).await?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let until = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let config = service_config(
            settings,
            &nats_prefix,
            &bootstrap,
            Some(((&settings.redis).into(), redis_prefix.clone())),
        );
        scratch::spawn_service(command_service::run(
            config,
            store.clone(),
            until(stopped.clone()),
        ));
        let (vector_config, vector_store) = if vectors {
            let dir = std::env::temp_dir().join(format!("copilot-bench-stack-{id}"));
            let opener = projector::vector_model::edge_opener(dir.clone(), 384);
            let config = projector::VectorConfig {
                store: opener.clone(),
                embedder: super::vectors::local_model(settings)?,
                breakers: None,
            };
            (Some(config), Some((dir, opener)))
        } else {
            (None, None)
        };
        let search = vector_config.as_ref().map(|v| {
            std::sync::Arc::new(query_service::Search {
                store: v.store.clone(),
                embedder: v.embedder.clone(),
            })
        });
        let projector_config = projector::ProjectorConfig {
            redis: Some(projector::redis_model::RedisConfig {
                url: (&settings.redis).into(),
                prefix: redis_prefix.clone(),
            }),
            vectors: vector_config,
            ..projector::ProjectorConfig::default()
        };
        scratch::spawn_service(projector::run(
            projector_config,
            store.clone(),
            until(stopped.clone()),
        ));
        let mut query_config =
            query_service::QueryConfig::new("127.0.0.1:0".parse()?, &settings.redis, &redis_prefix);
        query_config.rate_limit_per_minute = None;
        query_config.search = search;
        let bound = query_service::bind(query_config, pool.clone()).await?;
        let base = format!("http://{}", bound.local_addr()?);
        scratch::spawn_service(bound.serve(until(stopped.clone())));

        let client = infra::nats::NatsTarget::from(&settings.nats)
            .connect("copilot-data bench")
            .await
            .context("connecting to NATS")?;
        let agent = AgentClient {
            client,
            prefix: nats_prefix,
        };
        agent.wait_until_answering().await?;
        Ok(Stack {
            pool,
            store,
            agent,
            base,
            bootstrap,
            redis_url,
            redis_prefix,
            scratch,
            streams,
            redis_keys,
            vectors: vector_store,
            stop,
        })
    }

    /// Stops the services and removes the database, streams, keys and
    /// vector store they made.
    pub async fn finish(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        drop(self.store);
        scratch::end_services(std::time::Duration::from_millis(500)).await;
        self.streams.remove().await?;
        self.redis_keys.remove().await?;
        if let Some((dir, opener)) = self.vectors {
            release(opener).await;
            let _ = std::fs::remove_dir_all(dir);
        }
        self.scratch.drop_db(self.pool).await
    }
}

/// Waits (up to a minute) until nothing but `opener` holds the embedded
/// store, then drops both, so that the store's last flush happens before
/// its folder is removed: an embedding still running when the services
/// were stopped holds the store until it ends, and a store flushed into a
/// removed folder panics.
async fn release(opener: projector::vector_model::StoreOpener) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let Ok(store) = opener().await else {
        return;
    };
    // Held by the opener's cell and by `store`; the opener by this function.
    while (std::sync::Arc::strong_count(&store) > 2 || std::sync::Arc::strong_count(&opener) > 1)
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A bench's command service on `prefix`: no rate limit, users signed up
/// with `bootstrap`, up to 256 commands in flight.
pub fn service_config(
    settings: &Settings,
    prefix: &str,
    bootstrap: &str,
    auth_epochs: Option<(infra::redis_conn::RedisTarget, String)>,
) -> ServiceConfig {
    ServiceConfig {
        prefix: prefix.to_string(),
        bootstrap_token: Some(SecretString::from(bootstrap.to_string())),
        rate_limit: None,
        max_in_flight: 256,
        trusted_agents: Vec::new(),
        auth_epochs,
        ..ServiceConfig::from_settings(settings)
    }
}
