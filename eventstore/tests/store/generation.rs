use eventstore::{ExpectedVersion, Position};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{read_all_when_visible, request, store};

/// The in-database half of the restore case (the other half, a real
/// `pg_dump` into a second cluster, is `tests/restore.sh`): stored events
/// whose transaction ids are ahead of the cluster's counter, as after a
/// restore into a younger cluster.
#[sqlx::test(migrations = "../migrations")]
async fn events_from_a_cluster_ahead_of_this_one_start_a_new_generation(pool: PgPool) {
    let old = store(pool.clone()).await;
    let stream = Uuid::now_v7();
    old.append(&request(stream, ExpectedVersion::NoStream, 3))
        .await
        .expect("append");
    sqlx::query("UPDATE events SET tx_id = tx_id + 1000000000")
        .execute(&pool)
        .await
        .expect("age");
    let checkpoint: Position = {
        let (generation, tx_id, seq): (i32, i64, i64) = sqlx::query_as(
            "SELECT generation, tx_id, seq FROM events ORDER BY version DESC LIMIT 1",
        )
        .fetch_one(&pool)
        .await
        .expect("last");
        Position {
            generation,
            tx_id,
            seq,
        }
    };

    let restored = store(pool.clone()).await;
    assert_eq!(restored.generation().await.expect("generation"), 2);
    let again = store(pool.clone()).await;
    assert_eq!(
        again.generation().await.expect("generation"),
        2,
        "only one new generation"
    );

    let new = restored
        .append(&request(stream, ExpectedVersion::Exact(3), 2))
        .await
        .expect("append");
    assert_eq!(new.position.generation, 2);
    assert!(
        new.position > checkpoint,
        "new events sort after the old checkpoint"
    );

    let after_checkpoint = read_all_when_visible(&restored, checkpoint, 2).await;
    assert_eq!(
        after_checkpoint
            .iter()
            .map(|e| e.version)
            .collect::<Vec<_>>(),
        vec![4, 5]
    );
    let everything = read_all_when_visible(&restored, Position::START, 5).await;
    assert_eq!(
        everything.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
}
