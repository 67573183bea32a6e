//! Stored outcomes of decided commands (the `command_outcomes` view).

use sqlx::PgPool;
use uuid::Uuid;

use domain::context::Actor;

use crate::result::{CommandResult, Status};

/// The outcome of command `$1` and who sent it (the actor's label).
pub const STORED_OUTCOME: &str = "SELECT o.result,
            coalesce((SELECT r.actor FROM command_results r WHERE r.command_id = $1),
                     (SELECT e.metadata->>'actor' FROM events e WHERE e.command_id = $1))
       FROM command_outcomes o WHERE o.command_id = $1 LIMIT 1";

/// A decided command's outcome (marked as replayed) and who sent it.
pub struct Stored {
    pub result: CommandResult,
    sender: Option<String>,
}

impl Stored {
    /// Whether `actor` may be told this outcome: its sender, or an admin.
    /// Anyone else holding the command id learns only that it is taken.
    pub fn visible_to(&self, actor: &Actor) -> bool {
        actor.is_admin() || self.sender.as_deref() == Some(actor.label().as_str())
    }

    /// The answer for `actor`: the outcome, or that the id is someone else's.
    pub fn answer_for(self, actor: &Actor) -> CommandResult {
        if self.visible_to(actor) {
            return self.result;
        }
        CommandResult::failed(
            self.result.command_id,
            uuid::Uuid::nil(),
            Status::Forbidden,
            "command_id_taken",
            "this command id was used by another sender; choose a new one",
            Some(serde_json::json!({"field": "command_id"})),
        )
    }
}

/// The stored outcome of a decided command and its sender.
pub async fn stored(pool: &PgPool, command_id: Uuid) -> Result<Option<Stored>, sqlx::Error> {
    let row: Option<(sqlx::types::Json<CommandResult>, Option<String>)> =
        sqlx::query_as(STORED_OUTCOME)
            .bind(command_id)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|(sqlx::types::Json(result), sender)| Stored { result, sender }))
}

/// Whether command `command_id` has a stored rejection (in the caller's
/// transaction).
pub async fn is_rejected(
    conn: &mut sqlx::PgConnection,
    command_id: Uuid,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM command_results WHERE command_id = $1)")
        .bind(command_id)
        .fetch_one(conn)
        .await
}
