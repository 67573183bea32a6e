//! Auth epochs: how the query service may answer from a Redis copy of a
//! credential's principal and still refuse a revoked one at once.
//!
//! PostgreSQL (the auth index the command service writes with the events)
//! decides whether a credential is valid. The query service keeps what it
//! learned there in Redis (`auth:token:{hash}`), stamped with the user's
//! epoch (`auth:epoch:{user}`) as read *before* it asked PostgreSQL, and
//! trusts an entry only while the epoch is unchanged. The command service
//! increments the epoch of the user a command affects (session end, key
//! revocation, lock, deletion, erasure, role or password change) before it
//! appends, and again after the commit, and answers `unavailable` without
//! appending if the first increment fails: so once such a command is
//! acknowledged, no entry read before it is trusted any more. (An entry
//! stored between the two increments carries the first one's value and is
//! outdated by the second.)

use redis::aio::ConnectionManager;
use uuid::Uuid;

/// The epoch of `user`, under the deployment's key prefix.
pub fn epoch_key(prefix: &str, user: Uuid) -> String {
    format!("{prefix}auth:epoch:{user}")
}

/// An epoch outlives every entry stamped with it many times over; if it
/// expires anyway, entries stamped with the old value stop matching.
const EPOCH_TTL_SECONDS: u64 = 7 * 24 * 3600;

#[derive(Clone)]
pub struct AuthEpochs {
    conn: ConnectionManager,
    prefix: String,
}

impl AuthEpochs {
    /// Connects lazily (the first bump connects, and fails if Redis is down).
    pub fn new(
        redis: &crate::redis_conn::RedisTarget,
        prefix: &str,
    ) -> Result<AuthEpochs, redis::RedisError> {
        Ok(AuthEpochs {
            conn: crate::redis_conn::lazy(redis)?,
            prefix: prefix.to_string(),
        })
    }

    /// Outdates every cached principal of `user`.
    pub async fn bump(&self, user: Uuid) -> Result<(), redis::RedisError> {
        let key = epoch_key(&self.prefix, user);
        let mut conn = self.conn.clone();
        redis::pipe()
            .atomic()
            .incr(&key, 1)
            .ignore()
            .expire(&key, EPOCH_TTL_SECONDS as i64)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
    }
}
