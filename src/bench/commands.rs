//! `bench commands`: 32 agents sending `conversation.append_message` over
//! request/reply to an in-process command service, beside a bare NATS echo
//! responder, bare single-row INSERTs at the same concurrency, and three
//! floors over the same round trip (responders that only store each
//! request: as a bare row, by the store's append statement, or through the
//! store's append call; see `floor`).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use command_service::Status;
use eventstore::EventStore;
use futures_util::StreamExt;
use infra::Settings;
use serde_json::json;
use uuid::Uuid;

use super::append::{bare_writer, create_bare_table, drive, RunResult};
use super::cpu::{CpuSpent, CpuTimes};
use super::floor;
use super::report::{Figure, Latencies};
use super::scratch::{self, Scratch, ScratchDb};
use crate::agent::AgentClient;
use crate::cli::BenchArgs;

const AGENTS: usize = 32;
/// How many turns each workload takes (see `run`).
const TURNS: u32 = 5;

pub async fn run(args: &BenchArgs, settings: &Settings) -> anyhow::Result<Vec<Figure>> {
    let duration = Duration::from_secs_f64(args.seconds.max(0.1));
    let (scratch, pool) = ScratchDb::create(&settings.database, 60, args.keep).await?;
    create_bare_table(&pool).await?;
    let prefix = format!("bench{}", &Uuid::new_v4().simple().to_string()[..8]);
    let streams = Scratch::streams(&settings.nats.url, &prefix);
    let bootstrap = format!("bench-{}", Uuid::new_v4());
    let store = EventStore::connect(pool.clone(), crate::up::store_options(settings)?).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = super::stack::service_config(settings, &prefix, &bootstrap, None);
    scratch::spawn_service(command_service::run(config, store.clone(), async move {
        let _ = stopped.await;
    }));
    let client = infra::nats::NatsTarget::from(&settings.nats)
        .connect("copilot-data bench")
        .await
        .context("connecting to NATS")?;
    let agent = AgentClient {
        client: client.clone(),
        prefix: prefix.clone(),
    };
    agent.wait_until_answering().await?;

    let progress = indicatif::ProgressBar::new_spinner();
    progress.enable_steady_tick(Duration::from_millis(200));
    progress.set_message("signing in and starting conversations");
    let token = agent.sign_up(&bootstrap, "operator").await?;
    let mut conversations = Vec::new();
    for _ in 0..AGENTS {
        let id = Uuid::now_v7();
        let started = agent
            .command("conversation.start", id, json!({}), &token)
            .await?;
        anyhow::ensure!(
            started.status == Status::Accepted,
            "cannot start a conversation: {:?}",
            started.error
        );
        conversations.push(id);
    }

    let agent = Arc::new(agent);
    let echo_subject = format!("{prefix}.echo");
    let mut echo_sub = client.subscribe(echo_subject.clone()).await?;
    let echo_client = client.clone();
    let echo = tokio::spawn(async move {
        while let Some(message) = echo_sub.next().await {
            if let Some(reply) = message.reply {
                let _ = echo_client.publish(reply, message.payload).await;
            }
        }
    });
    let [floor_subject, set_floor_subject, store_floor_subject] =
        ["floor", "set_floor", "store_floor"].map(|name| format!("{prefix}.{name}"));
    let floor =
        floor::spawn_grouped_insert(client.clone(), floor_subject.clone(), pool.clone()).await?;
    let (set_floor, set_floor_groups) =
        floor::spawn_set_append_loop(client.clone(), set_floor_subject.clone(), store.clone())
            .await?;
    let store_floor = floor::spawn_store_append(
        client.clone(),
        store_floor_subject.clone(),
        store.clone(),
        AGENTS,
    )
    .await?;
    let payload: bytes::Bytes = domain::codec::encode(&json!({"command_id": Uuid::now_v7(), "aggregate_id": Uuid::now_v7(), "payload": {"content": "x".repeat(120)}}))?.into();

    // The workloads take turns, so a machine whose speed drifts during the
    // run (a shared host does) weighs on each of them alike instead of on
    // whichever one it happened to overlap.
    let length = duration / TURNS;
    let mut commands = RunResult::default();
    let mut inserts = RunResult::default();
    let (mut commands_cpu, mut inserts_cpu) =
        (Some(CpuSpent::default()), Some(CpuSpent::default()));
    // The responders the same requests go to, each its own workload.
    let mut responders = [
        Responder::new(echo_subject, "bare NATS echo"),
        Responder::new(floor_subject, "NATS requests group-committed as bare rows"),
        Responder::new(
            set_floor_subject,
            "NATS requests group-committed by the store's batch write, in one loop",
        ),
        Responder::new(
            store_floor_subject,
            "NATS requests appended through the event store",
        ),
    ];
    let mut batches = BatchTotals::default();
    let mut store_batches = BatchTotals::default();
    for turn in 1..=TURNS {
        progress.set_message(format!(
            "turn {turn}/{TURNS}: {AGENTS} agents sending conversation.append_message"
        ));
        let before = BatchTotals::now();
        commands.absorb(
            measured(
                &mut commands_cpu,
                send_messages(&agent, &token, &conversations, length),
            )
            .await?,
        );
        batches.add(&before, &BatchTotals::now());

        progress.set_message(format!("turn {turn}/{TURNS}: bare single-row INSERTs"));
        inserts.absorb(
            measured(
                &mut inserts_cpu,
                drive(AGENTS, length, |_| bare_writer(pool.clone(), 1, length)),
            )
            .await?,
        );

        for responder in &mut responders {
            progress.set_message(format!("turn {turn}/{TURNS}: {}", responder.label));
            let before = BatchTotals::now();
            responder.run.absorb(
                measured(
                    &mut responder.cpu,
                    drive(AGENTS, length, |_| {
                        request_echoes(
                            client.clone(),
                            responder.subject.clone(),
                            payload.clone(),
                            length,
                        )
                    }),
                )
                .await?,
            );
            // Only the store's own group commit moves these counters, so
            // they gain only in the store floor's turns.
            store_batches.add(&before, &BatchTotals::now());
        }
    }
    echo.abort();
    floor.abort();
    set_floor.abort();
    store_floor.abort();
    progress.finish_and_clear();
    let batches = batches.means();
    let store_batches = store_batches.means();
    let commands_cpu = commands_cpu.and_then(|spent| spent.per_op(commands.events));
    let inserts_cpu = inserts_cpu.and_then(|spent| spent.per_op(inserts.events));
    let [echoes, floors, set_floors, store_floors] = responders.map(Responder::finish);
    let (mut echoes, echoes_cpu) = echoes;
    let (floors, floors_cpu) = floors;
    let (set_floors, set_floors_cpu) = set_floors;
    let (store_floors, store_floors_cpu) = store_floors;

    let _ = stop.send(());
    scratch::end_services(Duration::from_secs(60)).await;
    streams.remove().await?;
    scratch.drop_db(pool).await?;

    let rate = commands.events_per_s();
    let mut figures = vec![
        Figure::compared(
            "commands.append_message.w32.per_s",
            rate,
            "cmds/s",
            "nats_echo.w32.per_s",
            echoes.events_per_s(),
        ),
        Figure::compared(
            "commands.append_message.w32.per_s",
            rate,
            "cmds/s",
            "bare_insert.w32.e1.per_s",
            inserts.events_per_s(),
        ),
        Figure::compared(
            "commands.append_message.w32.per_s",
            rate,
            "cmds/s",
            "nats_grouped_insert.w32.per_s",
            floors.events_per_s(),
        ),
        Figure::compared(
            "commands.append_message.w32.per_s",
            rate,
            "cmds/s",
            "nats_set_append_loop.w32.per_s",
            set_floors.events_per_s(),
        ),
        Figure::compared(
            "commands.append_message.w32.per_s",
            rate,
            "cmds/s",
            "nats_store_append.w32.per_s",
            store_floors.events_per_s(),
        ),
        Figure::compared(
            "nats_store_append.w32.per_s",
            store_floors.events_per_s(),
            "ops/s",
            "bare_insert.w32.e1.per_s",
            inserts.events_per_s(),
        ),
        Figure::compared(
            "nats_set_append_loop.w32.per_s",
            set_floors.events_per_s(),
            "ops/s",
            "bare_insert.w32.e1.per_s",
            inserts.events_per_s(),
        ),
        // The floor against the bare INSERT: what a command service that
        // did no work of its own could reach here at best.
        Figure::compared(
            "nats_grouped_insert.w32.per_s",
            floors.events_per_s(),
            "ops/s",
            "bare_insert.w32.e1.per_s",
            inserts.events_per_s(),
        ),
    ];
    for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
        figures.push(Figure::compared(
            format!("commands.append_message.w32.{name}"),
            commands.latencies.quantile_ms(q),
            "ms",
            format!("nats_echo.w32.{name}"),
            echoes.latencies.quantile_ms(q),
        ));
    }
    // Against the bare INSERT, and against the round trip alone (the echo):
    // what every command pays before the service does anything, and the
    // part of `process_cpu` that is the agents' and the NATS client's.
    for (baseline, spent) in [
        ("bare_insert.w32.e1", inserts_cpu),
        ("nats_echo.w32", echoes_cpu),
        ("nats_grouped_insert.w32", floors_cpu),
        ("nats_set_append_loop.w32", set_floors_cpu),
        ("nats_store_append.w32", store_floors_cpu),
    ] {
        let (Some(commands), Some(spent)) = (commands_cpu, spent) else {
            continue;
        };
        for (name, ours, theirs) in [
            ("machine_cpu", commands.machine_us, spent.machine_us),
            ("process_cpu", commands.process_us, spent.process_us),
        ] {
            figures.push(Figure::compared(
                format!("commands.append_message.w32.{name}"),
                ours,
                "us/op",
                format!("{baseline}.{name}"),
                theirs,
            ));
        }
    }
    for (name, floor) in [
        ("nats_grouped_insert.w32", floors_cpu),
        ("nats_set_append_loop.w32", set_floors_cpu),
        ("nats_store_append.w32", store_floors_cpu),
    ] {
        if let (Some(floor), Some(insert)) = (floor, inserts_cpu) {
            figures.push(Figure::compared(
                format!("{name}.machine_cpu"),
                floor.machine_us,
                "us/op",
                "bare_insert.w32.e1.machine_cpu",
                insert.machine_us,
            ));
        }
    }
    figures.push(Figure::alone(
        "commands.append_message.w32.appends_per_commit",
        batches.appends,
        "appends",
    ));
    figures.push(Figure::alone(
        "nats_set_append_loop.w32.appends_per_commit",
        set_floor_groups.mean(),
        "appends",
    ));
    figures.push(Figure::alone(
        "nats_store_append.w32.appends_per_commit",
        store_batches.appends,
        "appends",
    ));
    figures.push(Figure::alone(
        "commands.append_message.w32.preflights_per_query",
        batches.preflights,
        "preflights",
    ));
    figures.push(Figure::alone(
        "commands.append_message.w32.fast_path_share",
        batches.fast_share,
        "share",
    ));
    figures.push(Figure::alone(
        "commands.append_message.w32.lane_share",
        batches.lane_share,
        "share",
    ));
    Ok(figures)
}

