//! One way for the tests to start the services: in this process, each as
//! its own least-privilege login (migration 0011), configured from the
//! [`Settings`] a deployment reads (through the same `from_settings` the
//! binary calls), on a NATS prefix and Redis key prefix no other test uses.
//! [`Services::stop`] ends them; [`clean_up`] removes what they left on the
//! shared servers.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use command_service::ServiceConfig;
use eventstore::data_keys::MasterKeys;
use eventstore::{EventStore, StoreOptions};
use infra::Settings;
use projector::ProjectorConfig;
use query_service::QueryConfig;
use secrecy::SecretString;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// The master key of every store the tests start: personal data is sealed
/// with it as in a deployment, and every reader opens it.
pub const TEST_MASTER_KEY: &str =
    "6d1c0e4a7b2f9a3c5e8d1f0b4a7c2e9d3b6f8a1c5e0d2b7f4a9c3e6d1b8f0a2c";

/// The machine's servers (`deploy/services.sh` starts any that is down).
pub const NATS: &str = "nats://127.0.0.1:4222";
pub const REDIS: &str = "redis://127.0.0.1:6379";

pub fn master_keys() -> MasterKeys {
    MasterKeys::parse(TEST_MASTER_KEY).expect("the test master key")
}

/// The store options of the tests' services: the defaults, sealed with
/// [`TEST_MASTER_KEY`].
pub fn store_options() -> StoreOptions {
    StoreOptions {
        master_keys: Some(master_keys()),
        ..StoreOptions::default()
    }
}

/// What a test's services are called on the shared servers.
#[derive(Debug, Clone)]
pub struct Names {
    /// The NATS subject prefix (and so the stream names).
    pub nats_prefix: String,
    /// Every Redis key the services write starts with it.
    pub redis_prefix: String,
    /// The bootstrap token (an admin credential for commands).
    pub bootstrap: String,
}

impl Names {
    /// Names no other test uses.
    pub fn fresh() -> Names {
        Names::on(&format!("t{}", &Uuid::new_v4().simple().to_string()[..12]))
    }

    /// Names on the NATS prefix `prefix`: Redis keys under `test:<prefix>:`
    /// and a fresh bootstrap token.
    pub fn on(prefix: &str) -> Names {
        Names {
            nats_prefix: prefix.to_string(),
            redis_prefix: format!("test:{prefix}:"),
            bootstrap: format!("boot-{}", Uuid::new_v4()),
        }
    }
}

/// A deployment's settings on `names`, with what the tests need different:
/// no rate limits (the tests that check them set their own), a 64 KiB
/// command limit (the tests send more), a free port for HTTP, no metrics
/// endpoint, no event relay, and projector batches and lease retries small
/// enough that tests do not wait.
pub fn settings(names: &Names) -> Settings {
    let mut settings = Settings::default();
    settings.nats.url = NATS.into();
    settings.nats.prefix = names.nats_prefix.clone();
    settings.redis.url = SecretString::from(REDIS);
    settings.redis.prefix = names.redis_prefix.clone();
    settings.bootstrap_token = Some(SecretString::from(names.bootstrap.clone()));
    settings.master_key = Some(SecretString::from(TEST_MASTER_KEY));
    settings.commands.max_message_bytes = 64 * 1024;
    settings.commands.rate_limit_per_minute = 0;
    settings.commands.max_in_flight = 64;
    settings.commands.metrics_addr = None;
    settings.http.addr = SocketAddr::from(([127, 0, 0, 1], 0));
    settings.http.rate_limit_per_minute = 0;
    settings.projector.batch_size = 500;
    settings.projector.lease_retry = Duration::from_millis(100);
    settings.projector.relay = false;
    settings
}

/// A service role, for the login it runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Command,
    Projector,
    Query,
}

impl Role {
    fn login(self) -> &'static str {
        match self {
            Role::Command => "copilot_test_command",
            Role::Projector => "copilot_test_projector",
            Role::Query => "copilot_test_query",
        }
    }
}

