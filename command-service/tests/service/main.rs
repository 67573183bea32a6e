//! The command service against the real NATS, PostgreSQL and (where asked)
//! Redis: each test has its own database, NATS prefix and stream names.

mod abuse;
mod auth;
mod bad_input;
mod catalogue;
mod client_info;
mod concurrency;
mod idempotency;
mod lane;
mod multi_instance;
mod rate_limit;
mod shutdown;
mod snapshots;

use std::time::Duration;

use command_service::{CommandResult, ServiceConfig, Status};
use eventstore::{EventStore, StoreOptions};
use futures_util::StreamExt;
use secrecy::SecretString;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::sync::oneshot;
use uuid::Uuid;

/// The master key of every store in these tests: the command service seals
/// personal data with it as in a deployment, and every reader opens it.
pub const TEST_MASTER_KEY: &str =
    "6d1c0e4a7b2f9a3c5e8d1f0b4a7c2e9d3b6f8a1c5e0d2b7f4a9c3e6d1b8f0a2c";

pub fn store_options() -> StoreOptions {
    StoreOptions {
        master_keys: Some(master_keys()),
        ..StoreOptions::default()
    }
}

pub fn master_keys() -> eventstore::data_keys::MasterKeys {
    eventstore::data_keys::MasterKeys::parse(TEST_MASTER_KEY).expect("the test master key")
}

pub const NATS: &str = "nats://127.0.0.1:4222";

pub struct App {
    pub prefix: String,
    pub client: async_nats::Client,
    pub pool: PgPool,
    pub bootstrap: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub fn config(prefix: &str, bootstrap: &str) -> ServiceConfig {
    ServiceConfig {
        nats: NATS.into(),
        prefix: prefix.into(),
        max_message_bytes: 64 * 1024,
        embedding_dimension: 384,
        bootstrap_token: Some(SecretString::from(bootstrap.to_string())),
        rate_limit: None,
        max_in_flight: 64,
        trusted_agents: Vec::new(),
        auth_epochs: None,
    }
}

/// A NATS prefix (and so stream names) no other test uses.
pub fn fresh_prefix() -> String {
    format!("t{}", &Uuid::new_v4().simple().to_string()[..12])
}

impl App {
    pub async fn spawn(pool: PgPool) -> App {
        let prefix = fresh_prefix();
        App::spawn_with(pool, config(&prefix, &format!("boot-{}", Uuid::new_v4()))).await
    }

