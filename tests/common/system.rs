//! A whole `copilot-data up` on a test's own database, NATS prefix, Redis
//! key prefix and HTTP port, and the binary's other commands against it.

use std::process::Stdio;
use std::time::Duration;

use sqlx::PgPool;
use tokio::process::{Child, Command};

pub struct System {
    pub url: String,
    pub prefix: String,
    pub redis_prefix: String,
    pub bootstrap: String,
    pub http: String,
    up: Option<Child>,
}

impl System {
    /// Starts `up` (vectors and the relay off).
    pub async fn start(pool: &PgPool) -> System {
        System::start_with(pool, &[], None).await
    }

    /// Starts `up` with `env` on top of the usual settings, its output
    /// (both streams) written to `log` if given.
    pub async fn start_with(
        pool: &PgPool,
        env: &[(&str, &str)],
        log: Option<&std::path::Path>,
    ) -> System {
        let mut system = System::prepare(pool).await;
        let mut up = system.command(&["up"]);
        up.envs(env.iter().copied());
        match log {
            Some(path) => {
                let file = std::fs::File::create(path).expect("the log file");
                let copy = file.try_clone().expect("the log file");
                up.stdout(Stdio::from(file)).stderr(Stdio::from(copy));
            }
            None => {
                up.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        system.up = Some(up.spawn().expect("start copilot-data up"));
        system
    }

    /// Its names and settings, nothing started.
    pub async fn prepare(pool: &PgPool) -> System {
        let names = testkit::stack::Names::fresh();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        System {
            url: super::database_url(pool).await,
            prefix: names.nats_prefix,
            redis_prefix: names.redis_prefix,
            bootstrap: names.bootstrap,
            http: format!("127.0.0.1:{port}"),
            up: None,
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_copilot-data"));
        command.args(args);
        self.configure(&mut command);
        command
    }

    /// Points `command` (the binary, or a script that runs it) at this
    /// system: its database, prefixes, port and bootstrap token.
    pub fn configure(&self, command: &mut Command) {
        command
            .env("COPILOT_DATABASE_URL", &self.url)
            .env("COPILOT_NATS_PREFIX", &self.prefix)
            .env("COPILOT_REDIS_PREFIX", &self.redis_prefix)
            .env("COPILOT_BOOTSTRAP_TOKEN", &self.bootstrap)
            .env("COPILOT_MASTER_KEY", super::TEST_MASTER_KEY)
            .env("COPILOT_HTTP_ADDR", &self.http)
            .env("COPILOT_METRICS_ADDR", "off")
            .env("COPILOT_PROJECTOR_VECTORS", "false")
            .env("COPILOT_PROJECTOR_RELAY", "false")
            .env("COPILOT_DATABASE_MAX_CONNECTIONS", "12")
            .env("COPILOT_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
    }

    /// Runs one of the binary's commands to its end: (succeeded, stdout,
    /// stderr); `token` is its COPILOT_TOKEN.
    pub async fn run(&self, args: &[&str], token: Option<&str>) -> (bool, String, String) {
        let mut command = self.command(args);
        if let Some(token) = token {
            command.env("COPILOT_TOKEN", token);
        }
        let out = tokio::time::timeout(Duration::from_secs(60), command.output())
            .await
            .expect("finished in time")
            .expect("ran");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `send` until the system answers (it is still starting at first).
    pub async fn send_when_up(&self, args: &[&str], token: &str) -> (bool, String) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let mut all = vec!["send"];
            all.extend_from_slice(args);
            let (ok, stdout, stderr) = self.run(&all, Some(token)).await;
            if ok || stdout.contains("\"status\"") {
                return (ok, stdout);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "up never answered: {stderr}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Stops `up` and removes its streams and Redis keys.
    pub async fn finish(mut self) {
        if let Some(mut up) = self.up.take() {
            let _ = up.kill().await;
        }
        testkit::stack::clean_up(&self.prefix, &self.redis_prefix).await;
    }
}
