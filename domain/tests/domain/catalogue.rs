use domain::ids::{ApiKeyId, MessageId, ProjectId, StepId, UserId, WorkflowId};
use domain::Command;
use serde_json::{json, Value};

/// A valid payload of every command type of the contract.
pub fn sample_payloads() -> Vec<(&'static str, Value)> {
    vec![
        (
            "user.register",
            json!({"email": "ada@example.com", "display_name": "Ada", "password": "correct horse", "role": "admin"}),
        ),
        (
            "user.update_profile",
            json!({"display_name": "Ada L.", "preferences": {"theme": "dark"}}),
        ),
        ("user.change_role", json!({"role": "viewer"})),
        (
            "user.change_password",
            json!({"current_password": "correct horse", "new_password": "battery staple"}),
        ),
        (
            "user.enable_mfa",
            json!({"secret": "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"}),
        ),
        ("user.disable_mfa", json!({})),
        (
            "user.issue_api_key",
            json!({"name": "ci", "scopes": ["commands:write"], "expires_at": "2027-01-01T00:00:00Z"}),
        ),
        ("user.revoke_api_key", json!({"key_id": ApiKeyId::new()})),
        ("user.lock", json!({"reason": "audit"})),
        ("user.unlock", json!({})),
        ("user.delete", json!({})),
        ("user.forget", json!({})),
        (
            "session.start",
            json!({"email": "ada@example.com", "password": "correct horse", "mfa_code": "123456", "device_fingerprint": "fp", "ip_address": "192.0.2.1", "user_agent": "curl/8"}),
        ),
        ("session.touch", json!({})),
        ("session.end", json!({})),
        (
            "conversation.start",
            json!({"title": "t", "model": "m", "tags": ["a"], "context": {"k": 1}}),
        ),
        (
            "conversation.append_message",
            json!({"message_id": MessageId::new(), "role": "tool", "content": "c", "tool_calls": [], "tool_results": [], "tokens_in": 1, "tokens_out": 2, "cost_usd": 0.25, "embedding": [0.5, 0.25]}),
        ),
        (
            "conversation.rate_message",
            json!({"message_id": MessageId::new(), "rating": 4, "comment": "ok"}),
        ),
        ("conversation.tag", json!({"tags": ["b"]})),
        ("conversation.archive", json!({})),
        ("conversation.delete", json!({})),
        (
            "workflow.create",
            json!({"name": "w", "description": "d", "definition": {"steps": []}, "triggers": [], "parameters": {}, "tags": ["x"]}),
        ),
        (
            "workflow.update",
            json!({"description": "d2", "definition": {}, "triggers": [], "parameters": {}, "tags": ["y"]}),
        ),
        ("workflow.activate", json!({})),
        ("workflow.deactivate", json!({})),
        ("workflow.delete", json!({})),
        (
            "execution.start",
            json!({"workflow_id": WorkflowId::new(), "trigger_source": "manual", "inputs": {}, "priority": 3}),
        ),
        (
            "execution.start_step",
            json!({"step_id": StepId::new(), "name": "s", "input": {}}),
        ),
        (
            "execution.complete_step",
            json!({"step_id": StepId::new(), "output": {}}),
        ),
        (
            "execution.fail_step",
            json!({"step_id": StepId::new(), "error": "e", "retryable": true}),
        ),
        ("execution.retry_step", json!({"step_id": StepId::new()})),
        ("execution.complete", json!({"outputs": {}})),
        ("execution.fail", json!({"error": "e"})),
        ("execution.cancel", json!({"reason": "r"})),
        (
            "incident.open",
            json!({"title": "t", "description": "d", "severity": "low", "affected_services": ["api"], "blast_radius": "eu"}),
        ),
        ("incident.assign", json!({"assignee_id": UserId::new()})),
        ("incident.change_severity", json!({"severity": "critical"})),
        ("incident.add_note", json!({"text": "n"})),
        ("incident.mitigate", json!({"summary": "s"})),
        (
            "incident.resolve",
            json!({"root_cause": "r", "remediation_steps": ["a"]}),
        ),
        ("incident.close", json!({})),
        ("incident.reopen", json!({"reason": "r"})),
        (
            "runbook.create",
            json!({"name": "n", "description": "d", "trigger_conditions": {}, "steps": ["s"], "tags": []}),
        ),
        (
            "runbook.update",
            json!({"name": "n2", "description": "d", "trigger_conditions": {}, "steps": ["s"], "tags": []}),
        ),
        (
            "runbook.record_execution",
            json!({"succeeded": true, "duration_ms": 5}),
        ),
        ("runbook.archive", json!({})),
        (
            "knowledge.index_code",
            json!({"project_id": ProjectId::new(), "file_path": "a.rs", "function_name": "f", "language": "rust", "content": "fn f() {}", "embedding": [1.0]}),
        ),
        (
            "knowledge.index_document",
            json!({"title": "t", "section": "s", "url": "https://example.com/doc", "content": "c", "embedding": [1.0]}),
        ),
        ("knowledge.remove", json!({})),
    ]
}

