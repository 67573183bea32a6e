//! What the projector reports of its lag, as far as this shared process
//! can tell: a report that fails stops no projection. (The gauges are
//! process-wide, so their test is a binary of its own: `tests/lag_gauges.rs`.)

use std::time::Duration;

use sqlx::PgPool;
use testkit::history::History;

use crate::support;

/// Figures that cannot be written (here: their table is gone) are logged
/// and tried again; the projections they report on go on.
#[sqlx::test(migrator = "infra::postgres::MIGRATOR")]
async fn a_failing_lag_report_stops_no_projection(pool: PgPool) {
    let store = support::store(pool.clone()).await;
    sqlx::query("DROP TABLE projection_lag")
        .execute(&pool)
        .await
        .expect("drop");
    let running = support::spawn(&store, support::config()).await;
    let mut history = History::new(12);
    support::append(&store, &mut history, 100).await;
    support::caught_up(&store).await;
    // When each projection's leader took its lease: a projection that
    // failed would give it up and take it again.
    let leases = || async {
        sqlx::query_as::<_, (String, chrono::DateTime<chrono::Utc>)>(
            "SELECT name, acquired_at FROM projection_status
              WHERE name IN ('relational', 'audit') ORDER BY name",
        )
        .fetch_all(&pool)
        .await
        .expect("leases")
    };
    let before = leases().await;
    assert_eq!(before.len(), 2, "{before:?}");
    // Past a few reports (every two seconds), then more events.
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    support::append(&store, &mut history, 100).await;
    support::caught_up(&store).await;
    assert_eq!(leases().await, before, "a projection restarted");
    running.stop().await;
}
