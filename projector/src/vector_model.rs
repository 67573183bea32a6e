//! The vector projection: the texts the copilot searches by meaning,
//! embedded and kept in the vector store's four collections.
//!
//! * conversations: every message, with its conversation, owner and role
//!   (the message text itself stays in PostgreSQL, behind row-level
//!   security); removed when the conversation is deleted or its owner
//!   deleted or forgotten;
//! * incident_knowledge: each resolved incident (title, description, root
//!   cause, remediation), removed again if it is reopened;
//! * documentation: runbooks (while not archived) and indexed documents;
//! * code: indexed code units.
//!
//! Point ids are the source's id (message, incident, runbook, knowledge
//! item), so applying an event again overwrites the same point: the
//! projection is at least once and idempotent. Every point carries its
//! lineage: embedder model and version, source event id and position.
//! Within a batch, operations on one point are coalesced to the last, and
//! filter deletions (erasure of a user) are applied in log order.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use domain::{conversation, incident, knowledge, runbook, user};
use eventstore::{EventStore, Position, RecordedEvent};
use infra::circuit::{CircuitBreaker, CircuitState};
use serde_json::{json, Map, Value};
use uuid::Uuid;
use vectors::{Collection, EmbedError, Embedder, Filter, Point, VectorError, VectorStore};

use crate::embedding_cache;
use crate::events::{decode, DomainEvent};

/// Text stored in a point's payload for display (messages excepted).
const SNIPPET_CHARS: usize = 1_000;
/// Conversation owners remembered between batches.
const OWNER_CACHE: usize = 200_000;

pub use vectors::StoreOpener;

/// Opens the embedded store under `dir` on first use and hands the same
/// instance to every later caller in this process.
pub fn edge_opener(dir: std::path::PathBuf, dimension: usize) -> StoreOpener {
    let cell: Arc<tokio::sync::OnceCell<Arc<dyn VectorStore>>> = Arc::default();
    Arc::new(move || {
        let (cell, dir) = (cell.clone(), dir.clone());
        Box::pin(async move {
            cell.get_or_try_init(|| async {
                let store = vectors::edge::EdgeStore::open(&dir, dimension).await?;
                tracing::info!(dir = %dir.display(), "embedded vector store open");
                Ok::<_, VectorError>(Arc::new(store) as Arc<dyn VectorStore>)
            })
            .await
            .cloned()
        })
    })
}

/// Hands out `store` (a store opened elsewhere, or a Qdrant server client).
pub fn opener_of(store: Arc<dyn VectorStore>) -> StoreOpener {
    Arc::new(move || {
        let store = store.clone();
        Box::pin(async move { Ok(store) })
    })
}

#[derive(Clone)]
pub struct VectorConfig {
    pub store: StoreOpener,
    pub embedder: Arc<dyn Embedder>,
    /// Shared circuit breakers for the embedder and the store, if set.
    pub breakers: Option<BreakerConfig>,
}

