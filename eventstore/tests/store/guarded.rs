//! Guarded appends (see `eventstore::Guard`): each request's credential and
//! stored outcome checked again by the statement that writes it.

use eventstore::{
    AppendError, AppendOutcome, AppendRequest, EventStore, ExpectedVersion, Guard, Metadata,
    NewEvent, StoreOptions,
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::events_in;

/// A request and the guard it is appended under.
type Entry = (AppendRequest, Guard);

/// Appends `entries` as one batch through the store's one write path.
async fn write(store: &EventStore, entries: &[&Entry]) -> Vec<Result<AppendOutcome, AppendError>> {
    let pairs: Vec<(&AppendRequest, &Guard)> = entries.iter().map(|(r, g)| (r, g)).collect();
    store.append_batch_guarded(&pairs).await
}

/// A user with a live and an ended session, and a command id whose
/// rejection is stored.
async fn fixtures(pool: &PgPool) -> (Uuid, Uuid) {
    let (user, rejected) = (Uuid::now_v7(), Uuid::now_v7());
    sqlx::query(
        "WITH u AS (INSERT INTO auth_users (user_id, email, role, password_hash)
                    VALUES ($1, 'a@example.com', 'operator', 'x')),
              s AS (INSERT INTO auth_sessions (token_hash, session_id, user_id, expires_at,
                                               last_seen, ended)
                    SELECT hash, gen_random_uuid(), $1, now() + interval '1 hour', now(), ended
                      FROM (VALUES ('live', false), ('ended', true)) AS v(hash, ended))
         INSERT INTO command_results (command_id, command_type, status, result)
         VALUES ($2, 'conversation.append_message', 'rejected', '{}')",
    )
    .bind(user)
    .bind(rejected)
    .execute(pool)
    .await
    .expect("a user, two sessions and a stored rejection");
    (user, rejected)
}

/// A store on `pool` with [`fixtures`]: the store, the user and the
/// command id whose rejection is stored.
async fn store_with_fixtures(pool: &PgPool) -> (EventStore, Uuid, Uuid) {
    let (user, rejected) = fixtures(pool).await;
    let store = EventStore::connect(pool.clone(), StoreOptions::default())
        .await
        .expect("store");
    (store, user, rejected)
}

fn entry(stream_id: Uuid, command_id: Uuid, events: usize, token: &str, user: Uuid) -> Entry {
    let request = AppendRequest {
        stream_id,
        stream_type: "conversation".into(),
        expected: ExpectedVersion::Any,
        events: (0..events)
            .map(|i| NewEvent::new(format!("e{i}"), 1, vec![0]))
            .collect(),
        metadata: Metadata {
            command_id: Some(command_id),
            ..Metadata::default()
        },
    };
    let guard = Guard {
        token_hash: Some(token.into()),
        key_id: None,
        user_id: user,
        role: "operator".into(),
    };
    (request, guard)
}

/// [`entry`] decided under the API key `key_id` instead of a session.
fn key_entry(stream_id: Uuid, key_id: Uuid, user: Uuid) -> Entry {
    let (request, mut guard) = entry(stream_id, Uuid::now_v7(), 1, "digest-of-the-key", user);
    guard.key_id = Some(key_id);
    (request, guard)
}

/// Keys of `user`: live, revoked, expired, and one that never expires.
async fn key_fixtures(pool: &PgPool, user: Uuid) -> [Uuid; 4] {
    let keys = [(); 4].map(|_| Uuid::now_v7());
    for (key, revoked, expires) in [
        (keys[0], false, Some("1 hour")),
        (keys[1], true, Some("1 hour")),
        (keys[2], false, Some("-1 second")),
        (keys[3], false, None),
    ] {
        sqlx::query(
            "INSERT INTO auth_api_keys (key_id, user_id, key_hash, scopes, expires_at, revoked)
             VALUES ($1, $2, 'x', '{commands:write}', now() + $3::interval, $4)",
        )
        .bind(key)
        .bind(user)
        .bind(expires)
        .bind(revoked)
        .execute(pool)
        .await
        .expect("key");
    }
    keys
}

