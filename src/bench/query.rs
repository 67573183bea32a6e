//! `bench query`: 32 concurrent clients reading the query API
//! (`GET /v1/conversations/{id}/messages`, `GET /v1/incidents`,
//! `GET /v1/dashboard/summary`) from an in-process query service, cached
//! (served from Redis) and uncached (`Cache-Control: no-cache`), beside a
//! bare Redis GET of a value of the same size (32 clients on 32
//! connections, as `redis-benchmark -c 32`; and on one multiplexed
//! connection, which pipelines them), a bare HTTP server answering the
//! same bytes to the same client, and the bare SQL the endpoint runs, at
//! the same concurrency, in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use command_service::Status;
use infra::Settings;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::append::{drive, RunResult};
use super::report::{Figure, Latencies};
use super::stack::Stack;
use crate::cli::BenchArgs;

const CLIENTS: usize = 32;
const MESSAGES: usize = 50;
const INCIDENTS: usize = 100;

/// One endpoint and the SQL it amounts to.
struct Endpoint {
    name: &'static str,
    path: String,
    sql: Vec<String>,
}

pub async fn run(args: &BenchArgs, settings: &Settings) -> anyhow::Result<Vec<Figure>> {
    let duration = Duration::from_secs_f64(args.seconds.max(0.1));
    let stack = Stack::start(settings, args.keep, false).await?;
    let (agent, bootstrap, base) = (&stack.agent, &stack.bootstrap, &stack.base);
    let (pool, redis_prefix, redis_url) = (&stack.pool, &stack.redis_prefix, &stack.redis_url);
    let progress = indicatif::ProgressBar::new_spinner();
    progress.enable_steady_tick(Duration::from_millis(200));
    progress.set_message("writing a conversation and incidents as commands");
    let token = agent.sign_up(bootstrap, "operator").await?;
    let conversation = Uuid::now_v7();
    let mut last = accept(
        agent
            .command(
                "conversation.start",
                conversation,
                json!({"title": "bench"}),
                &token,
            )
            .await?,
    )?;
    for i in 0..MESSAGES {
        last = accept(agent.command("conversation.append_message", conversation, json!({
            "message_id": Uuid::now_v7(), "role": if i % 2 == 0 { "user" } else { "assistant" },
            "content": "The deploy failed because a migration locked the orders table; I rolled it back.",
            "tokens_in": 812, "tokens_out": 164, "cost_usd": "0.00412"}), &token).await?)?;
    }
    for i in 0..INCIDENTS {
        let severity = ["critical", "high", "medium", "low"][i % 4];
        last = accept(agent.command("incident.open", Uuid::now_v7(), json!({
            "title": format!("Checkout latency above SLO ({i})"), "description": "p99 over 2 s for 10 minutes",
            "severity": severity, "affected_services": ["checkout", "payments"]}), &token).await?)?;
    }

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .build()?;
    let endpoints = [
        Endpoint {
            name: "messages",
            path: format!("/v1/conversations/{conversation}/messages"),
            sql: vec![format!(
                "SELECT id, conversation_id, sequence, role::text, content, tool_calls, tool_results, tokens_in, tokens_out,
                        cost_usd::float8, rating, feedback, created_at, rated_at
                   FROM read_model.messages WHERE conversation_id = '{conversation}' AND sequence > 0
                  ORDER BY sequence LIMIT 51"
            )],
        },
        Endpoint {
            name: "incidents",
            path: "/v1/incidents".into(),
            sql: vec!["SELECT id, title, description, severity::text, status::text, affected_services, blast_radius,
                              opened_by, assignee_id, note_count, mitigation_summary, root_cause, remediation_steps,
                              reopen_count, opened_at, mitigated_at, resolved_at, closed_at, time_to_mitigate_ms,
                              time_to_resolve_ms, updated_at
                         FROM read_model.incidents ORDER BY opened_at DESC, id DESC LIMIT 51"
                .into()],
        },
        Endpoint {
            name: "summary",
            path: "/v1/dashboard/summary".into(),
            sql: vec![
                "SELECT count(*) FROM read_model.active_sessions".into(),
                "SELECT severity::text, open_count, unassigned, oldest_opened_at FROM read_model.open_incidents_by_severity".into(),
                "SELECT count(*) FROM read_model.workflow_executions WHERE status IN ('pending', 'running')".into(),
                "SELECT count(*), coalesce(sum(tokens_in + tokens_out), 0), coalesce(sum(cost_usd), 0)::float8
                   FROM read_model.messages WHERE created_at >= now() - interval '7 days'".into(),
                "SELECT count(*), coalesce(sum(tokens_in + tokens_out), 0), coalesce(sum(cost_usd), 0)::float8
                   FROM read_model.messages WHERE created_at >= date_trunc('day', now())".into(),
                "SELECT name, generation, tx_id, seq FROM projection_checkpoints".into(),
            ],
        },
    ];
    // Every endpoint answered once at the last command's position, then
    // until Redis serves it (the Redis projection has passed it too).
    progress.set_message("waiting for the projections and the cache");
    let mut bodies = Vec::new();
    for endpoint in &endpoints {
        let url = format!("{base}{}", endpoint.path);
        let first = http
            .get(&url)
            .bearer_auth(&token)
            .header("X-Min-Position", &last)
            .send()
            .await?;
        anyhow::ensure!(first.status().is_success(), "{url}: {}", first.status());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let reply = http.get(&url).bearer_auth(&token).send().await?;
            let hit = reply.headers().get("x-cache").is_some_and(|v| v == "hit");
            let body = reply.bytes().await?;
            if hit {
                bodies.push(body);
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "{url} never came from the cache");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let redis = redis::Client::open(redis_url.as_str())?
        .get_connection_manager()
        .await?;
    let mut figures = Vec::new();
    for (endpoint, body) in endpoints.iter().zip(&bodies) {
        let url = format!("{base}{}", endpoint.path);
        progress.set_message(format!("{}: cached", endpoint.name));
        let mut cached = load(&http, &url, &token, false, duration).await?;
        progress.set_message(format!("{}: uncached", endpoint.name));
        let mut uncached = load(&http, &url, &token, true, duration).await?;
        progress.set_message(format!("{}: bare Redis GET", endpoint.name));
        let key = format!("{redis_prefix}bench:{}", endpoint.name);
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(body.as_ref())
            .query_async(&mut redis.clone())
            .await?;
        let mut bare_redis = redis_gets(redis_url, &key, duration).await?;
        let multiplexed = redis_gets_multiplexed(&redis, &key, duration).await?;
        progress.set_message(format!("{}: bare HTTP", endpoint.name));
        let (floor_url, floor) = http_floor(body.clone()).await?;
        let bare_http = load(&http, &floor_url, &token, false, duration).await;
        floor.abort();
        let bare_http = bare_http?;
        progress.set_message(format!("{}: bare SQL", endpoint.name));
        let mut bare_sql = sql(pool, &endpoint.sql, duration).await?;
        let n = endpoint.name;
        figures.push(Figure::compared(
            format!("query.{n}.cached.c32.per_s"),
            cached.events_per_s(),
            "req/s",
            format!("redis_get.c32.{}B.per_s", body.len()),
            bare_redis.events_per_s(),
        ));
        figures.push(Figure::compared(
            format!("query.{n}.cached.c32.per_s"),
            cached.events_per_s(),
            "req/s",
            format!("redis_get.c32.multiplexed.{}B.per_s", body.len()),
            multiplexed.events_per_s(),
        ));
        figures.push(Figure::compared(
            format!("query.{n}.cached.c32.per_s"),
            cached.events_per_s(),
            "req/s",
            format!("bare_http.c32.{}B.per_s", body.len()),
            bare_http.events_per_s(),
        ));
        figures.push(Figure::compared(
            format!("query.{n}.uncached.c32.per_s"),
            uncached.events_per_s(),
            "req/s",
            format!("bare_sql.{n}.c32.per_s"),
            bare_sql.events_per_s(),
        ));
        for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
            figures.push(Figure::compared(
                format!("query.{n}.cached.c32.{label}"),
                cached.latencies.quantile_ms(q),
                "ms",
                format!("redis_get.c32.{label}"),
                bare_redis.latencies.quantile_ms(q),
            ));
            figures.push(Figure::compared(
                format!("query.{n}.uncached.c32.{label}"),
                uncached.latencies.quantile_ms(q),
                "ms",
                format!("bare_sql.{n}.c32.{label}"),
                bare_sql.latencies.quantile_ms(q),
            ));
        }
    }
    progress.finish_and_clear();
    stack.finish().await?;
    Ok(figures)
}

