use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::{Collection, VectorError};

/// A point: its id is derived from the source (a message, incident, runbook
/// or knowledge id), so projecting an event again overwrites, never adds.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub id: Uuid,
    pub vector: Vec<f32>,
    pub payload: Map<String, Value>,
}

/// Conditions that must all hold (a conjunction of keyword matches).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// The field equals the value (or, for an array field, contains it).
    Equals { field: String, value: String },
    /// The field equals one of the values.
    AnyOf { field: String, values: Vec<String> },
}

impl Filter {
    pub fn equals(field: &str, value: impl Into<String>) -> Filter {
        Filter::default().and_equals(field, value)
    }

    pub fn and_equals(mut self, field: &str, value: impl Into<String>) -> Filter {
        self.conditions.push(Condition::Equals {
            field: field.to_owned(),
            value: value.into(),
        });
        self
    }

    pub fn and_any_of(mut self, field: &str, values: Vec<String>) -> Filter {
        self.conditions.push(Condition::AnyOf {
            field: field.to_owned(),
            values,
        });
        self
    }

    pub fn is_empty(&self) -> bool {
        self.conditions.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SearchRequest {
    pub vector: Vec<f32>,
    pub limit: usize,
    pub filter: Filter,
    /// Exhaustive search instead of the HNSW index (for measuring recall).
    pub exact: bool,
    /// The HNSW beam width; `None` keeps the engine's default.
    pub ef: Option<usize>,
}

impl SearchRequest {
    pub fn new(vector: Vec<f32>, limit: usize) -> SearchRequest {
        SearchRequest {
            vector,
            limit,
            filter: Filter::default(),
            exact: false,
            ef: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub id: Uuid,
    /// Cosine similarity, higher is closer.
    pub score: f32,
    pub payload: Map<String, Value>,
}

/// Where the points live. Every method is safe to call again after a
/// failure: upserts overwrite by id and deletes of missing ids succeed.
pub trait VectorStore: Send + Sync + 'static {
    /// `edge` or `qdrant`, for logs and `/readyz`.
    fn kind(&self) -> &'static str;

    /// The dimension of every collection.
    fn dimension(&self) -> usize;

    /// Creates the four collections and their payload indexes if missing.
    fn ensure_collections(&self) -> BoxFuture<'_, Result<(), VectorError>>;

    fn upsert(
        &self,
        collection: Collection,
        points: Vec<Point>,
    ) -> BoxFuture<'_, Result<(), VectorError>>;

    fn delete(
        &self,
        collection: Collection,
        ids: Vec<Uuid>,
    ) -> BoxFuture<'_, Result<(), VectorError>>;

    /// Deletes every point the filter matches (the erasure of a user).
    fn delete_matching(
        &self,
        collection: Collection,
        filter: Filter,
    ) -> BoxFuture<'_, Result<(), VectorError>>;

    /// Makes every write that returned so far survive a crash of this
    /// process. The projection calls it before it moves its checkpoint.
    fn flush(&self) -> BoxFuture<'_, Result<(), VectorError>>;

    /// Removes every point of the collection (before a rebuild).
    fn clear(&self, collection: Collection) -> BoxFuture<'_, Result<(), VectorError>>;

    fn search(
        &self,
        collection: Collection,
        request: SearchRequest,
    ) -> BoxFuture<'_, Result<Vec<Hit>, VectorError>>;

    /// Every point id of the collection, sorted (for verification).
    fn ids(&self, collection: Collection) -> BoxFuture<'_, Result<Vec<Uuid>, VectorError>>;

    fn count(&self, collection: Collection) -> BoxFuture<'_, Result<usize, VectorError>>;

    /// One point with its payload, if present.
    fn get(
        &self,
        collection: Collection,
        id: Uuid,
    ) -> BoxFuture<'_, Result<Option<Hit>, VectorError>>;
}

pub(crate) fn check_dimension(expected: usize, vector: &[f32]) -> Result<(), VectorError> {
    if vector.len() == expected {
        Ok(())
    } else {
        Err(VectorError::Dimension {
            expected,
            got: vector.len(),
        })
    }
}

/// Opens the vector store, or hands out the one already open: the vector
/// projection opens it when it takes its lease (an embedded store is
/// written by one process only), and a query service in the same process
/// searches the same instance.
pub type StoreOpener =
    Arc<dyn Fn() -> BoxFuture<'static, Result<Arc<dyn VectorStore>, VectorError>> + Send + Sync>;
