//! What every handler takes from a request: the authenticated caller (who
//! also passes the rate limit here), the consistency headers, and query
//! parameters validated one by one so a bad one is named in the problem.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, Method};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use eventstore::Position;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::auth::{Prefetch, Principal};
use crate::db::Consistency;
use crate::metrics::metrics;
use crate::problem::ApiError;
use crate::state::{AppState, CacheSpec};

/// `X-Wait-Ms` when the request does not say, and the most it may say.
pub const DEFAULT_WAIT: Duration = Duration::from_millis(5000);
pub const MAX_WAIT: Duration = Duration::from_millis(30_000);

/// The signed-in caller, within their rate limit, and for a cacheable read
/// what the credential's lookup found of the answer.
pub struct Caller {
    pub principal: Principal,
    /// The digest of the request's path and query (see [`request_digest`]).
    request: String,
    prefetch: Mutex<Prefetch>,
}

impl Deref for Caller {
    type Target = Principal;

    fn deref(&self) -> &Principal {
        &self.principal
    }
}

impl Caller {
    /// Where this request's answer is cached for this caller, listed in
    /// `tags` (`{type}:{id}` or `{type}:all`).
    pub fn cache_spec(&self, tags: Vec<String>) -> CacheSpec {
        let prefetched = self
            .prefetch
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default();
        CacheSpec {
            key: CacheSpec::key(&self.principal, &self.request),
            tags,
            prefetched,
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = match parts.headers.get(header::AUTHORIZATION) {
            None => None,
            Some(value) => Some(value.to_str().map_err(|_| {
                ApiError::Unauthorized("malformed Authorization header: not visible ASCII")
            })?),
        };
        let request = request_digest(parts);
        // The cached answer comes with the credential when the answer may
        // come from the cache at all.
        let cacheable = parts.method == Method::GET && !wants_fresh(parts);
        let limit = state.rate_limit.as_ref();
        let looked = state
            .auth
            .authenticate_for(header, cacheable.then_some(request.as_str()), limit)
            .await?;
        let principal = looked.principal;
        if let Some(limit) = limit {
            let decided = match looked.decision {
                Some(decision) => Ok(decision),
                None => limit.check(&principal.user_id.to_string()).await,
            };
            match decided {
                Ok(decision) if !decision.allowed => {
                    metrics().rate_limited.with_label_values(&["refused"]).inc();
                    return Err(ApiError::RateLimited(decision.retry_after));
                }
                Ok(_) => {}
                // Fail open: the limit protects the service, and Redis
                // being down must not take the read API down with it.
                Err(error) => {
                    metrics()
                        .rate_limited
                        .with_label_values(&["unchecked"])
                        .inc();
                    tracing::debug!(%error, "rate limit unchecked: Redis unavailable");
                }
            }
        }
        Ok(Caller {
            principal,
            request,
            prefetch: Mutex::new(looked.prefetch),
        })
    }
}

/// What names a read's answer for one caller: the path and the query's
/// parameters in name order (a repeated name is refused by [`Params`]).
/// Everything else a handler reads comes from these or from the caller.
fn request_digest(parts: &Parts) -> String {
    let mut pairs: Vec<_> =
        url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes()).collect();
    pairs.sort();
    let mut named = vec![parts.uri.path()];
    for (name, value) in &pairs {
        named.push(name);
        named.push(value);
    }
    digest_of(&named)
}

/// A digest of `parts`, each prefixed with its length so that no two
/// different lists give the same bytes.
pub(crate) fn digest_of(parts: &[&str]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part.len().to_le_bytes());
        hash.update(part.as_bytes());
    }
    infra::auth::lower_hex(&hash.finalize()[..16])
}

/// `Cache-Control: no-cache` (or `no-store`, `max-age=0`).
fn wants_fresh(parts: &Parts) -> bool {
    parts
        .headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| {
            matches!(
                d.trim().to_ascii_lowercase().as_str(),
                "no-cache" | "no-store" | "max-age=0"
            )
        })
}

/// `X-Min-Position`, `X-Wait-Ms` and `Cache-Control`.
pub struct ReadConsistency(pub Consistency);

