use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventstore::{ExpectedVersion, Position, RecordedEvent};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{appended, begun_with_one, request, store};

#[sqlx::test(migrations = "../migrations")]
async fn a_slow_transaction_is_never_skipped(pool: PgPool) {
    let store = store(pool).await;
    let slow_stream = Uuid::now_v7();
    let fast_stream = Uuid::now_v7();

    let slow = begun_with_one(&store, slow_stream).await;
    let fast = appended(&store, request(fast_stream, ExpectedVersion::Any, 1)).await;

    // The fast event is committed, but handing it out now would move a
    // checkpoint past the slow one, which commits later.
    let batch = store
        .read_all_after(Position::START, 100)
        .await
        .expect("read");
    assert!(
        batch.events.is_empty(),
        "read past an open transaction: {:?}",
        batch.events
    );
    assert!(
        store
            .has_events_after(Position::START)
            .await
            .expect("check"),
        "held back events are reported, so a reader looks again soon"
    );
    let mut subscription = store.subscribe(Position::START).await;
    let early = tokio::time::timeout(Duration::from_millis(400), subscription.next_batch()).await;
    assert!(
        early.is_err(),
        "subscription delivered while the slow transaction was open: {early:?}"
    );
    assert_eq!(subscription.position(), Position::START);

    slow.commit().await.expect("commit slow");
    // A reader whose empty read came just before this commit has had the
    // fast event's notification already: the check it makes after the read
    // must still send it back to read.
    assert!(
        store
            .has_events_after(Position::START)
            .await
            .expect("check"),
        "events freed after a read are reported"
    );
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let batch = tokio::time::timeout(Duration::from_secs(60), subscription.next_batch())
            .await
            .expect("delivered after commit")
            .expect("batch");
        seen.extend(batch);
    }
    assert_eq!(
        seen.iter().map(|e| e.stream_id).collect::<Vec<_>>(),
        vec![slow_stream, fast_stream]
    );
    assert_eq!(seen[1].position, fast.position);
    assert!(seen[0].position < seen[1].position);
    assert!(!store.has_events_after(fast.position).await.expect("check"));
}

/// Small deterministic generator, so a failing run can be repeated.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn many_writers_with_random_commit_delays_lose_and_repeat_nothing(
    _pool_options: PgPoolOptions,
    connect_options: PgConnectOptions,
) {
    const WRITERS: u64 = 16;
    const APPENDS_PER_WRITER: usize = 150;
    // Our own pool: the harness caps its pools below the 16 writers + reader.
    let pool = PgPoolOptions::new()
        .max_connections(24)
        .connect_with(connect_options)
        .await
        .expect("pool");
    let store = store(pool).await;
    let shared_streams: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    let committed = Arc::new(Mutex::new(HashSet::new()));
    let rolled_back = Arc::new(Mutex::new(HashSet::new()));

    // usize::MAX while writers run, then the number of committed events.
    let target = Arc::new(AtomicUsize::new(usize::MAX));
    let mut subscription = store.subscribe(Position::START).await.with_batch_size(200);
    let reader_target = Arc::clone(&target);
    let reader = tokio::spawn(async move {
        let mut delivered: Vec<RecordedEvent> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        while delivered.len() < reader_target.load(Ordering::SeqCst) && Instant::now() < deadline {
            if let Ok(batch) =
                tokio::time::timeout(Duration::from_millis(200), subscription.next_batch()).await
            {
                delivered.extend(batch.expect("batch"));
            }
        }
        // Anything beyond the committed events would be a bug: look once more.
        if let Ok(batch) =
            tokio::time::timeout(Duration::from_millis(500), subscription.next_batch()).await
        {
            delivered.extend(batch.expect("batch"));
        }
        delivered
    });

    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let store = store.clone();
        let shared_streams = shared_streams.clone();
        let committed = Arc::clone(&committed);
        let rolled_back = Arc::clone(&rolled_back);
        writers.push(tokio::spawn(async move {
            let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ (writer + 1));
            let own_streams: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
            for _ in 0..APPENDS_PER_WRITER {
                let roll = rng.next();
                let stream = if roll % 4 == 0 {
                    shared_streams[(roll / 4 % 3) as usize]
                } else {
                    own_streams[(roll / 4 % 3) as usize]
                };
                let events = 1 + (rng.next() % 3) as usize;
                let req = request(stream, ExpectedVersion::Any, events);
                let ids: Vec<Uuid> = req.events.iter().map(|e| e.event_id).collect();
                let mut tx = store.begin().await.expect("begin");
                tx.append(&req).await.expect("append");
                tokio::time::sleep(Duration::from_micros(rng.next() % 8000)).await;
                if rng.next() % 10 == 0 {
                    drop(tx);
                    rolled_back.lock().expect("lock").extend(ids);
                } else {
                    tx.commit().await.expect("commit");
                    committed.lock().expect("lock").extend(ids);
                }
            }
        }));
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    target.store(committed.lock().expect("lock").len(), Ordering::SeqCst);
    let delivered = reader.await.expect("reader");

    let committed = committed.lock().expect("lock").clone();
    let rolled_back = rolled_back.lock().expect("lock").clone();
    assert!(
        committed.len() > 2000,
        "{} events committed",
        committed.len()
    );
    let delivered_ids: Vec<Uuid> = delivered.iter().map(|e| e.event_id).collect();
    let unique: HashSet<Uuid> = delivered_ids.iter().copied().collect();
    assert_eq!(
        unique.len(),
        delivered_ids.len(),
        "an event was delivered twice"
    );
    assert!(
        unique.is_disjoint(&rolled_back),
        "a rolled-back event was delivered"
    );
    assert_eq!(
        unique, committed,
        "delivered events differ from committed events"
    );
    assert!(
        delivered.windows(2).all(|w| w[0].position < w[1].position),
        "positions are not strictly increasing"
    );
    let mut last_version: HashMap<Uuid, u64> = HashMap::new();
    for event in &delivered {
        let last = last_version.entry(event.stream_id).or_insert(0);
        assert_eq!(
            event.version,
            *last + 1,
            "stream {} out of order",
            event.stream_id
        );
        *last = event.version;
    }
}
