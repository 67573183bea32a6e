//! Named reader positions, saved in the reader's own transaction so that a
//! projection's rows and its position commit (or roll back) together.
//!
//! Every save also notifies [`PROGRESS_CHANNEL`] (`<name> <position>`),
//! delivered when the transaction commits, so readers waiting for a
//! projection to pass a position (the query API's `X-Min-Position`) wake
//! on progress instead of polling.

use sqlx::{PgExecutor, Row};

use crate::{Position, StoreError};

/// The `NOTIFY` channel of checkpoint saves.
pub const PROGRESS_CHANNEL: &str = "projection_progress";

/// Saves `position` under `name` as part of whatever transaction `executor` is in.
pub async fn save<'e>(
    executor: impl PgExecutor<'e>,
    name: &str,
    position: Position,
) -> Result<(), StoreError> {
    sqlx::query(
        "WITH saved AS (
            INSERT INTO projection_checkpoints (name, generation, tx_id, seq, updated_at)
            VALUES ($1, $2, $3, $4, now())
            ON CONFLICT (name) DO UPDATE
               SET generation = EXCLUDED.generation, tx_id = EXCLUDED.tx_id,
                   seq = EXCLUDED.seq, updated_at = now()
            RETURNING name)
         SELECT pg_notify($5, $1 || ' ' || $2 || '.' || $3 || '.' || $4) FROM saved",
    )
    .bind(name)
    .bind(position.generation)
    .bind(position.tx_id)
    .bind(position.seq)
    .bind(PROGRESS_CHANNEL)
    .execute(executor)
    .await?;
    Ok(())
}

/// The saved position of `name`, `None` if it never saved one.
pub async fn load<'e>(
    executor: impl PgExecutor<'e>,
    name: &str,
) -> Result<Option<Position>, StoreError> {
    let row =
        sqlx::query("SELECT generation, tx_id, seq FROM projection_checkpoints WHERE name = $1")
            .bind(name)
            .fetch_optional(executor)
            .await?;
    row.map(|row| {
        Ok(Position {
            generation: row.try_get(0)?,
            tx_id: row.try_get(1)?,
            seq: row.try_get(2)?,
        })
    })
    .transpose()
}
