//! Broken object-level authorization: user A asks for each of user B's
//! resources by id, through every list filter, and through search;
//! nothing of B's comes back, and a probe cannot tell "yours" from
//! "absent" (404, never 403).

use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::Stack;

#[sqlx::test(migrations = "../migrations")]
async fn nothing_of_another_user_comes_back(pool: PgPool) {
    let stack = Stack::start(pool).await;
    let (alice_id, alice) = stack.user("operator").await;
    let (bob_id, bob) = stack.user("operator").await;

    let secret = Uuid::now_v7();
    stack
        .ok(
            "conversation.start",
            secret,
            json!({"title": "bob's secret", "tags": ["shared-tag"]}),
            &bob,
        )
        .await;
    let message = stack
        .command(
            "conversation.append_message",
            secret,
            json!({"message_id": Uuid::now_v7(), "role": "user", "content": "my password is hunter2"}),
            &bob,
        )
        .await;
    let own = Uuid::now_v7();
    let last = stack
        .ok(
            "conversation.start",
            own,
            json!({"title": "alice's", "tags": ["shared-tag"]}),
            &alice,
        )
        .await;
    stack.get_at("/v1/me", &alice, &last).await;

    // By id: 404 like an id that does not exist.
    let absent = Uuid::now_v7();
    for path in [
        format!("/v1/conversations/{secret}"),
        format!("/v1/conversations/{secret}/messages"),
        format!("/v1/users/{bob_id}"),
        format!("/v1/commands/{}", message.command_id),
    ] {
        let reply = stack.get(&path, &alice).await;
        let body = reply.problem(404).clone();
        let absent_path = path
            .replace(&secret.to_string(), &absent.to_string())
            .replace(&bob_id.to_string(), &absent.to_string())
            .replace(&message.command_id.to_string(), &absent.to_string());
        let absent_reply = stack.get(&absent_path, &alice).await;
        assert_eq!(
            absent_reply.body, body,
            "{path}: B's resource answers like an absent one"
        );
        assert!(!reply.body.to_string().contains("hunter2"));
    }

    // Through every list and filter.
    for path in [
        "/v1/conversations".to_string(),
        "/v1/conversations?tag=shared-tag".to_string(),
        "/v1/conversations?status=active".to_string(),
        "/v1/users".to_string(),
        "/v1/users?role=operator".to_string(),
        "/v1/sessions".to_string(),
    ] {
        let reply = stack.get(&path, &alice).await;
        assert_eq!(reply.status, 200, "{path}: {:?}", reply.body);
        let text = reply.body.to_string();
        assert!(
            !text.contains(&secret.to_string()),
            "{path} leaked B's conversation"
        );
        assert!(!text.contains(&bob_id.to_string()), "{path} leaked B's id");
        assert!(!text.contains("bob's secret"), "{path}");
    }
    // The lists do show A's own things (so the checks above are not vacuous).
    assert_eq!(
        stack
            .get("/v1/conversations?tag=shared-tag", &alice)
            .await
            .ids(),
        vec![own.to_string()]
    );
    // The summary counts only A's conversations and messages.
    let summary = stack.get("/v1/dashboard/summary", &alice).await;
    assert_eq!(
        summary.body["today"]["conversations"], 1,
        "{:?}",
        summary.body
    );
    assert_eq!(summary.body["today"]["messages"], 0);

    // And B still sees B's.
    assert_eq!(
        stack
            .get(&format!("/v1/conversations/{secret}"), &bob)
            .await
            .status,
        200
    );
    assert_eq!(
        stack
            .get(&format!("/v1/commands/{}", message.command_id), &bob)
            .await
            .status,
        200
    );
    let _ = alice_id;
    stack.finish().await;
}

/// Row-level security holds even if a handler forgot its WHERE clause:
/// a transaction acting as A, reading the tables directly, sees none of
/// B's rows.
#[sqlx::test(migrations = "../migrations")]
async fn row_level_security_backs_the_handlers(pool: PgPool) {
    let stack = Stack::start(pool.clone()).await;
    let (alice_id, alice) = stack.user("operator").await;
    let (_, bob) = stack.user("operator").await;
    let theirs = Uuid::now_v7();
    stack
        .ok("conversation.start", theirs, json!({}), &bob)
        .await;
    let last = stack
        .ok(
            "conversation.append_message",
            theirs,
            json!({"message_id": Uuid::now_v7(), "role": "user", "content": "x"}),
            &bob,
        )
        .await;
    stack.get_at("/v1/me", &alice, &last).await;
    let mut tx = pool.begin().await.expect("tx");
    sqlx::query(
        "SELECT set_config('role', 'copilot_app', true), set_config('app.user_id', $1, true)",
    )
    .bind(alice_id.to_string())
    .execute(&mut *tx)
    .await
    .expect("act as alice");
    for table in ["conversations", "messages", "sessions"] {
        let n: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM read_model.{table} WHERE user_id <> $1"
        ))
        .bind(alice_id)
        .fetch_one(&mut *tx)
        .await
        .expect("count");
        assert_eq!(n, 0, "{table}: another user's rows visible");
    }
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM read_model.sessions")
        .fetch_one(&mut *tx)
        .await
        .expect("count");
    assert_eq!(total, 1, "only alice's own session");
    drop(tx);
    stack.finish().await;
}
