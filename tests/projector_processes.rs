//! Projector processes against one database: SIGKILLed mid-batch many
//! times while events keep coming, and two at once with a takeover. After
//! each, every table equals a fresh rebuild: no event lost, none applied
//! twice.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use eventstore::{checkpoint, EventStore, Position, StoreOptions};
use projector::{rebuild, Kind};
use sqlx::PgPool;
use testkit::history::History;
use tokio::process::{Child, Command};

mod common;
use common::database_url;

fn start(url: &str) -> Child {
    start_with(url, None)
}

/// With `redis_prefix`, the Redis projection runs too (under that prefix).
fn start_with(url: &str, redis_prefix: Option<&str>) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_copilot-data"));
    command
        .arg("projector")
        .env("COPILOT_DATABASE_URL", url)
        .env("COPILOT_MASTER_KEY", common::TEST_MASTER_KEY)
        .env("COPILOT_DATABASE_MAX_CONNECTIONS", "6")
        .env("COPILOT_PROJECTOR_BATCH_SIZE", "150")
        .env("COPILOT_PROJECTOR_LEASE_RETRY_MS", "100")
        .env("COPILOT_METRICS_ADDR", "off")
        .env("COPILOT_PROJECTOR_RELAY", "false")
        .env("COPILOT_PROJECTOR_REDIS", "false")
        .env("COPILOT_PROJECTOR_VECTORS", "false")
        .env("COPILOT_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    if let Some(prefix) = redis_prefix {
        command
            .env("COPILOT_PROJECTOR_REDIS", "true")
            .env("COPILOT_REDIS_PREFIX", prefix);
    }
    command.spawn().expect("start copilot-data projector")
}

/// A projector running the SQL projections and the vector projection into
/// the embedded store under `dir` (breakers under `prefix`).
fn start_vectors(url: &str, dir: &std::path::Path, prefix: &str) -> Child {
    start_role("projector", url, dir, prefix)
}

/// `copilot-data <role>` with the vector projection on, into the embedded
/// store under `dir` (breakers under `prefix`).
fn start_role(role: &str, url: &str, dir: &std::path::Path, prefix: &str) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_copilot-data"));
    command
        .arg(role)
        .env("COPILOT_DATABASE_URL", url)
        .env("COPILOT_MASTER_KEY", common::TEST_MASTER_KEY)
        .env("COPILOT_DATABASE_MAX_CONNECTIONS", "6")
        // Small batches: a batch of long messages takes seconds to embed.
        .env("COPILOT_PROJECTOR_BATCH_SIZE", "12")
        .env("COPILOT_PROJECTOR_LEASE_RETRY_MS", "100")
        .env("COPILOT_METRICS_ADDR", "off")
        .env("COPILOT_PROJECTOR_RELAY", "false")
        .env("COPILOT_PROJECTOR_REDIS", "false")
        .env("COPILOT_PROJECTOR_VECTORS", "true")
        .env("COPILOT_VECTOR_DIR", dir)
        .env("COPILOT_REDIS_PREFIX", prefix)
        .env("COPILOT_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    command
        .spawn()
        .unwrap_or_else(|e| panic!("start copilot-data {role}: {e}"))
}

/// Appends a generated history until told to stop.
fn writer(store: EventStore, seed: u64, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut history = History::new(seed);
        let mut events = 0;
        while !stop.load(Ordering::Relaxed) {
            let request = history.next_append().expect("encode");
            events += request.events.len() as u64;
            store.append(&request).await.expect("append");
        }
        events
    })
}

async fn last_position(store: &EventStore) -> Position {
    let row: Option<(i32, i64, i64)> = sqlx::query_as(
        "SELECT generation, tx_id, seq FROM events ORDER BY generation DESC, tx_id DESC, seq DESC LIMIT 1",
    )
    .fetch_optional(store.pool())
    .await
    .expect("last");
    row.map_or(Position::START, |(generation, tx_id, seq)| Position {
        generation,
        tx_id,
        seq,
    })
}

