//! Reading a run's shards for merging: validation of each shard, and its committed items as a
//! stream in item order.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::manifest::{self, Header, Record, Status};

/// One shard as merge sees it.
#[derive(Debug)]
pub struct ShardScan {
    pub header: Header,
    pub manifest: PathBuf,
    pub data: PathBuf,
    /// Committed items and their rows.
    pub ok: u64,
    pub rows: u64,
    pub cached: u64,
    pub rows_min: u64,
    pub rows_max: u64,
    /// Latest failure of items that never committed, by index.
    pub failed: BTreeMap<u64, Record>,
    /// Byte length of the manifest's valid prefix.
    valid_len: u64,
    /// Committed items' (index, manifest line offset) in item order, when the manifest does not
    /// list them in item order already (jobs > 1, retried items).
    order: Option<Vec<(u64, u64)>>,
}

/// Reads and checks one shard's manifest and data file.
pub fn scan(manifest: PathBuf, data_dir: &Path) -> Result<ShardScan> {
    let mut failed = BTreeMap::new();
    let (mut ok, mut rows, mut cached, mut rows_min, mut rows_max) = (0, 0, 0, u64::MAX, 0);
    let mut sorted = true;
    let mut last: Option<u64> = None;
    let found = manifest::read_with_offsets(&manifest, |rec, _| match rec.status {
        Status::Ok => {
            failed.remove(&rec.index);
            ok += 1;
            rows += rec.rows;
            cached += u64::from(rec.cached);
            rows_min = rows_min.min(rec.rows);
            rows_max = rows_max.max(rec.rows);
            if last.is_some_and(|l| l >= rec.index) {
                sorted = false;
            }
            last = Some(rec.index);
        }
        Status::Failed => {
            failed.insert(rec.index, rec);
        }
    })?;
    let Some((header, valid_len, data_end)) = found else {
        return Err(Error::Refused(format!(
            "{} has no valid header; the shard never started properly. Re-run it before merging",
            manifest.display()
        )));
    };
    let data = data_dir.join(format!("{}.csv", header.name));
    let data_len = std::fs::metadata(&data).map(|m| m.len()).map_err(|e| {
        Error::Refused(format!(
            "cannot read the shard data {}: {e}",
            data.display()
        ))
    })?;
    if data_len < data_end {
        return Err(Error::Refused(format!(
            "{} is shorter ({data_len} bytes) than its manifest says was committed ({data_end}); \
             the file was changed outside shardrun. Re-run that shard with --force",
            data.display()
        )));
    }
    let order = if sorted {
        None
    } else {
        // Only a manifest out of item order (jobs > 1, retried items) needs an index to sort:
        // a second pass collects it, so the common case costs no memory per item.
        let mut ok_lines: Vec<(u64, u64)> = Vec::new();
        manifest::read_with_offsets(&manifest, |rec, off| {
            if rec.status == Status::Ok {
                ok_lines.push((rec.index, off));
            }
        })?;
        ok_lines.sort_unstable_by_key(|(i, _)| *i);
        if let Some(w) = ok_lines.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(Error::Refused(format!(
                "{} commits item {} twice; re-run that shard with --force",
                manifest.display(),
                w[0].0
            )));
        }
        Some(ok_lines)
    };
    Ok(ShardScan {
        header,
        manifest,
        data,
        ok,
        rows,
        cached,
        rows_min: if ok == 0 { 0 } else { rows_min },
        rows_max,
        failed,
        valid_len,
        order,
    })
}

/// The committed items of one shard in item order.
pub struct ItemStream {
    reader: BufReader<File>,
    order: Option<std::vec::IntoIter<(u64, u64)>>,
    pos: u64,
    end: u64,
    line: Vec<u8>,
}

impl ShardScan {
    /// Opens a stream over the committed items.
    pub fn stream(&self) -> Result<ItemStream> {
        let file = File::open(&self.manifest).ctx("cannot open", &self.manifest)?;
        let mut reader = BufReader::with_capacity(1 << 16, file);
        let mut line = Vec::new();
        let header_len = reader
            .read_until(b'\n', &mut line)
            .ctx("cannot read", &self.manifest)? as u64;
        Ok(ItemStream {
            reader,
            order: self.order.clone().map(Vec::into_iter),
            pos: header_len,
            end: self.valid_len,
            line,
        })
    }
}

fn changed(e: impl std::fmt::Display) -> Error {
    Error::Refused(format!("a manifest changed during the merge: {e}"))
}

impl ItemStream {
    /// The next committed item's record.
    pub fn next_record(&mut self) -> Result<Option<Record>> {
        loop {
            if let Some(order) = &mut self.order {
                let Some((_, off)) = order.next() else {
                    return Ok(None);
                };
                self.reader.seek(SeekFrom::Start(off)).map_err(changed)?;
                self.pos = off;
            } else if self.pos >= self.end {
                return Ok(None);
            }
            self.line.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut self.line)
                .map_err(changed)?;
            self.pos += n as u64;
            let rec: Record = manifest::parse_record(&self.line)
                .ok_or_else(|| changed(String::from_utf8_lossy(&self.line)))?;
            if rec.status == Status::Ok {
                return Ok(Some(rec));
            }
        }
    }
}
