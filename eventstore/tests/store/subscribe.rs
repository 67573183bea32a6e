use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventstore::{
    EventStore, ExpectedVersion, Position, RecordedEvent, StoreOptions, Subscription,
};
use futures_util::StreamExt;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use crate::{appended, request, store};

async fn collect(subscription: &mut Subscription, count: usize) -> Vec<RecordedEvent> {
    let mut seen = Vec::new();
    while seen.len() < count {
        let batch = tokio::time::timeout(Duration::from_secs(60), subscription.next_batch())
            .await
            .expect("events arrive")
            .expect("batch");
        seen.extend(batch);
    }
    seen
}

/// A store whose subscribers poll once an hour: only a notification (or a
/// lost listener connection, or a look at held-back events) wakes them
/// within a test.
async fn polling_hourly(pool: PgPool) -> EventStore {
    crate::init_logging();
    let options = StoreOptions {
        poll_interval: Duration::from_secs(3600),
        ..StoreOptions::default()
    };
    EventStore::connect(pool, options).await.expect("store")
}

/// A store whose subscribers poll once an hour (see [`polling_hourly`]), and a task
/// waiting for the size of its subscriber's first batch, given 200 ms to
/// start waiting (if it starts later, its first read finds what was
/// appended meanwhile, so a test still passes or fails on the same grounds).
async fn waiting_subscriber(pool: PgPool) -> (EventStore, tokio::task::JoinHandle<usize>) {
    let store = polling_hourly(pool).await;
    let mut subscription = store.subscribe(Position::START).await;
    let waiter = tokio::spawn(async move { subscription.next_batch().await.expect("batch").len() });
    tokio::time::sleep(Duration::from_millis(200)).await;
    (store, waiter)
}

/// How long a test waits for a subscriber's batch. The bound only keeps a
/// broken build from hanging: appended events are held back while any older
/// writing transaction of the cluster is open, and tests beside this one in
/// other databases hold such transactions, so on a loaded machine the wait
/// can be long.
const GUARD: Duration = Duration::from_secs(300);

/// Waits for the first batch of `waiter` (see [`GUARD`]).
async fn first_batch(
    store: &EventStore,
    pool: &PgPool,
    waiter: tokio::task::JoinHandle<usize>,
) -> usize {
    match tokio::time::timeout(GUARD, waiter).await {
        Ok(count) => count.expect("task"),
        Err(_) => panic!(
            "no batch: {}",
            why_no_batch(store, pool, Position::START).await
        ),
    }
}

/// What a test that ran out of [`GUARD`] says: whether the log holds events
/// after the subscriber's position, which transactions could hold them
/// back, and whether the subscriber was listening at all.
async fn why_no_batch(store: &EventStore, pool: &PgPool, after: Position) -> String {
    let pending = store.has_events_after(after).await;
    let open: Vec<String> = sqlx::query_scalar(
        "SELECT format('pid %s in %s, xid %s, since %s: %s',
                       pid, datname, backend_xid, xact_start, left(query, 80))
           FROM pg_stat_activity
          WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    let listening: Result<i64, _> = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
          WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
    )
    .fetch_one(pool)
    .await;
    format!(
        "events after the position {pending:?}; listening connections {listening:?}; \
         transactions with an xid: {open:?}"
    )
}

#[sqlx::test(migrations = "../migrations")]
async fn notifications_wake_subscribers_without_waiting_for_the_poll(pool: PgPool) {
    let (store, waiter) = waiting_subscriber(pool.clone()).await;
    appended(&store, request(Uuid::now_v7(), ExpectedVersion::Any, 2)).await;
    assert_eq!(first_batch(&store, &pool, waiter).await, 2);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_subscriber_listens_again_after_its_listener_is_killed(pool: PgPool) {
    let (store, waiter) = waiting_subscriber(pool.clone()).await;
    // With hourly polls only a notification brings the append below in
    // time, so the subscriber must be listening again after losing its
    // listening connection (it listens before its next read, so an append
    // that commits in between is read rather than missed).
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
          WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
    )
    .fetch_one(&pool)
    .await
    .expect("terminate");
    assert_eq!(killed, 1, "one listening connection");
    appended(&store, request(Uuid::now_v7(), ExpectedVersion::Any, 3)).await;
    assert_eq!(first_batch(&store, &pool, waiter).await, 3);
}

