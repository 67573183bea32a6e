//! The Python client kit (`clients/python/copilot_agent.py`, stock nats-py
//! and msgpack) runs green against `copilot-data up`: it signs in, writes a
//! conversation, a workflow run and an incident, and reads each back over
//! HTTP at the position its command returned.

use sqlx::PgPool;
use uuid::Uuid;

mod common;
use common::system::System;

#[sqlx::test(migrator = "infra::postgres::MIGRATOR")]
async fn the_python_agent_example_runs_against_up(pool: PgPool) {
    let python = std::env::var("COPILOT_PYTHON")
        .expect("COPILOT_PYTHON names the client kit's python: run tests/run.sh");
    let system = System::start(&pool).await;
    let email = format!("{}@example.test", Uuid::new_v4().simple());
    let password = "a long enough pass phrase";
    let register = serde_json::json!({"email": email, "display_name": "Python Agent",
        "password": password, "role": "operator"})
    .to_string();
    let (ok, stdout) = system
        .send_when_up(&["user.register", "--json", &register], &system.bootstrap)
        .await;
    assert!(ok, "{stdout}");

    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/clients/python/copilot_agent.py"
    );
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        tokio::process::Command::new(python)
            .arg(script)
            .args(["--email", &email])
            .args(["--prefix", &system.prefix])
            .args(["--http", &format!("http://{}", system.http)])
            .env("COPILOT_PASSWORD", password)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the example finished in time")
    .expect("the example ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for line in [
        "ok  signed in as",
        "ok  conversation has 2 messages",
        "ok  execution succeeded with 2 steps",
        "ok  incident open: Checkout latency",
        "ok  an invalid command is refused (invalid)",
    ] {
        assert!(stdout.contains(line), "no {line:?} in\n{stdout}\n{stderr}");
    }
    system.finish().await;
}
