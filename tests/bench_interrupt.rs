//! A bench interrupted halfway (Ctrl-C) drops its scratch database and
//! exits with an error instead of printing figures.

use std::collections::HashSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

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

#[sqlx::test(migrator = "infra::postgres::MIGRATOR")]
async fn an_interrupted_bench_drops_its_scratch_database(pool: PgPool) {
    let url = common::database_url(&pool).await;
    let before = bench_databases(&pool).await;
    let bench = Command::new(env!("CARGO_BIN_EXE_copilot-data"))
        .args(["bench", "append", "--seconds", "60"])
        .env("COPILOT_DATABASE_URL", url)
        .env("COPILOT_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start copilot-data bench");

    let deadline = Instant::now() + Duration::from_secs(60);
    let scratch = loop {
        let created: Vec<String> = bench_databases(&pool)
            .await
            .difference(&before)
            .cloned()
            .collect();
        if let [name] = created.as_slice() {
            break name.clone();
        }
        assert!(
            created.len() < 2,
            "one bench made two databases: {created:?}"
        );
        assert!(Instant::now() < deadline, "the bench made no database");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Into the appends (the database is migrated in well under a second).
    tokio::time::sleep(Duration::from_secs(2)).await;
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
    assert!(
        !bench_databases(&pool).await.contains(&scratch),
        "{scratch} was left behind"
    );
}
