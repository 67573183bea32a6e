use eventstore::{ExpectedVersion, Metadata, Position, Snapshot};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{appended, read_all_when_visible, request, store};

#[sqlx::test(migrations = "../migrations")]
async fn read_stream_returns_what_was_appended(pool: PgPool) {
    let store = store(pool).await;
    let stream = Uuid::now_v7();
    let metadata = Metadata {
        command_id: Some(Uuid::now_v7()),
        correlation_id: Some(Uuid::now_v7()),
        causation_id: Some(Uuid::now_v7()),
        actor: Some("user-1".into()),
        ip: Some("192.0.2.7".into()),
        user_agent: None,
        claimed_ip: Some("198.51.100.1".into()),
        claimed_user_agent: None,
    };
    let mut first = request(stream, ExpectedVersion::NoStream, 3);
    first.metadata = metadata.clone();
    store.append(&first).await.expect("append");
    appended(&store, request(stream, ExpectedVersion::Exact(3), 2)).await;

    let all = store.read_stream(stream, 1, 100).await.expect("read");
    assert_eq!(
        all.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(all[0].metadata, metadata);
    assert_eq!(all[0].event_id, first.events[0].event_id);
    assert_eq!(all[2].payload, first.events[2].payload);
    assert_eq!(
        (
            all[0].event_type.as_str(),
            all[0].schema_version,
            all[0].stream_type.as_str()
        ),
        ("thing_happened", 1, "test")
    );

    let tail = store.read_stream(stream, 4, 100).await.expect("read tail");
    assert_eq!(
        tail.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![4, 5]
    );
    let limited = store.read_stream(stream, 2, 2).await.expect("read limited");
    assert_eq!(
        limited.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![2, 3]
    );
    assert!(store
        .read_stream(stream, 6, 10)
        .await
        .expect("past the end")
        .is_empty());
}

#[sqlx::test(migrations = "../migrations")]
async fn read_all_is_in_position_order_and_resumes_after_a_position(pool: PgPool) {
    let store = store(pool).await;
    for _ in 0..5 {
        appended(&store, request(Uuid::now_v7(), ExpectedVersion::Any, 3)).await;
    }
    let all = read_all_when_visible(&store, Position::START, 15).await;
    assert_eq!(all.len(), 15);
    let head = store.head_position().await.expect("head");
    assert!(all.windows(2).all(|w| w[0].position < w[1].position));
    assert_eq!(all.last().map(|e| e.position), Some(head));
    let rest = store
        .read_all_after(all[6].position, 100)
        .await
        .expect("read rest");
    assert!(rest.caught_up);
    assert_eq!(rest.events, all[7..].to_vec());
    let page = store
        .read_all_after(Position::START, 4)
        .await
        .expect("page");
    assert!(!page.caught_up && page.events.len() == 4);
}

#[sqlx::test(migrations = "../migrations")]
async fn snapshots_keep_the_newest_version(pool: PgPool) {
    let store = store(pool).await;
    let stream = Uuid::now_v7();
    assert_eq!(store.load_snapshot(stream).await.expect("load"), None);
    let at = |version: u64, state: &[u8]| Snapshot {
        stream_id: stream,
        version,
        schema_version: 1,
        state: state.to_vec(),
    };
    store.save_snapshot(&at(10, b"ten")).await.expect("save");
    store.save_snapshot(&at(20, b"twenty")).await.expect("save");
    store
        .save_snapshot(&at(15, b"stale"))
        .await
        .expect("save older");
    assert_eq!(
        store.load_snapshot(stream).await.expect("load"),
        Some(at(20, b"twenty"))
    );
}
