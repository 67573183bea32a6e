//! The README's first command on a fresh database: `deploy/start.sh` makes
//! the services' logins and the first admin, prints a sign-in token and
//! runs `up`; that token signs in to the dashboard in Chromium, which then
//! updates live. (The test hands start.sh the binary it built and its own
//! database, prefixes, port, data directory and login names.)

use std::process::Stdio;
use std::time::Duration;

use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, BufReader};
use uuid::Uuid;

mod common;
use common::system::System;

#[sqlx::test(migrator = "infra::postgres::MIGRATOR")]
async fn start_sh_prints_a_token_that_signs_in_to_the_dashboard(pool: PgPool) {
    let root = env!("CARGO_MANIFEST_DIR");
    assert!(
        std::path::Path::new(&format!(
            "{root}/tests/browser/node_modules/playwright-core"
        ))
        .exists(),
        "playwright-core is missing: run tests/run.sh"
    );
    let system = System::prepare(&pool).await;
    let id = Uuid::new_v4().simple().to_string();
    let suffix = format!("_t{}", &id[..10]);
    let data = std::env::temp_dir().join(format!("copilot-first-run-{id}"));
    let email = format!("first-{}@example.test", &id[..10]);
    let mut start = tokio::process::Command::new(format!("{root}/deploy/start.sh"));
    system.configure(&mut start);
    let mut start = start
        .env("COPILOT_BIN", env!("CARGO_BIN_EXE_copilot-data"))
        .env("COPILOT_DATA_DIR", &data)
        .env("COPILOT_LOGIN_SUFFIX", &suffix)
        .env("COPILOT_ADMIN_EMAIL", &email)
        .env("COPILOT_INSTALL_SERVICES", "0")
        // The first admin needs no bootstrap token on this machine.
        .env_remove("COPILOT_BOOTSTRAP_TOKEN")
        .stderr(Stdio::inherit())
        .spawn()
        .expect("deploy/start.sh");
    let mut lines = BufReader::new(start.stdout.take().expect("stdout")).lines();
    let token = tokio::time::timeout(Duration::from_secs(180), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.trim().starts_with("cps_") {
                return Some(line.trim().to_owned());
            }
        }
        None
    })
    .await
    .expect("start.sh printed a token in time")
    .expect("start.sh printed a sign-in token");
    assert!(
        std::fs::read_to_string(data.join("admin-password")).is_ok_and(|p| p.trim().len() >= 24),
        "the admin's password is kept in the data directory"
    );

    // The README's sign-in step, in Chromium: paste the token.
    let title = format!("First incident {}", &id[..8]);
    let mut browser = tokio::process::Command::new("node")
        .arg(format!("{root}/tests/browser/dashboard.mjs"))
        .arg(format!("http://{}", system.http))
        .arg(&token)
        .arg(&title)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node");
    let mut seen = BufReader::new(browser.stdout.take().expect("stdout")).lines();
    let signed_in = tokio::time::timeout(Duration::from_secs(90), seen.next_line())
        .await
        .expect("signed in within 90 s")
        .expect("read")
        .expect("a line");
    assert!(signed_in.starts_with("signed-in"), "{signed_in}");
    // As that admin, from a shell: the dashboard shows it without a reload.
    let incident = serde_json::json!({"title": title, "description": "d", "severity": "high",
        "affected_services": ["api"]})
    .to_string();
    let (ok, stdout, stderr) = system
        .run(
            &["send", "incident.open", "--json", &incident],
            Some(&token),
        )
        .await;
    assert!(ok, "{stdout}{stderr}");
    let updated = tokio::time::timeout(Duration::from_secs(60), seen.next_line())
        .await
        .expect("updated within a minute")
        .expect("read")
        .expect("a line");
    assert_eq!(updated, "updated open=1");
    assert!(browser.wait().await.expect("node exits").success());

    let _ = start.kill().await;
    for role in ["command", "projector", "query"] {
        let login = format!("copilot_{role}_svc{suffix}");
        for sql in [
            format!("DROP OWNED BY {login}"),
            format!("DROP ROLE IF EXISTS {login}"),
        ] {
            sqlx::query(&sql).execute(&pool).await.expect(&sql);
        }
    }
    let _ = std::fs::remove_dir_all(&data);
    system.finish().await;
}
