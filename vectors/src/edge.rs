//! The embedded adapter: one Qdrant Edge shard per collection, persisted
//! under a directory of its own (`COPILOT_VECTOR_DIR`).
//!
//! Qdrant Edge has no background optimiser: new points land in a plain
//! (exhaustively searched) segment, and this adapter runs the optimisers
//! (which build the HNSW index and merge segments) once enough points are
//! new. Every engine call blocks, so each runs on the blocking pool.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use qdrant_edge::{
    Condition as EdgeCondition, CountRequest, CreateIndex, Distance, EdgeConfig,
    EdgeOptimizersConfig, EdgeShard, EdgeVectorParams, FieldCondition, FieldIndexOperations,
    Filter as EdgeFilter, HnswIndexConfig, JsonPath, Match, NamedQuery, PayloadFieldSchema,
    PayloadSchemaType, PointId, PointInsertOperations, PointOperations, PointStruct, QueryEnum,
    QueryRequest, ScoredPoint, ScoringQuery, ScrollRequest, SearchParams, UpdateOperation,
    ValueVariants, VectorInternal, WithPayloadInterface, WithVector,
};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::collection::OptimizerSettings;
use crate::store::check_dimension;
use crate::{Collection, Condition, Filter, Hit, Point, SearchRequest, VectorError, VectorStore};

/// The seed's HNSW parameters.
const HNSW_M: usize = 16;
const HNSW_EF_CONSTRUCT: usize = 100;
const HNSW_FULL_SCAN_THRESHOLD_KB: usize = 10_000;
/// New points after which the optimisers run (until then new points sit in
/// a plain segment, searched exhaustively: about a millisecond for 10k).
const OPTIMIZE_AFTER_POINTS: usize = 10_000;
/// The beam width of a search when the request does not set one: recall@10
/// above 0.95 on 100k points, at well under a millisecond (see the bench).
const DEFAULT_EF: usize = 128;

pub struct EdgeStore {
    dir: PathBuf,
    dimension: usize,
    shards: HashMap<Collection, Arc<Shard>>,
}

struct Shard {
    collection: Collection,
    engine: EdgeShard,
    new_points: AtomicUsize,
    /// Written to since the last flush.
    new_since_flush: AtomicBool,
}

