//! What `/proc` says about a process: is it still the one a log named, its CPU time and memory.

/// This machine's host name, as the worker's start line records it.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Fields of `/proc/<pid>/stat` after the command name (field 3 is index 0).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// The process start time (clock ticks since boot, field 22) of `pid`.
pub fn start_time(pid: u32) -> Option<String> {
    stat_fields(pid)?.get(19).cloned()
}

/// True when `pid` is alive (not a zombie) and started at `pid_start`, i.e. it was not reused.
pub fn is_same_process(pid: u32, pid_start: &str) -> bool {
    match stat_fields(pid) {
        Some(f) => f.first().is_some_and(|s| s != "Z") && f.get(19).is_some_and(|s| s == pid_start),
        None => false,
    }
}

/// CPU time used (user + system, clock ticks) and age in seconds.
pub fn cpu_ticks(pid: u32) -> Option<(u64, f64)> {
    let f = stat_fields(pid)?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let start: f64 = f.get(19)?.parse().ok()?;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((utime + stime, uptime - start / clock_ticks_per_second()))
}

/// Resident memory of `pid` in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
pub fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// Whether a live (non-zombie) process of group `pgid` exists. Killed members may linger as
/// zombies until their parent (or init) reaps them; they do not count. (For tests: the worker
/// itself never needs to ask.)
#[cfg(test)]
pub fn group_alive(pgid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks existence.
    if unsafe { libc::kill(-pgid, 0) } == -1
        && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
    {
        return false;
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return true;
    };
    let pgid = pgid.to_string();
    dir.flatten().any(|entry| {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            return false;
        };
        // Fields after the name: state (index 0), ppid, pgrp (index 2).
        stat_fields(pid).is_some_and(|f| f.len() > 2 && f[2] == pgid && f[0] != "Z")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_itself_and_not_a_reused_pid() {
        let me = std::process::id();
        let start = start_time(me).unwrap();
        assert!(is_same_process(me, &start));
        assert!(!is_same_process(me, "1"));
        assert!(rss_bytes(me).unwrap() > 0);
        assert!(cpu_ticks(me).is_some());
    }
}
