//! The request/reply lane: commands decided on arrival (see
//! [`crate::handler::Prepared`]) are appended together by one loop, which
//! answers them itself.
//!
//! Through a task per command, a command waited in the guarded group
//! commit's queue, its batch was committed by a task of its own, and a
//! one-shot answer woke the command's task to publish the reply: about
//! 25 µs of CPU per command, and smaller batches, which a loop with none
//! of that does not pay (`bench commands` measures both beside each other
//! as floors). Here the subscription's loop decides a command and queues
//! it; this loop takes whatever is queued once the last statement is
//! answered, checks the rate limit of the whole batch in one Redis round
//! trip, writes it with the guarded set append (one statement, one
//! transaction; each request's credential and command id checked again in
//! it), and hands the answers to the replies task. A command the statement
//! holds back (a credential that changed, a command id decided before, a
//! concurrent writer) or that failed takes the pipeline's one way back, in
//! a task of its own: it enters again at the authenticate step, checked
//! against the auth index and the stored outcomes, its rate limit already
//! counted ([`Handler::handle_held_back`]); nothing of it was written.

use std::sync::Arc;

use async_nats::Message;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::task::{JoinHandle, JoinSet};

use crate::handler::{Handler, Prepared, LIMIT_TIMEOUT};
use crate::replies::{self, Reply};
use eventstore::AppendError;

/// A decided command waiting for the lane, with its message (to answer it,
/// or to handle it again) and its in-flight slot.
pub(crate) struct Queued {
    pub(crate) prepared: Prepared,
    pub(crate) message: Message,
    pub(crate) slot: OwnedSemaphorePermit,
}

/// Starts the lane's loop. It ends once the sender is dropped, every queued
/// command is answered and every command handed back has been handled.
pub(crate) fn spawn(
    handler: Arc<Handler>,
    replies: mpsc::UnboundedSender<Reply>,
    prefix: String,
) -> (mpsc::UnboundedSender<Queued>, JoinHandle<()>) {
    let (sender, queue) = mpsc::unbounded_channel();
    let task = tokio::spawn(run(handler, queue, replies, prefix));
    (sender, task)
}

async fn run(
    handler: Arc<Handler>,
    mut queue: mpsc::UnboundedReceiver<Queued>,
    replies: mpsc::UnboundedSender<Reply>,
    prefix: String,
) {
    let max_events = handler.max_batch_events();
    let mut again = JoinSet::new();
    let mut batch: Vec<Queued> = Vec::new();
    let mut carried: Option<Queued> = None;
    let in_flight = crate::metrics::metrics()
        .in_flight
        .with_label_values(&["rpc"]);
    loop {
        let first = match carried.take() {
            Some(queued) => queued,
            None => match queue.recv().await {
                Some(queued) => queued,
                None => break,
            },
        };
        let mut events = first.prepared.entry.0.events.len();
        batch.push(first);
        while events < max_events {
            let Ok(queued) = queue.try_recv() else { break };
            let more = queued.prepared.entry.0.events.len();
            if events + more > max_events {
                carried = Some(queued);
                break;
            }
            events += more;
            batch.push(queued);
        }
        let lane = Lane {
            handler: &handler,
            replies: &replies,
            prefix: &prefix,
            in_flight: &in_flight,
        };
        lane.commit(&mut batch, &mut again).await;
        while again.try_join_next().is_some() {}
    }
    while again.join_next().await.is_some() {}
}

/// What a batch is answered with.
struct Lane<'a> {
    handler: &'a Arc<Handler>,
    replies: &'a mpsc::UnboundedSender<Reply>,
    prefix: &'a str,
    /// Commands in flight on request/reply, counted until answered.
    in_flight: &'a prometheus::IntGauge,
}

impl Lane<'_> {
    async fn commit(&self, batch: &mut Vec<Queued>, again: &mut JoinSet<()>) {
        self.rate_limit(batch).await;
        if batch.is_empty() {
            return;
        }
        let entries: Vec<_> = batch.iter().map(|q| &q.prepared.entry).collect();
        let outcomes = self.handler.append_prepared(&entries).await;
        drop(entries);
        for (queued, outcome) in batch.drain(..).zip(outcomes) {
            match outcome {
                Ok(outcome) if !outcome.replayed => {
                    self.answer(queued, |prepared| prepared.accepted(self.handler, &outcome));
                }
                Err(AppendError::Unverified) => {
                    self.handler.forget(&queued.prepared.entry.1);
                    self.again(queued, again);
                }
                // Appended before (its stored outcome is the answer), decided
                // before, a concurrent writer's conflict, or a failure (the
                // full way finds a stored outcome if it did commit).
                _ => self.again(queued, again),
            }
        }
    }

    /// Refuses, from `batch`, the commands over their rate limit, all
    /// checked in one round trip; if Redis cannot answer, none is refused.
    async fn rate_limit(&self, batch: &mut Vec<Queued>) {
        let Some(limiter) = self.handler.limiter() else {
            return;
        };
        let principals: Vec<&str> = batch
            .iter()
            .map(|q| q.prepared.principal.as_str())
            .collect();
        let checked = tokio::time::timeout(LIMIT_TIMEOUT, limiter.check_many(&principals)).await;
        let decisions = match checked {
            Ok(Ok(decisions)) if decisions.len() == batch.len() => decisions,
            failed => {
                let error = match failed {
                    Ok(Ok(_)) => "the rate limiter answered the wrong number of checks".to_string(),
                    Ok(Err(error)) => error.to_string(),
                    Err(_) => "rate limit check timed out".to_string(),
                };
                // Fail open, as for a single command.
                crate::metrics::metrics().rate_limit_fail_open.inc();
                tracing::warn!(%error, "rate limiter unavailable; allowing the batch");
                return;
            }
        };
        let mut kept = Vec::with_capacity(batch.len());
        for (queued, decision) in batch.drain(..).zip(decisions) {
            if decision.allowed {
                kept.push(queued);
                continue;
            }
            self.answer(queued, |prepared| {
                prepared.rate_limited(self.handler, decision.retry_after)
            });
        }
        *batch = kept;
    }

    /// Answers a command here with what `decide` makes of it.
    fn answer(
        &self,
        queued: Queued,
        decide: impl FnOnce(Prepared) -> crate::result::CommandResult,
    ) {
        let Queued {
            prepared,
            message,
            slot,
        } = queued;
        let encoding = prepared.encoding;
        let result = decide(prepared);
        replies::queue(self.replies, message.reply, encoding, &result, slot);
        self.in_flight.dec();
    }

    /// Hands a command back to be handled in full, in a task of its own.
    fn again(&self, queued: Queued, again: &mut JoinSet<()>) {
        let Queued {
            prepared,
            message,
            slot,
        } = queued;
        prepared.abandon(self.handler);
        let (handler, replies, prefix, in_flight) = (
            Arc::clone(self.handler),
            self.replies.clone(),
            self.prefix.to_string(),
            self.in_flight.clone(),
        );
        again.spawn(async move {
            replies::answer(&replies, &handler, &prefix, message, slot, true).await;
            in_flight.dec();
        });
    }
}
