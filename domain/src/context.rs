//! What a decision needs from outside, resolved before `decide` is called.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{ApiKeyId, UserId};
use crate::values::{Role, Scope, WorkflowStatus};
use crate::DomainError;

/// Who is acting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Actor {
    /// A signed-in user (session token or API key).
    User { id: UserId, role: Role },
    /// The bootstrap token: an admin credential with no user behind it.
    Bootstrap,
    /// The system itself (scheduled jobs, internal commands).
    System,
    /// Nobody signed in (only `session.start` accepts that).
    Anonymous,
}

impl Actor {
    pub fn user_id(&self) -> Option<UserId> {
        match self {
            Actor::User { id, .. } => Some(*id),
            _ => None,
        }
    }

    pub fn is_admin(&self) -> bool {
        matches!(
            self,
            Actor::User {
                role: Role::Admin,
                ..
            } | Actor::Bootstrap
                | Actor::System
        )
    }

    pub fn is_viewer(&self) -> bool {
        matches!(
            self,
            Actor::User {
                role: Role::Viewer,
                ..
            }
        )
    }

    /// The actor's text form in event metadata and the audit log.
    pub fn label(&self) -> String {
        match self {
            Actor::User { id, .. } => id.to_string(),
            Actor::Bootstrap => "bootstrap".into(),
            Actor::System => "system".into(),
            Actor::Anonymous => "anonymous".into(),
        }
    }

    pub fn require_admin(&self) -> Result<(), DomainError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(DomainError::Forbidden("an admin role is required".into()))
        }
    }

    /// Signed in and allowed to change shared resources (not a viewer).
    pub fn require_writer(&self) -> Result<(), DomainError> {
        match self {
            Actor::Anonymous => Err(DomainError::Forbidden("sign in first".into())),
            a if a.is_viewer() => Err(DomainError::Forbidden("viewers cannot change this".into())),
            _ => Ok(()),
        }
    }

    /// The owner of a resource, or an admin.
    pub fn require_owner_or_admin(&self, owner: UserId) -> Result<(), DomainError> {
        if self.is_admin() || self.user_id() == Some(owner) {
            Ok(())
        } else {
            Err(DomainError::Forbidden(
                "only the owner or an admin may do this".into(),
            ))
        }
    }
}

/// Everything outside the aggregate that a decision may need.
#[derive(Debug, Clone)]
pub struct Context {
    pub now: DateTime<Utc>,
    pub actor: Actor,
    /// The id of the aggregate the command targets (the envelope's
    /// `aggregate_id`): a user acting on their own account is its owner.
    pub aggregate_id: uuid::Uuid,
    /// The argon2id hash of the password in the command (register,
    /// change_password), computed before deciding.
    pub password_hash: Option<String>,
    /// Whether the password in the command matched the stored hash
    /// (change_password, session.start).
    pub password_verified: Option<bool>,
    /// session.start: the user found by e-mail, with the facts the rules need.
    pub login: Option<LoginFacts>,
    /// session.start: the hash of the new token (the token itself is
    /// returned to the client once and never stored).
    pub token_hash: Option<String>,
    /// user.issue_api_key: the new key's id, hash and display prefix.
    pub new_api_key: Option<NewApiKey>,
    /// execution.start: the workflow the run belongs to.
    pub workflow: Option<WorkflowFacts>,
    /// The dimension of the configured embedder.
    pub embedding_dimension: usize,
}

impl Context {
    /// The same context for the aggregate `id`.
    pub fn for_aggregate(mut self, id: impl Into<uuid::Uuid>) -> Self {
        self.aggregate_id = id.into();
        self
    }

    pub fn new(now: DateTime<Utc>, actor: Actor) -> Self {
        Context {
            now,
            actor,
            aggregate_id: uuid::Uuid::nil(),
            password_hash: None,
            password_verified: None,
            login: None,
            token_hash: None,
            new_api_key: None,
            workflow: None,
            embedding_dimension: 384,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginFacts {
    pub user_id: UserId,
    pub role: Role,
    pub locked: bool,
    pub deleted: bool,
    pub mfa_enabled: bool,
    /// Whether the MFA code given was valid (None when none was given).
    pub mfa_code_valid: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewApiKey {
    pub key_id: ApiKeyId,
    pub key_hash: String,
    /// The first characters of the key, shown in listings.
    pub prefix: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowFacts {
    pub version: u32,
    pub status: WorkflowStatus,
    pub max_retries: u32,
}

/// Scopes an API key needs for a command: everything needs `commands:write`.
pub fn scope_allows(scopes: &[Scope], admin_command: bool) -> bool {
    scopes.contains(&Scope::Admin) || (!admin_command && scopes.contains(&Scope::CommandsWrite))
}
