//! `GET /v1/live`: server-sent events from the Redis projection's pub/sub
//! channels: every incident and workflow/execution change, and the
//! caller's own notifications; a comment line every 15 s keeps proxies
//! from closing an idle stream.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{stream, StreamExt};
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
    Caller(caller): Caller,
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
    let events = until_credential_ends(events.boxed(), state, authorization, slot);
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(HEARTBEAT).text("heartbeat"))
        .into_response())
}

/// `events` until the credential that opened the stream no longer holds
/// (checked every [`RECHECK`]) or the client goes; the slot is freed then.
fn until_credential_ends(
    events: stream::BoxStream<'static, Result<Event, Infallible>>,
    state: AppState,
    authorization: String,
    slot: StreamSlot,
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
                        if let Err(error) = state.auth.authenticate(Some(&authorization)).await {
                            if matches!(error, ApiError::Unauthorized(_)) {
                                tracing::debug!(user = %slot.user, "live stream closed: its credential ended");
                                return None;
                            }
                        }
                    }
                }
            }
        },
    )
}
