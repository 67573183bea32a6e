use domain::ids::{ProjectId, UserId};
use domain::knowledge::{Command, Event, Knowledge};
use domain::values::Role;
use serde_json::json;

use crate::{assert_code, ctx, given_when, history, json, user};

fn op() -> domain::Context {
    ctx(user(UserId::new(), Role::Operator))
}

fn code() -> Command {
    Command::IndexCode(json(
        json!({"project_id": ProjectId::new(), "file_path": "src/main.rs", "language": "Rust", "content": "fn main() {}"}),
    ))
}

fn document(embedding: Option<Vec<f32>>) -> Command {
    Command::IndexDocument(json(
        json!({"title": "Runbook: failover", "content": "Promote the replica.", "embedding": embedding}),
    ))
}

#[test]
fn index_reindex_remove() {
    let mut past = history::<domain::knowledge::Knowledge>(vec![(code(), op())]);
    let again = given_when::<Knowledge>(&past, code(), &op()).expect("re-index");
    let Event::CodeIndexed(c) = &again[0] else {
        panic!()
    };
    assert_eq!((c.revision, c.language.as_str()), (2, "rust"));
    past.extend(again);
    assert_code(
        given_when::<Knowledge>(&past, document(None), &op()),
        "kind_mismatch",
    );
    let removed =
        given_when::<Knowledge>(&past, Command::Remove(Default::default()), &op()).expect("remove");
    let Event::Removed(r) = &removed[0] else {
        panic!()
    };
    assert_eq!(r.kind, "code");
    past.extend(removed);
    assert_code(given_when::<Knowledge>(&past, code(), &op()), "not_found");
}

#[test]
fn knowledge_refusals() {
    assert_code(
        given_when::<Knowledge>(&[], Command::Remove(Default::default()), &op()),
        "not_found",
    );
    assert_code(
        given_when::<Knowledge>(&[], document(Some(vec![0.5; 3])), &op()),
        "invalid",
    );
    assert!(given_when::<Knowledge>(&[], document(Some(vec![0.5; 384])), &op()).is_ok());
    assert_code(
        given_when::<Knowledge>(&[], code(), &ctx(user(UserId::new(), Role::Viewer))),
        "forbidden",
    );
}
