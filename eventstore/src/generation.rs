//! Generations keep the global order monotonic across a restore into
//! another cluster (see the crate documentation).

use sqlx::PgPool;

use crate::StoreError;

/// Arbitrary constant key of the advisory lock that serialises the check.
const GENERATION_LOCK: i64 = 0x636f_7069_6c6f_7401;

pub(crate) async fn current(pool: &PgPool) -> Result<i32, StoreError> {
    let generation: i32 = sqlx::query_scalar("SELECT max(generation) FROM store_generations")
        .fetch_one(pool)
        .await?;
    Ok(generation)
}

/// Starts a new generation when the cluster's next transaction id is not
/// above every stored one; returns the generation in force.
pub(crate) async fn ensure_current(pool: &PgPool) -> Result<i32, StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(GENERATION_LOCK)
        .execute(&mut *tx)
        .await?;
    let (generation, newest_tx, next_tx): (i32, Option<i64>, i64) = sqlx::query_as(
        "SELECT g.generation,
                (SELECT max(e.tx_id) FROM events e WHERE e.generation = g.generation),
                pg_snapshot_xmax(pg_current_snapshot())::text::bigint
           FROM store_generations g
          ORDER BY g.generation DESC
          LIMIT 1",
    )
    .fetch_one(&mut *tx)
    .await?;
    let generation = match newest_tx {
        Some(newest) if newest >= next_tx => {
            let next = generation + 1;
            sqlx::query("INSERT INTO store_generations (generation, first_tx_id) VALUES ($1, $2)")
                .bind(next)
                .bind(next_tx)
                .execute(&mut *tx)
                .await?;
            tracing::warn!(
                generation = next,
                newest_stored_tx = newest,
                cluster_next_tx = next_tx,
                "transaction counter is behind the stored events (restored into another cluster?); started a new generation"
            );
            next
        }
        _ => generation,
    };
    tx.commit().await?;
    Ok(generation)
}
