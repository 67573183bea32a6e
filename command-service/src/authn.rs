//! Who sent a command: a session token, an API key or the bootstrap token,
//! checked against the auth index (written inline with the events, so it is
//! exactly as current as the log).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use domain::context::{Actor, Scopes};
use domain::ids::UserId;
use domain::session::IDLE_TIMEOUT;
use domain::values::{Role, Scope};
use eventstore::coalesce::{Coalescer, Pending};
use infra::auth::{constant_time_eq, parse_bearer, token_hash, verify_secret_bounded, Bearer};
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use uuid::Uuid;

use eventstore::Guard;

/// Why a credential was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No, a malformed, an unknown, an expired or a revoked credential.
    Unauthorized(&'static str),
    /// A valid API key without the scope the command needs.
    Forbidden(&'static str),
}

pub struct Authenticator {
    pool: PgPool,
    /// Preflights that arrive together share one query.
    lookups: Coalescer<Lookup, Result<SessionRow, LookupError>>,
    bootstrap: Option<SecretString>,
    /// API keys whose argon2 hash was verified: token digest → key id, so
    /// the preflight (a key's first use, or after its copy in `valid_keys`
    /// failed a check) reads revocation and expiry without hashing again.
    verified_keys: Mutex<HashMap<String, Uuid>>,
    /// Sessions this instance verified: token hash → what it found. A copy
    /// is never the last word: a command decided under it is appended only
    /// if the append's own statement finds the session still so (see
    /// `eventstore::Guard`), and anything else is held back and checked in full.
    verified_sessions: Mutex<HashMap<String, VerifiedSession>>,
    /// API keys this instance found valid: token digest → what it found.
    /// Like a session's copy, never the last word (see `eventstore::Guard`).
    valid_keys: Mutex<HashMap<String, ValidKey>>,
}

/// An API key as the auth index showed it when it was last found valid.
#[derive(Debug, Clone)]
struct ValidKey {
    key_id: Uuid,
    user_id: Uuid,
    role: String,
    /// Fixed when the key is issued.
    scopes: Scopes,
    expires_at: Option<DateTime<Utc>>,
}

/// A session as the auth index showed it when it was last verified.
#[derive(Debug, Clone)]
struct VerifiedSession {
    user_id: Uuid,
    role: String,
    expires_at: DateTime<Utc>,
    last_seen: DateTime<Utc>,
}

/// Beyond this many verified copies, the oldest are not worth keeping
/// apart: the map is emptied (a copy costs one lookup to make again).
const MAX_VERIFIED: usize = 10_000;

/// Keeps `copy` under `key` in one of the maps of verified credentials,
/// emptying it first when it is full.
fn keep<V>(map: &Mutex<HashMap<String, V>>, key: String, copy: V) {
    if let Ok(mut map) = map.lock() {
        if map.len() >= MAX_VERIFIED {
            map.clear();
        }
        map.insert(key, copy);
    }
}

impl Authenticator {
    /// Starts the task that serves preflight lookups (needs a runtime).
    pub fn new(pool: PgPool, bootstrap: Option<SecretString>) -> Self {
        let lookup_pool = pool.clone();
        Authenticator {
            lookups: Coalescer::spawn(
                LOOKUP_SLOTS,
                MAX_LOOKUPS,
                |_: &Lookup| 1,
                move |batch| look_up(lookup_pool.clone(), batch),
            ),
            pool,
            bootstrap,
            verified_keys: Mutex::new(HashMap::new()),
            verified_sessions: Mutex::new(HashMap::new()),
            valid_keys: Mutex::new(HashMap::new()),
        }
    }

    /// The actor behind a session token or API key this instance verified
    /// before, if its copy still looks valid at `now`, and the guard under
    /// which a command decided as that actor must be appended. `None`
    /// means: check it in full ([`Authenticator::preflight`]).
    pub fn verified(
        &self,
        authorization: Option<&str>,
        command_type: &str,
        now: DateTime<Utc>,
    ) -> Option<(Actor, Guard)> {
        let token = bearer_token(authorization, command_type)?;
        let token_hash = match parse_bearer(token)? {
            Bearer::ApiKey { .. } => return self.valid_key(token, now),
            Bearer::Session(session_token) => token_hash(session_token),
        };
        let copy = self
            .verified_sessions
            .lock()
            .ok()?
            .get(&token_hash)
            .cloned()?;
        // The append's statement checks the index's own values; a copy
        // that already fails here only needs a fresh look.
        if now >= copy.expires_at || now - copy.last_seen > IDLE_TIMEOUT {
            return None;
        }
        let actor = user(copy.user_id, &copy.role, Scopes::SESSION).ok()?;
        Some((
            actor,
            Guard {
                token_hash: Some(token_hash),
                key_id: None,
                user_id: copy.user_id,
                role: copy.role,
            },
        ))
    }

    /// [`Authenticator::verified`] for an API key: its copy, if the key
    /// has not expired by `now` and may send commands (scopes never
    /// change; the rest is checked again by the append, and what the
    /// scopes allow by the domain).
    fn valid_key(&self, token: &str, now: DateTime<Utc>) -> Option<(Actor, Guard)> {
        let digest = token_hash(token);
        let copy = self.valid_keys.lock().ok()?.get(&digest).cloned()?;
        if copy.expires_at.is_some_and(|e| now >= e) || !copy.scopes.may_command() {
            return None;
        }
        let actor = user(copy.user_id, &copy.role, copy.scopes).ok()?;
        Some((
            actor,
            Guard {
                token_hash: Some(digest),
                key_id: Some(copy.key_id),
                user_id: copy.user_id,
                role: copy.role,
            },
        ))
    }

    /// Drops the copy of a session or key that no longer holds.
    pub fn forget(&self, guard: &Guard) {
        let Some(token_hash) = &guard.token_hash else {
            return;
        };
        if guard.key_id.is_some() {
            if let Ok(mut map) = self.valid_keys.lock() {
                map.remove(token_hash);
            }
        } else if let Ok(mut map) = self.verified_sessions.lock() {
            map.remove(token_hash);
        }
    }

    /// Before deciding: the stored outcome of `command_id`, if it was
    /// decided before, and the actor behind `authorization` (the header's
    /// value); `session.start` needs no credential. For a session token,
    /// the common case, both come from one query, which also serves the
    /// preflights that arrive at the same time.
    pub async fn preflight(
        &self,
        command_id: Uuid,
        authorization: Option<&str>,
        command_type: &str,
        now: DateTime<Utc>,
    ) -> Result<Preflight, LookupError> {
        let token = bearer_token(authorization, command_type);
        let session_hash = token.and_then(session_token_hash);
        let row = self
            .lookups
            .call(Lookup {
                command_id,
                session_hash: session_hash.clone(),
            })
            .await??;
        let outcome = if row.decided {
            crate::outcomes::stored(&self.pool, command_id).await?
        } else {
            None
        };
        let actor = if let Some(session_hash) = session_hash {
            let (actor, copy) = session_actor(row, now);
            if let Some(copy) = copy {
                keep(&self.verified_sessions, session_hash, copy);
            }
            actor
        } else {
            self.authenticate(authorization, token, command_type, now)
                .await?
        };
        Ok(Preflight { outcome, actor })
    }

    async fn authenticate(
        &self,
        authorization: Option<&str>,
        token: Option<&str>,
        command_type: &str,
        now: DateTime<Utc>,
    ) -> Result<Result<Actor, Refusal>, sqlx::Error> {
        if command_type == "session.start" {
            return Ok(Ok(Actor::Anonymous));
        }
        if authorization.is_none() {
            return Ok(Err(Refusal::Unauthorized("missing_token")));
        }
        let Some(token) = token else {
            return Ok(Err(Refusal::Unauthorized("malformed_authorization")));
        };
        if let Some(bootstrap) = &self.bootstrap {
            if constant_time_eq(token.as_bytes(), bootstrap.expose_secret().as_bytes()) {
                return Ok(Ok(Actor::Bootstrap));
            }
        }
        match parse_bearer(token) {
            // Sessions are checked in `preflight`.
            None | Some(Bearer::Session(_)) => Ok(Err(Refusal::Unauthorized("invalid_token"))),
            Some(Bearer::ApiKey { key_id, secret }) => {
                self.api_key(token, key_id, secret, now).await
            }
        }
    }
}

/// Preflight queries in flight at once, and the most one of them answers.
const LOOKUP_SLOTS: usize = 2;
const MAX_LOOKUPS: usize = 512;

/// The auth index could not be read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupError {
    #[error("auth index: {0}")]
    Database(Arc<sqlx::Error>),
    #[error("auth index: the lookup task has stopped")]
    Stopped,
}

