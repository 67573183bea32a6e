use command_service::{CommandResult, Status};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{envelope, App};

#[sqlx::test(migrations = "../migrations")]
async fn tokens_work_at_once_and_stop_at_once(pool: PgPool) {
    let app = App::spawn(pool).await;
    let (_alice, alice) = app.user("operator").await;
    let (_bob, bob) = app.user("operator").await;

    let conversation = Uuid::now_v7();
    let started = app
        .rpc(
            "conversation.start",
            &envelope(conversation, json!({"title": "hi"})),
            Some(&alice),
        )
        .await;
    assert_eq!(
        started.status,
        Status::Accepted,
        "a token works right after session.start: {started:?}"
    );

    let before = app.event_count().await;
    let foreign = app
        .rpc(
            "conversation.append_message",
            &envelope(
                conversation,
                json!({"message_id": Uuid::now_v7(), "role": "user", "content": "x"}),
            ),
            Some(&bob),
        )
        .await;
    assert_eq!(
        (
            foreign.status,
            foreign.error.as_ref().map(|e| e.code.as_str())
        ),
        (Status::Forbidden, Some("forbidden"))
    );

    for (token, code) in [
        (None, "missing_token"),
        (Some("cps_not-a-real-token"), "invalid_token"),
        (Some("garbage"), "invalid_token"),
    ] {
        let refused = app
            .rpc(
                "conversation.start",
                &envelope(Uuid::now_v7(), json!({})),
                token,
            )
            .await;
        assert_eq!(refused.status, Status::Unauthorized, "{token:?}");
        assert_eq!(refused.error.as_ref().map(|e| e.code.as_str()), Some(code));
    }

    // Find alice's session and end it: the token fails the moment that is acknowledged.
    let session: (Uuid,) = sqlx::query_as("SELECT session_id FROM auth_sessions s JOIN auth_users u USING (user_id) WHERE s.token_hash = $1")
        .bind(infra::auth::token_hash(&alice))
        .fetch_one(&app.pool)
        .await
        .expect("session");
    let ended = app
        .rpc("session.end", &envelope(session.0, json!({})), Some(&alice))
        .await;
    assert_eq!(ended.status, Status::Accepted, "{ended:?}");
    let after_end = app
        .rpc(
            "conversation.tag",
            &envelope(conversation, json!({"tags": ["x"]})),
            Some(&alice),
        )
        .await;
    assert_eq!(
        (after_end.status, after_end.error.map(|e| e.code)),
        (Status::Unauthorized, Some("session_ended".to_string()))
    );
    assert_eq!(
        app.event_count().await,
        before + 1,
        "only session_ended was appended"
    );
    app.finish().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn api_keys_are_shown_once_and_revoked_at_once(pool: PgPool) {
    let app = App::spawn(pool).await;
    let (user_id, token) = app.user("operator").await;
    let issued = app
        .rpc(
            "user.issue_api_key",
            &envelope(user_id, json!({"name": "ci", "scopes": ["commands:write"]})),
            Some(&token),
        )
        .await;
    assert_eq!(issued.status, Status::Accepted, "{issued:?}");
    let data = issued.data.clone().expect("the key is shown");
    let key = data["api_key"].as_str().expect("key").to_string();
    let key_id = data["key_id"].as_str().expect("key id").to_string();

    let with_key = app.rpc("incident.open", &envelope(Uuid::now_v7(), json!({"title": "t", "description": "d", "severity": "low", "affected_services": ["api"]})), Some(&key)).await;
    assert_eq!(with_key.status, Status::Accepted, "{with_key:?}");
    let admin_only = app
        .rpc(
            "user.lock",
            &envelope(user_id, json!({"reason": "x"})),
            Some(&key),
        )
        .await;
    assert_eq!(admin_only.status, Status::Forbidden);

    // The stored result of the issuing command never holds the key.
    let replay = app.rpc("user.issue_api_key", &json!({"command_id": issued.command_id, "aggregate_id": user_id, "payload": {"name": "ci", "scopes": ["commands:write"]}}), Some(&token)).await;
    assert!(replay.replayed && replay.data.is_none(), "{replay:?}");

    let revoked = app
        .rpc(
            "user.revoke_api_key",
            &envelope(user_id, json!({"key_id": key_id})),
            Some(&token),
        )
        .await;
    assert_eq!(revoked.status, Status::Accepted, "{revoked:?}");
    let after = app.rpc("incident.open", &envelope(Uuid::now_v7(), json!({"title": "t", "description": "d", "severity": "low", "affected_services": ["api"]})), Some(&key)).await;
    assert_eq!(
        (after.status, after.error.map(|e| e.code)),
        (Status::Unauthorized, Some("api_key_revoked".to_string()))
    );
    app.finish().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn five_wrong_passwords_lock_the_account(pool: PgPool) {
    let app = App::spawn(pool).await;
    let (_, email) = app.register("viewer").await;
    let code = |result: CommandResult| result.error.map(|e| e.code);
    for _ in 0..5 {
        let wrong = app.sign_in(&email, "wrong password", None).await;
        assert_eq!(code(wrong), Some("invalid_credentials".to_string()));
    }
    let right = app.sign_in(&email, "correct horse", None).await;
    assert_eq!(code(right), Some("account_locked".to_string()));
    let unknown = app
        .sign_in("nobody@example.com", "correct horse", None)
        .await;
    assert_eq!(
        code(unknown),
        Some("invalid_credentials".to_string()),
        "unknown e-mails look like wrong passwords"
    );
    app.finish().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn expired_sessions_and_keys_are_refused(pool: PgPool) {
    let app = App::spawn(pool).await;
    let (user_id, token) = app.user("operator").await;
    let soon = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let issued = app
        .rpc(
            "user.issue_api_key",
            &envelope(
                user_id,
                json!({"name": "short", "scopes": ["commands:write"], "expires_at": soon}),
            ),
            Some(&token),
        )
        .await;
    assert_eq!(issued.status, Status::Accepted, "{issued:?}");
    let key = issued
        .data
        .and_then(|d| d["api_key"].as_str().map(str::to_string))
        .expect("key");
    let open = || {
        envelope(
            Uuid::now_v7(),
            json!({"title": "t", "description": "d", "severity": "low", "affected_services": ["api"]}),
        )
    };
    assert_eq!(
        app.rpc("incident.open", &open(), Some(&key)).await.status,
        Status::Accepted
    );
    tokio::time::sleep(std::time::Duration::from_millis(1700)).await;
    let expired = app.rpc("incident.open", &open(), Some(&key)).await;
    assert_eq!(
        (expired.status, expired.error.map(|e| e.code)),
        (Status::Unauthorized, Some("api_key_expired".to_string()))
    );

    // A session past its 24 hours (moved there in the auth index, as time would).
    sqlx::query(
        "UPDATE auth_sessions SET expires_at = now() - interval '1 second' WHERE token_hash = $1",
    )
    .bind(infra::auth::token_hash(&token))
    .execute(&app.pool)
    .await
    .expect("age the session");
    let late = app.rpc("incident.open", &open(), Some(&token)).await;
    assert_eq!(
        (late.status, late.error.map(|e| e.code)),
        (Status::Unauthorized, Some("session_expired".to_string()))
    );
    app.finish().await;
}

/// A command that ends credentials is acknowledged only once the auth
/// epoch (what the query service's credential cache checks) has moved: with
/// that Redis unreachable it is `unavailable` and appends nothing, while
/// other commands run.
#[sqlx::test(migrations = "../migrations")]
async fn ending_credentials_needs_the_auth_epoch(pool: PgPool) {
    let prefix = crate::fresh_prefix();
    let mut config = crate::config(&prefix, &format!("boot-{}", Uuid::new_v4()));
    config.auth_epochs = Some(("redis://127.0.0.1:1".into(), format!("test:{prefix}:")));
    let app = App::spawn_with(pool, config).await;
    let (user_id, token) = app.user("operator").await;
    let conversation = app.conversation(&token).await;
    assert_ne!(conversation, Uuid::nil(), "ordinary commands run");
    let before = app.event_count().await;
    let session = app.session_of(user_id).await;
    let ended = app
        .rpc("session.end", &envelope(session, json!({})), Some(&token))
        .await;
    assert_eq!(ended.status, Status::Unavailable, "{ended:?}");
    assert_eq!(app.event_count().await, before, "nothing appended");
    let touched = app
        .rpc("session.touch", &envelope(session, json!({})), Some(&token))
        .await;
    assert_eq!(
        touched.status,
        Status::Accepted,
        "the session still works: {touched:?}"
    );

    app.finish().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn ending_credentials_moves_the_auth_epoch(pool: PgPool) {
    let prefix = crate::fresh_prefix();
    let redis_prefix = format!("test:{prefix}:");
    let mut config = crate::config(&prefix, &format!("boot-{}", Uuid::new_v4()));
    config.auth_epochs = Some(("redis://127.0.0.1:6379".into(), redis_prefix.clone()));
    let app = App::spawn_with(pool, config).await;
    let (user_id, token) = app.user("operator").await;
    let key = infra::auth_epoch::epoch_key(&redis_prefix, user_id);
    let mut redis = redis::Client::open("redis://127.0.0.1:6379")
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis on 127.0.0.1:6379");
    let epoch = |v: Option<i64>| v.unwrap_or(0);
    let before: Option<i64> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .expect("GET");
    let session = app.session_of(user_id).await;
    let ended = app
        .rpc("session.end", &envelope(session, json!({})), Some(&token))
        .await;
    assert_eq!(ended.status, Status::Accepted, "{ended:?}");
    let after: Option<i64> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .expect("GET");
    assert_eq!(
        epoch(after),
        epoch(before) + 2,
        "moved before the append and after the commit"
    );
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .expect("DEL");
    app.finish().await;
}
