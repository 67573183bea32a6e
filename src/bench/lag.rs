//! `bench lag`: how soon after a command is acknowledged its effect can be
//! read, with the whole system in this process (vector projection on) and
//! agents sending the demo's mix at 10 %, 50 % and 90 % of the rate the
//! command service sustains for that mix.
//!
//! The sustainable rate is measured first, on a stack of its own (the
//! vector backlog it leaves would weigh on what follows). Then, on a fresh
//! stack, a prober appends a message to its own conversation every 100 ms
//! and times, from the acknowledgement: the query API answering
//! `GET /v1/conversations/{id}/messages` with `X-Min-Position` set to the
//! command's position (the relational projection has it); the event's
//! entry appearing in the Redis projection's `metrics:events` stream; and
//! `POST /v1/search` answering at that position (the vector projection has
//! embedded it). Each load level is compared with the same figures at no
//! load in the same run; the vector projection's backlog at the end of each
//! level is printed beside them.

use std::str::FromStr as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use eventstore::Position;
use infra::Settings;
use serde_json::json;
use tokio::task::JoinSet;
use uuid::Uuid;

use super::report::{Figure, Latencies};
use super::stack::Stack;
use crate::agent::AgentClient;
use crate::cli::BenchArgs;

/// Simulated agents sending the mix (a third of them only converse).
const AGENTS: usize = 12;
const LEVELS: [u32; 3] = [10, 50, 90];
const PROBE_EVERY: Duration = Duration::from_millis(100);
/// How long a probe waits for an effect before it counts as not seen.
const WAIT: Duration = Duration::from_secs(30);
const MODELS: [&str; 3] = ["relational", "redis", "search"];

pub async fn run(args: &BenchArgs, settings: &Settings) -> anyhow::Result<Vec<Figure>> {
    let duration = Duration::from_secs_f64(args.seconds.max(1.0));
    let progress = indicatif::ProgressBar::new_spinner();
    progress.enable_steady_tick(Duration::from_millis(200));

    progress.set_message("the sustainable rate of the demo mix");
    let sustainable = {
        let stack = Stack::start(settings, args.keep, true).await?;
        let measured = load(
            stack.agent.clone(),
            stack.bootstrap.clone(),
            None,
            tokio::time::sleep(duration),
        )
        .await;
        stack.finish().await?;
        measured?
    };

    let stack = Stack::start(settings, args.keep, true).await?;
    let measured = levels(&stack, sustainable, duration, &progress).await;
    progress.finish_and_clear();
    stack.finish().await?;
    let mut figures = vec![Figure::alone(
        "lag.sustainable.commands_per_s",
        sustainable,
        "commands/s",
    )];
    figures.extend(measured?);
    Ok(figures)
}

/// Commands per second the demo's mix ran at, at `rate` (`None`:
/// unpaced), from when its users exist until `until`.
async fn load(
    agent: AgentClient,
    bootstrap: String,
    rate: Option<f64>,
    until: impl std::future::Future<Output = ()>,
) -> anyhow::Result<f64> {
    let started = std::sync::Mutex::new(None);
    let tally = crate::demo::mix(
        agent,
        &bootstrap,
        rate,
        AGENTS,
        |_| {
            if let Ok(mut started) = started.lock() {
                *started = Some(Instant::now());
            }
            Ok(())
        },
        until,
    )
    .await?;
    let elapsed = started
        .lock()
        .ok()
        .and_then(|s| *s)
        .context("the load ended before it started")?
        .elapsed();
    let answered: u64 = tally.values().sum();
    Ok(answered as f64 / elapsed.as_secs_f64().max(1e-9))
}

/// What one level measured.
struct Level {
    name: String,
    rate: f64,
    seen: [Latencies; 3],
    unseen: [usize; 3],
    vector_backlog: i64,
}

