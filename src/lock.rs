//! Exclusive per-shard locks held by the process and released by the kernel when it dies, so a
//! lock is never stale after a crash or kill -9.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// A held lock; dropping it (or the process dying) releases it.
#[derive(Debug)]
pub struct ShardLock {
    _file: File,
    path: PathBuf,
}

impl ShardLock {
    /// Takes the lock at `path` without waiting; `holder` (pid, host, start time) is written into
    /// the file so a contender can say who holds it. `what` names the locked thing in messages.
    pub fn acquire(path: &Path, what: &str, holder: &str) -> Result<ShardLock> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .ctx("cannot open the lock file", path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut who = String::new();
                let _ = file.read_to_string(&mut who);
                let who = who.trim();
                let who = if who.is_empty() {
                    "another process"
                } else {
                    who
                };
                return Err(Error::Locked(format!(
                    "{what} is locked by {who} ({}); wait for it to finish or stop it first",
                    path.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).ctx("cannot lock", path);
            }
        }
        file.set_len(0).ctx("cannot write the lock file", path)?;
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.write_all(holder.as_bytes()))
            .ctx("cannot write the lock file", path)?;
        Ok(ShardLock {
            _file: file,
            path: path.to_path_buf(),
        })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder_and_a_dropped_lock_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.lock");
        let first = ShardLock::acquire(&p, "shard 0", "pid 42 on host h").unwrap();
        let err = ShardLock::acquire(&p, "shard 0", "pid 43").unwrap_err();
        assert!(matches!(err, Error::Locked(_)));
        assert!(err.to_string().contains("pid 42 on host h"), "{err}");
        drop(first);
        ShardLock::acquire(&p, "shard 0", "pid 43").unwrap();
    }
}
