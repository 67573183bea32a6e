//! Group commit: single appends that arrive together share one statement
//! and one transaction.
//!
//! A commit costs a WAL flush and a round trip whatever it carries, so with
//! many writers the log is bound by commits, not by rows. Appends queue in a
//! [`Coalescer`] (at most `max_concurrent_batches` transactions in flight,
//! at most `max_batch_events` events each) and each batch is written by
//! [`crate::write`], which gives each append its own outcome (and writes
//! them one by one if a request breaks the batch's statement).

use crate::coalesce::{Coalescer, Pending};
use crate::write::Writer;
use crate::{AppendError, AppendOutcome, AppendRequest, Guard, StoreError, StoreOptions};

type Queued = (AppendRequest, Guard);
type Appending = Pending<Queued, Result<AppendOutcome, AppendError>>;

pub(crate) struct GroupCommit {
    queue: Coalescer<Queued, Result<AppendOutcome, AppendError>>,
}

impl GroupCommit {
    pub(crate) fn spawn(writer: Writer, options: &StoreOptions) -> Self {
        let queue = Coalescer::spawn(
            options.max_concurrent_batches,
            options.max_batch_events,
            |(request, _): &Queued| request.events.len(),
            move |batch| commit(writer.clone(), batch),
        );
        GroupCommit { queue }
    }

    pub(crate) async fn submit(
        &self,
        request: AppendRequest,
        guard: Guard,
    ) -> Result<AppendOutcome, AppendError> {
        self.queue
            .call((request, guard))
            .await
            .map_err(|_| StoreError::Closed)?
    }
}

async fn commit(writer: Writer, batch: Vec<Appending>) {
    crate::metrics::append_batch_size().observe(batch.len() as f64);
    tracing::trace!(appends = batch.len(), "group commit");
    let entries: Vec<(&AppendRequest, &Guard)> =
        batch.iter().map(|p| (&p.request.0, &p.request.1)).collect();
    let outcomes = writer.write(&entries).await;
    drop(entries);
    for (pending, outcome) in batch.into_iter().zip(outcomes) {
        let _ = pending.reply.send(outcome);
    }
}
