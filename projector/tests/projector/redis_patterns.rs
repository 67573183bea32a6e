//! The Redis projection: what it keeps equals what a rebuild from the log
//! produces after Redis lost it, and holds what the events say.

use std::collections::BTreeMap;

use chrono::Utc;
use eventstore::{checkpoint, Position};
use projector::rebuild::{reset_redis, REDIS_OWNED};
use projector::redis_model::{RedisConfig, METRIC_STREAMS};
use projector::ProjectorConfig;
use redis::aio::MultiplexedConnection;
use sqlx::PgPool;
use testkit::history::History;
use uuid::Uuid;

use crate::support::{self, count};

/// Every key the projection owns, with its type and whole content (not
/// its time to live).
async fn dump(redis: &mut MultiplexedConnection, prefix: &str) -> BTreeMap<String, String> {
    let mut all = BTreeMap::new();
    for pattern in REDIS_OWNED {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}{pattern}"))
            .query_async(redis)
            .await
            .expect("keys");
        for key in keys {
            let kind: String = redis::cmd("TYPE")
                .arg(&key)
                .query_async(redis)
                .await
                .expect("type");
            let value = match kind.as_str() {
                "hash" => {
                    let map: BTreeMap<String, String> = redis::cmd("HGETALL")
                        .arg(&key)
                        .query_async(redis)
                        .await
                        .expect("hash");
                    format!("{map:?}")
                }
                "set" => {
                    let mut members: Vec<String> = redis::cmd("SMEMBERS")
                        .arg(&key)
                        .query_async(redis)
                        .await
                        .expect("set");
                    members.sort();
                    format!("{members:?}")
                }
                "list" => {
                    let items: Vec<String> = redis::cmd("LRANGE")
                        .arg(&key)
                        .arg(0)
                        .arg(-1)
                        .query_async(redis)
                        .await
                        .expect("list");
                    format!("{items:?}")
                }
                "zset" => {
                    let items: Vec<(String, f64)> = redis::cmd("ZRANGE")
                        .arg(&key)
                        .arg(0)
                        .arg(-1)
                        .arg("WITHSCORES")
                        .query_async(redis)
                        .await
                        .expect("zset");
                    format!("{items:?}")
                }
                "stream" => {
                    let entries: redis::Value = redis::cmd("XRANGE")
                        .arg(&key)
                        .arg("-")
                        .arg("+")
                        .query_async(redis)
                        .await
                        .expect("stream");
                    let groups: redis::Value = redis::cmd("XINFO")
                        .arg("GROUPS")
                        .arg(&key)
                        .query_async(redis)
                        .await
                        .expect("groups");
                    format!(
                        "{entries:?} {}",
                        format!("{groups:?}").contains("dashboard")
                    )
                }
                _ => {
                    let value: Option<String> = redis::cmd("GET")
                        .arg(&key)
                        .query_async(redis)
                        .await
                        .expect("get");
                    format!("{value:?}")
                }
            };
            all.insert(key, format!("{kind} {value}"));
        }
    }
    all
}

#[sqlx::test(migrator = "infra::postgres::MIGRATOR")]
async fn redis_state_equals_a_rebuild_after_redis_lost_it(pool: PgPool) {
    let store = support::store(pool.clone()).await;
    let prefix = format!("t{}:", &Uuid::new_v4().simple().to_string()[..12]);
    let redis_config = RedisConfig {
        url: "redis://127.0.0.1:6379".into(),
        prefix: prefix.clone(),
    };
    let config = ProjectorConfig {
        projections: Vec::new(),
        redis: Some(redis_config.clone()),
        ..support::config()
    };
    let running = support::spawn(&store, config).await;
    // Recent enough that sessions are still alive and events are announced.
    let mut history = History::new(41).starting_at(Utc::now() - chrono::Duration::minutes(20));
    support::append(&store, &mut history, 1200).await;
    let head = support::last_position(&store).await;
    support::checkpoint_reaches(&store, "redis", head).await;

    let client = redis::Client::open("redis://127.0.0.1:6379").expect("client");
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let live = dump(&mut redis, &prefix).await;

    // What the events say is there.
    let tasks = count(
        &pool,
        "SELECT count(*) FROM events WHERE event_type IN ('execution_started', 'step_retried')",
    )
    .await;
    let queued: i64 = redis::cmd("ZCARD")
        .arg(format!("{prefix}queue:workflow_tasks"))
        .query_async(&mut redis)
        .await
        .expect("zcard");
    assert_eq!(queued, tasks, "one task per execution start and step retry");
    let events = count(&pool, "SELECT count(*) FROM events").await;
    let entries: i64 = redis::cmd("XLEN")
        .arg(format!("{prefix}metrics:events"))
        .query_async(&mut redis)
        .await
        .expect("xlen");
    assert_eq!(entries, events.min(10_000), "one metrics entry per event");
    let open_sessions = count(
        &pool,
        "SELECT count(*) FROM events s
          WHERE s.event_type = 'session_started'
            AND NOT EXISTS (SELECT 1 FROM events e WHERE e.stream_id = s.stream_id AND e.event_type = 'session_ended')",
    )
    .await;
    let hashes = live
        .keys()
        .filter(|k| k.starts_with(&format!("{prefix}session:")))
        .count() as i64;
    assert!(
        hashes > 0 && hashes <= open_sessions,
        "{hashes} session hashes for {open_sessions} open sessions"
    );
    for stream in METRIC_STREAMS {
        assert!(
            live.contains_key(&format!("{prefix}{stream}")),
            "{stream} exists with its group"
        );
    }

    // Redis loses everything the projection keeps; the log rebuilds it.
    let deleted = reset_redis(&store, &redis_config).await.expect("reset");
    assert_eq!(deleted as usize, live.len());
    assert!(dump(&mut redis, &prefix).await.is_empty());
    support::checkpoint_reaches(&store, "redis", head).await;
    let rebuilt = dump(&mut redis, &prefix).await;
    running.stop().await;
    assert_eq!(rebuilt, live, "a rebuild equals what was kept live");

    // A repeated batch (at-least-once) changes nothing.
    checkpoint::save(store.pool(), "redis", Position::START)
        .await
        .expect("rewind");
    let config = ProjectorConfig {
        projections: Vec::new(),
        redis: Some(redis_config.clone()),
        ..support::config()
    };
    let running = support::spawn(&store, config).await;
    support::checkpoint_reaches(&store, "redis", head).await;
    running.stop().await;
    assert_eq!(
        dump(&mut redis, &prefix).await,
        live,
        "re-applying is harmless"
    );

    infra::redis_conn::delete_prefix("redis://127.0.0.1:6379", &prefix)
        .await
        .expect("clean up");
}
