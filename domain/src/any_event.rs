//! Any stored event, decoded by its stream type into the aggregate's
//! events: what the projections, the relay and the raw log over HTTP read.

use crate::{
    conversation, execution, incident, knowledge, runbook, session, user, workflow, Aggregate,
};

/// A stored event as the log holds it, before decoding.
#[derive(Debug, Clone, Copy)]
pub struct Stored<'a> {
    pub stream_type: &'a str,
    pub event_type: &'a str,
    pub schema_version: i32,
    pub payload: &'a [u8],
}

#[derive(Debug, Clone)]
pub enum AnyEvent {
    User(user::Event),
    Session(session::Event),
    Conversation(conversation::Event),
    Workflow(workflow::Event),
    Execution(execution::Event),
    Incident(incident::Event),
    Runbook(runbook::Event),
    Knowledge(knowledge::Event),
}

/// Decodes (and upcasts) `event`; the error says why it cannot be.
pub fn decode(event: Stored<'_>) -> Result<AnyEvent, String> {
    fn typed<A: Aggregate>(event: Stored<'_>) -> Result<A::Event, String> {
        <A::Event as crate::codec::EventCodec>::decode(
            event.event_type,
            event.schema_version,
            event.payload,
        )
        .map_err(|e| {
            format!(
                "cannot decode {} {} v{}: {e}",
                event.stream_type, event.event_type, event.schema_version
            )
        })
    }
    Ok(match event.stream_type {
        user::User::STREAM_TYPE => AnyEvent::User(typed::<user::User>(event)?),
        session::Session::STREAM_TYPE => AnyEvent::Session(typed::<session::Session>(event)?),
        conversation::Conversation::STREAM_TYPE => {
            AnyEvent::Conversation(typed::<conversation::Conversation>(event)?)
        }
        workflow::Workflow::STREAM_TYPE => AnyEvent::Workflow(typed::<workflow::Workflow>(event)?),
        execution::Execution::STREAM_TYPE => {
            AnyEvent::Execution(typed::<execution::Execution>(event)?)
        }
        incident::Incident::STREAM_TYPE => AnyEvent::Incident(typed::<incident::Incident>(event)?),
        runbook::Runbook::STREAM_TYPE => AnyEvent::Runbook(typed::<runbook::Runbook>(event)?),
        knowledge::Knowledge::STREAM_TYPE => {
            AnyEvent::Knowledge(typed::<knowledge::Knowledge>(event)?)
        }
        other => return Err(format!("unknown stream type {other:?}")),
    })
}

impl AnyEvent {
    /// The event's facts as JSON, personal data included (at the current
    /// schema version: older stored versions were upcast when decoded).
    pub fn to_json(&self) -> Result<serde_json::Value, serde_json::Error> {
        match self {
            AnyEvent::User(e) => serde_json::to_value(e),
            AnyEvent::Session(e) => serde_json::to_value(e),
            AnyEvent::Conversation(e) => serde_json::to_value(e),
            AnyEvent::Workflow(e) => serde_json::to_value(e),
            AnyEvent::Execution(e) => serde_json::to_value(e),
            AnyEvent::Incident(e) => serde_json::to_value(e),
            AnyEvent::Runbook(e) => serde_json::to_value(e),
            AnyEvent::Knowledge(e) => serde_json::to_value(e),
        }
    }

    /// The schema version the event has after decoding (the current one).
    pub fn schema_version(&self) -> i32 {
        match self {
            AnyEvent::User(e) => e.schema_version(),
            AnyEvent::Session(e) => e.schema_version(),
            AnyEvent::Conversation(e) => e.schema_version(),
            AnyEvent::Workflow(e) => e.schema_version(),
            AnyEvent::Execution(e) => e.schema_version(),
            AnyEvent::Incident(e) => e.schema_version(),
            AnyEvent::Runbook(e) => e.schema_version(),
            AnyEvent::Knowledge(e) => e.schema_version(),
        }
    }

    /// The event's public form as JSON: personal data and secrets
    /// redacted (the relay, the audit log).
    pub fn redacted_json(&self) -> Result<serde_json::Value, serde_json::Error> {
        crate::personal::redacted(|| self.to_json())
    }

    /// The event's facts as JSON with its secrets redacted (the raw log an
    /// admin reads).
    pub fn json_without_secrets(&self) -> Result<serde_json::Value, serde_json::Error> {
        crate::personal::without_secrets(|| self.to_json())
    }
}
