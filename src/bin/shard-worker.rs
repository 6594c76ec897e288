//! `shard-worker`: runs one shard of a run (see the README).

use clap::Parser;
use shardrun::worker::shard::WorkerArgs;

/// Runs one shard: turns its slice of the work items into `<name>.csv`, resumably.
#[derive(Debug, Parser)]
#[command(name = "shard-worker", version)]
struct Cli {
    #[command(flatten)]
    args: WorkerArgs,
    /// Check everything this shard (or, with --num-shards and no --shard-index, every shard)
    /// needs before generating, and write nothing; exit 0 if it would start.
    #[arg(long, conflicts_with_all = ["dry_run", "describe"])]
    check: bool,
}

fn main() {
    // Not a user-facing option: how a worker starts the guard of its generators' groups.
    if std::env::args().nth(1).as_deref() == Some(shardrun::child::guard::GUARD_ARG) {
        std::process::exit(shardrun::child::guard::run());
    }
    let cli = Cli::parse();
    let args = cli.args;
    let result = if cli.check {
        shardrun::worker::preflight::run(&args)
    } else {
        shardrun::worker::run(&args)
    };
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shard-worker: error: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code.code());
}
