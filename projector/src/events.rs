//! Any stored event, decoded by its stream type into the domain's events.

use domain::{
    conversation, execution, incident, knowledge, runbook, session, user, workflow, Aggregate,
};
use eventstore::RecordedEvent;

#[derive(Debug, Clone)]
pub enum DomainEvent {
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
pub fn decode(event: &RecordedEvent) -> Result<DomainEvent, String> {
    fn typed<A: Aggregate>(event: &RecordedEvent) -> Result<A::Event, String> {
        <A::Event as domain::codec::EventCodec>::decode(
            &event.event_type,
            event.schema_version,
            &event.payload,
        )
        .map_err(|e| {
            format!(
                "cannot decode {} {} v{}: {e}",
                event.stream_type, event.event_type, event.schema_version
            )
        })
    }
    Ok(match event.stream_type.as_str() {
        user::User::STREAM_TYPE => DomainEvent::User(typed::<user::User>(event)?),
        session::Session::STREAM_TYPE => DomainEvent::Session(typed::<session::Session>(event)?),
        conversation::Conversation::STREAM_TYPE => {
            DomainEvent::Conversation(typed::<conversation::Conversation>(event)?)
        }
        workflow::Workflow::STREAM_TYPE => {
            DomainEvent::Workflow(typed::<workflow::Workflow>(event)?)
        }
        execution::Execution::STREAM_TYPE => {
            DomainEvent::Execution(typed::<execution::Execution>(event)?)
        }
        incident::Incident::STREAM_TYPE => {
            DomainEvent::Incident(typed::<incident::Incident>(event)?)
        }
        runbook::Runbook::STREAM_TYPE => DomainEvent::Runbook(typed::<runbook::Runbook>(event)?),
        knowledge::Knowledge::STREAM_TYPE => {
            DomainEvent::Knowledge(typed::<knowledge::Knowledge>(event)?)
        }
        other => return Err(format!("unknown stream type {other:?}")),
    })
}

impl DomainEvent {
    /// The event's facts as JSON, personal data included (at the current
    /// schema version: older stored versions were upcast when decoded).
    pub fn to_json(&self) -> Result<serde_json::Value, serde_json::Error> {
        match self {
            DomainEvent::User(e) => serde_json::to_value(e),
            DomainEvent::Session(e) => serde_json::to_value(e),
            DomainEvent::Conversation(e) => serde_json::to_value(e),
            DomainEvent::Workflow(e) => serde_json::to_value(e),
            DomainEvent::Execution(e) => serde_json::to_value(e),
            DomainEvent::Incident(e) => serde_json::to_value(e),
            DomainEvent::Runbook(e) => serde_json::to_value(e),
            DomainEvent::Knowledge(e) => serde_json::to_value(e),
        }
    }

    /// The schema version the event has after decoding (the current one).
    pub fn schema_version(&self) -> i32 {
        match self {
            DomainEvent::User(e) => e.schema_version(),
            DomainEvent::Session(e) => e.schema_version(),
            DomainEvent::Conversation(e) => e.schema_version(),
            DomainEvent::Workflow(e) => e.schema_version(),
            DomainEvent::Execution(e) => e.schema_version(),
            DomainEvent::Incident(e) => e.schema_version(),
            DomainEvent::Runbook(e) => e.schema_version(),
            DomainEvent::Knowledge(e) => e.schema_version(),
        }
    }

    /// The event's facts as JSON with personal data redacted.
    pub fn redacted_json(&self) -> Result<serde_json::Value, serde_json::Error> {
        domain::personal::redacted(|| self.to_json())
    }
}
