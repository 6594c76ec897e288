//! `--notify CMD ARG... ';'`: the user's command, run once when a run ends, with the run's
//! summary as JSON on its stdin and `SHARDRUN_*` variables. It runs as an argv (never through a
//! shell), in its own process group, for at most a bounded time; whatever it does, its outcome
//! is reported on stderr and never changes the exit code of the tool that ran it.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Snapshot, State, Summary};
use crate::error::{Error, Result};

/// Seconds a notify command may run by default (`--notify-timeout`).
pub const DEFAULT_TIMEOUT_S: f64 = 60.0;
/// After the timeout's SIGTERM, how long the command's process group has before SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// Ends the command's words (as `find -exec ... ;`): the words after `--notify` up to it are
/// the command, so options of the tool after it stay the tool's.
pub const TERMINATOR: &str = ";";

/// Takes `--notify CMD ARG... ';'` out of `args` (the program name first): the command's argv,
/// and the other arguments for the option parser. A `--notify` without its `;`, or with no
/// command before it, is a usage error that shows the form.
pub fn take_notify(args: Vec<OsString>) -> Result<(Option<Vec<OsString>>, Vec<OsString>)> {
    let Some(at) = args.iter().position(|a| a == "--notify") else {
        return Ok((None, args));
    };
    let form = "write the command's words after --notify and end them with a ';' word (quoted \
                for the shell, as with find -exec), e.g. --notify notify-send 'run ended' ';'";
    let Some(len) = args[at + 1..].iter().position(|a| a == TERMINATOR) else {
        return Err(Error::usage(format!(
            "--notify: no ';' ends the command; {form}"
        )));
    };
    if len == 0 {
        return Err(Error::usage(format!(
            "--notify: no command before ';'; {form}"
        )));
    }
    let cmd = args[at + 1..at + 1 + len].to_vec();
    let mut rest = args[..at].to_vec();
    rest.extend_from_slice(&args[at + 2 + len..]);
    if rest.iter().any(|a| a == "--notify") {
        return Err(Error::usage("--notify is given twice; give one command"));
    }
    Ok((Some(cmd), rest))
}

/// What the command reads on its stdin.
#[derive(Debug, Serialize)]
pub struct Notice<'a> {
    pub run: &'a str,
    /// `done` (every shard succeeded), `failed` or `interrupted`.
    pub state: &'static str,
    /// The exit code of the launcher (or of `monitor --follow`).
    pub exit_code: i32,
    pub num_shards: u32,
    pub summary: &'a Summary,
    /// The shards that are not done, with their state (in shard order).
    pub shards_not_done: Vec<ShardState>,
}

#[derive(Debug, Serialize)]
pub struct ShardState {
    pub shard: u32,
    pub state: State,
}

/// The run's end as a word: from the exit code (130, 143 and 129 are interruptions).
pub fn state_word(snap: &Snapshot, exit_code: i32) -> &'static str {
    match exit_code {
        0 if snap.all_done() => "done",
        129 | 130 | 143 => "interrupted",
        _ if snap.summary.failed == 0 && snap.summary.died == 0 && snap.summary.interrupted > 0 => {
            "interrupted"
        }
        _ => "failed",
    }
}

