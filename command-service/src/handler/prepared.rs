//! The request/reply lane's half of handling (see `crate::lane`): a
//! command that needs no waiting is decided on the spot, in the loop that
//! reads the subscription, and waits in the lane's next batch for its
//! append, without a task of its own. "No waiting" means: a credential this
//! instance verified before (checked again by the append, as on the fast
//! path), the aggregate's turn free and its state cached, no facts from
//! outside, no inline projection, no credentials ended or narrowed, and a
//! decision the domain accepts. Anything else is handled by
//! [`Handler::handle`] in a task, as it always was; nothing was written
//! or counted for it by then.

use std::time::{Duration, Instant};

use chrono::Utc;
use domain::codec::EventCodec as _;
use domain::{conversation, execution, incident, knowledge, runbook, session, user, workflow};
use domain::{Aggregate, Command, Context};
use eventstore::{AppendOutcome, AppendRequest};
use uuid::Uuid;

use super::{append_request, from_headers, sealing, trace_command, Handler, Incoming};
use crate::aggregates::{CommandRef, Handled};
use crate::envelope;
use crate::result::{CommandResult, Encoding, Status};
use crate::state::Turn;
use eventstore::Guard;

/// A decided command waiting for its append, holding its aggregate's turn.
pub(crate) struct Prepared {
    /// The append and the credential it is checked against.
    pub(crate) entry: (AppendRequest, Guard),
    /// Whose rate limit the command counts against.
    pub(crate) principal: String,
    pub(crate) encoding: Encoding,
    command_id: Uuid,
    command_type: String,
    started: Instant,
    /// The agent's span, for the command's trace.
    parent_span: Option<[u8; 8]>,
    event_types: Vec<&'static str>,
    state: Box<dyn Decided>,
    _turn: Turn,
}

/// The aggregate's state before the decision and the events decided, of
/// whichever aggregate: evolved and cached once appended, or put back as
/// it was if the append does not happen here.
trait Decided: Send {
    fn appended(self: Box<Self>, handler: &Handler, outcome: &AppendOutcome);
    fn put_back(self: Box<Self>, handler: &Handler);
}

struct Decision<A: Aggregate> {
    stream_id: Uuid,
    state: A::State,
    version: u64,
    events: Vec<A::Event>,
}

impl<A: Handled + 'static> Decided for Decision<A>
where
    A::Event: Send + 'static,
{
    fn appended(self: Box<Self>, handler: &Handler, outcome: &AppendOutcome) {
        let next = self.events.iter().fold(self.state, |s, e| A::evolve(s, e));
        handler.maybe_snapshot::<A>(
            self.stream_id,
            &next,
            outcome.first_version,
            outcome.version,
        );
        handler
            .cache
            .put::<A>(self.stream_id, next, outcome.version);
    }

    fn put_back(self: Box<Self>, handler: &Handler) {
        handler
            .cache
            .put::<A>(self.stream_id, self.state, self.version);
    }
}

impl Prepared {
    /// The command's answer once its append is stored.
    pub(crate) fn accepted(self, handler: &Handler, outcome: &AppendOutcome) -> CommandResult {
        let ids = self.trace_ids();
        self.state.appended(handler, outcome);
        let result = CommandResult {
            command_id: self.command_id,
            status: Status::Accepted,
            replayed: false,
            aggregate_id: self.entry.0.stream_id,
            version: Some(outcome.version),
            position: Some(outcome.position.to_string()),
            events: self.event_types.iter().map(|t| t.to_string()).collect(),
            data: None,
            error: None,
        };
        tracing::debug!(command_id = %self.command_id, command_type = self.command_type,
            correlation_id = ?self.entry.0.metadata.correlation_id, aggregate_id = %result.aggregate_id,
            version = outcome.version, "command handled in the lane");
        crate::metrics::metrics()
            .fast_path
            .with_label_values(&["lane"])
            .inc();
        handler.observe(&self.command_type, Status::Accepted, self.started);
        trace_command(ids, &self.command_type, &result, self.started);
        result
    }

    fn trace_ids(&self) -> (Uuid, Option<Uuid>, Option<[u8; 8]>) {
        (
            self.command_id,
            self.entry.0.metadata.correlation_id,
            self.parent_span,
        )
    }

