//! A generated history over every aggregate, projected live while it is
//! written, equals a fresh rebuild.

use sqlx::PgPool;
use testkit::history::History;

use crate::support::{self, count};

#[sqlx::test(migrator = "infra::postgres::MIGRATOR")]
async fn live_projection_equals_a_fresh_rebuild(pool: PgPool) {
    let store = support::store(pool.clone()).await;
    let mut history = History::new(7);
    history.forget_percent = 60;
    let running = support::spawn(&store, support::config()).await;
    // Written concurrently by several writers while the projector follows.
    let mut writers = Vec::new();
    for seed in 0..4u64 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let mut history = History::new(100 + seed);
            history.forget_percent = 60;
            support::append(&store, &mut history, 600).await
        }));
    }
    let mut events = support::append(&store, &mut history, 600).await;
    for writer in writers {
        events += writer.await.expect("writer");
    }
    support::caught_up(&store).await;
    running.stop().await;

    let stored = count(&pool, "SELECT count(*) FROM events").await;
    assert_eq!(stored as u64, events);
    assert!(events > 3000, "thousands of events: {events}");
    // Every aggregate left rows behind.
    for table in [
        "users",
        "sessions",
        "conversations",
        "messages",
        "workflows",
        "workflow_executions",
        "step_executions",
        "incidents",
        "runbooks",
    ] {
        let rows = count(&pool, &format!("SELECT count(*) FROM read_model.{table}")).await;
        assert!(rows > 0, "{table} is empty");
    }
    // Counters kept from the events' facts match the rows they count.
    let mismatched = count(
        &pool,
        "SELECT count(*) FROM read_model.conversations c
          WHERE c.message_count <> (SELECT count(*) FROM read_model.messages m WHERE m.conversation_id = c.id)
             OR c.total_tokens <> (SELECT coalesce(sum(tokens_in + tokens_out), 0) FROM read_model.messages m WHERE m.conversation_id = c.id)
             OR c.total_cost_usd <> (SELECT coalesce(sum(cost_usd), 0) FROM read_model.messages m WHERE m.conversation_id = c.id)",
    )
    .await;
    assert_eq!(
        mismatched, 0,
        "conversation totals disagree with their messages"
    );
    let messages = count(
        &pool,
        "SELECT count(*) FROM events WHERE event_type = 'message_appended'",
    )
    .await;
    assert_eq!(
        count(&pool, "SELECT count(*) FROM read_model.messages").await,
        messages
    );

    // Forgotten users' personal data is erased everywhere it was projected.
    let forgotten = count(
        &pool,
        "SELECT count(*) FROM read_model.users WHERE forgotten_at IS NOT NULL",
    )
    .await;
    assert!(forgotten > 0, "the history forgets some users");
    let leaked = count(
        &pool,
        "SELECT (SELECT count(*) FROM read_model.users WHERE forgotten_at IS NOT NULL
                   AND (email IS NOT NULL OR display_name IS NOT NULL OR last_login_ip IS NOT NULL))
              + (SELECT count(*) FROM read_model.messages m JOIN read_model.users u ON u.id = m.user_id
                  WHERE u.forgotten_at IS NOT NULL AND m.content IS NOT NULL)
              + (SELECT count(*) FROM read_model.conversations c JOIN read_model.users u ON u.id = c.user_id
                  WHERE u.forgotten_at IS NOT NULL AND c.title IS NOT NULL)
              + (SELECT count(*) FROM read_model.sessions s JOIN read_model.users u ON u.id = s.user_id
                  WHERE u.forgotten_at IS NOT NULL AND (s.ip_address IS NOT NULL OR s.user_agent IS NOT NULL))",
    )
    .await;
    assert_eq!(
        leaked, 0,
        "personal data of forgotten users is still projected"
    );

    support::assert_verified(&store).await;
}

/// Verify notices a read model that was changed by hand.
#[sqlx::test(migrator = "infra::postgres::MIGRATOR")]
async fn verify_reports_a_tampered_table(pool: PgPool) {
    let store = support::store(pool.clone()).await;
    let running = support::spawn(&store, support::config()).await;
    support::append(&store, &mut History::new(3), 300).await;
    support::caught_up(&store).await;
    running.stop().await;
    sqlx::query("UPDATE read_model.incidents SET note_count = note_count + 1 WHERE id = (SELECT id FROM read_model.incidents ORDER BY id LIMIT 1)")
        .execute(&pool)
        .await
        .expect("tamper");
    let comparisons = projector::rebuild::verify(&store, &projector::Kind::ALL, 1000, &|_| {})
        .await
        .expect("verify");
    let differing: Vec<_> = comparisons
        .iter()
        .filter(|c| !c.equal())
        .map(|c| c.table)
        .collect();
    assert_eq!(differing, vec!["incidents"]);
}

/// A projector started afresh (nothing remembered) continues where the
/// last one stopped, including events about rows it never saw created.
#[sqlx::test(migrator = "infra::postgres::MIGRATOR")]
async fn a_restarted_projector_continues_from_its_checkpoint(pool: PgPool) {
    let store = support::store(pool.clone()).await;
    let mut history = History::new(31);
    let running = support::spawn(&store, support::config()).await;
    support::append(&store, &mut history, 500).await;
    support::caught_up(&store).await;
    running.stop().await;
    // The new projector's first batch is a rating of a message it never saw.
    let (message, conversation, version): (uuid::Uuid, uuid::Uuid, i64) = sqlx::query_as(
        "SELECT m.id, m.conversation_id, (SELECT max(version) FROM events WHERE stream_id = m.conversation_id)
           FROM read_model.messages m ORDER BY m.id LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .expect("a message");
    let rated = domain::conversation::Event::MessageRated(domain::conversation::MessageRated {
        message_id: domain::ids::MessageId(message),
        rating: 4,
        previous_rating: None,
        comment: Some(domain::Personal::new("useful".into())),
        rated_at: chrono::Utc::now(),
    });
    store
        .append(&eventstore::AppendRequest {
            stream_id: conversation,
            stream_type: "conversation".into(),
            expected: eventstore::ExpectedVersion::Exact(version.unsigned_abs()),
            events: vec![eventstore::NewEvent::new(
                rated.event_type(),
                rated.schema_version(),
                rated.encode().expect("encode"),
            )],
            metadata: eventstore::Metadata::default(),
        })
        .await
        .expect("append rating");
    let running = support::spawn(&store, support::config()).await;
    support::caught_up(&store).await;
    running.stop().await;
    let errors = count(&pool, "SELECT count(*) FROM projection_errors").await;
    assert_eq!(errors, 0);
    let rating: Option<i16> =
        sqlx::query_scalar("SELECT rating FROM read_model.messages WHERE id = $1")
            .bind(message)
            .fetch_one(&pool)
            .await
            .expect("rating");
    assert_eq!(rating, Some(4));
    support::assert_verified(&store).await;
}
