//! The vector-store port and the embedders, against the real engines.

mod embedder;
mod http_embedder;
mod search_quality;
mod store_contract;
mod support;
