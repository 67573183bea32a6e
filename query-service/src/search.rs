//! `POST /v1/search`: semantic search over the four vector collections
//! through the vector-store port, the query embedded with the configured
//! embedder (or a vector given). A plain user's conversation search is
//! always narrowed to their own conversations, whatever filter they send.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;
use vectors::{Collection, Embedder, Filter, SearchRequest, StoreOpener};

use crate::db::Source;
use crate::problem::{ApiError, ApiResult};
use crate::request::{Caller, ReadConsistency};
use crate::state::{Answer, AppState};

pub struct Search {
    pub store: StoreOpener,
    pub embedder: Arc<dyn Embedder>,
}

pub const MAX_QUERY_CHARS: usize = 4096;
pub const MAX_HITS: usize = 100;

/// The collections as the API names them.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)] // documents the values `SearchBody::collection` takes
pub enum CollectionName {
    Code,
    Docs,
    Conversations,
    Incidents,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchBody {
    /// `code`, `docs`, `conversations` or `incidents`.
    #[schema(value_type = CollectionName)]
    pub collection: String,
    /// Text to search for (embedded by the service); or give `vector`.
    pub query: Option<String>,
    /// A query embedding of the configured dimension.
    #[schema(min_items = 1)]
    pub vector: Option<Vec<f32>>,
    /// Payload field → value or list of values (any of them). Fields:
    /// code: project_id, language, kind; docs: kind, source_id;
    /// conversations: conversation_id, role, owner_user_id; incidents:
    /// severity, services.
    #[schema(value_type = Option<Object>)]
    pub filter: Option<BTreeMap<String, serde_json::Value>>,
    /// 1–100, default 10.
    #[schema(minimum = 1, maximum = 100)]
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchHit {
    pub id: Uuid,
    pub score: f32,
    pub payload: serde_json::Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResults {
    pub hits: Vec<SearchHit>,
}

fn collection(name: &str) -> Result<Collection, ApiError> {
    match name {
        "code" => Ok(Collection::Code),
        "docs" => Ok(Collection::Documentation),
        "conversations" => Ok(Collection::Conversations),
        "incidents" => Ok(Collection::IncidentKnowledge),
        other => Err(ApiError::bad(
            "collection",
            format!(
                "{:?} is not a collection; expected code, docs, conversations or incidents",
                other.chars().take(64).collect::<String>()
            ),
        )),
    }
}

fn filter_of(
    collection: Collection,
    given: Option<BTreeMap<String, serde_json::Value>>,
) -> Result<Filter, ApiError> {
    let mut filter = Filter::default();
    for (field, value) in given.unwrap_or_default() {
        if !collection.indexed_fields().contains(&field.as_str()) {
            return Err(ApiError::bad(
                "filter",
                format!(
                    "cannot filter {} by {:?}; fields: {}",
                    collection,
                    field.chars().take(64).collect::<String>(),
                    collection.indexed_fields().join(", ")
                ),
            ));
        }
        let wrong = || {
            ApiError::bad(
                "filter",
                format!("filter.{field} must be a string or a list of strings"),
            )
        };
        filter = match value {
            serde_json::Value::String(v) => filter.and_equals(&field, v),
            serde_json::Value::Array(values) if !values.is_empty() && values.len() <= 100 => {
                let values = values
                    .into_iter()
                    .map(|v| match v {
                        serde_json::Value::String(s) => Ok(s),
                        _ => Err(wrong()),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                filter.and_any_of(&field, values)
            }
            _ => return Err(wrong()),
        };
    }
    Ok(filter)
}

enum Wanted {
    Text(String),
    Vector(Vec<f32>),
}

/// Semantic search.
#[utoipa::path(post, path = "/v1/search", tag = "search",
    request_body = SearchBody,
    responses((status = 200, body = SearchResults)))]
pub async fn search(
    State(state): State<AppState>,
    caller: Caller,
    ReadConsistency(consistency): ReadConsistency,
    body: crate::routes::JsonBody<SearchBody>,
) -> ApiResult<Answer> {
    let body = body.0;
    let collection = collection(&body.collection)?;
    let limit = match body.limit {
        None => 10,
        Some(n) if (1..=MAX_HITS).contains(&n) => n,
        Some(_) => {
            return Err(ApiError::bad(
                "limit",
                format!("limit must be from 1 to {MAX_HITS}"),
            ))
        }
    };
    let mut filter = filter_of(collection, body.filter)?;
    if collection == Collection::Conversations && !caller.admin {
        filter = filter.and_equals("owner_user_id", caller.user_id.to_string());
    }
    let wanted = match (body.query, body.vector) {
        (Some(query), None) => {
            let query = query.trim().to_string();
            if query.is_empty() || query.chars().count() > MAX_QUERY_CHARS {
                return Err(ApiError::bad(
                    "query",
                    format!("query must be 1 to {MAX_QUERY_CHARS} characters"),
                ));
            }
            Wanted::Text(query)
        }
        (None, Some(vector)) => Wanted::Vector(vector),
        _ => {
            return Err(ApiError::bad(
                "query",
                "give exactly one of `query` and `vector`",
            ))
        }
    };
    let search = state.search.clone().ok_or_else(|| {
        ApiError::unavailable("semantic search", "no vector store in this process")
    })?;
    let vector = match wanted {
        Wanted::Text(query) => {
            let mut vectors = search
                .embedder
                .embed(vec![query])
                .await
                .map_err(|e| ApiError::unavailable("the embedder", e))?;
            vectors
                .pop()
                .ok_or_else(|| ApiError::Internal("the embedder returned no vector".into()))?
        }
        Wanted::Vector(vector) => {
            let dimension = search.embedder.info().dimension;
            if vector.len() != dimension || vector.iter().any(|x| !x.is_finite()) {
                return Err(ApiError::bad(
                    "vector",
                    format!("vector must be {dimension} finite numbers"),
                ));
            }
            vector
        }
    };
    state.db.reached(Source::Vectors, consistency).await?;
    let position = state.db.progress.current(Source::Vectors.name());
    let store = (search.store)()
        .await
        .map_err(|e| ApiError::unavailable("the vector store", e))?;
    let mut request = SearchRequest::new(vector, limit);
    request.filter = filter;
    let hits = store
        .search(collection, request)
        .await
        .map_err(|e| ApiError::unavailable("the vector store", e))?;
    let hits = hits
        .into_iter()
        .map(|hit| SearchHit {
            id: hit.id,
            score: hit.score,
            payload: serde_json::Value::Object(hit.payload),
        })
        .collect();
    state.answer(None, position, &SearchResults { hits }).await
}