/// Requests decided under API keys are appended only while the key is
/// still that user's and neither revoked nor expired, also when a stream
/// repeats in the batch (later rounds are checked the same way).
#[sqlx::test(migrations = "../migrations")]
async fn api_key_requests_are_checked_against_the_key(pool: PgPool) {
    let (store, user, _) = store_with_fixtures(&pool).await;
    let keys = key_fixtures(&pool, user).await;
    let streams: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
    let entries = vec![
        key_entry(streams[0], keys[0], user),
        key_entry(streams[1], keys[1], user),
        key_entry(streams[2], keys[2], user),
        key_entry(streams[3], keys[3], user),
        key_entry(streams[4], keys[0], Uuid::now_v7()),
    ];
    let batch: Vec<&Entry> = entries.iter().collect();
    let outcomes = write(&store, &batch).await;
    assert_eq!(
        summary(&outcomes),
        vec![
            Ok(1),
            Err("unverified"),
            Err("unverified"),
            Ok(1),
            Err("unverified")
        ]
    );
    assert_eq!(
        stored(&pool).await,
        expected_events(&entries, &[0, 3], &[1, 1])
    );

    let stream = Uuid::now_v7();
    let dependent = [
        entry(stream, Uuid::now_v7(), 1, "live", user),
        key_entry(stream, keys[0], user),
        key_entry(stream, keys[1], user),
        entry(stream, Uuid::now_v7(), 1, "live", user),
    ];
    let batch: Vec<&Entry> = dependent.iter().collect();
    let outcomes = write(&store, &batch).await;
    assert_eq!(
        summary(&outcomes),
        vec![Ok(1), Ok(2), Err("unverified"), Ok(3)]
    );
}

/// The checks stay key probes under the generic plan the committer
/// connections use: with 2,000 stored outcomes, hashing the whole of
/// `command_results` once per batch looked cheaper to the planner, and
/// every batch scanned them all.
#[sqlx::test(migrations = "../migrations")]
async fn generic_plan_probes_stored_outcomes_by_key(pool: PgPool) {
    sqlx::query(
        "INSERT INTO command_results (command_id, command_type, status, result)
         SELECT gen_random_uuid(), 'conversation.append_message', 'rejected', '{}'
           FROM generate_series(1, 2000)",
    )
    .execute(&pool)
    .await
    .expect("stored outcomes");
    let mut conn = pool.acquire().await.expect("connection");
    sqlx::raw_sql("ANALYZE command_results; SET plan_cache_mode = force_generic_plan")
        .execute(&mut *conn)
        .await
        .expect("analyze");
    let types = "uuid[], text[], bigint[], uuid[], integer[], text[], uuid[], text[], \
                 integer[], bytea[], timestamptz, timestamptz, text[], uuid[], text[], uuid[]";
    let nulls = vec!["NULL"; 16].join(", ");
    // The statement each function runs, prepared on its own: the
    // function's plan is not shown by EXPLAIN of its call.
    for (name, function) in [
        ("guarded", "eventstore_append_set_checked"),
        ("exact", "eventstore_append_exact_checked"),
    ] {
        let body: String = sqlx::query_scalar("SELECT prosrc FROM pg_proc WHERE proname = $1")
            .bind(function)
            .fetch_one(&mut *conn)
            .await
            .expect("function");
        let statement = body
            .split_once("RETURN QUERY")
            .and_then(|(_, rest)| rest.rsplit_once(';'))
            .map(|(statement, _)| statement.to_string())
            .expect("RETURN QUERY <statement>;");
        sqlx::raw_sql(&format!("PREPARE {name}({types}) AS {statement}"))
            .execute(&mut *conn)
            .await
            .expect("prepare");
        let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN EXECUTE {name}({nulls})"))
            .fetch_all(&mut *conn)
            .await
            .expect("plan");
        let plan = plan.join("\n");
        assert!(plan.contains("command_results_pkey"), "{plan}");
        for table in ["command_results", "events", "auth_sessions", "auth_users"] {
            assert!(!plan.contains(&format!("Seq Scan on {table} ")), "{plan}");
        }
    }
}

