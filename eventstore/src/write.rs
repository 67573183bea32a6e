//! The one way a batch of appends is written. Group commit
//! ([`crate::group_commit`]), [`crate::EventStore::append_batch`] and the
//! command service's request/reply lane all come here.
//!
//! A batch is cut into rounds in which no stream and no command id appears
//! twice (almost always one round). Each round is one statement, so one
//! transaction: the exact set append ([`set_append::EXACT_APPEND`]) when
//! every request appends one event at an exact version (the common case),
//! whose leftovers (`taken`) go to the set append
//! ([`set_append::SET_APPEND`]) in a second statement; the set append for
//! anything else. Both check each request's [`Guard`] in the same
//! statement. A later round sees what the earlier ones wrote, so requests
//! for one stream apply in the order given.

use std::sync::Arc;

use chrono::Utc;
use sqlx::postgres::PgRow;
use sqlx::Row;
use uuid::Uuid;

use crate::append::{outcome_from_row, AppendArgs};
use crate::committers::Committers;
use crate::notify::Notifier;
use crate::set_append;
use crate::{AppendError, AppendOutcome, AppendRequest, Guard, StoreError};

/// A request and what its append checks again.
pub(crate) type Entry<'a> = (&'a AppendRequest, &'a Guard);

/// What the writer needs of the store; cheap to clone.
#[derive(Clone)]
pub(crate) struct Writer {
    pub committers: Arc<Committers>,
    pub notifier: Notifier,
    /// Sessions last seen longer ago than this no longer hold.
    pub session_idle_timeout: chrono::Duration,
}

