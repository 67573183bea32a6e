//! The handling of one command, whatever the transport: decode, replay,
//! authenticate, rate-limit, load, decide, append (with the inline auth
//! projection and the stored result in the same transaction), answer.

use std::time::Duration;

use chrono::Utc;
use domain::codec::EventCodec;
use domain::context::Actor;
use domain::{conversation, execution, incident, knowledge, runbook, session, user, workflow};
use domain::{Aggregate, Command, Context, DomainError};
use eventstore::{
    AppendError, AppendRequest, EventStore, ExpectedVersion, Guard, Metadata, NewEvent,
};
use infra::ratelimit::SlidingWindow;
use sqlx::PgPool;
use tracing::Instrument;
use uuid::Uuid;

/// Runs `$body` with `$aggregate` naming the aggregate type of `$command`
/// and `$inner` its command: the one place a command meets its aggregate.
macro_rules! by_aggregate {
    ($command:expr, |$aggregate:ident, $inner:ident| $body:expr) => {
        by_aggregate!(@each $command, $aggregate, $inner, $body;
            User => user::User,
            Session => session::Session,
            Conversation => conversation::Conversation,
            Workflow => workflow::Workflow,
            Execution => execution::Execution,
            Incident => incident::Incident,
            Runbook => runbook::Runbook,
            Knowledge => knowledge::Knowledge)
    };
    (@each $command:expr, $aggregate:ident, $inner:ident, $body:expr;
        $($variant:ident => $type:ty),*) => {
        match $command {
            $(Command::$variant($inner) => {
                type $aggregate = $type;
                $body
            })*
        }
    };
}

mod facts;
mod prepared;
mod sealing;

pub(crate) use prepared::Prepared;

use crate::aggregates::Handled;
use crate::authn::{Authenticator, Preflight};
use crate::envelope::{self, Envelope};
use crate::error::CommandError;
use crate::inline::InlineError;
use crate::result::{CommandResult, Encoding, Status};
use crate::state::{snapshot_due, AggregateLocks, StateCache};

/// A retry after a concurrent writer took the version, when the client did
/// not pin `expected_version`.
const CONFLICT_RETRIES: usize = 5;

/// One command as it arrived.
pub struct Incoming<'a> {
    /// `<aggregate>.<action>`, from the subject.
    pub command_type: &'a str,
    pub payload: &'a [u8],
    pub content_type: Option<&'a str>,
    pub authorization: Option<&'a str>,
    /// The optional `Client-Ip` header: kept only if it is an IP address.
    pub client_ip: Option<&'a str>,
    /// The optional `User-Agent` header, cut to 256 characters.
    pub user_agent: Option<&'a str>,
    /// The optional W3C `traceparent` header.
    pub traceparent: Option<&'a str>,
    /// Whether the answer is kept where others may read it (a JetStream
    /// result): commands whose answer carries a secret are refused then.
    pub answer_kept: bool,
}

/// Commands whose accepted answer carries a secret (a session token, a new
/// API key): taken over request/reply only, whose reply is not stored. So
/// is `user.enable_mfa` without a secret of the client's (it answers the one
/// the service makes).
pub const ANSWER_CARRIES_SECRET: [&str; 2] = ["session.start", "user.issue_api_key"];

/// What the request's headers add to its envelope: the client's address
/// and program, and the agent's trace (a `traceparent` without a
/// correlation id makes its trace id the correlation id, so the events and
/// every projection's spans join the agent's trace).
fn from_headers(envelope: &mut Envelope, incoming: &Incoming<'_>) {
    (envelope.client_ip, envelope.user_agent) = client_info(incoming);
    if let Some(parent) = incoming
        .traceparent
        .and_then(infra::traces::TraceParent::parse)
    {
        let trace = *envelope.correlation_id.get_or_insert(parent.trace_id);
        if trace == parent.trace_id {
            envelope.parent_span = Some(parent.span_id);
        }
    }
}

/// Records a handled command's span, if traces are exported.
fn trace_command(
    ids: (Uuid, Option<Uuid>, Option<[u8; 8]>),
    command_type: &str,
    result: &CommandResult,
    started: std::time::Instant,
) {
    if !infra::traces::exporting() {
        return;
    }
    let ended = std::time::SystemTime::now();
    let (command_id, correlation_id, parent_span) = ids;
    infra::traces::command(infra::traces::CommandSpan {
        command_type,
        command_id,
        correlation_id,
        aggregate_id: result.aggregate_id,
        parent_span,
        status: result.status.as_str(),
        position: result.position.as_deref(),
        started: ended - started.elapsed(),
        ended,
    });
}

