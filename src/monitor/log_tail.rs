//! Following one shard log incrementally: the first read finds the current run's start line by
//! searching backwards and parses only the recent tail; later reads parse only appended bytes.
//! A truncated or replaced log is noticed (size or inode) and read again from scratch.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, FixedOffset};

use crate::store::log::parse_line;

/// How much of a log's end the first read parses line by line.
const TAIL: u64 = 64 << 10;
/// Recent progress points kept for the rate.
const POINTS: usize = 256;
/// The rate is measured over this recent window.
pub const RATE_WINDOW_S: f64 = 60.0;

/// What the current run of a shard has logged (everything since its last `start` line).
#[derive(Debug, Clone, Default)]
pub struct ShardLog {
    /// Fields of the last start line.
    pub start: Option<Start>,
    /// The finish line after it, if any: (status, exit code).
    pub finish: Option<(String, i32)>,
    pub done: u64,
    pub total: u64,
    pub rows: u64,
    pub failed: u64,
    pub current: Option<String>,
    pub last_event: Option<DateTime<FixedOffset>>,
    /// (time, items done) of recent progress lines.
    pub points: VecDeque<(DateTime<FixedOffset>, u64)>,
}

/// The start line's identity fields.
#[derive(Debug, Clone, Default)]
pub struct Start {
    pub pid: u32,
    pub pid_start: String,
    pub host: String,
    pub at: Option<DateTime<FixedOffset>>,
}

impl ShardLog {
    /// Items per second over the recent window; `None` when it cannot be told yet.
    pub fn rate(&self) -> Option<f64> {
        let (t1, d1) = *self.points.back()?;
        let (t0, d0) = self
            .points
            .iter()
            .find(|(t, _)| (t1 - *t).num_milliseconds() as f64 / 1000.0 <= RATE_WINDOW_S)
            .copied()?;
        let secs = (t1 - t0).num_milliseconds() as f64 / 1000.0;
        (secs >= 1.0 && d1 > d0).then(|| (d1 - d0) as f64 / secs)
    }

    fn apply(&mut self, ts: &str, event: &str, fields: &[(&str, String)]) {
        let at = DateTime::parse_from_rfc3339(ts).ok();
        let get = |k: &str| {
            fields
                .iter()
                .find(|(f, _)| *f == k)
                .map(|(_, v)| v.as_str())
        };
        let num = |k: &str| get(k).and_then(|v| v.parse::<u64>().ok());
        if event == "start" {
            *self = ShardLog {
                start: Some(Start {
                    pid: num("pid").unwrap_or(0) as u32,
                    pid_start: get("pid_start").unwrap_or("").to_string(),
                    host: get("host").unwrap_or("").to_string(),
                    at,
                }),
                done: num("committed").unwrap_or(0),
                total: num("items").unwrap_or(0),
                rows: num("rows").unwrap_or(0),
                ..ShardLog::default()
            };
            if let Some(t) = at {
                self.points.push_back((t, self.done));
            }
        }
        if at.is_some() {
            self.last_event = at;
        }
        match event {
            "item" => {
                self.done = num("done").unwrap_or(self.done);
                self.total = num("total").unwrap_or(self.total);
                self.rows = num("rows").unwrap_or(self.rows);
                self.current = get("key").map(str::to_string);
                if let Some(t) = at {
                    if self.points.len() == POINTS {
                        self.points.pop_front();
                    }
                    self.points.push_back((t, self.done));
                }
            }
            "item_failed" => self.failed += 1,
            "finish" => {
                self.done = num("done").unwrap_or(self.done);
                self.rows = num("rows").unwrap_or(self.rows);
                self.failed = num("failed").unwrap_or(self.failed);
                let exit = get("exit").and_then(|v| v.parse().ok()).unwrap_or(1);
                self.finish = Some((get("status").unwrap_or("failed").to_string(), exit));
                self.current = None;
            }
            _ => {}
        }
    }
}

/// A log being followed.
#[derive(Debug)]
pub struct LogTail {
    path: PathBuf,
    offset: u64,
    ino: u64,
    partial: Vec<u8>,
    /// Bytes read from disk so far (for the benchmark: refreshes read only what was appended).
    pub bytes_read: u64,
    /// Lines that did not follow the grammar (skipped).
    pub unparsed: u64,
    pub state: ShardLog,
}

impl LogTail {
    /// A log at `path` (which may not exist yet).
    pub fn new(path: &Path) -> Self {
        LogTail {
            path: path.to_path_buf(),
            offset: 0,
            ino: 0,
            partial: Vec::new(),
            bytes_read: 0,
            unparsed: 0,
            state: ShardLog::default(),
        }
    }

    /// True when the log file exists.
    pub fn exists(&self) -> bool {
        self.ino != 0
    }

