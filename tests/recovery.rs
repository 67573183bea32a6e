//! Recovery, against real servers: pgBackRest backing a PostgreSQL cluster
//! of the test's own up to SeaweedFS (S3 over TLS), restored to a point in
//! time and to the latest archived WAL after the primary is lost; and the
//! logical archive (`export` under load to S3, `import`), which refuses a
//! flipped byte or a wrong key and writes nothing. Each restore is checked
//! against a ledger of the commands the command service acknowledged, and
//! by `restore-check`.

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::process::{Child, Command};
use uuid::Uuid;

mod common;

use common::certs::Certs;
use common::servers::{try_as_postgres, PgCluster, TempDir, Weed};

const STANZA: &str = "copilot";
/// The test cluster's archive_timeout: the most WAL a lost primary may
/// take with it, in time (production: deploy/backup/postgresql.conf).
const ARCHIVE_TIMEOUT_S: i64 = 2;
const ARCHIVING_SLACK_S: i64 = 4;

/// One command sent: when, and when it was acknowledged (accepted).
#[derive(Debug, Clone)]
struct Sent {
    command_id: Uuid,
    sent: DateTime<Utc>,
    acked: Option<DateTime<Utc>>,
}

type Ledger = Arc<Mutex<Vec<Sent>>>;

async fn open_incident(
    client: &async_nats::Client,
    prefix: &str,
    bootstrap: &str,
    command_id: Uuid,
) -> Option<serde_json::Value> {
    let body = serde_json::json!({"command_id": command_id, "aggregate_id": Uuid::now_v7(),
        "payload": {"title": "disk full", "description": "d", "severity": "low", "affected_services": ["api"]}});
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Content-Type", "application/json");
    headers.insert("Authorization", format!("Bearer {bootstrap}").as_str());
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        client.request_with_headers(
            format!("{prefix}.rpc.incident.open"),
            headers,
            serde_json::to_vec(&body).expect("json").into(),
        ),
    )
    .await
    .ok()?
    .ok()?;
    serde_json::from_slice(&reply.payload).ok()
}

/// Agents writing through the command service until stopped, each command
/// in the ledger with the time it was acknowledged.
struct Writers {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    ledger: Ledger,
    _service: Child,
}

impl Writers {
    async fn start(database_url: &str, agents: usize) -> (Writers, String) {
        let prefix = format!("rec{}", &Uuid::new_v4().simple().to_string()[..12]);
        let bootstrap = format!("boot-{}", Uuid::new_v4());
        let service = common::command_service(database_url, &prefix, &bootstrap);
        let client = async_nats::connect("nats://127.0.0.1:4222")
            .await
            .expect("NATS");
        let deadline = Instant::now() + Duration::from_secs(60);
        while open_incident(&client, &prefix, &bootstrap, Uuid::now_v7())
            .await
            .is_none()
        {
            assert!(
                Instant::now() < deadline,
                "the command service did not answer"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let ledger: Ledger = Arc::default();
        let tasks = (0..agents)
            .map(|_| {
                let (client, prefix, bootstrap) =
                    (client.clone(), prefix.clone(), bootstrap.clone());
                let (stop, ledger) = (stop.clone(), ledger.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let command_id = Uuid::now_v7();
                        let sent = Utc::now();
                        let answer = open_incident(&client, &prefix, &bootstrap, command_id).await;
                        let acked = answer
                            .filter(|a| a["status"] == "accepted")
                            .map(|_| Utc::now());
                        ledger.lock().expect("ledger").push(Sent {
                            command_id,
                            sent,
                            acked,
                        });
                        if acked.is_none() {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                })
            })
            .collect();
        (
            Writers {
                stop,
                tasks,
                ledger,
                _service: service,
            },
            prefix,
        )
    }

    async fn stop(self) -> Vec<Sent> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
        let ledger = self.ledger.lock().expect("ledger").clone();
        ledger
    }
}

async fn delete_streams(prefix: &str) {
    if let Ok(client) = async_nats::connect("nats://127.0.0.1:4222").await {
        let js = async_nats::jetstream::new(client);
        let (commands, results) = command_service::stream_names(prefix);
        let _ = js.delete_stream(commands).await;
        let _ = js.delete_stream(results).await;
    }
}

async fn run_cli(url: &str, args: &[&str], envs: &[(&str, String)]) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_copilot-data"));
    command
        .args(args)
        .env("COPILOT_DATABASE_URL", url)
        .env("COPILOT_MASTER_KEY", common::TEST_MASTER_KEY)
        .env("COPILOT_LOG", "warn")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null());
    for (k, v) in envs {
        command.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(300), command.output())
        .await
        .expect("finished in time")
        .expect("ran");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn command_ids(url: &str) -> std::collections::HashSet<Uuid> {
    let pool = PgPool::connect(url).await.expect("connect");
    let ids: Vec<Uuid> =
        sqlx::query_scalar("SELECT command_id FROM events WHERE command_id IS NOT NULL")
            .fetch_all(&pool)
            .await
            .expect("command ids");
    pool.close().await;
    ids.into_iter().collect()
}

