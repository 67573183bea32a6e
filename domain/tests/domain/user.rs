use chrono::Duration;
use domain::context::{Actor, NewApiKey};
use domain::ids::{ApiKeyId, UserId};
use domain::user::{Command, Event, RecordLogin, User, MAX_FAILED_LOGINS};
use domain::values::Role;
use domain::{Aggregate, Context, DomainError};
use serde_json::json;

use crate::{assert_code, ctx, json, t0, user};

fn decide(
    id: UserId,
    past: &[Event],
    command: Command,
    ctx: &Context,
) -> Result<Vec<Event>, DomainError> {
    User::decide(&User::replay(past), command, &ctx.clone().for_aggregate(id))
}

fn register() -> Command {
    Command::Register(json(
        json!({"email": "Ada@Example.com", "display_name": "Ada", "password": "correct horse", "role": "operator"}),
    ))
}

fn registered(id: UserId) -> Vec<Event> {
    let mut admin = ctx(Actor::Bootstrap);
    admin.password_hash = Some("$argon2id$hash".into());
    decide(id, &[], register(), &admin).expect("register")
}

fn push(id: UserId, past: &mut Vec<Event>, command: Command, ctx: &Context) {
    let new = decide(id, past, command, ctx).expect("accepted");
    past.extend(new);
}

#[test]
fn register_needs_an_admin_and_a_hash() {
    let id = UserId::new();
    let events = registered(id);
    let Event::Registered(r) = &events[0] else {
        panic!()
    };
    assert_eq!(
        r.email.as_ref().map(String::as_str),
        Some("ada@example.com")
    );
    assert_eq!(r.password_hash.expose(), "$argon2id$hash");
    assert_code(
        decide(
            id,
            &[],
            register(),
            &ctx(user(UserId::new(), Role::Operator)),
        ),
        "forbidden",
    );
    assert_code(
        decide(id, &[], register(), &ctx(Actor::Bootstrap)),
        "invalid",
    );
    let mut admin = ctx(user(UserId::new(), Role::Admin));
    admin.password_hash = Some("h".into());
    assert_code(decide(id, &events, register(), &admin), "already_exists");
}

#[test]
fn profile_role_password_and_mfa() {
    let id = UserId::new();
    let me = ctx(user(id, Role::Operator));
    let admin = ctx(user(UserId::new(), Role::Admin));
    let mut past = registered(id);
    push(
        id,
        &mut past,
        Command::UpdateProfile(json(json!({"display_name": "Ada L."}))),
        &me,
    );
    assert_code(
        decide(id, &past, Command::UpdateProfile(json(json!({}))), &me),
        "nothing_to_update",
    );
    assert_code(
        decide(
            id,
            &past,
            Command::UpdateProfile(json(json!({"preferences": [1]}))),
            &me,
        ),
        "invalid",
    );
    assert_code(
        decide(
            id,
            &past,
            Command::UpdateProfile(json(json!({"display_name": "X"}))),
            &ctx(user(UserId::new(), Role::Operator)),
        ),
        "forbidden",
    );

    assert_code(
        decide(
            id,
            &past,
            Command::ChangeRole(json(json!({"role": "admin"}))),
            &me,
        ),
        "forbidden",
    );
    push(
        id,
        &mut past,
        Command::ChangeRole(json(json!({"role": "admin"}))),
        &admin,
    );
    let Some(Event::RoleChanged(r)) = past.last() else {
        panic!()
    };
    assert_eq!((r.from, r.to), (Role::Operator, Role::Admin));
    assert_code(
        decide(
            id,
            &past,
            Command::ChangeRole(json(json!({"role": "admin"}))),
            &admin,
        ),
        "role_unchanged",
    );

    let change = Command::ChangePassword(json(
        json!({"current_password": "correct horse", "new_password": "battery staple"}),
    ));
    let mut wrong = me.clone();
    wrong.password_verified = Some(false);
    assert_code(decide(id, &past, change.clone(), &wrong), "wrong_password");
    let mut right = me.clone();
    right.password_verified = Some(true);
    right.password_hash = Some("new-hash".into());
    push(id, &mut past, change, &right);

    push(
        id,
        &mut past,
        Command::EnableMfa(json(json!({"secret": "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"}))),
        &me,
    );
    assert_code(
        decide(
            id,
            &past,
            Command::EnableMfa(json(json!({"secret": "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"}))),
            &me,
        ),
        "mfa_already_enabled",
    );
    push(id, &mut past, Command::DisableMfa(Default::default()), &me);
    assert_code(
        decide(id, &past, Command::DisableMfa(Default::default()), &me),
        "mfa_not_enabled",
    );
}