async fn levels(
    stack: &Stack,
    sustainable: f64,
    duration: Duration,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<Vec<Figure>> {
    let prober = Prober::new(stack).await?;
    let mut measured = Vec::new();
    for percent in std::iter::once(0).chain(LEVELS) {
        let name = if percent == 0 {
            "idle".to_string()
        } else {
            format!("load{percent}")
        };
        progress.set_message(format!("{name}: probing"));
        let rate = sustainable * f64::from(percent) / 100.0;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let background = (percent > 0).then(|| {
            tokio::spawn(load(
                stack.agent.clone(),
                stack.bootstrap.clone(),
                Some(rate),
                async {
                    let _ = stopped.await;
                },
            ))
        });
        // The agents sign up first: probe once they send the mix.
        if background.is_some() {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let (seen, unseen, sent) = prober.probe(duration).await?;
        let _ = stop.send(());
        let achieved = match background {
            Some(task) => task.await.context("the load's task")??,
            None => sent as f64 / duration.as_secs_f64(),
        };
        let vector_backlog = backlog(&stack.store, "vectors").await?;
        measured.push(Level {
            name,
            rate: achieved,
            seen,
            unseen,
            vector_backlog,
        });
    }
    Ok(report(measured))
}

fn report(mut measured: Vec<Level>) -> Vec<Figure> {
    let mut figures = Vec::new();
    let mut idle: Vec<(String, f64)> = Vec::new();
    for level in &mut measured {
        let name = level.name.clone();
        figures.push(Figure::alone(
            format!("lag.{name}.commands_per_s"),
            level.rate,
            "commands/s",
        ));
        for (m, model) in MODELS.iter().enumerate() {
            for (q, label) in [(0.5, "p50"), (0.99, "p99"), (1.0, "max")] {
                let figure = format!("lag.{name}.{model}.{label}");
                let value = level.seen[m].quantile_ms(q);
                let baseline = idle
                    .iter()
                    .find(|(n, _)| n == &format!("{model}.{label}"))
                    .map(|(_, v)| *v);
                figures.push(match baseline {
                    Some(base) => Figure::compared(
                        figure,
                        value,
                        "ms",
                        format!("lag.idle.{model}.{label}"),
                        base,
                    ),
                    None => {
                        idle.push((format!("{model}.{label}"), value));
                        Figure::alone(figure, value, "ms")
                    }
                });
            }
            if level.unseen[m] > 0 {
                figures.push(Figure::alone(
                    format!("lag.{name}.{model}.unseen_after_{}s", WAIT.as_secs()),
                    level.unseen[m] as f64,
                    "probes",
                ));
            }
        }
        figures.push(Figure::alone(
            format!("lag.{name}.vectors.backlog"),
            level.vector_backlog as f64,
            "events",
        ));
    }
    figures
}

/// Events after a projection's checkpoint.
async fn backlog(store: &eventstore::EventStore, projection: &str) -> anyhow::Result<i64> {
    let at = eventstore::checkpoint::position(store.pool(), projection).await?;
    Ok(store.count_after(at, i64::MAX).await?)
}

/// Appends a message every [`PROBE_EVERY`] and times its three effects.
struct Prober {
    agent: AgentClient,
    token: String,
    conversation: Uuid,
    http: reqwest::Client,
    base: String,
    redis: redis::aio::ConnectionManager,
    events_key: String,
}

impl Prober {
    async fn new(stack: &Stack) -> anyhow::Result<Arc<Prober>> {
        let agent = stack.agent.clone();
        let token = agent.sign_up(&stack.bootstrap, "operator").await?;
        let conversation = Uuid::now_v7();
        let started = agent
            .command(
                "conversation.start",
                conversation,
                json!({"title": "lag probe"}),
                &token,
            )
            .await?;
        anyhow::ensure!(
            started.position.is_some(),
            "the probe's conversation did not start: {:?}",
            started.error
        );
        Ok(Arc::new(Prober {
            agent,
            token,
            conversation,
            http: reqwest::Client::builder().build()?,
            base: stack.base.clone(),
            redis: redis::Client::open(stack.redis_url.as_str())?
                .get_connection_manager()
                .await?,
            events_key: format!("{}metrics:events", stack.redis_prefix),
        }))
    }

    /// Probes for `duration`; each probe runs on its own, so a slow effect
    /// does not delay the next probe. Returns the times seen, how many
    /// effects were not seen within [`WAIT`], and how many probes were sent.
    async fn probe(
        self: &Arc<Self>,
        duration: Duration,
    ) -> anyhow::Result<([Latencies; 3], [usize; 3], u64)> {
        let deadline = Instant::now() + duration;
        let mut tick = tokio::time::interval(PROBE_EVERY);
        let mut probes = JoinSet::new();
        let mut sent = 0u64;
        while Instant::now() < deadline {
            tick.tick().await;
            let prober = Arc::clone(self);
            probes.spawn(async move { prober.once(sent).await });
            sent += 1;
        }
        let mut seen: [Latencies; 3] = Default::default();
        let mut unseen = [0usize; 3];
        while let Some(done) = probes.join_next().await {
            for (m, effect) in done.context("a probe's task")??.into_iter().enumerate() {
                match effect {
                    Some(time) => seen[m].push(time),
                    None => unseen[m] += 1,
                }
            }
        }
        Ok((seen, unseen, sent))
    }

    /// One message, and when each effect became visible after its
    /// acknowledgement (`None`: not within [`WAIT`]).
    async fn once(&self, n: u64) -> anyhow::Result<[Option<Duration>; 3]> {
        let result = self
            .agent
            .command(
                "conversation.append_message",
                self.conversation,
                json!({"message_id": Uuid::now_v7(), "role": "user",
                       "content": format!("probe {n}: is the checkout deploy healthy?"), "tokens_in": 12}),
                &self.token,
            )
            .await?;
        let acknowledged = Instant::now();
        let position = result
            .position
            .as_deref()
            .context("a probe's message was not accepted")?;
        let at = Position::from_str(position)?;
        let (relational, redis, search) = tokio::join!(
            self.read(
                self.http.get(format!(
                    "{}/v1/conversations/{}/messages?limit=1",
                    self.base, self.conversation
                )),
                position,
                acknowledged,
            ),
            self.in_redis(at, acknowledged),
            self.read(
                self.http.post(format!("{}/v1/search", self.base)).json(
                    &json!({"collection": "conversations", "vector": unit_vector(),
                                  "filter": {"conversation_id": self.conversation}, "limit": 1})
                ),
                position,
                acknowledged,
            ),
        );
        Ok([relational?, redis?, search?])
    }

    /// The time until the query API answers `request` at `position` or later.
    async fn read(
        &self,
        request: reqwest::RequestBuilder,
        position: &str,
        acknowledged: Instant,
    ) -> anyhow::Result<Option<Duration>> {
        let reply = request
            .bearer_auth(&self.token)
            .header("X-Min-Position", position)
            .header("X-Wait-Ms", WAIT.as_millis().to_string())
            .header("Cache-Control", "no-cache")
            .send()
            .await?;
        let status = reply.status();
        let _ = reply.bytes().await?;
        match status.as_u16() {
            200 => Ok(Some(acknowledged.elapsed())),
            503 => Ok(None),
            other => anyhow::bail!("a probe's read answered {other}"),
        }
    }

    /// The time until the event's entry is in the Redis projection's
    /// event stream (its id is the event's position).
    async fn in_redis(
        &self,
        at: Position,
        acknowledged: Instant,
    ) -> anyhow::Result<Option<Duration>> {
        let id = format!("{}-{}", at.tx_id, at.seq);
        let mut conn = self.redis.clone();
        while acknowledged.elapsed() < WAIT {
            let entries: redis::Value = redis::cmd("XRANGE")
                .arg(&self.events_key)
                .arg(&id)
                .arg(&id)
                .query_async(&mut conn)
                .await?;
            if matches!(&entries, redis::Value::Array(found) if !found.is_empty()) {
                return Ok(Some(acknowledged.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(None)
    }
}

fn unit_vector() -> Vec<f32> {
    let mut v = vec![0.0; 384];
    v[0] = 1.0;
    v
}
