//! What a bench run creates on the configured servers and must remove
//! again: a throw-away database, the JetStream streams of an in-process
//! command service, the keys under a Redis prefix.
//!
//! Each is registered before it is created, so that a bench that fails or
//! is interrupted halfway still removes it ([`remove_leftovers`]); a run
//! that ends well removes its own and unregisters them. The services a
//! bench runs in-process are spawned here too ([`spawn_service`]), so that
//! none of them writes again after its leftovers are removed.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use infra::config::DatabaseSettings;
use secrecy::{ExposeSecret, SecretString};
use sqlx::{Connection, PgConnection, PgPool};

/// How long removing one leftover may take: an interrupted bench must end
/// even when a server has stopped answering.
const REMOVAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Something of this process's bench on a server, not removed yet.
#[derive(Clone)]
enum Leftover {
    /// A scratch database (not one the bench was told to keep).
    Database {
        name: String,
        settings: DatabaseSettings,
    },
    /// The command and result streams of a command service's prefix.
    Streams { nats_url: String, prefix: String },
    /// Every key under a prefix.
    RedisKeys { url: String, prefix: String },
}

impl Leftover {
    /// Whether `self` and `other` are the same thing on a server (each
    /// bench names its own with a fresh random id).
    fn is(&self, other: &Leftover) -> bool {
        match (self, other) {
            (Leftover::Database { name: a, .. }, Leftover::Database { name: b, .. }) => a == b,
            (Leftover::Streams { prefix: a, .. }, Leftover::Streams { prefix: b, .. })
            | (Leftover::RedisKeys { prefix: a, .. }, Leftover::RedisKeys { prefix: b, .. }) => {
                a == b
            }
            _ => false,
        }
    }
}

static UNREMOVED: Mutex<Vec<Leftover>> = Mutex::new(Vec::new());

fn unremoved() -> MutexGuard<'static, Vec<Leftover>> {
    locked(&UNREMOVED)
}

/// A poisoned lock only means a thread panicked between a push and a
/// take or retain; the list itself is whole.
fn locked<T>(registry: &Mutex<T>) -> MutexGuard<'_, T> {
    registry
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The in-process services of this process's bench.
static SERVICES: Mutex<Vec<tokio::task::JoinHandle<()>>> = Mutex::new(Vec::new());

/// Runs an in-process service (a command service, a projector, ...) of a
/// bench; [`end_services`] ends it.
pub fn spawn_service<F>(service: F)
where
    F: std::future::Future + Send + 'static,
{
    let handle = tokio::spawn(async move {
        let _ = service.await;
    });
    locked(&SERVICES).push(handle);
}

/// Waits up to `grace` for the bench's services to end (after they were
/// told to stop), then aborts the rest and waits until they are gone.
pub async fn end_services(grace: Duration) {
    let services = std::mem::take(&mut *locked(&SERVICES));
    let deadline = tokio::time::Instant::now() + grace;
    for mut service in services {
        if tokio::time::timeout_at(deadline, &mut service)
            .await
            .is_err()
        {
            service.abort();
            let _ = service.await;
        }
    }
}

fn register(leftover: Leftover) {
    unremoved().push(leftover);
}

fn unregister(leftover: &Leftover) {
    unremoved().retain(|registered| !registered.is(leftover));
}

pub struct ScratchDb {
    name: String,
    settings: DatabaseSettings,
    keep: bool,
}

