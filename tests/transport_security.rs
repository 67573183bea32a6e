//! Every connection can be encrypted and verified, and NATS can be locked
//! down to what each party needs: against servers of each test's own (a
//! PostgreSQL cluster with `ssl = on`, a Redis with a TLS port, NATS with a
//! TLS block or with deploy/nats/nats.conf), with certificates from a CA the
//! test makes.

use std::time::Duration;

use eventstore::{AppendRequest, EventStore, ExpectedVersion, Metadata, NewEvent, StoreOptions};
use futures_util::StreamExt;
use infra::config::DatabaseSettings;
use infra::nats::{NatsAuth, NatsTarget};
use infra::redis_conn::RedisTarget;
use infra::tls::TlsFiles;
use secrecy::SecretString;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

mod common;

use common::certs::Certs;
use common::servers::{free_port, spawn, wait_for_port, PgCluster, TempDir};

fn db_settings(port: u16, mode: &str, ca: Option<&std::path::Path>) -> DatabaseSettings {
    DatabaseSettings {
        url: SecretString::from(format!("postgres://postgres@127.0.0.1:{port}/copilot")),
        ssl_mode: Some(mode.to_string()),
        ssl_root_cert: ca.map(std::path::Path::to_path_buf),
        max_connections: 4,
        min_connections: 0,
        ..DatabaseSettings::default()
    }
}

/// PostgreSQL that takes only TLS connections: the services migrate and
/// append with `verify-full` against the test's CA; a plaintext connection
/// and a connection that trusts another CA are refused with clear errors.
#[tokio::test]
async fn postgres_with_verify_full() {
    let certs_dir = TempDir::new("pg-certs");
    let certs = Certs::new(&certs_dir.0, "pg");
    let other = Certs::new(&certs_dir.0, "other");
    let _ = std::process::Command::new("chown")
        .args(["-R", "postgres"])
        .arg(&certs_dir.0)
        .status();
    let cluster = PgCluster::start(|_| {
        (
            format!(
                "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
                certs.cert.display(),
                certs.key.display()
            ),
            Some("local all all trust\nhostssl all all 127.0.0.1/32 trust\n".into()),
        )
    });
    let settings = db_settings(cluster.port, "verify-full", Some(&certs.ca));
    let pool = infra::postgres::prepare(&settings)
        .await
        .expect("migrated over verify-full TLS");
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .expect("ssl state");
    assert!(ssl, "the connection is encrypted");
    let store = EventStore::connect(pool.clone(), StoreOptions::default())
        .await
        .expect("store");
    let appended = store
        .append(&AppendRequest {
            stream_id: Uuid::now_v7(),
            stream_type: "incident".into(),
            expected: ExpectedVersion::NoStream,
            events: vec![NewEvent::new("x", 1, vec![0x80])],
            metadata: Metadata::default(),
        })
        .await
        .expect("append over TLS");
    assert_eq!(appended.version, 1);
    pool.close().await;

    let plain = infra::postgres::pool(&db_settings(cluster.port, "disable", None))
        .await
        .expect_err("plaintext is refused");
    assert!(
        plain.to_string().contains("no encryption") || plain.to_string().contains("pg_hba"),
        "{plain}"
    );
    let wrong = infra::postgres::pool(&db_settings(cluster.port, "verify-full", Some(&other.ca)))
        .await
        .expect_err("a certificate from another CA is refused");
    assert!(
        wrong.to_string().to_lowercase().contains("certificate"),
        "{wrong}"
    );
}

