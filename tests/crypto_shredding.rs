//! Crypto-shredding end to end: a whole `copilot-data up` (relay and Redis
//! on) seals each user's personal data with their own key; after
//! `user.forget` nothing of the forgotten user's personal fields can be
//! read in the raw log, the relay, a fresh export, the read models, the
//! audit log or Redis, also after a full rebuild, while another user's data
//! reads as before; and no key material reaches the logs.

mod common;

use common::system::System;
use eventstore::data_keys::MasterKeys;
use eventstore::{EventStore, StoreOptions};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

const PASSWORD: &str = "correct horse battery";

/// Someone whose texts all carry `marker`, so any trace of them is found.
struct Person {
    id: Uuid,
    marker: String,
    conversation: Uuid,
}

async fn send(env: &System, token: &str, command: &str, aggregate: Uuid, payload: Value) -> Value {
    let aggregate = aggregate.to_string();
    let payload = payload.to_string();
    let (ok, stdout) = env
        .send_when_up(
            &[command, "--aggregate", &aggregate, "--json", &payload],
            token,
        )
        .await;
    assert!(ok, "{command} was not accepted: {stdout}");
    serde_json::from_str(&stdout).expect("the result as JSON")
}

async fn person(env: &System, who: &str) -> Person {
    let marker = format!("{who}mark{}", Uuid::new_v4().simple());
    let id = Uuid::now_v7();
    let email = format!("{marker}@example.test");
    send(
        env,
        &env.bootstrap,
        "user.register",
        id,
        json!({"email": email, "display_name": format!("{marker} name"), "password": PASSWORD, "role": "operator"}),
    )
    .await;
    let session = send(
        env,
        "",
        "session.start",
        Uuid::now_v7(),
        json!({"email": email, "password": PASSWORD, "context": {"note": format!("{marker} context")}}),
    )
    .await;
    let token = session["data"]["token"]
        .as_str()
        .expect("a session token")
        .to_owned();
    let conversation = Uuid::now_v7();
    send(
        env,
        &token,
        "conversation.start",
        conversation,
        json!({"title": format!("{marker} title")}),
    )
    .await;
    send(
        env,
        &token,
        "conversation.append_message",
        conversation,
        json!({"message_id": Uuid::now_v7(), "role": "user", "content": format!("{marker} says where they live")}),
    )
    .await;
    send(
        env,
        &token,
        "user.update_profile",
        id,
        json!({"display_name": format!("{marker} renamed")}),
    )
    .await;
    Person {
        id,
        marker,
        conversation,
    }
}

/// Every table of the database (the log, the command side, the read
/// models, the audit log, keys) with a row that shows `text`, as text or
/// inside any binary column.
async fn tables_showing(pool: &PgPool, text: &str) -> Vec<String> {
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_schema, table_name FROM information_schema.tables
          WHERE table_type = 'BASE TABLE'
            AND table_schema NOT IN ('pg_catalog', 'information_schema')",
    )
    .fetch_all(pool)
    .await
    .expect("tables");
    let mut showing = Vec::new();
    for (schema, table) in tables {
        let binary: Vec<String> = sqlx::query_scalar(
            "SELECT column_name::text FROM information_schema.columns
              WHERE table_schema = $1 AND table_name = $2 AND data_type = 'bytea'",
        )
        .bind(&schema)
        .bind(&table)
        .fetch_all(pool)
        .await
        .expect("columns");
        let mut condition = "strpos(t::text, $1) > 0".to_string();
        for column in binary {
            condition.push_str(&format!(
                " OR position(convert_to($1, 'UTF8') IN t.\"{column}\") > 0"
            ));
        }
        let n: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM \"{schema}\".\"{table}\" t WHERE {condition}"
        ))
        .bind(text)
        .fetch_one(pool)
        .await
        .expect("scan");
        if n > 0 {
            showing.push(format!("{schema}.{table} ({n})"));
        }
    }
    showing
}

/// Every value under the system's Redis prefix, as text.
async fn redis_dump(prefix: &str) -> String {
    let client = redis::Client::open("redis://127.0.0.1:6379").expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis on 127.0.0.1:6379");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .expect("keys");
    let mut dump = String::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("type");
        let mut read = match kind.as_str() {
            "string" => redis::cmd("GET"),
            "hash" => redis::cmd("HGETALL"),
            "list" => redis::cmd("LRANGE"),
            "set" => redis::cmd("SMEMBERS"),
            "zset" => redis::cmd("ZRANGE"),
            "stream" => redis::cmd("XRANGE"),
            _ => continue,
        };
        read.arg(&key);
        match kind.as_str() {
            "list" | "zset" => {
                read.arg(0).arg(-1);
            }
            "stream" => {
                read.arg("-").arg("+");
            }
            _ => {}
        }
        let value: redis::Value = read.query_async(&mut conn).await.expect("value");
        dump.push_str(&format!("{key} = {value:?}\n"));
    }
    dump
}

