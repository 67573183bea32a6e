//! The event relay: every event of the log published to JetStream, in log
//! order, on `<prefix>.evt.<stream_type>.<event_type>` (stream
//! `COPILOT_EVENTS[_<PREFIX>]`), so other agents can react to what happens.
//!
//! At-least-once: a batch is published, every acknowledgement awaited, and
//! only then is the relay's checkpoint saved; a batch published again after
//! a crash or a lost connection carries the same `Nats-Msg-Id` (the event
//! id) and the server drops the copies within its duplicate window.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use eventstore::RecordedEvent;
use serde::Serialize;

use crate::events::decode;

/// How long the server remembers message ids, and so how long a crashed
/// relay may take to come back without publishing a copy.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(30 * 60);
/// How long relayed events are kept for consumers.
const MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub nats: infra::nats::NatsTarget,
    pub prefix: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("NATS: {0}")]
    Nats(String),
    #[error("cannot encode event {0}: {1}")]
    Encode(uuid::Uuid, String),
}

fn nats_error(error: impl std::fmt::Display) -> RelayError {
    RelayError::Nats(error.to_string())
}

/// What a relayed message holds (MessagePack with named fields).
#[derive(Debug, Serialize)]
pub struct RelayedEvent {
    pub event_id: String,
    pub stream_id: String,
    pub stream_type: String,
    pub version: u64,
    pub event_type: String,
    /// The schema version of `data` (stored events are upcast first).
    pub schema_version: i32,
    pub position: String,
    pub recorded_at: String,
    /// The command's ids and actor; the client's address and program are
    /// personal data, shown as `[personal]`.
    pub metadata: eventstore::Metadata,
    /// The event's public facts (secrets and personal data redacted);
    /// `null` if this build cannot decode the event (whose stored bytes are
    /// then not published: they could hold either).
    pub data: Option<serde_json::Value>,
}

pub fn stream_name(prefix: &str) -> String {
    infra::nats::stream_name("COPILOT_EVENTS", prefix)
}

/// The relay's checkpoint and lease name.
pub const NAME: &str = "relay";

pub struct Relay {
    js: jetstream::Context,
    prefix: String,
}

impl Relay {
    /// Connects and creates the events stream if it is missing.
    pub async fn connect(config: &RelayConfig) -> Result<Self, RelayError> {
        let client = config
            .nats
            .connect("copilot-data relay")
            .await
            .map_err(nats_error)?;
        let js = jetstream::new(client);
        js.get_or_create_stream(stream::Config {
            name: stream_name(&config.prefix),
            subjects: vec![format!("{}.evt.>", config.prefix)],
            duplicate_window: DUPLICATE_WINDOW,
            max_age: MAX_AGE,
            ..Default::default()
        })
        .await
        .map_err(nats_error)?;
        Ok(Relay {
            js,
            prefix: config.prefix.clone(),
        })
    }

    /// Publishes `events` in order and waits for every acknowledgement.
    pub async fn publish(&self, events: &[RecordedEvent]) -> Result<(), RelayError> {
        let mut acks = Vec::with_capacity(events.len());
        for event in events {
            let (subject, headers, body) = self.message(event)?;
            let ack = self
                .js
                .publish_with_headers(subject, headers, body.into())
                .await
                .map_err(nats_error)?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await.map_err(nats_error)?;
        }
        Ok(())
    }

    fn message(&self, event: &RecordedEvent) -> Result<(String, HeaderMap, Vec<u8>), RelayError> {
        // The public form only: the relay's stream is read by anyone with a
        // subscription and kept for a week.
        let (data, schema_version) = match decode(event) {
            Ok(typed) => match typed.redacted_json() {
                Ok(json) => (Some(json), typed.schema_version()),
                Err(_) => (None, event.schema_version),
            },
            Err(_) => (None, event.schema_version),
        };
        let mut metadata = event.metadata.clone();
        for claim in [
            &mut metadata.ip,
            &mut metadata.user_agent,
            &mut metadata.claimed_ip,
            &mut metadata.claimed_user_agent,
        ] {
            if claim.is_some() {
                *claim = Some(domain::personal::REDACTED.to_string());
            }
        }
        let relayed = RelayedEvent {
            event_id: event.event_id.to_string(),
            stream_id: event.stream_id.to_string(),
            stream_type: event.stream_type.clone(),
            version: event.version,
            event_type: event.event_type.clone(),
            schema_version,
            position: event.position.to_string(),
            recorded_at: event.recorded_at.to_rfc3339(),
            metadata,
            data,
        };
        // Named fields, ids and times as text (as in the log).
        let mut body = Vec::with_capacity(256 + event.payload.len());
        relayed
            .serialize(
                &mut rmp_serde::Serializer::new(&mut body)
                    .with_struct_map()
                    .with_human_readable(),
            )
            .map_err(|e| RelayError::Encode(event.event_id, e.to_string()))?;
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", event.event_id.to_string().as_str());
        headers.insert("Content-Type", "application/msgpack");
        headers.insert("Copilot-Position", event.position.to_string().as_str());
        let subject = format!(
            "{}.evt.{}.{}",
            self.prefix,
            token(&event.stream_type),
            token(&event.event_type)
        );
        Ok((subject, headers, body))
    }
}

/// A subject token: no dots, spaces or wildcards.
fn token(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
