//! Row-level security: as copilot_app, a user sees only their own
//! conversations, messages and sessions; with no user set, nothing.

use sqlx::PgPool;
use testkit::history::History;
use uuid::Uuid;

use crate::support::{self, count};

const TABLES: [&str; 3] = ["conversations", "messages", "sessions"];

async fn visible(pool: &PgPool, user: Option<Uuid>, table: &str, filter: &str) -> i64 {
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("SET LOCAL ROLE copilot_app")
        .execute(&mut *tx)
        .await
        .expect("role");
    if let Some(user) = user {
        sqlx::query("SELECT set_config('app.user_id', $1, true)")
            .bind(user.to_string())
            .execute(&mut *tx)
            .await
            .expect("set user");
    }
    let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM read_model.{table} {filter}"))
        .fetch_one(&mut *tx)
        .await
        .expect("select");
    tx.rollback().await.expect("rollback");
    n
}

#[sqlx::test(migrator = "infra::postgres::MIGRATOR")]
async fn users_see_only_their_own_rows(pool: PgPool) {
    let store = support::store(pool.clone()).await;
    let running = support::spawn(&store, support::config()).await;
    let mut history = History::new(21);
    history.forget_percent = 0;
    support::append(&store, &mut history, 1500).await;
    support::caught_up(&store).await;
    running.stop().await;

    // Two users with rows in all three tables.
    let users: Vec<Uuid> = sqlx::query_scalar(
        "SELECT user_id FROM read_model.messages
          WHERE user_id IN (SELECT user_id FROM read_model.sessions)
          GROUP BY user_id ORDER BY count(*) DESC LIMIT 2",
    )
    .fetch_all(&pool)
    .await
    .expect("users");
    let [a, b] = users[..] else {
        panic!("need two users with messages: {users:?}");
    };
    for table in TABLES {
        let own_a = count(
            &pool,
            &format!("SELECT count(*) FROM read_model.{table} WHERE user_id = '{a}'"),
        )
        .await;
        let own_b = count(
            &pool,
            &format!("SELECT count(*) FROM read_model.{table} WHERE user_id = '{b}'"),
        )
        .await;
        let all = count(&pool, &format!("SELECT count(*) FROM read_model.{table}")).await;
        assert!(
            own_a > 0 && own_b > 0 && all > own_a,
            "{table}: the data must make the test meaningful"
        );
        assert_eq!(
            visible(&pool, Some(a), table, "").await,
            own_a,
            "{table}: A sees exactly A's rows"
        );
        assert_eq!(
            visible(&pool, Some(a), table, &format!("WHERE user_id <> '{a}'")).await,
            0,
            "{table}: A sees nobody else's"
        );
        assert_eq!(
            visible(&pool, Some(a), table, &format!("WHERE user_id = '{b}'")).await,
            0,
            "{table}: A sees none of B's"
        );
        assert_eq!(visible(&pool, Some(b), table, "").await, own_b);
        assert_eq!(
            visible(&pool, None, table, "").await,
            0,
            "{table}: unset user sees nothing"
        );
    }
    // The dashboard view runs with the reader's rights.
    assert_eq!(visible(&pool, None, "active_sessions", "").await, 0);
}
