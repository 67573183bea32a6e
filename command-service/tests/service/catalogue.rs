//! Every command type of the catalogue, accepted end to end, alternating
//! request/reply and JetStream, with its events in the store.

use std::collections::BTreeSet;

use command_service::{CommandResult, Status, ANSWER_CARRIES_SECRET};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{envelope, App};

struct Run<'a> {
    app: &'a App,
    sent: usize,
    seen: BTreeSet<String>,
}

impl Run<'_> {
    /// Sends each of `commands` to `aggregate`, in order.
    async fn send_each<const N: usize>(
        &mut self,
        aggregate: Uuid,
        commands: [(&str, Value); N],
        token: &str,
    ) {
        for (command_type, payload) in commands {
            self.send(command_type, aggregate, payload, token).await;
        }
    }

    async fn send(
        &mut self,
        command_type: &str,
        aggregate: Uuid,
        payload: Value,
        token: &str,
    ) -> CommandResult {
        let body = envelope(aggregate, payload);
        self.sent += 1;
        // Those whose answer carries a secret are taken over request/reply only.
        let js = self.sent % 2 == 0 && !ANSWER_CARRIES_SECRET.contains(&command_type);
        let result = if js {
            self.app.js(command_type, &body, Some(token)).await
        } else {
            self.app.rpc(command_type, &body, Some(token)).await
        };
        assert_eq!(
            result.status,
            Status::Accepted,
            "{command_type}: {result:?}"
        );
        assert!(!result.events.is_empty());
        let stored: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE stream_id = $1 AND metadata->>'command_id' = $2",
        )
        .bind(aggregate)
        .bind(body["command_id"].as_str().expect("id"))
        .fetch_one(&self.app.pool)
        .await
        .expect("count");
        assert_eq!(
            stored as usize,
            result.events.len(),
            "{command_type}: its events are in the store"
        );
        self.seen.insert(command_type.to_string());
        result
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn every_command_type_is_accepted_over_both_transports(pool: PgPool) {
    let app = App::spawn(pool).await;
    let boot = app.bootstrap.clone();
    let mut run = Run {
        app: &app,
        sent: 0,
        seen: BTreeSet::new(),
    };

    // Users and sessions.
    let admin_id = Uuid::now_v7();
    run.send("user.register", admin_id, json!({"email": "root@example.com", "display_name": "Root", "password": "correct horse", "role": "admin"}), &boot).await;
    let session = Uuid::now_v7();
    let started = run.send("session.start", session, json!({"email": "root@example.com", "password": "correct horse", "ip_address": "192.0.2.1", "user_agent": "test"}), &boot).await;
    let token = started
        .data
        .and_then(|d| d["token"].as_str().map(str::to_string))
        .expect("token");
    run.send("session.touch", session, json!({}), &token).await;
    run.send(
        "user.update_profile",
        admin_id,
        json!({"display_name": "Root Admin", "preferences": {"theme": "dark"}}),
        &token,
    )
    .await;
    run.send_each(
        admin_id,
        [
            (
                "user.change_password",
                json!({"current_password": "correct horse", "new_password": "battery staple"}),
            ),
            (
                "user.enable_mfa",
                json!({"secret": "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"}),
            ),
            ("user.disable_mfa", json!({})),
        ],
        &token,
    )
    .await;
    let issued = run
        .send(
            "user.issue_api_key",
            admin_id,
            json!({"name": "ci", "scopes": ["commands:write", "admin"]}),
            &token,
        )
        .await;
    let key_id = issued
        .data
        .and_then(|d| d["key_id"].as_str().map(str::to_string))
        .expect("key id");
    run.send(
        "user.revoke_api_key",
        admin_id,
        json!({"key_id": key_id}),
        &token,
    )
    .await;

    let other = Uuid::now_v7();
    run.send("user.register", other, json!({"email": "op@example.com", "display_name": "Op", "password": "correct horse", "role": "operator"}), &token).await;
    run.send("user.change_role", other, json!({"role": "viewer"}), &token)
        .await;
    run.send("user.lock", other, json!({"reason": "audit"}), &token)
        .await;
    run.send("user.unlock", other, json!({}), &token).await;

    // Conversations.
    let conversation = Uuid::now_v7();
    let message = Uuid::now_v7();
    run.send(
        "conversation.start",
        conversation,
        json!({"title": "Deploy", "model": "m", "tags": ["ops"]}),
        &token,
    )
    .await;
    run.send("conversation.append_message", conversation, json!({"message_id": message, "role": "user", "content": "why did it fail?", "tokens_in": 10, "cost_usd": 0.001}), &token).await;
    run.send_each(
        conversation,
        [
            (
                "conversation.rate_message",
                json!({"message_id": message, "rating": 5}),
            ),
            ("conversation.tag", json!({"tags": ["db"]})),
            ("conversation.archive", json!({})),
            ("conversation.delete", json!({})),
        ],
        &token,
    )
    .await;

    // Workflows and their runs.
    let workflow = Uuid::now_v7();
    run.send_each(
        workflow,
        [
            (
                "workflow.create",
                json!({"name": "restart", "definition": {"steps": ["a"], "max_retries": 2}}),
            ),
            ("workflow.update", json!({"description": "restart pods"})),
            ("workflow.activate", json!({})),
        ],
        &token,
    )
    .await;
    let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let step = Uuid::now_v7();
    run.send(
        "execution.start",
        a,
        json!({"workflow_id": workflow, "trigger_source": "manual", "priority": 7}),
        &token,
    )
    .await;
    run.send(
        "execution.start_step",
        a,
        json!({"step_id": step, "name": "restart"}),
        &token,
    )
    .await;
    run.send(
        "execution.fail_step",
        a,
        json!({"step_id": step, "error": "timeout", "retryable": true}),
        &token,
    )
    .await;
    run.send("execution.retry_step", a, json!({"step_id": step}), &token)
        .await;
    run.send(
        "execution.complete_step",
        a,
        json!({"step_id": step, "output": {"ok": true}}),
        &token,
    )
    .await;
    run.send("execution.complete", a, json!({"outputs": {}}), &token)
        .await;
    run.send(
        "execution.start",
        b,
        json!({"workflow_id": workflow, "trigger_source": "manual"}),
        &token,
    )
    .await;
    run.send("execution.fail", b, json!({"error": "gave up"}), &token)
        .await;
    run.send(
        "execution.start",
        c,
        json!({"workflow_id": workflow, "trigger_source": "manual"}),
        &token,
    )
    .await;
    run.send("execution.cancel", c, json!({"reason": "operator"}), &token)
        .await;
    run.send("workflow.deactivate", workflow, json!({}), &token)
        .await;
    run.send("workflow.delete", workflow, json!({}), &token)
        .await;

    // Incidents.
    let incident = Uuid::now_v7();
    run.send("incident.open", incident, json!({"title": "500s", "description": "checkout", "severity": "high", "affected_services": ["checkout"]}), &token).await;
    run.send_each(
        incident,
        [
            ("incident.assign", json!({"assignee_id": other})),
            ("incident.change_severity", json!({"severity": "critical"})),
            ("incident.add_note", json!({"text": "rolling back"})),
            ("incident.mitigate", json!({"summary": "rolled back"})),
            (
                "incident.resolve",
                json!({"root_cause": "migration lock", "remediation_steps": ["add index"]}),
            ),
            ("incident.close", json!({})),
            ("incident.reopen", json!({"reason": "again"})),
        ],
        &token,
    )
    .await;

    // Runbooks and knowledge.
    let runbook = Uuid::now_v7();
    run.send("runbook.create", runbook, json!({"name": "failover", "description": "promote", "trigger_conditions": {}, "steps": ["promote"]}), &token).await;
    run.send(
        "runbook.update",
        runbook,
        json!({"steps": ["promote", "verify"]}),
        &token,
    )
    .await;
    run.send(
        "runbook.record_execution",
        runbook,
        json!({"succeeded": true, "duration_ms": 1200}),
        &token,
    )
    .await;
    run.send("runbook.archive", runbook, json!({}), &token)
        .await;
    let code = Uuid::now_v7();
    run.send("knowledge.index_code", code, json!({"project_id": Uuid::now_v7(), "file_path": "src/lib.rs", "language": "rust", "content": "fn main() {}"}), &token).await;
    run.send("knowledge.remove", code, json!({}), &token).await;
    run.send(
        "knowledge.index_document",
        Uuid::now_v7(),
        json!({"title": "Failover", "content": "Promote the replica."}),
        &token,
    )
    .await;

    // Last: the account's own end.
    let (me, mine) = app.user("viewer").await;
    run.send("user.delete", me, json!({}), &mine).await;
    // A deleted account signs in no more: an admin forgets it.
    run.send("user.forget", me, json!({}), &token).await;
    run.send("session.end", session, json!({}), &token).await;

    let all: BTreeSet<String> = domain::Command::TYPES
        .iter()
        .map(|t| t.to_string())
        .collect();
    assert_eq!(run.seen, all, "every command type was accepted");
    app.finish().await;
}
