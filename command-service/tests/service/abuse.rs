//! What a user with a valid account and a NATS connection could do to
//! others: widen a credential, probe or hammer sign-ins, replay an MFA
//! code, read secrets off JetStream, give one command two outcomes, or
//! read another sender's outcome. Each test tries it.

use std::time::Duration;

use command_service::{CommandResult, RateLimitConfig, Status};
use futures_util::future::join_all;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{config, envelope, fresh_prefix, App};

/// The error code of a result, if any.
fn code(result: &CommandResult) -> Option<&str> {
    result.error.as_ref().map(|e| e.code.as_str())
}

/// A signed-in user and their credentials: a session and keys of each
/// scope their role may have.
struct Holder {
    id: Uuid,
    session: String,
    read_key: String,
    write_key: String,
    /// Only an admin's key can carry the `admin` scope.
    admin_key: Option<String>,
}

async fn issue_key(app: &App, user: Uuid, scopes: &[&str], token: &str) -> CommandResult {
    app.rpc(
        "user.issue_api_key",
        &envelope(user, json!({"name": "k", "scopes": scopes})),
        Some(token),
    )
    .await
}

fn key_of(result: &CommandResult) -> String {
    result
        .data
        .as_ref()
        .and_then(|d| d["api_key"].as_str())
        .unwrap_or_else(|| panic!("no key in {result:?}"))
        .to_string()
}

async fn holder(app: &App, role: &str) -> Holder {
    let (id, session) = app.user(role).await;
    let boot = app.bootstrap.clone();
    let read_key = key_of(&issue_key(app, id, &["read"], &boot).await);
    let write_key = key_of(&issue_key(app, id, &["commands:write"], &boot).await);
    let admin_key = if role == "admin" {
        Some(key_of(&issue_key(app, id, &["admin"], &boot).await))
    } else {
        // An operator cannot be given the admin scope, by anyone.
        let refused = issue_key(app, id, &["admin"], &boot).await;
        assert_eq!(refused.status, Status::Forbidden, "{refused:?}");
        None
    };
    Holder {
        id,
        session,
        read_key,
        write_key,
        admin_key,
    }
}

