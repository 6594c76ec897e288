//! Opening and creating the files a run writes, never through a symbolic link: a link planted as
//! a shard's data file, a manifest, a log, a lock, a cache pack or a merge output (by another
//! user of a shared directory, or by mistake) would otherwise have its target truncated or
//! overwritten. Such a path is refused with a clear error instead.

use std::fs::{DirBuilder, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use crate::error::{Error, Result};

/// Options for opening a file whose last path component must not be a symbolic link.
pub fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.custom_flags(libc::O_NOFOLLOW);
    o
}

/// Opens `path` with `opts` (made by [`options`]); `what` says what was being done.
pub fn open(opts: &OpenOptions, path: &Path, what: &'static str) -> Result<File> {
    opts.open(path).map_err(|e| refusal(e, path, what))
}

/// Creates (or truncates) a file for writing, like `File::create`, without following a link.
pub fn create(path: &Path) -> Result<File> {
    open(
        options().write(true).create(true).truncate(true),
        path,
        "cannot create",
    )
}

/// The error for a failed open: a symbolic link gets a message of its own.
pub fn refusal(e: std::io::Error, path: &Path, what: &'static str) -> Error {
    if e.raw_os_error() == Some(libc::ELOOP) {
        return Error::usage(format!(
            "{what} {}: it is a symbolic link, and shardrun does not write through links (a \
             link there could make it overwrite another file). Remove the link and run again",
            path.display()
        ));
    }
    Error::Io {
        what,
        path: path.to_path_buf(),
        source: e,
    }
}

/// Creates a directory and its parents, writable only by their owner (new directories only):
/// nobody else can plant files or links in them.
pub fn create_dir_all(dir: &Path) -> std::io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o755).create(dir)
}
