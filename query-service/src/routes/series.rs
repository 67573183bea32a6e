//! `GET /v1/series/{metric}`: per-bucket counts and sums over a time range,
//! for the dashboard's charts and for external dashboards. Answered from
//! the read model (each metric's time column indexed), as the caller may
//! see it (row-level security makes a plain user's series their own),
//! cached like every other read. `commands` counts commands by outcome
//! from the log and the stored rejections (a plain user's own);
//! `projection_lag` reads what each projection's leader records of how
//! long after its append each event was applied (the same for every
//! caller, as the summary's projection table is).

use axum::extract::{Path, State};
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::problem::{ApiError, ApiResult};
use crate::request::{Caller, Params, ReadConsistency};
use crate::state::{Answer, AppState, Cached};

/// Bucket sizes, by name.
const BUCKETS: [(&str, i64); 7] = [
    ("1m", 60),
    ("5m", 300),
    ("15m", 900),
    ("1h", 3_600),
    ("6h", 21_600),
    ("1d", 86_400),
    ("7d", 604_800),
];
/// At most this many buckets per answer.
pub const MAX_BUCKETS: i64 = 1_000;
/// At most this many points (buckets × label sets) per answer: many
/// workflows over many buckets would otherwise make an answer of any size.
pub const MAX_POINTS: usize = 10_000;

/// One metric: the statement that groups its rows into buckets.
struct Metric {
    name: &'static str,
    /// `SELECT bucket, labels, count, tokens, cost_usd` (and, for lag,
    /// `lag_max_seconds, lag_mean_seconds`) over `$1` (bucket seconds), `$2`
    /// (from, inclusive), `$3` (to, exclusive).
    sql: &'static str,
    cache_tags: &'static [&'static str],
    /// `$4` is the caller's id for a plain user (their own rows only, where
    /// row-level security does not apply), NULL for an admin.
    by_actor: bool,
}

