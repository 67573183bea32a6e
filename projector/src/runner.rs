//! The live projector: one task per projection, each holding its lease and
//! following the log.

use std::future::Future;
use std::time::{Duration, Instant};

use chrono::Utc;
use eventstore::{checkpoint, EventStore, Position, RecordedEvent};
use sqlx::PgConnection;
use tokio::sync::watch;

use crate::audit::retention_start;
use crate::batch::{Outcome, PoisonPolicy};
use crate::lag_history::{self, LagHistory};
use crate::metrics::metrics;
use crate::projection::{Delivery, Kind, Projection, SqlProjection};
use crate::redis_model::{RedisConfig, RedisModel};
use crate::relay::{Relay, RelayConfig, RelayError};
use crate::vector_model::{VectorConfig, VectorModel, VectorSinkError};
use crate::ProjectionError;

#[derive(Debug, Clone)]
pub struct ProjectorConfig {
    pub projections: Vec<Kind>,
    /// Names this process in `projection_status.holder`.
    pub instance: String,
    pub batch_size: usize,
    /// Skip (after parking) poison events instead of stopping at them.
    pub skip_poison: bool,
    /// How often a process without a lease tries to take it.
    pub lease_retry: Duration,
    /// How often audit partitions are created ahead and old ones dropped.
    pub maintenance_interval: Duration,
    /// Publish every event to JetStream (the event relay), if set.
    pub relay: Option<RelayConfig>,
    /// Keep the Redis patterns (sessions, cache invalidation, metrics
    /// streams, pub/sub, task queue), if set.
    pub redis: Option<RedisConfig>,
    /// Keep the vector collections (embedder + vector store), if set.
    pub vectors: Option<VectorConfig>,
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        ProjectorConfig {
            projections: Kind::ALL.to_vec(),
            instance: format!("projector-{}", std::process::id()),
            batch_size: 2_000,
            skip_poison: false,
            lease_retry: Duration::from_secs(1),
            maintenance_interval: Duration::from_secs(3_600),
            relay: None,
            redis: None,
            vectors: None,
        }
    }
}

impl ProjectorConfig {
    /// The projector as `settings` describe it (what `copilot-data` and the
    /// tests both start), with `vectors` if the vector projection is on.
    pub fn from_settings(settings: &infra::Settings, vectors: Option<VectorConfig>) -> Self {
        let p = &settings.projector;
        ProjectorConfig {
            batch_size: p.batch_size,
            skip_poison: p.skip_poison,
            lease_retry: p.lease_retry,
            relay: p.relay.then(|| RelayConfig {
                nats: (&settings.nats).into(),
                prefix: settings.nats.prefix.clone(),
            }),
            redis: p.redis.then(|| RedisConfig::from_settings(settings)),
            vectors,
            ..ProjectorConfig::default()
        }
    }

    /// The vector projection alone (`copilot-data embedder`): embedding in
    /// a process of its own, on a host of its own if need be, cannot take
    /// the CPU the other projections and the services need. The projector
    /// beside it runs without the vector projection.
    pub fn embedder(settings: &infra::Settings, vectors: VectorConfig) -> Self {
        ProjectorConfig {
            projections: Vec::new(),
            instance: format!("embedder-{}", std::process::id()),
            relay: None,
            redis: None,
            ..ProjectorConfig::from_settings(settings, Some(vectors))
        }
    }
}

enum Exit {
    Shutdown,
    LeaseBusy,
}

/// Runs the configured projections until `shutdown` completes; batches in
/// progress finish first.
pub async fn run(
    config: ProjectorConfig,
    store: EventStore,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ProjectionError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for kind in config.projections.clone() {
        tasks.push(tokio::spawn(run_projection(
            kind,
            store.clone(),
            config.clone(),
            stop_rx.clone(),
        )));
    }
    let sinks = [
        config.relay.clone().map(Sink::Relay),
        config.redis.clone().map(Sink::Redis),
        config.vectors.clone().map(Sink::Vectors),
    ];
    for sink in sinks.into_iter().flatten() {
        tasks.push(tokio::spawn(run_sink(
            sink,
            store.clone(),
            config.clone(),
            stop_rx.clone(),
        )));
    }
    if config.projections.contains(&Kind::Audit) {
        tasks.push(tokio::spawn(audit_maintenance(
            store.clone(),
            config.maintenance_interval,
            stop_rx.clone(),
        )));
    }
    shutdown.await;
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = task.await;
    }
    Ok(())
}

async fn sleep_or_stop(duration: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(duration) => false,
        _ = stop.changed() => true,
    }
}

