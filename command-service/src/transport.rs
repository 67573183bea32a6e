//! The two NATS transports. Both hand each message to the same handler and
//! share its idempotency record, so a command sent on both is harmless.
//! Request/reply commands that need no waiting are decided as they arrive
//! and appended by the lane ([`crate::lane`]); the others, and every
//! JetStream command, are handled in a task of their own.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream, AckKind};
use async_nats::{Client, HeaderMap};
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use crate::handler::Handler;
use crate::lane;
use crate::replies;
use crate::request::{header, incoming};
use crate::result::{CommandResult, Encoding, Status};
use crate::{stream_names, ServiceConfig, ServiceError};

/// Deliveries of a JetStream command before it is dead-lettered.
pub const MAX_DELIVER: i64 = 5;
const CONSUMER: &str = "command-service";
/// How long in-flight commands may take to finish at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn serve(
    client: Client,
    config: ServiceConfig,
    handler: Arc<Handler>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServiceError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let js = jetstream::new(client.clone());
    let consumer = setup_jetstream(&js, &config).await?;
    let rpc = client
        .queue_subscribe(
            format!("{}.rpc.>", config.prefix),
            "command-service".to_string(),
        )
        .await
        .map_err(|e| ServiceError::Subscribe(e.to_string()))?;
    tracing::info!(prefix = %config.prefix, "command service listening");

    let rpc_task = tokio::spawn(rpc_loop(
        client.clone(),
        rpc,
        config.clone(),
        Arc::clone(&handler),
        stop_rx.clone(),
    ));
    let js_task = tokio::spawn(jetstream_loop(
        js,
        consumer,
        config.clone(),
        handler,
        stop_rx,
    ));
    shutdown.await;
    tracing::info!("command service stopping: no new messages, finishing those in flight");
    let _ = stop_tx.send(true);
    let _ = rpc_task.await;
    let _ = js_task.await;
    let _ = client.flush().await;
    Ok(())
}

async fn setup_jetstream(
    js: &jetstream::Context,
    config: &ServiceConfig,
) -> Result<consumer::PullConsumer, ServiceError> {
    let (commands, results) = stream_names(&config.prefix);
    let err = |e: &dyn std::fmt::Display| ServiceError::JetStream(e.to_string());
    let stream = js
        .get_or_create_stream(stream::Config {
            name: commands,
            subjects: vec![format!("{}.cmd.>", config.prefix)],
            retention: stream::RetentionPolicy::WorkQueue,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|e| err(&e))?;
    js.get_or_create_stream(stream::Config {
        name: results,
        subjects: vec![
            format!("{}.result.>", config.prefix),
            format!("{}.dlq.>", config.prefix),
        ],
        max_age: Duration::from_secs(24 * 60 * 60),
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .map_err(|e| err(&e))?;
    stream
        .get_or_create_consumer(
            CONSUMER,
            consumer::pull::Config {
                durable_name: Some(CONSUMER.to_string()),
                ack_policy: consumer::AckPolicy::Explicit,
                // A killed instance's unacked commands come back after this long.
                ack_wait: Duration::from_secs(15),
                max_deliver: MAX_DELIVER,
                filter_subject: format!("{}.cmd.>", config.prefix),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| err(&e))
}

async fn rpc_loop(
    client: Client,
    mut subscription: async_nats::Subscriber,
    config: ServiceConfig,
    handler: Arc<Handler>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
    let mut in_flight = JoinSet::new();
    let (replies, sender) = replies::spawn(client);
    let prefix = format!("{}.rpc.", config.prefix);
    let (lane, mut lane_task) = lane::spawn(Arc::clone(&handler), replies.clone(), prefix.clone());
    let gauge = crate::metrics::metrics()
        .in_flight
        .with_label_values(&["rpc"]);
    loop {
        tokio::select! {
            message = subscription.next() => {
                let Some(message) = message else { break };
                let Ok(slot) = Arc::clone(&slots).acquire_owned().await else { break };
                gauge.inc();
                // Decided here if it needs no waiting, and appended by the
                // lane. A panic in deciding must not end this loop, and with
                // it every request/reply command: the command goes to a task.
                let prepared = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    handler.prepare(&incoming(&message, &prefix, false))
                }))
                .unwrap_or_else(|_| {
                    tracing::error!("deciding a command on arrival panicked; handling it in a task");
                    None
                });
                let (message, slot) = match prepared {
                    Some(prepared) => match lane.send(lane::Queued { prepared, message, slot }) {
                        Ok(()) => continue,
                        // The lane is gone (it panicked): handle it in full.
                        Err(mpsc::error::SendError(queued)) => {
                            queued.prepared.abandon(&handler);
                            (queued.message, queued.slot)
                        }
                    },
                    None => (message, slot),
                };
                let (replies, handler, prefix, gauge) =
                    (replies.clone(), Arc::clone(&handler), prefix.clone(), gauge.clone());
                in_flight.spawn(async move {
                    replies::answer(&replies, &handler, &prefix, message, slot, false).await;
                    gauge.dec();
                });
            }
            _ = stop.changed() => break,
        }
        while in_flight.try_join_next().is_some() {}
    }
    // Stop taking new requests; other instances of the queue group get them.
    let _ = subscription.unsubscribe().await;
    drop(lane);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while in_flight.join_next().await.is_some() {}
        let _ = (&mut lane_task).await;
    })
    .await;
    // Those still running after the drain's time are dropped unanswered,
    // and their senders with them; the answers of the others are queued.
    if drained.is_err() {
        lane_task.abort();
        let _ = lane_task.await;
    }
    in_flight.shutdown().await;
    drop(replies);
    let _ = sender.await;
}

