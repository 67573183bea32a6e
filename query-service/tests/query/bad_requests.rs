//! Bad requests get the right status and a problem body, and change
//! nothing: bad ids, bad filters, huge limits, oversized bodies and
//! headers, missing, malformed, ended, revoked and unknown credentials,
//! and a rate limit with Retry-After.

use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{Options, Stack};

#[sqlx::test(migrations = "../migrations")]
async fn bad_requests_get_problems(pool: PgPool) {
    let stack = Stack::start(pool).await;
    let (admin_id, admin) = stack.user("admin").await;
    let (_, alice) = stack.user("operator").await;

    for (path, parameter) in [
        ("/v1/conversations/not-a-uuid", "id"),
        ("/v1/users/123", "id"),
        ("/v1/commands/xyz", "command_id"),
        ("/v1/conversations?limit=0", "limit"),
        ("/v1/conversations?limit=201", "limit"),
        ("/v1/conversations?limit=100000000000000000000", "limit"),
        ("/v1/conversations?limit=ten", "limit"),
        ("/v1/conversations?status=gone", "status"),
        ("/v1/conversations?colour=red", "query"),
        ("/v1/conversations?tag=a&tag=b", "query"),
        ("/v1/conversations?tag=%00%167", "tag"),
        ("/v1/workflows?tag=a%0Ab", "tag"),
        ("/v1/incidents?service=api%00", "service"),
        ("/v1/audit?action=%1B", "action"),
        ("/v1/conversations?cursor=%21%21", "cursor"),
        ("/v1/incidents?severity=urgent", "severity"),
        ("/v1/executions?workflow_id=nope", "workflow_id"),
        ("/v1/audit?from=yesterday", "from"),
        ("/v1/audit?resource_type=planet", "resource_type"),
        (
            "/v1/audit?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z",
            "from",
        ),
    ] {
        let reply = stack.get(path, &admin).await;
        let body = reply.problem(400);
        assert_eq!(body["parameter"], parameter, "{path}: {body:?}");
    }
    // Another list's cursor.
    let messages_cursor = {
        let conversation = Uuid::now_v7();
        stack
            .ok("conversation.start", conversation, json!({}), &admin)
            .await;
        for _ in 0..2 {
            stack
                .ok(
                    "conversation.append_message",
                    conversation,
                    json!({"message_id": Uuid::now_v7(), "role": "user", "content": "x"}),
                    &admin,
                )
                .await;
        }
        let last = stack
            .ok(
                "conversation.tag",
                conversation,
                json!({"tags": ["t"]}),
                &admin,
            )
            .await;
        let page = stack
            .get_at(
                &format!("/v1/conversations/{conversation}/messages?limit=1"),
                &admin,
                &last,
            )
            .await;
        page.body["next_cursor"]
            .as_str()
            .expect("a next page")
            .to_string()
    };
    let reply = stack
        .get(&format!("/v1/incidents?cursor={messages_cursor}"), &admin)
        .await;
    assert_eq!(reply.problem(400)["parameter"], "cursor");

    // Consistency headers.
    let reply = stack
        .get_with("/v1/incidents", Some(&admin), &[("X-Min-Position", "soon")])
        .await;
    assert_eq!(reply.problem(400)["parameter"], "X-Min-Position");
    let reply = stack
        .get_with("/v1/incidents", Some(&admin), &[("X-Wait-Ms", "-1")])
        .await;
    assert_eq!(reply.problem(400)["parameter"], "X-Wait-Ms");
    let reply = stack
        .get_with("/v1/incidents", Some(&admin), &[("X-Wait-Ms", "99999999")])
        .await;
    assert_eq!(reply.problem(400)["parameter"], "X-Wait-Ms");

    // Unknown resources and routes.
    stack
        .get(&format!("/v1/incidents/{}", Uuid::now_v7()), &admin)
        .await
        .problem(404);
    stack
        .get(&format!("/v1/streams/{}/events", Uuid::now_v7()), &admin)
        .await
        .problem(404);
    stack.get("/v1/nothing-here", &admin).await.problem(404);
    let reply = Reply405::send(&stack, &admin).await;
    assert_eq!(reply, 405);

    // Search bodies.
    for (body, parameter) in [
        (json!({"collection": "planets", "query": "x"}), "collection"),
        (json!({"collection": "code"}), "query"),
        (
            json!({"collection": "code", "query": "x", "vector": [0.1]}),
            "query",
        ),
        (
            json!({"collection": "code", "query": "x", "colour": 1}),
            "body",
        ),
        (json!({"collection": 7, "query": "x"}), "body"),
        (
            json!({"collection": "code", "query": "x", "limit": 0}),
            "limit",
        ),
        (
            json!({"collection": "code", "query": "x", "filter": {"password": "x"}}),
            "filter",
        ),
        (
            json!({"collection": "code", "query": "x", "filter": {"language": 5}}),
            "filter",
        ),
        (
            json!({"collection": "code", "query": "x", "filter": {"language": []}}),
            "filter",
        ),
        (
            json!({"collection": "code", "query": "x", "filter": {"language": [1]}}),
            "filter",
        ),
        (
            json!({"collection": "code", "query": "x", "filter": {"language": vec!["rust"; 101]}}),
            "filter",
        ),
        (json!({"collection": "code", "query": "   "}), "query"),
        (
            json!({"collection": "code", "query": "x".repeat(4097)}),
            "query",
        ),
        (
            json!({"collection": "code", "query": "x", "limit": 101}),
            "limit",
        ),
    ] {
        let reply = stack.post("/v1/search", &admin, &body).await;
        assert_eq!(reply.problem(400)["parameter"], parameter, "{body}");
    }
    let malformed = stack
        .http
        .post(format!("{}/v1/search", stack.base))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body("{\"collection\": ")
        .send()
        .await
        .expect("send");
    assert_eq!(malformed.status(), 400);
    assert_eq!(
        malformed
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    let not_json = stack
        .http
        .post(format!("{}/v1/search", stack.base))
        .bearer_auth(&admin)
        .header("content-type", "text/plain")
        .body("code")
        .send()
        .await
        .expect("send");
    assert_eq!(not_json.status(), 400);
    let huge = stack
        .http
        .post(format!("{}/v1/search", stack.base))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body(format!(
            "{{\"collection\": \"code\", \"query\": \"{}\"}}",
            "a".repeat(200_000)
        ))
        .send()
        .await
        .expect("send");
    assert_eq!(huge.status(), 413);
    let long_header = stack
        .http
        .get(format!("{}/v1/me", stack.base))
        .bearer_auth(&admin)
        .header("x-padding", "p".repeat(20_000))
        .send()
        .await
        .expect("send");
    assert_eq!(long_header.status(), 431);

    // Credentials.
    stack.get_with("/v1/me", None, &[]).await.problem(401);
    for header in [
        "Basic abc",
        "Bearer",
        "Bearer cps_nope",
        "Bearer cpk_notauuid_x",
        "Bearer garbage",
    ] {
        let reply = stack
            .http
            .get(format!("{}/v1/me", stack.base))
            .header("authorization", header)
            .send()
            .await
            .expect("send");
        assert_eq!(reply.status(), 401, "{header}");
        assert!(reply.headers().contains_key("www-authenticate"));
    }
    // An API key works until it is revoked; the revocation holds at once
    // even though an answer for it was cached.
    let key = stack
        .command(
            "user.issue_api_key",
            admin_id,
            json!({"name": "dash", "scopes": ["read"]}),
            &admin,
        )
        .await;
    let data = key.data.clone().expect("key data");
    let api_key = data["api_key"].as_str().expect("api key").to_string();
    let key_id = data["key_id"].as_str().expect("key id").to_string();
    assert_eq!(stack.get("/v1/me", &api_key).await.status, 200);
    assert_eq!(stack.get("/v1/me", &api_key).await.status, 200);
    assert!(
        stack
            .redis_exists(&format!("auth:token:{}", infra::auth::token_hash(&api_key)))
            .await,
        "the key's principal is cached in Redis"
    );
    stack
        .ok(
            "user.revoke_api_key",
            admin_id,
            json!({"key_id": key_id}),
            &admin,
        )
        .await;
    stack.get("/v1/me", &api_key).await.problem(401);
    // A session works until it ends, at once.
    let (_, bob) = stack.user("viewer").await;
    assert_eq!(stack.get("/v1/me", &bob).await.status, 200);
    let bob_session = stack.get("/v1/sessions", &bob).await.body["items"][0]["id"]
        .as_str()
        .expect("session id")
        .parse::<Uuid>()
        .expect("uuid");
    stack.ok("session.end", bob_session, json!({}), &bob).await;
    stack.get("/v1/me", &bob).await.problem(401);
    // An expired session, and one idle too long (the clock moved on: the
    // auth index is edited as time would have edited it).
    let (_, carol) = stack.user("viewer").await;
    let (_, dave) = stack.user("viewer").await;
    assert_eq!(stack.get("/v1/me", &carol).await.status, 200);
    for (token, column, detail) in [
        (&carol, "expires_at", "expired"),
        (&dave, "last_seen", "idle"),
    ] {
        sqlx::query(&format!(
            "UPDATE auth_sessions SET {column} = now() - interval '31 minutes' WHERE token_hash = $1"
        ))
        .bind(infra::auth::token_hash(token))
        .execute(&stack.pool)
        .await
        .expect("age the session");
        // The Redis copy made at sign-in still holds the real times; it
        // would have expired (60 s) long before these.
        stack
            .redis_del(&format!("auth:token:{}", infra::auth::token_hash(token)))
            .await;
        let reply = stack.get("/v1/me", token).await;
        let body = reply.problem(401);
        assert!(
            body["detail"].as_str().unwrap_or("").contains(detail),
            "{body:?}"
        );
    }
    let _ = alice;
    stack.finish().await;
}

struct Reply405;

impl Reply405 {
    async fn send(stack: &Stack, token: &str) -> u16 {
        stack
            .http
            .delete(format!("{}/v1/incidents", stack.base))
            .bearer_auth(token)
            .send()
            .await
            .expect("send")
            .status()
            .as_u16()
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn the_rate_limit_answers_429_with_retry_after(pool: PgPool) {
    let stack = Stack::start_with(
        pool,
        Options {
            rate_limit_per_minute: Some(5),
            ..Options::default()
        },
    )
    .await;
    let (_, alice) = stack.user("operator").await;
    let (_, bob) = stack.user("operator").await;
    // Signing in read /v1/me once; four more fit in the five a minute.
    for _ in 0..4 {
        assert_eq!(stack.get("/v1/me", &alice).await.status, 200);
    }
    let refused = stack.get("/v1/me", &alice).await;
    refused.problem(429);
    let after: u64 = refused
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&after), "{after}");
    assert_eq!(
        stack.get("/v1/me", &bob).await.status,
        200,
        "limits are per principal"
    );
    stack.finish().await;
}
