//! Rows of `manifest_final.csv`: one per item of the plan, in item order, committed or not.
//! Both ways of merging (a shard's part written while its manifest is scanned, and the general
//! interleave) format rows here, so they cannot drift apart.

use std::io::Write;
use std::path::Path;

use crate::error::{IoContext, Result};
use crate::format::csv_out::RowWriter;
use crate::store::record::{Record, RecordRef};

/// Column names of `manifest_final.csv`.
pub const COLUMNS: [&str; 10] = [
    "key",
    "index",
    "shard",
    "status",
    "rows",
    "duration_ms",
    "cached",
    "attempts",
    "reason",
    "revision",
];

/// How many incomplete items the summary and `stats.json` list (all are in the file).
pub const LISTED: usize = 100;

/// Buffered rows, and the first incomplete items seen.
#[derive(Default)]
pub struct FinalRows {
    rw: RowWriter,
    /// The first [`LISTED`] failed or missing items, as `index (status: key)`.
    pub incomplete: Vec<String>,
}

impl FinalRows {
    pub fn new() -> Self {
        Self::default()
    }

    /// The header row.
    pub fn header(&mut self) {
        self.rw.record(COLUMNS);
    }

    /// The row of a committed item.
    pub fn ok(&mut self, rec: &RecordRef<'_>, shard: u32) {
        // Numbers go straight into the buffer: this runs once per item.
        let rw = &mut self.rw;
        rw.field(rec.key.as_bytes());
        rw.field_u64(rec.index);
        rw.field_u64(u64::from(shard));
        rw.field(b"ok");
        rw.field_u64(rec.rows);
        rw.field_u64(rec.ms);
        rw.field(if rec.cached { b"true" } else { b"false" });
        rw.field_u64(u64::from(rec.attempts));
        rw.field(b"");
        rw.field(rec.rev.as_bytes());
        rw.end_record();
    }

    /// The row of an item that is not committed: `failed` (its latest failure) or missing.
    pub fn gap(&mut self, index: u64, shard: u32, failed: Option<&Record>) {
        let (key, status, attempts, reason, rev) = match failed {
            Some(f) => (
                f.key.as_str(),
                "failed",
                f.attempts,
                f.reason.as_deref().unwrap_or(""),
                f.rev.as_str(),
            ),
            None => ("", "missing", 0, "", ""),
        };
        if self.incomplete.len() < LISTED {
            self.incomplete.push(format!(
                "{index} ({status}{}{key})",
                if key.is_empty() { "" } else { ": " },
            ));
        }
        let rw = &mut self.rw;
        rw.field(key.as_bytes());
        rw.field_u64(index);
        rw.field_u64(u64::from(shard));
        rw.field(status.as_bytes());
        rw.field(b"0");
        rw.field(b"0");
        rw.field(b"false");
        rw.field_u64(u64::from(attempts));
        rw.field(reason.as_bytes());
        rw.field(rev.as_bytes());
        rw.end_record();
    }

    /// True once the buffered rows fill a block worth writing.
    pub fn is_full(&self) -> bool {
        self.rw.len() >= 1 << 16
    }

    /// The buffered rows.
    pub fn as_bytes(&self) -> &[u8] {
        self.rw.as_bytes()
    }

    /// Forgets the buffered rows (once written).
    pub fn clear(&mut self) {
        self.rw.clear();
    }

    /// Writes the buffered rows to `out` once they fill a block, or always with `force`;
    /// returns the bytes written.
    pub fn flush_to(&mut self, out: &mut impl Write, path: &Path, force: bool) -> Result<u64> {
        if !self.is_full() && !force {
            return Ok(0);
        }
        let bytes = self.rw.as_bytes();
        out.write_all(bytes).ctx("cannot write", path)?;
        let n = bytes.len() as u64;
        self.rw.clear();
        Ok(n)
    }
}
