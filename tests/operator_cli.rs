//! The operator's commands against a running `copilot-data up`: `send`
//! one command from a shell, `status` showing a projection stopped at a
//! parked poison event, `projection skip` moving it on without a restart
//! (and refusing a position that is not the parked one), `projection
//! retry` refusing when nothing is stopped.

use std::time::Duration;

use eventstore::{AppendRequest, EventStore, ExpectedVersion, Metadata, NewEvent, StoreOptions};
use sqlx::PgPool;
use uuid::Uuid;

mod common;
use common::system::System;
use common::wait_for;

#[sqlx::test(migrator = "infra::postgres::MIGRATOR")]
async fn send_status_and_skip_run_against_a_live_system(pool: PgPool) {
    let env = System::start(&pool).await;
    let id = Uuid::new_v4().simple().to_string();

    // `send`: one command from a shell.
    let admin = Uuid::now_v7();
    let register = serde_json::json!({"email": format!("{id}@example.test"), "display_name": "Ops",
        "password": "correct horse battery", "role": "admin"})
    .to_string();
    let admin_text = admin.to_string();
    let (sent, stdout) = env
        .send_when_up(
            &[
                "user.register",
                "--aggregate",
                &admin_text,
                "--json",
                &register,
            ],
            &env.bootstrap,
        )
        .await;
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

    env.finish().await;
}

/// On a database with no admin, `up` says how to make the first one.
#[sqlx::test(migrator = "infra::postgres::MIGRATOR")]
async fn up_on_a_fresh_database_says_how_to_get_in(pool: PgPool) {
    use tokio::io::AsyncBufReadExt;
    let env = System::prepare(&pool).await;
    let mut up = env.command(&["up"]).spawn().expect("start up");
    let stderr = up.stderr.take().expect("stderr");
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let said = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("no admin yet") {
                return Some(line);
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    let _ = up.kill().await;
    let said = said.expect("up did not say how to get in");
    assert!(said.contains("copilot-data admin create --email"), "{said}");
    env.finish().await;
}

/// `config check` prints the effective settings with secrets masked, names
/// a wrong variable, and `--explain` lists every variable.
#[tokio::test]
async fn config_check_masks_secrets_and_names_a_wrong_variable() {
    let run = |args: &[&str], vars: &[(&str, &str)]| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_copilot-data"));
        command.args(args).env("COPILOT_LOG", "warn");
        for (k, v) in vars {
            command.env(k, v);
        }
        command.output()
    };
    let out = run(
        &["config", "check"],
        &[
            ("COPILOT_DATABASE_URL", "postgres://u:hunter2@db/copilot"),
            ("COPILOT_HTTP_ADDR", "127.0.0.1:9333"),
        ],
    )
    .await
    .expect("ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("127.0.0.1:9333"), "{stdout}");
    assert!(!stdout.contains("hunter2"), "a secret printed: {stdout}");

    let out = run(
        &["config", "check"],
        &[("COPILOT_HTTP_CACHE_TTL_SECS", "soon")],
    )
    .await
    .expect("ran");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("COPILOT_HTTP_CACHE_TTL_SECS"), "{stderr}");

    let out = run(&["config", "check", "--explain"], &[])
        .await
        .expect("ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("COPILOT_HTTP_ADDR") && stdout.contains("http.addr"),
        "{stdout}"
    );
    assert!(
        stdout.contains("COPILOT_DATABASE_MIN_CONNECTIONS"),
        "{stdout}"
    );
    let help = run(&["--help"], &[]).await.expect("ran");
    assert!(String::from_utf8_lossy(&help.stdout).contains("config check --explain"));
}
