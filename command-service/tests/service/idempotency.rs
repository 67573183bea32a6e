use command_service::Status;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{config, envelope, App};

#[sqlx::test(migrations = "../migrations")]
async fn a_command_sent_twice_on_either_transport_and_after_a_restart_is_applied_once(
    pool: PgPool,
) {
    let mut app = App::spawn(pool.clone()).await;
    let (_, token) = app.user("operator").await;
    let incident = Uuid::now_v7();
    let open = envelope(
        incident,
        json!({"title": "t", "description": "d", "severity": "high", "affected_services": ["api"]}),
    );

    let first = app.rpc("incident.open", &open, Some(&token)).await;
    assert_eq!(
        (first.status, first.replayed),
        (Status::Accepted, false),
        "{first:?}"
    );
    let again = app.rpc("incident.open", &open, Some(&token)).await;
    let over_js = app.js("incident.open", &open, Some(&token)).await;
    let as_msgpack = app.rpc_msgpack("incident.open", &open, Some(&token)).await;
    for repeat in [&again, &over_js, &as_msgpack] {
        assert!(repeat.replayed, "{repeat:?}");
        assert_eq!(
            (
                repeat.status,
                repeat.version,
                &repeat.position,
                &repeat.events
            ),
            (first.status, first.version, &first.position, &first.events)
        );
    }

    // A JetStream command first, then the same over request/reply.
    let note = envelope(incident, json!({"text": "looking"}));
    let by_js = app.js("incident.add_note", &note, Some(&token)).await;
    assert_eq!(
        (by_js.status, by_js.replayed),
        (Status::Accepted, false),
        "{by_js:?}"
    );
    assert!(
        app.rpc("incident.add_note", &note, Some(&token))
            .await
            .replayed
    );

    let exposed = infra::metrics::render();
    assert!(
        exposed.contains(r#"copilot_commands_total{status="accepted",type="incident.open"}"#),
        "{exposed}"
    );
    assert!(
        exposed.contains("copilot_command_duration_seconds_bucket"),
        "latency histogram exported"
    );

    app.stop().await;
    let bootstrap = app.bootstrap.clone();
    let restarted = App::spawn_with(pool.clone(), config(&app.prefix, &bootstrap)).await;
    let after_restart = restarted.rpc("incident.open", &open, Some(&token)).await;
    assert!(
        after_restart.replayed && after_restart.position == first.position,
        "{after_restart:?}"
    );
    let stream_events: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE stream_id = $1")
        .bind(incident)
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(stream_events, 2, "one incident_opened, one note");
    restarted.finish().await;
}

/// A command refused once keeps that outcome, even when sent again after
/// the aggregate changed so that it would now pass, and even when its
/// sender's session is one the service already verified (whose commands
/// skip the separate lookup of stored outcomes).
#[sqlx::test(migrations = "../migrations")]
async fn a_refused_command_sent_again_keeps_its_outcome_after_the_aggregate_changes(pool: PgPool) {
    let app = App::spawn(pool.clone()).await;
    let (_, token) = app.user("operator").await;
    // The session is verified (and its copy kept) by a first command.
    app.conversation(&token).await;

    let conversation = Uuid::now_v7();
    let message = envelope(
        conversation,
        json!({"message_id": Uuid::now_v7(), "role": "user", "content": "too early"}),
    );
    let first = app
        .rpc("conversation.append_message", &message, Some(&token))
        .await;
    assert_eq!(
        (first.status, first.error.as_ref().map(|e| e.code.as_str())),
        (Status::Rejected, Some("not_found")),
        "{first:?}"
    );
    let started = app
        .rpc(
            "conversation.start",
            &envelope(conversation, json!({})),
            Some(&token),
        )
        .await;
    assert_eq!(started.status, Status::Accepted, "{started:?}");

    for _ in 0..2 {
        let again = app
            .rpc("conversation.append_message", &message, Some(&token))
            .await;
        assert_eq!(
            (again.status, again.replayed, again.error.map(|e| e.code)),
            (Status::Rejected, true, Some("not_found".to_string())),
        );
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE stream_id = $1")
        .bind(conversation)
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(stored, 1, "only conversation_started");
    app.finish().await;
}
