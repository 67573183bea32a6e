//! Who is asking: a session token or an API key from the `Authorization`
//! header. PostgreSQL's auth index (written in the same transaction as the
//! events that start, end or revoke a credential) decides; what it said is
//! kept in Redis (`auth:token:{hash}`) stamped with the user's auth epoch,
//! and trusted only while that epoch is unchanged, the session unexpired
//! and not idle. The command service bumps the epoch around every command
//! that ends or narrows credentials (`infra::auth_epoch`), so an ended,
//! expired or revoked credential is refused at once even with the entry
//! still in Redis. Without Redis every request asks PostgreSQL.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use domain::context::Scopes;
use domain::session::IDLE_TIMEOUT;
use domain::values::{Role, Scope};
use infra::auth::{parse_bearer, token_hash, verify_secret_bounded, Bearer};
use infra::ratelimit::{decision, Decision, SlidingWindow, SLIDING_WINDOW_LUA};
use sqlx::PgPool;
use uuid::Uuid;

use crate::cache::CALL_TIMEOUT;
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
    cache: Option<CredentialCache>,
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
    pub fn new(pool: PgPool, cache: Option<CredentialCache>) -> Self {
        Authenticator {
            pool,
            cache,
            verified_keys: Mutex::new(HashMap::new()),
        }
    }

    /// The principal behind an `Authorization` header value.
    pub async fn authenticate(&self, header: Option<&str>) -> Result<Principal, ApiError> {
        Ok(self.authenticate_for(header, None, None).await?.principal)
    }

    /// [`Authenticator::authenticate`], and when the credential is in Redis
    /// also, in the same round trip, the cached answer to `request` (the
    /// digest of a cacheable request, see [`crate::state::CacheSpec`]) and
    /// the decision of `limit`.
    pub async fn authenticate_for(
        &self,
        header: Option<&str>,
        request: Option<&str>,
        limit: Option<&SlidingWindow>,
    ) -> Result<Looked, ApiError> {
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
        let bearer = parse_bearer(token).ok_or(ApiError::Unauthorized("invalid token"))?;
        let digest = token_hash(token);
        if let Some(cache) = &self.cache {
            if let Some(looked) = cache.lookup(&digest, now, request, limit).await {
                return Ok(looked);
            }
        }
        let verified = self.verify(&bearer, &digest, now).await?;
        if let Some(cache) = &self.cache {
            // The epoch is read after PostgreSQL named the user and before
            // PostgreSQL is asked again: a revocation committed in between
            // bumps it past what is stored.
            if let Some(epoch) = cache.epoch(verified.principal.user_id).await {
                let again = self.verify(&bearer, &digest, now).await?;
                if again.principal == verified.principal {
                    cache.store(&digest, &again, &epoch).await;
                }
            }
        }
        Ok(Looked {
            principal: verified.principal,
            prefetch: Prefetch::NotLooked,
            decision: None,
        })
    }

    async fn verify(
        &self,
        bearer: &Bearer<'_>,
        digest: &str,
        now: DateTime<Utc>,
    ) -> Result<Verified, ApiError> {
        match bearer {
            Bearer::Session(session) => self.session(session, now).await,
            Bearer::ApiKey { key_id, secret } => self.api_key(digest, *key_id, secret, now).await,
        }
    }

    async fn session(&self, token: &str, now: DateTime<Utc>) -> Result<Verified, ApiError> {
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
        Ok(Verified {
            principal: Principal {
                user_id: row.user_id,
                role,
                admin: role == Role::Admin,
            },
            expires_at: Some(row.expires_at),
            last_seen: Some(row.last_seen),
        })
    }

    async fn api_key(
        &self,
        digest: &str,
        key_id: Uuid,
        secret: &str,
        now: DateTime<Utc>,
    ) -> Result<Verified, ApiError> {
        let row: Option<KeyRow> = sqlx::query_as(
            "SELECT k.user_id, k.key_hash, k.scopes, k.expires_at, k.revoked, u.role, u.locked, u.deleted
               FROM auth_api_keys k JOIN auth_users u ON u.user_id = k.user_id
              WHERE k.key_id = $1",
        )
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await?;
        let row = row.ok_or(ApiError::Unauthorized("invalid token"))?;
        let verified = self
            .verified_keys
            .lock()
            .map(|m| m.get(digest) == Some(&key_id))
            .unwrap_or(false);
        if !verified {
            let ok = verify_secret_bounded(secret.to_string(), row.key_hash.clone()).await;
            if !ok {
                return Err(ApiError::Unauthorized("invalid token"));
            }
            if let Ok(mut map) = self.verified_keys.lock() {
                if map.len() > 10_000 {
                    map.clear();
                }
                map.insert(digest.to_string(), key_id);
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
        let scopes = Scopes::of(&scopes);
        // Reading needs `read` (or `admin`): a `commands:write` key writes.
        if !scopes.may_read() {
            return Err(ApiError::MissingScope);
        }
        let role = parse_role(&row.role)?;
        Ok(Verified {
            principal: Principal {
                user_id: row.user_id,
                role,
                admin: role == Role::Admin && scopes.contains(Scope::Admin),
            },
            expires_at: row.expires_at,
            last_seen: None,
        })
    }
}

fn parse_role(role: &str) -> Result<Role, ApiError> {
    role.parse()
        .map_err(|_| ApiError::Internal(format!("unknown role {role:?} in the auth index")))
}

/// What PostgreSQL said about a credential.
pub struct Verified {
    pub principal: Principal,
    pub expires_at: Option<DateTime<Utc>>,
    /// Sessions only: the idle timeout runs from here.
    pub last_seen: Option<DateTime<Utc>>,
}

/// How long a Redis copy of a credential's principal lives at most (it
/// also bounds how stale its `last_seen` can be).
const CACHED_FOR_SECONDS: u64 = 60;

/// The credential's lookup: the entry and the current epoch of its user;
/// when a rate-limit key prefix is given (ARGV[2..5]), the user's
/// rate-limit decision, counted only for an entry of the current epoch that
/// has not expired (so a revoked credential's copy cannot use up its user's
/// requests). The cached answer is not read here: a value that enters Lua
/// is hashed byte by byte (Redis's Lua interns every string), which made a
/// 20 KB answer cost Redis more than the rest of the request. It is read by
/// a GET sent in the same pipeline instead (see [`CredentialCache::lookup`]).
const LOOKUP: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return false end
local user, expires, epoch_of =
  string.match(v, '^([^|]*)|[^|]*|[^|]*|([^|]*)|[^|]*|(.*)$')
if not user then return false end
local epoch = redis.call('GET', ARGV[1] .. user) or '0'
local found = {v, epoch}
if ARGV[2] ~= '' and epoch_of == epoch then
  local t = redis.call('TIME')
  if tonumber(expires) > tonumber(t[1]) * 1000 then
    local d = sliding_window(ARGV[2] .. user, tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5])
    found[3], found[4], found[5] = tostring(d[1]), tostring(d[2]), tostring(d[3])
  end
