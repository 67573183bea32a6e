//! The set append as one prepared statement (`set_append.sql`).
//!
//! `eventstore_append_set` (migration 0006) does the same work in PL/pgSQL
//! (it stays, for instances of the previous release during an upgrade),
//! and a group commit of a dozen appends spent most of its time there on
//! the function machinery rather than on the rows: executor start-up of the
//! function's statements, saving and restoring its `SET` clause, and
//! materialising the rows it returns. Sent as one prepared statement the
//! whole batch is planned once per connection (generic plans, see
//! [`crate::committers`]) and executed once.
//!
//! What the function had for free, its locks before its snapshot, a single
//! statement cannot have: its snapshot is taken before it takes the
//! streams' locks. A writer of one of the streams that commits in between
//! makes the insert hit `events_pkey`; nothing is written and the statement
//! is run again ([`run`]), with a snapshot that sees that commit. Writers
//! that lock first (`eventstore_append`, `eventstore_append_batch`) see a
//! clash only with the exact set append ([`exact_statement`]), which takes
//! no lock; their batches are run again the same way (see
//! [`crate::AppendArgs::fetch_all`]), and the rerun reads the head it left.

use std::future::Future;
use std::sync::LazyLock;

use crate::error::retry_transient;

const TEMPLATE: &str = include_str!("set_append.sql");
const EXACT_TEMPLATE: &str = include_str!("exact_append.sql");

/// The set append with `checked` as the body of its `checked` step: a
/// `SELECT` of every column of `req` and a text column `blocked`, NULL for a
/// request to append and otherwise the status it is answered with (nothing
/// of it is then locked or written). `checked` may use parameters from `$11`
/// on; `$1` to `$10` are [`crate::AppendArgs::bind`]'s arrays.
pub fn statement(checked: &str) -> String {
    TEMPLATE.replace("{checked}", checked)
}

/// The exact set append (`exact_append.sql`) with `checked` as the body of
/// its `checked` step, as for [`statement`]: for a batch in which every
/// request appends one event at an exact expected version (see
/// [`crate::AppendArgs::single_exact`]). It takes no locks and probes only
/// the stream's expected head; the primary key and the command index refuse
/// what the locks and the probes of the set append would. A request it
/// cannot settle (its stream moved on, or is being written, or its command
/// id was appended before) is answered `taken` with nothing written; the
/// caller settles those with the set append. With the command service's
/// checks it cost 63–77 µs of database CPU per event beside the set
/// append's 83–86 in the same runs (`docs/performance-commands.md`), and a
/// conflict or a repeat is rare.
pub fn exact_statement(checked: &str) -> String {
    EXACT_TEMPLATE.replace("{checked}", checked)
}

/// The status of a request the exact set append did not settle.
pub const TAKEN: &str = "taken";

/// The set append of the store's own group commit: no request held back.
pub(crate) static PLAIN: LazyLock<String> =
    LazyLock::new(|| statement("    SELECT req.*, NULL::text AS blocked FROM req"));

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
