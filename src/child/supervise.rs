//! Supervision of generator processes, in one place: [`Process`] is a started child (the leader
//! of its own process group, its three non-blocking pipes, and how its exit is seen) with the
//! one poll set, exit watcher, read, drain and reap that both kinds of command generators use;
//! [`run_attempt`] runs one attempt of a per-item generator on it (spawn, feed stdin, stream
//! stdout and stderr, enforce the timeout, always clean up the whole process group), and
//! [`crate::generator::persistent`] keeps one alive across items. [`resolve_program`] is the one
//! `PATH` rule: generators resolve their program once, with the worker's `PATH`, before the first
//! item.
//!
//! # Model
//!
//! [`run_attempt`] spawns `argv` directly (never through a shell; see [`crate::child::spawn`]) as the
//! leader of a new process group, so one `killpg` reaches everything the generator started. The
//! calling thread supervises the attempt alone, without helper threads: it `poll`s a pidfd of
//! the child (readable once the child has exited, while it is still an unreaped zombie), the
//! child's stdout and stderr, and its stdin (non-blocking, so a child that never reads its input
//! cannot block anything).
//!
//! Whatever the outcome, before the leader is reaped the whole group is sent `SIGKILL`. While the
//! leader is an unreaped zombie its pid, and therefore the group id, cannot be reused, so that
//! signal can only reach processes of this attempt. A background process that keeps stdout open
//! after the main process exited delays the end of the attempt by at most
//! [`AttemptSpec::exit_grace`].
//!
//! # Requirements on the calling process
//!
//! * The child is spawned with `PR_SET_PDEATHSIG = SIGKILL`, so it dies when the worker dies,
//!   including by `kill -9`. Linux sends that signal when the *thread* that spawned the child
//!   exits, not when the whole process does: call [`run_attempt`] from long-lived threads (the
//!   worker's own threads), never from short-lived helper threads. Processes that the generator
//!   itself starts do not inherit the setting; if the worker is killed with `SIGKILL`, those may
//!   survive it.
//! * `SIGPIPE` must be ignored in the calling process (the Rust runtime does this by default for
//!   binaries), so writing to the stdin of a child that has closed it yields `EPIPE`.
//! * Nothing else in the process may reap this module's children (no `waitpid(-1, ..)` elsewhere,
//!   `SIGCHLD` not set to `SIG_IGN`); otherwise the group id could be reused before the final
//!   `killpg`.
//! * A generator that moves itself or its children into another process group or session
//!   (`setsid`, `setpgid`) escapes the group cleanup.

use crate::child::groups::{is_transient, pidfd_open, poll_millis, Group, LineSplitter};
use crate::child::spawn::Environ;
use crate::error::Invalid;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Size of one read from the child's stdout or stderr.
pub const READ_CHUNK: usize = 64 * 1024;
/// Largest piece written to the child's stdin at once.
const STDIN_CHUNK: usize = 64 * 1024;
/// Longest single wait, so that `stop` and the deadlines are noticed quickly.
pub const MAX_POLL_WAIT: Duration = Duration::from_millis(100);
/// After `SIGTERM` on stop, how long the main process gets before the group is killed.
pub const TERM_GRACE: Duration = Duration::from_millis(500);
/// Upper bound on the reads of a drain that does not wait, per stream, so that a writer that
/// escaped the group cannot keep the caller busy.
const DRAIN_READS: usize = 64;
/// `PATH` searched when the variable is not set at all (glibc's `execvp` default).
const DEFAULT_PATH: &str = "/bin:/usr/bin";
/// First wait between `waitid` checks on kernels without pidfds, doubled up to
/// [`MAX_POLL_WAIT`].
const FIRST_BACKOFF: Duration = Duration::from_millis(1);

/// What to start: a program resolved once (see [`resolve_program`]), so that starts never
/// search `PATH` again.
#[derive(Debug, Clone, Copy)]
pub struct Launch<'a> {
    /// The file to execute, as an absolute path (the child's chdir cannot change it).
    pub program: &'a Path,
    /// The arguments, `argv[0]` included, executed directly, never through a shell.
    pub argv: &'a [String],
    /// Variables added to (or replacing those of) `environ`.
    pub env: &'a [(String, String)],
    /// The environment the child starts from, captured once by the caller.
    pub environ: &'a Environ,
    /// Working directory of the child.
    pub cwd: &'a Path,
}

/// What one read from a pipe got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Got {
    /// This many bytes (for stderr: delivered as lines).
    Data(usize),
    /// Nothing buffered right now.
    Empty,
    /// EOF, or the pipe was already closed.
    Closed,
}

/// Which pipes [`Process::poll`] found ready.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ready {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// A started child process: the leader of its own process group, its three pipes (all
/// non-blocking), and how its exit is seen: a pidfd (readable once the leader has exited, while
/// it is still an unreaped zombie) or, on kernels without pidfds, `waitid(WNOWAIT)` polled with a
/// back-off. The one place that polls, reads, writes, drains and reaps generator processes, for
/// per-item attempts ([`run_attempt`]) and persistent generators alike.
///
/// Dropping a `Process` closes its stdin, kills its group and reaps it.
pub struct Process {
    stdin: Option<File>,
    stdout: Option<File>,
    stderr: Option<File>,
    pidfd: Option<OwnedFd>,
    /// The leader has exited (seen once; it stays an unreaped zombie until `kill_and_reap`).
    exited: bool,
    /// Without a pidfd: the current wait between `waitid` checks.
    backoff: Duration,
    lines: LineSplitter,
    /// Last, so that a `Process` dropped whole closes its pipes before its group is killed.
    group: Group,
}

