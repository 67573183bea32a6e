//! The operator's commands against a running `copilot-data up`: `send`
//! one command from a shell, `status` showing a projection stopped at a
//! parked poison event, `projection skip` moving it on without a restart
//! (and refusing a position that is not the parked one), `projection
//! retry` refusing when nothing is stopped.

use std::process::Stdio;
use std::time::{Duration, Instant};

use eventstore::{AppendRequest, EventStore, ExpectedVersion, Metadata, NewEvent, StoreOptions};
use sqlx::PgPool;
use tokio::process::{Child, Command};
use uuid::Uuid;

mod common;

struct Env {
    url: String,
    prefix: String,
    redis_prefix: String,
    bootstrap: String,
}

impl Env {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_copilot-data"));
        command
            .args(args)
            .env("COPILOT_DATABASE_URL", &self.url)
            .env("COPILOT_NATS_PREFIX", &self.prefix)
            .env("COPILOT_REDIS_PREFIX", &self.redis_prefix)
            .env("COPILOT_BOOTSTRAP_TOKEN", &self.bootstrap)
            .env("COPILOT_HTTP_ADDR", "127.0.0.1:0")
            .env("COPILOT_METRICS_ADDR", "off")
            .env("COPILOT_PROJECTOR_VECTORS", "false")
            .env("COPILOT_PROJECTOR_RELAY", "false")
            .env("COPILOT_DATABASE_MAX_CONNECTIONS", "12")
            .env("COPILOT_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    fn up(&self) -> Child {
        let mut command = self.command(&["up"]);
        command.stdout(Stdio::null()).stderr(Stdio::null());
        command.spawn().expect("start copilot-data up")
    }

