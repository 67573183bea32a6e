//! The command service as a process of its own: killed (SIGKILL) while
//! JetStream commands are in flight and started again, every published
//! command has exactly one outcome and one set of events; flooded with
//! sign-ins, its memory stays bounded.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sqlx::PgPool;
use uuid::Uuid;

mod common;

const COMMANDS: usize = 300;

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

    let mut service = common::command_service(&url, &prefix, &bootstrap);
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

    let mut service = common::command_service(&url, &prefix, &bootstrap);
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

/// A process's peak resident memory (`VmHWM`), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// 500 sign-ins at once, each a full argon2id verification (19 MiB of
/// memory each): bounded to one per core at a time, the service's peak
/// resident memory stays small instead of 500 × 19 MiB.
#[sqlx::test(migrator = "infra::postgres::MIGRATOR")]
async fn a_sign_in_flood_keeps_memory_bounded(pool: PgPool) {
    const FLOOD: usize = 500;
    let url = common::database_url(&pool).await;
    let prefix = format!("f{}", &Uuid::new_v4().simple().to_string()[..12]);
    let bootstrap = format!("boot-{}", Uuid::new_v4());
    let client = async_nats::connect("nats://127.0.0.1:4222")
        .await
        .expect("NATS");
    // No rate limit: every attempt reaches the password check.
    let service = common::command_service(&url, &prefix, &bootstrap);
    let pid = service.id().expect("pid");
    let request = |subject: String, token: Option<String>, body: serde_json::Value| {
        let client = client.clone();
        async move {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Content-Type", "application/json");
            if let Some(token) = token {
                headers.insert("Authorization", format!("Bearer {token}").as_str());
            }
            let reply = tokio::time::timeout(
                Duration::from_secs(120),
                client.request_with_headers(
                    subject,
                    headers,
                    serde_json::to_vec(&body).expect("json").into(),
                ),
            )
            .await
            .expect("answered in time")
            .ok()?;
            serde_json::from_slice::<serde_json::Value>(&reply.payload).ok()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let registered = loop {
        let body = serde_json::json!({"command_id": Uuid::now_v7(), "aggregate_id": Uuid::now_v7(),
            "payload": {"email": "flood@example.com", "display_name": "F", "password": "correct horse", "role": "operator"}});
        let attempt = tokio::time::timeout(
            Duration::from_secs(2),
            request(
                format!("{prefix}.rpc.user.register"),
                Some(bootstrap.clone()),
                body,
            ),
        )
        .await;
        if let Ok(Some(result)) = attempt {
            break result;
        }
        assert!(Instant::now() < deadline, "the service did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(registered["status"], "accepted", "{registered}");
    let before = peak_rss_kib(pid);
    // Unknown e-mails: each is checked against a dummy hash, as much work
    // as a real one (a known account would lock after five and stop checking).
    let attempts = (0..FLOOD).map(|i| {
        let body = serde_json::json!({"command_id": Uuid::now_v7(), "aggregate_id": Uuid::now_v7(),
            "payload": {"email": format!("flood{i}@example.com"), "password": "not the password"}});
        request(format!("{prefix}.rpc.session.start"), None, body)
    });
    let answers = futures_util::future::join_all(attempts).await;
    let peak = peak_rss_kib(pid);
    drop(service);
    // The streams the service made for its prefix go with it.
    let js = async_nats::jetstream::new(client.clone());
    let (commands_stream, results_stream) = command_service::stream_names(&prefix);
    let _ = js.delete_stream(&commands_stream).await;
    let _ = js.delete_stream(&results_stream).await;
    let refused = answers
        .iter()
        .flatten()
        .filter(|a| matches!(a["status"].as_str(), Some("rejected")))
        .count();
    assert_eq!(refused, FLOOD, "every attempt was answered and refused");
    eprintln!(
        "sign-in flood of {FLOOD}: peak resident memory {} MiB (before the flood {} MiB)",
        peak / 1024,
        before / 1024
    );
    assert!(
        peak < 400 * 1024,
        "peak resident memory {} MiB under {FLOOD} concurrent sign-ins",
        peak / 1024
    );
}
