//! The merge of a plan whose shards each hold one contiguous block of the item order (the
//! default plan): the dataset is the shards' rows one after the other, and `manifest_final.csv`
//! the shards' rows of it one after the other. Each shard's manifest is read once, on up to one
//! thread per core, writing its part of `manifest_final.csv`, while the data is copied in the
//! background.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::final_rows::{self, FinalRows};
use super::scan::{PartBudget, PartRows, ShardScan};
use super::staging::{scan_all, Dataset, OldOutput, Segments, Temps, Written};
use super::{PlanOnDisk, ShardFiles};
use crate::error::{IoContext, Result};
use crate::format::csv_out::header_line;
use crate::merge::copy::RangeCopier;
use crate::run::plan::ShardPlan;

/// Bytes of `manifest_final.csv` parts kept in memory for all shards together (a row is about
/// 100 bytes: 10,000 shards of 16 items fit); the rest go through temporary files.
const PART_BUDGET: u64 = 16 << 20;

/// The merge of contiguous blocks. The data is copied in a background thread, guessing that
/// each shard's rows are its data file after the header, in item order, which they are unless
/// the shard committed items out of order (`jobs` > 1, retries) or a crash left a torn tail;
/// meanwhile the manifests are read (one thread per core), each writing its shard's rows of
/// `manifest_final.csv`. With `early` (no refusal expected) the copy starts before the
/// manifests are read, otherwise once they are validated. If the guess was wrong, the data is
/// copied item by item instead.
pub(super) fn write_blocks(
    dir: &Path,
    plan: &PlanOnDisk,
    shards: &[ShardFiles],
    old: &Option<OldOutput>,
    temps: &Temps,
    check: &(dyn Fn(&[ShardScan]) -> Result<()> + Sync),
    early: bool,
) -> Result<(Vec<ShardScan>, Written)> {
    let header = header_line(&shards[0].header.columns);
    // Removes the parts that went to temporary files when the merge ends, however it ends.
    let budget = PartBudget::new(PART_BUDGET);
    let mut segments = Vec::new();
    if let Some(o) = old {
        segments.push((o.path.clone(), o.body_start, o.len));
    }
    for s in shards {
        let len = std::fs::metadata(&s.data).map_or(0, |m| m.len());
        segments.push((s.data.clone(), s.header.data_start, len));
    }
    // The dataset is the header and these ranges if the guess holds. What is made from it (the
    // Parquet file, the partitions) is made from the ranges themselves, and the CSV copy is
    // made only when it is kept (not for the format parquet alone).
    let offer = || {
        temps.early.offer(Dataset::Ranges {
            header: header.clone(),
            ranges: segments.clone(),
        });
    };
    let start_copy = || -> Result<Option<BackgroundCopy>> {
        if temps.transient {
            return Ok(None);
        }
        let mut out = crate::store::files::create(&temps.out)?;
        out.write_all(&header).ctx("cannot write", &temps.out)?;
        BackgroundCopy::start(out, &temps.out, segments.clone()).map(Some)
    };
    let mut copy = None;
    if early {
        copy = start_copy()?;
        offer();
    }
    // A shard that refuses the merge stops the copy, and what is made from the ranges, at once:
    // a refused merge should not write much more than it must to find out.
    let refused = |r: &Result<ShardScan>| {
        if r.as_ref()
            .map_or(true, |s| check(std::slice::from_ref(s)).is_err())
        {
            if let Some(c) = &copy {
                c.stop();
            }
            temps.early.stop.store(true, Ordering::Relaxed);
        }
    };
    let scans = scan_all(
        dir,
        shards,
        Some((&temps.manifest_final, &budget)),
        &refused,
    )?;
    check(&scans)?;
    let guessed = scans
        .iter()
        .zip(&segments[segments.len() - scans.len()..])
        .all(|(s, (_, _, len))| s.in_item_order() && s.data_end == *len);
    // Started now if it was not early, so that it still overlaps the assembly of
    // manifest_final.csv; stopped (when dropped) if the guess was wrong.
    if !early && guessed {
        copy = start_copy()?;
        offer();
    }
    let incomplete = assemble_manifest_final(plan, &scans, &temps.manifest_final)?;
    let bytes = match copy {
        Some(c) if guessed => c.finish()?,
        None if guessed => {
            header.len() as u64 + segments.iter().map(|(_, from, to)| to - from).sum::<u64>()
        }
        other => {
            drop(other);
            copy_in_order(&temps.out, &header, old, &scans, !temps.transient)?
        }
    };
    let written = Written {
        deduped: 0,
        bytes,
        incomplete,
        early_dataset_kept: guessed,
    };
    Ok((scans, written))
}

