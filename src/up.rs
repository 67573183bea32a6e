//! `copilot-data up`: every role in one process. The roles arrive with their
//! crates; today it prepares the database, opens the event store, reports
//! readiness and waits for a shutdown signal.

use std::future::Future;

use eventstore::{EventStore, StoreOptions};
use infra::Settings;

pub fn store_options(settings: &Settings) -> StoreOptions {
    let es = &settings.event_store;
    StoreOptions {
        max_payload_bytes: es.max_payload_bytes,
        max_events_per_append: es.max_events_per_append,
        poll_interval: es.poll_interval,
        batch_size: es.batch_size,
        ..StoreOptions::default()
    }
}

pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let pool = infra::postgres::prepare(&settings.database).await?;
    let store = EventStore::connect(pool, store_options(&settings)).await?;
    let head = store.head_position().await?;
    tracing::info!(
        generation = store.generation().await?,
        head = %head,
        "event store ready"
    );
    shutdown.await;
    store.pool().close().await;
    tracing::info!("stopped");
    Ok(())
}
