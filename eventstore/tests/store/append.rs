use std::time::Duration;

use eventstore::{checkpoint, AppendError, ExpectedVersion, Position};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{appended, begun_with_one, event_count, events_in, request, store, with_command};

#[sqlx::test(migrations = "../migrations")]
async fn versions_and_positions_grow(pool: PgPool) {
    let store = store(pool).await;
    let stream = Uuid::now_v7();
    let first = appended(&store, request(stream, ExpectedVersion::NoStream, 3)).await;
    assert_eq!((first.first_version, first.version), (1, 3));
    let second = appended(&store, request(stream, ExpectedVersion::Exact(3), 2)).await;
    assert_eq!((second.first_version, second.version), (4, 5));
    assert!(second.position > first.position);
    let any = appended(&store, request(stream, ExpectedVersion::Any, 1)).await;
    assert_eq!(any.version, 6);
    let fresh = appended(&store, request(Uuid::now_v7(), ExpectedVersion::Any, 1)).await;
    assert_eq!(fresh.version, 1);
}

#[sqlx::test(migrations = "../migrations")]
async fn stale_expected_versions_conflict_and_write_nothing(pool: PgPool) {
    let store = store(pool.clone()).await;
    let stream = Uuid::now_v7();
    appended(&store, request(stream, ExpectedVersion::NoStream, 2)).await;

    let err = store
        .append(&request(stream, ExpectedVersion::Exact(1), 1))
        .await
        .expect_err("stale");
    assert!(
        matches!(
            err,
            AppendError::Conflict {
                actual: Some(2),
                expected: ExpectedVersion::Exact(1),
                ..
            }
        ),
        "{err:?}"
    );
    let err = store
        .append(&request(stream, ExpectedVersion::NoStream, 1))
        .await
        .expect_err("exists");
    assert!(
        matches!(
            err,
            AppendError::Conflict {
                actual: Some(2),
                ..
            }
        ),
        "{err:?}"
    );
    let err = store
        .append(&request(Uuid::now_v7(), ExpectedVersion::Exact(4), 1))
        .await
        .expect_err("missing stream");
    assert!(
        matches!(err, AppendError::Conflict { actual: None, .. }),
        "{err:?}"
    );
    assert_eq!(event_count(&pool).await, 2);
}

