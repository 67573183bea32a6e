//! Rebuilding projections from the log: blue/green replay into a shadow
//! schema with a swap, point-in-time copies, and `verify`.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use eventstore::{checkpoint, EventStore, Position, RecordedEvent};
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio::sync::mpsc;

use crate::batch::{Outcome, PoisonPolicy};
use crate::changes::run_sql;
use crate::projection::{Kind, Projection, SqlProjection};
use crate::ProjectionError;

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Store(#[from] eventstore::StoreError),
    #[error("{projection}: the live schema is version {live}, newer than this program's {current}; run the newer release")]
    NewerSchema {
        projection: &'static str,
        live: i32,
        current: i32,
    },
    #[error("{0}")]
    Task(String),
    #[error("{projection}: poison event at {position}: {reason}")]
    Poison {
        projection: &'static str,
        position: Position,
        reason: String,
    },
}

/// How far a rebuild reads the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Everything readable now.
    Head,
    /// Up to and including this position.
    Position(Position),
    /// The longest prefix of the log recorded at or before this time (a
    /// prefix, so every stream is cut at a consistent version).
    Time(DateTime<Utc>),
}

impl Until {
    /// How many of `events` are within the limit; `true` if the limit was hit.
    fn cut(self, events: &[RecordedEvent]) -> (usize, bool) {
        let within = |e: &RecordedEvent| match self {
            Until::Head => true,
            Until::Position(p) => e.position <= p,
            Until::Time(t) => e.recorded_at <= t,
        };
        let n = events.iter().take_while(|e| within(e)).count();
        (n, n < events.len())
    }
}

#[derive(Debug, Clone, Copy)]
pub struct BuildReport {
    pub events: u64,
    pub position: Position,
    pub elapsed: Duration,
}

/// Options of a rebuild.
#[derive(Clone, Copy)]
pub struct BuildOptions<'a> {
    pub until: Until,
    pub batch_size: usize,
    /// Called after each batch with the events applied so far.
    pub progress: &'a (dyn Fn(u64) + Sync),
}

/// A connection of its own (not from the pool) for a projection writer,
/// acting as `copilot_projector` (migration 0011): what it creates (the
/// schemas of a blue/green rebuild) belongs to that role, so any of the
/// projector's logins can take it over or drop it, and it writes with no
/// more rights than that role has.
pub async fn connect(store: &EventStore) -> Result<PgConnection, sqlx::Error> {
    let mut conn = store.pool().connect_options().connect().await?;
    // "already exists, skipping" notices of the staging tables are noise.
    run_sql(
        &mut conn,
        "SET client_min_messages TO warning; SET ROLE copilot_projector",
    )
    .await?;
    Ok(conn)
}

/// Creates `schema` afresh (dropping what was there) with `kind`'s tables
/// and views, but not its secondary indexes (see [`create_indexes`]).
pub async fn create_schema(
    conn: &mut PgConnection,
    kind: Kind,
    schema: &str,
) -> Result<(), sqlx::Error> {
    let fresh = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE; CREATE SCHEMA \"{schema}\"");
    run_ddl_in(conn, schema, &fresh, kind.ddl_tables()).await
}

/// Creates the secondary indexes of `kind` in `schema`.
pub async fn create_indexes(
    conn: &mut PgConnection,
    kind: Kind,
    schema: &str,
) -> Result<(), sqlx::Error> {
    // Index builds may use more memory than a query.
    let settings = "SET LOCAL maintenance_work_mem = '256MB'";
    run_ddl_in(conn, schema, settings, kind.ddl_indexes()).await
}

/// Runs `before`, then the schema-relative `ddl` with `schema` first on
/// the search path, in one transaction.
async fn run_ddl_in(
    conn: &mut PgConnection,
    schema: &str,
    before: &str,
    ddl: &str,
) -> Result<(), sqlx::Error> {
    let mut tx = conn.begin().await?;
    run_sql(&mut tx, before).await?;
    run_sql(
        &mut tx,
        &format!("SET LOCAL search_path TO \"{schema}\", public"),
    )
    .await?;
    run_sql(&mut tx, ddl).await?;
    tx.commit().await
}

pub async fn drop_schema(conn: &mut PgConnection, schema: &str) -> Result<(), sqlx::Error> {
    run_sql(conn, &format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).await?;
    Ok(())
}

