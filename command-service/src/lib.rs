//! The command service: the agent's commands arrive over NATS (core
//! request/reply and JetStream), are decided by the domain and appended to
//! the event store, once, and answered with the contract's result.
//!
//! # A command's path
//!
//! 1. **Transport** (`transport.rs`): a message on `<prefix>.rpc.<type>` or
//!    `<prefix>.cmd.<type>` becomes an [`Incoming`] (subject, payload and
//!    headers); JetStream's `answer_kept` refuses commands whose answer
//!    carries a secret. Replies go out through one task (`replies.rs`);
//!    JetStream results are published, then the message is acked.
//! 2. **Decode** (`envelope.rs`): size limit, then envelope and payload,
//!    each error naming its field.
//! 3. **Authenticate** (`authn.rs`): the bearer token becomes a
//!    credential: a session or API key this instance verified before is
//!    taken from its cache (a *cached* credential, whose guard the append
//!    checks again); otherwise one query (the preflight) reads the
//!    credential and any stored outcome of the command id, which answers a
//!    repeat (a *checked* credential).
//! 4. **Rate limit**: a sliding window in Redis per principal (sign-ins per
//!    e-mail and per address), failing open.
//! 5. **Load and decide** (`handler/`): the aggregate's state from this
//!    instance's cache, caught up from the store (or a snapshot), then the
//!    domain's `decide`, with facts from outside (password hashes, new keys)
//!    resolved first (`handler/facts.rs`). Commands for one aggregate take
//!    turns in the instance.
//! 6. **Append** through the event store's one write path: grouped with
//!    whatever else is arriving, with the credential the command was
//!    decided under as its [`eventstore::Guard`], checked again by the
//!    statement that writes it. Commands on users and sessions append in a
//!    transaction with their inline auth projection (`inline.rs`).
//! 7. **Answer**: the accepted result, or a [`CommandError`] mapped to the
//!    wire once, exhaustively, by [`CommandError::result`]. Rejections are
//!    stored as the command's one outcome, so a retry gets the same answer.
//!
//! The speed-ups live inside those steps (cached credentials, cached
//! states, grouped appends), and there is one way back: a command decided
//! under a cached credential and not accepted (a refusal, a conflict, a
//! credential or command id the append's statement found changed, a
//! failure) is held back and taken through the same steps again from a
//! checked credential, its rate limit counted once. A cached state that is
//! stale fails its expected version and is reloaded inside the load step.
//! Nothing of a command is written before its append, and the append is
//! the one place it can be written.
//!
//! On request/reply, a command whose steps need no waiting (cached
//! credential and state, the aggregate's turn free, no outside facts, no
//! inline projection) runs them in the subscription's loop instead of a
//! task of its own (`handler/prepared.rs`), and its append is grouped by
//! the lane (`lane.rs`) with the others of its batch, in one guarded
//! statement; a command the lane holds back enters the pipeline at the
//! authenticate step, checked, like any other held-back command.

mod aggregates;
mod authn;
pub mod envelope;
pub mod error;
pub mod handler;
mod inline;
mod lane;
pub mod metrics;
mod outcomes;
mod replies;
mod request;
pub mod result;
mod state;
pub mod totp;
mod transport;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use eventstore::EventStore;
use secrecy::SecretString;

pub use error::CommandError;
pub use handler::{Handler, HandlerSettings, Incoming, ANSWER_CARRIES_SECRET};
pub use result::{CommandResult, Encoding, Status};

/// What the service needs to know.
#[derive(Clone)]
pub struct ServiceConfig {
    /// The NATS server, its TLS and this service's credential.
    pub nats: infra::nats::NatsTarget,
    /// First subject token; stream names take it as a suffix unless it is `copilot`.
    pub prefix: String,
    pub max_message_bytes: usize,
    pub embedding_dimension: usize,
    pub bootstrap_token: Option<SecretString>,
    /// Redis URL and key prefix for the rate limit; `None` disables it.
    pub rate_limit: Option<RateLimitConfig>,
    /// How many commands are handled at once per transport.
    pub max_in_flight: usize,
    /// Users whose `Client-Ip`/`User-Agent` headers are recorded as fact
    /// (a front end that signs in its users); everyone else's are claims.
    pub trusted_agents: Vec<uuid::Uuid>,
    /// The Redis and key prefix of the auth epochs the query service's
    /// credential cache checks (see `infra::auth_epoch`); `None`: no such
    /// cache is in use.
    pub auth_epochs: Option<(infra::redis_conn::RedisTarget, String)>,
}

impl ServiceConfig {
    /// The command service as `settings` describe it (what `copilot-data`
    /// and the tests both start).
    pub fn from_settings(settings: &infra::Settings) -> ServiceConfig {
        let commands = &settings.commands;
        ServiceConfig {
            nats: (&settings.nats).into(),
            prefix: settings.nats.prefix.clone(),
            max_message_bytes: commands.max_message_bytes,
            embedding_dimension: commands.embedding_dimension,
            bootstrap_token: settings.bootstrap_token.clone(),
            rate_limit: (commands.rate_limit_per_minute > 0).then(|| {
                RateLimitConfig::with_signin_defaults(
                    &settings.redis,
                    format!("{}ratelimit:", settings.redis.prefix),
                    commands.rate_limit_per_minute,
                    Duration::from_secs(60),
                )
            }),
            max_in_flight: commands.max_in_flight,
            trusted_agents: commands.trusted_agents.clone(),
            auth_epochs: Some(((&settings.redis).into(), settings.redis.prefix.clone())),
        }
    }
}