impl From<eventstore::coalesce::Stopped> for LookupError {
    fn from(_: eventstore::coalesce::Stopped) -> Self {
        LookupError::Stopped
    }
}

impl From<sqlx::Error> for LookupError {
    fn from(e: sqlx::Error) -> Self {
        LookupError::Database(Arc::new(e))
    }
}

/// One preflight: a command's stored outcome and, for a session token, the
/// session and its user.
struct Lookup {
    command_id: Uuid,
    session_hash: Option<String>,
}

/// Answers a batch of preflights with one statement.
async fn look_up(pool: PgPool, batch: Vec<Pending<Lookup, Result<SessionRow, LookupError>>>) {
    crate::metrics::metrics()
        .preflight_batch_size
        .observe(batch.len() as f64);
    let (command_ids, hashes): (Vec<Uuid>, Vec<Option<&str>>) = batch
        .iter()
        .map(|p| (p.request.command_id, p.request.session_hash.as_deref()))
        .unzip();
    let rows = sqlx::query_as::<_, SessionRow>(
        "SELECT decided, user_id, role, expires_at, last_seen, ended, locked, deleted
           FROM command_preflight($1, $2) ORDER BY idx",
    )
    .bind(&command_ids)
    .bind(&hashes)
    .fetch_all(&pool)
    .await
    .map_err(LookupError::from)
    .and_then(|rows| {
        if rows.len() == batch.len() {
            Ok(rows)
        } else {
            Err(LookupError::from(sqlx::Error::Protocol(format!(
                "{} preflights answered {} rows",
                batch.len(),
                rows.len()
            ))))
        }
    });
    match rows {
        Ok(rows) => {
            for (pending, row) in batch.into_iter().zip(rows) {
                let _ = pending.reply.send(Ok(row));
            }
        }
        Err(error) => {
            for pending in batch {
                let _ = pending.reply.send(Err(error.clone()));
            }
        }
    }
}

