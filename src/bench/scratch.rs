//! A throw-away database for a bench run, on the configured server.

use std::sync::Mutex;

use infra::config::DatabaseSettings;
use secrecy::{ExposeSecret, SecretString};
use sqlx::{Connection, PgConnection, PgPool};

/// Scratch databases of this process not dropped yet (those not kept), so
/// that a bench that fails or is interrupted halfway still drops them (see
/// [`drop_leftovers`]).
static UNDROPPED: Mutex<Vec<(String, DatabaseSettings)>> = Mutex::new(Vec::new());

fn undropped() -> std::sync::MutexGuard<'static, Vec<(String, DatabaseSettings)>> {
    // A poisoned lock only means a thread panicked between push and
    // retain; the list itself is whole.
    UNDROPPED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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
        // Before it exists: an interruption while it is being created and
        // migrated must not leave it behind either.
        if !keep {
            undropped().push((name.clone(), settings.clone()));
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
        undropped().retain(|(name, _)| *name != self.name);
        Ok(())
    }
}

/// Drops the scratch databases a failed or interrupted bench left behind
/// (not those it was told to keep). Failures are logged: the bench's own
/// outcome is what its caller reports.
pub async fn drop_leftovers() {
    let leftovers = std::mem::take(&mut *undropped());
    for (name, settings) in leftovers {
        match drop_database(&settings, &name).await {
            Ok(()) => tracing::info!(database = %name, "dropped the bench database"),
            Err(error) => {
                tracing::warn!(database = %name, error = %error, "cannot drop the bench database")
            }
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

fn url_with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let mut parsed = url::Url::parse(url)?;
    parsed.set_path(&format!("/{database}"));
    Ok(parsed.into())
}
