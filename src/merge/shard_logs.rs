//! What merge takes from the shards' logs, each read once: whether every shard says it finished
//! complete (a hint that lets the data be copied before the manifests are checked; the manifests
//! decide), and the run's wall time, from the first `start` to the last `finish`. A log is read
//! whole when small, otherwise only its head and tail (its first `start` is at the head and its
//! last `finish` near the end, since lines are appended in time order).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use chrono::{DateTime, FixedOffset};

use super::threads::each_on_threads;
use super::PlanOnDisk;
use crate::run::runs::RunRef;

/// Logs up to this size are read whole.
const WHOLE: u64 = 64 << 10;
/// How much of a larger log's head and tail is read.
const EDGE: u64 = 4 << 10;

/// What the logs of a run's shards say.
pub(super) struct ShardLogs {
    /// Every shard of the plan is present and its log ends with the `finish` line of a shard
    /// that completed.
    pub(super) say_complete: bool,
    /// Seconds from the first `start` to the last `finish` of all shards; `None` when a log is
    /// missing or has neither.
    pub(super) wall_time_s: Option<f64>,
}

/// One log's facts.
#[derive(Default)]
struct LogFacts {
    first_start: Option<DateTime<FixedOffset>>,
    last_finish: Option<DateTime<FixedOffset>>,
    ends_complete: bool,
}

impl ShardLogs {
    /// Reads the log of every shard of the plan (on up to one thread per core).
    pub(super) fn read(run: &RunRef, plan: &PlanOnDisk) -> ShardLogs {
        let shards: Vec<u32> = (0..plan.num_shards).collect();
        let facts = each_on_threads("merge-logs", &shards, |&i| {
            read_log(&run.paths.log(i, plan.num_shards))
        });
        let say_complete = plan.missing.is_empty()
            && facts
                .iter()
                .all(|f| f.as_ref().is_some_and(|f| f.ends_complete));
        let wall_time_s = (|| {
            let mut first: Option<DateTime<FixedOffset>> = None;
            let mut last: Option<DateTime<FixedOffset>> = None;
            for f in &facts {
                let f = f.as_ref()?;
                first = min_opt(first, f.first_start, |a, b| a.min(b));
                last = min_opt(last, f.last_finish, |a, b| a.max(b));
            }
            let (a, b) = (first?, last?);
            Some(((b - a).num_milliseconds() as f64 / 1000.0).max(0.0))
        })();
        ShardLogs {
            say_complete,
            wall_time_s,
        }
    }
}

fn min_opt<T: Copy>(a: Option<T>, b: Option<T>, pick: impl Fn(T, T) -> T) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(pick(a, b)),
        (a, b) => a.or(b),
    }
}

/// The facts of one log; `None` when it cannot be read.
fn read_log(path: &Path) -> Option<LogFacts> {
    let file = File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    if len <= WHOLE {
        return Some(facts_of(&read_at(&file, 0, len)?, true, true));
    }
    let head = facts_of(&read_at(&file, 0, EDGE)?, true, false);
    let tail_bytes = read_at(&file, len - EDGE, EDGE)?;
    // The tail's first line is cut (unless it starts right at a line).
    let tail_lines = match memchr::memchr(b'\n', &tail_bytes) {
        Some(nl) => &tail_bytes[nl + 1..],
        None => &[][..],
    };
    let mut tail = facts_of(tail_lines, false, true);
    if tail.last_finish.is_none() {
        // The last attempt wrote more than the tail since its `finish` (or none): the whole
        // log says where the last `finish` is.
        tail.last_finish = facts_of(&read_at(&file, 0, len)?, false, false).last_finish;
    }
    Some(LogFacts {
        first_start: head.first_start,
        last_finish: tail.last_finish,
        ends_complete: tail.ends_complete,
    })
}

fn read_at(file: &File, from: u64, len: u64) -> Option<Vec<u8>> {
    let mut buf = vec![0; usize::try_from(len).ok()?];
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], from + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    buf.truncate(filled);
    Some(buf)
}