/// A workload of requests to one responder: what its turns measured.
struct Responder {
    subject: String,
    label: &'static str,
    run: RunResult,
    cpu: Option<CpuSpent>,
}

impl Responder {
    fn new(subject: String, label: &'static str) -> Self {
        Responder {
            subject,
            label,
            run: RunResult::default(),
            cpu: Some(CpuSpent::default()),
        }
    }

    /// The turns together, and the CPU per request (if `/proc` was read).
    fn finish(self) -> (RunResult, Option<super::cpu::CpuPerOp>) {
        let cpu = self.cpu.and_then(|spent| spent.per_op(self.run.events));
        (self.run, cpu)
    }
}

/// Runs `phase` and adds the CPU it spent to `spent` (which becomes `None`
/// if `/proc` cannot be read).
async fn measured(
    spent: &mut Option<CpuSpent>,
    phase: impl Future<Output = anyhow::Result<RunResult>>,
) -> anyhow::Result<RunResult> {
    let before = CpuTimes::now();
    let run = phase.await?;
    match (spent.as_mut(), before, CpuTimes::now()) {
        (Some(total), Some(before), Some(after)) => total.add(&before, &after),
        _ => *spent = None,
    }
    Ok(run)
}

/// One turn of the agents: each sends `conversation.append_message` to its
/// own conversation, one after another, for `turn`.
async fn send_messages(
    agent: &Arc<AgentClient>,
    token: &str,
    conversations: &[Uuid],
    turn: Duration,
) -> anyhow::Result<RunResult> {
    drive(AGENTS, turn, |i| {
        let agent = Arc::clone(agent);
        let token = token.to_owned();
        let conversation = conversations[i];
        async move {
            let deadline = Instant::now() + turn;
            let mut latencies = Latencies::default();
            let mut accepted = 0u64;
            while Instant::now() < deadline {
                let body = json!({"command_id": Uuid::now_v7(), "aggregate_id": conversation, "payload": {
                    "message_id": Uuid::now_v7(), "role": "assistant",
                    "content": "The deploy failed because a migration locked the orders table; I rolled it back.",
                    "tokens_in": 812, "tokens_out": 164, "cost_usd": "0.00412"}});
                let started = Instant::now();
                let result = agent.send("conversation.append_message", &body, &token).await?;
                latencies.push(started.elapsed());
                accepted += u64::from(result.status == Status::Accepted);
            }
            Ok((accepted, latencies))
        }
    })
    .await
}

