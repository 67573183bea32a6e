use domain::ids::UserId;
use domain::incident::{Command, Event, Incident};
use domain::values::{IncidentStatus, Role, Severity};
use domain::Aggregate;
use serde_json::json;

use crate::{assert_code, ctx, ctx_at, given_when, json, user};

fn operator() -> domain::Context {
    ctx(user(UserId::new(), Role::Operator))
}

fn open() -> Command {
    Command::Open(json(json!({
        "title": "Checkout 500s", "description": "Errors after deploy", "severity": "high",
        "affected_services": ["checkout", "payments"]
    })))
}

fn step(past: &mut Vec<Event>, command: Command, minutes: i64) {
    let actor = ctx_at(user(UserId::new(), Role::Operator), minutes);
    let new = given_when::<Incident>(past, command, &actor).expect("step accepted");
    past.extend(new);
}

fn assign(to: UserId) -> Command {
    Command::Assign(json(json!({ "assignee_id": to })))
}

fn resolve() -> Command {
    Command::Resolve(json(
        json!({"root_cause": "bad migration", "remediation_steps": ["roll back", "add index"]}),
    ))
}

#[test]
fn full_lifecycle_with_facts_for_projections() {
    let mut past = Vec::new();
    step(&mut past, open(), 0);
    assert_eq!(Incident::replay(&past).status, Some(IncidentStatus::Open));
    step(&mut past, assign(UserId::new()), 1);
    assert_eq!(
        Incident::replay(&past).status,
        Some(IncidentStatus::Investigating)
    );
    step(
        &mut past,
        Command::ChangeSeverity(json(json!({"severity": "critical"}))),
        2,
    );
    let Some(Event::SeverityChanged(s)) = past.last() else {
        panic!()
    };
    assert_eq!((s.from, s.to), (Severity::High, Severity::Critical));
    step(
        &mut past,
        Command::AddNote(json(json!({"text": "rolling back"}))),
        3,
    );
    step(
        &mut past,
        Command::Mitigate(json(json!({"summary": "rolled back"}))),
        10,
    );
    step(&mut past, resolve(), 60);
    let Some(Event::Resolved(r)) = past.last() else {
        panic!()
    };
    assert_eq!(r.time_to_resolve_ms, 60 * 60 * 1000);
    assert_eq!(r.severity, Severity::Critical);
    assert_eq!(
        r.affected_services,
        vec!["checkout".to_string(), "payments".to_string()]
    );
    step(&mut past, Command::Close(Default::default()), 61);
    step(
        &mut past,
        Command::Reopen(json(json!({"reason": "errors again"}))),
        62,
    );
    assert_eq!(
        Incident::replay(&past).status,
        Some(IncidentStatus::Investigating)
    );
}

#[test]
fn state_machine_refusals() {
    let mut past = Vec::new();
    step(&mut past, open(), 0);
    assert_code(
        given_when::<Incident>(&past, open(), &operator()),
        "already_exists",
    );
    assert_code(
        given_when::<Incident>(
            &past,
            Command::Mitigate(json(json!({"summary": "x"}))),
            &operator(),
        ),
        "incident_not_investigating",
    );
    assert_code(
        given_when::<Incident>(&past, resolve(), &operator()),
        "incident_not_investigating",
    );
    assert_code(
        given_when::<Incident>(&past, Command::Close(Default::default()), &operator()),
        "incident_not_resolved",
    );
    assert_code(
        given_when::<Incident>(
            &past,
            Command::Reopen(json(json!({"reason": "x"}))),
            &operator(),
        ),
        "incident_not_resolved",
    );
    assert_code(
        given_when::<Incident>(
            &past,
            Command::ChangeSeverity(json(json!({"severity": "high"}))),
            &operator(),
        ),
        "severity_unchanged",
    );
    let assignee = UserId::new();
    step(&mut past, assign(assignee), 1);
    assert_code(
        given_when::<Incident>(&past, assign(assignee), &operator()),
        "already_assigned",
    );
    step(
        &mut past,
        Command::Mitigate(json(json!({"summary": "x"}))),
        2,
    );
    assert_code(
        given_when::<Incident>(
            &past,
            Command::Mitigate(json(json!({"summary": "x"}))),
            &operator(),
        ),
        "incident_already_mitigated",
    );
    step(&mut past, resolve(), 3);
    assert_code(
        given_when::<Incident>(&past, resolve(), &operator()),
        "incident_already_resolved",
    );
    assert_code(
        given_when::<Incident>(&past, assign(UserId::new()), &operator()),
        "incident_already_resolved",
    );
    step(&mut past, Command::Close(Default::default()), 4);
    assert_code(
        given_when::<Incident>(&past, Command::Close(Default::default()), &operator()),
        "incident_already_closed",
    );
    assert_code(
        given_when::<Incident>(
            &past,
            Command::AddNote(json(json!({"text": "x"}))),
            &operator(),
        ),
        "incident_closed",
    );
    assert_code(
        given_when::<Incident>(
            &past,
            Command::ChangeSeverity(json(json!({"severity": "low"}))),
            &operator(),
        ),
        "incident_closed",
    );
}

#[test]
fn viewers_and_strangers_cannot_change_incidents() {
    let viewer = ctx(user(UserId::new(), Role::Viewer));
    assert_code(given_when::<Incident>(&[], open(), &viewer), "forbidden");
    assert_code(
        given_when::<Incident>(&[], open(), &ctx(domain::Actor::Anonymous)),
        "forbidden",
    );
    assert_code(
        given_when::<Incident>(&[], assign(UserId::new()), &operator()),
        "not_found",
    );
    let no_services = Command::Open(json(
        json!({"title": "t", "description": "d", "severity": "low", "affected_services": []}),
    ));
    assert_code(
        given_when::<Incident>(&[], no_services, &operator()),
        "invalid",
    );
}
