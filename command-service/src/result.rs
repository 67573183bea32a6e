//! The result a client gets for a command (the contract's `Result`), and
//! the encodings it travels in.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// The status values of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Accepted,
    Rejected,
    Conflict,
    Invalid,
    Unauthorized,
    Forbidden,
    RateLimited,
    Unavailable,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Accepted => "accepted",
            Status::Rejected => "rejected",
            Status::Conflict => "conflict",
            Status::Invalid => "invalid",
            Status::Unauthorized => "unauthorized",
            Status::Forbidden => "forbidden",
            Status::RateLimited => "rate_limited",
            Status::Unavailable => "unavailable",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    pub command_id: Uuid,
    pub status: Status,
    pub replayed: bool,
    pub aggregate_id: Uuid,
    pub version: Option<u64>,
    pub position: Option<String>,
    pub events: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl CommandResult {
    pub fn failed(
        command_id: Uuid,
        aggregate_id: Uuid,
        status: Status,
        code: &str,
        message: impl Into<String>,
        details: Option<Value>,
    ) -> Self {
        CommandResult {
            command_id,
            status,
            replayed: false,
            aggregate_id,
            version: None,
            position: None,
            events: Vec::new(),
            data: None,
            error: Some(ErrorBody {
                code: code.to_string(),
                message: message.into(),
                details,
            }),
        }
    }
}

/// How a message is encoded; the reply uses the request's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    MessagePack,
    Json,
}

impl Encoding {
    /// `application/json` (with or without parameters) selects JSON;
    /// anything else, or no header, MessagePack.
    pub fn from_content_type(content_type: Option<&str>) -> Self {
        match content_type {
            Some(ct)
                if ct
                    .split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json")) =>
            {
                Encoding::Json
            }
            _ => Encoding::MessagePack,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::MessagePack => "application/msgpack",
            Encoding::Json => "application/json",
        }
    }

    pub fn encode<T: Serialize>(self, value: &T) -> Vec<u8> {
        let encoded = match self {
            Encoding::Json => serde_json::to_vec(value).map_err(|e| e.to_string()),
            Encoding::MessagePack => domain::codec::encode(value).map_err(|e| e.to_string()),
        };
        // Results are plain data; failing to encode one is a bug, answered
        // with the smallest message that still says so.
        encoded.unwrap_or_else(|error| {
            tracing::error!(%error, "cannot encode a result");
            b"{\"status\":\"unavailable\"}".to_vec()
        })
    }
}
