//! `monitor --failures`: every item of a run whose latest manifest record is a failure, with the
//! lines of its shard log that tell why (its stderr, its failed attempts).
//!
//! The manifests are the truth for outcomes: the latest record of an item wins, so an item that
//! failed and was later committed is not listed. The logs hold the stderr: for each failed item,
//! the lines kept are those of the last worker run (since its last `start` line) that ended the
//! item with `item_failed`, which is the run that wrote the failed record.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{IoContext, Result};
use crate::run::paths::RunPaths;
use crate::store::record::{Lines, Status};

/// Stderr lines of an item kept as text in the report (the end of a traceback says the most).
pub const STDERR_TAIL: usize = 5;

/// One failed item.
#[derive(Debug, Clone, Serialize)]
pub struct FailedItem {
    pub shard: u32,
    pub index: u64,
    pub key: String,
    pub attempts: u32,
    /// The generator revision of the failing attempts.
    pub rev: String,
    pub reason: Option<String>,
    /// The shard log.
    pub log: PathBuf,
    /// 1-based numbers of the log lines about the item's failing run: `stderr`,
    /// `attempt_failed` and `item_failed` lines. Empty when the log no longer holds them.
    pub log_lines: Vec<u64>,
    /// How many of those lines are `stderr` lines.
    pub stderr_lines: u64,
    /// The last stderr lines of the last attempt (at most [`STDERR_TAIL`]), as the generator
    /// wrote them.
    pub stderr_tail: Vec<String>,
}

/// The failed items of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Failures {
    pub run: String,
    pub num_shards: u32,
    /// Failed items in all.
    pub failed_items: u64,
    /// Shards with at least one failed item.
    pub shards_with_failures: u32,
    /// Shards that have no manifest yet (never started, or started under another shard count).
    pub shards_without_manifest: u32,
    /// In shard order, then item order.
    pub items: Vec<FailedItem>,
}

/// Reads every shard's manifest and, for shards with failures, its log.
pub fn failures(run: &str, paths: &RunPaths, num_shards: u32) -> Result<Failures> {
    let mut report = Failures {
        run: run.to_string(),
        num_shards,
        failed_items: 0,
        shards_with_failures: 0,
        shards_without_manifest: 0,
        items: Vec::new(),
    };
    for shard in 0..num_shards {
        let Some(mut items) = failed_in_manifest(paths, shard, num_shards)? else {
            report.shards_without_manifest += 1;
            continue;
        };
        if items.is_empty() {
            continue;
        }
        let log = paths.log(shard, num_shards);
        locate_in_log(&log, &mut items)?;
        report.shards_with_failures += 1;
        report.failed_items += items.len() as u64;
        report.items.extend(items);
    }
    Ok(report)
}

/// The failed items of one shard, located in its log, as [`failures`] lists them; `None` without
/// a manifest (the dashboard refreshes one shard at a time).
pub fn shard_failures(
    paths: &RunPaths,
    shard: u32,
    num_shards: u32,
) -> Result<Option<Vec<FailedItem>>> {
    let Some(mut items) = failed_in_manifest(paths, shard, num_shards)? else {
        return Ok(None);
    };
    if !items.is_empty() {
        locate_in_log(&paths.log(shard, num_shards), &mut items)?;
    }
    Ok(Some(items))
}

/// The items of one shard whose latest record is a failure, in item order; `None` without a
/// manifest.
fn failed_in_manifest(
    paths: &RunPaths,
    shard: u32,
    num_shards: u32,
) -> Result<Option<Vec<FailedItem>>> {
    let path = paths.manifest(shard, num_shards);
    let log = paths.log(shard, num_shards);
    // Only failures are kept: an ok record of the same item removes it again.
    let mut failed: BTreeMap<u64, FailedItem> = BTreeMap::new();
    let scanned = crate::store::record::scan(&path, |rec, _| match rec.status {
        Status::Ok => {
            failed.remove(&rec.index);
        }
        Status::Failed => {
            failed.insert(
                rec.index,
                FailedItem {
                    shard,
                    index: rec.index,
                    key: rec.key.to_string(),
                    attempts: rec.attempts,
                    rev: rec.rev.to_string(),
                    reason: rec.reason.map(str::to_string),
                    log: log.clone(),
                    log_lines: Vec::new(),
                    stderr_lines: 0,
                    stderr_tail: Vec::new(),
                },
            );
        }
    })?;
    Ok(scanned.map(|_| failed.into_values().collect()))
}

