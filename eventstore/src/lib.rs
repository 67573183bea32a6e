//! The PostgreSQL event log of copilot-data: the single source of truth.
//!
//! # API
//!
//! * [`EventStore::append`] appends events to one stream with an
//!   [`ExpectedVersion`] and [`Metadata`]; it returns the new version and the
//!   event's [`Position`], the consistency token. A stale expected version is
//!   [`AppendError::Conflict`]. An append that carries a command id already
//!   appended returns the first outcome with `replayed: true` and writes
//!   nothing.
//! * [`EventStore::append_guarded`] is the same append with a [`Guard`]: the
//!   credential the command was decided under, checked again by the
//!   statement that writes it (the command service's hook; see `guard.rs`).
//! * [`EventStore::append_batch`] (and `append_batch_guarded`) append
//!   several requests at once, each succeeding or refused on its own.
//! * [`EventStore::begin`] appends inside a transaction the caller can also
//!   write to (inline projections) before [`AppendTx::commit`].
//! * [`EventStore::read_stream`] reads one stream from a version;
//!   [`EventStore::read_all_after`] reads the whole log after a position in
//!   the gap-safe global order; [`EventStore::subscribe`] turns that into an
//!   endless sequence of batches, woken by `LISTEN/NOTIFY` and by polling.
//! * [`checkpoint`] saves a reader's position inside the caller's transaction;
//!   [`EventStore::save_snapshot`] keeps the state of a long stream.
//! * [`data_keys`]: with a master key configured, personal values in
//!   payloads, snapshots and metadata are sealed with their owner's data
//!   key by the writer and opened by every read of the store; a
//!   `user_forgotten` event destroys the key in its own transaction.
//!
//! # The one write path
//!
//! Every append but those of an [`AppendTx`] is written by one function
//! (`write.rs`). Single appends queue for group commit (`group_commit.rs`):
//! appends that arrive while a batch is being written go together in the
//! next one, so one statement and one commit serve all of them, and each
//! keeps its own outcome. A batch, from group commit or from a caller, is
//! cut into rounds that name no stream and no command id twice (almost
//! always one); each round is one statement of a store function
//! (`set_append.rs`, migration 0011): the exact set append when every
//! request writes one event at a known version, which takes no lock, and
//! otherwise the set append, which locks its streams in one global order.
//! Both check each request's guard in the same statement, and both run on
//! the store's own connections, planned once per connection
//! (`committers.rs`). A round whose statement fails for good is written
//! again one request at a time, so only a request that breaks it fails; a
//! failure of the connection or the server answers each request
//! [`StoreError::Unavailable`], nothing of it written.
//!
//! Writers of a stream serialise on a transaction-scoped advisory lock of
//! the stream (see `migrations/0001_event_store.sql`), so concurrent appends
//! never interleave versions, and a transaction that took its id before a
//! newer one committed to the stream is refused
//! ([`AppendError::StaleTransaction`]) rather than write a stream out of the
//! global order. The one writer without the lock, the exact set append,
//! writes one event on top of a head its snapshot sees, so after it in the
//! global order, and leaves any clash to the primary key and the command
//! index.
//!
//! # The global order, and why it never skips an event
//!
//! Every event row stores the id of the transaction that inserted it
//! (`pg_current_xact_id()`, 64 bits with its epoch, so it never wraps) and a
//! sequence number `seq`. A sequence value is taken at INSERT time, so the
//! order of `seq` is not the order in which events become visible: a reader
//! that checkpoints at `seq = 100` would never see `seq = 99` of a transaction
//! that commits a moment later.
//!
//! Readers therefore order by `(generation, tx_id, seq)` and read only events
//! whose transaction id is below the `xmin` of their own snapshot
//! (`pg_snapshot_xmin(pg_current_snapshot())`). Every transaction with an id
//! below `xmin` has ended, so its events are visible now or never; every
//! transaction that is still running, or will start, has an id `>= xmin` and
//! sorts after everything read. A checkpoint handed out can thus never be
//! overtaken by a later commit.
//!
//! Transaction ids belong to a cluster. After `pg_dump` and a restore into
//! another cluster the counter may be far behind the stored ids, and new
//! events would sort *before* old ones. The `generation` column handles that:
//! [`EventStore::connect`] compares the newest stored transaction id with the
//! cluster's next one and, when the counter is behind, starts a new
//! generation. Events of earlier generations are all committed (their cluster
//! is gone) and sort before every event of the current generation.
//!
//! ## Cost
//!
//! * One index for the order, `(generation, tx_id, seq)`, kept in insertion
//!   order (and one for command ids, which idempotency needs anyway).
//! * Visibility waits for the oldest running transaction *of the whole
//!   cluster* that holds a transaction id: a transaction that stays open for a
//!   minute delays subscribers by a minute (they never skip, they wait). Keep
//!   write transactions short; read-only transactions take no id and do not
//!   count. Replication slots and prepared transactions count too.
//! * Wake-ups: appenders send one coalesced `NOTIFY` after their commits
//!   (at most one per 5 ms) rather than one per append, because `NOTIFY`
//!   inside a transaction serialises commits on a global lock and would
//!   defeat group commit.
//!   Subscribers also poll (default every 500 ms), which covers a notification
//!   lost to a crash or a reconnect, and an `xmin` moved by an unrelated
//!   transaction.

