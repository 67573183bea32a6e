//! `GET /healthz` (the process answers) and `GET /readyz` (every
//! dependency answers and the projections are not far behind).

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::db::LAG_MS_SQL;
use crate::state::AppState;

/// A projection further behind than this makes the service not ready.
pub const MAX_LAG: Duration = Duration::from_secs(60);
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Health {
    pub nats: Option<async_nats::Client>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    pub status: String,
    pub checks: Vec<Check>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Liveness {
    pub status: String,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Liveness)))]
pub async fn healthz() -> Json<Liveness> {
    Json(Liveness {
        status: "ok".into(),
    })
}

fn check(name: &str, result: Result<String, String>) -> Check {
    match result {
        Ok(detail) => Check {
            name: name.into(),
            ok: true,
            detail,
        },
        Err(detail) => Check {
            name: name.into(),
            ok: false,
            detail,
        },
    }
}

async fn timed<F: std::future::Future<Output = Result<String, String>>>(
    f: F,
) -> Result<String, String> {
    tokio::time::timeout(CHECK_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())))
}

/// Every dependency: PostgreSQL (and the replica), Redis, NATS, the vector
/// store, and how far behind the projections are.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let mut checks = Vec::new();
    let db = &state.db;
    checks.push(check(
        "postgres",
        timed(async {
            sqlx::query("SELECT 1")
                .execute(&db.primary)
                .await
                .map(|_| {
                    format!(
                        "pool {} connections, {} idle",
                        db.primary.size(),
                        db.primary.num_idle()
                    )
                })
                .map_err(|e| e.to_string())
        })
        .await,
    ));
    if let Some(replica) = &db.replica {
        // Reads fall back to the primary, so a replica that is down is
        // reported but does not make the service unready.
        let result = timed(async {
            sqlx::query("SELECT 1")
                .execute(replica)
                .await
                .map(|_| "answers".to_string())
                .map_err(|e| e.to_string())
        })
        .await;
        checks.push(Check {
            name: "postgres_replica".into(),
            ok: true,
            detail: match result {
                Ok(d) => d,
                Err(e) => format!("down, reads use the primary: {e}"),
            },
        });
    }
    checks.push(check(
        "redis",
        timed(async {
            let mut conn = state.cache.connection().ok_or("no Redis configured")?;
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .map_err(|e| e.to_string())
        })
        .await,
    ));
    if let Some(nats) = &state.health.nats {
        let connected = nats.connection_state() == async_nats::connection::State::Connected;
        checks.push(check(
            "nats",
            if connected {
                Ok("connected".into())
            } else {
                Err(format!("{}", nats.connection_state()))
            },
        ));
    }
    if let Some(search) = &state.search {
        checks.push(check(
            "vector_store",
            timed(async {
                let store = (search.store)().await.map_err(|e| e.to_string())?;
                let mut counts = Vec::with_capacity(vectors::Collection::ALL.len());
                for collection in vectors::Collection::ALL {
                    let n = store.count(collection).await.map_err(|e| e.to_string())?;
                    counts.push(format!("{collection} {n}"));
                }
                Ok(format!(
                    "{} store, points: {}",
                    store.kind(),
                    counts.join(", ")
                ))
            })
            .await,
        ));
    }
    checks.push(check("projections", timed(lag(&state)).await));
    let ready = checks.iter().all(|c| c.ok);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Readiness {
        status: if ready { "ready" } else { "not_ready" }.into(),
        checks,
    };
    (status, Json(body)).into_response()
}

/// The age of the oldest event each SQL projection has not applied yet.
async fn lag(state: &AppState) -> Result<String, String> {
    let rows: Vec<(String, i64, Option<String>)> = sqlx::query_as(&format!(
        "SELECT p.name, {LAG_MS_SQL}, s.stopped
           FROM (VALUES ('relational'), ('audit')) AS p (name)
           LEFT JOIN projection_checkpoints c ON c.name = p.name
           LEFT JOIN projection_status s ON s.name = p.name"
    ))
    .fetch_all(&state.db.primary)
    .await
    .map_err(|e| e.to_string())?;
    let mut parts = Vec::new();
    let mut ok = true;
    for (name, lag_ms, stopped) in rows {
        if let Some(reason) = stopped {
            ok = false;
            parts.push(format!("{name} stopped: {reason}"));
        } else {
            ok &= u128::try_from(lag_ms).unwrap_or(0) <= MAX_LAG.as_millis();
            parts.push(format!("{name} {lag_ms} ms behind"));
        }
    }
    let text = parts.join("; ");
    if ok {
        Ok(text)
    } else {
        Err(text)
    }
}
