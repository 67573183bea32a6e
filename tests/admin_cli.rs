//! `copilot-data admin`: the first admin of a fresh database, and a new
//! sign-in token for an existing user, through the command pipeline.

use std::process::Stdio;

use sqlx::PgPool;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use uuid::Uuid;

mod common;

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn admin(database_url: &str, args: &[&str], stdin: Option<&str>) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_copilot-data"))
        .arg("admin")
        .args(args)
        .env("COPILOT_DATABASE_URL", database_url)
        .env("COPILOT_MASTER_KEY", common::TEST_MASTER_KEY)
        .env("COPILOT_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start copilot-data admin");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).await.expect("write stdin");
    }
    drop(input);
    let out = child.wait_with_output().await.expect("admin exits");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn line_value<'a>(stdout: &'a str, label: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} in {stdout}"))
        .trim()
}

/// The user a session token belongs to, from the command side's auth index.
async fn token_owner(pool: &PgPool, token: &str) -> Option<(Uuid, String)> {
    sqlx::query_as(
        "SELECT s.user_id, u.role FROM auth_sessions s JOIN auth_users u USING (user_id)
          WHERE s.token_hash = $1 AND NOT s.ended",
    )
    .bind(infra::auth::token_hash(token))
    .fetch_optional(pool)
    .await
    .expect("auth index")
}

#[sqlx::test(migrator = "infra::postgres::MIGRATOR")]
async fn admin_create_makes_an_admin_who_can_sign_in(pool: PgPool) {
    let url = common::database_url(&pool).await;
    let email = format!("first-{}@example.test", Uuid::new_v4().simple());

    let created = admin(&url, &["create", "--email", &email], None).await;
    assert!(created.ok, "admin create failed: {}", created.stderr);
    let password = line_value(&created.stdout, "password (shown once):").to_string();
    let token = line_value(&created.stdout, "sign-in token (24 h):").to_string();
    assert!(password.len() >= 24, "a generated password is long");
    let (user_id, role) = token_owner(&pool, &token)
        .await
        .expect("the printed token is a live session");
    assert_eq!(role, "admin");
    assert!(created.stdout.contains(&user_id.to_string()));

    // The generated password signs in again, through the same checks.
    let again = admin(
        &url,
        &["token", "--email", &email],
        Some(&format!("{password}\n")),
    )
    .await;
    assert!(again.ok, "admin token failed: {}", again.stderr);
    let second = again.stdout.trim();
    assert_ne!(second, token, "every sign-in is a new session");
    assert_eq!(
        token_owner(&pool, second).await.map(|(u, _)| u),
        Some(user_id)
    );

    // A wrong password is refused, and says so without printing a token.
    let wrong = admin(&url, &["token", "--email", &email], Some("not-it\n")).await;
    assert!(!wrong.ok);
    assert!(wrong.stdout.trim().is_empty(), "no token: {}", wrong.stdout);
    assert!(wrong.stderr.contains("cannot sign in"), "{}", wrong.stderr);

    // The same e-mail again is refused with the domain's reason; nothing changes.
    let users_before: i64 = sqlx::query_scalar("SELECT count(*) FROM auth_users")
        .fetch_one(&pool)
        .await
        .expect("count");
    let twice = admin(&url, &["create", "--email", &email], None).await;
    assert!(!twice.ok);
    assert!(twice.stderr.contains("not created"), "{}", twice.stderr);
    let users_after: i64 = sqlx::query_scalar("SELECT count(*) FROM auth_users")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(users_before, users_after);
}

#[sqlx::test(migrator = "infra::postgres::MIGRATOR")]
async fn admin_create_takes_a_password_from_stdin_and_checks_it(pool: PgPool) {
    let url = common::database_url(&pool).await;
    let email = format!("chosen-{}@example.test", Uuid::new_v4().simple());

    let weak = admin(
        &url,
        &["create", "--email", &email, "--password-stdin"],
        Some("short\n"),
    )
    .await;
    assert!(!weak.ok, "a weak password is refused");
    assert!(weak.stderr.contains("password"), "{}", weak.stderr);

    let chosen = "correct horse battery staple 42";
    let created = admin(
        &url,
        &[
            "create",
            "--email",
            &email,
            "--display-name",
            "Ops Lead",
            "--password-stdin",
        ],
        Some(&format!("{chosen}\n")),
    )
    .await;
    assert!(created.ok, "{}", created.stderr);
    assert!(
        !created.stdout.contains("password (shown once)"),
        "a chosen password is never echoed: {}",
        created.stdout
    );
    assert!(!created.stdout.contains(chosen));
    let token = line_value(&created.stdout, "sign-in token (24 h):");
    assert!(token_owner(&pool, token).await.is_some());
}
