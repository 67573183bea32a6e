//! Typed, layered settings: defaults in code, then a TOML file, then the
//! environment variables of the contract (`COPILOT_*`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Toml};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

pub mod env;

/// The file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "config/copilot.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value for {name}: {message}")]
    Invalid { name: &'static str, message: String },
}

/// Everything the services can be told.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub nats: NatsSettings,
    pub http: HttpSettings,
    pub vectors: VectorSettings,
    pub event_store: EventStoreSettings,
    pub commands: CommandSettings,
    pub projector: ProjectorSettings,
    /// Acts as an admin credential for commands; unset disables it.
    pub bootstrap_token: Option<SecretString>,
    /// The master keys that wrap every user's data key (64 hexadecimal
    /// digits each, the current one first; see `eventstore::data_keys`).
    /// Unset: personal data is written to the log in the clear.
    pub master_key: Option<SecretString>,
    /// The tracing filter (`COPILOT_LOG`).
    pub log: String,
    /// Export traces (OTLP over HTTP) to this collector URL, for example
    /// `http://collector:4318/v1/traces`; unset: no export.
    pub otlp_endpoint: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// The login of `migrate` (the owner of the schema), and of every
    /// service that has no login of its own below.
    pub url: SecretString,
    /// The services' own least-privilege logins (see `migrate`), each a
    /// URL with that login's password; unset: `url`.
    pub command_url: Option<SecretString>,
    pub projector_url: Option<SecretString>,
    pub query_url: Option<SecretString>,
    /// TLS: `disable`, `prefer`, `require` (no certificate check),
    /// `verify-ca`, `verify-full`; unset: the URL's `sslmode`, else
    /// `disable` for a loopback host and `verify-full` for any other.
    pub ssl_mode: Option<String>,
    /// TLS files: the CA to trust, and a client certificate and key.
    pub ssl_root_cert: Option<PathBuf>,
    pub ssl_cert: Option<PathBuf>,
    pub ssl_key: Option<PathBuf>,
    /// The seed's pool: 50 max, 5 min, 30 s acquire, 10 min idle, 30 min lifetime.
    pub max_connections: u32,
    pub min_connections: u32,
    #[serde(with = "seconds")]
    pub acquire_timeout: Duration,
    #[serde(with = "seconds")]
    pub idle_timeout: Duration,
    #[serde(with = "seconds")]
    pub max_lifetime: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://` or, for TLS, `rediss://`.
    pub url: SecretString,
    pub prefix: String,
    /// TLS files (with `rediss://`): the CA to trust, a client certificate and key.
    pub tls: crate::tls::TlsFiles,
    /// TLS without checking the server's certificate (logged as a warning).
    pub tls_insecure: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsSettings {
    pub url: String,
    pub prefix: String,
    /// Refuse a connection without TLS.
    pub tls_required: bool,
    /// TLS files: the CA to trust, a client certificate and key.
    pub tls: crate::tls::TlsFiles,
    /// The credential this process connects with: a user and password, a
    /// token, an NKey seed, or a `.creds` file (JWT and seed).
    pub user: Option<String>,
    pub password: Option<SecretString>,
    pub token: Option<SecretString>,
    pub nkey_seed: Option<SecretString>,
    pub creds_file: Option<PathBuf>,
    /// The subject prefix of this process's reply inboxes (`_INBOX`
    /// unset): with subject permissions, each party gets its own (see
    /// deploy/nats/nats.conf), so no one reads another's replies.
    pub inbox_prefix: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    pub addr: SocketAddr,
    /// A read replica of the database: the query API reads there first.
    pub replica_url: Option<SecretString>,
    /// How long a cached response may live (invalidation usually ends it sooner).
    #[serde(with = "seconds")]
    pub cache_ttl: Duration,
    /// Requests per minute per principal; 0 turns the limit off.
    pub rate_limit_per_minute: u32,
    /// A request taking longer is answered 504.
    #[serde(with = "seconds")]
    pub request_timeout: Duration,
    /// HTTPS: the server's certificate chain and key (PEM); unset: HTTP.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Origins allowed to call the API from a browser (CORS); empty: none
    /// (the built-in dashboard is same-origin).
    pub cors_origins: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VectorSettings {
    /// Keep the vector collections from the log (the vector projection).
    pub enabled: bool,
    /// Where the embedded store (Qdrant Edge) keeps its files.
    pub dir: PathBuf,
    /// A Qdrant server to use instead of the embedded store.
    pub qdrant_url: Option<String>,
    /// The Qdrant server's API key (sent on every request), if it has one.
    pub qdrant_api_key: Option<SecretString>,
    /// A request to the Qdrant server taking longer fails (and counts
    /// against the projection's circuit breaker).
    #[serde(with = "seconds")]
    pub qdrant_timeout: Duration,
    /// `local` (all-MiniLM-L6-v2 on the CPU) or `http` (OpenAI-compatible).
    pub embedder: EmbedderKind,
    /// The local model's files; unset: the directory `deploy/model.sh` fills.
    pub model_dir: Option<PathBuf>,
    /// The OpenAI-compatible service: base URL (`…/v1`), model, dimension.
    pub http_url: Option<String>,
    pub http_model: String,
    pub http_dimension: usize,
    pub http_api_key: Option<SecretString>,
    /// Failures in a row that open a circuit breaker, and how long it stays open.
    pub breaker_threshold: u32,
    #[serde(with = "millis")]
    pub breaker_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmbedderKind {
    Local,
    Http,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommandSettings {
    /// Largest command message accepted (below NATS's 1 MiB max_payload).
    pub max_message_bytes: usize,
    /// Commands per principal per minute (Redis sliding window); 0 disables it.
    pub rate_limit_per_minute: u32,
    /// Dimension of the configured embedder (384 for the local model).
    pub embedding_dimension: usize,
    /// Commands handled at once per transport and instance.
    pub max_in_flight: usize,
    /// Where the services serve `/metrics`; `"off"`: nowhere.
    #[serde(deserialize_with = "addr_or_off")]
    pub metrics_addr: Option<SocketAddr>,
    /// User ids of trusted agents (front ends that sign their users in):
    /// their `Client-Ip`/`User-Agent` headers are recorded as fact, anyone
    /// else's as the client's claim.
    pub trusted_agents: Vec<uuid::Uuid>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProjectorSettings {
    /// Events per projection batch (one transaction each).
    pub batch_size: usize,
    /// Park a poison event and go on after it, instead of stopping there.
    pub skip_poison: bool,
    /// How often a projector without a projection's lease tries to take it.
    #[serde(with = "millis")]
    pub lease_retry: Duration,
    /// Publish every event to JetStream (`<prefix>.evt.>`), the event relay.
    pub relay: bool,
    /// Keep the Redis patterns (sessions, cache invalidation, metrics
    /// streams, pub/sub, task queue) from the log.
    pub redis: bool,
}

impl Default for ProjectorSettings {
    fn default() -> Self {
        ProjectorSettings {
            batch_size: 2000,
            skip_poison: false,
            lease_retry: Duration::from_secs(1),
            relay: true,
            redis: true,
        }
    }
}

impl Default for CommandSettings {
    fn default() -> Self {
        CommandSettings {
            max_message_bytes: 512 * 1024,
            rate_limit_per_minute: 600,
            embedding_dimension: 384,
            max_in_flight: 256,
            metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            trusted_agents: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventStoreSettings {
    pub max_payload_bytes: usize,
    pub max_events_per_append: usize,
    #[serde(with = "millis")]
    pub poll_interval: Duration,
    pub batch_size: usize,
    /// Group commit: how many append transactions may be in flight at
    /// once (`COPILOT_GROUP_COMMITS_IN_FLIGHT`). One shares each commit
    /// among the most appends; more can use a fast CPU that waits on a
    /// slow disk's flush.
    pub group_commits_in_flight: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            database: DatabaseSettings::default(),
            redis: RedisSettings::default(),
            nats: NatsSettings::default(),
            http: HttpSettings::default(),
            vectors: VectorSettings::default(),
            event_store: EventStoreSettings::default(),
            commands: CommandSettings::default(),
            projector: ProjectorSettings::default(),
            bootstrap_token: None,
            master_key: None,
            log: "info".to_string(),
            otlp_endpoint: None,
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            url: SecretString::from("postgres://postgres@127.0.0.1:5432/copilot"),
            command_url: None,
            projector_url: None,
            query_url: None,
            ssl_mode: None,
            ssl_root_cert: None,
            ssl_cert: None,
            ssl_key: None,
            max_connections: 50,
            min_connections: 5,
            acquire_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(1800),
        }
    }
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            url: SecretString::from("redis://127.0.0.1:6379"),
            prefix: "copilot:".to_string(),
            tls: crate::tls::TlsFiles::default(),
            tls_insecure: false,
        }
    }
}

impl Default for NatsSettings {
    fn default() -> Self {
        NatsSettings {
            url: "nats://127.0.0.1:4222".to_string(),
            prefix: "copilot".to_string(),
            tls_required: false,
            tls: crate::tls::TlsFiles::default(),
            user: None,
            password: None,
            token: None,
            nkey_seed: None,
            creds_file: None,
            inbox_prefix: None,
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            replica_url: None,
            cache_ttl: Duration::from_secs(300),
            rate_limit_per_minute: 6000,
            // Above the longest X-Wait-Ms (30 s) a client may ask for.
            request_timeout: Duration::from_secs(35),
            tls_cert: None,
            tls_key: None,
            cors_origins: Vec::new(),
        }
    }
}

impl Default for VectorSettings {
    fn default() -> Self {
        VectorSettings {
            enabled: true,
            dir: PathBuf::from("./data/vectors"),
            qdrant_url: None,
            qdrant_api_key: None,
            qdrant_timeout: Duration::from_secs(10),
            embedder: EmbedderKind::Local,
            model_dir: None,
            http_url: None,
            // The seed's setting: OpenAI's ada-002, 1536 dimensions.
            http_model: "text-embedding-ada-002".to_string(),
            http_dimension: 1536,
            http_api_key: None,
            breaker_threshold: 5,
            breaker_timeout: Duration::from_secs(30),
        }
    }
}

impl Default for EventStoreSettings {
    fn default() -> Self {
        EventStoreSettings {
            max_payload_bytes: 1024 * 1024,
            max_events_per_append: 1000,
            poll_interval: Duration::from_millis(500),
            batch_size: 1000,
            group_commits_in_flight: 1,
        }
    }
}

impl Settings {
    /// Loads defaults, then `file` (or [`DEFAULT_CONFIG_FILE`] if it exists),
    /// then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let env: HashMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("COPILOT_"))
            .collect();
        Self::load_from(file, &env)
    }

    /// [`Settings::load`] with an explicit environment, for tests.
    pub fn load_from(
        file: Option<&Path>,
        env: &HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let file = match file {
            Some(path) => Some(path),
            None => Some(Path::new(DEFAULT_CONFIG_FILE)).filter(|p| p.exists()),
        };
        let mut figment = Figment::new();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            figment = figment.merge(Toml::string(&text));
        }
        let env = with_files(env)?;
        figment = figment.merge(env::Environment::new(&env));
        let mut settings: Settings = figment
            .extract()
            .map_err(|e| from_figment(e, file.unwrap_or(Path::new("(none)"))))?;
        // The embedder decides the dimension of every vector, client-supplied
        // embeddings included.
        if settings.vectors.embedder == EmbedderKind::Http {
            settings.commands.embedding_dimension = settings.vectors.http_dimension;
        }
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (name, url) in [
            ("database.url", Some(&self.database.url)),
            ("database.command_url", self.database.command_url.as_ref()),
            (
                "database.projector_url",
                self.database.projector_url.as_ref(),
            ),
            ("database.query_url", self.database.query_url.as_ref()),
        ] {
            let Some(url) = url.map(ExposeSecret::expose_secret) else {
                continue;
            };
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(ConfigError::Invalid {
                    name,
                    message: "must start with postgres:// or postgresql://".into(),
                });
            }
        }
        if let Some(mode) = &self.database.ssl_mode {
            crate::postgres::parse_ssl_mode(mode).map_err(|message| ConfigError::Invalid {
                name: "database.ssl_mode",
                message,
            })?;
        }
        if self.http.tls_cert.is_some() != self.http.tls_key.is_some() {
            return Err(ConfigError::Invalid {
                name: "http.tls_cert",
                message: "HTTPS needs both a certificate (COPILOT_HTTP_TLS_CERT) and a key (COPILOT_HTTP_TLS_KEY)".into(),
            });
        }
        if self.database.max_connections == 0
            || self.database.min_connections > self.database.max_connections
        {
            return Err(ConfigError::Invalid {
                name: "database.max_connections",
                message: "must be at least 1 and at least min_connections".into(),
            });
        }
        if self.nats.prefix.is_empty() || self.nats.prefix.contains(['.', '*', '>', ' ']) {
            return Err(ConfigError::Invalid {
                name: "nats.prefix",
                message: "must be one non-empty subject token (no '.', '*', '>' or spaces)".into(),
            });
        }
        let embedder_dimension = match self.vectors.embedder {
            EmbedderKind::Local => 384,
            EmbedderKind::Http => {
                if self.vectors.http_url.is_none() {
                    return Err(ConfigError::Invalid {
                        name: "vectors.http_url",
                        message: "the http embedder needs a URL (COPILOT_EMBEDDER_URL)".into(),
                    });
                }
                self.vectors.http_dimension
            }
        };
        // Client-supplied embeddings are checked against this dimension,
        // and the store's collections have the embedder's.
        if self.commands.embedding_dimension != embedder_dimension {
            return Err(ConfigError::Invalid {
                name: "commands.embedding_dimension",
                message: format!(
                    "is {}, but the configured embedder makes vectors of {embedder_dimension}",
                    self.commands.embedding_dimension
                ),
            });
        }
        if self.projector.batch_size == 0 {
            return Err(ConfigError::Invalid {
                name: "projector.batch_size",
                message: "must be positive".into(),
            });
        }
        if self.event_store.max_payload_bytes == 0 || self.event_store.batch_size == 0 {
            return Err(ConfigError::Invalid {
                name: "event_store",
                message: "max_payload_bytes and batch_size must be positive".into(),
            });
        }
        if self.event_store.group_commits_in_flight == 0 {
            return Err(ConfigError::Invalid {
                name: "event_store.group_commits_in_flight",
                message: "must be at least 1".into(),
            });
        }
        Ok(())
    }
}