    /// Brings the state up to date with the file.
    pub fn refresh(&mut self) {
        let Ok(file) = File::open(&self.path) else {
            *self = LogTail {
                bytes_read: self.bytes_read,
                ..LogTail::new(&self.path)
            };
            return;
        };
        let Ok(meta) = file.metadata() else { return };
        let len = meta.len();
        if meta.ino() != self.ino || len < self.offset {
            // New, replaced or truncated: read it afresh.
            let read = self.bytes_read;
            *self = LogTail::new(&self.path);
            self.bytes_read = read;
            self.ino = meta.ino();
            self.first_read(&file, len);
            return;
        }
        if len > self.offset {
            let mut buf = vec![0u8; (len - self.offset) as usize];
            if file.read_exact_at(&mut buf, self.offset).is_ok() {
                self.bytes_read += buf.len() as u64;
                self.offset = len;
                self.feed(&buf);
            }
        }
    }

    fn first_read(&mut self, file: &File, len: u64) {
        // The tail to parse line by line: the last 64 KiB, grown until it holds a progress line.
        let mut from = len.saturating_sub(TAIL);
        let tail = loop {
            let mut buf = vec![0u8; (len - from) as usize];
            if file.read_exact_at(&mut buf, from).is_err() {
                return;
            }
            self.bytes_read += buf.len() as u64;
            if from == 0 || memchr::memmem::find(&buf, b" item ").is_some() {
                break buf;
            }
            from = len.saturating_sub((len - from) * 4);
        };
        let skip = if from == 0 {
            0
        } else {
            memchr::memchr(b'\n', &tail).map_or(tail.len(), |i| i + 1)
        };
        // Everything before it: one forward pass for the current run's start line and the
        // failures logged since, without parsing.
        let head_end = from + skip as u64;
        if head_end > 0 {
            if let Some((start_line, failed)) = scan_head(file, head_end, &mut self.bytes_read) {
                self.feed(&start_line);
                self.state.failed += failed;
            }
        }
        self.offset = len;
        self.feed(&tail[skip..]);
    }

    fn feed(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        if !self.partial.is_empty() {
            match memchr::memchr(b'\n', rest) {
                Some(i) => {
                    let mut line = std::mem::take(&mut self.partial);
                    line.extend_from_slice(&rest[..=i]);
                    self.line(&line);
                    rest = &rest[i + 1..];
                }
                None => {
                    self.partial.extend_from_slice(rest);
                    return;
                }
            }
        }
        while let Some(i) = memchr::memchr(b'\n', rest) {
            self.line(&rest[..=i]);
            rest = &rest[i + 1..];
        }
        self.partial.extend_from_slice(rest);
    }

    fn line(&mut self, line: &[u8]) {
        let parsed = std::str::from_utf8(line).ok().and_then(parse_line);
        match parsed {
            Some((ts, event, fields)) => self.state.apply(ts, event, &fields),
            None => self.unparsed += 1,
        }
    }
}

