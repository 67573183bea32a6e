//! Subscriptions: an endless sequence of batches after a position.

use std::time::Duration;

use futures_util::Stream;
use sqlx::postgres::PgListener;

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
    /// The most events [`Subscription::next_batch`] returns at once.
    batch_size: usize,
    /// A read-ahead batch that did not fit in the last one returned.
    carried: Option<Result<Vec<RecordedEvent>, StoreError>>,
}

enum State {
    /// Not started: `with_batch_size` may still change the reader.
    Idle(Reader),
    Running(tokio::sync::mpsc::Receiver<Result<Vec<RecordedEvent>, StoreError>>),
}

/// The reading side of a subscription.
struct Reader {
    store: EventStore,
    position: Position,
    listener: Option<PgListener>,
    batch_size: usize,
}

impl EventStore {
    /// Subscribes to every event after `after` (use [`Position::START`] for all).
    pub async fn subscribe(&self, after: Position) -> Subscription {
        // It listens, as before every read, once its first batch is asked
        // for (see `Reader::read_or_wait`).
        let reader = Reader {
            store: self.clone(),
            position: after,
            listener: None,
            batch_size: self.options().batch_size,
        };
        Subscription {
            position: after,
            batch_size: reader.batch_size,
            state: State::Idle(reader),
            carried: None,
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
            self.batch_size = reader.batch_size;
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
                    let batch = tokio::select! {
                        batch = reader.next_batch() => batch,
                        () = sender.closed() => return,
                    };
                    let failed = batch.is_err();
                    if sender.send(batch).await.is_err() || failed {
                        return;
                    }
                }
            });
        }
        let State::Running(receiver) = &mut self.state else {
            return Err(StoreError::Closed);
        };
        let mut batch = match self.carried.take() {
            Some(carried) => carried?,
            None => receiver.recv().await.ok_or(StoreError::Closed)??,
        };
        while batch.len() < self.batch_size {
            let Ok(next) = receiver.try_recv() else { break };
            match next {
                Ok(more) if batch.len() + more.len() <= self.batch_size => batch.extend(more),
                // Too many to join this batch, or a failure: the next call's.
                other => {
                    self.carried = Some(other);
                    break;
                }
            }
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

impl Reader {
    async fn next_batch(&mut self) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut backoff = Duration::from_millis(50);
        let mut held_wait = HELD_BACK_FIRST_WAIT;
        loop {
            match self.read_or_wait(&mut held_wait).await {
                Ok(Some(events)) => return Ok(events),
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
    async fn read_or_wait(
        &mut self,
        held_wait: &mut Duration,
    ) -> Result<Option<Vec<RecordedEvent>>, StoreError> {
        // Listen before reading: whatever commits after the read is then
        // notified, also after the listener's connection was lost.
        self.ensure_listener().await;
        let batch = self
            .store
            .read_all_after(self.position, self.batch_size)
            .await?;
        if let Some(last) = batch.events.last() {
            self.position = last.position;
            return Ok(Some(batch.events));
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
        // Not connected here: listening after the read could miss a commit
        // in between, so without a listener this wait is a plain poll and
        // the next read listens first.
        let Some(listener) = self.listener.as_mut() else {
            tokio::time::sleep(poll).await;
            return;
        };
        tokio::select! {
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
