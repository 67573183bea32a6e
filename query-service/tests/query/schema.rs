//! `schemathesis` (from PyPI; `tests/run.sh` installs it and names it in
//! `COPILOT_SCHEMATHESIS`) generates requests from `/openapi.json`: no
//! answer may be a server error or break the documented schema, status
//! codes, content types or headers.

use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{Options, Stack};

#[sqlx::test(migrations = "../migrations")]
async fn schemathesis_finds_no_server_error_and_no_schema_violation(pool: PgPool) {
    let st = std::env::var("COPILOT_SCHEMATHESIS")
        .expect("COPILOT_SCHEMATHESIS names the schemathesis `st` program: run tests/run.sh");
    let (options, dir) = Options::with_search();
    let stack = Stack::start_with(pool, options).await;
    let (_, admin) = stack.user("admin").await;
    // Some data, so the generated requests also meet real rows.
    let conversation = Uuid::now_v7();
    stack
        .ok(
            "conversation.start",
            conversation,
            json!({"title": "t", "tags": ["x"]}),
            &admin,
        )
        .await;
    stack
        .ok(
            "conversation.append_message",
            conversation,
            json!({"message_id": Uuid::now_v7(), "role": "user", "content": "hello"}),
            &admin,
        )
        .await;
    stack
        .ok(
            "incident.open",
            Uuid::now_v7(),
            json!({"title": "t", "description": "d", "severity": "low", "affected_services": ["x"]}),
            &admin,
        )
        .await;
    let mut command = tokio::process::Command::new(&st);
    command.arg("run");
    // A failure prints its seed; `COPILOT_SCHEMATHESIS_SEED` replays that run.
    if let Ok(seed) = std::env::var("COPILOT_SCHEMATHESIS_SEED") {
        command.args(["--seed", &seed]);
    }
    let output = tokio::time::timeout(
        Duration::from_secs(600),
        command
            .arg(format!("{}/openapi.json", stack.base))
            .args(["--header", &format!("Authorization: Bearer {admin}")])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance",
            ])
            // An endless event stream is not a request/response pair.
            .args(["--exclude-path", "/v1/live"])
            .args(["--phases", "examples,coverage,fuzzing"])
            // One worker: Python 3.11's `ast.parse` is not safe in threads
            // (CPython gh-106905), and hypothesis parses its filters' source
            // while schemathesis's workers generate cases, which once
            // crashed the run ("AST constructor recursion depth mismatch").
            .args(["--max-examples", "40", "--workers", "1", "--request-timeout", "40"])
            .args(["--suppress-health-check", "all"])
            .env("SCHEMATHESIS_HOOKS", "")
            .env("NO_COLOR", "1")
            .output(),
    )
    .await
    .expect("schemathesis finished within 10 minutes")
    .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{stdout}\n{stderr}"
    );
    stack.finish().await;
    let _ = std::fs::remove_dir_all(dir);
}
