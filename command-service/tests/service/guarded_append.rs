//! `command_append_set` (migration 0007) on a batch in which some requests
//! fail their check: those write nothing, and the others are appended as
//! if alone, each with its own events, answered under its own index.

use sqlx::PgPool;
use uuid::Uuid;

#[sqlx::test(migrations = "../migrations")]
async fn held_back_requests_leave_the_rest_of_their_batch_intact(pool: PgPool) {
    let user = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO auth_users (user_id, email, role, password_hash)
         VALUES ($1, 'a@example.com', 'operator', 'x')",
    )
    .bind(user)
    .execute(&pool)
    .await
    .expect("user");
    for (hash, ended) in [("live", false), ("ended", true)] {
        sqlx::query(
            "INSERT INTO auth_sessions (token_hash, session_id, user_id, expires_at, last_seen, ended)
             VALUES ($1, $2, $3, now() + interval '1 hour', now(), $4)",
        )
        .bind(hash)
        .bind(Uuid::now_v7())
        .bind(user)
        .bind(ended)
        .execute(&pool)
        .await
        .expect("session");
    }
    let rejected = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO command_results (command_id, command_type, status, result)
         VALUES ($1, 'conversation.append_message', 'rejected', '{}')",
    )
    .bind(rejected)
    .execute(&pool)
    .await
    .expect("stored rejection");

    // Five requests: ok (2 events), ended session, ok (1 event), a stored
    // rejection, ok (3 events).
    let streams: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
    let commands = vec![
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
        rejected,
        Uuid::now_v7(),
    ];
    let tokens = ["live", "ended", "live", "live", "live"];
    let counts = [2, 1, 1, 2, 3];
    let events: i32 = counts.iter().sum();
    let event_ids: Vec<Uuid> = (0..events).map(|_| Uuid::now_v7()).collect();
    let event_types: Vec<String> = (0..events).map(|i| format!("e{i}")).collect();
    let rows: Vec<(i32, String, Option<i64>)> = sqlx::query_as(
        "SELECT idx, status, last_version FROM command_append_set(
             now(), now() - interval '30 minutes', $1, $2, $3, true,
             $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) ORDER BY idx",
    )
    .bind(&tokens[..])
    .bind(vec![user; 5])
    .bind(vec!["operator"; 5])
    .bind(&streams)
    .bind(vec!["conversation"; 5])
    .bind(vec![0i64; 5])
    .bind(&commands)
    .bind(&counts[..])
    .bind(vec!["{}"; 5])
    .bind(&event_ids)
    .bind(&event_types)
    .bind(vec![1i32; events as usize])
    .bind(vec![vec![0u8]; events as usize])
    .fetch_all(&pool)
    .await
    .expect("append");
    assert_eq!(
        rows,
        vec![
            (1, "ok".to_string(), Some(2)),
            (2, "unverified".to_string(), None),
            (3, "ok".to_string(), Some(1)),
            (4, "decided".to_string(), None),
            (5, "ok".to_string(), Some(3)),
        ]
    );

    // Each kept request got exactly its own events, in order.
    let stored: Vec<(Uuid, i64, Uuid, String, Option<Uuid>)> = sqlx::query_as(
        "SELECT stream_id, version, event_id, event_type, command_id FROM events ORDER BY seq",
    )
    .fetch_all(&pool)
    .await
    .expect("events");
    let expected: Vec<(Uuid, i64, Uuid, String, Option<Uuid>)> = [(0usize, 0usize), (2, 3), (4, 6)]
        .into_iter()
        .flat_map(|(request, first)| {
            (0..counts[request] as usize).map({
                let streams = &streams;
                let commands = &commands;
                let event_ids = &event_ids;
                let event_types = &event_types;
                move |k| {
                    (
                        streams[request],
                        k as i64 + 1,
                        event_ids[first + k],
                        event_types[first + k].clone(),
                        (k == 0).then_some(commands[request]),
                    )
                }
            })
        })
        .collect();
    assert_eq!(stored, expected);
}