/// Every message of the system's relay stream, as text.
async fn relay_dump(prefix: &str) -> String {
    let client = async_nats::connect("nats://127.0.0.1:4222")
        .await
        .expect("NATS");
    let js = async_nats::jetstream::new(client);
    let mut stream = js
        .get_stream(projector::relay::stream_name(prefix))
        .await
        .expect("the relay's stream");
    let last = stream.info().await.expect("info").state.last_sequence;
    let mut dump = String::new();
    for seq in 1..=last {
        if let Ok(message) = stream.get_raw_message(seq).await {
            dump.push_str(&String::from_utf8_lossy(&message.payload));
            dump.push('\n');
        }
    }
    let _ = js
        .delete_stream(projector::relay::stream_name(prefix))
        .await;
    dump
}

/// Every SQL projection and the relay have read the whole log.
async fn caught_up(pool: &PgPool) {
    common::wait_for(
        pool,
        "the projections to catch up",
        // relational, audit, relay, redis
        "SELECT count(*) = 4 FROM projection_checkpoints c
           WHERE (c.generation, c.tx_id, c.seq) >= (SELECT generation, tx_id, seq FROM events
                                                     ORDER BY generation DESC, tx_id DESC, seq DESC LIMIT 1)",
    )
    .await;
}

/// A store on `pool` that opens sealed values with the test master key.
async fn keyed_store(pool: &PgPool) -> EventStore {
    EventStore::connect(
        pool.clone(),
        StoreOptions {
            master_keys: Some(MasterKeys::parse(common::TEST_MASTER_KEY).expect("the test key")),
            ..StoreOptions::default()
        },
    )
    .await
    .expect("store")
}

/// The personal texts of `stream`'s events as a reader with the master key
/// decodes them (JSON of the decoded events).
async fn decoded(store: &EventStore, stream: Uuid) -> String {
    let events = store.read_stream(stream, 1, 100).await.expect("the stream");
    let mut text = String::new();
    for event in &events {
        let decoded = domain::any_event::decode(domain::any_event::Stored {
            stream_type: &event.stream_type,
            event_type: &event.event_type,
            schema_version: event.schema_version,
            payload: &event.payload,
        })
        .expect("decodes");
        text.push_str(&decoded.to_json().expect("json").to_string());
        text.push_str(&serde_json::to_string(&event.metadata).expect("metadata"));
    }
    text
}