/// Runs `argv` with the notice; reports on stderr what went wrong, if anything (as `tool:`),
/// and returns whether it exited 0 in time.
pub fn notify(
    tool: &str,
    argv: &[OsString],
    snap: &Snapshot,
    exit_code: i32,
    timeout: Duration,
) -> bool {
    let state = state_word(snap, exit_code);
    let notice = Notice {
        run: &snap.run,
        state,
        exit_code,
        num_shards: snap.num_shards,
        summary: &snap.summary,
        shards_not_done: snap
            .shards
            .iter()
            .filter(|s| s.state != State::Done)
            .map(|s| ShardState {
                shard: s.shard,
                state: s.state,
            })
            .collect(),
    };
    let json = serde_json::to_vec_pretty(&notice).unwrap_or_default();
    let s = &snap.summary;
    let vars: [(&str, String); 15] = [
        ("SHARDRUN_RUN", snap.run.clone()),
        ("SHARDRUN_STATE", state.to_string()),
        ("SHARDRUN_EXIT_CODE", exit_code.to_string()),
        ("SHARDRUN_NUM_SHARDS", snap.num_shards.to_string()),
        ("SHARDRUN_SHARDS_DONE", s.done.to_string()),
        ("SHARDRUN_SHARDS_FAILED", s.failed.to_string()),
        ("SHARDRUN_SHARDS_DIED", s.died.to_string()),
        ("SHARDRUN_SHARDS_INTERRUPTED", s.interrupted.to_string()),
        ("SHARDRUN_SHARDS_PENDING", s.pending.to_string()),
        ("SHARDRUN_SHARDS_RUNNING", s.running.to_string()),
        ("SHARDRUN_ITEMS_DONE", s.items_done.to_string()),
        ("SHARDRUN_ITEMS_TOTAL", s.items_total.to_string()),
        ("SHARDRUN_ITEMS_FAILED", s.items_failed.to_string()),
        ("SHARDRUN_ROWS", s.rows.to_string()),
        (
            "SHARDRUN_NOTIFY_TIMEOUT_S",
            format!("{}", timeout.as_secs_f64()),
        ),
    ];
    let name = argv[0].to_string_lossy().into_owned();
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .envs(vars)
        .stdin(Stdio::piped())
        // Its own group: the timeout ends it and whatever it started, and a Ctrl-C meant for
        // the launcher does not reach it.
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{tool}: warning: the --notify command {name:?} could not be started: {e} (the run's exit code is unchanged)");
            return false;
        }
    };
    // Written by a thread: a command that does not read its stdin must not block the wait
    // (a closed pipe is not an error here).
    let stdin = child.stdin.take();
    let writer = std::thread::spawn(move || {
        if let Some(mut w) = stdin {
            let _ = w.write_all(&json);
        }
    });
    let started = Instant::now();
    let pgid = child.id() as libc::pid_t;
    let outcome = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if started.elapsed() >= timeout => {
                // SAFETY: kill(2) on the process group this function created.
                unsafe { libc::kill(-pgid, libc::SIGTERM) };
                let term = Instant::now();
                while term.elapsed() < KILL_GRACE {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                // The group may outlive its leader: SIGKILL whatever is left of it.
                // SAFETY: as above.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
                let _ = child.wait();
                break Err(format!(
                    "did not end within {} s (--notify-timeout) and was killed with its process group",
                    timeout.as_secs_f64()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => break Err(format!("could not be waited for: {e}")),
        }
    };
    // The pipe is closed once the command is gone, so the writer ends.
    let _ = writer.join();
    match outcome {
        Ok(status) if status.success() => true,
        Ok(status) => {
            let how = match (
                status.code(),
                std::os::unix::process::ExitStatusExt::signal(&status),
            ) {
                (Some(c), _) => format!("exited with code {c}"),
                (None, Some(sig)) => format!("was killed by signal {sig}"),
                _ => "failed".to_string(),
            };
            eprintln!("{tool}: warning: the --notify command {name:?} {how} (the run's exit code is unchanged)");
            false
        }
        Err(msg) => {
            eprintln!("{tool}: warning: the --notify command {name:?} {msg} (the run's exit code is unchanged)");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn notify_words_end_at_the_terminator() {
        let (cmd, rest) = take_notify(os(&[
            "monitor", "--follow", "--notify", "curl", "-d", "@-", ";", "--run", "r",
        ]))
        .unwrap();
        assert_eq!(cmd.unwrap(), os(&["curl", "-d", "@-"]));
        assert_eq!(rest, os(&["monitor", "--follow", "--run", "r"]));
        assert!(take_notify(os(&["monitor", "--notify", "x"])).is_err());
        assert!(take_notify(os(&["monitor", "--notify", ";"])).is_err());
        assert!(take_notify(os(&["m", "--notify", "a", ";", "--notify", "b", ";"])).is_err());
        let (cmd, rest) = take_notify(os(&["monitor", "--json"])).unwrap();
        assert!(cmd.is_none());
        assert_eq!(rest.len(), 2);
    }
}