impl ScratchDb {
    /// Creates and migrates `copilot_bench_<uuid>` next to the configured database.
    pub async fn create(
        base: &DatabaseSettings,
        max_connections: u32,
        keep: bool,
    ) -> anyhow::Result<(Self, PgPool)> {
        let name = format!("copilot_bench_{}", uuid::Uuid::now_v7().simple());
        let mut settings = base.clone();
        let url = url_with_database(base.url.expose_secret(), &name)?;
        settings.url = SecretString::from(url);
        settings.max_connections = max_connections;
        settings.min_connections = 0;
        if !keep {
            register(Leftover::Database {
                name: name.clone(),
                settings: settings.clone(),
            });
        }
        let pool = infra::postgres::prepare(&settings).await?;
        Ok((
            ScratchDb {
                name,
                settings,
                keep,
            },
            pool,
        ))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub async fn drop_db(self, pool: PgPool) -> anyhow::Result<()> {
        pool.close().await;
        if self.keep {
            tracing::info!(database = %self.name, "kept the bench database");
            return Ok(());
        }
        drop_database(&self.settings, &self.name).await?;
        unregister(&Leftover::Database {
            name: self.name,
            settings: self.settings,
        });
        Ok(())
    }
}

/// Streams or Redis keys a bench registered, to remove when it is done.
pub struct Scratch(Leftover);

impl Scratch {
    /// Registers the command service's JetStream streams of `prefix`
    /// (before the service creates them).
    pub fn streams(nats_url: &str, prefix: &str) -> Self {
        Self::register(Leftover::Streams {
            nats_url: nats_url.to_string(),
            prefix: prefix.to_string(),
        })
    }

    /// Registers the keys under the Redis `prefix` (before any is written).
    pub fn redis_keys(url: &str, prefix: &str) -> Self {
        Self::register(Leftover::RedisKeys {
            url: url.to_string(),
            prefix: prefix.to_string(),
        })
    }

    fn register(leftover: Leftover) -> Self {
        let scratch = Scratch(leftover);
        register(scratch.0.clone());
        scratch
    }

    /// Removes them; if that fails they stay registered for
    /// [`remove_leftovers`].
    pub async fn remove(self) -> anyhow::Result<()> {
        remove(&self.0).await?;
        unregister(&self.0);
        Ok(())
    }
}

/// Removes what a failed or interrupted bench left behind (not the
/// databases it was told to keep), each within [`REMOVAL_TIMEOUT`].
/// Failures are logged: the bench's own outcome is what its caller reports.
pub async fn remove_leftovers() {
    end_services(Duration::ZERO).await;
    let leftovers = std::mem::take(&mut *unremoved());
    for leftover in leftovers {
        let what = leftover.to_string();
        match tokio::time::timeout(REMOVAL_TIMEOUT, remove(&leftover)).await {
            Ok(Ok(())) => tracing::info!(leftover = %what, "removed what the bench left"),
            Ok(Err(error)) => {
                tracing::warn!(leftover = %what, error = %error, "cannot remove what the bench left")
            }
            Err(_) => tracing::warn!(
                leftover = %what,
                timeout_s = REMOVAL_TIMEOUT.as_secs(),
                "gave up removing what the bench left"
            ),
        }
    }
}

async fn remove(leftover: &Leftover) -> anyhow::Result<()> {
    match leftover {
        Leftover::Database { name, settings } => drop_database(settings, name).await,
        Leftover::Streams { nats_url, prefix } => {
            let client = async_nats::connect(nats_url.as_str()).await?;
            delete_streams(client, prefix).await;
            Ok(())
        }
        Leftover::RedisKeys { url, prefix } => {
            infra::redis_conn::delete_prefix(url, prefix).await?;
            Ok(())
        }
    }
}

impl std::fmt::Display for Leftover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Leftover::Database { name, .. } => write!(f, "the database {name}"),
            Leftover::Streams { prefix, .. } => write!(f, "the JetStream streams of {prefix}"),
            Leftover::RedisKeys { prefix, .. } => write!(f, "the Redis keys under {prefix}"),
        }
    }
}

/// `WITH (FORCE)`: connections of an interrupted bench may still be open.
async fn drop_database(settings: &DatabaseSettings, name: &str) -> anyhow::Result<()> {
    let options = infra::postgres::connect_options(settings)?.database("postgres");
    let mut conn = PgConnection::connect_with(&options).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut conn)
        .await?;
    Ok(())
}

/// Deletes the command service's streams of `prefix`; one already gone (or
/// never created) is no failure.
async fn delete_streams(client: async_nats::Client, prefix: &str) {
    let js = async_nats::jetstream::new(client);
    let (commands, results) = command_service::stream_names(prefix);
    let _ = js.delete_stream(commands).await;
    let _ = js.delete_stream(results).await;
}

fn url_with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let mut parsed = url::Url::parse(url)?;
    parsed.set_path(&format!("/{database}"));
    Ok(parsed.into())
}