async fn jetstream_loop(
    js: jetstream::Context,
    consumer: consumer::PullConsumer,
    config: ServiceConfig,
    handler: Arc<Handler>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
    let mut in_flight = JoinSet::new();
    let mut messages = match consumer.messages().await {
        Ok(messages) => messages,
        Err(error) => {
            tracing::error!(%error, "cannot consume JetStream commands");
            return;
        }
    };
    loop {
        tokio::select! {
            message = messages.next() => {
                let message = match message {
                    Some(Ok(message)) => message,
                    Some(Err(error)) => {
                        tracing::warn!(%error, "JetStream delivery failed");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                    None => break,
                };
                let Ok(slot) = Arc::clone(&slots).acquire_owned().await else { break };
                let (js, handler, prefix) = (js.clone(), Arc::clone(&handler), config.prefix.clone());
                in_flight.spawn(async move {
                    let gauge = crate::metrics::metrics().in_flight.with_label_values(&["jetstream"]);
                    gauge.inc();
                    process(&js, &handler, &prefix, message).await;
                    gauge.dec();
                    drop(slot);
                });
            }
            _ = stop.changed() => break,
        }
        while in_flight.try_join_next().is_some() {}
    }
    // Messages not yet handled are neither acked nor lost: JetStream
    // redelivers them after the ack wait, to this or another instance.
    // (NAKing them here would hand them straight back to this still-open
    // pull and use up their deliveries.)
    drop(messages);
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while in_flight.join_next().await.is_some() {}
    })
    .await;
}

