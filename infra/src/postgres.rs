//! PostgreSQL connection set-up: the pool, creating the database, migrations.

use std::str::FromStr;

use secrecy::ExposeSecret;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

use crate::config::DatabaseSettings;

/// Every migration of the system (event store and read models), embedded.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

#[derive(Debug, thiserror::Error)]
pub enum DbSetupError {
    #[error("invalid database URL: {0}")]
    Url(sqlx::Error),
    #[error("cannot connect to PostgreSQL at {target}: {source}")]
    Connect { target: String, source: sqlx::Error },
    #[error("cannot create database {name}: {source}")]
    Create { name: String, source: sqlx::Error },
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

pub fn connect_options(settings: &DatabaseSettings) -> Result<PgConnectOptions, DbSetupError> {
    let options = PgConnectOptions::from_str(settings.url.expose_secret())
        .map_err(DbSetupError::Url)?
        .application_name("copilot-data");
    // Statement logging at debug level only: the bench and replay run
    // millions of statements.
    Ok(options.log_statements(tracing::log::LevelFilter::Debug))
}

/// A pool with the configured (seed) settings. Connections are made lazily
/// up to `min_connections` in the background.
pub async fn pool(settings: &DatabaseSettings) -> Result<PgPool, DbSetupError> {
    let options = connect_options(settings)?;
    let target = describe(&options);
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .min_connections(settings.min_connections)
        .acquire_timeout(settings.acquire_timeout)
        .idle_timeout(settings.idle_timeout)
        .max_lifetime(settings.max_lifetime)
        // The seed's health check before acquire, for connections that sat
        // idle: pinging every acquire would double the round trips of
        // every query.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > std::time::Duration::from_secs(10) {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .connect_with(options)
        .await
        .map_err(|source| DbSetupError::Connect { target, source })
}

/// Creates the database named in the settings if it does not exist, by
/// connecting to the `postgres` maintenance database of the same server.
pub async fn create_database_if_missing(settings: &DatabaseSettings) -> Result<bool, DbSetupError> {
    let options = connect_options(settings)?;
    let name = options.get_database().unwrap_or("postgres").to_string();
    let maintenance = options.clone().database("postgres");
    let target = describe(&maintenance);
    let mut conn = PgConnection::connect_with(&maintenance)
        .await
        .map_err(|source| DbSetupError::Connect { target, source })?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut conn)
            .await
            .map_err(|source| DbSetupError::Create {
                name: name.clone(),
                source,
            })?;
    if exists {
        return Ok(false);
    }
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    match sqlx::query(&format!("CREATE DATABASE {quoted}"))
        .execute(&mut conn)
        .await
    {
        Ok(_) => Ok(true),
        // Another process created it between our check and our CREATE.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => Ok(false),
        Err(source) => Err(DbSetupError::Create { name, source }),
    }
}

/// Creates the database if needed, connects and applies every migration.
pub async fn prepare(settings: &DatabaseSettings) -> Result<PgPool, DbSetupError> {
    if create_database_if_missing(settings).await? {
        tracing::info!("created database");
    }
    let pool = pool(settings).await?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}

fn describe(options: &PgConnectOptions) -> String {
    format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("postgres")
    )
}
