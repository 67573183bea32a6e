//! `bench append`: event store appends and read-back beside bare SQL.
//!
//! Baselines, in the same scratch database and run: the same row shape
//! written by bare `INSERT`s (one single-row INSERT per transaction; for
//! ten-event appends one ten-row INSERT per transaction) into a table with
//! only a primary key, and read back with one sequential scan.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventstore::{
    AppendRequest, EventStore, ExpectedVersion, Metadata, NewEvent, Position, StoreOptions,
};
use indicatif::{ProgressBar, ProgressStyle};
use infra::Settings;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::report::{Figure, Latencies};
use super::scratch::ScratchDb;
use crate::cli::BenchArgs;

const WRITERS: [usize; 3] = [1, 8, 32];
const EVENTS_PER_APPEND: [usize; 2] = [1, 10];
/// Appends per stream before a writer moves to a new stream.
const STREAM_LENGTH: u64 = 100;

pub async fn run(args: &BenchArgs, settings: &Settings) -> anyhow::Result<Vec<Figure>> {
    let duration = Duration::from_secs_f64(args.seconds.max(0.1));
    let (scratch, pool) = ScratchDb::create(&settings.database, 40, args.keep).await?;
    tracing::info!(database = scratch.name(), "bench database ready");
    create_bare_table(&pool).await?;
    let store = EventStore::connect(
        pool.clone(),
        StoreOptions {
            batch_size: 5000,
            ..StoreOptions::default()
        },
    )
    .await?;
    run_measurements(duration, store, pool, scratch).await
}

/// The baseline's table: the event row shape with only a primary key.
pub(super) async fn create_bare_table(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query(
        "CREATE TABLE bench_bare_events (
            id bigserial PRIMARY KEY,
            stream_id uuid NOT NULL,
            version bigint NOT NULL,
            event_id uuid NOT NULL,
            stream_type text NOT NULL,
            event_type text NOT NULL,
            schema_version integer NOT NULL,
            payload bytea NOT NULL,
            metadata jsonb NOT NULL,
            recorded_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(pool)
    .await?;
    Ok(())
}

async fn run_measurements(
    duration: Duration,
    store: EventStore,
    pool: PgPool,
    scratch: ScratchDb,
) -> anyhow::Result<Vec<Figure>> {
    let steps = (WRITERS.len() * EVENTS_PER_APPEND.len() * 2 + 2) as u64;
    let progress = ProgressBar::new(steps).with_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    progress.enable_steady_tick(Duration::from_millis(200));

    let mut figures = Vec::new();
    for writers in WRITERS {
        for per in EVENTS_PER_APPEND {
            progress.set_message(format!("event store: {writers} writers x {per} events"));
            let mut ours = drive(writers, duration, |_| {
                let store = store.clone();
                async move { store_writer(store, per, duration).await }
            })
            .await?;
            progress.inc(1);
            progress.set_message(format!("bare INSERT: {writers} writers x {per} events"));
            let mut bare = drive(writers, duration, |_| {
                let pool = pool.clone();
                async move { bare_writer(pool, per, duration).await }
            })
            .await?;
            progress.inc(1);
            let label = format!("w{writers}.e{per}");
            figures.push(Figure::compared(
                format!("append.{label}.events_per_s"),
                ours.events_per_s(),
                "events/s",
                format!("bare_insert.{label}.events_per_s"),
                bare.events_per_s(),
            ));
            for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
                figures.push(Figure::compared(
                    format!("append.{label}.{name}"),
                    ours.latencies.quantile_ms(q),
                    "ms",
                    format!("bare_insert.{label}.{name}"),
                    bare.latencies.quantile_ms(q),
                ));
            }
        }
    }

    progress.set_message("reading back through a subscription");
    let (ours_count, ours_elapsed) = read_back_subscription(&store).await?;
    progress.inc(1);
    progress.set_message("bare sequential scan");
    let (bare_count, bare_elapsed) = read_back_bare(&pool).await?;
    progress.inc(1);
    progress.finish_and_clear();
    figures.push(Figure::compared(
        "read_all.subscription.events_per_s",
        ours_count as f64 / ours_elapsed.as_secs_f64(),
        "events/s",
        "bare_seq_scan.events_per_s",
        bare_count as f64 / bare_elapsed.as_secs_f64(),
    ));
    tracing::info!(
        events = ours_count,
        bare_rows = bare_count,
        "read back every event"
    );

    drop(store);
    scratch.drop_db(pool).await?;
    Ok(figures)
}