/// The credential commands (and the admin-only ones) with a payload valid
/// for `target`, whose API key `target_key` exists.
fn credential_commands(target_key: Uuid) -> Vec<(&'static str, Value, bool)> {
    // (type, payload, admin only)
    vec![
        (
            "user.issue_api_key",
            json!({"name": "more", "scopes": ["read"]}),
            false,
        ),
        ("user.revoke_api_key", json!({"key_id": target_key}), false),
        (
            "user.enable_mfa",
            json!({"secret": "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"}),
            false,
        ),
        ("user.disable_mfa", json!({}), false),
        (
            "user.change_password",
            json!({"current_password": "correct horse", "new_password": "correct horse 2"}),
            false,
        ),
        ("user.delete", json!({}), false),
        ("user.forget", json!({}), false),
        ("user.change_role", json!({"role": "viewer"}), true),
        ("user.lock", json!({"reason": "matrix"}), true),
        ("user.unlock", json!({}), true),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cred {
    Session,
    Read,
    Write,
    Admin,
}

/// Whether the rule allows `cred` of a holder of `role` to send a
/// credential command on `target_is_self` (admin-only or not).
fn allowed(role: &str, cred: Cred, target_is_self: bool, admin_only: bool) -> bool {
    let admin_power = role == "admin" && matches!(cred, Cred::Session | Cred::Admin);
    match cred {
        Cred::Read => false,
        Cred::Write => false,
        Cred::Session | Cred::Admin if admin_power => true,
        Cred::Session | Cred::Admin => target_is_self && !admin_only,
    }
}

/// Every credential command, sent with each credential of an admin and of
/// an operator, on themselves and on someone else: only a session or an
/// `admin`-scoped key manage credentials, only admin power reaches another
/// user or an admin-only command, a `read` key sends nothing.
#[sqlx::test(migrations = "../migrations")]
async fn scopes_and_roles_bound_every_credential_command(pool: PgPool) {
    let app = App::spawn(pool).await;
    let boot = app.bootstrap.clone();
    let mut checked = 0;
    for role in ["admin", "operator"] {
        for cred in [Cred::Session, Cred::Read, Cred::Write, Cred::Admin] {
            if cred == Cred::Admin && role != "admin" {
                continue;
            }
            for target_is_self in [true, false] {
                // Fresh people per cell: a command that is allowed changes them.
                let count = credential_commands(Uuid::nil()).len();
                let cells = (0..count).map(|i| {
                    let (app, boot) = (&app, boot.clone());
                    async move {
                        let holder = holder(app, role).await;
                        let (target, target_key) = if target_is_self {
                            let key = issue_key(app, holder.id, &["read"], &boot).await;
                            (holder.id, key)
                        } else {
                            let (other, _) = app.register("operator").await;
                            (other, issue_key(app, other, &["read"], &boot).await)
                        };
                        let key_id: Uuid = target_key
                            .data
                            .as_ref()
                            .and_then(|d| d["key_id"].as_str())
                            .and_then(|k| k.parse().ok())
                            .expect("key id");
                        let (command_type, payload, admin_only) =
                            credential_commands(key_id).swap_remove(i);
                        let token = match cred {
                            Cred::Session => holder.session.clone(),
                            Cred::Read => holder.read_key.clone(),
                            Cred::Write => holder.write_key.clone(),
                            Cred::Admin => holder.admin_key.clone().expect("admin key"),
                        };
                        let result = app
                            .rpc(command_type, &envelope(target, payload), Some(&token))
                            .await;
                        let expected = allowed(role, cred, target_is_self, admin_only);
                        let label = format!(
                            "{role} {cred:?} {command_type} self={target_is_self}: {result:?}"
                        );
                        if expected {
                            assert_ne!(result.status, Status::Forbidden, "{label}");
                            assert_ne!(result.status, Status::Unauthorized, "{label}");
                        } else {
                            assert_eq!(result.status, Status::Forbidden, "{label}");
                            // Refused: nothing of it was written.
                            let written: i64 = sqlx::query_scalar(
                                "SELECT count(*) FROM events WHERE command_id = $1",
                            )
                            .bind(result.command_id)
                            .fetch_one(&app.pool)
                            .await
                            .expect("count");
                            assert_eq!(written, 0, "{label}");
                        }
                    }
                });
                join_all(cells).await;
                checked += count;
            }
        }
    }
    assert_eq!(checked, 7 * 2 * credential_commands(Uuid::nil()).len());
    app.finish().await;
}

/// A key never mints a wider one: an admin's `commands:write` key cannot
/// issue an `admin` key (nor a `read` one it lacks) for its owner.
#[sqlx::test(migrations = "../migrations")]
async fn a_key_cannot_issue_a_wider_key(pool: PgPool) {
    let app = App::spawn(pool).await;
    let admin = holder(&app, "admin").await;
    let admin_key = admin.admin_key.clone().expect("admin key");
    for (token, scopes, expected) in [
        (&admin.write_key, vec!["admin"], Status::Forbidden),
        (&admin.write_key, vec!["commands:write"], Status::Forbidden),
        (&admin_key, vec!["admin"], Status::Accepted),
        (&admin.session, vec!["admin", "read"], Status::Accepted),
    ] {
        let result = issue_key(&app, admin.id, &scopes, token).await;
        assert_eq!(result.status, expected, "{scopes:?}: {result:?}");
    }
    // A read key may send no command at all.
    let refused = app
        .rpc(
            "incident.open",
            &envelope(Uuid::now_v7(), json!({"title": "t", "description": "d", "severity": "low", "affected_services": ["api"]})),
            Some(&admin.read_key),
        )
        .await;
    assert_eq!(
        (refused.status, code(&refused)),
        (Status::Forbidden, Some("missing_scope"))
    );
    app.finish().await;
}

/// After the lock, the right password and a wrong one get the same
/// answer, so guessing cannot go on behind it.
#[sqlx::test(migrations = "../migrations")]
async fn a_locked_account_answers_every_sign_in_alike(pool: PgPool) {
    let app = App::spawn(pool).await;
    let (_, email) = app.register("operator").await;
    for _ in 0..5 {
        let wrong = app.sign_in(&email, "wrong password", None).await;
        assert_eq!(code(&wrong), Some("invalid_credentials"), "{wrong:?}");
    }
    let right = app.sign_in(&email, "correct horse", None).await;
    let wrong = app.sign_in(&email, "wrong password", None).await;
    assert_eq!(code(&right), Some("account_locked"), "{right:?}");
    assert_eq!(code(&wrong), Some("account_locked"), "{wrong:?}");
    assert_eq!(
        right.error.map(|e| e.message),
        wrong.error.map(|e| e.message)
    );
    app.finish().await;
}

/// Sign-ins are limited per e-mail address and per client address, whatever
/// session id each attempt names.
#[sqlx::test(migrations = "../migrations")]
async fn sign_ins_are_limited_per_email_and_per_address(pool: PgPool) {
    let prefix = fresh_prefix();
    let mut cfg = config(&prefix, &format!("boot-{}", Uuid::new_v4()));
    let mut limits = RateLimitConfig::with_signin_defaults(
        "redis://127.0.0.1:6379",
        format!("test:{prefix}:ratelimit:"),
        1000,
        Duration::from_secs(60),
    );
    limits.signin_per_email = 3;
    limits.signin_per_address = 4;
    cfg.rate_limit = Some(limits);
    let app = App::spawn_with(pool, cfg).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, email) = app.register("operator").await;
    // A fresh session id each time: the limit does not care.
    let answers: Vec<Status> = {
        let mut answers = Vec::new();
        for _ in 0..4 {
            answers.push(app.sign_in(&email, "wrong password", None).await.status);
        }
        answers
    };
    assert_eq!(
        answers,
        [
            Status::Rejected,
            Status::Rejected,
            Status::Rejected,
            Status::RateLimited
        ]
    );
    // Even the right password waits for the window now.
    assert_eq!(
        app.sign_in(&email, "correct horse", None).await.status,
        Status::RateLimited
    );
    // One address trying many e-mails.
    let mut statuses = Vec::new();
    for i in 0..5 {
        let body = envelope(
            Uuid::now_v7(),
            json!({"email": format!("nobody{i}@example.com"), "password": "guessed password"}),
        );
        let result = app
            .rpc_with(
                "session.start",
                &body,
                None,
                &[("Client-Ip", "198.51.100.7")],
            )
            .await;
        statuses.push(result.status);
    }
    assert_eq!(statuses[..4], [Status::Rejected; 4]);
    assert_eq!(statuses[4], Status::RateLimited);
    infra::redis_conn::delete_prefix("redis://127.0.0.1:6379", &format!("test:{prefix}:"))
        .await
        .expect("clean up");
    app.finish().await;
}

const TOTP_SECRET: &str = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";

/// A user with MFA on; returns the e-mail.
async fn with_mfa(app: &App) -> String {
    let (id, email) = app.register("operator").await;
    let boot = app.bootstrap.clone();
    let enabled = app
        .rpc(
            "user.enable_mfa",
            &envelope(id, json!({"secret": TOTP_SECRET})),
            Some(&boot),
        )
        .await;
    assert_eq!(enabled.status, Status::Accepted, "{enabled:?}");
    email
}

/// Enrolment without a secret of the client's: the service makes one (160
/// bits) and answers it with its `otpauth://` URI, over request/reply only
/// (a JetStream result would keep it); codes from it sign in.
#[sqlx::test(migrations = "../migrations")]
async fn mfa_enrolment_answers_a_new_secret_once(pool: PgPool) {
    let app = App::spawn(pool).await;
    let (id, email) = app.register("operator").await;
    let boot = app.bootstrap.clone();
    let before = app.event_count().await;
    let kept = app
        .js("user.enable_mfa", &envelope(id, json!({})), Some(&boot))
        .await;
    assert_eq!(code(&kept), Some("request_reply_only"), "{kept:?}");
    assert_eq!(app.event_count().await, before);

    let enabled = app
        .rpc("user.enable_mfa", &envelope(id, json!({})), Some(&boot))
        .await;
    assert_eq!(enabled.status, Status::Accepted, "{enabled:?}");
    let data = enabled.data.as_ref().expect("data");
    let secret = data["secret"].as_str().expect("secret");
    assert_eq!(secret.trim_end_matches('=').len(), 32, "160 bits in base32");
    let uri = data["otpauth_uri"].as_str().expect("uri");
    let account = email.replace('@', "%40");
    assert!(
        uri.starts_with(&format!(
            "otpauth://totp/copilot-data:{account}?secret={secret}&issuer=copilot-data"
        )),
        "{uri}"
    );
    let code_now = command_service::totp::generate(secret, chrono::Utc::now()).expect("code");
    let signed_in = app.sign_in(&email, "correct horse", Some(&code_now)).await;
    assert_eq!(signed_in.status, Status::Accepted, "{signed_in:?}");
    // A secret of the client's that is too short is refused, naming it.
    let (other, _) = app.register("operator").await;
    let short = app
        .rpc(
            "user.enable_mfa",
            &envelope(other, json!({"secret": "JBSWY3DPEHPK3PXP"})),
            Some(&boot),
        )
        .await;
    assert_eq!(short.status, Status::Invalid, "{short:?}");
    assert!(format!("{short:?}").contains("secret"), "{short:?}");
    app.finish().await;
}

/// Wrong MFA codes count toward the lock like wrong passwords.
#[sqlx::test(migrations = "../migrations")]
async fn wrong_mfa_codes_count_toward_the_lock(pool: PgPool) {
    let app = App::spawn(pool).await;
    let email = with_mfa(&app).await;
    for _ in 0..5 {
        let wrong = app.sign_in(&email, "correct horse", Some("000000")).await;
        assert_eq!(code(&wrong), Some("invalid_mfa_code"), "{wrong:?}");
    }
    let now = chrono::Utc::now();
    let good = command_service::totp::generate(TOTP_SECRET, now).expect("code");
    let locked = app.sign_in(&email, "correct horse", Some(&good)).await;
    assert_eq!(code(&locked), Some("account_locked"), "{locked:?}");
    app.finish().await;
}

/// An accepted code is refused a second time, also when both sign-ins
/// arrive at once: exactly one of them gets a session.
#[sqlx::test(migrations = "../migrations")]
async fn an_mfa_code_is_good_once(pool: PgPool) {
    let app = App::spawn(pool).await;
    let email = with_mfa(&app).await;
    let now = chrono::Utc::now();
    let code_now = command_service::totp::generate(TOTP_SECRET, now).expect("code");
    let first = app.sign_in(&email, "correct horse", Some(&code_now)).await;
    assert_eq!(first.status, Status::Accepted, "{first:?}");
    let again = app.sign_in(&email, "correct horse", Some(&code_now)).await;
    assert_eq!(code(&again), Some("invalid_mfa_code"), "{again:?}");

    // The next step's code (valid now, one step of drift), twice at once.
    let next = command_service::totp::generate(TOTP_SECRET, now + chrono::Duration::seconds(30))
        .expect("code");
    let both = join_all((0..2).map(|_| app.sign_in(&email, "correct horse", Some(&next)))).await;
    let accepted = both.iter().filter(|r| r.status == Status::Accepted).count();
    assert_eq!(accepted, 1, "{both:?}");
    assert!(
        both.iter().any(|r| code(r) == Some("invalid_mfa_code")),
        "{both:?}"
    );
    app.finish().await;
}

/// Commands whose answer carries a secret are refused on JetStream, whose
/// results stream keeps answers for a day; nothing is appended.
#[sqlx::test(migrations = "../migrations")]
async fn secrets_are_not_answered_where_answers_are_kept(pool: PgPool) {
    let app = App::spawn(pool).await;
    let (user, email) = app.register("operator").await;
    let (_, token) = app.user("operator").await;
    let before = app.event_count().await;
    let signed_in = app
        .js(
            "session.start",
            &envelope(
                Uuid::now_v7(),
                json!({"email": email, "password": "correct horse"}),
            ),
            None,
        )
        .await;
    assert_eq!(
        (signed_in.status, code(&signed_in)),
        (Status::Invalid, Some("request_reply_only")),
        "{signed_in:?}"
    );
    assert!(signed_in.data.is_none());
    let issued = app
        .js(
            "user.issue_api_key",
            &envelope(user, json!({"name": "k", "scopes": ["read"]})),
            Some(&token),
        )
        .await;
    assert_eq!(
        (issued.status, code(&issued)),
        (Status::Invalid, Some("request_reply_only")),
        "{issued:?}"
    );
    assert_eq!(app.event_count().await, before);
    app.finish().await;
}

/// The same command on both transports at once, hundreds of times: each
/// command id ends with exactly one outcome (events or a stored rejection,
/// never both), and repeating it answers that outcome on either transport.
#[sqlx::test(migrations = "../migrations")]
async fn one_command_id_has_one_outcome_across_transports(pool: PgPool) {
    let app = App::spawn(pool).await;
    let (_, token) = app.user("operator").await;
    let conversations: Vec<Uuid> = {
        let mut ids = Vec::new();
        for _ in 0..10 {
            ids.push(app.conversation(&token).await);
        }
        ids
    };
    let pairs: Vec<Value> = (0..300)
        .map(|i| {
            let conversation = conversations[i % conversations.len()];
            envelope(
                conversation,
                json!({"message_id": Uuid::now_v7(), "role": "user", "content": format!("m{i}")}),
            )
        })
        .collect();
    let answers = join_all(pairs.iter().map(|body| {
        let (app, token) = (&app, token.clone());
        async move {
            let (a, b) = tokio::join!(
                app.rpc("conversation.append_message", body, Some(&token)),
                app.js("conversation.append_message", body, Some(&token))
            );
            (a, b)
        }
    }))
    .await;
    for (body, (a, b)) in pairs.iter().zip(&answers) {
        let command_id: Uuid = body["command_id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("id");
        let (events, rejections): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM events WHERE command_id = $1),
                    (SELECT count(*) FROM command_results WHERE command_id = $1)",
        )
        .bind(command_id)
        .fetch_one(&app.pool)
        .await
        .expect("outcomes");
        assert_eq!(events + rejections, 1, "{command_id}: {a:?} / {b:?}");
        assert_eq!(a.status, b.status, "{a:?} / {b:?}");
        assert!(
            a.replayed != b.replayed,
            "one decided, one replayed: {a:?} / {b:?}"
        );
        let repeat = app
            .rpc("conversation.append_message", body, Some(&token))
            .await;
        assert_eq!((repeat.status, repeat.replayed), (a.status, true));
    }
    app.finish().await;
}

