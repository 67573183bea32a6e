//! Two command-service instances on one database: each caches what it has
//! seen, and neither may answer from a stale cache.

use command_service::Status;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{config, envelope, fresh_prefix, App};

#[sqlx::test(migrations = "../migrations")]
async fn an_instance_never_answers_from_a_stale_cache(pool: PgPool) {
    let a = App::spawn(pool.clone()).await;
    let b_prefix = fresh_prefix();
    let b = App::spawn_with(pool.clone(), config(&b_prefix, &a.bootstrap)).await;
    let (_, token) = a.user("operator").await;
    let incident = Uuid::now_v7();

    let opened = a.rpc("incident.open", &envelope(incident, json!({"title": "t", "description": "d", "severity": "low", "affected_services": ["api"]})), Some(&token)).await;
    assert_eq!(opened.status, Status::Accepted);
    // B moves it on; A's cache still says "open".
    let assigned = b
        .rpc(
            "incident.assign",
            &envelope(incident, json!({"assignee_id": Uuid::now_v7()})),
            Some(&token),
        )
        .await;
    assert_eq!(assigned.status, Status::Accepted);
    // On A's cache alone this would be refused (not investigating): it must not be.
    let mitigated = a
        .rpc(
            "incident.mitigate",
            &envelope(incident, json!({"summary": "rolled back"})),
            Some(&token),
        )
        .await;
    assert_eq!(
        (mitigated.status, mitigated.version),
        (Status::Accepted, Some(3)),
        "{mitigated:?}"
    );

    // A client that knows the true version is not told it conflicts.
    let note = b.rpc("incident.add_note", &json!({"command_id": Uuid::now_v7(), "aggregate_id": incident, "expected_version": 3, "payload": {"text": "x"}}), Some(&token)).await;
    assert_eq!(
        (note.status, note.version),
        (Status::Accepted, Some(4)),
        "{note:?}"
    );
    let again = a.rpc("incident.add_note", &json!({"command_id": Uuid::now_v7(), "aggregate_id": incident, "expected_version": 4, "payload": {"text": "y"}}), Some(&token)).await;
    assert_eq!(
        (again.status, again.version),
        (Status::Accepted, Some(5)),
        "{again:?}"
    );
    // And one that is really stale is.
    let stale = b.rpc("incident.add_note", &json!({"command_id": Uuid::now_v7(), "aggregate_id": incident, "expected_version": 4, "payload": {"text": "z"}}), Some(&token)).await;
    assert_eq!(
        (stale.status, stale.version),
        (Status::Conflict, Some(5)),
        "{stale:?}"
    );

    // Interleaved appends from both keep every version.
    for i in 0..10 {
        let app = if i % 2 == 0 { &a } else { &b };
        let r = app
            .rpc(
                "incident.add_note",
                &envelope(incident, json!({"text": format!("n{i}")})),
                Some(&token),
            )
            .await;
        assert_eq!(
            (r.status, r.version),
            (Status::Accepted, Some(6 + i)),
            "{r:?}"
        );
    }
    b.finish().await;
    a.finish().await;
}