/// The facts in whole lines `bytes` (the last line only counts when it ends with a newline or
/// `at_end` says it is the file's end). `from_start`: `bytes` is the log's beginning, so its
/// first `start` is the log's.
fn facts_of(bytes: &[u8], from_start: bool, at_end: bool) -> LogFacts {
    let text = String::from_utf8_lossy(bytes);
    let mut facts = LogFacts::default();
    let mut last_line = None;
    for line in text.lines() {
        let Some((ts, event, fields)) = crate::store::log::parse_line(line) else {
            last_line = None;
            continue;
        };
        let time = || DateTime::parse_from_rfc3339(ts).ok();
        match event {
            "start" if from_start && facts.first_start.is_none() => facts.first_start = time(),
            "finish" => {
                if let Some(t) = time() {
                    facts.last_finish = Some(t);
                }
            }
            _ => {}
        }
        last_line = Some((event, fields));
    }
    facts.ends_complete =
        at_end && last_line.is_some_and(|(event, fields)| finished_complete(event, &fields));
    facts
}

/// Whether a log line's event and fields are the `finish` line of a shard that completed
/// (`status=ok`, `failed=0`, `done` = `total`).
fn finished_complete(event: &str, fields: &[(&str, String)]) -> bool {
    let get = |k: &str| {
        fields
            .iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.as_str())
    };
    event == "finish"
        && get("status") == Some("ok")
        && get("failed") == Some("0")
        && get("done").is_some()
        && get("done") == get("total")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(line: &str) -> bool {
        facts_of(format!("{line}\n").as_bytes(), true, true).ends_complete
    }

    #[test]
    fn only_the_finish_line_of_a_complete_shard_promises_a_complete_run() {
        let t = "2026-11-24T08:38:36.075Z";
        let ok = format!("{t} finish status=ok done=5 total=5 failed=0 rows=9 exit=0");
        assert!(complete(&ok));
        for line in [
            format!("{t} finish status=failed done=4 total=5 failed=1 rows=9 exit=1"),
            format!("{t} finish status=interrupted done=3 total=5 failed=0 rows=9 exit=130"),
            format!("{t} finish status=ok done=4 total=5 failed=0 rows=9 exit=0"),
            format!("{t} start run=r shard=0 num_shards=1 items=5 committed=5"),
            "not a log line".to_string(),
        ] {
            assert!(!complete(&line), "{line}");
        }
    }

    /// Large logs are read by their head and tail; the answers are those of reading them whole.
    #[test]
    fn a_large_log_gives_the_same_facts_as_a_whole_read() {
        let dir = tempfile::tempdir().unwrap();
        let start = "2026-11-24T08:00:00.000Z start run=r shard=0 num_shards=1 items=5 committed=0";
        let item = |s: u32| format!("2026-11-24T08:00:{s:02}.000Z item key=1 done=1");
        let finish = |s: u32| {
            format!("2026-11-24T08:{s:02}:00.000Z finish status=ok done=5 total=5 failed=0 rows=9 exit=0")
        };
        let many = |n: usize| (0..n).map(|i| item((i % 60) as u32)).collect::<Vec<_>>();
        let cases: Vec<(Vec<String>, Option<i64>, bool)> = vec![
            // small, finished
            (vec![start.into(), item(1), finish(2)], Some(120), true),
            // large, finished last
            (
                [vec![start.to_string()], many(2_000), vec![finish(3)]].concat(),
                Some(180),
                true,
            ),
            // large, a finish then a resumed attempt that wrote much and never finished
            (
                [
                    vec![start.to_string()],
                    many(100),
                    vec![finish(4), start.into()],
                    many(2_000),
                ]
                .concat(),
                Some(240),
                false,
            ),
            // no finish at all
            ([vec![start.to_string()], many(2_000)].concat(), None, false),
        ];
        for (k, (lines, wall, done)) in cases.into_iter().enumerate() {
            let path = dir.path().join(format!("shard_0_of_1.{k}.log"));
            std::fs::write(&path, lines.join("\n") + "\n").unwrap();
            let f = read_log(&path).unwrap();
            let secs = f
                .last_finish
                .zip(f.first_start)
                .map(|(b, a)| (b - a).num_seconds());
            assert_eq!(secs, wall, "case {k}");
            assert_eq!(f.ends_complete, done, "case {k}");
        }
        assert!(read_log(&dir.path().join("none")).is_none());
    }
}