/// A pool on `pool`'s database as `role`'s own login (the test's `pool`,
/// the owner's, checks what the service did).
pub async fn login(pool: &PgPool, role: Role) -> PgPool {
    infra::postgres::ensure_logins(pool, &infra::postgres::test_logins())
        .await
        .expect("the test logins");
    infra::postgres::pool_as(pool, role.login(), 10)
        .await
        .expect("a pool as the service's login")
}

/// A store as `role`, sealed with the test master key.
pub async fn store_as(pool: &PgPool, role: Role) -> EventStore {
    EventStore::connect(login(pool, role).await, store_options())
        .await
        .expect("the event store")
}

/// Services running in this process, stopped together.
pub struct Services {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Default for Services {
    fn default() -> Self {
        Services {
            stop: watch::channel(false).0,
            tasks: Vec::new(),
        }
    }
}

impl Services {
    /// Resolves once [`Services::stop`] is called.
    fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stopped = self.stop.subscribe();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    }

    /// Starts the command service as its login on `pool`'s database and
    /// waits until it answers on `config.prefix`.
    pub async fn command_service(&mut self, pool: &PgPool, config: ServiceConfig) {
        let store = store_as(pool, Role::Command).await;
        let prefix = config.prefix.clone();
        let stopped = self.stopped();
        self.tasks.push(tokio::spawn(async move {
            command_service::run(config, store, stopped)
                .await
                .expect("the command service runs");
        }));
        let client = async_nats::connect(NATS)
            .await
            .expect("NATS on 127.0.0.1:4222");
        wait_until_answering(&client, &prefix).await;
    }

    /// Starts the projector as its login on `pool`'s database.
    pub async fn projector(&mut self, pool: &PgPool, config: ProjectorConfig) {
        let store = store_as(pool, Role::Projector).await;
        let stopped = self.stopped();
        self.tasks.push(tokio::spawn(async move {
            projector::run(config, store, stopped)
                .await
                .expect("the projector runs");
        }));
    }

    /// Starts the query service as its login on `pool`'s database, with
    /// the test master key; the address it listens on.
    pub async fn query_service(&mut self, pool: &PgPool, mut config: QueryConfig) -> SocketAddr {
        config.master_keys = Some(master_keys());
        let pool = login(pool, Role::Query).await;
        let bound = query_service::bind(config, pool.clone())
            .await
            .expect("the query service binds");
        let addr = bound.local_addr().expect("its address");
        let stopped = self.stopped();
        self.tasks.push(tokio::spawn(async move {
            bound.serve(stopped).await.expect("the query service runs");
            pool.close().await;
        }));
        addr
    }

    /// Stops every service (each finishes what it has in flight) and waits
    /// for them; more can be started afterwards.
    pub async fn stop(&mut self) {
        let _ = self.stop.send(true);
        for task in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
        }
        self.stop = watch::channel(false).0;
    }
}

/// Waits until a command service answers on `prefix` (it panics after ten
/// seconds).
pub async fn wait_until_answering(client: &async_nats::Client, prefix: &str) {
    for _ in 0..100 {
        let probe = client.request(format!("{prefix}.rpc.session.touch"), "{}".into());
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(200), probe).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the command service on {prefix} did not start");
}

/// Removes what services on these prefixes leave on the shared servers:
/// the command streams and every Redis key under `redis_prefix`.
pub async fn clean_up(nats_prefix: &str, redis_prefix: &str) {
    if let Ok(client) = async_nats::connect(NATS).await {
        let js = async_nats::jetstream::new(client);
        let (commands, results) = command_service::stream_names(nats_prefix);
        let _ = js.delete_stream(commands).await;
        let _ = js.delete_stream(results).await;
    }
    let _ = infra::redis_conn::delete_prefix(REDIS, redis_prefix).await;
}