/// One writer of the echo baseline: requests of a command's size to a
/// responder that sends each one back, for `turn`.
async fn request_echoes(
    client: async_nats::Client,
    subject: String,
    payload: bytes::Bytes,
    turn: Duration,
) -> anyhow::Result<(u64, Latencies)> {
    let deadline = Instant::now() + turn;
    let mut latencies = Latencies::default();
    let mut n = 0u64;
    while Instant::now() < deadline {
        let started = Instant::now();
        client.request(subject.clone(), payload.clone()).await?;
        latencies.push(started.elapsed());
        n += 1;
    }
    Ok((n, latencies))
}

/// The counters behind the batch figures: as they stand at one moment, or
/// what they gained over the turns of a phase.
#[derive(Default)]
struct BatchTotals {
    /// Sum and count of the group commit's batch-size histogram.
    appends: (f64, u64),
    /// Sum (commands preflighted) and count (queries) of the preflight's.
    preflights: (f64, u64),
    /// Commands accepted on the fast path, in a task of their own or in
    /// the request/reply lane.
    fast: u64,
    /// Of those, the lane's.
    lane: u64,
}

/// Mean appends per group commit, mean commands per preflight query, and
/// the share of commands accepted on the fast path (a session verified
/// before, checked again by the append; every other command had a
/// preflight), and in the request/reply lane (decided as they arrived,
/// appended by the lane's loop).
struct BatchMeans {
    appends: f64,
    preflights: f64,
    fast_share: f64,
    lane_share: f64,
}

