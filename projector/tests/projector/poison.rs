//! A poison event is parked and reported, not skipped: the projection stops
//! at it (or, when configured, skips it after parking it).

use std::time::{Duration, Instant};

use eventstore::{AppendRequest, ExpectedVersion, Metadata, NewEvent, Position};
use projector::{Kind, ProjectorConfig};
use sqlx::PgPool;
use testkit::history::History;
use uuid::Uuid;

use crate::support::{self, count};

async fn wait_for(pool: &PgPool, sql: &str, expected: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = count(pool, sql).await;
        if n == expected {
            return;
        }
        assert!(Instant::now() < deadline, "{sql}: {n}, expected {expected}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[sqlx::test(migrator = "infra::postgres::MIGRATOR")]
async fn poison_event_is_parked_and_stops_the_projection(pool: PgPool) {
    let store = support::store(pool.clone()).await;
    let mut history = History::new(5);
    let (_, before_poison) = support::append_upto(&store, &mut history, 200).await;
    let poison = store
        .append(&AppendRequest {
            stream_id: Uuid::now_v7(),
            stream_type: "incident".into(),
            expected: ExpectedVersion::NoStream,
            events: vec![NewEvent::new("incident_opened", 2, vec![0xc1, 0x00, 0xff])],
            metadata: Metadata::default(),
        })
        .await
        .expect("append poison");
    support::append(&store, &mut history, 100).await;

    let running = support::spawn(&store, support::config()).await;
    wait_for(
        &pool,
        "SELECT count(*) FROM projection_errors WHERE NOT skipped",
        2,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.stop().await;

    // Both projections stopped right before it, with the reason recorded.
    for kind in Kind::ALL {
        assert_eq!(
            support::checkpoint_of(&store, kind).await,
            before_poison,
            "{}",
            kind.name()
        );
        let (position, reason): (String, String) =
            sqlx::query_as("SELECT position, reason FROM projection_errors WHERE projection = $1")
                .bind(kind.name())
                .fetch_one(&pool)
                .await
                .expect("parked");
        assert_eq!(position, poison.position.to_string());
        assert!(reason.contains("incident_opened"), "{reason}");
        let stopped: Option<String> =
            sqlx::query_scalar("SELECT stopped FROM projection_status WHERE name = $1")
                .bind(kind.name())
                .fetch_one(&pool)
                .await
                .expect("status");
        assert!(stopped.is_some_and(|s| s.contains(&poison.position.to_string())));
    }
    // Nothing after the poison event was applied.
    let audit_rows = count(&pool, "SELECT count(*) FROM audit.audit_logs").await;
    let before = count(
        &pool,
        &format!(
            "SELECT count(*) FROM events WHERE (generation, tx_id, seq) <= ({}, {}, {})",
            before_poison.generation, before_poison.tx_id, before_poison.seq
        ),
    )
    .await;
    assert_eq!(audit_rows, before);

    // Configured to skip: it goes on after parking it once more.
    let running = support::spawn(
        &store,
        ProjectorConfig {
            skip_poison: true,
            ..support::config()
        },
    )
    .await;
    support::caught_up(&store).await;
    running.stop().await;
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM projection_errors WHERE skipped"
        )
        .await,
        2
    );
    let total = count(&pool, "SELECT count(*) FROM events").await;
    assert_eq!(
        count(&pool, "SELECT count(*) FROM audit.audit_logs").await,
        total - 1
    );
    assert_ne!(
        support::checkpoint_of(&store, Kind::Relational).await,
        Position::START
    );
}
