//! Why a command was not accepted, and the one place that becomes a wire
//! result: every step of the pipeline returns a [`CommandError`], and
//! [`CommandError::result`] maps each kind to its status, code and
//! message, exhaustively (as the query service's `problem.rs` does for
//! HTTP). A cause that may name internals (a database error, a key that
//! cannot be opened) is logged there and never sent.

use std::time::Duration;

use domain::DomainError;
use eventstore::{AppendError, StoreError};
use serde_json::json;
use uuid::Uuid;

use crate::authn::{LookupError, Refusal};
use crate::envelope::Invalid;
use crate::result::{CommandResult, Status};

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("the message has {size} bytes, more than the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    /// The envelope or the payload does not decode.
    #[error("{}", .0.message)]
    Malformed(Invalid),
    #[error("{0} answers with a secret, which a JetStream result would keep; send it over request/reply (<prefix>.rpc.{0})")]
    RequestReplyOnly(String),
    #[error("the credential is refused ({0:?})")]
    Credential(Refusal),
    #[error("too many commands; retry later")]
    RateLimited { retry_after: Duration },
    /// The domain (or the inline projection) refused the command.
    #[error(transparent)]
    Domain(DomainError),
    #[error("aggregate {id} is a {actual}, not a {expected}")]
    WrongStream {
        id: Uuid,
        actual: String,
        expected: &'static str,
    },
    #[error("expected version {expected}, the stream is at {actual}")]
    Conflict { expected: u64, actual: u64 },
    /// The store refused or failed the append.
    #[error(transparent)]
    Append(#[from] AppendError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The credential and the stored outcome could not be read.
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error("event {version} of {stream}: {reason}")]
    Undecodable {
        stream: Uuid,
        version: u64,
        reason: String,
    },
    /// Encoding or sealing the events failed.
    #[error("encoding the events: {0}")]
    Encode(String),
    /// A fact the decision needs could not be had (a hash, a key, a row).
    #[error("{0}")]
    Facts(String),
    #[error("cannot outdate cached credentials in Redis: {0}")]
    Epochs(String),
    #[error("a decided command has no stored outcome")]
    NoStoredOutcome,
}

impl From<Refusal> for CommandError {
    fn from(refusal: Refusal) -> Self {
        CommandError::Credential(refusal)
    }
}

impl From<DomainError> for CommandError {
    fn from(error: DomainError) -> Self {
        CommandError::Domain(error)
    }
}

impl CommandError {
    /// The wire result of command `command_id` on `aggregate_id`.
    pub fn result(&self, command_id: Uuid, aggregate_id: Uuid) -> CommandResult {
        let failed = |status, code: &str, message: String, details| {
            CommandResult::failed(command_id, aggregate_id, status, code, message, details)
        };
        let message = self.to_string();
        match self {
            CommandError::TooLarge { limit, .. } => failed(
                Status::Invalid,
                "too_large",
                message,
                Some(json!({"field": "message", "limit": limit})),
            ),
            CommandError::Malformed(invalid) => {
                let code = if invalid.field == "type" {
                    "unknown_command"
                } else {
                    "invalid"
                };
                failed(Status::Invalid, code, message, Some(invalid.details()))
            }
            CommandError::RequestReplyOnly(_) => failed(
                Status::Invalid,
                "request_reply_only",
                message,
                Some(json!({"field": "type"})),
            ),
            CommandError::Credential(Refusal::Unauthorized(code)) => failed(
                Status::Unauthorized,
                code,
                "the credential is missing, unknown, expired or revoked".into(),
                None,
            ),
            CommandError::Credential(Refusal::Forbidden(code)) => failed(
                Status::Forbidden,
                code,
                "the API key lacks the scope this command needs".into(),
                None,
            ),
            CommandError::RateLimited { retry_after } => {
                let retry_ms = u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX);
                failed(
                    Status::RateLimited,
                    "rate_limited",
                    message,
                    Some(json!({"retry_after_ms": retry_ms})),
                )
            }
            CommandError::Domain(error) => domain_refusal(error, failed),
            CommandError::WrongStream { .. } => {
                failed(Status::Rejected, "not_found", message, None)
            }
            CommandError::Conflict { expected, actual } => {
                let mut result = failed(
                    Status::Conflict,
                    "conflict",
                    message,
                    Some(json!({"expected_version": expected, "actual_version": actual})),
                );
                result.version = Some(*actual);
                result
            }
            CommandError::Append(
                AppendError::TooManyEvents { .. } | AppendError::PayloadTooLarge { .. },
            ) => failed(
                Status::Invalid,
                "too_large",
                message,
                Some(json!({"field": "payload"})),
            ),
            // The domain produced an empty or untyped append (our bug, not
            // the client's), the store failed, or a check held the append
            // back where it should have been answered: nothing was written.
            CommandError::Append(
                AppendError::Empty { .. }
                | AppendError::MissingType { .. }
                | AppendError::Conflict { .. }
                | AppendError::StaleTransaction { .. }
                | AppendError::Decided
                | AppendError::Unverified
                | AppendError::Store(_),
            )
            | CommandError::Store(_)
            | CommandError::Database(_)
            | CommandError::Lookup(_)
            | CommandError::Undecodable { .. }
            | CommandError::Encode(_)
            | CommandError::Facts(_)
            | CommandError::Epochs(_)
            | CommandError::NoStoredOutcome => {
                tracing::error!(error = %self, %command_id, "command failed: a dependency is unavailable");
                failed(
                    Status::Unavailable,
                    "unavailable",
                    "a dependency is unavailable; retry with the same command id".into(),
                    None,
                )
            }
        }
    }

    /// Whether the answer is a rejection to keep as the command's one
    /// outcome (so a retry with the same id gets the same answer).
    pub fn is_stored(&self) -> bool {
        matches!(
            self,
            CommandError::Domain(DomainError::Rejected { .. } | DomainError::NotFound(_))
        )
    }
}

