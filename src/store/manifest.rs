//! A shard's durable state: its data file and its manifest, committed together.
//!
//! The manifest (`manifest_shard<I>_of_<N>.jsonl`) is a JSON-lines log: a header record, then one
//! record per finished item (`ok` with the byte range of its rows in the data file, or `failed`
//! with the reason). A group commit first writes and syncs the items' rows to the data file, then
//! appends and syncs their records. So an item's rows are visible (to resume and merge) only once
//! its record is durable, and after a crash at any instant the next open keeps exactly the
//! records that are whole and point inside the data file, truncates the manifest after them and
//! the data file after the last committed byte. Nothing torn, nothing duplicated.

use std::collections::BTreeMap;

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::run::paths::RunPaths;

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
    pub fn to_record(&self) -> Record {
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

    /// Like [`Lines::new`], reading `capacity` bytes at a time (more for a longer line).
    pub fn with_capacity(file: File, capacity: usize) -> Self {
        Lines {
            file,
            buf: vec![0; capacity.max(1)],
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
            }
            let n = match self.file.read(&mut self.buf[self.end..]) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                self.eof = true;
            }
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
        if body.iter().any(|&b| b == b'\\' || b < 0x20) {
            return None;
        }
        let s = std::str::from_utf8(body).ok()?;
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

/// An open shard: data file and manifest, positioned after the last commit.
#[derive(Debug)]
pub struct ShardStore {
    data: File,
    data_path: PathBuf,
    manifest: File,
    manifest_path: PathBuf,
    /// End of the committed rows (what the manifest's records cover).
    data_end: u64,
    /// End of the rows written to the data file, committed or not (large items are written
    /// before their commit, unsynced, instead of being copied into `pending_data`).
    written_end: u64,
    /// Rows waiting for the next commit, which go at `written_end`.
    pending_data: Vec<u8>,
    pending_records: Vec<u8>,
    pending_items: usize,
    /// What opening it repaired (items whose rows no longer match their checksum), to be
    /// reported.
    pub repaired: Option<String>,
}

/// Rows of one item from this size on are written to the data file at once rather than copied
/// into the commit buffer, so that a large item is not held in memory twice.
const DIRECT_WRITE: usize = 4 << 20;

impl ShardStore {
    /// Opens the shard for appending: resumes a matching manifest (repairing a torn tail), or
    /// starts fresh. `force` discards the shard's previous outputs first. `resumed` sees each
    /// record that is kept, in file order (the latest record of an item is the one that counts);
    /// it is also called for the records of a manifest that turns out to be refused or, with
    /// `force`, not at all.
    pub fn open(
        paths: &RunPaths,
        header: &Header,
        force: bool,
        mut resumed: impl FnMut(RecordRef<'_>),
    ) -> Result<ShardStore> {
        let data_path = paths.data_file(&header.name);
        let manifest_path = paths.manifest(header.shard, header.num_shards);
        check_name_conflicts(paths, header, force)?;
        let mut committed_any = false;
        let mut repaired = None;
        let existing = if force {
            None
        } else {
            if let Some((cut, message)) = bad_tail(&manifest_path, &data_path)? {
                // What follows the damaged item is cut with it: the records of a shard cover
                // its data file back to back, and those items are simply generated again.
                let m = crate::store::files::open(
                    crate::store::files::options().write(true),
                    &manifest_path,
                    "cannot open",
                )?;
                m.set_len(cut)
                    .and_then(|()| m.sync_data())
                    .ctx("cannot truncate", &manifest_path)?;
                repaired = Some(message);
            }
            scan(&manifest_path, |r, _| {
                committed_any |= r.status == Status::Ok;
                resumed(r);
            })?
        };
        let (valid_len, data_end) = match existing {
            Some((old, valid, data_end)) => {
                check_same_shard(&old, header, &manifest_path)?;
                (Some(valid), data_end)
            }
            None => (None, 0),
        };
        let (data, manifest, data_end) = match valid_len {
            Some(valid) => {
                let data = open_rw(&data_path, false)?;
                let len = data.metadata().ctx("cannot stat", &data_path)?.len();
                if !committed_any {
                    // Nothing committed: the data file is just its header; write it again.
                    let header_line = crate::format::csv_out::header_line(&header.columns);
                    data.write_all_at(&header_line, 0)
                        .ctx("cannot write", &data_path)?;
                } else if len < data_end {
                    return Err(Error::usage(format!(
                        "{} is shorter ({len} bytes) than its manifest {} says was committed ({data_end} bytes); \
                         the file was changed outside shardrun. Re-run with --force to regenerate this shard",
                        data_path.display(),
                        manifest_path.display()
                    )));
                }
                data.set_len(data_end).ctx("cannot truncate", &data_path)?;
                data.sync_data().ctx("cannot sync", &data_path)?;
                let manifest = open_rw(&manifest_path, false)?;
                manifest
                    .set_len(valid)
                    .ctx("cannot truncate", &manifest_path)?;
                manifest.sync_data().ctx("cannot sync", &manifest_path)?;
                (data, manifest, data_end)
            }
            None => {
                let header_line = crate::format::csv_out::header_line(&header.columns);
                // The old manifest goes first: a crash before the data file is replaced then
                // leaves no record pointing into it (and an empty manifest reads as absent).
                let mut manifest = open_rw(&manifest_path, true)?;
                manifest.sync_data().ctx("cannot sync", &manifest_path)?;
                let data = open_rw(&data_path, true)?;
                data.write_all_at(&header_line, 0)
                    .and_then(|_| data.sync_data())
                    .ctx("cannot write", &data_path)?;
                let mut line =
                    serde_json::to_vec(header).map_err(|e| Error::usage(e.to_string()))?;
                line.push(b'\n');
                manifest
                    .write_all(&line)
                    .and_then(|_| manifest.sync_data())
                    .ctx("cannot write", &manifest_path)?;
                sync_dir(&paths.data_dir)?;
                (data, manifest, header_line.len() as u64)
            }
        };
        let store = ShardStore {
            data,
            data_path,
            manifest,
            manifest_path,
            data_end,
            written_end: data_end,
            pending_data: Vec::new(),
            pending_records: Vec::new(),
            pending_items: 0,
            repaired,
        };
        Ok(store)
    }

    /// Queues an item's rows and record for the next commit; fills in the record's byte range.
    /// Large rows are written to the data file right away (not synced: the commit does that,
    /// before any record points at them).
    pub fn push_ok(&mut self, mut rec: Record, rows: &[u8]) -> Result<()> {
        rec.offset = self.written_end + self.pending_data.len() as u64;
        rec.bytes = rows.len() as u64;
        rec.crc = Some(crc32fast::hash(rows));
        if rows.len() >= DIRECT_WRITE {
            self.write_pending_data()?;
            self.data
                .write_all_at(rows, self.written_end)
                .ctx("cannot write rows to", &self.data_path)?;
            self.written_end += rows.len() as u64;
        } else {
            self.pending_data.extend_from_slice(rows);
        }
        self.push_record(&rec);
        Ok(())
    }

    /// Writes the queued rows where they belong, without syncing.
    fn write_pending_data(&mut self) -> Result<()> {
        if !self.pending_data.is_empty() {
            self.data
                .write_all_at(&self.pending_data, self.written_end)
                .ctx("cannot write rows to", &self.data_path)?;
            self.written_end += self.pending_data.len() as u64;
            self.pending_data.clear();
        }
        Ok(())
    }

    /// Queues a failed item's record.
    pub fn push_failed(&mut self, rec: Record) {
        self.push_record(&rec);
    }

    fn push_record(&mut self, rec: &Record) {
        write_record(&mut self.pending_records, rec);
        self.pending_records.push(b'\n');
        self.pending_items += 1;
    }

    /// Bytes (rows and records) and items waiting for the next commit.
    pub fn pending(&self) -> (usize, usize) {
        (
            (self.written_end - self.data_end) as usize
                + self.pending_data.len()
                + self.pending_records.len(),
            self.pending_items,
        )
    }

    /// Makes the queued items durable: rows first, then their records.
    pub fn commit(&mut self) -> Result<()> {
        if self.pending_items == 0 {
            return Ok(());
        }
        self.write_pending_data()?;
        if self.written_end > self.data_end {
            self.data.sync_data().ctx("cannot sync", &self.data_path)?;
        }
        self.manifest
            .write_all(&self.pending_records)
            .ctx("cannot append to the manifest", &self.manifest_path)?;
        self.manifest
            .sync_data()
            .ctx("cannot sync", &self.manifest_path)?;
        self.data_end = self.written_end;
        self.pending_records.clear();
        self.pending_items = 0;
        Ok(())
    }
}

/// How many bytes of the last committed rows a resume checks against their checksums, and how
/// much of the manifest's end it reads to find their records: a resume stays cheap, and the
/// rows written just before a crash (the likeliest to be damaged) are checked.
const TAIL_DATA: u64 = 16 << 20;
const TAIL_MANIFEST: u64 = 1 << 20;

/// Checks the last committed items' rows against their checksums; the manifest offset of the
/// first record whose rows differ, and a message saying so.
fn bad_tail(manifest: &Path, data: &Path) -> Result<Option<(u64, String)>> {
    let Ok(m) = File::open(manifest) else {
        return Ok(None);
    };
    let len = m.metadata().ctx("cannot stat", manifest)?.len();
    let from = len.saturating_sub(TAIL_MANIFEST);
    let mut buf = vec![0; (len - from) as usize];
    m.read_exact_at(&mut buf, from)
        .ctx("cannot read", manifest)?;
    // The first line is the header, or part of a record: skip it.
    let Some(first) = memchr::memchr(b'\n', &buf) else {
        return Ok(None);
    };
    let mut tail = Vec::new();
    let mut at = first + 1;
    while let Some(nl) = memchr::memchr(b'\n', &buf[at..]) {
        let line = &buf[at..at + nl + 1];
        if let Some(Some((offset, bytes, crc, index))) = with_record(line, |r| {
            (r.status == Status::Ok)
                .then_some(r.crc.map(|c| (r.offset, r.bytes, c, r.index)))
                .flatten()
        }) {
            tail.push((from + at as u64, offset, bytes, crc, index));
        }
        at += nl + 1;
    }
    let mut budget = TAIL_DATA;
    let keep = tail
        .iter()
        .rev()
        .take_while(|r| {
            let fits = r.2 <= budget;
            budget = budget.saturating_sub(r.2);
            fits
        })
        .count();
    let Ok(d) = File::open(data) else {
        return Ok(None);
    };
    let data_len = d.metadata().ctx("cannot stat", data)?.len();
    let mut rows = Vec::new();
    for &(line_at, offset, bytes, crc, index) in &tail[tail.len() - keep..] {
        if offset.saturating_add(bytes) > data_len {
            break; // Cut by the resume anyway.
        }
        rows.resize(bytes as usize, 0);
        d.read_exact_at(&mut rows, offset)
            .ctx("cannot read", data)?;
        if crc32fast::hash(&rows) != crc {
            return Ok(Some((
                line_at,
                format!(
                    "the rows of item {index} in {} (bytes {offset}..{}) no longer match their \
                     checksum (a disk error or an edit); that item and those committed after it \
                     are generated again",
                    data.display(),
                    offset + bytes
                ),
            )));
        }
    }
    Ok(None)
}

/// Opens a shard file for reading and writing. The manifest is opened in append mode (records
/// only ever go at its end); the data file is written at explicit offsets.
fn open_rw(path: &Path, truncate: bool) -> Result<File> {
    let append = path.extension().is_some_and(|e| e == "jsonl");
    let file = crate::store::files::open(
        crate::store::files::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .append(append),
        path,
        "cannot open",
    )?;
    if truncate {
        file.set_len(0).ctx("cannot truncate", path)?;
    }
    Ok(file)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx("cannot sync the directory", dir)
}

/// Whether a shard with `header` could resume its existing outputs (what [`ShardStore::open`]
/// checks first), without changing anything: for preflight checks.
pub fn check_resumable(paths: &RunPaths, header: &Header) -> Result<()> {
    let path = paths.manifest(header.shard, header.num_shards);
    match read_header(&path) {
        Some(old) => check_same_shard(&old, header, &path),
        None => Ok(()),
    }
}

fn check_same_shard(old: &Header, new: &Header, path: &Path) -> Result<()> {
    let mut changed = Vec::new();
    for (k, v) in &new.fingerprint {
        match old.fingerprint.get(k) {
            Some(o) if o == v => {}
            Some(o) => changed.push(format!("{k} ({o} -> {v})")),
            None => changed.push(format!("{k} (new)")),
        }
    }
    if old.columns != new.columns {
        changed.push(format!(
            "columns ({} -> {})",
            old.columns.join(","),
            new.columns.join(",")
        ));
    }
    if !changed.is_empty() {
        return Err(Error::usage(format!(
            "shard {} of {} of run {:?} was written under a different configuration: changed {}. \
             Its outputs ({}) cannot be resumed; re-run with --force to discard them (cached items are reused)",
            new.shard,
            new.num_shards,
            new.run,
            changed.join(", "),
            path.display()
        )));
    }
    if old.name != new.name {
        return Err(Error::usage(format!(
            "shard {} of {} writes {}.csv (recorded in {}); pass --name {} or --force to start it over under the new name",
            new.shard,
            new.num_shards,
            old.name,
            path.display(),
            old.name
        )));
    }
    Ok(())
}

/// Two shards of a run may not share a data file; with `force`, a stale claim from another shard
/// plan is dropped (its data file is about to be overwritten anyway).
fn check_name_conflicts(paths: &RunPaths, header: &Header, force: bool) -> Result<()> {
    let manifests = paths
        .manifests()
        .ctx("cannot list the run directory", &paths.data_dir)?;
    for (i, n, path) in manifests {
        if (i, n) == (header.shard, header.num_shards) {
            continue;
        }
        let Some(other) = read_header(&path) else {
            continue;
        };
        if other.name != header.name {
            continue;
        }
        if force && n != header.num_shards {
            std::fs::remove_file(&path).ctx("cannot remove the stale manifest", &path)?;
            continue;
        }
        return Err(Error::usage(format!(
            "{} already belongs to shard {i} of {n} (manifest {}); {}",
            paths.data_file(&header.name).display(),
            path.display(),
            if n == header.num_shards {
                "give each shard its own --name".to_string()
            } else {
                format!(
                    "the run's existing outputs were made with {n} shards. Use --num-shards {n}, or --force to start over with {} shards (cached items are reused)",
                    header.num_shards
                )
            }
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(dir: &Path) -> (RunPaths, Header) {
        let paths = RunPaths::new(dir, "t");
        std::fs::create_dir_all(&paths.data_dir).unwrap();
        let h = Header {
            format: FORMAT.into(),
            shardrun: "0".into(),
            run: "t".into(),
            shard: 0,
            num_shards: 1,
            name: "process-0".into(),
            columns: vec!["a".into()],
            types: Vec::new(),
            items_total: 3,
            source_items: 3,
            sharding: crate::run::config::Sharding::Contiguous,
            fingerprint: [("seed".to_string(), "1".to_string())].into(),
            data_start: 2,
        };
        (paths, h)
    }

    /// Opens the store and lists the committed items' indices it resumed.
    fn open(paths: &RunPaths, h: &Header, force: bool) -> Result<(ShardStore, Vec<u64>)> {
        let mut ok = Vec::new();
        let s = ShardStore::open(paths, h, force, |r| {
            if r.status == Status::Ok {
                ok.push(r.index);
            }
        })?;
        Ok((s, ok))
    }

    fn rec(index: u64) -> Record {
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
    fn committed_items_survive_and_uncommitted_tails_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (paths, h) = header(dir.path());
        let (mut s, r) = open(&paths, &h, false).unwrap();
        assert!(r.is_empty());
        s.push_ok(rec(0), b"x\n").unwrap();
        s.commit().unwrap();
        s.push_ok(rec(1), b"y\n").unwrap();
        drop(s); // crash before the second commit
        let data = paths.data_file("process-0");
        // Simulate a torn data write and a torn manifest line after the crash.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&data)
            .unwrap();
        f.write_all(b"garbage").unwrap();
        let mut m = std::fs::OpenOptions::new()
            .append(true)
            .open(paths.manifest(0, 1))
            .unwrap();
        m.write_all(b"{\"index\":1,\"key\"").unwrap();
        let (mut s, r) = open(&paths, &h, false).unwrap();
        assert_eq!(r, [0]);
        assert_eq!(std::fs::read(&data).unwrap(), b"a\nx\n");
        s.push_ok(rec(1), b"y\n").unwrap();
        s.commit().unwrap();
        let (_, r) = open(&paths, &h, false).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(std::fs::read(&data).unwrap(), b"a\nx\ny\n");
    }

    #[test]
    fn a_large_item_is_written_at_once_but_committed_like_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let (paths, h) = header(dir.path());
        let data = paths.data_file("process-0");
        let big: Vec<u8> = (0..DIRECT_WRITE + 3)
            .map(|i| if i % 10 == 9 { b'\n' } else { b'b' })
            .collect();
        let (mut s, _) = open(&paths, &h, false).unwrap();
        s.push_ok(rec(0), b"x\n").unwrap();
        s.push_ok(rec(1), &big).unwrap();
        // Written already (so not held twice), but not committed: a crash now loses both.
        assert_eq!(
            std::fs::metadata(&data).unwrap().len(),
            2 + 2 + big.len() as u64
        );
        assert!(s.pending().0 >= big.len());
        drop(s);
        let (mut s, r) = open(&paths, &h, false).unwrap();
        assert!(r.is_empty());
        assert_eq!(std::fs::read(&data).unwrap(), b"a\n");
        s.push_ok(rec(0), b"x\n").unwrap();
        s.push_ok(rec(1), &big).unwrap();
        s.push_ok(rec(2), b"z\n").unwrap();
        s.commit().unwrap();
        assert_eq!(s.pending(), (0, 0));
        let mut records = Vec::new();
        let (_, r) = open(&paths, &h, false).unwrap();
        assert_eq!(r, [0, 1, 2]);
        scan(&paths.manifest(0, 1), |rec, _| {
            records.push((rec.offset, rec.bytes))
        })
        .unwrap();
        let n = big.len() as u64;
        assert_eq!(records, [(2, 2), (4, n), (4 + n, 2)]);
        let mut want = b"a\nx\n".to_vec();
        want.extend_from_slice(&big);
        want.extend_from_slice(b"z\n");
        assert!(std::fs::read(&data).unwrap() == want);
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

    #[test]
    fn a_changed_fingerprint_refuses_and_says_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let (paths, h) = header(dir.path());
        drop(open(&paths, &h, false).unwrap());
        let mut h2 = h.clone();
        h2.fingerprint.insert("seed".into(), "2".into());
        let e = open(&paths, &h2, false).unwrap_err().to_string();
        assert!(e.contains("seed (1 -> 2)") && e.contains("--force"), "{e}");
        open(&paths, &h2, true).unwrap();
    }

    #[test]
    fn resume_sees_every_record_in_file_order() {
        let dir = tempfile::tempdir().unwrap();
        let (paths, h) = header(dir.path());
        let (mut s, _) = open(&paths, &h, false).unwrap();
        let mut f = rec(0);
        f.status = Status::Failed;
        f.reason = Some("exit code 1".into());
        s.push_failed(f);
        s.push_failed({
            let mut g = rec(1);
            g.status = Status::Failed;
            g
        });
        s.push_ok(rec(0), b"x\n").unwrap();
        s.commit().unwrap();
        let mut seen = Vec::new();
        ShardStore::open(&paths, &h, false, |r| seen.push((r.index, r.status))).unwrap();
        assert_eq!(
            seen,
            [(0, Status::Failed), (1, Status::Failed), (0, Status::Ok)]
        );
    }
}