async fn caught_up(store: &EventStore) {
    let head = last_position(store).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    for kind in Kind::ALL {
        loop {
            let at = checkpoint::position(store.pool(), kind.name())
                .await
                .expect("checkpoint");
            if at == head {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} stuck at {at}, head {head}",
                kind.name()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Waits (up to `limit`) until checkpoint `name` is `head`.
async fn reaches(store: &EventStore, name: &str, head: Position, limit: Duration) {
    let deadline = Instant::now() + limit;
    while checkpoint::load(store.pool(), name).await.expect("cp") != Some(head) {
        assert!(Instant::now() < deadline, "{name} did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the vector projection's checkpoint is `head` (a batch of
/// long messages takes seconds to embed).
async fn vectors_reach(store: &EventStore, head: Position) {
    reaches(store, "vectors", head, Duration::from_secs(240)).await;
}

/// Removes a vector test's embedded store and Redis keys.
async fn clean_up(dir: &std::path::Path, prefix: &str) {
    let _ = std::fs::remove_dir_all(dir);
    infra::redis_conn::delete_prefix("redis://127.0.0.1:6379", prefix)
        .await
        .expect("clean up");
}

async fn assert_verified(store: &EventStore) {
    let comparisons = rebuild::verify(store, &Kind::ALL, 1000, &|_| {})
        .await
        .expect("verify");
    let differing: Vec<_> = comparisons.iter().filter(|c| !c.equal()).collect();
    assert!(
        differing.is_empty(),
        "tables differ from a rebuild: {differing:#?}"
    );
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(store.pool())
        .await
        .expect("count");
    let audit = comparisons
        .iter()
        .find(|c| c.table == "audit_logs")
        .expect("audit compared");
    assert_eq!(audit.live.rows, events, "one audit row per event");
}

/// Deterministic "random" moments, different each run.
struct Jitter(u64);

impl Jitter {
    fn millis(&mut self, from: u64, to: u64) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_millis(from + self.0 % (to - from))
    }
}

#[sqlx::test(migrator = "infra::postgres::MIGRATOR")]
async fn sigkill_mid_batch_many_times_loses_and_doubles_nothing(pool: PgPool) {
    let url = database_url(&pool).await;
    let store = EventStore::connect(pool.clone(), StoreOptions::default())
        .await
        .expect("store");
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    let mut jitter = Jitter(seed);
    let stop = Arc::new(AtomicBool::new(false));
    let writers = [
        writer(store.clone(), seed, stop.clone()),
        writer(store.clone(), seed + 1, stop.clone()),
    ];

    // The Redis projection is killed mid-batch as well.
    let prefix = format!("k{}:", uuid::Uuid::new_v4().simple());
    for _ in 0..10 {
        let mut projector = start_with(&url, Some(&prefix));
        tokio::time::sleep(jitter.millis(300, 1200)).await;
        projector.start_kill().expect("SIGKILL");
        projector.wait().await.expect("reaped");
    }
    stop.store(true, Ordering::Relaxed);
    let mut events = 0;
    for w in writers {
        events += w.await.expect("writer");
    }
    assert!(events > 1000, "events kept coming: {events}");
    let applied = checkpoint::load(store.pool(), "relational")
        .await
        .expect("cp");
    assert!(applied.is_some(), "the killed projectors made progress");

    let mut projector = start_with(&url, Some(&prefix));
    caught_up(&store).await;
    let head = last_position(&store).await;
    reaches(&store, "redis", head, Duration::from_secs(60)).await;
    projector.start_kill().expect("SIGKILL");
    projector.wait().await.expect("reaped");
    assert_verified(&store).await;

    // Redeliveries after each kill queued no task twice and lost none.
    let tasks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE event_type IN ('execution_started', 'step_retried')",
    )
    .fetch_one(&pool)
    .await
    .expect("tasks");
    let client = redis::Client::open("redis://127.0.0.1:6379").expect("client");
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis");
    let queued: i64 = redis::cmd("ZCARD")
        .arg(format!("{prefix}queue:workflow_tasks"))
        .query_async(&mut redis)
        .await
        .expect("zcard");
    assert!(tasks > 0);
    assert_eq!(queued, tasks, "one task per event");
    infra::redis_conn::delete_prefix("redis://127.0.0.1:6379", &prefix)
        .await
        .expect("clean up");
}

async fn holder(pool: &PgPool, kind: Kind) -> Option<String> {
    holder_of(pool, kind.name()).await
}

async fn holder_of(pool: &PgPool, name: &str) -> Option<String> {
    sqlx::query_scalar("SELECT holder FROM projection_status WHERE name = $1")
        .bind(name)
        .fetch_optional(pool)
        .await
        .expect("status")
        .flatten()
}

#[sqlx::test(migrator = "infra::postgres::MIGRATOR")]
async fn two_projectors_one_applies_each_projection_and_the_other_takes_over(pool: PgPool) {
    let url = database_url(&pool).await;
    let store = EventStore::connect(pool.clone(), StoreOptions::default())
        .await
        .expect("store");
    let stop = Arc::new(AtomicBool::new(false));
    let write = writer(store.clone(), 77, stop.clone());
    let mut first = start(&url);
    let mut second = start(&url);
    let names = [
        format!("projector-{}", first.id().expect("pid")),
        format!("projector-{}", second.id().expect("pid")),
    ];

    // Each projection gets one holder, and keeps it while both run.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut holders = Vec::new();
    for kind in Kind::ALL {
        loop {
            if let Some(h) = holder(&pool, kind).await {
                assert!(names.contains(&h), "{h} is one of {names:?}");
                holders.push(h);
                break;
            }
            assert!(Instant::now() < deadline, "no holder for {}", kind.name());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        for (kind, h) in Kind::ALL.iter().zip(&holders) {
            assert_eq!(
                holder(&pool, *kind).await.as_ref(),
                Some(h),
                "{} changed hands",
                kind.name()
            );
        }
        // Exactly one session holds each projection's lease.
        let leases: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks
              WHERE locktype = 'advisory' AND granted AND objsubid = 1
                AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                AND ((classid::bigint << 32) | objid::bigint) IN
                    (SELECT hashtextextended('copilot_projection:' || n, 0)
                       FROM unnest(ARRAY['relational', 'audit']) AS n)",
        )
        .fetch_one(&pool)
        .await
        .expect("locks");
        assert_eq!(leases, 2, "one lease per projection");
    }

    // Kill whoever holds the relational projection; the other takes over.
    let relational_holder = holders[0].clone();
    let (victim, survivor) = if relational_holder == names[0] {
        (&mut first, &names[1])
    } else {
        (&mut second, &names[0])
    };
    victim.start_kill().expect("SIGKILL");
    victim.wait().await.expect("reaped");
    let deadline = Instant::now() + Duration::from_secs(30);
    while holder(&pool, Kind::Relational).await.as_ref() != Some(survivor) {
        assert!(
            Instant::now() < deadline,
            "nobody took the relational projection over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    write.await.expect("writer");
    caught_up(&store).await;
    assert_verified(&store).await;
    let _ = first.start_kill();
    let _ = second.start_kill();
}

#[sqlx::test(migrator = "infra::postgres::MIGRATOR")]
async fn sigkill_during_vector_projection_leaves_every_point_once(pool: PgPool) {
    let url = database_url(&pool).await;
    let store = EventStore::connect(pool.clone(), StoreOptions::default())
        .await
        .expect("store");
    let mut history = History::new(23);
    history.forget_percent = 100;
    for _ in 0..220 {
        let request = history.next_append().expect("encode");
        store.append(&request).await.expect("append");
    }
    let head = last_position(&store).await;
    let dir = std::env::temp_dir().join(format!("copilot-kill-vectors-{}", uuid::Uuid::new_v4()));
    let prefix = format!("k{}:", uuid::Uuid::new_v4().simple());
    let mut jitter = Jitter(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1,
    );
    // Killed while embedding and writing points (the model loads in well
    // under a second; each run gets a few batches in).
    for _ in 0..6 {
        let mut projector = start_vectors(&url, &dir, &prefix);
        tokio::time::sleep(jitter.millis(2000, 5000)).await;
        projector.start_kill().expect("SIGKILL");
        projector.wait().await.expect("reaped");
    }
    let moved = checkpoint::load(store.pool(), "vectors").await.expect("cp");
    assert!(moved.is_some(), "the killed projectors made progress");

    let mut projector = start_vectors(&url, &dir, &prefix);
    caught_up(&store).await;
    vectors_reach(&store, head).await;
    // Killed once more: what it acknowledged must survive in the store.
    projector.start_kill().expect("SIGKILL");
    projector.wait().await.expect("reaped");

    let points = vectors::edge::EdgeStore::open(&dir, 384)
        .await
        .expect("open the store");
    let expected = projector::vector_model::source_ids(&pool, "read_model")
        .await
        .expect("source ids");
    for (collection, ids) in expected {
        let got = vectors::VectorStore::ids(&points, collection)
            .await
            .expect("ids");
        let count = vectors::VectorStore::count(&points, collection)
            .await
            .expect("count");
        assert_eq!(got, ids, "{collection}: point ids equal the source rows");
        assert_eq!(count, ids.len(), "{collection}: no point twice");
    }
    drop(points);
    clean_up(&dir, &prefix).await;
}

/// Embedding in a process of its own: `copilot-data embedder` leads the
/// vector projection and nothing else, the projector beside it (without
/// the vector projection) leads the others, and both catch up; killing the
/// embedder stops no other projection. Without the vector projection an
/// embedder refuses to start, saying why.
#[sqlx::test(migrator = "infra::postgres::MIGRATOR")]
async fn an_embedder_process_leads_the_vector_projection_alone(pool: PgPool) {
    let url = database_url(&pool).await;
    let store = EventStore::connect(pool.clone(), StoreOptions::default())
        .await
        .expect("store");
    let mut history = History::new(31);
    for _ in 0..60 {
        let request = history.next_append().expect("encode");
        store.append(&request).await.expect("append");
    }
    let head = last_position(&store).await;
    let dir = std::env::temp_dir().join(format!("copilot-embedder-{}", uuid::Uuid::new_v4()));
    let prefix = format!("e{}:", uuid::Uuid::new_v4().simple());

    // The embedder first: had it taken on any other projection, it would
    // hold that one's lease before the projector starts.
    let mut embedder = start_role("embedder", &url, &dir, &prefix);
    let embedder_pid = embedder.id().expect("running");
    let deadline = Instant::now() + Duration::from_secs(60);
    while holder_of(&pool, "vectors").await.is_none() {
        assert!(Instant::now() < deadline, "the embedder took no lease");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut projector = start(&url);
    caught_up(&store).await;
    vectors_reach(&store, head).await;
    assert_eq!(
        holder_of(&pool, "vectors").await,
        Some(format!("embedder-{embedder_pid}"))
    );
    let projector_pid = projector.id().expect("running");
    for kind in Kind::ALL {
        assert_eq!(
            holder(&pool, kind).await,
            Some(format!("projector-{projector_pid}")),
            "{} is led by the projector",
            kind.name()
        );
    }

    // Without its embedder the vector projection waits; the rest go on.
    embedder.start_kill().expect("SIGKILL");
    embedder.wait().await.expect("reaped");
    for _ in 0..20 {
        let request = history.next_append().expect("encode");
        store.append(&request).await.expect("append");
    }
    caught_up(&store).await;
    assert_eq!(
        checkpoint::load(store.pool(), "vectors").await.expect("cp"),
        Some(head)
    );
    projector.start_kill().expect("SIGKILL");
    projector.wait().await.expect("reaped");

    let refused = Command::new(env!("CARGO_BIN_EXE_copilot-data"))
        .arg("embedder")
        .env("COPILOT_DATABASE_URL", &url)
        .env("COPILOT_MASTER_KEY", common::TEST_MASTER_KEY)
        .env("COPILOT_METRICS_ADDR", "off")
        .env("COPILOT_PROJECTOR_VECTORS", "false")
        .env("COPILOT_LOG", "warn")
        .output()
        .await
        .expect("run copilot-data embedder");
    assert!(
        !refused.status.success(),
        "an embedder with nothing to run started"
    );
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("the vector projection is off"),
        "the refusal says why: {said}"
    );

    clean_up(&dir, &prefix).await;
}
