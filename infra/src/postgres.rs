//! PostgreSQL connection set-up: the pool, creating the database, migrations.

use std::str::FromStr;

use secrecy::ExposeSecret;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

use crate::config::DatabaseSettings;

/// Every migration of the system (event store and read models), embedded.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

#[derive(Debug, thiserror::Error)]
pub enum DbSetupError {
    /// The cause never quotes the URL (it may hold a password).
    #[error("invalid database URL: {0}")]
    Url(String),
    #[error("cannot connect to PostgreSQL at {target}: {source}")]
    Connect { target: String, source: sqlx::Error },
    #[error("cannot create database {name}: {source}")]
    Create { name: String, source: sqlx::Error },
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot create or update the services' logins: {source}")]
    Logins { source: sqlx::Error },
}

/// A libpq `sslmode`.
pub fn parse_ssl_mode(mode: &str) -> Result<PgSslMode, String> {
    PgSslMode::from_str(mode).map_err(|_| {
        format!("{mode:?}: expected disable, allow, prefer, require, verify-ca or verify-full")
    })
}

/// The connection options of the schema owner's login (`database.url`).
pub fn connect_options(settings: &DatabaseSettings) -> Result<PgConnectOptions, DbSetupError> {
    connect_options_for(settings, &settings.url)
}

/// The connection options of the login `url` with the TLS settings: a set
/// `ssl_mode` wins over the URL's `sslmode`; with neither, a loopback host
/// is reached without TLS and any other only with a verified certificate
/// (`verify-full`). TLS without verification is allowed when asked for
/// explicitly, and logged as a warning.
pub fn connect_options_for(
    settings: &DatabaseSettings,
    url: &secrecy::SecretString,
) -> Result<PgConnectOptions, DbSetupError> {
    crate::tls::install_crypto_provider();
    let url = url.expose_secret();
    let mut options = PgConnectOptions::from_str(url)
        .map_err(|e| DbSetupError::Url(crate::redact::in_text(&e.to_string(), url)))?
        .application_name("copilot-data");
    let url_mode = url::Url::parse(url).ok().and_then(|u| {
        u.query_pairs()
            .find(|(k, _)| k == "sslmode" || k == "ssl-mode")
            .map(|(_, v)| v.into_owned())
    });
    let mode = match (settings.ssl_mode.as_deref(), url_mode.as_deref()) {
        (Some(mode), _) | (None, Some(mode)) => parse_ssl_mode(mode).map_err(DbSetupError::Url)?,
        (None, None) if is_loopback(options.get_host()) => PgSslMode::Disable,
        (None, None) => PgSslMode::VerifyFull,
    };
    options = options.ssl_mode(mode);
    if matches!(
        mode,
        PgSslMode::Allow | PgSslMode::Prefer | PgSslMode::Require
    ) {
        tracing::warn!(host = options.get_host(), sslmode = ?mode,
            "TLS to PostgreSQL without certificate verification, as configured");
    }
    if let Some(ca) = &settings.ssl_root_cert {
        options = options.ssl_root_cert(ca);
    }
    if let Some(cert) = &settings.ssl_cert {
        options = options.ssl_client_cert(cert);
    }
    if let Some(key) = &settings.ssl_key {
        options = options.ssl_client_key(key);
    }
    // Statement logging at debug level only: the bench and replay run
    // millions of statements.
    Ok(options.log_statements(tracing::log::LevelFilter::Debug))
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host.starts_with('/')
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A pool with the configured (seed) settings. Connections are made lazily
/// up to `min_connections` in the background.
pub async fn pool(settings: &DatabaseSettings) -> Result<PgPool, DbSetupError> {
    pool_for(settings, &settings.url).await
}

/// [`pool`] for the login `url` (a service's own, see `logins`).
pub async fn pool_for(
    settings: &DatabaseSettings,
    url: &secrecy::SecretString,
) -> Result<PgPool, DbSetupError> {
    let options = connect_options_for(settings, url)?;
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
    let options = connect_options_for(settings, &secrecy::SecretString::from(url.to_string()))?
        .application_name("copilot-data-replica");
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(std::time::Duration::from_secs(1))
        .idle_timeout(settings.idle_timeout)
        .max_lifetime(settings.max_lifetime)
        .connect_lazy_with(options))
}

