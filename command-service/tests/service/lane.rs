//! The request/reply lane: commands decided on arrival, appended together
//! by one loop and answered by it; what it cannot append is handled again
//! in full.

use std::time::Duration;

use command_service::{RateLimitConfig, Status};
use domain::conversation::{Conversation, Event};
use domain::Aggregate;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{config, envelope, fresh_prefix, App};

fn message(conversation: Uuid) -> Value {
    envelope(
        conversation,
        json!({"message_id": Uuid::now_v7(), "role": "user", "content": "hi", "tokens_in": 2, "tokens_out": 3}),
    )
}

/// Sends one new message to `conversation` as the holder of `token`.
async fn append(app: &App, conversation: Uuid, token: &str) -> command_service::CommandResult {
    app.rpc(
        "conversation.append_message",
        &message(conversation),
        Some(token),
    )
    .await
}

/// Commands the lane has accepted, in this process (tests running beside
/// this one only add to it).
fn lane_accepted() -> u64 {
    command_service::metrics::metrics()
        .fast_path
        .with_label_values(&["lane"])
        .get()
}

/// The conversation's state as folded from its stored events.
async fn folded(pool: &PgPool, conversation: Uuid) -> (u64, domain::conversation::State) {
    let store = eventstore::EventStore::connect(pool.clone(), crate::store_options())
        .await
        .expect("store");
    let stored = store
        .read_stream(conversation, 1, 1000)
        .await
        .expect("read");
    let events: Vec<Event> = stored
        .iter()
        .map(|e| Event::decode(&e.event_type, e.schema_version, &e.payload).expect("decode"))
        .collect();
    let versions: Vec<u64> = stored.iter().map(|e| e.version).collect();
    assert_eq!(
        versions,
        (1..=stored.len() as u64).collect::<Vec<_>>(),
        "contiguous"
    );
    (stored.len() as u64, Conversation::replay(&events))
}

/// Commands on aggregates this instance has seen, under a session it has
/// verified, go through the lane, each with its own answer and events,
/// in order, whether sent one by one or together.
#[sqlx::test(migrations = "../migrations")]
async fn the_lane_appends_and_answers_commands_decided_on_arrival(pool: PgPool) {
    let app = App::spawn(pool.clone()).await;
    let (_, token) = app.user("operator").await;
    let conversations = [
        app.conversation(&token).await,
        app.conversation(&token).await,
        app.conversation(&token).await,
    ];
    let before = lane_accepted();
    for version in 2..=6 {
        let sent = message(conversations[0]);
        let result = app
            .rpc("conversation.append_message", &sent, Some(&token))
            .await;
        assert_eq!(
            (result.status, result.version, result.replayed),
            (Status::Accepted, Some(version), false),
            "{result:?}"
        );
        assert_eq!(result.command_id.to_string(), sent["command_id"]);
        assert_eq!(result.events, ["message_appended"]);
        assert!(result.position.is_some());
    }
    assert!(
        lane_accepted() - before >= 5,
        "commands sent one by one on a cached aggregate go through the lane"
    );

    // Together, on three aggregates: each stream stays in order.
    let sends: Vec<Value> = (0..60).map(|i| message(conversations[i % 3])).collect();
    let results = futures_util::future::join_all(
        sends
            .iter()
            .map(|body| app.rpc("conversation.append_message", body, Some(&token))),
    )
    .await;
    for (body, result) in sends.iter().zip(&results) {
        assert_eq!(result.status, Status::Accepted, "{result:?}");
        assert_eq!(result.command_id.to_string(), body["command_id"]);
    }
    for (i, &conversation) in conversations.iter().enumerate() {
        let (events, state) = folded(&pool, conversation).await;
        let sent = if i == 0 { 25 } else { 20 };
        assert_eq!(events, 1 + sent, "one event per accepted command");
        assert_eq!(u64::from(state.message_count), sent);
        let mut versions: Vec<u64> = results
            .iter()
            .filter(|r| r.aggregate_id == conversation)
            .filter_map(|r| r.version)
            .collect();
        versions.sort_unstable();
        let first = if i == 0 { 7 } else { 2 };
        assert_eq!(versions, (first..=events).collect::<Vec<_>>());
    }

    // The same command again is answered from its stored outcome.
    let again = app
        .rpc("conversation.append_message", &sends[0], Some(&token))
        .await;
    assert!(again.replayed, "{again:?}");
    assert_eq!(
        (again.version, &again.position),
        (results[0].version, &results[0].position)
    );
    app.finish().await;
}

/// A decision the lane made from a state another writer has since moved on
/// is not appended and not answered `conflict`: the statement holds it
/// back, and handled again in full (from the store) it is accepted.
#[sqlx::test(migrations = "../migrations")]
async fn a_stale_decision_is_handled_again_not_refused(pool: PgPool) {
    let app = App::spawn(pool.clone()).await;
    let (_, token) = app.user("operator").await;
    let conversation = app.conversation(&token).await;
    let first = append(&app, conversation, &token).await;
    assert_eq!(first.version, Some(2), "{first:?}");

    // Another instance (its own prefix, its own cache) appends meanwhile.
    let other = App::spawn_with(
        pool.clone(),
        config(&fresh_prefix(), &format!("boot-{}", Uuid::new_v4())),
    )
    .await;
    let theirs = append(&other, conversation, &token).await;
    assert_eq!(theirs.version, Some(3), "{theirs:?}");

    let ours = append(&app, conversation, &token).await;
    assert_eq!(
        (ours.status, ours.version),
        (Status::Accepted, Some(4)),
        "{ours:?}"
    );
    let (events, state) = folded(&pool, conversation).await;
    assert_eq!((events, state.message_count), (4, 3));
    other.finish().await;
    app.finish().await;
}

/// The lane checks the rate limit of a whole batch at once: over the limit,
/// a command is refused with when to retry, and nothing is appended.
#[sqlx::test(migrations = "../migrations")]
async fn the_lane_refuses_commands_over_the_rate_limit(pool: PgPool) {
    let prefix = fresh_prefix();
    let mut cfg = config(&prefix, &format!("boot-{}", Uuid::new_v4()));
    cfg.rate_limit = Some(RateLimitConfig::with_signin_defaults(
        "redis://127.0.0.1:6379",
        format!("test:{prefix}:ratelimit:"),
        6,
        Duration::from_secs(5),
    ));
    let app = App::spawn_with(pool.clone(), cfg).await;
    // The limit connects in the background.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, token) = app.user("operator").await;
    let conversation = app.conversation(&token).await;
    for _ in 0..5 {
        let result = append(&app, conversation, &token).await;
        assert_eq!(result.status, Status::Accepted, "{result:?}");
    }
    let results =
        futures_util::future::join_all((0..8).map(|_| append(&app, conversation, &token))).await;
    for result in &results {
        assert_eq!(result.status, Status::RateLimited, "{result:?}");
        let retry = result
            .error
            .as_ref()
            .and_then(|e| e.details.as_ref())
            .and_then(|d| d["retry_after_ms"].as_u64())
            .expect("retry_after_ms");
        assert!(retry > 0 && retry <= 5_000, "{retry}");
    }
    let (events, state) = folded(&pool, conversation).await;
    assert_eq!((events, state.message_count), (6, 5), "nothing appended");

    // The state the refused commands were decided from is still the one
    // the next command is decided from, once the window has slid.
    tokio::time::sleep(Duration::from_millis(5_100)).await;
    let next = append(&app, conversation, &token).await;
    assert_eq!(
        (next.status, next.version),
        (Status::Accepted, Some(7)),
        "{next:?}"
    );
    app.finish().await;
}
