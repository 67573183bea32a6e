//! The command line: one subcommand per role or operation.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "copilot-data",
    version,
    about = "Event-sourced data layer of an LLM copilot agent"
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
    /// Measure a workload beside its raw baseline.
    Bench(BenchArgs),
    /// A simulated agent: users signing in, conversations, workflow runs,
    /// incidents and documents, sent as commands over NATS at a chosen rate.
    Demo(DemoArgs),
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
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Workload {
    /// Event store appends (1, 8, 32 writers; 1 and 10 events) and read-back,
    /// beside bare INSERTs and a sequential scan.
    Append,
    /// 32 agents sending commands over NATS request/reply, beside a bare
    /// NATS echo responder and bare single-row INSERTs.
    Commands,
}
