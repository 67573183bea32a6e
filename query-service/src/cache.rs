//! Cache-aside for responses, the seed's pattern: a key per endpoint,
//! caller's visibility and parameters; a TTL; tag sets
//! (`cache:tag:{type}:{id}`, `cache:tag:{type}:all`) that the Redis
//! projection empties when an event touches the resource.
//!
//! Never older than the projection it came from: each entry carries the
//! projection position it was read at, and is stored only if the Redis
//! projection has not yet invalidated anything past that position (it
//! publishes how far it has invalidated in `projection:redis:invalidated`
//! before invalidating). Otherwise an event between the read and the write
//! could have been invalidated already, leaving a stale entry behind. A
//! request with `X-Min-Position` ignores entries read before that position.
//!
//! Redis is an optimisation: when it is down every lookup is a miss and
//! the answer comes from PostgreSQL.

use std::time::Duration;

use bytes::Bytes;
use eventstore::Position;
use redis::aio::ConnectionManager;
use redis::Script;

use crate::metrics::metrics;

/// How long a Redis call may take before the cache is skipped.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_millis(250);

/// Moves an entry from where it was just written (KEYS[3], by a SET in the
/// same pipeline) into place (KEYS[1], with the TTL it was written with)
/// and registers it in its tag sets, unless the Redis projection has
/// invalidated past the entry's position (or is not running): then it is
/// deleted. The body never enters Lua, which hashes every byte of a string
/// it is given.
const PUT: &str = r"
local seen = redis.call('GET', KEYS[2])
if not seen or seen > ARGV[2] then
  redis.call('DEL', KEYS[3])
  return 0
end
for i = 4, #KEYS do
  redis.call('SADD', KEYS[i], KEYS[1])
  redis.call('EXPIRE', KEYS[i], ARGV[1])
end
redis.call('RENAME', KEYS[3], KEYS[1])
return 1";

use infra::REDIS_INVALIDATED_KEY as INVALIDATED_KEY;

#[derive(Clone)]
pub struct Cache {
    conn: Option<ConnectionManager>,
    prefix: String,
    ttl: Duration,
    put: Script,
}

/// A cached response body and the position it was read at.
pub struct Entry {
    pub position: Position,
    pub body: Bytes,
}

impl Cache {
    /// Connects lazily: a Redis that is down at start-up is retried on use.
    pub fn new(redis: &infra::redis_conn::RedisTarget, prefix: &str, ttl: Duration) -> Cache {
        let conn = match infra::redis_conn::lazy(redis) {
            Ok(conn) => Some(conn),
            Err(error) => {
                tracing::warn!(%error, "the response cache is off: bad Redis URL");
                None
            }
        };
        Cache {
            conn,
            prefix: prefix.to_string(),
            ttl,
            put: Script::new(PUT),
        }
    }