/// What [`Authenticator::preflight`] found.
pub struct Preflight {
    pub outcome: Option<crate::outcomes::Stored>,
    pub actor: Result<Actor, Refusal>,
}

/// The token of an `Authorization: Bearer` header; `session.start` takes
/// none, whatever it carries.
fn bearer_token<'h>(authorization: Option<&'h str>, command_type: &str) -> Option<&'h str> {
    if command_type == "session.start" {
        return None;
    }
    authorization?.strip_prefix("Bearer ").map(str::trim)
}

/// The auth index's key of a session token (`None` for any other token).
fn session_token_hash(token: &str) -> Option<String> {
    match parse_bearer(token) {
        Some(Bearer::Session(session_token)) => Some(token_hash(session_token)),
        _ => None,
    }
}

/// The actor behind a session's row, and the copy worth remembering when
/// the session is valid.
fn session_actor(
    row: SessionRow,
    now: DateTime<Utc>,
) -> (Result<Actor, Refusal>, Option<VerifiedSession>) {
    let refused = |code| (Err(Refusal::Unauthorized(code)), None);
    let SessionRow {
        user_id,
        role,
        expires_at,
        last_seen,
        ended,
        locked,
        deleted,
        ..
    } = row;
    let (Some(user_id), Some(role), Some(expires_at), Some(last_seen)) =
        (user_id, role, expires_at, last_seen)
    else {
        return refused("invalid_token");
    };
    if ended.unwrap_or(true) {
        return refused("session_ended");
    }
    if now >= expires_at {
        return refused("session_expired");
    }
    if now - last_seen > IDLE_TIMEOUT {
        return refused("session_idle_timeout");
    }
    if locked.unwrap_or(true) || deleted.unwrap_or(true) {
        return refused("account_disabled");
    }
    let actor = user(user_id, &role, Scopes::SESSION);
    let copy = actor.is_ok().then_some(VerifiedSession {
        user_id,
        role,
        expires_at,
        last_seen,
    });
    (actor, copy)
}

