//! Replay to a position and to a time reproduce the state as of then; a
//! blue/green rebuild runs while dashboard queries keep answering.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use projector::rebuild::{self, table_sum, TableSum, Until};
use projector::Kind;
use sqlx::PgPool;
use testkit::history::History;

use crate::support;

async fn sums(
    pool: &PgPool,
    schema_of: impl Fn(Kind) -> String,
) -> HashMap<&'static str, TableSum> {
    let mut conn = pool.acquire().await.expect("conn");
    let mut sums = HashMap::new();
    for kind in Kind::ALL {
        for table in kind.tables() {
            sums.insert(
                table,
                table_sum(&mut conn, &schema_of(kind), table)
                    .await
                    .expect("sum"),
            );
        }
    }
    sums
}

#[sqlx::test(migrator = "infra::postgres::MIGRATOR")]
async fn replay_until_a_position_or_a_time_reproduces_that_state(pool: PgPool) {
    let store = support::store(pool.clone()).await;
    let mut history = History::new(9);
    let running = support::spawn(&store, support::config()).await;
    let (_, then) = support::append_upto(&store, &mut history, 800).await;
    support::caught_up(&store).await;
    let state_then = sums(&pool, |k| k.live_schema().to_string()).await;
    // A gap in time between the two phases.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let cut = Utc::now();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    support::append(&store, &mut history, 800).await;
    support::caught_up(&store).await;
    running.stop().await;
    assert_ne!(
        sums(&pool, |k| k.live_schema().to_string()).await,
        state_then
    );

    for until in [Until::Position(then), Until::Time(cut)] {
        for kind in Kind::ALL {
            let (schema, report) = rebuild::build_as_of(&store, kind, until, 500, &|_| {})
                .await
                .expect("build as of");
            assert_eq!(report.position, then, "{until:?}");
            assert_eq!(schema, format!("{}_asof", kind.live_schema()));
        }
        let as_of = sums(&pool, |k| format!("{}_asof", k.live_schema())).await;
        assert_eq!(as_of, state_then, "{until:?}");
    }
}

#[sqlx::test(migrator = "infra::postgres::MIGRATOR")]
async fn blue_green_rebuild_while_dashboards_query(pool: PgPool) {
    let store = support::store(pool.clone()).await;
    let mut history = History::new(13);
    let running = support::spawn(&store, support::config()).await;
    support::append(&store, &mut history, 1500).await;
    support::caught_up(&store).await;

    // Dashboards keep querying; the log keeps growing.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for _ in 0..2 {
        let (pool, stop, answered) = (pool.clone(), stop.clone(), answered.clone());
        readers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for sql in [
                    "SELECT count(*) FROM read_model.open_incidents_by_severity",
                    "SELECT count(*) FROM read_model.execution_statistics",
                    "SELECT count(*) FROM read_model.conversations WHERE status = 'active'",
                    "SELECT count(*) FROM audit.audit_logs WHERE action = 'incident_opened'",
                ] {
                    let n: i64 = sqlx::query_scalar(sql)
                        .fetch_one(&pool)
                        .await
                        .unwrap_or_else(|e| panic!("{sql} failed during the rebuild: {e}"));
                    assert!(n >= 0);
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut history = History::new(14);
            support::append(&store, &mut history, 400).await
        })
    };
    for kind in Kind::ALL {
        let before = answered.load(Ordering::Relaxed);
        let report = rebuild::replay_and_swap(&store, kind, 500, &|_| {})
            .await
            .expect("replay and swap");
        assert!(report.events > 0);
        assert!(
            answered.load(Ordering::Relaxed) > before,
            "queries answered during the rebuild"
        );
    }
    writer.await.expect("writer");
    support::caught_up(&store).await;
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.await.expect("dashboard reader");
    }
    running.stop().await;
    // No shadow or retired schema is left behind, and the result is right.
    let leftovers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE '%_shadow' OR nspname LIKE '%_retired'",
    )
    .fetch_one(&pool)
    .await
    .expect("schemas");
    assert_eq!(leftovers, 0);
    support::assert_verified(&store).await;
}