/// What has been seen of one item since the last `start` line.
#[derive(Default)]
struct Seen {
    run: u64,
    lines: Vec<u64>,
    stderr: u64,
    /// The end of the current attempt's stderr, and of the previous attempt's.
    tail: VecDeque<String>,
    last: VecDeque<String>,
}

/// Fills in the log lines of `items` (all of one shard) from its log, in one forward pass that
/// parses only the lines of the four events involved.
fn locate_in_log(log: &Path, items: &mut [FailedItem]) -> Result<()> {
    let file = match File::open(log) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).ctx("cannot open the log", log),
    };
    let by_key: HashMap<&str, usize> = items
        .iter()
        .enumerate()
        .map(|(i, it)| (it.key.as_str(), i))
        .collect();
    let mut seen: Vec<Seen> = (0..items.len()).map(|_| Seen::default()).collect();
    let mut found: Vec<Option<Seen>> = (0..items.len()).map(|_| None).collect();
    let mut run = 0u64;
    let mut number = 0u64;
    let mut lines = Lines::new(file);
    while let Some((line, _)) = lines.next_line().ctx("cannot read", log)? {
        number += 1;
        let event = event_of(line);
        if !matches!(
            event,
            b"start" | b"stderr" | b"attempt_failed" | b"item_failed"
        ) {
            continue;
        }
        if event == b"start" {
            run += 1;
            continue;
        }
        let text = String::from_utf8_lossy(line);
        let Some((_, _, fields)) = crate::store::log::parse_line(&text) else {
            continue;
        };
        let get = |k: &str| fields.iter().find(|(f, _)| *f == k).map(|(_, v)| v);
        let Some(&i) = get("key").and_then(|k| by_key.get(k.as_str())) else {
            continue;
        };
        let s = &mut seen[i];
        if s.run != run {
            *s = Seen {
                run,
                ..Seen::default()
            };
        }
        s.lines.push(number);
        match event {
            b"stderr" => {
                s.stderr += 1;
                if s.tail.len() == STDERR_TAIL {
                    s.tail.pop_front();
                }
                s.tail.push_back(get("line").cloned().unwrap_or_default());
            }
            b"attempt_failed" => s.last = std::mem::take(&mut s.tail),
            _ => {
                if s.tail.is_empty() {
                    s.tail = std::mem::take(&mut s.last);
                }
                found[i] = Some(std::mem::take(s));
            }
        }
    }
    for (item, f) in items.iter_mut().zip(found) {
        if let Some(f) = f {
            item.log_lines = f.lines;
            item.stderr_lines = f.stderr;
            item.stderr_tail = f.tail.into();
        }
    }
    Ok(())
}

/// The event word of a log line (after the timestamp), without parsing the fields.
fn event_of(line: &[u8]) -> &[u8] {
    let rest = match memchr::memchr(b' ', line) {
        Some(i) => &line[i + 1..],
        None => return b"",
    };
    let end = memchr::memchr2(b' ', b'\n', rest).unwrap_or(rest.len());
    &rest[..end]
}

/// Consecutive line numbers joined into ranges: `[3, 4, 5, 9]` gives `[(3, 5), (9, 9)]`.
fn ranges(lines: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &n in lines {
        match out.last_mut() {
            Some((_, b)) if *b + 1 == n => *b = n,
            _ => out.push((n, n)),
        }
    }
    out
}

/// Quotes `s` for a POSIX shell when it needs it.
fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+,:=@%".contains(&b));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A command that prints the item's log lines: exact line ranges when they are few, else the
/// span filtered on the item's key field (interleaved lines of other items, with `jobs > 1`).
/// The log is named relative to `cwd` when it lies under it.
pub fn show_command(item: &FailedItem, cwd: Option<&Path>) -> Option<String> {
    let r = ranges(&item.log_lines);
    let (first, last) = (r.first()?.0, r.last()?.1);
    let path = cwd
        .and_then(|c| item.log.strip_prefix(c).ok())
        .unwrap_or(&item.log);
    let log = shell_quote(&path.to_string_lossy());
    if r.len() <= 6 {
        let script: Vec<String> = r
            .iter()
            .map(|&(a, b)| {
                if a == b {
                    format!("{a}p")
                } else {
                    format!("{a},{b}p")
                }
            })
            .collect();
        return Some(format!("sed -n '{}' {log}", script.join(";")));
    }
    // The key field exactly as the log writes it; every event involved has a field after it.
    let field =
        crate::store::log::format_line("", "", &[("key", crate::store::log::V::S(&item.key))]);
    let field = format!("{} ", field.trim());
    Some(format!(
        "sed -n '{first},{last}p' {log} | grep -F -e {}",
        shell_quote(&format!(" {field}"))
    ))
}

