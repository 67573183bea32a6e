//! What goes into the log and what comes out of it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Position;

/// The optimistic-concurrency condition of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// Append whatever the stream's version is (creating it if needed).
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must be at exactly this version (0 = must not exist).
    Exact(u64),
}

impl std::fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exact(v) => write!(f, "{v}"),
        }
    }
}

/// Who caused an append and why; stored as `jsonb` beside every event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// The command that produced the events; the idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// The principal (a user id, `bootstrap`, `system`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The client's address and program, as vouched for by a trusted
    /// agent (a front end the deployment names) that sent the command; the
    /// audit log shows them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// What any other sender said of its address and program: kept as its
    /// claim, never shown as fact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_user_agent: Option<String>,
}

/// An event to append: its payload is already encoded (MessagePack).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: i32,
    pub payload: Vec<u8>,
}

impl NewEvent {
    /// A new event with a fresh time-ordered id.
    pub fn new(event_type: impl Into<String>, schema_version: i32, payload: Vec<u8>) -> Self {
        NewEvent {
            event_id: Uuid::now_v7(),
            event_type: event_type.into(),
            schema_version,
            payload,
        }
    }
}

/// One or more events for one stream, appended atomically.
#[derive(Debug, Clone)]
pub struct AppendRequest {
    pub stream_id: Uuid,
    /// The aggregate type of the stream (`conversation`, `incident`, ...).
    pub stream_type: String,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
    pub metadata: Metadata,
}

/// What an append did (or, when `replayed`, what the first append of the
/// same command id did).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendOutcome {
    pub stream_id: Uuid,
    /// Version of the first event written.
    pub first_version: u64,
    /// The stream's version after the append.
    pub version: u64,
    /// Position of the last event written: the consistency token.
    pub position: Position,
    /// True when the command id had been appended before and nothing was written.
    pub replayed: bool,
}

/// An event as stored in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    pub position: Position,
    pub stream_id: Uuid,
    pub stream_type: String,
    pub version: u64,
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: i32,
    pub payload: Vec<u8>,
    pub metadata: Metadata,
    pub recorded_at: DateTime<Utc>,
}

/// The saved state of one stream at a version, so long streams load fast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub stream_id: Uuid,
    pub version: u64,
    pub schema_version: i32,
    pub state: Vec<u8>,
}
