//! The query service through HTTP, against data made by commands: the
//! command service on its own NATS prefix, the projector (relational,
//! audit, Redis) and the query service on a free port, each test on its
//! own database and Redis key prefix.

mod abuse;
mod bad_requests;
mod bola;
mod browser;
mod cache;
#[path = "../../../tests/common/certs.rs"]
mod certs;
mod consistency;
mod endpoints;
mod indexes;
mod live;
mod replica;
mod schema;
mod search;
mod seed_columns;
mod series;

use command_service::{CommandResult, ServiceConfig, Status};
use query_service::{QueryConfig, Search};
use reqwest::header::HeaderMap;
use serde_json::{json, Value};
use sqlx::PgPool;
use testkit::stack::{self, envelope, Agent, Names, Services};
use uuid::Uuid;

pub use testkit::stack::{master_keys, store_options, NATS, REDIS};

pub struct Stack {
    pub pool: PgPool,
    pub nats_prefix: String,
    pub redis_prefix: String,
    pub client: async_nats::Client,
    agent: Agent,
    pub http: reqwest::Client,
    pub base: String,
    pub bootstrap: String,
    /// With [`Options::https`]: the test CA's certificates (and where they are).
    pub tls: Option<(certs::Certs, std::path::PathBuf)>,
    services: Services,
}

pub struct Options {
    pub redis_url: String,
    pub replica: Option<PgPool>,
    pub rate_limit_per_minute: Option<u32>,
    pub search: Option<std::sync::Arc<Search>>,
    pub vectors: Option<projector::VectorConfig>,
    /// Run the command service and projector (false: a second query
    /// service beside another stack's).
    pub writers: bool,
    pub redis_prefix: Option<String>,
    pub nats_prefix: Option<String>,
    /// Serve HTTPS with a certificate from a CA the test makes (the
    /// stack's client trusts it).
    pub https: bool,
    pub cors_origins: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            redis_url: REDIS.into(),
            replica: None,
            rate_limit_per_minute: None,
            search: None,
            vectors: None,
            writers: true,
            redis_prefix: None,
            nats_prefix: None,
            https: false,
            cors_origins: Vec::new(),
        }
    }
}

impl Options {
    /// The vector projection and search on an embedded store in a fresh
    /// directory (returned, to be removed), with the local model.
    pub fn with_search() -> (Options, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("query-search-{}", Uuid::new_v4().simple()));
        let model_dir = std::env::var_os("COPILOT_MODEL_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(vectors::embed::MiniLm::default_dir);
        let embedder: std::sync::Arc<dyn vectors::Embedder> = std::sync::Arc::new(
            vectors::embed::MiniLm::load(&model_dir).expect("the model (deploy/model.sh)"),
        );
        let opener = projector::vector_model::edge_opener(dir.clone(), 384);
        let options = Options {
            vectors: Some(projector::VectorConfig {
                store: opener.clone(),
                embedder: embedder.clone(),
                breakers: None,
            }),
            search: Some(std::sync::Arc::new(Search {
                store: opener,
                embedder,
            })),
            ..Options::default()
        };
        (options, dir)
    }
}

impl Stack {
    pub async fn start(pool: PgPool) -> Stack {
        Stack::start_with(pool, Options::default()).await
    }

