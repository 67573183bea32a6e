use command_service::Status;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{envelope, App};

#[sqlx::test(migrations = "../migrations")]
async fn bad_input_gets_a_specific_error_and_changes_nothing(pool: PgPool) {
    let app = App::spawn(pool).await;
    let (_, token) = app.user("operator").await;
    let token = Some(token.as_str());
    let before = app.event_count().await;
    let field = |r: &command_service::CommandResult| {
        r.error
            .as_ref()
            .and_then(|e| e.details.as_ref())
            .and_then(|d| d["field"].as_str().map(str::to_string))
    };

    let r = app
        .rpc_raw("incident.open", b"{not json".to_vec(), token, true)
        .await;
    assert_eq!(r.status, Status::Invalid);
    let r = app
        .rpc_raw("incident.open", vec![0xc1, 0x00, 0xff], token, false)
        .await;
    assert_eq!(r.status, Status::Invalid);
    let r = app
        .rpc(
            "incident.explode",
            &envelope(Uuid::now_v7(), json!({})),
            token,
        )
        .await;
    assert_eq!(
        (r.status, r.error.as_ref().map(|e| e.code.as_str())),
        (Status::Invalid, Some("unknown_command"))
    );
    let r = app.rpc("incident.open", &envelope(Uuid::now_v7(), json!({"title": "t", "description": "d", "severity": "urgent", "affected_services": ["a"]})), token).await;
    assert_eq!(
        (r.status, field(&r).as_deref()),
        (Status::Invalid, Some("payload.severity"))
    );
    let r = app.rpc("incident.open", &envelope(Uuid::now_v7(), json!({"title": "t", "description": "d", "severity": "low", "affected_services": ["a"], "extra": 1})), token).await;
    assert_eq!(r.status, Status::Invalid);
    let r = app
        .rpc(
            "incident.open",
            &envelope(
                Uuid::now_v7(),
                json!({"description": "d", "severity": "low", "affected_services": ["a"]}),
            ),
            token,
        )
        .await;
    assert_eq!(r.status, Status::Invalid, "missing field");
    let r = app
        .rpc(
            "incident.open",
            &json!({"command_id": "nope", "aggregate_id": Uuid::now_v7(), "payload": {}}),
            token,
        )
        .await;
    assert_eq!(
        (r.status, field(&r).as_deref()),
        (Status::Invalid, Some("command_id"))
    );
    let r = app
        .rpc(
            "incident.add_note",
            &envelope(Uuid::now_v7(), json!({"text": "x".repeat(70 * 1024)})),
            token,
        )
        .await;
    assert_eq!(
        (r.status, r.error.as_ref().map(|e| e.code.as_str())),
        (Status::Invalid, Some("too_large"))
    );

    let conversation = Uuid::now_v7();
    assert_eq!(
        app.rpc(
            "conversation.start",
            &envelope(conversation, json!({})),
            token
        )
        .await
        .status,
        Status::Accepted
    );
    let after_start = app.event_count().await;
    let r = app.rpc("conversation.append_message", &envelope(conversation, json!({"message_id": Uuid::now_v7(), "role": "user", "content": "c", "embedding": [0.1, 0.2]})), token).await;
    assert_eq!(
        (r.status, field(&r).as_deref()),
        (Status::Invalid, Some("payload.embedding"))
    );
    // PostgreSQL cannot hold a NUL in text or jsonb: refused at the edge,
    // on both encodings, rather than appended to stop the projections.
    let nul = envelope(
        conversation,
        json!({"message_id": Uuid::now_v7(), "role": "assistant", "content": "c", "tool_calls": {"args": ["ok", "a\u{0}"]}}),
    );
    for r in [
        app.rpc("conversation.append_message", &nul, token).await,
        app.rpc_msgpack("conversation.append_message", &nul, token)
            .await,
    ] {
        assert_eq!(
            (r.status, field(&r).as_deref()),
            (Status::Invalid, Some("payload.tool_calls.args[1]"))
        );
    }
    let r = app
        .rpc(
            "conversation.append_message",
            &envelope(
                Uuid::now_v7(),
                json!({"message_id": Uuid::now_v7(), "role": "user", "content": "c"}),
            ),
            token,
        )
        .await;
    assert_eq!(
        (r.status, r.error.as_ref().map(|e| e.code.as_str())),
        (Status::Rejected, Some("not_found"))
    );
    let r = app.rpc("conversation.tag", &json!({"command_id": Uuid::now_v7(), "aggregate_id": conversation, "expected_version": 7, "payload": {"tags": ["x"]}}), token).await;
    assert_eq!((r.status, r.version), (Status::Conflict, Some(1)));
    let r = app.rpc("incident.open", &envelope(conversation, json!({"title": "t", "description": "d", "severity": "low", "affected_services": ["a"]})), token).await;
    assert_eq!(
        (r.status, r.error.as_ref().map(|e| e.code.as_str())),
        (Status::Rejected, Some("not_found")),
        "a conversation is not an incident"
    );

    assert_eq!(
        app.event_count().await,
        after_start,
        "no refused command appended anything"
    );
    assert_eq!(after_start, before + 1);
    app.finish().await;
}
