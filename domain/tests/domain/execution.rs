use domain::context::WorkflowFacts;
use domain::execution::{Command, Event, Execution};
use domain::ids::{StepId, UserId, WorkflowId};
use domain::values::{ExecutionStatus, Role, StepStatus, WorkflowStatus};
use domain::{Aggregate, Context};
use serde_json::json;

use crate::{assert_code, ctx_at, given_when, json, user};

fn at(minutes: i64) -> Context {
    let mut c = ctx_at(user(UserId::new(), Role::Operator), minutes);
    c.workflow = Some(WorkflowFacts {
        version: 3,
        status: WorkflowStatus::Active,
        max_retries: 2,
    });
    c
}

fn start() -> Command {
    Command::Start(json(
        json!({"workflow_id": WorkflowId::new(), "trigger_source": "incident", "priority": 8}),
    ))
}

fn run(past: &mut Vec<Event>, command: Command, minutes: i64) -> Event {
    let new = given_when::<Execution>(past, command, &at(minutes)).expect("accepted");
    past.extend(new.clone());
    new.into_iter().last().expect("one event")
}

fn start_step(id: StepId) -> Command {
    Command::StartStep(json(json!({"step_id": id, "name": "restart pods"})))
}
fn complete_step(id: StepId) -> Command {
    Command::CompleteStep(json(json!({"step_id": id, "output": {"ok": true}})))
}
fn fail_step(id: StepId, retryable: bool) -> Command {
    Command::FailStep(json(
        json!({"step_id": id, "error": "timeout", "retryable": retryable}),
    ))
}
fn retry_step(id: StepId) -> Command {
    Command::RetryStep(json(json!({"step_id": id})))
}

#[test]
fn a_run_with_steps_records_versions_durations_and_progress() {
    let mut past = Vec::new();
    let Event::Started(s) = run(&mut past, start(), 0) else {
        panic!()
    };
    assert_eq!((s.workflow_version, s.priority, s.max_retries), (3, 8, 2));
    let a = StepId::new();
    let b = StepId::new();
    run(&mut past, start_step(a), 1);
    run(&mut past, start_step(b), 1);
    let Event::StepCompleted(c) = run(&mut past, complete_step(a), 3) else {
        panic!()
    };
    assert_eq!(
        (c.duration_ms, c.steps_succeeded, c.steps_total),
        (120_000, 1, 2)
    );
    run(&mut past, fail_step(b, true), 4);
    let Event::StepRetried(r) = run(&mut past, retry_step(b), 5) else {
        panic!()
    };
    assert_eq!((r.attempt, r.priority), (2, 8));
    run(&mut past, complete_step(b), 6);
    let Event::Completed(done) = run(
        &mut past,
        Command::Complete(json(json!({"outputs": {}}))),
        10,
    ) else {
        panic!()
    };
    assert_eq!(
        (done.status, done.duration_ms),
        (ExecutionStatus::Succeeded, 600_000)
    );
    assert_code(
        given_when::<Execution>(&past, start_step(StepId::new()), &at(11)),
        "execution_finished",
    );
}

#[test]
fn step_rules() {
    let mut past = Vec::new();
    run(&mut past, start(), 0);
    let a = StepId::new();
    assert_code(
        given_when::<Execution>(&past, complete_step(a), &at(1)),
        "step_not_found",
    );
    run(&mut past, start_step(a), 1);
    assert_code(
        given_when::<Execution>(&past, start_step(a), &at(1)),
        "step_already_started",
    );
    assert_code(
        given_when::<Execution>(&past, retry_step(a), &at(1)),
        "step_not_failed",
    );
    assert_code(
        given_when::<Execution>(&past, Command::Complete(json(json!({}))), &at(1)),
        "steps_still_running",
    );
    run(&mut past, fail_step(a, false), 2);
    assert_code(
        given_when::<Execution>(&past, complete_step(a), &at(2)),
        "step_not_running",
    );
    assert_code(
        given_when::<Execution>(&past, retry_step(a), &at(2)),
        "step_not_retryable",
    );
    assert_code(
        given_when::<Execution>(&past, Command::Complete(json(json!({}))), &at(2)),
        "steps_failed",
    );
    let Event::Failed(f) = run(
        &mut past,
        Command::Fail(json(json!({"error": "gave up"}))),
        3,
    ) else {
        panic!()
    };
    assert_eq!(f.status, ExecutionStatus::Failed);
    assert_code(
        given_when::<Execution>(&past, Command::Cancel(json(json!({"reason": "x"}))), &at(3)),
        "execution_finished",
    );
}

#[test]
fn retries_are_bounded_by_the_workflow() {
    let mut past = Vec::new();
    run(&mut past, start(), 0);
    let a = StepId::new();
    run(&mut past, start_step(a), 1);
    for _ in 0..2 {
        run(&mut past, fail_step(a, true), 2);
        run(&mut past, retry_step(a), 3);
    }
    run(&mut past, fail_step(a, true), 4);
    assert_code(
        given_when::<Execution>(&past, retry_step(a), &at(5)),
        "retries_exhausted",
    );
    assert_eq!(
        Execution::replay(&past).steps[&a].status,
        StepStatus::Failed
    );
    assert_eq!(Execution::replay(&past).steps[&a].attempt, 3);
}

#[test]
fn start_needs_an_active_workflow() {
    let mut c = at(0);
    c.workflow = None;
    assert_code(given_when::<Execution>(&[], start(), &c), "not_found");
    c.workflow = Some(WorkflowFacts {
        version: 1,
        status: WorkflowStatus::Draft,
        max_retries: 3,
    });
    assert_code(
        given_when::<Execution>(&[], start(), &c),
        "workflow_not_active",
    );
    let bad_priority = Command::Start(json(
        json!({"workflow_id": WorkflowId::new(), "trigger_source": "x", "priority": 11}),
    ));
    assert_code(
        given_when::<Execution>(&[], bad_priority, &at(0)),
        "invalid",
    );
    assert_code(
        given_when::<Execution>(&[], start_step(StepId::new()), &at(0)),
        "not_found",
    );
    let mut past = Vec::new();
    run(&mut past, start(), 0);
    assert_code(
        given_when::<Execution>(&past, start(), &at(0)),
        "already_exists",
    );
    let Event::Cancelled(x) = run(
        &mut past,
        Command::Cancel(json(json!({"reason": "operator"}))),
        1,
    ) else {
        panic!()
    };
    assert_eq!(x.error.as_deref(), Some("operator"));
    let viewer = ctx_at(user(UserId::new(), Role::Viewer), 0);
    assert_code(given_when::<Execution>(&[], start(), &viewer), "forbidden");
}
