//! The connections group commits write on.
//!
//! They are held here rather than in an sqlx pool because the pool tests
//! every connection it takes back with a round trip of its own (a `Sync`
//! and the server's `ReadyForQuery`). For a group commit that is one more
//! wake-up of the backend and of this process per batch, and nothing is
//! learnt from it: a connection whose statement ran to its end, with rows
//! or with an error of the statement itself, is ready for the next one
//! (sqlx reads whatever is left of the last exchange before it sends
//! another). A connection whose statement failed on the wire or ended the
//! session, or whose caller gave up waiting, is closed instead, and the
//! next statement opens a new one.
//!
//! They also force generic plans, so a set append is planned once per
//! connection whatever its batch's size. (Left to itself PostgreSQL settles
//! on the generic plan after five custom ones in a steady run, but compares
//! costs again for every batch and may plan afresh.) Being their own, they
//! also spare a group commit, which every appender of the batch waits for,
//! a wait for a connection behind the readers of the shared pool. Only
//! statements whose plans suit any batch run here; the rest of the system
//! keeps the default.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgArguments, PgConnectOptions, PgRow};
use sqlx::{Connection as _, PgConnection, PgPool, Postgres};
use tokio::sync::Semaphore;

/// How the committer connections show in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "copilot-data-committer";

/// A statement for [`Committers::fetch_all`].
pub type CommitterQuery<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

/// At most `writers` connections, opened when first needed and kept open.
pub struct Committers {
    options: PgConnectOptions,
    /// Connections between statements, with when each was opened.
    idle: Mutex<Vec<(PgConnection, Instant)>>,
    permits: Semaphore,
    acquire_timeout: Duration,
    max_lifetime: Option<Duration>,
}

impl Committers {
    /// Connections to `pool`'s database, as `pool`'s but with generic plans
    /// forced and named [`APPLICATION_NAME`]; waiting for one gives up after
    /// `pool`'s acquire timeout, and one is not used again once older than
    /// `pool`'s maximum lifetime.
    pub(crate) fn new(pool: &PgPool, writers: usize) -> Self {
        let options = (*pool.connect_options())
            .clone()
            .application_name(APPLICATION_NAME)
            .options([("plan_cache_mode", "force_generic_plan")]);
        Committers {
            options,
            idle: Mutex::new(Vec::with_capacity(writers)),
            permits: Semaphore::new(writers.max(1)),
            acquire_timeout: pool.options().get_acquire_timeout(),
            max_lifetime: pool.options().get_max_lifetime(),
        }
    }

    /// Runs `query` on a committer connection and answers its rows.
    pub async fn fetch_all(&self, query: CommitterQuery<'_>) -> Result<Vec<PgRow>, sqlx::Error> {
        let _permit = tokio::time::timeout(self.acquire_timeout, self.permits.acquire())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
            .map_err(|_| sqlx::Error::PoolClosed)?;
        let (mut connection, opened) = match self.take_idle() {
            Some(idle) => idle,
            None => {
                let connection = tokio::time::timeout(
                    self.acquire_timeout,
                    PgConnection::connect_with(&self.options),
                )
                .await
                .map_err(|_| sqlx::Error::PoolTimedOut)??;
                (connection, Instant::now())
            }
        };
        // Dropped here if this future is dropped: the statement may be half
        // sent or half read, so the connection is not put back.
        let rows = query.fetch_all(&mut connection).await;
        if still_usable(&rows) {
            self.put_back(connection, opened);
        }
        rows
    }

    /// An idle connection young enough to use; older ones are closed.
    fn take_idle(&self) -> Option<(PgConnection, Instant)> {
        // A poisoned lock only means a thread panicked between push and
        // pop; the vector itself is whole.
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        while let Some((connection, opened)) = idle.pop() {
            if self.max_lifetime.is_none_or(|max| opened.elapsed() < max) {
                return Some((connection, opened));
            }
        }
        None
    }

    fn put_back(&self, connection: PgConnection, opened: Instant) {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push((connection, opened));
    }
}