#[test]
fn every_command_type_has_a_sample_and_decodes_from_json_and_msgpack_alike() {
    let samples = sample_payloads();
    let mut types: Vec<&str> = samples.iter().map(|(t, _)| *t).collect();
    types.sort_unstable();
    let mut catalogue = Command::TYPES.to_vec();
    catalogue.sort_unstable();
    assert_eq!(types, catalogue, "one sample per command type");
    for (command_type, payload) in samples {
        let from_json =
            Command::from_json(command_type, &serde_json::to_vec(&payload).expect("json"))
                .unwrap_or_else(|e| panic!("{command_type} from JSON: {e}"));
        let msgpack = rmp_serde::to_vec_named(&payload).expect("msgpack");
        let from_msgpack = Command::from_msgpack(command_type, &msgpack)
            .unwrap_or_else(|e| panic!("{command_type} from MessagePack: {e}"));
        assert_eq!(from_json, from_msgpack, "{command_type}");
        assert!(Command::is_known(command_type));
    }
}

#[test]
fn unknown_fields_types_and_wrong_types_are_refused() {
    for (command_type, mut payload) in sample_payloads() {
        payload
            .as_object_mut()
            .expect("object")
            .insert("surprise".into(), json!(1));
        let err = Command::from_json(command_type, &serde_json::to_vec(&payload).expect("json"))
            .expect_err("unknown field");
        assert!(
            err.to_string().contains("surprise"),
            "{command_type}: {err}"
        );
    }
    assert!(matches!(
        Command::from_json("incident.explode", b"{}"),
        Err(domain::command::ParseError::UnknownType(_))
    ));
    let bad = [
        (
            "incident.open",
            json!({"title": "t", "description": "d", "severity": "urgent", "affected_services": ["a"]}),
        ),
        (
            "user.register",
            json!({"email": "not-an-email", "display_name": "A", "password": "correct horse", "role": "admin"}),
        ),
        (
            "conversation.append_message",
            json!({"message_id": "not-a-uuid", "role": "user", "content": "c"}),
        ),
        (
            "conversation.append_message",
            json!({"message_id": MessageId::new(), "role": "user", "content": "c", "tokens_in": -1}),
        ),
        (
            "conversation.append_message",
            json!({"message_id": MessageId::new(), "role": "user", "content": "c", "cost_usd": "1.0000001"}),
        ),
        ("conversation.tag", json!({"tags": "not-a-list"})),
        (
            "session.start",
            json!({"email": "ada@example.com", "password": "short"}),
        ),
        (
            "incident.open",
            json!({"description": "missing title", "severity": "low", "affected_services": ["a"]}),
        ),
    ];
    for (command_type, payload) in bad {
        assert!(
            Command::from_json(command_type, &serde_json::to_vec(&payload).expect("json")).is_err(),
            "{command_type} {payload}"
        );
    }
    assert!(Command::from_json("user.disable_mfa", b"{} trailing").is_err());
}

#[test]
fn ids_are_accepted_as_16_raw_bytes_in_msgpack() {
    #[derive(serde::Serialize)]
    struct Revoke<'a> {
        #[serde(with = "serde_bytes_like")]
        key_id: &'a [u8; 16],
    }
    mod serde_bytes_like {
        pub fn serialize<S: serde::Serializer>(bytes: &[u8; 16], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(bytes)
        }
    }
    let id = ApiKeyId::new();
    let bytes = rmp_serde::to_vec_named(&Revoke {
        key_id: id.0.as_bytes(),
    })
    .expect("encode");
    let command =
        Command::from_msgpack("user.revoke_api_key", &bytes).expect("raw uuid bytes decode");
    assert_eq!(
        command,
        Command::User(domain::user::Command::RevokeApiKey(
            domain::user::RevokeApiKey { key_id: id }
        ))
    );
}