end
return found";

/// How many credentials' last seen principals are remembered (see
/// [`CredentialCache::views`]); past that the memory starts again empty.
const VIEWS_REMEMBERED: usize = 100_000;

/// What the credential's lookup found of the request's cached answer.
#[derive(Debug, Clone, Default)]
pub enum Prefetch {
    /// Not looked for (the credential was not in Redis, or the request is
    /// not a cacheable read): the cache is asked on its own.
    #[default]
    NotLooked,
    /// Looked for under the caller's key: there was none.
    Absent,
    /// Found under the caller's key, as stored (`position\nbody`).
    Found(bytes::Bytes),
}

/// A caller as the credential's Redis copy has it, with what came along.
pub struct Looked {
    pub principal: Principal,
    pub prefetch: Prefetch,
    /// The rate limit's decision, when it was asked for and counted.
    pub decision: Option<Decision>,
}

/// Principals PostgreSQL vouched for, in Redis, by token hash.
#[derive(Clone)]
pub struct CredentialCache {
    conn: redis::aio::ConnectionManager,
    prefix: String,
    lookup: redis::Script,
    /// The principal each credential had when last looked up, by token
    /// digest: whose view of the cached answer to ask for beside the
    /// credential. Only a guess, checked against the entry Redis returns.
    views: std::sync::Arc<Mutex<HashMap<String, Principal>>>,
}

