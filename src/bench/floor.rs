//! The floors under a command, for `bench commands`: NATS responders that
//! do nothing but store each request durably, grouping the requests that
//! arrive together, with one transaction in flight. The lowest
//! ([`spawn_grouped_insert`]) writes bare rows with one multi-row INSERT:
//! the command service's group commit without any of its work (no
//! decoding, authentication, deciding, checks or indexes). Any service that
//! answers over NATS only after the command is committed pays at least
//! this, so its rate bounds what the service could reach on the same
//! machine in the same run. The other two put back the event store's part,
//! first its statement alone ([`spawn_set_append_loop`]), then its whole
//! append path ([`spawn_store_append`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use eventstore::{AppendRequest, ExpectedVersion, Metadata, NewEvent};
use futures_util::{FutureExt as _, StreamExt as _};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// The largest group: the bench's 32 agents can have no more in flight.
const MAX_GROUP: usize = 64;

/// Waits for the next request and adds it to the empty `group` with
/// every request that arrived while the last group was committing, without
/// waiting for more. False once the subscription has ended.
async fn next_group(
    requests: &mut async_nats::Subscriber,
    group: &mut Vec<async_nats::Message>,
) -> bool {
    let Some(first) = requests.next().await else {
        return false;
    };
    group.push(first);
    while group.len() < MAX_GROUP {
        match requests.next().now_or_never() {
            Some(Some(message)) => group.push(message),
            _ => break,
        }
    }
    true
}

/// A floor's append: the request's payload as one event at `version + 1`
/// of `stream`, under a command id of its own.
fn one_event(stream: Uuid, version: u64, message: &async_nats::Message) -> AppendRequest {
    AppendRequest {
        stream_id: stream,
        stream_type: "conversation".into(),
        expected: ExpectedVersion::Exact(version),
        events: vec![NewEvent::new(
            "message_appended",
            1,
            message.payload.to_vec(),
        )],
        metadata: Metadata {
            command_id: Some(Uuid::now_v7()),
            ..Metadata::default()
        },
    }
}

/// Starts the responder on `subject`. It holds one connection for its whole
/// life (as the event store's committers do) and ends when the
/// subscription does or the task is aborted.
pub(super) async fn spawn_grouped_insert(
    client: async_nats::Client,
    subject: String,
    pool: PgPool,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    let mut connection = pool.acquire().await?;
    let mut requests = client.subscribe(subject).await?;
    Ok(tokio::spawn(async move {
        let stream = Uuid::now_v7();
        let mut version = 0i64;
        let mut group = Vec::with_capacity(MAX_GROUP);
        while next_group(&mut requests, &mut group).await {
            let versions: Vec<i64> = (1..=group.len() as i64).map(|i| version + i).collect();
            version += group.len() as i64;
            let ids: Vec<Uuid> = group.iter().map(|_| Uuid::now_v7()).collect();
            let payloads: Vec<&[u8]> = group.iter().map(|m| m.payload.as_ref()).collect();
            sqlx::query(
                "INSERT INTO bench_bare_events
                    (stream_id, version, event_id, stream_type, event_type, schema_version, payload, metadata)
                 SELECT $1, v, id, 'conversation', 'message_appended', 1, p, '{}'
                   FROM unnest($2::bigint[], $3::uuid[], $4::bytea[]) AS t(v, id, p)",
            )
            .bind(stream)
            .bind(&versions)
            .bind(&ids)
            .bind(&payloads)
            .execute(&mut *connection)
            .await?;
            for message in group.drain(..) {
                if let Some(reply) = message.reply {
                    client.publish(reply, bytes::Bytes::new()).await?;
                }
            }
        }
        Ok(())
    }))
}

