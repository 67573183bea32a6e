//! Read-replica routing: reads go to the replica; a request whose
//! `X-Min-Position` the replica has not replayed, or a replica that is
//! down, is answered from the primary.

use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgPool};
use uuid::Uuid;

use crate::{Options, Stack};

#[sqlx::test(migrations = "../migrations")]
async fn reads_prefer_the_replica_and_fall_back(pool: PgPool) {
    // A stand-in replica that has replayed nothing: a second database with
    // the schema and no events (a real streaming replica is read-only and
    // behind by its replay lag; what matters here is that it is behind).
    let name = format!("replica_{}", Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect("postgres://postgres@127.0.0.1:5432/postgres")
        .await
        .expect("connect");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create replica database");
    let replica_url = format!("postgres://postgres@127.0.0.1:5432/{name}");
    let replica = PgPoolOptions::new()
        .max_connections(4)
        .connect(&replica_url)
        .await
        .expect("replica");
    sqlx::migrate!("../migrations")
        .run(&replica)
        .await
        .expect("migrate replica");

    let stack = Stack::start_with(
        pool.clone(),
        Options {
            replica: Some(replica.clone()),
            ..Options::default()
        },
    )
    .await;
    let (_, alice) = stack.user("operator").await;
    let incident = Uuid::now_v7();
    let opened = stack
        .ok(
            "incident.open",
            incident,
            json!({"title": "t", "description": "d", "severity": "low", "affected_services": ["x"]}),
            &alice,
        )
        .await;
    // Without a position: the replica answers (it has nothing).
    let from_replica = stack.get("/v1/incidents", &alice).await;
    assert_eq!(from_replica.status, 200);
    assert_eq!(from_replica.ids().len(), 0, "read from the (empty) replica");
    assert!(
        stack
            .metric("copilot_http_reads_total{target=\"replica\"}")
            .await
            >= 1.0
    );
    // With the command's position: the replica is behind, the primary answers.
    let fresh = stack.get_at("/v1/incidents", &alice, &opened).await;
    assert_eq!(fresh.ids(), vec![incident.to_string()]);
    assert!(
        stack
            .metric("copilot_http_replica_fallbacks_total{reason=\"behind\"}")
            .await
            >= 1.0
    );

    // The replica goes away: reads fall back to the primary.
    replica.close().await;
    let reply = stack
        .get(&format!("/v1/incidents/{incident}"), &alice)
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert!(
        stack
            .metric("copilot_http_replica_fallbacks_total{reason=\"down\"}")
            .await
            >= 1.0
    );
    stack.finish().await;
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .expect("drop replica database");
}
