//! Stored outcomes of decided commands (the `command_outcomes` view).

use sqlx::PgPool;
use uuid::Uuid;

use crate::result::CommandResult;

/// The outcome of command `$1`.
pub const STORED_OUTCOME: &str =
    "SELECT result FROM command_outcomes WHERE command_id = $1 LIMIT 1";

/// The stored outcome of a decided command, marked as replayed.
pub async fn stored(pool: &PgPool, command_id: Uuid) -> Result<Option<CommandResult>, sqlx::Error> {
    let row: Option<(sqlx::types::Json<CommandResult>,)> = sqlx::query_as(STORED_OUTCOME)
        .bind(command_id)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(|(sqlx::types::Json(result),)| result))
}
