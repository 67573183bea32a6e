//! The command line: one subcommand per role or operation.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "copilot-data",
    version,
    about = "Event-sourced data layer of an LLM copilot agent",
    after_help = "Settings: defaults, then the TOML file, then COPILOT_* variables (each also as \
                  <NAME>_FILE). `copilot-data config check --explain` lists every variable."
)]
pub struct Cli {
    /// Configuration file (default: config/copilot.toml if it exists);
    /// COPILOT_* environment variables override it.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log one JSON object per line instead of compact text.
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Operation,
}

#[derive(Debug, Subcommand)]
pub enum Operation {
    /// Create the database if missing, apply migrations, and exit.
    Migrate,
    /// Run every role in one process until SIGTERM or Ctrl-C.
    Up,
    /// Run the command service (NATS intake) until SIGTERM or Ctrl-C.
    CommandService,
    /// Run the projector (read models and audit log) until SIGTERM or Ctrl-C.
    Projector,
    /// Run the vector projection alone (embedding into the vector
    /// collections) until SIGTERM or Ctrl-C: embedding in a process, or on
    /// a host, of its own. Run the projector beside it with
    /// COPILOT_PROJECTOR_VECTORS=false.
    Embedder,
    /// Run the query API (HTTP, COPILOT_HTTP_ADDR) until SIGTERM or Ctrl-C.
    QueryService,
    /// Rebuild SQL projections from the start of the log. Without a limit
    /// it builds blue/green into a shadow schema and swaps it in; with
    /// --until-position or --until-time it builds `<schema>_asof` for
    /// inspection and leaves the live projection alone.
    Replay(ReplayArgs),
    /// Rebuild every SQL projection into a scratch schema up to the live
    /// checkpoint and compare them table by table; exits non-zero on any
    /// difference.
    Verify(ProjectionArgs),
    /// Write the event log and the command side's tables as an archive
    /// (gzip, AES-256-GCM, sha256 per part, a manifest) to a folder or an
    /// s3:// URL, from one snapshot while writers go on.
    Export(ArchiveArgs),
    /// Load an archive into an empty database (one transaction: anything
    /// altered, missing or under another key is refused and nothing is
    /// written), then rebuild the read models with `restore-check`.
    Import(ArchiveArgs),
    /// After a restore: check the log is whole (contiguous stream versions,
    /// one outcome per command id, the archive's checksums with --archive),
    /// rebuild every SQL projection from it and verify them; exits non-zero
    /// on any failure.
    RestoreCheck(RestoreCheckArgs),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditOperation),
    /// The configuration.
    #[command(subcommand)]
    Config(ConfigOperation),
    /// The data keys that seal each user's personal data (crypto-shredding).
    #[command(subcommand)]
    Keys(KeysOperation),
    /// Where every projection is (position, lag, lease holder, stopped),
    /// the parked events, the NATS streams and consumers, Redis.
    Status,
    /// A projection stopped at a parked poison event.
    #[command(subcommand)]
    Projection(ProjectionOperation),
    /// Send one command over NATS request/reply and print its result
    /// (exits 1 unless it is accepted). The credential comes from
    /// COPILOT_TOKEN (a session token or an API key).
    Send(SendArgs),
    /// Measure a workload beside its raw baseline.
    Bench(BenchArgs),
    /// Accounts, from the machine that owns the database.
    #[command(subcommand)]
    Admin(AdminOperation),
    /// A simulated agent: users signing in, conversations, workflow runs,
    /// incidents and documents, sent as commands over NATS at a chosen rate.
    Demo(DemoArgs),
}

#[derive(Debug, Subcommand)]
pub enum KeysOperation {
    /// Data keys per master key (by fingerprint), and destroyed ones.
    Status,
    /// Re-wrap every data key, and re-seal every TOTP seed, under the
    /// current master key (the first of COPILOT_MASTER_KEY); events are not
    /// rewritten. Afterwards the old key can be removed from the list.
    Rotate,
}

#[derive(Debug, Subcommand)]
pub enum AdminOperation {
    /// Create an admin and print a sign-in token (and the password, when
    /// it is generated): the first way in, with no bootstrap token needed.
    Create(AdminCreateArgs),
    /// Sign in as an existing user (password on standard input) and print a
    /// new session token, for the dashboard.
    Token(AdminTokenArgs),
}

#[derive(Debug, Args)]
pub struct AdminTokenArgs {
    #[arg(long)]
    pub email: String,
}

