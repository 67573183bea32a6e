/// A failure of a vector store.
#[derive(Debug, thiserror::Error)]
pub enum VectorError {
    /// The engine refused or failed the operation.
    #[error("vector store ({collection}): {message}")]
    Engine {
        collection: &'static str,
        message: String,
    },
    /// The store cannot be reached (server down, files unavailable).
    #[error("vector store unavailable: {0}")]
    Unavailable(String),
    /// A vector of a dimension other than the collection's.
    #[error("vector of dimension {got} for a collection of dimension {expected}")]
    Dimension { expected: usize, got: usize },
    /// A blocking task was cancelled or panicked.
    #[error("vector store task: {0}")]
    Task(String),
}