/// The pgBackRest configuration of the test: the repository in the S3
/// bucket over TLS (verified against the test's CA), encrypted.
fn pgbackrest_conf(dir: &TempDir, weed: &Weed, ca: &Path, cluster: &PgCluster) -> String {
    let home = dir.path("pgbackrest");
    for sub in ["log", "lock", "spool"] {
        std::fs::create_dir_all(home.join(sub)).expect("pgbackrest dirs");
    }
    let conf = home.join("pgbackrest.conf");
    std::fs::write(
        &conf,
        format!(
            "[global]
repo1-type=s3
repo1-s3-endpoint=localhost
repo1-s3-bucket=backups
repo1-s3-region=us-east-1
repo1-s3-uri-style=path
repo1-storage-port={port}
repo1-storage-ca-file={ca}
repo1-s3-key={access}
repo1-s3-key-secret={secret}
repo1-path=/copilot-{id}
repo1-cipher-type=aes-256-cbc
repo1-cipher-pass={pass}
repo1-retention-full=2
start-fast=y
log-path={dir}/log
lock-path={dir}/lock
spool-path={dir}/spool
log-level-console=warn
log-level-file=off

[{STANZA}]
pg1-path={data}
pg1-port={pgport}
pg1-socket-path={socket}
",
            port = weed.s3_https,
            ca = ca.display(),
            access = weed.access_key,
            secret = weed.secret_key,
            id = Uuid::new_v4().simple(),
            pass = Uuid::new_v4().simple(),
            dir = home.display(),
            data = cluster.dir.path("data").display(),
            pgport = cluster.port,
            socket = cluster.dir.0.display(),
        ),
    )
    .expect("pgbackrest.conf");
    let _ = std::process::Command::new("chown")
        .args(["-R", "postgres"])
        .arg(&dir.0)
        .status();
    conf.display().to_string()
}

fn pgbackrest(conf: &str, args: &[&str]) -> String {
    try_pgbackrest(conf, args).unwrap_or_else(|out| panic!("pgbackrest {args:?}: {out}"))
}