#[derive(Default)]
pub(super) struct RunResult {
    pub(super) events: u64,
    pub(super) elapsed: Duration,
    pub(super) latencies: Latencies,
}

impl RunResult {
    /// Adds another turn of the same workload.
    pub(super) fn absorb(&mut self, turn: RunResult) {
        self.events += turn.events;
        self.elapsed += turn.elapsed;
        self.latencies.extend(turn.latencies);
    }

    pub(super) fn events_per_s(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs `writers` concurrent writers for about `duration` each.
pub(super) async fn drive<F, Fut>(
    writers: usize,
    duration: Duration,
    make: F,
) -> anyhow::Result<RunResult>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<(u64, Latencies)>> + Send + 'static,
{
    let started = Instant::now();
    let handles: Vec<_> = (0..writers).map(|i| tokio::spawn(make(i))).collect();
    let mut result = RunResult::default();
    for handle in handles {
        let (events, latencies) = handle.await??;
        result.events += events;
        result.latencies.extend(latencies);
    }
    result.elapsed = started.elapsed().max(duration / 2);
    tracing::debug!(
        appends = result.latencies.len(),
        events = result.events,
        "writers done"
    );
    Ok(result)
}

/// A message-sized MessagePack payload, like the command service writes.
fn sample_payload() -> Arc<Vec<u8>> {
    #[derive(serde::Serialize)]
    struct MessageAppended<'a> {
        message_id: Uuid,
        role: &'a str,
        content: &'a str,
        tokens_in: u32,
        tokens_out: u32,
        cost_usd: &'a str,
    }
    let payload = MessageAppended {
        message_id: Uuid::now_v7(),
        role: "assistant",
        content: "The deployment failed because the migration locked the orders table; \
                  I rolled it back and opened an incident with the timeline attached.",
        tokens_in: 812,
        tokens_out: 164,
        cost_usd: "0.00412",
    };
    Arc::new(rmp_serde::to_vec_named(&payload).unwrap_or_default())
}

fn sample_metadata() -> Metadata {
    Metadata {
        command_id: None,
        correlation_id: Some(Uuid::now_v7()),
        causation_id: None,
        actor: Some(Uuid::now_v7().to_string()),
        ip: Some("192.0.2.10".into()),
        user_agent: Some("copilot-bench/1".into()),
        ..Metadata::default()
    }
}

async fn store_writer(
    store: EventStore,
    per: usize,
    duration: Duration,
) -> anyhow::Result<(u64, Latencies)> {
    let payload = sample_payload();
    let metadata = sample_metadata();
    let deadline = Instant::now() + duration;
    let mut latencies = Latencies::default();
    let mut events = 0u64;
    let mut stream = Uuid::now_v7();
    let mut version = 0u64;
    while Instant::now() < deadline {
        if version >= STREAM_LENGTH * per as u64 {
            stream = Uuid::now_v7();
            version = 0;
        }
        let request = AppendRequest {
            stream_id: stream,
            stream_type: "conversation".into(),
            expected: ExpectedVersion::Exact(version),
            events: (0..per)
                .map(|_| NewEvent::new("message_appended", 1, payload.to_vec()))
                .collect(),
            metadata: Metadata {
                command_id: Some(Uuid::now_v7()),
                ..metadata.clone()
            },
        };
        let started = Instant::now();
        let outcome = store.append(&request).await?;
        latencies.push(started.elapsed());
        version = outcome.version;
        events += per as u64;
    }
    Ok((events, latencies))
}

/// The baseline writer: the same rows by bare SQL, on a connection it holds
/// for the whole run (a pool would add a round trip of its own to every
/// statement, testing the connection as it takes it back).
pub(super) async fn bare_writer(
    pool: PgPool,
    per: usize,
    duration: Duration,
) -> anyhow::Result<(u64, Latencies)> {
    let mut connection = pool.acquire().await?;
    let payload = sample_payload();
    let metadata = serde_json::to_value(sample_metadata())?;
    let deadline = Instant::now() + duration;
    let mut latencies = Latencies::default();
    let mut events = 0u64;
    let stream = Uuid::now_v7();
    let mut version = 0i64;
    while Instant::now() < deadline {
        let started = Instant::now();
        if per == 1 {
            version += 1;
            sqlx::query(
                "INSERT INTO bench_bare_events
                    (stream_id, version, event_id, stream_type, event_type, schema_version, payload, metadata)
                 VALUES ($1, $2, $3, 'conversation', 'message_appended', 1, $4, $5)",
            )
            .bind(stream)
            .bind(version)
            .bind(Uuid::now_v7())
            .bind(payload.as_slice())
            .bind(&metadata)
            .execute(&mut *connection)
            .await?;
        } else {
            let versions: Vec<i64> = (1..=per as i64).map(|i| version + i).collect();
            version += per as i64;
            let ids: Vec<Uuid> = (0..per).map(|_| Uuid::now_v7()).collect();
            let payloads: Vec<&[u8]> = (0..per).map(|_| payload.as_slice()).collect();
            sqlx::query(
                "INSERT INTO bench_bare_events
                    (stream_id, version, event_id, stream_type, event_type, schema_version, payload, metadata)
                 SELECT $1, v, id, 'conversation', 'message_appended', 1, p, $5
                   FROM unnest($2::bigint[], $3::uuid[], $4::bytea[]) AS t(v, id, p)",
            )
            .bind(stream)
            .bind(&versions)
            .bind(&ids)
            .bind(&payloads)
            .bind(&metadata)
            .execute(&mut *connection)
            .await?;
        }
        latencies.push(started.elapsed());
        events += per as u64;
    }
    Ok((events, latencies))
}

async fn read_back_subscription(store: &EventStore) -> anyhow::Result<(u64, Duration)> {
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(store.pool())
        .await?;
    let started = Instant::now();
    let mut subscription = store.subscribe(Position::START).await;
    let mut read = 0u64;
    let mut bytes = 0usize;
    while read < total.unsigned_abs() {
        let batch = subscription.next_batch().await?;
        read += batch.len() as u64;
        bytes += batch.iter().map(|e| e.payload.len()).sum::<usize>();
    }
    let elapsed = started.elapsed();
    tracing::debug!(bytes, "subscription read");
    Ok((read, elapsed))
}

async fn read_back_bare(pool: &PgPool) -> anyhow::Result<(u64, Duration)> {
    use futures_util::TryStreamExt;

    let started = Instant::now();
    let mut rows = sqlx::query(
        "SELECT id, stream_id, version, event_id, stream_type, event_type, schema_version,
                payload, metadata, recorded_at
           FROM bench_bare_events",
    )
    .fetch(pool);
    let mut read = 0u64;
    let mut bytes = 0usize;
    while let Some(row) = rows.try_next().await? {
        // Decode every column, as the event store does.
        let _: (i64, Uuid, i64, Uuid, String, String, i32) = (
            row.try_get(0)?,
            row.try_get(1)?,
            row.try_get(2)?,
            row.try_get(3)?,
            row.try_get(4)?,
            row.try_get(5)?,
            row.try_get(6)?,
        );
        let payload: Vec<u8> = row.try_get(7)?;
        let sqlx::types::Json(_metadata): sqlx::types::Json<Metadata> = row.try_get(8)?;
        let _: chrono::DateTime<chrono::Utc> = row.try_get(9)?;
        bytes += payload.len();
        read += 1;
    }
    let elapsed = started.elapsed();
    tracing::debug!(bytes, "bare scan");
    Ok((read, elapsed))
}