impl<S: Sync> FromRequestParts<S> for ReadConsistency {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let text = |name: &'static str| -> Result<Option<&str>, ApiError> {
            parts
                .headers
                .get(name)
                .map(|v| {
                    v.to_str()
                        .map(str::trim)
                        .map_err(|_| ApiError::bad(name, format!("{name} is not visible ASCII")))
                })
                .transpose()
        };
        let min = text("x-min-position")?
            .map(|v| {
                Position::from_str(v).map_err(|e| ApiError::bad("X-Min-Position", e.to_string()))
            })
            .transpose()?;
        let wait = match text("x-wait-ms")? {
            None => DEFAULT_WAIT,
            Some(v) => {
                let ms: u64 = v.parse().map_err(|_| {
                    ApiError::bad(
                        "X-Wait-Ms",
                        format!("{v:?} is not a whole number of milliseconds"),
                    )
                })?;
                let wait = Duration::from_millis(ms);
                if wait > MAX_WAIT {
                    return Err(ApiError::bad(
                        "X-Wait-Ms",
                        format!("at most {} ms", MAX_WAIT.as_millis()),
                    ));
                }
                wait
            }
        };
        let fresh = wants_fresh(parts);
        Ok(ReadConsistency(Consistency { min, wait, fresh }))
    }
}

/// The query string, parsed into name → value (each name at most once).
pub struct Params(pub BTreeMap<String, String>);

impl<S: Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let mut map = BTreeMap::new();
        for (name, value) in url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
        {
            if map.insert(name.to_string(), value.to_string()).is_some() {
                return Err(ApiError::bad(
                    "query",
                    format!("parameter {name:?} is given more than once"),
                ));
            }
        }
        Ok(Params(map))
    }
}

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 200;

impl Params {
    /// Refuses any parameter not in `allowed` (a typo must not silently
    /// widen a filtered list).
    pub fn only(&self, allowed: &[&'static str]) -> Result<(), ApiError> {
        match self.0.keys().find(|k| !allowed.contains(&k.as_str())) {
            None => Ok(()),
            Some(unknown) => Err(ApiError::bad(
                "query",
                format!(
                    "unknown parameter {:?}; this endpoint takes {}",
                    unknown.chars().take(64).collect::<String>(),
                    allowed.join(", ")
                ),
            )),
        }
    }

    pub fn text(&self, name: &'static str) -> Result<Option<String>, ApiError> {
        match self.0.get(name) {
            None => Ok(None),
            Some(v) if v.is_empty() || v.len() > 200 => Err(ApiError::bad(
                name,
                format!("{name} must be 1 to 200 characters"),
            )),
            // Stored text never holds control characters (the domain refuses
            // them), and PostgreSQL cannot even compare a NUL: say so rather
            // than let the query fail.
            Some(v) if v.chars().any(char::is_control) => Err(ApiError::bad(
                name,
                format!("{name} must not contain control characters"),
            )),
            Some(v) => Ok(Some(v.clone())),
        }
    }

    /// A value that must be one of `allowed`.
    pub fn one_of(&self, name: &'static str, allowed: &[&str]) -> Result<Option<String>, ApiError> {
        match self.0.get(name) {
            None => Ok(None),
            Some(v) if allowed.contains(&v.as_str()) => Ok(Some(v.clone())),
            Some(v) => Err(ApiError::bad(
                name,
                format!(
                    "{:?} is not a {name}; expected one of {}",
                    v.chars().take(64).collect::<String>(),
                    allowed.join(", ")
                ),
            )),
        }
    }

    pub fn uuid(&self, name: &'static str) -> Result<Option<Uuid>, ApiError> {
        self.0
            .get(name)
            .map(|v| {
                Uuid::try_parse(v)
                    .map_err(|_| ApiError::bad(name, format!("{name} must be a UUID")))
            })
            .transpose()
    }

    pub fn time(&self, name: &'static str) -> Result<Option<DateTime<Utc>>, ApiError> {
        self.0
            .get(name)
            .map(|v| {
                DateTime::parse_from_rfc3339(v)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| ApiError::bad(name, format!("{name} must be an RFC 3339 time")))
            })
            .transpose()
    }

    /// `limit`: 1–200, default 50.
    pub fn limit(&self) -> Result<i64, ApiError> {
        match self.0.get("limit") {
            None => Ok(DEFAULT_LIMIT),
            Some(v) => match v.parse::<i64>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
                _ => Err(ApiError::bad(
                    "limit",
                    format!("limit must be a whole number from 1 to {MAX_LIMIT}"),
                )),
            },
        }
    }

    /// The position after which the page starts (`cursor`).
    pub fn cursor<K: CursorKey>(&self) -> Result<Option<K>, ApiError> {
        self.0
            .get("cursor")
            .map(|v| {
                URL_SAFE_NO_PAD
                    .decode(v)
                    .ok()
                    .and_then(|raw| String::from_utf8(raw).ok())
                    .and_then(|text| K::parse(&text))
                    .ok_or_else(|| ApiError::bad("cursor", "not a cursor this list returned"))
            })
            .transpose()
    }
}

