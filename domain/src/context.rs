//! What a decision needs from outside, resolved before `decide` is called.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{ApiKeyId, UserId};
use crate::values::{Role, Scope, WorkflowStatus};
use crate::DomainError;

/// What a credential lets its holder do, within the holder's role: a
/// session (a password, and the MFA code if enabled, were given) can do
/// all of it; an API key only what its scopes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scopes {
    read: bool,
    commands_write: bool,
    admin: bool,
}

impl Scopes {
    /// A session's: everything the role allows.
    pub const SESSION: Scopes = Scopes {
        read: true,
        commands_write: true,
        admin: true,
    };

    /// An API key's scopes.
    pub fn of(scopes: &[Scope]) -> Scopes {
        Scopes {
            read: scopes.contains(&Scope::Read),
            commands_write: scopes.contains(&Scope::CommandsWrite),
            admin: scopes.contains(&Scope::Admin),
        }
    }

    /// Whether `scope` is allowed; `admin` allows the others too.
    pub fn contains(self, scope: Scope) -> bool {
        match scope {
            Scope::Read => self.read || self.admin,
            Scope::CommandsWrite => self.commands_write || self.admin,
            Scope::Admin => self.admin,
        }
    }

    /// Whether every one of `scopes` is among these.
    pub fn covers(self, scopes: &[Scope]) -> bool {
        scopes.iter().all(|s| self.contains(*s))
    }

    /// Whether commands may be sent with it at all: a key needs
    /// `commands:write` (or `admin`); a `read` key sends none.
    pub fn may_command(self) -> bool {
        self.contains(Scope::CommandsWrite)
    }

    /// Whether the query API may be read with it: `read` (or `admin`).
    pub fn may_read(self) -> bool {
        self.contains(Scope::Read)
    }
}

/// Who is acting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Actor {
    /// A signed-in user, through a session token or an API key whose
    /// scopes limit what the user's role would allow.
    User {
        id: UserId,
        role: Role,
        scopes: Scopes,
    },
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

    /// Admin power: the bootstrap token, the system, or an admin user
    /// through a session or an API key with the `admin` scope (an admin's
    /// `commands:write` key acts with an operator's reach, no more).
    pub fn is_admin(&self) -> bool {
        match self {
            Actor::User { role, scopes, .. } => {
                *role == Role::Admin && scopes.contains(Scope::Admin)
            }
            Actor::Bootstrap | Actor::System => true,
            Actor::Anonymous => false,
        }
    }

    /// What the actor's credential allows (everything for the bootstrap
    /// token and the system, nothing for nobody).
    pub fn scopes(&self) -> Scopes {
        match self {
            Actor::User { scopes, .. } => *scopes,
            Actor::Bootstrap | Actor::System => Scopes::SESSION,
            Actor::Anonymous => Scopes::of(&[]),
        }
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
            a if !a.scopes().may_command() => Err(DomainError::Forbidden(
                "the API key lacks the commands:write scope".into(),
            )),
            _ => Ok(()),
        }
    }

    /// Allowed to manage `owner`'s credentials and account (keys, MFA,
    /// password, sessions, deletion, erasure): admin power, or the owner
    /// through a session or an `admin`-scoped key. A `commands:write` key
    /// writes data; it cannot change, widen or remove credentials, even
    /// its owner's.
    pub fn require_credential_owner_or_admin(&self, owner: UserId) -> Result<(), DomainError> {
        if self.is_admin() {
            return Ok(());
        }
        if self.user_id() != Some(owner) {
            return Err(DomainError::Forbidden(
                "only the owner or an admin may change these credentials".into(),
            ));
        }
        let scopes = self.scopes();
        if scopes.contains(Scope::Admin) || scopes == Scopes::SESSION {
            Ok(())
        } else {
            Err(DomainError::Forbidden(
                "managing credentials needs a session or an admin-scoped API key".into(),
            ))
        }
    }

    /// The owner of a resource, or an admin; through a credential that
    /// may send commands.
    pub fn require_owner_or_admin(&self, owner: UserId) -> Result<(), DomainError> {
        if !self.scopes().may_command() {
            return Err(DomainError::Forbidden(
                "the API key lacks the commands:write scope".into(),
            ));
        }
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
    /// user.enable_mfa without a secret: the one the service made (base32).
    pub new_mfa_secret: Option<String>,
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
            new_mfa_secret: None,
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
    /// The time step of the MFA code given, if it matched the user's
    /// secret (`None`: no code, or a wrong one).
    pub mfa_step: Option<i64>,
    /// The time step of the last code a sign-in of this user accepted.
    pub last_mfa_step: Option<i64>,
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