impl Process {
    /// Starts `launch` (see [`crate::child::spawn::spawn`]). `use_pidfd: false` detects the exit
    /// with `waitid` as on kernels without pidfds (for tests of that path).
    ///
    /// # Errors
    ///
    /// When the process could not be started, with a message naming the program.
    pub fn start(launch: &Launch, use_pidfd: bool) -> io::Result<Process> {
        if launch.argv.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "empty command: no program to run",
            ));
        }
        let crate::child::spawn::Child {
            group,
            stdin,
            stdout,
            stderr,
        } = crate::child::spawn::spawn(&crate::child::spawn::Command {
            program: launch.program,
            argv: launch.argv,
            env: launch.env,
            inherited: launch.environ,
            cwd: launch.cwd,
        })?;
        let pidfd = if use_pidfd {
            pidfd_open(group.pid())
        } else {
            None
        };
        Ok(Process {
            stdin: Some(stdin),
            stdout: Some(stdout),
            stderr: Some(stderr),
            pidfd,
            exited: false,
            backoff: FIRST_BACKOFF,
            lines: LineSplitter::default(),
            group,
        })
    }

    /// The pid of the leader, which is also the process group id.
    pub fn pid(&self) -> libc::pid_t {
        self.group.pid()
    }

    /// Sends `sig` to the whole group.
    pub fn signal(&self, sig: libc::c_int) {
        self.group.signal(sig);
    }

    /// Whether the leader's exit has been seen.
    pub fn has_exited(&self) -> bool {
        self.exited
    }

    pub fn stdin_open(&self) -> bool {
        self.stdin.is_some()
    }

    pub fn stdout_open(&self) -> bool {
        self.stdout.is_some()
    }

    pub fn stderr_open(&self) -> bool {
        self.stderr.is_some()
    }

    /// Closes stdin: the child reads EOF.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Makes the next wait without a pidfd short again: an event (EOF) that often comes with
    /// the exit was just seen.
    pub fn hurry(&mut self) {
        self.backoff = FIRST_BACKOFF;
    }

    /// Waits up to `wait` for any of: the leader's exit (until seen), data or EOF on stdout or
    /// stderr, room on stdin when `want_stdin`. Without a pidfd the wait is cut to the current
    /// back-off, and the exit is checked with `waitid` after the poll. Updates
    /// [`Process::has_exited`] and returns the ready pipes.
    ///
    /// # Errors
    ///
    /// `poll` or `waitid` failing (practically impossible), with context.
    pub fn poll(&mut self, wait: Duration, want_stdin: bool) -> io::Result<Ready> {
        let mut wait = wait.min(MAX_POLL_WAIT);
        if !self.exited && self.pidfd.is_none() {
            wait = wait.min(self.backoff);
            self.backoff = (self.backoff * 2).min(MAX_POLL_WAIT);
        }
        let mut fds = PollSet::default();
        let exit_slot = fds.add(
            self.pidfd
                .as_ref()
                .filter(|_| !self.exited)
                .map(|f| f.as_raw_fd()),
            libc::POLLIN,
        );
        let stdout_slot = fds.add(self.stdout.as_ref().map(|f| f.as_raw_fd()), libc::POLLIN);
        let stderr_slot = fds.add(self.stderr.as_ref().map(|f| f.as_raw_fd()), libc::POLLIN);
        let stdin_slot = fds.add(
            self.stdin
                .as_ref()
                .filter(|_| want_stdin)
                .map(|f| f.as_raw_fd()),
            libc::POLLOUT,
        );
        fds.poll(wait).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("waiting for generator process {}: poll: {e}", self.pid()),
            )
        })?;
        if !self.exited {
            self.exited = match &self.pidfd {
                Some(_) => fds.ready(exit_slot),
                None => self.group.exited_nowait()?,
            };
        }
        Ok(Ready {
            stdin: fds.ready(stdin_slot),
            stdout: fds.ready(stdout_slot),
            stderr: fds.ready(stderr_slot),
        })
    }

    /// Writes as much of `input` as the pipe takes now, advancing it. On `EPIPE` (the child
    /// closed its stdin or exited) or any other error, stdin is closed and the rest of the input
    /// dropped: the child gets no more input.
    pub fn write_stdin(&mut self, input: &mut &[u8]) {
        let Some(pipe) = self.stdin.as_mut() else {
            *input = &[];
            return;
        };
        while !input.is_empty() {
            let piece = &input[..input.len().min(STDIN_CHUNK)];
            match pipe.write(piece) {
                Ok(k) if k > 0 => *input = &input[k..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => {
                    self.stdin = None;
                    *input = &[];
                    return;
                }
            }
        }
    }

    /// One read from stdout into `buf`; closes stdout at EOF.
    ///
    /// # Errors
    ///
    /// A read error other than "nothing buffered" or an interrupt, with context.
    pub fn read_stdout(&mut self, buf: &mut [u8]) -> io::Result<Got> {
        let Some(pipe) = self.stdout.as_mut() else {
            return Ok(Got::Closed);
        };
        match pipe.read(buf) {
            Ok(0) => {
                self.stdout = None;
                Ok(Got::Closed)
            }
            Ok(n) => Ok(Got::Data(n)),
            Err(e) if is_transient(&e) => Ok(Got::Empty),
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("reading the generator's stdout: {e}"),
            )),
        }
    }

    /// One read from stderr, handed to `on_line` line by line (see [`run_attempt`]); closes
    /// stderr at EOF.
    ///
    /// # Errors
    ///
    /// As [`Process::read_stdout`].
    pub fn read_stderr(
        &mut self,
        buf: &mut [u8],
        on_line: &mut dyn FnMut(&[u8]),
    ) -> io::Result<Got> {
        let Some(pipe) = self.stderr.as_mut() else {
            return Ok(Got::Closed);
        };
        match pipe.read(buf) {
            Ok(0) => {
                self.stderr = None;
                Ok(Got::Closed)
            }
            Ok(n) => {
                self.lines.push(&buf[..n], on_line);
                Ok(Got::Data(n))
            }
            Err(e) if is_transient(&e) => Ok(Got::Empty),
            Err(e) => {
                self.stderr = None;
                Err(io::Error::new(
                    e.kind(),
                    format!("reading the generator's stderr: {e}"),
                ))
            }
        }
    }

    /// Delivers what stderr holds right now, without waiting (bounded by [`DRAIN_READS`]).
    pub fn drain_stderr(&mut self, buf: &mut [u8], on_line: &mut dyn FnMut(&[u8])) {
        for _ in 0..DRAIN_READS {
            if !matches!(self.read_stderr(buf, on_line), Ok(Got::Data(_))) {
                break;
            }
        }
    }

    /// Reads what stdout holds right now, without waiting (bounded by [`DRAIN_READS`]), handing
    /// each chunk to `on_data` until it returns `false`. Returns whether `on_data` refused one.
    ///
    /// # Errors
    ///
    /// As [`Process::read_stdout`].
    pub fn drain_stdout(
        &mut self,
        buf: &mut [u8],
        on_data: &mut dyn FnMut(&[u8]) -> bool,
    ) -> io::Result<bool> {
        for _ in 0..DRAIN_READS {
            match self.read_stdout(buf)? {
                Got::Data(n) => {
                    if !on_data(&buf[..n]) {
                        return Ok(true);
                    }
                }
                Got::Empty | Got::Closed => break,
            }
        }
        Ok(false)
    }

    /// Waits until the leader exits or `until` passes (no limit when `None`), discarding stdout
    /// and delivering stderr meanwhile. Returns whether it exited; an error while waiting counts
    /// as an exit (the caller kills and reaps next either way).
    pub fn wait_exit(
        &mut self,
        until: Option<Instant>,
        buf: &mut [u8],
        on_stderr: &mut dyn FnMut(&[u8]),
    ) -> bool {
        loop {
            if self.exited {
                return true;
            }
            let wait = match until {
                Some(until) => {
                    let now = Instant::now();
                    if now >= until {
                        // One last look, without waiting.
                        return self
                            .poll(Duration::ZERO, false)
                            .map_or(true, |_| self.exited);
                    }
                    until - now
                }
                None => MAX_POLL_WAIT,
            };
            let Ok(ready) = self.poll(wait, false) else {
                return true;
            };
            if ready.stdout && self.read_stdout(buf).is_err() {
                self.stdout = None;
            }
            if ready.stderr {
                let _ = self.read_stderr(buf, on_stderr);
            }
        }
    }

    /// Closes stdin, kills the whole group with `SIGKILL` and reaps the leader; returns its wait
    /// status. While the leader is an unreaped zombie its pid, and so the group id, cannot be
    /// reused, so the signal only reaches processes of this group.
    ///
    /// # Errors
    ///
    /// `waitpid` failing (practically impossible).
    pub fn kill_and_reap(&mut self) -> io::Result<libc::c_int> {
        self.stdin = None;
        self.group.kill_and_reap()
    }

    /// Delivers the last stderr line if it had no line feed.
    pub fn finish_lines(&mut self, on_line: &mut dyn FnMut(&[u8])) {
        self.lines.finish(on_line);
    }
}

