//! Subscriptions: an endless sequence of batches after a position.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt as _, Stream};
use sqlx::postgres::PgListener;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::Notify;

use crate::{EventStore, Position, RecordedEvent, StoreError, NOTIFY_CHANNEL};

const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Re-read delays while events are held back by an open transaction.
const HELD_BACK_FIRST_WAIT: Duration = Duration::from_millis(2);
const HELD_BACK_MAX_WAIT: Duration = Duration::from_millis(100);

/// Batches read ahead of the consumer: the next one is fetched while the
/// caller works on the current one.
const READ_AHEAD: usize = 2;

/// Reads the log after a position in batches, waiting for new events when
/// caught up. It resumes by itself after lost connections: the position only
/// moves past events it has returned, so nothing is lost or repeated.
///
/// Reading happens in a background task that stays up to two batches ahead
/// of the caller, so fetching overlaps with the caller's work; dropping the
/// subscription stops it.
pub struct Subscription {
    position: Position,
    state: State,
    /// What the next call returns, as far as it has been read (its limit
    /// is the most events a call returns).
    batching: Batching,
    /// Asks the reader for a read now (see [`Subscription::next_batch`]).
    poke: Arc<Notify>,
}

enum State {
    /// Not started: `with_batch_size` may still change the reader.
    Idle(Reader),
    Running(Reads),
}

/// What the reading task sends.
type Reads = tokio::sync::mpsc::Receiver<Result<Read, StoreError>>;

/// One read of the reading task.
struct Read {
    events: Vec<RecordedEvent>,
    /// It began after the subscription asked for a read now: it holds
    /// everything readable then (up to the batch size). Such a read is
    /// sent even when it found nothing.
    fresh: bool,
}

/// The reading side of a subscription.
struct Reader {
    store: EventStore,
    position: Position,
    listener: Option<PgListener>,
    batch_size: usize,
    poke: Arc<Notify>,
    /// A request for a read now arrived while waiting.
    poked: bool,
}

impl EventStore {
    /// Subscribes to every event after `after` (use [`Position::START`] for all).
    pub async fn subscribe(&self, after: Position) -> Subscription {
        // It listens, as before every read, once its first batch is asked
        // for (see `Reader::read_or_wait`).
        let poke = Arc::new(Notify::new());
        let reader = Reader {
            store: self.clone(),
            position: after,
            listener: None,
            batch_size: self.options().batch_size,
            poke: poke.clone(),
            poked: false,
        };
        Subscription {
            position: after,
            batching: Batching {
                limit: reader.batch_size,
                ..Batching::default()
            },
            state: State::Idle(reader),
            poke,
        }
    }
}

impl Subscription {
    /// The position of the last event returned (where it started if none).
    pub fn position(&self) -> Position {
        self.position
    }

