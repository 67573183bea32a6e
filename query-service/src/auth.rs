//! Who is asking: a session token or an API key from the `Authorization`
//! header, checked against the auth index (written in the same transaction
//! as the events that start, end or revoke a credential), so an ended,
//! expired or revoked credential is refused at once whatever any cache says.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use domain::session::IDLE_TIMEOUT;
use domain::values::{Role, Scope};
use infra::auth::{parse_bearer, token_hash, verify_secret, Bearer};
use sqlx::PgPool;
use uuid::Uuid;

use crate::problem::ApiError;

/// The signed-in caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: Uuid,
    pub role: Role,
    /// Whether this caller sees every user's rows: an admin user, and for an
    /// API key one that carries the `admin` scope.
    pub admin: bool,
}

impl Principal {
    /// The part of a cache key that says whose view a response is.
    pub fn visibility(&self) -> String {
        if self.admin {
            "admin".to_string()
        } else {
            format!("user:{}", self.user_id)
        }
    }
}

pub struct Authenticator {
    pool: PgPool,
    /// API keys whose argon2id hash was verified: token digest → key id.
    /// Revocation, expiry and the account state are still read every time.
    verified_keys: Mutex<HashMap<String, Uuid>>,
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

impl Authenticator {
    pub fn new(pool: PgPool) -> Self {
        Authenticator {
            pool,
            verified_keys: Mutex::new(HashMap::new()),
        }
    }

    /// The principal behind an `Authorization` header value.
    pub async fn authenticate(&self, header: Option<&str>) -> Result<Principal, ApiError> {
        let header = header.ok_or(ApiError::Unauthorized(
            "missing credentials: send `Authorization: Bearer <session token or API key>`",
        ))?;
        let token = header
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Unauthorized(
                "malformed Authorization header: expected `Bearer <token>`",
            ))?;
        let now = Utc::now();
        match parse_bearer(token) {
            None => Err(ApiError::Unauthorized("invalid token")),
            Some(Bearer::Session(session)) => self.session(session, now).await,
            Some(Bearer::ApiKey { key_id, secret }) => {
                self.api_key(token, key_id, secret, now).await
            }
        }
    }

    async fn session(&self, token: &str, now: DateTime<Utc>) -> Result<Principal, ApiError> {
        let row: Option<SessionRow> = sqlx::query_as(
            "SELECT s.user_id, u.role, s.expires_at, s.last_seen, s.ended, u.locked, u.deleted
               FROM auth_sessions s JOIN auth_users u ON u.user_id = s.user_id
              WHERE s.token_hash = $1",
        )
        .bind(token_hash(token))
        .fetch_optional(&self.pool)
        .await?;
        let row = row.ok_or(ApiError::Unauthorized("invalid token"))?;
        if row.ended {
            return Err(ApiError::Unauthorized("the session has ended"));
        }
        if now >= row.expires_at {
            return Err(ApiError::Unauthorized("the session has expired"));
        }
        if now - row.last_seen > IDLE_TIMEOUT {
            return Err(ApiError::Unauthorized("the session timed out (idle)"));
        }
        if row.locked || row.deleted {
            return Err(ApiError::Unauthorized("the account is disabled"));
        }
        let role = parse_role(&row.role)?;
        Ok(Principal {
            user_id: row.user_id,
            role,
            admin: role == Role::Admin,
        })
    }

    async fn api_key(
        &self,
        token: &str,
        key_id: Uuid,
        secret: &str,
        now: DateTime<Utc>,
    ) -> Result<Principal, ApiError> {
        let row: Option<KeyRow> = sqlx::query_as(
            "SELECT k.user_id, k.key_hash, k.scopes, k.expires_at, k.revoked, u.role, u.locked, u.deleted
               FROM auth_api_keys k JOIN auth_users u ON u.user_id = k.user_id
              WHERE k.key_id = $1",
        )
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await?;
        let row = row.ok_or(ApiError::Unauthorized("invalid token"))?;
        let digest = token_hash(token);
        let verified = self
            .verified_keys
            .lock()
            .map(|m| m.get(&digest) == Some(&key_id))
            .unwrap_or(false);
        if !verified {
            let secret = secret.to_string();
            let hash = row.key_hash.clone();
            // argon2id costs tens of milliseconds of CPU: off the async threads.
            let ok =
                tokio::task::spawn_blocking(move || verify_secret(&secret, &hash).unwrap_or(false))
                    .await
                    .unwrap_or(false);
            if !ok {
                return Err(ApiError::Unauthorized("invalid token"));
            }
            if let Ok(mut map) = self.verified_keys.lock() {
                if map.len() > 10_000 {
                    map.clear();
                }
                map.insert(digest, key_id);
            }
        }
        if row.revoked {
            return Err(ApiError::Unauthorized("the API key is revoked"));
        }
        if row.expires_at.is_some_and(|e| now >= e) {
            return Err(ApiError::Unauthorized("the API key has expired"));
        }
        if row.locked || row.deleted {
            return Err(ApiError::Unauthorized("the account is disabled"));
        }
        let scopes: Vec<Scope> = row.scopes.iter().filter_map(|s| s.parse().ok()).collect();
        if scopes.is_empty() {
            return Err(ApiError::Unauthorized(
                "the API key has no scope that allows reading",
            ));
        }
        let role = parse_role(&row.role)?;
        Ok(Principal {
            user_id: row.user_id,
            role,
            admin: role == Role::Admin && scopes.contains(&Scope::Admin),
        })
    }
}

fn parse_role(role: &str) -> Result<Role, ApiError> {
    role.parse()
        .map_err(|_| ApiError::Internal(format!("unknown role {role:?} in the auth index")))
}
