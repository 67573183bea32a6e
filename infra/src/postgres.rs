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
        // Another process created it between our check and our CREATE
        // (42P04 once it is committed, 23505 while both race in the catalog).
        Err(sqlx::Error::Database(e)) if matches!(e.code().as_deref(), Some("42P04" | "23505")) => {
            Ok(false)
        }
        Err(source) => Err(DbSetupError::Create { name, source }),
    }
}

/// A pool on a read replica at `url`, with the primary's pool settings,
/// connecting lazily: a replica that is down at start-up is not an error
/// (readers fall back to the primary).
pub fn replica_pool(url: &str, settings: &DatabaseSettings) -> Result<PgPool, DbSetupError> {
    let options = PgConnectOptions::from_str(url)
        .map_err(DbSetupError::Url)?
        .application_name("copilot-data-replica")
        .log_statements(tracing::log::LevelFilter::Debug);
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(std::time::Duration::from_secs(1))
        .idle_timeout(settings.idle_timeout)
        .max_lifetime(settings.max_lifetime)
        .connect_lazy_with(options))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_replica_url_is_checked_but_not_dialled() {
        let settings = DatabaseSettings::default();
        let err = replica_pool("not a url", &settings).expect_err("bad URL");
        assert!(matches!(err, DbSetupError::Url(_)), "{err}");
        // Nothing listens there: the pool is still made (reads fall back).
        let pool = replica_pool("postgres://postgres@127.0.0.1:1/copilot", &settings)
            .expect("a lazy pool");
        assert_eq!(pool.size(), 0);
    }

    /// `copilot-data up` prepares the database from every role at once.
    #[tokio::test]
    async fn concurrent_preparers_of_a_new_database_all_succeed() {
        let name = format!("prepare_race_{}", uuid::Uuid::new_v4().simple());
        let settings = DatabaseSettings {
            url: secrecy::SecretString::from(format!("postgres://postgres@127.0.0.1:5432/{name}")),
            max_connections: 2,
            min_connections: 0,
            ..DatabaseSettings::default()
        };
        let preparers: Vec<_> = (0..4)
            .map(|_| {
                let settings = settings.clone();
                tokio::spawn(async move {
                    let pool = prepare(&settings).await?;
                    pool.close().await;
                    Ok::<(), DbSetupError>(())
                })
            })
            .collect();
        for preparer in preparers {
            preparer.await.expect("task").expect("prepared");
        }
        let admin = connect_options(&settings)
            .expect("options")
            .database("postgres");
        let mut conn = PgConnection::connect_with(&admin).await.expect("connect");
        sqlx::query(&format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
            .execute(&mut conn)
            .await
            .expect("clean up");
    }
}
