use domain::ids::UserId;
use domain::runbook::{Command, Event, Runbook};
use domain::values::Role;
use domain::Aggregate;
use serde_json::json;

use crate::{assert_code, ctx, given_when, history, json, user};

fn op() -> domain::Context {
    ctx(user(UserId::new(), Role::Operator))
}

#[test]
fn runbook_lifecycle_with_success_counts() {
    let mut past = history::<Runbook>(vec![(
        Command::Create(json(
            json!({"name": "db failover", "description": "promote replica", "trigger_conditions": {"alert": "db_down"}, "steps": ["promote", "repoint"]}),
        )),
        op(),
    )]);
    past.extend(
        given_when::<Runbook>(
            &past,
            Command::Update(json(json!({"steps": ["promote", "repoint", "verify"]}))),
            &op(),
        )
        .expect("update"),
    );
    assert_eq!(Runbook::replay(&past).version, 2);
    for ok in [true, false, true] {
        past.extend(
            given_when::<Runbook>(
                &past,
                Command::RecordExecution(json(json!({"succeeded": ok, "duration_ms": 1200}))),
                &op(),
            )
            .expect("record"),
        );
    }
    let Some(Event::ExecutionRecorded(r)) = past.last() else {
        panic!()
    };
    assert_eq!((r.execution_count, r.success_count), (3, 2));
    past.extend(
        given_when::<Runbook>(&past, Command::Archive(Default::default()), &op()).expect("archive"),
    );
    assert_code(
        given_when::<Runbook>(&past, Command::Archive(Default::default()), &op()),
        "runbook_archived",
    );
}

#[test]
fn runbook_refusals() {
    let create = |steps: serde_json::Value| {
        Command::Create(json(
            json!({"name": "n", "description": "d", "trigger_conditions": {}, "steps": steps}),
        ))
    };
    assert_code(
        given_when::<Runbook>(&[], create(json!([])), &op()),
        "invalid",
    );
    assert_code(
        given_when::<Runbook>(&[], Command::Archive(Default::default()), &op()),
        "not_found",
    );
    assert_code(
        given_when::<Runbook>(
            &[],
            create(json!(["a"])),
            &ctx(user(UserId::new(), Role::Viewer)),
        ),
        "forbidden",
    );
    let past = history::<Runbook>(vec![(create(json!(["a"])), op())]);
    assert_code(
        given_when::<Runbook>(&past, create(json!(["a"])), &op()),
        "already_exists",
    );
    assert_code(
        given_when::<Runbook>(&past, Command::Update(json(json!({}))), &op()),
        "nothing_to_update",
    );
    assert_code(
        given_when::<Runbook>(&past, Command::Update(json(json!({"steps": []}))), &op()),
        "invalid",
    );
    assert_code(
        given_when::<Runbook>(
            &past,
            Command::RecordExecution(json(
                json!({"succeeded": true, "duration_ms": 100_000_000_000u64}),
            )),
            &op(),
        ),
        "invalid",
    );
}