/// A stored outcome is told to its sender (or an admin) only: another user
/// who names the same command id learns only that it is taken, and nobody
/// unauthenticated learns anything.
#[sqlx::test(migrations = "../migrations")]
async fn a_stored_outcome_is_told_only_to_its_sender(pool: PgPool) {
    let app = App::spawn(pool).await;
    let (_, alice) = app.user("operator").await;
    let (_, bob) = app.user("operator").await;
    let body = envelope(
        Uuid::now_v7(),
        json!({"title": "t", "description": "d", "severity": "low", "affected_services": ["api"]}),
    );
    let first = app.rpc("incident.open", &body, Some(&alice)).await;
    assert_eq!(first.status, Status::Accepted);
    let again = app.rpc("incident.open", &body, Some(&alice)).await;
    assert!(again.replayed && again.status == Status::Accepted);
    let by_bob = app.rpc("incident.open", &body, Some(&bob)).await;
    assert_eq!(
        (by_bob.status, code(&by_bob)),
        (Status::Forbidden, Some("command_id_taken")),
        "{by_bob:?}"
    );
    assert!(by_bob.position.is_none() && by_bob.events.is_empty());
    let anonymous = app.rpc("incident.open", &body, None).await;
    assert_eq!(anonymous.status, Status::Unauthorized, "{anonymous:?}");
    let admin = app.rpc("incident.open", &body, Some(&app.bootstrap)).await;
    assert!(
        admin.replayed && admin.status == Status::Accepted,
        "{admin:?}"
    );
    app.finish().await;
}