/// Every variable may also be given as `<NAME>_FILE`, a file holding the
/// value (how container platforms hand secrets over); a trailing line break
/// is not part of it, and the variable itself wins over its file.
fn with_files(env: &HashMap<String, String>) -> Result<HashMap<String, String>, ConfigError> {
    let mut all = env.clone();
    for (name, path) in env {
        let Some(name) = name.strip_suffix("_FILE") else {
            continue;
        };
        if env.get(name).is_some_and(|v| !v.is_empty()) {
            continue;
        }
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
            name: "<NAME>_FILE",
            message: format!("{name}_FILE={path}: {e}"),
        })?;
        all.insert(
            name.to_owned(),
            text.trim_end_matches(['\n', '\r']).to_owned(),
        );
    }
    Ok(all)
}

/// Names the variable (or the file and key) a value came from.
fn from_figment(error: figment::Error, file: &Path) -> ConfigError {
    let key = error.path.join(".");
    let from_env = error
        .metadata
        .as_ref()
        .is_some_and(|m| m.name == env::SOURCE);
    match env::var_of(&key) {
        Some(var) if from_env => ConfigError::Invalid {
            name: var.name,
            message: format!("{} ({key})", error.kind),
        },
        _ => ConfigError::Parse {
            path: file.to_owned(),
            message: if key.is_empty() {
                error.kind.to_string()
            } else {
                format!("{key}: {}", error.kind)
            },
        },
    }
}