impl CredentialCache {
    pub fn new(conn: redis::aio::ConnectionManager, prefix: &str) -> CredentialCache {
        CredentialCache {
            conn,
            prefix: prefix.to_string(),
            lookup: redis::Script::new(&format!("{SLIDING_WINDOW_LUA}{LOOKUP}")),
            views: std::sync::Arc::default(),
        }
    }

    fn key(&self, digest: &str) -> String {
        format!("{}auth:token:{digest}", self.prefix)
    }

    /// The credential's entry, and when `request` is given and this copy
    /// has seen the credential before, that request's cached answer as the
    /// credential's principal last saw it, by a GET in the same pipeline:
    /// one round trip. The answer counts only if the entry's principal
    /// still has that view; otherwise the cache is asked on its own.
    async fn lookup(
        &self,
        digest: &str,
        now: DateTime<Utc>,
        request: Option<&str>,
        limit: Option<&SlidingWindow>,
    ) -> Option<Looked> {
        let mut conn = self.conn.clone();
        let mut invocation = self.lookup.prepare_invoke();
        invocation
            .key(self.key(digest))
            .arg(format!("{}auth:epoch:", self.prefix));
        match limit {
            Some(limit) => {
                invocation.arg(limit.key_prefix());
                for arg in limit.lua_args() {
                    invocation.arg(arg);
                }
            }
            None => {
                invocation.arg("");
            }
        }
        let guessed = request.and_then(|request| {
            let views = self.views.lock().ok()?;
            let seen = views.get(digest)?;
            Some(crate::state::CacheSpec::full_key(
                &self.prefix,
                seen,
                request,
            ))
        });
        let mut pipe = redis::pipe();
        pipe.invoke_script(&invocation);
        if let Some(key) = &guessed {
            pipe.cmd("GET").arg(key);
        }
        let replies: Vec<redis::Value> = tokio::time::timeout(
            CALL_TIMEOUT,
            infra::redis_conn::query_loading(&pipe, &[&self.lookup], &mut conn),
        )
        .await
        .ok()?
        .ok()?;
        let mut replies = replies.into_iter();
        let found: Vec<Vec<u8>> =
            redis::from_redis_value::<Option<Vec<Vec<u8>>>>(replies.next()?).ok()??;
        let answer = match replies.next() {
            Some(value) => Some(redis::from_redis_value::<Option<Vec<u8>>>(value).ok()?),
            None => None,
        };
        let text = |i: usize| found.get(i).and_then(|b| std::str::from_utf8(b).ok());
        let entry = Entry::parse(text(0)?)?;
        // Rare: the script counted a request for an entry this side finds
        // no longer good (its clock against Redis's); PostgreSQL decides
        // and the request is counted again.
        if !entry.valid(text(1)?, now) {
            return None;
        }
        let prefetch = match (guessed, answer, request) {
            (Some(key), Some(answer), Some(request))
                if key
                    == crate::state::CacheSpec::full_key(
                        &self.prefix,
                        &entry.principal,
                        request,
                    ) =>
            {
                // A stored answer is never empty.
                match answer {
                    Some(raw) if !raw.is_empty() => Prefetch::Found(bytes::Bytes::from(raw)),
                    _ => Prefetch::Absent,
                }
            }
            _ => Prefetch::NotLooked,
        };
        let decision = match (text(2), text(3), text(4)) {
            (Some(allowed), Some(remaining), Some(retry_ms)) => Some(decision((
                allowed.parse().ok()?,
                remaining.parse().ok()?,
                retry_ms.parse().ok()?,
            ))),
            _ => None,
        };
        if request.is_some() {
            self.saw(digest, &entry.principal);
        }
        Some(Looked {
            principal: entry.principal,
            prefetch,
            decision,
        })
    }

    /// Remembers `digest`'s principal, for the next lookup's guess; only a
    /// credential Redis vouched for gets here.
    fn saw(&self, digest: &str, principal: &Principal) {
        let Ok(mut views) = self.views.lock() else {
            return;
        };
        if views.get(digest) == Some(principal) {
            return;
        }
        if views.len() >= VIEWS_REMEMBERED {
            views.clear();
        }
        views.insert(digest.to_string(), principal.clone());
    }

