//! The copilot's domain: aggregates, commands and events, pure and synchronous.
//!
//! Every aggregate is a [`Aggregate`]: `decide(&State, Command, &Context)`
//! returns the events a command produces (or a [`DomainError`]), and
//! `evolve(State, &Event)` folds one event into the state. Nothing here does
//! I/O: whatever a decision needs from outside (the time, the actor, a
//! password hash, a looked-up workflow) comes in the [`Context`].
//!
//! Events carry the facts projections need (token counts, costs, durations,
//! versions, before/after values), so that no projection decides anything.
//! They are stored as MessagePack with a type name and a schema version;
//! older versions are upcast on read ([`codec`]). Fields that hold personal
//! data have the type [`Personal`].

#[macro_use]
mod macros;

pub mod any_event;
pub mod codec;
pub mod command;
pub mod context;
pub mod error;
pub mod ids;
pub mod personal;
pub mod values;

pub mod conversation;
pub mod execution;
pub mod incident;
pub mod knowledge;
pub mod runbook;
pub mod session;
pub mod user;
pub mod workflow;

pub use command::Command;
pub use context::{Actor, Context};
pub use error::DomainError;
pub use personal::{Personal, Secret};

/// The payload of a command that takes no fields (`{}`); any field is refused.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// A consistency boundary: a stream of events and the rules for adding to it.
pub trait Aggregate {
    /// The stream type stored beside its events (`conversation`, ...).
    const STREAM_TYPE: &'static str;
    /// The schema of `State` in snapshots; raise it when `State` changes
    /// shape, and older snapshots are ignored (the stream is replayed).
    const STATE_VERSION: i32 = 1;
    type State: Default
        + Clone
        + PartialEq
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned;
    type Command;
    type Event: Clone + PartialEq + std::fmt::Debug + codec::EventCodec;

    /// The events `command` produces in `state`, or why it may not.
    fn decide(
        state: &Self::State,
        command: Self::Command,
        ctx: &Context,
    ) -> Result<Vec<Self::Event>, DomainError>;

    /// The state after `event`.
    fn evolve(state: Self::State, event: &Self::Event) -> Self::State;

    /// The person whose key seals `event`'s personal fields (see
    /// [`personal`]), appended to `aggregate_id` in `state`; `None`: the
    /// event holds nothing personal of anyone.
    fn data_subject(
        _aggregate_id: uuid::Uuid,
        _state: &Self::State,
        _event: &Self::Event,
    ) -> Option<uuid::Uuid> {
        None
    }

    /// The person whose key seals the personal fields of `state` in a
    /// snapshot.
    fn state_subject(_aggregate_id: uuid::Uuid, _state: &Self::State) -> Option<uuid::Uuid> {
        None
    }

    /// Folds events into a state, from the beginning.
    fn replay<'a>(events: impl IntoIterator<Item = &'a Self::Event>) -> Self::State
    where
        Self::Event: 'a,
    {
        events
            .into_iter()
            .fold(Self::State::default(), Self::evolve)
    }
}

/// Time since `from` in whole milliseconds (never negative).
pub(crate) fn millis_between(
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
) -> u64 {
    u64::try_from((to - from).num_milliseconds()).unwrap_or(0)
}
