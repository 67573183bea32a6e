//! Group commit: single appends that arrive together share one statement
//! and one transaction.
//!
//! A commit costs a WAL flush and a round trip whatever it carries, so with
//! many writers the log is bound by commits, not by rows. Appends queue
//! here; a dispatcher hands everything queued to the next free transaction
//! slot (at most `max_concurrent_batches` in flight). Under light load a
//! batch holds one append and nothing waits; under heavy load batches grow
//! by themselves. Each append keeps its own outcome (see
//! `eventstore_append_batch`).

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::append::append_many;
use crate::notify::Notifier;
use crate::{AppendError, AppendOutcome, AppendRequest, StoreError, StoreOptions};

type Reply = oneshot::Sender<Result<AppendOutcome, AppendError>>;

struct Pending {
    request: AppendRequest,
    reply: Reply,
}

pub(crate) struct GroupCommit {
    queue: mpsc::UnboundedSender<Pending>,
}

impl GroupCommit {
    pub(crate) fn spawn(pool: PgPool, notifier: Notifier, options: &StoreOptions) -> Self {
        let (queue, receiver) = mpsc::unbounded_channel();
        let slots = Arc::new(Semaphore::new(options.max_concurrent_batches.max(1)));
        tokio::spawn(dispatch(
            receiver,
            pool,
            notifier,
            slots,
            options.max_batch_events.max(1),
        ));
        GroupCommit { queue }
    }

    pub(crate) async fn submit(
        &self,
        request: AppendRequest,
    ) -> Result<AppendOutcome, AppendError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending { request, reply })
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

async fn dispatch(
    mut receiver: mpsc::UnboundedReceiver<Pending>,
    pool: PgPool,
    notifier: Notifier,
    slots: Arc<Semaphore>,
    max_events: usize,
) {
    while let Some(first) = receiver.recv().await {
        // Waiting for a slot is what lets the queue fill up under load.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut events = first.request.events.len();
        let mut batch = vec![first];
        while events < max_events {
            match receiver.try_recv() {
                Ok(next) => {
                    events += next.request.events.len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let pool = pool.clone();
        let notifier = notifier.clone();
        tokio::spawn(async move {
            commit(&pool, batch, &notifier).await;
            drop(slot);
        });
    }
}

async fn commit(pool: &PgPool, batch: Vec<Pending>, notifier: &Notifier) {
    let requests: Vec<&AppendRequest> = batch.iter().map(|p| &p.request).collect();
    tracing::trace!(appends = requests.len(), "group commit");
    match append_many(pool, notifier, &requests).await {
        Ok(outcomes) => {
            for (pending, outcome) in batch.into_iter().zip(outcomes) {
                let _ = pending.reply.send(outcome);
            }
        }
        Err(error) if batch.len() > 1 => {
            // One request may be what fails the statement: give each its own
            // transaction, so only that one gets the error.
            tracing::warn!(%error, appends = batch.len(), "group commit failed; appending one by one");
            for pending in batch {
                let outcome = match append_many(pool, notifier, &[&pending.request]).await {
                    Ok(mut outcomes) => outcomes.pop().unwrap_or_else(|| {
                        Err(StoreError::Corrupt("append answered no row".into()).into())
                    }),
                    Err(e) => Err(e.into()),
                };
                let _ = pending.reply.send(outcome);
            }
        }
        Err(error) => {
            // A batch of one: its own error.
            if let Some(pending) = batch.into_iter().next() {
                let _ = pending.reply.send(Err(error.into()));
            }
        }
    }
}
