//! Named reader positions, saved in the reader's own transaction so that a
//! projection's rows and its position commit (or roll back) together.
//!
//! Every save also notifies [`PROGRESS_CHANNEL`] (`<name> <position>`),
//! delivered when the transaction commits, so readers waiting for a
//! projection to pass a position (the query API's `X-Min-Position`) wake
//! on progress instead of polling.

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgExecutor, Row};

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
    row.as_ref().map(position_at(0)).transpose()
}

/// Where `name` is: its saved position, or the start of the log if it
/// never saved one (a projection that has applied nothing yet).
pub async fn position<'e>(
    executor: impl PgExecutor<'e>,
    name: &str,
) -> Result<Position, StoreError> {
    Ok(load(executor, name).await?.unwrap_or(Position::START))
}

/// [`load`], keeping the row from changing until the end of the caller's
/// transaction (a reader that must not overtake `name` meanwhile).
pub async fn load_shared(
    conn: &mut PgConnection,
    name: &str,
) -> Result<Option<Position>, StoreError> {
    let row = sqlx::query(
        "SELECT generation, tx_id, seq FROM projection_checkpoints WHERE name = $1 FOR SHARE",
    )
    .bind(name)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(position_at(0)).transpose()
}

/// Locks the checkpoint `name` until the end of the caller's transaction
/// (creating it at [`Position::START`] if missing) and returns where it
/// is: the one writer of a checkpoint holds this while it moves it.
///
/// A row lock, not an upsert: every batch of every projection takes it,
/// and an upsert would leave one more dead version of these few hot rows
/// for each batch, which every reader of a checkpoint then steps over.
pub async fn lock(conn: &mut PgConnection, name: &str) -> Result<Position, StoreError> {
    const LOCK: &str =
        "SELECT generation, tx_id, seq FROM projection_checkpoints WHERE name = $1 FOR UPDATE";
    if let Some(row) = sqlx::query(LOCK)
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?
    {
        return position_at(0)(&row);
    }
    // A first batch: another writer may create it at the same moment; the
    // lock then waits for its commit and reads its row.
    sqlx::query(
        "INSERT INTO projection_checkpoints (name, generation, tx_id, seq) VALUES ($1, 0, 0, 0)
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(name)
    .execute(&mut *conn)
    .await?;
    let row = sqlx::query(LOCK).bind(name).fetch_one(&mut *conn).await?;
    position_at(0)(&row)
}

/// Forgets the checkpoint `name` (a reader that starts again from the beginning).
pub async fn delete<'e>(executor: impl PgExecutor<'e>, name: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM projection_checkpoints WHERE name = $1")
        .bind(name)
        .execute(executor)
        .await?;
    Ok(())
}

/// Every saved checkpoint, by name.
pub async fn all<'e>(executor: impl PgExecutor<'e>) -> Result<Vec<(String, Position)>, StoreError> {
    let rows = sqlx::query("SELECT name, generation, tx_id, seq FROM projection_checkpoints")
        .fetch_all(executor)
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, position_at(1)(row)?)))
        .collect()
}

/// The position in columns `first` to `first + 2` of a row.
fn position_at(first: usize) -> impl Fn(&PgRow) -> Result<Position, StoreError> {
    move |row| {
        Ok(Position {
            generation: row.try_get(first)?,
            tx_id: row.try_get(first + 1)?,
            seq: row.try_get(first + 2)?,
        })
    }
}
