//! Semantic search for the copilot: the vector-store port with its two
//! adapters (the Qdrant Edge engine in-process, a Qdrant server over gRPC),
//! and the embedder port with the local all-MiniLM-L6-v2 model and an
//! OpenAI-compatible HTTP service.
//!
//! Both ports are object-safe (`Arc<dyn VectorStore>`, `Arc<dyn Embedder>`)
//! so the projector and the query service choose an adapter from
//! configuration at start-up.

mod collection;
pub mod edge;
pub mod embed;
mod error;
pub mod qdrant;
mod store;

pub use collection::Collection;
pub use embed::{EmbedError, Embedder, ModelInfo};
pub use error::VectorError;
pub use store::{Condition, Filter, Hit, Point, SearchRequest, StoreOpener, VectorStore};