/// Reads the log from `after` in batches, one batch ahead of the caller,
/// until it is caught up or past `until`.
fn read_ahead(
    store: &EventStore,
    after: Position,
    until: Until,
    batch_size: usize,
) -> mpsc::Receiver<Result<Vec<RecordedEvent>, eventstore::StoreError>> {
    let (sender, receiver) = mpsc::channel(2);
    let store = store.clone();
    tokio::spawn(async move {
        let mut position = after;
        loop {
            let batch = match store.read_all_after(position, batch_size).await {
                Ok(batch) => batch,
                Err(error) => {
                    let _ = sender.send(Err(error)).await;
                    return;
                }
            };
            let (n, limit_hit) = until.cut(&batch.events);
            let mut events = batch.events;
            events.truncate(n);
            if let Some(last) = events.last() {
                position = last.position;
            }
            let done = limit_hit || batch.caught_up || events.is_empty();
            if !events.is_empty() && sender.send(Ok(events)).await.is_err() {
                return;
            }
            if done {
                return;
            }
        }
    });
    receiver
}

/// Builds `kind` into `schema` from the start of the log, saving its
/// position under `checkpoint_name`. Returns the projection (with what it
/// remembers) so a swap can continue from it.
pub async fn build(
    store: &EventStore,
    conn: &mut PgConnection,
    kind: Kind,
    schema: &str,
    checkpoint_name: &str,
    options: BuildOptions<'_>,
) -> Result<(SqlProjection, BuildReport), RebuildError> {
    let started = Instant::now();
    create_schema(conn, kind, schema).await?;
    checkpoint::delete(&mut *conn, checkpoint_name).await?;
    let mut projection = SqlProjection::new(kind, schema, PoisonPolicy::Stop);
    // A rebuild that stops for any reason starts again from an empty
    // schema, so its batches need not wait for the WAL to reach the disk
    // (a crash loses at most the last of them, and with them nothing
    // anyone reads). The setting is reset whatever the outcome; the index
    // build below commits as usual, which makes everything before it
    // durable too.
    run_sql(conn, "SET synchronous_commit = off").await?;
    let loaded = load(store, conn, &mut projection, kind, checkpoint_name, options).await;
    let reset = run_sql(conn, "RESET synchronous_commit").await;
    let (position, applied) = loaded?;
    reset?;
    create_indexes(conn, kind, schema).await?;
    Ok((
        projection,
        BuildReport {
            events: applied,
            position,
            elapsed: started.elapsed(),
        },
    ))
}

/// Applies the log from its start to `projection`, batch by batch, up to
/// `options.until`. Returns the position reached and the events applied.
async fn load(
    store: &EventStore,
    conn: &mut PgConnection,
    projection: &mut SqlProjection,
    kind: Kind,
    checkpoint_name: &str,
    options: BuildOptions<'_>,
) -> Result<(Position, u64), RebuildError> {
    let mut position = Position::START;
    let mut applied = 0u64;
    let mut batches = read_ahead(store, Position::START, options.until, options.batch_size);
    while let Some(events) = batches.recv().await {
        let events = events?;
        position = match projection
            .step(conn, checkpoint_name, position, &events)
            .await?
        {
            Outcome::Applied(to) => to,
            Outcome::Parked {
                position, reason, ..
            } => {
                return Err(RebuildError::Poison {
                    projection: kind.name(),
                    position,
                    reason,
                })
            }
        };
        applied += events.len() as u64;
        (options.progress)(applied);
    }
    Ok((position, applied))
}

/// Applies what the log holds after `position` to the projection's schema,
/// inside the caller's transaction (which holds the live checkpoint's
/// lock), up to `until`. Returns the new position.
async fn catch_up_in(
    conn: &mut PgConnection,
    store: &EventStore,
    projection: &mut SqlProjection,
    mut position: Position,
    until: Until,
    batch_size: usize,
) -> Result<Position, RebuildError> {
    loop {
        let batch = store.read_all_after(position, batch_size).await?;
        let (n, limit_hit) = until.cut(&batch.events);
        let events = &batch.events[..n];
        if let Some(last) = events.last() {
            if let Err(error) = projection.apply(&mut *conn, events).await {
                projection.reset();
                return Err(error.into());
            }
            position = last.position;
        }
        if limit_hit || batch.caught_up || events.is_empty() {
            return Ok(position);
        }
    }
}

