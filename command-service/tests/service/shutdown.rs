use std::collections::HashSet;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{config, App};

/// Stopping gracefully while JetStream commands are queued: what was taken
/// is finished and acked, the rest waits in the stream for the next start.
#[sqlx::test(migrations = "../migrations")]
async fn a_graceful_stop_finishes_what_it_took_and_leaves_the_rest(pool: PgPool) {
    const COMMANDS: usize = 120;
    let mut app = App::spawn(pool.clone()).await;
    let mut results = app
        .client
        .subscribe(format!("{}.result.>", app.prefix))
        .await
        .expect("subscribe");
    let js = async_nats::jetstream::new(app.client.clone());
    let mut ids = HashSet::new();
    for i in 0..COMMANDS {
        let command_id = Uuid::now_v7();
        ids.insert(command_id.to_string());
        let body = json!({"command_id": command_id, "aggregate_id": Uuid::now_v7(),
            "payload": {"title": format!("i{i}"), "description": "d", "severity": "low", "affected_services": ["api"]}});
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Content-Type", "application/json");
        headers.insert(
            "Authorization",
            format!("Bearer {}", app.bootstrap).as_str(),
        );
        headers.insert("Nats-Msg-Id", command_id.to_string().as_str());
        js.publish_with_headers(
            format!("{}.cmd.incident.open", app.prefix),
            headers,
            serde_json::to_vec(&body).expect("json").into(),
        )
        .await
        .expect("publish")
        .await
        .expect("stored");
    }
    let mut answered = HashSet::new();
    while answered.len() < 10 {
        let message = tokio::time::timeout(Duration::from_secs(20), results.next())
            .await
            .expect("progress")
            .expect("result");
        answered.insert(command_id_of(&message));
    }
    app.stop().await;

    let restarted = App::spawn_with(pool.clone(), config(&app.prefix, &app.bootstrap)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while answered.len() < COMMANDS && std::time::Instant::now() < deadline {
        if let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_secs(5), results.next()).await
        {
            answered.insert(command_id_of(&message));
        }
    }
    assert_eq!(
        answered, ids,
        "every command answered once the service is back"
    );
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(events as usize, COMMANDS, "none lost, none doubled");
    restarted.finish().await;
}

/// Stopping gracefully while request/reply commands are in flight: every
/// command that was appended is answered (its answer is not lost in the
/// queue of answers at shutdown), and every answer is of an appended command.
#[sqlx::test(migrations = "../migrations")]
async fn a_graceful_stop_answers_every_request_it_appended(pool: PgPool) {
    const COMMANDS: usize = 200;
    let mut app = App::spawn(pool.clone()).await;
    let (answered_tx, mut answered_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..COMMANDS {
        let (client, prefix, bootstrap) = (
            app.client.clone(),
            app.prefix.clone(),
            app.bootstrap.clone(),
        );
        let answered = answered_tx.clone();
        requests.spawn(async move {
            let command_id = Uuid::now_v7();
            let body = json!({"command_id": command_id, "aggregate_id": Uuid::now_v7(),
                "payload": {"title": format!("i{i}"), "description": "d", "severity": "low", "affected_services": ["api"]}});
            let reply = tokio::time::timeout(
                Duration::from_secs(10),
                client.request_with_headers(
                    format!("{prefix}.rpc.incident.open"),
                    testkit::stack::Agent::headers(Some(&bootstrap), true),
                    serde_json::to_vec(&body).expect("json").into(),
                ),
            )
            .await;
            let result = match reply {
                Ok(Ok(message)) => {
                    let _ = answered.send(());
                    let result: command_service::result::CommandResult =
                        serde_json::from_slice(&message.payload).expect("JSON result");
                    Some(result.status)
                }
                _ => None,
            };
            (command_id, result)
        });
    }
    drop(answered_tx);
    for _ in 0..20 {
        tokio::time::timeout(Duration::from_secs(20), answered_rx.recv())
            .await
            .expect("progress")
            .expect("an answer");
    }
    app.stop().await;

    let mut answers = std::collections::HashMap::new();
    while let Some(joined) = requests.join_next().await {
        let (command_id, status) = joined.expect("request task");
        if let Some(status) = status {
            answers.insert(command_id, status);
        }
    }
    let appended: HashSet<Uuid> =
        sqlx::query_scalar("SELECT command_id FROM events WHERE command_id IS NOT NULL")
            .fetch_all(&pool)
            .await
            .expect("appended commands")
            .into_iter()
            .collect();
    assert!(
        answers.len() >= 20,
        "the answers before the stop are counted"
    );
    for command_id in &appended {
        assert_eq!(
            answers.get(command_id),
            Some(&command_service::result::Status::Accepted),
            "command {command_id} was appended, so its answer must have been sent"
        );
    }
    assert_eq!(
        answers.len(),
        appended.len(),
        "every answer is of an appended command"
    );
    app.finish().await;
}

/// The command id a result's subject (`<prefix>.result.<command id>`) ends with.
fn command_id_of(message: &async_nats::Message) -> String {
    message
        .subject
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_string()
}
