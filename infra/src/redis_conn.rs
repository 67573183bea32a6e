//! The Redis connection the services use where Redis is an optimisation or
//! a side channel: made on first use, so a Redis that is down at start-up
//! is not an error, and failing fast (half a second) while it is down.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use secrecy::{ExposeSecret, SecretString};

use crate::config::RedisSettings;
use crate::tls::TlsFiles;

/// A Redis server and how to reach it: its URL (`rediss://` for TLS) and
/// the TLS files to use. Every client the services make comes from here.
#[derive(Debug, Clone)]
pub struct RedisTarget {
    pub url: SecretString,
    pub tls: TlsFiles,
    /// TLS without checking the server's certificate (warned about).
    pub insecure: bool,
}

impl From<&str> for RedisTarget {
    fn from(url: &str) -> Self {
        RedisTarget {
            url: SecretString::from(url.to_string()),
            tls: TlsFiles::default(),
            insecure: false,
        }
    }
}

impl From<String> for RedisTarget {
    fn from(url: String) -> Self {
        RedisTarget::from(url.as_str())
    }
}

impl From<&String> for RedisTarget {
    fn from(url: &String) -> Self {
        RedisTarget::from(url.as_str())
    }
}

impl From<&RedisSettings> for RedisTarget {
    fn from(settings: &RedisSettings) -> Self {
        RedisTarget {
            url: settings.url.clone(),
            tls: settings.tls.clone(),
            insecure: settings.tls_insecure,
        }
    }
}

impl RedisTarget {
    /// The URL without its password, for messages.
    pub fn redacted(&self) -> String {
        crate::redact::url(self.url.expose_secret())
    }

    /// A client for this server (nothing is dialled yet).
    pub fn client(&self) -> Result<redis::Client, redis::RedisError> {
        crate::tls::install_crypto_provider();
        let url = self.url.expose_secret();
        if self.tls.is_empty() && !self.insecure {
            return redis::Client::open(url);
        }
        let tls_error = |e: crate::tls::TlsFileError| {
            redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "TLS file",
                e.to_string(),
            ))
        };
        // redis-rs reads "do not verify" from the URL's fragment.
        let url = if self.insecure && !url.ends_with("#insecure") {
            tracing::warn!(redis = %self.redacted(), "TLS to Redis without certificate verification, as configured");
            format!("{url}#insecure")
        } else {
            url.to_string()
        };
        let client_tls = match (
            TlsFiles::read(self.tls.cert.as_ref()).map_err(tls_error)?,
            TlsFiles::read(self.tls.key.as_ref()).map_err(tls_error)?,
        ) {
            (Some(client_cert), Some(client_key)) => Some(redis::ClientTlsConfig {
                client_cert,
                client_key,
            }),
            _ => None,
        };
        redis::Client::build_with_tls(
            url.as_str(),
            redis::TlsCertificates {
                client_tls,
                root_cert: TlsFiles::read(self.tls.ca.as_ref()).map_err(tls_error)?,
            },
        )
    }
}

pub fn lazy(target: &RedisTarget) -> Result<ConnectionManager, redis::RedisError> {
    let client = target.client()?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_millis(500)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client, config)
}

/// Runs `pipe`, whose scripts are among `scripts`; if Redis lacks one of
/// them (after a restart or `SCRIPT FLUSH`: a pipeline does not load them,
/// and an invocation that finds its script missing did not run), loads
/// them and runs the pipeline once more. For pipelines whose other
/// commands may run twice.
pub async fn query_loading<T: redis::FromRedisValue>(
    pipe: &redis::Pipeline,
    scripts: &[&redis::Script],
    conn: &mut ConnectionManager,
) -> redis::RedisResult<T> {
    match pipe.query_async(conn).await {
        Err(error)
            if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
        {
            for script in scripts {
                script.load_async(conn).await?;
            }
            pipe.query_async(conn).await
        }
        answered => answered,
    }
}

/// `literal` as a glob (`SCAN MATCH`, `KEYS`) that matches only itself: a
/// key prefix may hold `*`, `?`, `[` or `\`, and unescaped they would match
/// other deployments' keys too.
pub fn glob_escape(literal: &str) -> String {
    let mut escaped = String::with_capacity(literal.len());
    for c in literal.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// Deletes every key under `prefix` on the Redis at `url`: all that a
/// deployment, a bench or a test with that prefix made. Returns how many it
/// deleted.
pub async fn delete_prefix(
    target: impl Into<RedisTarget>,
    prefix: &str,
) -> Result<u64, redis::RedisError> {
    let mut conn = target
        .into()
        .client()?
        .get_multiplexed_async_connection()
        .await?;
    delete_matching(&mut conn, prefix, "*").await
}

/// Deletes (`UNLINK`) the keys that start with `prefix` and whose rest
/// matches the glob `pattern`, scanning rather than `KEYS` so that a
/// shared Redis is not blocked while it looks. Returns how many it deleted.
pub async fn delete_matching(
    conn: &mut impl redis::aio::ConnectionLike,
    prefix: &str,
    pattern: &str,
) -> Result<u64, redis::RedisError> {
    let pattern = format!("{}{pattern}", glob_escape(prefix));
    let mut deleted = 0u64;
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        if !keys.is_empty() {
            deleted += keys.len() as u64;
            redis::cmd("UNLINK")
                .arg(&keys)
                .query_async::<()>(conn)
                .await?;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(glob_escape("copilot:"), "copilot:");
        assert_eq!(glob_escape(r"a*b?[c]\"), r"a\*b\?\[c\]\\");
    }

    /// A prefix with glob characters deletes its own keys only, not those
    /// of a prefix it would match as a glob.
    #[tokio::test]
    async fn delete_matching_keeps_to_its_prefix() {
        let client = redis::Client::open("redis://127.0.0.1:6379").expect("redis url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("Redis on 127.0.0.1:6379");
        let base = format!("test:{}:", uuid::Uuid::new_v4().simple());
        let ours = format!("{base}a*:");
        let theirs = format!("{base}ab:");
        for key in [
            format!("{ours}cache:1"),
            format!("{ours}cache:2"),
            format!("{ours}session:1"),
            format!("{theirs}cache:1"),
        ] {
            redis::cmd("SET")
                .arg(&key)
                .arg(1)
                .query_async::<()>(&mut conn)
                .await
                .expect("set");
        }
        let deleted = delete_matching(&mut conn, &ours, "cache:*")
            .await
            .expect("delete");
        assert_eq!(deleted, 2);
        let left: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{base}*"))
            .query_async(&mut conn)
            .await
            .expect("keys");
        let mut left = left;
        left.sort();
        assert_eq!(
            left,
            [format!("{ours}session:1"), format!("{theirs}cache:1")]
        );
        // All of a prefix, and only it.
        let url = "redis://127.0.0.1:6379";
        assert_eq!(delete_prefix(url, &ours).await.expect("delete"), 1);
        let theirs_left: Option<String> = redis::cmd("GET")
            .arg(format!("{theirs}cache:1"))
            .query_async(&mut conn)
            .await
            .expect("get");
        assert!(theirs_left.is_some(), "another prefix's key was deleted");
        assert_eq!(delete_prefix(url, &base).await.expect("clean up"), 1);
    }
}