    /// Refused by the rate limit before anything was written.
    pub(crate) fn rate_limited(self, handler: &Handler, retry_after: Duration) -> CommandResult {
        let ids = self.trace_ids();
        self.state.put_back(handler);
        handler.observe(&self.command_type, Status::RateLimited, self.started);
        let result = crate::error::CommandError::RateLimited { retry_after }
            .result(self.command_id, self.entry.0.stream_id);
        trace_command(ids, &self.command_type, &result, self.started);
        result
    }

    /// Not appended here: the state goes back to the cache as it was (the
    /// command is then handled again in full, which checks it against the
    /// store) and the turn is given up.
    pub(crate) fn abandon(self, handler: &Handler) {
        crate::metrics::metrics()
            .fast_path
            .with_label_values(&["rechecked"])
            .inc();
        self.state.put_back(handler);
    }
}

impl Handler {
    /// Decides `incoming` at once if it needs no waiting (see the module);
    /// `None` leaves it to [`Handler::handle`], with nothing changed.
    pub(crate) fn prepare(&self, incoming: &Incoming<'_>) -> Option<Prepared> {
        if incoming.payload.len() > self.settings.max_message_bytes {
            return None;
        }
        let encoding = Encoding::from_content_type(incoming.content_type);
        let started = Instant::now();
        let now = Utc::now();
        let (actor, guard) =
            self.authn
                .verified(incoming.authorization, incoming.command_type, now)?;
        let (mut envelope, command) =
            envelope::decode(encoding, incoming.command_type, incoming.payload).ok()?;
        from_headers(&mut envelope, incoming);
        envelope.client_vouched = self.settings.vouches(&actor);
        // Signed in: the lane takes no anonymous command.
        let principal = actor.label();
        let ctx = Context::new(now, actor).for_aggregate(envelope.aggregate_id);
        let arrival = Arrival {
            envelope: &envelope,
            command_type: incoming.command_type,
            guard,
            principal,
            encoding,
            started,
        };
        by_aggregate!(command, |A, c| self.prepare_for::<A>(arrival, c, ctx))
    }

    fn prepare_for<A: Handled + 'static>(
        &self,
        arrival: Arrival<'_>,
        command: A::Command,
        mut ctx: Context,
    ) -> Option<Prepared>
    where
        A::Event: Send + 'static,
    {
        if A::INLINE || !matches!(A::view(&command), CommandRef::Other) {
            return None;
        }
        let envelope = arrival.envelope;
        let turn = self.locks.try_lock(envelope.aggregate_id)?;
        let (state, version) = self.cache.take::<A>(envelope.aggregate_id)?;
        let put_back = |state: A::State| -> Option<Prepared> {
            self.cache.put::<A>(envelope.aggregate_id, state, version);
            None
        };
        if envelope.expected_version.is_some_and(|v| v != version) {
            return put_back(state);
        }
        ctx.embedding_dimension = self.settings.embedding_dimension;
        let Ok(events) = A::decide(&state, command, &ctx) else {
            return put_back(state);
        };
        if A::auth_subject(envelope.aggregate_id, &events).is_some() {
            return put_back(state);
        }
        let subjects = sealing::subjects::<A>(envelope.aggregate_id, &state, &events, &ctx.actor);
        let Some(sealers) =
            sealing::Sealers::cached(self.store.data_keys().map(|k| &**k), subjects)
        else {
            return put_back(state);
        };
        let Ok(request) =
            append_request::<A>(envelope, (&state, version), &events, &ctx.actor, &sealers)
        else {
            return put_back(state);
        };
        if self.store.validate(&request).is_err() {
            return put_back(state);
        }
        Some(Prepared {
            entry: (request, arrival.guard),
            principal: arrival.principal,
            encoding: arrival.encoding,
            command_id: envelope.command_id,
            command_type: arrival.command_type.to_string(),
            started: arrival.started,
            parent_span: envelope.parent_span,
            event_types: events.iter().map(|e| e.event_type()).collect(),
            state: Box::new(Decision::<A> {
                stream_id: envelope.aggregate_id,
                state,
                version,
                events,
            }),
            _turn: turn,
        })
    }
}

/// What [`Handler::prepare_for`] needs besides the command.
struct Arrival<'a> {
    envelope: &'a envelope::Envelope,
    command_type: &'a str,
    guard: Guard,
    principal: String,
    encoding: Encoding,
    started: Instant,
}
