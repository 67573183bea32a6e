//! Given / when / then tests of every aggregate, codec and catalogue tests,
//! and property tests. No services: `cargo test -p domain` runs in seconds.

mod catalogue;
mod codec;
mod conversation;
mod execution;
mod incident;
mod knowledge;
mod properties;
mod runbook;
mod session;
mod user;
mod workflow;

use chrono::{DateTime, TimeZone, Utc};
use domain::context::{Actor, Scopes};
use domain::ids::UserId;
use domain::values::Role;
use domain::{Aggregate, Context, DomainError};

pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 27, 12, 0, 0)
        .single()
        .expect("valid time")
}

pub fn user(id: UserId, role: Role) -> Actor {
    Actor::User {
        id,
        role,
        scopes: Scopes::SESSION,
    }
}

pub fn ctx(actor: Actor) -> Context {
    Context::new(t0(), actor)
}

pub fn ctx_at(actor: Actor, minutes: i64) -> Context {
    Context::new(t0() + chrono::Duration::minutes(minutes), actor)
}

/// Given these past events, when this command: the events it produces.
pub fn given_when<A: Aggregate>(
    past: &[A::Event],
    command: A::Command,
    ctx: &Context,
) -> Result<Vec<A::Event>, DomainError> {
    let state = A::replay(past);
    A::decide(&state, command, ctx)
}

/// Builds a history by deciding commands one after the other.
pub fn history<A: Aggregate>(steps: Vec<(A::Command, Context)>) -> Vec<A::Event> {
    let mut events = Vec::new();
    for (command, ctx) in steps {
        let state = A::replay(&events);
        let new = A::decide(&state, command, &ctx).expect("history step accepted");
        events.extend(new);
    }
    events
}

#[track_caller]
pub fn assert_code<T: std::fmt::Debug>(result: Result<T, DomainError>, code: &str) {
    match result {
        Err(e) => assert_eq!(e.code(), code, "{e}"),
        Ok(v) => panic!("expected {code}, got {v:?}"),
    }
}

/// Parses a command's payload from JSON, as the wire would.
pub fn json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("valid payload")
}