fn accept(result: command_service::CommandResult) -> anyhow::Result<String> {
    anyhow::ensure!(
        result.status == Status::Accepted,
        "a setup command failed: {:?}",
        result.error
    );
    result
        .position
        .context("an accepted command without a position")
}

/// `CLIENTS` clients each sending GETs back to back for `duration`.
async fn load(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    uncached: bool,
    duration: Duration,
) -> anyhow::Result<RunResult> {
    let (http, url, token) = (
        http.clone(),
        Arc::new(url.to_string()),
        Arc::new(token.to_string()),
    );
    drive(CLIENTS, duration, |_| {
        let (http, url, token) = (http.clone(), url.clone(), token.clone());
        async move {
            let deadline = Instant::now() + duration;
            let mut latencies = Latencies::default();
            let mut n = 0u64;
            while Instant::now() < deadline {
                let mut request = http.get(url.as_str()).bearer_auth(token.as_str());
                if uncached {
                    request = request.header("Cache-Control", "no-cache");
                }
                let started = Instant::now();
                let reply = request.send().await?;
                let ok = reply.status().is_success();
                let _ = reply.bytes().await?;
                latencies.push(started.elapsed());
                anyhow::ensure!(ok, "{url} failed under load");
                n += 1;
            }
            Ok((n, latencies))
        }
    })
    .await
}