#[derive(Debug, Args)]
pub struct AdminCreateArgs {
    /// The admin's e-mail (what they sign in with).
    #[arg(long)]
    pub email: String,
    #[arg(long, default_value = "Administrator")]
    pub display_name: String,
    /// Read the password from standard input (one line; prompted for on a
    /// terminal) instead of generating one.
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Debug, Subcommand)]
pub enum ConfigOperation {
    /// Validate the configuration and print the effective settings, secrets
    /// masked (exits non-zero, naming the variable or key, when invalid).
    Check {
        /// List every COPILOT_* variable and the setting it sets instead.
        #[arg(long)]
        explain: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProjectionOperation {
    /// Go on after the parked event at --position (it stays in the log and
    /// in projection_errors, marked skipped); the running projector
    /// continues within a second.
    Skip(SkipArgs),
    /// Try the parked event again (after a fix), without restarting.
    Retry(RetryArgs),
}

#[derive(Debug, Args)]
pub struct SkipArgs {
    /// relational or audit.
    pub name: String,
    /// The parked event's position (`generation.tx_id.seq`, as `status` shows).
    #[arg(long)]
    pub position: eventstore::Position,
}

#[derive(Debug, Args)]
pub struct RetryArgs {
    /// relational or audit.
    pub name: String,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// The command type, e.g. `incident.open`.
    pub command_type: String,
    /// The payload, as JSON.
    #[arg(long)]
    pub json: String,
    /// The aggregate the command is for (default: a new UUIDv7).
    #[arg(long)]
    pub aggregate: Option<uuid::Uuid>,
    /// Its command id (default: a new UUIDv7); resending one replays its result.
    #[arg(long)]
    pub command_id: Option<uuid::Uuid>,
}

#[derive(Debug, Args)]
pub struct ArchiveArgs {
    /// A local folder or s3://bucket/prefix (S3 settings from the AWS_*
    /// variables: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION,
    /// AWS_ENDPOINT_URL, AWS_ALLOW_HTTP). For export, `{timestamp}` in it
    /// becomes the UTC time (20261206T010000Z).
    pub location: String,
    /// The archive key: a file of 64 hexadecimal digits (openssl rand -hex 32).
    #[arg(long, env = "COPILOT_ARCHIVE_KEY_FILE", value_name = "FILE")]
    pub key_file: PathBuf,
}

#[derive(Debug, Args)]
pub struct RestoreCheckArgs {
    /// Also compare the log with this archive's manifest (the archive an
    /// import came from).
    #[arg(long, requires = "key_file")]
    pub archive: Option<String>,
    /// The archive's key file.
    #[arg(long, env = "COPILOT_ARCHIVE_KEY_FILE", value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Events per transaction of the rebuild.
    #[arg(long, default_value_t = 5000)]
    pub batch_size: usize,
}

#[derive(Debug, Subcommand)]
pub enum AuditOperation {
    /// Create the coming months' partitions and drop those older than the
    /// twelve-month retention.
    Prune,
}

#[derive(Debug, Args)]
pub struct ProjectionArgs {
    /// A projection to include (relational, audit; for replay also redis, vectors);
    /// default: all SQL ones.
    #[arg(long = "projection", value_name = "NAME")]
    pub projections: Vec<String>,
    /// Events per transaction.
    #[arg(long, default_value_t = 5000)]
    pub batch_size: usize,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub select: ProjectionArgs,
    /// Stop after this position (`generation.tx_id.seq`).
    #[arg(long, conflicts_with = "until_time")]
    pub until_position: Option<eventstore::Position>,
    /// Stop at the last event recorded at or before this time (RFC 3339).
    #[arg(long)]
    pub until_time: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Commands per second, across all simulated agents.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// How long to run, in seconds (0 = until Ctrl-C).
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Simulated agents working at once (each a signed-in user).
    #[arg(long, default_value_t = 4)]
    pub agents: usize,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[arg(value_enum)]
    pub workload: Workload,
    /// Print one JSON array on standard output instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Seconds each write configuration runs.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Keep the scratch database instead of dropping it.
    #[arg(long)]
    pub keep: bool,
    /// Events generated for `replay`.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Points stored for `vectors`.
    #[arg(long, default_value_t = 100_000)]
    pub points: usize,
    /// Texts really embedded for `vectors` (the other points are mixes of them).
    #[arg(long, default_value_t = 2_000)]
    pub real: usize,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Workload {
    /// Event store appends (1, 8, 32 writers; 1 and 10 events) and read-back,
    /// beside bare INSERTs and a sequential scan.
    Append,
    /// 32 agents sending commands over NATS request/reply, beside a bare
    /// NATS echo responder, bare single-row INSERTs, and three floors: NATS
    /// requests group-committed as bare rows, by the event store's append
    /// statement, and through its append call.
    Commands,
    /// Rebuild every SQL projection (audit log included) from a generated
    /// log (--events), beside a bare binary COPY of the same final rows.
    Replay,
    /// The local embedder (batched, beside one at a time) and the embedded
    /// vector store on --points points: upsert rate, HNSW search p50/p99
    /// and recall@10, beside exact search.
    Vectors,
    /// The vector projection of a generated log holding --real embeddable
    /// items: rebuilt from the start with the kept embeddings, beside its
    /// first projection (every text embedded).
    VectorRebuild,
    /// 32 clients reading three query API endpoints, cached and uncached,
    /// beside a bare Redis GET and the endpoint's bare SQL.
    Query,
    /// How soon a command's effect can be read (query API, Redis, search)
    /// while agents send the demo mix at 10, 50 and 90 % of its sustainable
    /// rate (--seconds per level), beside the same at no load.
    Lag,
}