/// Short writing transactions one after another keep appended events held
/// back for a moment and free them at any time, also between a reader's
/// read and its check for more. With hourly polls a subscriber that then
/// waited for a notification (already spent on the read) would hang; the
/// old check (see `has_events_after`) did so within the first ten rounds
/// in each of five runs.
#[sqlx::test(migrations = "../migrations")]
async fn transactions_ending_around_a_read_never_leave_a_subscriber_waiting(
    _pool_options: PgPoolOptions,
    connect_options: PgConnectOptions,
) {
    const ROUNDS: usize = 50;
    crate::init_logging();
    let pool = PgPoolOptions::new()
        .max_connections(6)
        .connect_with(connect_options.clone())
        .await
        .expect("pool");
    let store = polling_hourly(pool.clone()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let churn = tokio::spawn({
        let stop = Arc::clone(&stop);
        async move {
            let mut conn = PgConnection::connect_with(&connect_options)
                .await
                .expect("connect");
            while !stop.load(Ordering::Relaxed) {
                let mut tx = conn.begin().await.expect("begin");
                sqlx::query("SELECT pg_current_xact_id(), pg_sleep(0.003)")
                    .execute(&mut *tx)
                    .await
                    .expect("take an xid");
                tx.commit().await.expect("commit");
            }
        }
    });

    let mut subscription = store.subscribe(Position::START).await;
    for round in 0..ROUNDS {
        // Let the subscriber finish its read-ahead and wait for news, as it
        // does between appends in a quiet system.
        tokio::time::sleep(Duration::from_millis(20)).await;
        appended(&store, request(Uuid::now_v7(), ExpectedVersion::Any, 1)).await;
        match tokio::time::timeout(GUARD, subscription.next_batch()).await {
            Ok(batch) => assert_eq!(batch.expect("batch").len(), 1, "round {round}"),
            Err(_) => panic!(
                "round {round}, no batch: {}",
                why_no_batch(&store, &pool, subscription.position()).await
            ),
        }
    }
    stop.store(true, Ordering::Relaxed);
    churn.await.expect("churn");
}

#[sqlx::test(migrations = "../migrations")]
async fn subscription_resumes_after_its_connections_are_killed(pool: PgPool) {
    let store = store(pool.clone()).await;
    let mut subscription = store.subscribe(Position::START).await.with_batch_size(7);
    let mut appended = Vec::new();
    for _ in 0..5 {
        let req = request(Uuid::now_v7(), ExpectedVersion::Any, 4);
        appended.extend(req.events.iter().map(|e| e.event_id));
        store.append(&req).await.expect("append");
    }
    let mut seen = collect(&mut subscription, 20).await;

    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = current_database() AND pid <> pg_backend_pid()) AS t",
    )
    .fetch_one(&pool)
    .await
    .expect("terminate");
    assert!(killed >= 1, "the listener connection at least was killed");

    for _ in 0..5 {
        let req = request(Uuid::now_v7(), ExpectedVersion::Any, 4);
        appended.extend(req.events.iter().map(|e| e.event_id));
        store.append(&req).await.expect("append after the kill");
    }
    seen.extend(collect(&mut subscription, 20).await);
    let ids: Vec<Uuid> = seen.iter().map(|e| e.event_id).collect();
    assert_eq!(ids, appended, "every event once, in order");
    let extra = tokio::time::timeout(Duration::from_millis(500), subscription.next_batch()).await;
    assert!(extra.is_err(), "nothing more to deliver: {extra:?}");
}