impl EdgeStore {
    /// Opens (or creates) the four collections under `dir`.
    pub async fn open(dir: &Path, dimension: usize) -> Result<EdgeStore, VectorError> {
        let dir = dir.to_path_buf();
        let opened_dir = dir.clone();
        let shards = blocking(move || {
            std::fs::create_dir_all(&opened_dir)
                .map_err(|e| VectorError::Unavailable(format!("{}: {e}", opened_dir.display())))?;
            let mut shards = HashMap::new();
            for collection in Collection::ALL {
                let shard = open_shard(&opened_dir.join(collection.name()), collection, dimension)?;
                shards.insert(collection, Arc::new(shard));
            }
            Ok(shards)
        })
        .await?;
        Ok(EdgeStore {
            dir,
            dimension,
            shards,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn shard(&self, collection: Collection) -> Arc<Shard> {
        // Every collection is opened in `open`.
        Arc::clone(&self.shards[&collection])
    }

    /// Runs the optimisers now (builds every pending HNSW index).
    pub async fn optimize(&self, collection: Collection) -> Result<(), VectorError> {
        let shard = self.shard(collection);
        blocking(move || shard.optimize()).await
    }
}

fn open_shard(path: &Path, collection: Collection, dimension: usize) -> Result<Shard, VectorError> {
    let fail = |e: qdrant_edge::OperationError| engine(collection, e);
    let config = edge_config(collection, dimension);
    let engine = if path.join("edge_config.json").exists() || path.join("segments").exists() {
        let loaded = EdgeShard::load(path, None).map_err(fail)?;
        let stored = loaded
            .config()
            .vectors
            .get("")
            .map(|v| v.size)
            .unwrap_or(dimension);
        if stored != dimension {
            return Err(VectorError::Dimension {
                expected: dimension,
                got: stored,
            });
        }
        loaded
    } else {
        std::fs::create_dir_all(path)
            .map_err(|e| VectorError::Unavailable(format!("{}: {e}", path.display())))?;
        EdgeShard::new(path, config).map_err(fail)?
    };
    for field in collection.indexed_fields() {
        let index =
            UpdateOperation::FieldIndexOperation(FieldIndexOperations::CreateIndex(CreateIndex {
                field_name: json_path(collection, field)?,
                field_schema: Some(PayloadFieldSchema::FieldType(PayloadSchemaType::Keyword)),
            }));
        engine.update(index).map_err(fail)?;
    }
    Ok(Shard {
        collection,
        engine,
        new_points: AtomicUsize::new(0),
        new_since_flush: AtomicBool::new(false),
    })
}

/// The layout a new shard is created with (an existing shard keeps the one
/// it was created with: `rebuild vectors` on a fresh directory applies a
/// changed one). Vectors and payload of the conversations collection are
/// memory-mapped from disk; the HNSW graphs stay in memory everywhere, as the
/// seed says. Edge has no background flusher, so the seed's flush interval
/// does not apply: the projector flushes after every batch it applies.
fn edge_config(collection: Collection, dimension: usize) -> EdgeConfig {
    let hnsw = HnswIndexConfig {
        m: HNSW_M,
        ef_construct: HNSW_EF_CONSTRUCT,
        full_scan_threshold: HNSW_FULL_SCAN_THRESHOLD_KB,
        on_disk: Some(false),
        ..HnswIndexConfig::default()
    };
    let vector = EdgeVectorParams::builder(dimension, Distance::Cosine)
        .hnsw_config(hnsw)
        .on_disk(collection.on_disk())
        .build();
    let seed = OptimizerSettings::seed(dimension);
    EdgeConfig::builder()
        .vector("", vector)
        .on_disk_payload(collection.on_disk())
        .hnsw_config(hnsw)
        .optimizers(EdgeOptimizersConfig {
            deleted_threshold: Some(seed.deleted_threshold),
            max_segment_size: Some(kb(seed.max_segment_size_kb)),
            indexing_threshold: Some(kb(seed.indexing_threshold_kb)),
            ..EdgeOptimizersConfig::default()
        })
        .build()
}

fn kb(value: u64) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

fn json_path(collection: Collection, field: &str) -> Result<JsonPath, VectorError> {
    field
        .parse()
        .map_err(|_| engine(collection, format!("bad payload field name {field:?}")))
}

fn engine(collection: Collection, e: impl std::fmt::Display) -> VectorError {
    VectorError::Engine {
        collection: collection.name(),
        message: e.to_string(),
    }
}

async fn blocking<T, F>(work: F) -> Result<T, VectorError>
where
    F: FnOnce() -> Result<T, VectorError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| VectorError::Task(e.to_string()))?
}

impl Shard {
    fn update(&self, operation: UpdateOperation) -> Result<(), VectorError> {
        self.new_since_flush.store(true, Ordering::Release);
        self.engine
            .update(operation)
            .map_err(|e| engine(self.collection, e))
    }

