//! How far each projection has got, kept current from the projector's
//! checkpoint notifications (`LISTEN projection_progress`) with a slow
//! re-read as a safety net, so a request with `X-Min-Position` sleeps until
//! its projection passes the position instead of polling the database.

use std::collections::HashMap;
use std::time::Duration;

use eventstore::checkpoint::PROGRESS_CHANNEL;
use eventstore::Position;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::watch;

/// The re-read interval: what a lost notification can cost at most.
const REFRESH: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Progress {
    positions: watch::Receiver<HashMap<String, Position>>,
}

impl Progress {
    /// Starts following the checkpoints; the task ends when `pool` closes.
    pub async fn follow(
        pool: PgPool,
    ) -> Result<(Progress, tokio::task::JoinHandle<()>), eventstore::StoreError> {
        let initial = load_all(&pool).await?;
        let (tx, rx) = watch::channel(initial);
        let task = tokio::spawn(run(pool, tx));
        Ok((Progress { positions: rx }, task))
    }

    /// The last known position of `projection` (START if it never saved one).
    pub fn current(&self, projection: &str) -> Position {
        self.positions
            .borrow()
            .get(projection)
            .copied()
            .unwrap_or(Position::START)
    }

    /// Waits until `projection` is at or past `min`, up to `limit`; the
    /// position reached, or the position it was at when time ran out.
    pub async fn wait_for(
        &self,
        projection: &str,
        min: Position,
        limit: Duration,
    ) -> Result<Position, Position> {
        let mut rx = self.positions.clone();
        let reached =
            |map: &HashMap<String, Position>| map.get(projection).is_some_and(|p| *p >= min);
        let waited = tokio::time::timeout(limit, async {
            rx.wait_for(reached)
                .await
                .map(|map| map.get(projection).copied().unwrap_or(min))
        })
        .await;
        match waited {
            Ok(Ok(position)) => Ok(position),
            _ => Err(self.current(projection)),
        }
    }
}

async fn load_all(pool: &PgPool) -> Result<HashMap<String, Position>, eventstore::StoreError> {
    Ok(eventstore::checkpoint::all(pool)
        .await?
        .into_iter()
        .collect())
}

async fn run(pool: PgPool, tx: watch::Sender<HashMap<String, Position>>) {
    let mut listener: Option<PgListener> = None;
    let mut refresh = tokio::time::interval(REFRESH);
    loop {
        if pool.is_closed() || tx.is_closed() {
            return;
        }
        if listener.is_none() {
            listener = match PgListener::connect_with(&pool).await {
                Ok(mut l) => match l.listen(PROGRESS_CHANNEL).await {
                    Ok(()) => Some(l),
                    Err(error) => {
                        tracing::warn!(%error, "cannot listen for projection progress");
                        None
                    }
                },
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for projection progress");
                    None
                }
            };
        }
        let notification = async {
            match listener.as_mut() {
                Some(l) => Some(l.try_recv().await),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            received = notification => match received {
                Some(Ok(Some(n))) => {
                    if let Some((name, position)) = parse(n.payload()) {
                        tx.send_modify(|map| {
                            map.insert(name.to_string(), position);
                        });
                    }
                }
                // The connection dropped: reconnect and re-read what was missed.
                Some(Ok(None)) | Some(Err(_)) | None => {
                    listener = None;
                    refresh_all(&pool, &tx).await;
                }
            },
            _ = refresh.tick() => refresh_all(&pool, &tx).await,
        }
    }
}

async fn refresh_all(pool: &PgPool, tx: &watch::Sender<HashMap<String, Position>>) {
    match load_all(pool).await {
        Ok(map) => {
            tx.send_if_modified(|current| {
                let changed = *current != map;
                if changed {
                    *current = map.clone();
                }
                changed
            });
        }
        Err(error) => tracing::debug!(%error, "cannot read projection checkpoints"),
    }
}

fn parse(payload: &str) -> Option<(&str, Position)> {
    let (name, position) = payload.split_once(' ')?;
    Some((name, position.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_notifications() {
        let (name, position) = parse("relational 1.42.7").expect("parses");
        assert_eq!(name, "relational");
        assert_eq!(
            position,
            Position {
                generation: 1,
                tx_id: 42,
                seq: 7
            }
        );
        assert!(parse("relational").is_none());
        assert!(parse("relational x.y.z").is_none());
    }
}
