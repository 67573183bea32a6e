//! `GET /v1/live`: incidents and executions for everyone, notifications
//! only for their user, as server-sent events.

use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::Stack;

struct EventStream {
    response: reqwest::Response,
    buffer: String,
}

impl EventStream {
    async fn open(stack: &Stack, token: &str) -> EventStream {
        let response = stack
            .http
            .get(format!("{}/v1/live", stack.base))
            .bearer_auth(token)
            .send()
            .await
            .expect("live");
        assert_eq!(response.status(), 200);
        assert_eq!(
            response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("text/event-stream")
        );
        let mut stream = EventStream {
            response,
            buffer: String::new(),
        };
        let (kind, _) = stream.next(Duration::from_secs(5)).await.expect("ready");
        assert_eq!(kind, "ready");
        stream
    }

    /// The next event (type, data), or None after `wait`.
    async fn next(&mut self, wait: Duration) -> Option<(String, String)> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut kind = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        kind = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                if block.lines().all(|l| l.starts_with(':')) {
                    continue; // a heartbeat
                }
                return Some((kind, data));
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .ok()?;
            let chunk = chunk.ok()??;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Events until one of `kind` whose data mentions `needle`.
    async fn expect(&mut self, kind: &str, needle: &str) -> Vec<(String, String)> {
        let mut seen = Vec::new();
        while let Some(event) = self.next(Duration::from_secs(60)).await {
            let done = event.0 == kind && event.1.contains(needle);
            seen.push(event);
            if done {
                return seen;
            }
        }
        panic!("no {kind} event about {needle}; saw {seen:?}");
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn live_updates_reach_the_right_users(pool: PgPool) {
    let stack = Stack::start(pool).await;
    let (alice_id, alice) = stack.user("operator").await;
    let (_, bob) = stack.user("operator").await;
    let mut alice_live = EventStream::open(&stack, &alice).await;
    let mut bob_live = EventStream::open(&stack, &bob).await;

    let incident = Uuid::now_v7();
    stack
        .ok(
            "incident.open",
            incident,
            json!({"title": "t", "description": "d", "severity": "high", "affected_services": ["x"]}),
            &bob,
        )
        .await;
    let seen = alice_live.expect("incident", &incident.to_string()).await;
    assert!(
        seen.iter().any(|(_, d)| d.contains("incident_opened")),
        "{seen:?}"
    );
    bob_live.expect("incident", &incident.to_string()).await;

    stack
        .ok(
            "incident.assign",
            incident,
            json!({"assignee_id": alice_id}),
            &bob,
        )
        .await;
    let seen = alice_live.expect("notification", "incident_assigned").await;
    assert!(!seen.is_empty());
    // Bob sees the incident change, and never Alice's notification.
    let seen = bob_live.expect("incident", "incident_assigned").await;
    assert!(
        seen.iter().all(|(kind, _)| kind != "notification"),
        "{seen:?}"
    );
    while let Some((kind, data)) = bob_live.next(Duration::from_millis(500)).await {
        assert_ne!(kind, "notification", "bob got {data}");
    }
    stack.finish().await;
}

/// Presence (the seed's pub/sub section): who has `/v1/live` open, per user
/// and stream, gone when they leave, and expiring when a server vanished
/// without saying so. Only an administrator may ask.
#[sqlx::test(migrations = "../migrations")]
async fn presence_shows_who_is_watching_and_forgets_them_when_they_leave(pool: PgPool) {
    let stack = Stack::start(pool).await;
    let (admin_id, admin) = stack.user("admin").await;
    let (alice_id, alice) = stack.user("viewer").await;
    let present = |body: &serde_json::Value, user: Uuid| {
        body["users"]
            .as_array()
            .expect("users")
            .iter()
            .find(|u| u["user_id"] == json!(user))
            .map(|u| u["streams"].as_u64().expect("streams"))
    };

    let none = stack.get("/v1/live/presence", &admin).await;
    assert_eq!(none.status, 200, "{:?}", none.body);
    assert_eq!(present(&none.body, alice_id), None);

    let first = EventStream::open(&stack, &alice).await;
    let second = EventStream::open(&stack, &alice).await;
    let watching = stack.get("/v1/live/presence", &admin).await;
    assert_eq!(
        present(&watching.body, alice_id),
        Some(2),
        "{:?}",
        watching.body
    );
    assert_eq!(present(&watching.body, admin_id), None);

    // Not for everyone: a plain user may not see who is watching.
    stack.get("/v1/live/presence", &alice).await.problem(403);

    // A stream left behind by a server that went away: expired, not shown.
    let key = format!("{}presence:live", stack.redis_prefix);
    let ghost = Uuid::now_v7();
    let mut redis = redis::Client::open(crate::REDIS)
        .expect("redis")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let past = chrono::Utc::now().timestamp_millis() - 1_000;
    let _: () = redis::cmd("ZADD")
        .arg(&key)
        .arg(past)
        .arg(format!("{ghost}:{}", Uuid::new_v4()))
        .query_async(&mut redis)
        .await
        .expect("zadd");
    let shown = stack.get("/v1/live/presence", &admin).await;
    assert_eq!(present(&shown.body, ghost), None, "{:?}", shown.body);

    // Leaving: one stream closed, then the other.
    drop(first);
    let mut left = None;
    for _ in 0..200 {
        let body = stack.get("/v1/live/presence", &admin).await.body;
        left = present(&body, alice_id);
        if left == Some(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, Some(1), "the closed stream is still present");
    drop(second);
    for _ in 0..200 {
        let body = stack.get("/v1/live/presence", &admin).await.body;
        left = present(&body, alice_id);
        if left.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, None, "alice left but is still present");
    stack.finish().await;
}