impl BatchTotals {
    fn now() -> Self {
        let appends = eventstore::metrics::append_batch_size();
        let metrics = command_service::metrics::metrics();
        let preflights = &metrics.preflight_batch_size;
        let lane = metrics.fast_path.with_label_values(&["lane"]).get();
        BatchTotals {
            appends: (appends.get_sample_sum(), appends.get_sample_count()),
            preflights: (preflights.get_sample_sum(), preflights.get_sample_count()),
            fast: metrics.fast_path.with_label_values(&["accepted"]).get() + lane,
            lane,
        }
    }

    /// Adds what the counters gained between `before` and `after`.
    fn add(&mut self, before: &BatchTotals, after: &BatchTotals) {
        let gain =
            |total: &mut (f64, u64), (sum0, count0): (f64, u64), (sum, count): (f64, u64)| {
                total.0 += sum - sum0;
                total.1 += count.saturating_sub(count0);
            };
        gain(&mut self.appends, before.appends, after.appends);
        gain(&mut self.preflights, before.preflights, after.preflights);
        self.fast += after.fast.saturating_sub(before.fast);
        self.lane += after.lane.saturating_sub(before.lane);
    }

    fn means(&self) -> BatchMeans {
        let mean = |(sum, count): (f64, u64)| if count == 0 { 0.0 } else { sum / count as f64 };
        let fast = self.fast as f64;
        let commands = (fast + self.preflights.0).max(1.0);
        BatchMeans {
            appends: mean(self.appends),
            preflights: mean(self.preflights),
            fast_share: fast / commands,
            lane_share: self.lane as f64 / commands,
        }
    }
}
