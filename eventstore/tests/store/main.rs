//! Event store tests against a real PostgreSQL: each test gets a fresh,
//! migrated database from `#[sqlx::test]`.

mod append;
mod data_keys;
mod gap_safety;
mod generation;
mod guarded;
mod limits;
mod reads;
mod restore;
mod subscribe;

use std::time::Duration;

use eventstore::{AppendRequest, EventStore, ExpectedVersion, Metadata, NewEvent, StoreOptions};
use sqlx::PgPool;
use uuid::Uuid;

/// Logs to the test output when `TEST_LOG` is set; tests are quiet otherwise.
pub fn init_logging() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "debug".into()))
            .with_test_writer()
            .try_init();
    }
}

pub async fn store(pool: PgPool) -> EventStore {
    init_logging();
    EventStore::connect(
        pool,
        StoreOptions {
            poll_interval: Duration::from_millis(100),
            ..StoreOptions::default()
        },
    )
    .await
    .expect("open store")
}

pub fn request(stream_id: Uuid, expected: ExpectedVersion, count: usize) -> AppendRequest {
    AppendRequest {
        stream_id,
        stream_type: "test".into(),
        expected,
        events: (0..count)
            .map(|i| {
                let payload =
                    rmp_serde::to_vec_named(&serde_json::json!({ "n": i })).expect("encode");
                NewEvent::new("thing_happened", 1, payload)
            })
            .collect(),
        metadata: Metadata::default(),
    }
}

/// Appends `request` through the store's one append, which must accept it.
pub async fn appended(store: &EventStore, request: AppendRequest) -> eventstore::AppendOutcome {
    store.append(&request).await.expect("append")
}

/// A transaction of the store's that has appended one event to `stream`
/// (so it holds its transaction id), not yet committed.
pub async fn begun_with_one(store: &EventStore, stream: Uuid) -> eventstore::AppendTx<'_> {
    let mut tx = store.begin().await.expect("begin");
    tx.append(&request(stream, ExpectedVersion::Any, 1))
        .await
        .expect("append in the transaction");
    tx
}

pub fn with_command(mut request: AppendRequest, command_id: Uuid) -> AppendRequest {
    request.metadata.command_id = Some(command_id);
    request
}

pub async fn event_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await
        .expect("count events")
}

/// How many events the streams hold together.
pub async fn events_in(pool: &PgPool, streams: &[Uuid]) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE stream_id = ANY($1)")
        .bind(streams)
        .fetch_one(pool)
        .await
        .expect("count events")
}

/// Reads everything after `after`, waiting until at least `expected` events
/// are visible: a transaction of another test anywhere in the cluster may
/// hold back the visibility horizon for a moment (by design, see the crate docs).
pub async fn read_all_when_visible(
    store: &EventStore,
    after: eventstore::Position,
    expected: usize,
) -> Vec<eventstore::RecordedEvent> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let batch = store.read_all_after(after, 10_000).await.expect("read all");
        if batch.events.len() >= expected || std::time::Instant::now() > deadline {
            return batch.events;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