fn addr_or_off<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    if text == "off" {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("{text:?}: {e} (or \"off\")")))
}

mod seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs(u64::deserialize(d)?))
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_point_at_loopback_services() {
        let s = Settings::load_from(Some(Path::new("/dev/null")), &env(&[])).expect("defaults");
        assert_eq!(
            s.database.url.expose_secret(),
            "postgres://postgres@127.0.0.1:5432/copilot"
        );
        assert_eq!(s.redis.prefix, "copilot:");
        assert_eq!(s.nats.prefix, "copilot");
        assert_eq!(s.http.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(s.database.max_connections, 50);
        assert!(s.bootstrap_token.is_none());
    }

    /// Every variable may come from a file (`<NAME>_FILE`), as container
    /// platforms hand secrets over; a missing file names the variable.
    #[test]
    fn secrets_are_read_from_files() {
        let dir =
            std::env::temp_dir().join(format!("copilot-secrets-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write");
            path.display().to_string()
        };
        let token = write("token", "s3cret-bootstrap\n");
        let url = write(
            "url",
            "postgres://copilot_command:pw@db.internal:5432/copilot\n",
        );
        let password = write("nats", "nats-pw");
        let s = Settings::load_from(
            Some(Path::new("/dev/null")),
            &env(&[
                ("COPILOT_BOOTSTRAP_TOKEN_FILE", &token),
                ("COPILOT_COMMAND_DATABASE_URL_FILE", &url),
                ("COPILOT_NATS_USER", "copilot-command"),
                ("COPILOT_NATS_PASSWORD_FILE", &password),
            ]),
        )
        .expect("load");
        assert_eq!(
            s.bootstrap_token.as_ref().map(|t| t.expose_secret()),
            Some("s3cret-bootstrap")
        );
        assert_eq!(
            s.database.command_url.as_ref().map(|u| u.expose_secret()),
            Some("postgres://copilot_command:pw@db.internal:5432/copilot")
        );
        assert_eq!(
            s.nats.password.as_ref().map(|p| p.expose_secret()),
            Some("nats-pw")
        );
        // The variable itself wins over its file.
        let s = Settings::load_from(
            Some(Path::new("/dev/null")),
            &env(&[
                ("COPILOT_BOOTSTRAP_TOKEN", "direct"),
                ("COPILOT_BOOTSTRAP_TOKEN_FILE", &token),
            ]),
        )
        .expect("load");
        assert_eq!(
            s.bootstrap_token.as_ref().map(|t| t.expose_secret()),
            Some("direct")
        );
        let missing = Settings::load_from(
            Some(Path::new("/dev/null")),
            &env(&[("COPILOT_REDIS_URL_FILE", "/nonexistent/redis-url")]),
        )
        .expect_err("a missing file");
        assert!(
            missing.to_string().contains("COPILOT_REDIS_URL_FILE"),
            "{missing}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn file_then_environment_override_defaults() {
        let dir = std::env::temp_dir().join(format!("copilot-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("copilot.toml");
        std::fs::write(
            &file,
            "log = \"debug\"\n[nats]\nprefix = \"fromfile\"\n[database]\nmax_connections = 7\n",
        )
        .expect("write config");
        let s = Settings::load_from(
            Some(&file),
            &env(&[
                ("COPILOT_NATS_PREFIX", "fromenv"),
                ("COPILOT_HTTP_ADDR", "0.0.0.0:9000"),
            ]),
        )
        .expect("load");
        assert_eq!(s.log, "debug");
        assert_eq!(s.nats.prefix, "fromenv");
        assert_eq!(s.database.max_connections, 7);
        assert_eq!(s.http.addr.port(), 9000);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn group_commits_in_flight_is_set_and_checked() {
        let none = Path::new("/dev/null");
        let s = Settings::load_from(Some(none), &env(&[])).expect("defaults");
        assert_eq!(s.event_store.group_commits_in_flight, 1);
        let s = Settings::load_from(
            Some(none),
            &env(&[("COPILOT_GROUP_COMMITS_IN_FLIGHT", "2")]),
        )
        .expect("two");
        assert_eq!(s.event_store.group_commits_in_flight, 2);
        let err = Settings::load_from(
            Some(none),
            &env(&[("COPILOT_GROUP_COMMITS_IN_FLIGHT", "0")]),
        )
        .expect_err("none in flight");
        assert!(err.to_string().contains("group_commits_in_flight"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let err = Settings::load_from(
            Some(Path::new("/dev/null")),
            &env(&[("COPILOT_HTTP_ADDR", "nope")]),
        )
        .expect_err("bad address");
        assert!(err.to_string().contains("COPILOT_HTTP_ADDR"), "{err}");
        let err = Settings::load_from(
            Some(Path::new("/dev/null")),
            &env(&[("COPILOT_NATS_PREFIX", "a.b")]),
        )
        .expect_err("bad prefix");
        assert!(err.to_string().contains("nats.prefix"), "{err}");
        for (name, value) in [
            ("COPILOT_HTTP_CACHE_TTL_SECS", "five"),
            ("COPILOT_HTTP_CACHE_TTL_SECS", "-1"),
            ("COPILOT_HTTP_RATE_LIMIT_PER_MINUTE", "lots"),
        ] {
            let err = Settings::load_from(Some(Path::new("/dev/null")), &env(&[(name, value)]))
                .expect_err(name);
            assert!(err.to_string().contains(name), "{err}");
        }
        let s = Settings::load_from(
            Some(Path::new("/dev/null")),
            &env(&[
                ("COPILOT_HTTP_CACHE_TTL_SECS", "30"),
                ("COPILOT_HTTP_RATE_LIMIT_PER_MINUTE", "0"),
                (
                    "COPILOT_REPLICA_DATABASE_URL",
                    "postgres://replica:5432/copilot",
                ),
            ]),
        )
        .expect("query API settings");
        assert_eq!(s.http.cache_ttl, Duration::from_secs(30));
        assert_eq!(s.http.rate_limit_per_minute, 0);
        assert!(s.http.replica_url.is_some());
    }

    #[test]
    fn embedder_settings_are_checked() {
        let load =
            |pairs: &[(&str, &str)]| Settings::load_from(Some(Path::new("/dev/null")), &env(pairs));
        let err = load(&[("COPILOT_EMBEDDER", "magic")]).expect_err("unknown embedder");
        assert!(err.to_string().contains("COPILOT_EMBEDDER"), "{err}");
        let err = load(&[("COPILOT_EMBEDDER", "http")]).expect_err("no URL");
        assert!(err.to_string().contains("vectors.http_url"), "{err}");
        // The http embedder's dimension becomes the commands' one.
        let s = load(&[
            ("COPILOT_EMBEDDER", "http"),
            ("COPILOT_EMBEDDER_URL", "http://127.0.0.1:8000/v1"),
        ])
        .expect("http embedder");
        assert_eq!(s.commands.embedding_dimension, 1536);
        let err = load(&[("COPILOT_EMBEDDER_DIMENSION", "x")]).expect_err("bad number");
        assert!(
            err.to_string().contains("COPILOT_EMBEDDER_DIMENSION"),
            "{err}"
        );
        let mismatch = std::env::temp_dir().join(format!(
            "copilot-dimension-mismatch-{}.toml",
            uuid::Uuid::new_v4()
        ));
        std::fs::write(&mismatch, "[commands]\nembedding_dimension = 1536\n").expect("write");
        let err = Settings::load_from(Some(&mismatch), &env(&[])).expect_err("local model is 384");
        let _ = std::fs::remove_file(&mismatch);
        assert!(
            err.to_string().contains("commands.embedding_dimension"),
            "{err}"
        );
    }

    #[test]
    fn the_example_file_is_valid() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/copilot.example.toml");
        let s = Settings::load_from(Some(&example), &env(&[])).expect("example parses");
        assert_eq!(s.event_store.poll_interval, Duration::from_millis(500));
        assert_eq!(s.database.idle_timeout, Duration::from_secs(600));
    }

    /// Every setting can be set from the environment, each variable sets
    /// its own key, and a secret never prints.
    #[test]
    fn every_setting_comes_from_its_variable() {
        let example = |v: &env::Var| -> String {
            match v.key {
                k if k.ends_with("url") && k.starts_with("database") => {
                    format!("postgres://u:{}@db/x", v.name.len())
                }
                "http.replica_url" => "postgres://u:replica-pw@replica/x".into(),
                "redis.url" => "redis://:redis-pw@cache:6379".into(),
                "database.ssl_mode" => "verify-full".into(),
                "database.max_connections" => "77".into(),
                "database.min_connections" => "7".into(),
                "nats.prefix" => "envprefix".into(),
                "http.addr" => "127.0.0.1:9123".into(),
                "commands.metrics_addr" => "127.0.0.1:9124".into(),
                "http.cors_origins" => "https://a.example, https://b.example".into(),
                "commands.trusted_agents" => "018f0000-0000-7000-8000-000000000001".into(),
                "vectors.embedder" => "http".into(),
                "vectors.http_dimension" | "commands.embedding_dimension" => "1536".into(),
                "log" => "warn,copilot=debug".into(),
                _ => match v.kind {
                    env::Kind::Scalar
                        if v.key.ends_with("insecure")
                            || v.key.ends_with("required")
                            || v.key.ends_with("enabled")
                            || v.key.ends_with("poison")
                            || v.key.ends_with("relay")
                            || v.key.ends_with("redis") =>
                    {
                        "true".into()
                    }
                    env::Kind::Scalar => format!("{}", 4000 + v.name.len() * 7 % 97),
                    _ => format!("/etc/copilot/{}", v.name.to_lowercase()),
                },
            }
        };
        let mut vars: HashMap<String, String> = env::VARS
            .iter()
            .map(|v| (v.name.to_owned(), example(v)))
            .collect();
        // One through a file, as a container platform hands it over.
        let file = std::env::temp_dir().join(format!("copilot-token-{}", uuid::Uuid::new_v4()));
        std::fs::write(&file, "from-a-file\n").expect("write");
        vars.remove("COPILOT_BOOTSTRAP_TOKEN");
        vars.insert(
            "COPILOT_BOOTSTRAP_TOKEN_FILE".into(),
            file.display().to_string(),
        );
        let s = Settings::load_from(Some(Path::new("/dev/null")), &vars).expect("every variable");
        let _ = std::fs::remove_file(&file);
        assert_eq!(
            s.bootstrap_token.as_ref().map(|t| t.expose_secret()),
            Some("from-a-file")
        );
        assert_eq!(s.database.max_connections, 77);
        assert_eq!(s.database.min_connections, 7);
        assert_eq!(s.http.cors_origins.len(), 2);
        assert_eq!(s.commands.trusted_agents.len(), 1);
        assert_eq!(s.commands.metrics_addr.map(|a| a.port()), Some(9124));
        assert_eq!(s.vectors.embedder, EmbedderKind::Http);
        let printed = format!("{s:#?}");
        for v in env::VARS
            .iter()
            .filter(|v| v.name != "COPILOT_BOOTSTRAP_TOKEN")
        {
            let value = example(v);
            let number = || value.parse::<u64>().unwrap_or_default();
            let shown = match v.kind {
                env::Kind::List => value
                    .split(',')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_owned(),
                _ if v.name.ends_with("_MS") => format!("{:?}", Duration::from_millis(number())),
                _ if v.name.ends_with("_SECS") => format!("{:?}", Duration::from_secs(number())),
                _ => value.clone(),
            };
            if v.secret {
                assert!(!printed.contains(&value), "{} printed: {printed}", v.name);
            } else {
                assert!(
                    printed.contains(&shown),
                    "{} ({shown}) not in {printed}",
                    v.name
                );
            }
        }
        assert!(!printed.contains("from-a-file"));
        // "off" turns the metrics endpoint off.
        let off = Settings::load_from(
            Some(Path::new("/dev/null")),
            &env(&[("COPILOT_METRICS_ADDR", "off")]),
        )
        .expect("off");
        assert_eq!(off.commands.metrics_addr, None);
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Settings::load_from(
            Some(Path::new("/dev/null")),
            &env(&[
                ("COPILOT_BOOTSTRAP_TOKEN", "hunter2"),
                ("COPILOT_DATABASE_URL", "postgres://u:pw@h/db"),
                ("COPILOT_QDRANT_API_KEY", "qdrant-key-1"),
                ("COPILOT_QDRANT_TIMEOUT_SECS", "3"),
            ]),
        )
        .expect("load");
        assert_eq!(s.vectors.qdrant_timeout, Duration::from_secs(3));
        assert!(s.vectors.qdrant_api_key.is_some());
        let printed = format!("{s:?}");
        assert!(
            !printed.contains("hunter2")
                && !printed.contains("pw@")
                && !printed.contains("qdrant-key-1"),
            "{printed}"
        );
    }
}