/// Replays `kind` from the start into a shadow schema while the live one
/// keeps serving, then swaps them in one transaction: the live
/// projection's checkpoint row is locked (its writer waits), the shadow
/// catches up with the last events, the schemas trade names and the
/// checkpoint moves to the shadow's position. The old tables are dropped
/// after the commit.
pub async fn replay_and_swap(
    store: &EventStore,
    kind: Kind,
    batch_size: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<BuildReport, RebuildError> {
    let live = kind.live_schema();
    let shadow = format!("{live}_shadow");
    let shadow_checkpoint = format!("{}@shadow", kind.name());
    let mut conn = connect(store).await?;
    let (mut projection, mut report) = build(
        store,
        &mut conn,
        kind,
        &shadow,
        &shadow_checkpoint,
        BuildOptions {
            until: Until::Head,
            batch_size,
            progress,
        },
    )
    .await?;

    let retired = format!("{live}_retired");
    drop_schema_retrying(&mut conn, &retired).await?;
    let mut tx = conn.begin().await?;
    // Locks the live checkpoint row: the live writer's next batch waits.
    let live_position = checkpoint::lock(&mut tx, kind.name()).await?;
    let position = catch_up_in(
        &mut tx,
        store,
        &mut projection,
        report.position,
        Until::Head,
        batch_size,
    )
    .await?;
    report.events += store.count_between(report.position, position).await?;
    report.position = position;
    checkpoint::save(&mut *tx, kind.name(), position).await?;
    checkpoint::delete(&mut *tx, &shadow_checkpoint).await?;
    swap_schemas(&mut tx, kind, &shadow).await?;
    tx.commit().await?;
    tracing::info!(projection = kind.name(), from = %live_position, to = %position, "swapped in the rebuilt projection");
    // The swap has happened; dropping the old tables is clean-up. Its
    // locks can meet a projector's (a deadlock PostgreSQL resolves by
    // failing one side), so it is retried, and if it still fails the next
    // replay drops the leftover first.
    if let Err(error) = drop_schema_retrying(&mut conn, &retired).await {
        tracing::warn!(%error, schema = %retired, "the retired tables were not dropped; the next replay drops them");
    }
    Ok(report)
}

/// What [`replay_and_swap_all`] reports for each projection it replayed.
pub type KindReport = (Kind, Result<BuildReport, RebuildError>);

/// [`replay_and_swap`] for each of `kinds` at once, each in a task of its
/// own: the projections share nothing but the log, and a replay spends as
/// much time decoding and encoding on this side as it waits for the
/// server, so side by side they use both kinds of core time (and together
/// take about as long as the longest of them, not the sum). Each swap is
/// its own transaction, so one projection failing leaves the others'
/// swaps standing; every projection's outcome is returned, in the order
/// of `kinds`. `progress` is called with a projection and the events it
/// has applied so far.
pub async fn replay_and_swap_all(
    store: &EventStore,
    kinds: &[Kind],
    batch_size: usize,
    progress: std::sync::Arc<dyn Fn(Kind, u64) + Send + Sync>,
) -> Vec<KindReport> {
    let tasks: Vec<_> = kinds
        .iter()
        .map(|&kind| {
            let (store, progress) = (store.clone(), progress.clone());
            tokio::spawn(async move {
                let on_batch = |n: u64| progress(kind, n);
                replay_and_swap(&store, kind, batch_size, &on_batch).await
            })
        })
        .collect();
    let mut reports = Vec::with_capacity(tasks.len());
    for (&kind, task) in kinds.iter().zip(tasks) {
        let report = task.await.unwrap_or_else(|error| {
            Err(RebuildError::Task(format!(
                "the replay of {} ended: {error}",
                kind.name()
            )))
        });
        reports.push((kind, report));
    }
    reports
}

/// In the caller's transaction: the live schema of `kind` becomes
/// `<live>_retired` (to be dropped after the commit), `shadow` becomes the
/// live one, and its version is recorded.
async fn swap_schemas(
    conn: &mut PgConnection,
    kind: Kind,
    shadow: &str,
) -> Result<(), sqlx::Error> {
    let live = kind.live_schema();
    run_sql(
        conn,
        &format!(
            "ALTER SCHEMA \"{live}\" RENAME TO \"{live}_retired\";
             ALTER SCHEMA \"{shadow}\" RENAME TO \"{live}\";"
        ),
    )
    .await?;
    record_schema_version(conn, kind).await
}

/// Records that the live tables of `kind` are of this code's version.
async fn record_schema_version(conn: &mut PgConnection, kind: Kind) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO projection_schemas (projection, version) VALUES ($1, $2)
         ON CONFLICT (projection) DO UPDATE SET version = EXCLUDED.version, built_at = now()",
    )
    .bind(kind.name())
    .bind(kind.schema_version())
    .execute(conn)
    .await?;
    Ok(())
}