/// What each entry's outcome says: the last version, or why it was held back.
fn summary(outcomes: &[Result<AppendOutcome, AppendError>]) -> Vec<Result<u64, &'static str>> {
    outcomes
        .iter()
        .map(|o| match o {
            Ok(o) => Ok(o.version),
            Err(AppendError::Decided) => Err("decided"),
            Err(AppendError::Unverified) => Err("unverified"),
            Err(_) => Err("append error"),
        })
        .collect()
}

/// The events stored, oldest first: stream, version, event id, type, command id.
async fn stored(pool: &PgPool) -> Vec<(Uuid, i64, Uuid, String, Option<Uuid>)> {
    sqlx::query_as(
        "SELECT stream_id, version, event_id, event_type, command_id FROM events ORDER BY seq",
    )
    .fetch_all(pool)
    .await
    .expect("events")
}

/// The events of `entries[i]` for each kept `i`, as stored if they are
/// the first of their streams.
fn expected_events(
    entries: &[Entry],
    kept: &[usize],
    first_versions: &[i64],
) -> Vec<(Uuid, i64, Uuid, String, Option<Uuid>)> {
    kept.iter()
        .zip(first_versions)
        .flat_map(|(&i, &first)| {
            let (request, _) = &entries[i];
            request.events.iter().enumerate().map(move |(k, e)| {
                (
                    request.stream_id,
                    first + k as i64,
                    e.event_id,
                    e.event_type.clone(),
                    (k == 0).then_some(request.metadata.command_id).flatten(),
                )
            })
        })
        .collect()
}

/// A set append (every stream and command once) in which two requests
/// fail their check: those write nothing, and the others are appended
/// as if alone, each with exactly its own events, answered in order.
#[sqlx::test(migrations = "../migrations")]
async fn held_back_requests_leave_the_rest_of_a_set_append_intact(pool: PgPool) {
    let (store, user, rejected) = store_with_fixtures(&pool).await;
    let streams: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
    let entries = vec![
        entry(streams[0], Uuid::now_v7(), 2, "live", user),
        entry(streams[1], Uuid::now_v7(), 1, "ended", user),
        entry(streams[2], Uuid::now_v7(), 1, "live", user),
        entry(streams[3], rejected, 2, "live", user),
        entry(streams[4], Uuid::now_v7(), 3, "live", user),
    ];
    let batch: Vec<&Entry> = entries.iter().collect();
    let outcomes = write(&store, &batch).await;
    assert_eq!(
        summary(&outcomes),
        vec![Ok(2), Err("unverified"), Ok(1), Err("decided"), Ok(3)]
    );
    assert_eq!(
        stored(&pool).await,
        expected_events(&entries, &[0, 2, 4], &[1, 1, 1])
    );
}

/// The same when a stream repeats in the batch (its requests go in
/// rounds, in order): the held-back request is skipped and the next one
/// on its stream follows the first.
#[sqlx::test(migrations = "../migrations")]
async fn held_back_requests_leave_the_rest_of_a_dependent_batch_intact(pool: PgPool) {
    let (store, user, rejected) = store_with_fixtures(&pool).await;
    let stream = Uuid::now_v7();
    let entries = vec![
        entry(stream, Uuid::now_v7(), 2, "live", user),
        entry(stream, Uuid::now_v7(), 1, "ended", user),
        entry(stream, rejected, 1, "live", user),
        entry(stream, Uuid::now_v7(), 3, "live", user),
    ];
    let batch: Vec<&Entry> = entries.iter().collect();
    let outcomes = write(&store, &batch).await;
    assert_eq!(
        summary(&outcomes),
        vec![Ok(2), Err("unverified"), Err("decided"), Ok(5)]
    );
    assert_eq!(
        stored(&pool).await,
        expected_events(&entries, &[0, 3], &[1, 3])
    );
}