/// Up to four descriptors for one `poll`.
struct PollSet {
    fds: [libc::pollfd; 4],
    n: usize,
}

impl Default for PollSet {
    fn default() -> Self {
        const NONE: libc::pollfd = libc::pollfd {
            fd: -1,
            events: 0,
            revents: 0,
        };
        PollSet {
            fds: [NONE; 4],
            n: 0,
        }
    }
}

impl PollSet {
    fn add(&mut self, fd: Option<RawFd>, events: libc::c_short) -> Option<usize> {
        let fd = fd?;
        if self.n == self.fds.len() {
            return None;
        }
        self.fds[self.n] = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        self.n += 1;
        Some(self.n - 1)
    }

    /// Polls, retrying on `EINTR` (with the full wait again: callers bound it to 100 ms).
    fn poll(&mut self, wait: Duration) -> io::Result<()> {
        loop {
            // SAFETY: `fds[..n]` are initialized pollfd entries for descriptors we own.
            let r = unsafe {
                libc::poll(
                    self.fds.as_mut_ptr(),
                    self.n as libc::nfds_t,
                    poll_millis(wait),
                )
            };
            if r != -1 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    fn ready(&self, slot: Option<usize>) -> bool {
        slot.is_some_and(|i| self.fds[i].revents != 0)
    }
}

/// What to run for one attempt.
#[derive(Debug, Clone, Copy)]
pub struct AttemptSpec<'a> {
    /// The program, its arguments, environment and working directory.
    pub launch: Launch<'a>,
    /// Bytes written to the child's stdin, which is closed afterwards.
    pub stdin: &'a [u8],
    /// Time limit of the attempt, counted from the spawn, while the main process runs (after it
    /// exited, the wait for its output is bounded by `exit_grace` instead).
    pub timeout: Option<Duration>,
    /// After the main process exited, how long to wait for stdout and stderr to reach EOF
    /// (a background process may keep them open).
    pub exit_grace: Duration,
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The main process exited with this code.
    Exited(i32),
    /// The main process was killed by this signal (not sent by us).
    Signaled(i32),
    /// The attempt ran past [`AttemptSpec::timeout`]; the group was killed.
    TimedOut,
    /// `stop` was set; the group got `SIGTERM`, then `SIGKILL` at the latest after 500 ms (or
    /// at once if the main process had already exited). Also returned, without starting
    /// anything, when `stop` was already set on entry.
    Stopped,
    /// `on_stdout` returned `false`; the group was killed.
    Aborted,
}

/// Runs one attempt of `spec` to its end and returns how it ended.
///
/// `on_stdout` receives the child's stdout in chunks as they arrive (binary-safe); returning
/// `false` aborts the attempt. `on_stderr_line` receives stderr line by line without the `\n`
/// (a final line without newline included); lines longer than [`crate::child::groups::MAX_STDERR_LINE`] are delivered
/// in pieces of that size. `stop` is checked at least every 100 ms; if it is already set when
/// this is called, nothing is started and `Ok(Ended::Stopped)` is returned.
///
/// Whatever happens, when this returns no process of the child's process group is left running
/// and the child has been reaped.
///
/// # Errors
///
/// When the process could not be started (empty `argv`, missing `cwd`, ...), with a message
/// naming the program. In the practically impossible case of an OS error while supervising a
/// started child (`poll` or a pipe read failing), that error is returned too, with context,
/// after the group was killed and reaped.
///
/// See the module documentation for what the calling process must guarantee (long-lived calling
/// thread, `SIGPIPE` ignored, nobody else reaping children).
pub fn run_attempt(
    spec: &AttemptSpec,
    stop: &AtomicBool,
    on_stdout: &mut dyn FnMut(&[u8]) -> bool,
    on_stderr_line: &mut dyn FnMut(&[u8]),
) -> io::Result<Ended> {
    run(spec, stop, on_stdout, on_stderr_line, true)
}

/// Resolves `program` like `execvp` would, with the worker's `PATH`: a name containing `/` is
/// taken relative to `cwd` and must exist and be executable; any other name is searched in the
/// directories of `PATH` (an empty entry or a relative one is taken relative to `cwd`;
/// `/bin:/usr/bin` when `PATH` is unset). Generators resolve their program once, before the
/// first item, and start it by that path from then on.
///
/// # Errors
///
/// A message naming the program and saying whether it was not found, is not executable, or is a
/// directory.
pub fn resolve_program(program: &str, cwd: &Path) -> Result<PathBuf, Invalid> {
    let path = std::env::var_os("PATH");
    resolve_with_path(program, cwd, path.as_deref())
}

/// Why one candidate path is not a runnable program.
enum Unusable {
    Missing,
    Other(String),
}

fn check_executable(path: &Path) -> Result<(), Unusable> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) => {
            return Err(match e.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::ENOTDIR) => Unusable::Missing,
                _ => Unusable::Other(format!("cannot be accessed: {e}")),
            });
        }
    };
    if meta.is_dir() {
        return Err(Unusable::Other("is a directory".to_string()));
    }
    if !meta.is_file() {
        return Err(Unusable::Other("is not a regular file".to_string()));
    }
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return Err(Unusable::Other("contains a NUL byte".to_string()));
    };
    // SAFETY: `c_path` is a valid NUL-terminated string that outlives the call.
    let ok = unsafe {
        libc::faccessat(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            libc::X_OK,
            libc::AT_EACCESS,
        )
    } == 0;
    if ok {
        Ok(())
    } else {
        Err(Unusable::Other(format!(
            "is not executable (mode {:o})",
            meta.permissions().mode() & 0o7777
        )))
    }
}

