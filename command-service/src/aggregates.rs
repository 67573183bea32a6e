//! What the handler needs of each aggregate beyond the domain.

use eventstore::data_keys::DataKeys;
use futures_util::future::BoxFuture;
use uuid::Uuid;

use domain::{
    conversation, execution, incident, knowledge, runbook, session, user, workflow, Aggregate,
};

use crate::inline::InlineError;

/// A view of a command for fact resolution, whatever aggregate it is for.
pub(crate) enum CommandRef<'a> {
    User(&'a user::Command),
    Session(&'a session::Command),
    Execution(&'a execution::Command),
    Other,
}

/// What the handler needs of an aggregate beyond the domain: which facts
/// its commands need, and the inline projection of its events.
pub(crate) trait Handled: Aggregate<Command: Clone, State: Send + Sync + 'static> {
    /// Whether its events feed an inline projection (see [`Handled::project`]).
    const INLINE: bool = false;

    fn view(_command: &Self::Command) -> CommandRef<'_> {
        CommandRef::Other
    }

    /// `keys` seal the secrets the projection keeps (see `inline`).
    fn project<'c>(
        _conn: &'c mut sqlx::PgConnection,
        _keys: Option<&'c DataKeys>,
        _id: Uuid,
        _events: &'c [Self::Event],
    ) -> BoxFuture<'c, Result<(), InlineError>> {
        Box::pin(async { Ok(()) })
    }

    /// The user whose credentials `events` end or narrow (their cached
    /// copies must be outdated; see `infra::auth_epoch`).
    fn auth_subject(_id: Uuid, _events: &[Self::Event]) -> Option<Uuid> {
        None
    }
}

impl Handled for user::User {
    const INLINE: bool = true;

    fn view(command: &user::Command) -> CommandRef<'_> {
        CommandRef::User(command)
    }

    fn project<'c>(
        conn: &'c mut sqlx::PgConnection,
        keys: Option<&'c DataKeys>,
        id: Uuid,
        events: &'c [user::Event],
    ) -> BoxFuture<'c, Result<(), InlineError>> {
        Box::pin(crate::inline::apply_user(conn, keys, id, events))
    }

    fn auth_subject(id: Uuid, events: &[user::Event]) -> Option<Uuid> {
        events
            .iter()
            .any(|e| {
                matches!(
                    e,
                    user::Event::RoleChanged(_)
                        | user::Event::PasswordChanged(_)
                        | user::Event::Locked(_)
                        | user::Event::Deleted(_)
                        | user::Event::Forgotten(_)
                        | user::Event::ApiKeyRevoked(_)
                )
            })
            .then_some(id)
    }
}

impl Handled for session::Session {
    const INLINE: bool = true;

    fn view(command: &session::Command) -> CommandRef<'_> {
        CommandRef::Session(command)
    }

    fn project<'c>(
        conn: &'c mut sqlx::PgConnection,
        _keys: Option<&'c DataKeys>,
        id: Uuid,
        events: &'c [session::Event],
    ) -> BoxFuture<'c, Result<(), InlineError>> {
        Box::pin(crate::inline::apply_session(conn, id, events))
    }

    fn auth_subject(_id: Uuid, events: &[session::Event]) -> Option<Uuid> {
        events.iter().find_map(|e| match e {
            session::Event::Ended(ended) => Some(ended.user_id.0),
            _ => None,
        })
    }
}

impl Handled for execution::Execution {
    fn view(command: &execution::Command) -> CommandRef<'_> {
        CommandRef::Execution(command)
    }
}

impl Handled for conversation::Conversation {}
impl Handled for workflow::Workflow {}
impl Handled for incident::Incident {}
impl Handled for runbook::Runbook {}
impl Handled for knowledge::Knowledge {}
