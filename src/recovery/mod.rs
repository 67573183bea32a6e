//! Recovery: logical copies of the log (`export`, `import`) and the check
//! that follows any restore (`restore-check`). Physical backups and
//! point-in-time recovery are pgBackRest's (deploy/backup/).

pub mod archive;
pub mod check;

use std::io::Write;

use anyhow::{bail, Context};
use eventstore::EventStore;
use infra::Settings;
use projector::rebuild;
use projector::Kind;
use sqlx::Connection;

use crate::cli::{ArchiveArgs, RestoreCheckArgs};
use crate::ops::progress_bar;
use crate::up;

/// The owner's connection (export and import read and write the command
/// side's tables, which no role's login may).
async fn owner_connection(settings: &Settings) -> anyhow::Result<sqlx::PgConnection> {
    let pool = infra::postgres::prepare(&settings.database).await?;
    Ok(pool.acquire().await?.detach())
}

pub async fn export(args: &ArchiveArgs, settings: &Settings) -> anyhow::Result<()> {
    let key = archive::ArchiveKey::read(&args.key_file)?;
    // A scheduled export names each day's archive by itself.
    let place = args.location.replace(
        "{timestamp}",
        &chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string(),
    );
    let location = archive::Location::to_write(&place)?;
    let mut conn = owner_connection(settings).await?;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&mut conn)
        .await?;
    let bar = progress_bar(events.unsigned_abs(), "export");
    let started = std::time::Instant::now();
    let report = archive::export(&mut conn, &location, &key, &|n| bar.set_position(n))
        .await
        .context("export failed (what it wrote is not an archive: manifest.tag is written last)")?;
    bar.finish_and_clear();
    let m = &report.manifest;
    writeln!(
        std::io::stdout().lock(),
        "exported {} events (head {}, generation {}) and {} other rows in {} parts, {:.1} MiB, in {:.1} s to {}",
        m.events,
        m.head.as_deref().unwrap_or("none"),
        m.generation,
        m.tables.iter().filter(|t| t.name != "events").map(|t| t.rows).sum::<u64>(),
        m.parts.len(),
        report.stored_bytes as f64 / (1024.0 * 1024.0),
        started.elapsed().as_secs_f64(),
        place
    )?;
    Ok(())
}

pub async fn import(args: &ArchiveArgs, settings: &Settings) -> anyhow::Result<()> {
    let key = archive::ArchiveKey::read(&args.key_file)?;
    let location = archive::Location::to_read(&args.location)?;
    let mut conn = owner_connection(settings).await?;
    let manifest = archive::read_manifest(&location, &key)
        .await
        .context("import refused; nothing was written")?;
    let bar = progress_bar(manifest.events, "import");
    archive::import(&mut conn, &location, &key, &manifest, &|n| {
        bar.set_position(n)
    })
    .await
    .context("import refused; nothing was written")?;
    bar.finish_and_clear();
    conn.close().await?;
    // Opening the store starts a new generation when this cluster's
    // transaction counter is behind the imported events.
    let store = up::open_store(settings, up::Role::Projector).await?;
    writeln!(
        std::io::stdout().lock(),
        "imported {} events (head {}) from {}; the store is at generation {}. \
         Next: copilot-data restore-check --archive {} (rebuilds the read models), \
         then replay --projection redis and --projection vectors",
        manifest.events,
        manifest.head.as_deref().unwrap_or("none"),
        args.location,
        store.generation().await?,
        args.location
    )?;
    Ok(())
}

pub async fn restore_check(args: &RestoreCheckArgs, settings: &Settings) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let mut conn = owner_connection(settings).await?;
    let mut findings = {
        let mut tx = conn.begin().await?;
        let found = check::log_findings(&mut tx).await?;
        tx.rollback().await?;
        found
    };
    if let Some(location) = &args.archive {
        let Some(key_file) = &args.key_file else {
            bail!("--archive needs --key-file (or COPILOT_ARCHIVE_KEY_FILE)");
        };
        let key = archive::ArchiveKey::read(key_file)?;
        let manifest = archive::read_manifest(&archive::Location::to_read(location)?, &key).await?;
        findings.extend(check::manifest_findings(&mut conn, &manifest).await?);
    }
    conn.close().await?;
    let mut out = std::io::stdout().lock();
    for f in &findings {
        writeln!(
            out,
            "{:<18} {:<5} {}",
            f.what,
            if f.ok { "OK" } else { "FAIL" },
            f.detail
        )?;
    }
    let failed = findings.iter().filter(|f| !f.ok).count();
    if failed > 0 {
        bail!("{failed} check(s) failed: the restored log is not whole; the read models were not rebuilt");
    }

    // The read models, rebuilt from the restored log and swapped in, then
    // rebuilt once more and compared: the log replays, and deterministically.
    let store: EventStore = up::open_store(settings, up::Role::Projector).await?;
    let total = crate::ops::log_size(&store).await?;
    for (kind, report) in crate::ops::replay_all(&store, &Kind::ALL, total, args.batch_size).await {
        let report = report.with_context(|| format!("rebuilding {}", kind.name()))?;
        writeln!(
            out,
            "{:<18} {:<5} rebuilt from {} events in {:.1} s, up to {}",
            kind.name(),
            "OK",
            report.events,
            report.elapsed.as_secs_f64(),
            report.position
        )?;
    }
    let bar = progress_bar(total, "verify");
    let comparisons = rebuild::verify(&store, &Kind::ALL, args.batch_size, &|n| {
        bar.set_position(n)
    })
    .await?;
    bar.finish_and_clear();
    let differing: Vec<String> = comparisons
        .iter()
        .filter(|c| !c.equal())
        .map(|c| format!("{}.{}", c.projection, c.table))
        .collect();
    if !differing.is_empty() {
        bail!(
            "the rebuilt read models differ from a second rebuild: {}",
            differing.join(", ")
        );
    }
    writeln!(
        out,
        "{:<18} {:<5} {} tables equal a fresh rebuild",
        "verify",
        "OK",
        comparisons.len()
    )?;
    writeln!(
        out,
        "restore-check passed in {:.1} s (Redis and vectors: replay --projection redis, --projection vectors)",
        started.elapsed().as_secs_f64()
    )?;
    Ok(())
}
