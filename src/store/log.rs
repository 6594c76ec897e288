//! The shard log: one timestamped line per event, appended to `logs/<run>/shard_I_of_N.log` and
//! echoed to stderr.
//!
//! Grammar (documented in the README; `monitor` parses it):
//!
//! ```text
//! line  = timestamp SP event *(SP key "=" value) LF
//! timestamp = RFC 3339 UTC with milliseconds, e.g. 2026-11-24T05:48:40.123Z
//! value = bare | json-string   ; bare: non-empty, no space, '"', '=' or control character
//! ```

use std::fmt::{Display, Write as _};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::Result;

/// Where events go.
#[derive(Debug)]
pub struct EventLog {
    file: Option<Mutex<File>>,
    path: PathBuf,
    /// The first write that failed (a full file system): the run goes on, and the worker reports
    /// it at the end, since launchers and `monitor` read the shard's outcome from this log.
    error: Mutex<Option<std::io::Error>>,
    echo_stderr: bool,
}

/// A value in a log line.
pub enum V<'a> {
    /// Printed bare when safe, else as a JSON string.
    S(&'a str),
    /// A number or other value printed with `Display`.
    D(&'a dyn Display),
}

impl EventLog {
    /// Opens (appending, creating) the log file at `path`.
    pub fn open(path: &Path, echo_stderr: bool) -> Result<EventLog> {
        let file = crate::store::files::open(
            crate::store::files::options().create(true).append(true),
            path,
            "cannot open the log",
        )?;
        Ok(EventLog {
            file: Some(Mutex::new(file)),
            path: path.to_path_buf(),
            error: Mutex::new(None),
            echo_stderr,
        })
    }

    /// The first failed write, if any, with the log's path.
    pub fn take_error(&self) -> Option<(std::io::Error, &Path)> {
        let e = self.error.lock().ok()?.take()?;
        Some((e, &self.path))
    }

    /// A log that only writes to stderr (used before the log file can be opened).
    pub fn stderr_only() -> EventLog {
        EventLog {
            file: None,
            path: PathBuf::new(),
            error: Mutex::new(None),
            echo_stderr: true,
        }
    }

    /// Writes one event line. Logging never stops the run: the first write error is kept for
    /// [`EventLog::take_error`], and a line written in part is cut off again, so that the log
    /// never holds a torn line (a later line may still fit).
    pub fn event(&self, event: &str, fields: &[(&str, V<'_>)]) {
        let line = format_line(&timestamp(), event, fields);
        if let Some(f) = &self.file {
            if let Ok(mut f) = f.lock() {
                let before = f.metadata().map(|m| m.len());
                // One write(2) per line on an O_APPEND file keeps lines whole.
                if let Err(e) = f.write_all(line.as_bytes()) {
                    if let Ok(len) = before {
                        let _ = f.set_len(len);
                    }
                    if let Ok(mut first) = self.error.lock() {
                        first.get_or_insert(e);
                    }
                }
            }
        }
        if self.echo_stderr {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }
}

/// The current time in the log's format.
pub fn timestamp() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// Formats one log line (with its newline).
pub fn format_line(ts: &str, event: &str, fields: &[(&str, V<'_>)]) -> String {
    let mut line = String::with_capacity(96);
    line.push_str(ts);
    line.push(' ');
    line.push_str(event);
    let mut scratch = String::new();
    for (k, v) in fields {
        line.push(' ');
        line.push_str(k);
        line.push('=');
        let s: &str = match v {
            V::S(s) => s,
            V::D(d) => {
                scratch.clear();
                let _ = write!(scratch, "{d}");
                &scratch
            }
        };
        push_value(&mut line, s);
    }
    line.push('\n');
    line
}

fn push_value(line: &mut String, s: &str) {
    let bare = !s.is_empty()
        && !s
            .chars()
            .any(|c| c == ' ' || c == '"' || c == '=' || c.is_control() || c == '\u{2028}');
    if bare {
        line.push_str(s);
    } else {
        // serde_json escapes quotes, backslashes and control characters.
        line.push_str(&serde_json::Value::String(s.to_string()).to_string());
    }
}

/// A parsed log line: timestamp, event and fields in order.
pub type ParsedLine<'a> = (&'a str, &'a str, Vec<(&'a str, String)>);

/// Parses a log line; `None` for lines that do not follow the grammar. The inverse of
/// [`format_line`].
pub fn parse_line(line: &str) -> Option<ParsedLine<'_>> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let (ts, rest) = line.split_once(' ')?;
    let b = ts.as_bytes();
    let looks_like_time = b.len() >= 20
        && b[0].is_ascii_digit()
        && b[4] == b'-'
        && b[10] == b'T'
        && b.last() == Some(&b'Z');
    if !looks_like_time {
        return None;
    }
    let (event, mut rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let mut fields = Vec::new();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        if after.starts_with('"') {
            let mut de = serde_json::Deserializer::from_str(after).into_iter::<String>();
            let value = de.next()?.ok()?;
            let used = de.byte_offset();
            fields.push((key, value));
            rest = after[used..].strip_prefix(' ').unwrap_or(&after[used..]);
        } else {
            let (value, next) = after.split_once(' ').unwrap_or((after, ""));
            fields.push((key, value.to_string()));
            rest = next;
        }
    }
    Some((ts, event, fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_bare_or_json_quoted_and_parse_back() {
        let tricky = "a \"quoted\" key=v\nnext";
        let line = format_line(
            "2026-01-01T00:00:00.000Z",
            "item",
            &[
                ("done", V::D(&3)),
                ("key", V::S("AAPL|2024")),
                ("why", V::S(tricky)),
                ("e", V::S("")),
            ],
        );
        assert_eq!(
            line,
            "2026-01-01T00:00:00.000Z item done=3 key=AAPL|2024 why=\"a \\\"quoted\\\" key=v\\nnext\" e=\"\"\n"
        );
        let (ts, ev, f) = parse_line(&line).unwrap();
        assert_eq!((ts, ev), ("2026-01-01T00:00:00.000Z", "item"));
        assert_eq!(
            f,
            vec![
                ("done", "3".into()),
                ("key", "AAPL|2024".into()),
                ("why", tricky.into()),
                ("e", "".into())
            ]
        );
    }

    #[test]
    fn garbage_lines_do_not_parse() {
        assert!(parse_line("nonsense").is_none());
        assert!(parse_line("garbage line").is_none());
        assert!(parse_line("ts ev key=\"unterminated").is_none());
    }
}