/// [`entry`] of one event at an exact expected version.
fn exact_entry(stream_id: Uuid, expected: ExpectedVersion, token: &str, user: Uuid) -> Entry {
    let (mut request, guard) = entry(stream_id, Uuid::now_v7(), 1, token, user);
    request.expected = expected;
    (request, guard)
}

/// The last version and position of an appended (not replayed) outcome.
fn version_and_position(
    outcome: &Result<AppendOutcome, AppendError>,
) -> (u64, eventstore::Position) {
    match outcome {
        Ok(o) if !o.replayed => (o.version, o.position),
        other => panic!("expected an append, got {other:?}"),
    }
}

/// A batch the exact set append takes: each request is written on top
/// of its stream's head, after it in the global order, or settled by
/// the full set append as it would have been without it: a stale
/// expected version is a conflict with the stream's version, one ahead
/// of the stream writes nothing (no gap), a command id appended before
/// is replayed, and the checks hold back what they always did.
#[sqlx::test(migrations = "../migrations")]
async fn exact_batches_append_on_the_head_and_settle_the_rest(pool: PgPool) {
    let (store, user, rejected) = store_with_fixtures(&pool).await;
    let streams: Vec<Uuid> = (0..8).map(|_| Uuid::now_v7()).collect();
    let mut heads = Vec::new();
    for (stream, events) in [(streams[0], 1), (streams[1], 2), (streams[4], 1)] {
        let seed = entry(stream, Uuid::now_v7(), events, "live", user);
        let outcomes = write(&store, &[&seed]).await;
        heads.push(version_and_position(&outcomes[0]));
    }
    let repeated = entry(streams[7], Uuid::now_v7(), 1, "live", user);
    let first = write(&store, &[&repeated]).await;
    let first = version_and_position(&first[0]);
    let before = stored(&pool).await;

    let mut again = exact_entry(streams[3], ExpectedVersion::NoStream, "live", user);
    again.0.metadata.command_id = repeated.0.metadata.command_id;
    let mut decided = exact_entry(streams[6], ExpectedVersion::NoStream, "live", user);
    decided.0.metadata.command_id = Some(rejected);
    let entries = vec![
        exact_entry(streams[0], ExpectedVersion::Exact(1), "live", user),
        exact_entry(streams[1], ExpectedVersion::Exact(1), "live", user),
        exact_entry(streams[2], ExpectedVersion::NoStream, "live", user),
        again,
        exact_entry(streams[4], ExpectedVersion::Exact(5), "live", user),
        exact_entry(streams[5], ExpectedVersion::NoStream, "ended", user),
        decided,
    ];
    let batch: Vec<&Entry> = entries.iter().collect();
    let taken = eventstore::metrics::exact_append_taken().get();
    let outcomes = write(&store, &batch).await;
    // Tests in parallel may count more; this batch leaves three.
    assert!(eventstore::metrics::exact_append_taken().get() >= taken + 3);
    assert_eq!(
        summary(&outcomes),
        vec![
            Ok(2),
            Err("append error"),
            Ok(1),
            Ok(1),
            Err("append error"),
            Err("unverified"),
            Err("decided"),
        ]
    );
    let (_, position) = version_and_position(&outcomes[0]);
    assert!(position > heads[0].1 && position > first.1);
    for (i, actual) in [(1, 2), (4, 1)] {
        assert!(
            matches!(&outcomes[i], Err(AppendError::Conflict { actual: Some(a), .. }) if *a == actual),
            "{:?}",
            outcomes[i]
        );
    }
    match &outcomes[3] {
        Ok(o) => assert!(o.replayed && o.stream_id == streams[7] && o.position == first.1),
        other => panic!("expected a replay, got {other:?}"),
    }
    let mut expected = before;
    expected.extend(expected_events(&entries, &[0, 2], &[2, 1]));
    assert_eq!(stored(&pool).await, expected);
}

