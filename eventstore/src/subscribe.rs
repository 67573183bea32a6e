//! Subscriptions: an endless sequence of batches after a position.

use std::time::Duration;

use futures_util::Stream;
use sqlx::postgres::PgListener;

use crate::{EventStore, Position, RecordedEvent, StoreError, NOTIFY_CHANNEL};

const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Reads the log after a position in batches, waiting for new events when
/// caught up. It resumes by itself after lost connections: the position only
/// moves past events it has returned, so nothing is lost or repeated.
pub struct Subscription {
    store: EventStore,
    position: Position,
    listener: Option<PgListener>,
    batch_size: usize,
}

impl EventStore {
    /// Subscribes to every event after `after` (use [`Position::START`] for all).
    pub async fn subscribe(&self, after: Position) -> Subscription {
        let mut subscription = Subscription {
            store: self.clone(),
            position: after,
            listener: None,
            batch_size: self.options().batch_size,
        };
        // Listen before the first read, so no notification falls between them.
        subscription.ensure_listener().await;
        subscription
    }
}

impl Subscription {
    /// The position after the last event returned.
    pub fn position(&self) -> Position {
        self.position
    }

    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// The next non-empty batch, in the global order. Waits while there is
    /// nothing new; transient failures (lost connection, server restart) are
    /// retried with backoff. Returns an error only for failures that retrying
    /// cannot fix.
    pub async fn next_batch(&mut self) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self
                .store
                .read_all_after(self.position, self.batch_size)
                .await
            {
                Ok(batch) => {
                    backoff = Duration::from_millis(50);
                    if let Some(last) = batch.events.last() {
                        self.position = last.position;
                        return Ok(batch.events);
                    }
                    self.wait_for_news().await;
                }
                Err(error) if error.is_transient() => {
                    tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "subscription read failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(error) => return Err(error),
            }
        }
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

    async fn wait_for_news(&mut self) {
        let poll = self.store.options().poll_interval;
        self.ensure_listener().await;
        let Some(listener) = self.listener.as_mut() else {
            tokio::time::sleep(poll).await;
            return;
        };
        tokio::select! {
            received = listener.try_recv() => match received {
                Ok(Some(_)) => {}
                // The connection was lost; the listener reconnects on its
                // next call, and notifications sent meanwhile are lost,
                // which is fine because the caller reads again now.
                Ok(None) => {}
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