/// pgBackRest on the test's stanza, as `postgres`: its output, `Ok` if it
/// succeeded.
fn try_pgbackrest(conf: &str, args: &[&str]) -> Result<String, String> {
    let mut all = vec![format!("--config={conf}"), format!("--stanza={STANZA}")];
    all.extend(args.iter().map(|a| a.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    try_as_postgres("pgbackrest", &all)
}

/// A cluster restored by pgBackRest with `options`, started (archiving
/// off: the lost primary's stanza is not this copy's to write), and out of
/// recovery.
async fn restore(conf: &str, options: &[&str]) -> PgCluster {
    let cluster = PgCluster::restored(
        |data| {
            let mut args = vec![format!("--pg1-path={}", data.display())];
            args.extend(options.iter().map(|o| o.to_string()));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            pgbackrest(conf, &[&args[..], &["restore"]].concat());
        },
        "archive_mode = off",
    );
    let pool = PgPool::connect(&cluster.url("postgres"))
        .await
        .expect("connect");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let recovering: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
            .fetch_one(&pool)
            .await
            .expect("recovery state");
        if !recovering {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "recovery did not end: {}",
            cluster.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    pool.close().await;
    cluster
}

/// Writers append through the command service while a full backup and WAL
/// archiving run; a time T is noted and writing goes on; then the primary
/// is lost. Restored to T, the log holds every command acknowledged before
/// T and none sent after it; restored to the latest archived WAL, it holds
/// every command acknowledged more than the archive interval before the
/// loss. Both pass `restore-check`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn point_in_time_and_latest_restores_keep_every_acknowledged_command() {
    let tmp = TempDir::new("backup");
    let certs = Certs::new(&tmp.0, "weed");
    let weed = Weed::start(&certs.cert, &certs.key);
    let primary = PgCluster::start(|dir| {
        (
            format!(
                "wal_level = replica\narchive_mode = on\narchive_timeout = {ARCHIVE_TIMEOUT_S}\n\
                 archive_command = 'pgbackrest --config={}/pgbackrest/pgbackrest.conf --stanza={STANZA} archive-push %p'\n\
                 max_wal_senders = 3",
                dir.0.display()
            ),
            None,
        )
    });
    let conf = pgbackrest_conf(&primary.dir, &weed, &certs.ca, &primary);
    let setup = PgPool::connect(&primary.url("postgres"))
        .await
        .expect("primary");
    sqlx::query("CREATE DATABASE copilot")
        .execute(&setup)
        .await
        .expect("create database");
    setup.close().await;
    let url = primary.url("copilot");
    let (ok, out) = run_cli(&url, &["migrate"], &[]).await;
    assert!(ok, "migrate: {out}");
    // The bucket is created as SeaweedFS starts; the stanza waits for it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match try_pgbackrest(&conf, &["stanza-create"]) {
            Ok(_) => break,
            Err(out) => assert!(Instant::now() < deadline, "stanza-create: {out}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    pgbackrest(&conf, &["check"]);

    let (writers, prefix) = Writers::start(&url, 3).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let conf_for_backup = conf.clone();
    tokio::task::spawn_blocking(move || pgbackrest(&conf_for_backup, &["--type=full", "backup"]))
        .await
        .expect("backup");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t = Utc::now();
    tokio::time::sleep(Duration::from_millis(
        ARCHIVE_TIMEOUT_S as u64 * 1000 + 6000,
    ))
    .await;
    // The primary is lost with commands in flight.
    let lost_at = Utc::now();
    primary.lose();
    let ledger = writers.stop().await;
    delete_streams(&prefix).await;
    let acked: Vec<&Sent> = ledger.iter().filter(|s| s.acked.is_some()).collect();
    assert!(
        acked.len() > 50,
        "the writers made progress: {}",
        acked.len()
    );

    // Latest: everything the archive has.
    let latest = restore(&conf, &[]).await;
    let have = command_ids(&latest.url("copilot")).await;
    // The archive interval, and time for archive-push itself to run (a
    // process per segment, slower when the machine is busy).
    let margin = chrono::Duration::seconds(ARCHIVE_TIMEOUT_S + ARCHIVING_SLACK_S);
    let missing: Vec<&&Sent> = acked
        .iter()
        .filter(|s| s.acked.is_some_and(|a| a < lost_at - margin) && !have.contains(&s.command_id))
        .collect();
    let recent_lost = acked
        .iter()
        .filter(|s| !have.contains(&s.command_id))
        .count();
    eprintln!(
        "latest restore: {} of {} acknowledged commands; {recent_lost} acknowledged in the last {} s before the loss are not in the archive",
        have.len(),
        acked.len(),
        ARCHIVE_TIMEOUT_S + ARCHIVING_SLACK_S
    );
    assert!(
        missing.is_empty(),
        "acknowledged and older than the archive interval, yet lost: {missing:?}"
    );
    let (ok, out) = run_cli(&latest.url("copilot"), &["restore-check"], &[]).await;
    assert!(ok, "restore-check after the latest restore: {out}");
    drop(latest);

    // To the time T.
    let target = t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string();
    let at_t = restore(
        &conf,
        &[
            "--type=time",
            &format!("--target={target}"),
            "--target-action=promote",
        ],
    )
    .await;
    let have = command_ids(&at_t.url("copilot")).await;
    let before: Vec<&Sent> = ledger
        .iter()
        .filter(|s| s.acked.is_some_and(|a| a < t))
        .collect();
    let after: Vec<&Sent> = ledger.iter().filter(|s| s.sent > t).collect();
    assert!(
        !before.is_empty() && !after.is_empty(),
        "writes on both sides of T"
    );
    let lost: Vec<&&Sent> = before
        .iter()
        .filter(|s| !have.contains(&s.command_id))
        .collect();
    let leaked: Vec<&&Sent> = after
        .iter()
        .filter(|s| have.contains(&s.command_id))
        .collect();
    assert!(lost.is_empty(), "acknowledged before T, missing: {lost:?}");
    assert!(leaked.is_empty(), "sent after T, present: {leaked:?}");
    eprintln!(
        "restore to T: {} commands; {} acknowledged before T all present, {} sent after T all absent",
        have.len(),
        before.len(),
        after.len()
    );
    let (ok, out) = run_cli(&at_t.url("copilot"), &["restore-check"], &[]).await;
    assert!(ok, "restore-check after the restore to T: {out}");
    assert!(out.contains("verify") && out.contains("OK"), "{out}");
}

async fn scratch_database(admin: &PgPool) -> (String, String) {
    let name = format!("import_{}", Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(admin)
        .await
        .expect("create database");
    (
        name.clone(),
        format!("postgres://postgres@127.0.0.1:5432/{name}"),
    )
}

async fn drop_database(admin: &PgPool, name: &str) {
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(admin)
        .await;
}

async fn event_count(url: &str) -> i64 {
    let pool = PgPool::connect(url).await.expect("connect");
    let n = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap_or(0);
    pool.close().await;
    n
}

/// `export` while writers append, to S3 (SeaweedFS); `import` into an empty
/// database gives the same events, byte for byte (restore-check against the
/// manifest). A flipped byte, a wrong key or a non-empty target make
/// `import` refuse, saying why, and write nothing.
#[sqlx::test(migrator = "infra::postgres::MIGRATOR")]
async fn an_export_under_load_imports_identically_and_refuses_any_alteration(pool: PgPool) {
    let tmp = TempDir::new("export");
    let certs = Certs::new(&tmp.0, "weed");
    let weed = Weed::start(&certs.cert, &certs.key);
    let url = common::database_url(&pool).await;
    let key = tmp.path("archive.key");
    std::fs::write(
        &key,
        format!("{}{}\n", Uuid::new_v4().simple(), Uuid::new_v4().simple()),
    )
    .expect("key");
    let key_env = [("COPILOT_ARCHIVE_KEY_FILE", key.display().to_string())];
    let s3_env = [
        ("AWS_ACCESS_KEY_ID", weed.access_key.clone()),
        ("AWS_SECRET_ACCESS_KEY", weed.secret_key.clone()),
        ("AWS_REGION", "us-east-1".to_string()),
        (
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{}", weed.s3_http),
        ),
        ("AWS_ALLOW_HTTP", "true".to_string()),
        ("COPILOT_ARCHIVE_KEY_FILE", key.display().to_string()),
    ];

    let (writers, prefix) = Writers::start(&url, 3).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let location = format!("s3://backups/export-{}", Uuid::new_v4().simple());
    // The bucket is created as SeaweedFS starts: the first export may find
    // it missing.
    let deadline = Instant::now() + Duration::from_secs(30);
    let out = loop {
        let (ok, out) = run_cli(&url, &["export", &location], &s3_env).await;
        if ok {
            break out;
        }
        assert!(Instant::now() < deadline, "export: {out}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let ledger = writers.stop().await;
    delete_streams(&prefix).await;
    assert!(out.contains("exported"), "{out}");
    let acked = ledger.iter().filter(|s| s.acked.is_some()).count();
    let total = event_count(&url).await;
    assert!(acked > 20 && total > 0);

    let (target, target_url) = scratch_database(&pool).await;
    let (ok, out) = run_cli(&target_url, &["import", &location], &s3_env).await;
    assert!(ok, "import: {out}");
    let (ok, out) = run_cli(
        &target_url,
        &["restore-check", "--archive", &location],
        &s3_env,
    )
    .await;
    assert!(ok, "restore-check against the manifest: {out}");
    assert!(out.contains("identical to the archive"), "{out}");
    let imported = event_count(&target_url).await;
    assert!(imported > 0 && imported <= total, "{imported} of {total}");
    // Importing again into a database that holds events is refused.
    let (ok, out) = run_cli(&target_url, &["import", &location], &s3_env).await;
    assert!(!ok && out.contains("not empty"), "{out}");
    assert_eq!(event_count(&target_url).await, imported);
    drop_database(&pool, &target).await;

    // A local copy, altered.
    let folder = tmp.path("archive");
    let folder_text = folder.display().to_string();
    let (ok, out) = run_cli(&url, &["export", &folder_text], &key_env).await;
    assert!(ok, "export to a folder: {out}");
    let (ok, out) = run_cli(&url, &["export", &folder_text], &key_env).await;
    assert!(!ok && out.contains("already holds an archive"), "{out}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(folder.join("manifest.json")).expect("manifest"))
            .expect("json");
    let events_part = manifest["parts"]
        .as_array()
        .expect("parts")
        .iter()
        .find(|p| p["table"] == "events")
        .expect("an events part")["name"]
        .as_str()
        .expect("name")
        .to_string();
    let part = folder.join(&events_part);
    let original = std::fs::read(&part).expect("part");
    let mut flipped = original.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    std::fs::write(&part, &flipped).expect("flip");
    let (target, target_url) = scratch_database(&pool).await;
    let (ok, out) = run_cli(&target_url, &["import", &folder_text], &key_env).await;
    assert!(!ok, "an altered archive was imported");
    assert!(
        out.contains(&events_part) && out.contains("sha256") && out.contains("nothing was written"),
        "{out}"
    );
    assert_eq!(event_count(&target_url).await, 0, "nothing written");
    std::fs::write(&part, &original).expect("restore the part");

    // The manifest altered (a count) fails its tag.
    let manifest_path = folder.join("manifest.json");
    let text = std::fs::read_to_string(&manifest_path).expect("manifest");
    let altered = text.replacen("\"events\": ", "\"events\": 1", 1);
    std::fs::write(&manifest_path, &altered).expect("alter");
    let (ok, out) = run_cli(&target_url, &["import", &folder_text], &key_env).await;
    assert!(!ok && out.contains("manifest.json was altered"), "{out}");
    std::fs::write(&manifest_path, &text).expect("restore the manifest");

    // A wrong key.
    let wrong = tmp.path("wrong.key");
    std::fs::write(
        &wrong,
        format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple()),
    )
    .expect("key");
    let (ok, out) = run_cli(
        &target_url,
        &["import", &folder_text],
        &[("COPILOT_ARCHIVE_KEY_FILE", wrong.display().to_string())],
    )
    .await;
    assert!(!ok && out.contains("does not open with this key"), "{out}");
    assert_eq!(event_count(&target_url).await, 0, "nothing written");

    // A key file that is not 64 hex digits, and a location that is neither
    // a folder nor s3://: refused before anything is read or written.
    let short = tmp.path("short.key");
    std::fs::write(&short, "abc123\n").expect("key");
    let short_env = [("COPILOT_ARCHIVE_KEY_FILE", short.display().to_string())];
    let elsewhere = tmp.path("elsewhere");
    let elsewhere_text = elsewhere.display().to_string();
    let (ok, out) = run_cli(&url, &["export", &elsewhere_text], &short_env).await;
    assert!(!ok && out.contains("64 hexadecimal digits"), "{out}");
    assert!(!elsewhere.exists(), "nothing written");
    let (ok, out) = run_cli(&target_url, &["import", &folder_text], &short_env).await;
    assert!(!ok && out.contains("64 hexadecimal digits"), "{out}");
    let missing = tmp.path("no-such-archive");
    let (ok, out) = run_cli(
        &target_url,
        &["import", &missing.display().to_string()],
        &key_env,
    )
    .await;
    assert!(!ok && out.contains("no such folder"), "{out}");
    assert!(!missing.exists(), "a mistyped folder is not created");
    let (ok, out) = run_cli(&url, &["export", "ftp://host/archive"], &key_env).await;
    assert!(!ok && out.contains("a local path or an s3:// URL"), "{out}");
    let (ok, out) = run_cli(&url, &["export", "s3:///no-bucket"], &key_env).await;
    assert!(!ok && out.contains("names a bucket"), "{out}");
    assert_eq!(event_count(&target_url).await, 0, "nothing written");

    // Untouched again, it imports.
    let (ok, out) = run_cli(&target_url, &["import", &folder_text], &key_env).await;
    assert!(ok, "import of the restored archive: {out}");
    assert_eq!(event_count(&target_url).await, total);
    drop_database(&pool, &target).await;
}