/// A missing field is named by its own path.
#[sqlx::test(migrations = "../migrations")]
async fn a_missing_field_is_named_by_its_path(pool: PgPool) {
    let app = App::spawn(pool).await;
    let (_, token) = app.user("operator").await;
    let conversation = app.conversation(&token).await;
    let no_id = app
        .rpc(
            "conversation.tag",
            &json!({"aggregate_id": conversation, "payload": {"tags": ["x"]}}),
            Some(&token),
        )
        .await;
    let no_message_id = app
        .rpc(
            "conversation.append_message",
            &envelope(conversation, json!({"role": "user", "content": "c"})),
            Some(&token),
        )
        .await;
    for (result, field) in [(no_id, "command_id"), (no_message_id, "payload.message_id")] {
        assert_eq!(result.status, Status::Invalid, "{result:?}");
        assert_eq!(
            result
                .error
                .as_ref()
                .and_then(|e| e.details.as_ref())
                .map(|d| d["field"].clone()),
            Some(json!(field)),
            "{result:?}"
        );
    }
    app.finish().await;
}

/// `levels` nested single-key maps around a number.
fn nested(levels: usize) -> Value {
    (0..levels).fold(json!(1), |inner, _| json!({"a": inner}))
}

/// One nesting limit at intake for both encodings: deeper JSON would be
/// stored and then fail to read back (a list endpoint answering 500).
#[sqlx::test(migrations = "../migrations")]
async fn payload_nesting_has_one_limit_in_both_encodings(pool: PgPool) {
    let app = App::spawn(pool).await;
    let (_, token) = app.user("operator").await;
    let limit = command_service::envelope::MAX_DEPTH;
    // The payload is level 1, `definition` level 2.
    let body = |levels| {
        envelope(
            Uuid::now_v7(),
            json!({"name": "deep", "definition": nested(levels)}),
        )
    };
    let before = app.event_count().await;
    for msgpack in [false, true] {
        let send = |body: Value| {
            let (app, token) = (&app, token.clone());
            async move {
                if msgpack {
                    app.rpc_msgpack("workflow.create", &body, Some(&token))
                        .await
                } else {
                    app.rpc("workflow.create", &body, Some(&token)).await
                }
            }
        };
        let deep = send(body(limit)).await;
        assert_eq!(deep.status, Status::Invalid, "msgpack={msgpack}: {deep:?}");
        let field = deep
            .error
            .as_ref()
            .and_then(|e| e.details.as_ref())
            .map(|d| d["field"].clone());
        assert_eq!(
            field
                .as_ref()
                .and_then(Value::as_str)
                .map(|f| f.starts_with("payload.definition")),
            Some(true),
            "{deep:?}"
        );
        let fits = send(body(limit - 1)).await;
        assert_eq!(fits.status, Status::Accepted, "msgpack={msgpack}: {fits:?}");
    }
    assert_eq!(app.event_count().await, before + 2);
    app.finish().await;
}
