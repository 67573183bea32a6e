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

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use eventstore::Position;
use sqlx::pool::PoolConnection;
use sqlx::{Executor as _, PgConnection, PgPool, Postgres, Row};

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
    pub tx: ReadConn,
    pub position: Position,
}

/// A pooled connection inside a read's transaction. A read that is dropped
/// before [`ReadConn::commit`] (an error, a timeout) closes its connection
/// instead of handing it back: it still acts as its caller, so it must not
/// serve anyone else.
pub struct ReadConn {
    conn: PoolConnection<Postgres>,
    open: bool,
}

impl ReadConn {
    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        (&mut *self.conn).execute("COMMIT").await?;
        self.open = false;
        Ok(())
    }
}

impl Deref for ReadConn {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl DerefMut for ReadConn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

impl Drop for ReadConn {
    fn drop(&mut self) {
        if self.open {
            self.conn.close_on_drop();
        }
    }
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

/// Opens the read in one round trip: one simple-query message begins the
/// transaction, takes on the caller's role and id, and reads the
/// checkpoint in the snapshot every later statement sees. Its only
/// interpolated values are a role from this function, a formatted UUID
/// and a checkpoint name from [`Source`]: nothing a client wrote.
async fn open(
    pool: &PgPool,
    principal: Option<&Principal>,
    source: Source,
) -> Result<ReadTx, sqlx::Error> {
    let (role, user) = match principal {
        Some(p) if p.admin => ("copilot_admin", Some(p.user_id)),
        Some(p) => ("copilot_app", Some(p.user_id)),
        None => ("copilot_app", None),
    };
    let user = user.map(|u| u.hyphenated().to_string()).unwrap_or_default();
    let mut tx = ReadConn {
        conn: pool.acquire().await?,
        open: true,
    };
    let setup = format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;
         SELECT c.generation, c.tx_id, c.seq
           FROM (SELECT set_config('role', '{role}', true), set_config('app.user_id', '{user}', true)) AS acting
           LEFT JOIN projection_checkpoints c ON c.name = '{}'",
        source.name()
    );
    // A query without arguments goes as one simple-query message, which
    // may hold several statements.
    let row = (&mut *tx.conn).fetch_one(setup.as_str()).await?;
    let checkpoint: (Option<i32>, Option<i64>, Option<i64>) =
        (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
    let position = match checkpoint {
        (Some(generation), Some(tx_id), Some(seq)) => Position {
            generation,
            tx_id,
            seq,
        },
        _ => Position::START,
    };
    Ok(ReadTx { tx, position })
}

#[cfg(test)]
mod tests {
    use domain::values::Role;
    use sqlx::postgres::PgPoolOptions;
    use uuid::Uuid;

    use super::*;

    /// Who a connection acts as: its role and `app.user_id`.
    async fn acting(conn: &mut PgConnection) -> (String, String) {
        sqlx::query_as(
            "SELECT current_user::text, coalesce(current_setting('app.user_id', true), '')",
        )
        .fetch_one(conn)
        .await
        .expect("who")
    }

    #[sqlx::test(migrations = "../migrations")]
    async fn a_read_acts_as_its_caller_and_leaves_no_caller_on_the_pool(pool: PgPool) {
        let one = PgPoolOptions::new()
            .max_connections(1)
            .connect_with((*pool.connect_options()).clone())
            .await
            .expect("pool of one");
        let (login, _) = acting(&mut *one.acquire().await.expect("conn")).await;
        let alice = Principal {
            user_id: Uuid::now_v7(),
            role: Role::Operator,
            admin: false,
        };
        let expected = ("copilot_app".to_string(), alice.user_id.to_string());

        let mut read = open(&one, Some(&alice), Source::Relational)
            .await
            .expect("open");
        assert_eq!(read.position, Position::START);
        assert_eq!(acting(&mut read.tx).await, expected);
        read.tx.commit().await.expect("commit");
        let after = acting(&mut *one.acquire().await.expect("conn")).await;
        assert_eq!(after, (login.clone(), String::new()), "after a commit");

        // The checkpoint is read with the rows, as an admin reads too.
        sqlx::query("INSERT INTO projection_checkpoints (name, generation, tx_id, seq) VALUES ('relational', 2, 70000, 3)")
            .execute(&one)
            .await
            .expect("checkpoint");
        let admin = Principal {
            admin: true,
            ..alice.clone()
        };
        let mut read = open(&one, Some(&admin), Source::Relational)
            .await
            .expect("open");
        assert_eq!(read.position.to_string(), "2.70000.3");
        assert_eq!(acting(&mut read.tx).await.0, "copilot_admin");
        read.tx.commit().await.expect("commit");

        // A read dropped half-way (an error, a timeout) must not hand its
        // connection, still acting as Alice, to the next request.
        let mut read = open(&one, Some(&alice), Source::Relational)
            .await
            .expect("open");
        assert_eq!(acting(&mut read.tx).await, expected);
        drop(read);
        let after = acting(&mut *one.acquire().await.expect("conn")).await;
        assert_eq!(after, (login, String::new()), "after a dropped read");
    }
}