    /// The service runs as its own least-privilege login (migration 0011);
    /// the test's `pool` (the owner's) checks what it did.
    pub async fn spawn_with(pool: PgPool, config: ServiceConfig) -> App {
        infra::postgres::ensure_logins(&pool, &infra::postgres::test_logins())
            .await
            .expect("logins");
        let login = infra::postgres::pool_as(&pool, "copilot_test_command", 10)
            .await
            .expect("the command service's login");
        let store = EventStore::connect(login, store_options())
            .await
            .expect("store");
        let client = async_nats::connect(NATS)
            .await
            .expect("NATS on 127.0.0.1:4222");
        let (stop, stopped) = oneshot::channel::<()>();
        let prefix = config.prefix.clone();
        let bootstrap = config
            .bootstrap_token
            .as_ref()
            .map(|t| secrecy::ExposeSecret::expose_secret(t).to_string())
            .unwrap_or_default();
        let task = tokio::spawn(async move {
            command_service::run(config, store, async move {
                let _ = stopped.await;
            })
            .await
            .expect("service runs");
        });
        let app = App {
            prefix,
            client,
            pool,
            bootstrap,
            stop: Some(stop),
            task: Some(task),
        };
        // Ready when it answers.
        for _ in 0..100 {
            let probe = app
                .client
                .request(format!("{}.rpc.session.touch", app.prefix), "{}".into());
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(200), probe).await {
                return app;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("command service did not start");
    }

    /// Stops the service; the streams stay (another app on the prefix reuses them).
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Stops the service and removes its streams.
    pub async fn finish(mut self) {
        self.stop().await;
        let js = async_nats::jetstream::new(self.client.clone());
        let (commands, results) = command_service::stream_names(&self.prefix);
        let _ = js.delete_stream(commands).await;
        let _ = js.delete_stream(results).await;
    }

    fn headers(token: Option<&str>, json: bool) -> async_nats::HeaderMap {
        let mut headers = async_nats::HeaderMap::new();
        if json {
            headers.insert("Content-Type", "application/json");
        }
        if let Some(token) = token {
            headers.insert("Authorization", format!("Bearer {token}").as_str());
        }
        headers
    }

    /// Sends raw bytes over request/reply and decodes the JSON answer.
    pub async fn rpc_raw(
        &self,
        command_type: &str,
        body: Vec<u8>,
        token: Option<&str>,
        json: bool,
    ) -> CommandResult {
        self.rpc_raw_with(command_type, body, App::headers(token, json), json)
            .await
    }

    /// [`App::rpc`] with more headers (`Client-Ip`, `User-Agent`, ...).
    pub async fn rpc_with(
        &self,
        command_type: &str,
        envelope: &Value,
        token: Option<&str>,
        extra: &[(&str, &str)],
    ) -> CommandResult {
        let mut headers = App::headers(token, true);
        for (name, value) in extra {
            headers.insert(*name, *value);
        }
        let body = serde_json::to_vec(envelope).expect("json");
        self.rpc_raw_with(command_type, body, headers, true).await
    }

    async fn rpc_raw_with(
        &self,
        command_type: &str,
        body: Vec<u8>,
        headers: async_nats::HeaderMap,
        json: bool,
    ) -> CommandResult {
        let reply = tokio::time::timeout(
            Duration::from_secs(20),
            self.client.request_with_headers(
                format!("{}.rpc.{command_type}", self.prefix),
                headers,
                body.into(),
            ),
        )
        .await
        .expect("answered in time")
        .expect("reply");
        if json {
            serde_json::from_slice(&reply.payload).expect("JSON result")
        } else {
            domain::codec::decode(&reply.payload).expect("MessagePack result")
        }
    }

    pub async fn rpc(
        &self,
        command_type: &str,
        envelope: &Value,
        token: Option<&str>,
    ) -> CommandResult {
        self.rpc_with(command_type, envelope, token, &[]).await
    }

    pub async fn rpc_msgpack(
        &self,
        command_type: &str,
        envelope: &Value,
        token: Option<&str>,
    ) -> CommandResult {
        self.rpc_raw(
            command_type,
            domain::codec::encode(envelope).expect("msgpack"),
            token,
            false,
        )
        .await
    }

    /// Publishes to JetStream (Nats-Msg-Id = command id) and waits for the result.
    pub async fn js(
        &self,
        command_type: &str,
        envelope: &Value,
        token: Option<&str>,
    ) -> CommandResult {
        let command_id = envelope["command_id"]
            .as_str()
            .expect("command id")
            .to_string();
        let mut results = self
            .client
            .subscribe(format!("{}.result.{command_id}", self.prefix))
            .await
            .expect("subscribe");
        self.client.flush().await.expect("flush");
        let js = async_nats::jetstream::new(self.client.clone());
        let mut headers = App::headers(token, true);
        headers.insert("Nats-Msg-Id", command_id.as_str());
        js.publish_with_headers(
            format!("{}.cmd.{command_type}", self.prefix),
            headers,
            serde_json::to_vec(envelope).expect("json").into(),
        )
        .await
        .expect("publish")
        .await
        .expect("stored by JetStream");
        let message = tokio::time::timeout(Duration::from_secs(20), results.next())
            .await
            .expect("result in time")
            .expect("result");
        serde_json::from_slice(&message.payload).expect("JSON result")
    }

    /// The session `user` signed in with (its only one).
    pub async fn session_of(&self, user: Uuid) -> Uuid {
        sqlx::query_scalar("SELECT session_id FROM auth_sessions WHERE user_id = $1")
            .bind(user)
            .fetch_one(&self.pool)
            .await
            .expect("session")
    }

    pub async fn event_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&self.pool)
            .await
            .expect("count")
    }

    /// Registers a user (password `correct horse`) with the bootstrap
    /// token; returns the user id and e-mail.
    pub async fn register(&self, role: &str) -> (Uuid, String) {
        let user_id = Uuid::now_v7();
        let email = format!("{}@example.com", Uuid::new_v4().simple());
        let registered = self
            .rpc(
                "user.register",
                &envelope(user_id, json!({"email": email, "display_name": "Test", "password": "correct horse", "role": role})),
                Some(&self.bootstrap),
            )
            .await;
        assert_eq!(registered.status, Status::Accepted, "{registered:?}");
        (user_id, email)
    }

    /// A `session.start` with these credentials.
    pub async fn sign_in(&self, email: &str, password: &str, mfa: Option<&str>) -> CommandResult {
        self.rpc(
            "session.start",
            &envelope(
                Uuid::now_v7(),
                json!({"email": email, "password": password, "mfa_code": mfa}),
            ),
            None,
        )
        .await
    }

    /// Registers a user with the bootstrap token and signs them in.
    pub async fn user(&self, role: &str) -> (Uuid, String) {
        let (user_id, email) = self.register(role).await;
        let started = self.sign_in(&email, "correct horse", None).await;
        assert_eq!(started.status, Status::Accepted, "{started:?}");
        let token = started
            .data
            .as_ref()
            .and_then(|d| d["token"].as_str())
            .expect("token")
            .to_string();
        (user_id, token)
    }

    /// Starts a conversation owned by the holder of `token`.
    pub async fn conversation(&self, token: &str) -> Uuid {
        let conversation = Uuid::now_v7();
        let started = self
            .rpc(
                "conversation.start",
                &envelope(conversation, json!({})),
                Some(token),
            )
            .await;
        assert_eq!(started.status, Status::Accepted, "{started:?}");
        conversation
    }
}

pub fn envelope(aggregate_id: Uuid, payload: Value) -> Value {
    json!({"command_id": Uuid::now_v7(), "aggregate_id": aggregate_id, "payload": payload})
}