/// The schema version the live tables of `kind` were built with.
pub async fn live_schema_version(conn: &mut PgConnection, kind: Kind) -> Result<i32, sqlx::Error> {
    let version: Option<i32> =
        sqlx::query_scalar("SELECT version FROM projection_schemas WHERE projection = $1")
            .bind(kind.name())
            .fetch_optional(conn)
            .await?;
    // Recorded since migration 0009; what was there before is version 1.
    Ok(version.unwrap_or(1))
}

/// Rebuilds `kind` blue/green if its live schema is of an older version
/// than this code writes (see [`Kind::schema_version`]); true if it did.
/// Called by the holder of the projection's lease before it writes.
pub async fn upgrade_schema(
    store: &EventStore,
    kind: Kind,
    batch_size: usize,
) -> Result<bool, RebuildError> {
    let mut conn = connect(store).await?;
    let live = live_schema_version(&mut conn, kind).await?;
    let current = kind.schema_version();
    if live > current {
        return Err(RebuildError::NewerSchema {
            projection: kind.name(),
            live,
            current,
        });
    }
    if live == current {
        return Ok(false);
    }
    // Nothing projected yet (a new database): the empty tables of the
    // current version are swapped in, and the live projection fills them
    // (parking poison events by its own policy, as always).
    let projected = checkpoint::load(&mut conn, kind.name()).await?;
    if projected.is_none_or(|p| p == Position::START) {
        let live = kind.live_schema();
        let (shadow, retired) = (format!("{live}_shadow"), format!("{live}_retired"));
        create_schema(&mut conn, kind, &shadow).await?;
        create_indexes(&mut conn, kind, &shadow).await?;
        drop_schema_retrying(&mut conn, &retired).await?;
        let mut tx = conn.begin().await?;
        swap_schemas(&mut tx, kind, &shadow).await?;
        tx.commit().await?;
        drop_schema_retrying(&mut conn, &retired).await?;
        tracing::info!(
            projection = kind.name(),
            version = current,
            "created the read model's schema"
        );
        return Ok(true);
    }
    tracing::warn!(
        projection = kind.name(),
        from = live,
        to = current,
        "the live read model is of an older schema version; rebuilding it blue/green from the log"
    );
    let report = replay_and_swap(store, kind, batch_size, &|_| {}).await?;
    tracing::info!(
        projection = kind.name(),
        version = current,
        events = report.events,
        elapsed_ms = report.elapsed.as_millis() as u64,
        "read model rebuilt at its new schema version"
    );
    Ok(true)
}

/// [`drop_schema`], again after a deadlock or a lock timeout.
async fn drop_schema_retrying(conn: &mut PgConnection, schema: &str) -> Result<(), sqlx::Error> {
    let mut attempt = 0u64;
    loop {
        match drop_schema(conn, schema).await {
            Err(sqlx::Error::Database(e))
                if attempt < 5 && matches!(e.code().as_deref(), Some("40P01" | "55P03")) =>
            {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await;
            }
            result => return result,
        }
    }
}

/// Builds `kind` as of `until` into `<live>_asof` and leaves it there for
/// inspection (the live projection is not touched). Returns the schema.
pub async fn build_as_of(
    store: &EventStore,
    kind: Kind,
    until: Until,
    batch_size: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(String, BuildReport), RebuildError> {
    let schema = format!("{}_asof", kind.live_schema());
    let mut conn = connect(store).await?;
    let (_, report) = build(
        store,
        &mut conn,
        kind,
        &schema,
        &format!("{}@asof", kind.name()),
        BuildOptions {
            until,
            batch_size,
            progress,
        },
    )
    .await?;
    Ok((schema, report))
}

/// Row count and an order-independent checksum of a table's rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSum {
    pub rows: i64,
    pub checksum: String,
}