/// When each projection's lease was taken, by projection.
async fn leases(pool: &PgPool) -> Vec<(String, chrono::DateTime<Utc>)> {
    sqlx::query_as("SELECT name, acquired_at FROM projection_status ORDER BY name")
        .fetch_all(pool)
        .await
        .expect("projection status")
}

/// A blue/green swap does not break the live writer's next batch: its
/// staging tables must not depend on the retired schema's types (dropping
/// that schema once dropped, by cascade, their enum columns, the next
/// batch failed and the projection started over on a new lease).
#[sqlx::test(migrator = "infra::postgres::MIGRATOR")]
async fn the_live_writer_keeps_its_lease_across_a_swap(pool: PgPool) {
    let store = support::store(pool.clone()).await;
    let mut history = History::new(21);
    let running = support::spawn(&store, support::config()).await;
    support::append(&store, &mut history, 600).await;
    support::caught_up(&store).await;
    let before = leases(&pool).await;
    assert!(!before.is_empty());
    for kind in Kind::ALL {
        rebuild::replay_and_swap(&store, kind, 500, &|_| {})
            .await
            .expect("replay and swap");
    }
    support::append(&store, &mut history, 600).await;
    support::caught_up(&store).await;
    assert_eq!(
        leases(&pool).await,
        before,
        "a projection failed after the swap and took its lease again"
    );
    running.stop().await;
    support::assert_verified(&store).await;
}

/// A message of a conversation the log never started: the relational
/// projection refuses it (poison), the audit log records it.
async fn append_orphan_message(
    store: &eventstore::EventStore,
) -> (uuid::Uuid, eventstore::Position) {
    use domain::codec::EventCodec as _;
    use domain::ids::MessageId;
    use domain::values::{CostTotal, CostUsd, MessageRole};
    use domain::{conversation, Personal};
    use eventstore::{AppendRequest, ExpectedVersion, Metadata, NewEvent};

    let event = conversation::Event::MessageAppended(conversation::MessageAppended {
        message_id: MessageId(uuid::Uuid::now_v7()),
        sequence: 1,
        role: MessageRole::User,
        content: Personal::new("a message nobody started a conversation for".into()),
        tool_calls: None,
        tool_results: None,
        tokens_in: 1,
        tokens_out: 1,
        cost_usd: CostUsd::ZERO,
        total_tokens: 2,
        total_cost_usd: CostTotal::ZERO,
        embedding: None,
        appended_at: Utc::now(),
    });
    let stream_id = uuid::Uuid::now_v7();
    let appended = store
        .append(&AppendRequest {
            stream_id,
            stream_type: "conversation".into(),
            expected: ExpectedVersion::NoStream,
            events: vec![NewEvent::new(
                event.event_type(),
                event.schema_version(),
                event.encode().expect("encode"),
            )],
            metadata: Metadata::default(),
        })
        .await
        .expect("append the orphan message");
    (stream_id, appended.position)
}