const METRICS: [Metric; 8] = [
    Metric {
        name: "commands",
        sql: "SELECT date_bin(make_interval(secs => $1), c.at, timestamptz 'epoch') AS bucket,
                     jsonb_build_object('status', c.status) AS labels,
                     count(*) AS count, NULL::int8 AS tokens, NULL::float8 AS cost_usd
                FROM (SELECT e.recorded_at AS at, 'accepted'::text AS status, e.metadata->>'actor' AS actor
                        FROM events e
                       WHERE e.command_id IS NOT NULL AND e.recorded_at >= $2 AND e.recorded_at < $3
                      UNION ALL
                      SELECT r.recorded_at, r.status, r.actor FROM command_results r
                       WHERE r.recorded_at >= $2 AND r.recorded_at < $3) c
               WHERE $4::text IS NULL OR c.actor = $4
               GROUP BY 1, 2",
        // A rejection appends nothing, so no projection tells the cache:
        // such answers live for the cache's time to live.
        cache_tags: &["session:all", "conversation:all", "incident:all", "execution:all"],
        by_actor: true,
    },
    Metric {
        name: "messages",
        sql: "SELECT date_bin(make_interval(secs => $1), created_at, timestamptz 'epoch') AS bucket,
                     jsonb_build_object('role', role::text) AS labels,
                     count(*) AS count,
                     coalesce(sum(tokens_in + tokens_out), 0)::int8 AS tokens,
                     coalesce(sum(cost_usd), 0)::float8 AS cost_usd
                FROM read_model.messages
               WHERE created_at >= $2 AND created_at < $3
               GROUP BY 1, 2",
        cache_tags: &["conversation:all"],
        by_actor: false,
    },
    Metric {
        name: "conversations",
        sql: "SELECT date_bin(make_interval(secs => $1), created_at, timestamptz 'epoch') AS bucket,
                     '{}'::jsonb AS labels, count(*) AS count,
                     coalesce(sum(total_tokens), 0)::int8 AS tokens,
                     coalesce(sum(total_cost_usd), 0)::float8 AS cost_usd
                FROM read_model.conversations
               WHERE created_at >= $2 AND created_at < $3
               GROUP BY 1, 2",
        cache_tags: &["conversation:all"],
        by_actor: false,
    },
    Metric {
        name: "incidents_opened",
        sql: "SELECT date_bin(make_interval(secs => $1), opened_at, timestamptz 'epoch') AS bucket,
                     jsonb_build_object('severity', severity::text) AS labels,
                     count(*) AS count, NULL::int8 AS tokens, NULL::float8 AS cost_usd
                FROM read_model.incidents
               WHERE opened_at >= $2 AND opened_at < $3
               GROUP BY 1, 2",
        cache_tags: &["incident:all"],
        by_actor: false,
    },
    Metric {
        name: "incidents_resolved",
        sql: "SELECT date_bin(make_interval(secs => $1), resolved_at, timestamptz 'epoch') AS bucket,
                     jsonb_build_object('severity', severity::text) AS labels,
                     count(*) AS count, NULL::int8 AS tokens, NULL::float8 AS cost_usd
                FROM read_model.incidents
               WHERE resolved_at >= $2 AND resolved_at < $3
               GROUP BY 1, 2",
        cache_tags: &["incident:all"],
        by_actor: false,
    },
    Metric {
        name: "executions_started",
        sql: "SELECT date_bin(make_interval(secs => $1), e.started_at, timestamptz 'epoch') AS bucket,
                     jsonb_build_object('workflow', coalesce(w.name, e.workflow_id::text)) AS labels,
                     count(*) AS count, NULL::int8 AS tokens, NULL::float8 AS cost_usd
                FROM read_model.workflow_executions e
                LEFT JOIN read_model.workflows w ON w.id = e.workflow_id
               WHERE e.started_at >= $2 AND e.started_at < $3
               GROUP BY 1, 2",
        cache_tags: &["execution:all"],
        by_actor: false,
    },
    Metric {
        name: "executions_finished",
        sql: "SELECT date_bin(make_interval(secs => $1), e.finished_at, timestamptz 'epoch') AS bucket,
                     jsonb_build_object('workflow', coalesce(w.name, e.workflow_id::text),
                                        'status', e.status::text) AS labels,
                     count(*) AS count, NULL::int8 AS tokens, NULL::float8 AS cost_usd
                FROM read_model.workflow_executions e
                LEFT JOIN read_model.workflows w ON w.id = e.workflow_id
               WHERE e.finished_at >= $2 AND e.finished_at < $3
               GROUP BY 1, 2",
        cache_tags: &["execution:all"],
        by_actor: false,
    },
    Metric {
        name: "projection_lag",
        sql: "SELECT date_bin(make_interval(secs => $1), minute, timestamptz 'epoch') AS bucket,
                     jsonb_build_object('projection', projection) AS labels,
                     sum(events)::int8 AS count, NULL::int8 AS tokens, NULL::float8 AS cost_usd,
                     max(lag_ms_max)::float8 / 1000 AS lag_max_seconds,
                     sum(lag_ms_sum)::float8 / sum(events) / 1000 AS lag_mean_seconds
                FROM projection_lag
               WHERE minute >= $2 AND minute < $3
               GROUP BY 1, 2",
        // Written every few seconds, not by events: lives for the cache's
        // time to live.
        cache_tags: &[],
        by_actor: false,
    },
];

/// The statement of `metric` (`$1` bucket seconds, `$2` from, `$3` to),
/// for the tests of its plan.
pub fn series_sql(metric: &str) -> Option<&'static str> {
    METRICS.iter().find(|m| m.name == metric).map(|m| m.sql)
}

/// The names `GET /v1/series/{metric}` knows.
pub fn metric_names() -> Vec<&'static str> {
    METRICS.iter().map(|m| m.name).collect()
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Series {
    pub metric: String,
    /// The bucket size's name (`1h`) and its length in seconds.
    pub bucket: String,
    pub bucket_seconds: i64,
    /// The range, `from` inclusive and `to` exclusive, widened to whole buckets.
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Non-empty buckets, oldest first; a missing bucket counted nothing.
    pub points: Vec<SeriesPoint>,
    /// The same rows summed over the whole range, per label set.
    pub totals: Vec<SeriesTotal>,
}

