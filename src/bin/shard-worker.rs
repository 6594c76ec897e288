//! `shard-worker`: runs one shard of a run (see the README).

use std::path::PathBuf;

use clap::Parser;
use shardrun::worker::shard::WorkerArgs;

/// Runs one shard: turns its slice of the work items into `<name>.csv`, resumably.
#[derive(Debug, Parser)]
#[command(name = "shard-worker", version)]
struct Cli {
    /// Run configuration (YAML).
    #[arg(long, default_value = "conf/default.yaml")]
    config: PathBuf,
    /// This shard's index, 0-based (default: $SLURM_ARRAY_TASK_ID or $JOB_COMPLETION_INDEX).
    #[arg(long)]
    shard_index: Option<u32>,
    /// Number of shards of the run (required with a shard index; default without one: 1).
    #[arg(long)]
    num_shards: Option<u32>,
    /// Data file name, without .csv (default: `process-<shard-index>`).
    #[arg(long)]
    name: Option<String>,
    /// Discard this shard's outputs (not the cache) and regenerate it.
    #[arg(long)]
    force: bool,
    /// Print this shard's items (count, first and last key) and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Items in flight within the shard (overrides generator.jobs).
    #[arg(long)]
    jobs: Option<u32>,
    /// Neither read nor write the item cache.
    #[arg(long)]
    no_cache: bool,
    /// Directory that relative paths resolve against and commands run in (default: .).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Write log lines only to the shard log, not also to stderr.
    #[arg(long)]
    quiet: bool,
    /// Print the run's name, default shard count and directories as key=value lines, and exit.
    #[arg(long)]
    describe: bool,
    /// Also regenerate the committed items that an older revision of the generator made
    /// (a changed script or generator.version); the new commits supersede the old ones.
    #[arg(long, conflicts_with = "force")]
    redo_stale: bool,
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
    let args = WorkerArgs {
        config: cli.config,
        shard_index: cli.shard_index,
        num_shards: cli.num_shards,
        name: cli.name,
        force: cli.force,
        dry_run: cli.dry_run,
        jobs: cli.jobs,
        no_cache: cli.no_cache,
        root: cli.root,
        quiet: cli.quiet,
        describe: cli.describe,
        redo_stale: cli.redo_stale,
    };
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
