//! The response cache: a repeated request is served from Redis (and the
//! metrics say so); an event that changes the resource makes the next
//! answer fresh; with Redis unreachable every endpoint answers the same.

use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use uuid::Uuid;

use crate::{Options, Stack};

#[sqlx::test(migrations = "../migrations")]
async fn repeated_reads_hit_and_events_invalidate(pool: PgPool) {
    let stack = Stack::start(pool).await;
    let (_, alice) = stack.user("operator").await;
    let (path, first) = open_incident(&stack, &alice, "first").await;
    let incident = first.body["id"]
        .as_str()
        .and_then(|id| id.parse::<Uuid>().ok())
        .expect("the incident's id");
    let mut hit = None;
    for _ in 0..100 {
        let hits_before = stack
            .metric("copilot_http_cache_total{outcome=\"hit\"}")
            .await;
        let again = stack.get(&path, &alice).await;
        if again.header("x-cache") == Some("hit") {
            assert_eq!(again.body, first.body, "the cached answer is the answer");
            let hits_after = stack
                .metric("copilot_http_cache_total{outcome=\"hit\"}")
                .await;
            assert!(hits_after > hits_before, "the hit is counted");
            hit = Some(again);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(hit.is_some(), "a repeated request is served from Redis");

    // An event on the incident: the next answer is fresh, once the
    // projections (relational and Redis) have it, without X-Min-Position.
    stack
        .ok(
            "incident.change_severity",
            incident,
            json!({"severity": "critical"}),
            &alice,
        )
        .await;
    let mut fresh = false;
    for _ in 0..200 {
        let reply = stack.get(&path, &alice).await;
        if reply.body["severity"] == "critical" {
            fresh = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(fresh, "the change reached the cached resource");
    stack.finish().await;
}

/// Opens an incident titled `title` and reads it once it is projected
/// (Redis included, so the answer can be stored): its path and that answer.
async fn open_incident(stack: &Stack, token: &str, title: &str) -> (String, crate::Reply) {
    let incident = Uuid::now_v7();
    let opened = stack
        .ok(
            "incident.open",
            incident,
            json!({"title": title, "description": "d", "severity": "low", "affected_services": ["x"]}),
            token,
        )
        .await;
    let path = format!("/v1/incidents/{incident}");
    let first = stack.get_at(&path, token, &opened).await;
    assert_eq!(first.status, 200);
    (path, first)
}

/// A cached read asks Redis once: the credential, its user's epoch and the
/// rate limit from one script call, and the answer by a GET sent with it
/// in one pipeline (an answer read inside the script would be hashed byte
/// by byte by Redis's Lua). The round trips are counted by a proxy between
/// the query service and Redis (a client waiting for a reply before it
/// sends more makes one burst per round trip), the commands by Redis's
/// `MONITOR` (which prints every command a client sends and, marked `lua`,
/// what scripts run), by this stack's key prefix.
#[sqlx::test(migrations = "../migrations")]
async fn a_cached_read_is_one_redis_round_trip(pool: PgPool) {
    let proxy = BurstCounter::start().await;
    let stack = Stack::start_with(
        pool,
        Options {
            rate_limit_per_minute: Some(10_000),
            redis_url: proxy.url.clone(),
            ..Options::default()
        },
    )
    .await;
    let (_, alice) = stack.user("operator").await;
    let (path, _) = open_incident(&stack, &alice, "t").await;
    let mut cached = false;
    for _ in 0..100 {
        if stack.get(&path, &alice).await.header("x-cache") == Some("hit") {
            cached = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(cached, "the answer reached the cache");

    let monitor = TcpStream::connect("127.0.0.1:6379").await.expect("redis");
    let mut monitor = BufReader::new(monitor);
    monitor
        .get_mut()
        .write_all(b"MONITOR\r\n")
        .await
        .expect("MONITOR");
    let mut line = String::new();
    monitor.read_line(&mut line).await.expect("+OK");
    assert_eq!(line.trim(), "+OK");
    const READS: usize = 5;
    let bursts_before = proxy.bursts();
    for _ in 0..READS {
        let reply = stack.get(&path, &alice).await;
        assert_eq!(reply.header("x-cache"), Some("hit"));
    }
    let bursts = proxy.bursts() - bursts_before;
    let marker = format!("end-of-{}", stack.redis_prefix);
    redis::cmd("ECHO")
        .arg(&marker)
        .query_async::<String>(&mut stack.redis().await)
        .await
        .expect("ECHO");
    let (mut sent, mut scripted) = (Vec::new(), Vec::new());
    loop {
        line.clear();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            monitor.read_line(&mut line),
        )
        .await
        .expect("the marker comes")
        .expect("read");
        assert!(read > 0, "MONITOR ended");
        if line.contains(&marker) {
            break;
        }
        let ours = [":auth:", ":cache:resp:", ":ratelimit:"]
            .iter()
            .any(|k| line.contains(&format!("{}{}", stack.redis_prefix, &k[1..])));
        if ours {
            if line.contains(" lua]") {
                scripted.push(line.clone());
            } else {
                sent.push(line.clone());
            }
        }
    }
    assert_eq!(bursts, READS, "one round trip per read");
    let scripts = sent.iter().filter(|l| l.contains("\"EVALSHA\"")).count();
    let answers = sent
        .iter()
        .filter(|l| {
            l.contains("\"GET\"") && l.contains(&format!("{}cache:resp:user:", stack.redis_prefix))
        })
        .count();
    assert_eq!(
        (scripts, answers, sent.len()),
        (READS, READS, 2 * READS),
        "per read, the script and the answer's GET, nothing else: {sent:#?}"
    );
    assert!(
        scripted
            .iter()
            .filter(|l| l.contains(":ratelimit:"))
            .count()
            >= READS,
        "the rate limit is in the script: {scripted:#?}"
    );
    assert!(
        !scripted.iter().any(|l| l.contains("cache:resp:")),
        "no answer goes through the script: {scripted:#?}"
    );

    // Redis forgets its scripts (a restart, `SCRIPT FLUSH`; every user of
    // a script here loads it again when told so): the next read loads the
    // lookup again, and the reads after it are one round trip again.
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async::<()>(&mut stack.redis().await)
        .await
        .expect("SCRIPT FLUSH");
    assert_eq!(
        stack.get(&path, &alice).await.header("x-cache"),
        Some("hit")
    );
    let bursts_before = proxy.bursts();
    for _ in 0..READS {
        let reply = stack.get(&path, &alice).await;
        assert_eq!(reply.header("x-cache"), Some("hit"));
    }
    assert_eq!(
        proxy.bursts() - bursts_before,
        READS,
        "one round trip per read after the scripts were flushed"
    );
    stack.finish().await;
}

/// The query service asks for a credential's cached answer in the view it
/// last saw that credential have; an admin demoted since must never get the
/// admin view's answer (every user's conversations) that way, neither on
/// the read that meets the new role nor on the reads after it.
#[sqlx::test(migrations = "../migrations")]
async fn a_demoted_admin_never_gets_the_admin_views_cached_answer(pool: PgPool) {
    let stack = Stack::start(pool).await;
    let (_, owner) = stack.user("operator").await;
    let (conversation, _) = stack.conversation_with(&owner, 0).await;
    let (admin_id, admin) = stack.user("admin").await;
    let (_, boss) = stack.user("admin").await;
    let lists = |reply: &crate::Reply| {
        reply.body["items"]
            .as_array()
            .expect("a page")
            .iter()
            .any(|item| item["id"] == json!(conversation))
    };
    let mut cached = false;
    for _ in 0..100 {
        let reply = stack.get("/v1/conversations", &admin).await;
        if reply.header("x-cache") == Some("hit") && lists(&reply) {
            cached = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        cached,
        "the admin view's answer, with the other user's conversation, is cached"
    );

    stack
        .ok(
            "user.change_role",
            admin_id,
            json!({"role": "operator"}),
            &boss,
        )
        .await;
    // Without `X-Min-Position`: an answer read before the demotion would
    // do for it (the credential is checked in the command's transaction).
    for read in 0..3 {
        let reply = stack.get("/v1/conversations", &admin).await;
        assert_eq!(reply.status, 200, "read {read}: {:?}", reply.body);
        assert!(
            !lists(&reply),
            "read {read} after the demotion came from the admin view: {:?}",
            reply.body
        );
    }
    stack.finish().await;
}

/// A TCP proxy to the local Redis that counts the bursts its clients send:
/// reads of the client's side, each ended by the client waiting for a reply.
struct BurstCounter {
    url: String,
    bursts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl BurstCounter {
    async fn start() -> BurstCounter {
        use std::sync::atomic::Ordering;
        use tokio::io::AsyncReadExt;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let url = format!(
            "redis://{}",
            listener.local_addr().expect("the proxy's address")
        );
        let bursts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = bursts.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect("127.0.0.1:6379").await else {
                    continue;
                };
                let counted = counted.clone();
                tokio::spawn(async move {
                    let (mut from_client, mut to_client) = client.into_split();
                    let (mut from_server, mut to_server) = server.into_split();
                    let upstream = async {
                        let mut buffer = vec![0u8; 64 * 1024];
                        while let Ok(n) = from_client.read(&mut buffer).await {
                            if n == 0 || to_server.write_all(&buffer[..n]).await.is_err() {
                                break;
                            }
                            counted.fetch_add(1, Ordering::SeqCst);
                        }
                    };
                    let downstream = tokio::io::copy(&mut from_server, &mut to_client);
                    tokio::select! {
                        () = upstream => {}
                        _ = downstream => {}
                    }
                });
            }
        });
        BurstCounter { url, bursts, task }
    }

    fn bursts(&self) -> usize {
        self.bursts.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for BurstCounter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every GET endpoint of the contract, with parameters.
fn paths(conversation: Uuid, incident: Uuid, user: Uuid) -> Vec<String> {
    vec![
        "/v1/me".into(),
        "/v1/users".into(),
        format!("/v1/users/{user}"),
        "/v1/conversations".into(),
        format!("/v1/conversations/{conversation}"),
        format!("/v1/conversations/{conversation}/messages"),
        "/v1/workflows".into(),
        "/v1/executions".into(),
        "/v1/incidents?severity=high".into(),
        format!("/v1/incidents/{incident}"),
        "/v1/runbooks".into(),
        "/v1/audit?resource_type=incident".into(),
        format!("/v1/streams/{incident}/events"),
    ]
}

#[sqlx::test(migrations = "../migrations")]
async fn without_redis_every_endpoint_still_answers_the_same(pool: PgPool) {
    let stack = Stack::start(pool.clone()).await;
    let (admin_id, admin) = stack.user("admin").await;
    let conversation = Uuid::now_v7();
    stack
        .ok(
            "conversation.start",
            conversation,
            json!({"title": "c"}),
            &admin,
        )
        .await;
    stack
        .ok(
            "conversation.append_message",
            conversation,
            json!({"message_id": Uuid::now_v7(), "role": "user", "content": "hello"}),
            &admin,
        )
        .await;
    let incident = Uuid::now_v7();
    let last = stack
        .ok(
            "incident.open",
            incident,
            json!({"title": "t", "description": "d", "severity": "high", "affected_services": ["x"]}),
            &admin,
        )
        .await;
    stack.get_at("/v1/audit", &admin, &last).await;

    // A second query service on the same database whose Redis is a port
    // where nothing listens.
    let dark = Stack::start_with(
        pool,
        Options {
            redis_url: "redis://127.0.0.1:1".into(),
            writers: false,
            rate_limit_per_minute: Some(10),
            ..Options::default()
        },
    )
    .await;
    for path in paths(conversation, incident, admin_id) {
        let normal = stack.get_at(&path, &admin, &last).await;
        let without = dark.get_at(&path, &admin, &last).await;
        assert_eq!(normal.status, 200, "{path}: {:?}", normal.body);
        assert_eq!(
            without.status, 200,
            "{path} without Redis: {:?}",
            without.body
        );
        assert_eq!(strip(normal.body), strip(without.body), "{path}");
    }
    let summary = dark.get("/v1/dashboard/summary", &admin).await;
    assert_eq!(summary.status, 200);
    // The rate limit fails open without Redis (more than its 10 a minute passed).
    assert!(
        dark.metric("copilot_http_rate_limited_total{kind=\"unchecked\"}")
            .await
            >= 10.0
    );
    let ready = dark.get_with("/readyz", None, &[]).await;
    assert_eq!(ready.status, 503, "readiness names the missing dependency");
    assert!(ready.body.to_string().contains("redis"));
    dark.finish().await;
    stack.finish().await;
}

/// Fields that depend on the clock, not on the data.
fn strip(mut body: Value) -> Value {
    if let Some(items) = body.get_mut("items").and_then(Value::as_array_mut) {
        for item in items {
            if let Some(o) = item.as_object_mut() {
                o.remove("last_seen_at");
            }
        }
    }
    body
}