#[sqlx::test(migrations = "../migrations")]
async fn a_subscription_is_also_a_stream_and_starts_after_its_position(pool: PgPool) {
    let store = store(pool).await;
    let first = appended(&store, request(Uuid::now_v7(), ExpectedVersion::Any, 3)).await;
    let second = appended(&store, request(Uuid::now_v7(), ExpectedVersion::Any, 2)).await;
    let stream = store.subscribe(first.position).await.into_stream();
    futures_util::pin_mut!(stream);
    let batch = tokio::time::timeout(Duration::from_secs(60), stream.next())
        .await
        .expect("batch arrives")
        .expect("stream open")
        .expect("batch");
    let streams: HashSet<Uuid> = batch.iter().map(|e| e.stream_id).collect();
    assert_eq!(streams, HashSet::from([second.stream_id]));
    assert_eq!(batch.len(), 2);
}

#[sqlx::test(migrations = "../migrations")]
async fn dropping_a_subscription_releases_its_connections(pool: PgPool) {
    let store = store(pool.clone()).await;
    let listening = || async {
        let count: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
        )
        .fetch_one(&pool)
        .await
        .expect("count");
        count
    };
    let mut subscription = store.subscribe(Position::START).await;
    appended(&store, request(Uuid::now_v7(), ExpectedVersion::Any, 1)).await;
    collect(&mut subscription, 1).await;
    assert_eq!(listening().await, 1);
    drop(subscription);
    let deadline = Instant::now() + Duration::from_secs(5);
    while listening().await > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        listening().await,
        0,
        "the reading task outlived its subscription"
    );
}