/// Joins `name` to `cwd`, dropping `.` components (an absolute `name` stays as it is).
fn join_clean(cwd: &Path, name: &Path) -> PathBuf {
    cwd.join(name).components().collect()
}

fn resolve_with_path(
    program: &str,
    cwd: &Path,
    path_var: Option<&OsStr>,
) -> Result<PathBuf, Invalid> {
    if program.is_empty() {
        return Err("the program name is empty".into());
    }
    if program.contains('/') {
        let candidate = join_clean(cwd, Path::new(program));
        return match check_executable(&candidate) {
            Ok(()) => Ok(candidate),
            Err(Unusable::Missing) => Err(Invalid(format!(
                "program `{program}` not found (no file {})",
                candidate.display()
            ))),
            Err(Unusable::Other(why)) => Err(Invalid(format!(
                "program `{program}` ({}) {why}",
                candidate.display()
            ))),
        };
    }
    let path_var = path_var.unwrap_or(OsStr::new(DEFAULT_PATH));
    // Like execvp: remember the first candidate that exists but cannot be run, and report it if
    // no later directory has a runnable one.
    let mut unusable: Option<String> = None;
    for dir in path_var.as_bytes().split(|&b| b == b':') {
        let dir = if dir.is_empty() {
            cwd.to_path_buf()
        } else {
            join_clean(cwd, Path::new(OsStr::from_bytes(dir)))
        };
        let candidate = dir.join(program);
        match check_executable(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(Unusable::Missing) => {}
            Err(Unusable::Other(why)) => {
                if unusable.is_none() {
                    unusable = Some(format!(
                        "program `{program}` found on PATH as {} but it {why}",
                        candidate.display()
                    ));
                }
            }
        }
    }
    Err(Invalid(unusable.unwrap_or_else(|| {
        format!(
            "program `{program}` not found in PATH ({})",
            path_var.to_string_lossy()
        )
    })))
}

fn run(
    spec: &AttemptSpec,
    stop: &AtomicBool,
    on_stdout: &mut dyn FnMut(&[u8]) -> bool,
    on_stderr_line: &mut dyn FnMut(&[u8]),
    use_pidfd: bool,
) -> io::Result<Ended> {
    if stop.load(Ordering::Relaxed) {
        return Ok(Ended::Stopped);
    }
    let mut child = Process::start(&spec.launch, use_pidfd)?;
    let started = Instant::now();
    let mut input = spec.stdin;
    // A fresh pipe takes up to 64 KiB: small inputs are written without a poll round. Empty
    // input closes stdin right away, so the child sees EOF on its first read.
    child.write_stdin(&mut input);
    if input.is_empty() {
        child.close_stdin();
    }
    let mut attempt = Attempt {
        child,
        input,
        buf: vec![0; READ_CHUNK],
        on_stdout,
        stdout_wanted: true,
        on_stderr_line,
    };
    // On errors the child is dropped, which kills and reaps.
    let ended = attempt.supervise(spec, stop, started)?;
    attempt.child.finish_lines(attempt.on_stderr_line);
    Ok(ended)
}

enum Phase {
    /// The main process is running.
    Running,
    /// The main process exited; draining its output until EOF or the deadline.
    Draining { until: Option<Instant> },
    /// `stop` was seen and the group got `SIGTERM`; waiting for the main process until the
    /// deadline.
    Terminating { until: Instant },
}

/// One per-item attempt under supervision.
struct Attempt<'a, 'cb> {
    child: Process,
    /// Input not yet written.
    input: &'a [u8],
    buf: Vec<u8>,
    on_stdout: &'cb mut dyn FnMut(&[u8]) -> bool,
    /// False once `on_stdout` asked to abort.
    stdout_wanted: bool,
    on_stderr_line: &'cb mut dyn FnMut(&[u8]),
}

fn remaining(now: Instant, until: Instant) -> Duration {
    until.saturating_duration_since(now)
}

