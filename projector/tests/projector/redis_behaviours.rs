//! The seed's Redis behaviours one by one: metrics kept for a day, the
//! session hash's fields, and the task queue as one structure.

use chrono::{DateTime, Duration, Utc};
use domain::codec::EventCodec;
use domain::ids::{UserId, WorkflowId};
use domain::values::{Role, Severity};
use domain::{execution, incident, session, Aggregate, Personal, Secret};
use eventstore::{Metadata, Position, RecordedEvent};
use projector::redis_model::{RedisConfig, RedisModel, TASK_QUEUE};
use redis::aio::MultiplexedConnection;
use serde_json::json;
use uuid::Uuid;

struct Redis {
    prefix: String,
    conn: MultiplexedConnection,
}

impl Redis {
    async fn new() -> Redis {
        let prefix = format!("t{}:", &Uuid::new_v4().simple().to_string()[..12]);
        let client = redis::Client::open("redis://127.0.0.1:6379").expect("client");
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("Redis");
        Redis { prefix, conn }
    }

    async fn model(&self) -> RedisModel {
        RedisModel::connect(&RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            prefix: self.prefix.clone(),
        })
        .await
        .expect("projection connects")
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    async fn clean(self) {
        infra::redis_conn::delete_prefix("redis://127.0.0.1:6379", &self.prefix)
            .await
            .expect("clean up");
    }
}

/// An event of `A` as the log would hand it over, at `tx` and `at`.
fn recorded<A: Aggregate>(
    stream: Uuid,
    tx: i64,
    event: &A::Event,
    at: DateTime<Utc>,
) -> RecordedEvent
where
    A::Event: EventCodec,
{
    RecordedEvent {
        position: Position {
            generation: 1,
            tx_id: tx,
            seq: 1,
        },
        stream_id: stream,
        stream_type: A::STREAM_TYPE.to_string(),
        version: 1,
        event_id: Uuid::now_v7(),
        event_type: event.event_type().to_string(),
        schema_version: event.schema_version(),
        payload: event.encode().expect("encode"),
        metadata: Metadata::default(),
        recorded_at: at,
    }
}

fn incident_opened(tx: i64, at: DateTime<Utc>) -> RecordedEvent {
    let opened = incident::Event::Opened(incident::Opened {
        title: "latency".into(),
        description: "p99 up".into(),
        severity: Severity::High,
        affected_services: vec!["api".into()],
        blast_radius: None,
        opened_by: None,
        opened_at: at,
    });
    recorded::<incident::Incident>(Uuid::now_v7(), tx, &opened, at)
}

fn execution_started(tx: i64, priority: u8) -> RecordedEvent {
    let started = execution::Event::Started(execution::Started {
        workflow_id: WorkflowId(Uuid::now_v7()),
        workflow_version: 1,
        trigger_source: "manual".into(),
        inputs: None,
        priority,
        max_retries: 1,
        started_by: None,
        started_at: Utc::now(),
    });
    recorded::<execution::Execution>(Uuid::now_v7(), tx, &started, Utc::now())
}

#[tokio::test]
async fn metrics_streams_keep_the_last_day_only() {
    let mut redis = Redis::new().await;
    let mut model = redis.model().await;
    let stream = redis.key("metrics:incidents_opened");
    // Entries a day and more old: one of this layout, one of the earlier
    // one (no `at_ms`), both with ids below anything the log hands out next.
    let day_ago = (Utc::now() - Duration::hours(25)).timestamp_millis();
    for (id, fields) in [
        (
            "1-1",
            vec![("at_ms", day_ago.to_string()), ("severity", "low".into())],
        ),
        ("1-2", vec![("severity", "low".to_string())]),
    ] {
        let mut xadd = redis::cmd("XADD");
        xadd.arg(&stream).arg(id);
        for (name, value) in fields {
            xadd.arg(name).arg(value);
        }
        xadd.query_async::<String>(&mut redis.conn)
            .await
            .expect("old entry");
    }

    // A day-old event is not added; a fresh one is, and trims the old ones.
    let stale = incident_opened(10, Utc::now() - Duration::hours(25));
    let fresh = incident_opened(11, Utc::now());
    model.write(&[stale, fresh]).await.expect("apply");

    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .query_async(&mut redis.conn)
        .await
        .expect("xrange");
    let ids: Vec<&str> = entries.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["11-1"], "only the fresh event is kept");
    let fields = &entries[0].1;
    assert!(fields.iter().any(|(k, _)| k == "at_ms"));
    assert!(fields.contains(&("severity".into(), "high".into())));
    let events: i64 = redis::cmd("XLEN")
        .arg(redis.key("metrics:events"))
        .query_async(&mut redis.conn)
        .await
        .expect("xlen");
    assert_eq!(events, 1, "metrics:events holds the fresh event only");
    redis.clean().await;
}

