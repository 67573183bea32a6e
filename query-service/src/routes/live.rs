//! `GET /v1/live`: server-sent events from the Redis projection's pub/sub
//! channels: every incident and workflow/execution change, and the
//! caller's own notifications; a comment line every 15 s keeps proxies
//! from closing an idle stream.
//!
//! Presence: each open stream is a member `<user_id>:<stream id>` of the
//! Redis sorted set `presence:live`, scored by when it expires
//! ([`PRESENCE_TTL`] after its last refresh, every [`RECHECK`]); it is
//! removed when the stream ends, and expires by itself when the server
//! went away without saying so. `GET /v1/live/presence` (admin) reads it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::{stream, StreamExt};
use redis::aio::ConnectionManager;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::problem::{ApiError, ApiResult};
use crate::request::Caller;
use crate::state::AppState;

pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// How often a stream's credential is checked again: a stream ends within
/// this long after its session ends or its key is revoked.
pub const RECHECK: Duration = Duration::from_secs(2);
/// Live streams open at once per user (each holds a Redis connection).
pub const MAX_STREAMS_PER_USER: usize = 4;
/// How long a stream counts as present after its last refresh.
pub const PRESENCE_TTL: Duration = Duration::from_secs(10);
/// The presence set's key (under the deployment's prefix).
pub const PRESENCE_KEY: &str = "presence:live";

/// One stream's entry in the presence set: refreshed while it is open,
/// removed when it is dropped.
struct Present {
    conn: ConnectionManager,
    key: String,
    member: String,
}

impl Present {
    async fn join(conn: Option<ConnectionManager>, prefix: &str, user: Uuid) -> Option<Present> {
        let present = Present {
            conn: conn?,
            key: format!("{prefix}{PRESENCE_KEY}"),
            member: format!("{user}:{}", Uuid::new_v4()),
        };
        present.refresh().await;
        Some(present)
    }

    /// Best effort: presence is a view for people, and a stream goes on
    /// without it when Redis is slow or down.
    async fn refresh(&self) {
        let expires = chrono::Utc::now().timestamp_millis()
            + i64::try_from(PRESENCE_TTL.as_millis()).unwrap_or(i64::MAX);
        let mut conn = self.conn.clone();
        let added = tokio::time::timeout(
            Duration::from_secs(1),
            redis::cmd("ZADD")
                .arg(&self.key)
                .arg(expires)
                .arg(&self.member)
                .query_async::<()>(&mut conn),
        )
        .await;
        if !matches!(added, Ok(Ok(()))) {
            tracing::debug!(member = %self.member, "presence not refreshed");
        }
    }
}

impl Drop for Present {
    fn drop(&mut self) {
        let (mut conn, key, member) = (
            self.conn.clone(),
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.member),
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = redis::cmd("ZREM")
                    .arg(key)
                    .arg(member)
                    .query_async::<()>(&mut conn)
                    .await;
            });
        }
    }
}

/// Who has live streams open now.
#[derive(Debug, Serialize, ToSchema)]
pub struct Presence {
    pub users: Vec<PresentUser>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PresentUser {
    pub user_id: Uuid,
    /// Open `/v1/live` streams of the user (across every query server).
    pub streams: u32,
}

/// The users with `/v1/live` open now, across every query server (admin).
#[utoipa::path(get, path = "/v1/live/presence", tag = "dashboard",
    responses((status = 200, body = Presence)))]
