//! Operations on the read models: replay, verify, audit pruning.

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context};
use eventstore::EventStore;
use indicatif::{ProgressBar, ProgressStyle};
use infra::Settings;
use projector::rebuild::{self, Until};
use projector::Kind;

use crate::cli::{ProjectionArgs, ReplayArgs};
use crate::up;

fn selected(args: &ProjectionArgs) -> anyhow::Result<Vec<Kind>> {
    if args.projections.is_empty() {
        return Ok(Kind::ALL.to_vec());
    }
    args.projections
        .iter()
        .map(|name| {
            Kind::parse(name)
                .with_context(|| format!("unknown projection {name:?} (known: relational, audit)"))
        })
        .collect()
}

/// A progress bar over the log's events (events/s and ETA).
pub fn progress_bar(store_events: u64, label: &str) -> ProgressBar {
    let bar = ProgressBar::new(store_events).with_style(
        ProgressStyle::with_template(
            "{prefix:>10} [{bar:30}] {human_pos}/{human_len} events {per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

pub async fn log_size(store: &EventStore) -> anyhow::Result<u64> {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(store.pool())
        .await?;
    Ok(n.unsigned_abs())
}

pub async fn replay(mut args: ReplayArgs, settings: &Settings) -> anyhow::Result<()> {
    let vectors = args.select.projections.iter().any(|p| p == "vectors");
    args.select.projections.retain(|p| p != "vectors");
    if vectors {
        if args.until_position.is_some() || args.until_time.is_some() {
            bail!("the vector projection is rebuilt to the head of the log only");
        }
        replay_vectors(&args, settings).await?;
        if args.select.projections.is_empty() {
            return Ok(());
        }
    }
    let redis = args.select.projections.iter().any(|p| p == "redis");
    args.select.projections.retain(|p| p != "redis");
    if redis {
        if args.until_position.is_some() || args.until_time.is_some() {
            bail!("the Redis projection is rebuilt to the head of the log only");
        }
        replay_redis(&args, settings).await?;
        if args.select.projections.is_empty() {
            return Ok(());
        }
    }
    let kinds = selected(&args.select)?;
    let store = up::open_store(settings, up::Role::Projector).await?;
    let total = log_size(&store).await?;
    let until = match (args.until_position, args.until_time) {
        (Some(p), _) => Some(Until::Position(p)),
        (None, Some(t)) => Some(Until::Time(t)),
        (None, None) => None,
    };
    let mut out = std::io::stdout().lock();
    let Some(until) = until else {
        let reports = replay_all(&store, &kinds, total, args.select.batch_size).await;
        let mut failed = 0;
        for (kind, report) in reports {
            match report {
                Ok(report) => writeln!(
                    out,
                    "{}: {} events in {:.1} s ({:.0} events/s), swapped into {} at {}",
                    kind.name(),
                    report.events,
                    report.elapsed.as_secs_f64(),
                    report.events as f64 / report.elapsed.as_secs_f64().max(1e-9),
                    kind.live_schema(),
                    report.position
                )?,
                Err(error) => {
                    failed += 1;
                    writeln!(
                        out,
                        "{}: FAILED, the live projection is unchanged: {error}",
                        kind.name()
                    )?;
                }
            }
        }
        if failed > 0 {
            bail!("{failed} projection(s) not rebuilt");
        }
        return Ok(());
    };
    for kind in kinds {
        let bar = progress_bar(total, kind.name());
        let progress = |n: u64| bar.set_position(n);
        let (schema, report) =
            rebuild::build_as_of(&store, kind, until, args.select.batch_size, &progress).await?;
        bar.finish_and_clear();
        writeln!(
            out,
            "{}: {} events up to {} built into schema {schema} (the live projection is unchanged)",
            kind.name(),
            report.events,
            report.position
        )?;
    }
    Ok(())
}

/// Replays and swaps `kinds` side by side ([`rebuild::replay_and_swap_all`]),
/// with a progress bar for each.
pub async fn replay_all(
    store: &EventStore,
    kinds: &[Kind],
    total: u64,
    batch_size: usize,
) -> Vec<rebuild::KindReport> {
    let bars = indicatif::MultiProgress::new();
    let shown: Vec<(Kind, ProgressBar)> = kinds
        .iter()
        .map(|&kind| (kind, bars.add(progress_bar(total, kind.name()))))
        .collect();
    let shown = std::sync::Arc::new(shown);
    let progress = {
        let shown = shown.clone();
        move |kind: Kind, n: u64| {
            if let Some((_, bar)) = shown.iter().find(|(k, _)| *k == kind) {
                bar.set_position(n);
            }
        }
    };
    let reports =
        rebuild::replay_and_swap_all(store, kinds, batch_size, std::sync::Arc::new(progress)).await;
    for (_, bar) in shown.iter() {
        bar.finish_and_clear();
    }
    reports
}

/// Applies the log to a sink whose checkpoint was just reset, with a
/// progress bar: `None` if a running projector holds its lease (and does it).
async fn catch_up(
    store: &EventStore,
    sink: projector::Sink,
    args: &ReplayArgs,
) -> anyhow::Result<Option<u64>> {
    let total = log_size(store).await?;
    let bar = progress_bar(total, sink.name());
    let progress = |n: u64| bar.set_position(n);
    let instance = format!("replay-{}", std::process::id());
    let applied =
        projector::catch_up_sink(store, &sink, &instance, args.select.batch_size, &progress)
            .await?;
    bar.finish_and_clear();
    Ok(applied)
}

/// Rebuilds the vector collections from the log: here if no projector holds
/// the projection's lease, else by that projector.
async fn replay_vectors(args: &ReplayArgs, settings: &Settings) -> anyhow::Result<()> {
    let Some(config) = up::vector_config(settings).await? else {
        bail!("the vector projection is disabled (vectors.enabled = false)");
    };
    let store = up::open_store(settings, up::Role::Projector).await?;
    rebuild::reset_vectors(&store).await?;
    let applied = catch_up(&store, projector::Sink::Vectors(config), args).await?;
    let mut out = std::io::stdout().lock();
    match applied {
        Some(events) => writeln!(
            out,
            "vectors: collections emptied and rebuilt from {events} events"
        )?,
        None => writeln!(
            out,
            "vectors: the running projector holds the lease and is rebuilding the collections"
        )?,
    }
    Ok(())
}

/// Empties what the Redis projection keeps and rebuilds it from the log:
/// here if no projector holds its lease, else by that projector.
async fn replay_redis(args: &ReplayArgs, settings: &Settings) -> anyhow::Result<()> {
    let store = up::open_store(settings, up::Role::Projector).await?;
    let config = projector::redis_model::RedisConfig::from_settings(settings);
    let deleted = rebuild::reset_redis(&store, &config).await?;
    let applied = catch_up(&store, projector::Sink::Redis(config), args).await?;
    let mut out = std::io::stdout().lock();
    match applied {
        Some(events) => writeln!(
            out,
            "redis: {deleted} keys deleted, rebuilt from {events} events"
        )?,
        None => writeln!(
            out,
            "redis: {deleted} keys deleted; the running projector holds the lease and is rebuilding it"
        )?,
    }
    Ok(())
}

pub async fn verify(args: ProjectionArgs, settings: &Settings) -> anyhow::Result<()> {
    let kinds = selected(&args)?;
    let store = up::open_store(settings, up::Role::Projector).await?;
    let total = log_size(&store).await?;
    let bar = progress_bar(total, "rebuild");
    let progress = |n: u64| bar.set_position(n);
    let comparisons = rebuild::verify(&store, &kinds, args.batch_size, &progress).await?;
    bar.finish_and_clear();
    let mut out = std::io::stdout().lock();
    let mut differences = 0;
    for c in &comparisons {
        if c.equal() {
            writeln!(
                out,
                "{:<12} {:<22} OK    {} rows",
                c.projection, c.table, c.live.rows
            )?;
        } else {
            differences += 1;
            writeln!(
                out,
                "{:<12} {:<22} DIFF  live {} rows (checksum {}), rebuilt {} rows (checksum {})",
                c.projection,
                c.table,
                c.live.rows,
                c.live.checksum,
                c.rebuilt.rows,
                c.rebuilt.checksum
            )?;
        }
    }
    if differences > 0 {
        bail!("{differences} table(s) differ from a fresh rebuild");
    }
    Ok(())
}

pub async fn audit_prune(settings: &Settings) -> anyhow::Result<()> {
    let store = up::open_store(settings, up::Role::Projector).await?;
    let dropped =
        projector::maintain_audit(store.pool(), Kind::Audit.live_schema(), chrono::Utc::now())
            .await?;
    let mut out = std::io::stdout().lock();
    if dropped.is_empty() {
        writeln!(out, "no audit partition is older than the retention")?;
    }
    for name in dropped {
        writeln!(out, "dropped {name}")?;
    }
    Ok(())
}
