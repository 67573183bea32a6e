//! The seed's columns that the first slice lacked, each from the command
//! through its event and the read model to the API: a session's context, a
//! conversation's model configuration, a workflow's environment. Each is
//! checked on the way in: a bad value is refused naming its field and
//! changes nothing.

use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::Stack;
use command_service::Status;

/// The payload of the event `event_type` in `stream`, as JSON.
async fn event(pool: &PgPool, stream: Uuid, event_type: &str) -> Value {
    let mut payload: Vec<u8> = sqlx::query_scalar(
        "SELECT payload FROM events WHERE stream_id = $1 AND event_type = $2 ORDER BY version DESC LIMIT 1",
    )
    .bind(stream)
    .bind(event_type)
    .fetch_one(pool)
    .await
    .unwrap_or_else(|e| panic!("no {event_type} in {stream}: {e}"));
    // Personal fields are sealed in the row; opened as every reader does.
    eventstore::data_keys::DataKeys::new(pool.clone(), crate::master_keys())
        .open_payload(&mut payload)
        .await
        .expect("opens");
    domain::codec::decode(&payload).expect("a MessagePack payload")
}

async fn events_in(pool: &PgPool, stream: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE stream_id = $1")
        .bind(stream)
        .fetch_one(pool)
        .await
        .expect("count")
}