/// How one attempt at leading a projection ended.
enum Ended {
    Exit(Exit),
    /// Its checkpoint was moved by another writer; start over from it.
    Moved(String),
    /// Failed, with the `kind` label the error counts under.
    Failed(&'static str, String),
}

impl From<Result<Exit, ProjectionError>> for Ended {
    fn from(result: Result<Exit, ProjectionError>) -> Self {
        match result {
            Ok(exit) => Ended::Exit(exit),
            Err(ProjectionError::Moved(detail)) => Ended::Moved(detail),
            Err(error) => Ended::Failed("database", error.to_string()),
        }
    }
}

impl From<Result<Exit, SinkError>> for Ended {
    fn from(result: Result<Exit, SinkError>) -> Self {
        match result {
            Ok(exit) => Ended::Exit(exit),
            Err(SinkError::Projection(ProjectionError::Moved(detail))) => Ended::Moved(detail),
            Err(error) => Ended::Failed("sink", error.to_string()),
        }
    }
}

/// Runs `attempt` (take the lease, then project) again and again until
/// shutdown: right away after a moved checkpoint, after `lease_retry` while
/// another process leads, with growing backoff after failures.
async fn supervise<F, Fut>(
    name: &'static str,
    lease_retry: Duration,
    mut stop: watch::Receiver<bool>,
    mut attempt: F,
) where
    F: FnMut(watch::Receiver<bool>) -> Fut,
    Fut: std::future::Future<Output = Ended>,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        if *stop.borrow() {
            return;
        }
        let ended = attempt(stop.clone()).await;
        metrics().leader.with_label_values(&[name]).set(0);
        let wait = match ended {
            Ended::Exit(Exit::Shutdown) => return,
            Ended::Exit(Exit::LeaseBusy) => lease_retry,
            Ended::Moved(detail) => {
                metrics().errors.with_label_values(&[name, "moved"]).inc();
                tracing::info!(projection = name, %detail, "checkpoint moved; restarting from it");
                Duration::ZERO
            }
            Ended::Failed(kind, error) => {
                metrics().errors.with_label_values(&[name, kind]).inc();
                tracing::warn!(projection = name, %error, retry_in = ?backoff, "projection failed; retrying");
                let wait = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                wait
            }
        };
        if sleep_or_stop(wait, &mut stop).await {
            return;
        }
    }
}

async fn run_projection(
    kind: Kind,
    store: EventStore,
    config: ProjectorConfig,
    stop: watch::Receiver<bool>,
) {
    let (store, config) = (&store, &config);
    supervise(
        kind.name(),
        config.lease_retry,
        stop,
        |mut stop| async move { Ended::from(lead(kind, store, config, &mut stop).await) },
    )
    .await;
}

/// Takes the lease of `kind` and projects until shutdown, a poison stop or
/// an error. The lease is a session advisory lock on the connection the
/// batches are written with: if that connection dies, so does the lease.
async fn lead(
    kind: Kind,
    store: &EventStore,
    config: &ProjectorConfig,
    stop: &mut watch::Receiver<bool>,
) -> Result<Exit, ProjectionError> {
    let name = kind.name();
    let Some(mut conn) = take_lease(store, name, &config.instance).await? else {
        return Ok(Exit::LeaseBusy);
    };
    // Under the lease, so one process rebuilds and none writes meanwhile.
    crate::rebuild::upgrade_schema(store, kind, config.batch_size)
        .await
        .map_err(|e| ProjectionError::Upgrade(Box::new(e)))?;
    let policy = if config.skip_poison {
        PoisonPolicy::Skip
    } else {
        PoisonPolicy::Stop
    };
    let mut projection = SqlProjection::new(kind, kind.live_schema(), policy);
    let position = checkpoint::position(&mut conn, name).await?;
    follow(
        &mut conn,
        store,
        &mut projection,
        position,
        config.batch_size,
        stop,
    )
    .await
}

/// How often an idle writer looks whether its checkpoint was moved (a
/// `replay` reset, a blue/green swap).
const MOVED_CHECK: Duration = Duration::from_secs(1);

