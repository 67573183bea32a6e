//! Any stored event, decoded by its stream type (see [`domain::any_event`]).

pub use domain::any_event::AnyEvent as DomainEvent;
use eventstore::RecordedEvent;

/// Decodes (and upcasts) `event`; the error says why it cannot be.
pub fn decode(event: &RecordedEvent) -> Result<DomainEvent, String> {
    domain::any_event::decode(domain::any_event::Stored {
        stream_type: &event.stream_type,
        event_type: &event.event_type,
        schema_version: event.schema_version,
        payload: &event.payload,
    })
}