    /// Reads batches of at most `batch_size` events (before the first read).
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        if let State::Idle(reader) = &mut self.state {
            reader.batch_size = batch_size.max(1);
            self.batching.limit = reader.batch_size;
        }
        self
    }

    /// The next non-empty batch, in the global order: everything read
    /// ahead so far, up to the batch size. Waits while there is nothing new;
    /// transient failures (lost connection, server restart) are retried
    /// with backoff. Returns an error only for failures that retrying cannot
    /// fix, after which the subscription is finished.
    ///
    /// Batches read ahead are returned together rather than one a call: a
    /// consumer slower than the log's arrivals would otherwise find every
    /// event behind the batches queued before it, each a whole apply away
    /// (three with the read-ahead and the batch waiting to be queued).
    ///
    /// When what was read ahead was read before this call and does not
    /// fill a batch, one more read is made now and joined to it: the batch
    /// then holds everything readable when it was asked for. A consumer
    /// that writes in transactions holds back, while each is open, the
    /// events committed after it began (every reader of the log stops at
    /// the oldest open transaction); without this read its next batch
    /// would be only what the reader saw before the commit, and those
    /// events would wait a whole further apply.
    pub async fn next_batch(&mut self) -> Result<Vec<RecordedEvent>, StoreError> {
        if let State::Idle(_) = self.state {
            let (sender, receiver) = tokio::sync::mpsc::channel(READ_AHEAD);
            let State::Idle(mut reader) =
                std::mem::replace(&mut self.state, State::Running(receiver))
            else {
                return Err(StoreError::Closed);
            };
            tokio::spawn(async move {
                loop {
                    // Stop as soon as the subscription is dropped, also while
                    // waiting for news.
                    let read = tokio::select! {
                        read = reader.next_read() => read,
                        () = sender.closed() => return,
                    };
                    let failed = read.is_err();
                    if sender.send(read).await.is_err() || failed {
                        return;
                    }
                }
            });
        }
        let State::Running(receiver) = &mut self.state else {
            return Err(StoreError::Closed);
        };
        // Every event taken from the channel goes straight into `batching`,
        // which outlives this call: a caller that stops waiting (a `select!`
        // with a timer) loses nothing, and its next call goes on from there.
        let batching = &mut self.batching;
        let mut full = batching.take_carried() || batching.join_waiting(receiver);
        if batching.events.is_empty() && !full {
            // Nothing was waiting: the next read is recent enough.
            while batching.events.is_empty() && !full {
                full = batching.join_next(receiver).await;
            }
            if !full {
                batching.join_waiting(receiver);
            }
        } else if !full {
            if !batching.awaiting_fresh {
                batching.awaiting_fresh = true;
                self.poke.notify_one();
            }
            while batching.awaiting_fresh && !full {
                full = batching.join_next(receiver).await;
            }
        }
        let batch = std::mem::take(&mut batching.events);
        if batch.is_empty() {
            // Only a failure was found: it is this call's.
            return match batching.carried.take() {
                Some(Err(error)) => Err(error),
                _ => Err(StoreError::Closed),
            };
        }
        if let Some(last) = batch.last() {
            self.position = last.position;
        }
        Ok(batch)
    }

    /// The batches as a [`Stream`]; it ends after the first permanent error.
    pub fn into_stream(self) -> impl Stream<Item = Result<Vec<RecordedEvent>, StoreError>> {
        futures_util::stream::unfold(Some(self), |state| async move {
            let mut subscription = state?;
            match subscription.next_batch().await {
                Ok(batch) => Some((Ok(batch), Some(subscription))),
                Err(error) => Some((Err(error), None)),
            }
        })
    }
}

/// A batch being joined from reads, up to `limit` events; what does not
/// fit (or a failure after some events) is carried to the next call.
#[derive(Default)]
struct Batching {
    events: Vec<RecordedEvent>,
    limit: usize,
    carried: Option<Result<Vec<RecordedEvent>, StoreError>>,
    /// A read now was asked for and its answer has not come yet.
    awaiting_fresh: bool,
}

impl Batching {
    /// Joins what the last call could not; true when the batch is complete.
    fn take_carried(&mut self) -> bool {
        match self.carried.take() {
            Some(carried) => self.join(carried.map(|events| Read {
                events,
                fresh: false,
            })),
            None => false,
        }
    }

    /// Joins every read already waiting in `reads`; true when the batch
    /// is complete.
    fn join_waiting(&mut self, reads: &mut Reads) -> bool {
        loop {
            let read = match reads.try_recv() {
                Ok(read) => read,
                Err(TryRecvError::Empty) => return false,
                Err(TryRecvError::Disconnected) => Err(StoreError::Closed),
            };
            if self.join(read) {
                return true;
            }
        }
    }

    /// Waits for the next read and joins it (a caller that stops waiting
    /// loses nothing: `recv` takes nothing until it returns); true when the
    /// batch is complete.
    async fn join_next(&mut self, reads: &mut Reads) -> bool {
        self.join(reads.recv().await.unwrap_or(Err(StoreError::Closed)))
    }

