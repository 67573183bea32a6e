//! Coalesced wake-ups for subscribers.
//!
//! `NOTIFY` inside an appending transaction takes a database-wide lock that
//! is held through the commit's WAL flush, which would serialise every
//! append. Instead appenders signal this task after they commit; it sends one
//! `NOTIFY` for however many commits happened while the previous one was in
//! flight.

use sqlx::PgPool;
use tokio::sync::mpsc;

use crate::NOTIFY_CHANNEL;

/// The least time between two NOTIFYs: what a subscriber may wait extra
/// for a wake-up while appends are frequent.
const NOTIFY_SPACING: std::time::Duration = std::time::Duration::from_millis(5);

#[derive(Clone)]
pub(crate) struct Notifier {
    tx: mpsc::Sender<()>,
}

impl Notifier {
    pub(crate) fn spawn(pool: PgPool) -> Self {
        // Capacity one: a full channel already holds a pending wake-up.
        let (tx, mut rx) = mpsc::channel::<()>(1);
        tokio::spawn(async move {
            while rx.recv().await.is_some() {
                let sent = tokio::time::Instant::now();
                if let Err(error) = sqlx::query("SELECT pg_notify($1, '')")
                    .bind(NOTIFY_CHANNEL)
                    .execute(&pool)
                    .await
                {
                    // Subscribers poll as well, so a lost wake-up only delays them.
                    tracing::debug!(%error, "could not notify subscribers");
                }
                // Under load, commits come faster than subscribers can use
                // separate wake-ups, and each NOTIFY is a transaction of its
                // own: space them out. The first after a quiet spell goes at once.
                tokio::time::sleep_until(sent + NOTIFY_SPACING).await;
            }
        });
        Notifier { tx }
    }

    pub(crate) fn wake(&self) {
        let _ = self.tx.try_send(());
    }
}
