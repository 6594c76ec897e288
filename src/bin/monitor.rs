//! `monitor`: live progress of every shard of a run (see the README).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use shardrun::error::{Error, Result};
use shardrun::monitor::screen::Screen;
use shardrun::monitor::{display, failures, plan_shards, Monitor};
use shardrun::runs::find_run;
use shardrun::stdout;

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
    let positive = |x: f64| x > 0.0 && x.is_finite();
    if !(positive(cli.interval) && positive(cli.stall)) {
        return Err(Error::usage(
            "--interval and --stall must be positive numbers of seconds",
        ));
    }
    let run = find_run(
        cli.config.as_deref(),
        cli.run.as_deref(),
        cli.root.as_deref(),
    )?;
    if run.picked {
        eprintln!("monitor: watching the most recently active run {:?} (pass --run or --config to choose)", run.name);
    }
    let num_shards = cli
        .num_shards
        .or_else(|| plan_shards(&run.paths))
        .or(run.config.as_ref().and_then(|c| c.shards))
        .ok_or_else(|| {
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
    follow(cli, &mut monitor)
}

fn follow(cli: &Cli, monitor: &mut Monitor) -> Result<i32> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| Error::usage(format!("cannot install signal handlers: {e}")))?;
    }
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
