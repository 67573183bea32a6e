//! Group commit: single appends that arrive together share one statement
//! and one transaction.
//!
//! A commit costs a WAL flush and a round trip whatever it carries, so with
//! many writers the log is bound by commits, not by rows. Appends queue in a
//! [`Coalescer`] (at most `max_concurrent_batches` transactions in flight,
//! at most `max_batch_events` events each). Each append keeps its own
//! outcome (see `eventstore_append_set` and `eventstore_append_batch`).

use sqlx::PgPool;

use crate::append::append_many;
use crate::coalesce::{Coalescer, Pending};
use crate::notify::Notifier;
use crate::{AppendError, AppendOutcome, AppendRequest, StoreError, StoreOptions};

type Appending = Pending<AppendRequest, Result<AppendOutcome, AppendError>>;

pub(crate) struct GroupCommit {
    queue: Coalescer<AppendRequest, Result<AppendOutcome, AppendError>>,
}

impl GroupCommit {
    pub(crate) fn spawn(pool: PgPool, notifier: Notifier, options: &StoreOptions) -> Self {
        let queue = Coalescer::spawn(
            options.max_concurrent_batches,
            options.max_batch_events,
            |request: &AppendRequest| request.events.len(),
            move |batch| commit(pool.clone(), batch, notifier.clone()),
        );
        GroupCommit { queue }
    }

    pub(crate) async fn submit(
        &self,
        request: AppendRequest,
    ) -> Result<AppendOutcome, AppendError> {
        self.queue
            .call(request)
            .await
            .map_err(|_| StoreError::Closed)?
    }
}

async fn commit(pool: PgPool, batch: Vec<Appending>, notifier: Notifier) {
    let requests: Vec<&AppendRequest> = batch.iter().map(|p| &p.request).collect();
    crate::metrics::append_batch_size().observe(requests.len() as f64);
    tracing::trace!(appends = requests.len(), "group commit");
    match append_many(&pool, &notifier, &requests).await {
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
                let outcome = match append_many(&pool, &notifier, &[&pending.request]).await {
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
