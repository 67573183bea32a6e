//! A user account: profile, role, password, MFA, API keys, locking,
//! deletion and forgetting (crypto-shredding of personal data).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::context::Actor;
use crate::ids::{ApiKeyId, UserId};
use crate::values::{DisplayName, Email, Name, Password, Role, Scope, Text, TotpSecret};
use crate::{Aggregate, Context, DomainError, Personal, Secret};

pub struct User;

/// Failed logins in a row that lock the account.
pub const MAX_FAILED_LOGINS: u32 = 5;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Register {
    pub email: Email,
    pub display_name: DisplayName,
    pub password: Password,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateProfile {
    pub display_name: Option<DisplayName>,
    pub preferences: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeRole {
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangePassword {
    pub current_password: Password,
    pub new_password: Password,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnableMfa {
    /// The client's own secret; without one the service makes one and
    /// answers it (and its `otpauth://` URI) once, over request/reply.
    pub secret: Option<TotpSecret>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueApiKey {
    pub name: Name,
    pub scopes: Vec<Scope>,
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeApiKey {
    pub key_id: ApiKeyId,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    pub reason: Text,
}

pub use crate::Empty;

/// Internal: the outcome of a login attempt, decided on the user's stream
/// (`session.start` resolves the password first and sends this).
#[derive(Debug, Clone, PartialEq)]
pub struct RecordLogin {
    pub succeeded: bool,
    pub ip_address: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Register(Register),
    UpdateProfile(UpdateProfile),
    ChangeRole(ChangeRole),
    ChangePassword(ChangePassword),
    EnableMfa(EnableMfa),
    DisableMfa(Empty),
    IssueApiKey(IssueApiKey),
    RevokeApiKey(RevokeApiKey),
    Lock(Lock),
    Unlock(Empty),
    Delete(Empty),
    Forget(Empty),
    RecordLogin(RecordLogin),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registered {
    pub email: Personal<String>,
    pub display_name: Personal<String>,
    pub role: Role,
    pub password_hash: Secret<String>,
    pub registered_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileUpdated {
    pub display_name: Option<Personal<String>>,
    pub display_name_before: Option<Personal<String>>,
    pub preferences: Option<Value>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleChanged {
    pub from: Role,
    pub to: Role,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PasswordChanged {
    pub password_hash: Secret<String>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MfaEnabled {
    /// The TOTP seed: personal, and a secret (shown nowhere but the log).
    pub secret: Secret<Personal<String>>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct At {
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyIssued {
    pub key_id: ApiKeyId,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub expires_at: Option<DateTime<Utc>>,
    pub key_hash: Secret<String>,
    pub prefix: String,
    pub issued_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyRevoked {
    pub key_id: ApiKeyId,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Locked {
    pub reason: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoginFailed {
    /// Failed attempts in a row, this one included.
    pub consecutive_failures: u32,
    pub ip_address: Option<Personal<String>>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoginSucceeded {
    pub ip_address: Option<Personal<String>>,
    pub at: DateTime<Utc>,
}

events! {
    /// What happens to a user account.
    Event {
        Registered(Registered) = "user_registered" v 1,
        ProfileUpdated(ProfileUpdated) = "user_profile_updated" v 1,
        RoleChanged(RoleChanged) = "user_role_changed" v 1,
        PasswordChanged(PasswordChanged) = "user_password_changed" v 1,
        MfaEnabled(MfaEnabled) = "user_mfa_enabled" v 1,
        MfaDisabled(At) = "user_mfa_disabled" v 1,
        ApiKeyIssued(ApiKeyIssued) = "api_key_issued" v 1,
        ApiKeyRevoked(ApiKeyRevoked) = "api_key_revoked" v 1,
        Locked(Locked) = "user_locked" v 1,
        Unlocked(At) = "user_unlocked" v 1,
        LoginFailed(LoginFailed) = "user_login_failed" v 1,
        LoginSucceeded(LoginSucceeded) = "user_login_succeeded" v 1,
        Deleted(At) = "user_deleted" v 1,
        Forgotten(At) = "user_forgotten" v 1,
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyState {
    pub scopes: Vec<Scope>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked: bool,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct State {
    pub exists: bool,
    pub role: Option<Role>,
    pub display_name: Option<Personal<String>>,
    pub mfa_enabled: bool,
    pub locked: bool,
    pub deleted: bool,
    pub forgotten: bool,
    pub failed_logins: u32,
    pub api_keys: BTreeMap<ApiKeyId, ApiKeyState>,
}

impl Aggregate for User {
    const STREAM_TYPE: &'static str = "user";
    type State = State;
    type Command = Command;
    type Event = Event;

    /// A user's events hold their own data.
    fn data_subject(
        aggregate_id: uuid::Uuid,
        _state: &State,
        _event: &Event,
    ) -> Option<uuid::Uuid> {
        Some(aggregate_id)
    }

    fn state_subject(aggregate_id: uuid::Uuid, _state: &State) -> Option<uuid::Uuid> {
        Some(aggregate_id)
    }

    fn decide(state: &State, command: Command, ctx: &Context) -> Result<Vec<Event>, DomainError> {
        let user_id = UserId(ctx.aggregate_id);
        use Command as C;
        if let C::Register(r) = command {
            if !matches!(ctx.actor, Actor::Bootstrap | Actor::System) && !ctx.actor.is_admin() {
                return Err(DomainError::Forbidden(
                    "only an admin can register users".into(),
                ));
            }
            if state.exists {
                return Err(DomainError::rejected(
                    "already_exists",
                    "the user already exists",
                ));
            }
            let password_hash = ctx
                .password_hash
                .clone()
                .ok_or_else(|| DomainError::invalid("password", "was not hashed"))?;
            return Ok(vec![Event::Registered(Registered {
                email: Personal::new(r.email.as_str().to_string()),
                display_name: Personal::new(r.display_name.into_inner()),
                role: r.role,
                password_hash: Secret::new(password_hash),
                registered_at: ctx.now,
            })]);
        }
        if !state.exists || state.forgotten {
            return Err(DomainError::NotFound("user"));
        }
        if state.deleted && !matches!(command, C::Forget(_)) {
            return Err(DomainError::rejected("user_deleted", "the user is deleted"));
        }
        let at = At { at: ctx.now };
        match command {
            C::Register(_) => Err(DomainError::rejected(
                "already_exists",
                "the user already exists",
            )),
            C::UpdateProfile(u) => {
                ctx.actor.require_owner_or_admin(user_id)?;
                if u.display_name.is_none() && u.preferences.is_none() {
                    return Err(DomainError::rejected(
                        "nothing_to_update",
                        "the update changes nothing",
                    ));
                }
                if u.preferences.as_ref().is_some_and(|p| !p.is_object()) {
                    return Err(DomainError::invalid("preferences", "must be an object"));
                }
                Ok(vec![Event::ProfileUpdated(ProfileUpdated {
                    display_name_before: u.display_name.as_ref().and(state.display_name.clone()),
                    display_name: u.display_name.map(|d| Personal::new(d.into_inner())),
                    preferences: u.preferences,
                    updated_at: ctx.now,
                })])
            }
            C::ChangeRole(c) => {
                ctx.actor.require_admin()?;
                let from = state.role.unwrap_or(Role::Viewer);
                if from == c.role {
                    return Err(DomainError::rejected(
                        "role_unchanged",
                        "the user already has this role",
                    ));
                }
                Ok(vec![Event::RoleChanged(RoleChanged {
                    from,
                    to: c.role,
                    at: ctx.now,
                })])
            }
            C::ChangePassword(_) => {
                ctx.actor.require_credential_owner_or_admin(user_id)?;
                if ctx.password_verified != Some(true) {
                    return Err(DomainError::rejected(
                        "wrong_password",
                        "the current password is wrong",
                    ));
                }
                let password_hash = ctx
                    .password_hash
                    .clone()
                    .ok_or_else(|| DomainError::invalid("new_password", "was not hashed"))?;
                Ok(vec![Event::PasswordChanged(PasswordChanged {
                    password_hash: Secret::new(password_hash),
                    at: ctx.now,
                })])
            }
            C::EnableMfa(m) => {
                ctx.actor.require_credential_owner_or_admin(user_id)?;
                if state.mfa_enabled {
                    return Err(DomainError::rejected(
                        "mfa_already_enabled",
                        "MFA is already enabled",
                    ));
                }
                let secret = match m.secret {
                    Some(secret) => secret.into_inner(),
                    None => ctx
                        .new_mfa_secret
                        .clone()
                        .ok_or_else(|| DomainError::invalid("secret", "was not generated"))?,
                };
                Ok(vec![Event::MfaEnabled(MfaEnabled {
                    secret: Secret::new(Personal::new(secret)),
                    at: ctx.now,
                })])
            }
            C::DisableMfa(_) => {
                ctx.actor.require_credential_owner_or_admin(user_id)?;
                if !state.mfa_enabled {
                    return Err(DomainError::rejected(
                        "mfa_not_enabled",
                        "MFA is not enabled",
                    ));
                }
                Ok(vec![Event::MfaDisabled(at)])
            }
            C::IssueApiKey(k) => {
                ctx.actor.require_credential_owner_or_admin(user_id)?;
                if k.scopes.is_empty() {
                    return Err(DomainError::invalid("scopes", "name at least one scope"));
                }
                if k.scopes.contains(&Scope::Admin) && state.role != Some(Role::Admin) {
                    return Err(DomainError::Forbidden(
                        "only an admin's key can have the admin scope".into(),
                    ));
                }
                // A credential never mints a wider one.
                if !ctx.actor.scopes().covers(&k.scopes) {
                    return Err(DomainError::Forbidden(
                        "a key cannot be given scopes the credential issuing it lacks".into(),
                    ));
                }
                if k.expires_at.is_some_and(|e| e <= ctx.now) {
                    return Err(DomainError::invalid("expires_at", "must be in the future"));
                }
                let new = ctx
                    .new_api_key
                    .clone()
                    .ok_or_else(|| DomainError::invalid("api_key", "was not generated"))?;
                if state.api_keys.contains_key(&new.key_id) {
                    return Err(DomainError::rejected(
                        "already_exists",
                        "an API key with this id exists",
                    ));
                }
                let mut scopes = k.scopes;
                scopes.sort();
                scopes.dedup();
                Ok(vec![Event::ApiKeyIssued(ApiKeyIssued {
                    key_id: new.key_id,
                    name: k.name.into_inner(),
                    scopes,
                    expires_at: k.expires_at,
                    key_hash: Secret::new(new.key_hash),
                    prefix: new.prefix,
                    issued_at: ctx.now,
                })])
            }
            C::RevokeApiKey(r) => {
                ctx.actor.require_credential_owner_or_admin(user_id)?;
                let key = state.api_keys.get(&r.key_id).ok_or_else(|| {
                    DomainError::rejected("api_key_not_found", "no API key with this id")
                })?;
                if key.revoked {
                    return Err(DomainError::rejected(
                        "api_key_already_revoked",
                        "the API key is already revoked",
                    ));
                }
                Ok(vec![Event::ApiKeyRevoked(ApiKeyRevoked {
                    key_id: r.key_id,
                    at: ctx.now,
                })])
            }
            C::Lock(l) => {
                ctx.actor.require_admin()?;
                if state.locked {
                    return Err(DomainError::rejected(
                        "already_locked",
                        "the account is already locked",
                    ));
                }
                Ok(vec![Event::Locked(Locked {
                    reason: l.reason.into_inner(),
                    at: ctx.now,
                })])
            }
            C::Unlock(_) => {
                ctx.actor.require_admin()?;
                if !state.locked {
                    return Err(DomainError::rejected(
                        "not_locked",
                        "the account is not locked",
                    ));
                }
                Ok(vec![Event::Unlocked(at)])
            }
            C::Delete(_) => {
                ctx.actor.require_credential_owner_or_admin(user_id)?;
                Ok(vec![Event::Deleted(at)])
            }
            C::Forget(_) => {
                ctx.actor.require_credential_owner_or_admin(user_id)?;
                Ok(vec![Event::Forgotten(at)])
            }
            C::RecordLogin(r) => {
                let ip_address = r.ip_address.map(Personal::new);
                if r.succeeded {
                    if state.locked {
                        return Err(DomainError::rejected(
                            "account_locked",
                            "the account is locked",
                        ));
                    }
                    return Ok(vec![Event::LoginSucceeded(LoginSucceeded {
                        ip_address,
                        at: ctx.now,
                    })]);
                }
                let consecutive_failures = state.failed_logins + 1;
                let mut events = vec![Event::LoginFailed(LoginFailed {
                    consecutive_failures,
                    ip_address,
                    at: ctx.now,
                })];
                if consecutive_failures >= MAX_FAILED_LOGINS && !state.locked {
                    events.push(Event::Locked(Locked {
                        reason: format!("{consecutive_failures} failed logins in a row"),
                        at: ctx.now,
                    }));
                }
                Ok(events)
            }
        }
    }

    fn evolve(mut state: State, event: &Event) -> State {
        match event {
            Event::Registered(e) => {
                state.exists = true;
                state.role = Some(e.role);
                state.display_name = Some(e.display_name.clone());
            }
            Event::ProfileUpdated(e) => {
                if let Some(name) = &e.display_name {
                    state.display_name = Some(name.clone());
                }
            }
            Event::RoleChanged(e) => state.role = Some(e.to),
            Event::PasswordChanged(_) => {}
            Event::MfaEnabled(_) => state.mfa_enabled = true,
            Event::MfaDisabled(_) => state.mfa_enabled = false,
            Event::ApiKeyIssued(e) => {
                state.api_keys.insert(
                    e.key_id,
                    ApiKeyState {
                        scopes: e.scopes.clone(),
                        expires_at: e.expires_at,
                        revoked: false,
                    },
                );
            }
            Event::ApiKeyRevoked(e) => {
                if let Some(key) = state.api_keys.get_mut(&e.key_id) {
                    key.revoked = true;
                }
            }
            Event::Locked(_) => state.locked = true,
            Event::Unlocked(_) => {
                state.locked = false;
                state.failed_logins = 0;
            }
            Event::LoginFailed(e) => state.failed_logins = e.consecutive_failures,
            Event::LoginSucceeded(_) => state.failed_logins = 0,
            Event::Deleted(_) => state.deleted = true,
            Event::Forgotten(_) => {
                state.deleted = true;
                state.forgotten = true;
                state.display_name = Some(Personal::Erased);
            }
        }
        state
    }
}