/// The client's address and program as recorded in event metadata.
fn client_info(incoming: &Incoming<'_>) -> (Option<String>, Option<String>) {
    let ip = incoming
        .client_ip
        .map(str::trim)
        .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
        .map(|ip| ip.to_string());
    let agent = incoming
        .user_agent
        .map(|ua| {
            ua.chars()
                .filter(|c| !c.is_control())
                .take(256)
                .collect::<String>()
        })
        .filter(|ua| !ua.is_empty());
    (ip, agent)
}

pub struct HandlerSettings {
    pub max_message_bytes: usize,
    pub embedding_dimension: usize,
    /// Users (front ends, gateways) whose `Client-Ip` and `User-Agent`
    /// headers are recorded as fact; anyone else's are their claim.
    pub trusted_agents: Vec<Uuid>,
}

impl HandlerSettings {
    /// Whether `actor` vouches for the client headers it sends.
    pub(crate) fn vouches(&self, actor: &Actor) -> bool {
        actor
            .user_id()
            .is_some_and(|id| self.trusted_agents.contains(&id.0))
    }
}

/// The rate limits, once Redis could be reached (shared with the task that connects them).
#[derive(Clone, Default)]
pub struct Limiter(std::sync::Arc<std::sync::RwLock<Option<Limits>>>);

/// The sliding windows commands count against.
#[derive(Clone)]
pub struct Limits {
    /// Each signed-in principal's commands.
    pub commands: SlidingWindow,
    /// Sign-in attempts per e-mail address and per client address: an
    /// attempt names a session id of its choosing, so it is counted by
    /// what it is aimed at and where it comes from instead.
    pub signin_email: SlidingWindow,
    pub signin_address: SlidingWindow,
}

impl Limiter {
    pub fn set(&self, limits: Limits) {
        if let Ok(mut slot) = self.0.write() {
            *slot = Some(limits);
        }
    }

    fn get(&self) -> Option<Limits> {
        self.0.read().ok().and_then(|slot| slot.clone())
    }
}

/// How long a rate-limit check (of one command, or of the lane's batch)
/// may take before the command runs anyway.
pub(crate) const LIMIT_TIMEOUT: Duration = Duration::from_millis(250);

pub struct Handler {
    locks: AggregateLocks,
    cache: StateCache,
    store: EventStore,
    authn: Authenticator,
    limiter: Limiter,
    settings: HandlerSettings,
    /// Bumped around commands that end or narrow a user's credentials.
    epochs: Option<infra::auth_epoch::AuthEpochs>,
}

impl Handler {
    /// A handler for commands sent from this process itself (an operator's
    /// command line, not NATS): the same pipeline, with `bootstrap` as its
    /// only admin credential, no rate limit and no credential cache to
    /// outdate.
    pub fn in_process(
        store: EventStore,
        settings: HandlerSettings,
        bootstrap: secrecy::SecretString,
    ) -> Self {
        let authn = Authenticator::new(store.pool().clone(), Some(bootstrap));
        Handler::new(store, authn, Limiter::default(), settings, None)
    }

    pub(crate) fn new(
        store: EventStore,
        authn: Authenticator,
        limiter: Limiter,
        settings: HandlerSettings,
        epochs: Option<infra::auth_epoch::AuthEpochs>,
    ) -> Self {
        Handler {
            locks: AggregateLocks::default(),
            cache: StateCache::default(),
            store,
            authn,
            limiter,
            settings,
            epochs,
        }
    }

    fn pool(&self) -> &PgPool {
        self.store.pool()
    }

    /// The commands' rate limit, once connected.
    pub(crate) fn limiter(&self) -> Option<SlidingWindow> {
        self.limiter.get().map(|limits| limits.commands)
    }

    /// The most events one group commit takes.
    pub(crate) fn max_batch_events(&self) -> usize {
        self.store.options().max_batch_events
    }

    /// Drops the verified copy of a credential that no longer holds.
    pub(crate) fn forget(&self, guard: &Guard) {
        self.authn.forget(guard);
    }

    /// Appends prepared commands as one guarded batch (see
    /// [`eventstore::Guard`]), an outcome for each.
    pub(crate) async fn append_prepared(
        &self,
        entries: &[&(AppendRequest, Guard)],
    ) -> Vec<Result<eventstore::AppendOutcome, AppendError>> {
        eventstore::metrics::append_batch_size().observe(entries.len() as f64);
        let pairs: Vec<(&AppendRequest, &Guard)> = entries.iter().map(|(r, g)| (r, g)).collect();
        self.store.append_batch_guarded(&pairs).await
    }

