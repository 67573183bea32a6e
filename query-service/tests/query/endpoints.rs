//! Every endpoint, for an admin and for a plain user, against data made
//! by commands; pagination walks long lists without duplicates or gaps.

use std::collections::HashSet;

use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::Stack;

#[sqlx::test(migrations = "../migrations")]
async fn every_endpoint_for_an_admin_and_a_user(pool: PgPool) {
    let stack = Stack::start(pool).await;
    let (admin_id, admin) = stack.user("admin").await;
    let (alice_id, alice) = stack.user("operator").await;

    // Alice's conversation with messages.
    let conversation = Uuid::now_v7();
    stack
        .ok(
            "conversation.start",
            conversation,
            json!({"title": "Disk alerts", "tags": ["ops"]}),
            &alice,
        )
        .await;
    for (i, role) in ["user", "assistant", "user"].iter().enumerate() {
        stack
            .ok(
                "conversation.append_message",
                conversation,
                json!({"message_id": Uuid::now_v7(), "role": role, "content": format!("message {i}"),
                       "tokens_in": 10, "tokens_out": 20, "cost_usd": 0.25}),
                &alice,
            )
            .await;
    }
    // A workflow and a run with a step.
    let workflow = Uuid::now_v7();
    stack
        .ok(
            "workflow.create",
            workflow,
            json!({"name": "restart", "definition": {"steps": ["a"]}, "tags": ["ops"]}),
            &alice,
        )
        .await;
    stack
        .ok("workflow.activate", workflow, json!({}), &alice)
        .await;
    let execution = Uuid::now_v7();
    let step = Uuid::now_v7();
    stack
        .ok(
            "execution.start",
            execution,
            json!({"workflow_id": workflow, "trigger_source": "manual"}),
            &alice,
        )
        .await;
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
            json!({"step_id": step, "output": {"ok": true}}),
            &alice,
        )
        .await;
    // An incident, assigned, with a note; a runbook that ran twice.
    let incident = Uuid::now_v7();
    stack
        .ok(
            "incident.open",
            incident,
            json!({"title": "API down", "description": "5xx everywhere", "severity": "high", "affected_services": ["api"]}),
            &alice,
        )
        .await;
    stack
        .ok(
            "incident.assign",
            incident,
            json!({"assignee_id": admin_id}),
            &admin,
        )
        .await;
    stack
        .ok(
            "incident.add_note",
            incident,
            json!({"text": "restarting"}),
            &admin,
        )
        .await;
    let runbook = Uuid::now_v7();
    stack
        .ok(
            "runbook.create",
            runbook,
            json!({"name": "restart api", "description": "how", "trigger_conditions": {"service": "api"}, "steps": ["restart"], "tags": ["api"]}),
            &admin,
        )
        .await;
    stack
        .ok(
            "runbook.record_execution",
            runbook,
            json!({"succeeded": true, "duration_ms": 100}),
            &admin,
        )
        .await;
    let last = stack
        .ok(
            "runbook.record_execution",
            runbook,
            json!({"succeeded": false, "duration_ms": 300}),
            &admin,
        )
        .await;

    // Me, users, sessions.
    let me = stack.get_at("/v1/me", &alice, &last).await;
    assert_eq!(me.status, 200, "{:?}", me.body);
    assert_eq!(me.body["id"], json!(alice_id));
    assert_eq!(me.body["role"], "operator");
    assert!(me.header("x-projection-position").is_some());
    for secret in [
        "password_hash",
        "token_hash",
        "key_hash",
        "last_login_ip",
        "mfa_secret",
    ] {
        assert!(me.body.get(secret).is_none(), "{secret} must not appear");
    }
    let users = stack.get("/v1/users", &admin).await;
    assert_eq!(users.status, 200);
    let ids: HashSet<String> = users.ids().into_iter().collect();
    assert!(ids.contains(&alice_id.to_string()) && ids.contains(&admin_id.to_string()));
    let users = stack.get("/v1/users", &alice).await;
    assert_eq!(
        users.ids(),
        vec![alice_id.to_string()],
        "a plain user lists only themselves"
    );
    assert_eq!(
        stack
            .get(&format!("/v1/users/{alice_id}"), &admin)
            .await
            .status,
        200
    );
    assert_eq!(
        stack
            .get(&format!("/v1/users/{alice_id}"), &alice)
            .await
            .status,
        200
    );
    let operators = stack.get("/v1/users?role=operator", &admin).await;
    assert_eq!(operators.ids(), vec![alice_id.to_string()]);
    let sessions = stack.get("/v1/sessions", &alice).await;
    assert_eq!(sessions.status, 200);
    assert_eq!(sessions.body["items"].as_array().map(Vec::len), Some(1));
    assert!(sessions.body["items"][0].get("token_hash").is_none());

    // Conversations and messages, with totals.
    for token in [&alice, &admin] {
        let list = stack
            .get("/v1/conversations?tag=ops&status=active", token)
            .await;
        assert_eq!(
            list.ids(),
            vec![conversation.to_string()],
            "{:?}",
            list.body
        );
        let one = stack
            .get(&format!("/v1/conversations/{conversation}"), token)
            .await;
        assert_eq!(one.body["message_count"], 3);
        assert_eq!(one.body["total_tokens"], 90);
        assert!((one.body["total_cost_usd"].as_f64().unwrap_or(0.0) - 0.75).abs() < 1e-9);
        let messages = stack
            .get(&format!("/v1/conversations/{conversation}/messages"), token)
            .await;
        let sequences: Vec<i64> = messages.body["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|m| m["sequence"].as_i64().expect("sequence"))
            .collect();
        assert_eq!(sequences, vec![1, 2, 3]);
        assert_eq!(messages.body["items"][1]["role"], "assistant");
    }
    assert_eq!(
        stack
            .get("/v1/conversations?status=archived", &alice)
            .await
            .ids(),
        Vec::<String>::new()
    );

    // Workflows and executions with steps.
    let workflows = stack
        .get("/v1/workflows?status=active&tag=ops", &alice)
        .await;
    assert_eq!(workflows.ids(), vec![workflow.to_string()]);
    assert_eq!(
        stack
            .get(&format!("/v1/workflows/{workflow}"), &alice)
            .await
            .body["version"],
        1
    );
    let runs = stack
        .get(
            &format!("/v1/executions?workflow_id={workflow}&status=running"),
            &admin,
        )
        .await;
    assert_eq!(runs.ids(), vec![execution.to_string()], "{:?}", runs.body);
    let run = stack
        .get(&format!("/v1/executions/{execution}"), &alice)
        .await;
    assert_eq!(run.body["steps"][0]["name"], "a");
    assert_eq!(run.body["steps"][0]["status"], "succeeded");
    assert_eq!(run.body["steps_succeeded"], 1);

    // Incidents with their timeline; runbooks with their success rate.
    let incidents = stack
        .get(
            "/v1/incidents?status=investigating&severity=high&service=api",
            &alice,
        )
        .await;
    assert_eq!(
        incidents.ids(),
        vec![incident.to_string()],
        "{:?}",
        incidents.body
    );
    let one = stack
        .get(&format!("/v1/incidents/{incident}"), &alice)
        .await;
    let timeline: Vec<&str> = one.body["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .map(|e| e["event_type"].as_str().expect("type"))
        .collect();
    assert_eq!(timeline.len(), 3, "{timeline:?}");
    assert_eq!(one.body["assignee_id"], json!(admin_id));
    assert_eq!(one.body["note_count"], 1);
    let books = stack.get("/v1/runbooks?tag=api", &alice).await;
    assert_eq!(books.ids(), vec![runbook.to_string()]);
    let book = stack.get(&format!("/v1/runbooks/{runbook}"), &alice).await;
    assert_eq!(book.body["execution_count"], 2);
    assert_eq!(book.body["success_rate"], 50.0);
    assert_eq!(book.body["average_duration_ms"], 200.0);

    // Audit: admin only, filtered.
    let audit = stack
        .get_with(
            &format!("/v1/audit?resource_type=incident&resource_id={incident}"),
            Some(&admin),
            &[("X-Min-Position", &last)],
        )
        .await;
    assert_eq!(audit.status, 200, "{:?}", audit.body);
    assert_eq!(audit.body["items"].as_array().map(Vec::len), Some(3));
    let by_actor = stack
        .get(
            &format!("/v1/audit?actor_id={admin_id}&action=incident_assigned"),
            &admin,
        )
        .await;
    assert_eq!(
        by_actor.body["items"].as_array().map(Vec::len),
        Some(1),
        "{:?}",
        by_actor.body
    );
    stack.get("/v1/audit", &alice).await.problem(403);

    // Dashboard summary: the caller's view.
    let summary = stack.get("/v1/dashboard/summary", &admin).await;
    assert_eq!(summary.status, 200, "{:?}", summary.body);
    assert_eq!(summary.body["running_executions"], 1);
    assert_eq!(summary.body["open_incidents"][0]["severity"], "high");
    assert_eq!(summary.body["today"]["messages"], 3);
    assert!(summary.body["active_sessions"].as_i64().unwrap_or(0) >= 2);
    let names: Vec<&str> = summary.body["projections"]
        .as_array()
        .expect("projections")
        .iter()
        .map(|p| p["name"].as_str().expect("name"))
        .collect();
    assert!(
        names.contains(&"relational") && names.contains(&"audit"),
        "{names:?}"
    );
    let own = stack.get("/v1/dashboard/summary", &alice).await;
    assert_eq!(
        own.body["active_sessions"], 1,
        "a plain user counts their own sessions"
    );

    // The log: a command's result; an aggregate's events (admin).
    let result = stack
        .command(
            "incident.add_note",
            incident,
            json!({"text": "second"}),
            &alice,
        )
        .await;
    let command = stack
        .get(&format!("/v1/commands/{}", result.command_id), &alice)
        .await;
    assert_eq!(command.status, 200, "{:?}", command.body);
    assert_eq!(command.body["status"], "accepted");
    assert_eq!(command.body["replayed"], true);
    assert_eq!(command.body["events"], json!(["incident_note_added"]));
    let events = stack
        .get(&format!("/v1/streams/{incident}/events"), &admin)
        .await;
    assert_eq!(events.status, 200, "{:?}", events.body);
    let items = events.body["items"].as_array().expect("items");
    assert_eq!(items.len(), 4);
    assert_eq!(items[0]["event_type"], "incident_opened");
    assert_eq!(items[0]["payload"]["title"], "API down", "{:?}", items[0]);
    stack
        .get(&format!("/v1/streams/{incident}/events"), &alice)
        .await
        .problem(403);

    // Operations.
    assert_eq!(stack.get_with("/healthz", None, &[]).await.status, 200);
    let ready = stack.get_with("/readyz", None, &[]).await;
    assert_eq!(ready.status, 200, "{:?}", ready.body);
    let openapi = stack.get_with("/openapi.json", None, &[]).await;
    assert!(openapi.body["paths"]["/v1/conversations/{id}/messages"].is_object());
    // The committed document (docs/openapi.json, for client generators) is
    // what the service serves; COPILOT_UPDATE_OPENAPI=1 rewrites it.
    let committed = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
    if std::env::var_os("COPILOT_UPDATE_OPENAPI").is_some() {
        let text = serde_json::to_string_pretty(&openapi.body).expect("json");
        std::fs::write(committed, text + "\n").expect("write docs/openapi.json");
    }
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(committed).expect("docs/openapi.json"))
            .expect("docs/openapi.json is JSON");
    assert!(
        file == openapi.body,
        "docs/openapi.json differs from what the service serves: run with COPILOT_UPDATE_OPENAPI=1"
    );
    assert!(stack.metric("copilot_http_requests_total").await > 0.0);

    // Compressed when asked (tower-http's gzip), the same JSON inside. The
    // audit projection may still be writing the last commands' rows, so
    // the two reads are compared once the log stands still between them.
    let mut attempts = 0;
    loop {
        let plain = stack.get("/v1/audit?limit=200", &admin).await;
        let zipped = stack
            .http
            .get(format!("{}/v1/audit?limit=200", stack.base))
            .bearer_auth(&admin)
            .header("Accept-Encoding", "gzip")
            .send()
            .await
            .expect("gzip request");
        assert_eq!(
            zipped
                .headers()
                .get("content-encoding")
                .map(|v| v.as_bytes()),
            Some(&b"gzip"[..])
        );
        let bytes = zipped.bytes().await.expect("body");
        let mut json = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut json)
            .expect("gunzip");
        let unzipped: serde_json::Value = serde_json::from_str(&json).expect("json");
        attempts += 1;
        if unzipped["items"] == plain.body["items"] || attempts == 50 {
            assert_eq!(unzipped["items"], plain.body["items"]);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    stack.finish().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn pagination_walks_long_lists_without_duplicates_or_gaps(pool: PgPool) {
    let stack = Stack::start(pool).await;
    let (_, alice) = stack.user("operator").await;
    let (conversation, mut last) = stack.conversation_with(&alice, 57).await;
    let mut incidents = HashSet::new();
    for i in 0..23 {
        let id = Uuid::now_v7();
        incidents.insert(id.to_string());
        last = stack
            .ok(
                "incident.open",
                id,
                json!({"title": format!("i{i}"), "description": "d", "severity": "low", "affected_services": ["db"]}),
                &alice,
            )
            .await;
    }
    stack.get_at("/v1/incidents", &alice, &last).await;

    let messages = stack
        .walk(
            &format!("/v1/conversations/{conversation}/messages"),
            &alice,
            5,
        )
        .await;
    let sequences: Vec<i64> = messages
        .iter()
        .map(|m| m["sequence"].as_i64().expect("seq"))
        .collect();
    assert_eq!(
        sequences,
        (1..=57).collect::<Vec<_>>(),
        "every message once, in order"
    );

    let walked = stack.walk("/v1/incidents?severity=low", &alice, 4).await;
    let ids: Vec<String> = walked
        .iter()
        .map(|i| i["id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(ids.len(), 23, "no duplicates");
    assert_eq!(
        ids.iter().cloned().collect::<HashSet<_>>(),
        incidents,
        "no gaps"
    );
    let opened: Vec<chrono::DateTime<chrono::Utc>> = walked
        .iter()
        .map(|i| {
            i["opened_at"]
                .as_str()
                .expect("time")
                .parse()
                .expect("RFC 3339")
        })
        .collect();
    let mut sorted = opened.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(opened, sorted, "newest first");

    let whole = stack.get("/v1/incidents?limit=200", &alice).await;
    assert_eq!(whole.ids().len(), 23);
    assert!(whole.body["next_cursor"].is_null());
    stack.finish().await;
}
