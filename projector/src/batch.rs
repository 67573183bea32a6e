//! Applying one batch: rows and checkpoint in one transaction, guarded by
//! the checkpoint row's lock, with poison events found and parked.

use eventstore::{checkpoint, Position, RecordedEvent};
use sqlx::{Connection, PgConnection};

use crate::projection::{Delivery, Projection, SqlProjection};
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

impl Outcome {
    /// Where the checkpoint is now.
    pub fn position(&self) -> Position {
        match self {
            Outcome::Applied(position) | Outcome::Parked { position, .. } => *position,
        }
    }
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

/// The one step every projection takes: applies `events` (after
/// `expected`) and moves checkpoint `checkpoint` to the last of them, in
/// one transaction that first locks the checkpoint row and checks that it
/// is where this writer left it. A writer that lost its lease, or a
/// blue/green swap that moved the checkpoint, so fails with
/// [`ProjectionError::Moved`] instead of applying the batch twice.
///
/// An exactly-once projection writes inside that transaction. A sink
/// writes before it begins: the transaction locks a row and so holds a
/// transaction id, and every subscriber of the log can read only up to the
/// oldest running one, so a sink's write (an embedding, say) inside it
/// would delay every projection by that long.
pub async fn run_once<P: Projection>(
    conn: &mut PgConnection,
    projection: &mut P,
    checkpoint: &str,
    expected: Position,
    events: &[RecordedEvent],
) -> Result<Position, P::Error> {
    let Some(last) = events.last() else {
        return Ok(expected);
    };
    let result: Result<Position, P::Error> = async {
        if P::DELIVERY == Delivery::AtLeastOnce {
            projection.apply(&mut *conn, events).await?;
        }
        let mut tx = conn.begin().await.map_err(ProjectionError::from)?;
        lock_checkpoint(&mut tx, checkpoint, expected).await?;
        if P::DELIVERY == Delivery::ExactlyOnce {
            projection.apply(&mut tx, events).await?;
        }
        checkpoint::save(&mut *tx, checkpoint, last.position)
            .await
            .map_err(ProjectionError::from)?;
        tx.commit().await.map_err(ProjectionError::from)?;
        Ok(last.position)
    }
    .await;
    if result.is_err() {
        projection.reset();
    }
    result
}

/// [`run_once`] for a SQL projection, with a poison event found and
/// parked (by `policy`) if the batch cannot be applied; see [`Outcome`].
pub async fn project(
    conn: &mut PgConnection,
    projection: &mut SqlProjection,
    checkpoint: &str,
    expected: Position,
    events: &[RecordedEvent],
    policy: PoisonPolicy,
) -> Result<Outcome, ProjectionError> {
    let error = match run_once(conn, projection, checkpoint, expected, events).await {
        Ok(to) => return Ok(Outcome::Applied(to)),
        Err(error) => error,
    };
    if !error.is_data_error() {
        return Err(error);
    }
    let (index, reason) = match error {
        ProjectionError::Poison { index, reason } => (index, reason),
        other => {
            locate(
                conn,
                projection,
                checkpoint,
                expected,
                events,
                other.to_string(),
            )
            .await?
        }
    };
    park(
        conn, projection, checkpoint, expected, events, index, &reason, policy,
    )
    .await
}

/// Finds the event a failed batch write was about, by writing the events
/// one at a time (then rolling back).
async fn locate(
    conn: &mut PgConnection,
    projection: &mut SqlProjection,
    checkpoint: &str,
    expected: Position,
    events: &[RecordedEvent],
    batch_reason: String,
) -> Result<(usize, String), ProjectionError> {
    let mut tx = conn.begin().await?;
    lock_checkpoint(&mut tx, checkpoint, expected).await?;
    let mut found = None;
    for index in 0..events.len() {
        match projection.apply(&mut tx, &events[index..=index]).await {
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
    projection: &mut SqlProjection,
    checkpoint: &str,
    expected: Position,
    events: &[RecordedEvent],
    index: usize,
    reason: &str,
    policy: PoisonPolicy,
) -> Result<Outcome, ProjectionError> {
    let poison = &events[index];
    let skip = policy == PoisonPolicy::Skip;
    let mut tx = conn.begin().await?;
    lock_checkpoint(&mut tx, checkpoint, expected).await?;
    let good = &events[..index];
    if !good.is_empty() {
        projection.apply(&mut tx, good).await?;
    }
    let position = if skip {
        poison.position
    } else {
        good.last().map_or(expected, |e| e.position)
    };
    checkpoint::save(&mut *tx, checkpoint, position).await?;
    sqlx::query(
        "INSERT INTO projection_errors (projection, position, event_id, stream_id, event_type, reason, skipped)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(checkpoint.to_owned())
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
        .bind(checkpoint.to_owned())
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