    /// Best effort: outdates `user`'s cached credentials, if any.
    async fn bump_epoch(&self, user: Option<Uuid>) {
        if let (Some(user), Some(epochs)) = (user, &self.epochs) {
            if let Err(error) = epochs.bump(user).await {
                tracing::warn!(%error, %user, "cannot outdate cached credentials");
            }
        }
    }

    /// Handles one command; the result is what the client gets (in the
    /// request's encoding). Never panics on input.
    pub async fn handle(&self, incoming: Incoming<'_>) -> (Encoding, CommandResult) {
        self.handle_as(incoming, Entry::Arrived).await
    }

    /// Handles a command the request/reply lane decided but did not append
    /// (see [`Prepared`]): the same pipeline, entered at a full
    /// authentication, its rate limit already counted.
    pub(crate) async fn handle_held_back(
        &self,
        incoming: Incoming<'_>,
    ) -> (Encoding, CommandResult) {
        self.handle_as(incoming, Entry::HeldBack).await
    }

    async fn handle_as(&self, incoming: Incoming<'_>, entry: Entry) -> (Encoding, CommandResult) {
        let encoding = Encoding::from_content_type(incoming.content_type);
        let started = std::time::Instant::now();
        // Only catalogue types become label values, so a client cannot
        // blow up the metric's cardinality.
        let label = if Command::is_known(incoming.command_type) {
            incoming.command_type.to_string()
        } else {
            "unknown".to_string()
        };
        let result = self.handle_inner(encoding, incoming, entry).await;
        self.observe(&label, result.status, started);
        (encoding, result)
    }

    /// Counts a handled command and its latency under `label`.
    fn observe(&self, label: &str, status: Status, started: std::time::Instant) {
        let m = crate::metrics::metrics();
        m.commands
            .with_label_values(&[label, status.as_str()])
            .inc();
        m.latency
            .with_label_values(&[label])
            .observe(started.elapsed().as_secs_f64());
    }

    async fn handle_inner(
        &self,
        encoding: Encoding,
        incoming: Incoming<'_>,
        entry: Entry,
    ) -> CommandResult {
        let nil = Uuid::nil();
        if incoming.payload.len() > self.settings.max_message_bytes {
            let error = CommandError::TooLarge {
                size: incoming.payload.len(),
                limit: self.settings.max_message_bytes,
            };
            return error.result(nil, nil);
        }
        let (mut envelope, command) =
            match envelope::decode(encoding, incoming.command_type, incoming.payload) {
                Ok(decoded) => decoded,
                Err(invalid) => {
                    // The replay check needs the id: a repeat of a decided command
                    // is answered even if this copy is garbled after the envelope
                    // (to its sender only, like every stored outcome).
                    if let Some(command_id) = invalid.command_id {
                        let preflight = self
                            .authn
                            .preflight(
                                command_id,
                                incoming.authorization,
                                incoming.command_type,
                                Utc::now(),
                            )
                            .await;
                        if let Ok(Preflight {
                            outcome: Some(stored),
                            actor: Ok(actor),
                        }) = preflight
                        {
                            return stored.answer_for(&actor);
                        }
                    }
                    let ids = (
                        invalid.command_id.unwrap_or(nil),
                        invalid.aggregate_id.unwrap_or(nil),
                    );
                    return CommandError::Malformed(invalid).result(ids.0, ids.1);
                }
            };
        let makes_a_secret = matches!(
            &command,
            Command::User(domain::user::Command::EnableMfa(m)) if m.secret.is_none()
        );
        if incoming.answer_kept
            && (ANSWER_CARRIES_SECRET.contains(&incoming.command_type) || makes_a_secret)
        {
            return CommandError::RequestReplyOnly(incoming.command_type.to_string())
                .result(envelope.command_id, envelope.aggregate_id);
        }
        from_headers(&mut envelope, &incoming);
        let span = tracing::info_span!("command", command_id = %envelope.command_id, command_type = incoming.command_type,
            correlation_id = ?envelope.correlation_id, aggregate_id = %envelope.aggregate_id);
        let ids = (
            envelope.command_id,
            envelope.correlation_id,
            envelope.parent_span,
        );
        let started = std::time::Instant::now();
        let (command_id, aggregate_id) = (envelope.command_id, envelope.aggregate_id);
        // The span follows the future across awaits (entering it here would
        // mark whatever else ran on this thread meanwhile).
        let result = self
            .handle_decoded(
                envelope,
                command,
                incoming.command_type,
                incoming.authorization,
                entry,
            )
            .instrument(span)
            .await
            .unwrap_or_else(|error| error.result(command_id, aggregate_id));
        trace_command(ids, incoming.command_type, &result, started);
        result
    }