impl Writer {
    /// Writes `entries`, an outcome for each, in order. The outer error
    /// means nothing was written. Wakes subscribers if anything was.
    pub(crate) async fn write(
        &self,
        entries: &[Entry<'_>],
    ) -> Result<Vec<Result<AppendOutcome, AppendError>>, StoreError> {
        let rounds = rounds(entries);
        let mut outcomes: Vec<Option<Result<AppendOutcome, AppendError>>> =
            entries.iter().map(|_| None).collect();
        for (number, round) in rounds.iter().enumerate() {
            let batch: Vec<Entry<'_>> = round.iter().map(|&i| entries[i]).collect();
            match self.write_round(&batch).await {
                Ok(written) => {
                    for (&i, outcome) in round.iter().zip(written) {
                        outcomes[i] = Some(outcome);
                    }
                }
                // Nothing was written yet: the caller may try again.
                Err(error) if number == 0 => return Err(error),
                // Earlier rounds are committed; the rest are written one by
                // one, so each gets its own outcome and none is written twice.
                Err(error) => {
                    tracing::warn!(%error, "a later round of a batch failed; writing its requests one by one");
                    for &i in rounds[number..].iter().flatten() {
                        outcomes[i] = Some(match self.write_round(&[entries[i]]).await {
                            Ok(mut one) => one.pop().unwrap_or_else(|| {
                                Err(StoreError::Corrupt("a write answered no outcome".into())
                                    .into())
                            }),
                            Err(error) => Err(error.into()),
                        });
                    }
                    break;
                }
            }
        }
        let outcomes: Vec<_> = outcomes
            .into_iter()
            .map(|outcome| {
                outcome.unwrap_or_else(|| {
                    Err(StoreError::Corrupt("a batch left a request unwritten".into()).into())
                })
            })
            .collect();
        if outcomes.iter().any(|o| matches!(o, Ok(o) if !o.replayed)) {
            self.notifier.wake();
        }
        Ok(outcomes)
    }

    /// One round (no stream or command id twice): the exact set append if
    /// it can take the round, then the set append for what it left taken.
    async fn write_round(
        &self,
        entries: &[Entry<'_>],
    ) -> Result<Vec<Result<AppendOutcome, AppendError>>, StoreError> {
        let args = AppendArgs::new(entries.iter().map(|(request, _)| *request))?;
        let statement = if args.single_exact() {
            set_append::EXACT_APPEND
        } else {
            set_append::SET_APPEND
        };
        let mut outcomes = self.run(entries, &args, statement).await?;
        let taken: Vec<usize> = (0..outcomes.len())
            .filter(|&i| outcomes[i].is_none())
            .collect();
        if !taken.is_empty() {
            crate::metrics::exact_append_taken().inc_by(taken.len() as u64);
            let again: Vec<Entry<'_>> = taken.iter().map(|&i| entries[i]).collect();
            let args = AppendArgs::new(again.iter().map(|(request, _)| *request))?;
            let settled = self.run(&again, &args, set_append::SET_APPEND).await?;
            for (i, outcome) in taken.into_iter().zip(settled) {
                outcomes[i] = outcome;
            }
        }
        outcomes
            .into_iter()
            .map(|outcome| {
                outcome.ok_or_else(|| {
                    StoreError::Corrupt("the set append left a request unsettled".into())
                })
            })
            .collect()
    }

    /// One statement: `statement` for `entries`, whose arrays `args` holds,
    /// with their guards; `None` for a request the exact set append left
    /// taken.
    async fn run(
        &self,
        entries: &[Entry<'_>],
        args: &AppendArgs<'_>,
        statement: &str,
    ) -> Result<Vec<Option<Result<AppendOutcome, AppendError>>>, StoreError> {
        let tokens: Vec<Option<&str>> = entries
            .iter()
            .map(|(_, g)| g.token_hash.as_deref())
            .collect();
        let users: Vec<Uuid> = entries.iter().map(|(_, g)| g.user_id).collect();
        let roles: Vec<&str> = entries.iter().map(|(_, g)| g.role.as_str()).collect();
        let keys: Vec<Option<Uuid>> = entries.iter().map(|(_, g)| g.key_id).collect();
        let now = Utc::now();
        let seen_after = now - self.session_idle_timeout;
        let send = || {
            let query = args
                .bind(sqlx::query(statement))
                .bind(now)
                .bind(seen_after)
                .bind(&tokens)
                .bind(&users)
                .bind(&roles)
                .bind(&keys);
            self.committers.fetch_all(query)
        };
        // The set append may lose a race on `events_pkey` to a writer that
        // committed between its snapshot and its locks; nothing was written
        // and `run` sends it again.
        let rows = set_append::run(send).await?;
        if rows.len() != entries.len() {
            return Err(StoreError::Corrupt(format!(
                "batch of {} appends answered {} rows",
                entries.len(),
                rows.len()
            )));
        }
        rows.iter()
            .zip(entries)
            .map(|(row, (request, _))| outcome(row, request))
            .collect()
    }
}

fn outcome(
    row: &PgRow,
    request: &AppendRequest,
) -> Result<Option<Result<AppendOutcome, AppendError>>, StoreError> {
    let status: String = row.try_get("status")?;
    Ok(match status.as_str() {
        "decided" => Some(Err(AppendError::Decided)),
        "unverified" => Some(Err(AppendError::Unverified)),
        set_append::TAKEN => None,
        _ => Some(outcome_from_row(row, request)),
    })
}

/// The rounds of a batch, as indices into it: each request goes to the
/// round after the last one holding a request for its stream or with its
/// command id, so no round names either twice and a stream's requests keep
/// their order.
fn rounds(entries: &[Entry<'_>]) -> Vec<Vec<usize>> {
    use std::collections::HashMap;

    let mut last_round: HashMap<Uuid, usize> = HashMap::with_capacity(entries.len());
    let mut last_command: HashMap<Uuid, usize> = HashMap::new();
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    for (i, (request, _)) in entries.iter().enumerate() {
        let after_stream = last_round.get(&request.stream_id).map(|r| r + 1);
        let after_command = request
            .metadata
            .command_id
            .and_then(|c| last_command.get(&c))
            .map(|r| r + 1);
        let round = after_stream.max(after_command).unwrap_or(0);
        last_round.insert(request.stream_id, round);
        if let Some(command) = request.metadata.command_id {
            last_command.insert(command, round);
        }
        if rounds.len() <= round {
            rounds.resize_with(round + 1, Vec::new);
        }
        rounds[round].push(i);
    }
    rounds
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ExpectedVersion, Metadata, NewEvent};

    fn request(stream_id: Uuid, command_id: Option<Uuid>) -> AppendRequest {
        AppendRequest {
            stream_id,
            stream_type: "s".into(),
            expected: ExpectedVersion::Any,
            events: vec![NewEvent::new("e", 1, vec![0])],
            metadata: Metadata {
                command_id,
                ..Metadata::default()
            },
        }
    }

    #[test]
    fn rounds_never_name_a_stream_or_command_twice_and_keep_each_streams_order() {
        let [a, b, c] = [(); 3].map(|()| Uuid::now_v7());
        let [x, y] = [(); 2].map(|()| Uuid::now_v7());
        let requests = [
            request(a, Some(x)), // 0: round 0
            request(b, None),    // 1: round 0
            request(a, None),    // 2: after 0
            request(c, Some(x)), // 3: after 0 (its command)
            request(a, Some(y)), // 4: after 2
            request(b, Some(y)), // 5: after 1 and 4 (its command)
        ];
        let none = Guard::NONE;
        let entries: Vec<Entry<'_>> = requests.iter().map(|r| (r, &none)).collect();
        assert_eq!(
            rounds(&entries),
            vec![vec![0, 1], vec![2, 3], vec![4], vec![5]]
        );
        let independent: Vec<Entry<'_>> = requests[..2].iter().map(|r| (r, &none)).collect();
        assert_eq!(rounds(&independent), vec![vec![0, 1]]);
        assert!(rounds(&[]).is_empty());
    }
}
