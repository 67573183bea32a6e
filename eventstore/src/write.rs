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
//! for one stream apply in the order given. A round that fails is written
//! again one request at a time, so a request that breaks the statement
//! fails alone ([`settle`]); every request gets an outcome of its own.

use std::sync::Arc;

use chrono::Utc;
use futures_util::future::BoxFuture;
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
    /// Writes `entries`, an outcome for each, in order. Wakes subscribers
    /// if anything was written.
    pub(crate) async fn write(
        &self,
        entries: &[Entry<'_>],
    ) -> Vec<Result<AppendOutcome, AppendError>> {
        let outcomes = settle(&rounds(entries), |round: Vec<usize>| -> BoxFuture<'_, _> {
            Box::pin(async move {
                let batch: Vec<Entry<'_>> = round.iter().map(|&i| entries[i]).collect();
                self.write_round(&batch).await
            })
        })
        .await;
        if outcomes.iter().any(|o| matches!(o, Ok(o) if !o.replayed)) {
            self.notifier.wake();
        }
        outcomes
    }

    /// One round (no stream or command id twice): the exact set append if
    /// it can take the round, then the set append for what it left taken.
    /// It fails only when nothing of the round was written: once the exact
    /// statement has committed, its outcomes stand, and the requests it left
    /// taken are settled on their own (with the same fallback).
    async fn write_round(
        &self,
        entries: &[Entry<'_>],
    ) -> Result<Vec<Result<AppendOutcome, AppendError>>, StoreError> {
        let args = AppendArgs::new(entries.iter().map(|(request, _)| *request))?;
        if !args.single_exact() {
            return self.set_append(entries, &args).await;
        }
        let mut outcomes = self.run(entries, &args, set_append::EXACT_APPEND).await?;
        let taken: Vec<usize> = (0..outcomes.len())
            .filter(|&i| outcomes[i].is_none())
            .collect();
        if !taken.is_empty() {
            crate::metrics::exact_append_taken().inc_by(taken.len() as u64);
            let positions: Vec<usize> = (0..taken.len()).collect();
            let settled = settle(&[positions], |round: Vec<usize>| -> BoxFuture<'_, _> {
                let again: Vec<Entry<'_>> = round.iter().map(|&p| entries[taken[p]]).collect();
                Box::pin(async move {
                    let args = AppendArgs::new(again.iter().map(|(request, _)| *request))?;
                    self.set_append(&again, &args).await
                })
            })
            .await;
            for (&i, outcome) in taken.iter().zip(settled) {
                outcomes[i] = Some(outcome);
            }
        }
        Ok(each_settled(
            outcomes,
            "the exact set append lost a request",
        ))
    }

    /// The set append of `entries` (one statement), which settles every
    /// request it is given.
    async fn set_append(
        &self,
        entries: &[Entry<'_>],
        args: &AppendArgs<'_>,
    ) -> Result<Vec<Result<AppendOutcome, AppendError>>, StoreError> {
        let outcomes = self.run(entries, args, set_append::SET_APPEND).await?;
        Ok(each_settled(
            outcomes,
            "the set append left a request unsettled",
        ))
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

/// Writes `rounds` (the indices `0..n` of a batch, each once) in order with
/// `write_round`, an outcome for each index. `write_round` fails only when
/// nothing of its round was written. If it held several requests and failed for
/// good, one of them may be what broke the statement: each is written again
/// alone, so only that one gets the error (earlier rounds stay written, and
/// none is written twice). A transient failure (already retried) is no
/// request's doing, and each request of the round gets it without writing
/// it again one by one (with the database away, that would wait once per
/// request). This is the store's one fallback from a batch to single writes.
///
/// (`write_round` takes its indices owned and answers a boxed future: the
/// compiler cannot yet prove a borrowing async closure's future `Send`.)
async fn settle<'a, T>(
    rounds: &[Vec<usize>],
    write_round: impl Fn(Vec<usize>) -> BoxFuture<'a, Result<Vec<Result<T, AppendError>>, StoreError>>,
) -> Vec<Result<T, AppendError>> {
    let size = rounds.iter().map(Vec::len).sum();
    let mut outcomes: Vec<Option<Result<T, AppendError>>> = (0..size).map(|_| None).collect();
    for round in rounds {
        match write_round(round.clone()).await {
            Ok(written) => {
                for (&i, outcome) in round.iter().zip(written) {
                    outcomes[i] = Some(outcome);
                }
            }
            Err(error) if round.len() == 1 => outcomes[round[0]] = Some(Err(error.into())),
            Err(error) if error.is_transient() => {
                tracing::warn!(%error, requests = round.len(), "a batch failed");
                let message = error.to_string();
                for &i in round {
                    outcomes[i] = Some(Err(StoreError::Unavailable(message.clone()).into()));
                }
            }
            Err(error) => {
                tracing::warn!(%error, requests = round.len(), "a batch failed; writing its requests one by one");
                for &i in round {
                    outcomes[i] = Some(match write_round(vec![i]).await {
                        Ok(mut one) => one.pop().unwrap_or_else(|| {
                            Err(StoreError::Corrupt("a write answered no outcome".into()).into())
                        }),
                        Err(error) => Err(error.into()),
                    });
                }
            }
        }
    }
    each_settled(outcomes, "a batch left a request unwritten")
}

/// An outcome for every request: where a step left one without (our bug,
/// never the caller's), the store's `Corrupt` error saying `missing`.
fn each_settled<T>(
    outcomes: Vec<Option<Result<T, AppendError>>>,
    missing: &str,
) -> Vec<Result<T, AppendError>> {
    outcomes
        .into_iter()
        .map(|outcome| outcome.unwrap_or_else(|| Err(StoreError::Corrupt(missing.into()).into())))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

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

    /// Writes `rounds` with a round writer that fails any statement holding
    /// index 3 and answers `index * 10` otherwise; (outcomes, statements).
    async fn settle_failing_on_3(
        rounds: &[Vec<usize>],
    ) -> (Vec<Result<usize, AppendError>>, usize) {
        let statements = AtomicUsize::new(0);
        let outcomes = settle(rounds, |round: Vec<usize>| -> BoxFuture<'_, _> {
            statements.fetch_add(1, Ordering::SeqCst);
            let answer = if round.contains(&3) {
                Err(StoreError::Corrupt("request 3 breaks the statement".into()))
            } else {
                Ok(round.iter().map(|&i| Ok(i * 10)).collect())
            };
            Box::pin(async move { answer })
        })
        .await;
        (outcomes, statements.load(Ordering::SeqCst))
    }

    fn assert_only_3_failed(outcomes: &[Result<usize, AppendError>]) {
        for (i, outcome) in outcomes.iter().enumerate() {
            match outcome {
                Ok(value) => assert_eq!((i, *value), (i, i * 10)),
                Err(AppendError::Store(StoreError::Corrupt(_))) => assert_eq!(i, 3),
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        assert!(outcomes[3].is_err());
    }

    /// A batch whose statement fails because of one request: that request
    /// alone gets the error, each other one its own outcome, in order.
    #[tokio::test]
    async fn a_failed_round_is_written_one_by_one_and_only_the_culprit_fails() {
        let (outcomes, statements) = settle_failing_on_3(&[vec![0, 1, 2, 3, 4]]).await;
        assert_eq!(statements, 1 + 5);
        assert_only_3_failed(&outcomes);
        // In a later round: the rounds before stay written once.
        let (outcomes, statements) = settle_failing_on_3(&[vec![0, 1], vec![2, 3, 4]]).await;
        assert_eq!(statements, 1 + 1 + 3);
        assert_only_3_failed(&outcomes);
    }

    /// A transient failure is no request's doing: the round's requests all
    /// get it, and none is written again one by one.
    #[tokio::test]
    async fn a_transient_failure_fails_the_round_without_single_writes() {
        let statements = AtomicUsize::new(0);
        let outcomes = settle(&[vec![0, 1, 2]], |_: Vec<usize>| -> BoxFuture<'_, _> {
            statements.fetch_add(1, Ordering::SeqCst);
            Box::pin(async {
                Err::<Vec<Result<usize, AppendError>>, _>(StoreError::Database(
                    sqlx::Error::PoolTimedOut,
                ))
            })
        })
        .await;
        assert_eq!(statements.load(Ordering::SeqCst), 1);
        assert_eq!(outcomes.len(), 3);
        for outcome in &outcomes {
            assert!(
                matches!(outcome, Err(AppendError::Store(e @ StoreError::Unavailable(_))) if e.is_transient()),
                "{outcome:?}"
            );
        }
    }

    /// Rounds that succeed are written once each, and a request alone that
    /// fails gets its error without a second try.
    #[tokio::test]
    async fn good_rounds_are_written_once_and_a_lone_failure_is_not_retried() {
        let (outcomes, statements) = settle_failing_on_3(&[vec![0, 1], vec![2]]).await;
        assert_eq!(statements, 2);
        assert_eq!(outcomes.len(), 3, "an outcome for every index");
        assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
        let (outcomes, statements) = settle_failing_on_3(&[vec![0, 1, 2], vec![3], vec![4]]).await;
        assert_eq!(statements, 3);
        assert_only_3_failed(&outcomes);
    }
}
