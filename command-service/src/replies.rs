//! The request/reply answers, sent from one task so that answers finished
//! together leave in one write.
//!
//! A group commit answers a dozen commands at once. Published from each
//! command's own task, every answer woke the NATS client's connection task,
//! which the runtime then ran next (it runs the task woken last first), so
//! each answer went out in a write of its own, and the NATS server read,
//! routed and wrote each one on its own as well. Here the answers wait in a
//! queue while the other tasks woken with them run, and then go to the
//! client one after another, so its connection task writes them together.

use async_nats::{Client, HeaderMap, Message, Subject};
use bytes::Bytes;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::handler::Handler;
use crate::request::incoming;
use crate::result::{CommandResult, Encoding};

/// How many queued answers are handed to the client at a time.
const CHUNK: usize = 256;

/// One answer: where it goes, and the in-flight slot of its command, held
/// until the answer is with the client so the service's bound on commands
/// in flight covers their answers too.
pub struct Reply {
    pub subject: Subject,
    pub headers: HeaderMap,
    pub payload: Bytes,
    pub command_id: Uuid,
    pub slot: OwnedSemaphorePermit,
}

/// Starts the task that sends the answers queued on the returned sender. It
/// ends once every sender is dropped and the queue is empty.
pub fn spawn(client: Client) -> (mpsc::UnboundedSender<Reply>, JoinHandle<()>) {
    let (sender, queue) = mpsc::unbounded_channel();
    (sender, tokio::spawn(send_all(client, queue)))
}

async fn send_all(client: Client, mut queue: mpsc::UnboundedReceiver<Reply>) {
    let mut batch = Vec::with_capacity(CHUNK);
    while queue.recv_many(&mut batch, CHUNK).await > 0 {
        // Let the tasks woken with this answer run first and queue theirs.
        tokio::task::yield_now().await;
        while batch.len() < CHUNK {
            match queue.try_recv() {
                Ok(reply) => batch.push(reply),
                Err(_) => break,
            }
        }
        for reply in batch.drain(..) {
            if let Err(error) = client
                .publish_with_headers(reply.subject, reply.headers, reply.payload)
                .await
            {
                tracing::warn!(%error, command_id = %reply.command_id, "cannot send the reply");
            }
            drop(reply.slot);
        }
    }
}

/// Handles a request in full and queues its answer; `held_back` for one the
/// lane decided and handed back (see [`Handler::handle_held_back`]).
pub(crate) async fn answer(
    replies: &mpsc::UnboundedSender<Reply>,
    handler: &Handler,
    prefix: &str,
    message: Message,
    slot: OwnedSemaphorePermit,
    held_back: bool,
) {
    let request = incoming(&message, prefix, false);
    let (encoding, result) = if held_back {
        handler.handle_held_back(request).await
    } else {
        handler.handle(request).await
    };
    queue(replies, message.reply, encoding, &result, slot);
}

/// Queues `result` as the answer to `reply`, if the request asked for one.
pub(crate) fn queue(
    replies: &mpsc::UnboundedSender<Reply>,
    reply: Option<async_nats::Subject>,
    encoding: Encoding,
    result: &CommandResult,
    slot: OwnedSemaphorePermit,
) {
    let Some(subject) = reply else { return };
    let mut headers = HeaderMap::new();
    headers.insert("Content-Type", encoding.content_type());
    // It fails only if the sending task is gone, which it is not while a
    // sender lives; an answer is then lost as if its publish had failed.
    let _ = replies.send(Reply {
        subject,
        headers,
        payload: encoding.encode(result).into(),
        command_id: result.command_id,
        slot,
    });
}