    /// The pipeline after decoding: authenticate, rate-limit, then load,
    /// decide and append on the aggregate. The one way back is to
    /// authenticate again, in full: a command decided under a cached
    /// credential and not accepted (a refusal, a conflict, a credential or
    /// command id the append found changed, a failure) is held back and
    /// handled once more from the auth index and the stored outcomes;
    /// nothing of it was written or counted twice by then.
    async fn handle_decoded(
        &self,
        mut envelope: Envelope,
        command: Command,
        command_type: &str,
        authorization: Option<&str>,
        entry: Entry,
    ) -> Result<CommandResult, CommandError> {
        let now = Utc::now();
        let mut limit_counted = entry == Entry::HeldBack;
        let mut cached = match entry {
            Entry::Arrived => self.authn.verified(authorization, command_type, now),
            Entry::HeldBack => None,
        };
        loop {
            let credential = match cached.take() {
                Some((actor, guard)) => Credential::Cached { actor, guard },
                None => {
                    // One query reads the credential and any stored outcome
                    // of the command id, which answers a repeat (to a caller
                    // who may see it).
                    let preflight = self
                        .authn
                        .preflight(envelope.command_id, authorization, command_type, now)
                        .await?;
                    let actor = preflight.actor?;
                    if let Some(stored) = preflight.outcome {
                        return Ok(stored.answer_for(&actor));
                    }
                    Credential::Checked(actor)
                }
            };
            envelope.client_vouched = self.settings.vouches(credential.actor());
            if !limit_counted {
                limit_counted = true;
                self.rate_limit(&envelope, credential.actor(), &command)
                    .await?;
            }
            let ctx =
                Context::new(now, credential.actor().clone()).for_aggregate(envelope.aggregate_id);
            let Credential::Cached { guard, .. } = &credential else {
                // Checked: the last attempt, so the command is moved, not copied.
                let result = self
                    .dispatch(&envelope, command_type, command, ctx, &credential)
                    .await
                    .map_err(Halt::into_error)?;
                tracing::debug!(status = result.status.as_str(), version = ?result.version, "command handled");
                return Ok(result);
            };
            let decided = self
                .dispatch(&envelope, command_type, command.clone(), ctx, &credential)
                .await;
            match decided {
                Ok(result) if result.status == Status::Accepted => {
                    crate::metrics::metrics()
                        .fast_path
                        .with_label_values(&["accepted"])
                        .inc();
                    return Ok(result);
                }
                Err(Halt::HeldBack { forget: true }) => self.authn.forget(guard),
                Ok(_) | Err(_) => {}
            }
            crate::metrics::metrics()
                .fast_path
                .with_label_values(&["rechecked"])
                .inc();
        }
    }

