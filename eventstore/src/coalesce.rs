//! Coalescing: requests that arrive while earlier ones are being served are
//! handed over together, so one statement (and one round trip, one
//! transaction) serves all of them.
//!
//! A statement costs a round trip, a parse-bind-execute and a transaction
//! whatever it carries, so with many concurrent callers a database is bound
//! by statements, not by rows. Requests queue here; a dispatcher hands
//! everything queued to the next free slot (at most `slots` batches in
//! flight). Under light load a batch holds one request and nothing waits;
//! under heavy load batches grow by themselves.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

/// One queued request and where its answer goes.
pub struct Pending<Q, A> {
    pub request: Q,
    pub reply: oneshot::Sender<A>,
}

/// A queue of requests of type `Q` answered with `A`, served in batches.
pub struct Coalescer<Q, A> {
    queue: mpsc::UnboundedSender<Pending<Q, A>>,
}

impl<Q, A> Clone for Coalescer<Q, A> {
    fn clone(&self) -> Self {
        Coalescer {
            queue: self.queue.clone(),
        }
    }
}

/// The batch was dropped unanswered: the serving task is gone.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the batching task has stopped")]
pub struct Stopped;

impl<Q: Send + 'static, A: Send + 'static> Coalescer<Q, A> {
    /// Spawns the dispatcher. `weight` measures a request (a batch stops
    /// growing at `max_weight`, but always takes at least one request);
    /// `serve` answers every request of a batch through its `reply`.
    pub fn spawn<W, S, F>(slots: usize, max_weight: usize, weight: W, serve: S) -> Self
    where
        W: Fn(&Q) -> usize + Send + 'static,
        S: Fn(Vec<Pending<Q, A>>) -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let (queue, receiver) = mpsc::unbounded_channel();
        tokio::spawn(dispatch(
            receiver,
            Arc::new(Semaphore::new(slots.max(1))),
            max_weight.max(1),
            weight,
            serve,
        ));
        Coalescer { queue }
    }

    /// Queues `request` and waits for its answer.
    pub async fn call(&self, request: Q) -> Result<A, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending { request, reply })
            .map_err(|_| Stopped)?;
        answer.await.map_err(|_| Stopped)
    }
}

async fn dispatch<Q, A, W, S, F>(
    mut receiver: mpsc::UnboundedReceiver<Pending<Q, A>>,
    slots: Arc<Semaphore>,
    max_weight: usize,
    weight: W,
    serve: S,
) where
    W: Fn(&Q) -> usize,
    S: Fn(Vec<Pending<Q, A>>) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    while let Some(first) = receiver.recv().await {
        // Waiting for a slot is what lets the queue fill up under load.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut total = weight(&first.request);
        let mut batch = vec![first];
        while total < max_weight {
            match receiver.try_recv() {
                Ok(next) => {
                    total += weight(&next.request);
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let served = serve(batch);
        tokio::spawn(async move {
            served.await;
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn concurrent_requests_share_batches_and_each_gets_its_answer() {
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::clone(&sizes);
        let doubler = Coalescer::spawn(
            1,
            1000,
            |_: &u32| 1,
            move |batch: Vec<Pending<u32, u32>>| {
                if let Ok(mut sizes) = seen.lock() {
                    sizes.push(batch.len());
                }
                async move {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    for p in batch {
                        let _ = p.reply.send(p.request * 2);
                    }
                }
            },
        );
        let calls: Vec<_> = (0..100u32)
            .map(|i| {
                let d = doubler.clone();
                tokio::spawn(async move { (i, d.call(i).await) })
            })
            .collect();
        for call in calls {
            let (i, answer) = call.await.expect("task");
            assert_eq!(answer.expect("answered"), i * 2);
        }
        let sizes = sizes.lock().expect("sizes").clone();
        assert_eq!(sizes.iter().sum::<usize>(), 100);
        assert!(sizes.len() < 100, "no batch held more than one: {sizes:?}");
    }
}
