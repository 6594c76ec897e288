//! `monitor`: live progress of every shard of a run (see the README).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use shardrun::error::{Error, Result};
use shardrun::format::stdout;
use shardrun::monitor::screen::Screen;
use shardrun::monitor::{display, failures, plan_shards, Monitor};
use shardrun::run::runs::find_run;

/// Shows progress, ETA, rows and the health of every shard of a run.
#[derive(Debug, Parser)]
#[command(name = "monitor", version)]
struct Cli {
    /// Run configuration (YAML); its `run` names the run.
    #[arg(long, conflicts_with = "run")]
    config: Option<PathBuf>,
    /// Run name (`logs/<run>/`). Default: the most recently active run under logs/.
    #[arg(long)]
    run: Option<String>,
    /// Root directory holding data/ and logs/ (default: .).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Keep refreshing until every shard has ended (exit 0 if all succeeded, else 1).
    #[arg(long)]
    follow: bool,
    /// Seconds between refreshes with --follow.
    #[arg(long, default_value_t = 2.0)]
    interval: f64,
    /// Print the snapshot (or the failures) as one JSON document.
    #[arg(long)]
    json: bool,
    /// List every failed item: shard, key, attempts, last reason, its last stderr lines and the
    /// command that prints its lines of the shard log.
    #[arg(long, conflicts_with = "follow")]
    failures: bool,
    /// A running shard whose log has been silent this many seconds is flagged stalled (and, on
    /// another host, counted as died).
    #[arg(long, default_value_t = 300.0)]
    stall: f64,
    /// Shard count, when neither the launcher's status file nor the logs tell it.
    #[arg(long)]
    num_shards: Option<u32>,
}

/// Upper bound of `--interval` and `--stall`, in seconds.
const MAX_SECONDS: f64 = 604_800.0;

fn main() {
    let cli = Cli::parse();
    let code = match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("monitor: error: {e}");
            e.exit_code().code()
        }
    };
    std::process::exit(code);
}

fn run(cli: &Cli) -> Result<i32> {
    // Bounded so that a duration is always representable (1e300 s would overflow it).
    let in_range = |x: f64| x > 0.0 && x <= MAX_SECONDS;
    if !(in_range(cli.interval) && in_range(cli.stall)) {
        return Err(Error::usage(format!(
            "--interval and --stall must be numbers of seconds above 0 and at most {MAX_SECONDS} (a week)"
        )));
    }
    if cli
        .num_shards
        .is_some_and(|n| !(1..=shardrun::run::config::MAX_SHARDS).contains(&n))
    {
        return Err(Error::usage(format!(
            "--num-shards must be 1 to {}",
            shardrun::run::config::MAX_SHARDS
        )));
    }
    let stop = Arc::new(AtomicBool::new(false));
    if cli.follow {
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(sig, stop.clone())
                .map_err(|e| Error::usage(format!("cannot install signal handlers: {e}")))?;
        }
        if !wait_for_start(cli, &stop)? {
            return Ok(130);
        }
    }
    let run = find_run(
        cli.config.as_deref(),
        cli.run.as_deref(),
        cli.root.as_deref(),
    )?;
    if run.picked {
        eprintln!("monitor: watching the most recently active run {:?} (pass --run or --config to choose)", run.name);
    }
    let mut num_shards = shard_count(cli, &run);
    // Following a run that is starting: its plan is known once a launcher or a worker wrote it.
    while cli.follow && num_shards.is_none() {
        if !pause(cli, &stop) {
            return Ok(130);
        }
        num_shards = shard_count(cli, &run);
    }
    let num_shards = num_shards.ok_or_else(|| {
        Error::usage(format!(
            "run {:?} has no shard logs yet; pass --num-shards",
            run.name
        ))
    })?;
    if cli.failures {
        let report = failures::failures(&run.name, &run.paths, num_shards)?;
        if cli.json {
            stdout::println(&serde_json::to_string_pretty(&report).unwrap_or_default());
        } else {
            stdout::print(&failures::text(&report));
        }
        return Ok(0);
    }
    let mut monitor = Monitor::new(
        &run.name,
        &run.paths,
        num_shards,
        Duration::from_secs_f64(cli.stall),
    )
    .with_config(run.config.clone());
    if !cli.follow {
        let snap = monitor.snapshot();
        if cli.json {
            stdout::println(&serde_json::to_string_pretty(&snap).unwrap_or_default());
        } else {
            stdout::print(&display::table(&snap));
        }
        return Ok(0);
    }
    follow(cli, &mut monitor, &stop)
}

fn shard_count(cli: &Cli, run: &shardrun::run::runs::RunRef) -> Option<u32> {
    cli.num_shards
        .or_else(|| plan_shards(&run.paths))
        .or(run.config.as_ref().and_then(|c| c.shards))
}

/// With `--follow` and a named run (`--config` or `--run`) that has not started yet, waits for
/// its directories to appear (saying so once); false if interrupted meanwhile.
fn wait_for_start(cli: &Cli, stop: &AtomicBool) -> Result<bool> {
    let root = shardrun::worker::shard::resolve_root(cli.root.as_deref())?;
    let name = match (&cli.config, &cli.run) {
        (Some(c), None) => shardrun::run::config::Config::load(c, &root)?.run,
        (None, Some(r)) => r.clone(),
        _ => return Ok(true),
    };
    let paths = shardrun::run::paths::RunPaths::new(&root, &name);
    let mut said = false;
    while !paths.data_dir.is_dir() && !paths.logs_dir.is_dir() {
        if !said {
            eprintln!("monitor: run {name:?} has not started yet; waiting for it (Ctrl-C to stop)");
            said = true;
        }
        if !pause(cli, stop) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Sleeps one `--interval` in short steps; false if a stop was requested.
fn pause(cli: &Cli, stop: &AtomicBool) -> bool {
    let until = Instant::now() + Duration::from_secs_f64(cli.interval);
    while Instant::now() < until {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        std::thread::sleep(
            Duration::from_millis(50).min(until.saturating_duration_since(Instant::now())),
        );
    }
    !stop.load(Ordering::SeqCst)
}

fn follow(cli: &Cli, monitor: &mut Monitor, stop: &AtomicBool) -> Result<i32> {
    let interval = Duration::from_secs_f64(cli.interval);
    let mut screen = (!cli.json && std::io::stdout().is_terminal()).then(Screen::new);
    loop {
        let snap = monitor.snapshot();
        match (&mut screen, cli.json) {
            (_, true) => stdout::println(&serde_json::to_string(&snap).unwrap_or_default()),
            (Some(sc), false) => sc.draw(&snap),
            (None, false) => stdout::print(&display::plain_line(&snap)),
        }
        // The last frame stays on screen as the final report.
        if snap.all_ended() {
            return Ok(if snap.all_done() { 0 } else { 1 });
        }
        // A Slurm run whose jobs have all left the queue: what has not started never will.
        if let Some(v) = snap.slurm.as_ref().filter(|v| v.ended()) {
            if screen.is_some() {
                if let Some(line) = v.line() {
                    eprintln!("monitor: {line}");
                }
            }
            return Ok(if snap.all_done() { 0 } else { 1 });
        }
        let until = Instant::now() + interval;
        while Instant::now() < until {
            if stop.load(Ordering::SeqCst) {
                return Ok(130);
            }
            std::thread::sleep(
                Duration::from_millis(50).min(until.saturating_duration_since(Instant::now())),
            );
        }
    }
}