/// Creates the database if needed, connects as the owner, applies every
/// migration and creates or updates the services' logins
/// ([`ensure_logins`]).
pub async fn prepare(settings: &DatabaseSettings) -> Result<PgPool, DbSetupError> {
    if create_database_if_missing(settings).await? {
        tracing::info!("created database");
    }
    let pool = pool(settings).await?;
    MIGRATOR.run(&pool).await?;
    ensure_logins(&pool, &service_logins(settings)?).await?;
    Ok(pool)
}

/// A pool to `pool`'s database as `login` (a service's own), with
/// `pool`'s other connection settings.
pub async fn pool_as(
    pool: &PgPool,
    login: &str,
    max_connections: u32,
) -> Result<PgPool, DbSetupError> {
    let options = (*pool.connect_options()).clone().username(login);
    let target = describe(&options);
    PgPoolOptions::new()
        .max_connections(max_connections)
        .connect_with(options)
        .await
        .map_err(|source| DbSetupError::Connect { target, source })
}

/// The logins the test suites run the services as, one per role (roles
/// are the cluster's, so every test database shares them).
pub fn test_logins() -> Vec<Login> {
    [
        ("copilot_test_command", "copilot_command"),
        ("copilot_test_projector", "copilot_projector"),
        ("copilot_test_query", "copilot_query"),
    ]
    .into_iter()
    .map(|(name, role)| Login {
        name: name.to_string(),
        password: None,
        role,
    })
    .collect()
}

/// A service's own login: its name and password (from the URL it connects
/// with) and the group role (migration 0011) that gives it its rights.
#[derive(Debug, Clone)]
pub struct Login {
    pub name: String,
    pub password: Option<secrecy::SecretString>,
    pub role: &'static str,
}

/// The logins named in the services' URLs (`database.command_url`, ...)
/// other than the owner's own.
pub fn service_logins(settings: &DatabaseSettings) -> Result<Vec<Login>, DbSetupError> {
    let owner = connect_options(settings)?.get_username().to_string();
    let mut logins = Vec::new();
    for (url, role) in [
        (&settings.command_url, "copilot_command"),
        (&settings.projector_url, "copilot_projector"),
        (&settings.query_url, "copilot_query"),
    ] {
        let Some(url) = url else { continue };
        let parsed = url::Url::parse(url.expose_secret())
            .map_err(|e| DbSetupError::Url(format!("a service's database URL: {e}")))?;
        let name = parsed.username().to_string();
        if name.is_empty() || name == owner {
            continue;
        }
        let password = parsed
            .password()
            .map(|p| secrecy::SecretString::from(p.to_string()));
        logins.push(Login {
            name,
            password,
            role,
        });
    }
    Ok(logins)
}

