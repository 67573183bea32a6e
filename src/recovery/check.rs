//! `restore-check`: after any restore (a physical one by pgBackRest, an
//! `import`), proves the log is whole and that the read models rebuild
//! from it.

use sqlx::PgConnection;

use super::archive::{self, Manifest, TABLES};

/// One line of the report.
#[derive(Debug)]
pub struct Finding {
    pub what: String,
    pub ok: bool,
    pub detail: String,
}

impl Finding {
    fn new(what: &str, ok: bool, detail: String) -> Finding {
        Finding {
            what: what.to_string(),
            ok,
            detail,
        }
    }
}

/// The log's own invariants, read from the restored database.
pub async fn log_findings(conn: &mut PgConnection) -> anyhow::Result<Vec<Finding>> {
    let mut findings = Vec::new();
    let (events, streams): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT stream_id) FROM events")
            .fetch_one(&mut *conn)
            .await?;
    // Versions 1..n with none missing: the smallest is 1 and the largest
    // is the count (the primary key rules out two of one version).
    let gaps: Vec<(uuid::Uuid, i64, i64, i64)> = sqlx::query_as(
        "SELECT stream_id, min(version), max(version), count(*) FROM events
          GROUP BY stream_id HAVING min(version) <> 1 OR max(version) <> count(*)
          ORDER BY stream_id LIMIT 5",
    )
    .fetch_all(&mut *conn)
    .await?;
    findings.push(Finding::new(
        "stream versions",
        gaps.is_empty(),
        if gaps.is_empty() {
            format!(
                "{events} events in {streams} streams, every stream's versions contiguous from 1"
            )
        } else {
            let shown: Vec<String> = gaps
                .iter()
                .map(|(id, min, max, n)| format!("{id} (versions {min}..{max}, {n} events)"))
                .collect();
            format!("streams with missing versions: {}", shown.join(", "))
        },
    ));
    // Read without the unique index's help, so a damaged index is not
    // what vouches for itself.
    sqlx::query("SET LOCAL enable_indexscan = off")
        .execute(&mut *conn)
        .await?;
    sqlx::query("SET LOCAL enable_indexonlyscan = off")
        .execute(&mut *conn)
        .await?;
    sqlx::query("SET LOCAL enable_bitmapscan = off")
        .execute(&mut *conn)
        .await?;
    let doubled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT command_id FROM events WHERE command_id IS NOT NULL
          GROUP BY command_id HAVING count(*) > 1) d",
    )
    .fetch_one(&mut *conn)
    .await?;
    let both: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM command_results r WHERE EXISTS
           (SELECT 1 FROM events e WHERE e.command_id = r.command_id)",
    )
    .fetch_one(&mut *conn)
    .await?;
    findings.push(Finding::new(
        "command ids",
        doubled == 0 && both == 0,
        if doubled == 0 && both == 0 {
            "each command id has one outcome".to_string()
        } else {
            format!("{doubled} command ids appended twice, {both} both rejected and appended")
        },
    ));
    let generation_ahead: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE generation > (SELECT max(generation) FROM store_generations)",
    )
    .fetch_one(&mut *conn)
    .await?;
    findings.push(Finding::new(
        "generations",
        generation_ahead == 0,
        if generation_ahead == 0 {
            "every event's generation is known to the store".to_string()
        } else {
            format!("{generation_ahead} events of a generation the store does not list")
        },
    ));
    Ok(findings)
}

/// The database against an archive's manifest: the same events and
/// rejected outcomes, byte for byte in COPY form, and every table's count.
pub async fn manifest_findings(
    conn: &mut PgConnection,
    manifest: &Manifest,
) -> anyhow::Result<Vec<Finding>> {
    let mut findings = Vec::new();
    for table in TABLES
        .iter()
        .filter(|t| archive::IMMUTABLE.contains(&t.name))
    {
        let Some(entry) = manifest.table(table.name) else {
            findings.push(Finding::new(
                table.name,
                false,
                "the manifest does not list it".to_string(),
            ));
            continue;
        };
        let (rows, sum) = archive::content_checksum(conn, table, &entry.columns).await?;
        let same = rows == entry.rows && sum == entry.content_sha256;
        findings.push(Finding::new(
            table.name,
            same,
            if same {
                format!(
                    "{rows} rows, identical to the archive (sha256 {})",
                    &sum[..16]
                )
            } else {
                format!(
                    "{rows} rows (sha256 {}), the archive has {} rows (sha256 {})",
                    &sum[..16],
                    entry.rows,
                    &entry.content_sha256[..16]
                )
            },
        ));
    }
    Ok(findings)
}
