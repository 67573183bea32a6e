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

    let store = eventstore::EventStore::connect(pool, eventstore::StoreOptions::default())
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
