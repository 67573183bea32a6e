//! The event relay publishes every event to JetStream once per message id,
//! in log order, and a relay that starts over publishes no copies.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use eventstore::{checkpoint, Position};
use futures_util::StreamExt;
use projector::relay::{stream_name, RelayConfig};
use projector::ProjectorConfig;
use sqlx::PgPool;
use testkit::history::History;
use uuid::Uuid;

use crate::support::{self, count};

#[sqlx::test(migrator = "infra::postgres::MIGRATOR")]
async fn every_event_once_in_order_even_when_the_relay_starts_over(pool: PgPool) {
    let store = support::store(pool.clone()).await;
    let prefix = format!("r{}", &Uuid::new_v4().simple().to_string()[..12]);
    let config = ProjectorConfig {
        projections: Vec::new(),
        relay: Some(RelayConfig {
            nats: "nats://127.0.0.1:4222".into(),
            prefix: prefix.clone(),
        }),
        ..support::config()
    };
    let running = support::spawn(&store, config.clone()).await;
    let mut writers = Vec::new();
    for seed in [1u64, 2] {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            support::append(&store, &mut History::new(seed), 300).await
        }));
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    let head = support::last_position(&store).await;
    support::checkpoint_reaches(&store, "relay", head).await;
    running.stop().await;

    // A relay that lost its checkpoint publishes everything again: the
    // server drops the copies by message id.
    checkpoint::save(store.pool(), "relay", Position::START)
        .await
        .expect("reset");
    let running = support::spawn(&store, config).await;
    support::checkpoint_reaches(&store, "relay", head).await;
    running.stop().await;

    let events = count(&pool, "SELECT count(*) FROM events").await;
    let client = async_nats::connect("nats://127.0.0.1:4222")
        .await
        .expect("NATS");
    let js = jetstream::new(client);
    let mut stream = js.get_stream(stream_name(&prefix)).await.expect("stream");
    let info = stream.info().await.expect("info");
    assert_eq!(info.state.messages as i64, events, "one message per event");

    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut ids = HashSet::new();
    let mut versions: HashMap<String, u64> = HashMap::new();
    let mut last_position: Option<Position> = None;
    for _ in 0..events {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("in time")
            .expect("a message")
            .expect("no error");
        let id = message
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|v| v.to_string())
            .expect("message id");
        assert!(ids.insert(id.clone()), "{id} published twice");
        let body: serde_json::Value = rmp_serde::from_slice(&message.payload).expect("msgpack");
        assert_eq!(body["event_id"].as_str(), Some(id.as_str()));
        assert!(body["data"].is_object(), "decoded facts: {body}");
        // The public form: no credential material, no personal data.
        let text = body.to_string();
        for secret in [
            "$argon2id",
            "sha256:",
            "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP",
            "@example.com",
        ] {
            assert!(!text.contains(secret), "{secret} relayed: {text}");
        }
        match body["event_type"].as_str() {
            Some("user_registered") => {
                assert_eq!(body["data"]["password_hash"], "[secret]", "{text}");
                assert_eq!(body["data"]["email"], "[personal]", "{text}");
            }
            Some("session_started") => assert_eq!(body["data"]["token_hash"], "[secret]", "{text}"),
            _ => {}
        }
        let stream_id = body["stream_id"].as_str().expect("stream id").to_string();
        let version = body["version"].as_u64().expect("version");
        let previous = versions.insert(stream_id.clone(), version).unwrap_or(0);
        assert_eq!(
            version,
            previous + 1,
            "stream {stream_id} in order, no gaps"
        );
        let position: Position = body["position"]
            .as_str()
            .expect("position")
            .parse()
            .expect("position");
        assert!(last_position.is_none_or(|p| p < position), "log order");
        last_position = Some(position);
        assert!(message.subject.starts_with(&format!("{prefix}.evt.")));
    }
    js.delete_stream(stream_name(&prefix))
        .await
        .expect("clean up");
}

/// A NATS server of this test's own (the shared one cannot be restarted
/// under the tests running beside it), keeping JetStream data in `dir`.
fn nats_server(port: u16, dir: &std::path::Path) -> tokio::process::Child {
    tokio::process::Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start nats-server")
}

async fn connect_when_up(url: &str) -> async_nats::Client {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(client) = async_nats::connect(url).await {
            return client;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{url} did not come up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[sqlx::test(migrator = "infra::postgres::MIGRATOR")]
async fn the_relay_resumes_after_a_nats_restart_without_gaps(pool: PgPool) {
    let store = support::store(pool.clone()).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let dir = std::env::temp_dir().join(format!("copilot-nats-{}", Uuid::new_v4().simple()));
    let url = format!("nats://127.0.0.1:{port}");
    let mut server = nats_server(port, &dir);
    connect_when_up(&url).await;
    let prefix = "relay";
    let running = support::spawn(
        &store,
        ProjectorConfig {
            projections: Vec::new(),
            relay: Some(RelayConfig {
                nats: url.clone().into(),
                prefix: prefix.into(),
            }),
            ..support::config()
        },
    )
    .await;
    let mut history = History::new(61);
    support::append(&store, &mut history, 200).await;
    support::checkpoint_reaches(&store, "relay", support::last_position(&store).await).await;

    // The server dies; events keep coming; it comes back with its data.
    server.start_kill().expect("kill NATS");
    server.wait().await.expect("reaped");
    support::append(&store, &mut history, 200).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut server = nats_server(port, &dir);
    let client = connect_when_up(&url).await;
    support::checkpoint_reaches(&store, "relay", support::last_position(&store).await).await;
    running.stop().await;

    let events = count(&pool, "SELECT count(*) FROM events").await;
    let js = jetstream::new(client);
    let mut stream = js.get_stream(stream_name(prefix)).await.expect("stream");
    assert_eq!(
        stream.info().await.expect("info").state.messages as i64,
        events
    );
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig::default())
        .await
        .expect("consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut versions: HashMap<String, u64> = HashMap::new();
    for _ in 0..events {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("in time")
            .expect("a message")
            .expect("no error");
        let body: serde_json::Value = rmp_serde::from_slice(&message.payload).expect("msgpack");
        let stream_id = body["stream_id"].as_str().expect("stream id").to_string();
        let version = body["version"].as_u64().expect("version");
        let previous = versions.insert(stream_id, version).unwrap_or(0);
        assert_eq!(version, previous + 1, "no gap, no repeat");
    }
    server.start_kill().expect("stop NATS");
    let _ = server.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
}