    pub fn connection(&self) -> Option<ConnectionManager> {
        self.conn.clone()
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    /// The entry under `key`, if there is one read at or after `min`.
    pub async fn get(&self, key: &str, min: Option<Position>) -> Option<Entry> {
        let mut conn = self.conn.clone()?;
        let full = self.key(key);
        let got = tokio::time::timeout(CALL_TIMEOUT, async {
            redis::cmd("GET")
                .arg(&full)
                .query_async::<Option<Vec<u8>>>(&mut conn)
                .await
        })
        .await;
        match got {
            Ok(Ok(raw)) => self.found(raw.map(Bytes::from), min),
            Ok(Err(_)) | Err(_) => {
                metrics().cache.with_label_values(&["error"]).inc();
                None
            }
        }
    }

    /// The entry Redis gave (`None`: there was none) if it was read at or
    /// after `min`.
    pub fn found(&self, raw: Option<Bytes>, min: Option<Position>) -> Option<Entry> {
        let outcome = match raw.map(decode) {
            Some(Some(entry)) if min.is_none_or(|min| entry.position >= min) => {
                metrics().cache.with_label_values(&["hit"]).inc();
                return Some(entry);
            }
            Some(Some(_)) => "stale",
            Some(None) => "error",
            None => "miss",
        };
        metrics().cache.with_label_values(&[outcome]).inc();
        None
    }

    /// Stores `body` read at `position` under `key`, listed in `tags`
    /// (`{type}:{id}` or `{type}:all`): one round trip, a SET of the entry
    /// under a key of its own and the script that moves it into place.
    pub async fn put(&self, key: &str, tags: &[String], position: Position, body: &[u8]) {
        let Some(mut conn) = self.conn.clone() else {
            return;
        };
        let mut value = format!("{position}\n").into_bytes();
        value.extend_from_slice(body);
        let ttl = self.ttl.as_secs().max(1);
        let incoming = self.key(&format!("{key}:incoming:{}", uuid::Uuid::new_v4().simple()));
        let mut invocation = self.put.prepare_invoke();
        invocation
            .key(self.key(key))
            .key(self.key(INVALIDATED_KEY))
            .key(&incoming);
        for tag in tags {
            invocation.key(self.key(&format!("cache:tag:{tag}")));
        }
        invocation.arg(ttl).arg(position.sort_key());
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(&incoming)
            .arg(value)
            .arg("EX")
            .arg(ttl)
            .ignore()
            .invoke_script(&invocation)
            .ignore();
        let stored = tokio::time::timeout(
            CALL_TIMEOUT,
            infra::redis_conn::query_loading::<()>(&pipe, &[&self.put], &mut conn),
        )
        .await;
        if let Ok(Err(error)) = stored {
            tracing::debug!(%error, "cannot store a cached response");
        }
    }
}

/// Splits `position\nbody` without copying the body.
fn decode(raw: Bytes) -> Option<Entry> {
    let split = raw.iter().position(|b| *b == b'\n')?;
    let position = std::str::from_utf8(&raw[..split]).ok()?.parse().ok()?;
    Some(Entry {
        position,
        body: raw.slice(split + 1..),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sort_keys_sort_like_positions() {
        let a = Position {
            generation: 0,
            tx_id: 999,
            seq: 5,
        };
        let b = Position {
            generation: 0,
            tx_id: 1000,
            seq: 1,
        };
        let c = Position {
            generation: 1,
            tx_id: 1,
            seq: 1,
        };
        assert!(a.sort_key() < b.sort_key());
        assert!(b.sort_key() < c.sort_key());
    }

    /// Against the local Redis, under a prefix of its own: an answer is
    /// stored only once the Redis projection runs and has not invalidated
    /// past the answer's position, and leaves nothing else behind.
    #[tokio::test]
    async fn an_answer_is_stored_only_if_not_invalidated_past_it() {
        let prefix = format!("test:cache:{}:", uuid::Uuid::new_v4().simple());
        let target = infra::redis_conn::RedisTarget::from("redis://127.0.0.1:6379");
        let cache = Cache::new(&target, &prefix, Duration::from_secs(60));
        let mut conn = cache.connection().expect("a Redis connection");
        let at = |tx_id| Position {
            generation: 0,
            tx_id,
            seq: 1,
        };
        let tags = vec!["incident:all".to_string()];
        let set_invalidated = |position: Position| {
            let mut conn = conn.clone();
            let key = format!("{prefix}{INVALIDATED_KEY}");
            async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(position.sort_key())
                    .query_async::<()>(&mut conn)
                    .await
                    .expect("SET");
            }
        };

        cache.put("k", &tags, at(10), b"{}").await;
        assert!(cache.get("k", None).await.is_none(), "no projection yet");
        set_invalidated(at(11)).await;
        cache.put("k", &tags, at(10), b"{}").await;
        assert!(cache.get("k", None).await.is_none(), "invalidated past it");
        set_invalidated(at(10)).await;
        cache.put("k", &tags, at(10), b"{\"a\":1}").await;
        let entry = cache.get("k", None).await.expect("stored");
        assert_eq!(
            (entry.position, &entry.body[..]),
            (at(10), &b"{\"a\":1}"[..])
        );

        let ttl: i64 = redis::cmd("TTL")
            .arg(format!("{prefix}k"))
            .query_async(&mut conn)
            .await
            .expect("TTL");
        assert!((1..=60).contains(&ttl), "the entry keeps its TTL: {ttl}");
        let tagged: Vec<String> = redis::cmd("SMEMBERS")
            .arg(format!("{prefix}cache:tag:incident:all"))
            .query_async(&mut conn)
            .await
            .expect("SMEMBERS");
        assert_eq!(tagged, vec![format!("{prefix}k")]);
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut conn)
            .await
            .expect("KEYS");
        keys.sort();
        let mut expected = vec![
            format!("{prefix}k"),
            format!("{prefix}cache:tag:incident:all"),
            format!("{prefix}{INVALIDATED_KEY}"),
        ];
        expected.sort();
        assert_eq!(keys, expected, "nothing else is left behind");
        redis::cmd("DEL")
            .arg(&keys)
            .query_async::<()>(&mut conn)
            .await
            .expect("DEL");
    }

    #[test]
    fn entries_round_trip() {
        let raw = b"0.12.3\n{\"items\":[]}";
        let entry = decode(Bytes::from_static(raw)).expect("decodes");
        assert_eq!(entry.position.to_string(), "0.12.3");
        assert_eq!(&entry.body[..], b"{\"items\":[]}");
        assert!(decode(Bytes::from_static(b"no newline")).is_none());
    }
}
