//! TLS material for the services' client connections, read from files.

use std::path::PathBuf;

use serde::Deserialize;

/// A CA to trust beside the system's, and a client certificate and key
/// (PEM files); any may be unset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read the TLS file {path}: {source}")]
pub struct TlsFileError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

impl TlsFiles {
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none()
    }

    /// The contents of `path`, if set.
    pub fn read(path: Option<&PathBuf>) -> Result<Option<Vec<u8>>, TlsFileError> {
        path.map(|path| {
            std::fs::read(path).map_err(|source| TlsFileError {
                path: path.clone(),
                source,
            })
        })
        .transpose()
    }
}

/// Makes ring rustls's process-wide default (the one crypto provider the
/// tree builds), for libraries that build their TLS configuration with the
/// default. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