#[sqlx::test(migrator = "infra::postgres::MIGRATOR")]
async fn a_forgotten_users_personal_data_cannot_be_read_anywhere(pool: PgPool) {
    let dir = std::env::temp_dir().join(format!("shredding-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let log = dir.join("up.log");
    let env = System::start_with(
        &pool,
        &[
            ("COPILOT_PROJECTOR_RELAY", "true"),
            ("COPILOT_PROJECTOR_REDIS", "true"),
            ("COPILOT_LOG", "info"),
        ],
        Some(&log),
    )
    .await;
    let alice = person(&env, "alice").await;
    let bob = person(&env, "bob").await;
    caught_up(&pool).await;
    let store = keyed_store(&pool).await;

    // Sealed from the start: the raw rows never hold a personal text, the
    // services read them through their keys.
    for who in [&alice, &bob] {
        let raw: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events
              WHERE position(convert_to($1, 'UTF8') IN payload) > 0 OR strpos(metadata::text, $1) > 0",
        )
        .bind(&who.marker)
        .fetch_one(&pool)
        .await
        .expect("scan");
        assert_eq!(
            raw, 0,
            "a personal text of {} is in the log in the clear",
            who.marker
        );
        assert!(decoded(&store, who.conversation)
            .await
            .contains(&who.marker));
        assert!(decoded(&store, who.id).await.contains(&who.marker));
    }
    let shown: Vec<String> =
        sqlx::query_scalar("SELECT content FROM read_model.messages WHERE conversation_id = $1")
            .bind(alice.conversation)
            .fetch_all(&pool)
            .await
            .expect("messages");
    assert!(shown.iter().any(|m| m.contains(&alice.marker)), "{shown:?}");

    // Forgotten: the key goes in the forget's own transaction.
    let forgot = send(&env, &env.bootstrap, "user.forget", alice.id, json!({})).await;
    assert_eq!(forgot["status"], "accepted");
    let destroyed: (Option<Vec<u8>>, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT wrapped, destroyed_at FROM data_keys WHERE subject = $1")
            .bind(alice.id)
            .fetch_one(&pool)
            .await
            .expect("alice's key row");
    assert!(
        destroyed.0.is_none() && destroyed.1.is_some(),
        "the key outlived the forget"
    );
    caught_up(&pool).await;

    // The log, decoded with the master key: erased for her, whole for him.
    let fresh = keyed_store(&pool).await;
    for stream in [alice.id, alice.conversation] {
        let text = decoded(&fresh, stream).await;
        assert!(
            !text.contains(&alice.marker),
            "readable after the forget: {text}"
        );
    }
    assert!(decoded(&fresh, bob.conversation)
        .await
        .contains(&bob.marker));
    assert!(decoded(&fresh, bob.id).await.contains(&bob.marker));

    // Every table (log, command side, read models, audit), Redis, the relay.
    assert_eq!(
        tables_showing(&pool, &alice.marker).await,
        Vec::<String>::new()
    );
    assert!(!tables_showing(&pool, &bob.marker).await.is_empty());
    let redis = redis_dump(&env.redis_prefix).await;
    assert!(!redis.contains(&alice.marker), "Redis keeps her: {redis}");
    let relay = relay_dump(&env.prefix).await;
    assert!(!relay.is_empty(), "the relay published the log");
    for who in [&alice, &bob] {
        assert!(
            !relay.contains(&who.marker),
            "the relay shows {}",
            who.marker
        );
    }

    // A full rebuild of every SQL projection brings nothing of her back.
    let (ok, _, stderr) = env.run(&["replay"], None).await;
    assert!(ok, "replay: {stderr}");
    assert_eq!(
        tables_showing(&pool, &alice.marker).await,
        Vec::<String>::new()
    );
    let bobs: Vec<String> =
        sqlx::query_scalar("SELECT content FROM read_model.messages WHERE conversation_id = $1")
            .bind(bob.conversation)
            .fetch_all(&pool)
            .await
            .expect("messages");
    assert!(bobs.iter().any(|m| m.contains(&bob.marker)), "{bobs:?}");

    // A fresh export, imported elsewhere and read with the master key.
    let key_file = dir.join("archive.key");
    std::fs::write(&key_file, format!("{}\n", "ab".repeat(32))).expect("archive key");
    let archive = dir.join("archive");
    let archive_text = archive.to_string_lossy().into_owned();
    let key_text = key_file.to_string_lossy().into_owned();
    let (ok, _, stderr) = env
        .run(&["export", &archive_text, "--key-file", &key_text], None)
        .await;
    assert!(ok, "export: {stderr}");
    let copy_db = format!("shred_copy_{}", Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {copy_db}"))
        .execute(&pool)
        .await
        .expect("a database for the copy");
    let copy_url = format!("postgres://postgres@127.0.0.1:5432/{copy_db}");
    let mut import = env.command(&["import", &archive_text, "--key-file", &key_text]);
    import.env("COPILOT_DATABASE_URL", &copy_url);
    let out = import.output().await.expect("import ran");
    assert!(
        out.status.success(),
        "import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    {
        let copy = sqlx::PgPool::connect(&copy_url).await.expect("the copy");
        let store = keyed_store(&copy).await;
        assert!(!decoded(&store, alice.conversation)
            .await
            .contains(&alice.marker));
        assert!(decoded(&store, bob.conversation)
            .await
            .contains(&bob.marker));
        assert_eq!(
            tables_showing(&copy, &alice.marker).await,
            Vec::<String>::new()
        );
        copy.close().await;
    }
    sqlx::query(&format!("DROP DATABASE {copy_db} WITH (FORCE)"))
        .execute(&pool)
        .await
        .expect("drop the copy");

    env.finish().await;
    // No key material in the logs: neither the master key nor any data key
    // (as it is wrapped or unwrapped), nor her texts.
    let logged = std::fs::read_to_string(&log).expect("the log");
    assert!(logged.contains("personal data is sealed"), "{logged}");
    assert!(!logged.contains(common::TEST_MASTER_KEY));
    assert!(!logged.contains(&alice.marker) && !logged.contains(&bob.marker));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The store writes, and the domain reads, the same marker for a value
/// whose key is gone.
#[test]
fn the_store_and_the_domain_agree_on_the_erased_marker() {
    assert_eq!(domain::personal::ERASED, eventstore::data_keys::ERASED);
}
