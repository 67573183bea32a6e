//! Operator commands against a running system: `status`, `projection
//! skip|retry`, `send`.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use eventstore::{EventStore, Position};
use futures_util::StreamExt;
use infra::Settings;
use serde_json::Value;
use uuid::Uuid;

use crate::agent::AgentClient;
use crate::cli::{RetryArgs, SendArgs, SkipArgs};
use crate::up;

/// Counted up to this many events behind.
const BEHIND_LIMIT: i64 = 10_000;

struct ProjectionRow {
    name: String,
    position: Option<Position>,
    holder: Option<String>,
    stopped: Option<String>,
}

pub async fn status(settings: &Settings) -> anyhow::Result<()> {
    let store = up::open_store(settings, up::Role::Projector).await?;
    let mut out = std::io::stdout().lock();
    let head = store.head_position().await?;
    writeln!(out, "log head {head}")?;
    writeln!(out)?;
    writeln!(
        out,
        "{:<12} {:<24} {:>8} {:>10}  {:<24} state",
        "projection", "position", "behind", "lag", "lease holder"
    )?;
    let projections = projections(&store).await?;
    for p in &projections {
        let (behind, lag) = match p.position {
            Some(position) => behind(&store, position).await?,
            None => (0, None),
        };
        let behind = if behind >= BEHIND_LIMIT {
            format!("{BEHIND_LIMIT}+")
        } else {
            behind.to_string()
        };
        let lag = lag.map_or("0".to_owned(), |ms| format!("{:.1}s", ms as f64 / 1000.0));
        writeln!(
            out,
            "{:<12} {:<24} {behind:>8} {lag:>10}  {:<24} {}",
            p.name,
            p.position.map_or("-".to_owned(), |p| p.to_string()),
            p.holder.as_deref().unwrap_or("-"),
            p.stopped
                .as_deref()
                .map_or("running".to_owned(), |s| format!("STOPPED: {s}")),
        )?;
    }
    let parked = parked(&store, &projections).await?;
    if !parked.is_empty() {
        writeln!(out)?;
        writeln!(
            out,
            "parked events (`copilot-data projection skip <name> --position <p>`, or `retry <name>`):"
        )?;
        for (projection, position, event_type, reason) in parked {
            writeln!(
                out,
                "  {projection:<12} {position:<24} {event_type:<28} {reason}"
            )?;
        }
    }
    writeln!(out)?;
    match nats_status(settings).await {
        Ok(lines) => {
            for line in lines {
                writeln!(out, "{line}")?;
            }
        }
        Err(e) => writeln!(out, "nats: UNAVAILABLE: {e:#}")?,
    }
    writeln!(out, "{}", redis_status(settings).await)?;
    Ok(())
}

/// name, checkpoint (generation, tx_id, seq), holder, stopped.
type StatusRow = (
    String,
    Option<i32>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
);

async fn projections(store: &EventStore) -> anyhow::Result<Vec<ProjectionRow>> {
    let rows: Vec<StatusRow> = sqlx::query_as(
        "SELECT coalesce(c.name, s.name), c.generation, c.tx_id, c.seq, s.holder, s.stopped
               FROM projection_checkpoints c FULL JOIN projection_status s ON s.name = c.name
              ORDER BY 1",
    )
    .fetch_all(store.pool())
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(name, generation, tx_id, seq, holder, stopped)| ProjectionRow {
                name,
                position: match (generation, tx_id, seq) {
                    (Some(generation), Some(tx_id), Some(seq)) => Some(Position {
                        generation,
                        tx_id,
                        seq,
                    }),
                    _ => None,
                },
                holder,
                stopped,
            },
        )
        .collect())
}

/// Events after `position` (up to [`BEHIND_LIMIT`]) and the age of the
/// oldest of them in milliseconds.
async fn behind(store: &EventStore, position: Position) -> anyhow::Result<(i64, Option<i64>)> {
    let first = store.read_all_after(position, 1).await?;
    let Some(oldest) = first.events.first() else {
        return Ok((0, None));
    };
    let lag = (chrono::Utc::now() - oldest.recorded_at)
        .num_milliseconds()
        .max(0);
    let behind = store.count_after(position, BEHIND_LIMIT).await?;
    Ok((behind, Some(lag)))
}

