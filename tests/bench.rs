//! `copilot-data bench` as a user runs it: a short run prints every figure
//! beside its baselines, and a bench interrupted halfway (Ctrl-C) removes
//! what it made on the servers (its scratch database, its JetStream
//! streams, its Redis keys) and exits with an error instead of printing
//! figures.

use std::collections::HashSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sqlx::PgPool;
use tokio::process::Command;

mod common;

async fn bench_databases(pool: &PgPool) -> HashSet<String> {
    sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'copilot\\_bench\\_%'")
        .fetch_all(pool)
        .await
        .expect("list databases")
        .into_iter()
        .collect()
}

/// The tests here take turns: each finds its bench's database as the one
/// new `copilot_bench_` database, so two benches at once would confuse them.
static ONE_BENCH_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The JetStream streams of bench prefixes (`bench<hex>`).
async fn bench_streams(js: &async_nats::jetstream::Context) -> HashSet<String> {
    js.stream_names()
        .filter_map(|name| async move { name.ok() })
        .filter(|name| {
            let name = name.clone();
            async move {
                name.starts_with("COPILOT_COMMANDS_BENCH")
                    || name.starts_with("COPILOT_RESULTS_BENCH")
            }
        })
        .collect()
        .await
}

/// Redis keys under bench prefixes (`bench:<hex>:`).
async fn bench_keys(redis: &mut redis::aio::MultiplexedConnection) -> HashSet<String> {
    let mut keys = HashSet::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("bench:*")
            .arg("COUNT")
            .arg(1000)
            .query_async(redis)
            .await
            .expect("scan Redis");
        keys.extend(batch);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}

/// `copilot-data bench` with `args`, against the database at `url`.
fn bench(args: &[&str], url: String) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_copilot-data"));
    command
        .arg("bench")
        .args(args)
        .env("COPILOT_DATABASE_URL", url)
        .env("COPILOT_MASTER_KEY", common::TEST_MASTER_KEY)
        .env("COPILOT_LOG", "warn")
        .kill_on_drop(true);
    command
}

