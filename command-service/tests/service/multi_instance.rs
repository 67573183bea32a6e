//! Two command-service instances on one database: each caches what it has
//! seen, and neither may answer from a stale cache.

use command_service::Status;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{config, envelope, fresh_prefix, App};

#[sqlx::test(migrations = "../migrations")]
async fn an_instance_never_answers_from_a_stale_cache(pool: PgPool) {
    let a = App::spawn(pool.clone()).await;
    let b_prefix = fresh_prefix();
    let b = App::spawn_with(pool.clone(), config(&b_prefix, &a.bootstrap)).await;
    let (_, token) = a.user("operator").await;
    let incident = Uuid::now_v7();

    let opened = a.rpc("incident.open", &envelope(incident, json!({"title": "t", "description": "d", "severity": "low", "affected_services": ["api"]})), Some(&token)).await;
    assert_eq!(opened.status, Status::Accepted);
    // B moves it on; A's cache still says "open".
    let assigned = b
        .rpc(
            "incident.assign",
            &envelope(incident, json!({"assignee_id": Uuid::now_v7()})),
            Some(&token),
        )
        .await;
    assert_eq!(assigned.status, Status::Accepted);
    // On A's cache alone this would be refused (not investigating): it must not be.
    let mitigated = a
        .rpc(
            "incident.mitigate",
            &envelope(incident, json!({"summary": "rolled back"})),
            Some(&token),
        )
        .await;
    assert_eq!(
        (mitigated.status, mitigated.version),
        (Status::Accepted, Some(3)),
        "{mitigated:?}"
    );

    // A client that knows the true version is not told it conflicts.
    let note = b.rpc("incident.add_note", &json!({"command_id": Uuid::now_v7(), "aggregate_id": incident, "expected_version": 3, "payload": {"text": "x"}}), Some(&token)).await;
    assert_eq!(
        (note.status, note.version),
        (Status::Accepted, Some(4)),
        "{note:?}"
    );
    let again = a.rpc("incident.add_note", &json!({"command_id": Uuid::now_v7(), "aggregate_id": incident, "expected_version": 4, "payload": {"text": "y"}}), Some(&token)).await;
    assert_eq!(
        (again.status, again.version),
        (Status::Accepted, Some(5)),
        "{again:?}"
    );
    // And one that is really stale is.
    let stale = b.rpc("incident.add_note", &json!({"command_id": Uuid::now_v7(), "aggregate_id": incident, "expected_version": 4, "payload": {"text": "z"}}), Some(&token)).await;
    assert_eq!(
        (stale.status, stale.version),
        (Status::Conflict, Some(5)),
        "{stale:?}"
    );

    // Interleaved appends from both keep every version.
    for i in 0..10 {
        let app = if i % 2 == 0 { &a } else { &b };
        let r = app
            .rpc(
                "incident.add_note",
                &envelope(incident, json!({"text": format!("n{i}")})),
                Some(&token),
            )
            .await;
        assert_eq!(
            (r.status, r.version),
            (Status::Accepted, Some(6 + i)),
            "{r:?}"
        );
    }
    b.finish().await;
    a.finish().await;
}

/// Events of one stream.
async fn stream_length(app: &App, stream: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE stream_id = $1")
        .bind(stream)
        .fetch_one(&app.pool)
        .await
        .expect("count")
}

