//! Group commit: single appends that arrive together share one statement
//! and one transaction.
//!
//! A commit costs a WAL flush and a round trip whatever it carries, so with
//! many writers the log is bound by commits, not by rows. Appends queue in a
//! [`Coalescer`] (at most `max_concurrent_batches` transactions in flight,
//! at most `max_batch_events` events each) and each batch is written by
//! [`crate::write`]; each append keeps its own outcome.

use futures_util::future::BoxFuture;

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
    serve_batch(batch, |queued| {
        let writer = writer.clone();
        Box::pin(async move {
            let entries: Vec<(&AppendRequest, &Guard)> =
                queued.iter().map(|(r, g)| (r, g)).collect();
            writer.write(&entries).await
        })
    })
    .await;
}

/// Answers a coalesced batch with one `write` of all its requests (one
/// statement, one transaction, one answer per request). If that fails and
/// the batch holds several, one request may be what fails the statement:
/// each then gets a `write` of its own, so only that one gets the error.
pub(crate) async fn serve_batch<Q, T, E, W>(batch: Vec<Pending<Q, Result<T, E>>>, write: W)
where
    E: From<StoreError>,
    W: for<'a> Fn(&'a [&'a Q]) -> BoxFuture<'a, Result<Vec<Result<T, E>>, StoreError>>,
{
    let requests: Vec<&Q> = batch.iter().map(|p| &p.request).collect();
    match write(&requests).await {
        Ok(outcomes) if outcomes.len() == batch.len() => {
            for (pending, outcome) in batch.into_iter().zip(outcomes) {
                let _ = pending.reply.send(outcome);
            }
        }
        Ok(outcomes) => {
            let message = format!(
                "{} requests answered {} outcomes",
                batch.len(),
                outcomes.len()
            );
            for pending in batch {
                let _ = pending
                    .reply
                    .send(Err(StoreError::Corrupt(message.clone()).into()));
            }
        }
        Err(error) if batch.len() > 1 => {
            tracing::warn!(%error, requests = batch.len(), "batch failed; writing one by one");
            for pending in batch {
                let outcome = match write(&[&pending.request]).await {
                    Ok(mut outcomes) => outcomes.pop().unwrap_or_else(|| {
                        Err(StoreError::Corrupt("a write answered no outcome".into()).into())
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::oneshot;

    use super::*;

    type Request = Pending<u32, Result<u32, AppendError>>;
    type Answer = oneshot::Receiver<Result<u32, AppendError>>;

    /// Requests `0..n`, and where each one's answer arrives.
    fn batch(n: u32) -> (Vec<Request>, Vec<Answer>) {
        (0..n)
            .map(|request| {
                let (reply, answer) = oneshot::channel();
                (Pending { request, reply }, answer)
            })
            .unzip()
    }

    /// A batch whose statement fails because of one request: that request
    /// alone gets the error, each other one its own outcome, in order.
    #[tokio::test]
    async fn a_failed_batch_is_written_one_by_one_and_only_the_culprit_fails() {
        let (batch, replies) = batch(5);
        let writes = AtomicUsize::new(0);
        serve_batch(batch, |requests: &[&u32]| {
            writes.fetch_add(1, Ordering::SeqCst);
            let answer = if requests.iter().any(|r| **r == 3) {
                Err(StoreError::Corrupt("request 3 breaks the statement".into()))
            } else {
                Ok(requests.iter().map(|r| Ok(**r * 10)).collect())
            };
            Box::pin(async move { answer })
        })
        .await;
        let mut answers = Vec::new();
        for answer in replies {
            answers.push(answer.await.expect("answered"));
        }
        assert_eq!(writes.load(Ordering::SeqCst), 1 + 5);
        for (i, answer) in answers.iter().enumerate() {
            match answer {
                Ok(value) => assert_eq!((i, *value), (i, i as u32 * 10)),
                Err(AppendError::Store(StoreError::Corrupt(_))) => assert_eq!(i, 3),
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        assert!(answers[3].is_err());
    }

    /// A batch that succeeds is written once, and a batch of one that fails
    /// gets its error without a second try.
    #[tokio::test]
    async fn a_good_batch_is_written_once_and_a_lone_failure_is_not_retried() {
        let (reply, answer) = oneshot::channel::<Result<u32, AppendError>>();
        let writes = AtomicUsize::new(0);
        serve_batch(
            vec![Pending {
                request: 7u32,
                reply,
            }],
            |_: &[&u32]| {
                writes.fetch_add(1, Ordering::SeqCst);
                Box::pin(async { Err(StoreError::Corrupt("no".into())) })
            },
        )
        .await;
        assert!(answer.await.expect("answered").is_err());
        assert_eq!(writes.load(Ordering::SeqCst), 1);

        let (batch, replies) = batch(4);
        let writes = AtomicUsize::new(0);
        serve_batch(batch, |requests: &[&u32]| {
            writes.fetch_add(1, Ordering::SeqCst);
            let answer = Ok(requests.iter().map(|r| Ok(**r + 1)).collect());
            Box::pin(async move { answer })
        })
        .await;
        assert_eq!(writes.load(Ordering::SeqCst), 1);
        for (i, answer) in replies.into_iter().enumerate() {
            assert_eq!(answer.await.expect("answered").expect("ok"), i as u32 + 1);
        }
    }
}
