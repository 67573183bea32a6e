//! Applying one batch: rows and checkpoint in one transaction, guarded by
//! the checkpoint row's lock, with poison events found and parked.

use chrono::{DateTime, Utc};
use eventstore::{checkpoint, Position, RecordedEvent};
use sqlx::{Connection, PgConnection};

use crate::projection::Projection;
use crate::ProjectionError;

/// What to do with an event that cannot be projected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoisonPolicy {
    /// Park it and stop the projection there (the default).
    Stop,
    /// Park it and go on after it.
    Skip,
}

#[derive(Debug)]
pub enum Outcome {
    Applied(Position),
    /// A poison event was parked; the checkpoint is now `position`.
    Parked {
        position: Position,
        reason: String,
        stopped: bool,
    },
}

/// Where to write: the tables' schema and the checkpoint's name.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub schema: &'a str,
    pub checkpoint: &'a str,
}

/// Locks the checkpoint row and checks that it is where this writer last
/// left it.
pub async fn lock_checkpoint(
    conn: &mut PgConnection,
    name: &str,
    expected: Position,
) -> Result<(), ProjectionError> {
    let found = checkpoint::lock(conn, name).await?;
    if found != expected {
        return Err(ProjectionError::Moved(format!(
            "{name} (expected {expected}, found {found})"
        )));
    }
    Ok(())
}

/// Applies `events` after `expected`; see [`Outcome`].
pub async fn project(
    conn: &mut PgConnection,
    projection: &mut Projection,
    target: Target<'_>,
    expected: Position,
    events: &[RecordedEvent],
    policy: PoisonPolicy,
    now: DateTime<Utc>,
) -> Result<Outcome, ProjectionError> {
    let Some(last) = events.last() else {
        return Ok(Outcome::Applied(expected));
    };
    let error = match apply_all(
        conn,
        projection,
        target,
        expected,
        events,
        last.position,
        now,
    )
    .await
    {
        Ok(()) => return Ok(Outcome::Applied(last.position)),
        Err(error) => error,
    };
    projection.reset();
    if !error.is_data_error() {
        return Err(error);
    }
    let (index, reason) = match error {
        ProjectionError::Poison { index, reason } => (index, reason),
        other => {
            locate(
                conn,
                projection,
                target,
                expected,
                events,
                other.to_string(),
                now,
            )
            .await?
        }
    };
    park(
        conn, projection, target, expected, events, index, &reason, policy, now,
    )
    .await
}

async fn apply_all(
    conn: &mut PgConnection,
    projection: &mut Projection,
    target: Target<'_>,
    expected: Position,
    events: &[RecordedEvent],
    last: Position,
    now: DateTime<Utc>,
) -> Result<(), ProjectionError> {
    let mut tx = conn.begin().await?;
    lock_checkpoint(&mut tx, target.checkpoint, expected).await?;
    projection
        .apply(&mut tx, target.schema, events, now)
        .await?;
    checkpoint::save(&mut *tx, target.checkpoint, last).await?;
    tx.commit().await?;
    Ok(())
}

/// Finds the event a failed batch write was about, by writing the events
/// one at a time (then rolling back).
async fn locate(
    conn: &mut PgConnection,
    projection: &mut Projection,
    target: Target<'_>,
    expected: Position,
    events: &[RecordedEvent],
    batch_reason: String,
    now: DateTime<Utc>,
) -> Result<(usize, String), ProjectionError> {
    let mut tx = conn.begin().await?;
    lock_checkpoint(&mut tx, target.checkpoint, expected).await?;
    let mut found = None;
    for index in 0..events.len() {
        match projection
            .apply(&mut tx, target.schema, &events[index..=index], now)
            .await
        {
            Ok(()) => {}
            Err(ProjectionError::Poison { reason, .. }) => {
                found = Some((index, reason));
                break;
            }
            Err(e) if e.is_data_error() => {
                found = Some((index, e.to_string()));
                break;
            }
            Err(e) => return Err(e),
        }
    }
    drop(tx);
    projection.reset();
    // Each event alone was fine, so the batch's events clash with each
    // other; the last one is the one that did not fit.
    Ok(found.unwrap_or((events.len() - 1, batch_reason)))
}

#[allow(clippy::too_many_arguments)]
async fn park(
    conn: &mut PgConnection,
    projection: &mut Projection,
    target: Target<'_>,
    expected: Position,
    events: &[RecordedEvent],
    index: usize,
    reason: &str,
    policy: PoisonPolicy,
    now: DateTime<Utc>,
) -> Result<Outcome, ProjectionError> {
    let poison = &events[index];
    let skip = policy == PoisonPolicy::Skip;
    let mut tx = conn.begin().await?;
    lock_checkpoint(&mut tx, target.checkpoint, expected).await?;
    let good = &events[..index];
    if !good.is_empty() {
        projection.apply(&mut tx, target.schema, good, now).await?;
    }
    let position = if skip {
        poison.position
    } else {
        good.last().map_or(expected, |e| e.position)
    };
    checkpoint::save(&mut *tx, target.checkpoint, position).await?;
    sqlx::query(
        "INSERT INTO projection_errors (projection, position, event_id, stream_id, event_type, reason, skipped)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(target.checkpoint.to_owned())
    .bind(poison.position.to_string())
    .bind(poison.event_id)
    .bind(poison.stream_id)
    .bind(poison.event_type.clone())
    .bind(reason.to_owned())
    .bind(skip)
    .execute(&mut *tx)
    .await?;
    if !skip {
        sqlx::query(
            "INSERT INTO projection_status (name, stopped, updated_at) VALUES ($1, $2, now())
             ON CONFLICT (name) DO UPDATE SET stopped = EXCLUDED.stopped, updated_at = now()",
        )
        .bind(target.checkpoint.to_owned())
        .bind(format!(
            "poison event {} at {}: {reason}",
            poison.event_id, poison.position
        ))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(Outcome::Parked {
        position,
        reason: reason.to_string(),
        stopped: !skip,
    })
}
