//! Kill the command service (SIGKILL) while JetStream commands are in
//! flight, start it again: every published command has exactly one outcome
//! and one set of events.

use std::collections::HashSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sqlx::PgPool;
use tokio::process::{Child, Command};
use uuid::Uuid;

mod common;

const COMMANDS: usize = 300;

fn start(database_url: &str, prefix: &str, bootstrap: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_copilot-data"))
        .arg("command-service")
        .env("COPILOT_DATABASE_URL", database_url)
        .env("COPILOT_NATS_PREFIX", prefix)
        .env("COPILOT_BOOTSTRAP_TOKEN", bootstrap)
        .env("COPILOT_RATE_LIMIT_PER_MINUTE", "0")
        .env("COPILOT_DATABASE_MAX_CONNECTIONS", "12")
        .env("COPILOT_LOG", "warn")
        .env("COPILOT_METRICS_ADDR", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start copilot-data command-service")
}

#[sqlx::test(migrator = "infra::postgres::MIGRATOR")]
async fn sigkill_with_commands_in_flight_loses_and_doubles_nothing(pool: PgPool) {
    let url = common::database_url(&pool).await;
    let prefix = format!("k{}", &Uuid::new_v4().simple().to_string()[..12]);
    let bootstrap = format!("boot-{}", Uuid::new_v4());
    let client = async_nats::connect("nats://127.0.0.1:4222")
        .await
        .expect("NATS");
    let js = async_nats::jetstream::new(client.clone());
    let mut results = client
        .subscribe(format!("{prefix}.result.>"))
        .await
        .expect("subscribe");
    let (commands_stream, results_stream) = command_service::stream_names(&prefix);

    let mut service = start(&url, &prefix, &bootstrap);
    let deadline = Instant::now() + Duration::from_secs(60);
    while js.get_stream(&commands_stream).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the service did not create its streams"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut ids = Vec::new();
    for i in 0..COMMANDS {
        let command_id = Uuid::now_v7();
        let aggregate = Uuid::now_v7();
        ids.push(command_id);
        let body = serde_json::json!({"command_id": command_id, "aggregate_id": aggregate,
            "payload": {"title": format!("incident {i}"), "description": "d", "severity": "low", "affected_services": ["api"]}});
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Content-Type", "application/json");
        headers.insert("Authorization", format!("Bearer {bootstrap}").as_str());
        headers.insert("Nats-Msg-Id", command_id.to_string().as_str());
        js.publish_with_headers(
            format!("{prefix}.cmd.incident.open"),
            headers,
            serde_json::to_vec(&body).expect("json").into(),
        )
        .await
        .expect("publish")
        .await
        .expect("stored");
    }

    let mut answered = HashSet::new();
    let collect = |answered: &mut HashSet<String>, message: async_nats::Message| {
        let subject = message.subject.to_string();
        answered.insert(subject.rsplit('.').next().unwrap_or_default().to_string());
    };
    // Let some finish, then kill it mid-stream.
    while answered.len() < COMMANDS / 4 {
        let message = tokio::time::timeout(Duration::from_secs(60), results.next())
            .await
            .expect("progress")
            .expect("result");
        collect(&mut answered, message);
    }
    service.start_kill().expect("SIGKILL");
    let _ = service.wait().await;
    let killed_at = answered.len();

    let mut service = start(&url, &prefix, &bootstrap);
    let deadline = Instant::now() + Duration::from_secs(120);
    while answered.len() < COMMANDS && Instant::now() < deadline {
        if let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_secs(5), results.next()).await
        {
            collect(&mut answered, message);
        }
    }
    let _ = service.start_kill();
    let _ = service.wait().await;

    let expected: HashSet<String> = ids.iter().map(Uuid::to_string).collect();
    assert!(
        killed_at < COMMANDS,
        "the kill happened with commands in flight"
    );
    assert_eq!(answered, expected, "every command has an outcome");
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(
        events as usize, COMMANDS,
        "one event per command: none lost, none doubled"
    );
    let per_stream: i64 = sqlx::query_scalar("SELECT count(*) FROM (SELECT stream_id FROM events GROUP BY stream_id HAVING count(*) > 1) t")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(per_stream, 0);
    let outcomes: i64 = sqlx::query_scalar("SELECT count(*) FROM command_outcomes")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(outcomes as usize, COMMANDS);
    let mut stream = js
        .get_stream(&results_stream)
        .await
        .expect("results stream");
    let stored = stream.info().await.expect("info").state.messages;
    assert_eq!(
        stored as usize, COMMANDS,
        "one stored result per command id"
    );

    let _ = js.delete_stream(&commands_stream).await;
    let _ = js.delete_stream(&results_stream).await;
}
