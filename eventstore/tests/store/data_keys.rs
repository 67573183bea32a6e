//! Data keys against a real database: sealed values open for every reader
//! with the master key, erase with the forget, refuse tampering, and
//! survive a master-key rotation that rewrites no event.

use eventstore::data_keys::{DataKeys, MasterKeys};
use eventstore::{
    AppendRequest, EventStore, ExpectedVersion, Metadata, NewEvent, StoreError, StoreOptions,
};
use sqlx::PgPool;
use uuid::Uuid;

const OLD: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
const NEW: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

async fn store_with(pool: &PgPool, keys: &str) -> EventStore {
    EventStore::connect(
        pool.clone(),
        StoreOptions {
            master_keys: Some(MasterKeys::parse(keys).expect("keys")),
            ..StoreOptions::default()
        },
    )
    .await
    .expect("store")
}

/// A payload `{"text": <sealed "text">, "n": 1}` as the command service writes it.
fn payload(sealed: Option<Vec<u8>>) -> Vec<u8> {
    let text = sealed.map_or(rmpv::Value::Nil, rmpv::Value::Binary);
    let value = rmpv::Value::Map(vec![
        (rmpv::Value::from("text"), text),
        (rmpv::Value::from("n"), rmpv::Value::from(1)),
    ]);
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &value).expect("encode");
    out
}

fn text_of(payload: &[u8]) -> rmpv::Value {
    let value = rmpv::decode::read_value(&mut &payload[..]).expect("msgpack");
    value.as_map().expect("map")[0].1.clone()
}

async fn append(store: &EventStore, stream: Uuid, event_type: &str, payload: Vec<u8>) {
    store
        .append(&AppendRequest {
            stream_id: stream,
            stream_type: "user".into(),
            expected: ExpectedVersion::Any,
            events: vec![NewEvent::new(event_type, 1, payload)],
            metadata: Metadata::default(),
        })
        .await
        .expect("append");
}

#[sqlx::test(migrations = "../migrations")]
async fn sealed_values_open_for_readers_and_erase_with_the_forget(pool: PgPool) {
    let store = store_with(&pool, OLD).await;
    let keys = store.data_keys().expect("keys");
    let (ada, bob) = (Uuid::now_v7(), Uuid::now_v7());
    for (who, text) in [(ada, "ada lives here"), (bob, "bob lives there")] {
        let sealer = keys.sealer(who).await.expect("sealer");
        let plain = rmp_serde::to_vec(text).expect("encode");
        append(&store, who, "user_noted", payload(sealer.seal(&plain))).await;
    }
    // Another process (no cached keys) reads both.
    let reader = store_with(&pool, OLD).await;
    for (who, text) in [(ada, "ada lives here"), (bob, "bob lives there")] {
        let events = reader.read_stream(who, 1, 10).await.expect("read");
        assert_eq!(text_of(&events[0].payload).as_str(), Some(text));
    }
    // Without the master key the reader refuses rather than hand out ciphertext.
    let keyless = EventStore::connect(pool.clone(), StoreOptions::default())
        .await
        .expect("store");
    assert!(matches!(
        keyless.read_stream(ada, 1, 10).await,
        Err(eventstore::ReadError::Store(StoreError::Keys(_)))
    ));

    // The forget destroys the key in its own transaction.
    append(&store, ada, "user_forgotten", payload(None)).await;
    let wrapped: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT wrapped FROM data_keys WHERE subject = $1")
            .bind(ada)
            .fetch_one(&pool)
            .await
            .expect("row");
    assert!(wrapped.is_none());
    let fresh = store_with(&pool, OLD).await;
    let events = fresh.read_stream(ada, 1, 10).await.expect("read");
    assert_eq!(
        text_of(&events[0].payload).as_str(),
        Some(eventstore::data_keys::ERASED),
        "erased"
    );
    let events = fresh.read_stream(bob, 1, 10).await.expect("read");
    assert_eq!(
        text_of(&events[0].payload).as_str(),
        Some("bob lives there")
    );
    // A reader that has read the forget stops using its cached copy. (The
    // log may hold the forget back while another transaction of the
    // cluster is open: read until it is there.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let batch = reader
            .read_all_after(eventstore::Position::START, 100)
            .await
            .expect("read");
        if batch
            .events
            .iter()
            .any(|e| e.event_type == "user_forgotten")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the forget never became readable"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let events = reader
        .read_all_after(eventstore::Position::START, 100)
        .await
        .expect("read");
    let first = events
        .events
        .iter()
        .find(|e| e.stream_id == ada)
        .expect("ada's");
    assert_eq!(
        text_of(&first.payload).as_str(),
        Some(eventstore::data_keys::ERASED)
    );
    // No key is made again for a forgotten subject: new values are dropped.
    let again = fresh
        .data_keys()
        .expect("keys")
        .sealer(ada)
        .await
        .expect("sealer");
    assert!(again.seal(b"anything").is_none());
}

