//! What an operator does about a parked poison event, with nothing
//! restarted: skip it (the projection goes on after it, the event stays in
//! the log and in `projection_errors`, marked skipped) or retry it (after a
//! fix, the projection tries it again). The projector holding the lease of
//! a stopped projection looks every second whether it was released.

use eventstore::{EventStore, Position};
use uuid::Uuid;

use crate::Kind;

#[derive(Debug, thiserror::Error)]
pub enum ParkedError {
    #[error("{0:?} does not park events: relational and audit do")]
    UnknownProjection(String),
    #[error("no parked event of {projection} at {position} (`copilot-data status` lists them)")]
    NotParked {
        projection: &'static str,
        position: Position,
    },
    #[error(
        "{projection} is at {checkpoint}, and the event after it is {next}, not {position}: \
         only the event the projection stopped at can be skipped"
    )]
    NotNext {
        projection: &'static str,
        checkpoint: Position,
        next: String,
        position: Position,
    },
    #[error("{0} is not stopped")]
    NotStopped(&'static str),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("event store: {0}")]
    Store(#[from] eventstore::StoreError),
}

pub fn kind(name: &str) -> Result<Kind, ParkedError> {
    Kind::parse(name).ok_or_else(|| ParkedError::UnknownProjection(name.to_owned()))
}

/// The parked event that was skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub event_id: Uuid,
    pub event_type: String,
    pub reason: String,
}

/// Moves `kind`'s checkpoint past the parked event at `position` and lets
/// the projection go on. Refused unless that event is parked, unskipped,
/// and the very next one after the checkpoint: skipping never jumps over an
/// event that was not looked at.
pub async fn skip(
    store: &EventStore,
    kind: Kind,
    position: Position,
) -> Result<Skipped, ParkedError> {
    let name = kind.name();
    let mut tx = store.pool().begin().await?;
    let parked: Option<(i64, Uuid, String, String)> = sqlx::query_as(
        "SELECT id, event_id, event_type, reason FROM projection_errors
          WHERE projection = $1 AND position = $2 AND NOT skipped
          ORDER BY id DESC LIMIT 1 FOR UPDATE",
    )
    .bind(name)
    .bind(position.to_string())
    .fetch_optional(&mut *tx)
    .await?;
    let Some((id, event_id, event_type, reason)) = parked else {
        return Err(ParkedError::NotParked {
            projection: name,
            position,
        });
    };
    // Locked, so a projector cannot move it meanwhile.
    let checkpoint = eventstore::checkpoint::lock(&mut tx, name).await?;
    let next = store.read_all_after(checkpoint, 1).await?;
    let next = next.events.first().map(|e| e.position);
    if next != Some(position) {
        return Err(ParkedError::NotNext {
            projection: name,
            checkpoint,
            next: next.map_or("none".to_owned(), |p| p.to_string()),
            position,
        });
    }
    eventstore::checkpoint::save(&mut *tx, name, position).await?;
    sqlx::query("UPDATE projection_errors SET skipped = true WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE projection_status SET stopped = NULL, updated_at = now() WHERE name = $1")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::warn!(projection = name, %position, %event_id, event_type, "parked event skipped by an operator");
    Ok(Skipped {
        event_id,
        event_type,
        reason,
    })
}

/// Lets a stopped projection try its parked event again (after a fix).
pub async fn retry(store: &EventStore, kind: Kind) -> Result<(), ParkedError> {
    let name = kind.name();
    let released = sqlx::query(
        "UPDATE projection_status SET stopped = NULL, updated_at = now()
          WHERE name = $1 AND stopped IS NOT NULL",
    )
    .bind(name)
    .execute(store.pool())
    .await?;
    if released.rows_affected() == 0 {
        return Err(ParkedError::NotStopped(name));
    }
    tracing::warn!(
        projection = name,
        "stopped projection released for a retry by an operator"
    );
    Ok(())
}

/// Whether `name` is still stopped (the runner asks while it waits).
pub(crate) async fn is_stopped(
    conn: &mut sqlx::PgConnection,
    name: &str,
) -> Result<bool, sqlx::Error> {
    let stopped: Option<Option<String>> =
        sqlx::query_scalar("SELECT stopped FROM projection_status WHERE name = $1")
            .bind(name)
            .fetch_optional(conn)
            .await?;
    Ok(stopped.flatten().is_some())
}
