//! The optional `Client-Ip` and `User-Agent` headers end up in the events'
//! metadata: as fact (and so in the audit log) when a trusted agent sent
//! the command, as the client's claim otherwise; a malformed address is
//! left out.

use command_service::Status;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{config, envelope, fresh_prefix, App};

/// Metadata as stored holds the client's address and program sealed with
/// the actor's key (never in the clear); opened here as a reader would.
async fn opened(pool: &PgPool, mut stored: Value) -> Value {
    for field in ["ip", "user_agent", "claimed_ip", "claimed_user_agent"] {
        if let Some(text) = stored.get(field).and_then(Value::as_str) {
            assert!(
                text.starts_with("sealed:"),
                "{field} in the clear: {stored}"
            );
        }
    }
    eventstore::data_keys::DataKeys::new(pool.clone(), crate::master_keys())
        .open_json(&mut stored)
        .await
        .expect("opens");
    stored
}

async fn send(app: &App, token: &str, ip: &str, agent: &str) -> Uuid {
    let incident = Uuid::now_v7();
    let body = envelope(
        incident,
        json!({"title": "disk full", "description": "d", "severity": "low", "affected_services": ["api"]}),
    );
    let result = app
        .rpc_with(
            "incident.open",
            &body,
            Some(token),
            &[("Client-Ip", ip), ("User-Agent", agent)],
        )
        .await;
    assert_eq!(result.status, Status::Accepted, "{result:?}");
    incident
}

#[sqlx::test(migrator = "infra::postgres::MIGRATOR")]
async fn client_address_and_program_are_recorded(pool: PgPool) {
    let app = App::spawn(pool.clone()).await;
    let (_, token) = app.user("operator").await;

    let good = send(&app, &token, " 2001:db8::7 ", "agent-cli/2.1").await;
    let bad = send(&app, &token, "not an address", "").await;

    let metadata = |stream: Uuid| {
        let pool = pool.clone();
        async move {
            let stored = sqlx::query_scalar::<_, serde_json::Value>(
                "SELECT metadata FROM events WHERE stream_id = $1",
            )
            .bind(stream)
            .fetch_one(&pool)
            .await
            .expect("event");
            opened(&pool, stored).await
        }
    };
    let recorded = metadata(good).await;
    // An ordinary user's headers are its claim, not fact.
    assert_eq!(recorded["claimed_ip"], "2001:db8::7");
    assert_eq!(recorded["claimed_user_agent"], "agent-cli/2.1");
    assert!(recorded.get("ip").is_none(), "{recorded}");
    let recorded = metadata(bad).await;
    for field in ["ip", "user_agent", "claimed_ip", "claimed_user_agent"] {
        assert!(recorded.get(field).is_none(), "{recorded}");
    }
    app.finish().await;
}

/// `Client-Ip` and `User-Agent` are the client's claim unless a trusted
/// agent sent the command.
#[sqlx::test(migrations = "../migrations")]
async fn client_headers_are_claims_unless_a_trusted_agent_sends_them(pool: PgPool) {
    let agent = Uuid::now_v7();
    let prefix = fresh_prefix();
    let mut cfg = config(&prefix, &format!("boot-{}", Uuid::new_v4()));
    cfg.trusted_agents = vec![agent];
    let app = App::spawn_with(pool, cfg).await;
    let boot = app.bootstrap.clone();
    let registered = app
        .rpc(
            "user.register",
            &envelope(agent, json!({"email": "gateway@example.com", "display_name": "Gateway", "password": "correct horse", "role": "operator"})),
            Some(&boot),
        )
        .await;
    assert_eq!(registered.status, Status::Accepted);
    let agent_token = app
        .sign_in("gateway@example.com", "correct horse", None)
        .await
        .data
        .and_then(|d| d["token"].as_str().map(str::to_string))
        .expect("token");
    let (_, user_token) = app.user("operator").await;
    for (token, vouched) in [(&agent_token, true), (&user_token, false)] {
        let body = envelope(
            Uuid::now_v7(),
            json!({"title": "t", "description": "d", "severity": "low", "affected_services": ["api"]}),
        );
        let result = app
            .rpc_with(
                "incident.open",
                &body,
                Some(token),
                &[("Client-Ip", "203.0.113.9"), ("User-Agent", "claims/1.0")],
            )
            .await;
        assert_eq!(result.status, Status::Accepted, "{result:?}");
        let metadata: Value =
            sqlx::query_scalar("SELECT metadata FROM events WHERE command_id = $1")
                .bind(result.command_id)
                .fetch_one(&app.pool)
                .await
                .expect("metadata");
        let metadata = opened(&app.pool, metadata).await;
        let (fact, claim) = if vouched {
            ("ip", "claimed_ip")
        } else {
            ("claimed_ip", "ip")
        };
        assert_eq!(metadata[fact], json!("203.0.113.9"), "{metadata}");
        assert!(metadata.get(claim).is_none(), "{metadata}");
    }
    app.finish().await;
}