/// A server that answers every GET with `body` and does nothing else: the
/// floor of any read through HTTP with this client and server on these
/// cores (no credential, no cache, no database).
async fn http_floor(body: bytes::Bytes) -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let body = body.clone();
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    body,
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/", listener.local_addr()?);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, task))
}

/// 32 clients, each with its own connection (as `redis-benchmark -c 32`).
async fn redis_gets(url: &str, key: &str, duration: Duration) -> anyhow::Result<RunResult> {
    let client = redis::Client::open(url)?;
    let mut connections = Vec::new();
    for _ in 0..CLIENTS {
        connections.push(client.get_multiplexed_async_connection().await?);
    }
    let (connections, key) = (Arc::new(connections), Arc::new(key.to_string()));
    drive(CLIENTS, duration, |i| {
        let (mut conn, key) = (connections[i].clone(), key.clone());
        async move {
            let deadline = Instant::now() + duration;
            let mut latencies = Latencies::default();
            let mut n = 0u64;
            while Instant::now() < deadline {
                let started = Instant::now();
                let _: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(key.as_str())
                    .query_async(&mut conn)
                    .await?;
                latencies.push(started.elapsed());
                n += 1;
            }
            Ok((n, latencies))
        }
    })
    .await
}

/// 32 clients sharing one multiplexed connection (what the query service
/// itself uses): their GETs are pipelined on it.
async fn redis_gets_multiplexed(
    redis: &redis::aio::ConnectionManager,
    key: &str,
    duration: Duration,
) -> anyhow::Result<RunResult> {
    let key = Arc::new(key.to_string());
    drive(CLIENTS, duration, |_| {
        let (mut conn, key) = (redis.clone(), key.clone());
        async move {
            let deadline = Instant::now() + duration;
            let mut latencies = Latencies::default();
            let mut n = 0u64;
            while Instant::now() < deadline {
                let started = Instant::now();
                let _: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(key.as_str())
                    .query_async(&mut conn)
                    .await?;
                latencies.push(started.elapsed());
                n += 1;
            }
            Ok((n, latencies))
        }
    })
    .await
}

async fn sql(
    pool: &PgPool,
    statements: &[String],
    duration: Duration,
) -> anyhow::Result<RunResult> {
    let statements = Arc::new(statements.to_vec());
    drive(CLIENTS, duration, |_| {
        let (pool, statements) = (pool.clone(), statements.clone());
        async move {
            let deadline = Instant::now() + duration;
            let mut latencies = Latencies::default();
            let mut n = 0u64;
            while Instant::now() < deadline {
                let started = Instant::now();
                let mut conn = pool.acquire().await?;
                for statement in statements.iter() {
                    sqlx::query(statement).fetch_all(&mut *conn).await?;
                }
                latencies.push(started.elapsed());
                n += 1;
            }
            Ok((n, latencies))
        }
    })
    .await
}