impl Authenticator {
    async fn api_key(
        &self,
        token: &str,
        key_id: Uuid,
        secret: &str,
        now: DateTime<Utc>,
    ) -> Result<Result<Actor, Refusal>, sqlx::Error> {
        let row: Option<KeyRow> = sqlx::query_as(
            "SELECT k.user_id, k.key_hash, k.scopes, k.expires_at, k.revoked, u.role, u.locked, u.deleted
               FROM auth_api_keys k JOIN auth_users u ON u.user_id = k.user_id
              WHERE k.key_id = $1",
        )
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(KeyRow {
            user_id,
            key_hash,
            scopes,
            expires_at,
            revoked,
            role,
            locked,
            deleted,
        }) = row
        else {
            return Ok(Err(Refusal::Unauthorized("invalid_token")));
        };
        let digest = token_hash(token);
        let cached = self
            .verified_keys
            .lock()
            .map(|m| m.get(&digest) == Some(&key_id))
            .unwrap_or(false);
        if !cached {
            let ok = verify_secret_bounded(secret.to_string(), key_hash).await;
            if !ok {
                return Ok(Err(Refusal::Unauthorized("invalid_token")));
            }
            keep(&self.verified_keys, digest.clone(), key_id);
        }
        if revoked {
            return Ok(Err(Refusal::Unauthorized("api_key_revoked")));
        }
        if expires_at.is_some_and(|e| now >= e) {
            return Ok(Err(Refusal::Unauthorized("api_key_expired")));
        }
        if locked || deleted {
            return Ok(Err(Refusal::Unauthorized("account_disabled")));
        }
        let scopes: Vec<Scope> = scopes.iter().filter_map(|s| s.parse().ok()).collect();
        let scopes = Scopes::of(&scopes);
        // What else the scopes allow is the domain's to say (the actor
        // carries them); a key that may send no command stops here.
        if !scopes.may_command() {
            return Ok(Err(Refusal::Forbidden("missing_scope")));
        }
        let actor = user(user_id, &role, scopes);
        if actor.is_ok() {
            let copy = ValidKey {
                key_id,
                user_id,
                role,
                scopes,
                expires_at,
            };
            keep(&self.valid_keys, digest, copy);
        }
        Ok(actor)
    }
}

/// A session and its user, beside whether the command has an outcome;
/// every column but that may be NULL (no such session, or the user row is
/// gone).
#[derive(sqlx::FromRow)]
struct SessionRow {
    decided: bool,
    user_id: Option<Uuid>,
    role: Option<String>,
    expires_at: Option<DateTime<Utc>>,
    last_seen: Option<DateTime<Utc>>,
    ended: Option<bool>,
    locked: Option<bool>,
    deleted: Option<bool>,
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    user_id: Uuid,
    key_hash: String,
    scopes: Vec<String>,
    expires_at: Option<DateTime<Utc>>,
    revoked: bool,
    role: String,
    locked: bool,
    deleted: bool,
}

fn user(user_id: Uuid, role: &str, scopes: Scopes) -> Result<Actor, Refusal> {
    match role.parse::<Role>() {
        Ok(role) => Ok(Actor::User {
            id: UserId(user_id),
            role,
            scopes,
        }),
        Err(_) => Err(Refusal::Unauthorized("invalid_token")),
    }
}
