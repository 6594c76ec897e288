//! Generator processes at the system-call level, shared by per-item and persistent generators:
//! their process groups (with the registry that lets a second Ctrl-C kill them all before the
//! worker exits), pidfds and stderr line splitting. Starting them is [`crate::child::spawn`]'s job.
//!
//! Every generator leads its own process group. The parent-death signal reaches only the leader,
//! so anything it started would outlive a worker that exits abruptly; the registry holds the
//! groups whose leader is not yet reaped (their ids cannot be reused meanwhile), and
//! [`kill_all`] sends SIGKILL to each.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::time::Duration;

/// The groups whose leader is not reaped yet, and the pipe to the guard process that kills
/// them if the worker is SIGKILLed ([`crate::child::guard`]), when there is one.
struct Registry {
    live: Vec<libc::pid_t>,
    guard: Option<Guard>,
    /// The message being written to the guard (reused: two per generator start).
    message: Vec<u8>,
}

/// The pipe to the guard process, and its pid (never reaped by us while we use it, so the pid
/// stays the guard's).
struct Guard {
    pipe: std::fs::File,
    pid: libc::pid_t,
}

static LIVE: Mutex<Registry> = Mutex::new(Registry {
    live: Vec::new(),
    guard: None,
    message: Vec::new(),
});

impl Registry {
    /// Tells the guard `+pgid` or `-pgid`.
    fn tell_guard(&mut self, sign: u8, pgid: libc::pid_t) {
        use std::io::Write;
        let Some(g) = &mut self.guard else { return };
        self.message.clear();
        self.message.push(sign);
        self.message
            .extend_from_slice(itoa::Buffer::new().format(pgid).as_bytes());
        self.message.push(b'\n');
        // The pipe is non-blocking, so a guard that stopped reading cannot block generator
        // starts; a message is far shorter than PIPE_BUF, so it is written whole or not at all.
        if g.pipe.write(&self.message).is_ok() {
            return;
        }
        // A guard that missed a message is out of step: a missed `-` would make it kill a
        // group id that may by then be someone else's. It is SIGKILLed and reaped before its
        // pipe is closed (closing first would make it kill the running generators).
        // SAFETY: plain system calls on our own unreaped child.
        unsafe {
            libc::kill(g.pid, libc::SIGKILL);
            let mut status = 0;
            while libc::waitpid(g.pid, &mut status, 0) == -1
                && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
            {}
        }
        eprintln!(
            "shard-worker: warning: the guard of the generators' process groups stopped \
             reading; without it, a SIGKILL of this worker may leave their background \
             processes running"
        );
        self.guard = None;
    }
}

/// Hands the guard process (its pipe and pid, see [`crate::child::guard`]) to the registry: from now on
/// every group is announced to it when it starts and when it has been killed.
pub fn set_guard(pipe: std::fs::File, pid: libc::pid_t) {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on a descriptor we own; a fresh pipe end has no other status flags.
    unsafe {
        libc::fcntl(pipe.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK);
    }
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).guard = Some(Guard { pipe, pid });
}

/// Sends SIGKILL to every registered group (used right before an immediate exit).
pub fn kill_all() {
    let registry = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    for &pgid in registry.live.iter() {
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
        let mut registry = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        registry.live.push(pid);
        registry.tell_guard(b'+', pid);
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
        let mut registry = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        registry.live.retain(|&p| p != self.pid);
        self.reaped = true;
    }

    /// Kills the whole group with SIGKILL, then reaps the leader and returns its wait status.
    pub fn kill_and_reap(&mut self) -> io::Result<libc::c_int> {
        self.signal(libc::SIGKILL);
        if self.reaped {
            return Err(io::Error::other("child already reaped"));
        }
        // The group is dead now (its leader an unreaped zombie): the guard can forget it
        // before the group id can be reused.
        LIVE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .tell_guard(b'-', self.pid);
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

/// Longest stderr line delivered in one piece; longer lines are cut.
pub const MAX_STDERR_LINE: usize = 8 * 1024;

/// A pidfd for `pid` (readable once it exits, without reaping it); `None` on old kernels.
pub fn pidfd_open(pid: libc::pid_t) -> Option<OwnedFd> {
    // SAFETY: plain syscall; the result is a new file descriptor (O_CLOEXEC) or -1.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0 as libc::c_uint) };
    if r < 0 {
        return None;
    }
    let fd = RawFd::try_from(r).ok()?;
    // SAFETY: `fd` was just returned by pidfd_open and is owned by nobody else.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A poll(2) timeout in milliseconds, rounded up so a deadline is never polled for with a zero
/// timeout in a busy loop.
pub fn poll_millis(wait: Duration) -> libc::c_int {
    let ms = wait.as_micros().div_ceil(1000);
    libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
}

/// True for errors that only mean "try again".
pub fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// Splits a byte stream into lines without their `\n`, cutting lines longer than
/// [`MAX_STDERR_LINE`] into pieces.
#[derive(Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    pub fn push(&mut self, mut data: &[u8], sink: &mut dyn FnMut(&[u8])) {
        while let Some(i) = memchr::memchr(b'\n', data) {
            if self.partial.is_empty() && i <= MAX_STDERR_LINE {
                sink(&data[..i]);
            } else {
                self.append(&data[..i], sink);
                sink(&self.partial);
                self.partial.clear();
            }
            data = &data[i + 1..];
        }
        self.append(data, sink);
    }

    /// Adds bytes of an unfinished line, delivering full pieces once more bytes follow them
    /// (so a line of exactly the maximum length is not followed by an empty piece).
    fn append(&mut self, mut part: &[u8], sink: &mut dyn FnMut(&[u8])) {
        while !part.is_empty() {
            if self.partial.len() == MAX_STDERR_LINE {
                sink(&self.partial);
                self.partial.clear();
            }
            let take = part.len().min(MAX_STDERR_LINE - self.partial.len());
            self.partial.extend_from_slice(&part[..take]);
            part = &part[take..];
        }
    }

    /// Delivers the final line if it had no newline.
    pub fn finish(&mut self, sink: &mut dyn FnMut(&[u8])) {
        if !self.partial.is_empty() {
            sink(&self.partial);
            self.partial.clear();
        }
    }
}