/// Handles one JetStream command. It is acked only after its outcome is
/// stored (by the handler) and its result is published.
async fn process(
    js: &jetstream::Context,
    handler: &Handler,
    prefix: &str,
    message: jetstream::Message,
) {
    let command_prefix = format!("{prefix}.cmd.");
    let received = incoming(&message, &command_prefix, true);
    let command_type = received.command_type.to_string();
    let msg_id = header(message.headers.as_ref(), "Nats-Msg-Id").map(str::to_string);
    let (encoding, mut result) = handler.handle(received).await;
    if result.command_id.is_nil() {
        if let Some(id) = msg_id
            .as_deref()
            .and_then(|id| uuid::Uuid::parse_str(id).ok())
        {
            result.command_id = id;
        }
    }
    let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
    if result.status == Status::Unavailable && delivered < MAX_DELIVER {
        // Nothing was appended: try again later.
        let _ = message
            .ack_with(AckKind::Nak(Some(Duration::from_millis(
                500 * delivered as u64,
            ))))
            .await;
        return;
    }
    if result.status == Status::Unavailable {
        dead_letter(js, prefix, &command_type, &message).await;
    }
    if publish_result(js, prefix, encoding, &result).await {
        if let Err(error) = message.ack().await {
            tracing::warn!(%error, command_id = %result.command_id, "cannot ack a command");
        }
    } else {
        let _ = message
            .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
            .await;
    }
}

async fn publish_result(
    js: &jetstream::Context,
    prefix: &str,
    encoding: Encoding,
    result: &CommandResult,
) -> bool {
    let mut headers = HeaderMap::new();
    headers.insert("Content-Type", encoding.content_type());
    headers.insert("Nats-Msg-Id", result.command_id.to_string().as_str());
    let subject = format!("{prefix}.result.{}", result.command_id);
    match js
        .publish_with_headers(subject, headers, encoding.encode(result).into())
        .await
    {
        Ok(ack) => match ack.await {
            Ok(_) => true,
            Err(error) => {
                tracing::warn!(%error, "result not stored by JetStream");
                false
            }
        },
        Err(error) => {
            tracing::warn!(%error, "cannot publish a result");
            false
        }
    }
}

/// Headers that carry credentials, left out of dead-letter copies.
const CREDENTIAL_HEADERS: [&str; 3] = ["Authorization", "Proxy-Authorization", "Cookie"];

/// `headers` but those that carry credentials: a dead letter keeps what
/// identifies and describes the command, never the credential it came
/// with (the dead-letter subject is kept in a stream).
fn without_credentials(headers: Option<&HeaderMap>) -> HeaderMap {
    let mut kept = HeaderMap::new();
    for (name, values) in headers.iter().flat_map(|h| h.iter()) {
        if CREDENTIAL_HEADERS
            .iter()
            .any(|c| name.to_string().eq_ignore_ascii_case(c))
        {
            continue;
        }
        for value in values {
            kept.append(name.clone(), value.clone());
        }
    }
    kept
}

/// A command that failed every delivery goes to `<prefix>.dlq.<type>`.
async fn dead_letter(
    js: &jetstream::Context,
    prefix: &str,
    command_type: &str,
    message: &jetstream::Message,
) {
    let headers = without_credentials(message.headers.as_ref());
    let subject = format!(
        "{prefix}.dlq.{}",
        if command_type.is_empty() {
            "unknown"
        } else {
            command_type
        }
    );
    tracing::error!(
        subject,
        "command dead-lettered after {MAX_DELIVER} deliveries"
    );
    if let Ok(ack) = js
        .publish_with_headers(subject, headers, message.payload.clone())
        .await
    {
        let _ = ack.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letters_keep_no_credential() {
        let mut headers = HeaderMap::new();
        headers.insert("Authorization", "Bearer cps_secret");
        headers.insert("authorization", "Bearer cpk_other");
        headers.insert("Cookie", "session=x");
        headers.insert("Nats-Msg-Id", "0192");
        headers.insert("Content-Type", "application/json");
        let kept = without_credentials(Some(&headers));
        let names: Vec<String> = kept.iter().map(|(n, _)| n.to_string()).collect();
        assert!(
            names
                .iter()
                .all(|n| !n.eq_ignore_ascii_case("authorization")
                    && !n.eq_ignore_ascii_case("cookie")),
            "{names:?}"
        );
        assert_eq!(kept.get("Nats-Msg-Id").map(|v| v.as_str()), Some("0192"));
        assert_eq!(
            kept.get("Content-Type").map(|v| v.as_str()),
            Some("application/json")
        );
    }
}