#[derive(Clone)]
pub struct RateLimitConfig {
    pub redis: infra::redis_conn::RedisTarget,
    /// Prefix of the limits' keys (`<redis prefix>ratelimit:`); each limit
    /// adds its own scope (`commands:`, `signin:email:`, `signin:address:`).
    pub key_prefix: String,
    /// Commands per principal (a user, or the bootstrap token) per `window`.
    pub limit: u32,
    pub window: Duration,
    /// Sign-in attempts per e-mail address, and per client address, per
    /// `signin_window`, whatever session id each attempt names.
    pub signin_per_email: u32,
    pub signin_per_address: u32,
    pub signin_window: Duration,
}

impl RateLimitConfig {
    /// The defaults for sign-ins: 10 attempts per e-mail and 30 per client
    /// address in 15 minutes (the account itself locks after 5 wrong ones
    /// in a row).
    pub fn with_signin_defaults(
        redis: impl Into<infra::redis_conn::RedisTarget>,
        key_prefix: String,
        limit: u32,
        window: Duration,
    ) -> Self {
        RateLimitConfig {
            redis: redis.into(),
            key_prefix,
            limit,
            window,
            signin_per_email: 10,
            signin_per_address: 30,
            signin_window: Duration::from_secs(15 * 60),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("invalid Redis settings for the auth epochs: {0}")]
    Redis(String),
    #[error("{0}")]
    Connect(String),
    #[error("JetStream set-up failed: {0}")]
    JetStream(String),
    #[error("NATS subscription failed: {0}")]
    Subscribe(String),
}

/// The JetStream stream names for a prefix (`COPILOT_COMMANDS`, or
/// `COPILOT_COMMANDS_<PREFIX>` for any other prefix).
pub fn stream_names(prefix: &str) -> (String, String) {
    (
        infra::nats::stream_name("COPILOT_COMMANDS", prefix),
        infra::nats::stream_name("COPILOT_RESULTS", prefix),
    )
}

/// Runs both transports until `shutdown` resolves, then stops taking new
/// messages, finishes those in flight and returns.
pub async fn run(
    config: ServiceConfig,
    store: EventStore,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServiceError> {
    let client = config
        .nats
        .connect("copilot-data command-service")
        .await
        .map_err(|e| ServiceError::Connect(e.to_string()))?;
    let limiter = handler::Limiter::default();
    if let Some(rl) = config.rate_limit.clone() {
        tokio::spawn(connect_limiter(rl, limiter.clone()));
    }
    let epochs = match &config.auth_epochs {
        Some((url, prefix)) => Some(
            infra::auth_epoch::AuthEpochs::new(url, prefix)
                .map_err(|e| ServiceError::Redis(e.to_string()))?,
        ),
        None => None,
    };
    let handler = Arc::new(Handler::new(
        store.clone(),
        authn::Authenticator::new(store.pool().clone(), config.bootstrap_token.clone()),
        limiter,
        HandlerSettings {
            max_message_bytes: config.max_message_bytes,
            embedding_dimension: config.embedding_dimension,
            trusted_agents: config.trusted_agents.clone(),
        },
        epochs,
    ));
    transport::serve(client, config, handler, shutdown).await
}

/// Connects the rate limit to Redis in the background, retrying: the
/// service starts (and runs, unlimited) while Redis is down.
async fn connect_limiter(rl: RateLimitConfig, limiter: handler::Limiter) {
    let client = match rl.redis.client() {
        Ok(client) => client,
        Err(error) => {
            tracing::warn!(%error, "invalid Redis URL; commands are not rate-limited");
            return;
        }
    };
    loop {
        match tokio::time::timeout(Duration::from_secs(5), client.get_connection_manager()).await {
            Ok(Ok(conn)) => {
                let window = |scope: &str, limit, window| {
                    infra::ratelimit::SlidingWindow::new(
                        conn.clone(),
                        format!("{}{scope}", rl.key_prefix),
                        limit,
                        window,
                    )
                };
                limiter.set(handler::Limits {
                    commands: window("commands:", rl.limit, rl.window),
                    signin_email: window("signin:email:", rl.signin_per_email, rl.signin_window),
                    signin_address: window(
                        "signin:address:",
                        rl.signin_per_address,
                        rl.signin_window,
                    ),
                });
                tracing::info!("rate limit connected to Redis");
                return;
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "Redis unavailable; commands run without a rate limit for now")
            }
            Err(_) => {
                tracing::warn!("Redis does not answer; commands run without a rate limit for now")
            }
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

#[cfg(test)]
mod tests {
    /// The store checks a guard's session against its own idle timeout
    /// (`eventstore::Guard`): it must be the domain's.
    #[test]
    fn the_stores_session_idle_timeout_is_the_domains() {
        assert_eq!(
            eventstore::StoreOptions::default().session_idle_timeout,
            domain::session::IDLE_TIMEOUT
        );
    }
}
