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
