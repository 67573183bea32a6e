//! The `COPILOT_*` variables: one row per setting, read as a figment
//! provider whose errors name the variable, listed by `config check
//! --explain`.

use std::collections::HashMap;

use figment::value::{Dict, Map, Value};
use figment::{Error, Metadata, Profile, Provider};

/// How a variable's text becomes a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Taken as it is (URLs, paths, names, secrets: "0123" stays text).
    Text,
    /// A number or a boolean.
    Scalar,
    /// Comma-separated, blanks dropped.
    List,
}

/// A variable, the setting it sets (its key in the TOML file) and how.
#[derive(Debug, Clone, Copy)]
pub struct Var {
    pub name: &'static str,
    pub key: &'static str,
    pub kind: Kind,
    /// Never printed (`config check` shows it masked).
    pub secret: bool,
}

const fn var(name: &'static str, key: &'static str, kind: Kind) -> Var {
    Var {
        name,
        key,
        kind,
        secret: false,
    }
}

const fn secret(name: &'static str, key: &'static str) -> Var {
    Var {
        name,
        key,
        kind: Kind::Text,
        secret: true,
    }
}

use Kind::{List, Scalar, Text};

/// Every setting, in the order of the example file. Durations are in the
/// unit their name ends with (`_SECS`, `_MS`), as in the file.
pub const VARS: &[Var] = &[
    secret("COPILOT_DATABASE_URL", "database.url"),
    secret("COPILOT_COMMAND_DATABASE_URL", "database.command_url"),
    secret("COPILOT_PROJECTOR_DATABASE_URL", "database.projector_url"),
    secret("COPILOT_QUERY_DATABASE_URL", "database.query_url"),
    var("COPILOT_DATABASE_SSLMODE", "database.ssl_mode", Text),
    var(
        "COPILOT_DATABASE_SSLROOTCERT",
        "database.ssl_root_cert",
        Text,
    ),
    var("COPILOT_DATABASE_SSLCERT", "database.ssl_cert", Text),
    var("COPILOT_DATABASE_SSLKEY", "database.ssl_key", Text),
    var(
        "COPILOT_DATABASE_MAX_CONNECTIONS",
        "database.max_connections",
        Scalar,
    ),
    var(
        "COPILOT_DATABASE_MIN_CONNECTIONS",
        "database.min_connections",
        Scalar,
    ),
    var(
        "COPILOT_DATABASE_ACQUIRE_TIMEOUT_SECS",
        "database.acquire_timeout",
        Scalar,
    ),
    var(
        "COPILOT_DATABASE_IDLE_TIMEOUT_SECS",
        "database.idle_timeout",
        Scalar,
    ),
    var(
        "COPILOT_DATABASE_MAX_LIFETIME_SECS",
        "database.max_lifetime",
        Scalar,
    ),
    secret("COPILOT_REDIS_URL", "redis.url"),
    var("COPILOT_REDIS_PREFIX", "redis.prefix", Text),
    var("COPILOT_REDIS_TLS_CA", "redis.tls.ca", Text),
    var("COPILOT_REDIS_TLS_CERT", "redis.tls.cert", Text),
    var("COPILOT_REDIS_TLS_KEY", "redis.tls.key", Text),
    var("COPILOT_REDIS_TLS_INSECURE", "redis.tls_insecure", Scalar),
    var("COPILOT_NATS_URL", "nats.url", Text),
    var("COPILOT_NATS_PREFIX", "nats.prefix", Text),
    var("COPILOT_NATS_TLS", "nats.tls_required", Scalar),
    var("COPILOT_NATS_TLS_CA", "nats.tls.ca", Text),
    var("COPILOT_NATS_TLS_CERT", "nats.tls.cert", Text),
    var("COPILOT_NATS_TLS_KEY", "nats.tls.key", Text),
    var("COPILOT_NATS_USER", "nats.user", Text),
    secret("COPILOT_NATS_PASSWORD", "nats.password"),
    secret("COPILOT_NATS_TOKEN", "nats.token"),
    secret("COPILOT_NATS_NKEY_SEED", "nats.nkey_seed"),
    var("COPILOT_NATS_CREDS", "nats.creds_file", Text),
    var("COPILOT_NATS_INBOX_PREFIX", "nats.inbox_prefix", Text),
    var("COPILOT_HTTP_ADDR", "http.addr", Text),
    secret("COPILOT_REPLICA_DATABASE_URL", "http.replica_url"),
    var("COPILOT_HTTP_CACHE_TTL_SECS", "http.cache_ttl", Scalar),
    var(
        "COPILOT_HTTP_RATE_LIMIT_PER_MINUTE",
        "http.rate_limit_per_minute",
        Scalar,
    ),
    var(
        "COPILOT_HTTP_REQUEST_TIMEOUT_SECS",
        "http.request_timeout",
        Scalar,
    ),
    var("COPILOT_HTTP_TLS_CERT", "http.tls_cert", Text),
    var("COPILOT_HTTP_TLS_KEY", "http.tls_key", Text),
    var("COPILOT_HTTP_CORS_ORIGINS", "http.cors_origins", List),
    var("COPILOT_PROJECTOR_VECTORS", "vectors.enabled", Scalar),
    var("COPILOT_VECTOR_DIR", "vectors.dir", Text),
    var("COPILOT_QDRANT_URL", "vectors.qdrant_url", Text),
    secret("COPILOT_QDRANT_API_KEY", "vectors.qdrant_api_key"),
    var(
        "COPILOT_QDRANT_TIMEOUT_SECS",
        "vectors.qdrant_timeout",
        Scalar,
    ),
    var("COPILOT_EMBEDDER", "vectors.embedder", Text),
    var("COPILOT_MODEL_DIR", "vectors.model_dir", Text),
    var("COPILOT_EMBEDDER_URL", "vectors.http_url", Text),
    var("COPILOT_EMBEDDER_MODEL", "vectors.http_model", Text),
    var(
        "COPILOT_EMBEDDER_DIMENSION",
        "vectors.http_dimension",
        Scalar,
    ),
    secret("COPILOT_EMBEDDER_API_KEY", "vectors.http_api_key"),
    var(
        "COPILOT_BREAKER_THRESHOLD",
        "vectors.breaker_threshold",
        Scalar,
    ),
    var(
        "COPILOT_BREAKER_TIMEOUT_MS",
        "vectors.breaker_timeout",
        Scalar,
    ),
    var(
        "COPILOT_MAX_PAYLOAD_BYTES",
        "event_store.max_payload_bytes",
        Scalar,
    ),
    var(
        "COPILOT_MAX_EVENTS_PER_APPEND",
        "event_store.max_events_per_append",
        Scalar,
    ),
    var(
        "COPILOT_EVENT_STORE_POLL_INTERVAL_MS",
        "event_store.poll_interval",
        Scalar,
    ),
    var(
        "COPILOT_EVENT_STORE_BATCH_SIZE",
        "event_store.batch_size",
        Scalar,
    ),
    var(
        "COPILOT_GROUP_COMMITS_IN_FLIGHT",
        "event_store.group_commits_in_flight",
        Scalar,
    ),
    var(
        "COPILOT_MAX_MESSAGE_BYTES",
        "commands.max_message_bytes",
        Scalar,
    ),
    var(
        "COPILOT_RATE_LIMIT_PER_MINUTE",
        "commands.rate_limit_per_minute",
        Scalar,
    ),
    var(
        "COPILOT_EMBEDDING_DIMENSION",
        "commands.embedding_dimension",
        Scalar,
    ),
    var(
        "COPILOT_COMMANDS_MAX_IN_FLIGHT",
        "commands.max_in_flight",
        Scalar,
    ),
    var("COPILOT_METRICS_ADDR", "commands.metrics_addr", Text),
    var("COPILOT_TRUSTED_AGENTS", "commands.trusted_agents", List),
    var(
        "COPILOT_PROJECTOR_BATCH_SIZE",
        "projector.batch_size",
        Scalar,
    ),
    var(
        "COPILOT_PROJECTOR_SKIP_POISON",
        "projector.skip_poison",
        Scalar,
    ),
    var(
        "COPILOT_PROJECTOR_LEASE_RETRY_MS",
        "projector.lease_retry",
        Scalar,
    ),
    var("COPILOT_PROJECTOR_RELAY", "projector.relay", Scalar),
    var("COPILOT_PROJECTOR_REDIS", "projector.redis", Scalar),
    secret("COPILOT_BOOTSTRAP_TOKEN", "bootstrap_token"),
    secret("COPILOT_MASTER_KEY", "master_key"),
    var("COPILOT_LOG", "log", Text),
    var("COPILOT_OTLP_ENDPOINT", "otlp_endpoint", Text),
];

