use std::time::Duration;

use command_service::{RateLimitConfig, Status};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{config, envelope, fresh_prefix, App};

fn open_incident() -> serde_json::Value {
    envelope(
        Uuid::now_v7(),
        json!({"title": "t", "description": "d", "severity": "low", "affected_services": ["api"]}),
    )
}

/// Opens three incidents, each accepted.
async fn open_three(app: &App, token: &str) {
    for _ in 0..3 {
        let opened = app
            .rpc("incident.open", &open_incident(), Some(token))
            .await;
        assert_eq!(opened.status, Status::Accepted, "{opened:?}");
    }
}

/// A service whose commands are limited to `limit` a minute by Redis at `redis_url`.
async fn limited(pool: PgPool, redis_url: &str, limit: u32) -> App {
    let prefix = fresh_prefix();
    let mut cfg = config(&prefix, &format!("boot-{}", Uuid::new_v4()));
    cfg.rate_limit = Some(RateLimitConfig::with_signin_defaults(
        redis_url,
        format!("test:{prefix}:ratelimit:"),
        limit,
        Duration::from_secs(60),
    ));
    App::spawn_with(pool, cfg).await
}

#[sqlx::test(migrations = "../migrations")]
async fn each_principal_is_limited_by_a_sliding_window(pool: PgPool) {
    let app = limited(pool, "redis://127.0.0.1:6379", 3).await;
    let boot = app.bootstrap.clone();
    open_three(&app, &boot).await;
    let before = app.event_count().await;
    let limited = app
        .rpc("incident.open", &open_incident(), Some(&boot))
        .await;
    assert_eq!(limited.status, Status::RateLimited, "{limited:?}");
    let retry = limited
        .error
        .and_then(|e| e.details)
        .and_then(|d| d["retry_after_ms"].as_u64())
        .expect("retry_after_ms");
    assert!(retry > 0 && retry <= 60_000, "{retry}");
    assert_eq!(app.event_count().await, before, "nothing appended");
    app.finish().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn commands_still_work_without_redis(pool: PgPool) {
    // Nothing listens on port 1: the limit fails open.
    let app = limited(pool, "redis://127.0.0.1:1", 1).await;
    let boot = app.bootstrap.clone();
    open_three(&app, &boot).await;
    app.finish().await;
}