/// A command as a client sends it: a fresh command id, `aggregate_id` and
/// `payload`.
pub fn envelope(aggregate_id: Uuid, payload: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"command_id": Uuid::now_v7(), "aggregate_id": aggregate_id, "payload": payload})
}

/// The password of every user [`Agent::register`] makes.
pub const PASSWORD: &str = "correct horse";

/// A user signed in by [`Agent::user`].
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub user_id: Uuid,
    pub token: String,
    /// The position of the sign-in's events (to read them back at).
    pub position: String,
}

/// An agent on a command service's request/reply subjects, as the tests
/// drive it.
#[derive(Clone)]
pub struct Agent {
    pub client: async_nats::Client,
    pub prefix: String,
}

impl Agent {
    pub async fn connect(prefix: &str) -> Agent {
        Agent {
            client: async_nats::connect(NATS)
                .await
                .expect("NATS on 127.0.0.1:4222"),
            prefix: prefix.to_string(),
        }
    }

    /// `Content-Type: application/json` if `json`, and the bearer token.
    pub fn headers(token: Option<&str>, json: bool) -> async_nats::HeaderMap {
        let mut headers = async_nats::HeaderMap::new();
        if json {
            headers.insert("Content-Type", "application/json");
        }
        if let Some(token) = token {
            headers.insert("Authorization", format!("Bearer {token}").as_str());
        }
        headers
    }

    /// Sends `body` to `<prefix>.rpc.<command_type>` and decodes the answer
    /// (JSON, or MessagePack unless `json`); it must come within 20 s.
    pub async fn request(
        &self,
        command_type: &str,
        headers: async_nats::HeaderMap,
        body: Vec<u8>,
        json: bool,
    ) -> command_service::CommandResult {
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

    /// Sends `envelope` as JSON with `token` and `extra` headers.
    pub async fn send(
        &self,
        command_type: &str,
        envelope: &serde_json::Value,
        token: Option<&str>,
        extra: &[(&str, &str)],
    ) -> command_service::CommandResult {
        let mut headers = Agent::headers(token, true);
        for (name, value) in extra {
            headers.insert(*name, *value);
        }
        let body = serde_json::to_vec(envelope).expect("json");
        self.request(command_type, headers, body, true).await
    }

    /// Registers a user with `role` (password [`PASSWORD`]) with the
    /// bootstrap token: the user id and e-mail address.
    pub async fn register(&self, bootstrap: &str, role: &str) -> (Uuid, String) {
        let user_id = Uuid::now_v7();
        let email = format!("{}@example.com", Uuid::new_v4().simple());
        let payload = serde_json::json!({"email": email, "display_name": "Test User", "password": PASSWORD, "role": role});
        let registered = self
            .send(
                "user.register",
                &envelope(user_id, payload),
                Some(bootstrap),
                &[],
            )
            .await;
        assert_eq!(
            registered.status,
            command_service::Status::Accepted,
            "{registered:?}"
        );
        (user_id, email)
    }

    /// A `session.start` with `payload` (no credential but the payload's).
    pub async fn sign_in(&self, payload: serde_json::Value) -> command_service::CommandResult {
        self.send(
            "session.start",
            &envelope(Uuid::now_v7(), payload),
            None,
            &[],
        )
        .await
    }

    /// Registers a user with the bootstrap token and signs them in.
    pub async fn user(&self, bootstrap: &str, role: &str) -> SignedIn {
        let (user_id, email) = self.register(bootstrap, role).await;
        let started = self
            .sign_in(serde_json::json!({"email": email, "password": PASSWORD, "device_fingerprint": "test"}))
            .await;
        assert_eq!(
            started.status,
            command_service::Status::Accepted,
            "{started:?}"
        );
        SignedIn {
            user_id,
            token: started
                .data
                .as_ref()
                .and_then(|d| d["token"].as_str())
                .expect("token")
                .to_string(),
            position: started.position.expect("a position"),
        }
    }
}
