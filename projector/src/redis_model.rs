//! The Redis projection: the seed's Redis patterns kept from the log.
//!
//! At least once and idempotent (each write is safe to repeat), under the
//! deployment's key prefix:
//! * `session:{id}` hash (user, role, expiry, device, start, and the
//!   client's session context as JSON) expiring with the session, and
//!   `user_sessions:{user}` listing them; removed when the session ends or
//!   its user is locked, deleted or forgotten. Read by agents and workers
//!   that hold a session id and want its context without a database round
//!   trip; the services authenticate from their own `auth:token:` copies;
//! * response-cache invalidation: the keys listed in `cache:tag:{type}:{id}`
//!   and `cache:tag:{type}:all` are deleted when an event touches that
//!   resource or collection (the query service fills the tag sets); before
//!   invalidating a batch, `projection:redis:invalidated` is set to the
//!   batch's last position (as a sort key), so the query service can tell
//!   whether an answer it read is already older than an invalidation;
//! * metrics streams `metrics:events`, `metrics:tokens`,
//!   `metrics:incidents_opened`, `metrics:step_durations`, kept to the
//!   last 10,000 entries (`MAXLEN ~`) and the last 24 hours (each entry's
//!   `at_ms`, trimmed on every batch; events older than that are not
//!   added), entry ids from the event's position (so a repeated write is
//!   refused), and a consumer group `dashboard`;
//! * pub/sub `incidents:{id}`, `workflows:{id}`, `notifications:{user}`,
//!   only for events recorded in the last five minutes (a rebuild does not
//!   re-announce history);
//! * the workflow task queue `queue:workflow_tasks`: one sorted set, each
//!   task once, higher priority first and first in, first out within a
//!   priority (score `(9 - priority) * 10^12 + n`, `n` from
//!   `queue:workflow_tasks:seq`), so a worker takes the next task with
//!   `BZPOPMIN`; one task per execution start or step retry, exactly once
//!   per event id (`queue:seen:{event_id}`, kept 7 days).

use chrono::{Duration, Utc};
use domain::{execution, incident, session, user};
use eventstore::RecordedEvent;
use infra::REDIS_INVALIDATED_KEY as INVALIDATED_KEY;
use redis::aio::ConnectionManager;
use serde_json::json;
use uuid::Uuid;

use crate::events::{decode, DomainEvent};

/// The metrics streams and their consumer group.
pub const METRIC_STREAMS: [&str; 4] = [
    "metrics:events",
    "metrics:tokens",
    "metrics:incidents_opened",
    "metrics:step_durations",
];
pub const METRICS_GROUP: &str = "dashboard";
const STREAM_MAXLEN: u32 = 10_000;
/// How long metrics entries are kept.
pub const STREAM_MAX_AGE: Duration = Duration::hours(24);
/// Entries a trim removes at most per stream and batch (the rest go with
/// the next batches).
const TRIM_BATCH: u32 = 1_000;
const DEDUPE_SECONDS: u32 = 7 * 24 * 3600;
/// The task queue and its counter.
pub const TASK_QUEUE: &str = "queue:workflow_tasks";
const TASK_SEQ: &str = "queue:workflow_tasks:seq";

/// Deletes the cached keys listed in each tag set, and the sets.
const INVALIDATE: &str = r"
for _, tag in ipairs(KEYS) do
  for _, key in ipairs(redis.call('SMEMBERS', tag)) do redis.call('UNLINK', key) end
  redis.call('UNLINK', tag)
end
return 0";

