use eventstore::{AppendError, ExpectedVersion, NewEvent, ReadError};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{event_count, request, store};

#[sqlx::test(migrations = "../migrations")]
async fn bad_appends_get_specific_errors_and_write_nothing(pool: PgPool) {
    let store = store(pool.clone()).await;
    let stream = Uuid::now_v7();

    let err = store
        .append(&request(stream, ExpectedVersion::Any, 0))
        .await
        .expect_err("empty");
    assert!(matches!(err, AppendError::Empty { .. }), "{err:?}");

    let mut big = request(stream, ExpectedVersion::Any, 2);
    big.events[1].payload = vec![0; store.options().max_payload_bytes + 1];
    let err = store.append(&big).await.expect_err("too large");
    assert!(
        matches!(err, AppendError::PayloadTooLarge { index: 1, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("over the limit of 1048576 bytes"),
        "{err}"
    );

    let many = request(
        stream,
        ExpectedVersion::Any,
        store.options().max_events_per_append + 1,
    );
    let err = store.append(&many).await.expect_err("too many");
    assert!(matches!(err, AppendError::TooManyEvents { .. }), "{err:?}");

    let mut untyped = request(stream, ExpectedVersion::Any, 1);
    untyped.events.push(NewEvent::new("", 1, vec![]));
    let err = store.append(&untyped).await.expect_err("no type");
    assert!(matches!(err, AppendError::MissingType { .. }), "{err:?}");

    // The same limits hold inside a caller's transaction, which stays usable.
    let mut tx = store.begin().await.expect("begin");
    let err = tx.append(&big).await.expect_err("too large in tx");
    assert!(matches!(err, AppendError::PayloadTooLarge { .. }));
    tx.append(&request(stream, ExpectedVersion::NoStream, 1))
        .await
        .expect("still usable");
    drop(tx);

    assert_eq!(event_count(&pool).await, 0);
    assert_eq!(store.stream_version(stream).await.expect("version"), None);
}

#[sqlx::test(migrations = "../migrations")]
async fn reading_an_unknown_stream_is_not_found(pool: PgPool) {
    let store = store(pool).await;
    let missing = Uuid::now_v7();
    let err = store
        .read_stream(missing, 1, 10)
        .await
        .expect_err("unknown");
    assert!(
        matches!(err, ReadError::StreamNotFound(id) if id == missing),
        "{err:?}"
    );
    assert_eq!(store.stream_version(missing).await.expect("version"), None);
}