/// The same round trip with the event store's own append in place of the
/// bare row: each request appends one event through the store's group
/// commit (its statement, indexes and checks), to one of as many streams as
/// there are agents, as a conversation per agent does. Between this and
/// the bare floor is the store's cost; between this and a command is the
/// service's own work.
pub(super) async fn spawn_store_append(
    client: async_nats::Client,
    subject: String,
    store: eventstore::EventStore,
    streams: usize,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    use std::sync::Mutex;

    let mut requests = client.subscribe(subject).await?;
    let free: Arc<Mutex<Vec<(Uuid, u64)>>> = Arc::new(Mutex::new(
        (0..streams).map(|_| (Uuid::now_v7(), 0)).collect(),
    ));
    Ok(tokio::spawn(async move {
        while let Some(message) = requests.next().await {
            let taken = free.lock().ok().and_then(|mut free| free.pop());
            let Some((stream, version)) = taken else {
                anyhow::bail!("more requests in flight than streams");
            };
            let (store, client, free) = (store.clone(), client.clone(), Arc::clone(&free));
            tokio::spawn(async move {
                let request = one_event(stream, version, &message);
                // Only a stored append is answered: a failed one leaves its
                // requester to time out, and the bench to fail, rather than
                // count as done.
                let appended = store.append(&request).await;
                let version = appended.as_ref().map_or(version, |outcome| outcome.version);
                if let Ok(mut free) = free.lock() {
                    free.push((stream, version));
                }
                match (appended, message.reply) {
                    (Ok(_), Some(reply)) => {
                        let _ = client.publish(reply, bytes::Bytes::new()).await;
                    }
                    (Err(error), _) => tracing::warn!(%error, "the store floor's append failed"),
                    (Ok(_), None) => {}
                }
            });
        }
        Ok(())
    }))
}

/// Groups written and the rows in them, for the mean group size.
#[derive(Default)]
pub(super) struct Groups {
    groups: AtomicU64,
    rows: AtomicU64,
}

impl Groups {
    fn add(&self, rows: usize) {
        self.groups.fetch_add(1, Ordering::Relaxed);
        self.rows.fetch_add(rows as u64, Ordering::Relaxed);
    }

    pub(super) fn mean(&self) -> f64 {
        let groups = self.groups.load(Ordering::Relaxed);
        if groups == 0 {
            0.0
        } else {
            self.rows.load(Ordering::Relaxed) as f64 / groups as f64
        }
    }
}

/// Between the two floors: the first floor's one loop (what arrived while
/// the last group committed, written together, then every answer), but
/// each group written by the event store's own batch write
/// ([`eventstore::EventStore::append_batch`]: here one statement of its
/// exact set append, with its probes and indexes), one stream per request
/// as the agents' conversations are. Against [`spawn_store_append`] it
/// separates the statement's cost from the cost of the path around it (a
/// task, a channel and an answer per request, and the batches that path
/// gathers).
pub(super) async fn spawn_set_append_loop(
    client: async_nats::Client,
    subject: String,
    store: eventstore::EventStore,
) -> anyhow::Result<(JoinHandle<anyhow::Result<()>>, Arc<Groups>)> {
    let mut requests = client.subscribe(subject).await?;
    let groups = Arc::new(Groups::default());
    let counted = Arc::clone(&groups);
    let task = tokio::spawn(async move {
        // A group's i-th request goes to stream i, so no stream is named
        // twice in a statement (one round of the batch write).
        let mut streams: Vec<(Uuid, u64)> = (0..MAX_GROUP).map(|_| (Uuid::now_v7(), 0)).collect();
        let mut group = Vec::with_capacity(MAX_GROUP);
        while next_group(&mut requests, &mut group).await {
            let appends: Vec<AppendRequest> = group
                .iter()
                .zip(&streams)
                .map(|(message, &(stream, version))| one_event(stream, version, message))
                .collect();
            for outcome in store.append_batch(&appends).await {
                if let Err(error) = outcome {
                    anyhow::bail!("the set-append floor's append failed: {error}");
                }
            }
            counted.add(group.len());
            for ((_, version), message) in streams.iter_mut().zip(group.drain(..)) {
                *version += 1;
                if let Some(reply) = message.reply {
                    client.publish(reply, bytes::Bytes::new()).await?;
                }
            }
        }
        Ok(())
    });
    Ok((task, groups))
}