/// The exact set append takes no lock: against a writer of the same
/// version that has not committed, it waits for it, and is then a
/// conflict if that writer committed, or the append if it rolled back.
#[sqlx::test(migrations = "../migrations")]
async fn exact_batches_wait_for_a_concurrent_writer_of_the_version(pool: PgPool) {
    let (store, user, _) = store_with_fixtures(&pool).await;
    for commit in [true, false] {
        let stream = Uuid::now_v7();
        let seed = entry(stream, Uuid::now_v7(), 1, "live", user);
        write(&store, &[&seed]).await;
        let mut other = pool.begin().await.expect("transaction");
        sqlx::query(
            "INSERT INTO events (stream_id, version, generation, tx_id, event_id, stream_type,
                                 event_type, schema_version, payload, metadata)
             VALUES ($1, 2, 1, pg_current_xact_id()::text::bigint, gen_random_uuid(),
                     'conversation', 'other', 1, '\\x00', '{}')",
        )
        .bind(stream)
        .execute(&mut *other)
        .await
        .expect("the other writer's row");
        let ours = exact_entry(stream, ExpectedVersion::Exact(1), "live", user);
        let writing = {
            let store = store.clone();
            tokio::spawn(async move { write(&store, &[&ours]).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(!writing.is_finished(), "wrote past an uncommitted version");
        if commit {
            other.commit().await.expect("commit");
        } else {
            other.rollback().await.expect("rollback");
        }
        let outcomes = writing.await.expect("task");
        let types: Vec<String> = sqlx::query_scalar(
            "SELECT event_type FROM events WHERE stream_id = $1 ORDER BY version",
        )
        .bind(stream)
        .fetch_all(&pool)
        .await
        .expect("stream");
        if commit {
            assert_eq!(summary(&outcomes), vec![Err("append error")]);
            assert_eq!(types, ["e0", "other"]);
        } else {
            assert_eq!(summary(&outcomes), vec![Ok(2)]);
            assert_eq!(types, ["e0", "e0"]);
        }
    }
}

/// What the exact set append wrote stands when the set append for what it
/// left taken then fails: the written request answers its append (not an
/// error, not a second write), and only the leftover gets the failure.
#[sqlx::test(migrations = "../migrations")]
async fn exact_appends_stand_when_the_set_append_after_them_fails(pool: PgPool) {
    let (store, user, _) = store_with_fixtures(&pool).await;
    let (moved, fresh) = (Uuid::now_v7(), Uuid::now_v7());
    let seed = entry(moved, Uuid::now_v7(), 2, "live", user);
    version_and_position(&write(&store, &[&seed]).await[0]);
    // From here every set append fails for good (the exact one still runs).
    sqlx::query(
        "ALTER FUNCTION eventstore_append_set_checked RENAME TO eventstore_append_set_checked_gone",
    )
    .execute(&pool)
    .await
    .expect("rename the set append");
    let written = exact_entry(fresh, ExpectedVersion::NoStream, "live", user);
    let stale = exact_entry(moved, ExpectedVersion::Exact(1), "live", user);
    let outcomes = write(&store, &[&written, &stale]).await;
    assert_eq!(summary(&outcomes), vec![Ok(1), Err("append error")]);
    assert_eq!(events_in(&pool, &[fresh]).await, 1, "written once");
}

/// The exact set append is the one the common batch takes: it needs no
/// stream lock, so a transaction holding one does not hold it up (the
/// full set append would wait for it to end).
#[sqlx::test(migrations = "../migrations")]
async fn exact_batches_take_no_stream_lock(pool: PgPool) {
    let (store, user, _) = store_with_fixtures(&pool).await;
    let stream = Uuid::now_v7();
    let mut locker = pool.begin().await.expect("transaction");
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0))")
        .bind(stream)
        .execute(&mut *locker)
        .await
        .expect("the stream's lock");
    let ours = exact_entry(stream, ExpectedVersion::NoStream, "live", user);
    let written = tokio::time::timeout(std::time::Duration::from_secs(20), write(&store, &[&ours]))
        .await
        .expect("the exact set append waited for the stream's lock");
    assert_eq!(summary(&written), vec![Ok(1)]);
    locker.rollback().await.expect("rollback");
}
