//! The manifest's record codec: the header, the per-item records (`ok` with the byte range of
//! the item's rows in the data file, or `failed` with the reason), their exact JSON-lines
//! encoding (written without serde, byte for byte as serde would, and read by a fixed-layout
//! parser with a serde fallback), and the reader that walks a manifest's whole records. The
//! shard store that commits them is [`super::manifest`]; merge and monitor read through this
//! module only.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{IoContext, Result};

/// What defines a shard's outputs; a component that differs refuses a resume.
pub type Fingerprint = BTreeMap<String, String>;

/// First record of a manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Header {
    pub format: String,
    pub shardrun: String,
    pub run: String,
    pub shard: u32,
    pub num_shards: u32,
    pub name: String,
    pub columns: Vec<String>,
    /// The type of each column; absent in manifests written before types existed (all string).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<crate::run::types::ColumnType>,
    /// Items in this shard.
    pub items_total: u64,
    /// Items in the whole source, and how they were split: with `shard`/`num_shards` these give
    /// the shard's plan, so merge can tell which items are missing.
    pub source_items: u64,
    pub sharding: crate::run::config::Sharding,
    pub fingerprint: Fingerprint,
    /// Length of the data file's header line.
    pub data_start: u64,
}

/// The manifest format tag.
pub const FORMAT: &str = "shardrun-manifest-1";

/// Outcome of an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Failed,
}

/// One finished item.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub index: u64,
    pub key: String,
    pub status: Status,
    /// Byte offset of the item's rows in the data file (ok items).
    #[serde(default)]
    pub offset: u64,
    /// Byte length of the item's rows.
    #[serde(default)]
    pub bytes: u64,
    /// CRC-32 of the item's rows, checked by `merge --verify` and on resume; absent in
    /// manifests written before checksums were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc: Option<u32>,
    #[serde(default)]
    pub rows: u64,
    /// Wall time of the item, milliseconds.
    pub ms: u64,
    #[serde(default)]
    pub cached: bool,
    pub attempts: u32,
    /// The generator revision that made (or failed) the item; empty in manifests written
    /// before revisions were recorded.
    #[serde(default)]
    pub rev: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One finished item as parsed from a manifest line, borrowing its strings from the line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecordRef<'a> {
    pub index: u64,
    pub key: &'a str,
    pub status: Status,
    pub offset: u64,
    pub bytes: u64,
    pub crc: Option<u32>,
    pub rows: u64,
    pub ms: u64,
    pub cached: bool,
    pub attempts: u32,
    pub rev: &'a str,
    pub reason: Option<&'a str>,
}

impl Record {
    /// A borrowed view of the record.
    pub fn as_ref(&self) -> RecordRef<'_> {
        RecordRef {
            index: self.index,
            key: &self.key,
            status: self.status,
            offset: self.offset,
            bytes: self.bytes,
            crc: self.crc,
            rows: self.rows,
            ms: self.ms,
            cached: self.cached,
            attempts: self.attempts,
            rev: &self.rev,
            reason: self.reason.as_deref(),
        }
    }
}

impl RecordRef<'_> {
    /// An owned copy.
    pub fn to_record(self) -> Record {
        Record {
            index: self.index,
            key: self.key.to_string(),
            status: self.status,
            offset: self.offset,
            bytes: self.bytes,
            crc: self.crc,
            rows: self.rows,
            ms: self.ms,
            cached: self.cached,
            attempts: self.attempts,
            rev: self.rev.to_string(),
            reason: self.reason.map(str::to_string),
        }
    }
}

/// Reads a manifest: the header, then each record that is whole and consistent (passed to
/// `on_record` in file order, as a borrowed view with its byte offset in the manifest: no
/// allocation per record), stopping at the first torn or inconsistent line. Returns the header,
/// the byte length of the valid prefix and the end of the committed data.
pub fn scan(
    path: &Path,
    mut on_record: impl FnMut(RecordRef<'_>, u64),
) -> Result<Option<(Header, u64, u64)>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).ctx("cannot open the manifest", path),
    };
    let mut lines = Lines::new(file);
    let Some((line, _)) = lines.next_line().ctx("cannot read", path)? else {
        return Ok(None);
    };
    let header: Header = match serde_json::from_slice(line) {
        Ok(h) => h,
        Err(_) => return Ok(None),
    };
    let mut valid = lines.consumed();
    let mut data_end = header.data_start;
    while let Some((line, at)) = lines.next_line().ctx("cannot read", path)? {
        let consistent = with_record(line, |rec| {
            // Ranges are appended back to back; anything else is damage.
            if rec.status == Status::Ok {
                if rec.offset != data_end {
                    return false;
                }
                data_end += rec.bytes;
            }
            on_record(rec, at);
            true
        });
        if consistent != Some(true) {
            break;
        }
        valid = lines.consumed();
    }
    Ok(Some((header, valid, data_end)))
}

