//! `copilot-data`: the command-line program of the copilot data layer.

mod admin;
mod agent;
mod bench;
mod cli;
mod demo;
mod operate;
mod ops;
mod recovery;
mod shutdown;
mod up;

use anyhow::Context;
use clap::Parser;
use infra::Settings;

use crate::cli::{
    AdminOperation, AuditOperation, Cli, ConfigOperation, KeysOperation, Operation,
    ProjectionOperation,
};

/// The services allocate and free many small, short-lived buffers per
/// command (decoded envelopes, events, replies, task cells) from several
/// threads; mimalloc's thread-local free lists make that a fraction of the
/// system allocator's cost (see "Allocator and task size" in
/// docs/performance-commands.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref()).context("loading configuration")?;
    infra::telemetry::init(&settings.log, cli.log_json);
    // Outside the runtime: the exporter sends from a thread of its own,
    // and flushes what is queued when dropped, after the runtime.
    let _traces = match settings.otlp_endpoint.as_deref() {
        Some(endpoint) => infra::traces::export(endpoint, "copilot-data")
            .context("starting trace export (otlp_endpoint, COPILOT_OTLP_ENDPOINT)")?,
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(cli.command, settings))
}

async fn run(command: Operation, settings: Settings) -> anyhow::Result<()> {
    match command {
        Operation::Migrate => {
            let pool = infra::postgres::prepare(&settings.database).await?;
            // Opening the store also starts a new generation after a restore.
            let store =
                eventstore::EventStore::connect(pool, up::store_options(&settings)?).await?;
            tracing::info!(generation = store.generation().await?, "database migrated");
            Ok(())
        }
        Operation::Up => up::run(settings, shutdown::signal()).await,
        Operation::CommandService => {
            let _metrics = up::serve_metrics(&settings).await?;
            up::command_service(settings, shutdown::signal()).await
        }
        Operation::Projector => {
            let _metrics = up::serve_metrics(&settings).await?;
            let vectors = up::vector_config(&settings).await?;
            up::projector(settings, shutdown::signal(), vectors).await
        }
        Operation::Embedder => {
            let vectors = up::vector_config(&settings).await?.context(
                "the vector projection is off (COPILOT_PROJECTOR_VECTORS=false): \
                 an embedder has nothing to run",
            )?;
            let _metrics = up::serve_metrics(&settings).await?;
            up::embedder(settings, shutdown::signal(), vectors).await
        }
        Operation::QueryService => {
            let search = up::standalone_search(&settings)?;
            up::query_service(settings, shutdown::signal(), search).await
        }
        Operation::Replay(args) => ops::replay(args, &settings).await,
        Operation::Verify(args) => ops::verify(args, &settings).await,
        Operation::Export(args) => recovery::export(&args, &settings).await,
        Operation::Import(args) => recovery::import(&args, &settings).await,
        Operation::RestoreCheck(args) => recovery::restore_check(&args, &settings).await,
        Operation::Audit(AuditOperation::Prune) => ops::audit_prune(&settings).await,
        Operation::Bench(args) => bench::run(args, &settings).await,
        Operation::Config(ConfigOperation::Check { explain }) => {
            operate::config_check(&settings, explain)
        }
        Operation::Status => operate::status(&settings).await,
        Operation::Keys(KeysOperation::Status) => operate::keys_status(&settings).await,
        Operation::Keys(KeysOperation::Rotate) => operate::keys_rotate(&settings).await,
        Operation::Projection(ProjectionOperation::Skip(args)) => {
            operate::skip(&args, &settings).await
        }
        Operation::Projection(ProjectionOperation::Retry(args)) => {
            operate::retry(&args, &settings).await
        }
        Operation::Send(args) => operate::send(&args, &settings).await,
        Operation::Admin(AdminOperation::Create(args)) => {
            let created = admin::create(&args, &settings).await?;
            admin::print(&created, &settings)
        }
        Operation::Admin(AdminOperation::Token(args)) => {
            let token = admin::token(&args, &settings).await?;
            use secrecy::ExposeSecret;
            use std::io::Write;
            writeln!(std::io::stdout(), "{}", token.expose_secret())?;
            Ok(())
        }
        Operation::Demo(args) => demo::run(args, &settings, shutdown::signal()).await,
    }
}