/// Creates each login if it is missing (LOGIN, nothing else), sets its
/// password and grants it its group role; run by the schema's owner (a
/// superuser, or a CREATEROLE login). Idempotent, and safe to run from
/// several processes at once.
pub async fn ensure_logins(pool: &PgPool, logins: &[Login]) -> Result<(), DbSetupError> {
    let failed = |source| DbSetupError::Logins { source };
    for login in logins {
        let create = sqlx::query_scalar::<_, String>(
            "SELECT format('CREATE ROLE %I LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE', $1::text)",
        )
        .bind(&login.name)
        .fetch_one(pool)
        .await
        .map_err(failed)?;
        match sqlx::query(&create).execute(pool).await {
            Ok(_) => {
                tracing::info!(login = %login.name, role = login.role, "created a service login")
            }
            // Created before, or by a process beside this one just now.
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("42710" | "23505")) => {}
            Err(e) => return Err(failed(e)),
        }
        let alter: String = sqlx::query_scalar(
            "SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', $1::text, $2::text)",
        )
        .bind(&login.name)
        .bind(
            login
                .password
                .as_ref()
                .map(|p| p.expose_secret().to_string()),
        )
        .fetch_one(pool)
        .await
        .map_err(failed)?;
        catalog_write(pool, &alter).await.map_err(failed)?;
        let grant: String =
            sqlx::query_scalar("SELECT format('GRANT %I TO %I', $1::text, $2::text)")
                .bind(login.role)
                .bind(&login.name)
                .fetch_one(pool)
                .await
                .map_err(failed)?;
        match catalog_write(pool, &grant).await {
            Ok(()) => {}
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => {}
            Err(e) => return Err(failed(e)),
        }
    }
    Ok(())
}

/// Runs a statement that updates a shared catalog row (a role). Two
/// sessions changing the same role at once make one of them fail with
/// "tuple concurrently updated" (XX000) rather than wait; roles belong to
/// the whole cluster, so no database's lock can order them: the loser
/// tries again.
async fn catalog_write(pool: &PgPool, sql: &str) -> Result<(), sqlx::Error> {
    let mut attempt = 0u64;
    loop {
        match sqlx::query(sql).execute(pool).await {
            Err(sqlx::Error::Database(e))
                if e.code().as_deref() == Some("XX000")
                    && e.message().contains("concurrently updated")
                    && attempt < 10 =>
            {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(10 * attempt)).await;
            }
            Err(e) => return Err(e),
            Ok(_) => return Ok(()),
        }
    }
}