    /// Joins `read`; true when the batch is complete (full, or a failure
    /// is carried).
    fn join(&mut self, read: Result<Read, StoreError>) -> bool {
        if read.as_ref().is_ok_and(|r| r.fresh) {
            self.awaiting_fresh = false;
        }
        match read {
            // A read is never larger than a batch; the first is always taken.
            Ok(read)
                if self.events.is_empty()
                    || self.events.len() + read.events.len() <= self.limit =>
            {
                self.events.extend(read.events);
                self.events.len() >= self.limit
            }
            // Too many to join this batch, or a failure: the next call's.
            other => {
                self.carried = Some(other.map(|read| read.events));
                true
            }
        }
    }
}

impl Reader {
    /// The next read worth sending: one that found events, or one that
    /// answers a request for a read now.
    async fn next_read(&mut self) -> Result<Read, StoreError> {
        let mut backoff = Duration::from_millis(50);
        let mut held_wait = HELD_BACK_FIRST_WAIT;
        loop {
            match self.read_or_wait(&mut held_wait).await {
                Ok(Some(read)) => return Ok(read),
                Ok(None) => backoff = Duration::from_millis(50),
                Err(error) if error.is_transient() => {
                    tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "subscription read failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// One read; `None` after waiting when there was nothing to return.
    async fn read_or_wait(&mut self, held_wait: &mut Duration) -> Result<Option<Read>, StoreError> {
        // A request for a read now, made while waiting or since the last read.
        let fresh =
            std::mem::take(&mut self.poked) || self.poke.notified().now_or_never().is_some();
        // Listen before reading: whatever commits after the read is then
        // notified, also after the listener's connection was lost.
        self.ensure_listener().await;
        let batch = match self
            .store
            .read_all_after(self.position, self.batch_size)
            .await
        {
            Ok(batch) => batch,
            Err(error) => {
                // The request is answered by the read that succeeds.
                self.poked |= fresh;
                return Err(error);
            }
        };
        if let Some(last) = batch.events.last() {
            self.position = last.position;
            return Ok(Some(Read {
                events: batch.events,
                fresh,
            }));
        }
        if fresh {
            return Ok(Some(Read {
                events: Vec::new(),
                fresh,
            }));
        }
        let poll = self.store.options().poll_interval;
        if self.store.has_events_after(self.position).await? {
            // Committed events wait for an older open transaction (its end
            // sends no notification if it wrote no events), or they became
            // readable just after the read: look again soon.
            let wait = (*held_wait).min(poll);
            *held_wait = (*held_wait * 2).min(HELD_BACK_MAX_WAIT);
            self.wait_for_news(wait).await;
        } else {
            *held_wait = HELD_BACK_FIRST_WAIT;
            self.wait_for_news(poll).await;
        }
        Ok(None)
    }

    async fn wait_for_news(&mut self, poll: Duration) {
        let poke = self.poke.clone();
        // Not connected here: listening after the read could miss a commit
        // in between, so without a listener this wait is a plain poll and
        // the next read listens first.
        let Some(listener) = self.listener.as_mut() else {
            tokio::select! {
                () = poke.notified() => self.poked = true,
                () = tokio::time::sleep(poll) => {}
            }
            return;
        };
        tokio::select! {
            () = poke.notified() => self.poked = true,
            received = listener.try_recv() => match received {
                Ok(Some(_)) => {}
                // The connection was lost, and notifications sent meanwhile
                // with it. Left to itself the listener would listen again
                // only on its next call, after the caller's next read, so it
                // is dropped and the next read listens first.
                Ok(None) => self.listener = None,
                Err(error) => {
                    tracing::debug!(%error, "listener failed; falling back to polling");
                    self.listener = None;
                }
            },
            () = tokio::time::sleep(poll) => {}
        }
    }

    async fn ensure_listener(&mut self) {
        if self.listener.is_some() {
            return;
        }
        let connected = async {
            let mut listener = PgListener::connect_with(self.store.pool()).await?;
            listener.listen(NOTIFY_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        match connected {
            Ok(listener) => self.listener = Some(listener),
            Err(error) => tracing::debug!(%error, "cannot listen for appends; polling"),
        }
    }
}