    /// Runs a command to its end: (succeeded, stdout, stderr).
    async fn run(&self, args: &[&str], token: Option<&str>) -> (bool, String, String) {
        let mut command = self.command(args);
        if let Some(token) = token {
            command.env("COPILOT_TOKEN", token);
        }
        let out = tokio::time::timeout(Duration::from_secs(60), command.output())
            .await
            .expect("finished in time")
            .expect("ran");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

async fn wait_for(pool: &PgPool, what: &str, sql: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done: bool = sqlx::query_scalar(sql)
            .fetch_one(pool)
            .await
            .unwrap_or(false);
        if done {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[sqlx::test(migrator = "infra::postgres::MIGRATOR")]
async fn send_status_and_skip_run_against_a_live_system(pool: PgPool) {
    let id = Uuid::new_v4().simple().to_string();
    let env = Env {
        url: common::database_url(&pool).await,
        prefix: format!("op{}", &id[..10]),
        redis_prefix: format!("op{}:", &id[..10]),
        bootstrap: format!("boot-{id}"),
    };
    let mut up = env.up();

    // `send`: one command from a shell (retried until `up` answers).
    let admin = Uuid::now_v7();
    let register = serde_json::json!({"email": format!("{id}@example.test"), "display_name": "Ops",
        "password": "correct horse battery", "role": "admin"})
    .to_string();
    let admin_text = admin.to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (sent, stdout) = loop {
        let (ok, stdout, stderr) = env
            .run(
                &[
                    "send",
                    "user.register",
                    "--aggregate",
                    &admin_text,
                    "--json",
                    &register,
                ],
                Some(&env.bootstrap),
            )
            .await;
        if ok || stdout.contains("\"status\"") {
            break (ok, stdout);
        }
        assert!(Instant::now() < deadline, "up never answered: {stderr}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(sent, "user.register was not accepted: {stdout}");
    let result: serde_json::Value = serde_json::from_str(&stdout).expect("the result as JSON");
    assert_eq!(result["status"], "accepted");
    assert_eq!(result["aggregate_id"], admin_text);
    // Refused input: the result says why, and the exit status says so.
    let (ok, stdout, stderr) = env
        .run(
            &["send", "incident.open", "--json", "{}"],
            Some(&env.bootstrap),
        )
        .await;
    assert!(!ok, "an invalid command exits non-zero: {stdout}");
    assert!(
        stdout.contains("\"invalid\"") || stderr.contains("invalid"),
        "{stdout}{stderr}"
    );
    let (ok, _, stderr) = env
        .run(&["send", "incident.open", "--json", "{not json"], None)
        .await;
    assert!(!ok && stderr.contains("--json is not JSON"), "{stderr}");

    // A poison event stops the SQL projections.
    let store = EventStore::connect(pool.clone(), StoreOptions::default())
        .await
        .expect("store");
    let poison = store
        .append(&AppendRequest {
            stream_id: Uuid::now_v7(),
            stream_type: "incident".into(),
            expected: ExpectedVersion::NoStream,
            events: vec![NewEvent::new("incident_opened", 2, vec![0xc1, 0x00, 0xff])],
            metadata: Metadata::default(),
        })
        .await
        .expect("append poison");
    let at = poison.position.to_string();
    wait_for(
        &pool,
        "both projections stopped",
        "SELECT count(*) = 2 FROM projection_status WHERE stopped IS NOT NULL",
    )
    .await;
    let (ok, status, stderr) = env.run(&["status"], None).await;
    assert!(ok, "{stderr}");
    assert!(status.contains("STOPPED"), "{status}");
    assert!(
        status.contains(&at) && status.contains("incident_opened"),
        "{status}"
    );
    assert!(
        status.contains("redis") && status.contains(": up"),
        "{status}"
    );
    assert!(status.contains("nats stream"), "{status}");

    // Commands still land in the log meanwhile.
    let (ok, stdout, _) = env
        .run(
            &["send", "incident.open", "--json",
              r#"{"title": "after the poison", "description": "d", "severity": "low", "affected_services": ["api"]}"#],
            Some(&env.bootstrap),
        )
        .await;
    assert!(ok, "{stdout}");

    // Skipping anything but the parked event is refused and changes nothing.
    let (ok, _, stderr) = env
        .run(
            &["projection", "skip", "relational", "--position", "0.0.1"],
            None,
        )
        .await;
    assert!(!ok && stderr.contains("no parked event"), "{stderr}");
    let (ok, _, stderr) = env
        .run(&["projection", "skip", "vectors", "--position", &at], None)
        .await;
    assert!(!ok && stderr.contains("does not park events"), "{stderr}");

    for name in ["relational", "audit"] {
        let (ok, stdout, stderr) = env
            .run(&["projection", "skip", name, "--position", &at], None)
            .await;
        assert!(ok, "{name}: {stderr}");
        assert!(
            stdout.contains("skipped event") && stdout.contains("incident_opened"),
            "{stdout}"
        );
    }
    // The running projector goes on: the incident sent after the poison
    // event is projected, and nothing is stopped.
    wait_for(
        &pool,
        "the incident after the poison event",
        "SELECT EXISTS (SELECT 1 FROM read_model.incidents WHERE title = 'after the poison')",
    )
    .await;
    wait_for(
        &pool,
        "the audit projection",
        "SELECT EXISTS (SELECT 1 FROM audit.audit_logs WHERE action = 'incident_opened')",
    )
    .await;
    let (ok, status, _) = env.run(&["status"], None).await;
    assert!(
        ok && !status.contains("STOPPED") && !status.contains("parked events"),
        "{status}"
    );
    // Skipping it twice, or retrying what is not stopped, is refused.
    let (ok, _, stderr) = env
        .run(
            &["projection", "skip", "relational", "--position", &at],
            None,
        )
        .await;
    assert!(!ok && stderr.contains("no parked event"), "{stderr}");
    let (ok, _, stderr) = env.run(&["projection", "retry", "relational"], None).await;
    assert!(!ok && stderr.contains("is not stopped"), "{stderr}");
    let skipped: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_errors WHERE skipped")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(skipped, 2);

    let _ = up.kill().await;
    let client = async_nats::connect("nats://127.0.0.1:4222")
        .await
        .expect("nats");
    let js = async_nats::jetstream::new(client);
    let (commands, results) = command_service::stream_names(&env.prefix);
    let _ = js.delete_stream(commands).await;
    let _ = js.delete_stream(results).await;
    let _ = infra::redis_conn::delete_prefix("redis://127.0.0.1:6379", &env.redis_prefix).await;
}