/// A has verified each session and an API key (and keeps copies); B then
/// ends one session, locks another's user, demotes a third and revokes the
/// key. A must refuse each at once, as the auth index says, and append
/// nothing: its copies are only ever trusted together with the append's
/// own check.
#[sqlx::test(migrations = "../migrations")]
async fn credentials_ended_on_another_instance_stop_working_here_at_once(pool: PgPool) {
    let a = App::spawn(pool.clone()).await;
    let b = App::spawn_with(pool.clone(), config(&fresh_prefix(), &a.bootstrap)).await;
    let message = |conversation| {
        envelope(
            conversation,
            json!({"message_id": Uuid::now_v7(), "role": "user", "content": "hello"}),
        )
    };

    let (_, ended) = a.user("operator").await;
    let (locked_user, locked) = a.user("operator").await;
    let (demoted_user, demoted) = a.user("operator").await;
    let mut conversations = Vec::new();
    for token in [&ended, &locked] {
        let conversation = a.conversation(token).await;
        for _ in 0..2 {
            let sent = a
                .rpc(
                    "conversation.append_message",
                    &message(conversation),
                    Some(token),
                )
                .await;
            assert_eq!(sent.status, Status::Accepted, "{sent:?}");
        }
        conversations.push(conversation);
    }
    // An API key, used on A until A holds a copy of it.
    let (keyed_user, keyed_session) = a.user("operator").await;
    let issued = a
        .rpc(
            "user.issue_api_key",
            &envelope(
                keyed_user,
                json!({"name": "agent", "scopes": ["commands:write"]}),
            ),
            Some(&keyed_session),
        )
        .await;
    assert_eq!(issued.status, Status::Accepted, "{issued:?}");
    let data = issued.data.expect("the key is shown");
    let key = data["api_key"].as_str().expect("key").to_string();
    let key_id = data["key_id"].as_str().expect("key id").to_string();
    let keyed_conversation = a.conversation(&key).await;
    for _ in 0..2 {
        let sent = a
            .rpc(
                "conversation.append_message",
                &message(keyed_conversation),
                Some(&key),
            )
            .await;
        assert_eq!(sent.status, Status::Accepted, "{sent:?}");
    }
    conversations.push(keyed_conversation);
    let incident = Uuid::now_v7();
    let opened = a.rpc("incident.open", &envelope(incident, json!({"title": "t", "description": "d", "severity": "low", "affected_services": ["api"]})), Some(&demoted)).await;
    assert_eq!(opened.status, Status::Accepted, "{opened:?}");
    let noted = a
        .rpc(
            "incident.add_note",
            &envelope(incident, json!({"text": "a"})),
            Some(&demoted),
        )
        .await;
    assert_eq!(noted.status, Status::Accepted, "{noted:?}");

    let session: Uuid =
        sqlx::query_scalar("SELECT session_id FROM auth_sessions WHERE token_hash = $1")
            .bind(infra::auth::token_hash(&ended))
            .fetch_one(&pool)
            .await
            .expect("session");
    let session_end = b
        .rpc("session.end", &envelope(session, json!({})), Some(&ended))
        .await;
    assert_eq!(session_end.status, Status::Accepted, "{session_end:?}");
    let lock = b
        .rpc(
            "user.lock",
            &envelope(locked_user, json!({"reason": "x"})),
            Some(&b.bootstrap),
        )
        .await;
    assert_eq!(lock.status, Status::Accepted, "{lock:?}");
    let demote = b
        .rpc(
            "user.change_role",
            &envelope(demoted_user, json!({"role": "viewer"})),
            Some(&b.bootstrap),
        )
        .await;
    assert_eq!(demote.status, Status::Accepted, "{demote:?}");
    let revoke = b
        .rpc(
            "user.revoke_api_key",
            &envelope(keyed_user, json!({"key_id": key_id})),
            Some(&keyed_session),
        )
        .await;
    assert_eq!(revoke.status, Status::Accepted, "{revoke:?}");

    let events = a.event_count().await;
    for (token, conversation, code) in [
        (&ended, conversations[0], "session_ended"),
        (&locked, conversations[1], "account_disabled"),
        (&key, conversations[2], "api_key_revoked"),
    ] {
        let refused = a
            .rpc(
                "conversation.append_message",
                &message(conversation),
                Some(token),
            )
            .await;
        assert_eq!(
            (refused.status, refused.error.map(|e| e.code)),
            (Status::Unauthorized, Some(code.to_string()))
        );
        assert_eq!(stream_length(&a, conversation).await, 3);
    }
    let viewer = a
        .rpc(
            "incident.add_note",
            &envelope(incident, json!({"text": "b"})),
            Some(&demoted),
        )
        .await;
    assert_eq!(viewer.status, Status::Forbidden, "{viewer:?}");
    assert_eq!(stream_length(&a, incident).await, 2);
    assert_eq!(a.event_count().await, events);
    b.finish().await;
    a.finish().await;
}
