//! The projector's lag gauges and history: rows that count each applied
//! event once per projection (SQL and sinks alike), and gauges that settle
//! at zero once a projection has caught up (instead of keeping the last
//! batch's figure while it idles). The gauges live in the process's
//! registry, so this test is a binary of its own: no other projector of
//! another test writes the same series meanwhile.

use std::time::{Duration, Instant};

use projector::redis_model::RedisConfig;
use projector::ProjectorConfig;
use sqlx::PgPool;
use testkit::history::History;
use uuid::Uuid;

#[allow(dead_code)]
#[path = "projector/support.rs"]
mod support;

/// The gauge `name{projection}` of this process's registry, if set.
fn gauge(name: &str, projection: &str) -> Option<f64> {
    infra::metrics::registry()
        .gather()
        .into_iter()
        .filter(|family| family.name() == name)
        .flat_map(|family| family.get_metric().to_vec())
        .find(|m| {
            m.get_label()
                .iter()
                .any(|l| l.name() == "projection" && l.value() == projection)
        })
        .map(|m| m.get_gauge().get_value())
}

#[sqlx::test(migrator = "infra::postgres::MIGRATOR")]
async fn lag_history_counts_each_event_and_gauges_settle_at_zero(pool: PgPool) {
    let store = support::store(pool.clone()).await;
    let prefix = format!("t{}:", &Uuid::new_v4().simple().to_string()[..12]);
    let config = ProjectorConfig {
        redis: Some(RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            prefix: prefix.clone(),
        }),
        ..support::config()
    };
    let running = support::spawn(&store, config).await;
    let (events, head) = support::append_upto(&store, &mut History::new(11), 300).await;
    support::caught_up(&store).await;
    support::checkpoint_reaches(&store, "redis", head).await;

    let projections = ["relational", "audit", "redis"];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut settled = Vec::new();
        for projection in projections {
            let applied: Option<i64> = sqlx::query_scalar(
                "SELECT sum(events)::int8 FROM projection_lag WHERE projection = $1",
            )
            .bind(projection)
            .fetch_one(&pool)
            .await
            .expect("figures");
            settled.push((
                projection,
                applied,
                gauge("copilot_projection_lag_events", projection),
                gauge("copilot_projection_lag_seconds", projection),
            ));
        }
        let done = settled.iter().all(|(_, applied, behind, lag)| {
            *applied == Some(events as i64) && *behind == Some(0.0) && *lag == Some(0.0)
        });
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{events} events; (projection, applied, backlog, lag): {settled:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The figures are sane: the longest delay is at least the mean.
    let insane: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM projection_lag WHERE lag_ms_max * events < lag_ms_sum",
    )
    .fetch_one(&pool)
    .await
    .expect("figures");
    assert_eq!(insane, 0);
    running.stop().await;

    let client = redis::Client::open("redis://127.0.0.1:6379").expect("redis");
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut redis)
        .await
        .expect("keys");
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut redis)
            .await
            .expect("del");
    }
}