/// Parked events a projection has not gone past yet.
async fn parked(
    store: &EventStore,
    projections: &[ProjectionRow],
) -> anyhow::Result<Vec<(String, String, String, String)>> {
    let rows: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT projection, position, event_type, reason FROM projection_errors
          WHERE NOT skipped ORDER BY id",
    )
    .fetch_all(store.pool())
    .await?;
    let mut open = Vec::new();
    for row in rows {
        let checkpoint = projections
            .iter()
            .find(|p| p.name == row.0)
            .and_then(|p| p.position);
        let at: Option<Position> = row.1.parse().ok();
        if at.is_some_and(|at| checkpoint.is_none_or(|c| c < at)) {
            open.push(row);
        }
    }
    Ok(open)
}

async fn nats_status(settings: &Settings) -> anyhow::Result<Vec<String>> {
    let client = tokio::time::timeout(
        Duration::from_secs(5),
        infra::nats::NatsTarget::from(&settings.nats).connect("copilot-data status"),
    )
    .await
    .context("no answer in 5 s")??;
    let js = async_nats::jetstream::new(client);
    let prefix = &settings.nats.prefix;
    let (commands, results) = command_service::stream_names(prefix);
    let mut lines = Vec::new();
    for name in [commands, results, projector::relay::stream_name(prefix)] {
        let mut stream = match js.get_stream(&name).await {
            Ok(stream) => stream,
            Err(e) => {
                lines.push(format!("nats stream {name}: not found ({e})"));
                continue;
            }
        };
        let info = stream.info().await?.clone();
        lines.push(format!(
            "nats stream {name}: {} messages, {} bytes",
            info.state.messages, info.state.bytes
        ));
        let mut consumers = stream.consumers();
        while let Some(consumer) = consumers.next().await {
            let consumer = consumer?;
            lines.push(format!(
                "  consumer {}: {} waiting, {} delivered and not yet acknowledged",
                consumer.name, consumer.num_pending, consumer.num_ack_pending
            ));
        }
    }
    Ok(lines)
}

