//! Persistent command generators: one long-lived process serves many items, so its start-up
//! (imports, loaded models, API clients) is paid once instead of once per item.
//!
//! # Protocol
//!
//! A [`Server`] starts the command (directly, never through a shell) when the first item comes,
//! and keeps it for the following ones. For each item it writes one request line to the
//! process's stdin (the item's JSON object and `\n`), then reads the process's stdout up to a
//! line holding only the end-of-item marker (by default `\x1e`, the ASCII record separator).
//! The marker line may end with `\n` or `\r\n`. Everything before that line is the item's output;
//! it is streamed to the caller as it arrives, except for the bytes at the start of a line that
//! could still turn out to be the marker line (at most the marker and a `\r`),
//! which are held back until the line shows it is something else. A marker that is not alone on
//! its line is ordinary data. stderr is split into lines and handed over whenever it is read,
//! also between items (lines written after one item's marker reach the caller during the next
//! [`Server::serve`] or during [`Server::shutdown`]).
//!
//! Failures ([`ServeError`]): a time limit, a crash, a stdout closed before the marker, or
//! output that does not belong to any request (bytes after the marker line, seen when the next
//! request is about to be written) fail the item at hand. In every such case the whole process
//! group is killed and reaped, and the next item starts a fresh process. A process that exits
//! by itself between two items (for instance to recycle itself after some number of items) is
//! simply replaced: if its exit is only noticed after the next request was written, and it ends
//! with an exit code (not a signal) without any output for that request, the request is sent
//! once more to a fresh process; if that one fails too, the first exit is reported, as a crash
//! of the item rather than a failed start.
//!
//! # Process handling
//!
//! As in [`crate::child::supervise`]: the process is started by [`crate::child::spawn`], leads a new process
//! group (one `killpg` reaches everything it started), gets `PR_SET_PDEATHSIG = SIGKILL`, and is
//! supervised by the calling thread alone with `poll` over a pidfd (readable once the process
//! has exited, while it is still an unreaped zombie) and its non-blocking pipes, so a process
//! that stops reading its stdin cannot block the caller. Before the leader is reaped the whole
//! group is sent `SIGKILL`; an unreaped leader keeps the group id from being reused, so that
//! signal only reaches this process's group. Kernels without pidfds are handled by polling
//! `waitid(WNOWAIT)`.
//!
//! The same requirements on the calling process apply as for [`crate::child::supervise::run_attempt`]:
//! `PR_SET_PDEATHSIG` fires when the *thread* that started the process exits, so a `Server`
//! must be used from a long-lived thread (a slot's own thread) and not handed between threads
//! that may end before it; `SIGPIPE` must be ignored (the Rust runtime does this for binaries);
//! nothing else may reap this module's children; a process that moves itself into another
//! process group escapes the cleanup.
//!
//! # Cost
//!
//! For a process that answers at once, an item costs five system calls on the caller's side
//! (a zero-timeout `poll` for leftovers, the request `write`, a `poll` that waits, the `read`
//! that gets the output and the marker, a non-blocking `read` of stderr) and no timer or sleep.

use crate::child::signals::signal_name;
use crate::child::spawn::Environ;
use crate::child::supervise::{Got, Launch, Process, MAX_POLL_WAIT, READ_CHUNK, TERM_GRACE};
use crate::error::Invalid;
use crate::format::csv_quotes::Quotes;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// After the process closed its stdout in the middle of an item, how long to wait for it to
/// exit (so its exit status can be reported) before calling it a protocol error.
const EOF_GRACE: Duration = Duration::from_millis(500);
/// How long the output may rest right after a line equal to the end-of-item marker inside a
/// quoted field before the item is taken to end there, in an unclosed quote (invalid CSV). A
/// value that really holds a marker line goes on without such a pause; a generator that left a
/// quote open waits for the next request, and would otherwise wait for ever.
const OPEN_QUOTE_GRACE: Duration = Duration::from_secs(2);
/// How many bytes of unexpected output a protocol error shows.
const SHOWN_BYTES: usize = 40;

/// What to run.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// The program, resolved once by the caller (see
    /// [`crate::child::supervise::resolve_program`]): restarts never search `PATH` again.
    pub program: PathBuf,
    /// The program's name (`argv[0]`) and its arguments, executed directly.
    pub argv: Vec<String>,
    /// Variables added to (or replacing those of) `environ`.
    pub env: Vec<(String, String)>,
    /// The environment the process starts from, captured once by the caller.
    pub environ: Environ,
    /// Working directory of the process.
    pub cwd: PathBuf,
    /// The end-of-item marker (see [`check_marker`]), e.g. [`crate::run::config::DEFAULT_MARKER`].
    pub marker: Vec<u8>,
}

/// Why an item was not served. After every error the process's group has been killed and the
/// process reaped (or it was never started); the next [`Server::serve`] starts a fresh one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServeError {
    /// The item's time limit passed; the group was killed.
    TimedOut,
    /// The process ended before the marker, after having written something to stdout since it
    /// started (otherwise it is `StartFailed`): `exit code 3`, `killed by signal 9 (SIGKILL)`.
    Crashed(String),
    /// The process could not be started (the message names the program), or it ended before
    /// answering the first request after a (re)start (`exit code 3 before answering its first
    /// request`). Also an invalid marker.
    StartFailed(String),
    /// The process broke the protocol: output after the end-of-item marker without a request
    /// (first bytes shown, escaped), or stdout closed before the marker. The group was killed.
    Protocol(String),
    /// `stop` was set: the group got `SIGTERM`, and `SIGKILL` at the latest 500 ms later.
    Stopped,
    /// `on_stdout` returned `false`; the group was killed.
    Aborted,
    /// An OS error while supervising the process (`poll` or a pipe read failing; practically
    /// impossible); the group was killed.
    Io(String),
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::TimedOut => write!(f, "timed out"),
            ServeError::Crashed(how) => {
                write!(f, "generator ended before the end-of-item marker: {how}")
            }
            ServeError::StartFailed(why) => write!(f, "generator failed to start: {why}"),
            ServeError::Protocol(what) => write!(f, "generator protocol error: {what}"),
            ServeError::Stopped => write!(f, "stopped"),
            ServeError::Aborted => write!(f, "output rejected"),
            ServeError::Io(e) => write!(f, "supervising the generator failed: {e}"),
        }
    }
}

impl std::error::Error for ServeError {}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal (not sent by [`Server::shutdown`]).
    Signal(i32),
    /// It did not exit within the grace period of [`Server::shutdown`] and was killed.
    Killed,
    /// The status could not be obtained (the process was reaped elsewhere).
    Unknown,
}

impl Exit {
    fn from_status(status: libc::c_int) -> Exit {
        if libc::WIFEXITED(status) {
            Exit::Code(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            Exit::Signal(libc::WTERMSIG(status))
        } else {
            Exit::Unknown
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Exit::Code(code) => write!(f, "exit code {code}"),
            Exit::Signal(sig) => write!(f, "killed by signal {sig} ({})", signal_name(sig)),
            Exit::Killed => write!(f, "killed after the shutdown grace period"),
            Exit::Unknown => write!(f, "exit status unknown"),
        }
    }
}

/// Checks that `marker` can delimit items: not empty, no `\n` or `\r`.
///
/// # Errors
///
/// A message saying what is wrong.
pub fn check_marker(marker: &[u8]) -> Result<(), Invalid> {
    if marker.is_empty() {
        return Err("the end-of-item marker is empty".into());
    }
    if marker.iter().any(|&b| b == b'\n' || b == b'\r') {
        return Err("the end-of-item marker contains a line break".into());
    }
    Ok(())
}

/// A persistent generator process, started on demand; at most one is live at a time.
///
/// Dropping a `Server` kills the process group at once and reaps the process; call
/// [`Server::shutdown`] first to let it exit by itself and to receive its last stderr lines.
pub struct Server {
    spec: ServerSpec,
    live: Option<Live>,
    framer: Framer,
    buf: Vec<u8>,
    starts: u64,
    use_pidfd: bool,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("argv", &self.spec.argv)
            .field("pid", &self.pid())
            .field("starts", &self.starts)
            .finish()
    }
}

