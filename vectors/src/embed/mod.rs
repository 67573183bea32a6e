//! The embedder port: text in, unit vectors out, with the model's identity
//! so every point records which model made it (its lineage).

mod http;
mod minilm;
mod priority;

use futures_util::future::BoxFuture;

pub use http::HttpEmbedder;
pub use minilm::MiniLm;

/// Which model made a vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    pub dimension: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The model files are missing or unreadable.
    #[error("embedding model at {path}: {message}")]
    Model { path: String, message: String },
    /// Tokenising or running the model failed.
    #[error("embedding: {0}")]
    Inference(String),
    /// A remote embedder could not be reached or answered with an error.
    #[error("embedding service unavailable: {0}")]
    Unavailable(String),
    /// A remote embedder answered with vectors of another dimension or count.
    #[error("embedding service answered {0}")]
    BadAnswer(String),
}

pub trait Embedder: Send + Sync + 'static {
    fn info(&self) -> &ModelInfo;

    /// One L2-normalised vector per text, in order.
    fn embed(&self, texts: Vec<String>) -> BoxFuture<'_, Result<Vec<Vec<f32>>, EmbedError>>;
}

/// Scales `v` to unit length (cosine then equals the dot product).
pub(crate) fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        for x in v.iter_mut() {
            *x /= norm;
        }
    }
}
