use domain::ids::UserId;
use domain::values::{Role, WorkflowStatus};
use domain::workflow::{Command, Event, Workflow};
use domain::Aggregate;
use serde_json::json;

use crate::{assert_code, ctx, given_when, history, json, user};

fn op() -> domain::Context {
    ctx(user(UserId::new(), Role::Operator))
}

fn created() -> Vec<Event> {
    history::<Workflow>(vec![(
        Command::Create(json(
            json!({"name": "restart", "definition": {"steps": ["a"], "max_retries": 2}, "tags": ["ops"]}),
        )),
        op(),
    )])
}

#[test]
fn create_update_activate_deactivate_delete() {
    let mut past = created();
    let Event::Created(c) = &past[0] else {
        panic!()
    };
    assert_eq!((c.version, c.max_retries), (1, 2));
    let updated = given_when::<Workflow>(
        &past,
        Command::Update(json(json!({"definition": {"steps": ["a", "b"]}}))),
        &op(),
    )
    .expect("update");
    let Event::Updated(u) = &updated[0] else {
        panic!()
    };
    assert_eq!(
        (u.version, u.max_retries),
        (2, 3),
        "a new version; default retries when the definition drops them"
    );
    past.extend(updated);
    past.extend(
        given_when::<Workflow>(&past, Command::Activate(Default::default()), &op())
            .expect("activate"),
    );
    assert_eq!(Workflow::replay(&past).status, Some(WorkflowStatus::Active));
    assert_code(
        given_when::<Workflow>(&past, Command::Activate(Default::default()), &op()),
        "workflow_already_active",
    );
    past.extend(
        given_when::<Workflow>(&past, Command::Deactivate(Default::default()), &op())
            .expect("deactivate"),
    );
    assert_code(
        given_when::<Workflow>(&past, Command::Deactivate(Default::default()), &op()),
        "workflow_not_active",
    );
    past.extend(
        given_when::<Workflow>(&past, Command::Delete(Default::default()), &op()).expect("delete"),
    );
    assert_code(
        given_when::<Workflow>(&past, Command::Activate(Default::default()), &op()),
        "workflow_deleted",
    );
    assert_code(
        given_when::<Workflow>(&past, Command::Update(json(json!({"tags": ["x"]}))), &op()),
        "workflow_deleted",
    );
}

#[test]
fn workflow_refusals() {
    let past = created();
    assert_code(
        given_when::<Workflow>(
            &past,
            Command::Create(json(json!({"name": "x", "definition": {}}))),
            &op(),
        ),
        "already_exists",
    );
    assert_code(
        given_when::<Workflow>(&past, Command::Update(json(json!({}))), &op()),
        "nothing_to_update",
    );
    assert_code(
        given_when::<Workflow>(
            &past,
            Command::Update(json(json!({"definition": {"max_retries": 99}}))),
            &op(),
        ),
        "invalid",
    );
    assert_code(
        given_when::<Workflow>(
            &[],
            Command::Create(json(json!({"name": "x", "definition": [1]}))),
            &op(),
        ),
        "invalid",
    );
    assert_code(
        given_when::<Workflow>(&[], Command::Activate(Default::default()), &op()),
        "not_found",
    );
    assert_code(
        given_when::<Workflow>(
            &[],
            Command::Create(json(json!({"name": "x", "definition": {}}))),
            &ctx(user(UserId::new(), Role::Viewer)),
        ),
        "forbidden",
    );
}
