//! Errors that end a run, and the documented exit codes they map to.

use std::path::{Path, PathBuf};

/// The worker's documented exit codes (README, "Exit codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// Every item of the shard is committed.
    Ok = 0,
    /// Some items failed after their retries (the rest are committed), or the shard stopped on an
    /// I/O failure such as a full disk.
    ItemsFailed = 1,
    /// Usage, configuration or input error; nothing was written.
    Usage = 2,
    /// Another process holds the shard's lock.
    Locked = 3,
    /// Stopped by SIGHUP (the terminal closed), drained like SIGTERM.
    HungUp = 129,
    /// Interrupted by SIGINT.
    Interrupted = 130,
    /// Interrupted by SIGTERM.
    Terminated = 143,
}

impl ExitCode {
    /// The numeric process exit status.
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// An error that stops the program, with the exit code it deserves.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad flags, configuration or input: exit 2.
    #[error("{0}")]
    Usage(String),
    /// The shard is locked by another live process: exit 3.
    #[error("{0}")]
    Locked(String),
    /// An operation refused to act on what it found (merge of an incomplete run): exit 1,
    /// nothing changed.
    #[error("{0}")]
    Refused(String),
    /// A file-system operation failed while the shard was running: exit 1.
    #[error("{what} {}: {source}{}", path.display(), hint(source))]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn hint(e: &std::io::Error) -> &'static str {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        " (the disk is full: committed items are intact; free space and re-run to continue)"
    } else {
        ""
    }
}

impl Error {
    /// The exit code this error maps to.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Usage(_) => ExitCode::Usage,
            Error::Locked(_) => ExitCode::Locked,
            Error::Refused(_) => ExitCode::ItemsFailed,
            Error::Io { .. } => ExitCode::ItemsFailed,
        }
    }

    /// A configuration or usage error.
    pub fn usage(msg: impl Into<String>) -> Self {
        Error::Usage(msg.into())
    }
}

/// Why one item failed, written to its manifest record (and its log line); not an error of the
/// run: the worker retries the item, then records it as failed and goes on with the others.
pub type Reason = String;

/// A value that is not acceptable where it was given (a name, a configuration key, a generator
/// parameter, a program): the message says what is wrong and what to write instead, and names
/// no more of the value's place than the function that checked it knows. The caller adds the
/// rest (a flag, an enclosing key, the configuration file) with [`Invalid::within`], and makes it
/// the usage error (exit 2) that ends the run with [`Invalid::at`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl Invalid {
    /// Names the enclosing place: `"{place}: {message}"`, still an [`Invalid`].
    pub fn within(self, place: impl std::fmt::Display) -> Invalid {
        Invalid(format!("{place}: {}", self.0))
    }

    /// Names the place and makes it the usage error (exit 2) that ends the run.
    pub fn at(self, place: impl std::fmt::Display) -> Error {
        Error::Usage(format!("{place}: {}", self.0))
    }
}

impl From<String> for Invalid {
    fn from(msg: String) -> Self {
        Invalid(msg)
    }
}

impl From<&str> for Invalid {
    fn from(msg: &str) -> Self {
        Invalid(msg.to_string())
    }
}

/// Attaches "what was being done, on which path" to an I/O result.
pub trait IoContext<T> {
    /// Maps an `io::Error` to [`Error::Io`].
    fn ctx(self, what: &'static str, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, what: &'static str, path: &Path) -> Result<T> {
        self.map_err(|source| Error::Io {
            what,
            path: path.to_path_buf(),
            source,
        })
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
