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
                if let Err(error) = sqlx::query("SELECT pg_notify($1, '')")
                    .bind(NOTIFY_CHANNEL)
                    .execute(&pool)
                    .await
                {
                    // Subscribers poll as well, so a lost wake-up only delays them.
                    tracing::debug!(%error, "could not notify subscribers");
                }
            }
        });
        Notifier { tx }
    }

    pub(crate) fn wake(&self) {
        let _ = self.tx.try_send(());
    }
}
