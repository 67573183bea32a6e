//! Reading a projection: one read-only, repeatable-read transaction per
//! request, on the replica when one is configured and has what the request
//! needs, acting as the caller so that row-level security applies.
//!
//! A plain user's transaction runs as `copilot_app` with `app.user_id` set
//! to the caller: the policies on conversations, messages and sessions then
//! hide every other user's rows, so a mistake in a handler's SQL still
//! cannot leak them. An admin's runs as `copilot_admin` (BYPASSRLS). The
//! projection's checkpoint is read in the same snapshot as the rows, so
//! `X-Projection-Position` is exactly the position the answer reflects.

use std::time::Duration;

use eventstore::Position;
use sqlx::{PgPool, Postgres, Transaction};

use crate::auth::Principal;
use crate::metrics::metrics;
use crate::problem::ApiError;
use crate::progress::Progress;

/// SQL: milliseconds since the oldest event after the checkpoint row `c`
/// was recorded (a missing row counts as the start), 0 when caught up.
pub const LAG_MS_SQL: &str =
    "coalesce((SELECT (extract(epoch FROM now() - e.recorded_at) * 1000)::int8
      FROM events e
     WHERE (e.generation, e.tx_id, e.seq)
         > (coalesce(c.generation, 0), coalesce(c.tx_id, 0), coalesce(c.seq, 0))
     ORDER BY e.generation, e.tx_id, e.seq LIMIT 1), 0)";

/// The projections endpoints read, by checkpoint name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Relational,
    Audit,
    Vectors,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Relational => "relational",
            Source::Audit => "audit",
            Source::Vectors => "vectors",
        }
    }
}

/// What a request asked for about consistency.
#[derive(Debug, Clone, Copy)]
pub struct Consistency {
    pub min: Option<Position>,
    pub wait: Duration,
    /// `Cache-Control: no-cache`: answer from the database (the answer is
    /// still stored for others).
    pub fresh: bool,
}

pub struct Db {
    pub primary: PgPool,
    pub replica: Option<PgPool>,
    pub progress: Progress,
}

/// A transaction reading `source` as of `position`.
pub struct ReadTx {
    pub tx: Transaction<'static, Postgres>,
    pub position: Position,
}

impl Db {
    /// Waits until `source` has passed the position the request asks for,
    /// then opens the transaction (replica first, primary when the replica
    /// is down or behind).
    pub async fn read(
        &self,
        principal: Option<&Principal>,
        source: Source,
        consistency: Consistency,
    ) -> Result<ReadTx, ApiError> {
        self.reached(source, consistency).await?;
        if let Some(replica) = &self.replica {
            match open(replica, principal, source).await {
                Ok(read) if consistency.min.is_none_or(|min| read.position >= min) => {
                    metrics().reads.with_label_values(&["replica"]).inc();
                    return Ok(read);
                }
                Ok(_) => metrics()
                    .replica_fallbacks
                    .with_label_values(&["behind"])
                    .inc(),
                Err(error) => {
                    tracing::debug!(%error, "replica unavailable; reading the primary");
                    metrics()
                        .replica_fallbacks
                        .with_label_values(&["down"])
                        .inc();
                }
            }
        }
        metrics().reads.with_label_values(&["primary"]).inc();
        Ok(open(&self.primary, principal, source).await?)
    }

    /// Waits (woken by the projector's progress) until `source` is at or
    /// past the requested position.
    pub async fn reached(&self, source: Source, consistency: Consistency) -> Result<(), ApiError> {
        let Some(min) = consistency.min else {
            return Ok(());
        };
        if self.progress.current(source.name()) >= min {
            return Ok(());
        }
        // A position no event has yet cannot have come from a command: it
        // is the client's mistake, not something to wait for.
        let head = head(&self.primary).await?;
        if min > head {
            return Err(ApiError::bad(
                "X-Min-Position",
                format!("{min} is ahead of the log (its newest event is at {head})"),
            ));
        }
        self.progress
            .wait_for(source.name(), min, consistency.wait)
            .await
            .map(|_| ())
            .map_err(|at| ApiError::NotYetConsistent {
                projection: source.name(),
                wanted: min.to_string(),
                at: at.to_string(),
                waited_ms: u64::try_from(consistency.wait.as_millis()).unwrap_or(u64::MAX),
            })
    }
}

/// The position of the newest committed event.
async fn head(pool: &PgPool) -> Result<Position, sqlx::Error> {
    let row: Option<(i32, i64, i64)> = sqlx::query_as(
        "SELECT generation, tx_id, seq FROM events
          ORDER BY generation DESC, tx_id DESC, seq DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    Ok(
        row.map_or(Position::START, |(generation, tx_id, seq)| Position {
            generation,
            tx_id,
            seq,
        }),
    )
}

async fn open(
    pool: &PgPool,
    principal: Option<&Principal>,
    source: Source,
) -> Result<ReadTx, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let (role, user) = match principal {
        Some(p) if p.admin => ("copilot_admin", p.user_id.to_string()),
        Some(p) => ("copilot_app", p.user_id.to_string()),
        None => ("copilot_app", String::new()),
    };
    let row: (Option<i32>, Option<i64>, Option<i64>) = sqlx::query_as(
        "SELECT c.generation, c.tx_id, c.seq
           FROM (SELECT set_config('role', $1, true), set_config('app.user_id', $2, true)) AS acting
           LEFT JOIN projection_checkpoints c ON c.name = $3",
    )
    .bind(role)
    .bind(user)
    .bind(source.name())
    .fetch_one(&mut *tx)
    .await?;
    let position = match row {
        (Some(generation), Some(tx_id), Some(seq)) => Position {
            generation,
            tx_id,
            seq,
        },
        _ => Position::START,
    };
    Ok(ReadTx { tx, position })
}