    fn optimize(&self) -> Result<(), VectorError> {
        self.new_points.store(0, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let changed = self
            .engine
            .optimize()
            .map_err(|e| engine(self.collection, e))?;
        if changed {
            tracing::info!(
                collection = self.collection.name(),
                seconds = started.elapsed().as_secs_f64(),
                "vector index built"
            );
        }
        Ok(())
    }

    fn upsert(&self, points: Vec<Point>) -> Result<(), VectorError> {
        let count = points.len();
        let points = points
            .into_iter()
            .map(|p| {
                PointStruct::new(PointId::Uuid(p.id), p.vector, Value::Object(p.payload)).into()
            })
            .collect();
        self.update(UpdateOperation::PointOperation(
            PointOperations::UpsertPoints(PointInsertOperations::PointsList(points)),
        ))?;
        let pending = self.new_points.fetch_add(count, Ordering::Relaxed) + count;
        if pending >= OPTIMIZE_AFTER_POINTS {
            self.optimize()?;
        }
        Ok(())
    }

    fn scroll_all(
        &self,
        filter: Option<EdgeFilter>,
        with_payload: bool,
    ) -> Result<Vec<Hit>, VectorError> {
        let mut out = Vec::new();
        let mut offset = None;
        loop {
            let (records, next) = self
                .engine
                .scroll(ScrollRequest {
                    offset,
                    limit: Some(1_000),
                    filter: filter.clone(),
                    with_payload: Some(WithPayloadInterface::Bool(with_payload)),
                    with_vector: WithVector::Bool(false),
                    order_by: None,
                })
                .map_err(|e| engine(self.collection, e))?;
            for record in records {
                if let Some(id) = uuid_of(record.id) {
                    out.push(Hit {
                        id,
                        score: 1.0,
                        payload: payload_map(record.payload),
                    });
                }
            }
            match next {
                Some(next) => offset = Some(next),
                None => return Ok(out),
            }
        }
    }
}

fn uuid_of(id: PointId) -> Option<Uuid> {
    match id {
        PointId::Uuid(u) => Some(u),
        PointId::NumId(_) => None,
    }
}

fn payload_map(payload: Option<qdrant_edge::Payload>) -> Map<String, Value> {
    payload
        .map(|p| p.0.into_iter().collect())
        .unwrap_or_default()
}

fn edge_filter(collection: Collection, filter: &Filter) -> Result<Option<EdgeFilter>, VectorError> {
    if filter.is_empty() {
        return Ok(None);
    }
    let keyword = |field: &str, value: &str| -> Result<EdgeCondition, VectorError> {
        Ok(EdgeCondition::Field(FieldCondition::new_match(
            json_path(collection, field)?,
            Match::new_value(ValueVariants::String(value.to_owned())),
        )))
    };
    let mut must = Vec::with_capacity(filter.conditions.len());
    for condition in &filter.conditions {
        must.push(match condition {
            Condition::Equals { field, value } => keyword(field, value)?,
            Condition::AnyOf { field, values } => EdgeCondition::Filter(EdgeFilter {
                should: Some(
                    values
                        .iter()
                        .map(|v| keyword(field, v))
                        .collect::<Result<_, _>>()?,
                ),
                min_should: None,
                must: None,
                must_not: None,
            }),
        });
    }
    Ok(Some(EdgeFilter {
        should: None,
        min_should: None,
        must: Some(must),
        must_not: None,
    }))
}

fn hit(point: ScoredPoint) -> Option<Hit> {
    Some(Hit {
        id: uuid_of(point.id)?,
        score: point.score,
        payload: payload_map(point.payload),
    })
}

impl VectorStore for EdgeStore {
    fn kind(&self) -> &'static str {
        "edge"
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    fn ensure_collections(&self) -> BoxFuture<'_, Result<(), VectorError>> {
        // `open` created them.
        async { Ok(()) }.boxed()
    }

    fn upsert(
        &self,
        collection: Collection,
        points: Vec<Point>,
    ) -> BoxFuture<'_, Result<(), VectorError>> {
        let shard = self.shard(collection);
        let dimension = self.dimension;
        async move {
            for p in &points {
                check_dimension(dimension, &p.vector)?;
            }
            if points.is_empty() {
                return Ok(());
            }
            blocking(move || shard.upsert(points)).await
        }
        .boxed()
    }

