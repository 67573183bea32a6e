//! Servers of a test's own, on free loopback ports and in temporary
//! directories, stopped and removed when dropped: a PostgreSQL cluster, and
//! any program (Redis, NATS) killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (free when asked; the server binds it next).
///
/// Chosen below the kernel's ephemeral range (32768 and up by default): a
/// port the kernel picked for us is free only until it gives it out again,
/// as the source port of any outgoing connection, and a server that lost
/// its port that way (SeaweedFS under a loaded test run) exits. Never the
/// same port twice in one test process.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let random = u16::from_le_bytes(
            uuid::Uuid::new_v4().as_bytes()[..2]
                .try_into()
                .expect("two bytes"),
        );
        let port = 20_000 + random % 12_000;
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if given.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
}

/// A directory removed when dropped; readable by the `postgres` user.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("copilot-{what}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        set_mode(&dir, 0o755);
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
}

/// Waits until `port` accepts connections, or panics naming `what`.
pub fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not come up on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A process killed when dropped.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `program` with `args`, output discarded.
pub fn spawn(program: &str, args: &[&str]) -> Server {
    Server(
        Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {program}: {e}")),
    )
}

/// A PostgreSQL cluster of the test's own (initdb will not run as root,
/// so the cluster belongs to `postgres`), stopped and removed when dropped.
pub struct PgCluster {
    pub port: u16,
    pub dir: TempDir,
    bin: PathBuf,
}

fn pg_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("/usr/lib/postgresql")
        .flatten()
        .map(|e| e.path().join("bin"))
        .collect();
    versions.sort();
    versions.pop().expect("a PostgreSQL installation")
}

fn as_postgres(program: &Path) -> Command {
    let running_as_root = std::env::var("USER").map_or(true, |u| u != "postgres");
    if running_as_root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

impl PgCluster {
    /// A new cluster; `configure` may add lines to postgresql.conf and
    /// returns the pg_hba.conf to use (None: trust on loopback and socket).
    pub fn start(configure: impl FnOnce(&TempDir) -> (String, Option<String>)) -> PgCluster {
        let dir = TempDir::new("pg");
        let bin = pg_bin();
        let data = dir.path("data");
        let _ = Command::new("chown")
            .args(["-R", "postgres"])
            .arg(&dir.0)
            .status();
        let status = as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("initdb");
        assert!(status.success(), "initdb failed");
        let (extra, hba) = configure(&dir);
        if let Some(hba) = hba {
            std::fs::write(data.join("pg_hba.conf"), hba).expect("hba");
        }
        PgCluster::launch(dir, bin, &extra)
    }

    /// A cluster from a data directory `fill` writes into the path it is
    /// given (a restore), started with `extra` settings on a port of its own.
    pub fn restored(fill: impl FnOnce(&Path), extra: &str) -> PgCluster {
        let dir = TempDir::new("pg");
        let _ = Command::new("chown")
            .args(["-R", "postgres"])
            .arg(&dir.0)
            .status();
        fill(&dir.path("data"));
        PgCluster::launch(dir, pg_bin(), extra)
    }

    fn launch(dir: TempDir, bin: PathBuf, extra: &str) -> PgCluster {
        let data = dir.path("data");
        let port = free_port();
        let conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\n{extra}\n",
            dir.0.display()
        );
        let mut existing = std::fs::read_to_string(data.join("postgresql.conf")).expect("conf");
        existing.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), existing).expect("conf");
        let _ = Command::new("chown")
            .args(["-R", "postgres"])
            .arg(&dir.0)
            .status();
        let status = as_postgres(&bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.path("log"))
            .args(["-w", "-t", "120", "start"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("pg_ctl start");
        assert!(
            status.success(),
            "the cluster did not start: {}",
            std::fs::read_to_string(dir.path("log")).unwrap_or_default()
        );
        PgCluster { port, dir, bin }
    }

    /// Stops it at once (as a crash would) and removes its data directory:
    /// the cluster is lost.
    pub fn lose(&self) {
        self.stop_immediately();
        let _ = std::fs::remove_dir_all(self.dir.path("data"));
    }

    fn stop_immediately(&self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path("data"))
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Its server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path("log")).unwrap_or_default()
    }
}

/// Runs `program` with `args` as the `postgres` user (as PostgreSQL's own
/// tools must): its output, as `Ok` if it succeeded.
pub fn try_as_postgres(program: &str, args: &[&str]) -> Result<String, String> {
    let out = as_postgres(Path::new(program))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// SeaweedFS (`weed mini`, COPILOT_WEED or on PATH): an S3-compatible
/// object store with a bucket `backups`, serving S3 over HTTP and over
/// HTTPS with `certs`' server certificate, on ports of its own.
pub struct Weed {
    pub s3_http: u16,
    pub s3_https: u16,
    pub access_key: String,
    pub secret_key: String,
    _server: Server,
    _dir: TempDir,
}

impl Weed {
    pub fn start(cert: &Path, key: &Path) -> Weed {
        let program = std::env::var("COPILOT_WEED").unwrap_or_else(|_| "weed".to_string());
        let dir = TempDir::new("weed");
        let access_key = "copilot-backup".to_string();
        let secret_key = format!("secret-{}", uuid::Uuid::new_v4().simple());
        let config = dir.path("s3.json");
        std::fs::write(
            &config,
            serde_json::json!({"identities": [{"name": "backup",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]})
            .to_string(),
        )
        .expect("s3 config");
        std::fs::create_dir_all(dir.path("data")).expect("weed data");
        let p = || free_port().to_string();
        let (s3_http, s3_https) = (free_port(), free_port());
        let args: Vec<String> = vec![
            "mini".into(),
            format!("-dir={}", dir.path("data").display()),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-master.port={}", p()),
            format!("-master.port.grpc={}", p()),
            format!("-volume.port={}", p()),
            format!("-volume.port.grpc={}", p()),
            format!("-filer.port={}", p()),
            format!("-filer.port.grpc={}", p()),
            format!("-s3.port={s3_http}"),
            format!("-s3.port.grpc={}", p()),
            format!("-s3.port.https={s3_https}"),
            format!("-s3.cert.file={}", cert.display()),
            format!("-s3.key.file={}", key.display()),
            format!("-s3.config={}", config.display()),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            "-webdav=false".into(),
            "-admin.ui=false".into(),
            format!("-admin.port={}", p()),
            format!("-admin.port.grpc={}", p()),
            "-bucket=backups".into(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = spawn(&program, &args);
        wait_for_port(s3_http, "SeaweedFS S3");
        wait_for_port(s3_https, "SeaweedFS S3 (TLS)");
        Weed {
            s3_http,
            s3_https,
            access_key,
            secret_key,
            _server: server,
            _dir: dir,
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop_immediately();
    }
}