/// Reads `0..end` forward (whole lines) and returns the last `start` line with the number of
/// `item_failed` lines after it. Forward substring search is far faster than a backward one.
fn scan_head(file: &File, end: u64, bytes_read: &mut u64) -> Option<(Vec<u8>, u64)> {
    const CHUNK: usize = 4 << 20;
    let start_finder = memchr::memmem::Finder::new(b"Z start ");
    let failed_finder = memchr::memmem::Finder::new(b" item_failed ");
    let mut found: Option<(Vec<u8>, u64)> = None;
    let mut buf = vec![0u8; CHUNK];
    let mut carry = 0usize; // bytes of an unfinished line kept at the front of `buf`
    let mut pos = 0u64;
    while pos < end {
        let want = (CHUNK - carry).min((end - pos) as usize);
        if want == 0 {
            // A single line longer than the buffer: skip it.
            carry = 0;
            continue;
        }
        file.read_exact_at(&mut buf[carry..carry + want], pos)
            .ok()?;
        *bytes_read += want as u64;
        pos += want as u64;
        let filled = carry + want;
        // Process whole lines only; the rest waits for the next chunk.
        let whole = if pos >= end {
            filled
        } else {
            memchr::memrchr(b'\n', &buf[..filled]).map_or(0, |i| i + 1)
        };
        let text = &buf[..whole];
        let last_start = start_finder
            .find_iter(text)
            .filter_map(|i| {
                let line_start = memchr::memrchr(b'\n', &text[..i]).map_or(0, |j| j + 1);
                let ts = &text[line_start..i];
                (ts.len() >= 19 && !ts.contains(&b' ')).then_some(line_start)
            })
            .last();
        match last_start {
            Some(ls) => {
                let line_end =
                    memchr::memchr(b'\n', &text[ls..]).map_or(text.len(), |j| ls + j + 1);
                let failed = failed_finder.find_iter(&text[line_end..]).count() as u64;
                found = Some((text[ls..line_end].to_vec(), failed));
            }
            None => {
                if let Some((_, f)) = &mut found {
                    *f += failed_finder.find_iter(text).count() as u64;
                }
            }
        }
        buf.copy_within(whole..filled, 0);
        carry = filled - whole;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::log::{format_line, V};
    use std::io::Write;

    fn line(ts: &str, event: &str, fields: &[(&str, V<'_>)]) -> String {
        format_line(ts, event, fields)
    }

    fn start(ts: &str, pid: u32, items: u64, committed: u64) -> String {
        line(
            ts,
            "start",
            &[
                ("pid", V::D(&pid)),
                ("pid_start", V::S("99")),
                ("host", V::S("h")),
                ("items", V::D(&items)),
                ("committed", V::D(&committed)),
                ("rows", V::D(&0)),
            ],
        )
    }

    fn item(ts: &str, done: u64, total: u64, key: &str) -> String {
        line(
            ts,
            "item",
            &[
                ("done", V::D(&done)),
                ("total", V::D(&total)),
                ("rows", V::D(&(done * 2))),
                ("key", V::S(key)),
            ],
        )
    }

    #[test]
    fn the_current_run_is_read_from_its_last_start_and_appends_are_read_alone() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.log");
        let mut f = File::create(&p).unwrap();
        write!(f, "{}", start("2026-01-01T00:00:00.000Z", 1, 10, 0)).unwrap();
        write!(f, "{}", item("2026-01-01T00:00:01.000Z", 4, 10, "a")).unwrap();
        write!(
            f,
            "{}",
            line(
                "2026-01-01T00:00:02.000Z",
                "finish",
                &[("status", V::S("interrupted")), ("exit", V::D(&130))]
            )
        )
        .unwrap();
        write!(f, "{}", start("2026-01-01T00:01:00.000Z", 2, 10, 4)).unwrap();
        write!(
            f,
            "{}",
            line(
                "2026-01-01T00:01:01.000Z",
                "item_failed",
                &[("key", V::S("x y"))]
            )
        )
        .unwrap();
        for i in 5..=8u64 {
            write!(
                f,
                "{}",
                item(
                    &format!("2026-01-01T00:01:{:02}.000Z", i * 2),
                    i,
                    10,
                    &format!("k{i}")
                )
            )
            .unwrap();
        }
        writeln!(f, "garbage line").unwrap();
        f.flush().unwrap();
        let mut t = LogTail::new(&p);
        t.refresh();
        let s = &t.state;
        assert_eq!(s.start.as_ref().unwrap().pid, 2);
        assert_eq!((s.done, s.total, s.rows, s.failed), (8, 10, 16, 1));
        assert_eq!(s.current.as_deref(), Some("k8"));
        assert!(s.finish.is_none(), "the finish belongs to the previous run");
        assert!(
            (s.rate().unwrap() - 4.0 / 16.0).abs() < 1e-9,
            "{:?}",
            s.rate()
        );
        assert_eq!(t.unparsed, 1);
        let before = t.bytes_read;
        let appended = line(
            "2026-01-01T00:02:00.000Z",
            "finish",
            &[
                ("status", V::S("ok")),
                ("done", V::D(&10)),
                ("rows", V::D(&20)),
                ("failed", V::D(&0)),
                ("exit", V::D(&0)),
            ],
        );
        write!(f, "{appended}").unwrap();
        f.flush().unwrap();
        t.refresh();
        assert_eq!(
            t.bytes_read - before,
            appended.len() as u64,
            "only the appended bytes are read"
        );
        assert_eq!(t.state.finish, Some(("ok".to_string(), 0)));
        assert_eq!(t.state.done, 10);
    }

    #[test]
    fn a_truncated_log_is_read_again_and_a_partial_line_waits_for_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.log");
        std::fs::write(
            &p,
            start("2026-01-01T00:00:00.000Z", 1, 5, 0)
                + &item("2026-01-01T00:00:01.000Z", 3, 5, "a"),
        )
        .unwrap();
        let mut t = LogTail::new(&p);
        t.refresh();
        assert_eq!(t.state.done, 3);
        let l = item("2026-01-01T00:00:02.000Z", 4, 5, "b");
        let (a, b) = l.split_at(20);
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        write!(f, "{a}").unwrap();
        t.refresh();
        assert_eq!(t.state.done, 3);
        write!(f, "{b}").unwrap();
        t.refresh();
        assert_eq!(t.state.done, 4);
        std::fs::write(&p, start("2026-01-01T00:05:00.000Z", 7, 9, 0)).unwrap();
        t.refresh();
        assert_eq!(
            (
                t.state.start.as_ref().unwrap().pid,
                t.state.done,
                t.state.total
            ),
            (7, 0, 9)
        );
    }

    #[test]
    fn a_long_log_finds_its_start_far_back_and_counts_failures() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.log");
        let mut text = start("2026-01-01T00:00:00.000Z", 3, 100_000, 0);
        for i in 1..=30_000u64 {
            if i % 1000 == 0 {
                text += &line(
                    "2026-01-01T00:00:01.000Z",
                    "item_failed",
                    &[("key", V::S("k"))],
                );
            }
            text += &item("2026-01-01T00:00:01.000Z", i, 100_000, "k");
        }
        std::fs::write(&p, &text).unwrap();
        let mut t = LogTail::new(&p);
        t.refresh();
        assert_eq!(t.state.start.as_ref().unwrap().pid, 3);
        assert_eq!((t.state.done, t.state.failed), (30_000, 30));
    }
}