/// Redis over TLS (`rediss://`) with the test's CA; plaintext and another
/// CA are refused.
#[tokio::test]
async fn redis_over_tls() {
    let dir = TempDir::new("redis-tls");
    let certs = Certs::new(&dir.0, "redis");
    let other = Certs::new(&dir.0, "other");
    let port = free_port();
    let _redis = spawn(
        "redis-server",
        &[
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &certs.cert.display().to_string(),
            "--tls-key-file",
            &certs.key.display().to_string(),
            "--tls-ca-cert-file",
            &certs.ca.display().to_string(),
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &dir.0.display().to_string(),
        ],
    );
    wait_for_port(port, "redis-server with TLS");
    let target = |ca: &std::path::Path, url: String| RedisTarget {
        url: SecretString::from(url),
        tls: TlsFiles {
            ca: Some(ca.to_path_buf()),
            ..TlsFiles::default()
        },
        insecure: false,
    };
    let ping = |target: RedisTarget| async move {
        let client = target.client()?;
        let mut conn = tokio::time::timeout(
            Duration::from_secs(5),
            client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "timed out")))??;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    assert_eq!(
        ping(target(&certs.ca, format!("rediss://127.0.0.1:{port}")))
            .await
            .expect("PING over TLS"),
        "PONG"
    );
    let wrong = ping(target(&other.ca, format!("rediss://127.0.0.1:{port}")))
        .await
        .expect_err("another CA is refused");
    assert!(
        wrong.to_string().to_lowercase().contains("certificate"),
        "{wrong}"
    );
    ping(RedisTarget::from(format!("redis://127.0.0.1:{port}")))
        .await
        .expect_err("plaintext to the TLS port fails");
}

/// NATS with a TLS block: the services connect with the test's CA; a
/// client that trusts only the system's roots (or another CA) cannot.
#[tokio::test]
async fn nats_over_tls() {
    let dir = TempDir::new("nats-tls");
    let certs = Certs::new(&dir.0, "nats");
    let other = Certs::new(&dir.0, "other");
    let port = free_port();
    let _nats = spawn(
        "nats-server",
        &[
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "--tls",
            "--tlscert",
            &certs.cert.display().to_string(),
            "--tlskey",
            &certs.key.display().to_string(),
        ],
    );
    wait_for_port(port, "nats-server with TLS");
    let target = |ca: Option<&std::path::Path>| NatsTarget {
        url: format!("nats://127.0.0.1:{port}"),
        tls_required: true,
        tls: TlsFiles {
            ca: ca.map(std::path::Path::to_path_buf),
            ..TlsFiles::default()
        },
        auth: NatsAuth::default(),
        inbox_prefix: None,
    };
    let client = target(Some(&certs.ca))
        .connect("tls test")
        .await
        .expect("connect over TLS");
    let mut sub = client.subscribe("t.x").await.expect("subscribe");
    client
        .publish("t.x", "hello".into())
        .await
        .expect("publish");
    let message = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("in time")
        .expect("a message");
    assert_eq!(&message.payload[..], b"hello");
    for (label, ca) in [
        ("system roots", None),
        ("another CA", Some(other.ca.as_path())),
    ] {
        let refused = tokio::time::timeout(Duration::from_secs(10), target(ca).connect("tls test"))
            .await
            .expect("answered in time");
        assert!(refused.is_err(), "{label}: connected without the right CA");
    }
}

/// A client of `nats_target` that records the server's errors
/// (permission violations come back as `-ERR`).
async fn recording_client(
    target: &NatsTarget,
) -> (
    async_nats::Client,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let client = target
        .options("perm test")
        .await
        .expect("options")
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(event.to_string());
            }
        })
        .connect(&target.url)
        .await
        .expect("connect");
    (client, rx)
}

/// Waits for a permission violation naming `subject`.
async fn violation(events: &mut tokio::sync::mpsc::UnboundedReceiver<String>, subject: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("no permission violation for {subject}"))
            .expect("events");
        if event.contains("Permissions Violation") && event.contains(subject) {
            return;
        }
    }
}