async fn redis_status(settings: &Settings) -> String {
    let target = infra::redis_conn::RedisTarget::from(&settings.redis);
    let started = Instant::now();
    let pinged = async {
        let client = target.client()?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    match tokio::time::timeout(Duration::from_secs(5), pinged).await {
        Ok(Ok(_)) => format!(
            "redis {}: up ({:.1} ms)",
            target.redacted(),
            started.elapsed().as_secs_f64() * 1000.0
        ),
        Ok(Err(e)) => format!("redis {}: UNAVAILABLE: {e}", target.redacted()),
        Err(_) => format!("redis {}: UNAVAILABLE: no answer in 5 s", target.redacted()),
    }
}

/// The settings were loaded (and checked) before any command runs.
pub fn config_check(settings: &Settings, explain: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if explain {
        writeln!(
            out,
            "Each variable sets one key of the TOML file; <NAME>_FILE reads the value from a file."
        )?;
        for var in infra::config::env::VARS {
            let secret = if var.secret { "  (secret)" } else { "" };
            writeln!(out, "{:<40} {}{secret}", var.name, var.key)?;
        }
        return Ok(());
    }
    let master = up::master_keys(settings)?;
    writeln!(
        out,
        "configuration is valid; the effective settings (secrets masked):"
    )?;
    writeln!(out, "{settings:#?}")?;
    match master {
        Some(keys) => writeln!(
            out,
            "master keys (fingerprints, current first): {}",
            keys.ids().join(", ")
        )?,
        None => writeln!(
            out,
            "WARNING: no master key (COPILOT_MASTER_KEY_FILE): personal data is written in the clear"
        )?,
    }
    Ok(())
}

pub async fn skip(args: &SkipArgs, settings: &Settings) -> anyhow::Result<()> {
    let kind = projector::parked::kind(&args.name)?;
    let store = up::open_store(settings, up::Role::Projector).await?;
    let skipped = projector::parked::skip(&store, kind, args.position).await?;
    writeln!(
        std::io::stdout(),
        "{}: skipped event {} ({}) at {}, parked because: {}\n\
         the projection goes on after it (within a second if a projector is running)",
        kind.name(),
        skipped.event_id,
        skipped.event_type,
        args.position,
        skipped.reason
    )?;
    Ok(())
}

pub async fn retry(args: &RetryArgs, settings: &Settings) -> anyhow::Result<()> {
    let kind = projector::parked::kind(&args.name)?;
    let store = up::open_store(settings, up::Role::Projector).await?;
    projector::parked::retry(&store, kind).await?;
    writeln!(
        std::io::stdout(),
        "{}: released; the projector tries the parked event again within a second",
        kind.name()
    )?;
    Ok(())
}

pub async fn send(args: &SendArgs, settings: &Settings) -> anyhow::Result<()> {
    let payload: Value = serde_json::from_str(&args.json).context("--json is not JSON")?;
    let token = std::env::var("COPILOT_TOKEN").unwrap_or_default();
    let client = infra::nats::NatsTarget::from(&settings.nats)
        .connect("copilot-data send")
        .await
        .context("connecting to NATS")?;
    let agent = AgentClient {
        client,
        prefix: settings.nats.prefix.clone(),
    };
    let envelope = serde_json::json!({
        "command_id": args.command_id.unwrap_or_else(Uuid::now_v7),
        "aggregate_id": args.aggregate.unwrap_or_else(Uuid::now_v7),
        "payload": payload,
    });
    let result = agent.send(&args.command_type, &envelope, &token).await?;
    writeln!(
        std::io::stdout(),
        "{}",
        serde_json::to_string_pretty(&result)?
    )?;
    if result.status != command_service::Status::Accepted {
        bail!("{}: {}", args.command_type, result.status.as_str());
    }
    Ok(())
}

/// The data keys of the database owner's view (`keys status`).
async fn owner_keys(settings: &Settings) -> anyhow::Result<eventstore::data_keys::DataKeys> {
    let master = up::master_keys(settings)?
        .context("no master key is configured (COPILOT_MASTER_KEY or COPILOT_MASTER_KEY_FILE)")?;
    let pool = infra::postgres::prepare(&settings.database).await?;
    Ok(eventstore::data_keys::DataKeys::new(pool, master))
}

/// `copilot-data keys status`.
pub async fn keys_status(settings: &Settings) -> anyhow::Result<()> {
    let keys = owner_keys(settings).await?;
    let counts = keys.counts().await?;
    let configured = keys.master().ids();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "master keys configured (current first): {}",
        configured.join(", ")
    )?;
    for (id, n) in &counts.by_master {
        let note = if id == keys.master().current_id() {
            "current"
        } else if configured.contains(id) {
            "to rotate"
        } else {
            "NOT CONFIGURED: these keys cannot be opened"
        };
        writeln!(out, "  {id}: {n} data keys ({note})")?;
    }
    writeln!(out, "destroyed (users forgotten): {}", counts.destroyed)?;
    Ok(())
}

/// `copilot-data keys rotate`.
pub async fn keys_rotate(settings: &Settings) -> anyhow::Result<()> {
    let keys = owner_keys(settings).await?;
    let started = Instant::now();
    let done = keys
        .rotate(|n| tracing::info!(data_keys = n, "re-wrapped so far"))
        .await?;
    writeln!(
        std::io::stdout(),
        "re-wrapped {} data keys and {} TOTP seeds under {} in {:.1} s",
        done.data_keys,
        done.secrets,
        keys.master().current_id(),
        started.elapsed().as_secs_f64()
    )?;
    Ok(())
}