/// Whether a connection can take another statement after this answer: it
/// can after rows or an error of the statement itself, not after a broken
/// exchange or an error that ends the session (connection exceptions, and
/// the server shutting down or terminating the backend).
fn still_usable<T>(answer: &Result<T, sqlx::Error>) -> bool {
    match answer {
        Ok(_) => true,
        Err(sqlx::Error::Database(error)) => !error
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sqlx::{PgPool, Row};
    use uuid::Uuid;

    use super::APPLICATION_NAME;
    use crate::{AppendRequest, EventStore, ExpectedVersion, Metadata, NewEvent, StoreOptions};

    async fn store(pool: PgPool) -> EventStore {
        EventStore::connect(pool, StoreOptions::default())
            .await
            .expect("open store")
    }

    fn request(stream_id: Uuid, expected: ExpectedVersion, count: usize) -> AppendRequest {
        AppendRequest {
            stream_id,
            stream_type: "test".into(),
            expected,
            events: (0..count)
                .map(|_| NewEvent::new("thing_happened", 1, vec![0x80]))
                .collect(),
            metadata: Metadata::default(),
        }
    }

    async fn event_count(pool: &PgPool) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(pool)
            .await
            .expect("count events")
    }

    /// Group commits run on connections with generic plans (the set append is
    /// planned once per connection); the store's other connections keep the
    /// server's default.
    #[sqlx::test(migrations = "../migrations")]
    async fn only_the_committer_connections_force_generic_plans(pool: PgPool) {
        let store = store(pool.clone()).await;
        let show = || sqlx::query("SHOW plan_cache_mode");
        let rows = store
            .writer()
            .committers
            .fetch_all(show())
            .await
            .expect("show");
        let committer_mode: String = rows[0].get(0);
        assert_eq!(committer_mode, "force_generic_plan");
        let pool_mode: String = show().fetch_one(&pool).await.expect("show").get(0);
        assert_eq!(pool_mode, "auto");
    }

    /// The backend that serves a committer statement.
    async fn committer_pid(store: &EventStore) -> i32 {
        let rows = store
            .writer()
            .committers
            .fetch_all(sqlx::query("SELECT pg_backend_pid()"))
            .await
            .expect("pid");
        rows[0].get(0)
    }

    #[sqlx::test(migrations = "../migrations")]
    async fn committer_connections_are_kept_between_statements(pool: PgPool) {
        let store = store(pool.clone()).await;
        let first = committer_pid(&store).await;
        let stream = Uuid::now_v7();
        for _ in 0..3 {
            store
                .append(&request(stream, ExpectedVersion::Any, 1))
                .await
                .expect("append");
        }
        assert_eq!(committer_pid(&store).await, first);
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND application_name = $1",
        )
        .bind(APPLICATION_NAME)
        .fetch_one(&pool)
        .await
        .expect("count");
        assert_eq!(open, 1, "each statement opened a connection of its own");
    }

    #[sqlx::test(migrations = "../migrations")]
    async fn a_committer_abandoned_mid_statement_is_not_used_again(pool: PgPool) {
        let store = store(pool.clone()).await;
        let first = committer_pid(&store).await;
        let abandoned = tokio::time::timeout(
            Duration::from_millis(200),
            store
                .writer()
                .committers
                .fetch_all(sqlx::query("SELECT pg_sleep(2)")),
        )
        .await;
        assert!(abandoned.is_err(), "the sleep finished within the timeout");
        // Its answer is still on the way: a connection put back now would read
        // it as the answer to the next statement.
        let next = committer_pid(&store).await;
        assert_ne!(next, first);
        let outcome = store
            .append(&request(Uuid::now_v7(), ExpectedVersion::Exact(0), 2))
            .await
            .expect("append");
        assert_eq!(outcome.version, 2);
    }

    #[sqlx::test(migrations = "../migrations")]
    async fn a_committer_connection_the_server_ended_is_replaced(pool: PgPool) {
        let store = store(pool.clone()).await;
        let stream = Uuid::now_v7();
        store
            .append(&request(stream, ExpectedVersion::Exact(0), 1))
            .await
            .expect("first append");
        let ended: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE datname = current_database() AND application_name = $1) AS t",
        )
        .bind(APPLICATION_NAME)
        .fetch_one(&pool)
        .await
        .expect("terminate");
        assert_eq!(ended, 1);
        let outcome = store
            .append(&request(stream, ExpectedVersion::Exact(1), 1))
            .await
            .expect("append after the connection was ended");
        assert_eq!((outcome.first_version, outcome.version), (2, 2));
        assert_eq!(event_count(&pool).await, 2);
    }

    #[sqlx::test(migrations = "../migrations")]
    async fn committer_connections_older_than_the_pools_lifetime_are_replaced(pool: PgPool) {
        let short_lived = sqlx::postgres::PgPoolOptions::new()
            .max_lifetime(Duration::from_secs(1))
            .connect_with((*pool.connect_options()).clone())
            .await
            .expect("pool");
        let store = store(short_lived).await;
        let first = committer_pid(&store).await;
        assert_eq!(committer_pid(&store).await, first);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_ne!(committer_pid(&store).await, first);
    }
}
