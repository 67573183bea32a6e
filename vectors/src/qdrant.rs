//! The Qdrant-server adapter (`COPILOT_QDRANT_URL`, gRPC): the same four
//! collections, parameters and payload indexes as the embedded store.
//! Writes wait for the server to apply them, so `flush` has nothing to do.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use qdrant_client::qdrant::point_id::PointIdOptions;
use qdrant_client::qdrant::{
    Condition as QCondition, CountPointsBuilder, CreateCollection, CreateCollectionBuilder,
    CreateFieldIndexCollectionBuilder, DeletePointsBuilder, Distance, FieldType, Filter as QFilter,
    GetPointsBuilder, HnswConfigDiffBuilder, OptimizersConfigDiffBuilder, PointId, PointStruct,
    ScrollPointsBuilder, SearchParamsBuilder, SearchPointsBuilder, UpsertPointsBuilder,
    Value as QValue, VectorParamsBuilder,
};
use qdrant_client::{Payload, Qdrant};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::collection::OptimizerSettings;
use crate::store::check_dimension;
use crate::{Collection, Condition, Filter, Hit, Point, SearchRequest, VectorError, VectorStore};

pub struct QdrantStore {
    client: Qdrant,
    dimension: usize,
    /// Prepended to collection names, so deployments (and tests) can share
    /// one server.
    prefix: String,
}

/// How to reach the server.
#[derive(Clone, Default)]
pub struct QdrantConnection<'a> {
    pub url: &'a str,
    /// Sent as the `api-key` header on every request.
    pub api_key: Option<&'a str>,
    /// Per request; unset: the client's default.
    pub timeout: Option<Duration>,
}

impl QdrantStore {
    pub fn connect(
        connection: QdrantConnection<'_>,
        dimension: usize,
        prefix: &str,
    ) -> Result<QdrantStore, VectorError> {
        let url = connection.url;
        let mut builder = Qdrant::from_url(url).api_key(connection.api_key.map(str::to_owned));
        if let Some(timeout) = connection.timeout {
            builder = builder.timeout(timeout).connect_timeout(timeout);
        }
        let client = builder
            .build()
            .map_err(|e| VectorError::Unavailable(format!("{url}: {e}")))?;
        Ok(QdrantStore {
            client,
            dimension,
            prefix: prefix.to_owned(),
        })
    }

    fn name(&self, collection: Collection) -> String {
        format!("{}{}", self.prefix, collection.name())
    }

    /// Drops the four collections (tests clean up with it).
    pub async fn drop_collections(&self) -> Result<(), VectorError> {
        for c in Collection::ALL {
            if self
                .client
                .collection_exists(self.name(c))
                .await
                .map_err(|e| fail(c, e))?
            {
                self.client
                    .delete_collection(self.name(c))
                    .await
                    .map_err(|e| fail(c, e))?;
            }
        }
        Ok(())
    }
}

/// The seed's layout for one collection: cosine distance, HNSW m 16 and
/// ef_construct 100 with the graph in memory, vectors and payload on disk for
/// conversations only, and the seed's optimiser settings.
fn create_collection(name: &str, collection: Collection, dimension: usize) -> CreateCollection {
    let seed = OptimizerSettings::seed(dimension);
    CreateCollectionBuilder::new(name)
        .vectors_config(
            VectorParamsBuilder::new(dimension as u64, Distance::Cosine)
                .on_disk(collection.on_disk()),
        )
        .on_disk_payload(collection.on_disk())
        .hnsw_config(
            HnswConfigDiffBuilder::default()
                .m(16)
                .ef_construct(100)
                .full_scan_threshold(10_000)
                .on_disk(false),
        )
        .optimizers_config(
            OptimizersConfigDiffBuilder::default()
                .deleted_threshold(seed.deleted_threshold)
                .max_segment_size(seed.max_segment_size_kb)
                .indexing_threshold(seed.indexing_threshold_kb)
                .flush_interval_sec(seed.flush_interval_sec),
        )
        .build()
}

fn fail(collection: Collection, e: qdrant_client::QdrantError) -> VectorError {
    VectorError::Engine {
        collection: collection.name(),
        message: e.to_string(),
    }
}

