//! The dashboard page in headless Chromium (Debian's, driven by
//! playwright-core from `tests/browser`), served over HTTPS with a
//! certificate from the test's CA: it signs in with a token, shows the
//! summary, and updates live when an incident is opened.

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, BufReader};
use uuid::Uuid;

use crate::{Options, Stack};

#[sqlx::test(migrations = "../migrations")]
async fn the_dashboard_signs_in_and_updates_live(pool: PgPool) {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/browser/dashboard.mjs"
    );
    assert!(
        std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/browser/node_modules/playwright-core")).exists(),
        "playwright-core is missing: run tests/run.sh (or `npm ci` in tests/browser) and install Debian's chromium"
    );
    let (search, vectors_dir) = Options::with_search();
    let stack = Stack::start_with(
        pool,
        Options {
            https: true,
            ..search
        },
    )
    .await;
    assert!(stack.base.starts_with("https://"));
    let (_, alice) = stack.user("operator").await;
    let (_, admin) = stack.user("admin").await;
    let title = format!("Disk full {}", Uuid::new_v4().simple());
    // Something for each detail view: a running execution of a
    // three-step workflow, and a conversation of two messages.
    let workflow = Uuid::now_v7();
    stack
        .ok(
            "workflow.create",
            workflow,
            json!({"name": "restart api", "definition": {"steps": ["drain", "restart", "verify"]}}),
            &alice,
        )
        .await;
    stack
        .ok("workflow.activate", workflow, json!({}), &alice)
        .await;
    let run = Uuid::now_v7();
    stack
        .ok(
            "execution.start",
            run,
            json!({"workflow_id": workflow, "trigger_source": "dashboard test"}),
            &alice,
        )
        .await;
    let step = Uuid::now_v7();
    stack
        .ok(
            "execution.start_step",
            run,
            json!({"step_id": step, "name": "drain"}),
            &alice,
        )
        .await;
    stack
        .ok(
            "execution.complete_step",
            run,
            json!({"step_id": step}),
            &alice,
        )
        .await;
    let conversation = Uuid::now_v7();
    stack
        .ok(
            "conversation.start",
            conversation,
            json!({"title": "why is the api slow?"}),
            &alice,
        )
        .await;
    for (role, content) in [
        ("user", "why is the api slow?"),
        ("assistant", "the disk is full"),
    ] {
        stack
            .ok(
                "conversation.append_message",
                conversation,
                json!({"message_id": Uuid::now_v7(), "role": role, "content": content}),
                &alice,
            )
            .await;
    }
    // Screenshots for a person to look at, beside the test binaries.
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot directory");
    eprintln!("dashboard screenshots: {}", shots.display());
    let (certs, _) = stack.tls.as_ref().expect("HTTPS");
    let mut child = tokio::process::Command::new("node")
        // Chromium trusts the server's key (the test CA's certificate for it).
        .env("TRUSTED_SPKI", &certs.server_spki_sha256)
        .arg(script)
        .arg(&stack.base)
        .arg(&alice)
        .arg(&title)
        .arg(&shots)
        .arg(&admin)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let signed_in = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("signed in within a minute")
        .expect("read")
        .expect("a line");
    assert_eq!(
        signed_in, "signed-in sessions=1",
        "the summary shows the user's one session"
    );
    stack
        .ok(
            "incident.open",
            Uuid::now_v7(),
            json!({"title": title, "description": "d", "severity": "critical", "affected_services": ["disk"]}),
            &alice,
        )
        .await;
    let updated = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("updated within a minute")
        .expect("read")
        .expect("a line");
    assert_eq!(
        updated, "updated open=1",
        "the new incident appears without a reload"
    );
    let details = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("details within a minute")
        .expect("read")
        .expect("a line");
    assert_eq!(
        details, "details incident=true execution=1 conversation=2 phone-overflow=false",
        "each detail view opens (the conversation by keyboard); nothing overflows a phone's width"
    );
    let found = tokio::time::timeout(Duration::from_secs(90), lines.next_line())
        .await
        .expect("search and audit within 90 s")
        .expect("read")
        .expect("a line");
    assert_eq!(
        found, "searched own-message=true audit-filtered=true lag-chart=true",
        "search finds the user's own message; the admin's audit filter shows only incident rows; \
         the lag chart draws both SQL projections"
    );
    let status = child.wait().await.expect("node exits");
    assert!(status.success(), "the browser script failed");
    stack.finish().await;
    let _ = std::fs::remove_dir_all(vectors_dir);
}