/// Whole lines of a file, read in large blocks and returned in place (no copy per line). A final
/// line without its newline is torn and never returned.
pub struct Lines {
    file: File,
    buf: Vec<u8>,
    /// What `buf` grows to while reads fill it (it starts small: most manifests of a run of
    /// many shards are a few KiB, and zeroing a large buffer per file cost more than reading).
    block: usize,
    /// The last read filled the buffer: the file is larger than it.
    filled: bool,
    /// The unread part of `buf`.
    start: usize,
    end: usize,
    /// File offset of `buf[0]`.
    base: u64,
    eof: bool,
}

impl Lines {
    const BLOCK: usize = 1 << 20;

    /// Lines from the current position of `file` (which must be its start for offsets to be
    /// file offsets).
    pub fn new(file: File) -> Self {
        Self::with_capacity(file, Self::BLOCK)
    }

    /// Like [`Lines::new`], reading up to `capacity` bytes at a time (more for a longer line).
    pub fn with_capacity(file: File, capacity: usize) -> Self {
        const FIRST: usize = 16 << 10;
        Lines {
            file,
            buf: vec![0; capacity.clamp(1, FIRST)],
            block: capacity.max(1),
            filled: false,
            start: 0,
            end: 0,
            base: 0,
            eof: false,
        }
    }

    /// The file read.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Bytes consumed so far, as a file offset (the end of the last line returned).
    pub fn consumed(&self) -> u64 {
        self.base + self.start as u64
    }

    /// The next whole line with its newline, and its file offset.
    pub fn next_line(&mut self) -> std::io::Result<Option<(&[u8], u64)>> {
        use std::io::Read;
        loop {
            if let Some(nl) = memchr::memchr(b'\n', &self.buf[self.start..self.end]) {
                let (from, to) = (self.start, self.start + nl + 1);
                self.start = to;
                return Ok(Some((&self.buf[from..to], self.base + from as u64)));
            }
            if self.eof {
                return Ok(None);
            }
            // Move the partial line to the front, grow for a line longer than the buffer.
            self.buf.copy_within(self.start..self.end, 0);
            self.base += self.start as u64;
            self.end -= self.start;
            self.start = 0;
            if self.end == self.buf.len() {
                self.buf.resize(self.buf.len() * 2, 0);
            } else if self.filled && self.buf.len() < self.block {
                self.buf.resize((self.buf.len() * 2).min(self.block), 0);
            }
            let free = self.buf.len() - self.end;
            let n = match self.file.read(&mut self.buf[self.end..]) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                self.eof = true;
            }
            self.filled = n == free;
            self.end += n;
        }
    }
}