/// What one exchange ended with, while the process is still borrowed.
enum Step {
    /// The marker line was read; the process lives on.
    Done,
    /// The marker line was read after the process had exited.
    DoneExited,
    TimedOut,
    Stop,
    Abort,
    /// The process exited before the marker; `got_stdout`: it wrote something for this request.
    Exited {
        got_stdout: bool,
    },
    /// stdout reached EOF and the process did not exit within [`EOF_GRACE`].
    StdoutClosed,
    /// The output rested for [`OPEN_QUOTE_GRACE`] after a marker line inside a quoted field.
    OpenQuote,
    Io(String),
}

/// Result of a successful exchange.
enum Exchange {
    Done,
    /// The process had exited by itself between items (how): send the request again, to a new
    /// one.
    Retired(Exit),
}

impl Server {
    /// A server for `spec`; nothing is started until the first [`Server::serve`].
    pub fn new(spec: ServerSpec) -> Self {
        let framer = Framer::new(&spec.marker);
        Server {
            spec,
            live: None,
            framer,
            buf: vec![0; READ_CHUNK],
            starts: 0,
            use_pidfd: true,
        }
    }

    /// The pid (and process group id) of the live process, if one is running.
    pub fn pid(&self) -> Option<u32> {
        self.live.as_ref().map(|l| l.process.pid() as u32)
    }

    /// How many processes were started so far (successfully spawned ones).
    #[cfg(test)]
    pub fn starts(&self) -> u64 {
        self.starts
    }

