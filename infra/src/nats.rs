//! NATS naming shared by the services.

/// A JetStream stream's name for a subject prefix: `base` itself for the
/// default prefix `copilot`, else `base_<PREFIX>` (upper-cased, anything
/// but letters and digits as `_`), so deployments sharing a server do not
/// share streams.
pub fn stream_name(base: &str, prefix: &str) -> String {
    if prefix == "copilot" {
        return base.to_string();
    }
    let suffix: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("{base}_{suffix}")
}

use secrecy::{ExposeSecret, SecretString};

use crate::config::NatsSettings;
use crate::tls::TlsFiles;

/// A NATS server and how to reach it: URL, TLS, and the credential this
/// process connects with. Every NATS client the services make comes from
/// here.
#[derive(Debug, Clone)]
pub struct NatsTarget {
    pub url: String,
    pub tls_required: bool,
    pub tls: TlsFiles,
    pub auth: NatsAuth,
    /// Reply inboxes under this prefix instead of `_INBOX`.
    pub inbox_prefix: Option<String>,
}

/// The credential a process connects with (at most one is used, in this
/// order: a `.creds` file, an NKey seed, a token, a user and password).
#[derive(Debug, Clone, Default)]
pub struct NatsAuth {
    pub user: Option<String>,
    pub password: Option<SecretString>,
    pub token: Option<SecretString>,
    pub nkey_seed: Option<SecretString>,
    pub creds_file: Option<std::path::PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum NatsConnectError {
    #[error("cannot connect to NATS at {url}: {message}")]
    Connect { url: String, message: String },
    #[error("cannot read the NATS credentials file {path}: {message}")]
    Credentials { path: String, message: String },
}

impl From<&str> for NatsTarget {
    fn from(url: &str) -> Self {
        NatsTarget {
            url: url.to_string(),
            tls_required: false,
            tls: TlsFiles::default(),
            auth: NatsAuth::default(),
            inbox_prefix: None,
        }
    }
}

impl From<String> for NatsTarget {
    fn from(url: String) -> Self {
        NatsTarget::from(url.as_str())
    }
}

impl From<&String> for NatsTarget {
    fn from(url: &String) -> Self {
        NatsTarget::from(url.as_str())
    }
}

impl From<&NatsSettings> for NatsTarget {
    fn from(settings: &NatsSettings) -> Self {
        NatsTarget {
            url: settings.url.clone(),
            tls_required: settings.tls_required,
            tls: settings.tls.clone(),
            auth: NatsAuth {
                user: settings.user.clone(),
                password: settings.password.clone(),
                token: settings.token.clone(),
                nkey_seed: settings.nkey_seed.clone(),
                creds_file: settings.creds_file.clone(),
            },
            inbox_prefix: settings.inbox_prefix.clone(),
        }
    }
}

impl NatsTarget {
    /// The URL without a password or token, for messages.
    pub fn redacted(&self) -> String {
        crate::redact::url(&self.url)
    }

    /// Connects as `name` (shown by the server's monitoring).
    pub async fn connect(&self, name: &str) -> Result<async_nats::Client, NatsConnectError> {
        self.options(name)
            .await?
            .connect(&self.url)
            .await
            .map_err(|e| NatsConnectError::Connect {
                url: self.redacted(),
                message: crate::redact::in_text(&e.to_string(), &self.url),
            })
    }

    /// The connect options: TLS and the credential.
    pub async fn options(
        &self,
        name: &str,
    ) -> Result<async_nats::ConnectOptions, NatsConnectError> {
        crate::tls::install_crypto_provider();
        let auth = &self.auth;
        let mut options = match (&auth.creds_file, &auth.nkey_seed, &auth.token, &auth.user) {
            (Some(path), _, _, _) => async_nats::ConnectOptions::with_credentials_file(path)
                .await
                .map_err(|e| NatsConnectError::Credentials {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?,
            (None, Some(seed), _, _) => {
                async_nats::ConnectOptions::with_nkey(seed.expose_secret().to_string())
            }
            (None, None, Some(token), _) => {
                async_nats::ConnectOptions::with_token(token.expose_secret().to_string())
            }
            (None, None, None, Some(user)) => async_nats::ConnectOptions::with_user_and_password(
                user.clone(),
                auth.password
                    .as_ref()
                    .map(|p| p.expose_secret().to_string())
                    .unwrap_or_default(),
            ),
            (None, None, None, None) => async_nats::ConnectOptions::new(),
        }
        .name(name);
        if let Some(prefix) = &self.inbox_prefix {
            options = options.custom_inbox_prefix(prefix);
        }
        if self.tls_required {
            options = options.require_tls(true);
        }
        if let Some(ca) = &self.tls.ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&self.tls.cert, &self.tls.key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        Ok(options)
    }
}