#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct SeriesPoint {
    /// The bucket's start.
    pub bucket: DateTime<Utc>,
    /// What the rows are grouped by (`severity`, `role`, `workflow`, `status`).
    #[schema(value_type = Object)]
    pub labels: serde_json::Value,
    pub count: i64,
    /// Tokens (in + out), for `messages` and `conversations`.
    pub tokens: Option<i64>,
    pub cost_usd: Option<f64>,
    /// For `projection_lag` (where `count` is events applied): the longest
    /// and the mean time from an event's append to its application.
    #[sqlx(default)]
    pub lag_max_seconds: Option<f64>,
    #[sqlx(default)]
    pub lag_mean_seconds: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SeriesTotal {
    #[schema(value_type = Object)]
    pub labels: serde_json::Value,
    pub count: i64,
    pub tokens: Option<i64>,
    pub cost_usd: Option<f64>,
    pub lag_max_seconds: Option<f64>,
    pub lag_mean_seconds: Option<f64>,
}

impl SeriesTotal {
    /// Each label set's points summed (lag: the largest, and the mean
    /// weighted by events), in the order the label sets first appear.
    fn of(points: &[SeriesPoint]) -> Vec<SeriesTotal> {
        let mut totals: Vec<SeriesTotal> = Vec::new();
        for p in points {
            match totals.iter_mut().find(|t| t.labels == p.labels) {
                Some(t) => {
                    let before = t.count as f64;
                    t.count += p.count;
                    t.tokens = t.tokens.zip(p.tokens).map(|(a, b)| a + b);
                    t.cost_usd = t.cost_usd.zip(p.cost_usd).map(|(a, b)| a + b);
                    t.lag_max_seconds = t
                        .lag_max_seconds
                        .zip(p.lag_max_seconds)
                        .map(|(a, b)| a.max(b));
                    t.lag_mean_seconds = t
                        .lag_mean_seconds
                        .zip(p.lag_mean_seconds)
                        .map(|(a, b)| (a * before + b * p.count as f64) / t.count as f64);
                }
                None => totals.push(SeriesTotal {
                    labels: p.labels.clone(),
                    count: p.count,
                    tokens: p.tokens,
                    cost_usd: p.cost_usd,
                    lag_max_seconds: p.lag_max_seconds,
                    lag_mean_seconds: p.lag_mean_seconds,
                }),
            }
        }
        totals
    }
}

/// The range and bucket a request asks for, checked and bounded.
#[derive(Debug, PartialEq)]
pub struct Range {
    pub bucket: &'static str,
    pub seconds: i64,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

impl Range {
    /// `bucket` (default 1h), `to` (default now), `from` (default 24 buckets
    /// before `to`), both widened outwards to whole buckets.
    pub fn parse(params: &Params, now: DateTime<Utc>) -> Result<Range, ApiError> {
        let names: Vec<&str> = BUCKETS.iter().map(|(n, _)| *n).collect();
        let bucket = params.one_of("bucket", &names)?;
        let (bucket, seconds) = BUCKETS
            .iter()
            .copied()
            .find(|(n, _)| Some(*n) == bucket.as_deref())
            .unwrap_or(("1h", 3_600));
        let to = params.time("to")?.unwrap_or(now);
        let from = params
            .time("from")?
            .unwrap_or(to - Duration::seconds(24 * seconds));
        if from >= to {
            return Err(ApiError::bad("from", "from must be before to".to_string()));
        }
        let align = |t: DateTime<Utc>, up: bool| {
            let s = t.timestamp();
            let mut start = s.div_euclid(seconds) * seconds;
            if up && (start < s || t.timestamp_subsec_nanos() > 0) {
                start += seconds;
            }
            DateTime::from_timestamp(start, 0).unwrap_or(t)
        };
        let (from, to) = (align(from, false), align(to, true));
        let buckets = (to - from).num_seconds() / seconds;
        if buckets > MAX_BUCKETS {
            return Err(ApiError::bad(
                "from",
                format!(
                    "the range holds {buckets} buckets of {bucket}; at most {MAX_BUCKETS} (choose a larger bucket or a shorter range)"
                ),
            ));
        }
        Ok(Range {
            bucket,
            seconds,
            from,
            to,
        })
    }
}

/// Counts (and tokens and cost, where they apply) per time bucket.
#[utoipa::path(get, path = "/v1/series/{metric}", tag = "dashboard",
    params(("metric" = String, Path, description = "commands | messages | conversations | incidents_opened | incidents_resolved | executions_started | executions_finished | projection_lag"),
           ("bucket" = Option<String>, Query, description = "1m | 5m | 15m | 1h (default) | 6h | 1d | 7d"),
           ("from" = Option<String>, Query, description = "RFC 3339; default 24 buckets before `to`"),
           ("to" = Option<String>, Query, description = "RFC 3339; default now")),
    responses((status = 200, body = Series)))]