pub async fn table_sum(
    conn: &mut PgConnection,
    schema: &str,
    table: &str,
) -> Result<TableSum, sqlx::Error> {
    let (rows, checksum): (i64, String) = sqlx::query_as(&format!(
        "SELECT count(*), coalesce(sum(('x' || left(md5(t::text), 16))::bit(64)::bigint::numeric), 0)::text
           FROM \"{schema}\".{table} t"
    ))
    .fetch_one(conn)
    .await?;
    Ok(TableSum { rows, checksum })
}

#[derive(Debug, Clone)]
pub struct TableComparison {
    pub projection: &'static str,
    pub table: &'static str,
    pub live: TableSum,
    pub rebuilt: TableSum,
}

impl TableComparison {
    pub fn equal(&self) -> bool {
        self.live == self.rebuilt
    }
}

/// Rebuilds each of `kinds` into a scratch schema up to its live
/// checkpoint and compares them table by table. The comparison runs with
/// the live checkpoint row locked, so the live writer cannot move on
/// between the rebuild's last event and the comparison.
pub async fn verify(
    store: &EventStore,
    kinds: &[Kind],
    batch_size: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<TableComparison>, RebuildError> {
    let mut comparisons = Vec::new();
    let mut conn = connect(store).await?;
    for &kind in kinds {
        let live = kind.live_schema();
        let scratch = format!("{live}_verify");
        let scratch_checkpoint = format!("{}@verify", kind.name());
        let live_position = checkpoint::position(&mut conn, kind.name()).await?;
        let (mut projection, report) = build(
            store,
            &mut conn,
            kind,
            &scratch,
            &scratch_checkpoint,
            BuildOptions {
                until: Until::Position(live_position),
                batch_size,
                progress,
            },
        )
        .await?;
        let mut tx = conn.begin().await?;
        let now_live = checkpoint::load_shared(&mut tx, kind.name())
            .await?
            .unwrap_or(Position::START);
        catch_up_in(
            &mut tx,
            store,
            &mut projection,
            report.position,
            Until::Position(now_live),
            batch_size,
        )
        .await?;
        for table in kind.tables() {
            let live_sum = table_sum(&mut tx, live, table).await?;
            let rebuilt = table_sum(&mut tx, &scratch, table).await?;
            comparisons.push(TableComparison {
                projection: kind.name(),
                table,
                live: live_sum,
                rebuilt,
            });
        }
        tx.rollback().await?;
        drop_schema(&mut conn, &scratch).await?;
        checkpoint::delete(&mut conn, &scratch_checkpoint).await?;
    }
    Ok(comparisons)
}

/// Key patterns the Redis projection owns (the rate limiter's keys, also
/// under the prefix, are not among them).
pub const REDIS_OWNED: [&str; 5] = [
    "session:*",
    "user_sessions:*",
    "cache:*",
    "metrics:*",
    "queue:*",
];

/// Moves the vector projection's checkpoint to the start of the log. The
/// projector that holds its lease (or [`crate::runner::catch_up_sink`])
/// sees it, empties the collections and rebuilds them: only the lease
/// holder writes the store, which matters for the embedded one.
pub async fn reset_vectors(store: &EventStore) -> Result<(), RebuildError> {
    let mut conn = connect(store).await?;
    let mut tx = conn.begin().await?;
    checkpoint::lock(&mut tx, "vectors").await?;
    checkpoint::save(&mut *tx, "vectors", Position::START).await?;
    tx.commit().await?;
    Ok(())
}

/// Empties what the Redis projection keeps and moves its checkpoint to the
/// start, so it is rebuilt from the log (by the running projector, or by
/// [`crate::runner::catch_up_sink`]). The checkpoint row stays locked while
/// the keys are deleted: a batch in progress finishes first, and the next
/// one sees the moved checkpoint and starts over. Returns the keys deleted.
pub async fn reset_redis(
    store: &EventStore,
    config: &crate::redis_model::RedisConfig,
) -> Result<u64, RebuildError> {
    let client = config.url.client()?;
    let mut redis = client.get_multiplexed_async_connection().await?;
    let mut conn = connect(store).await?;
    let mut tx = conn.begin().await?;
    checkpoint::lock(&mut tx, "redis").await?;
    let mut deleted = 0u64;
    for pattern in REDIS_OWNED {
        deleted += infra::redis_conn::delete_matching(&mut redis, &config.prefix, pattern).await?;
    }
    checkpoint::save(&mut *tx, "redis", Position::START).await?;
    tx.commit().await?;
    Ok(deleted)
}
