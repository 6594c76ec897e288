//! The guard of a worker's generator process groups: a small process that outlives a worker
//! killed with SIGKILL and kills what its generators left running.
//!
//! Every generator leads its own process group, and gets `PR_SET_PDEATHSIG = SIGKILL`; but that
//! signal reaches only the generator's own process, not what it started in the background
//! (`sleep 60 &` in a shell script, a Python multiprocessing pool). The worker kills whole groups
//! whenever it ends an attempt or exits, except when it is itself SIGKILLed (by a user, the OOM
//! killer, a scheduler). For that case a worker with a command generator starts this guard: the
//! worker's own executable run with [`GUARD_ARG`] and renamed [`GUARD_NAME`] (so that
//! `pkill shard-worker` leaves it alone), in a process group of its own (so a Ctrl-C meant for
//! the worker does not end it), whose stdin is a pipe from the worker. The worker
//! writes `+<pgid>` when a group starts and `-<pgid>` once it has killed it (see
//! [`crate::child::groups`]); when the pipe ends, because the worker exited in whatever way, the guard
//! SIGKILLs every group still listed and exits.

use crate::child::spawn::{self, Environ};
use std::collections::BTreeSet;
use std::ffi::CStr;
use std::fs::File;
use std::io::{self, BufRead};
use std::path::Path;

/// The hidden argument that makes `shard-worker` run as a guard.
pub const GUARD_ARG: &str = "--guard-generator-groups";

/// The guard's process name (`ps -o comm`, `/proc/<pid>/comm`, what `pkill` and `pgrep` match
/// by default), so that `pkill shard-worker` does not match it: the guard must outlive a killed
/// worker to kill what its generators left. Set first thing in [`run`] (for the microseconds
/// between its `execve` and that, the guard is still named `shard-worker`). At most 15 bytes.
pub const GUARD_NAME: &CStr = c"shardrun-guard";

/// Starts the guard for this worker; returns the pipe to tell it about groups, and its pid.
/// The executable must be `shard-worker` (or any program that runs [`run`] when its first
/// argument is [`GUARD_ARG`]).
///
/// Started by [`spawn::spawn_detached`], like a generator but without the parent-death signal
/// (it must outlive the worker), in a process group of its own, in `/` (it must not keep a
/// directory busy), with stdout and stderr on `/dev/null`. Not with `std::process::Command` and
/// `process_group`: a Ctrl-Z at the wrong moment would stop it before `execve` and hang the
/// worker (see the module documentation of [`spawn`]).
pub fn start() -> io::Result<(File, libc::pid_t)> {
    let exe = std::env::current_exe()?;
    let argv = [exe.to_string_lossy().into_owned(), GUARD_ARG.to_string()];
    let (pid, pipe) = spawn::spawn_detached(&spawn::Command {
        program: &exe,
        argv: &argv,
        env: &[],
        inherited: &Environ::capture(),
        cwd: Path::new("/"),
    })?;
    // Nobody waits for the guard: it lives until the pipe ends, then exits, and is reaped by
    // whoever inherits it (the worker has exited by then).
    Ok((pipe, pid))
}

/// The guard process's `main`: takes the name [`GUARD_NAME`], closes the descriptors it
/// inherited beyond 0, 1 and 2 (a caller's `$(...)` pipe must not stay open because of the
/// guard; best effort, Linux 5.9 and later), then [`serve`]s its stdin.
pub fn run() -> i32 {
    // SAFETY: PR_SET_NAME copies the NUL-terminated name. close_range is called first thing
    // in the guard process, where no Rust object owns any descriptor above 2.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, GUARD_NAME.as_ptr(), 0, 0, 0);
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
    }
    // A scheduler stopping a job (Slurm's scancel, time limit, preemption) signals every process
    // of the job, the guard included. The guard's end is the end of its pipe, not a signal: killed
    // now, it would leave the worker, still committing its finished items, without a guard
    // (and warning so). SIGKILL still ends it.
    // SAFETY: setting a signal's disposition to SIG_IGN has no handler to be unsafe in.
    unsafe {
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::signal(sig, libc::SIG_IGN);
        }
    }
    serve(std::io::stdin().lock())
}

/// The guard's life: follows the groups announced on `input` until it ends, then SIGKILLs the
/// groups that are still listed. Returns the exit code.
pub fn serve(mut input: impl BufRead) -> i32 {
    let mut live = BTreeSet::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        match input.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {}
            // Not the end of the worker: killing the groups now could hit running generators.
            Err(_) => return 1,
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end();
        let (sign, pgid) = match text.strip_prefix('+') {
            Some(rest) => (true, rest),
            None => match text.strip_prefix('-') {
                Some(rest) => (false, rest),
                None => continue,
            },
        };
        let Ok(pgid) = pgid.parse::<libc::pid_t>() else {
            continue;
        };
        if pgid <= 1 {
            continue; // Never a group of ours; -1 and 0 would mean "everything".
        }
        if sign {
            live.insert(pgid);
        } else {
            live.remove(&pgid);
        }
    }
    for pgid in live {
        // SAFETY: plain system call. The group's leader was alive (or an unreaped zombie) when
        // the worker ended, so the group id is still that group's, unless all its processes
        // have gone since, in which case ESRCH.
        unsafe {
            libc::killpg(pgid, libc::SIGKILL);
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    #[test]
    fn only_groups_still_listed_at_the_end_are_killed() {
        // Two process groups of sleeping children; the guard is told both started and one was
        // killed already: it must kill the other one only.
        let start = || {
            Command::new("sleep")
                .arg("30")
                .process_group(0)
                .spawn()
                .unwrap()
        };
        let (mut a, mut b) = (start(), start());
        let script = format!(
            "+{}\n+{}\n-{}\nnonsense\n\u{e9}\n+0\n+-1\n",
            a.id(),
            b.id(),
            b.id()
        );
        assert_eq!(serve(script.as_bytes()), 0);
        let status = a.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        assert!(
            b.try_wait().unwrap().is_none(),
            "a group announced as gone was killed"
        );
        b.kill().unwrap();
        b.wait().unwrap();
    }
}
