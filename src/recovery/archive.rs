//! Logical copies of the log: `export` writes the event log and the
//! command-side tables a restore needs as an encrypted, compressed,
//! checksummed archive; `import` loads one into an empty database and
//! refuses anything altered.
//!
//! An archive is a folder (a local path or an `s3://bucket/prefix`):
//! * `part-NNNNN.bin`: a slice of one table's `COPY ... TO STDOUT` text
//!   (whole rows), gzip-compressed, then sealed with AES-256-GCM under the
//!   archive key; the associated data names the archive and the part, so a
//!   part cannot be moved to another archive or another place;
//! * `manifest.json`: readable without the key (generation, head position,
//!   counts, each part's sha256 and each table's content checksum);
//! * `manifest.tag`: a GCM tag over the manifest under the key, written
//!   last: an archive without it is incomplete, and a manifest that was
//!   changed, or a wrong key, fails it before anything is read.
//!
//! COPY's text form is what PostgreSQL itself reads back across versions,
//! so an archive also moves a log between clusters and major versions.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use anyhow::{bail, Context};
use bytes::Bytes;
use futures_util::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection};

/// The archive format this program writes and reads.
const FORMAT: u32 = 1;
/// Plain COPY text per part before compression (whole rows).
const PART_BYTES: usize = 16 * 1024 * 1024;
const MANIFEST: &str = "manifest.json";
const TAG: &str = "manifest.tag";

/// What an archive holds, in the order it is loaded: the data keys the
/// log's personal values are sealed with (wrapped by the master key, which
/// no archive holds; a forgotten user's is a tombstone, loaded before the
/// log so the forget's trigger finds it), the log, then the
/// command side's own tables (outcomes of rejected commands, and the
/// inline projections of credentials, which a running command service
/// needs at once). The read models are rebuilt from the log instead.
pub const TABLES: [Exported; 7] = [
    Exported {
        name: "store_generations",
        order: "generation",
    },
    Exported {
        name: "data_keys",
        order: "subject",
    },
    Exported {
        name: "events",
        order: "stream_id, version",
    },
    Exported {
        name: "command_results",
        order: "command_id",
    },
    Exported {
        name: "auth_users",
        order: "user_id",
    },
    Exported {
        name: "auth_sessions",
        order: "token_hash",
    },
    Exported {
        name: "auth_api_keys",
        order: "key_id",
    },
];

/// Tables whose rows never change once written: their content checksum
/// must match after an import (`restore-check --archive`). The others are
/// state that moves on (a session's last use, a new generation).
pub const IMMUTABLE: [&str; 2] = ["events", "command_results"];

#[derive(Debug, Clone, Copy)]
pub struct Exported {
    pub name: &'static str,
    /// A total order, so two copies of the same rows read the same.
    pub order: &'static str,
}

/// The 256-bit archive key, from a file of 64 hexadecimal digits (such as
/// `openssl rand -hex 32` writes).
pub struct ArchiveKey(Aes256Gcm);

impl ArchiveKey {
    pub fn read(path: &Path) -> anyhow::Result<ArchiveKey> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the archive key {}", path.display()))?;
        let hex = text.trim();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!(
                "the archive key {} must hold 64 hexadecimal digits (openssl rand -hex 32)",
                path.display()
            );
        }
        let mut key = [0u8; 32];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .context("the archive key is not hexadecimal")?;
        }
        Ok(ArchiveKey(Aes256Gcm::new(&key.into())))
    }

    fn seal(&self, plain: &[u8], aad: &[u8]) -> anyhow::Result<Vec<u8>> {
        let nonce: [u8; 12] = random_nonce()?;
        let sealed = self
            .0
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad })
            .map_err(|_| anyhow::anyhow!("sealing failed"))?;
        let mut out = Vec::with_capacity(12 + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    fn open(&self, sealed: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < 12 {
            return None;
        }
        let (nonce, body) = sealed.split_at(12);
        self.0
            .decrypt(Nonce::from_slice(nonce), Payload { msg: body, aad })
            .ok()
    }
}

