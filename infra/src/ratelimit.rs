//! The seed's sliding-window rate limit: one Redis sorted set per principal
//! holding the times of its recent requests, checked and updated by one Lua
//! script so concurrent instances agree. Time is the Redis server's, so the
//! instances' clocks do not matter.
//!
//! What to do when Redis is down is the caller's policy (the command
//! service fails open, counting it); this module only reports the error.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;

/// The check as a Lua function, `sliding_window(key, window_ms, limit,
/// member)` → `{allowed (0|1), remaining, retry_after_ms}`, for scripts
/// that check the limit along with other work in the same round trip.
pub const SLIDING_WINDOW_LUA: &str = r#"
local function sliding_window(key, window, limit, member)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local count = redis.call('ZCARD', key)
  if count < limit then
    redis.call('ZADD', key, now, t[1] .. t[2] .. member)
    redis.call('PEXPIRE', key, window)
    return {1, limit - count - 1, 0}
  end
  local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return {0, 0, math.max(1, tonumber(oldest[2]) + window - now)}
end
"#;

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests left in the current window after this one.
    pub remaining: u32,
    /// When refused: how long until a request would be allowed.
    pub retry_after: Duration,
}

/// A sliding-window limit of `limit` requests per `window` for each principal.
#[derive(Clone)]
pub struct SlidingWindow {
    conn: ConnectionManager,
    key_prefix: String,
    limit: u32,
    window: Duration,
    script: Script,
}

impl SlidingWindow {
    /// `key_prefix` is the deployment's prefix plus a scope, e.g.
    /// `copilot:ratelimit:commands:`.
    pub fn new(
        conn: ConnectionManager,
        key_prefix: impl Into<String>,
        limit: u32,
        window: Duration,
    ) -> Self {
        SlidingWindow {
            conn,
            key_prefix: key_prefix.into(),
            limit: limit.max(1),
            window: window.max(Duration::from_millis(1)),
            script: Script::new(&format!(
                "{SLIDING_WINDOW_LUA}return sliding_window(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3])"
            )),
        }
    }

    /// Counts one request of `principal` and says whether it is allowed.
    pub async fn check(&self, principal: &str) -> Result<Decision, redis::RedisError> {
        let mut conn = self.conn.clone();
        let answer = self.invocation(principal).invoke_async(&mut conn).await?;
        Ok(decision(answer))
    }

    /// [`SlidingWindow::check`] for each of `principals` in order (a
    /// principal named twice counts twice), in one round trip.
    pub async fn check_many(
        &self,
        principals: &[&str],
    ) -> Result<Vec<Decision>, redis::RedisError> {
        if principals.is_empty() {
            return Ok(Vec::new());
        }
        let invocations: Vec<_> = principals.iter().map(|p| self.invocation(p)).collect();
        let mut pipe = redis::pipe();
        for invocation in &invocations {
            pipe.invoke_script(invocation);
        }
        let mut conn = self.conn.clone();
        let answers: Vec<(u32, u32, u64)> =
            crate::redis_conn::query_loading(&pipe, &[&self.script], &mut conn).await?;
        Ok(answers.into_iter().map(decision).collect())
    }

    fn invocation(&self, principal: &str) -> redis::ScriptInvocation<'_> {
        let [window_ms, limit, member] = self.lua_args();
        let mut invocation = self.script.key(format!("{}{principal}", self.key_prefix));
        invocation.arg(window_ms).arg(limit).arg(member);
        invocation
    }

    /// Where each principal's window is kept: this prefix and the principal.
    pub fn key_prefix(&self) -> &str {
        &self.key_prefix
    }

    /// The arguments after the key of [`SLIDING_WINDOW_LUA`]'s function
    /// for one request: the window in milliseconds, the limit, and a member
    /// unique to the request.
    pub fn lua_args(&self) -> [String; 3] {
        let window_ms = u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX);
        [
            window_ms.to_string(),
            self.limit.to_string(),
            uuid::Uuid::new_v4().simple().to_string(),
        ]
    }
}

/// The function's answer: allowed (0 or 1), requests left, milliseconds to wait.
pub fn decision((allowed, remaining, retry_ms): (u32, u32, u64)) -> Decision {
    Decision {
        allowed: allowed == 1,
        remaining,
        retry_after: Duration::from_millis(retry_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn limiter(limit: u32, window: Duration) -> (SlidingWindow, String) {
        let client = redis::Client::open("redis://127.0.0.1:6379").expect("redis url");
        let conn = client
            .get_connection_manager()
            .await
            .expect("Redis on 127.0.0.1:6379");
        // Each test its own prefix, so tests run in parallel and leave nothing that matters.
        let prefix = format!("test:{}:ratelimit:", uuid::Uuid::new_v4().simple());
        (
            SlidingWindow::new(conn, prefix.clone(), limit, window),
            prefix,
        )
    }

    #[tokio::test]
    async fn allows_up_to_the_limit_then_says_when_to_retry() {
        let (limiter, _) = limiter(3, Duration::from_millis(800)).await;
        for expected_remaining in [2, 1, 0] {
            let d = limiter.check("alice").await.expect("check");
            assert!(d.allowed);
            assert_eq!(d.remaining, expected_remaining);
        }
        let refused = limiter.check("alice").await.expect("check");
        assert!(!refused.allowed);
        assert!(
            refused.retry_after > Duration::ZERO
                && refused.retry_after <= Duration::from_millis(800),
            "{refused:?}"
        );
        assert!(
            limiter.check("bob").await.expect("check").allowed,
            "principals are independent"
        );

        tokio::time::sleep(refused.retry_after + Duration::from_millis(50)).await;
        assert!(
            limiter.check("alice").await.expect("check").allowed,
            "the window slides"
        );
    }

    #[tokio::test]
    async fn many_checks_in_one_round_trip_count_each_request_in_order() {
        let (limiter, _) = limiter(2, Duration::from_secs(5)).await;
        let decisions = limiter
            .check_many(&["dave", "erin", "dave", "dave"])
            .await
            .expect("check many");
        let allowed: Vec<bool> = decisions.iter().map(|d| d.allowed).collect();
        assert_eq!(allowed, [true, true, true, false]);
        assert_eq!(decisions[0].remaining, 1);
        assert!(decisions[3].retry_after > Duration::ZERO);
        assert!(
            !limiter.check("dave").await.expect("check").allowed,
            "single checks share the count"
        );
        assert!(limiter.check_many(&[]).await.expect("none").is_empty());
    }

    #[tokio::test]
    async fn refused_requests_do_not_extend_the_wait() {
        let (limiter, prefix) = limiter(1, Duration::from_millis(500)).await;
        assert!(limiter.check("carol").await.expect("check").allowed);
        for _ in 0..5 {
            assert!(!limiter.check("carol").await.expect("check").allowed);
        }
        let client = redis::Client::open("redis://127.0.0.1:6379").expect("redis url");
        let mut conn = client.get_connection_manager().await.expect("redis");
        let members: u32 = redis::cmd("ZCARD")
            .arg(format!("{prefix}carol"))
            .query_async(&mut conn)
            .await
            .expect("zcard");
        assert_eq!(members, 1, "only allowed requests are counted");
        let ttl: i64 = redis::cmd("PTTL")
            .arg(format!("{prefix}carol"))
            .query_async(&mut conn)
            .await
            .expect("pttl");
        assert!(ttl > 0 && ttl <= 500, "keys expire with the window: {ttl}");
    }
}