/// XADD with a fixed id; an id at or below the top (a repeat) is ignored.
const XADD_ONCE: &str = r"
local ok = pcall(redis.call, 'XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], ARGV[2], unpack(ARGV, 3))
return ok and 1 or 0";

/// Deletes the oldest entries whose `at_ms` is before ARGV[1] (at most
/// ARGV[2]); entries without one (written before it was kept) go too.
/// Entries are in log order, which follows time closely enough to stop at
/// the first young one. One entry is read at a time: this runs with every
/// batch, and usually the oldest entry is young and the only one read.
const TRIM_OLD: &str = r"
local cutoff, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local removed = 0
while removed < limit do
  local entry = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
  if entry == nil then break end
  local fields, at = entry[2], nil
  for i = 1, #fields, 2 do
    if fields[i] == 'at_ms' then at = tonumber(fields[i + 1]) end
  end
  if at ~= nil and at >= cutoff then break end
  redis.call('XDEL', KEYS[1], entry[1])
  removed = removed + 1
end
return removed";

/// Queues a task once per event id: KEYS seen, queue, counter; ARGV
/// dedupe seconds, task, priority.
const ENQUEUE_ONCE: &str = r"
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  local n = redis.call('INCR', KEYS[3])
  redis.call('ZADD', KEYS[2], (9 - tonumber(ARGV[3])) * 1000000000000 + n, ARGV[2])
  return 1
end
return 0";

/// Moves tasks of the earlier layout (a list, and a copy of each in a
/// priority set) into the queue, each once, in list order.
const MIGRATE_QUEUE: &str = r"
if redis.call('TYPE', KEYS[1]).ok ~= 'list' then return 0 end
local tasks = redis.call('LRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1], KEYS[2])
for _, task in ipairs(tasks) do
  local ok, decoded = pcall(cjson.decode, task)
  local priority = ok and tonumber(decoded['priority']) or 0
  local n = redis.call('INCR', KEYS[3])
  redis.call('ZADD', KEYS[1], (9 - priority) * 1000000000000 + n, task)
end
return #tasks";

/// Removes a user's session hashes and the set that lists them.
const END_USER_SESSIONS: &str = r"
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do redis.call('UNLINK', ARGV[1] .. id) end
redis.call('UNLINK', KEYS[1])
return 0";

#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub url: infra::redis_conn::RedisTarget,
    pub prefix: String,
}

impl RedisConfig {
    pub fn from_settings(settings: &infra::Settings) -> Self {
        RedisConfig {
            url: (&settings.redis).into(),
            prefix: settings.redis.prefix.clone(),
        }
    }
}

/// The Redis projection's checkpoint and lease name.
pub const NAME: &str = "redis";

pub struct RedisModel {
    conn: ConnectionManager,
    prefix: String,
}

impl RedisModel {
    pub async fn connect(config: &RedisConfig) -> Result<Self, redis::RedisError> {
        let conn = ConnectionManager::new(config.url.client()?).await?;
        let mut model = RedisModel {
            conn,
            prefix: config.prefix.clone(),
        };
        model.create_groups().await?;
        let moved: u64 = redis::cmd("EVAL")
            .arg(MIGRATE_QUEUE)
            .arg(3)
            .arg(model.key(TASK_QUEUE))
            .arg(model.key("queue:workflow_tasks:priority"))
            .arg(model.key(TASK_SEQ))
            .query_async(&mut model.conn)
            .await?;
        if moved > 0 {
            tracing::info!(
                tasks = moved,
                "task queue moved to its one-structure layout"
            );
        }
        Ok(model)
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    /// The metrics streams and their consumer group (again after Redis
    /// lost its data).
    async fn create_groups(&mut self) -> Result<(), redis::RedisError> {
        for stream in METRIC_STREAMS {
            let created: redis::RedisResult<()> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(self.key(stream))
                .arg(METRICS_GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut self.conn)
                .await;
            match created {
                Ok(()) => {}
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Applies `events` in order (one pipeline).
    pub async fn write(&mut self, events: &[RecordedEvent]) -> Result<(), redis::RedisError> {
        let mut pipe = redis::pipe();
        let now = Utc::now();
        if let Some(last) = events.last() {
            pipe.set(self.key(INVALIDATED_KEY), last.position.sort_key())
                .ignore();
        }
        let metrics_since = now - STREAM_MAX_AGE;
        for event in events {
            // Events this build cannot decode still invalidate caches and
            // count; the SQL projections report them as poison.
            let typed = decode(event).ok();
            self.invalidate(&mut pipe, event);
            if event.recorded_at >= metrics_since {
                self.metrics(&mut pipe, event, typed.as_ref());
            }
            if let Some(typed) = &typed {
                self.sessions(&mut pipe, event, typed);
                self.tasks(&mut pipe, event, typed);
                if now - event.recorded_at < Duration::minutes(5) {
                    self.publish(&mut pipe, event, typed);
                }
            }
        }
        for stream in METRIC_STREAMS {
            pipe.cmd("EVAL")
                .arg(TRIM_OLD)
                .arg(1)
                .arg(self.key(stream))
                .arg(metrics_since.timestamp_millis())
                .arg(TRIM_BATCH)
                .ignore();
        }
        pipe.query_async::<()>(&mut self.conn).await
    }

    fn invalidate(&self, pipe: &mut redis::Pipeline, event: &RecordedEvent) {
        pipe.cmd("EVAL")
            .arg(INVALIDATE)
            .arg(2)
            .arg(self.key(&format!(
                "cache:tag:{}:{}",
                event.stream_type, event.stream_id
            )))
            .arg(self.key(&format!("cache:tag:{}:all", event.stream_type)))
            .ignore();
    }

    fn xadd(
        &self,
        pipe: &mut redis::Pipeline,
        stream: &str,
        event: &RecordedEvent,
        fields: &[(&str, String)],
    ) {
        let id = format!("{}-{}", event.position.tx_id, event.position.seq);
        let cmd = pipe
            .cmd("EVAL")
            .arg(XADD_ONCE)
            .arg(1)
            .arg(self.key(stream))
            .arg(STREAM_MAXLEN)
            .arg(id)
            .arg("at_ms")
            .arg(event.recorded_at.timestamp_millis());
        for (name, value) in fields {
            cmd.arg(*name).arg(value);
        }
        cmd.ignore();
    }

    fn metrics(
        &self,
        pipe: &mut redis::Pipeline,
        event: &RecordedEvent,
        typed: Option<&DomainEvent>,
    ) {
        self.xadd(
            pipe,
            "metrics:events",
            event,
            &[
                ("type", event.event_type.clone()),
                ("stream_type", event.stream_type.clone()),
                ("at", event.recorded_at.to_rfc3339()),
            ],
        );
        match typed {
            Some(DomainEvent::Conversation(domain::conversation::Event::MessageAppended(m))) => {
                self.xadd(
                    pipe,
                    "metrics:tokens",
                    event,
                    &[
                        ("conversation_id", event.stream_id.to_string()),
                        ("tokens_in", m.tokens_in.to_string()),
                        ("tokens_out", m.tokens_out.to_string()),
                        ("cost_micro_usd", m.cost_usd.micros().to_string()),
                    ],
                );
            }
            Some(DomainEvent::Incident(incident::Event::Opened(o))) => {
                self.xadd(
                    pipe,
                    "metrics:incidents_opened",
                    event,
                    &[
                        ("incident_id", event.stream_id.to_string()),
                        ("severity", o.severity.as_str().to_string()),
                    ],
                );
            }
            Some(DomainEvent::Execution(execution::Event::StepCompleted(s))) => {
                self.step_duration(pipe, event, s.step_id.0, "succeeded", s.duration_ms);
            }
            Some(DomainEvent::Execution(execution::Event::StepFailed(s))) => {
                self.step_duration(pipe, event, s.step_id.0, "failed", s.duration_ms);
            }
            _ => {}
        }
    }

    fn step_duration(
        &self,
        pipe: &mut redis::Pipeline,
        event: &RecordedEvent,
        step: Uuid,
        status: &str,
        ms: u64,
    ) {
        self.xadd(
            pipe,
            "metrics:step_durations",
            event,
            &[
                ("execution_id", event.stream_id.to_string()),
                ("step_id", step.to_string()),
                ("status", status.to_string()),
                ("duration_ms", ms.to_string()),
            ],
        );
    }

    fn sessions(&self, pipe: &mut redis::Pipeline, event: &RecordedEvent, typed: &DomainEvent) {
        let end_all = |pipe: &mut redis::Pipeline, user: Uuid| {
            pipe.cmd("EVAL")
                .arg(END_USER_SESSIONS)
                .arg(1)
                .arg(self.key(&format!("user_sessions:{user}")))
                .arg(self.key("session:"))
                .ignore();
        };
        match typed {
            DomainEvent::Session(session::Event::Started(s)) => {
                let key = self.key(&format!("session:{}", event.stream_id));
                let list = self.key(&format!("user_sessions:{}", s.user_id.0));
                let expires = s.expires_at.timestamp();
                pipe.hset_multiple(
                    &key,
                    &[
                        ("user_id", s.user_id.0.to_string()),
                        ("role", s.role.as_str().to_string()),
                        ("expires_at", s.expires_at.to_rfc3339()),
                        ("device", s.device_fingerprint.clone().unwrap_or_default()),
                        ("started_at", s.started_at.to_rfc3339()),
                    ],
                )
                .ignore();
                // Personal data: absent once the user is forgotten (then
                // the hash is gone too).
                if let Some(context) = s.context.as_ref().and_then(|c| c.as_ref()) {
                    pipe.hset(&key, "context", context.to_string()).ignore();
                }
                pipe.cmd("EXPIREAT").arg(&key).arg(expires).ignore();
                pipe.sadd(&list, event.stream_id.to_string()).ignore();
                // The list lives as long as its longest-lived session.
                pipe.cmd("EXPIREAT")
                    .arg(&list)
                    .arg(expires)
                    .arg("GT")
                    .ignore();
                pipe.cmd("EXPIREAT")
                    .arg(&list)
                    .arg(expires)
                    .arg("NX")
                    .ignore();
            }
            DomainEvent::Session(session::Event::Ended(e)) => {
                pipe.del(self.key(&format!("session:{}", event.stream_id)))
                    .ignore();
                pipe.srem(
                    self.key(&format!("user_sessions:{}", e.user_id.0)),
                    event.stream_id.to_string(),
                )
                .ignore();
            }
            DomainEvent::User(
                user::Event::Locked(_) | user::Event::Deleted(_) | user::Event::Forgotten(_),
            ) => {
                end_all(pipe, event.stream_id);
            }
            _ => {}
        }
    }

    fn tasks(&self, pipe: &mut redis::Pipeline, event: &RecordedEvent, typed: &DomainEvent) {
        let task = match typed {
            DomainEvent::Execution(execution::Event::Started(s)) => json!({
                "kind": "start_execution",
                "execution_id": event.stream_id,
                "workflow_id": s.workflow_id.0,
                "workflow_version": s.workflow_version,
                "priority": s.priority,
                "event_id": event.event_id,
            }),
            DomainEvent::Execution(execution::Event::StepRetried(r)) => json!({
                "kind": "retry_step",
                "execution_id": event.stream_id,
                "step_id": r.step_id.0,
                "name": r.name,
                "attempt": r.attempt,
                "priority": r.priority,
                "event_id": event.event_id,
            }),
            _ => return,
        };
        let priority = task["priority"].as_u64().unwrap_or(0).min(9);
        pipe.cmd("EVAL")
            .arg(ENQUEUE_ONCE)
            .arg(3)
            .arg(self.key(&format!("queue:seen:{}", event.event_id)))
            .arg(self.key(TASK_QUEUE))
            .arg(self.key(TASK_SEQ))
            .arg(DEDUPE_SECONDS)
            .arg(task.to_string())
            .arg(priority)
            .ignore();
    }

    fn publish(&self, pipe: &mut redis::Pipeline, event: &RecordedEvent, typed: &DomainEvent) {
        let message = json!({
            "event_id": event.event_id,
            "event_type": event.event_type,
            "stream_type": event.stream_type,
            "stream_id": event.stream_id,
            "version": event.version,
            "position": event.position.to_string(),
        })
        .to_string();
        let mut channels = Vec::new();
        match typed {
            DomainEvent::Incident(e) => {
                channels.push(format!("incidents:{}", event.stream_id));
                if let incident::Event::Assigned(a) = e {
                    channels.push(format!("notifications:{}", a.assignee_id.0));
                }
            }
            DomainEvent::Workflow(_) | DomainEvent::Execution(_) => {
                channels.push(format!("workflows:{}", event.stream_id));
            }
            DomainEvent::User(_) => channels.push(format!("notifications:{}", event.stream_id)),
            DomainEvent::Session(session::Event::Started(s)) => {
                channels.push(format!("notifications:{}", s.user_id.0));
            }
            _ => {}
        }
        for channel in channels {
            pipe.publish(self.key(&channel), &message).ignore();
        }
    }
}
