//! An OpenAI-compatible embedding service: `POST {base}/embeddings` with
//! `{"model", "input": [texts]}`, answered by `{"data": [{"index",
//! "embedding"}]}`. Served by OpenAI itself, and by local model servers
//! (vLLM, text-embeddings-inference, Ollama's OpenAI API, LocalAI).

use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};

use super::{normalize, EmbedError, Embedder, ModelInfo};

/// Texts per request (OpenAI accepts up to 2,048).
const BATCH: usize = 256;
const TIMEOUT: Duration = Duration::from_secs(30);

pub struct HttpEmbedder {
    info: ModelInfo,
    endpoint: String,
    api_key: Option<String>,
    client: reqwest::Client,
}

#[derive(Serialize)]
struct Request<'a> {
    model: &'a str,
    input: &'a [String],
}

#[derive(Deserialize)]
struct Response {
    data: Vec<Datum>,
}

#[derive(Deserialize)]
struct Datum {
    index: usize,
    embedding: Vec<f32>,
}

impl HttpEmbedder {
    /// `base_url` up to the API version (`http://127.0.0.1:8000/v1`).
    pub fn new(
        base_url: &str,
        model: &str,
        dimension: usize,
        api_key: Option<String>,
    ) -> Result<HttpEmbedder, EmbedError> {
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(EmbedError::Model {
                path: base_url.to_owned(),
                message: "the embedder URL must start with http:// or https://".into(),
            });
        }
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .https_only(base_url.starts_with("https://"))
            .build()
            .map_err(|e| EmbedError::Unavailable(e.to_string()))?;
        Ok(HttpEmbedder {
            info: ModelInfo {
                name: model.to_owned(),
                version: format!("openai-compatible:{base_url}"),
                dimension,
            },
            endpoint: format!("{}/embeddings", base_url.trim_end_matches('/')),
            api_key,
            client,
        })
    }

    async fn embed_batch(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut request = self.client.post(&self.endpoint).json(&Request {
            model: &self.info.name,
            input: texts,
        });
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request
            .send()
            .await
            .map_err(|e| EmbedError::Unavailable(format!("{}: {e}", self.endpoint)))?;
        let status = response.status();
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(EmbedError::Unavailable(format!(
                "{}: HTTP {status}",
                self.endpoint
            )));
        }
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            let excerpt: String = body.chars().take(200).collect();
            return Err(EmbedError::BadAnswer(format!("HTTP {status}: {excerpt}")));
        }
        let body: Response = response
            .json()
            .await
            .map_err(|e| EmbedError::BadAnswer(format!("an unreadable body: {e}")))?;
        if body.data.len() != texts.len() {
            return Err(EmbedError::BadAnswer(format!(
                "{} vectors for {} texts",
                body.data.len(),
                texts.len()
            )));
        }
        let mut out: Vec<Option<Vec<f32>>> = vec![None; texts.len()];
        for d in body.data {
            if d.embedding.len() != self.info.dimension {
                return Err(EmbedError::BadAnswer(format!(
                    "a vector of dimension {} (configured: {})",
                    d.embedding.len(),
                    self.info.dimension
                )));
            }
            let slot = out
                .get_mut(d.index)
                .ok_or_else(|| EmbedError::BadAnswer(format!("index {} out of range", d.index)))?;
            let mut v = d.embedding;
            normalize(&mut v);
            *slot = Some(v);
        }
        out.into_iter()
            .enumerate()
            .map(|(i, v)| v.ok_or_else(|| EmbedError::BadAnswer(format!("no vector for text {i}"))))
            .collect()
    }
}

impl Embedder for HttpEmbedder {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn embed(&self, texts: Vec<String>) -> BoxFuture<'_, Result<Vec<Vec<f32>>, EmbedError>> {
        async move {
            let mut out = Vec::with_capacity(texts.len());
            for chunk in texts.chunks(BATCH) {
                out.extend(self.embed_batch(chunk).await?);
            }
            Ok(out)
        }
        .boxed()
    }
}