/// `copilot-data replay` rebuilds every SQL projection at once, each in a
/// task of its own: both are swapped in and equal a fresh rebuild; and
/// when one of them meets an event it cannot apply, the other's swap
/// stands while the failed one's live projection stays as it was.
#[sqlx::test(migrator = "infra::postgres::MIGRATOR")]
async fn replaying_every_projection_at_once_swaps_each_on_its_own(pool: PgPool) {
    let store = support::store(pool.clone()).await;
    let mut history = History::new(17);
    let running = support::spawn(&store, support::config()).await;
    support::append(&store, &mut history, 600).await;
    support::caught_up(&store).await;
    running.stop().await;
    let seen = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let progress = {
        let seen = seen.clone();
        move |kind: Kind, n: u64| {
            if let Ok(mut seen) = seen.lock() {
                seen.insert(kind, n);
            }
        }
    };
    let reports = rebuild::replay_and_swap_all(&store, &Kind::ALL, 100, Arc::new(progress)).await;
    assert_eq!(reports.len(), 2);
    for (kind, report) in reports {
        let report = report.unwrap_or_else(|e| panic!("{}: {e}", kind.name()));
        assert!(report.events > 0);
        assert_eq!(
            seen.lock().expect("seen").get(&kind).copied(),
            Some(report.events),
            "{}: progress reached every event",
            kind.name()
        );
        assert_eq!(support::checkpoint_of(&store, kind).await, report.position);
    }
    support::assert_verified(&store).await;

    let relational_before = support::checkpoint_of(&store, Kind::Relational).await;
    let (conversation, orphan) = append_orphan_message(&store).await;
    let reports =
        rebuild::replay_and_swap_all(&store, &Kind::ALL, 100, Arc::new(|_: Kind, _: u64| {})).await;
    let outcome = |kind: Kind| {
        reports
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, r)| r)
            .expect("a report for every projection")
    };
    match outcome(Kind::Relational) {
        // Stopped before it (the position is where the shadow stopped).
        Err(rebuild::RebuildError::Poison {
            position, reason, ..
        }) => {
            assert!(*position < orphan);
            assert!(reason.contains(&conversation.to_string()), "{reason}");
        }
        other => panic!("the relational replay should stop at the orphan: {other:?}"),
    }
    assert_eq!(
        support::checkpoint_of(&store, Kind::Relational).await,
        relational_before,
        "the failed projection's live checkpoint did not move"
    );
    let audit = outcome(Kind::Audit)
        .as_ref()
        .expect("the audit log replays");
    assert_eq!(audit.position, orphan);
    assert_eq!(support::checkpoint_of(&store, Kind::Audit).await, orphan);
    let recorded = support::count(
        &pool,
        &format!("SELECT count(*) FROM audit.audit_logs WHERE resource_id = '{conversation}'"),
    )
    .await;
    assert_eq!(recorded, 1, "the swapped-in audit log holds the orphan");
}

/// A rebuild's batches commit without waiting for the WAL flush (it starts
/// over after any failure); the connection must not keep that setting for
/// what follows the build (the swap, a comparison, another build's end),
/// whether the build succeeded or stopped at a poison event.
#[sqlx::test(migrator = "infra::postgres::MIGRATOR")]
async fn a_rebuild_leaves_its_connection_committing_durably(pool: PgPool) {
    let store = support::store(pool.clone()).await;
    let mut history = History::new(21);
    support::append(&store, &mut history, 300).await;
    let mut conn = rebuild::connect(&store).await.expect("connect");
    let (_, report) = build_durable(&store, &mut conn).await.expect("build");
    assert!(report.events >= 300, "{report:?}");
    assert_eq!(synchronous_commit(&mut conn).await, "on", "after a build");

    append_orphan_message(&store).await;
    match build_durable(&store, &mut conn).await {
        Err(rebuild::RebuildError::Poison { .. }) => {}
        Err(other) => panic!("the build should stop at the orphan: {other}"),
        Ok(_) => panic!("the build should stop at the orphan"),
    }
    assert_eq!(
        synchronous_commit(&mut conn).await,
        "on",
        "after a failed build"
    );
}

async fn build_durable(
    store: &eventstore::EventStore,
    conn: &mut sqlx::PgConnection,
) -> Result<(projector::SqlProjection, rebuild::BuildReport), rebuild::RebuildError> {
    rebuild::build(
        store,
        conn,
        Kind::Relational,
        "read_model_durable",
        "relational@durable",
        rebuild::BuildOptions {
            until: Until::Head,
            batch_size: 50,
            progress: &|_| {},
        },
    )
    .await
}

async fn synchronous_commit(conn: &mut sqlx::PgConnection) -> String {
    sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(conn)
        .await
        .expect("show")
}