    /// Serves one item: starts the process if none is live, writes `request` (one line, ending
    /// with `\n`, supplied by the caller) to its stdin and streams the item's output to
    /// `on_stdout` until the marker line. Returning `false` from `on_stdout` aborts the item.
    /// `on_stderr_line` gets stderr lines without their `\n` (lines longer than
    /// [`crate::child::groups::MAX_STDERR_LINE`] in pieces), including those written since the previous item.
    ///
    /// `timeout` counts from the moment the request is written, so for the first item after a
    /// (re)start it includes the process's start-up. `stop` is checked at least every 100 ms;
    /// if it is set on entry nothing is written, any live process is terminated, and
    /// `Err(Stopped)` is returned.
    ///
    /// # Errors
    ///
    /// See [`ServeError`]. After an error no process of the failed group is left running or
    /// unreaped; the next call starts a fresh process. The item's output already passed to
    /// `on_stdout` is then incomplete and must be discarded by the caller.
    pub fn serve(
        &mut self,
        request: &[u8],
        timeout: Option<Duration>,
        stop: &AtomicBool,
        on_stdout: &mut dyn FnMut(&[u8]) -> bool,
        on_stderr_line: &mut dyn FnMut(&[u8]),
    ) -> Result<(), ServeError> {
        if stop.load(Ordering::Relaxed) {
            self.terminate(on_stderr_line);
            return Err(ServeError::Stopped);
        }
        check_marker(&self.spec.marker).map_err(|e| ServeError::StartFailed(e.to_string()))?;
        self.between_items(on_stderr_line)?;
        let mut resent = false;
        // After a process that exited with a non-zero code without answering: the failure to
        // report if the fresh process fails too (so an item that makes the generator exit is
        // a crash of that item, not a start-up failure that could stop the shard).
        let mut first_failure: Option<ServeError> = None;
        loop {
            let started = match self.live {
                None => self.start(),
                Some(_) => Ok(()),
            };
            let result = started
                .and_then(|()| self.exchange(request, timeout, stop, on_stdout, on_stderr_line));
            match result {
                Ok(Exchange::Done) => return Ok(()),
                Ok(Exchange::Retired(exit)) if !resent => {
                    resent = true;
                    if exit != Exit::Code(0) {
                        first_failure = Some(ServeError::Crashed(exit.to_string()));
                    }
                }
                // Not reachable (a fresh process never retires), but never loop.
                Ok(Exchange::Retired(exit)) => return Err(ServeError::Crashed(exit.to_string())),
                Err(ServeError::StartFailed(why)) => {
                    return Err(first_failure.unwrap_or(ServeError::StartFailed(why)))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Ends the live process, if any: closes its stdin, waits up to `grace` for it to exit
    /// (delivering its stderr lines, discarding stdout), then kills what is left of its group
    /// and reaps it. Returns how it ended, or `None` when nothing was running.
    pub fn shutdown(
        &mut self,
        grace: Duration,
        on_stderr_line: &mut dyn FnMut(&[u8]),
    ) -> Option<Exit> {
        let live = self.live.as_mut()?;
        live.process.close_stdin();
        let until = Instant::now().checked_add(grace);
        let exited = live.process.wait_exit(until, &mut self.buf, on_stderr_line);
        let exit = self.kill(on_stderr_line);
        Some(if exited { exit } else { Exit::Killed })
    }

    fn start(&mut self) -> Result<(), ServeError> {
        let live = start(&self.spec, self.use_pidfd)
            .map_err(|e| ServeError::StartFailed(e.to_string()))?;
        self.starts += 1;
        self.live = Some(live);
        Ok(())
    }

    /// Before a request: delivers pending stderr, reports output nobody asked for, and retires
    /// a process that has exited (or can no longer be written to / read from).
    fn between_items(&mut self, on_stderr: &mut dyn FnMut(&[u8])) -> Result<(), ServeError> {
        let Some(live) = self.live.as_mut() else {
            return Ok(());
        };
        let ready = match live.process.poll(Duration::ZERO, false) {
            Ok(ready) => ready,
            Err(e) => {
                self.kill(on_stderr);
                return Err(ServeError::Io(e.to_string()));
            }
        };
        if ready.stderr {
            live.process.drain_stderr(&mut self.buf, on_stderr);
        }
        let mut retire = !live.process.stdin_open() || !live.process.stdout_open();
        if ready.stdout {
            match live.process.read_stdout(&mut self.buf) {
                Ok(Got::Closed) => retire = true,
                Ok(Got::Data(n)) => live.leftover.extend_from_slice(&self.buf[..n]),
                Ok(Got::Empty) => {}
                Err(e) => {
                    self.kill(on_stderr);
                    return Err(ServeError::Io(e.to_string()));
                }
            }
        }
        if !live.leftover.is_empty() {
            let shown = escape_bytes(&live.leftover);
            self.kill(on_stderr);
            return Err(ServeError::Protocol(format!(
                "output after the end-of-item marker without a request: {shown}"
            )));
        }
        if retire || live.process.has_exited() {
            self.kill(on_stderr);
        }
        Ok(())
    }

    fn exchange(
        &mut self,
        request: &[u8],
        timeout: Option<Duration>,
        stop: &AtomicBool,
        on_stdout: &mut dyn FnMut(&[u8]) -> bool,
        on_stderr: &mut dyn FnMut(&[u8]),
    ) -> Result<Exchange, ServeError> {
        let Some(live) = self.live.as_mut() else {
            return Err(ServeError::StartFailed("no process".into()));
        };
        let answered_before = live.answered;
        let served_before = live.served;
        let step = live.exchange(
            &mut self.framer,
            &mut self.buf,
            request,
            timeout,
            stop,
            on_stdout,
            on_stderr,
        );
        match step {
            Step::Done => {
                live.served += 1;
                // stderr written with the item is usually in its pipe by now: deliver it with
                // the item.
                live.process.drain_stderr(&mut self.buf, on_stderr);
                Ok(Exchange::Done)
            }
            Step::DoneExited => {
                self.kill(on_stderr);
                Ok(Exchange::Done)
            }
            Step::TimedOut => {
                self.kill(on_stderr);
                Err(ServeError::TimedOut)
            }
            Step::Stop => {
                self.terminate(on_stderr);
                Err(ServeError::Stopped)
            }
            Step::Abort => {
                self.kill(on_stderr);
                Err(ServeError::Aborted)
            }
            Step::Exited { got_stdout } => {
                let exit = self.kill(on_stderr);
                if !answered_before && !got_stdout {
                    Err(ServeError::StartFailed(format!(
                        "{exit} before answering its first request"
                    )))
                } else if served_before > 0 && !got_stdout && matches!(exit, Exit::Code(_)) {
                    // It exited after its last answer (a generator that serves a fixed number
                    // of items, whatever its exit code): the request goes to a fresh process.
                    Ok(Exchange::Retired(exit))
                } else {
                    Err(ServeError::Crashed(exit.to_string()))
                }
            }
            Step::StdoutClosed => {
                self.kill(on_stderr);
                Err(ServeError::Protocol(
                    "the generator closed its stdout before the end-of-item marker".into(),
                ))
            }
            Step::OpenQuote => {
                self.kill(on_stderr);
                Err(ServeError::Protocol(format!(
                    "the output ends inside a quoted field: a \" opened a field and was never \
                     closed, so the end-of-item marker line reads as part of a value (no more \
                     output came for {} s; generator restarted)",
                    OPEN_QUOTE_GRACE.as_secs()
                )))
            }
            Step::Io(e) => {
                self.kill(on_stderr);
                Err(ServeError::Io(e))
            }
        }
    }

    /// Kills the group at once, reaps the process, delivers its remaining stderr.
    fn kill(&mut self, on_stderr: &mut dyn FnMut(&[u8])) -> Exit {
        let Some(mut live) = self.live.take() else {
            return Exit::Unknown;
        };
        let exit = live
            .process
            .kill_and_reap()
            .map_or(Exit::Unknown, Exit::from_status);
        live.process.drain_stderr(&mut self.buf, on_stderr);
        live.process.finish_lines(on_stderr);
        exit
    }

    /// `SIGTERM` to the group, up to [`TERM_GRACE`] for the process to exit, then [`Self::kill`].
    fn terminate(&mut self, on_stderr: &mut dyn FnMut(&[u8])) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        live.process.close_stdin();
        live.process.signal(libc::SIGTERM);
        let until = Instant::now().checked_add(TERM_GRACE);
        live.process.wait_exit(until, &mut self.buf, on_stderr);
        self.kill(on_stderr);
    }
}

/// Dropping the live process closes its stdin, kills its group at once and reaps it.
impl Drop for Server {
    fn drop(&mut self) {
        self.live = None;
    }
}

/// The live process and what the protocol remembers about it.
struct Live {
    process: Process,
    /// stdout bytes read after the last marker line.
    leftover: Vec<u8>,
    /// Whether the process has written anything to stdout since it started.
    answered: bool,
    /// Items completed by this process.
    served: u64,
}

impl Live {
    #[allow(clippy::too_many_arguments)]
    fn exchange(
        &mut self,
        framer: &mut Framer,
        buf: &mut [u8],
        request: &[u8],
        timeout: Option<Duration>,
        stop: &AtomicBool,
        on_stdout: &mut dyn FnMut(&[u8]) -> bool,
        on_stderr: &mut dyn FnMut(&[u8]),
    ) -> Step {
        framer.reset();
        let mut input = request;
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        // A pipe takes 64 KiB at once: a request line is normally written here in one go.
        self.process.write_stdin(&mut input);
        let mut got_stdout = false;
        let mut eof_until: Option<Instant> = None;
        let mut open_quote_until: Option<Instant> = None;
        loop {
            if stop.load(Ordering::Relaxed) {
                return Step::Stop;
            }
            let now = Instant::now();
            let mut wait = MAX_POLL_WAIT;
            for (until, step) in [
                (deadline, Step::TimedOut),
                (eof_until, Step::StdoutClosed),
                (open_quote_until, Step::OpenQuote),
            ] {
                if let Some(until) = until {
                    if now >= until {
                        return step;
                    }
                    wait = wait.min(until - now);
                }
            }
            let ready = match self.process.poll(wait, !input.is_empty()) {
                Ok(ready) => ready,
                Err(e) => return Step::Io(e.to_string()),
            };
            if ready.stdin {
                self.process.write_stdin(&mut input);
            }
            if ready.stdout {
                match self.process.read_stdout(buf) {
                    Ok(Got::Closed) => {
                        eof_until = Instant::now().checked_add(EOF_GRACE);
                        self.process.hurry();
                    }
                    Ok(Got::Data(n)) => {
                        got_stdout = true;
                        self.answered = true;
                        match framer.feed(&buf[..n], on_stdout) {
                            Fed::More => {}
                            Fed::End { rest_at } => {
                                self.leftover.extend_from_slice(&buf[rest_at..n]);
                                return Step::Done;
                            }
                            Fed::Abort => return Step::Abort,
                        }
                        open_quote_until = framer
                            .ends_with_quoted_marker_line()
                            .then(|| Instant::now() + OPEN_QUOTE_GRACE);
                    }
                    Ok(Got::Empty) => {}
                    Err(e) => return Step::Io(e.to_string()),
                }
            }
            if ready.stderr {
                if let Err(e) = self.process.read_stderr(buf, on_stderr) {
                    return Step::Io(e.to_string());
                }
            }
            if self.process.has_exited() {
                // The marker may still be in the pipe, behind the exit.
                let mut fed = Fed::More;
                let mut answered = false;
                let _ = self.process.drain_stdout(buf, &mut |data| {
                    answered = true;
                    fed = framer.feed(data, on_stdout);
                    fed == Fed::More
                });
                if answered {
                    got_stdout = true;
                    self.answered = true;
                }
                return match fed {
                    Fed::End { .. } => Step::DoneExited,
                    Fed::Abort => Step::Abort,
                    Fed::More => Step::Exited { got_stdout },
                };
            }
        }
    }
}

/// The first [`SHOWN_BYTES`] of `bytes`, escaped and quoted, with `...` when there are more.
fn escape_bytes(bytes: &[u8]) -> String {
    let shown: String = bytes
        .iter()
        .take(SHOWN_BYTES)
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect();
    let more = if bytes.len() > SHOWN_BYTES { "..." } else { "" };
    format!("\"{shown}\"{more}")
}

/// What [`Framer::feed`] found.
#[derive(Debug, PartialEq, Eq)]
enum Fed {
    /// All bytes consumed, no marker line yet.
    More,
    /// The marker line ends just before `rest_at`; the bytes from there on are not the item's.
    End { rest_at: usize },
    /// `on_stdout` returned `false`.
    Abort,
}

/// Finds the end-of-item marker line in a stream of stdout chunks, passing on everything
/// before it. Only the start of a line that still matches `marker`, `marker\r` is held back. A
/// line counts as a line only where CSV quoting is closed: a quoted field may hold a line equal to
/// the marker, and it is data (per-item mode reads the same bytes the same way).
struct Framer {
    marker: Vec<u8>,
    /// Bytes at the start of the current line that match the beginning of the marker line.
    held: Vec<u8>,
    /// Whether the next byte starts a line (outside quotes).
    at_line_start: bool,
    /// The quoting state of the data passed on so far.
    quotes: Quotes,
    /// The last bytes passed on (up to the marker line's length plus a line feed before it).
    tail: Vec<u8>,
}

impl Framer {
    fn new(marker: &[u8]) -> Self {
        Framer {
            marker: marker.to_vec(),
            held: Vec::with_capacity(marker.len() + 1),
            at_line_start: true,
            quotes: Quotes::default(),
            tail: Vec::with_capacity(marker.len() + 3),
        }
    }

    /// True when the data passed on so far ends with a line equal to the marker line, inside
    /// a quoted field: a value holding such a line, or a quote left open.
    fn ends_with_quoted_marker_line(&self) -> bool {
        if !self.quotes.in_quoted_field() {
            return false;
        }
        let t = &self.tail;
        let line = t
            .strip_suffix(b"\r\n")
            .or_else(|| t.strip_suffix(b"\n"))
            .unwrap_or(b"");
        line.strip_suffix(self.marker.as_slice())
            .is_some_and(|before| before.last() == Some(&b'\n'))
    }

    /// Passes `bytes` on, remembering the last few.
    fn pass(&mut self, bytes: &[u8], on_stdout: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        let keep = self.marker.len() + 3;
        if bytes.len() >= keep {
            self.tail.clear();
            self.tail.extend_from_slice(&bytes[bytes.len() - keep..]);
        } else {
            self.tail.extend_from_slice(bytes);
            let excess = self.tail.len().saturating_sub(keep);
            self.tail.drain(..excess);
        }
        on_stdout(bytes)
    }

    /// Prepares for a new item (whose output starts at a line start).
    fn reset(&mut self) {
        self.held.clear();
        self.at_line_start = true;
        self.quotes = Quotes::default();
        self.tail.clear();
    }

    fn feed(&mut self, data: &[u8], on_stdout: &mut dyn FnMut(&[u8]) -> bool) -> Fed {
        let m = self.marker.len();
        let mut i = 0;
        while i < data.len() {
            if self.at_line_start {
                // Match the line against `marker\n` / `marker\r\n`, byte by byte.
                while i < data.len() {
                    let b = data[i];
                    let k = self.held.len();
                    let matches = match k.cmp(&m) {
                        std::cmp::Ordering::Less => b == self.marker[k],
                        std::cmp::Ordering::Equal => b == b'\n' || b == b'\r',
                        std::cmp::Ordering::Greater => b == b'\n',
                    };
                    if !matches {
                        break;
                    }
                    if b == b'\n' {
                        // Only reachable with k >= m: the marker never holds a `\n`.
                        self.held.clear();
                        return Fed::End { rest_at: i + 1 };
                    }
                    self.held.push(b);
                    i += 1;
                }
                if i == data.len() {
                    return Fed::More;
                }
                // Not the marker line: what was held is data, and so is the rest of the line.
                self.at_line_start = false;
                if !self.held.is_empty() {
                    // The held bytes hold no line feed (the marker has none).
                    let held = std::mem::take(&mut self.held);
                    self.quotes.consume(&held);
                    let ok = self.pass(&held, on_stdout);
                    self.held = held;
                    self.held.clear();
                    if !ok {
                        return Fed::Abort;
                    }
                }
            }
            let rest = &data[i..];
            match self.quotes.line_end(rest) {
                Some(p) => {
                    if !self.pass(&rest[..p], on_stdout) {
                        return Fed::Abort;
                    }
                    i += p;
                    self.at_line_start = true;
                }
                None => {
                    if !self.pass(rest, on_stdout) {
                        return Fed::Abort;
                    }
                    i = data.len();
                }
            }
        }
        Fed::More
    }
}

fn start(spec: &ServerSpec, use_pidfd: bool) -> io::Result<Live> {
    let launch = Launch {
        program: &spec.program,
        argv: &spec.argv,
        env: &spec.env,
        environ: &spec.environ,
        cwd: &spec.cwd,
    };
    let process = Process::start(&launch, use_pidfd)?;
    Ok(Live {
        process,
        leftover: Vec::new(),
        answered: false,
        served: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::config::DEFAULT_MARKER;
    use std::io::{self, Write};
    use std::path::Path;
    use std::process::{Command, Stdio};
    use std::sync::Arc;

    const SECOND: Duration = Duration::from_secs(1);

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".to_string(), "-c".to_string(), script.to_string()]
    }

    fn py(script: &str) -> Vec<String> {
        vec!["python3".to_string(), "-c".to_string(), script.to_string()]
    }

    /// A spec whose program is resolved as the command generator does it.
    fn spec_for(
        argv: Vec<String>,
        env: Vec<(String, String)>,
        cwd: PathBuf,
        marker: Vec<u8>,
    ) -> ServerSpec {
        // A program that cannot be found is started by a path that does not exist, to test
        // the failed start.
        let argv0 = argv.first().cloned().unwrap_or_default();
        let program = crate::child::supervise::resolve_program(&argv0, &cwd)
            .map(|p| std::path::absolute(p).unwrap())
            .unwrap_or_else(|_| Path::new("/nonexistent").join(&argv0));
        ServerSpec {
            program,
            argv,
            env,
            environ: Environ::capture(),
            cwd,
            marker,
        }
    }

    fn server_with(argv: Vec<String>, use_pidfd: bool) -> Server {
        let mut s = Server::new(spec_for(
            argv,
            Vec::new(),
            PathBuf::from("/"),
            DEFAULT_MARKER.as_bytes().to_vec(),
        ));
        s.use_pidfd = use_pidfd;
        s
    }

    fn server(argv: Vec<String>) -> Server {
        server_with(argv, true)
    }

    fn request(index: usize) -> Vec<u8> {
        format!("{{\"index\": {index}, \"key\": \"k{index}\", \"seed\": 7, \"fields\": {{}}}}\n")
            .into_bytes()
    }

    #[derive(Debug)]
    struct Served {
        result: Result<(), ServeError>,
        stdout: Vec<u8>,
        stderr: Vec<Vec<u8>>,
        elapsed: Duration,
    }

    fn serve_full(
        s: &mut Server,
        index: usize,
        timeout: Option<Duration>,
        stop: &AtomicBool,
    ) -> Served {
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let t = Instant::now();
        let result = s.serve(
            &request(index),
            timeout,
            stop,
            &mut |d| {
                stdout.extend_from_slice(d);
                true
            },
            &mut |l| stderr.push(l.to_vec()),
        );
        Served {
            result,
            stdout,
            stderr,
            elapsed: t.elapsed(),
        }
    }

    fn serve(s: &mut Server, index: usize) -> Served {
        serve_full(
            s,
            index,
            Some(Duration::from_secs(20)),
            &AtomicBool::new(false),
        )
    }

    use crate::child::proc_info::group_alive;

    /// Whether `pid` is a zombie child of this process (never reaped).
    fn is_our_zombie(pid: libc::pid_t) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit_once(')').is_some_and(|(_, rest)| {
                let f: Vec<&str> = rest.split_whitespace().collect();
                f.len() > 1 && f[0] == "Z" && f[1] == std::process::id().to_string()
            })
        })
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

    fn assert_gone(pid: u32) {
        let pgid = pid as libc::pid_t;
        assert!(
            eventually(3 * SECOND, || !group_alive(pgid)),
            "process group {pgid} still has live processes"
        );
        assert!(!is_our_zombie(pgid), "{pgid} left as a zombie");
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

    /// Reads JSON lines, answers each with two rows and the marker.
    const ECHO_PY: &str = r#"
import sys, json
out = sys.stdout
for line in sys.stdin:
    item = json.loads(line)
    out.write("%s,%d,a\n%s,%d,b\n\x1e\n" % (item["key"], item["index"], item["key"], item["index"]))
    out.flush()
"#;

    fn echo_expected(i: usize) -> String {
        format!("k{i},{i},a\nk{i},{i},b\n")
    }

    fn median(v: &mut [Duration]) -> Duration {
        v.sort();
        v[v.len() / 2]
    }

    #[test]
    fn echo_server_serves_many_items_fast() {
        const N: usize = 1000;
        let mut s = server(py(ECHO_PY));
        // Warm-up: the first item includes the interpreter's start.
        assert_eq!(serve(&mut s, 0).result, Ok(()));
        let pid = s.pid().unwrap();
        let mut ours = Vec::with_capacity(N);
        let t = Instant::now();
        for i in 1..=N {
            let out = serve(&mut s, i);
            assert_eq!(out.result, Ok(()), "item {i}");
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                echo_expected(i),
                "item {i}"
            );
            assert!(out.stderr.is_empty());
            ours.push(out.elapsed);
        }
        let ours_total = t.elapsed();
        assert_eq!(s.pid(), Some(pid), "one process served every item");
        assert_eq!(s.starts(), 1);

        // Baseline: the same generator driven with plain blocking std I/O (no timeout, no
        // stderr, no group handling): what the generator and the pipes cost by themselves.
        let mut child = Command::new("python3")
            .args(["-c", ECHO_PY])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = io::BufReader::new(child.stdout.take().unwrap());
        let mut base = Vec::with_capacity(N);
        let mut line = Vec::new();
        let mut t = Instant::now();
        for i in 0..=N {
            if i == 1 {
                t = Instant::now(); // After the warm-up item, as above.
            }
            let t1 = Instant::now();
            stdin.write_all(&request(i)).unwrap();
            loop {
                line.clear();
                io::BufRead::read_until(&mut stdout, b'\n', &mut line).unwrap();
                if line == b"\x1e\n" {
                    break;
                }
            }
            if i > 0 {
                base.push(t1.elapsed());
            }
        }
        let base_total = t.elapsed();
        drop(stdin);
        child.wait().unwrap();

        let (ours_med, base_med) = (median(&mut ours), median(&mut base));
        let per = |d: Duration| d / N as u32;
        eprintln!(
            "persistent echo, {N} items: Server {:?}/item (median {:?}); blocking std baseline \
             {:?}/item (median {:?}); overhead {:?}/item (median {:?})",
            per(ours_total),
            ours_med,
            per(base_total),
            base_med,
            per(ours_total).saturating_sub(per(base_total)),
            ours_med.saturating_sub(base_med),
        );
        // Loose bound (debug builds, parallel tests): no sleeps or timer ticks in the path.
        assert!(
            per(ours_total) < Duration::from_millis(2),
            "{:?}",
            per(ours_total)
        );
        let mut stderr = Vec::new();
        assert_eq!(
            s.shutdown(5 * SECOND, &mut |l| stderr.push(l.to_vec())),
            Some(Exit::Code(0))
        );
        assert_gone(pid);
        assert_eq!(s.pid(), None);
    }

    fn frame(chunks: &[&[u8]], marker: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
        let mut f = Framer::new(marker);
        let mut out = Vec::new();
        for (n, c) in chunks.iter().enumerate() {
            match f.feed(c, &mut |d| {
                out.extend_from_slice(d);
                true
            }) {
                Fed::More => {}
                Fed::End { rest_at } => {
                    let mut rest = c[rest_at..].to_vec();
                    for later in &chunks[n + 1..] {
                        rest.extend_from_slice(later);
                    }
                    return (out, Some(rest));
                }
                Fed::Abort => unreachable!(),
            }
        }
        (out, None)
    }

    #[test]
    fn framer_finds_the_marker_line_whatever_the_chunking() {
        type Case<'a> = (&'a [u8], &'a [u8], &'a [u8], Option<&'a [u8]>);
        let cases: &[Case] = &[
            // (marker, stream, delivered, rest after the marker line)
            (b"\x1e", b"a,1\nb,2\n\x1e\n", b"a,1\nb,2\n", Some(b"")),
            (b"\x1e", b"a,1\r\n\x1e\r\nx", b"a,1\r\n", Some(b"x")),
            (b"\x1e", b"\x1e\n", b"", Some(b"")),
            (
                b"\x1e",
                b"\x1ex\n\x1e\x1e\n\n\x1e \n\x1e\n",
                b"\x1ex\n\x1e\x1e\n\n\x1e \n",
                Some(b""),
            ),
            (
                b"\x1e",
                b"a\x1e\n\x1e\r\r\n\x1e\rx\n\x1e\n",
                b"a\x1e\n\x1e\r\r\n\x1e\rx\n",
                Some(b""),
            ),
            (b"\x1e", b"a,1\nb", b"a,1\nb", None),
            (
                b"END",
                b"E\nEN\nENDX\nEND\r\nmore\n",
                b"E\nEN\nENDX\n",
                Some(b"more\n"),
            ),
            (b"END", b"ENEND\nEND", b"ENEND\n", None),
            (b"END", b"x\nEND\n", b"x\n", Some(b"")),
            // A marker line inside a quoted field is data.
            (
                b"---",
                b"k,\"Intro\n---\nDetails\"\n---\n",
                b"k,\"Intro\n---\nDetails\"\n",
                Some(b""),
            ),
            (
                b"\x1e",
                b"k,\"a\n\x1e\n\"\"\x1e\"\"\n\"\n\x1e\nz",
                b"k,\"a\n\x1e\n\"\"\x1e\"\"\n\"\n",
                Some(b"z"),
            ),
            // A quote that does not open a field does not hide the marker.
            (b"END", b"a\"b,1\nEND\n", b"a\"b,1\n", Some(b"")),
            // A marker starting with a quote, and data lines that only start like it.
            (b"\"E", b"\"Ex\"\n\"E\n", b"\"Ex\"\n", Some(b"")),
        ];
        for &(marker, stream, delivered, rest) in cases {
            let rest = rest.map(<[u8]>::to_vec);
            let (out, got_rest) = frame(&[stream], marker);
            assert_eq!(out, delivered, "{stream:?}");
            assert_eq!(got_rest, rest, "{stream:?}");
            for split in 0..=stream.len() {
                let (a, b) = stream.split_at(split);
                let (out, got_rest) = frame(&[a, b], marker);
                assert_eq!(out, delivered, "{stream:?} split at {split}");
                assert_eq!(got_rest, rest, "{stream:?} split at {split}");
            }
            let bytes: Vec<&[u8]> = stream.chunks(1).collect();
            let (out, got_rest) = frame(&bytes, marker);
            if rest.is_none() {
                // Held bytes of a possible marker line are not delivered yet.
                assert!(delivered.starts_with(&out), "{stream:?} byte by byte");
            } else {
                assert_eq!(out, delivered, "{stream:?} byte by byte");
            }
            assert_eq!(got_rest, rest, "{stream:?} byte by byte");
        }
    }

    #[test]
    fn framer_abort_stops_delivery() {
        let mut f = Framer::new(b"\x1e");
        let mut calls = 0;
        assert_eq!(
            f.feed(b"a\n\x1eb\nc\n", &mut |_| {
                calls += 1;
                false
            }),
            Fed::Abort
        );
        assert_eq!(calls, 1);
    }

    #[test]
    fn marker_split_across_writes() {
        let script = r#"
while read -r line; do
  printf 'a,1\n'; sleep 0.02; printf '\036'; sleep 0.02; printf '\r'; sleep 0.02; printf '\n'
  read -r line
  printf '\036x,1\n'; sleep 0.02; printf '\036'; sleep 0.02; printf '\036\n'; sleep 0.02
  printf 'b,'; sleep 0.02; printf '2\n\036'; sleep 0.02; printf '\n'
done"#;
        let mut s = server(sh(script));
        for round in 0..2 {
            let out = serve(&mut s, 2 * round);
            assert_eq!(out.result, Ok(()));
            assert_eq!(out.stdout, b"a,1\n");
            let out = serve(&mut s, 2 * round + 1);
            assert_eq!(out.result, Ok(()));
            assert_eq!(out.stdout, b"\x1ex,1\n\x1e\x1e\nb,2\n");
        }
        assert_eq!(s.starts(), 1);
    }

    fn crash_every_7th(use_pidfd: bool) {
        let script = r#"
import sys, os, json
for line in sys.stdin:
    i = json.loads(line)["index"]
    if i % 14 == 6:
        sys.stdout.write("partial,"); sys.stdout.flush(); os._exit(3)
    if i % 14 == 13:
        os.kill(os.getpid(), 9)
    sys.stdout.write("%d,ok\n\x1e\n" % i); sys.stdout.flush()
"#;
        let mut s = server_with(py(script), use_pidfd);
        let mut pids = Vec::new();
        for i in 0..30 {
            let out = serve(&mut s, i);
            match i % 14 {
                6 => {
                    assert_eq!(
                        out.result,
                        Err(ServeError::Crashed("exit code 3".into())),
                        "{i}"
                    );
                    assert_eq!(out.stdout, b"partial,");
                }
                13 => assert_eq!(
                    out.result,
                    Err(ServeError::Crashed("killed by signal 9 (SIGKILL)".into())),
                    "{i}"
                ),
                _ => {
                    assert_eq!(out.result, Ok(()), "{i}");
                    assert_eq!(out.stdout, format!("{i},ok\n").into_bytes());
                }
            }
            match s.pid() {
                Some(pid) => pids.push(pid),
                None => assert!(i % 7 == 6, "process gone after item {i}"),
            }
        }
        pids.dedup();
        assert_eq!(pids.len(), 5, "{pids:?}");
        assert_eq!(s.starts(), 5);
        for &pid in &pids[..4] {
            assert_gone(pid);
        }
    }

    #[test]
    fn crash_fails_the_item_and_the_next_one_restarts() {
        crash_every_7th(true);
    }

    #[test]
    fn crash_without_pidfd() {
        crash_every_7th(false);
    }

    fn hang_times_out(use_pidfd: bool) {
        let script = r#"
n=0
while read -r line; do
  n=$((n+1))
  case "$line" in *'"index": 2,'*) sleep 1000 & sleep 1000 ;; esac
  printf 'row,%d\n\036\n' $n
done"#;
        let mut s = server_with(sh(script), use_pidfd);
        let stop = AtomicBool::new(false);
        let timeout = Some(Duration::from_millis(300));
        for i in 0..2 {
            assert_eq!(serve_full(&mut s, i, timeout, &stop).result, Ok(()));
        }
        let old = s.pid().unwrap();
        let out = serve_full(&mut s, 2, timeout, &stop);
        assert_eq!(out.result, Err(ServeError::TimedOut));
        assert!(
            out.elapsed >= Duration::from_millis(300),
            "{:?}",
            out.elapsed
        );
        assert!(out.elapsed < 2 * SECOND, "{:?}", out.elapsed);
        assert_eq!(s.pid(), None);
        assert_gone(old);
        for i in 3..6 {
            let out = serve_full(&mut s, i, timeout, &stop);
            assert_eq!(out.result, Ok(()));
            assert_eq!(out.stdout, format!("row,{}\n", i - 2).into_bytes());
        }
        assert_ne!(s.pid(), Some(old));
        assert_eq!(s.starts(), 2);
    }

    #[test]
    fn hang_times_out_and_the_group_is_killed() {
        hang_times_out(true);
    }

    #[test]
    fn hang_without_pidfd() {
        hang_times_out(false);
    }

    #[test]
    fn start_failures() {
        let mut s = server(vec!["shardrun-no-such-program-xyz".into()]);
        match serve(&mut s, 0).result {
            Err(ServeError::StartFailed(m)) => {
                assert!(m.contains("shardrun-no-such-program-xyz"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.starts(), 0);

        let mut s = server(Vec::new());
        assert!(matches!(
            serve(&mut s, 0).result,
            Err(ServeError::StartFailed(_))
        ));

        for use_pidfd in [true, false] {
            let mut s = server_with(sh("echo oops >&2; exit 3"), use_pidfd);
            let out = serve(&mut s, 0);
            assert_eq!(
                out.result,
                Err(ServeError::StartFailed(
                    "exit code 3 before answering its first request".into()
                ))
            );
            assert_eq!(out.stderr, vec![b"oops".to_vec()]);
            assert!(out.elapsed < SECOND, "{:?}", out.elapsed);
            assert_eq!(s.pid(), None);
            // Every serve tries again.
            assert!(matches!(
                serve(&mut s, 1).result,
                Err(ServeError::StartFailed(_))
            ));
            assert_eq!(s.starts(), 2);
        }

        // Reads the request, then exits 0 without answering: also a start failure.
        let mut s = server(sh("read -r line; exit 0"));
        assert_eq!(
            serve(&mut s, 0).result,
            Err(ServeError::StartFailed(
                "exit code 0 before answering its first request".into()
            ))
        );

        let mut s = server(sh("exit 0"));
        s.spec.marker = b"a\nb".to_vec();
        assert!(
            matches!(serve(&mut s, 0).result, Err(ServeError::StartFailed(m)) if m.contains("line break"))
        );
        assert_eq!(s.starts(), 0);

        let mut s = server(sh("exit 0"));
        s.spec.cwd = PathBuf::from("/nonexistent-dir-for-shardrun-test");
        assert!(
            matches!(serve(&mut s, 0).result, Err(ServeError::StartFailed(m)) if m.contains("/nonexistent-dir-for-shardrun-test"))
        );
    }

    #[test]
    fn output_after_the_marker_is_a_protocol_error_on_the_next_serve() {
        // Same read: the junk arrives together with the marker.
        let script = r#"
while read -r line; do
  case "$line" in
    *'"index": 0,'*) printf 'a\n\036\njunk\n' ;;
    *'"index": 3,'*) printf 'c\n\036\n'; sleep 0.05; printf 'late\n' ;;
    *) printf 'b\n\036\n' ;;
  esac
done"#;
        let mut s = server(sh(script));
        let out = serve(&mut s, 0);
        assert_eq!(out.result, Ok(()));
        assert_eq!(out.stdout, b"a\n");
        let first = s.pid().unwrap();
        let out = serve(&mut s, 1);
        assert_eq!(
            out.result,
            Err(ServeError::Protocol(
                "output after the end-of-item marker without a request: \"junk\\n\"".into()
            ))
        );
        assert!(out.stdout.is_empty());
        assert_eq!(s.pid(), None);
        assert_gone(first);
        assert_eq!(serve(&mut s, 2).result, Ok(()));
        // Later: the junk comes after the item was served.
        assert_eq!(serve(&mut s, 3).result, Ok(()));
        std::thread::sleep(Duration::from_millis(200));
        let out = serve(&mut s, 4);
        assert!(
            matches!(&out.result, Err(ServeError::Protocol(m)) if m.ends_with("\"late\\n\"")),
            "{:?}",
            out.result
        );
        assert_eq!(serve(&mut s, 5).result, Ok(()));
        assert_eq!(s.starts(), 3);
        // Long junk is cut.
        assert_eq!(
            escape_bytes(&[b'x'; 50]),
            format!("\"{}\"...", "x".repeat(SHOWN_BYTES))
        );
        assert_eq!(escape_bytes(b"\x1e\r\"a"), "\"\\x1e\\r\\\"a\"");
    }

    #[test]
    fn large_output_streams() {
        const MIB: usize = 1024 * 1024;
        let script = r#"
import sys
block = (b"x" * 1023 + b"\n") * 1024
out = sys.stdout.buffer
for line in sys.stdin.buffer:
    for _ in range(50):
        out.write(block)
    out.write(b"\x1e\n")
    out.flush()
"#;
        let mut s = server(py(script));
        for i in 0..2 {
            let mut total = 0usize;
            let mut biggest = 0usize;
            let mut last = 0u8;
            let t = Instant::now();
            let r = s.serve(
                &request(i),
                Some(Duration::from_secs(60)),
                &AtomicBool::new(false),
                &mut |d| {
                    total += d.len();
                    biggest = biggest.max(d.len());
                    last = d[d.len() - 1];
                    true
                },
                &mut |_| {},
            );
            assert_eq!(r, Ok(()));
            assert_eq!(total, 50 * MIB);
            assert_eq!(last, b'\n');
            assert!(biggest <= READ_CHUNK, "{biggest}");
            eprintln!("50 MiB item streamed in {:?}", t.elapsed());
        }
    }

    fn stop_is_quick(use_pidfd: bool) {
        // Dies on SIGTERM.
        let script = "sleep 1000 & while read -r line; do printf 'ok\\n\\036\\n'; read -r line; sleep 1000; done";
        let mut s = server_with(sh(script), use_pidfd);
        assert_eq!(serve(&mut s, 0).result, Ok(()));
        let pid = s.pid().unwrap();
        let (stop, handle) = stop_after(Duration::from_millis(150));
        let out = serve_full(&mut s, 1, None, &stop);
        handle.join().unwrap();
        assert_eq!(out.result, Err(ServeError::Stopped));
        assert!(
            out.elapsed < Duration::from_millis(700),
            "{:?}",
            out.elapsed
        );
        assert_eq!(s.pid(), None);
        assert_gone(pid);

        // Ignores SIGTERM: killed 500 ms later.
        let script = "trap '' TERM; sleep 1000 & while read -r line; do printf 'ok\\n\\036\\n'; read -r line; sleep 1000; done";
        let mut s = server_with(sh(script), use_pidfd);
        assert_eq!(serve(&mut s, 0).result, Ok(()));
        let pid = s.pid().unwrap();
        let (stop, handle) = stop_after(Duration::from_millis(100));
        let out = serve_full(&mut s, 1, None, &stop);
        handle.join().unwrap();
        assert_eq!(out.result, Err(ServeError::Stopped));
        assert!(
            out.elapsed >= Duration::from_millis(550),
            "{:?}",
            out.elapsed
        );
        assert!(
            out.elapsed < Duration::from_millis(1300),
            "{:?}",
            out.elapsed
        );
        assert_gone(pid);

        // Already set: nothing is written, the idle process is terminated.
        let mut s = server_with(
            sh("while read -r line; do printf 'ok\\n\\036\\n'; done"),
            use_pidfd,
        );
        assert_eq!(serve(&mut s, 0).result, Ok(()));
        let pid = s.pid().unwrap();
        let out = serve_full(&mut s, 1, None, &AtomicBool::new(true));
        assert_eq!(out.result, Err(ServeError::Stopped));
        assert!(
            out.elapsed < Duration::from_millis(700),
            "{:?}",
            out.elapsed
        );
        assert_gone(pid);
        let mut never = server(vec!["/nonexistent/program".into()]);
        assert_eq!(
            serve_full(&mut never, 0, None, &AtomicBool::new(true)).result,
            Err(ServeError::Stopped)
        );
    }

    #[test]
    fn stop_terminates_the_group_quickly() {
        stop_is_quick(true);
    }

    #[test]
    fn stop_without_pidfd() {
        stop_is_quick(false);
    }

    #[test]
    fn shutdown_closes_stdin_and_the_process_exits_by_itself() {
        for use_pidfd in [true, false] {
            let script =
                "while read -r line; do printf 'ok\\n\\036\\n'; done; echo bye >&2; exit 4";
            let mut s = server_with(sh(script), use_pidfd);
            assert_eq!(serve(&mut s, 0).result, Ok(()));
            let pid = s.pid().unwrap();
            let mut lines = Vec::new();
            let t = Instant::now();
            let exit = s.shutdown(5 * SECOND, &mut |l| lines.push(l.to_vec()));
            assert_eq!(exit, Some(Exit::Code(4)));
            assert_eq!(lines, vec![b"bye".to_vec()]);
            assert!(t.elapsed() < SECOND, "{:?}", t.elapsed());
            assert_gone(pid);
            assert_eq!(s.shutdown(SECOND, &mut |_| {}), None);
        }

        // Ignores EOF: killed after the grace period, with its background child.
        let script = "sleep 1000 & while read -r line; do printf 'ok\\n\\036\\n'; done; sleep 1000";
        let mut s = server(sh(script));
        assert_eq!(serve(&mut s, 0).result, Ok(()));
        let pid = s.pid().unwrap();
        let t = Instant::now();
        assert_eq!(
            s.shutdown(Duration::from_millis(200), &mut |_| {}),
            Some(Exit::Killed)
        );
        assert!(t.elapsed() >= Duration::from_millis(200));
        assert!(t.elapsed() < SECOND, "{:?}", t.elapsed());
        assert_gone(pid);
    }

    #[test]
    fn drop_kills_the_group() {
        let mut s = server(sh(
            "sleep 1000 & while read -r line; do printf 'ok\\n\\036\\n'; done",
        ));
        assert_eq!(serve(&mut s, 0).result, Ok(()));
        let pid = s.pid().unwrap();
        let t = Instant::now();
        drop(s);
        assert!(
            t.elapsed() < Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );
        assert_gone(pid);
    }

    #[test]
    fn stderr_lines_between_items_are_delivered_later() {
        let script = r#"
n=0
while read -r line; do
  n=$((n+1))
  echo "during $n" >&2
  printf 'ok\n\036\n'
  sleep 0.05
  echo "after $n" >&2
  printf 'partial' >&2
  printf ' line\n' >&2
done
printf 'no newline' >&2"#;
        let mut s = server(sh(script));
        let out = serve(&mut s, 0);
        assert_eq!(out.result, Ok(()));
        assert_eq!(out.stderr, vec![b"during 1".to_vec()]);
        std::thread::sleep(Duration::from_millis(200));
        let out = serve(&mut s, 1);
        assert_eq!(out.result, Ok(()));
        assert_eq!(
            out.stderr,
            vec![
                b"after 1".to_vec(),
                b"partial line".to_vec(),
                b"during 2".to_vec()
            ]
        );
        let mut lines = Vec::new();
        assert_eq!(
            s.shutdown(5 * SECOND, &mut |l| lines.push(l.to_vec())),
            Some(Exit::Code(0))
        );
        assert_eq!(
            lines,
            vec![
                b"after 2".to_vec(),
                b"partial line".to_vec(),
                b"no newline".to_vec()
            ]
        );
    }

    #[test]
    fn process_exiting_between_items_is_replaced() {
        // Serves one item, then exits 0: every item works, on a new process each time.
        let script = "read -r line; printf 'ok\\n\\036\\n'; exit 0";
        for use_pidfd in [true, false] {
            let mut s = server_with(sh(script), use_pidfd);
            for i in 0..20 {
                let out = serve(&mut s, i);
                assert_eq!(out.result, Ok(()), "{i}");
                assert_eq!(out.stdout, b"ok\n");
            }
            assert!(s.starts() >= 20, "{}", s.starts());
        }
        // Recycles itself after 3 items.
        let script = "for i in 1 2 3; do read -r line; printf 'ok\\n\\036\\n'; done";
        let mut s = server(sh(script));
        for i in 0..10 {
            assert_eq!(serve(&mut s, i).result, Ok(()), "{i}");
        }
        assert_eq!(s.starts(), 4);
    }

    #[test]
    fn rejected_output_aborts() {
        let script = "read -r line; printf 'ok\\n\\036\\n'; sleep 1000 & while read -r line; do while :; do echo yyyyyyyyyyyyyyyy; done; done";
        let mut s = server(sh(script));
        assert_eq!(serve(&mut s, 0).result, Ok(()));
        let pid = s.pid().unwrap();
        let mut seen = 0usize;
        let mut calls_after_abort = 0;
        let t = Instant::now();
        let r = s.serve(
            &request(1),
            None,
            &AtomicBool::new(false),
            &mut |d| {
                if seen >= 4096 {
                    calls_after_abort += 1;
                }
                seen += d.len();
                seen < 4096
            },
            &mut |_| {},
        );
        assert_eq!(r, Err(ServeError::Aborted));
        assert_eq!(calls_after_abort, 0);
        assert!(t.elapsed() < 2 * SECOND);
        assert_eq!(s.pid(), None);
        assert_gone(pid);
        assert_eq!(serve(&mut s, 2).result, Ok(()));
        assert_eq!(s.starts(), 2);
    }

    #[test]
    fn closed_stdout_is_a_protocol_error() {
        let mut s = server(sh("read -r line; exec >&-; echo closed >&2; sleep 1000"));
        let out = serve(&mut s, 0);
        assert!(
            matches!(&out.result, Err(ServeError::Protocol(m)) if m.contains("closed its stdout")),
            "{:?}",
            out.result
        );
        assert!(
            out.elapsed >= EOF_GRACE && out.elapsed < 2 * SECOND,
            "{:?}",
            out.elapsed
        );
        assert_eq!(out.stderr, vec![b"closed".to_vec()]);
        assert_eq!(s.pid(), None);
    }

    #[test]
    fn env_and_cwd() {
        let dir = std::env::temp_dir().join(format!("persistent-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("my-gen");
        std::fs::write(
            &script,
            "#!/bin/sh\nwhile read -r line; do pwd; echo \"$SHARDRUN_TEST_VAR\"; printf '\\036\\n'; done\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let mut s = Server::new(spec_for(
            vec!["./my-gen".into()],
            vec![("SHARDRUN_TEST_VAR".into(), "hello world".into())],
            dir.clone(),
            DEFAULT_MARKER.as_bytes().to_vec(),
        ));
        let out = serve(&mut s, 0);
        assert_eq!(out.result, Ok(()));
        let canonical = std::fs::canonicalize(&dir).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{}\nhello world\n", canonical.display())
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn custom_marker() {
        let mut s = Server::new(spec_for(
            sh("while read -r line; do printf 'END,1\\nENDx\\nEND\\r\\n'; done"),
            Vec::new(),
            PathBuf::from("/"),
            b"END".to_vec(),
        ));
        assert_eq!(serve(&mut s, 0).stdout, b"END,1\nENDx\n");
        assert_eq!(serve(&mut s, 1).stdout, b"END,1\nENDx\n");
        assert_eq!(s.starts(), 1);
    }

    #[test]
    fn python_helper_round_trip() {
        let helper_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("python");
        let script = format!(
            r#"
import sys
sys.path.insert(0, {dir:?})
import shardrun_gen
def rows(item):
    print("looking at", item["key"])
    if item["index"] == 3:
        raise ValueError("item three is bad")
    return [[item["key"], item["seed"], 'say "hi", x'], (item["key"], None, 1.5)]
shardrun_gen.serve(rows)
"#,
            dir = helper_dir.to_string_lossy()
        );
        let mut s = server(py(&script));
        for i in 0..6 {
            let out = serve(&mut s, i);
            if i == 3 {
                assert_eq!(out.result, Err(ServeError::Crashed("exit code 1".into())));
                let text: Vec<String> = out
                    .stderr
                    .iter()
                    .map(|l| String::from_utf8_lossy(l).into_owned())
                    .collect();
                assert!(
                    text.contains(&"shardrun_gen: item 'k3' failed:".to_string()),
                    "{text:?}"
                );
                assert!(
                    text.contains(&"ValueError: item three is bad".to_string()),
                    "{text:?}"
                );
            } else {
                assert_eq!(out.result, Ok(()), "{i}");
                assert_eq!(
                    String::from_utf8_lossy(&out.stdout),
                    format!("k{i},7,\"say \"\"hi\"\", x\"\nk{i},,1.5\n")
                );
                // print() went to stderr, not into the rows.
                assert_eq!(out.stderr, vec![format!("looking at k{i}").into_bytes()]);
            }
        }
        // Item 3 made the process exit without answering: a process that exits after its last
        // answer looks the same, so the item was sent once more, to a fresh process, which
        // failed it too (reported as the crash it is); a third process served the rest.
        assert_eq!(s.starts(), 3);
        assert_eq!(s.shutdown(5 * SECOND, &mut |_| {}), Some(Exit::Code(0)));
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            ServeError::Crashed(Exit::Signal(libc::SIGSEGV).to_string()).to_string(),
            "generator ended before the end-of-item marker: killed by signal 11 (SIGSEGV)"
        );
        assert_eq!(Exit::Code(2).to_string(), "exit code 2");
        assert!(check_marker(b"").is_err());
        assert!(check_marker(b"a\rb").is_err());
        assert!(check_marker(DEFAULT_MARKER.as_bytes()).is_ok());
    }
}