/// The wire status of a domain refusal.
fn domain_refusal(
    error: &DomainError,
    failed: impl Fn(Status, &str, String, Option<serde_json::Value>) -> CommandResult,
) -> CommandResult {
    match error {
        DomainError::Rejected { code, message } => {
            failed(Status::Rejected, code, message.clone(), None)
        }
        DomainError::Forbidden(message) => {
            failed(Status::Forbidden, "forbidden", message.clone(), None)
        }
        DomainError::NotFound(what) => failed(
            Status::Rejected,
            "not_found",
            format!("{what} not found"),
            None,
        ),
        DomainError::Invalid { field, message } => failed(
            Status::Invalid,
            "invalid",
            message.clone(),
            Some(json!({"field": format!("payload.{field}")})),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (Uuid, Uuid) {
        (Uuid::now_v7(), Uuid::now_v7())
    }

    #[test]
    fn internal_causes_are_logged_not_sent() {
        let (command, aggregate) = ids();
        let error = CommandError::Facts("bad role superuser in auth_users".into());
        let result = error.result(command, aggregate);
        assert_eq!(result.status, Status::Unavailable);
        let body = result.error.expect("an error body");
        assert_eq!(body.code, "unavailable");
        assert!(!body.message.contains("auth_users"), "{}", body.message);
        assert_eq!(
            (result.command_id, result.aggregate_id),
            (command, aggregate)
        );
    }

    #[test]
    fn a_conflict_carries_both_versions() {
        let (command, aggregate) = ids();
        let result = CommandError::Conflict {
            expected: 3,
            actual: 5,
        }
        .result(command, aggregate);
        assert_eq!(result.status, Status::Conflict);
        assert_eq!(result.version, Some(5));
        let body = result.error.expect("an error body");
        assert_eq!(
            body.details,
            Some(json!({"expected_version": 3, "actual_version": 5}))
        );
    }

    #[test]
    fn only_rejections_are_stored() {
        assert!(CommandError::Domain(DomainError::rejected("x", "no")).is_stored());
        assert!(CommandError::Domain(DomainError::NotFound("incident")).is_stored());
        assert!(!CommandError::Domain(DomainError::Forbidden("no".into())).is_stored());
        assert!(!CommandError::Domain(DomainError::invalid("title", "empty")).is_stored());
        assert!(!CommandError::Conflict {
            expected: 1,
            actual: 2
        }
        .is_stored());
    }

    #[test]
    fn store_limits_are_the_clients_fault() {
        let (command, aggregate) = ids();
        let result = CommandError::Append(AppendError::TooManyEvents {
            stream_id: aggregate,
            count: 9,
            limit: 8,
        })
        .result(command, aggregate);
        assert_eq!(result.status, Status::Invalid);
        assert_eq!(result.error.map(|e| e.code), Some("too_large".into()));
    }
}
