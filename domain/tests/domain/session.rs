use chrono::Duration;
use domain::context::{Actor, LoginFacts};
use domain::ids::UserId;
use domain::session::{is_live, Command, Event, Session, IDLE_TIMEOUT};
use domain::values::Role;
use domain::{Aggregate, Context};
use serde_json::json;

use crate::{assert_code, ctx, ctx_at, given_when, json, t0, user};

fn login_ctx(user_id: UserId, verified: bool) -> Context {
    let mut c = ctx(Actor::Anonymous);
    c.password_verified = Some(verified);
    c.token_hash = Some("token-hash".into());
    c.login = Some(LoginFacts {
        user_id,
        role: Role::Operator,
        locked: false,
        deleted: false,
        mfa_enabled: false,
        mfa_step: None,
        last_mfa_step: None,
    });
    c
}

fn start(mfa: Option<&str>) -> Command {
    Command::Start(json(
        json!({"email": "ada@example.com", "password": "correct horse", "mfa_code": mfa, "ip_address": "192.0.2.1", "user_agent": "curl"}),
    ))
}

#[test]
fn start_touch_end() {
    let id = UserId::new();
    let mut past = given_when::<Session>(&[], start(None), &login_ctx(id, true)).expect("start");
    let Event::Started(s) = &past[0] else {
        panic!()
    };
    assert_eq!((s.user_id, s.expires_at), (id, t0() + Duration::hours(24)));
    assert!(is_live(&Session::replay(&past), t0()));
    past.extend(
        given_when::<Session>(
            &past,
            Command::Touch(Default::default()),
            &ctx_at(user(id, Role::Operator), 20),
        )
        .expect("touch"),
    );
    assert_code(
        given_when::<Session>(
            &past,
            Command::End(Default::default()),
            &ctx(user(UserId::new(), Role::Operator)),
        ),
        "forbidden",
    );
    past.extend(
        given_when::<Session>(
            &past,
            Command::End(Default::default()),
            &ctx(user(id, Role::Operator)),
        )
        .expect("end"),
    );
    assert!(!is_live(&Session::replay(&past), t0()));
    assert_code(
        given_when::<Session>(
            &past,
            Command::Touch(Default::default()),
            &ctx(user(id, Role::Operator)),
        ),
        "session_ended",
    );
    assert_code(
        given_when::<Session>(&past, start(None), &login_ctx(id, true)),
        "already_exists",
    );
}

#[test]
fn login_refusals() {
    let id = UserId::new();
    assert_code(
        given_when::<Session>(&[], start(None), &login_ctx(id, false)),
        "invalid_credentials",
    );
    let mut unknown = login_ctx(id, true);
    unknown.login = None;
    assert_code(
        given_when::<Session>(&[], start(None), &unknown),
        "invalid_credentials",
    );
    let with = |f: &dyn Fn(&mut LoginFacts)| {
        let mut c = login_ctx(id, true);
        if let Some(l) = c.login.as_mut() {
            f(l);
        }
        c
    };
    assert_code(
        given_when::<Session>(&[], start(None), &with(&|l| l.deleted = true)),
        "invalid_credentials",
    );
    assert_code(
        given_when::<Session>(&[], start(None), &with(&|l| l.locked = true)),
        "account_locked",
    );
    // A locked account answers a wrong password the same way: no oracle.
    let mut locked_wrong = login_ctx(id, false);
    if let Some(l) = locked_wrong.login.as_mut() {
        l.locked = true;
    }
    assert_code(
        given_when::<Session>(&[], start(None), &locked_wrong),
        "account_locked",
    );
    assert_code(
        given_when::<Session>(&[], start(None), &with(&|l| l.mfa_enabled = true)),
        "mfa_required",
    );
    assert_code(
        given_when::<Session>(
            &[],
            start(Some("000000")),
            &with(&|l| {
                l.mfa_enabled = true;
                l.mfa_step = None
            }),
        ),
        "invalid_mfa_code",
    );
    let started = given_when::<Session>(
        &[],
        start(Some("123456")),
        &with(&|l| {
            l.mfa_enabled = true;
            l.mfa_step = Some(100);
            l.last_mfa_step = Some(99);
        }),
    );
    match started.as_deref() {
        Ok([Event::Started(s)]) => assert_eq!(s.mfa_step, Some(100)),
        other => panic!("expected a start, got {other:?}"),
    }
    // A code whose time step a sign-in took already is refused like a wrong one.
    for last in [100, 101] {
        assert_code(
            given_when::<Session>(
                &[],
                start(Some("123456")),
                &with(&|l| {
                    l.mfa_enabled = true;
                    l.mfa_step = Some(100);
                    l.last_mfa_step = Some(last);
                }),
            ),
            "invalid_mfa_code",
        );
    }
    assert_code(
        given_when::<Session>(
            &[],
            Command::Touch(Default::default()),
            &ctx(user(id, Role::Operator)),
        ),
        "not_found",
    );
}

#[test]
fn sessions_expire_and_time_out() {
    let id = UserId::new();
    let past = given_when::<Session>(&[], start(None), &login_ctx(id, true)).expect("start");
    let idle = IDLE_TIMEOUT.num_minutes() + 1;
    assert_code(
        given_when::<Session>(
            &past,
            Command::Touch(Default::default()),
            &ctx_at(user(id, Role::Operator), idle),
        ),
        "session_idle_timeout",
    );
    assert!(!is_live(
        &Session::replay(&past),
        t0() + Duration::minutes(idle)
    ));
    let mut kept_alive = past.clone();
    for step in 1..=60 {
        kept_alive.extend(
            given_when::<Session>(
                &kept_alive,
                Command::Touch(Default::default()),
                &ctx_at(user(id, Role::Operator), step * 25),
            )
            .expect("touch"),
        );
        if step * 25 >= 24 * 60 - 25 {
            break;
        }
    }
    assert_code(
        given_when::<Session>(
            &kept_alive,
            Command::Touch(Default::default()),
            &ctx_at(user(id, Role::Operator), 24 * 60 + 1),
        ),
        "session_expired",
    );
}