impl Attempt<'_, '_> {
    fn supervise(
        &mut self,
        spec: &AttemptSpec,
        stop: &AtomicBool,
        started: Instant,
    ) -> io::Result<Ended> {
        let deadline = spec.timeout.and_then(|t| started.checked_add(t));
        let mut phase = Phase::Running;

        let forced: Option<Ended> = loop {
            let now = Instant::now();
            let mut wait = MAX_POLL_WAIT;
            match phase {
                Phase::Running => {
                    if stop.load(Ordering::Relaxed) {
                        self.child.signal(libc::SIGTERM);
                        self.child.close_stdin();
                        phase = Phase::Terminating {
                            until: now + TERM_GRACE,
                        };
                        wait = wait.min(TERM_GRACE);
                    } else if let Some(deadline) = deadline {
                        if now >= deadline {
                            break Some(Ended::TimedOut);
                        }
                        wait = wait.min(remaining(now, deadline));
                    }
                }
                Phase::Draining { until } => {
                    if stop.load(Ordering::Relaxed) {
                        break Some(Ended::Stopped);
                    }
                    if !self.child.stdout_open() && !self.child.stderr_open() {
                        break None;
                    }
                    if let Some(until) = until {
                        if now >= until {
                            break None;
                        }
                        wait = wait.min(remaining(now, until));
                    }
                }
                Phase::Terminating { until } => {
                    if self.child.has_exited() || now >= until {
                        break Some(Ended::Stopped);
                    }
                    wait = wait.min(remaining(now, until));
                }
            }

            let ready = self.child.poll(wait, !self.input.is_empty())?;
            if ready.stdin {
                self.child.write_stdin(&mut self.input);
                if self.input.is_empty() {
                    self.child.close_stdin();
                }
            }
            if ready.stdout {
                match self.read_stdout()? {
                    Delivered::Refused if !matches!(phase, Phase::Terminating { .. }) => {
                        break Some(Ended::Aborted);
                    }
                    // EOF often comes with the exit: look for it again soon.
                    Delivered::Read(Got::Closed) => self.child.hurry(),
                    _ => {}
                }
            }
            if ready.stderr
                && self.child.read_stderr(&mut self.buf, self.on_stderr_line)? == Got::Closed
            {
                self.child.hurry();
            }
            if self.child.has_exited() {
                // Whatever input is left has no reader that matters: close stdin.
                self.child.close_stdin();
                if let Phase::Running = phase {
                    phase = Phase::Draining {
                        until: Instant::now().checked_add(spec.exit_grace),
                    };
                }
            }
        };

        let status = self.child.kill_and_reap()?;
        if let Some(ended) = forced {
            return Ok(ended);
        }
        // The main process exited on its own and the rest of the group was sent SIGKILL; pick
        // up what is still buffered in the pipes (bounded, in case a writer escaped the group).
        let wanted = &mut self.stdout_wanted;
        let on_stdout = &mut *self.on_stdout;
        let refused = self.child.drain_stdout(&mut self.buf, &mut |data| {
            !*wanted || on_stdout(data) || {
                *wanted = false;
                false
            }
        })?;
        if refused {
            return Ok(Ended::Aborted);
        }
        self.child.drain_stderr(&mut self.buf, self.on_stderr_line);
        if libc::WIFEXITED(status) {
            Ok(Ended::Exited(libc::WEXITSTATUS(status)))
        } else if libc::WIFSIGNALED(status) {
            Ok(Ended::Signaled(libc::WTERMSIG(status)))
        } else {
            Err(io::Error::other(format!(
                "generator process {}: unexpected wait status {status:#x}",
                self.child.pid()
            )))
        }
    }

    /// One read from stdout, delivered unless the attempt already refused output.
    fn read_stdout(&mut self) -> io::Result<Delivered> {
        let got = self.child.read_stdout(&mut self.buf)?;
        if let Got::Data(n) = got {
            if self.stdout_wanted && !(self.on_stdout)(&self.buf[..n]) {
                // No more deliveries: whatever still comes is read and discarded.
                self.stdout_wanted = false;
                return Ok(Delivered::Refused);
            }
        }
        Ok(Delivered::Read(got))
    }
}