impl fmt::Debug for VectorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VectorConfig")
            .field("embedder", &self.embedder.info().name)
            .field("breakers", &self.breakers)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct BreakerConfig {
    pub redis_url: infra::redis_conn::RedisTarget,
    pub prefix: String,
    pub threshold: u32,
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum VectorSinkError {
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error(transparent)]
    Store(#[from] VectorError),
    #[error("circuit breaker of the {0} is open")]
    CircuitOpen(&'static str),
    #[error("event store: {0}")]
    EventStore(#[from] eventstore::StoreError),
    #[error("Redis (circuit breakers): {0}")]
    Redis(#[from] redis::RedisError),
    #[error("embedding cache: {0}")]
    EmbeddingCache(#[from] sqlx::Error),
}

/// What one event does to the collections.
enum Op {
    Upsert(Pending),
    Delete(Collection, Uuid),
    /// Deletes every point the filter matches, at this place in the log.
    DeleteMatching(Collection, Filter),
    /// Deletes the kept embeddings of a forgotten user's texts.
    ForgetEmbeddings(Uuid),
}

struct Pending {
    collection: Collection,
    id: Uuid,
    /// The client's own embedding, when it has the store's dimension.
    vector: Option<Vec<f32>>,
    text: String,
    payload: Map<String, Value>,
}

enum Last {
    Upsert(Pending),
    Delete,
}

/// A runbook's searchable text, folded from its events.
#[derive(Default, Clone)]
struct RunbookText {
    name: String,
    description: String,
    steps: Vec<String>,
    tags: Vec<String>,
}

/// The vector projection's checkpoint and lease name.
pub const NAME: &str = "vectors";

pub struct VectorModel {
    config: VectorConfig,
    store: Arc<dyn VectorStore>,
    events: EventStore,
    owners: HashMap<Uuid, Uuid>,
    runbooks: HashMap<Uuid, RunbookText>,
    forgotten: HashSet<Uuid>,
    breakers: Option<Breakers>,
}

struct Breakers {
    embedder: CircuitBreaker,
    store: CircuitBreaker,
}

impl VectorModel {
    /// Opens the store; from the start of the log (a first run, or a reset
    /// by `replay --projection vectors`) the collections are emptied first,
    /// so a rebuild leaves nothing the log does not account for.
    pub async fn open(
        config: &VectorConfig,
        events: &EventStore,
        from: Position,
    ) -> Result<Self, VectorSinkError> {
        let breakers = match &config.breakers {
            Some(b) => {
                let client = b.redis_url.client()?;
                let conn = redis::aio::ConnectionManager::new(client).await?;
                let make = |service| {
                    CircuitBreaker::new(conn.clone(), &b.prefix, service, b.threshold, b.timeout)
                };
                Some(Breakers {
                    embedder: make("embedder"),
                    store: make("vector_store"),
                })
            }
            None => None,
        };
        let store = (config.store)().await?;
        let model = VectorModel {
            config: config.clone(),
            store,
            events: events.clone(),
            owners: HashMap::new(),
            runbooks: HashMap::new(),
            forgotten: forgotten_users(events).await?,
            breakers,
        };
        model
            .guarded(Service::Store, || model.store.ensure_collections())
            .await?;
        if from == Position::START {
            for collection in Collection::ALL {
                model
                    .guarded(Service::Store, || model.store.clear(collection))
                    .await?;
            }
            tracing::info!("vector collections emptied: projecting from the start of the log");
        }
        Ok(model)
    }

    /// Applies `events` to the collections.
    pub async fn write(&mut self, events: &[RecordedEvent]) -> Result<(), VectorSinkError> {
        let mut pending: BTreeMap<(Collection, Uuid), Last> = BTreeMap::new();
        for event in events {
            // Events this build cannot decode are reported by the SQL
            // projections as poison; here they have nothing to embed.
            let Ok(typed) = decode(event) else { continue };
            for op in self.ops(event, &typed).await? {
                match op {
                    Op::Upsert(p) => {
                        pending.insert((p.collection, p.id), Last::Upsert(p));
                    }
                    Op::Delete(collection, id) => {
                        pending.insert((collection, id), Last::Delete);
                    }
                    Op::DeleteMatching(collection, filter) => {
                        self.flush(std::mem::take(&mut pending)).await?;
                        let store = &self.store;
                        self.guarded(Service::Store, move || {
                            store.delete_matching(collection, filter)
                        })
                        .await?;
                    }
                    Op::ForgetEmbeddings(owner) => {
                        self.flush(std::mem::take(&mut pending)).await?;
                        embedding_cache::forget(self.events.pool(), owner).await?;
                    }
                }
            }
        }
        self.flush(pending).await?;
        self.guarded(Service::Store, || self.store.flush()).await
    }

    async fn ops(
        &mut self,
        event: &RecordedEvent,
        typed: &DomainEvent,
    ) -> Result<Vec<Op>, VectorSinkError> {
        let id = event.stream_id;
        Ok(match typed {
            DomainEvent::Conversation(e) => match e {
                conversation::Event::Started(s) => {
                    self.remember_owner(id, s.owner_id.into());
                    Vec::new()
                }
                conversation::Event::MessageAppended(m) => {
                    let owner = self.owner_of(id).await?;
                    let Some(text) = m.content.as_ref() else {
                        return Ok(Vec::new());
                    };
                    if owner.is_some_and(|o| self.forgotten.contains(&o)) {
                        return Ok(Vec::new());
                    }
                    let mut payload = Map::new();
                    payload.insert("conversation_id".into(), json!(id));
                    payload.insert("message_id".into(), json!(Uuid::from(m.message_id)));
                    payload.insert("owner_user_id".into(), json!(owner));
                    payload.insert(
                        "role".into(),
                        serde_json::to_value(m.role).unwrap_or(Value::Null),
                    );
                    payload.insert("sequence".into(), json!(m.sequence));
                    payload.insert("created_at".into(), json!(m.appended_at));
                    vec![Op::Upsert(self.pending(
                        Collection::Conversations,
                        message_point_id(id, m.message_id.into()),
                        text.clone(),
                        m.embedding.as_ref(),
                        payload,
                    ))]
                }
                conversation::Event::Deleted(_) => vec![Op::DeleteMatching(
                    Collection::Conversations,
                    Filter::equals("conversation_id", id.to_string()),
                )],
                _ => Vec::new(),
            },
            DomainEvent::User(user::Event::Forgotten(_) | user::Event::Deleted(_)) => {
                let mut ops = vec![Op::DeleteMatching(
                    Collection::Conversations,
                    Filter::equals("owner_user_id", id.to_string()),
                )];
                if matches!(typed, DomainEvent::User(user::Event::Forgotten(_))) {
                    self.forgotten.insert(id);
                    ops.push(Op::ForgetEmbeddings(id));
                }
                ops
            }
            DomainEvent::Incident(incident::Event::Resolved(r)) => {
                let text = format!(
                    "{}\n{}\nRoot cause: {}\nRemediation: {}",
                    r.title,
                    r.description,
                    r.root_cause,
                    r.remediation_steps.join("; ")
                );
                let mut payload = Map::new();
                payload.insert("incident_id".into(), json!(id));
                payload.insert("title".into(), json!(r.title));
                payload.insert(
                    "severity".into(),
                    serde_json::to_value(r.severity).unwrap_or(Value::Null),
                );
                payload.insert("services".into(), json!(r.affected_services));
                payload.insert("resolved_at".into(), json!(r.at));
                payload.insert(
                    "resolution".into(),
                    json!({
                        "root_cause": r.root_cause,
                        "remediation_steps": r.remediation_steps,
                        "time_to_resolve_ms": r.time_to_resolve_ms,
                    }),
                );
                payload.insert("text".into(), json!(snippet(&text)));
                vec![Op::Upsert(self.pending(
                    Collection::IncidentKnowledge,
                    id,
                    text,
                    None,
                    payload,
                ))]
            }
            DomainEvent::Incident(incident::Event::Reopened(_)) => {
                vec![Op::Delete(Collection::IncidentKnowledge, id)]
            }
            DomainEvent::Runbook(e) => match e {
                runbook::Event::Created(c) => {
                    let doc = RunbookText {
                        name: c.name.clone(),
                        description: c.description.clone(),
                        steps: c.steps.clone(),
                        tags: c.tags.clone(),
                    };
                    self.runbooks.insert(id, doc.clone());
                    vec![Op::Upsert(self.runbook_point(id, &doc, c.version))]
                }
                runbook::Event::Updated(u) => {
                    let mut doc = self.runbook_before(id, event.version).await?;
                    if let Some(v) = &u.name {
                        doc.name.clone_from(v);
                    }
                    if let Some(v) = &u.description {
                        doc.description.clone_from(v);
                    }
                    if let Some(v) = &u.steps {
                        doc.steps.clone_from(v);
                    }
                    if let Some(v) = &u.tags {
                        doc.tags.clone_from(v);
                    }
                    self.runbooks.insert(id, doc.clone());
                    vec![Op::Upsert(self.runbook_point(id, &doc, u.version))]
                }
                runbook::Event::Archived(_) => {
                    self.runbooks.remove(&id);
                    vec![Op::Delete(Collection::Documentation, id)]
                }
                _ => Vec::new(),
            },
            DomainEvent::Knowledge(e) => match e {
                knowledge::Event::CodeIndexed(c) => {
                    let text = match &c.function_name {
                        Some(f) => format!("{} {f}\n{}", c.file_path, c.content),
                        None => format!("{}\n{}", c.file_path, c.content),
                    };
                    let mut payload = Map::new();
                    payload.insert("kind".into(), json!("code"));
                    payload.insert("project_id".into(), json!(Uuid::from(c.project_id)));
                    payload.insert("file_path".into(), json!(c.file_path));
                    payload.insert("function_name".into(), json!(c.function_name));
                    payload.insert("language".into(), json!(c.language));
                    payload.insert("revision".into(), json!(c.revision));
                    payload.insert("text".into(), json!(snippet(&c.content)));
                    vec![Op::Upsert(self.pending(
                        Collection::Code,
                        id,
                        text,
                        c.embedding.as_ref(),
                        payload,
                    ))]
                }
                knowledge::Event::DocumentIndexed(d) => {
                    let heading = match &d.section {
                        Some(s) => format!("{} — {s}", d.title),
                        None => d.title.clone(),
                    };
                    let text = format!("{heading}\n{}", d.content);
                    let mut payload = Map::new();
                    payload.insert("kind".into(), json!("document"));
                    payload.insert("source_id".into(), json!(id));
                    payload.insert("title".into(), json!(d.title));
                    payload.insert("section".into(), json!(d.section));
                    payload.insert("url".into(), json!(d.url));
                    payload.insert("revision".into(), json!(d.revision));
                    payload.insert("text".into(), json!(snippet(&d.content)));
                    vec![Op::Upsert(self.pending(
                        Collection::Documentation,
                        id,
                        text,
                        d.embedding.as_ref(),
                        payload,
                    ))]
                }
                // The id is the item's in either collection: removing it from
                // both does not depend on the event naming the right kind.
                knowledge::Event::Removed(_) => vec![
                    Op::Delete(Collection::Code, id),
                    Op::Delete(Collection::Documentation, id),
                ],
            },
            _ => Vec::new(),
        }
        .into_iter()
        .map(|op| with_lineage(op, event))
        .collect())
    }

    fn pending(
        &self,
        collection: Collection,
        id: Uuid,
        text: String,
        client_vector: Option<&Vec<f32>>,
        payload: Map<String, Value>,
    ) -> Pending {
        let vector = client_vector
            .filter(|v| v.len() == self.store.dimension())
            .cloned();
        Pending {
            collection,
            id,
            vector,
            text,
            payload,
        }
    }

    fn runbook_point(&self, id: Uuid, doc: &RunbookText, version: u32) -> Pending {
        let text = format!(
            "{}\n{}\nSteps: {}",
            doc.name,
            doc.description,
            doc.steps.join("; ")
        );
        let mut payload = Map::new();
        payload.insert("kind".into(), json!("runbook"));
        payload.insert("source_id".into(), json!(id));
        payload.insert("title".into(), json!(doc.name));
        payload.insert("tags".into(), json!(doc.tags));
        payload.insert("revision".into(), json!(version));
        payload.insert("text".into(), json!(snippet(&text)));
        self.pending(Collection::Documentation, id, text, None, payload)
    }

    fn remember_owner(&mut self, conversation: Uuid, owner: Uuid) {
        if self.owners.len() >= OWNER_CACHE {
            self.owners.clear();
        }
        self.owners.insert(conversation, owner);
    }

    /// The owner of a conversation: from its `conversation_started` event.
    async fn owner_of(&mut self, conversation_id: Uuid) -> Result<Option<Uuid>, VectorSinkError> {
        if let Some(owner) = self.owners.get(&conversation_id) {
            return Ok(Some(*owner));
        }
        let first = self.events.read_stream_from(conversation_id, 1, 1).await?;
        let owner = first.first().and_then(|e| match decode(e) {
            Ok(DomainEvent::Conversation(conversation::Event::Started(s))) => {
                Some(s.owner_id.into())
            }
            _ => None,
        });
        if let Some(owner) = owner {
            self.remember_owner(conversation_id, owner);
        }
        Ok(owner)
    }

    /// A runbook's text before the event at `version`: remembered, or
    /// folded from the stream.
    async fn runbook_before(
        &mut self,
        id: Uuid,
        version: u64,
    ) -> Result<RunbookText, VectorSinkError> {
        if let Some(doc) = self.runbooks.get(&id) {
            return Ok(doc.clone());
        }
        let mut doc = RunbookText::default();
        let limit = usize::try_from(version.saturating_sub(1)).unwrap_or(usize::MAX);
        for e in self.events.read_stream_from(id, 1, limit).await? {
            match decode(&e) {
                Ok(DomainEvent::Runbook(runbook::Event::Created(c))) => {
                    doc = RunbookText {
                        name: c.name,
                        description: c.description,
                        steps: c.steps,
                        tags: c.tags,
                    };
                }
                Ok(DomainEvent::Runbook(runbook::Event::Updated(u))) => {
                    if let Some(v) = u.name {
                        doc.name = v;
                    }
                    if let Some(v) = u.description {
                        doc.description = v;
                    }
                    if let Some(v) = u.steps {
                        doc.steps = v;
                    }
                    if let Some(v) = u.tags {
                        doc.tags = v;
                    }
                }
                _ => {}
            }
        }
        Ok(doc)
    }

    /// Embeds what needs it, then writes the batch's last operation of
    /// every point, grouped by collection.
    async fn flush(
        &self,
        pending: BTreeMap<(Collection, Uuid), Last>,
    ) -> Result<(), VectorSinkError> {
        if pending.is_empty() {
            return Ok(());
        }
        let mut upserts: Vec<Pending> = Vec::new();
        let mut deletes: BTreeMap<Collection, Vec<Uuid>> = BTreeMap::new();
        for ((collection, id), last) in pending {
            match last {
                Last::Upsert(p) => upserts.push(p),
                Last::Delete => deletes.entry(collection).or_default().push(id),
            }
        }
        let info = self.config.embedder.info().clone();
        // Texts the configured model embedded before come from the cache;
        // only the others run the model (once per distinct text).
        let wanted: Vec<embedding_cache::Wanted> = upserts
            .iter()
            .filter(|p| p.vector.is_none())
            .map(|p| embedding_cache::Wanted::new(&p.text, owner_of_point(p)))
            .collect();
        let mut vectors = embedding_cache::load(self.events.pool(), &info, &wanted).await?;
        // Each distinct text once (a batch may repeat one).
        let mut seen = HashSet::new();
        let missing: Vec<&embedding_cache::Wanted> = wanted
            .iter()
            .filter(|w| !vectors.contains_key(&w.hash) && seen.insert(w.hash))
            .collect();
        if !missing.is_empty() {
            let texts = missing.iter().map(|w| w.text.clone()).collect();
            let embedded = self.guarded_embed(texts).await?;
            embedding_cache::store(self.events.pool(), &info, &missing, &embedded).await?;
            for (w, v) in missing.iter().zip(embedded) {
                vectors.insert(w.hash, v);
            }
        }
        let mut points: BTreeMap<Collection, Vec<Point>> = BTreeMap::new();
        let mut wanted_in_order = wanted.iter();
        for mut p in upserts {
            let (vector, model, version) = match p.vector.take() {
                Some(v) => (v, "client".to_owned(), String::new()),
                None => {
                    let found = wanted_in_order.next().and_then(|w| vectors.get(&w.hash));
                    let Some(v) = found.cloned() else {
                        return Err(EmbedError::BadAnswer("fewer vectors than texts".into()).into());
                    };
                    (v, info.name.clone(), info.version.clone())
                }
            };
            p.payload.insert("embedder_model".into(), json!(model));
            p.payload.insert("embedder_version".into(), json!(version));
            points.entry(p.collection).or_default().push(Point {
                id: p.id,
                vector,
                payload: p.payload,
            });
        }
        for (collection, batch) in points {
            self.guarded(Service::Store, move || self.store.upsert(collection, batch))
                .await?;
        }
        for (collection, ids) in deletes {
            self.guarded(Service::Store, move || self.store.delete(collection, ids))
                .await?;
        }
        Ok(())
    }

    async fn guarded_embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, VectorSinkError> {
        let count = texts.len();
        let vectors = self
            .guarded(Service::Embedder, move || self.config.embedder.embed(texts))
            .await?;
        if vectors.len() != count {
            return Err(EmbedError::BadAnswer(format!(
                "{} vectors for {count} texts",
                vectors.len()
            ))
            .into());
        }
        Ok(vectors)
    }

    /// Runs `call` through the service's breaker: refused while it is open,
    /// and every outcome recorded. Without Redis the call simply runs.
    async fn guarded<T, E, F, Fut>(&self, service: Service, call: F) -> Result<T, VectorSinkError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
        E: Into<VectorSinkError>,
    {
        let Some(breakers) = &self.breakers else {
            return call().await.map_err(Into::into);
        };
        let breaker = match service {
            Service::Embedder => &breakers.embedder,
            Service::Store => &breakers.store,
        };
        let open = crate::metrics::metrics()
            .circuit_open
            .with_label_values(&[service.name()]);
        match breaker.allow().await {
            Ok((true, _)) => {}
            Ok((false, _)) => {
                open.set(1);
                return Err(VectorSinkError::CircuitOpen(service.name()));
            }
            // The breaker's own store is down: fail open, the call decides.
            Err(e) => {
                tracing::warn!(service = service.name(), error = %e, "circuit breaker unavailable")
            }
        }
        let result = call().await.map_err(Into::into);
        let recorded = match &result {
            Ok(_) => breaker.record_success().await,
            Err(_) => breaker.record_failure().await,
        };
        match recorded {
            Ok(CircuitState::Open) => {
                open.set(1);
                tracing::warn!(service = service.name(), "circuit breaker open");
            }
            Ok(_) => open.set(0),
            Err(e) => {
                tracing::warn!(service = service.name(), error = %e, "circuit breaker unavailable")
            }
        }
        result
    }
}

#[derive(Clone, Copy)]
enum Service {
    Embedder,
    Store,
}

impl Service {
    fn name(self) -> &'static str {
        match self {
            Service::Embedder => "embedder",
            Service::Store => "vector_store",
        }
    }
}

fn with_lineage(op: Op, event: &RecordedEvent) -> Op {
    match op {
        Op::Upsert(mut p) => {
            p.payload
                .insert("source_event_id".into(), json!(event.event_id));
            p.payload
                .insert("source_position".into(), json!(event.position.to_string()));
            // The seed's `indexed_at`: when the log recorded what this point
            // holds, so a rebuild writes the same time again.
            if p.collection == Collection::Documentation {
                p.payload
                    .insert("indexed_at".into(), json!(event.recorded_at));
            }
            Op::Upsert(p)
        }
        other => other,
    }
}

/// The user whose personal text a point holds (a message's owner).
fn owner_of_point(p: &Pending) -> Option<Uuid> {
    p.payload
        .get("owner_user_id")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
}

fn snippet(text: &str) -> String {
    text.chars().take(SNIPPET_CHARS).collect()
}

/// Users forgotten anywhere in the log: their messages get no points, even
/// when a rebuild meets the messages before the forget.
async fn forgotten_users(events: &EventStore) -> Result<HashSet<Uuid>, VectorSinkError> {
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT DISTINCT stream_id FROM events WHERE stream_type = 'user' AND event_type = 'user_forgotten'",
    )
    .fetch_all(events.pool())
    .await
    .map_err(eventstore::StoreError::from)?;
    Ok(ids.into_iter().collect())
}

/// The point ids each collection should hold, derived independently of
/// this projection: from the relational read model in `schema` (messages,
/// incidents, runbooks) and the log (indexed knowledge). Equal to the
/// store's ids when both projections are at the same position.
pub async fn source_ids(
    pool: &sqlx::PgPool,
    schema: &str,
) -> Result<BTreeMap<Collection, Vec<Uuid>>, sqlx::Error> {
    let queries = [
        (
            Collection::Conversations,
            format!(
                "SELECT m.conversation_id, m.id FROM {schema}.messages m
                   JOIN {schema}.conversations c ON c.id = m.conversation_id
                   JOIN {schema}.users u ON u.id = c.user_id
                  WHERE c.status <> 'deleted' AND u.deleted_at IS NULL AND u.forgotten_at IS NULL"
            ),
        ),
        (
            Collection::IncidentKnowledge,
            format!("SELECT id FROM {schema}.incidents WHERE status IN ('resolved', 'closed')"),
        ),
        (
            Collection::Documentation,
            format!(
                "SELECT id FROM {schema}.runbooks WHERE archived_at IS NULL
                 UNION ALL
                 SELECT stream_id FROM (
                   SELECT DISTINCT ON (stream_id) stream_id, event_type FROM events
                    WHERE stream_type = 'knowledge' ORDER BY stream_id, version DESC) last
                  WHERE event_type = 'document_indexed'"
            ),
        ),
        (
            Collection::Code,
            "SELECT stream_id FROM (
               SELECT DISTINCT ON (stream_id) stream_id, event_type FROM events
                WHERE stream_type = 'knowledge' ORDER BY stream_id, version DESC) last
              WHERE event_type = 'code_indexed'"
                .to_owned(),
        ),
    ];
    let mut out = BTreeMap::new();
    for (collection, sql) in queries {
        let mut ids: Vec<Uuid> = if collection == Collection::Conversations {
            let messages: Vec<(Uuid, Uuid)> = sqlx::query_as(&sql).fetch_all(pool).await?;
            messages
                .into_iter()
                .map(|(conversation, message)| message_point_id(conversation, message))
                .collect()
        } else {
            sqlx::query_scalar(&sql).fetch_all(pool).await?
        };
        ids.sort_unstable();
        out.insert(collection, ids);
    }
    Ok(out)
}

/// The point of message `message` of `conversation`: a client chooses a
/// message's id, unique only within its conversation, so the point's id is
/// derived from both (UUIDv5 in the conversation's namespace), and a
/// message id reused in another conversation is another point.
pub fn message_point_id(conversation: Uuid, message: Uuid) -> Uuid {
    Uuid::new_v5(&conversation, message.as_bytes())
}