pub async fn series(
    State(state): State<AppState>,
    caller: Caller,
    ReadConsistency(consistency): ReadConsistency,
    Path(metric): Path<String>,
    params: Params,
) -> ApiResult<Answer> {
    let Some(metric) = METRICS.iter().find(|m| m.name == metric) else {
        return Err(ApiError::bad(
            "metric",
            format!("unknown metric; known: {}", metric_names().join(", ")),
        ));
    };
    params.only(&["bucket", "from", "to"])?;
    let range = Range::parse(&params, Utc::now())?;
    // A range that ends now moves: the resolved bounds are in the key.
    let spec = caller
        .cache_spec(metric.cache_tags.iter().map(|t| (*t).to_string()).collect())
        .varying(&[&range.from.to_rfc3339(), &range.to.to_rfc3339()]);
    let mut read = match state.cached_or_read(&spec, &caller, consistency).await? {
        Cached::Miss(read) => read,
        Cached::Hit(hit) => return Ok(hit),
    };
    let sql = format!(
        "SELECT * FROM ({}) s ORDER BY bucket, labels LIMIT {}",
        metric.sql,
        MAX_POINTS + 1
    );
    let points = sqlx::query_as::<_, SeriesPoint>(&sql)
        .bind(range.seconds as f64)
        .bind(range.from)
        .bind(range.to);
    let points: Vec<SeriesPoint> = if metric.by_actor {
        let own = (!caller.admin).then(|| caller.user_id.to_string());
        points.bind(own).fetch_all(&mut *read.tx).await?
    } else {
        points.fetch_all(&mut *read.tx).await?
    };
    read.tx.commit().await?;
    if points.len() > MAX_POINTS {
        return Err(ApiError::bad(
            "from",
            format!(
                "the range holds more than {MAX_POINTS} points (buckets × label sets); choose a larger bucket or a shorter range"
            ),
        ));
    }
    let totals = SeriesTotal::of(&points);
    let series = Series {
        metric: metric.name.to_string(),
        bucket: range.bucket.to_string(),
        bucket_seconds: range.seconds,
        from: range.from,
        to: range.to,
        points,
        totals,
    };
    state.answer(Some(&spec), read.position, &series).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
        )
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .expect("time")
    }

    #[test]
    fn ranges_widen_to_whole_buckets_and_are_bounded() {
        let now = at("2026-12-06T15:20:30Z");
        let r = Range::parse(&params(&[]), now).expect("defaults");
        assert_eq!(
            (r.bucket, r.from, r.to),
            ("1h", at("2026-12-05T15:00:00Z"), at("2026-12-06T16:00:00Z"))
        );
        let r = Range::parse(
            &params(&[
                ("bucket", "15m"),
                ("from", "2026-12-06T10:07:00Z"),
                ("to", "2026-12-06T11:00:00Z"),
            ]),
            now,
        )
        .expect("explicit");
        assert_eq!(
            (r.from, r.to),
            (at("2026-12-06T10:00:00Z"), at("2026-12-06T11:00:00Z"))
        );
        for (bad, parameter) in [
            (vec![("bucket", "2h")], "bucket"),
            (vec![("from", "yesterday")], "from"),
            (
                vec![
                    ("from", "2026-12-06T12:00:00Z"),
                    ("to", "2026-12-06T11:00:00Z"),
                ],
                "from",
            ),
            (
                vec![("bucket", "1m"), ("from", "2026-11-01T00:00:00Z")],
                "from",
            ),
        ] {
            match Range::parse(&params(&bad), now) {
                Err(ApiError::BadRequest { parameter: p, .. }) => {
                    assert_eq!(p, parameter, "{bad:?}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