    /// Refuses a command of `actor` over its rate limit (never when Redis
    /// cannot be asked: the limit fails open). A sign-in counts against its
    /// e-mail address and its client's address instead.
    async fn rate_limit(
        &self,
        envelope: &Envelope,
        actor: &Actor,
        command: &Command,
    ) -> Result<(), CommandError> {
        let Some(limits) = self.limiter.get() else {
            return Ok(());
        };
        let checks = match (actor, command) {
            (Actor::Anonymous, Command::Session(session::Command::Start(start))) => {
                let mut checks = vec![(
                    limits.signin_email,
                    // Hashed: the key names no one.
                    infra::auth::token_hash(start.email.as_str()),
                )];
                if let Some(address) = envelope
                    .client_ip
                    .as_deref()
                    .or(start.ip_address.as_ref().map(|ip| ip.as_str()))
                {
                    checks.push((limits.signin_address, address.to_string()));
                }
                checks
            }
            (actor, _) => vec![(limits.commands, actor.label())],
        };
        for (window, principal) in checks {
            match tokio::time::timeout(LIMIT_TIMEOUT, window.check(&principal))
                .await
                .unwrap_or_else(|_| {
                    Err(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "rate limit check timed out",
                    )))
                }) {
                Ok(decision) if !decision.allowed => {
                    return Err(CommandError::RateLimited {
                        retry_after: decision.retry_after,
                    })
                }
                Ok(_) => {}
                // Fail open: a Redis outage must not stop the agent.
                Err(error) => {
                    crate::metrics::metrics().rate_limit_fail_open.inc();
                    tracing::warn!(%error, "rate limiter unavailable; allowing the command");
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Decides and appends a command on its aggregate.
    ///
    /// Each aggregate's future is boxed: held inline, they made a command's
    /// task future 8.5 KB, copied whole into every command's task cell;
    /// boxed, it is half that, and a command allocates only its own
    /// aggregate's.
    async fn dispatch(
        &self,
        envelope: &Envelope,
        command_type: &str,
        command: Command,
        ctx: Context,
        credential: &Credential,
    ) -> Result<CommandResult, Halt> {
        // Boxed per arm, see above.
        by_aggregate!(command, |A, c| {
            Box::pin(self.execute::<A>(envelope, command_type, c, ctx, credential.guard())).await
        })
    }

    /// The stored outcome of a decided command (marked as replayed), as
    /// `actor` may be told it.
    async fn stored_result(
        &self,
        command_id: Uuid,
        actor: &Actor,
    ) -> Result<Option<CommandResult>, sqlx::Error> {
        Ok(crate::outcomes::stored(self.pool(), command_id)
            .await?
            .map(|stored| stored.answer_for(actor)))
    }

    /// The aggregate's state and version: from the cache if this instance
    /// has seen it, caught up with whatever other instances appended since.
    async fn load<A: Aggregate>(&self, stream_id: Uuid) -> Result<(A::State, u64), CommandError>
    where
        A::State: Send + Sync + 'static,
    {
        let (mut state, mut version) = match self.cache.take::<A>(stream_id) {
            Some(cached) => cached,
            None => self.snapshot_or_empty::<A>(stream_id).await,
        };
        let mut from = version + 1;
        loop {
            let events = self.store.read_stream_from(stream_id, from, 1000).await?;
            let done = events.len() < 1000;
            for recorded in events {
                if recorded.stream_type != A::STREAM_TYPE {
                    return Err(CommandError::WrongStream {
                        id: stream_id,
                        actual: recorded.stream_type,
                        expected: A::STREAM_TYPE,
                    });
                }
                let event = A::Event::decode(
                    &recorded.event_type,
                    recorded.schema_version,
                    &recorded.payload,
                )
                .map_err(|e| CommandError::Undecodable {
                    stream: stream_id,
                    version: recorded.version,
                    reason: e.to_string(),
                })?;
                state = A::evolve(state, &event);
                version = recorded.version;
                from = recorded.version + 1;
            }
            if done {
                return Ok((state, version));
            }
        }
    }

    async fn execute<A: Handled>(
        &self,
        envelope: &Envelope,
        command_type: &str,
        command: A::Command,
        base: Context,
        guard: Option<&Guard>,
    ) -> Result<CommandResult, Halt> {
        // Inline projections write in their own transaction, and only
        // plain appends can be guarded.
        if guard.is_some() && A::INLINE {
            return Err(Halt::HeldBack { forget: false });
        }
        // Commands for one aggregate take turns in this instance, so they do
        // not race each other into conflicts; other instances still can,
        // and those conflicts are retried below.
        let _turn = self.locks.lock(envelope.aggregate_id).await;
        let mut attempt = 0;
        // A cached state is used optimistically: an append from a stale one
        // fails its expected version and is retried from the store, and a
        // refusal or a version mismatch is checked against the store before
        // it is answered.
        let mut trust_cache = true;
        loop {
            let cached = if trust_cache {
                self.cache.take::<A>(envelope.aggregate_id)
            } else {
                None
            };
            let fresh = cached.is_none();
            let loaded = match cached {
                Some(cached) => Ok(cached),
                None => self.load::<A>(envelope.aggregate_id).await,
            };
            let (state, version) = loaded?;
            if let Some(expected) = envelope.expected_version {
                if expected != version {
                    if !fresh {
                        trust_cache = false;
                        continue;
                    }
                    return Err(CommandError::Conflict {
                        expected,
                        actual: version,
                    }
                    .into());
                }
            }
            let mut ctx = base.clone();
            ctx.embedding_dimension = self.settings.embedding_dimension;
            let facts = self.resolve_facts(A::view(&command), &mut ctx).await?;
            let events = match A::decide(&state, command.clone(), &ctx) {
                Ok(events) => events,
                Err(_) if !fresh => {
                    // Refuse only on the store's word, not on the cache's.
                    trust_cache = false;
                    continue;
                }
                Err(error) => {
                    self.cache.put::<A>(envelope.aggregate_id, state, version);
                    if guard.is_some() {
                        // Refused under a copy of the credential: answered
                        // (and stored) only after the full check.
                        return Err(Halt::HeldBack { forget: false });
                    }
                    return Ok(self
                        .refuse(envelope, command_type, &ctx.actor, &facts, error)
                        .await?);
                }
            };
            // A command that ends or narrows credentials is acknowledged
            // only after cached copies of them are outdated (before the
            // append, so a failure appends nothing; again after, see
            // `infra::auth_epoch`).
            let auth_subject = A::auth_subject(envelope.aggregate_id, &events);
            if guard.is_some() && auth_subject.is_some() {
                return Err(Halt::HeldBack { forget: false });
            }
            if let (Some(user), Some(epochs)) = (auth_subject, &self.epochs) {
                if let Err(error) = epochs.bump(user).await {
                    return Err(CommandError::Epochs(error.to_string()).into());
                }
            }
            let subjects =
                sealing::subjects::<A>(envelope.aggregate_id, &state, &events, &ctx.actor);
            let sealers =
                sealing::Sealers::make(self.store.data_keys().map(|k| &**k), subjects).await?;
            let request =
                append_request::<A>(envelope, (&state, version), &events, &ctx.actor, &sealers)
                    .map_err(|e| CommandError::Encode(e.to_string()))?;
            let appended = match guard {
                Some(guard) => match self.store.append_guarded(request, guard.clone()).await {
                    Err(held @ (AppendError::Decided | AppendError::Unverified)) => {
                        self.cache.put::<A>(envelope.aggregate_id, state, version);
                        let forget = matches!(held, AppendError::Unverified);
                        return Err(Halt::HeldBack { forget });
                    }
                    other => other,
                },
                None => match self.append::<A>(request, &events).await {
                    Ok(Appended::Done(outcome)) => Ok(outcome),
                    Ok(Appended::Refused(error)) => {
                        return Ok(self
                            .refuse(envelope, command_type, &ctx.actor, &facts, error)
                            .await?);
                    }
                    Ok(Appended::DecidedBefore) => {
                        return Ok(self
                            .stored_result(envelope.command_id, &ctx.actor)
                            .await?
                            .ok_or(CommandError::NoStoredOutcome)?);
                    }
                    Err(e) => Err(e),
                },
            };
            match appended {
                Ok(outcome) if outcome.replayed => {
                    return Ok(self
                        .stored_result(envelope.command_id, &ctx.actor)
                        .await?
                        .ok_or(CommandError::NoStoredOutcome)?);
                }
                Ok(outcome) => {
                    self.bump_epoch(auth_subject).await;
                    // The forget destroyed the key in its transaction; this
                    // process stops using its copy at once.
                    if let Some(keys) = self.store.data_keys() {
                        if events.iter().any(|e| e.event_type() == "user_forgotten") {
                            keys.forgot(envelope.aggregate_id);
                        }
                    }
                    let next = events.iter().fold(state, |s, e| A::evolve(s, e));
                    self.maybe_snapshot::<A>(
                        envelope.aggregate_id,
                        &next,
                        outcome.first_version,
                        outcome.version,
                    );
                    self.cache
                        .put::<A>(envelope.aggregate_id, next, outcome.version);
                    if facts.record_success {
                        if let Some(user_id) = facts.login_user {
                            self.record_login(user_id, true, facts.login_ip.clone(), envelope)
                                .await;
                        }
                    }
                    // Secrets are shown here, once; the stored outcome (the
                    // events) holds none.
                    return Ok(CommandResult {
                        command_id: envelope.command_id,
                        status: Status::Accepted,
                        replayed: false,
                        aggregate_id: envelope.aggregate_id,
                        version: Some(outcome.version),
                        position: Some(outcome.position.to_string()),
                        events: events.iter().map(|e| e.event_type().to_string()).collect(),
                        data: facts.data,
                        error: None,
                    });
                }
                Err(AppendError::Conflict { actual, .. })
                    if envelope.expected_version.is_some() || attempt >= CONFLICT_RETRIES =>
                {
                    return Err(CommandError::Conflict {
                        expected: envelope.expected_version.unwrap_or(version),
                        actual: actual.unwrap_or(0),
                    }
                    .into());
                }
                Err(AppendError::Conflict { .. } | AppendError::StaleTransaction { .. }) => {
                    crate::metrics::metrics().conflict_retries.inc();
                    trust_cache = false;
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(2 * attempt as u64)).await;
                }
                // The store's limits, its failure, or our bug (an empty or
                // untyped append): nothing was written.
                Err(e) => return Err(CommandError::from(e).into()),
            }
        }
    }

    /// The newest usable snapshot of a stream, or the empty state. A
    /// snapshot of another state schema, or one that does not decode, is
    /// ignored: the stream is then read from the start.
    async fn snapshot_or_empty<A: Aggregate>(&self, stream_id: Uuid) -> (A::State, u64) {
        match self.store.load_snapshot(stream_id).await {
            Ok(Some(snapshot)) if snapshot.schema_version == A::STATE_VERSION => {
                match domain::codec::decode::<A::State>(&snapshot.state) {
                    Ok(state) => (state, snapshot.version),
                    Err(error) => {
                        tracing::warn!(%error, %stream_id, "ignoring a snapshot that does not decode");
                        (A::State::default(), 0)
                    }
                }
            }
            Ok(_) => (A::State::default(), 0),
            Err(error) => {
                tracing::warn!(%error, %stream_id, "cannot read the snapshot; reading the stream");
                (A::State::default(), 0)
            }
        }
    }

    /// Saves a snapshot when the append is due one
    /// ([`crate::state::snapshot_interval`]), off the command's path.
    fn maybe_snapshot<A: Aggregate>(
        &self,
        stream_id: Uuid,
        state: &A::State,
        first: u64,
        last: u64,
    ) {
        if !snapshot_due(first, last) {
            return;
        }
        // Sealed like the events it sums up; without the key at hand the
        // snapshot waits for a later append.
        let keys = self.store.data_keys();
        let encoded = match (keys, A::state_subject(stream_id, state)) {
            (Some(keys), Some(subject)) => match keys.cached_sealer(subject) {
                Some(sealer) => domain::personal::sealed_with(
                    move |plain| sealer.seal(plain),
                    || domain::codec::encode(state),
                ),
                None => return,
            },
            _ => domain::codec::encode(state),
        };
        let Ok(bytes) = encoded else {
            return;
        };
        let store = self.store.clone();
        let snapshot = eventstore::Snapshot {
            stream_id,
            version: last,
            schema_version: A::STATE_VERSION,
            state: bytes,
        };
        tokio::spawn(async move {
            if let Err(error) = store.save_snapshot(&snapshot).await {
                tracing::warn!(%error, "cannot save a snapshot");
            }
        });
    }

    /// Appends a decided command's events. With an inline projection (the
    /// auth index) it is one transaction with the projection, which may
    /// still refuse the command (nothing written); without, it goes through
    /// the store's group commit with whatever else is arriving, checked
    /// only for a stored outcome of its command id. Either way a command
    /// id with a stored rejection is not appended.
    async fn append<A: Handled>(
        &self,
        request: AppendRequest,
        events: &[A::Event],
    ) -> Result<Appended, AppendError> {
        if !A::INLINE {
            return match self.store.append_guarded(request, Guard::NONE).await {
                Ok(outcome) => Ok(Appended::Done(outcome)),
                Err(AppendError::Decided | AppendError::Unverified) => Ok(Appended::DecidedBefore),
                Err(e) => Err(e),
            };
        }
        let mut tx = self.store.begin().await?;
        let outcome = tx.append(&request).await?;
        if outcome.replayed {
            return Ok(Appended::Done(outcome));
        }
        // The append holds the stream's lock now, and a rejection is stored
        // only under it (see `store_result`): one stored before the lock was
        // taken is seen here, and one after it waits for this commit.
        if let Some(command_id) = request.metadata.command_id {
            if crate::outcomes::is_rejected(tx.conn(), command_id)
                .await
                .map_err(eventstore::StoreError::from)?
            {
                return Ok(Appended::DecidedBefore);
            }
        }
        match A::project(
            tx.conn(),
            self.store.data_keys().map(|k| &**k),
            request.stream_id,
            events,
        )
        .await
        {
            Ok(()) => {}
            Err(InlineError::Refused(refusal)) => return Ok(Appended::Refused(refusal)),
            Err(InlineError::Db(e)) => return Err(eventstore::StoreError::from(e).into()),
        }
        tx.commit().await?;
        Ok(Appended::Done(outcome))
    }

    /// Answers a command the domain (or the inline projection) refused: a
    /// wrong password or MFA code counts against the account, and a
    /// rejection is stored as the command's outcome.
    async fn refuse(
        &self,
        envelope: &Envelope,
        command_type: &str,
        actor: &Actor,
        facts: &facts::Facts,
        error: DomainError,
    ) -> Result<CommandResult, CommandError> {
        if let Some(login) = facts.failed_login_of {
            if matches!(error.code(), "invalid_credentials" | "invalid_mfa_code") {
                self.record_login(login, false, facts.login_ip.clone(), envelope)
                    .await;
            }
        }
        let refusal = CommandError::Domain(error);
        if !refusal.is_stored() {
            return Err(refusal);
        }
        let result = refusal.result(envelope.command_id, envelope.aggregate_id);
        self.store_result(command_type, actor, result).await
    }

    /// Stores a rejection as its command's one outcome, or finds that the
    /// command already has one (appended by a copy on the other transport
    /// or another instance, or rejected before), and returns what to
    /// answer. Under the stream's lock, which every locking append of the
    /// stream takes too: an append that held it has committed, so its
    /// events are seen; one that comes later finds the rejection.
    async fn store_result(
        &self,
        command_type: &str,
        actor: &Actor,
        result: CommandResult,
    ) -> Result<CommandResult, CommandError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0))")
            .bind(result.aggregate_id)
            .execute(&mut *tx)
            .await?;
        let stored = sqlx::query(
            "INSERT INTO command_results (command_id, command_type, actor, status, result)
             SELECT $1, $2, $3, $4, $5
              WHERE NOT EXISTS (SELECT 1 FROM events WHERE command_id = $1)
             ON CONFLICT (command_id) DO NOTHING",
        )
        .bind(result.command_id)
        .bind(command_type)
        .bind(actor.label())
        .bind(result.status.as_str())
        .bind(sqlx::types::Json(&result))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        if stored == 1 {
            return Ok(result);
        }
        self.stored_result(result.command_id, actor)
            .await?
            .ok_or(CommandError::NoStoredOutcome)
    }
}

