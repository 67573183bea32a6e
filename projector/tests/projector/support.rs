//! Helpers: a store on the test database, generated histories, a running
//! projector, and waiting for it to catch up.

use std::time::{Duration, Instant};

use eventstore::{checkpoint, EventStore, Position, StoreOptions};
use projector::rebuild;
use projector::{Kind, ProjectorConfig};
use sqlx::PgPool;
use testkit::history::History;
use testkit::stack::Services;

pub async fn store(pool: PgPool) -> EventStore {
    EventStore::connect(pool, StoreOptions::default())
        .await
        .expect("event store")
}

/// Appends `n` appends of `history` (each one or two events); returns the
/// number of events written.
pub async fn append(store: &EventStore, history: &mut History, n: usize) -> u64 {
    append_upto(store, history, n).await.0
}

/// [`append`], also returning the position of the last event written.
pub async fn append_upto(store: &EventStore, history: &mut History, n: usize) -> (u64, Position) {
    let mut events = 0;
    let mut last = Position::START;
    for _ in 0..n {
        let request = history.next_append().expect("encode");
        events += request.events.len() as u64;
        last = store.append(&request).await.expect("append").position;
    }
    (events, last)
}

pub fn config() -> ProjectorConfig {
    ProjectorConfig {
        batch_size: 400,
        lease_retry: Duration::from_millis(100),
        ..ProjectorConfig::default()
    }
}

/// A projector started the one way the tests start services
/// (`testkit::stack`): as its own login, on the test's database.
pub struct Running(Services);

impl Running {
    pub async fn stop(mut self) {
        self.0.stop().await;
    }
}

pub async fn spawn(store: &EventStore, config: ProjectorConfig) -> Running {
    let mut services = Services::default();
    services.projector(store.pool(), config).await;
    Running(services)
}

pub async fn checkpoint_of(store: &EventStore, kind: Kind) -> Position {
    checkpoint::position(store.pool(), kind.name())
        .await
        .expect("checkpoint")
}

/// The newest committed event's position (unlike `head_position`, not
/// held back by other tests' open transactions: call it when writes are done).
pub async fn last_position(store: &EventStore) -> Position {
    let row: Option<(i32, i64, i64)> = sqlx::query_as(
        "SELECT generation, tx_id, seq FROM events ORDER BY generation DESC, tx_id DESC, seq DESC LIMIT 1",
    )
    .fetch_optional(store.pool())
    .await
    .expect("last position");
    row.map_or(Position::START, |(generation, tx_id, seq)| Position {
        generation,
        tx_id,
        seq,
    })
}

/// Waits until every projection's checkpoint is the newest event's.
pub async fn caught_up(store: &EventStore) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let head = last_position(store).await;
        let mut behind = Vec::new();
        for kind in Kind::ALL {
            let at = checkpoint_of(store, kind).await;
            if at != head {
                behind.push(format!("{} at {at}", kind.name()));
            }
        }
        if behind.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "projections did not catch up with {head}: {behind:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `verify` over every SQL projection; fails the test on any difference.
pub async fn assert_verified(store: &EventStore) {
    let comparisons = rebuild::verify(store, &Kind::ALL, 1000, &|_| {})
        .await
        .expect("verify");
    assert_eq!(comparisons.len(), 10, "nine tables and the audit log");
    let differing: Vec<_> = comparisons.iter().filter(|c| !c.equal()).collect();
    assert!(
        differing.is_empty(),
        "tables differ from a rebuild: {differing:#?}"
    );
}

pub async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.expect(sql)
}

/// Waits until checkpoint `name` (a sink such as `relay` or `redis`) is `head`.
pub async fn checkpoint_reaches(store: &EventStore, name: &str, head: Position) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let at = checkpoint::position(store.pool(), name)
            .await
            .expect("checkpoint");
        if at == head {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} stuck at {at}, head {head}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
