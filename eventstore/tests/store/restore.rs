//! The two halves of the restore case, driven by `tests/restore.sh`:
//! events written in one cluster, dumped with `pg_dump`, restored into a
//! freshly initialised cluster whose transaction counter is far behind,
//! then appended to and read. Ignored by default: they need the script's
//! second cluster.

use std::collections::HashSet;

use eventstore::{checkpoint, EventStore, ExpectedVersion, Position};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{appended, read_all_when_visible, request, store};

const OLD_EVENTS: usize = 300;
const NEW_EVENTS: usize = 100;

async fn connect(var: &str) -> (PgPool, EventStore) {
    let url = std::env::var(var).unwrap_or_else(|_| panic!("{var} must name the database"));
    let pool = PgPool::connect(&url).await.expect("connect");
    let store = store(pool.clone()).await;
    (pool, store)
}

#[tokio::test]
#[ignore = "run by tests/restore.sh"]
async fn restore_phase_write() {
    let (pool, store) = connect("RESTORE_SOURCE_URL").await;
    for _ in 0..OLD_EVENTS / 10 {
        let stream = Uuid::now_v7();
        appended(&store, request(stream, ExpectedVersion::NoStream, 5)).await;
        appended(&store, request(stream, ExpectedVersion::Exact(5), 5)).await;
    }
    let events = read_all_when_visible(&store, Position::START, OLD_EVENTS).await;
    assert_eq!(events.len(), OLD_EVENTS);
    let last = events.last().expect("events").position;
    // A projection's checkpoint, dumped with the events.
    checkpoint::save(&pool, "restore-check", last)
        .await
        .expect("checkpoint");
}

#[tokio::test]
#[ignore = "run by tests/restore.sh"]
async fn restore_phase_verify() {
    let url = std::env::var("RESTORE_TARGET_URL").expect("RESTORE_TARGET_URL");
    let raw = PgPool::connect(&url).await.expect("connect");
    let (newest, next): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT max(tx_id) FROM events),
                pg_snapshot_xmax(pg_current_snapshot())::text::bigint",
    )
    .fetch_one(&raw)
    .await
    .expect("counters");
    assert!(
        newest >= next,
        "the restored cluster's transaction counter ({next}) should be behind the stored events ({newest}) for this test to mean anything"
    );

    let (pool, store) = connect("RESTORE_TARGET_URL").await;
    assert_eq!(
        store.generation().await.expect("generation"),
        2,
        "a restore starts a new generation"
    );
    let saved = checkpoint::load(&pool, "restore-check")
        .await
        .expect("load")
        .expect("checkpoint restored");
    let old = read_all_when_visible(&store, Position::START, OLD_EVENTS).await;
    assert_eq!(
        old.len(),
        OLD_EVENTS,
        "every old event is readable after the restore"
    );

    let streams: Vec<Uuid> = old
        .iter()
        .map(|e| e.stream_id)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut appended = Vec::new();
    for (i, stream) in streams.iter().cycle().take(NEW_EVENTS / 2).enumerate() {
        let expected = if i < streams.len() {
            ExpectedVersion::Exact(10)
        } else {
            ExpectedVersion::Exact(12)
        };
        let req = request(*stream, expected, 2);
        appended.extend(req.events.iter().map(|e| e.event_id));
        store.append(&req).await.expect("append after restore");
    }

    let all = read_all_when_visible(&store, Position::START, OLD_EVENTS + NEW_EVENTS).await;
    assert_eq!(all.len(), OLD_EVENTS + NEW_EVENTS);
    assert!(
        all.windows(2).all(|w| w[0].position < w[1].position),
        "one strictly increasing order"
    );
    assert_eq!(all[..OLD_EVENTS], old[..], "old events first, as before");
    let after = read_all_when_visible(&store, saved, NEW_EVENTS).await;
    assert_eq!(
        after.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        appended,
        "the old checkpoint sees exactly the new events"
    );
}