mod append;
pub mod checkpoint;
pub mod coalesce;
mod committers;
pub mod data_keys;
mod error;
mod generation;
mod group_commit;
mod guard;
pub mod metrics;
mod model;
mod notify;
mod position;
mod read;
mod set_append;
mod snapshot;
mod subscribe;
mod write;

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;

pub use append::AppendTx;
pub use error::{is_transient, retry_transient, AppendError, ReadError, StoreError};
pub use guard::Guard;
pub use model::{
    AppendOutcome, AppendRequest, ExpectedVersion, Metadata, NewEvent, RecordedEvent, Snapshot,
};
pub use position::{ParsePositionError, Position};
pub use read::ReadBatch;
pub use subscribe::Subscription;

/// The `NOTIFY` channel appenders signal after committing events.
pub const NOTIFY_CHANNEL: &str = "eventstore_events";

/// Limits and tuning of a store handle.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Largest accepted payload of one event, in bytes.
    pub max_payload_bytes: usize,
    /// Largest number of events in one append.
    pub max_events_per_append: usize,
    /// How often a subscriber re-reads when no notification arrives.
    pub poll_interval: Duration,
    /// Events read per batch by subscriptions.
    pub batch_size: usize,
    /// Group commit: how many append transactions may be in flight at once.
    /// Appends arriving while all are busy wait and go together in the next.
    /// One by default: on a loaded machine each transaction's fixed cost
    /// (executor start-up, commit) is then shared by about twice as many
    /// appends; `bench commands` ran about 20 % faster with one than with
    /// two, with a lower p99, and `bench append` the same or better.
    pub max_concurrent_batches: usize,
    /// Group commit: the most events written in one transaction.
    pub max_batch_events: usize,
    /// The master keys that wrap the data keys of personal data (see
    /// [`data_keys`]); `None`: personal data is written in the clear and
    /// sealed data cannot be read.
    pub master_keys: Option<data_keys::MasterKeys>,
    /// A [`Guard`]'s session no longer holds once it has been idle this
    /// long (the domain's idle timeout, 30 minutes).
    pub session_idle_timeout: chrono::Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_payload_bytes: 1024 * 1024,
            max_events_per_append: 1000,
            poll_interval: Duration::from_millis(500),
            batch_size: 1000,
            max_concurrent_batches: 1,
            max_batch_events: 2000,
            master_keys: None,
            session_idle_timeout: chrono::Duration::minutes(30),
        }
    }
}

/// A handle to the event store; cheap to clone.
#[derive(Clone)]
pub struct EventStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    /// Writes every batch of appends.
    writer: write::Writer,
    options: StoreOptions,
    notifier: notify::Notifier,
    committer: group_commit::GroupCommit,
    data_keys: Option<Arc<data_keys::DataKeys>>,
}

impl std::fmt::Debug for EventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStore")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl EventStore {
    /// Opens the store on a migrated database. Starts a new generation first
    /// if the database was restored into a cluster whose transaction counter
    /// is behind its events (see the crate documentation).
    pub async fn connect(pool: PgPool, options: StoreOptions) -> Result<Self, StoreError> {
        generation::ensure_current(&pool).await?;
        let notifier = notify::Notifier::spawn(pool.clone());
        // The group commit's and as many for callers that gather their own
        // batches (the command service's request/reply lane).
        let writer = write::Writer {
            committers: Arc::new(committers::Committers::new(
                &pool,
                2 * options.max_concurrent_batches,
            )),
            notifier: notifier.clone(),
            session_idle_timeout: options.session_idle_timeout,
        };
        let committer = group_commit::GroupCommit::spawn(writer.clone(), &options);
        let data_keys = options
            .master_keys
            .clone()
            .map(|master| Arc::new(data_keys::DataKeys::new(pool.clone(), master)));
        Ok(EventStore {
            inner: Arc::new(Inner {
                data_keys,
                pool,
                writer,
                options,
                notifier,
                committer,
            }),
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    pub fn options(&self) -> &StoreOptions {
        &self.inner.options
    }

    /// The data keys of personal data, when a master key is configured.
    pub fn data_keys(&self) -> Option<&Arc<data_keys::DataKeys>> {
        self.inner.data_keys.as_ref()
    }

    /// Opens the sealed personal values of events read from the log (see
    /// [`data_keys`]): every reader of the store gets plain payloads.
    pub async fn open(&self, events: &mut [RecordedEvent]) -> Result<(), StoreError> {
        match &self.inner.data_keys {
            Some(keys) => keys.open_events(events).await,
            None => data_keys::refuse_sealed(events),
        }
    }

    fn writer(&self) -> &write::Writer {
        &self.inner.writer
    }

    /// The current generation of the store.
    pub async fn generation(&self) -> Result<i32, StoreError> {
        generation::current(&self.inner.pool).await
    }
}
