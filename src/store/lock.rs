//! Locks held by a process and released by the kernel when it dies, so a lock is never stale
//! after a crash or kill -9.
//!
//! Two levels. Every worker holds its run's lock *shared* for its whole life, and `merge` takes it
//! *exclusive*: no worker of any shard plan can write while a merge reads the shard files, and a
//! merge needs one descriptor for it whatever the shard count. Within the run, a worker also holds
//! its shard's lock and its data file name's lock *exclusive*, so two workers never write one
//! shard. A worker takes the run lock first, so a merge holding it exclusive sees no worker
//! between the two steps (and may delete shard lock files).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, IoContext, Result};

/// The run lock's file name in the run's lock directory.
pub const RUN_LOCK: &str = "run.lock";

/// How often and how long a contended exclusive lock is tried again before it is a refusal: a
/// merge that finds the run busy probes the shard locks (shared, for microseconds) to name who
/// holds the run, and a worker starting at that instant must not take the probe for a holder.
const RETRIES: u32 = 5;
const RETRY_DELAY: Duration = Duration::from_millis(10);

/// A held lock; dropping it (or the process dying) releases it.
#[derive(Debug)]
pub struct ShardLock {
    _file: File,
}

fn open(path: &Path) -> Result<File> {
    crate::store::files::open(
        crate::store::files::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false),
        path,
        "cannot open the lock file",
    )
}

/// What the lock file says about its holder ("another process" when it says nothing).
fn holder_of(file: &mut File) -> String {
    let mut who = String::new();
    let _ = file.seek(SeekFrom::Start(0));
    let _ = file.read_to_string(&mut who);
    let who = who.trim();
    if who.is_empty() {
        "another process".into()
    } else {
        who.into()
    }
}

fn write_holder(file: &mut File, path: &Path, holder: &str) -> Result<()> {
    file.set_len(0).ctx("cannot write the lock file", path)?;
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.write_all(holder.as_bytes()))
        .ctx("cannot write the lock file", path)
}

impl ShardLock {
    /// Takes the lock at `path` exclusive without waiting (beyond a few brief retries);
    /// `holder` (pid, host, start time) is written into the file so a contender can say who
    /// holds it. `what` names the locked thing in messages.
    pub fn acquire(path: &Path, what: &str, holder: &str) -> Result<ShardLock> {
        let mut file = open(path)?;
        let mut tries = 0;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if tries < RETRIES => {
                    tries += 1;
                    std::thread::sleep(RETRY_DELAY);
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(Error::Locked(format!(
                        "{what} is locked by {} ({}); wait for it to finish or stop it first",
                        holder_of(&mut file),
                        path.display()
                    )));
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(e).ctx("cannot lock", path);
                }
            }
        }
        write_holder(&mut file, path, holder)?;
        Ok(ShardLock { _file: file })
    }

    /// A worker's share of the run lock in `locks_dir`: refused (exit 3) while a merge holds it.
    /// Nothing is written into the file (it names the last merge).
    pub fn share_run(locks_dir: &Path, run: &str) -> Result<ShardLock> {
        let path = locks_dir.join(RUN_LOCK);
        let mut file = open(&path)?;
        match file.try_lock_shared() {
            Ok(()) => Ok(ShardLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked(format!(
                "run {run:?} is being merged by {} ({}); no worker of the run may write until \
                 the merge has finished: wait for it, then run the shard again",
                holder_of(&mut file),
                path.display()
            ))),
            Err(std::fs::TryLockError::Error(e)) => Err(e).ctx("cannot lock", &path),
        }
    }

    /// The run lock in `locks_dir`, exclusive, for a merge: refused (exit 1) while any worker of
    /// the run runs, whatever its shard plan, naming a running shard.
    pub fn own_run(locks_dir: &Path, run: &str, holder: &str) -> Result<ShardLock> {
        let path = locks_dir.join(RUN_LOCK);
        let mut file = open(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Refused(busy_run_message(locks_dir, run)));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e).ctx("cannot lock", &path),
        }
        write_holder(&mut file, &path, holder)?;
        Ok(ShardLock { _file: file })
    }
}

/// Names the shards whose workers hold the run: each `shard<I>_of_<N>.lock` is probed in turn
/// (one descriptor at a time, so any shard count works).
fn busy_run_message(locks_dir: &Path, run: &str) -> String {
    // The lowest shard is named, so the message does not depend on the directory order.
    let mut first: Option<(u32, u32, String, PathBuf)> = None;
    let mut count = 0usize;
    if let Ok(entries) = std::fs::read_dir(locks_dir) {
        for e in entries.flatten() {
            let name = e.file_name();
            let Some((i, n)) = parse_shard_lock_name(&name.to_string_lossy()) else {
                continue;
            };
            let Ok(mut file) = File::open(e.path()) else {
                continue;
            };
            if let Err(std::fs::TryLockError::WouldBlock) = file.try_lock_shared() {
                count += 1;
                if first.as_ref().is_none_or(|f| (n, i) < (f.1, f.0)) {
                    first = Some((i, n, holder_of(&mut file), e.path()));
                }
            }
        }
    }
    let more = match count {
        0 | 1 => String::new(),
        c => format!(
            " (and {} more running shard{})",
            c - 1,
            if c == 2 { "" } else { "s" }
        ),
    };
    match first {
        Some((i, n, who, path)) => format!(
            "shard {i} of {n} is locked by {who} ({}){more}; wait for it to finish or stop it \
             first; merge once the shard has finished",
            path.display()
        ),
        None => format!(
            "another process holds run {run:?} ({}): a worker starting, or a launcher's --force \
             removing outputs; merge once it has finished",
            locks_dir.join(RUN_LOCK).display()
        ),
    }
}

/// Parses `shard<I>_of_<N>.lock`.
fn parse_shard_lock_name(name: &str) -> Option<(u32, u32)> {
    let rest = name.strip_prefix("shard")?.strip_suffix(".lock")?;
    let (i, n) = rest.split_once("_of_")?;
    Some((i.parse().ok()?, n.parse().ok()?))
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

    #[test]
    fn workers_share_the_run_lock_and_a_merge_excludes_them_all() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let a = ShardLock::share_run(d, "r").unwrap();
        let b = ShardLock::share_run(d, "r").unwrap();
        let shard = ShardLock::acquire(&d.join("shard3_of_7.lock"), "s", "pid 42").unwrap();
        let err = ShardLock::own_run(d, "r", "merge pid 1").unwrap_err();
        assert!(matches!(err, Error::Refused(_)));
        assert!(
            err.to_string().contains("shard 3 of 7 is locked by pid 42"),
            "{err}"
        );
        drop((a, b, shard));
        let merge = ShardLock::own_run(d, "r", "merge pid 1").unwrap();
        let err = ShardLock::share_run(d, "r").unwrap_err();
        assert!(matches!(err, Error::Locked(_)));
        assert!(
            err.to_string().contains("being merged by merge pid 1"),
            "{err}"
        );
        drop(merge);
        ShardLock::share_run(d, "r").unwrap();
    }

    #[test]
    fn shard_lock_names_parse() {
        assert_eq!(
            parse_shard_lock_name("shard12_of_300.lock"),
            Some((12, 300))
        );
        assert_eq!(parse_shard_lock_name("process-0.csv.lock"), None);
        assert_eq!(parse_shard_lock_name("run.lock"), None);
    }
}
