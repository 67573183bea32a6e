//! The indexes the seed asks for are the ones the dashboard's queries run
//! on: each statement's plan, on tables with enough rows that a sequential
//! scan would be the planner's choice otherwise, names its index, for the
//! custom plan and the generic one PostgreSQL switches prepared statements
//! to.

use serde_json::Value;
use sqlx::PgPool;

use crate::Stack;

const ROWS: i64 = 20_000;

/// The index scans in `sql`'s plan, executed with `args`, once with a
/// custom plan and once with the generic one.
async fn plans(pool: &PgPool, sql: &str, types: &str, args: &str) -> Vec<String> {
    let mut conn = pool.acquire().await.expect("connection");
    let (types, args) = if types.is_empty() {
        (String::new(), String::new())
    } else {
        (format!("({types})"), format!("({args})"))
    };
    sqlx::raw_sql(&format!("PREPARE planned{types} AS {sql}"))
        .execute(&mut *conn)
        .await
        .expect("prepare");
    let mut found = Vec::new();
    for mode in ["force_custom_plan", "force_generic_plan"] {
        sqlx::raw_sql(&format!("SET plan_cache_mode = {mode}"))
            .execute(&mut *conn)
            .await
            .expect("plan mode");
        let plan: Value =
            sqlx::query_scalar(&format!("EXPLAIN (FORMAT JSON) EXECUTE planned{args}"))
                .fetch_one(&mut *conn)
                .await
                .expect("explain");
        found.push(format!("{mode}: {plan}"));
    }
    sqlx::raw_sql("DEALLOCATE planned; RESET plan_cache_mode")
        .execute(&mut *conn)
        .await
        .expect("deallocate");
    found
}