/// The live loop of every projection: follows the log from `position`
/// with `conn` (which holds the lease), one [`Projection::step`] a batch,
/// until shutdown or an error; a stopped projection waits here, lease
/// kept, until an operator releases it.
async fn follow<P: Projection>(
    conn: &mut PgConnection,
    store: &EventStore,
    projection: &mut P,
    mut position: Position,
    batch_size: usize,
    stop: &mut watch::Receiver<bool>,
) -> Result<Exit, P::Error> {
    let name = projection.name();
    let mut subscription = store.subscribe(position).await.with_batch_size(batch_size);
    // The checkpoint can move while this writer is idle: look now and then,
    // not only when events come.
    let mut check = tokio::time::interval(MOVED_CHECK);
    let mut history = LagHistory::new(name);
    let mut flush = tokio::time::interval(lag_history::FLUSH_EVERY);
    loop {
        let events = tokio::select! {
            batch = subscription.next_batch() => batch.map_err(ProjectionError::from)?,
            _ = stop.changed() => {
                history.report(conn, store, position).await;
                return Ok(Exit::Shutdown);
            }
            _ = flush.tick() => {
                history.report(conn, store, position).await;
                continue;
            }
            _ = check.tick() => {
                let at = checkpoint::position(&mut *conn, name)
                    .await
                    .map_err(ProjectionError::from)?;
                if at != position {
                    return Err(ProjectionError::Moved(format!("{name} (at {at}, this writer at {position})")).into());
                }
                continue;
            }
        };
        let started = Instant::now();
        match projection.step(conn, name, position, &events).await? {
            Outcome::Applied(to) => {
                position = to;
                let m = metrics();
                m.events
                    .with_label_values(&[name])
                    .inc_by(events.len() as u64);
                m.batch_seconds
                    .with_label_values(&[name])
                    .observe(started.elapsed().as_secs_f64());
                history.applied(&events, started);
                tracing::debug!(projection = name, events = events.len(), %position, "batch applied");
            }
            Outcome::Parked {
                position: to,
                reason,
                stopped,
            } => {
                metrics().errors.with_label_values(&[name, "poison"]).inc();
                position = to;
                if stopped {
                    metrics().stopped.with_label_values(&[name]).set(1);
                    tracing::error!(projection = name, %position, %reason,
                        "poison event parked in projection_errors; projection stopped \
                         (`copilot-data projection skip|retry`)");
                    // The lease is kept, so no other projector tries the
                    // same event meanwhile.
                    if !released(conn, name, stop).await? {
                        return Ok(Exit::Shutdown);
                    }
                    metrics().stopped.with_label_values(&[name]).set(0);
                    position = checkpoint::position(&mut *conn, name)
                        .await
                        .map_err(ProjectionError::from)?;
                    projection.reset();
                    tracing::info!(projection = name, %position, "released by an operator; going on");
                } else {
                    tracing::warn!(projection = name, %position, %reason,
                        "poison event parked in projection_errors and skipped");
                }
                // The subscription has read past the parked event's batch.
                subscription = store.subscribe(position).await.with_batch_size(batch_size);
            }
        }
    }
}

/// Waits until an operator releases stopped projection `name` (true) or
/// the process shuts down (false).
async fn released(
    conn: &mut PgConnection,
    name: &str,
    stop: &mut watch::Receiver<bool>,
) -> Result<bool, ProjectionError> {
    loop {
        tokio::select! {
            _ = stop.changed() => return Ok(false),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if !crate::parked::is_stopped(conn, name).await? {
            return Ok(true);
        }
    }
}

/// A connection holding the lease of projection `name`, or `None` if
/// another process holds it. The lease lasts as long as the connection.
async fn take_lease(
    store: &EventStore,
    name: &str,
    instance: &str,
) -> Result<Option<PgConnection>, sqlx::Error> {
    let mut conn = crate::rebuild::connect(store).await?;
    let leased: bool = sqlx::query_scalar(
        "SELECT pg_try_advisory_lock(hashtextextended('copilot_projection:' || $1, 0))",
    )
    .bind(name)
    .fetch_one(&mut conn)
    .await?;
    if !leased {
        return Ok(None);
    }
    sqlx::query(
        "INSERT INTO projection_status (name, holder, acquired_at, stopped, updated_at)
         VALUES ($1, $2, now(), NULL, now())
         ON CONFLICT (name) DO UPDATE
            SET holder = EXCLUDED.holder, acquired_at = now(), stopped = NULL, updated_at = now()",
    )
    .bind(name)
    .bind(instance)
    .execute(&mut conn)
    .await?;
    metrics().leader.with_label_values(&[name]).set(1);
    metrics().stopped.with_label_values(&[name]).set(0);
    tracing::info!(projection = name, instance, "lease taken");
    Ok(Some(conn))
}

/// A projection outside PostgreSQL: at least once, idempotent writes.
#[derive(Debug, Clone)]
pub enum Sink {
    Relay(RelayConfig),
    Redis(RedisConfig),
    Vectors(VectorConfig),
}

impl Sink {
    /// Its checkpoint and lease name.
    pub fn name(&self) -> &'static str {
        match self {
            Sink::Relay(_) => crate::relay::NAME,
            Sink::Redis(_) => crate::redis_model::NAME,
            Sink::Vectors(_) => crate::vector_model::NAME,
        }
    }
}

/// A sink, connected: the [`Projection`] of whichever the configuration
/// names.
enum OpenSink {
    Relay(Box<Relay>),
    Redis(Box<RedisModel>),
    Vectors(Box<VectorModel>),
}

