//! `copilot-data bench <workload>`: each figure measured beside a raw
//! baseline in the same run, printed as a table or (`--json`) as the array
//! of the contract.

mod append;
mod commands;
mod cpu;
mod query;
mod replay;
mod report;
mod scratch;
mod vectors;

use infra::Settings;

use crate::cli::{BenchArgs, Workload};

pub async fn run(args: BenchArgs, settings: &Settings) -> anyhow::Result<()> {
    let figures = match args.workload {
        Workload::Append => append::run(&args, settings).await?,
        Workload::Commands => commands::run(&args, settings).await?,
        Workload::Replay => replay::run(&args, settings).await?,
        Workload::Vectors => vectors::run(&args, settings).await?,
        Workload::Query => query::run(&args, settings).await?,
    };
    if args.json {
        report::print_json(&figures)
    } else {
        report::print_table(&figures)
    }
}