/// What appending a decided command came to, short of a store failure.
enum Appended {
    Done(eventstore::AppendOutcome),
    /// The inline projection refused it (nothing was written).
    Refused(DomainError),
    /// The command id has an outcome already (nothing was written).
    DecidedBefore,
}

/// The append of `events`, decided by `actor` on `envelope`'s aggregate
/// at `version`, with the command's ids and client in its metadata.
fn append_request<A: Aggregate>(
    envelope: &Envelope,
    (state, version): (&A::State, u64),
    events: &[A::Event],
    actor: &Actor,
    sealers: &sealing::Sealers,
) -> Result<AppendRequest, domain::codec::CodecError> {
    let id = envelope.aggregate_id;
    let mut encoded = Vec::with_capacity(events.len());
    for event in events {
        encoded.push(NewEvent::new(
            event.event_type(),
            event.schema_version(),
            sealers.encode(A::data_subject(id, state, event), event)?,
        ));
    }
    let client = sealing::metadata_subject::<A>(id, state, events, actor);
    let vouched = |value: &Option<String>| envelope.client_vouched.then(|| value.clone()).flatten();
    let claimed =
        |value: &Option<String>| (!envelope.client_vouched).then(|| value.clone()).flatten();
    Ok(AppendRequest {
        stream_id: envelope.aggregate_id,
        stream_type: A::STREAM_TYPE.to_string(),
        expected: if version == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(version)
        },
        events: encoded,
        metadata: Metadata {
            command_id: Some(envelope.command_id),
            correlation_id: envelope.correlation_id,
            causation_id: envelope.causation_id,
            actor: Some(actor.label()),
            ip: sealers.text(client, vouched(&envelope.client_ip))?,
            user_agent: sealers.text(client, vouched(&envelope.user_agent))?,
            claimed_ip: sealers.text(client, claimed(&envelope.client_ip))?,
            claimed_user_agent: sealers.text(client, claimed(&envelope.user_agent))?,
        },
    })
}