    /// The user's current epoch (`None` if Redis cannot say).
    async fn epoch(&self, user: Uuid) -> Option<String> {
        let mut conn = self.conn.clone();
        let key = infra::auth_epoch::epoch_key(&self.prefix, user);
        let got = tokio::time::timeout(
            CALL_TIMEOUT,
            redis::cmd("GET")
                .arg(key)
                .query_async::<Option<String>>(&mut conn),
        )
        .await
        .ok()?
        .ok()?;
        Some(got.unwrap_or_else(|| "0".to_string()))
    }

    async fn store(&self, digest: &str, verified: &Verified, epoch: &str) {
        let mut conn = self.conn.clone();
        let value = Entry {
            principal: verified.principal.clone(),
            expires_ms: verified
                .expires_at
                .map_or(i64::MAX, |t| t.timestamp_millis()),
            last_seen_ms: verified.last_seen.map(|t| t.timestamp_millis()),
            epoch: epoch.to_string(),
        }
        .render();
        let _ = tokio::time::timeout(
            CALL_TIMEOUT,
            redis::cmd("SET")
                .arg(self.key(digest))
                .arg(value)
                .arg("EX")
                .arg(CACHED_FOR_SECONDS)
                .query_async::<()>(&mut conn),
        )
        .await;
    }
}

/// `user|role|admin|expires_ms|last_seen_ms|epoch` (`last_seen_ms` empty
/// for API keys).
#[derive(Debug, PartialEq)]
struct Entry {
    principal: Principal,
    expires_ms: i64,
    last_seen_ms: Option<i64>,
    epoch: String,
}

impl Entry {
    fn render(&self) -> String {
        format!(
            "{}|{}|{}|{}|{}|{}",
            self.principal.user_id,
            self.principal.role.as_str(),
            u8::from(self.principal.admin),
            self.expires_ms,
            self.last_seen_ms.map(|t| t.to_string()).unwrap_or_default(),
            self.epoch
        )
    }

    fn parse(text: &str) -> Option<Entry> {
        let mut parts = text.split('|');
        let user_id = Uuid::try_parse(parts.next()?).ok()?;
        let role: Role = parts.next()?.parse().ok()?;
        let admin = parts.next()? == "1";
        let expires_ms = parts.next()?.parse().ok()?;
        let last_seen_ms = match parts.next()? {
            "" => None,
            t => Some(t.parse().ok()?),
        };
        let epoch = parts.next()?.to_string();
        Some(Entry {
            principal: Principal {
                user_id,
                role,
                admin,
            },
            expires_ms,
            last_seen_ms,
            epoch,
        })
    }

    /// Trusted only with the user's current epoch, before expiry, and (for
    /// sessions) not idle as far as this copy knows; otherwise PostgreSQL
    /// is asked (a session touched since may still be good).
    fn valid(&self, current_epoch: &str, now: DateTime<Utc>) -> bool {
        let now_ms = now.timestamp_millis();
        let idle_ms = IDLE_TIMEOUT.num_milliseconds();
        self.epoch == current_epoch
            && now_ms < self.expires_ms
            && self
                .last_seen_ms
                .is_none_or(|seen| now_ms - seen <= idle_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(epoch: &str, expires_ms: i64, last_seen_ms: Option<i64>) -> Entry {
        Entry {
            principal: Principal {
                user_id: Uuid::now_v7(),
                role: Role::Operator,
                admin: false,
            },
            expires_ms,
            last_seen_ms,
            epoch: epoch.into(),
        }
    }

    #[test]
    fn entries_round_trip() {
        for e in [entry("3", 1_000, Some(500)), entry("0", i64::MAX, None)] {
            assert_eq!(Entry::parse(&e.render()), Some(e));
        }
        assert!(Entry::parse("garbage").is_none());
    }

    #[test]
    fn an_entry_is_trusted_only_with_its_epoch_before_expiry_and_idleness() {
        let now = Utc::now();
        let ms = now.timestamp_millis();
        let fresh = entry("4", ms + 60_000, Some(ms - 1_000));
        assert!(fresh.valid("4", now));
        assert!(!fresh.valid("5", now), "a bumped epoch outdates it");
        assert!(!entry("4", ms - 1, Some(ms)).valid("4", now), "expired");
        let idle = IDLE_TIMEOUT.num_milliseconds() + 1;
        assert!(
            !entry("4", ms + 60_000, Some(ms - idle)).valid("4", now),
            "idle"
        );
        assert!(
            entry("4", i64::MAX, None).valid("4", now),
            "an API key without expiry"
        );
    }
}