/// The report for people.
pub fn text(f: &Failures) -> String {
    let cwd = std::env::current_dir().ok();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "run {}: {} failed item{} in {} of {} shard{} (the latest record of each item){}",
        f.run,
        crate::format::human::thousands(f.failed_items),
        if f.failed_items == 1 { "" } else { "s" },
        f.shards_with_failures,
        f.num_shards,
        if f.num_shards == 1 { "" } else { "s" },
        match f.shards_without_manifest {
            0 => String::new(),
            n => format!("; {n} shard{} not started", if n == 1 { "" } else { "s" }),
        }
    );
    for it in &f.items {
        let _ = writeln!(
            out,
            "\nshard {}/{}  key {}  (index {})  {} attempt{}{}",
            it.shard,
            f.num_shards,
            it.key,
            it.index,
            it.attempts,
            if it.attempts == 1 { "" } else { "s" },
            if it.rev.is_empty() {
                String::new()
            } else {
                format!("  rev {}", it.rev)
            }
        );
        let _ = writeln!(
            out,
            "  reason: {}",
            it.reason.as_deref().unwrap_or("(none recorded)")
        );
        if it.stderr_lines > 0 {
            let shown = it.stderr_tail.len() as u64;
            let _ = writeln!(
                out,
                "  stderr ({} line{}{}):",
                it.stderr_lines,
                if it.stderr_lines == 1 { "" } else { "s" },
                if shown < it.stderr_lines {
                    format!("; the last {shown} of the last attempt")
                } else {
                    String::new()
                }
            );
            for l in &it.stderr_tail {
                let _ = writeln!(out, "    | {l}");
            }
        }
        match show_command(it, cwd.as_deref()) {
            Some(cmd) => {
                let _ = writeln!(out, "  log: {cmd}");
            }
            None => {
                let _ = writeln!(
                    out,
                    "  log: no lines about this item in {}",
                    it.log.display()
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_numbers_join_into_ranges() {
        assert_eq!(ranges(&[3, 4, 5, 9, 11, 12]), [(3, 5), (9, 9), (11, 12)]);
        assert!(ranges(&[]).is_empty());
    }

    #[test]
    fn the_event_word_is_read_without_parsing() {
        assert_eq!(
            event_of(b"2026-01-01T00:00:00.000Z stderr key=a\n"),
            b"stderr"
        );
        assert_eq!(event_of(b"2026-01-01T00:00:00.000Z start\n"), b"start");
        assert_eq!(event_of(b"garbage"), b"");
    }

    #[test]
    fn commands_quote_paths_and_keys() {
        let mut it = FailedItem {
            shard: 0,
            index: 7,
            key: "a b".into(),
            attempts: 1,
            rev: String::new(),
            reason: None,
            log: PathBuf::from("/tmp/it's/shard_0_of_1.log"),
            log_lines: vec![3, 4, 9],
            stderr_lines: 2,
            stderr_tail: Vec::new(),
        };
        assert_eq!(
            show_command(&it, None).unwrap(),
            r"sed -n '3,4p;9p' '/tmp/it'\''s/shard_0_of_1.log'"
        );
        assert_eq!(
            show_command(&it, Some(Path::new("/tmp"))).unwrap(),
            r"sed -n '3,4p;9p' 'it'\''s/shard_0_of_1.log'"
        );
        it.log_lines = (1..=20).map(|n| n * 2).collect();
        assert_eq!(
            show_command(&it, None).unwrap(),
            r#"sed -n '2,40p' '/tmp/it'\''s/shard_0_of_1.log' | grep -F -e ' key="a b" '"#
        );
        it.log_lines.clear();
        assert!(show_command(&it, None).is_none());
    }
}