pub async fn presence(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Presence>> {
    if !caller.admin {
        return Err(ApiError::Forbidden);
    }
    let mut conn = state
        .cache
        .connection()
        .ok_or_else(|| ApiError::unavailable("presence", "no Redis configured"))?;
    let key = format!("{}{PRESENCE_KEY}", state.cache.prefix());
    let now = chrono::Utc::now().timestamp_millis();
    let (members,): (Vec<String>,) = redis::pipe()
        .cmd("ZREMRANGEBYSCORE")
        .arg(&key)
        .arg("-inf")
        .arg(format!("({now}"))
        .ignore()
        .cmd("ZRANGE")
        .arg(&key)
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .map_err(|e| ApiError::unavailable("Redis", e))?;
    let mut streams: std::collections::BTreeMap<Uuid, u32> = Default::default();
    for member in members {
        let user = member.split_once(':').and_then(|(u, _)| u.parse().ok());
        if let Some(user) = user {
            *streams.entry(user).or_default() += 1;
        }
    }
    Ok(Json(Presence {
        users: streams
            .into_iter()
            .map(|(user_id, streams)| PresentUser { user_id, streams })
            .collect(),
    }))
}

/// The live streams each user has open.
#[derive(Clone, Default)]
pub struct OpenStreams(Arc<Mutex<HashMap<Uuid, usize>>>);

/// One open stream of a user; closing it (dropping this) frees its place.
pub struct StreamSlot {
    open: OpenStreams,
    user: Uuid,
}

impl OpenStreams {
    /// A place for one more stream of `user`, if they have fewer than the cap.
    fn take(&self, user: Uuid) -> Option<StreamSlot> {
        let mut open = self.0.lock().ok()?;
        let count = open.entry(user).or_insert(0);
        if *count >= MAX_STREAMS_PER_USER {
            return None;
        }
        *count += 1;
        Some(StreamSlot {
            open: self.clone(),
            user,
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.open.0.lock() {
            if let Some(count) = open.get_mut(&self.user) {
                *count -= 1;
                if *count == 0 {
                    open.remove(&self.user);
                }
            }
        }
    }
}

/// A stream of `incident`, `workflow` and `notification` events (the data
/// is the event's id, type, stream, version and position as JSON), after
/// one `ready` event once the subscriptions are in place.
#[utoipa::path(get, path = "/v1/live", tag = "dashboard",
    responses((status = 200, description = "text/event-stream of changes", content_type = "text/event-stream", body = String)))]
pub async fn live(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let slot = state
        .live_streams
        .take(caller.user_id)
        .ok_or(ApiError::TooManyStreams(MAX_STREAMS_PER_USER))?;
    // The extractor read it already, so it is there and visible ASCII.
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let client = state
        .pubsub
        .clone()
        .ok_or_else(|| ApiError::unavailable("live updates", "no Redis configured"))?;
    let prefix = state.cache.prefix().to_string();
    let mut pubsub = tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub())
        .await
        .map_err(|_| ApiError::unavailable("Redis", "live updates: timed out"))?
        .map_err(|e| ApiError::unavailable("Redis", e))?;
    let subscribed = async {
        pubsub.psubscribe(format!("{prefix}incidents:*")).await?;
        pubsub.psubscribe(format!("{prefix}workflows:*")).await?;
        pubsub
            .subscribe(format!("{prefix}notifications:{}", caller.user_id))
            .await
    };
    subscribed
        .await
        .map_err(|e| ApiError::unavailable("Redis", e))?;
    let ready = Event::default()
        .event("ready")
        .data(format!("{{\"user_id\":\"{}\"}}", caller.user_id));
    let messages = pubsub.into_on_message().map(move |message| {
        let channel = message.get_channel_name();
        let kind = match channel.strip_prefix(prefix.as_str()) {
            Some(rest) if rest.starts_with("incidents:") => "incident",
            Some(rest) if rest.starts_with("workflows:") => "workflow",
            _ => "notification",
        };
        let data: String = message.get_payload().unwrap_or_default();
        Ok::<Event, Infallible>(Event::default().event(kind).data(data))
    });
    let events = stream::once(async move { Ok::<Event, Infallible>(ready) }).chain(messages);
    let present = Present::join(
        state.cache.connection(),
        state.cache.prefix(),
        caller.user_id,
    )
    .await;
    let events = until_credential_ends(events.boxed(), state, authorization, (slot, present));
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(HEARTBEAT).text("heartbeat"))
        .into_response())
}

/// `events` until the credential that opened the stream no longer holds
/// (checked every [`RECHECK`], when presence is refreshed too) or the
/// client goes; the slot and the presence entry are freed then.
fn until_credential_ends(
    events: stream::BoxStream<'static, Result<Event, Infallible>>,
    state: AppState,
    authorization: String,
    slot: (StreamSlot, Option<Present>),
) -> impl futures_util::Stream<Item = Result<Event, Infallible>> {
    let mut recheck = tokio::time::interval(RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    stream::unfold(
        (events, recheck, state, authorization, slot),
        |(mut events, mut recheck, state, authorization, slot)| async move {
            loop {
                tokio::select! {
                    event = events.next() => {
                        return event.map(|e| (e, (events, recheck, state, authorization, slot)));
                    }
                    _ = recheck.tick() => {
                        if let Some(present) = &slot.1 {
                            present.refresh().await;
                        }
                        if let Err(error) = state.auth.authenticate(Some(&authorization)).await {
                            if matches!(error, ApiError::Unauthorized(_)) {
                                tracing::debug!(user = %slot.0.user, "live stream closed: its credential ended");
                                return None;
                            }
                        }
                    }
                }
            }
        },
    )
}
