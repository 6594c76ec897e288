//! SIGINT/SIGTERM handling: the first signal asks the worker to drain (start nothing new, stop
//! in-flight generators, commit what is complete); a second SIGINT exits at once. A SIGTERM
//! during the drain does not cut it short, because a launcher may forward one right after the
//! terminal's Ctrl-C reached every process.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::error::{Error, ExitCode, Result};

/// Shared view of the signals received so far.
#[derive(Debug, Clone)]
pub struct Interrupt {
    stop: Arc<AtomicBool>,
    first: Arc<AtomicI32>,
}

impl Interrupt {
    /// A flag that is never raised (tests, dry runs).
    pub fn none() -> Self {
        Interrupt {
            stop: Arc::new(AtomicBool::new(false)),
            first: Arc::new(AtomicI32::new(0)),
        }
    }

    /// Installs the handlers; from now on SIGINT/SIGTERM/SIGHUP set the flag instead of killing
    /// us (a closed terminal drains the shard like SIGTERM does, and logs its `finish` line).
    pub fn install() -> Result<Self> {
        let me = Self::none();
        let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])
            .map_err(|e| Error::usage(format!("cannot install signal handlers: {e}")))?;
        let (stop, first) = (me.stop.clone(), me.first.clone());
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    if first.load(Ordering::SeqCst) == 0 {
                        first.store(sig, Ordering::SeqCst);
                        stop.store(true, Ordering::SeqCst);
                    } else if sig == SIGINT {
                        // Second Ctrl-C: leave now, taking every generator's group with us.
                        crate::child::groups::kill_all();
                        std::process::exit(ExitCode::Interrupted.code());
                    }
                }
            })
            .map_err(|e| Error::usage(format!("cannot start the signal thread: {e}")))?;
        Ok(me)
    }

    /// The flag generators poll.
    pub fn flag(&self) -> &AtomicBool {
        &self.stop
    }

    /// True once a signal asked us to stop.
    pub fn requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The exit code for the first signal, if any.
    pub fn exit_code(&self) -> Option<ExitCode> {
        match self.first.load(Ordering::SeqCst) {
            0 => None,
            SIGTERM => Some(ExitCode::Terminated),
            SIGHUP => Some(ExitCode::HungUp),
            _ => Some(ExitCode::Interrupted),
        }
    }

    /// The first signal's name.
    pub fn signal_name(&self) -> &'static str {
        match self.first.load(Ordering::SeqCst) {
            SIGTERM => "SIGTERM",
            SIGINT => "SIGINT",
            SIGHUP => "SIGHUP",
            _ => "none",
        }
    }
}
/// Conventional name of a signal number.
pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        _ => "signal",
    }
}
