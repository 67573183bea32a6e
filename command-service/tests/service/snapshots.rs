use command_service::Status;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{config, envelope, App};

fn message(conversation: Uuid, expected: Option<u64>) -> serde_json::Value {
    let mut body = envelope(
        conversation,
        json!({"message_id": Uuid::now_v7(), "role": "user", "content": "hello", "tokens_in": 1}),
    );
    if let Some(v) = expected {
        body["expected_version"] = json!(v);
    }
    body
}

#[sqlx::test(migrations = "../migrations")]
async fn long_streams_load_from_snapshots_and_bad_snapshots_are_ignored(pool: PgPool) {
    let mut app = App::spawn(pool.clone()).await;
    let (_, token) = app.user("operator").await;
    let conversation = app.conversation(&token).await;
    for _ in 0..120 {
        assert_eq!(
            app.rpc(
                "conversation.append_message",
                &message(conversation, None),
                Some(&token)
            )
            .await
            .status,
            Status::Accepted
        );
    }
    let mut snapshot = None;
    for _ in 0..50 {
        snapshot =
            sqlx::query_scalar::<_, i64>("SELECT version FROM snapshots WHERE stream_id = $1")
                .bind(conversation)
                .fetch_optional(&pool)
                .await
                .expect("snapshot");
        if snapshot.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(snapshot, Some(100), "a snapshot at the 100th event");
    // A state of 100 message ids is large enough to be compressed, and
    // pglz (the default) was too slow for snapshots rewritten under load.
    let compression = sqlx::query_scalar::<_, Option<String>>(
        "SELECT pg_column_compression(state) FROM snapshots WHERE stream_id = $1",
    )
    .bind(conversation)
    .fetch_one(&pool)
    .await
    .expect("compression");
    assert_eq!(compression.as_deref(), Some("lz4"));

    // A fresh instance (no cache) starts from the snapshot and continues at the right version.
    app.stop().await;
    let boot = app.bootstrap.clone();
    let mut app = App::spawn_with(pool.clone(), config(&app.prefix, &boot)).await;
    let next = app
        .rpc(
            "conversation.append_message",
            &message(conversation, Some(121)),
            Some(&token),
        )
        .await;
    assert_eq!(
        (next.status, next.version),
        (Status::Accepted, Some(122)),
        "{next:?}"
    );

    // A snapshot that does not decode is ignored: the stream is read instead.
    sqlx::query("UPDATE snapshots SET state = '\\x00c1'::bytea WHERE stream_id = $1")
        .bind(conversation)
        .execute(&pool)
        .await
        .expect("spoil");
    app.stop().await;
    let app = App::spawn_with(pool.clone(), config(&app.prefix, &boot)).await;
    let after = app
        .rpc(
            "conversation.append_message",
            &message(conversation, Some(122)),
            Some(&token),
        )
        .await;
    assert_eq!(
        (after.status, after.version),
        (Status::Accepted, Some(123)),
        "{after:?}"
    );
    app.finish().await;
}