#[sqlx::test(migrations = "../migrations")]
async fn an_altered_sealed_value_is_refused(pool: PgPool) {
    let store = store_with(&pool, OLD).await;
    let ada = Uuid::now_v7();
    let sealer = store
        .data_keys()
        .expect("keys")
        .sealer(ada)
        .await
        .expect("sealer");
    let mut sealed = sealer
        .seal(&rmp_serde::to_vec("ada").expect("encode"))
        .expect("sealed");
    let last = sealed.len() - 1;
    sealed[last] ^= 1;
    append(&store, ada, "user_noted", payload(Some(sealed))).await;
    let reader = store_with(&pool, OLD).await;
    assert!(matches!(
        reader.read_stream(ada, 1, 10).await,
        Err(eventstore::ReadError::Store(StoreError::Corrupt(_)))
    ));
}

#[sqlx::test(migrations = "../migrations")]
async fn rotation_rewraps_every_key_without_rewriting_events(pool: PgPool) {
    let store = store_with(&pool, OLD).await;
    let keys = store.data_keys().expect("keys");
    let ada = Uuid::now_v7();
    let sealer = keys.sealer(ada).await.expect("sealer");
    append(
        &store,
        ada,
        "user_noted",
        payload(sealer.seal(&rmp_serde::to_vec("ada's text").expect("encode"))),
    )
    .await;
    sqlx::query(
        "INSERT INTO auth_users (user_id, email, role, password_hash, mfa_secret)
         VALUES ($1, 'ada@example.test', 'viewer', 'x', $2)",
    )
    .bind(ada)
    .bind(keys.seal_secret("JBSWY3DPEHPK3PXP"))
    .execute(&pool)
    .await
    .expect("auth row");
    let payload_before: Vec<u8> = sqlx::query_scalar("SELECT payload FROM events")
        .fetch_one(&pool)
        .await
        .expect("payload");

    let both = DataKeys::new(
        pool.clone(),
        MasterKeys::parse(&format!("{NEW} {OLD}")).expect("keys"),
    );
    let done = both.rotate(|_| {}).await.expect("rotate");
    assert_eq!((done.data_keys, done.secrets), (1, 1));
    assert_eq!(
        both.rotate(|_| {}).await.expect("again"),
        Default::default()
    );
    let payload_after: Vec<u8> = sqlx::query_scalar("SELECT payload FROM events")
        .fetch_one(&pool)
        .await
        .expect("payload");
    assert_eq!(payload_before, payload_after, "events are not rewritten");

    // The old key can go: everything opens with the new one alone.
    let new_only = store_with(&pool, NEW).await;
    let events = new_only.read_stream(ada, 1, 10).await.expect("read");
    assert_eq!(text_of(&events[0].payload).as_str(), Some("ada's text"));
    let kept: String = sqlx::query_scalar("SELECT mfa_secret FROM auth_users")
        .fetch_one(&pool)
        .await
        .expect("secret");
    assert!(!kept.contains("JBSWY3DPEHPK3PXP"));
    let new_keys = new_only.data_keys().expect("keys");
    assert_eq!(
        new_keys.open_secret(&kept).expect("opens"),
        "JBSWY3DPEHPK3PXP"
    );
    // A reader with only the old key is told which key it lacks.
    let old_only = store_with(&pool, OLD).await;
    match old_only.read_stream(ada, 1, 10).await {
        Err(eventstore::ReadError::Store(StoreError::Keys(message))) => {
            assert!(
                message.contains(new_keys.master().current_id()),
                "{message}"
            );
        }
        other => panic!("expected a missing-key error, got {other:?}"),
    }
}

/// A person's text that merely looks sealed (the magic bytes inside a
/// string, a client claim starting with `sealed:`) is data: readers with
/// and without a master key hand it out as written and do not stop.
#[sqlx::test(migrations = "../migrations")]
async fn texts_that_look_sealed_are_data_for_every_reader(pool: PgPool) {
    let keyless = EventStore::connect(pool.clone(), StoreOptions::default())
        .await
        .expect("store");
    let keyed = store_with(&pool, OLD).await;
    let value = rmpv::Value::Map(vec![(
        rmpv::Value::from("text"),
        rmpv::Value::from("CDS1 is what the sealed header starts with"),
    )]);
    let mut looks_sealed = Vec::new();
    rmpv::encode::write_value(&mut looks_sealed, &value).expect("encode");
    let stream = Uuid::now_v7();
    keyless
        .append(&AppendRequest {
            stream_id: stream,
            stream_type: "user".into(),
            expected: ExpectedVersion::Any,
            events: vec![NewEvent::new("user_renamed", 1, looks_sealed.clone())],
            metadata: Metadata {
                claimed_user_agent: Some("sealed:not-a-sealed-text".into()),
                ..Metadata::default()
            },
        })
        .await
        .expect("append");
    for store in [&keyless, &keyed] {
        let events = store.read_stream(stream, 1, 10).await.expect("read");
        assert_eq!(events[0].payload, looks_sealed);
        assert_eq!(
            events[0].metadata.claimed_user_agent.as_deref(),
            Some("sealed:not-a-sealed-text")
        );
        // The log read hands out events once no older transaction of the
        // cluster is open (other tests run beside this one): read until
        // the event is there; an error (a refusal) fails at once.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let all = store
                .read_all_after(eventstore::Position::START, 10)
                .await
                .expect("read all");
            if let Some(event) = all.events.first() {
                assert_eq!(event.payload, looks_sealed);
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the event never became readable"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}