fn start_bench(workload: &str, url: String) -> tokio::process::Child {
    bench(&[workload, "--seconds", "60"], url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start copilot-data bench")
}

/// The one database `bench` made since `before`, once it exists.
async fn scratch_database(pool: &PgPool, before: &HashSet<String>) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let created: Vec<String> = bench_databases(pool)
            .await
            .difference(before)
            .cloned()
            .collect();
        if let [name] = created.as_slice() {
            return name.clone();
        }
        assert!(
            created.len() < 2,
            "one bench made two databases: {created:?}"
        );
        assert!(Instant::now() < deadline, "the bench made no database");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends Ctrl-C's signal to `bench` and checks that it then fails without
/// printing figures.
async fn interrupt(bench: tokio::process::Child) {
    let pid = bench.id().expect("the bench is running").to_string();
    let signalled = Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await
        .expect("run kill");
    assert!(signalled.success());

    let exit = tokio::time::timeout(Duration::from_secs(60), bench.wait_with_output())
        .await
        .expect("the bench stops within 60 s of Ctrl-C")
        .expect("wait for the bench");
    assert!(
        !exit.status.success(),
        "an interrupted bench reports failure"
    );
    assert!(
        exit.stdout.is_empty(),
        "an interrupted bench prints no figures"
    );
}

/// The commands workload measures all five baselines (each a responder of
/// its own in the bench) in the same run, and leaves no database behind.
#[sqlx::test(migrator = "infra::postgres::MIGRATOR")]
async fn bench_commands_reports_the_rate_beside_every_baseline(pool: PgPool) {
    let _turn = ONE_BENCH_AT_A_TIME.lock().await;
    let url = common::database_url(&pool).await;
    let before = bench_databases(&pool).await;
    let output = bench(&["commands", "--seconds", "2", "--json"], url)
        .output()
        .await
        .expect("run copilot-data bench commands");
    assert!(
        output.status.success(),
        "bench commands failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let figures: Vec<serde_json::Value> =
        serde_json::from_slice(&output.stdout).expect("--json prints a JSON array");
    let rate_against = |baseline: &str| {
        figures
            .iter()
            .find(|f| {
                f["name"] == "commands.append_message.w32.per_s" && f["baseline_name"] == baseline
            })
            .unwrap_or_else(|| panic!("no commands rate against {baseline}: {figures:?}"))
    };
    for baseline in [
        "nats_echo.w32.per_s",
        "bare_insert.w32.e1.per_s",
        "nats_grouped_insert.w32.per_s",
        "nats_set_append_loop.w32.per_s",
        "nats_store_append.w32.per_s",
    ] {
        let figure = rate_against(baseline);
        let (value, base, ratio) = (
            figure["value"].as_f64().unwrap_or_default(),
            figure["baseline_value"].as_f64().unwrap_or_default(),
            figure["ratio"].as_f64().unwrap_or_default(),
        );
        assert!(value > 0.0 && base > 0.0, "{figure}");
        assert!(
            (ratio - value / base).abs() <= 0.01 * ratio.max(1.0),
            "the ratio is the rate over the baseline's: {figure}"
        );
    }
    // The agents' commands are what the request/reply lane is for: most
    // go through it (the first on each conversation cannot).
    let lane_share = figures
        .iter()
        .find(|f| f["name"] == "commands.append_message.w32.lane_share")
        .and_then(|f| f["value"].as_f64())
        .expect("the lane's share is reported");
    assert!(lane_share > 0.5, "lane share {lane_share}");
    assert!(
        bench_databases(&pool).await.is_subset(&before),
        "the bench left its database behind"
    );
}

/// The lag workload times every read model at every load level beside
/// the same at no load, states the vector backlog, and removes its two
/// stacks' databases, streams and keys.
#[sqlx::test(migrator = "infra::postgres::MIGRATOR")]
async fn bench_lag_reports_each_read_model_at_each_load_beside_no_load(pool: PgPool) {
    let _turn = ONE_BENCH_AT_A_TIME.lock().await;
    let url = common::database_url(&pool).await;
    let before = bench_databases(&pool).await;
    let nats = async_nats::connect("127.0.0.1:4222").await.expect("nats");
    let js = async_nats::jetstream::new(nats);
    let streams_before = bench_streams(&js).await;
    let mut redis = redis::Client::open("redis://127.0.0.1:6379")
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let keys_before = bench_keys(&mut redis).await;
    let output = bench(&["lag", "--seconds", "1", "--json"], url)
        .output()
        .await
        .expect("run copilot-data bench lag");
    assert!(
        output.status.success(),
        "bench lag failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let figures: Vec<serde_json::Value> =
        serde_json::from_slice(&output.stdout).expect("--json prints a JSON array");
    let named = |name: &str| {
        figures
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("no {name}: {figures:#?}"))
    };
    assert!(named("lag.sustainable.commands_per_s")["value"].as_f64() > Some(0.0));
    for level in ["load10", "load50", "load90"] {
        assert!(named(&format!("lag.{level}.commands_per_s"))["value"].as_f64() > Some(0.0));
        named(&format!("lag.{level}.vectors.backlog"));
        for model in ["relational", "redis", "search"] {
            for q in ["p50", "p99", "max"] {
                let figure = named(&format!("lag.{level}.{model}.{q}"));
                assert_eq!(
                    figure["baseline_name"],
                    format!("lag.idle.{model}.{q}"),
                    "{figure}"
                );
            }
            // The relational and Redis projections keep up with a short
            // run at any of these loads; the vector one may not.
            if model != "search" {
                assert!(
                    figure_value(named(&format!("lag.{level}.{model}.max"))) > 0.0,
                    "{level} {model}"
                );
            }
        }
    }
    for model in ["relational", "redis", "search"] {
        assert!(figure_value(named(&format!("lag.idle.{model}.p50"))) > 0.0);
    }
    assert!(
        bench_databases(&pool).await.is_subset(&before),
        "the bench left a database behind"
    );
    assert!(
        bench_streams(&js).await.is_subset(&streams_before),
        "the bench left streams behind"
    );
    assert!(
        bench_keys(&mut redis).await.is_subset(&keys_before),
        "the bench left Redis keys behind"
    );
}

fn figure_value(figure: &serde_json::Value) -> f64 {
    figure["value"].as_f64().unwrap_or_default()
}

#[sqlx::test(migrator = "infra::postgres::MIGRATOR")]
async fn an_interrupted_bench_drops_its_scratch_database(pool: PgPool) {
    let _turn = ONE_BENCH_AT_A_TIME.lock().await;
    let url = common::database_url(&pool).await;
    let before = bench_databases(&pool).await;
    let bench = start_bench("append", url);
    let scratch = scratch_database(&pool, &before).await;
    // Into the appends (the database is migrated in well under a second).
    tokio::time::sleep(Duration::from_secs(2)).await;
    interrupt(bench).await;
    assert!(
        !bench_databases(&pool).await.contains(&scratch),
        "{scratch} was left behind"
    );
}

/// `bench query` makes all three: a database, the command service's
/// streams and the Redis projection's keys.
#[sqlx::test(migrator = "infra::postgres::MIGRATOR")]
async fn an_interrupted_bench_removes_its_streams_and_redis_keys(pool: PgPool) {
    let _turn = ONE_BENCH_AT_A_TIME.lock().await;
    let url = common::database_url(&pool).await;
    let nats = async_nats::connect("127.0.0.1:4222")
        .await
        .expect("connect to NATS");
    let js = async_nats::jetstream::new(nats);
    let mut redis = redis::Client::open("redis://127.0.0.1:6379")
        .expect("Redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to Redis");
    let databases = bench_databases(&pool).await;
    let streams = bench_streams(&js).await;
    let keys = bench_keys(&mut redis).await;

    let bench = start_bench("query", url);
    let scratch = scratch_database(&pool, &databases).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let (new_streams, new_keys) = loop {
        let new_streams: HashSet<String> = bench_streams(&js)
            .await
            .difference(&streams)
            .cloned()
            .collect();
        let new_keys: HashSet<String> = bench_keys(&mut redis)
            .await
            .difference(&keys)
            .cloned()
            .collect();
        if new_streams.len() == 2 && !new_keys.is_empty() {
            break (new_streams, new_keys);
        }
        assert!(
            Instant::now() < deadline,
            "the bench made {new_streams:?} and {} keys",
            new_keys.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    interrupt(bench).await;

    assert!(
        !bench_databases(&pool).await.contains(&scratch),
        "{scratch} was left behind"
    );
    let left_streams: Vec<String> = bench_streams(&js)
        .await
        .intersection(&new_streams)
        .cloned()
        .collect();
    assert!(left_streams.is_empty(), "{left_streams:?} were left behind");
    let left_keys = bench_keys(&mut redis).await.intersection(&new_keys).count();
    assert_eq!(left_keys, 0, "Redis keys of the bench were left behind");
}
