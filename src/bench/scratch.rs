//! A throw-away database for a bench run, on the configured server.

use infra::config::DatabaseSettings;
use secrecy::{ExposeSecret, SecretString};
use sqlx::{Connection, PgConnection, PgPool};

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
        let options = infra::postgres::connect_options(&self.settings)?.database("postgres");
        let mut conn = PgConnection::connect_with(&options).await?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        ))
        .execute(&mut conn)
        .await?;
        Ok(())
    }
}

fn url_with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let mut parsed = url::Url::parse(url)?;
    parsed.set_path(&format!("/{database}"));
    Ok(parsed.into())
}