/// Where a command enters the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    /// As it arrived: a credential this instance verified before is used.
    Arrived,
    /// Held back by the request/reply lane (decided there, not appended):
    /// authenticated in full, its rate limit already counted.
    HeldBack,
}

/// Who sent a command, as the authenticate step found out.
enum Credential {
    /// A session or API key this instance verified before: the command is
    /// appended under its guard, which the append's statement checks again
    /// with the command id; whatever is not accepted under it is handled
    /// again from [`Credential::Checked`].
    Cached { actor: Actor, guard: Guard },
    /// Read from the auth index just now, with the command id found
    /// undecided.
    Checked(Actor),
}

impl Credential {
    fn actor(&self) -> &Actor {
        match self {
            Credential::Cached { actor, .. } | Credential::Checked(actor) => actor,
        }
    }

    fn guard(&self) -> Option<&Guard> {
        match self {
            Credential::Cached { guard, .. } => Some(guard),
            Credential::Checked(_) => None,
        }
    }
}

/// Why loading, deciding and appending stopped short of an answer.
enum Halt {
    /// Answered with this error.
    Failed(CommandError),
    /// Decided under a [`Credential::Cached`] and not to be answered from
    /// it: authenticated again in full (`forget`: the copy is wrong).
    HeldBack { forget: bool },
}

impl Halt {
    /// The error to answer. Only a cached credential's guard holds a
    /// command back; one held back without it is our bug, answered as the
    /// store's check that held it (unavailable, nothing written).
    fn into_error(self) -> CommandError {
        match self {
            Halt::Failed(error) => error,
            Halt::HeldBack { .. } => AppendError::Unverified.into(),
        }
    }
}

impl<E> From<E> for Halt
where
    CommandError: From<E>,
{
    fn from(error: E) -> Self {
        Halt::Failed(CommandError::from(error))
    }
}
