use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use vectors::embed::MiniLm;

/// A directory of the test's own, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("copilot-vectors-{name}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The model `deploy/model.sh` unpacked (`.ci/run` runs it first).
pub fn model_dir() -> PathBuf {
    std::env::var_os("COPILOT_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(MiniLm::default_dir)
}

/// One loaded model for every test of this binary (loading takes a while).
pub fn minilm() -> Arc<MiniLm> {
    static MODEL: OnceLock<Arc<MiniLm>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let dir = model_dir();
            Arc::new(MiniLm::load(&dir).unwrap_or_else(|e| {
                panic!("{e}: run deploy/model.sh to fetch the model (or set COPILOT_MODEL_DIR)")
            }))
        })
        .clone()
}

pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}
