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
use futures_util::StreamExt;
use serde_json::{json, Value};
use sqlx::PgPool;
use testkit::stack::{self, Agent, Names, Services};
use uuid::Uuid;

pub use testkit::stack::{envelope, master_keys, store_options, NATS};

pub struct App {
    pub prefix: String,
    pub client: async_nats::Client,
    agent: Agent,
    pub pool: PgPool,
    pub bootstrap: String,
    services: Services,
}

/// The command service of a deployment's settings on `prefix` (see
/// `testkit::stack::settings`), users signed up with `bootstrap`.
pub fn config(prefix: &str, bootstrap: &str) -> ServiceConfig {
    let names = Names {
        bootstrap: bootstrap.to_string(),
        ..Names::on(prefix)
    };
    ServiceConfig::from_settings(&stack::settings(&names))
}

/// A NATS prefix (and so stream names) no other test uses.
pub fn fresh_prefix() -> String {
    Names::fresh().nats_prefix
}

impl App {
    pub async fn spawn(pool: PgPool) -> App {
        let prefix = fresh_prefix();
        App::spawn_with(pool, config(&prefix, &format!("boot-{}", Uuid::new_v4()))).await
    }

    /// The service runs as its own least-privilege login; the test's
    /// `pool` (the owner's) checks what it did.
    pub async fn spawn_with(pool: PgPool, config: ServiceConfig) -> App {
        let prefix = config.prefix.clone();
        let bootstrap = config
            .bootstrap_token
            .as_ref()
            .map(|t| secrecy::ExposeSecret::expose_secret(t).to_string())
            .unwrap_or_default();
        let mut services = Services::default();
        services.command_service(&pool, config).await;
        let agent = Agent::connect(&prefix).await;
        App {
            prefix,
            client: agent.client.clone(),
            agent,
            pool,
            bootstrap,
            services,
        }
    }

    /// Stops the service; the streams stay (another app on the prefix reuses them).
    pub async fn stop(&mut self) {
        self.services.stop().await;
    }

    /// Stops the service and removes its streams and Redis keys.
    pub async fn finish(mut self) {
        self.stop().await;
        let names = Names::on(&self.prefix);
        stack::clean_up(&names.nats_prefix, &names.redis_prefix).await;
    }

    /// Sends raw bytes over request/reply and decodes the answer.
    pub async fn rpc_raw(
        &self,
        command_type: &str,
        body: Vec<u8>,
        token: Option<&str>,
        json: bool,
    ) -> CommandResult {
        let headers = Agent::headers(token, json);
        self.agent.request(command_type, headers, body, json).await
    }

    /// [`App::rpc`] with more headers (`Client-Ip`, `User-Agent`, ...).
    pub async fn rpc_with(
        &self,
        command_type: &str,
        envelope: &Value,
        token: Option<&str>,
        extra: &[(&str, &str)],
    ) -> CommandResult {
        self.agent.send(command_type, envelope, token, extra).await
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
        let mut headers = Agent::headers(token, true);
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
        self.agent.register(&self.bootstrap, role).await
    }

    /// A `session.start` with these credentials.
    pub async fn sign_in(&self, email: &str, password: &str, mfa: Option<&str>) -> CommandResult {
        self.agent
            .sign_in(json!({"email": email, "password": password, "mfa_code": mfa}))
            .await
    }

    /// Registers a user with the bootstrap token and signs them in.
    pub async fn user(&self, role: &str) -> (Uuid, String) {
        let signed_in = self.agent.user(&self.bootstrap, role).await;
        (signed_in.user_id, signed_in.token)
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