impl OpenSink {
    async fn open(sink: &Sink, store: &EventStore, from: Position) -> Result<Self, SinkError> {
        Ok(match sink {
            Sink::Relay(config) => OpenSink::Relay(Box::new(Relay::connect(config).await?)),
            Sink::Redis(config) => OpenSink::Redis(Box::new(RedisModel::connect(config).await?)),
            Sink::Vectors(config) => {
                OpenSink::Vectors(Box::new(VectorModel::open(config, store, from).await?))
            }
        })
    }
}

impl Projection for OpenSink {
    type Error = SinkError;

    const DELIVERY: Delivery = Delivery::AtLeastOnce;

    fn name(&self) -> &'static str {
        match self {
            OpenSink::Relay(_) => crate::relay::NAME,
            OpenSink::Redis(_) => crate::redis_model::NAME,
            OpenSink::Vectors(_) => crate::vector_model::NAME,
        }
    }

    /// Writes the sink; `_conn` is in no transaction and not used.
    async fn apply(
        &mut self,
        _conn: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> Result<(), SinkError> {
        match self {
            OpenSink::Relay(relay) => relay.publish(events).await?,
            OpenSink::Redis(model) => model.write(events).await?,
            OpenSink::Vectors(model) => model.write(events).await?,
        }
        Ok(())
    }
}

async fn run_sink(
    sink: Sink,
    store: EventStore,
    config: ProjectorConfig,
    stop: watch::Receiver<bool>,
) {
    let (sink, store, config) = (&sink, &store, &config);
    supervise(sink.name(), config.lease_retry, stop, |mut stop| async move {
        Ended::from(sink_while_leading(sink, store, config, &mut stop).await)
    })
    .await;
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Store(#[from] eventstore::StoreError),
    #[error(transparent)]
    Relay(#[from] RelayError),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Vectors(#[from] VectorSinkError),
}

/// Takes the lease of `sink` and follows the log with it, from its
/// checkpoint, until shutdown or an error.
async fn sink_while_leading(
    sink: &Sink,
    store: &EventStore,
    projector: &ProjectorConfig,
    stop: &mut watch::Receiver<bool>,
) -> Result<Exit, SinkError> {
    let name = sink.name();
    let Some(mut conn) = take_lease(store, name, &projector.instance).await? else {
        return Ok(Exit::LeaseBusy);
    };
    let position = checkpoint::position(&mut conn, name).await?;
    let mut open = OpenSink::open(sink, store, position).await?;
    follow(
        &mut conn,
        store,
        &mut open,
        position,
        projector.batch_size,
        stop,
    )
    .await
}

/// Applies the log to `sink` from its checkpoint until caught up, in this
/// process (for `replay`): `None` if a running projector holds its lease
/// (that projector then does the work).
pub async fn catch_up_sink(
    store: &EventStore,
    sink: &Sink,
    instance: &str,
    batch_size: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Option<u64>, SinkError> {
    let name = sink.name();
    let Some(mut conn) = take_lease(store, name, instance).await? else {
        return Ok(None);
    };
    let mut position = checkpoint::position(&mut conn, name).await?;
    let mut open = OpenSink::open(sink, store, position).await?;
    let mut applied = 0u64;
    loop {
        let batch = store.read_all_after(position, batch_size).await?;
        if batch.events.is_empty() {
            return Ok(Some(applied));
        }
        position = open
            .step(&mut conn, name, position, &batch.events)
            .await?
            .position();
        applied += batch.events.len() as u64;
        progress(applied);
        if batch.caught_up {
            return Ok(Some(applied));
        }
    }
}

/// Creates the audit log's partitions ahead and drops those past retention.
pub async fn maintain_audit(
    pool: &sqlx::PgPool,
    schema: &str,
    now: chrono::DateTime<Utc>,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query(
        "SELECT audit_ensure_partition($1, (date_trunc('month', $2::timestamptz) + make_interval(months => m))::date)
           FROM generate_series(0, 3) AS m",
    )
    .bind(schema)
    .bind(now)
    .execute(pool)
    .await?;
    sqlx::query_scalar("SELECT audit_prune($1, $2)")
        .bind(schema)
        .bind(retention_start(now))
        .fetch_all(pool)
        .await
}

async fn audit_maintenance(store: EventStore, interval: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        match maintain_audit(store.pool(), Kind::Audit.live_schema(), Utc::now()).await {
            Ok(dropped) if !dropped.is_empty() => {
                tracing::info!(?dropped, "audit partitions past retention dropped");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "audit partition maintenance failed"),
        }
        if sleep_or_stop(interval, &mut stop).await {
            return;
        }
    }
}
