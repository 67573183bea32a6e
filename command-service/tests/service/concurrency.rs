use command_service::Status;
use domain::conversation::{Conversation, Event};
use domain::Aggregate;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{envelope, App};

#[sqlx::test(migrations = "../migrations")]
async fn fifty_concurrent_commands_on_one_aggregate_all_land_in_order(pool: PgPool) {
    let app = App::spawn(pool.clone()).await;
    let (_, token) = app.user("operator").await;
    let conversation = app.conversation(&token).await;

    let sends = (0..50).map(|i| {
        let body = envelope(conversation, json!({"message_id": Uuid::now_v7(), "role": "user", "content": format!("m{i}"), "tokens_in": 1, "tokens_out": 1}));
        let app = &app;
        let token = token.clone();
        async move { app.rpc("conversation.append_message", &body, Some(&token)).await }
    });
    let results = futures_util::future::join_all(sends).await;
    assert!(
        results.iter().all(|r| r.status == Status::Accepted),
        "{:?}",
        results.iter().find(|r| r.status != Status::Accepted)
    );
    let mut versions: Vec<u64> = results.iter().filter_map(|r| r.version).collect();
    versions.sort_unstable();
    assert_eq!(
        versions,
        (2..=51).collect::<Vec<u64>>(),
        "contiguous versions, none lost"
    );

    let store = eventstore::EventStore::connect(pool, crate::store_options())
        .await
        .expect("store");
    let stored = store.read_stream(conversation, 1, 100).await.expect("read");
    let events: Vec<Event> = stored
        .iter()
        .map(|e| Event::decode(&e.event_type, e.schema_version, &e.payload).expect("decode"))
        .collect();
    let state = Conversation::replay(&events);
    assert_eq!((state.message_count, state.total_tokens), (50, 100));
    app.finish().await;
}

/// Preflights and appends of commands that arrive together share queries
/// (one for the sessions and stored outcomes, one for the appends): each
/// command must still get its own caller and its own outcome.
#[sqlx::test(migrations = "../migrations")]
async fn commands_that_arrive_together_each_get_their_own_caller_and_outcome(pool: PgPool) {
    let app = App::spawn(pool.clone()).await;
    let (_, owner) = app.user("operator").await;
    let (_, other) = app.user("operator").await;
    let mine = app.conversation(&owner).await;
    let theirs = app.conversation(&other).await;
    let message = |conversation: Uuid| {
        envelope(
            conversation,
            json!({"message_id": Uuid::now_v7(), "role": "user", "content": "hi", "tokens_in": 1, "tokens_out": 1}),
        )
    };
    let decided = message(mine);
    let first = app
        .rpc("conversation.append_message", &decided, Some(&owner))
        .await;
    assert_eq!(first.status, Status::Accepted, "{first:?}");
    let before = app.event_count().await;

    // (body, token, what must come back)
    let mut sends = Vec::new();
    for i in 0..60 {
        let send = match i % 6 {
            0 => (message(mine), owner.as_str(), Status::Accepted),
            1 => (message(theirs), other.as_str(), Status::Accepted),
            2 => (message(mine), other.as_str(), Status::Forbidden),
            3 => (message(theirs), owner.as_str(), Status::Forbidden),
            4 => (decided.clone(), owner.as_str(), Status::Accepted),
            _ => (message(mine), "cps_not-a-session", Status::Unauthorized),
        };
        sends.push(send);
    }
    let results = futures_util::future::join_all(
        sends
            .iter()
            .map(|(body, token, _)| app.rpc("conversation.append_message", body, Some(token))),
    )
    .await;
    for (i, ((body, _, expected), result)) in sends.iter().zip(&results).enumerate() {
        assert_eq!(result.status, *expected, "send {i}: {result:?}");
        assert_eq!(
            result.command_id.to_string(),
            body["command_id"].as_str().unwrap_or_default(),
            "send {i}"
        );
        if i % 6 == 4 {
            assert!(result.replayed, "send {i}: {result:?}");
            assert_eq!(
                (result.version, &result.position),
                (first.version, &first.position)
            );
        } else {
            assert!(!result.replayed, "send {i}: {result:?}");
        }
    }
    assert_eq!(
        app.event_count().await - before,
        20,
        "one event for each of the 20 new accepted commands, none for the rest"
    );
    app.finish().await;
}
