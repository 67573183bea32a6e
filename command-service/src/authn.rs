//! Who sent a command: a session token, an API key or the bootstrap token,
//! checked against the auth index (written inline with the events, so it is
//! exactly as current as the log).

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use domain::context::Actor;
use domain::ids::UserId;
use domain::session::IDLE_TIMEOUT;
use domain::values::{Role, Scope};
use infra::auth::{constant_time_eq, parse_bearer, token_hash, verify_secret, Bearer};
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use uuid::Uuid;

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
    bootstrap: Option<SecretString>,
    /// API keys whose argon2 hash was verified: token digest → key id.
    /// Revocation and expiry are still read from PostgreSQL every time.
    verified_keys: Mutex<HashMap<String, Uuid>>,
}

impl Authenticator {
    pub fn new(pool: PgPool, bootstrap: Option<SecretString>) -> Self {
        Authenticator {
            pool,
            bootstrap,
            verified_keys: Mutex::new(HashMap::new()),
        }
    }

    /// The actor behind `authorization` (the header's value) for a command
    /// of `command_type`; `session.start` needs no credential.
    pub async fn authenticate(
        &self,
        authorization: Option<&str>,
        command_type: &str,
        admin_command: bool,
        now: DateTime<Utc>,
    ) -> Result<Result<Actor, Refusal>, sqlx::Error> {
        if command_type == "session.start" {
            return Ok(Ok(Actor::Anonymous));
        }
        let Some(header) = authorization else {
            return Ok(Err(Refusal::Unauthorized("missing_token")));
        };
        let Some(token) = header.strip_prefix("Bearer ").map(str::trim) else {
            return Ok(Err(Refusal::Unauthorized("malformed_authorization")));
        };
        if let Some(bootstrap) = &self.bootstrap {
            if constant_time_eq(token.as_bytes(), bootstrap.expose_secret().as_bytes()) {
                return Ok(Ok(Actor::Bootstrap));
            }
        }
        match parse_bearer(token) {
            None => Ok(Err(Refusal::Unauthorized("invalid_token"))),
            Some(Bearer::Session(token)) => self.session(token, now).await,
            Some(Bearer::ApiKey { key_id, secret }) => {
                self.api_key(token, key_id, secret, admin_command, now)
                    .await
            }
        }
    }

    async fn session(
        &self,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<Result<Actor, Refusal>, sqlx::Error> {
        let row: Option<SessionRow> = sqlx::query_as(
            "SELECT s.user_id, u.role, s.expires_at, s.last_seen, s.ended, u.locked, u.deleted
               FROM auth_sessions s JOIN auth_users u ON u.user_id = s.user_id
              WHERE s.token_hash = $1",
        )
        .bind(token_hash(token))
        .fetch_optional(&self.pool)
        .await?;
        let Some(SessionRow {
            user_id,
            role,
            expires_at,
            last_seen,
            ended,
            locked,
            deleted,
        }) = row
        else {
            return Ok(Err(Refusal::Unauthorized("invalid_token")));
        };
        if ended {
            return Ok(Err(Refusal::Unauthorized("session_ended")));
        }
        if now >= expires_at {
            return Ok(Err(Refusal::Unauthorized("session_expired")));
        }
        if now - last_seen > IDLE_TIMEOUT {
            return Ok(Err(Refusal::Unauthorized("session_idle_timeout")));
        }
        if locked || deleted {
            return Ok(Err(Refusal::Unauthorized("account_disabled")));
        }
        Ok(user(user_id, &role))
    }

    async fn api_key(
        &self,
        token: &str,
        key_id: Uuid,
        secret: &str,
        admin_command: bool,
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
            let secret = secret.to_string();
            // argon2id takes tens of milliseconds of CPU: off the async threads.
            let ok = tokio::task::spawn_blocking(move || {
                verify_secret(&secret, &key_hash).unwrap_or(false)
            })
            .await
            .unwrap_or(false);
            if !ok {
                return Ok(Err(Refusal::Unauthorized("invalid_token")));
            }
            if let Ok(mut map) = self.verified_keys.lock() {
                if map.len() > 10_000 {
                    map.clear();
                }
                map.insert(digest, key_id);
            }
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
        if !domain::context::scope_allows(&scopes, admin_command) {
            return Ok(Err(Refusal::Forbidden("missing_scope")));
        }
        Ok(user(user_id, &role))
    }
}

#[derive(sqlx::FromRow)]
struct SessionRow {
    user_id: Uuid,
    role: String,
    expires_at: DateTime<Utc>,
    last_seen: DateTime<Utc>,
    ended: bool,
    locked: bool,
    deleted: bool,
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

fn user(user_id: Uuid, role: &str) -> Result<Actor, Refusal> {
    match role.parse::<Role>() {
        Ok(role) => Ok(Actor::User {
            id: UserId(user_id),
            role,
        }),
        Err(_) => Err(Refusal::Unauthorized("invalid_token")),
    }
}