fn random_nonce() -> anyhow::Result<[u8; 12]> {
    use aes_gcm::aead::rand_core::RngCore;
    let mut nonce = [0u8; 12];
    aes_gcm::aead::OsRng
        .try_fill_bytes(&mut nonce)
        .map_err(|e| anyhow::anyhow!("no randomness for a nonce: {e}"))?;
    Ok(nonce)
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub format: u32,
    /// Names this archive in every part's associated data.
    pub archive_id: uuid::Uuid,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// The store's generation when exported.
    pub generation: i32,
    /// The newest event's position (`generation.tx_id.seq`), if any.
    pub head: Option<String>,
    pub events: u64,
    pub tables: Vec<TableEntry>,
    pub parts: Vec<PartEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TableEntry {
    pub name: String,
    pub columns: Vec<String>,
    pub rows: u64,
    /// sha256 of the table's COPY text in its total order.
    pub content_sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PartEntry {
    pub name: String,
    pub table: String,
    pub rows: u64,
    /// sha256 of the stored (sealed) bytes.
    pub sha256: String,
}

impl Manifest {
    pub fn table(&self, name: &str) -> Option<&TableEntry> {
        self.tables.iter().find(|t| t.name == name)
    }
}

/// An archive's place: a local folder or `s3://bucket/prefix` (S3 settings
/// from the usual AWS_* variables: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
/// AWS_REGION, AWS_ENDPOINT_URL, AWS_ALLOW_HTTP).
pub struct Location {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
}

impl Location {
    /// The place to write an archive to (a missing folder is created).
    pub fn to_write(text: &str) -> anyhow::Result<Location> {
        Location::parse(text, true)
    }

    /// The place to read an archive from (a missing folder is an error,
    /// not a new empty one).
    pub fn to_read(text: &str) -> anyhow::Result<Location> {
        Location::parse(text, false)
    }

    fn parse(text: &str, create: bool) -> anyhow::Result<Location> {
        if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                bail!("{text}: an s3:// location names a bucket (s3://bucket/prefix)");
            }
            let mut builder =
                object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
            if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") {
                // Self-hosted stores (SeaweedFS, MinIO) serve buckets by path.
                builder = builder
                    .with_endpoint(endpoint)
                    .with_virtual_hosted_style_request(false);
            }
            let store = builder
                .build()
                .with_context(|| format!("{text}: the S3 settings"))?;
            Ok(Location {
                store: Arc::new(store),
                prefix: ObjectPath::from(prefix),
            })
        } else if text.contains("://") {
            bail!("{text}: an archive is a local path or an s3:// URL")
        } else {
            if create {
                std::fs::create_dir_all(text)
                    .with_context(|| format!("creating the archive folder {text}"))?;
            } else if !Path::new(text).is_dir() {
                bail!("{text}: no such folder");
            }
            let store = object_store::local::LocalFileSystem::new_with_prefix(text)
                .with_context(|| format!("opening the archive folder {text}"))?;
            Ok(Location {
                store: Arc::new(store),
                prefix: ObjectPath::from(""),
            })
        }
    }

    fn path(&self, name: &str) -> ObjectPath {
        self.prefix.child(name)
    }

    async fn put(&self, name: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
        self.store
            .put(&self.path(name), PutPayload::from(bytes))
            .await
            .with_context(|| format!("writing {name}"))?;
        Ok(())
    }

    async fn get(&self, name: &str) -> anyhow::Result<Option<Bytes>> {
        match self.store.get(&self.path(name)).await {
            Ok(found) => Ok(Some(
                found
                    .bytes()
                    .await
                    .with_context(|| format!("reading {name}"))?,
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {name}")),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn part_aad(archive: uuid::Uuid, part: &str, table: &str) -> Vec<u8> {
    format!("copilot-data archive {archive} {part} {table}").into_bytes()
}

const MANIFEST_AAD_PREFIX: &[u8] = b"copilot-data archive manifest\n";

/// The tag of `manifest` under the key: GCM over no plain text with the
/// manifest as associated data (GMAC).
fn manifest_tag(key: &ArchiveKey, manifest: &[u8]) -> anyhow::Result<Vec<u8>> {
    key.seal(&[], &[MANIFEST_AAD_PREFIX, manifest].concat())
}

/// A table's columns, in table order.
async fn columns(conn: &mut PgConnection, table: &str) -> anyhow::Result<Vec<String>> {
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT attname::text FROM pg_attribute
          WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped
          ORDER BY attnum",
    )
    .bind(format!("public.{table}"))
    .fetch_all(&mut *conn)
    .await?;
    if columns.is_empty() {
        bail!("the table {table} is missing: is the database migrated?");
    }
    Ok(columns)
}

fn column_list(columns: &[String]) -> String {
    columns
        .iter()
        .map(|c| format!("\"{}\"", c.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A table's rows as COPY text in its total order.
async fn copy_out<'c>(
    conn: &'c mut PgConnection,
    table: &Exported,
    columns: &[String],
) -> anyhow::Result<futures_util::stream::BoxStream<'c, sqlx::Result<Bytes>>> {
    let statement = format!(
        "COPY (SELECT {} FROM public.{} ORDER BY {}) TO STDOUT",
        column_list(columns),
        table.name,
        table.order
    );
    Ok(conn.copy_out_raw(&statement).await?)
}

/// The sha256 of a table's COPY text in its total order, as the manifest
/// records it, and its rows.
pub async fn content_checksum(
    conn: &mut PgConnection,
    table: &Exported,
    columns: &[String],
) -> anyhow::Result<(u64, String)> {
    let mut stream = copy_out(conn, table, columns).await?;
    let mut digest = Sha256::new();
    let mut rows = 0u64;
    while let Some(chunk) = stream.try_next().await? {
        rows += count_rows(&chunk);
        digest.update(&chunk);
    }
    Ok((rows, hex(&digest.finalize())))
}

fn count_rows(text: &[u8]) -> u64 {
    text.iter().filter(|&&b| b == b'\n').count() as u64
}

pub struct ExportReport {
    pub manifest: Manifest,
    pub stored_bytes: u64,
}

/// Writes the archive of the database `conn` is connected to, in one
/// repeatable-read snapshot (writers go on meanwhile; the archive is the
/// log as of the snapshot). Refuses a location that already holds one.
pub async fn export(
    conn: &mut PgConnection,
    location: &Location,
    key: &ArchiveKey,
    progress: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<ExportReport> {
    if location.get(MANIFEST).await?.is_some() {
        bail!("the location already holds an archive (manifest.json); choose an empty one");
    }
    let archive_id = uuid::Uuid::new_v4();
    let mut tx = conn.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let generation: i32 = sqlx::query_scalar("SELECT max(generation) FROM store_generations")
        .fetch_one(&mut *tx)
        .await?;
    let head: Option<(i32, i64, i64)> = sqlx::query_as(
        "SELECT generation, tx_id, seq FROM events ORDER BY generation DESC, tx_id DESC, seq DESC LIMIT 1",
    )
    .fetch_optional(&mut *tx)
    .await?;

    let mut tables = Vec::new();
    let mut parts: Vec<PartEntry> = Vec::new();
    let mut stored_bytes = 0u64;
    let mut events_done = 0u64;
    for table in &TABLES {
        let columns = columns(&mut tx, table.name).await?;
        let mut stream = copy_out(&mut tx, table, &columns).await?;
        let mut digest = Sha256::new();
        let mut pending: Vec<u8> = Vec::new();
        let mut rows = 0u64;
        let mut done = false;
        while !done {
            match stream.try_next().await? {
                Some(chunk) => {
                    digest.update(&chunk);
                    pending.extend_from_slice(&chunk);
                    if pending.len() < PART_BYTES {
                        continue;
                    }
                }
                None => done = true,
            }
            // COPY text escapes newlines inside values: one row, one line,
            // so a part ends at a line's end and holds whole rows.
            let Some(end) = pending.iter().rposition(|&b| b == b'\n') else {
                continue;
            };
            let rest = pending.split_off(end + 1);
            let text = std::mem::replace(&mut pending, rest);
            let part_rows = count_rows(&text);
            rows += part_rows;
            let name = format!("part-{:05}.bin", parts.len());
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&text)?;
            let sealed = key.seal(&gz.finish()?, &part_aad(archive_id, &name, table.name))?;
            let sha256 = hex(&Sha256::digest(&sealed));
            stored_bytes += sealed.len() as u64;
            location.put(&name, sealed).await?;
            parts.push(PartEntry {
                name,
                table: table.name.to_string(),
                rows: part_rows,
                sha256,
            });
            if table.name == "events" {
                events_done += part_rows;
                progress(events_done);
            }
        }
        drop(stream);
        tables.push(TableEntry {
            name: table.name.to_string(),
            columns,
            rows,
            content_sha256: hex(&digest.finalize()),
        });
    }
    tx.commit().await?;

    let events = tables
        .iter()
        .find(|t| t.name == "events")
        .map_or(0, |t| t.rows);
    let manifest = Manifest {
        format: FORMAT,
        archive_id,
        created_at: chrono::Utc::now(),
        generation,
        head: head.map(|(generation, tx_id, seq)| {
            eventstore::Position {
                generation,
                tx_id,
                seq,
            }
            .to_string()
        }),
        events,
        tables,
        parts,
    };
    let text = serde_json::to_vec_pretty(&manifest)?;
    let tag = manifest_tag(key, &text)?;
    location.put(MANIFEST, text).await?;
    location.put(TAG, tag).await?;
    Ok(ExportReport {
        manifest,
        stored_bytes,
    })
}

/// Reads and authenticates an archive's manifest.
pub async fn read_manifest(location: &Location, key: &ArchiveKey) -> anyhow::Result<Manifest> {
    let Some(text) = location.get(MANIFEST).await? else {
        bail!("no archive here: manifest.json is missing");
    };
    let Some(tag) = location.get(TAG).await? else {
        bail!("the archive is incomplete: manifest.tag is missing (the export did not finish)");
    };
    if key
        .open(&tag, &[MANIFEST_AAD_PREFIX, text.as_ref()].concat())
        .is_none()
    {
        bail!("the archive does not open with this key: wrong key, or manifest.json was altered");
    }
    let manifest: Manifest =
        serde_json::from_slice(&text).context("manifest.json is not a manifest")?;
    if manifest.format != FORMAT {
        bail!(
            "archive format {} (this program reads format {FORMAT})",
            manifest.format
        );
    }
    Ok(manifest)
}

/// Fetches, checks and opens one part: its COPY text.
async fn open_part(
    location: &Location,
    key: &ArchiveKey,
    manifest: &Manifest,
    part: &PartEntry,
) -> anyhow::Result<Vec<u8>> {
    let Some(sealed) = location.get(&part.name).await? else {
        bail!("{} is missing from the archive", part.name);
    };
    if hex(&Sha256::digest(&sealed)) != part.sha256 {
        bail!(
            "{}: its sha256 differs from the manifest's (altered or damaged)",
            part.name
        );
    }
    let Some(compressed) = key.open(
        &sealed,
        &part_aad(manifest.archive_id, &part.name, &part.table),
    ) else {
        bail!("{}: it does not open with the archive key", part.name);
    };
    let mut text = Vec::new();
    flate2::read::GzDecoder::new(compressed.as_slice())
        .read_to_end(&mut text)
        .with_context(|| format!("{}: not gzip", part.name))?;
    if count_rows(&text) != part.rows {
        bail!(
            "{}: {} rows where the manifest says {}",
            part.name,
            count_rows(&text),
            part.rows
        );
    }
    Ok(text)
}

/// Loads the archive whose authenticated manifest ([`read_manifest`]) is
/// `manifest` into the empty, migrated database `conn` is connected to, in
/// one transaction: any failure (a part altered, missing or not opening, a
/// count that differs) leaves the database as it was.
pub async fn import(
    conn: &mut PgConnection,
    location: &Location,
    key: &ArchiveKey,
    manifest: &Manifest,
    progress: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<()> {
    let mut tx = conn.begin().await?;
    for table in TABLES.iter().filter(|t| t.name != "store_generations") {
        let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM public.{}", table.name))
            .fetch_one(&mut *tx)
            .await?;
        if rows > 0 {
            bail!(
                "the database is not empty ({} holds {rows} rows): import loads into an empty database only",
                table.name
            );
        }
    }
    // The empty store's own first generation gives way to the archive's.
    sqlx::query("DELETE FROM store_generations")
        .execute(&mut *tx)
        .await?;
    let mut events_done = 0u64;
    for table in &TABLES {
        let Some(entry) = manifest.table(table.name) else {
            bail!("the manifest lists no table {}", table.name);
        };
        let statement = format!(
            "COPY public.{} ({}) FROM STDIN",
            table.name,
            column_list(&entry.columns)
        );
        let mut loaded = 0u64;
        for part in manifest.parts.iter().filter(|p| p.table == table.name) {
            let text = open_part(location, key, manifest, part).await?;
            let mut copy = tx.copy_in_raw(&statement).await?;
            copy.send(text).await?;
            loaded += copy.finish().await?;
            if table.name == "events" {
                events_done += part.rows;
                progress(events_done);
            }
        }
        if loaded != entry.rows {
            bail!(
                "{}: {loaded} rows loaded where the manifest says {}",
                table.name,
                entry.rows
            );
        }
    }
    sqlx::query("SELECT setval('events_seq', greatest((SELECT max(seq) FROM events), 1))")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}
