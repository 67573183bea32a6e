//! Read-your-writes: a command's position as `X-Min-Position` always gives
//! an answer that includes the command's effect, also when that answer
//! was cached before the command; a position the projections do not reach
//! in time is a 503 problem.

use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::Stack;

#[sqlx::test(migrations = "../migrations")]
async fn a_commands_position_gives_its_effect(pool: PgPool) {
    let stack = Stack::start(pool).await;
    let (_, alice) = stack.user("operator").await;
    let conversation = Uuid::now_v7();
    let started = stack
        .ok("conversation.start", conversation, json!({}), &alice)
        .await;
    let path = format!("/v1/conversations/{conversation}/messages");
    // Cached before the writes.
    assert_eq!(stack.get_at(&path, &alice, &started).await.status, 200);
    assert_eq!(
        stack.get(&path, &alice).await.header("x-cache"),
        Some("hit")
    );
    for i in 1..=25 {
        let position = stack
            .ok(
                "conversation.append_message",
                conversation,
                json!({"message_id": Uuid::now_v7(), "role": "user", "content": format!("m{i}")}),
                &alice,
            )
            .await;
        let reply = stack
            .get_at(&format!("{path}?limit=200"), &alice, &position)
            .await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        let items = reply.body["items"].as_array().expect("items");
        assert_eq!(items.len(), i, "message {i} is in the answer");
        assert_eq!(items[i - 1]["content"], format!("m{i}"));
        let at: eventstore::Position = reply
            .header("x-projection-position")
            .expect("position header")
            .parse()
            .expect("a position");
        assert!(
            at >= position.parse().expect("position"),
            "the answer is at or past the command"
        );
        // The same list, cached earlier, also reflects the write.
        let summary = stack
            .get_at(
                &format!("/v1/conversations/{conversation}"),
                &alice,
                &position,
            )
            .await;
        assert_eq!(summary.body["message_count"], i);
    }
    // Incidents: a list read (and cached), then an open, then the list again.
    let before = stack.get("/v1/incidents", &alice).await;
    assert_eq!(before.ids().len(), 0);
    let incident = Uuid::now_v7();
    let opened = stack
        .ok(
            "incident.open",
            incident,
            json!({"title": "t", "description": "d", "severity": "critical", "affected_services": ["x"]}),
            &alice,
        )
        .await;
    let after = stack.get_at("/v1/incidents", &alice, &opened).await;
    assert_eq!(after.ids(), vec![incident.to_string()]);
    stack.finish().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_position_not_reached_in_time_is_503(pool: PgPool) {
    let stack = Stack::start(pool.clone()).await;
    let (_, alice) = stack.user("operator").await;
    // A position ahead of the log is the client's mistake.
    let ahead = stack
        .get_with(
            "/v1/incidents",
            Some(&alice),
            &[("X-Min-Position", "999.0.0")],
        )
        .await;
    assert_eq!(ahead.problem(400)["parameter"], "X-Min-Position");
    // A real position the projection has not reached: the relational
    // projection is held at its checkpoint (its row locked, as a swap
    // does) while an event is appended.
    let mut hold = pool.begin().await.expect("tx");
    sqlx::query("SELECT 1 FROM projection_checkpoints WHERE name = 'relational' FOR UPDATE")
        .execute(&mut *hold)
        .await
        .expect("hold the relational projection");
    let position = stack
        .ok(
            "incident.open",
            uuid::Uuid::now_v7(),
            json!({"title": "t", "description": "d", "severity": "low", "affected_services": ["x"]}),
            &alice,
        )
        .await;
    let started = std::time::Instant::now();
    let reply = stack
        .get_with(
            "/v1/incidents",
            Some(&alice),
            &[("X-Min-Position", &position), ("X-Wait-Ms", "300")],
        )
        .await;
    let body = reply.problem(503);
    assert!(
        body["detail"].as_str().unwrap_or("").contains(&position),
        "{body:?}"
    );
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(300),
        "it waited"
    );
    assert!(reply.header("x-projection-position").is_some());
    // Released, the projection passes the position and the same request answers.
    hold.rollback().await.expect("release");
    let reply = stack.get_at("/v1/incidents", &alice, &position).await;
    assert_eq!(reply.ids().len(), 1);
    stack.finish().await;
}