#[test]
fn api_keys_scopes_expiry_and_revocation() {
    let id = UserId::new();
    let key_id = ApiKeyId::new();
    let mut me = ctx(user(id, Role::Operator));
    me.new_api_key = Some(NewApiKey {
        key_id,
        key_hash: "kh".into(),
        prefix: "cpk_ab".into(),
    });
    let mut past = registered(id);
    let issue = |scopes: serde_json::Value, expires: Option<chrono::DateTime<chrono::Utc>>| {
        Command::IssueApiKey(json(
            json!({"name": "ci", "scopes": scopes, "expires_at": expires}),
        ))
    };
    assert_code(decide(id, &past, issue(json!([]), None), &me), "invalid");
    assert_code(
        decide(id, &past, issue(json!(["admin"]), None), &me),
        "forbidden",
    );
    assert_code(
        decide(
            id,
            &past,
            issue(json!(["read"]), Some(t0() - Duration::hours(1))),
            &me,
        ),
        "invalid",
    );
    push(
        id,
        &mut past,
        issue(
            json!(["commands:write", "read", "read"]),
            Some(t0() + Duration::days(30)),
        ),
        &me,
    );
    let Some(Event::ApiKeyIssued(k)) = past.last() else {
        panic!()
    };
    assert_eq!(k.scopes.len(), 2);
    assert_code(
        decide(id, &past, issue(json!(["read"]), None), &me),
        "already_exists",
    );
    let revoke = |key: ApiKeyId| Command::RevokeApiKey(json(json!({ "key_id": key })));
    assert_code(
        decide(id, &past, revoke(ApiKeyId::new()), &me),
        "api_key_not_found",
    );
    push(id, &mut past, revoke(key_id), &me);
    assert!(User::replay(&past).api_keys[&key_id].revoked);
    assert_code(
        decide(id, &past, revoke(key_id), &me),
        "api_key_already_revoked",
    );
}

#[test]
fn five_failed_logins_in_a_row_lock_the_account() {
    let id = UserId::new();
    let system = ctx(Actor::System);
    let mut past = registered(id);
    let attempt = |succeeded| {
        Command::RecordLogin(RecordLogin {
            succeeded,
            ip_address: Some("192.0.2.1".into()),
        })
    };
    for _ in 0..3 {
        push(id, &mut past, attempt(false), &system);
    }
    push(id, &mut past, attempt(true), &system);
    assert_eq!(
        User::replay(&past).failed_logins,
        0,
        "a success resets the count"
    );
    for n in 1..=MAX_FAILED_LOGINS {
        let new = decide(id, &past, attempt(false), &system).expect("recorded");
        assert_eq!(new.len(), if n == MAX_FAILED_LOGINS { 2 } else { 1 });
        past.extend(new);
    }
    assert!(User::replay(&past).locked);
    assert_code(decide(id, &past, attempt(true), &system), "account_locked");
    let admin = ctx(user(UserId::new(), Role::Admin));
    assert_code(
        decide(
            id,
            &past,
            Command::Lock(json(json!({"reason": "x"}))),
            &admin,
        ),
        "already_locked",
    );
    push(id, &mut past, Command::Unlock(Default::default()), &admin);
    assert_eq!(User::replay(&past).failed_logins, 0);
    assert_code(
        decide(id, &past, Command::Unlock(Default::default()), &admin),
        "not_locked",
    );
    assert_code(
        decide(
            id,
            &past,
            Command::Lock(json(json!({"reason": "x"}))),
            &ctx(user(id, Role::Operator)),
        ),
        "forbidden",
    );
    push(
        id,
        &mut past,
        Command::Lock(json(json!({"reason": "audit"}))),
        &admin,
    );
}

#[test]
fn delete_then_forget() {
    let id = UserId::new();
    let me = ctx(user(id, Role::Viewer));
    let mut past = registered(id);
    push(id, &mut past, Command::Delete(Default::default()), &me);
    assert_code(
        decide(
            id,
            &past,
            Command::UpdateProfile(json(json!({"display_name": "x"}))),
            &me,
        ),
        "user_deleted",
    );
    push(id, &mut past, Command::Forget(Default::default()), &me);
    let state = User::replay(&past);
    assert!(state.forgotten && state.display_name.as_ref().is_some_and(|n| n.is_erased()));
    assert_code(
        decide(id, &past, Command::Forget(Default::default()), &me),
        "not_found",
    );
    assert_code(
        decide(UserId::new(), &[], Command::Delete(Default::default()), &me),
        "not_found",
    );
}