/// The variable that sets `key` (a dotted path), if one does.
pub fn var_of(key: &str) -> Option<&'static Var> {
    VARS.iter().find(|v| v.key == key)
}

/// The values of the variables that are set (not empty), as a provider.
pub struct Environment {
    values: Vec<(&'static Var, String)>,
}

/// Names this provider in figment's errors; see [`Environment::metadata`].
pub const SOURCE: &str = "environment";

impl Environment {
    /// `env` holds the variables, `<NAME>_FILE` already read.
    pub fn new(env: &HashMap<String, String>) -> Environment {
        let values = VARS
            .iter()
            .filter_map(|v| {
                let value = env.get(v.name).filter(|value| !value.is_empty())?;
                Some((v, value.clone()))
            })
            .collect();
        Environment { values }
    }
}

fn value_of(var: &Var, text: &str) -> Value {
    match var.kind {
        Kind::Text => Value::from(text.to_owned()),
        Kind::Scalar => text
            .parse::<Value>()
            .unwrap_or_else(|_| Value::from(text.to_owned())),
        Kind::List => Value::from(
            text.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| Value::from(item.to_owned()))
                .collect::<Vec<_>>(),
        ),
    }
}

impl Provider for Environment {
    fn metadata(&self) -> Metadata {
        // Errors name the variable, not the key it sets.
        Metadata::named(SOURCE).interpolater(|_profile, keys| {
            let key = keys.join(".");
            var_of(&key).map_or(key, |v| v.name.to_owned())
        })
    }

    fn data(&self) -> Result<Map<Profile, Dict>, Error> {
        let mut root = Dict::new();
        for (var, text) in &self.values {
            let mut parts: Vec<&str> = var.key.split('.').collect();
            let Some(leaf) = parts.pop() else { continue };
            let mut dict = &mut root;
            for part in parts {
                let entry = dict
                    .entry(part.to_owned())
                    .or_insert_with(|| Value::from(Dict::new()));
                let Value::Dict(_, inner) = entry else {
                    return Err(Error::from(format!("{}: {part} is a value", var.name)));
                };
                dict = inner;
            }
            dict.insert(leaf.to_owned(), value_of(var, text));
        }
        Ok(Profile::Default.collect(root))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variable_is_named_once_and_sets_one_key() {
        let mut names: Vec<_> = VARS.iter().map(|v| v.name).collect();
        let mut keys: Vec<_> = VARS.iter().map(|v| v.key).collect();
        names.sort_unstable();
        keys.sort_unstable();
        let (n, k) = (names.len(), keys.len());
        names.dedup();
        keys.dedup();
        assert_eq!((names.len(), keys.len()), (n, k), "a name or key twice");
        assert!(VARS.iter().all(|v| v.name.starts_with("COPILOT_")));
    }
}