#[tokio::test]
async fn the_session_hash_holds_its_context_and_no_personal_data() {
    let mut redis = Redis::new().await;
    let mut model = redis.model().await;
    let user = Uuid::now_v7();
    let now = Utc::now();
    let started = session::Event::Started(session::Started {
        user_id: UserId(user),
        role: Role::Operator,
        token_hash: Secret::new("hash".into()),
        expires_at: now + Duration::hours(1),
        device_fingerprint: Some("laptop".into()),
        ip_address: Some(Personal::new("203.0.113.7".into())),
        user_agent: Some(Personal::new("Mozilla/5.0".into())),
        mfa_step: None,
        context: Some(Personal::new(
            json!({"workspace": "ops", "locale": "en-GB"}),
        )),
        started_at: now,
    });
    let session_id = Uuid::now_v7();
    model
        .write(&[recorded::<session::Session>(session_id, 5, &started, now)])
        .await
        .expect("apply");
    let hash: std::collections::BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(redis.key(&format!("session:{session_id}")))
        .query_async(&mut redis.conn)
        .await
        .expect("hash");
    let fields: Vec<&str> = hash.keys().map(String::as_str).collect();
    assert_eq!(
        fields,
        [
            "context",
            "device",
            "expires_at",
            "role",
            "started_at",
            "user_id"
        ]
    );
    let context: serde_json::Value =
        serde_json::from_str(&hash["context"]).expect("context is JSON");
    assert_eq!(context, json!({"workspace": "ops", "locale": "en-GB"}));
    assert_eq!(hash["user_id"], user.to_string());
    assert!(
        !hash
            .values()
            .any(|v| v.contains("203.0.113.7") || v.contains("Mozilla")),
        "no address or user agent in Redis"
    );
    let ttl: i64 = redis::cmd("TTL")
        .arg(redis.key(&format!("session:{session_id}")))
        .query_async(&mut redis.conn)
        .await
        .expect("ttl");
    assert!(
        (3500..=3600).contains(&ttl),
        "expires with the session: {ttl}"
    );
    redis.clean().await;
}

#[tokio::test]
async fn the_task_queue_is_one_set_by_priority_then_arrival() {
    let mut redis = Redis::new().await;
    let mut model = redis.model().await;
    let events: Vec<RecordedEvent> = [1u8, 5, 5, 9, 1]
        .iter()
        .enumerate()
        .map(|(i, p)| execution_started(20 + i as i64, *p))
        .collect();
    model.write(&events).await.expect("apply");
    // At least once: the same events again queue nothing more.
    model.write(&events).await.expect("apply again");

    let queue = redis.key(TASK_QUEUE);
    let kind: String = redis::cmd("TYPE")
        .arg(&queue)
        .query_async(&mut redis.conn)
        .await
        .expect("type");
    assert_eq!(kind, "zset");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(redis.key("queue:workflow_tasks*"))
        .query_async(&mut redis.conn)
        .await
        .expect("keys");
    assert!(
        !keys.iter().any(|k| k.ends_with(":priority")),
        "no second copy of the tasks: {keys:?}"
    );

    let mut taken = Vec::new();
    loop {
        let popped: Option<(String, String, f64)> = redis::cmd("BZPOPMIN")
            .arg(&queue)
            .arg(0.1)
            .query_async(&mut redis.conn)
            .await
            .expect("bzpopmin");
        let Some((_, task, _)) = popped else { break };
        let task: serde_json::Value = serde_json::from_str(&task).expect("task JSON");
        taken.push((
            task["priority"].as_u64().expect("priority"),
            task["execution_id"].clone(),
        ));
    }
    let priorities: Vec<u64> = taken.iter().map(|t| t.0).collect();
    assert_eq!(priorities, [9, 5, 5, 1, 1], "each task once, higher first");
    let id = |i: usize| serde_json::json!(events[i].stream_id);
    assert_eq!(taken[1].1, id(1), "first in, first out within a priority");
    assert_eq!(taken[2].1, id(2));
    assert_eq!(taken[3].1, id(0));
    assert_eq!(taken[4].1, id(4));
    redis.clean().await;
}

#[tokio::test]
async fn tasks_of_the_earlier_two_structure_layout_are_moved_once() {
    let mut redis = Redis::new().await;
    let list = redis.key(TASK_QUEUE);
    let priority_set = redis.key("queue:workflow_tasks:priority");
    let low =
        json!({"kind": "start_execution", "priority": 1, "event_id": Uuid::now_v7()}).to_string();
    let high =
        json!({"kind": "start_execution", "priority": 8, "event_id": Uuid::now_v7()}).to_string();
    for task in [&low, &high] {
        redis::pipe()
            .rpush(&list, task)
            .ignore()
            .zadd(&priority_set, task, 1)
            .ignore()
            .query_async::<()>(&mut redis.conn)
            .await
            .expect("earlier layout");
    }
    let _model = redis.model().await;
    let _again = redis.model().await;

    let tasks: Vec<String> = redis::cmd("ZRANGE")
        .arg(&list)
        .arg(0)
        .arg(-1)
        .query_async(&mut redis.conn)
        .await
        .expect("zrange");
    assert_eq!(tasks, [high, low]);
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&priority_set)
        .query_async(&mut redis.conn)
        .await
        .expect("exists");
    assert_eq!(exists, 0, "the second copy is gone");
    redis.clean().await;
}