/// Where a connection goes, for messages: host, port, database and login
/// (never the password).
fn describe(options: &PgConnectOptions) -> String {
    format!(
        "{}@{}:{}/{}",
        options.get_username(),
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

    /// Several processes making the same login at once all succeed (roles
    /// are cluster-wide: concurrent changes of one fail rather than wait).
    #[sqlx::test(migrator = "crate::postgres::MIGRATOR")]
    async fn logins_can_be_ensured_from_many_processes_at_once(pool: PgPool) {
        let name = format!(
            "copilot_t_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let login = || Login {
            name: name.clone(),
            password: Some(secrecy::SecretString::from("pw-1")),
            role: "copilot_command",
        };
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..12 {
            let (pool, logins) = (pool.clone(), vec![login()]);
            tasks.spawn(async move { ensure_logins(&pool, &logins).await });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("task").expect("ensured");
        }
        for sql in [format!("DROP OWNED BY {name}"), format!("DROP ROLE {name}")] {
            sqlx::query(&sql).execute(&pool).await.expect(&sql);
        }
    }

    /// The services' logins and the app-facing roles have only what they
    /// need: asserted against the catalog, and by trying.
    #[sqlx::test(migrator = "crate::postgres::MIGRATOR")]
    async fn every_login_has_only_what_it_needs(pool: PgPool) {
        ensure_logins(&pool, &test_logins()).await.expect("logins");
        let check = |sql: &'static str, role: &'static str, object: &'static str| {
            let pool = pool.clone();
            async move {
                sqlx::query_scalar::<_, bool>(sql)
                    .bind(role)
                    .bind(object)
                    .fetch_one(&pool)
                    .await
                    .unwrap_or_else(|e| panic!("{sql} {role} {object}: {e}"))
            }
        };
        let table = "SELECT has_table_privilege($1, $2, 'INSERT')";
        let column = |col: &'static str| match col {
            "password_hash" => "SELECT has_column_privilege($1, $2, 'password_hash', 'SELECT')",
            "mfa_secret" => "SELECT has_column_privilege($1, $2, 'mfa_secret', 'SELECT')",
            "key_hash" => "SELECT has_column_privilege($1, $2, 'key_hash', 'SELECT')",
            _ => "SELECT has_column_privilege($1, $2, 'token_hash', 'SELECT')",
        };
        for role in [
            "copilot_test_command",
            "copilot_test_projector",
            "copilot_test_query",
            "copilot_app",
            "copilot_admin",
            "copilot_readonly",
        ] {
            let (superuser, bypass): (bool, bool) =
                sqlx::query_as("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = $1")
                    .bind(role)
                    .fetch_one(&pool)
                    .await
                    .expect("role");
            assert!(!superuser, "{role} is a superuser");
            // An admin reads every user's rows; the logins bypass nothing
            // themselves (the projector acts as copilot_projector to write).
            assert_eq!(bypass, role == "copilot_admin", "{role} BYPASSRLS");
            assert!(
                !check(table, role, "events").await,
                "{role} may write events"
            );
            let app_facing = matches!(role, "copilot_app" | "copilot_admin" | "copilot_readonly");
            if app_facing || role == "copilot_test_query" {
                for (object, col) in [
                    ("auth_users", "password_hash"),
                    ("auth_users", "mfa_secret"),
                    ("auth_sessions", "token_hash"),
                    ("auth_api_keys", "key_hash"),
                ] {
                    // The query login checks API keys against their hashes;
                    // no app-facing role reads any of them.
                    let may = check(column(col), role, object).await;
                    let expected =
                        role == "copilot_test_query" && matches!(col, "key_hash" | "token_hash");
                    assert_eq!(may, expected, "{role} reads {object}.{col}");
                }
            }
            if role != "copilot_test_projector" {
                assert!(
                    !check(table, role, "audit.audit_logs").await,
                    "{role} may write the audit log"
                );
                // Vectors of people's texts: the vector projection's alone.
                assert!(
                    !check(
                        "SELECT has_table_privilege($1, $2, 'SELECT')",
                        role,
                        "embedding_cache"
                    )
                    .await,
                    "{role} reads kept embeddings"
                );
            } else {
                assert!(
                    check(table, role, "embedding_cache").await,
                    "the projector keeps embeddings"
                );
            }
        }
        // By trying, as each login.
        let command = pool_as(&pool, "copilot_test_command", 1)
            .await
            .expect("command");
        let denied = sqlx::query(
            "INSERT INTO events (stream_id, version, generation, tx_id, event_id, stream_type,
                                 event_type, schema_version, payload, metadata)
             VALUES (gen_random_uuid(), 1, 1, 1, gen_random_uuid(), 't', 'e', 1, '\\x00', '{}')",
        )
        .execute(&command)
        .await
        .expect_err("the command login writes events directly");
        assert!(denied.to_string().contains("permission denied"), "{denied}");
        let appended: String = sqlx::query_scalar(
            "SELECT status FROM eventstore_append(gen_random_uuid(), 't', 0, NULL,
                    ARRAY[gen_random_uuid()], ARRAY['e'], ARRAY[1], ARRAY['\\x00'::bytea], '{}')",
        )
        .fetch_one(&command)
        .await
        .expect("the command login appends through the store's function");
        assert_eq!(appended, "ok");
        let query = pool_as(&pool, "copilot_test_query", 1)
            .await
            .expect("query");
        for sql in [
            "SELECT password_hash FROM auth_users",
            "SELECT mfa_secret FROM auth_users",
        ] {
            let denied = sqlx::query(sql).execute(&query).await.expect_err(sql);
            assert!(
                denied.to_string().contains("permission denied"),
                "{sql}: {denied}"
            );
        }
        let mut tx = query.begin().await.expect("transaction");
        sqlx::query("SELECT set_config('role', 'copilot_admin', true)")
            .execute(&mut *tx)
            .await
            .expect("the query login acts as copilot_admin");
        let denied = sqlx::query("SELECT key_hash FROM auth_api_keys")
            .execute(&mut *tx)
            .await
            .expect_err("copilot_admin reads key hashes");
        assert!(denied.to_string().contains("permission denied"), "{denied}");
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