    /// The services of a deployment's settings (see
    /// `testkit::stack::settings`) on the test's own names, with `options`.
    pub async fn start_with(pool: PgPool, options: Options) -> Stack {
        let mut names = Names::fresh();
        if let Some(prefix) = &options.nats_prefix {
            names.nats_prefix = prefix.clone();
        }
        if let Some(prefix) = &options.redis_prefix {
            names.redis_prefix = prefix.clone();
        }
        let settings = stack::settings(&names);
        let mut services = Services::default();
        if options.writers {
            services
                .command_service(&pool, ServiceConfig::from_settings(&settings))
                .await;
            let projector =
                projector::ProjectorConfig::from_settings(&settings, options.vectors.clone());
            services.projector(&pool, projector).await;
        }
        let mut config = QueryConfig::from_settings(&settings);
        config.redis = options.redis_url.as_str().into();
        config.replica = options.replica.clone();
        config.rate_limit_per_minute = options.rate_limit_per_minute;
        config.search = options.search.clone();
        config.cors_origins = options.cors_origins.clone();
        let tls = options.https.then(|| {
            let dir = std::env::temp_dir().join(format!("query-tls-{}", Uuid::new_v4().simple()));
            std::fs::create_dir_all(&dir).expect("cert dir");
            (certs::Certs::new(&dir, "query"), dir)
        });
        config.tls = tls.as_ref().map(|(c, _)| (c.cert.clone(), c.key.clone()));
        let addr = services.query_service(&pool, config).await;
        let agent = Agent::connect(&names.nats_prefix).await;
        Stack {
            pool,
            nats_prefix: names.nats_prefix,
            redis_prefix: names.redis_prefix,
            client: agent.client.clone(),
            agent,
            http: match &tls {
                Some((certs, _)) => {
                    let ca = std::fs::read(&certs.ca).expect("CA");
                    reqwest::Client::builder()
                        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("CA PEM"))
                        .build()
                        .expect("HTTPS client")
                }
                None => reqwest::Client::new(),
            },
            base: format!("{}://{addr}", if tls.is_some() { "https" } else { "http" }),
            tls,
            bootstrap: names.bootstrap,
            services,
        }
    }

    /// Stops every service, removes the streams and the Redis keys.
    pub async fn finish(mut self) {
        self.services.stop().await;
        stack::clean_up(&self.nats_prefix, &self.redis_prefix).await;
        if let Some((_, dir)) = &self.tls {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    pub async fn command(
        &self,
        command_type: &str,
        aggregate: Uuid,
        payload: Value,
        token: &str,
    ) -> CommandResult {
        let envelope = envelope(aggregate, payload);
        self.agent
            .send(command_type, &envelope, Some(token), &[])
            .await
    }

    /// A command that must be accepted; returns its position.
    pub async fn ok(
        &self,
        command_type: &str,
        aggregate: Uuid,
        payload: Value,
        token: &str,
    ) -> String {
        let result = self.command(command_type, aggregate, payload, token).await;
        assert_eq!(
            result.status,
            Status::Accepted,
            "{command_type}: {result:?}"
        );
        result.position.expect("accepted commands have a position")
    }

    /// A conversation of the caller's with `messages` user messages
    /// (`m0`, `m1`, …): its id and the last command's position.
    pub async fn conversation_with(&self, token: &str, messages: usize) -> (Uuid, String) {
        let conversation = Uuid::now_v7();
        let mut last = self
            .ok("conversation.start", conversation, json!({}), token)
            .await;
        for i in 0..messages {
            last = self
                .ok(
                    "conversation.append_message",
                    conversation,
                    json!({"message_id": Uuid::now_v7(), "role": "user", "content": format!("m{i}")}),
                    token,
                )
                .await;
        }
        (conversation, last)
    }

    /// `session.start` (no credentials but the payload's).
    pub async fn sign_in(&self, payload: Value) -> CommandResult {
        self.agent.sign_in(payload).await
    }

    /// Registers a user (with the bootstrap token) and signs them in:
    /// (user id, session token).
    pub async fn user(&self, role: &str) -> (Uuid, String) {
        let signed_in = self.agent.user(&self.bootstrap, role).await;
        // Signed in as a client would be: the user and session rows are
        // projected before the token is used for reads.
        let me = self
            .get_at("/v1/me", &signed_in.token, &signed_in.position)
            .await;
        assert_eq!(me.status, 200, "{:?}", me.body);
        (signed_in.user_id, signed_in.token)
    }

    pub async fn get_with(
        &self,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        Reply::from(request.send().await.expect("HTTP request")).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.get_with(path, Some(token), &[]).await
    }

    /// GET after the projections passed `position` (read-your-writes).
    pub async fn get_at(&self, path: &str, token: &str, position: &str) -> Reply {
        self.get_with(path, Some(token), &[("X-Min-Position", position)])
            .await
    }

    pub async fn post(&self, path: &str, token: &str, body: &Value) -> Reply {
        let request = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(body);
        Reply::from(request.send().await.expect("HTTP request")).await
    }

    /// Every item of a list, following `next_cursor` pages of `limit`.
    pub async fn walk(&self, path: &str, token: &str, limit: usize) -> Vec<Value> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        let join = if path.contains('?') { '&' } else { '?' };
        for _ in 0..10_000 {
            let mut url = format!("{path}{join}limit={limit}");
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let reply = self.get(&url, token).await;
            assert_eq!(reply.status, 200, "{url}: {:?}", reply.body);
            let page = reply.body["items"].as_array().expect("items").clone();
            assert!(page.len() <= limit, "a page longer than its limit");
            items.extend(page);
            match reply.body["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => return items,
            }
        }
        panic!("pagination never ended");
    }

    async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(REDIS)
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("Redis on 127.0.0.1:6379")
    }

    /// Whether `key` (under this stack's prefix) exists in Redis.
    pub async fn redis_exists(&self, key: &str) -> bool {
        redis::cmd("EXISTS")
            .arg(format!("{}{key}", self.redis_prefix))
            .query_async::<bool>(&mut self.redis().await)
            .await
            .expect("EXISTS")
    }

    pub async fn redis_del(&self, key: &str) {
        redis::cmd("DEL")
            .arg(format!("{}{key}", self.redis_prefix))
            .query_async::<()>(&mut self.redis().await)
            .await
            .expect("DEL");
    }

    pub async fn metric(&self, name_and_labels: &str) -> f64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        text.lines()
            .filter(|l| l.starts_with(name_and_labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    async fn from(response: reqwest::Response) -> Reply {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body");
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        Reply {
            status,
            headers,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a problem+json answer with `status`.
    pub fn problem(&self, status: u16) -> &Value {
        assert_eq!(self.status, status, "{:?}", self.body);
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{:?}",
            self.body
        );
        assert_eq!(self.body["status"].as_u64(), Some(u64::from(status)));
        assert!(self.body["title"].is_string() && self.body["detail"].is_string());
        &self.body
    }

    pub fn ids(&self) -> Vec<String> {
        self.body["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| i["id"].as_str().expect("id").to_string())
            .collect()
    }
}