fn assert_uses(plans: &[String], index: &str) {
    for plan in plans {
        assert!(
            plan.contains(&format!("\"Index Name\":\"{index}\"")),
            "the plan does not use {index}: {plan}"
        );
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn the_dashboard_queries_run_on_their_indexes(pool: PgPool) {
    let stack = Stack::start(pool.clone()).await;
    // Signing someone up makes the projector create the read model.
    let (user, _) = stack.user("viewer").await;

    // 200 users' conversations over 100 days, a tag on one in ten.
    sqlx::raw_sql(&format!(
        "INSERT INTO read_model.conversations (id, user_id, status, tags, created_at, updated_at)
         SELECT gen_random_uuid(),
                CASE WHEN i % 200 = 0 THEN '{user}'::uuid
                     ELSE ('00000000-0000-0000-0000-' || lpad((i % 200)::text, 12, '0'))::uuid END,
                (CASE WHEN i % 10 = 0 THEN 'archived' ELSE 'active' END)::read_model.conversation_status,
                CASE WHEN i % 10 = 0 THEN ARRAY['billing'] ELSE ARRAY[]::text[] END,
                now() - i * interval '7 minutes', now()
           FROM generate_series(1, {ROWS}) AS i;
         INSERT INTO read_model.workflow_executions
                (id, workflow_id, workflow_version, status, trigger_source, priority, max_retries, started_at)
         SELECT ('00000000-0000-0000-0001-' || lpad(i::text, 12, '0'))::uuid, gen_random_uuid(), 1,
                'succeeded', 'manual', 5, 3, now() - i * interval '1 hour'
           FROM generate_series(1, {ROWS} / 10) AS i;
         INSERT INTO read_model.step_executions (id, execution_id, name, status, attempt, started_at)
         SELECT gen_random_uuid(),
                ('00000000-0000-0000-0001-' || lpad((1 + i % ({ROWS} / 10))::text, 12, '0'))::uuid,
                'step', (CASE WHEN i % 500 = 0 THEN 'running'
                              WHEN i % 777 = 0 THEN 'retrying' ELSE 'succeeded' END)::read_model.step_status,
                1, now() - i * interval '1 minute'
           FROM generate_series(1, {ROWS}) AS i;
         ANALYZE read_model.conversations, read_model.workflow_executions, read_model.step_executions;
         -- Commands over 100 days in the log (below every checkpoint: no
         -- projection reads them) and rejections beside them.
         INSERT INTO events (stream_id, version, generation, tx_id, seq, event_id, stream_type,
                             event_type, schema_version, payload, metadata, recorded_at,
                             command_id, command_events)
         SELECT gen_random_uuid(), 1, 1, 1, -i, gen_random_uuid(), 'test', 'test', 1, '\\x00',
                '{{}}', now() - ({ROWS} - i) * interval '7 minutes', gen_random_uuid(), 1
           FROM generate_series(1, {ROWS}) AS i;
         INSERT INTO command_results (command_id, command_type, actor, status, result, recorded_at)
         SELECT gen_random_uuid(), 'test', 'x', 'rejected', '{{}}', now() - i * interval '7 minutes'
           FROM generate_series(1, {ROWS}) AS i;
         ANALYZE events, command_results;"
    ))
    .execute(&pool)
    .await
    .expect("rows");

    use query_service::statements::{conversations_list_sql, ConversationsListShape as Shape};
    let list = conversations_list_sql;
    // A user's conversations, newest first; with a tag; the next page.
    let own = Shape {
        own: true,
        ..Shape::default()
    };
    assert_uses(
        &plans(&pool, &list(own), "uuid, int8", &format!("'{user}', 51")).await,
        "conversations_user_created",
    );
    let tagged = Shape { tag: true, ..own };
    assert_uses(
        &plans(
            &pool,
            &list(tagged),
            "uuid, text, int8",
            &format!("'{user}', 'billing', 51"),
        )
        .await,
        "conversations_user_created",
    );
    let next_page = Shape { after: true, ..own };
    assert_uses(
        &plans(
            &pool,
            &list(next_page),
            "uuid, timestamptz, uuid, int8",
            &format!("'{user}', now() - interval '30 days', '{user}', 51"),
        )
        .await,
        "conversations_user_created",
    );
    // Everyone's (an administrator), newest first, and the next page.
    assert_uses(
        &plans(&pool, &list(Shape::default()), "int8", "51").await,
        "conversations_created",
    );
    let all_next = Shape {
        after: true,
        ..Shape::default()
    };
    assert_uses(
        &plans(
            &pool,
            &list(all_next),
            "timestamptz, uuid, int8",
            &format!("now() - interval '30 days', '{user}', 51"),
        )
        .await,
        "conversations_created",
    );
    // Steps running or retrying, and the oldest of them.
    assert_uses(
        &plans(&pool, query_service::statements::active_steps_sql, "", "").await,
        "steps_status_started",
    );

    // The commands series reads both places by time (the log by its BRIN).
    let commands = query_service::statements::series_sql("commands").expect("a metric");
    let plan = plans(
        &pool,
        commands,
        "float8, timestamptz, timestamptz, text",
        "3600, now() - interval '1 day', now(), NULL",
    )
    .await;
    assert_uses(&plan, "events_recorded_at");
    assert_uses(&plan, "command_results_recorded_at");

    // The time series: a day's range on each metric's time column.
    for (metric, index) in [
        ("conversations", "conversations_created"),
        ("executions_started", "executions_started"),
        ("executions_finished", "executions_finished"),
    ] {
        let sql = query_service::statements::series_sql(metric).expect("a metric");
        assert_uses(
            &plans(
                &pool,
                sql,
                "float8, timestamptz, timestamptz",
                "3600, now() - interval '1 day', now()",
            )
            .await,
            index,
        );
    }

    // The summary reports them.
    let (_, admin) = stack.user("admin").await;
    let summary = stack.get("/v1/dashboard/summary", &admin).await;
    let steps = &summary.body["active_steps"];
    assert_eq!(steps["running"], serde_json::json!(ROWS / 500), "{steps}");
    let retrying = (1..=ROWS).filter(|i| i % 777 == 0 && i % 500 != 0).count();
    assert_eq!(steps["retrying"], serde_json::json!(retrying), "{steps}");
    assert!(steps["oldest_started_at"].is_string(), "{steps}");
    stack.finish().await;
}