/// A consumer slower than the log gets everything read ahead for it in one
/// batch (up to the batch size), not one read per call: each read would
/// otherwise wait a whole apply behind the ones queued before it. Nothing
/// is lost, repeated or reordered by joining them.
#[sqlx::test(migrations = "../migrations")]
async fn batches_read_ahead_are_returned_together(pool: PgPool) {
    let store = store(pool).await;
    let mut subscription = store.subscribe(Position::START).await.with_batch_size(3);
    let first = appended(&store, request(Uuid::now_v7(), ExpectedVersion::Any, 1)).await;
    assert_eq!(
        collect(&mut subscription, 1).await[0].position,
        first.position
    );
    // Four appends the reader reads one at a time, while this consumer is
    // busy elsewhere: three fit in its read-ahead, the fourth waits.
    let mut written = Vec::new();
    for _ in 0..4 {
        written.push(
            appended(&store, request(Uuid::now_v7(), ExpectedVersion::Any, 1))
                .await
                .position,
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let joined = collect(&mut subscription, 1).await;
    assert!(
        (2..=3).contains(&joined.len()),
        "one call returned {} events: reads were not joined, or past the batch size",
        joined.len()
    );
    let mut seen: Vec<Position> = joined.iter().map(|e| e.position).collect();
    let rest = collect(&mut subscription, written.len() - seen.len()).await;
    seen.extend(rest.iter().map(|e| e.position));
    assert_eq!(seen, written, "lost, repeated or reordered");
}

/// A consumer's next batch holds everything readable when it asks, not
/// only what its reader read before: a consumer that writes in
/// transactions (a projection) holds back, while each is open, the events
/// committed after it began, and they must not wait a further batch once
/// it commits.
#[sqlx::test(migrations = "../migrations")]
async fn a_batch_holds_what_became_readable_before_it_was_asked_for(pool: PgPool) {
    // Hourly polls, and held-back events looked at again at most every
    // 100 ms: only the request for a fresh read brings `late` in at once.
    let store = polling_hourly(pool.clone()).await;
    let mut subscription = store.subscribe(Position::START).await.with_batch_size(100);
    let first = appended(&store, request(Uuid::now_v7(), ExpectedVersion::Any, 1)).await;
    assert_eq!(
        collect(&mut subscription, 1).await[0].position,
        first.position
    );

    // `early` takes its transaction id before the consumer's transaction
    // does, so it is readable while that one is open: the reader reads it
    // ahead. `late` commits after the consumer's transaction began and is
    // held back until it commits.
    let mut early_tx = store.begin().await.expect("begin");
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(early_tx.conn())
        .await
        .expect("xid");
    let mut consumer = PgConnection::connect_with(&(*pool.connect_options()).clone())
        .await
        .expect("connect");
    sqlx::query("BEGIN")
        .execute(&mut consumer)
        .await
        .expect("begin");
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut consumer)
        .await
        .expect("xid");
    let early = early_tx
        .append(&request(Uuid::now_v7(), ExpectedVersion::Any, 1))
        .await
        .expect("append early");
    early_tx.commit().await.expect("commit early");
    readable(&store, first.position, early.position).await;
    // The reader is woken by the commit's notification (or looks again
    // within 100 ms) and reads `early` ahead.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let late = appended(&store, request(Uuid::now_v7(), ExpectedVersion::Any, 1)).await;
    // Long enough for the reader's looks at held-back events to space out
    // to 100 ms.
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::query("COMMIT")
        .execute(&mut consumer)
        .await
        .expect("commit");
    readable(&store, early.position, late.position).await;

    let batch = tokio::time::timeout(GUARD, subscription.next_batch())
        .await
        .expect("a batch")
        .expect("batch");
    let positions: Vec<Position> = batch.iter().map(|e| e.position).collect();
    assert_eq!(
        positions,
        vec![early.position, late.position],
        "the batch missed what became readable before it was asked for"
    );
}

/// Waits until the event at `position`, after `after`, is readable (other
/// tests' transactions can hold it back for a while; see [`GUARD`]).
async fn readable(store: &EventStore, after: Position, position: Position) {
    let deadline = Instant::now() + GUARD;
    loop {
        let batch = store.read_all_after(after, 10).await.expect("read");
        if batch.events.iter().any(|e| e.position == position) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{position} never became readable"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A caller that stops waiting for a batch (a `select!` with a timer, as
/// the projector's loop does) loses nothing: what the call had taken from
/// the reader is returned by the next call. Appends keep coming while the
/// consumer gives up on most of its calls after a millisecond.
#[sqlx::test(migrations = "../migrations")]
async fn a_call_given_up_on_loses_nothing(pool: PgPool) {
    let store = store(pool).await;
    let mut subscription = store.subscribe(Position::START).await.with_batch_size(7);
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut written = Vec::new();
            for _ in 0..300 {
                let count = 1 + written.len() % 3;
                let outcome =
                    appended(&store, request(Uuid::now_v7(), ExpectedVersion::Any, count)).await;
                written.push(outcome.position);
                if written.len() % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
            }
            written
        })
    };
    let mut seen: Vec<Position> = Vec::new();
    let mut given_up = 0;
    let deadline = Instant::now() + GUARD;
    let last = loop {
        match tokio::time::timeout(Duration::from_millis(1), subscription.next_batch()).await {
            Ok(batch) => {
                let batch = batch.expect("batch");
                assert!(batch.len() <= 7, "a batch above the batch size");
                seen.extend(batch.iter().map(|e| e.position));
            }
            Err(_) => given_up += 1,
        }
        if writer.is_finished() {
            let written = writer.await.expect("writer");
            break *written.last().expect("written");
        }
        assert!(Instant::now() < deadline, "the writer never finished");
    };
    while seen.last() != Some(&last) {
        let batch = tokio::time::timeout(GUARD, subscription.next_batch())
            .await
            .expect("the rest arrives")
            .expect("batch");
        seen.extend(batch.iter().map(|e| e.position));
    }
    assert!(given_up > 0, "no call was given up on");
    let all: Vec<Position> = store
        .read_all_after(Position::START, 10_000)
        .await
        .expect("read")
        .events
        .iter()
        .map(|e| e.position)
        .collect();
    if seen != all {
        let missing: Vec<String> = all
            .iter()
            .filter(|p| !seen.contains(p))
            .map(|p| p.to_string())
            .collect();
        panic!(
            "lost, repeated or reordered: {} events seen of {}; never seen: {missing:?}",
            seen.len(),
            all.len()
        );
    }
}
