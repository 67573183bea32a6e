//! The set append: one statement for a whole round of a batch (see
//! [`crate::write`]), run by a function of the store (migration 0011,
//! SECURITY DEFINER, so the services append without the right to write
//! `events` themselves), planned once per connection (generic plans, see
//! [`crate::committers`]) and executed once.
//!
//! What the step-by-step function had for free, its locks before its
//! snapshot, a single statement cannot have: its snapshot is taken before
//! it takes the streams' locks. A writer of one of the streams that commits in between
//! makes the insert hit `events_pkey`; nothing is written and the statement
//! is run again ([`run`]), with a snapshot that sees that commit.

use std::future::Future;

use crate::error::retry_transient;

/// The set append (`eventstore_append_set_checked`, migration 0011) of a
/// round in which every stream and every command id appears once, with
/// each request's [`crate::Guard`]: `$1` to `$10` are
/// [`crate::append::AppendArgs::bind`]'s arrays, `$11` the time now, `$12`
/// the oldest last-seen time of a session not idle, `$13` to `$16` each
/// request's token hash, user, role and API key (a NULL token: nothing to
/// check but that the command id has no stored rejection).
pub(crate) const SET_APPEND: &str =
    "SELECT idx, status, out_stream_id, first_version, last_version, generation, tx_id, seq
       FROM eventstore_append_set_checked($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,
                                          $11, $12, $13, $14, $15, $16)";

/// The exact set append (`eventstore_append_exact_checked`), with the same
/// parameters: for a batch in which every request appends one event at an
/// exact expected version (see [`crate::append::AppendArgs::single_exact`]). It
/// takes no locks and probes only the stream's expected head; the primary
/// key and the command index refuse what the locks and the probes of the
/// set append would. A request it cannot settle (its stream moved on, or
/// is being written, or its command id was appended before) is answered
/// [`TAKEN`] with nothing written; the caller settles those with the set
/// append. With the command service's checks it cost 63–77 µs of database
/// CPU per event beside the set append's 83–86 in the same runs
/// (`docs/performance-commands.md`), and a conflict or a repeat is rare.
pub(crate) const EXACT_APPEND: &str =
    "SELECT idx, status, out_stream_id, first_version, last_version, generation, tx_id, seq
       FROM eventstore_append_exact_checked($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,
                                            $11, $12, $13, $14, $15, $16)";

/// The status of a request the exact set append did not settle.
pub(crate) const TAKEN: &str = "taken";

/// How often a batch that lost a race with another writer of one of its
/// streams is run again. Each loss means another writer committed to
/// the stream in the moment between our snapshot and our lock (or, for a
/// statement that locks first, an exact set append committed the version
/// first), so a handful is plenty; after that the error goes to the caller (whose batch is then
/// written one request at a time).
const RACE_RETRIES: u32 = 5;

/// Runs a batch's append (`statement` makes and sends it), again after a
/// transient failure (see [`retry_transient`]) or a lost race (see the
/// module documentation).
pub(crate) async fn run<T, F>(statement: impl Fn() -> F) -> Result<T, sqlx::Error>
where
    F: Future<Output = Result<T, sqlx::Error>>,
{
    let mut races = 0;
    loop {
        match retry_transient(&statement).await {
            Err(e) if lost_race(&e) && races < RACE_RETRIES => {
                races += 1;
                tracing::debug!(attempt = races, "set append raced another writer; again");
            }
            done => return done,
        }
    }
}

fn lost_race(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db)
        if db.code().as_deref() == Some("23505") && db.constraint() == Some("events_pkey"))
}
