//! A signed-in session: started with a password (and MFA code), touched
//! while in use, ended by logout; it expires after 24 hours and after 30
//! minutes without use.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::UserId;
use crate::values::{Email, JsonObject, Label, Password, Role, Text};
use crate::{Aggregate, Context, DomainError, Personal, Secret};

pub struct Session;

pub const SESSION_LIFETIME: Duration = Duration::hours(24);
pub const IDLE_TIMEOUT: Duration = Duration::minutes(30);

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Start {
    pub email: Email,
    pub password: Password,
    pub mfa_code: Option<Label>,
    pub device_fingerprint: Option<Label>,
    pub ip_address: Option<Label>,
    pub user_agent: Option<Text>,
    /// What the client keeps with its session (the seed's session
    /// context): an object of at most 16 KiB.
    pub context: Option<JsonObject>,
}

pub use crate::Empty;

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Start(Start),
    Touch(Empty),
    End(Empty),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Started {
    pub user_id: UserId,
    pub role: Role,
    pub token_hash: Secret<String>,
    pub expires_at: DateTime<Utc>,
    pub device_fingerprint: Option<String>,
    pub ip_address: Option<Personal<String>>,
    pub user_agent: Option<Personal<String>>,
    /// The time step of the MFA code this sign-in used (never accepted
    /// again for the user); absent in events written before it was kept.
    #[serde(default)]
    pub mfa_step: Option<i64>,
    /// Absent in events written before sessions had one.
    #[serde(default)]
    pub context: Option<Personal<serde_json::Value>>,
    pub started_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Touched {
    pub at: DateTime<Utc>,
    pub idle_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ended {
    pub user_id: UserId,
    /// `logout`, `expired` or `idle`.
    pub reason: String,
    pub at: DateTime<Utc>,
}

events! {
    /// What happens to a session.
    Event {
        Started(Started) = "session_started" v 1,
        Touched(Touched) = "session_touched" v 1,
        Ended(Ended) = "session_ended" v 1,
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct State {
    pub user_id: Option<UserId>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_seen: Option<DateTime<Utc>>,
    pub ended: bool,
}

impl Aggregate for Session {
    const STREAM_TYPE: &'static str = "session";
    type State = State;
    type Command = Command;
    type Event = Event;

    /// A session's address, program and context belong to its user.
    fn data_subject(_aggregate_id: uuid::Uuid, state: &State, event: &Event) -> Option<uuid::Uuid> {
        match event {
            Event::Started(e) => Some(e.user_id.0),
            _ => state.user_id.map(|u| u.0),
        }
    }

    fn decide(state: &State, command: Command, ctx: &Context) -> Result<Vec<Event>, DomainError> {
        let Some(user_id) = state.user_id else {
            let Command::Start(start) = command else {
                return Err(DomainError::NotFound("session"));
            };
            // The same answer for an unknown e-mail and a wrong password,
            // so accounts cannot be probed.
            let invalid =
                || DomainError::rejected("invalid_credentials", "the e-mail or password is wrong");
            let login = ctx.login.as_ref().ok_or_else(invalid)?;
            if login.deleted {
                return Err(invalid());
            }
            // Before the password: a locked account answers every attempt
            // alike, so it is no oracle for guessing on.
            if login.locked {
                return Err(DomainError::rejected(
                    "account_locked",
                    "the account is locked",
                ));
            }
            if ctx.password_verified != Some(true) {
                return Err(invalid());
            }
            let mut mfa_step = None;
            if login.mfa_enabled {
                if start.mfa_code.is_none() {
                    return Err(DomainError::rejected(
                        "mfa_required",
                        "an MFA code is required",
                    ));
                }
                // A code is good once: one whose time step a sign-in already
                // took is refused like a wrong one.
                match login.mfa_step {
                    Some(step) if login.last_mfa_step.is_none_or(|last| step > last) => {
                        mfa_step = Some(step)
                    }
                    _ => {
                        return Err(DomainError::rejected(
                            "invalid_mfa_code",
                            "the MFA code is wrong or was used before",
                        ))
                    }
                }
            }
            let token_hash = ctx
                .token_hash
                .clone()
                .map(Secret::new)
                .ok_or_else(|| DomainError::invalid("token", "was not generated"))?;
            return Ok(vec![Event::Started(Started {
                user_id: login.user_id,
                role: login.role,
                token_hash,
                expires_at: ctx.now + SESSION_LIFETIME,
                device_fingerprint: start.device_fingerprint.map(Label::into_inner),
                ip_address: start.ip_address.map(|ip| Personal::new(ip.into_inner())),
                user_agent: start.user_agent.map(|ua| Personal::new(ua.into_inner())),
                mfa_step,
                context: start.context.map(|c| Personal::new(c.into_inner())),
                started_at: ctx.now,
            })]);
        };
        if matches!(command, Command::Start(_)) {
            return Err(DomainError::rejected(
                "already_exists",
                "the session already exists",
            ));
        }
        // Ending a session is managing a credential; touching one is using it.
        if matches!(command, Command::End(_)) {
            ctx.actor.require_credential_owner_or_admin(user_id)?;
        } else {
            ctx.actor.require_owner_or_admin(user_id)?;
        }
        if state.ended {
            return Err(DomainError::rejected(
                "session_ended",
                "the session has ended",
            ));
        }
        let ended = |reason: &str| {
            Event::Ended(Ended {
                user_id,
                reason: reason.into(),
                at: ctx.now,
            })
        };
        match command {
            Command::Start(_) => Err(DomainError::rejected(
                "already_exists",
                "the session already exists",
            )),
            Command::Touch(_) => {
                if state.expires_at.is_some_and(|e| ctx.now >= e) {
                    return Err(DomainError::rejected(
                        "session_expired",
                        "the session has expired",
                    ));
                }
                let last_seen = state.last_seen.unwrap_or(ctx.now);
                if ctx.now - last_seen > IDLE_TIMEOUT {
                    return Err(DomainError::rejected(
                        "session_idle_timeout",
                        "the session was idle too long",
                    ));
                }
                Ok(vec![Event::Touched(Touched {
                    at: ctx.now,
                    idle_ms: crate::millis_between(last_seen, ctx.now),
                })])
            }
            Command::End(_) => Ok(vec![ended("logout")]),
        }
    }

    fn evolve(mut state: State, event: &Event) -> State {
        match event {
            Event::Started(e) => {
                state.user_id = Some(e.user_id);
                state.expires_at = Some(e.expires_at);
                state.last_seen = Some(e.started_at);
            }
            Event::Touched(e) => state.last_seen = Some(e.at),
            Event::Ended(_) => state.ended = true,
        }
        state
    }
}

/// Whether a session is usable at `now` (not ended, not expired, not idle).
pub fn is_live(state: &State, now: DateTime<Utc>) -> bool {
    !state.ended
        && state.expires_at.is_some_and(|e| now < e)
        && state
            .last_seen
            .is_some_and(|seen| now - seen <= IDLE_TIMEOUT)
}
