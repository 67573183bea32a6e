//! Helpers shared by the tests that run the `copilot-data` binary.

#[allow(dead_code)]
pub mod certs;
#[allow(dead_code)]
pub mod servers;
#[allow(dead_code)]
pub mod system;

use sqlx::PgPool;

#[allow(dead_code)]
/// The URL of `pool`'s database (a test's own), for a child process's
/// `COPILOT_DATABASE_URL`.
pub async fn database_url(pool: &PgPool) -> String {
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(pool)
        .await
        .expect("db");
    format!("postgres://postgres@127.0.0.1:5432/{database}")
}

/// The master key of the processes these tests start (personal data is
/// sealed as in a deployment).
#[allow(unused_imports)]
pub use testkit::stack::TEST_MASTER_KEY;

#[allow(dead_code)]
/// `copilot-data command-service` on `database_url`, its streams under
/// `prefix`, no rate limit; killed when dropped.
pub fn command_service(database_url: &str, prefix: &str, bootstrap: &str) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_copilot-data"))
        .arg("command-service")
        .env("COPILOT_DATABASE_URL", database_url)
        .env("COPILOT_NATS_PREFIX", prefix)
        .env("COPILOT_BOOTSTRAP_TOKEN", bootstrap)
        .env("COPILOT_MASTER_KEY", TEST_MASTER_KEY)
        .env("COPILOT_RATE_LIMIT_PER_MINUTE", "0")
        .env("COPILOT_DATABASE_MAX_CONNECTIONS", "12")
        .env("COPILOT_LOG", "warn")
        .env("COPILOT_METRICS_ADDR", "127.0.0.1:0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start copilot-data command-service")
}

/// Waits (at most a minute) until `sql` (one boolean) is true.
#[allow(dead_code)]
pub async fn wait_for(pool: &PgPool, what: &str, sql: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let done: bool = sqlx::query_scalar(sql)
            .fetch_one(pool)
            .await
            .unwrap_or(false);
        if done {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
