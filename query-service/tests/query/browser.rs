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
    let stack = Stack::start_with(
        pool,
        Options {
            https: true,
            ..Options::default()
        },
    )
    .await;
    assert!(stack.base.starts_with("https://"));
    let (_, alice) = stack.user("operator").await;
    let title = format!("Disk full {}", Uuid::new_v4().simple());
    let (certs, _) = stack.tls.as_ref().expect("HTTPS");
    let mut child = tokio::process::Command::new("node")
        // Chromium trusts the server's key (the test CA's certificate for it).
        .env("TRUSTED_SPKI", &certs.server_spki_sha256)
        .arg(script)
        .arg(&stack.base)
        .arg(&alice)
        .arg(&title)
        .arg(std::env::temp_dir().join("copilot-dashboard.png"))
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
    let status = child.wait().await.expect("node exits");
    assert!(status.success(), "the browser script failed");
    stack.finish().await;
}
