//! `monitor`: live progress of every shard of a run (see the README).

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use shardrun::error::{Error, Result};
use shardrun::format::stdout;
use shardrun::monitor::screen::Screen;
use shardrun::monitor::{display, failures, notify, plan_shards, serve, Monitor};
use shardrun::run::runs::find_run;

/// Shows progress, ETA, rows and the health of every shard of a run.
#[derive(Debug, Parser)]
#[command(
    name = "monitor",
    version,
    after_help = "With --follow: --notify CMD [ARG...] ';' runs CMD (no shell) once the run has ended, \
                  with the run's summary as JSON on stdin and SHARDRUN_* variables; the ';' word \
                  (quoted for the shell) ends its words. Killed with its process group after \
                  --notify-timeout seconds; its failure never changes monitor's exit code."
)]
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
    /// Seconds between refreshes with --follow and --serve.
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
    /// Serve a live dashboard of the run at http://ADDR:PORT/ (ADDR defaults to 127.0.0.1; name
    /// another, e.g. 0.0.0.0:8080, to be reached from other machines) until Ctrl-C.
    #[arg(long, value_name = "[ADDR:]PORT", conflicts_with_all = ["follow", "json", "failures"])]
    serve: Option<String>,
    /// Seconds the --notify command may run before it is killed with its process group.
    #[arg(long, default_value_t = shardrun::monitor::notify::DEFAULT_TIMEOUT_S)]
    notify_timeout: f64,
    /// The run's exit code to tell the --notify command, which runs at once on the run as it
    /// is (the launchers' --notify uses it); without it --notify needs --follow.
    #[arg(long, hide = true)]
    notify_exit_code: Option<i32>,
}

/// Upper bound of `--interval` and `--stall`, in seconds.
const MAX_SECONDS: f64 = 604_800.0;

fn main() {
    // `--notify CMD ARG... ';'` is taken out first: its words are the command's, not options.
    let (notify, args) = match notify::take_notify(std::env::args_os().collect()) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("monitor: error: {e}");
            std::process::exit(e.exit_code().code());
        }
    };
    let cli = Cli::parse_from(args);
    let code = match run(&cli, notify.as_deref()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("monitor: error: {e}");
            e.exit_code().code()
        }
    };
    std::process::exit(code);
}

fn run(cli: &Cli, notify: Option<&[OsString]>) -> Result<i32> {
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
    if !in_range(cli.notify_timeout) {
        return Err(Error::usage(format!(
            "--notify-timeout must be a number of seconds above 0 and at most {MAX_SECONDS} (a week)"
        )));
    }
    if notify.is_some() && !cli.follow && cli.notify_exit_code.is_none() {
        return Err(Error::usage(
            "--notify runs its command when the run ends: use it with --follow (or on a launcher)",
        ));
    }
    let addr = cli.serve.as_deref().map(serve::parse_addr).transpose()?;
    let stop = Arc::new(AtomicBool::new(false));
    if cli.follow || addr.is_some() {
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(sig, stop.clone())
                .map_err(|e| Error::usage(format!("cannot install signal handlers: {e}")))?;
        }
        if !wait_for_start(cli, &stop)? {
            return Ok(130);
        }
    }
    // A dashboard started before the run it shows (any run: none is named) waits for one.
    if addr.is_some() && cli.config.is_none() && cli.run.is_none() {
        let logs = shardrun::worker::shard::resolve_root(cli.root.as_deref())?.join("logs");
        let mut said = false;
        while !has_run(&logs) {
            if !said {
                eprintln!(
                    "monitor: no run under {} yet; waiting for one (Ctrl-C to stop)",
                    logs.display()
                );
                said = true;
            }
            if !pause(cli, &stop) {
                return Ok(130);
            }
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
    while (cli.follow || addr.is_some()) && num_shards.is_none() {
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
    if let Some(addr) = addr {
        return serve::serve(
            monitor,
            run.paths.clone(),
            addr,
            Duration::from_secs_f64(cli.interval),
            stop,
        );
    }
    // Runs the --notify command with the run as it is now and the run's exit code.
    let send_notice = |monitor: &mut Monitor, argv: &[OsString], code: i32| {
        let snap = monitor.snapshot();
        notify::notify(
            "monitor",
            argv,
            &snap,
            code,
            Duration::from_secs_f64(cli.notify_timeout),
        );
    };
    if let (Some(argv), Some(code)) = (notify, cli.notify_exit_code) {
        send_notice(&mut monitor, argv, code);
        return Ok(0);
    }
    if !cli.follow {
        let snap = monitor.snapshot();
        if cli.json {
            stdout::println(&serde_json::to_string_pretty(&snap).unwrap_or_default());
        } else {
            stdout::print(&display::table(&snap));
        }
        return Ok(0);
    }
    let code = follow(cli, &mut monitor, &stop)?;
    // Only a run that ended is notified (not a monitor stopped by Ctrl-C).
    if let (Some(argv), 0 | 1) = (notify, code) {
        send_notice(&mut monitor, argv, code);
    }
    Ok(code)
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

/// True when `logs` holds a run's directory with a file in it.
fn has_run(logs: &std::path::Path) -> bool {
    std::fs::read_dir(logs)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            e.path().is_dir()
                && std::fs::read_dir(e.path())
                    .into_iter()
                    .flatten()
                    .next()
                    .is_some()
        })
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
        // The last frame stays on screen as the final report. A Slurm run with jobs in the
        // queue goes on (a re-submission of shards whose logs say how they ended before).
        let in_queue = snap.slurm.as_ref().is_some_and(|v| v.known && v.in_queue);
        if snap.all_ended() && !in_queue {
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
