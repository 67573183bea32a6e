//! The optional `Client-Ip` and `User-Agent` headers end up in the events'
//! metadata (and so in the audit log); a malformed address is left out.

use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{envelope, App};

async fn send(app: &App, token: &str, ip: &str, agent: &str) -> Uuid {
    let incident = Uuid::now_v7();
    let body = envelope(
        incident,
        json!({"title": "disk full", "description": "d", "severity": "low", "affected_services": ["api"]}),
    );
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Content-Type", "application/json");
    headers.insert("Authorization", format!("Bearer {token}").as_str());
    headers.insert("Client-Ip", ip);
    headers.insert("User-Agent", agent);
    let reply = app
        .client
        .request_with_headers(
            format!("{}.rpc.incident.open", app.prefix),
            headers,
            serde_json::to_vec(&body).expect("json").into(),
        )
        .await
        .expect("reply");
    let result: serde_json::Value = serde_json::from_slice(&reply.payload).expect("result");
    assert_eq!(result["status"], "accepted", "{result}");
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
            sqlx::query_scalar::<_, serde_json::Value>(
                "SELECT metadata FROM events WHERE stream_id = $1",
            )
            .bind(stream)
            .fetch_one(&pool)
            .await
            .expect("event")
        }
    };
    let recorded = metadata(good).await;
    assert_eq!(recorded["ip"], "2001:db8::7");
    assert_eq!(recorded["user_agent"], "agent-cli/2.1");
    let recorded = metadata(bad).await;
    assert!(recorded.get("ip").is_none(), "{recorded}");
    assert!(recorded.get("user_agent").is_none(), "{recorded}");
    app.finish().await;
}