/// What a read of the attempt's stdout did.
enum Delivered {
    Read(Got),
    /// `on_stdout` refused the chunk: abort the attempt.
    Refused,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::child::groups::MAX_STDERR_LINE;
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".to_string(), "-c".to_string(), script.to_string()]
    }

    /// An attempt as the tests describe it: the program is resolved from `argv[0]` (relative
    /// to `cwd`) at run time, as the command generator does before its first item, unless
    /// `program` is given.
    #[derive(Clone, Copy)]
    struct TestSpec<'a> {
        argv: &'a [String],
        program: Option<&'a Path>,
        env: &'a [(String, String)],
        inherited: Option<&'a Environ>,
        cwd: &'a Path,
        stdin: &'a [u8],
        timeout: Option<Duration>,
        exit_grace: Duration,
    }

    fn spec<'a>(argv: &'a [String], stdin: &'a [u8]) -> TestSpec<'a> {
        TestSpec {
            argv,
            program: None,
            env: &[],
            inherited: None,
            cwd: Path::new("/"),
            stdin,
            timeout: Some(Duration::from_secs(30)),
            exit_grace: Duration::from_millis(300),
        }
    }

    /// Runs `t` through [`run`] with the attempt spec the command generator would build.
    fn run_spec(
        t: &TestSpec,
        stop: &AtomicBool,
        on_stdout: &mut dyn FnMut(&[u8]) -> bool,
        on_stderr_line: &mut dyn FnMut(&[u8]),
        use_pidfd: bool,
    ) -> io::Result<Ended> {
        let resolved = match (t.program, t.argv.first()) {
            (Some(p), _) => p.to_path_buf(),
            (None, Some(argv0)) => resolve_program(argv0, t.cwd)
                .map(|p| std::path::absolute(p).unwrap())
                .map_err(|e| io::Error::new(io::ErrorKind::NotFound, e))?,
            (None, None) => PathBuf::from("/bin/true"),
        };
        let captured = Environ::capture();
        let spec = AttemptSpec {
            launch: Launch {
                program: &resolved,
                argv: t.argv,
                env: t.env,
                environ: t.inherited.unwrap_or(&captured),
                cwd: t.cwd,
            },
            stdin: t.stdin,
            timeout: t.timeout,
            exit_grace: t.exit_grace,
        };
        run(&spec, stop, on_stdout, on_stderr_line, use_pidfd)
    }

    struct Outcome {
        ended: Ended,
        stdout: Vec<u8>,
        stderr: Vec<Vec<u8>>,
        elapsed: Duration,
    }

    fn run_with(spec: &TestSpec, stop: &AtomicBool, use_pidfd: bool) -> io::Result<Outcome> {
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let t = Instant::now();
        let ended = run_spec(
            spec,
            stop,
            &mut |d| {
                stdout.extend_from_slice(d);
                true
            },
            &mut |l| stderr.push(l.to_vec()),
            use_pidfd,
        )?;
        Ok(Outcome {
            ended,
            stdout,
            stderr,
            elapsed: t.elapsed(),
        })
    }

    fn run_ok(spec: &TestSpec) -> Outcome {
        run_with(spec, &AtomicBool::new(false), true).expect("attempt starts")
    }

    fn first_line_pid(stdout: &[u8]) -> libc::pid_t {
        let text = String::from_utf8_lossy(stdout);
        let line = text.lines().next().expect("a first line");
        line.trim().parse().expect("a pid on the first line")
    }

    use crate::child::proc_info::group_alive;

    /// Whether process `pid` exists and is not a zombie.
    fn pid_alive(pid: libc::pid_t) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z" && state != "X"),
            Err(_) => false,
        }
    }

    fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
        let t = Instant::now();
        loop {
            if cond() {
                return true;
            }
            if t.elapsed() > within {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn assert_group_gone(pgid: libc::pid_t) {
        assert!(
            eventually(Duration::from_secs(3), || !group_alive(pgid)),
            "process group {pgid} still has live processes"
        );
    }

    fn temp_dir(name: &str) -> PathBuf {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "process-test-{}-{}-{name}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        dir
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn true_and_false() {
        let argv = vec!["true".to_string()];
        assert_eq!(run_ok(&spec(&argv, b"")).ended, Ended::Exited(0));
        let argv = vec!["false".to_string()];
        assert_eq!(run_ok(&spec(&argv, b"")).ended, Ended::Exited(1));
    }

    #[test]
    fn exit_code_and_signal() {
        for use_pidfd in [true, false] {
            let stop = AtomicBool::new(false);
            let argv = sh("exit 7");
            let out = run_with(&spec(&argv, b""), &stop, use_pidfd).unwrap();
            assert_eq!(out.ended, Ended::Exited(7));
            let argv = sh("kill -KILL $$");
            let out = run_with(&spec(&argv, b""), &stop, use_pidfd).unwrap();
            assert_eq!(out.ended, Ended::Signaled(libc::SIGKILL));
            let argv = sh("kill -TERM $$");
            let out = run_with(&spec(&argv, b""), &stop, use_pidfd).unwrap();
            assert_eq!(out.ended, Ended::Signaled(libc::SIGTERM));
        }
    }

    #[test]
    fn stdout_is_exact_and_binary_safe() {
        let dir = temp_dir("stdout");
        let data = pattern(3 * 1024 * 1024 + 17);
        std::fs::write(dir.join("data.bin"), &data).unwrap();
        let argv = sh("cat data.bin; printf '\\000\\377end'");
        let mut s = spec(&argv, b"");
        s.cwd = &dir;
        let out = run_ok(&s);
        assert_eq!(out.ended, Ended::Exited(0));
        let mut expected = data.clone();
        expected.extend_from_slice(b"\0\xffend");
        assert_eq!(out.stdout.len(), expected.len());
        assert!(out.stdout == expected, "stdout differs");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn stdin_is_fed_while_stdout_is_read() {
        // `cat` echoes its input; the whole 2 MiB must flow through both pipes at once.
        for use_pidfd in [true, false] {
            let input = pattern(2 * 1024 * 1024 + 3);
            let argv = vec!["cat".to_string()];
            let out = run_with(&spec(&argv, &input), &AtomicBool::new(false), use_pidfd).unwrap();
            assert_eq!(out.ended, Ended::Exited(0));
            assert!(out.stdout == input, "echoed input differs");
        }
    }

    #[test]
    fn empty_stdin_is_closed_at_once() {
        let argv = vec!["cat".to_string()];
        let mut s = spec(&argv, b"");
        s.timeout = Some(Duration::from_secs(5));
        let out = run_ok(&s);
        assert_eq!(out.ended, Ended::Exited(0));
        assert!(out.stdout.is_empty());
        assert!(out.elapsed < Duration::from_secs(1), "{:?}", out.elapsed);
    }

    #[test]
    fn child_that_ignores_stdin_finishes() {
        let input = vec![b'x'; 1024 * 1024];
        let argv = sh("echo done; exit 3");
        let out = run_ok(&spec(&argv, &input));
        assert_eq!(out.ended, Ended::Exited(3));
        assert_eq!(out.stdout, b"done\n");
        assert!(out.elapsed < Duration::from_secs(5));
        // Reads a little, then stops reading and keeps running for a while.
        let argv = sh("head -c 10 >/dev/null; sleep 0.2; exit 4");
        let out = run_ok(&spec(&argv, &input));
        assert_eq!(out.ended, Ended::Exited(4));
    }

    #[test]
    fn stderr_lines() {
        let argv = sh("printf 'a\\nbb\\n\\nccc\\r\\nlast' >&2");
        let out = run_ok(&spec(&argv, b""));
        assert_eq!(out.ended, Ended::Exited(0));
        let expected: Vec<&[u8]> = vec![b"a", b"bb", b"", b"ccc\r", b"last"];
        assert_eq!(out.stderr, expected);

        let argv = sh("printf 'one\\n' >&2");
        let out = run_ok(&spec(&argv, b""));
        assert_eq!(out.stderr, vec![b"one".to_vec()]);
    }

    #[test]
    fn long_stderr_lines_are_cut() {
        let dir = temp_dir("stderr");
        let mut data = vec![b'a'; MAX_STDERR_LINE];
        data.push(b'\n');
        data.extend(vec![b'b'; 2 * MAX_STDERR_LINE + 5]);
        data.push(b'\n');
        data.extend(vec![b'c'; MAX_STDERR_LINE + 1]);
        std::fs::write(dir.join("err.txt"), &data).unwrap();
        let argv = sh("cat err.txt >&2");
        let mut s = spec(&argv, b"");
        s.cwd = &dir;
        let out = run_ok(&s);
        let lens: Vec<(u8, usize)> = out.stderr.iter().map(|l| (l[0], l.len())).collect();
        assert_eq!(
            lens,
            vec![
                (b'a', MAX_STDERR_LINE),
                (b'b', MAX_STDERR_LINE),
                (b'b', MAX_STDERR_LINE),
                (b'b', 5),
                (b'c', MAX_STDERR_LINE),
                (b'c', 1),
            ]
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn line_splitter_across_chunks() {
        let input = b"ab\ncd\n\nefgh\nij";
        for split in 0..input.len() {
            let mut lines = Vec::new();
            let mut ls = LineSplitter::default();
            let mut sink = |l: &[u8]| lines.push(l.to_vec());
            ls.push(&input[..split], &mut sink);
            ls.push(&input[split..], &mut sink);
            ls.finish(&mut sink);
            let expected: Vec<&[u8]> = vec![b"ab", b"cd", b"", b"efgh", b"ij"];
            assert_eq!(lines, expected, "split at {split}");
        }
        // A line of exactly the maximum length, fed byte by byte, is one piece.
        let mut lines = Vec::new();
        let mut ls = LineSplitter::default();
        let mut sink = |l: &[u8]| lines.push(l.len());
        for _ in 0..MAX_STDERR_LINE {
            ls.push(b"z", &mut sink);
        }
        ls.push(b"\n", &mut sink);
        ls.finish(&mut sink);
        assert_eq!(lines, vec![MAX_STDERR_LINE]);
    }

    #[test]
    fn env_and_cwd() {
        let dir = temp_dir("cwd");
        let argv = sh("pwd; echo \"$SHARDRUN_TEST_VAR\"");
        let env = vec![("SHARDRUN_TEST_VAR".to_string(), "hello world".to_string())];
        let mut s = spec(&argv, b"");
        s.cwd = &dir;
        s.env = &env;
        let out = run_ok(&s);
        let canonical = std::fs::canonicalize(&dir).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{}\nhello world\n", canonical.display())
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn relative_program_runs_from_cwd_and_keeps_argv0() {
        let dir = temp_dir("relprog");
        let script = dir.join("gen.sh");
        std::fs::write(&script, "#!/bin/sh\necho \"$0 $1\"\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let argv = vec!["./gen.sh".to_string(), "arg".to_string()];
        let mut s = spec(&argv, b"");
        s.cwd = &dir;
        let out = run_ok(&s);
        assert_eq!(out.ended, Ended::Exited(0));
        assert_eq!(
            out.stdout,
            format!("{} arg\n", script.display()).into_bytes()
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn timeout_kills_the_whole_group() {
        for use_pidfd in [true, false] {
            let argv = sh("echo $$; sleep 1000 & sleep 1000 & sleep 1000; wait");
            let mut s = spec(&argv, b"");
            s.timeout = Some(Duration::from_millis(300));
            let out = run_with(&s, &AtomicBool::new(false), use_pidfd).unwrap();
            assert_eq!(out.ended, Ended::TimedOut);
            assert!(out.elapsed >= Duration::from_millis(300));
            assert!(out.elapsed < Duration::from_secs(2), "{:?}", out.elapsed);
            assert_group_gone(first_line_pid(&out.stdout));
        }
    }

    #[test]
    fn background_child_holding_stdout_does_not_keep_attempt_open() {
        for use_pidfd in [true, false] {
            let argv = sh("echo $$; sleep 1000 & echo bye >&2; exit 5");
            let mut s = spec(&argv, b"");
            s.exit_grace = Duration::from_millis(200);
            let out = run_with(&s, &AtomicBool::new(false), use_pidfd).unwrap();
            assert_eq!(out.ended, Ended::Exited(5));
            assert!(out.elapsed >= Duration::from_millis(200));
            assert!(
                out.elapsed < Duration::from_millis(1500),
                "{:?}",
                out.elapsed
            );
            assert_eq!(out.stderr, vec![b"bye".to_vec()]);
            assert_group_gone(first_line_pid(&out.stdout));
        }
    }

    #[test]
    fn zero_grace_still_delivers_buffered_output() {
        let argv = sh("echo $$; sleep 1000 & printf 'tail'; exit 0");
        let mut s = spec(&argv, b"");
        s.exit_grace = Duration::ZERO;
        let out = run_ok(&s);
        assert_eq!(out.ended, Ended::Exited(0));
        assert!(out.stdout.ends_with(b"\ntail"), "{:?}", out.stdout);
        assert_group_gone(first_line_pid(&out.stdout));
    }

    #[test]
    fn exited_main_process_leaves_no_group_member() {
        // The background child does not hold the pipes, so the attempt ends at once; it must
        // still be killed.
        let argv = sh("echo $$; sleep 1000 >/dev/null 2>&1 </dev/null & exit 0");
        let out = run_ok(&spec(&argv, b""));
        assert_eq!(out.ended, Ended::Exited(0));
        assert!(
            out.elapsed < Duration::from_millis(250),
            "{:?}",
            out.elapsed
        );
        assert_group_gone(first_line_pid(&out.stdout));
    }

    fn stop_after(delay: Duration) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            std::thread::sleep(delay);
            flag.store(true, Ordering::SeqCst);
        });
        (stop, handle)
    }

    #[test]
    fn stop_terminates_quickly() {
        for use_pidfd in [true, false] {
            // Dies on SIGTERM.
            let argv = sh("echo $$; sleep 1000 & sleep 1000");
            let (stop, handle) = stop_after(Duration::from_millis(100));
            let out = run_with(&spec(&argv, b""), &stop, use_pidfd).unwrap();
            handle.join().unwrap();
            assert_eq!(out.ended, Ended::Stopped);
            assert!(
                out.elapsed < Duration::from_millis(600),
                "{:?}",
                out.elapsed
            );
            assert_group_gone(first_line_pid(&out.stdout));

            // Ignores SIGTERM: killed 500 ms later.
            let argv = sh("trap '' TERM; echo $$; sleep 1000 & sleep 1000");
            let (stop, handle) = stop_after(Duration::from_millis(100));
            let out = run_with(&spec(&argv, b""), &stop, use_pidfd).unwrap();
            handle.join().unwrap();
            assert_eq!(out.ended, Ended::Stopped);
            assert!(
                out.elapsed >= Duration::from_millis(550),
                "{:?}",
                out.elapsed
            );
            assert!(
                out.elapsed < Duration::from_millis(1200),
                "{:?}",
                out.elapsed
            );
            assert_group_gone(first_line_pid(&out.stdout));
        }
    }

    #[test]
    fn stop_already_set_starts_nothing() {
        let argv = vec!["/nonexistent/program".to_string()];
        let mut s = spec(&argv, b"");
        s.program = Some(Path::new("/nonexistent/program"));
        let out = run_with(&s, &AtomicBool::new(true), true).unwrap();
        assert_eq!(out.ended, Ended::Stopped);
    }

    #[test]
    fn on_stdout_false_aborts() {
        let argv = sh("echo $$; while :; do echo yyyyyyyyyyyyyyyy; done");
        let mut seen = Vec::new();
        let mut calls_after_abort = 0;
        let mut aborted = false;
        let t = Instant::now();
        let ended = run_spec(
            &spec(&argv, b""),
            &AtomicBool::new(false),
            &mut |d| {
                if aborted {
                    calls_after_abort += 1;
                }
                seen.extend_from_slice(d);
                aborted = seen.len() > 4096;
                !aborted
            },
            &mut |_| {},
            true,
        )
        .unwrap();
        assert_eq!(ended, Ended::Aborted);
        assert_eq!(calls_after_abort, 0);
        assert!(t.elapsed() < Duration::from_secs(2));
        assert_group_gone(first_line_pid(&seen));
    }

    #[test]
    fn many_tiny_attempts_are_fast() {
        let argv = vec!["true".to_string()];
        let t = Instant::now();
        for _ in 0..50 {
            assert_eq!(run_ok(&spec(&argv, b"")).ended, Ended::Exited(0));
        }
        // No sleeps in the fast path: far below 50 x the 100 ms poll tick.
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }

    #[test]
    fn start_failures_are_errors() {
        let stop = AtomicBool::new(false);
        let empty: Vec<String> = Vec::new();
        let e = run_with(&spec(&empty, b""), &stop, true).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);

        let argv = vec!["shardrun-no-such-program-xyz".to_string()];
        let e = run_with(&spec(&argv, b""), &stop, true).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(
            e.to_string().contains("shardrun-no-such-program-xyz"),
            "{e}"
        );

        let argv = vec!["true".to_string()];
        let mut s = spec(&argv, b"");
        s.cwd = Path::new("/nonexistent-dir-for-shardrun-test");
        let e = run_with(&s, &stop, true).err().unwrap();
        assert!(
            e.to_string().contains("/nonexistent-dir-for-shardrun-test"),
            "{e}"
        );
    }

    #[test]
    fn given_program_is_run_without_lookup_and_keeps_argv0() {
        // argv[0] names nothing on PATH: only `program` says what to run.
        let argv = vec![
            "shardrun-no-such-program-xyz".to_string(),
            "-c".to_string(),
            "echo \"$0 $ONLY_THIS\"".to_string(),
        ];
        let environ = Environ::from_vars([("ONLY_THIS", "1")]);
        let mut s = spec(&argv, b"");
        s.program = Some(Path::new("/bin/sh"));
        s.inherited = Some(&environ);
        let out = run_ok(&s);
        assert_eq!(out.ended, Ended::Exited(0));
        assert_eq!(out.stdout, b"shardrun-no-such-program-xyz 1\n");
    }

    #[test]
    fn resolve_program_cases() {
        let cwd = Path::new("/");
        let found = resolve_program("sh", cwd).expect("sh on PATH");
        assert!(found.ends_with("sh"), "{}", found.display());
        assert!(found.is_absolute(), "{}", found.display());

        let e = resolve_program("shardrun-no-such-program-xyz", cwd)
            .unwrap_err()
            .0;
        assert!(
            e.contains("`shardrun-no-such-program-xyz` not found"),
            "{e}"
        );

        let dir = temp_dir("resolve");
        let plain = dir.join("data.txt");
        std::fs::write(&plain, "not a program").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::create_dir(dir.join("sub")).unwrap();
        let exe = dir.join("run-me");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();

        // As root, X_OK still needs some execute bit, so this holds for every user.
        let e = resolve_program("./data.txt", &dir).unwrap_err().0;
        assert!(e.contains("not executable"), "{e}");
        let e = resolve_program(plain.to_str().unwrap(), cwd).unwrap_err().0;
        assert!(e.contains("not executable"), "{e}");
        let e = resolve_program("./sub", &dir).unwrap_err().0;
        assert!(e.contains("is a directory"), "{e}");
        let e = resolve_program("./missing", &dir).unwrap_err().0;
        assert!(e.contains("not found"), "{e}");
        assert_eq!(resolve_program("./run-me", &dir).unwrap(), exe);
        assert_eq!(
            resolve_program("", &dir).unwrap_err().0,
            "the program name is empty"
        );

        // PATH search: a non-executable match is reported when nothing better is found, and
        // skipped when a later directory has a runnable one.
        let path = format!("{}:/nonexistent", dir.display());
        let e = resolve_with_path("data.txt", cwd, Some(OsStr::new(&path)))
            .unwrap_err()
            .0;
        assert!(e.contains("not executable"), "{e}");
        let other = temp_dir("resolve2");
        let runnable = other.join("data.txt");
        std::fs::write(&runnable, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&runnable, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!("{}:{}", dir.display(), other.display());
        let got = resolve_with_path("data.txt", cwd, Some(OsStr::new(&path))).unwrap();
        assert_eq!(got, runnable);
        // An empty PATH entry means the working directory.
        let got = resolve_with_path("run-me", &dir, Some(OsStr::new("/nonexistent:"))).unwrap();
        assert_eq!(got, exe);
        std::fs::remove_dir_all(&dir).ok();
        std::fs::remove_dir_all(&other).ok();
    }

    const HELPER_ENV: &str = "SHARDRUN_PROCESS_PDEATHSIG_HELPER";

    /// Not a test on its own: the body of `child_dies_with_killed_worker`, run in a separate
    /// process of this test binary.
    #[test]
    fn pdeathsig_helper() {
        if std::env::var_os(HELPER_ENV).is_none() {
            return;
        }
        let argv = sh("echo $$; exec sleep 1000");
        let _ = run_spec(
            &spec(&argv, b""),
            &AtomicBool::new(false),
            &mut |d| {
                let mut out = io::stdout().lock();
                let _ = out.write_all(b"CHILD=");
                let _ = out.write_all(d);
                let _ = out.flush();
                true
            },
            &mut |_| {},
            true,
        );
    }

    #[test]
    fn child_dies_with_killed_worker() {
        let exe = std::env::current_exe().unwrap();
        let test_path = module_path!()
            .split_once("::")
            .map_or(module_path!(), |(_, rest)| rest);
        let mut helper = Command::new(exe)
            .args([
                "--exact",
                &format!("{test_path}::pdeathsig_helper"),
                "--nocapture",
                "--test-threads=1",
            ])
            .env(HELPER_ENV, "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut reader = io::BufReader::new(helper.stdout.take().unwrap());
        let mut child_pid = None;
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            // libtest prints the test name on the same line.
            if let Some((_, pid)) = line.trim().split_once("CHILD=") {
                child_pid = Some(pid.parse::<libc::pid_t>().unwrap());
                break;
            }
            line.clear();
        }
        let child_pid = child_pid.expect("helper reported its child");
        assert!(pid_alive(child_pid));
        helper.kill().unwrap(); // SIGKILL
        helper.wait().unwrap();
        assert!(
            eventually(Duration::from_secs(3), || !pid_alive(child_pid)),
            "generator {child_pid} survived its killed worker"
        );
    }
}