/// Parses one record line and passes it to `f` (borrowed when the line has the worker's own
/// layout; `None` when the line is not a record).
pub fn with_record<T>(line: &[u8], f: impl FnOnce(RecordRef<'_>) -> T) -> Option<T> {
    match parse_fixed(line) {
        Some(r) => Some(f(r)),
        None => {
            let owned: Record = serde_json::from_slice(line).ok()?;
            Some(f(owned.as_ref()))
        }
    }
}

/// Parses one record line. Lines the worker wrote have a fixed layout that is read directly
/// (merging millions of items spends most of its time here); anything else goes through the
/// general JSON parser, so a hand-edited or future line still parses.
pub fn parse_record(line: &[u8]) -> Option<Record> {
    with_record(line, |r| r.to_record())
}

/// The worker's own layout: `{"index":N,"key":"K","status":"ok|failed","offset":N,"bytes":N,
/// "crc":N,"rows":N,"ms":N,"cached":B,"attempts":N,"rev":"R"}` with an optional `"reason"` (left to
/// serde), and a key and revision without escapes.
fn parse_fixed(line: &[u8]) -> Option<RecordRef<'_>> {
    let mut p = Fixed(line.strip_suffix(b"\n").unwrap_or(line));
    p.lit(b"{\"index\":")?;
    let index = p.num()?;
    p.lit(b",\"key\":\"")?;
    let key = p.plain_string()?;
    p.lit(b",\"status\":\"")?;
    let status = if p.lit(b"ok\"").is_some() {
        Status::Ok
    } else {
        p.lit(b"failed\"")?;
        Status::Failed
    };
    p.lit(b",\"offset\":")?;
    let offset = p.num()?;
    p.lit(b",\"bytes\":")?;
    let bytes = p.num()?;
    p.lit(b",\"crc\":")?;
    let crc = u32::try_from(p.num()?).ok()?;
    p.lit(b",\"rows\":")?;
    let rows = p.num()?;
    p.lit(b",\"ms\":")?;
    let ms = p.num()?;
    p.lit(b",\"cached\":")?;
    let cached = if p.lit(b"true").is_some() {
        true
    } else {
        p.lit(b"false")?;
        false
    };
    p.lit(b",\"attempts\":")?;
    let attempts = u32::try_from(p.num()?).ok()?;
    p.lit(b",\"rev\":\"")?;
    let rev = p.plain_string()?;
    p.lit(b"}")?;
    if !p.0.is_empty() {
        return None;
    }
    Some(RecordRef {
        index,
        key,
        status,
        offset,
        bytes,
        crc: Some(crc),
        rows,
        ms,
        cached,
        attempts,
        rev,
        reason: None,
    })
}

struct Fixed<'a>(&'a [u8]);

impl<'a> Fixed<'a> {
    #[inline]
    fn lit(&mut self, l: &[u8]) -> Option<()> {
        self.0 = self.0.strip_prefix(l)?;
        Some(())
    }
    /// A decimal number of at most 19 digits (so it cannot overflow a u64).
    #[inline]
    fn num(&mut self) -> Option<u64> {
        let mut v: u64 = 0;
        let mut n = 0;
        for &b in self.0.iter().take(20) {
            let d = b.wrapping_sub(b'0');
            if d > 9 {
                break;
            }
            v = v.wrapping_mul(10).wrapping_add(u64::from(d));
            n += 1;
        }
        // At most 19 digits (no overflow), and no leading zero, which JSON forbids.
        if n == 0 || n > 19 || (n > 1 && self.0[0] == b'0') {
            return None;
        }
        self.0 = &self.0[n..];
        Some(v)
    }
    /// A JSON string body up to its closing quote, when it has no escapes and no control bytes.
    fn plain_string(&mut self) -> Option<&'a str> {
        // One vectorised search for the quote, then one pass over a short body: this runs for
        // two strings of every record a merge reads.
        let end = memchr::memchr(b'"', self.0)?;
        let body = &self.0[..end];
        let mut ascii = true;
        for &b in body {
            if b == b'\\' || b < 0x20 {
                return None;
            }
            ascii &= b < 0x80;
        }
        let s = if ascii {
            // SAFETY: every byte is ASCII (checked just above), so the bytes are UTF-8. The
            // general check, one call per string for two short strings of every record, was a
            // twentieth of a merge's CPU.
            unsafe { std::str::from_utf8_unchecked(body) }
        } else {
            std::str::from_utf8(body).ok()?
        };
        self.0 = &self.0[end + 1..];
        Some(s)
    }
}

/// Appends `rec` as JSON, byte for byte what `serde_json` writes for it, without going through
/// serde: the worker writes one record per item, millions per shard.
pub fn write_record(out: &mut Vec<u8>, rec: &Record) {
    fn num(out: &mut Vec<u8>, name: &[u8], v: u64) {
        out.extend_from_slice(name);
        out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
    }
    num(out, b"{\"index\":", rec.index);
    out.extend_from_slice(b",\"key\":");
    json_string(out, &rec.key);
    out.extend_from_slice(match rec.status {
        Status::Ok => b",\"status\":\"ok\"",
        Status::Failed => b",\"status\":\"failed\"",
    });
    num(out, b",\"offset\":", rec.offset);
    num(out, b",\"bytes\":", rec.bytes);
    if let Some(crc) = rec.crc {
        num(out, b",\"crc\":", u64::from(crc));
    }
    num(out, b",\"rows\":", rec.rows);
    num(out, b",\"ms\":", rec.ms);
    out.extend_from_slice(if rec.cached {
        b",\"cached\":true"
    } else {
        b",\"cached\":false"
    });
    num(out, b",\"attempts\":", u64::from(rec.attempts));
    out.extend_from_slice(b",\"rev\":");
    json_string(out, &rec.rev);
    if let Some(reason) = &rec.reason {
        out.extend_from_slice(b",\"reason\":");
        json_string(out, reason);
    }
    out.push(b'}');
}