#[sqlx::test(migrations = "../migrations")]
async fn concurrent_appends_with_one_expected_version_one_wins(pool: PgPool) {
    let store = store(pool.clone()).await;
    for round in 0..20u64 {
        let stream = Uuid::now_v7();
        appended(&store, request(stream, ExpectedVersion::NoStream, 1)).await;
        let a = request(stream, ExpectedVersion::Exact(1), 1 + (round as usize % 3));
        let b = request(stream, ExpectedVersion::Exact(1), 1);
        let (ra, rb) = tokio::join!(store.append(&a), store.append(&b));
        let oks = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
        assert_eq!(oks, 1, "round {round}: {ra:?} / {rb:?}");
        for r in [ra, rb] {
            if let Err(e) = r {
                assert!(matches!(e, AppendError::Conflict { .. }), "{e:?}");
            }
        }
        let version = store
            .stream_version(stream)
            .await
            .expect("version")
            .expect("exists");
        let stored = store.read_stream(stream, 1, 100).await.expect("read");
        assert_eq!(
            stored.len() as u64,
            version,
            "no event of the loser was kept"
        );
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn concurrent_duplicates_write_once_and_share_the_outcome(pool: PgPool) {
    let store = store(pool.clone()).await;
    for round in 0..20 {
        let command = Uuid::now_v7();
        let stream = Uuid::now_v7();
        // Half the rounds send the duplicate to another stream: the command
        // id alone decides.
        let other = if round % 2 == 0 {
            stream
        } else {
            Uuid::now_v7()
        };
        let a = with_command(request(stream, ExpectedVersion::Any, 3), command);
        let b = with_command(request(other, ExpectedVersion::Any, 3), command);
        let (ra, rb) = tokio::join!(store.append(&a), store.append(&b));
        let (ra, rb) = (ra.expect("a"), rb.expect("b"));
        assert_eq!(
            ra.replayed as u8 + rb.replayed as u8,
            1,
            "exactly one is the original"
        );
        assert_eq!(ra.position, rb.position);
        assert_eq!(
            (ra.first_version, ra.version),
            (rb.first_version, rb.version)
        );
        assert_eq!(events_in(&pool, &[stream, other]).await, 3, "round {round}");
        let streams: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT stream_id) FROM events WHERE stream_id = ANY($1)",
        )
        .bind(vec![stream, other])
        .fetch_one(&pool)
        .await
        .expect("count");
        assert_eq!(streams, 1, "the loser's partial append was undone");
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn a_repeated_command_returns_the_first_outcome_later_too(pool: PgPool) {
    let store = store(pool.clone()).await;
    let command = Uuid::now_v7();
    let stream = Uuid::now_v7();
    let first = appended(
        &store,
        with_command(request(stream, ExpectedVersion::NoStream, 2), command),
    )
    .await;
    appended(&store, request(stream, ExpectedVersion::Any, 1)).await;
    // Same command again, even with an expected version that would now conflict.
    let again = appended(
        &store,
        with_command(request(stream, ExpectedVersion::NoStream, 2), command),
    )
    .await;
    assert!(again.replayed && !first.replayed);
    assert_eq!(
        (again.first_version, again.version, again.position),
        (1, 2, first.position)
    );
    assert_eq!(event_count(&pool).await, 3);
}

#[sqlx::test(migrations = "../migrations")]
async fn batch_applies_each_request_on_its_own(pool: PgPool) {
    let store = store(pool.clone()).await;
    let s1 = Uuid::now_v7();
    let s2 = Uuid::now_v7();
    appended(&store, request(s2, ExpectedVersion::NoStream, 1)).await;
    let outcomes = store
        .append_batch(&[
            request(s1, ExpectedVersion::NoStream, 2),
            request(s2, ExpectedVersion::Exact(7), 1), // refused
            request(s1, ExpectedVersion::Exact(2), 1), // sees the first request
        ])
        .await;
    assert_eq!(outcomes[0].as_ref().expect("first").version, 2);
    assert!(matches!(outcomes[1], Err(AppendError::Conflict { .. })));
    assert_eq!(outcomes[2].as_ref().expect("third").version, 3);
    assert_eq!(event_count(&pool).await, 4);
}

#[sqlx::test(migrations = "../migrations")]
async fn checkpoint_and_writes_commit_or_roll_back_together(pool: PgPool) {
    let store = store(pool.clone()).await;
    let position = Position {
        generation: 1,
        tx_id: 42,
        seq: 7,
    };

    let mut tx = begun_with_one(&store, Uuid::now_v7()).await;
    checkpoint::save(tx.conn(), "rolled-back", position)
        .await
        .expect("save");
    sqlx::query("CREATE TEMP TABLE inline_projection (x int)")
        .execute(tx.conn())
        .await
        .expect("own sql");
    drop(tx);
    assert_eq!(event_count(&pool).await, 0);
    assert_eq!(
        checkpoint::load(&pool, "rolled-back").await.expect("load"),
        None
    );

    let mut tx = begun_with_one(&store, Uuid::now_v7()).await;
    checkpoint::save(tx.conn(), "kept", position)
        .await
        .expect("save");
    tx.commit().await.expect("commit");
    assert_eq!(event_count(&pool).await, 1);
    assert_eq!(
        checkpoint::load(&pool, "kept").await.expect("load"),
        Some(position)
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn an_older_transaction_cannot_append_behind_a_newer_one(pool: PgPool) {
    let store = store(pool.clone()).await;
    let first = Uuid::now_v7();
    let contested = Uuid::now_v7();
    // The old transaction takes its id with its first append...
    let mut old = begun_with_one(&store, first).await;
    // ...a newer one commits to the contested stream...
    appended(&store, request(contested, ExpectedVersion::Any, 1)).await;
    // ...so the old one may not append after it: its events would sort first.
    let err = old
        .append(&request(contested, ExpectedVersion::Any, 1))
        .await
        .expect_err("stale");
    assert!(
        matches!(err, AppendError::StaleTransaction { .. }),
        "{err:?}"
    );
    old.commit()
        .await
        .expect("the refusal left the transaction usable");

    // A batch locks its streams before it takes an id, so it is never stale.
    let outcomes = store
        .append_batch(&[
            request(first, ExpectedVersion::Any, 1),
            request(contested, ExpectedVersion::Exact(1), 1),
        ])
        .await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    let events = crate::read_all_when_visible(&store, Position::START, 4).await;
    let contested_versions: Vec<u64> = events
        .iter()
        .filter(|e| e.stream_id == contested)
        .map(|e| e.version)
        .collect();
    assert_eq!(contested_versions, vec![1, 2]);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_batch_answers_repeated_commands_with_the_first_outcome(pool: PgPool) {
    let store = store(pool.clone()).await;
    let (s1, s2, s3) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let (x, y) = (Uuid::now_v7(), Uuid::now_v7());
    let earlier = appended(
        &store,
        with_command(request(s3, ExpectedVersion::NoStream, 1), y),
    )
    .await;

    let outcomes = store
        .append_batch(&[
            with_command(request(s1, ExpectedVersion::NoStream, 2), x),
            with_command(request(s2, ExpectedVersion::NoStream, 2), x), // same command, other stream
            request(s1, ExpectedVersion::Exact(2), 1),
            with_command(request(s3, ExpectedVersion::Exact(9), 1), y), // repeat of an older command
        ])
        .await;
    let first = outcomes[0].as_ref().expect("first");
    let repeat = outcomes[1].as_ref().expect("repeat");
    assert!(!first.replayed && repeat.replayed);
    assert_eq!(
        (repeat.stream_id, repeat.version, repeat.position),
        (s1, 2, first.position)
    );
    assert_eq!(outcomes[2].as_ref().expect("third").version, 3);
    let older = outcomes[3].as_ref().expect("older");
    assert!(older.replayed);
    assert_eq!(older.position, earlier.position);
    assert_eq!(event_count(&pool).await, 4, "1 earlier + 2 + 1");
    assert_eq!(store.stream_version(s2).await.expect("version"), None);
}

#[sqlx::test(migrations = "../migrations")]
async fn many_concurrent_creators_of_one_stream_one_wins(pool: PgPool) {
    let store = store(pool.clone()).await;
    let stream = Uuid::now_v7();
    let attempts = (0..40).map(|_| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .append(&request(stream, ExpectedVersion::NoStream, 2))
                .await
        })
    });
    let mut won = 0;
    for attempt in attempts {
        match attempt.await.expect("task") {
            Ok(_) => won += 1,
            Err(AppendError::Conflict {
                actual: Some(2), ..
            }) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(event_count(&pool).await, 2);
}

/// A batch naming each stream and command once is decided as a set (see
/// migration 0006): every outcome must be what one-by-one appends give.
#[sqlx::test(migrations = "../migrations")]
async fn a_batch_of_distinct_streams_gets_each_outcome_and_keeps_the_order(pool: PgPool) {
    let store = store(pool.clone()).await;
    let [s1, s2, s4, s5, s6] = [(); 5].map(|()| Uuid::now_v7());
    let [a, b, y] = [(); 3].map(|()| Uuid::now_v7());
    let older = appended(
        &store,
        with_command(request(s2, ExpectedVersion::NoStream, 1), y),
    )
    .await;
    appended(&store, request(s4, ExpectedVersion::NoStream, 2)).await;

    let outcomes = store
        .append_batch(&[
            with_command(request(s1, ExpectedVersion::NoStream, 3), a),
            request(s2, ExpectedVersion::Exact(9), 1),
            with_command(request(s4, ExpectedVersion::Exact(2), 1), b),
            with_command(request(s5, ExpectedVersion::NoStream, 1), y),
            request(s6, ExpectedVersion::Any, 2),
        ])
        .await;

    let new = outcomes[0].as_ref().expect("new stream");
    assert_eq!(
        (new.stream_id, new.first_version, new.version, new.replayed),
        (s1, 1, 3, false)
    );
    assert!(
        matches!(
            outcomes[1],
            Err(AppendError::Conflict {
                actual: Some(1),
                ..
            })
        ),
        "{:?}",
        outcomes[1]
    );
    let next = outcomes[2].as_ref().expect("existing stream");
    assert_eq!((next.first_version, next.version), (3, 3));
    let repeat = outcomes[3].as_ref().expect("repeat of an older command");
    assert!(repeat.replayed);
    assert_eq!(
        (
            repeat.stream_id,
            repeat.first_version,
            repeat.version,
            repeat.position
        ),
        (s2, 1, 1, older.position)
    );
    let any = outcomes[4].as_ref().expect("any version");
    assert_eq!((any.first_version, any.version), (1, 2));
    assert!(new.position < next.position && next.position < any.position);
    assert_eq!(store.stream_version(s5).await.expect("version"), None);

    // The global order is the batch's order, each stream's versions in turn,
    // and each append's metadata is its own.
    let events = crate::read_all_when_visible(&store, older.position, 8).await;
    let order: Vec<(Uuid, u64)> = events.iter().map(|e| (e.stream_id, e.version)).collect();
    assert_eq!(
        order,
        vec![
            (s4, 1),
            (s4, 2),
            (s1, 1),
            (s1, 2),
            (s1, 3),
            (s4, 3),
            (s6, 1),
            (s6, 2)
        ]
    );
    assert_eq!(events.last().map(|e| e.position), Some(any.position));
    assert_eq!(events[2].metadata.command_id, Some(a));
    assert_eq!(events[5].metadata.command_id, Some(b));
    assert_eq!(events[6].metadata.command_id, None);
    assert_eq!(event_count(&pool).await, 1 + 2 + 3 + 1 + 2);
}

/// The set append is one statement, so its snapshot is older than its
/// streams' locks: a writer that commits to one of them while it waits for
/// the lock makes its insert clash on the version. It must then run again
/// and append after that writer, not fail and not renumber anything.
#[sqlx::test(migrations = "../migrations")]
async fn a_set_append_that_loses_the_race_for_a_stream_runs_again(pool: PgPool) {
    let store = store(pool.clone()).await;
    let (raced, other) = (Uuid::now_v7(), Uuid::now_v7());
    appended(&store, request(raced, ExpectedVersion::NoStream, 1)).await;
    // A writer that locks the stream first (as eventstore_append does)...
    let mut writer = store.begin().await.expect("begin");
    writer
        .append(&request(raced, ExpectedVersion::Exact(1), 1))
        .await
        .expect("writer's append");
    // ...holds it while a batch for it and another stream starts.
    let batch = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .append_batch(&[
                    request(other, ExpectedVersion::NoStream, 1),
                    request(raced, ExpectedVersion::Any, 2),
                ])
                .await
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
              WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = current_database()",
        )
        .fetch_one(&pool)
        .await
        .expect("locks");
        if waiting > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the batch never waited for the lock"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    writer.commit().await.expect("writer commits");

    let outcomes = batch.await.expect("task");
    let created = outcomes[0].as_ref().expect("other stream");
    assert_eq!((created.first_version, created.version), (1, 1));
    let after = outcomes[1].as_ref().expect("raced stream");
    assert_eq!((after.first_version, after.version), (3, 4));
    let versions: Vec<u64> = store
        .read_stream(raced, 1, 100)
        .await
        .expect("read")
        .iter()
        .map(|e| e.version)
        .collect();
    assert_eq!(versions, vec![1, 2, 3, 4]);
    assert_eq!(event_count(&pool).await, 5);
}

#[sqlx::test(migrations = "../migrations")]
async fn large_payloads_are_stored_with_lz4_and_read_back_whole(pool: PgPool) {
    let store = store(pool.clone()).await;
    let stream = Uuid::now_v7();
    let text = "a message long enough to be compressed. ".repeat(200);
    let payload = rmp_serde::to_vec_named(&serde_json::json!({ "text": text })).expect("encode");
    let mut large = request(stream, ExpectedVersion::NoStream, 0);
    large.events.push(eventstore::NewEvent::new(
        "thing_happened",
        1,
        payload.clone(),
    ));
    appended(&store, large).await;

    let compression: Option<String> =
        sqlx::query_scalar("SELECT pg_column_compression(payload) FROM events")
            .fetch_one(&pool)
            .await
            .expect("compression");
    assert_eq!(compression.as_deref(), Some("lz4"));
    let read = store.read_stream(stream, 1, 10).await.expect("read");
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].payload, payload);
}
