//! `GET /v1/live`: server-sent events from the Redis projection's pub/sub
//! channels: every incident and workflow/execution change, and the
//! caller's own notifications; a comment line every 15 s keeps proxies
//! from closing an idle stream.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{stream, StreamExt};

use crate::problem::{ApiError, ApiResult};
use crate::request::Caller;
use crate::state::AppState;

pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// A stream of `incident`, `workflow` and `notification` events (the data
/// is the event's id, type, stream, version and position as JSON), after
/// one `ready` event once the subscriptions are in place.
#[utoipa::path(get, path = "/v1/live", tag = "dashboard",
    responses((status = 200, description = "text/event-stream of changes", content_type = "text/event-stream", body = String)))]
pub async fn live(State(state): State<AppState>, Caller(caller): Caller) -> ApiResult<Response> {
    let client = state
        .pubsub
        .clone()
        .ok_or_else(|| ApiError::Unavailable("live updates (no Redis configured)".into()))?;
    let prefix = state.cache.prefix().to_string();
    let mut pubsub = tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub())
        .await
        .map_err(|_| ApiError::Unavailable("Redis (live updates)".into()))?
        .map_err(|e| ApiError::Unavailable(format!("Redis (live updates: {e})")))?;
    let subscribed = async {
        pubsub.psubscribe(format!("{prefix}incidents:*")).await?;
        pubsub.psubscribe(format!("{prefix}workflows:*")).await?;
        pubsub
            .subscribe(format!("{prefix}notifications:{}", caller.user_id))
            .await
    };
    subscribed
        .await
        .map_err(|e| ApiError::Unavailable(format!("Redis (live updates: {e})")))?;
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
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(HEARTBEAT).text("heartbeat"))
        .into_response())
}