/// What a list is ordered by, encoded into its opaque cursor.
pub trait CursorKey: Sized {
    fn render(&self) -> String;
    fn parse(text: &str) -> Option<Self>;

    fn cursor(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.render())
    }
}

/// Newest first: `(time, id)` descending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeId(pub DateTime<Utc>, pub Uuid);

impl CursorKey for TimeId {
    fn render(&self) -> String {
        format!(
            "{}|{}",
            self.0.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            self.1
        )
    }

    fn parse(text: &str) -> Option<Self> {
        let (time, id) = text.split_once('|')?;
        Some(TimeId(
            DateTime::parse_from_rfc3339(time).ok()?.with_timezone(&Utc),
            Uuid::try_parse(id).ok()?,
        ))
    }
}

/// In order: a sequence number ascending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seq(pub i64);

impl CursorKey for Seq {
    fn render(&self) -> String {
        format!("seq:{}", self.0)
    }

    fn parse(text: &str) -> Option<Self> {
        text.strip_prefix("seq:")?.parse().ok().map(Seq)
    }
}

/// A page of `limit` rows from `limit + 1` fetched: the rows and the cursor
/// of the next page, if there is one.
pub fn page<T, K: CursorKey>(
    mut rows: Vec<T>,
    limit: i64,
    key: impl Fn(&T) -> K,
) -> (Vec<T>, Option<String>) {
    let limit = usize::try_from(limit).unwrap_or(0);
    if rows.len() > limit {
        rows.truncate(limit);
        let next = rows.last().map(|last| key(last).cursor());
        (rows, next)
    } else {
        (rows, None)
    }
}

/// A path segment that must be a UUID.
pub fn path_id(raw: &str, what: &'static str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(raw).map_err(|_| ApiError::bad(what, format!("{what} must be a UUID")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let key = TimeId(Utc::now(), Uuid::now_v7());
        let mut map = BTreeMap::new();
        map.insert("cursor".to_string(), key.cursor());
        let params = Params(map);
        let parsed: Option<TimeId> = params.cursor().expect("parses");
        // Microseconds survive: PostgreSQL keeps nothing finer.
        assert_eq!(parsed.map(|k| k.1), Some(key.1));

        let mut map = BTreeMap::new();
        map.insert("cursor".to_string(), "!!".to_string());
        assert!(Params(map).cursor::<TimeId>().is_err());
        let mut map = BTreeMap::new();
        map.insert("cursor".to_string(), Seq(3).cursor());
        assert!(
            Params(map).cursor::<TimeId>().is_err(),
            "another list's cursor"
        );
    }

    #[test]
    fn request_digests_are_unambiguous_and_ignore_parameter_order() {
        let digest = |uri: &str| {
            let (parts, ()) = axum::http::Request::builder()
                .uri(uri)
                .body(())
                .expect("request")
                .into_parts();
            request_digest(&parts)
        };
        // A value cannot pass for a separator, nor one name for another.
        assert_ne!(digest("/v1/x?a=x%26b%3Dy"), digest("/v1/x?a=x&b=y"));
        assert_ne!(digest("/v1/x?a=1%3Ab"), digest("/v1/x?a=1&b="));
        assert_ne!(digest("/v1/x?a%00b=c"), digest("/v1/x?a=b%00c"));
        assert_ne!(digest("/v1/x"), digest("/v1/y"));
        assert_ne!(digest("/v1/x?a=1"), digest("/v1/x?a=2"));
        assert_eq!(digest("/v1/x?a=x&b=y"), digest("/v1/x?b=y&a=x"));
        assert_eq!(digest("/v1/x?a=x+y"), digest("/v1/x?a=x%20y"));
    }

    #[test]
    fn limits_are_checked() {
        for (given, ok) in [
            ("1", true),
            ("200", true),
            ("0", false),
            ("201", false),
            ("x", false),
            ("-5", false),
        ] {
            let mut map = BTreeMap::new();
            map.insert("limit".to_string(), given.to_string());
            assert_eq!(Params(map).limit().is_ok(), ok, "{given}");
        }
    }
}
