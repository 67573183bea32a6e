//! `bench replay`: rebuild every SQL projection (audit log included) from a
//! generated log of realistic events, beside a bare binary COPY of the same
//! final rows into empty tables with the same indexes.
//!
//! Both sides create the secondary indexes after loading the rows, and
//! both use two connections at once: the replay runs the relational
//! and the audit projection side by side (as `copilot-data replay` does),
//! the baseline COPYs the relational tables on one connection and the
//! audit log on the other.

use std::time::{Duration, Instant};

use eventstore::{EventStore, StoreOptions};
use futures_util::TryStreamExt;
use indicatif::ProgressBar;
use infra::Settings;
use projector::rebuild::{connect, create_indexes, create_schema};
use projector::Kind;
use sqlx::PgConnection;
use testkit::history::History;

use super::report::Figure;
use super::scratch::ScratchDb;
use crate::cli::BenchArgs;
use crate::ops::progress_bar;

/// Appends per `append_batch` call while generating the log.
const GENERATE_BATCH: usize = 1000;
const REPLAY_BATCH: usize = 5000;

pub async fn run(args: &BenchArgs, settings: &Settings) -> anyhow::Result<Vec<Figure>> {
    let (scratch, pool) = ScratchDb::create(&settings.database, 8, args.keep).await?;
    tracing::info!(database = scratch.name(), "bench database ready");
    let store = EventStore::connect(pool.clone(), StoreOptions::default()).await?;

    let events = generate(&store, args.events).await?;
    sqlx::query("VACUUM ANALYZE events").execute(&pool).await?;

    // The replay `copilot-data replay` runs: every SQL
    // projection side by side, with a bar for each.
    let started = Instant::now();
    let reports = crate::ops::replay_all(&store, &Kind::ALL, events, REPLAY_BATCH).await;
    let replay_time = started.elapsed();
    for (kind, report) in reports {
        let report = report?;
        tracing::info!(
            projection = kind.name(),
            seconds = report.elapsed.as_secs_f64(),
            "replayed"
        );
    }

    let copy_time = bare_copy(&store).await?;
    let rows: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM audit.audit_logs)
              + (SELECT count(*) FROM read_model.users) + (SELECT count(*) FROM read_model.sessions)
              + (SELECT count(*) FROM read_model.conversations) + (SELECT count(*) FROM read_model.messages)
              + (SELECT count(*) FROM read_model.workflows) + (SELECT count(*) FROM read_model.workflow_executions)
              + (SELECT count(*) FROM read_model.step_executions) + (SELECT count(*) FROM read_model.incidents)
              + (SELECT count(*) FROM read_model.runbooks)",
    )
    .fetch_one(&pool)
    .await?;
    tracing::info!(events, rows, "final rows");

    drop(store);
    scratch.drop_db(pool).await?;
    let per_s = |d: Duration| events as f64 / d.as_secs_f64().max(1e-9);
    Ok(vec![
        Figure::compared(
            "replay.all_sql.events_per_s",
            per_s(replay_time),
            "events/s",
            "bare_copy.final_rows.events_per_s",
            per_s(copy_time),
        ),
        Figure::compared(
            "replay.all_sql.seconds",
            replay_time.as_secs_f64(),
            "s",
            "bare_copy.final_rows.seconds",
            copy_time.as_secs_f64(),
        ),
    ])
}

/// Appends `target` events of a simulated system, from two generators at once.
async fn generate(store: &EventStore, target: u64) -> anyhow::Result<u64> {
    let bar = progress_bar(target, "generate");
    let mut tasks = Vec::new();
    for seed in [1u64, 2] {
        let store = store.clone();
        let bar = bar.clone();
        tasks.push(tokio::spawn(async move {
            let mut history = History::new(seed);
            let mut written = 0u64;
            while written < target / 2 {
                let mut batch = Vec::with_capacity(GENERATE_BATCH);
                for _ in 0..GENERATE_BATCH {
                    let request = history.next_append()?;
                    written += request.events.len() as u64;
                    batch.push(request);
                }
                for outcome in store.append_batch(&batch).await {
                    outcome?;
                }
                bar.inc(batch.iter().map(|r| r.events.len() as u64).sum());
            }
            anyhow::Ok(written)
        }));
    }
    let mut events = 0;
    for task in tasks {
        events += task.await??;
    }
    bar.finish_and_clear();
    Ok(events)
}

/// The final rows, read out with binary COPY, then timed while COPYed into
/// fresh tables with the same DDL.
async fn bare_copy(store: &EventStore) -> anyhow::Result<Duration> {
    let spinner = ProgressBar::new_spinner();
    spinner.set_message("bare COPY of the final rows");
    spinner.enable_steady_tick(Duration::from_millis(200));
    let mut loads = Vec::new();
    for kind in Kind::ALL {
        let mut conn = connect(store).await?;
        let target = format!("bench_copy_{}", kind.live_schema());
        create_schema(&mut conn, kind, &target).await?;
        let mut payloads = Vec::new();
        for table in kind.tables() {
            let data = copy_out(&mut conn, kind.live_schema(), table).await?;
            payloads.push((table, data));
        }
        loads.push((conn, kind, target, payloads));
    }
    let started = Instant::now();
    let tasks: Vec<_> = loads
        .into_iter()
        .map(|(mut conn, kind, target, payloads)| {
            tokio::spawn(async move {
                for (table, data) in payloads {
                    projector::changes::send_copy(
                        &mut conn,
                        &format!("COPY \"{target}\".{table} FROM STDIN (FORMAT binary)"),
                        data,
                    )
                    .await?;
                }
                // Loaded the way a bulk load is done best: indexes after.
                create_indexes(&mut conn, kind, &target).await?;
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed();
    spinner.finish_and_clear();
    Ok(elapsed)
}

async fn copy_out(conn: &mut PgConnection, schema: &str, table: &str) -> anyhow::Result<Vec<u8>> {
    let chunks: Vec<bytes::Bytes> = conn
        .copy_out_raw(&format!(
            "COPY (SELECT * FROM \"{schema}\".{table}) TO STDOUT (FORMAT binary)"
        ))
        .await?
        .try_collect()
        .await?;
    Ok(chunks.concat())
}