    fn delete(
        &self,
        collection: Collection,
        ids: Vec<Uuid>,
    ) -> BoxFuture<'_, Result<(), VectorError>> {
        let shard = self.shard(collection);
        async move {
            if ids.is_empty() {
                return Ok(());
            }
            let ids = ids.into_iter().map(PointId::Uuid).collect();
            blocking(move || {
                shard.update(UpdateOperation::PointOperation(
                    PointOperations::DeletePoints { ids },
                ))
            })
            .await
        }
        .boxed()
    }

    fn delete_matching(
        &self,
        collection: Collection,
        filter: Filter,
    ) -> BoxFuture<'_, Result<(), VectorError>> {
        let shard = self.shard(collection);
        async move {
            // An empty filter would match everything: that is `clear`.
            let Some(filter) = edge_filter(collection, &filter)? else {
                return Ok(());
            };
            blocking(move || {
                shard.update(UpdateOperation::PointOperation(
                    PointOperations::DeletePointsByFilter(filter),
                ))
            })
            .await
        }
        .boxed()
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), VectorError>> {
        let shards: Vec<Arc<Shard>> = self.shards.values().cloned().collect();
        async move {
            blocking(move || {
                // Qdrant Edge does not replay its WAL into the segments when
                // it loads: writes become durable when the segments are
                // flushed (which also happens when a shard is dropped).
                for shard in shards {
                    if shard.new_since_flush.swap(false, Ordering::AcqRel) {
                        shard.engine.flush();
                    }
                }
                Ok(())
            })
            .await
        }
        .boxed()
    }

    fn clear(&self, collection: Collection) -> BoxFuture<'_, Result<(), VectorError>> {
        let shard = self.shard(collection);
        async move {
            blocking(move || {
                let ids: Vec<PointId> = shard
                    .scroll_all(None, false)?
                    .into_iter()
                    .map(|h| PointId::Uuid(h.id))
                    .collect();
                for chunk in ids.chunks(10_000) {
                    shard.update(UpdateOperation::PointOperation(
                        PointOperations::DeletePoints {
                            ids: chunk.to_vec(),
                        },
                    ))?;
                }
                shard.optimize()
            })
            .await
        }
        .boxed()
    }

    fn search(
        &self,
        collection: Collection,
        request: SearchRequest,
    ) -> BoxFuture<'_, Result<Vec<Hit>, VectorError>> {
        let shard = self.shard(collection);
        let dimension = self.dimension;
        async move {
            check_dimension(dimension, &request.vector)?;
            let query = QueryRequest {
                prefetches: Vec::new(),
                query: Some(ScoringQuery::Vector(QueryEnum::Nearest(NamedQuery {
                    query: VectorInternal::from(request.vector),
                    using: None,
                }))),
                filter: edge_filter(collection, &request.filter)?,
                score_threshold: None,
                limit: request.limit,
                offset: 0,
                params: Some(SearchParams {
                    hnsw_ef: Some(request.ef.unwrap_or(DEFAULT_EF).max(request.limit)),
                    exact: request.exact,
                    ..SearchParams::default()
                }),
                with_vector: WithVector::Bool(false),
                with_payload: WithPayloadInterface::Bool(true),
            };
            blocking(move || {
                let points = shard
                    .engine
                    .query(query)
                    .map_err(|e| engine(shard.collection, e))?;
                Ok(points.into_iter().filter_map(hit).collect())
            })
            .await
        }
        .boxed()
    }

    fn ids(&self, collection: Collection) -> BoxFuture<'_, Result<Vec<Uuid>, VectorError>> {
        let shard = self.shard(collection);
        async move {
            blocking(move || {
                let mut ids: Vec<Uuid> = shard
                    .scroll_all(None, false)?
                    .into_iter()
                    .map(|h| h.id)
                    .collect();
                ids.sort_unstable();
                Ok(ids)
            })
            .await
        }
        .boxed()
    }

    fn count(&self, collection: Collection) -> BoxFuture<'_, Result<usize, VectorError>> {
        let shard = self.shard(collection);
        async move {
            blocking(move || {
                shard
                    .engine
                    .count(CountRequest {
                        filter: None,
                        exact: true,
                    })
                    .map_err(|e| engine(shard.collection, e))
            })
            .await
        }
        .boxed()
    }

    fn get(
        &self,
        collection: Collection,
        id: Uuid,
    ) -> BoxFuture<'_, Result<Option<Hit>, VectorError>> {
        let shard = self.shard(collection);
        async move {
            blocking(move || {
                let records = shard
                    .engine
                    .retrieve(
                        &[PointId::Uuid(id)],
                        Some(WithPayloadInterface::Bool(true)),
                        None,
                    )
                    .map_err(|e| engine(shard.collection, e))?;
                Ok(records.into_iter().find_map(|r| {
                    Some(Hit {
                        id: uuid_of(r.id)?,
                        score: 1.0,
                        payload: payload_map(r.payload),
                    })
                }))
            })
            .await
        }
        .boxed()
    }
}