/// `manifest_final.csv` out of the shards' parts, with the rows of missing shards.
fn assemble_manifest_final(
    plan: &PlanOnDisk,
    scans: &[ShardScan],
    path: &Path,
) -> Result<Vec<String>> {
    let mut rows = FinalRows::new();
    let h = &scans[0].header;
    // Shard 0's part is the start of the file (header row included) when it is present.
    let starts = scans[0].header.shard == 0;
    let out = if starts {
        crate::store::files::open(
            crate::store::files::options().write(true),
            path,
            "cannot open",
        )?
    } else {
        rows.header();
        crate::store::files::create(path)?
    };
    let mut copier = RangeCopier::new(out, path)?;
    let mut incomplete = Vec::new();
    let mut present = scans.iter().peekable();
    for shard in 0..plan.num_shards {
        if let Some(s) = present.next_if(|s| s.header.shard == shard) {
            if let Some(p) = &s.part {
                copier.write_bytes(rows.as_bytes())?;
                rows.clear();
                incomplete.extend(p.incomplete.iter().cloned());
                match &p.rows {
                    _ if starts && shard == 0 => {}
                    PartRows::Memory(bytes) => copier.write_bytes(bytes)?,
                    PartRows::File { path, len } => {
                        let slot = copier.add_source(path)?;
                        copier.push(slot, 0, *len)?;
                        // A part is used once: its window and file go before the next one's.
                        copier.release(slot)?;
                    }
                }
            }
            continue;
        }
        for index in ShardPlan::new(h.sharding, h.source_items, h.num_shards, shard).indices() {
            rows.gap(index, shard, None);
            if rows.is_full() {
                copier.write_bytes(rows.as_bytes())?;
                rows.clear();
            }
        }
        incomplete.append(&mut rows.incomplete);
    }
    copier.write_bytes(rows.as_bytes())?;
    let (file, _) = copier.finish()?;
    file.sync_all().ctx("cannot sync", path)?;
    incomplete.truncate(final_rows::LISTED);
    Ok(incomplete)
}

/// Copies the committed rows item by item in item order (shards in shard order), after the
/// header and the old body; syncs; returns the length.
fn copy_in_order(
    path: &Path,
    header: &[u8],
    old: &Option<OldOutput>,
    scans: &[ShardScan],
    durable: bool,
) -> Result<u64> {
    let out = crate::store::files::create(path)?;
    let mut copier = RangeCopier::new(out, path)?;
    copier.write_bytes(header)?;
    if let Some(o) = old {
        let slot = copier.add_source(&o.path)?;
        copier.push(slot, o.body_start, o.len - o.body_start)?;
    }
    for s in scans {
        let slot = copier.add_source(&s.data)?;
        let mut items = s.stream()?;
        while let Some(rec) = items.next_record()? {
            copier.push(slot, rec.offset, rec.bytes)?;
        }
        copier.release(slot)?;
    }
    let (file, bytes) = copier.finish()?;
    if durable {
        file.sync_all().ctx("cannot sync", path)?;
    }
    Ok(bytes)
}

/// Byte ranges copied to the dataset by a thread of its own, in chunks whose write-back starts
/// right away, then synced. Dropping it unfinished stops the copy at the next chunk.
struct BackgroundCopy {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<Result<u64>>>,
    out_path: PathBuf,
}

impl BackgroundCopy {
    const CHUNK: u64 = 32 << 20;

    fn start(out: File, out_path: &Path, segments: Segments) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let out_path = out_path.to_path_buf();
        let thread_path = out_path.clone();
        let handle = std::thread::Builder::new()
            .name("merge-copy".into())
            .spawn(move || Self::run(out, &thread_path, &segments, &flag))
            .ctx("cannot start a thread to copy into", &out_path)?;
        Ok(BackgroundCopy {
            stop,
            handle: Some(handle),
            out_path,
        })
    }

    fn run(out: File, out_path: &Path, segments: &Segments, stop: &AtomicBool) -> Result<u64> {
        let mut copier = RangeCopier::new(out, out_path)?;
        // Write-back is started every CHUNK bytes of output, not per segment: ten thousand
        // small shards are a few writes, not ten thousand.
        let mut written_back = copier.position();
        for (path, from, to) in segments {
            let slot = copier.add_source(path)?;
            let mut at = *from;
            while at < *to {
                if stop.load(Ordering::Relaxed) {
                    return Ok(0);
                }
                let len = (*to - at).min(Self::CHUNK);
                copier.push(slot, at, len)?;
                at += len;
                let end = copier.position();
                if end - written_back >= Self::CHUNK {
                    copier.flush()?;
                    copier.start_writeback(written_back, end - written_back);
                    written_back = end;
                }
            }
            // Each shard's data is read once: memory stays one window whatever the shard count.
            copier.release(slot)?;
        }
        let (file, bytes) = copier.finish()?;
        file.sync_all().ctx("cannot sync", out_path)?;
        Ok(bytes)
    }

    /// Asks the copy to stop at its next chunk.
    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Waits for the copy and its sync; returns the dataset's length.
    fn finish(mut self) -> Result<u64> {
        match self.handle.take().map(std::thread::JoinHandle::join) {
            Some(Ok(result)) => result,
            _ => Err(std::io::Error::other("the copy thread ended abnormally"))
                .ctx("cannot copy into", &self.out_path),
        }
    }
}

impl Drop for BackgroundCopy {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            self.stop.store(true, Ordering::Relaxed);
            let _ = h.join();
        }
    }
}
