//! `POST /v1/search` over the vector projection (the embedded store and
//! the local model): conversation hits only from the caller's own
//! conversations unless admin, whatever filter is sent.

use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{Options, Stack};

#[sqlx::test(migrations = "../migrations")]
async fn search_finds_only_what_the_caller_may_see(pool: PgPool) {
    let (options, dir) = Options::with_search();
    let stack = Stack::start_with(pool, options).await;
    let (_, admin) = stack.user("admin").await;
    let (alice_id, alice) = stack.user("operator").await;
    let (bob_id, bob) = stack.user("operator").await;
    let mine = Uuid::now_v7();
    let theirs = Uuid::now_v7();
    stack
        .ok("conversation.start", mine, json!({}), &alice)
        .await;
    stack
        .ok("conversation.start", theirs, json!({}), &bob)
        .await;
    stack
        .ok(
            "conversation.append_message",
            mine,
            json!({"message_id": Uuid::now_v7(), "role": "user", "content": "How do I rotate the database password?"}),
            &alice,
        )
        .await;
    let last = stack
        .ok(
            "conversation.append_message",
            theirs,
            json!({"message_id": Uuid::now_v7(), "role": "user", "content": "The database password is hunter2, rotate it"}),
            &bob,
        )
        .await;
    let doc = Uuid::now_v7();
    let last_doc = stack
        .ok(
            "knowledge.index_document",
            doc,
            json!({"title": "Rotating credentials", "content": "To rotate a database password, create a new role and retire the old one."}),
            &admin,
        )
        .await;
    let _ = last;

    let query =
        json!({"collection": "conversations", "query": "database password rotation", "limit": 10});
    // Waits for the vector projection through X-Min-Position.
    let search = |token: String, body: serde_json::Value| {
        let stack = &stack;
        let last_doc = last_doc.clone();
        async move {
            let reply = stack
                .http
                .post(format!("{}/v1/search", stack.base))
                .bearer_auth(token)
                .header("X-Min-Position", last_doc)
                .header("X-Wait-Ms", "30000")
                .json(&body)
                .timeout(Duration::from_secs(60))
                .send()
                .await
                .expect("search");
            assert_eq!(reply.status(), 200);
            reply.json::<serde_json::Value>().await.expect("json")
        }
    };
    let owners = |v: &serde_json::Value| -> Vec<String> {
        v["hits"]
            .as_array()
            .expect("hits")
            .iter()
            .map(|h| {
                h["payload"]["owner_user_id"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    };
    let as_alice = search(alice.clone(), query.clone()).await;
    assert_eq!(owners(&as_alice), vec![alice_id.to_string()], "{as_alice}");
    assert!(!as_alice.to_string().contains("hunter2"));
    // Asking for Bob's conversation explicitly changes nothing.
    let probing = search(
        alice.clone(),
        json!({"collection": "conversations", "query": "password", "filter": {"owner_user_id": bob_id.to_string(), "conversation_id": theirs.to_string()}}),
    )
    .await;
    assert_eq!(
        probing["hits"].as_array().map(Vec::len),
        Some(0),
        "{probing}"
    );
    let as_bob = search(bob.clone(), query.clone()).await;
    assert_eq!(owners(&as_bob), vec![bob_id.to_string()]);
    let as_admin = search(admin.clone(), query).await;
    assert_eq!(as_admin["hits"].as_array().map(Vec::len), Some(2));
    // Documentation is for everyone; the best hit for a question is the document.
    let docs = search(
        alice.clone(),
        json!({"collection": "docs", "query": "how to change a database password"}),
    )
    .await;
    assert_eq!(docs["hits"][0]["id"], json!(doc), "{docs}");
    // A vector instead of text; the wrong dimension is refused.
    let vector = vec![0.05_f32; 384];
    let by_vector = search(
        alice.clone(),
        json!({"collection": "conversations", "vector": vector}),
    )
    .await;
    assert_eq!(owners(&by_vector), vec![alice_id.to_string()]);
    let wrong = stack
        .post(
            "/v1/search",
            &alice,
            &json!({"collection": "docs", "vector": [0.1, 0.2]}),
        )
        .await;
    assert_eq!(wrong.problem(400)["parameter"], "vector");
    // Readiness counts the points of every collection, not one of them.
    let ready = stack.get_with("/readyz", None, &[]).await;
    assert_eq!(ready.status, 200, "{:?}", ready.body);
    let store = ready.body["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|c| c["name"] == "vector_store"))
        .expect("a vector_store check");
    let detail = store["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("conversations 2") && detail.contains("documentation 1"),
        "{detail}"
    );
    stack.finish().await;
    let _ = std::fs::remove_dir_all(dir);
}
