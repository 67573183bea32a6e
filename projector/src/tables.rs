//! The relational read model's tables (migrations/0003_read_model.sql), in
//! the order they are written: parents before the children that reference
//! them.

use crate::table::{null, ColType as T, Column, TableDef, Value};

macro_rules! columns {
    ($($name:literal : $ty:expr $(=> $default:expr)?),+ $(,)?) => {
        &[$(Column { name: $name, ty: $ty, default: columns!(@default $($default)?) }),+]
    };
    (@default) => { null };
    (@default $default:expr) => { || $default };
}

pub static USERS: TableDef = TableDef {
    name: "users",
    parent: None,
    columns: columns![
        "id": T::Uuid,
        "email": T::Text,
        "display_name": T::Text,
        "role": T::Enum("user_role"),
        "mfa_enabled": T::Bool => Value::Bool(false),
        "is_locked": T::Bool => Value::Bool(false),
        "locked_reason": T::Text,
        "failed_login_attempts": T::Int4 => Value::I32(0),
        "last_login_at": T::Timestamptz,
        "last_login_ip": T::Text,
        "active_api_keys": T::Int4 => Value::I32(0),
        "preferences": T::Jsonb => Value::Json("{}".into()),
        "created_at": T::Timestamptz,
        "updated_at": T::Timestamptz,
        "deleted_at": T::Timestamptz,
        "forgotten_at": T::Timestamptz,
    ],
};

pub static SESSIONS: TableDef = TableDef {
    name: "sessions",
    parent: None,
    columns: columns![
        "id": T::Uuid,
        "user_id": T::Uuid,
        "role": T::Enum("user_role"),
        "device_fingerprint": T::Text,
        "ip_address": T::Text,
        "user_agent": T::Text,
        "started_at": T::Timestamptz,
        "last_seen_at": T::Timestamptz,
        "expires_at": T::Timestamptz,
        "ended_at": T::Timestamptz,
        "end_reason": T::Text,
        "context": T::Jsonb,
    ],
};

pub static CONVERSATIONS: TableDef = TableDef {
    name: "conversations",
    parent: None,
    columns: columns![
        "id": T::Uuid,
        "user_id": T::Uuid,
        "title": T::Text,
        "model": T::Text,
        "model_config": T::Jsonb,
        "status": T::Enum("conversation_status") => Value::Label("active"),
        "tags": T::TextArray => Value::TextArray(Vec::new()),
        "context": T::Jsonb,
        "message_count": T::Int4 => Value::I32(0),
        "total_tokens": T::Int8 => Value::I64(0),
        "total_cost_usd": T::Numeric(6) => Value::Decimal(0),
        "last_message_at": T::Timestamptz,
        "created_at": T::Timestamptz,
        "updated_at": T::Timestamptz,
        "archived_at": T::Timestamptz,
        "deleted_at": T::Timestamptz,
    ],
};

pub static MESSAGES: TableDef = TableDef {
    name: "messages",
    parent: Some("conversation_id"),
    columns: columns![
        "id": T::Uuid,
        "conversation_id": T::Uuid,
        "user_id": T::Uuid,
        "sequence": T::Int4,
        "role": T::Enum("message_role"),
        "content": T::Text,
        "tool_calls": T::Jsonb,
        "tool_results": T::Jsonb,
        "tokens_in": T::Int4 => Value::I32(0),
        "tokens_out": T::Int4 => Value::I32(0),
        "cost_usd": T::Numeric(6) => Value::Decimal(0),
        "rating": T::Int2,
        "feedback": T::Text,
        "created_at": T::Timestamptz,
        "rated_at": T::Timestamptz,
    ],
};

pub static WORKFLOWS: TableDef = TableDef {
    name: "workflows",
    parent: None,
    columns: columns![
        "id": T::Uuid,
        "name": T::Text,
        "description": T::Text,
        "definition": T::Jsonb,
        "triggers": T::Jsonb,
        "parameters": T::Jsonb,
        "tags": T::TextArray => Value::TextArray(Vec::new()),
        "environment": T::Jsonb => Value::Json("{}".into()),
        "version": T::Int4,
        "max_retries": T::Int4,
        "status": T::Enum("workflow_status") => Value::Label("draft"),
        "created_by": T::Uuid,
        "created_at": T::Timestamptz,
        "updated_at": T::Timestamptz,
        "deleted_at": T::Timestamptz,
    ],
};

