//! The guard of a worker's generator process groups: a small process that outlives a worker
//! killed with SIGKILL and kills what its generators left running.
//!
//! Every generator leads its own process group, and gets `PR_SET_PDEATHSIG = SIGKILL`; but that
//! signal reaches only the generator's own process, not what it started in the background
//! (`sleep 60 &` in a shell script, a Python multiprocessing pool). The worker kills whole groups
//! whenever it ends an attempt or exits, except when it is itself SIGKILLed (by a user, the OOM
//! killer, a scheduler). For that case a worker with a command generator starts this guard: the
//! worker's own executable run with [`GUARD_ARG`], in a process group of its own (so a Ctrl-C
//! meant for the worker does not end it), whose stdin is a pipe from the worker. The worker
//! writes `+<pgid>` when a group starts and `-<pgid>` once it has killed it (see
//! [`crate::groups`]); when the pipe ends, because the worker exited in whatever way, the guard
//! SIGKILLs every group still listed and exits.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufRead};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// The hidden argument that makes `shard-worker` run as a guard.
pub const GUARD_ARG: &str = "--guard-generator-groups";

/// Starts the guard for this worker; returns the pipe to tell it about groups.
pub fn start() -> io::Result<File> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .arg(GUARD_ARG)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| io::Error::other("the guard has no stdin"))?;
    // Dropping `child` neither waits nor kills: the guard lives until the pipe ends.
    Ok(File::from(OwnedFd::from(stdin)))
}

/// The guard's life: follows the groups announced on `input` until it ends, then SIGKILLs the
/// groups that are still listed. Returns the exit code.
pub fn serve(input: impl BufRead) -> i32 {
    let mut live = BTreeSet::new();
    for line in input.lines() {
        let Ok(line) = line else { break };
        let (sign, pgid) = line.split_at(line.len().min(1));
        let Ok(pgid) = pgid.parse::<libc::pid_t>() else {
            continue;
        };
        if pgid <= 1 {
            continue; // Never a group of ours; -1 and 0 would mean "everything".
        }
        match sign {
            "+" => {
                live.insert(pgid);
            }
            "-" => {
                live.remove(&pgid);
            }
            _ => {}
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
        let script = format!("+{}\n+{}\n-{}\nnonsense\n+0\n+-1\n", a.id(), b.id(), b.id());
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
