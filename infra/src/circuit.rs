//! The seed's circuit breaker, shared through Redis: one hash
//! `circuit_breaker:{service}` (state `closed` / `open` / `half_open`,
//! `failure_count`, `threshold`, `timeout_ms`, `opened_at_ms`), so every
//! process guarding the same service (the embedder, the vector store) sees
//! the same state. Each transition is one Lua script, and time is the
//! Redis server's.
//!
//! Closed: calls go ahead; `threshold` failures in a row open it. Open:
//! calls are refused until `timeout` has passed, then one trial call is let
//! through (half-open). Half-open: a success closes it, a failure opens it
//! again; a trial that never reports frees the slot after `timeout`.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;

const ALLOW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', KEYS[1], 'state', 'opened_at_ms', 'timeout_ms', 'trial_at_ms')
local state = h[1] or 'closed'
if state == 'closed' then return {1, 'closed'} end
local timeout = tonumber(h[3] or ARGV[1])
if state == 'open' then
  if now >= tonumber(h[2] or 0) + timeout then
    redis.call('HSET', KEYS[1], 'state', 'half_open', 'trial_at_ms', now)
    return {1, 'half_open'}
  end
  return {0, 'open'}
end
if now >= tonumber(h[4] or 0) + timeout then
  redis.call('HSET', KEYS[1], 'trial_at_ms', now)
  return {1, 'half_open'}
end
return {0, 'half_open'}";

const FAILURE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local failures = redis.call('HINCRBY', KEYS[1], 'failure_count', 1)
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
redis.call('HSET', KEYS[1], 'threshold', ARGV[1], 'timeout_ms', ARGV[2])
if state == 'half_open' or (state == 'closed' and failures >= tonumber(ARGV[1])) then
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at_ms', now)
  return 'open'
end
redis.call('HSET', KEYS[1], 'state', state)
return state";

const SUCCESS: &str = r"
redis.call('HSET', KEYS[1], 'state', 'closed', 'failure_count', 0, 'threshold', ARGV[1], 'timeout_ms', ARGV[2])
redis.call('HDEL', KEYS[1], 'opened_at_ms', 'trial_at_ms')
return 'closed'";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    fn parse(text: &str) -> CircuitState {
        match text {
            "open" => CircuitState::Open,
            "half_open" => CircuitState::HalfOpen,
            _ => CircuitState::Closed,
        }
    }
}

/// A breaker for one service, shared by every process using the same key.
#[derive(Clone)]
pub struct CircuitBreaker {
    conn: ConnectionManager,
    key: String,
    threshold: u32,
    timeout: Duration,
}

impl CircuitBreaker {
    /// `key_prefix` is the deployment's Redis prefix (`copilot:`).
    pub fn new(
        conn: ConnectionManager,
        key_prefix: &str,
        service: &str,
        threshold: u32,
        timeout: Duration,
    ) -> Self {
        CircuitBreaker {
            conn,
            key: format!("{key_prefix}circuit_breaker:{service}"),
            threshold: threshold.max(1),
            timeout,
        }
    }

    fn timeout_ms(&self) -> u64 {
        u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether a call may go ahead now, and the state that decided it.
    pub async fn allow(&self) -> Result<(bool, CircuitState), redis::RedisError> {
        let (allowed, state): (i64, String) = Script::new(ALLOW)
            .key(&self.key)
            .arg(self.timeout_ms())
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok((allowed == 1, CircuitState::parse(&state)))
    }

    /// Reports a failed call; returns the state after it.
    pub async fn record_failure(&self) -> Result<CircuitState, redis::RedisError> {
        self.transition(FAILURE).await
    }

    /// Reports a successful call: the breaker closes.
    pub async fn record_success(&self) -> Result<CircuitState, redis::RedisError> {
        self.transition(SUCCESS).await
    }

    /// Runs one of the transition scripts with this breaker's settings.
    async fn transition(&self, script: &str) -> Result<CircuitState, redis::RedisError> {
        let state: String = Script::new(script)
            .key(&self.key)
            .arg(self.threshold)
            .arg(self.timeout_ms())
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(CircuitState::parse(&state))
    }

    /// The current state, as stored.
    pub async fn state(&self) -> Result<CircuitState, redis::RedisError> {
        let state: Option<String> = redis::cmd("HGET")
            .arg(&self.key)
            .arg("state")
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(state.map_or(CircuitState::Closed, |s| CircuitState::parse(&s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn breaker(service: &str) -> CircuitBreaker {
        let client = redis::Client::open("redis://127.0.0.1:6379").expect("client");
        let conn = ConnectionManager::new(client).await.expect("Redis");
        CircuitBreaker::new(conn, "test:", service, 3, Duration::from_millis(300))
    }

    #[tokio::test]
    async fn opens_half_opens_and_closes_across_processes() {
        let service = format!("svc-{}", uuid::Uuid::new_v4());
        // Two breakers on one key stand for two processes.
        let (a, b) = (breaker(&service).await, breaker(&service).await);
        assert_eq!(
            a.allow().await.expect("allow"),
            (true, CircuitState::Closed)
        );
        assert_eq!(a.record_failure().await.expect("f1"), CircuitState::Closed);
        assert_eq!(b.record_failure().await.expect("f2"), CircuitState::Closed);
        assert_eq!(a.record_failure().await.expect("f3"), CircuitState::Open);
        assert_eq!(b.allow().await.expect("allow"), (false, CircuitState::Open));

        tokio::time::sleep(Duration::from_millis(350)).await;
        // One trial call after the timeout; the other process waits.
        assert_eq!(
            b.allow().await.expect("trial"),
            (true, CircuitState::HalfOpen)
        );
        assert_eq!(
            a.allow().await.expect("second"),
            (false, CircuitState::HalfOpen)
        );
        // The trial fails: open again, for another timeout.
        assert_eq!(
            b.record_failure().await.expect("trial failed"),
            CircuitState::Open
        );
        assert_eq!(a.allow().await.expect("allow"), (false, CircuitState::Open));

        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(
            a.allow().await.expect("trial"),
            (true, CircuitState::HalfOpen)
        );
        assert_eq!(a.record_success().await.expect("ok"), CircuitState::Closed);
        assert_eq!(b.state().await.expect("state"), CircuitState::Closed);
        assert_eq!(
            b.allow().await.expect("allow"),
            (true, CircuitState::Closed)
        );
        // The count starts over after a success.
        assert_eq!(b.record_failure().await.expect("f"), CircuitState::Closed);

        let _: () = redis::cmd("DEL")
            .arg(&a.key)
            .query_async(&mut a.conn.clone())
            .await
            .expect("clean up");
    }
}