/// A JSON string: copied as is unless it needs escapes, which are left to `serde_json`.
fn json_string(out: &mut Vec<u8>, s: &str) {
    if s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    } else {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

/// Reads only a manifest's header (cheap; for name-conflict checks and the merge).
pub fn read_header(path: &Path) -> Option<Header> {
    let file = File::open(path).ok()?;
    let mut line = Vec::new();
    BufReader::new(file).read_until(b'\n', &mut line).ok()?;
    serde_json::from_slice(&line).ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A committed record of one row (also used by the shard store's tests).
    pub(crate) fn rec(index: u64) -> Record {
        Record {
            index,
            key: index.to_string(),
            status: Status::Ok,
            offset: 0,
            bytes: 0,
            crc: None,
            rows: 1,
            ms: 1,
            cached: false,
            attempts: 1,
            rev: "0123456789ab".into(),
            reason: None,
        }
    }

    #[test]
    fn records_are_written_exactly_as_serde_writes_them() {
        let mut recs = vec![rec(0), rec(u64::MAX)];
        for (key, reason) in [
            ("AAPL|2024-01-02 ü", None),
            ("say \"hi\"\n\\ \u{1}\u{7f}", Some("exit code 1")),
            ("", Some("stderr: \"boom\"\t\u{0}")),
            ("😀/<>&'", Some("")),
        ] {
            let mut r = rec(12_345_678_901);
            r.key = key.into();
            r.reason = reason.map(str::to_string);
            r.status = if reason.is_some() {
                Status::Failed
            } else {
                Status::Ok
            };
            r.cached = reason.is_none();
            r.attempts = u32::MAX;
            r.ms = 10;
            r.crc = reason.is_none().then_some(u32::MAX);
            r.rev = key.chars().rev().collect();
            recs.push(r);
        }
        for r in recs {
            let mut ours = Vec::new();
            write_record(&mut ours, &r);
            let theirs = serde_json::to_vec(&r).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&theirs)
            );
            assert_eq!(parse_record(&ours), Some(r));
        }
    }

    #[test]
    fn the_fixed_layout_parser_agrees_with_serde() {
        let mut recs = vec![rec(7)];
        let mut r = rec(8);
        r.crc = Some(0xdead_beef);
        r.key = "AAPL|2024-01-02 ü".into();
        r.cached = true;
        r.offset = 12345678901;
        recs.push(r);
        let mut f = rec(9);
        f.status = Status::Failed;
        f.reason = Some("exit code 1".into());
        recs.push(f);
        let mut q = rec(10);
        q.key = "say \"hi\"\n".into();
        recs.push(q);
        for r in recs {
            let line = serde_json::to_vec(&r).unwrap();
            assert_eq!(
                parse_record(&line),
                Some(r.clone()),
                "{}",
                String::from_utf8_lossy(&line)
            );
        }
        assert_eq!(parse_fixed(br#"{"index":1,"key":"k","status":"ok","offset":0,"bytes":0,"crc":5,"rows":1,"ms":1,"cached":false,"attempts":1,"rev":"ab"}"#).map(|r| (r.index, r.crc, r.rev)), Some((1, Some(5), "ab")));
        // A record written before revisions were recorded still reads, with no revision.
        let old = br#"{"index":1,"key":"k","status":"ok","offset":0,"bytes":0,"rows":1,"ms":1,"cached":false,"attempts":1}"#;
        assert_eq!(
            parse_record(old).map(|r| (r.index, r.rev)),
            Some((1, String::new()))
        );
        assert!(parse_record(br#"{"index":1,"key":"k""#).is_none());
        assert!(parse_fixed(br#"{"index":99999999999999999999,"key":"k","status":"ok","offset":0,"bytes":0,"crc":0,"rows":1,"ms":1,"cached":false,"attempts":1}"#).is_none());
    }
}