/// A command refused as invalid, naming `field`.
fn refused(result: &command_service::CommandResult, field: &str) {
    assert_eq!(result.status, Status::Invalid, "{result:?}");
    let error = result.error.as_ref().expect("an error");
    let named = error
        .details
        .as_ref()
        .and_then(|d| d["field"].as_str())
        .unwrap_or_default();
    assert!(
        named.contains(field) || error.message.contains(field),
        "{field} not named in {error:?}"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn a_sessions_context_reaches_the_api_and_is_forgotten_with_its_user(pool: PgPool) {
    let stack = Stack::start(pool.clone()).await;
    let (_, admin) = stack.user("admin").await;
    let user = Uuid::now_v7();
    let email = format!("{}@example.com", Uuid::new_v4().simple());
    stack
        .ok(
            "user.register",
            user,
            json!({"email": email, "display_name": "C", "password": "correct horse", "role": "viewer"}),
            &admin,
        )
        .await;
    let sign_in =
        |context: Value| json!({"email": email, "password": "correct horse", "context": context});

    // Not an object, and too large: refused, nothing written.
    let before = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await
        .expect("count");
    refused(&stack.sign_in(sign_in(json!(["a"]))).await, "context");
    let big = "x".repeat(17 * 1024);
    refused(
        &stack.sign_in(sign_in(json!({ "big": big }))).await,
        "context",
    );
    let after = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(before, after, "a refused sign-in wrote events");

    let context =
        json!({"locale": "de-DE", "timezone": "Europe/Berlin", "workspace": {"repo": "infra"}});
    let started = stack.sign_in(sign_in(context.clone())).await;
    assert_eq!(started.status, Status::Accepted, "{started:?}");
    let session = started.aggregate_id;
    let token = started.data.as_ref().expect("data")["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let position = started.position.expect("position");
    assert!(
        event(&pool, session, "session_started")
            .await
            .get("context")
            .is_some_and(|c| !c.is_null()),
        "the event carries the context"
    );
    let sessions = stack.get_at("/v1/sessions", &token, &position).await;
    assert_eq!(sessions.status, 200, "{:?}", sessions.body);
    let mine = &sessions.body["items"][0];
    assert_eq!(mine["id"], json!(session));
    assert_eq!(mine["context"], context);

    // Personal data: forgetting the user erases it from the read model.
    let forgot = stack.ok("user.forget", user, json!({}), &admin).await;
    let me = stack.get_at("/v1/me", &admin, &forgot).await;
    assert_eq!(me.status, 200);
    let kept: Option<Value> =
        sqlx::query_scalar("SELECT context FROM read_model.sessions WHERE id = $1")
            .bind(session)
            .fetch_one(&pool)
            .await
            .expect("session row");
    assert_eq!(kept, None, "the context outlived its user");
    stack.finish().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_conversations_model_configuration_reaches_the_api(pool: PgPool) {
    let stack = Stack::start(pool.clone()).await;
    let (_, alice) = stack.user("operator").await;

    for (bad, field) in [
        (json!({"temperature": 2.5}), "model_config.temperature"),
        (json!({"top_p": -0.1}), "model_config.top_p"),
        (json!({"max_tokens": 0}), "model_config.max_tokens"),
        (
            json!({"stop": ["a", "b", "c", "d", "e"]}),
            "model_config.stop",
        ),
        (json!({"temperatur": 1}), "model_config"),
    ] {
        let id = Uuid::now_v7();
        let result = stack
            .command(
                "conversation.start",
                id,
                json!({"title": "t", "model": "gpt-4o", "model_config": bad}),
                &alice,
            )
            .await;
        refused(&result, field);
        assert_eq!(events_in(&pool, id).await, 0, "{bad} wrote events");
    }

    let config = json!({"temperature": 0.2, "top_p": 0.9, "max_tokens": 2048,
        "frequency_penalty": 0.5, "presence_penalty": -0.5, "stop": ["\n\n"], "seed": 7});
    let id = Uuid::now_v7();
    let position = stack
        .ok(
            "conversation.start",
            id,
            json!({"title": "t", "model": "gpt-4o", "model_config": config}),
            &alice,
        )
        .await;
    assert_eq!(
        event(&pool, id, "conversation_started").await["model_config"],
        config
    );
    let read = stack
        .get_at(&format!("/v1/conversations/{id}"), &alice, &position)
        .await;
    assert_eq!(read.status, 200, "{:?}", read.body);
    assert_eq!(read.body["model_config"], config);
    assert_eq!(read.body["model"], json!("gpt-4o"));
    stack.finish().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_workflows_environment_reaches_the_api_and_refuses_secrets(pool: PgPool) {
    let stack = Stack::start(pool.clone()).await;
    let (_, alice) = stack.user("operator").await;
    let create = |environment: Value| json!({"name": "deploy", "definition": {"steps": ["a"]}, "environment": environment});

    let too_many: serde_json::Map<String, Value> =
        (0..51).map(|i| (format!("V{i}"), json!("x"))).collect();
    for bad in [
        json!({"lower": "x"}),
        json!({"1ST": "x"}),
        json!({"DB_PASSWORD": "hunter2"}),
        json!({"GITHUB_TOKEN": "ghp_x"}),
        json!({"LONG": "x".repeat(4097)}),
        json!({"NOT_TEXT": 5}),
        Value::Object(too_many),
    ] {
        let id = Uuid::now_v7();
        let result = stack
            .command("workflow.create", id, create(bad.clone()), &alice)
            .await;
        refused(&result, "environment");
        assert_eq!(events_in(&pool, id).await, 0, "{bad} wrote events");
    }

    let id = Uuid::now_v7();
    let environment = json!({"REGION": "eu-west-1", "REPLICAS": "3"});
    stack
        .ok("workflow.create", id, create(environment.clone()), &alice)
        .await;
    assert_eq!(
        event(&pool, id, "workflow_created").await["environment"],
        environment
    );
    let updated = json!({"REGION": "eu-central-1"});
    let position = stack
        .ok(
            "workflow.update",
            id,
            json!({"environment": updated}),
            &alice,
        )
        .await;
    assert_eq!(
        event(&pool, id, "workflow_updated").await["environment"],
        updated
    );
    let read = stack
        .get_at(&format!("/v1/workflows/{id}"), &alice, &position)
        .await;
    assert_eq!(read.status, 200, "{:?}", read.body);
    assert_eq!(read.body["environment"], updated);
    // A refused update leaves the environment as it was.
    let result = stack
        .command(
            "workflow.update",
            id,
            json!({"environment": {"API_KEY_X": "k"}}),
            &alice,
        )
        .await;
    refused(&result, "environment");
    let read = stack
        .get_at(&format!("/v1/workflows/{id}"), &alice, &position)
        .await;
    assert_eq!(read.body["environment"], updated);
    stack.finish().await;
}

/// Three of the seven behaviours the seed's triggers gave, not shown by
/// the other API tests: `updated_at` follows the last change, an incident's
/// time to resolve and an execution's and its steps' durations are set when
/// they end (the others: message totals, step counts, runbook success rate
/// and the audit row, in `endpoints`).
#[sqlx::test(migrations = "../migrations")]
async fn what_the_seeds_triggers_did_comes_from_the_events(pool: PgPool) {
    let stack = Stack::start(pool).await;
    let (alice_id, alice) = stack.user("operator").await;

    let incident = Uuid::now_v7();
    stack
        .ok(
            "incident.open",
            incident,
            json!({"title": "t", "description": "d", "severity": "low", "affected_services": ["x"]}),
            &alice,
        )
        .await;
    stack
        .ok(
            "incident.assign",
            incident,
            json!({"assignee_id": alice_id}),
            &alice,
        )
        .await;
    let resolved = stack
        .ok(
            "incident.resolve",
            incident,
            json!({"root_cause": "a full disk", "remediation_steps": ["rotate the logs"]}),
            &alice,
        )
        .await;
    let read = stack
        .get_at(&format!("/v1/incidents/{incident}"), &alice, &resolved)
        .await;
    assert_eq!(read.status, 200, "{:?}", read.body);
    assert!(read.body["time_to_resolve_ms"].is_u64(), "{:?}", read.body);
    assert_eq!(read.body["updated_at"], read.body["resolved_at"]);
    // Reopened: no longer resolved, so neither resolved_at nor the time to
    // resolve (nor the resolved series) count it until it is resolved again.
    stack
        .ok("incident.close", incident, json!({}), &alice)
        .await;
    let reopened = stack
        .ok(
            "incident.reopen",
            incident,
            json!({"reason": "it came back"}),
            &alice,
        )
        .await;
    let read = stack
        .get_at(&format!("/v1/incidents/{incident}"), &alice, &reopened)
        .await;
    assert_eq!(read.body["status"], "investigating");
    assert_eq!(read.body["reopen_count"], 1);
    for field in ["resolved_at", "time_to_resolve_ms", "closed_at"] {
        assert!(read.body[field].is_null(), "{field}: {:?}", read.body);
    }
    let series = stack
        .get_at("/v1/series/incidents_resolved", &alice, &reopened)
        .await;
    assert_eq!(series.body["points"], json!([]), "{:?}", series.body);
    let again = stack
        .ok(
            "incident.resolve",
            incident,
            json!({"root_cause": "a full disk, again", "remediation_steps": ["alert on disk use"]}),
            &alice,
        )
        .await;
    let read = stack
        .get_at(&format!("/v1/incidents/{incident}"), &alice, &again)
        .await;
    assert!(read.body["resolved_at"].is_string() && read.body["time_to_resolve_ms"].is_u64());
    let series = stack
        .get_at("/v1/series/incidents_resolved", &alice, &again)
        .await;
    assert_eq!(series.body["totals"][0]["count"], 1, "{:?}", series.body);

    let workflow = Uuid::now_v7();
    stack
        .ok(
            "workflow.create",
            workflow,
            json!({"name": "w", "definition": {"steps": ["a"]}}),
            &alice,
        )
        .await;
    stack
        .ok("workflow.activate", workflow, json!({}), &alice)
        .await;
    let execution = Uuid::now_v7();
    stack
        .ok(
            "execution.start",
            execution,
            json!({"workflow_id": workflow, "trigger_source": "test"}),
            &alice,
        )
        .await;
    let step = Uuid::now_v7();
    stack
        .ok(
            "execution.start_step",
            execution,
            json!({"step_id": step, "name": "a"}),
            &alice,
        )
        .await;
    stack
        .ok(
            "execution.complete_step",
            execution,
            json!({"step_id": step}),
            &alice,
        )
        .await;
    let done = stack
        .ok("execution.complete", execution, json!({}), &alice)
        .await;
    let run = stack
        .get_at(&format!("/v1/executions/{execution}"), &alice, &done)
        .await;
    assert_eq!(run.body["status"], "succeeded", "{:?}", run.body);
    assert!(run.body["duration_ms"].is_u64(), "{:?}", run.body);
    assert!(run.body["finished_at"].is_string());
    assert!(
        run.body["steps"][0]["duration_ms"].is_u64(),
        "{:?}",
        run.body
    );
    stack.finish().await;
}

/// An execution's figures count each step once, by its latest attempt: a
/// step that failed and was retried before succeeding is one succeeded step
/// and one retry, never a failed step too, and progress stays within 0–1.
#[sqlx::test(migrations = "../migrations")]
async fn an_executions_figures_count_each_step_once(pool: PgPool) {
    let stack = Stack::start(pool).await;
    let (_, alice) = stack.user("operator").await;
    let workflow = Uuid::now_v7();
    stack
        .ok(
            "workflow.create",
            workflow,
            json!({"name": "w", "definition": {"steps": ["a", "b", "c"]}}),
            &alice,
        )
        .await;
    stack
        .ok("workflow.activate", workflow, json!({}), &alice)
        .await;
    let run = Uuid::now_v7();
    stack
        .ok(
            "execution.start",
            run,
            json!({"workflow_id": workflow, "trigger_source": "test"}),
            &alice,
        )
        .await;
    let figures = |position: String| {
        let stack = &stack;
        let alice = &alice;
        async move {
            let read = stack
                .get_at(&format!("/v1/executions/{run}"), alice, &position)
                .await;
            assert_eq!(read.status, 200, "{:?}", read.body);
            let b = &read.body;
            (
                b["steps_total"].as_i64().unwrap_or(-1),
                b["steps_succeeded"].as_i64().unwrap_or(-1),
                b["steps_failed"].as_i64().unwrap_or(-1),
                b["step_retries"].as_i64().unwrap_or(-1),
                b["progress"].as_f64().unwrap_or(-1.0),
            )
        }
    };
    let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let step = |kind: &'static str, id: Uuid, extra: Value| {
        let mut payload = json!({"step_id": id});
        if let (Some(p), Value::Object(more)) = (payload.as_object_mut(), extra) {
            p.extend(more);
        }
        (format!("execution.{kind}"), payload)
    };
    for (kind, id, extra) in [
        ("start_step", a, json!({"name": "a"})),
        ("complete_step", a, json!({})),
    ] {
        let (command, payload) = step(kind, id, extra);
        stack.ok(&command, run, payload, &alice).await;
    }
    // One step of the three the workflow plans has run: "1 of 3", a third
    // done (not all of the one started).
    let (command, payload) = step("start_step", b, json!({"name": "b"}));
    let at = stack.ok(&command, run, payload, &alice).await;
    let read = stack
        .get_at(&format!("/v1/executions/{run}"), &alice, &at)
        .await;
    assert_eq!(read.body["steps_planned"], 3, "{:?}", read.body);
    assert_eq!(read.body["workflow_name"], "w");
    assert_eq!(figures(at).await, (2, 1, 0, 0, 1.0 / 3.0));
    let (command, payload) = step(
        "fail_step",
        b,
        json!({"error": "timeout", "retryable": true}),
    );
    stack.ok(&command, run, payload, &alice).await;
    // Two steps started, both finished by their latest attempt.
    let (command, payload) = step("start_step", c, json!({"name": "c"}));
    let at = stack.ok(&command, run, payload, &alice).await;
    assert_eq!(figures(at).await, (3, 1, 1, 0, 2.0 / 3.0));
    let (command, payload) = step("retry_step", b, json!({}));
    let at = stack.ok(&command, run, payload, &alice).await;
    assert_eq!(
        figures(at).await,
        (3, 1, 0, 1, 1.0 / 3.0),
        "a retried step is not failed"
    );
    for id in [b, c] {
        let (command, payload) = step("complete_step", id, json!({}));
        stack.ok(&command, run, payload, &alice).await;
    }
    let done = stack.ok("execution.complete", run, json!({}), &alice).await;
    assert_eq!(figures(done).await, (3, 3, 0, 1, 1.0));
    stack.finish().await;
}
