//! `copilot-data bench <workload>`: each figure measured beside a raw
//! baseline in the same run, printed as a table or (`--json`) as the array
//! of the contract.

mod append;
mod commands;
mod cpu;
mod floor;
mod lag;
mod query;
mod replay;
mod report;
mod scratch;
mod stack;
mod vector_rebuild;
mod vectors;

use infra::Settings;

use crate::cli::{BenchArgs, Workload};

pub async fn run(args: BenchArgs, settings: &Settings) -> anyhow::Result<()> {
    let measured = tokio::select! {
        figures = measure(&args, settings) => figures,
        () = crate::shutdown::signal() => Err(anyhow::anyhow!("the bench was interrupted")),
    };
    // What a failed or interrupted workload could not remove itself.
    scratch::remove_leftovers().await;
    let figures = measured?;
    if args.json {
        report::print_json(&figures)
    } else {
        report::print_table(&figures)
    }
}

async fn measure(args: &BenchArgs, settings: &Settings) -> anyhow::Result<Vec<report::Figure>> {
    match args.workload {
        Workload::Append => append::run(args, settings).await,
        Workload::Commands => commands::run(args, settings).await,
        Workload::Replay => replay::run(args, settings).await,
        Workload::Vectors => vectors::run(args, settings).await,
        Workload::VectorRebuild => vector_rebuild::run(args, settings).await,
        Workload::Query => query::run(args, settings).await,
        Workload::Lag => lag::run(args, settings).await,
    }
}