fn point_id(id: Uuid) -> PointId {
    id.to_string().into()
}

fn uuid_of(id: Option<PointId>) -> Option<Uuid> {
    match id?.point_id_options? {
        PointIdOptions::Uuid(u) => u.parse().ok(),
        PointIdOptions::Num(_) => None,
    }
}

fn json_map(payload: HashMap<String, QValue>) -> Map<String, Value> {
    payload
        .into_iter()
        .map(|(k, v)| (k, Value::from(v)))
        .collect()
}

fn q_filter(filter: &Filter) -> Option<QFilter> {
    if filter.is_empty() {
        return None;
    }
    Some(QFilter::must(filter.conditions.iter().map(|c| match c {
        Condition::Equals { field, value } => QCondition::matches(field.clone(), value.clone()),
        Condition::AnyOf { field, values } => QCondition::matches(field.clone(), values.clone()),
    })))
}

impl VectorStore for QdrantStore {
    fn kind(&self) -> &'static str {
        "qdrant"
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    fn ensure_collections(&self) -> BoxFuture<'_, Result<(), VectorError>> {
        async move {
            for c in Collection::ALL {
                let name = self.name(c);
                if self
                    .client
                    .collection_exists(&name)
                    .await
                    .map_err(|e| fail(c, e))?
                {
                    continue;
                }
                self.client
                    .create_collection(create_collection(&name, c, self.dimension))
                    .await
                    .map_err(|e| fail(c, e))?;
                for field in c.indexed_fields() {
                    self.client
                        .create_field_index(
                            CreateFieldIndexCollectionBuilder::new(
                                &name,
                                *field,
                                FieldType::Keyword,
                            )
                            .wait(true),
                        )
                        .await
                        .map_err(|e| fail(c, e))?;
                }
            }
            Ok(())
        }
        .boxed()
    }

    fn upsert(
        &self,
        collection: Collection,
        points: Vec<Point>,
    ) -> BoxFuture<'_, Result<(), VectorError>> {
        async move {
            let mut structs = Vec::with_capacity(points.len());
            for p in points {
                check_dimension(self.dimension, &p.vector)?;
                let payload =
                    Payload::try_from(Value::Object(p.payload)).map_err(|e| fail(collection, e))?;
                structs.push(PointStruct::new(point_id(p.id), p.vector, payload));
            }
            if structs.is_empty() {
                return Ok(());
            }
            self.client
                .upsert_points(UpsertPointsBuilder::new(self.name(collection), structs).wait(true))
                .await
                .map_err(|e| fail(collection, e))?;
            Ok(())
        }
        .boxed()
    }

    fn delete(
        &self,
        collection: Collection,
        ids: Vec<Uuid>,
    ) -> BoxFuture<'_, Result<(), VectorError>> {
        async move {
            if ids.is_empty() {
                return Ok(());
            }
            let ids: Vec<PointId> = ids.into_iter().map(point_id).collect();
            self.client
                .delete_points(
                    DeletePointsBuilder::new(self.name(collection))
                        .points(ids)
                        .wait(true),
                )
                .await
                .map_err(|e| fail(collection, e))?;
            Ok(())
        }
        .boxed()
    }

    fn delete_matching(
        &self,
        collection: Collection,
        filter: Filter,
    ) -> BoxFuture<'_, Result<(), VectorError>> {
        async move {
            let Some(filter) = q_filter(&filter) else {
                return Ok(());
            };
            self.client
                .delete_points(
                    DeletePointsBuilder::new(self.name(collection))
                        .points(filter)
                        .wait(true),
                )
                .await
                .map_err(|e| fail(collection, e))?;
            Ok(())
        }
        .boxed()
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), VectorError>> {
        async { Ok(()) }.boxed()
    }

    fn clear(&self, collection: Collection) -> BoxFuture<'_, Result<(), VectorError>> {
        async move {
            let ids = self.ids(collection).await?;
            for chunk in ids.chunks(10_000) {
                self.delete(collection, chunk.to_vec()).await?;
            }
            Ok(())
        }
        .boxed()
    }

    fn search(
        &self,
        collection: Collection,
        request: SearchRequest,
    ) -> BoxFuture<'_, Result<Vec<Hit>, VectorError>> {
        async move {
            check_dimension(self.dimension, &request.vector)?;
            let mut search = SearchPointsBuilder::new(
                self.name(collection),
                request.vector,
                request.limit as u64,
            )
            .with_payload(true)
            .params(
                SearchParamsBuilder::default()
                    .hnsw_ef(request.ef.unwrap_or(128).max(request.limit) as u64)
                    .exact(request.exact),
            );
            if let Some(filter) = q_filter(&request.filter) {
                search = search.filter(filter);
            }
            let found = self
                .client
                .search_points(search)
                .await
                .map_err(|e| fail(collection, e))?;
            Ok(found
                .result
                .into_iter()
                .filter_map(|p| {
                    Some(Hit {
                        id: uuid_of(p.id)?,
                        score: p.score,
                        payload: json_map(p.payload),
                    })
                })
                .collect())
        }
        .boxed()
    }

    fn ids(&self, collection: Collection) -> BoxFuture<'_, Result<Vec<Uuid>, VectorError>> {
        async move {
            let mut ids = Vec::new();
            let mut offset: Option<PointId> = None;
            loop {
                let mut scroll = ScrollPointsBuilder::new(self.name(collection))
                    .limit(1_000)
                    .with_payload(false);
                if let Some(o) = offset.take() {
                    scroll = scroll.offset(o);
                }
                let page = self
                    .client
                    .scroll(scroll)
                    .await
                    .map_err(|e| fail(collection, e))?;
                ids.extend(page.result.into_iter().filter_map(|p| uuid_of(p.id)));
                match page.next_page_offset {
                    Some(next) => offset = Some(next),
                    None => break,
                }
            }
            ids.sort_unstable();
            Ok(ids)
        }
        .boxed()
    }

    fn count(&self, collection: Collection) -> BoxFuture<'_, Result<usize, VectorError>> {
        async move {
            let counted = self
                .client
                .count(CountPointsBuilder::new(self.name(collection)).exact(true))
                .await
                .map_err(|e| fail(collection, e))?;
            Ok(counted
                .result
                .map_or(0, |r| usize::try_from(r.count).unwrap_or(usize::MAX)))
        }
        .boxed()
    }

    fn get(
        &self,
        collection: Collection,
        id: Uuid,
    ) -> BoxFuture<'_, Result<Option<Hit>, VectorError>> {
        async move {
            let got = self
                .client
                .get_points(
                    GetPointsBuilder::new(self.name(collection), vec![point_id(id)])
                        .with_payload(true),
                )
                .await
                .map_err(|e| fail(collection, e))?;
            Ok(got.result.into_iter().find_map(|p| {
                Some(Hit {
                    id: uuid_of(p.id)?,
                    score: 1.0,
                    payload: json_map(p.payload),
                })
            }))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qdrant_client::qdrant::vectors_config::Config;

    // qdrant-client marks the `on_disk` fields deprecated; the builder
    // still sets them (the seed's layout), and this test reads them back.
    #[allow(deprecated)]
    #[test]
    fn collections_are_created_with_the_seed_layout() {
        for c in Collection::ALL {
            let request = create_collection("p_x", c, 384);
            let on_disk = c == Collection::Conversations;
            let Some(Config::Params(vectors)) = request.vectors_config.and_then(|v| v.config)
            else {
                panic!("{c}: no single vector params");
            };
            assert_eq!(vectors.size, 384);
            assert_eq!(vectors.on_disk, Some(on_disk), "{c}");
            assert_eq!(request.on_disk_payload, Some(on_disk), "{c}");
            let hnsw = request.hnsw_config.expect("hnsw");
            assert_eq!((hnsw.m, hnsw.ef_construct), (Some(16), Some(100)));
            assert_eq!(hnsw.on_disk, Some(false));
            let optimizers = request.optimizers_config.expect("optimizers");
            assert_eq!(optimizers.deleted_threshold, Some(0.2));
            assert_eq!(optimizers.max_segment_size, Some(300_000));
            assert_eq!(optimizers.indexing_threshold, Some(30_000));
            assert_eq!(optimizers.flush_interval_sec, Some(5));
        }
    }
}
