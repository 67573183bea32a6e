//! `bench commands`: 32 agents sending `conversation.append_message` over
//! request/reply to an in-process command service, beside a bare NATS echo
//! responder and bare single-row INSERTs at the same concurrency.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use command_service::{ServiceConfig, Status};
use eventstore::{EventStore, StoreOptions};
use futures_util::StreamExt;
use infra::Settings;
use secrecy::SecretString;
use serde_json::json;
use uuid::Uuid;

use super::append::{bare_writer, create_bare_table, drive};
use super::cpu::{CpuPerOp, CpuTimes};
use super::report::{Figure, Latencies};
use super::scratch::ScratchDb;
use crate::agent::AgentClient;
use crate::cli::BenchArgs;

const AGENTS: usize = 32;

pub async fn run(args: &BenchArgs, settings: &Settings) -> anyhow::Result<Vec<Figure>> {
    let duration = Duration::from_secs_f64(args.seconds.max(0.1));
    let (scratch, pool) = ScratchDb::create(&settings.database, 60, args.keep).await?;
    create_bare_table(&pool).await?;
    let prefix = format!("bench{}", &Uuid::new_v4().simple().to_string()[..8]);
    let bootstrap = format!("bench-{}", Uuid::new_v4());
    let store = EventStore::connect(pool.clone(), StoreOptions::default()).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = ServiceConfig {
        nats_url: settings.nats.url.clone(),
        prefix: prefix.clone(),
        max_message_bytes: settings.commands.max_message_bytes,
        embedding_dimension: settings.commands.embedding_dimension,
        bootstrap_token: Some(SecretString::from(bootstrap.clone())),
        rate_limit: None,
        max_in_flight: 256,
        auth_epochs: None,
    };
    let service = tokio::spawn(command_service::run(config, store, async move {
        let _ = stopped.await;
    }));
    let client = async_nats::connect(&settings.nats.url)
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

    progress.set_message(format!(
        "{AGENTS} agents sending conversation.append_message"
    ));
    let agent = Arc::new(agent);
    let batches_before = BatchTotals::now();
    let cpu_before = CpuTimes::now();
    let mut commands = drive(AGENTS, duration, |i| {
        let agent = Arc::clone(&agent);
        let token = token.clone();
        let conversation = conversations[i];
        async move {
            let deadline = Instant::now() + duration;
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
    .await?;
    let batches = BatchTotals::now().since(&batches_before);
    let commands_cpu = cpu_per_op(cpu_before, commands.events);

    progress.set_message("bare NATS echo");
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
    let payload: bytes::Bytes = domain::codec::encode(&json!({"command_id": Uuid::now_v7(), "aggregate_id": Uuid::now_v7(), "payload": {"content": "x".repeat(120)}}))?.into();
    let mut echoes = drive(AGENTS, duration, |_| {
        let client = client.clone();
        let subject = echo_subject.clone();
        let payload = payload.clone();
        async move {
            let deadline = Instant::now() + duration;
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
    })
    .await?;
    echo.abort();

    progress.set_message("bare single-row INSERTs");
    let cpu_before = CpuTimes::now();
    let inserts = drive(AGENTS, duration, |_| bare_writer(pool.clone(), 1, duration)).await?;
    let inserts_cpu = cpu_per_op(cpu_before, inserts.events);
    progress.finish_and_clear();

    let _ = stop.send(());
    let _ = service.await;
    let js = async_nats::jetstream::new(client);
    let (commands_stream, results_stream) = command_service::stream_names(&prefix);
    let _ = js.delete_stream(commands_stream).await;
    let _ = js.delete_stream(results_stream).await;
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
    if let (Some(commands), Some(inserts)) = (commands_cpu, inserts_cpu) {
        figures.push(Figure::compared(
            "commands.append_message.w32.machine_cpu",
            commands.machine_us,
            "us/op",
            "bare_insert.w32.e1.machine_cpu",
            inserts.machine_us,
        ));
        figures.push(Figure::compared(
            "commands.append_message.w32.process_cpu",
            commands.process_us,
            "us/op",
            "bare_insert.w32.e1.process_cpu",
            inserts.process_us,
        ));
    }
    figures.push(Figure::alone(
        "commands.append_message.w32.appends_per_commit",
        batches.appends,
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
    Ok(figures)
}

/// CPU per operation since `before`: of the whole machine (the service,
/// PostgreSQL, NATS and the agents or writers) and of this process.
fn cpu_per_op(before: Option<CpuTimes>, ops: u64) -> Option<CpuPerOp> {
    before?.per_op(&CpuTimes::now()?, ops)
}

/// The counters behind the batch figures, as they stand at one moment.
struct BatchTotals {
    /// Sum and count of the group commit's batch-size histogram.
    appends: (f64, u64),
    /// Sum (commands preflighted) and count (queries) of the preflight's.
    preflights: (f64, u64),
    /// Commands accepted on the fast path.
    fast: u64,
}

/// What happened between two [`BatchTotals`]: mean appends per group
/// commit, mean commands per preflight query, and the share of commands
/// accepted on the fast path (a session verified before, checked again by
/// the append); every other command had a preflight.
struct BatchMeans {
    appends: f64,
    preflights: f64,
    fast_share: f64,
}

impl BatchTotals {
    fn now() -> Self {
        let appends = eventstore::metrics::append_batch_size();
        let metrics = command_service::metrics::metrics();
        let preflights = &metrics.preflight_batch_size;
        BatchTotals {
            appends: (appends.get_sample_sum(), appends.get_sample_count()),
            preflights: (preflights.get_sample_sum(), preflights.get_sample_count()),
            fast: metrics.fast_path.with_label_values(&["accepted"]).get(),
        }
    }

    fn since(&self, before: &BatchTotals) -> BatchMeans {
        let mean = |(sum, count): (f64, u64), (sum0, count0): (f64, u64)| {
            let count = count.saturating_sub(count0);
            if count == 0 {
                0.0
            } else {
                (sum - sum0) / count as f64
            }
        };
        let fast = self.fast.saturating_sub(before.fast) as f64;
        let preflighted = self.preflights.0 - before.preflights.0;
        BatchMeans {
            appends: mean(self.appends, before.appends),
            preflights: mean(self.preflights, before.preflights),
            fast_share: fast / (fast + preflighted).max(1.0),
        }
    }
}