/// With deploy/nats/nats.conf every party has only what it needs: the
/// command service and the relay work end to end under their own users,
/// and an agent can neither take commands (request/reply or the stream),
/// nor publish results, nor read another party's inbox.
#[sqlx::test(migrator = "infra::postgres::MIGRATOR")]
async fn nats_permissions_give_each_party_only_its_part(pool: PgPool) {
    let dir = TempDir::new("nats-perms");
    let port = free_port();
    // deploy/nats/nats.conf as it is, but for where JetStream keeps its files.
    let conf = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/nats/nats.conf"
    ))
    .expect("deploy/nats/nats.conf")
    .replace("/var/lib/nats-server", &dir.0.display().to_string());
    std::fs::write(dir.path("nats.conf"), conf).expect("config");
    let mut server = std::process::Command::new("nats-server");
    server
        .arg("-c")
        .arg(dir.path("nats.conf"))
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    for party in ["COMMAND", "PROJECTOR", "QUERY", "AGENT", "READER"] {
        server.env(
            format!("COPILOT_NATS_{party}_PASSWORD"),
            format!("pw-{party}"),
        );
    }
    let _nats = common::servers::Server(server.spawn().expect("nats-server"));
    wait_for_port(port, "nats-server with permissions");
    let url = format!("nats://127.0.0.1:{port}");
    let party = |user: &str, password: &str, inbox: &str| NatsTarget {
        url: url.clone(),
        tls_required: false,
        tls: TlsFiles::default(),
        auth: NatsAuth {
            user: Some(user.into()),
            password: Some(SecretString::from(password.to_string())),
            ..NatsAuth::default()
        },
        inbox_prefix: Some(inbox.into()),
    };

    // The command service and the relay, each as its own user.
    let bootstrap = format!("boot-{}", Uuid::new_v4());
    let config = command_service::ServiceConfig {
        nats: party("copilot-command", "pw-COMMAND", "_INBOX_command"),
        prefix: "copilot".into(),
        max_message_bytes: 64 * 1024,
        embedding_dimension: 384,
        bootstrap_token: Some(SecretString::from(bootstrap.clone())),
        rate_limit: None,
        max_in_flight: 16,
        trusted_agents: Vec::new(),
        auth_epochs: None,
    };
    let store = EventStore::connect(pool.clone(), StoreOptions::default())
        .await
        .expect("store");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let service = tokio::spawn(command_service::run(
        config,
        store.clone(),
        until(stopped.clone()),
    ));
    let relay = tokio::spawn(projector::run(
        projector::ProjectorConfig {
            projections: Vec::new(),
            lease_retry: Duration::from_millis(100),
            relay: Some(projector::relay::RelayConfig {
                nats: party("copilot-projector", "pw-PROJECTOR", "_INBOX_projector"),
                prefix: "copilot".into(),
            }),
            ..projector::ProjectorConfig::default()
        },
        store.clone(),
        until(stopped.clone()),
    ));

    let (agent, mut agent_errors) =
        recording_client(&party("agent", "pw-AGENT", "_INBOX_agent")).await;
    let request = |subject: &str, body: serde_json::Value, token: Option<&str>| {
        let agent = agent.clone();
        let subject = subject.to_string();
        let token = token.map(str::to_string);
        async move {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Content-Type", "application/json");
            if let Some(token) = token {
                headers.insert("Authorization", format!("Bearer {token}").as_str());
            }
            let mut attempts = 0;
            loop {
                let reply = tokio::time::timeout(
                    Duration::from_secs(10),
                    agent.request_with_headers(
                        subject.clone(),
                        headers.clone(),
                        serde_json::to_vec(&body).expect("json").into(),
                    ),
                )
                .await;
                match reply {
                    Ok(Ok(reply)) => {
                        return serde_json::from_slice::<serde_json::Value>(&reply.payload)
                            .expect("result")
                    }
                    // The service may not be listening yet.
                    _ if attempts < 50 => {
                        attempts += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    other => panic!("no answer on {subject}: {other:?}"),
                }
            }
        }
    };
    let user = Uuid::now_v7();
    let registered = request(
        "copilot.rpc.user.register",
        json!({"command_id": Uuid::now_v7(), "aggregate_id": user,
               "payload": {"email": "agent@example.com", "display_name": "A", "password": "correct horse", "role": "operator"}}),
        Some(&bootstrap),
    )
    .await;
    assert_eq!(registered["status"], "accepted", "{registered}");

    // A JetStream command and its result, read by the agent.
    let command_id = Uuid::now_v7();
    let mut results = agent
        .subscribe(format!("copilot.result.{command_id}"))
        .await
        .expect("subscribe to results");
    agent.flush().await.expect("flush");
    let js = async_nats::jetstream::new(agent.clone());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Content-Type", "application/json");
    headers.insert("Authorization", format!("Bearer {bootstrap}").as_str());
    headers.insert("Nats-Msg-Id", command_id.to_string().as_str());
    js.publish_with_headers(
        "copilot.cmd.incident.open",
        headers,
        serde_json::to_vec(&json!({"command_id": command_id, "aggregate_id": Uuid::now_v7(),
            "payload": {"title": "t", "description": "d", "severity": "low", "affected_services": ["api"]}}))
        .expect("json")
        .into(),
    )
    .await
    .expect("publish a JetStream command")
    .await
    .expect("stored by JetStream");
    let result = tokio::time::timeout(Duration::from_secs(20), results.next())
        .await
        .expect("a result in time")
        .expect("a result");
    let result: serde_json::Value = serde_json::from_slice(&result.payload).expect("result");
    assert_eq!(result["status"], "accepted", "{result}");

    // The relay published the events; a relay reader consumes them.
    let reader = party("relay-reader", "pw-READER", "_INBOX_reader")
        .connect("reader")
        .await
        .expect("reader");
    let events_stream = projector::relay::stream_name("copilot");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let relayed = loop {
        if let Ok(mut stream) = async_nats::jetstream::new(reader.clone())
            .get_stream(&events_stream)
            .await
        {
            let messages = stream.info().await.map(|i| i.state.messages).unwrap_or(0);
            if messages >= 2 {
                break messages;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay published nothing"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(relayed >= 2);

    // What the agent may not do.
    for subject in ["copilot.rpc.>", "copilot.cmd.>", "_INBOX_command.>"] {
        let _ = agent.subscribe(subject.to_string()).await;
        violation(&mut agent_errors, subject).await;
    }
    agent
        .publish(
            format!("copilot.result.{}", Uuid::now_v7()),
            "forged".into(),
        )
        .await
        .expect("publish is sent");
    violation(&mut agent_errors, "copilot.result.").await;
    let commands = async_nats::jetstream::new(agent.clone());
    let consumed = tokio::time::timeout(
        Duration::from_secs(10),
        commands.get_stream("COPILOT_COMMANDS"),
    )
    .await;
    assert!(
        !matches!(consumed, Ok(Ok(_))),
        "the agent reached the command stream's API"
    );

    let _ = stop.send(true);
    let _ = service.await;
    let _ = relay.await;
}

/// A connection that fails logs where it was going, never the password in
/// its URL.
#[sqlx::test(migrator = "infra::postgres::MIGRATOR")]
async fn failed_connections_never_show_a_password(pool: PgPool) {
    let closed = free_port();
    let run = |vars: Vec<(&'static str, String)>| async move {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_copilot-data"))
            .arg("command-service")
            .envs(vars)
            .env("COPILOT_METRICS_ADDR", "off")
            .env("COPILOT_LOG", "info")
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(60), output)
            .await
            .expect("the service gave up in time")
            .expect("run");
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let db = common::database_url(&pool).await;
    let logged = run(vec![
        ("COPILOT_DATABASE_URL", db),
        (
            "COPILOT_NATS_URL",
            format!("nats://agent:s3cretpw@127.0.0.1:{closed}"),
        ),
    ])
    .await;
    assert!(logged.contains("agent:***@127.0.0.1"), "{logged}");
    assert!(!logged.contains("s3cretpw"), "{logged}");
    let logged = run(vec![(
        "COPILOT_DATABASE_URL",
        format!("postgres://copilot:s3cretpw@127.0.0.1:{closed}/copilot"),
    )])
    .await;
    assert!(logged.contains(&format!("127.0.0.1:{closed}")), "{logged}");
    assert!(!logged.contains("s3cretpw"), "{logged}");
}
