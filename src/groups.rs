//! Process groups of running generators, and the registry that lets a second Ctrl-C kill them
//! all before the worker exits.
//!
//! Every generator leads its own process group. The parent-death signal reaches only the leader,
//! so anything it started would outlive a worker that exits abruptly; the registry holds the
//! groups whose leader is not yet reaped (their ids cannot be reused meanwhile), and
//! [`kill_all`] sends SIGKILL to each.

use std::io;
use std::sync::Mutex;

static LIVE: Mutex<Vec<libc::pid_t>> = Mutex::new(Vec::new());

/// Sends SIGKILL to every registered group (used right before an immediate exit).
pub fn kill_all() {
    let live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    for &pgid in live.iter() {
        // SAFETY: plain syscall; registered leaders are unreaped, so the ids are still ours.
        unsafe {
            libc::killpg(pgid, libc::SIGKILL);
        }
    }
}

/// A child's process group; kills the group and reaps the leader when dropped, so no error path
/// can leave a process or a zombie behind.
#[derive(Debug)]
pub struct Group {
    pid: libc::pid_t,
    reaped: bool,
}

impl Group {
    /// Takes charge of the group led by the child `pid`.
    pub fn new(pid: libc::pid_t) -> Self {
        LIVE.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
        Group { pid, reaped: false }
    }

    /// The leader's pid (= the group id).
    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// Sends `sig` to every process of the group (no-op once the leader was reaped, because the
    /// group id could then be reused).
    pub fn signal(&self, sig: libc::c_int) {
        if !self.reaped {
            // SAFETY: plain syscall; the leader is not reaped, so the group id is still ours.
            // ESRCH (nobody left) is fine.
            unsafe {
                libc::killpg(self.pid, sig);
            }
        }
    }

    fn mark_reaped(&mut self) {
        // Unregister before the id can be reused: the registry lock orders this against
        // `kill_all`.
        let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|&p| p != self.pid);
        self.reaped = true;
    }

    /// Kills the whole group with SIGKILL, then reaps the leader and returns its wait status.
    pub fn kill_and_reap(&mut self) -> io::Result<libc::c_int> {
        self.signal(libc::SIGKILL);
        if self.reaped {
            return Err(io::Error::other("child already reaped"));
        }
        let mut status: libc::c_int = 0;
        loop {
            // SAFETY: plain syscall with a valid out pointer.
            let r = unsafe { libc::waitpid(self.pid, &mut status, 0) };
            if r == self.pid {
                self.mark_reaped();
                return Ok(status);
            }
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // ECHILD: someone else reaped it; there is nothing left for us to reap.
            self.mark_reaped();
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "waiting for generator process {}: {e} (was it reaped elsewhere, or is \
                     SIGCHLD ignored?)",
                    self.pid
                ),
            ));
        }
    }

    /// Whether the leader has exited (without reaping it), for kernels without pidfds.
    pub fn exited_nowait(&self) -> io::Result<bool> {
        loop {
            // SAFETY: an all-zero siginfo_t is a valid value.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: plain syscall with a valid out pointer; WNOWAIT leaves the child waitable.
            let r = unsafe {
                libc::waitid(
                    libc::P_PID,
                    self.pid as libc::id_t,
                    &mut info,
                    libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
                )
            };
            if r == 0 {
                // SAFETY: waitid filled `info` (or left it zeroed when nothing is waitable).
                return Ok(unsafe { info.si_pid() } != 0);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "checking whether generator process {} exited: {e}",
                        self.pid
                    ),
                ));
            }
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.kill_and_reap();
        }
    }
}