pub static EXECUTIONS: TableDef = TableDef {
    name: "workflow_executions",
    parent: None,
    columns: columns![
        "id": T::Uuid,
        "workflow_id": T::Uuid,
        "workflow_version": T::Int4,
        "status": T::Enum("execution_status"),
        "trigger_source": T::Text,
        "inputs": T::Jsonb,
        "outputs": T::Jsonb,
        "error": T::Text,
        "priority": T::Int2,
        "max_retries": T::Int4,
        "started_by": T::Uuid,
        "steps_total": T::Int4 => Value::I32(0),
        "steps_succeeded": T::Int4 => Value::I32(0),
        "steps_failed": T::Int4 => Value::I32(0),
        "step_retries": T::Int4 => Value::I32(0),
        "started_at": T::Timestamptz,
        "finished_at": T::Timestamptz,
        "duration_ms": T::Int8,
    ],
};

pub static STEPS: TableDef = TableDef {
    name: "step_executions",
    parent: Some("execution_id"),
    columns: columns![
        "id": T::Uuid,
        "execution_id": T::Uuid,
        "name": T::Text,
        "status": T::Enum("step_status"),
        "attempt": T::Int4,
        "input": T::Jsonb,
        "output": T::Jsonb,
        "error": T::Text,
        "retryable": T::Bool,
        "started_at": T::Timestamptz,
        "finished_at": T::Timestamptz,
        "duration_ms": T::Int8,
    ],
};

pub static INCIDENTS: TableDef = TableDef {
    name: "incidents",
    parent: None,
    columns: columns![
        "id": T::Uuid,
        "title": T::Text,
        "description": T::Text,
        "severity": T::Enum("incident_severity"),
        "status": T::Enum("incident_status") => Value::Label("open"),
        "affected_services": T::TextArray => Value::TextArray(Vec::new()),
        "blast_radius": T::Text,
        "opened_by": T::Uuid,
        "assignee_id": T::Uuid,
        "note_count": T::Int4 => Value::I32(0),
        "mitigation_summary": T::Text,
        "root_cause": T::Text,
        "remediation_steps": T::TextArray,
        "reopen_count": T::Int4 => Value::I32(0),
        "opened_at": T::Timestamptz,
        "mitigated_at": T::Timestamptz,
        "resolved_at": T::Timestamptz,
        "closed_at": T::Timestamptz,
        "time_to_mitigate_ms": T::Int8,
        "time_to_resolve_ms": T::Int8,
        "updated_at": T::Timestamptz,
    ],
};

pub static RUNBOOKS: TableDef = TableDef {
    name: "runbooks",
    parent: None,
    columns: columns![
        "id": T::Uuid,
        "name": T::Text,
        "description": T::Text,
        "trigger_conditions": T::Jsonb,
        "steps": T::TextArray,
        "tags": T::TextArray => Value::TextArray(Vec::new()),
        "version": T::Int4,
        "execution_count": T::Int8 => Value::I64(0),
        "success_count": T::Int8 => Value::I64(0),
        "success_rate": T::Numeric(2),
        "total_duration_ms": T::Int8 => Value::I64(0),
        "last_executed_at": T::Timestamptz,
        "created_at": T::Timestamptz,
        "updated_at": T::Timestamptz,
        "archived_at": T::Timestamptz,
    ],
};

pub static AUDIT_LOGS: TableDef = TableDef {
    name: "audit_logs",
    parent: None,
    columns: columns![
        "id": T::Uuid,
        "occurred_at": T::Timestamptz,
        "actor": T::Text,
        "actor_user_id": T::Uuid,
        "action": T::Text,
        "resource_type": T::Text,
        "resource_id": T::Uuid,
        "version": T::Int8,
        "before": T::Jsonb,
        "after": T::Jsonb,
        "ip_address": T::Text,
        "user_agent": T::Text,
        "correlation_id": T::Uuid,
        "command_id": T::Uuid,
    ],
};

/// The relational tables in write order.
pub static RELATIONAL: [&TableDef; 9] = [
    &USERS,
    &SESSIONS,
    &CONVERSATIONS,
    &MESSAGES,
    &WORKFLOWS,
    &EXECUTIONS,
    &STEPS,
    &INCIDENTS,
    &RUNBOOKS,
];
