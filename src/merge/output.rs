//! Writing the merged dataset, `manifest_final.csv` and `stats.json`: the scan of every shard,
//! the stats, the temporary files and their renames, and the general merge that interleaves the
//! shards' items by index (stride plans, `--dedupe-key`). Contiguous plans are merged block by
//! block ([`super::blocks`]).

use crate::run::config::OutputFormat;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use serde::Serialize;

use super::blocks::write_blocks;
use super::final_rows::FinalRows;
use super::range_rows::{FileCache, RangeRows};
use super::scan::ShardScan;
use super::shard_logs::ShardLogs;
use super::staging::{open_old, scan_all, OldOutput, TempFiles, Temps, Written};
use super::staging::{Dataset, EarlyDataset};
use super::{shard_of, sync_dir, Interleave, MergeArgs, PlanOnDisk, ShardFiles};
use crate::error::{Error, IoContext, Result};
use crate::format::csv_out::header_line;
use crate::merge::copy::RangeCopier;
use crate::run::config::Sharding;
use crate::run::runs::RunRef;
use crate::store::record::Record;

/// Minimum, maximum and mean of a count.
#[derive(Debug, Default, Serialize)]
pub struct Spread {
    pub min: u64,
    pub max: u64,
    pub mean: f64,
}

/// Per-shard figures.
#[derive(Debug, Serialize)]
pub struct ShardStats {
    pub shard: u32,
    pub items: u64,
    pub committed: u64,
    pub failed: u64,
    pub cached: u64,
    pub rows: u64,
}

/// What `stats.json` holds, and the summary printed on stdout.
#[derive(Debug, Serialize)]
pub struct Stats {
    pub run: String,
    /// The dataset: the CSV file, or the Parquet file with the format `parquet`.
    pub output: PathBuf,
    /// The Parquet file too, with the format `both`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parquet: Option<PathBuf>,
    /// With `--partition-by`: the column and each partition's directory, value and rows
    /// (`output` is then the directory of the partitions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitioned: Option<super::Partitioned>,
    pub shards: u32,
    pub shards_missing: Vec<u32>,
    pub items: u64,
    pub items_ok: u64,
    pub items_failed: u64,
    pub items_missing: u64,
    /// Share of committed items served from the cache.
    pub cached_share: f64,
    pub rows: u64,
    pub rows_per_item: Spread,
    pub rows_per_shard: Spread,
    pub bytes: u64,
    pub wall_time_s: Option<f64>,
    /// Rows dropped by `--dedupe-key`.
    pub rows_deduplicated: u64,
    /// Rows taken over from the existing output with `--append`.
    pub rows_appended_to: u64,
    /// The first failed or missing items (all are in manifest_final.csv).
    pub incomplete_items: Vec<String>,
    /// Committed items per generator revision that made them, most items first. More than one
    /// means the dataset mixes the outputs of different code.
    pub revisions: Vec<RevisionCount>,
    /// With `--verify`: items whose rows matched their checksum, and committed items without
    /// one (written by shardrun 0.1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items_verified: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items_unverified: Option<u64>,
    /// The command that regenerates the items of older revisions (for the summary's warning).
    #[serde(skip)]
    pub redo_stale_hint: String,
    /// The shard outputs were kept (asked for, a partial merge, or mixed revisions).
    #[serde(skip)]
    pub shards_kept: bool,
    pub per_shard: Vec<ShardStats>,
}

/// How many committed items one generator revision made.
#[derive(Debug, Serialize)]
pub struct RevisionCount {
    /// The short hash the manifests record (empty: written before revisions were recorded).
    pub revision: String,
    pub items: u64,
}

/// The revisions of a run's committed items, most items first (then by name).
pub fn revisions(scans: &[ShardScan]) -> Vec<RevisionCount> {
    let mut all: std::collections::BTreeMap<&str, u64> = Default::default();
    for s in scans {
        for (rev, n) in &s.revisions {
            *all.entry(rev).or_default() += n;
        }
    }
    let mut out: Vec<RevisionCount> = all
        .into_iter()
        .map(|(r, items)| RevisionCount {
            revision: r.to_string(),
            items,
        })
        .collect();
    out.sort_by(|a, b| b.items.cmp(&a.items).then(a.revision.cmp(&b.revision)));
    out
}

/// `N items by R, M items by S`, as messages show revisions.
pub fn describe_revisions(revisions: &[RevisionCount]) -> String {
    revisions
        .iter()
        .map(|r| {
            format!(
                "{} item{} by {}",
                crate::format::human::thousands(r.items),
                if r.items == 1 { "" } else { "s" },
                if r.revision.is_empty() {
                    "an unrecorded revision"
                } else {
                    &r.revision
                }
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One step of the merged order.
enum Step<'r> {
    /// The body of the existing output (`--append`).
    Old { file: &'r File, from: u64, to: u64 },
    /// A committed item.
    Item { slot: usize, rec: Record },
    /// An item that is not committed (failed or missing), by global index.
    Gap { index: u64 },
}

/// The dataset file, and the dataset `--append` keeps (`output` itself, or the rows of
/// `combined.parquet` as CSV).
pub struct Target<'a> {
    pub output: &'a Path,
    pub append_to: Option<&'a Path>,
}

/// Scans the shards, writes the outputs, renames `manifest_final.csv` and `stats.json` into
/// place, and returns the stats, the scans and the synced temporary dataset, which the caller
/// renames into place last. `check` refuses incomplete runs after the scan; until then nothing
/// but temporary files has been written, and they are removed on any error.
pub fn write(
    run: &RunRef,
    plan: &PlanOnDisk,
    shards: &[ShardFiles],
    args: &MergeArgs,
    target: Target<'_>,
    check: impl Fn(&[ShardScan]) -> Result<()> + Sync,
    also: impl Fn(&Dataset, &AtomicBool) -> Result<Option<super::Partitioned>> + Sync,
) -> Result<(Stats, Vec<ShardScan>, PathBuf)> {
    // Missing shards refuse the merge before any shard is read (no shard scan needed).
    check(&[])?;
    let Target { output, append_to } = target;
    let dir = &run.paths.data_dir;
    let columns = &shards[0].header.columns;
    let tmp = |name: &str| dir.join(format!(".{name}.tmp"));
    let temps = Temps {
        out: tmp(&output.file_name().unwrap_or_default().to_string_lossy()),
        manifest_final: tmp("manifest_final.csv"),
        stats: tmp("stats.json"),
        early: Default::default(),
        transient: args.format == Some(OutputFormat::Parquet) || args.partition_by.is_some(),
    };
    let dedupe_col = match &args.dedupe_key {
        None => None,
        Some(k) => Some(columns.iter().position(|c| c == k).ok_or_else(|| {
            Error::usage(format!(
                "--dedupe-key {k:?}: no such column (columns: {})",
                columns.join(", ")
            ))
        })?),
    };
    // The dataset `--append` keeps: `output`, or the rows of combined.parquet as CSV.
    let old = match append_to {
        Some(p) => open_old(p, columns)?,
        None => None,
    };
    let mut guard = TempFiles(vec![
        temps.out.clone(),
        temps.manifest_final.clone(),
        temps.stats.clone(),
    ]);
    let h = &shards[0].header;
    // When every shard holds one contiguous block of items, the dataset is the shards' rows
    // one after the other: each shard's rows of manifest_final.csv are written while its
    // manifest is read, and the data is copied meanwhile.
    let blocks = (h.sharding == Sharding::Contiguous || h.num_shards == 1) && dedupe_col.is_none();
    // Other files made from the finished dataset (the Parquet file or the partitions), before
    // anything is renamed. When the dataset is the shards' data one after the other (contiguous
    // blocks), they are made from those byte ranges while the manifests are still read; if the
    // guess is then wrong (a shard out of item order), they are made again from the final
    // dataset.
    let early = &temps.early;
    let logs = ShardLogs::read(run, plan);
    let (scans, written, early_extra) = std::thread::scope(|scope| -> Result<_> {
        let early_extra = scope.spawn(|| early.wait().map(|d| also(&d, &early.stop)));
        // Whatever happens below (a panic included), the thread above is let go.
        let _let_go = LetGo(early);
        let result = if blocks {
            // The data is copied before the manifests are validated only when no refusal is
            // expected, so that merging an unfinished run does not first write a copy of it.
            let early = args.allow_partial || logs.say_complete;
            write_blocks(dir, plan, shards, &old, &temps, &check, early)
        } else {
            scan_all(dir, shards, None, &|_| {}).and_then(|scans| {
                check(&scans)?;
                let written = write_interleaved(&scans, &old, dedupe_col, &temps)?;
                Ok((scans, written))
            })
        };
        early.withdraw();
        let early_extra = early_extra.join().ok().flatten();
        let (scans, written) = result?;
        Ok((scans, written, early_extra))
    })?;
    let Written {
        deduped,
        bytes,
        incomplete,
        early_dataset_kept,
    } = written;
    let verified = if args.verify {
        Some(super::verify::verify_all(&scans)?)
    } else {
        None
    };
    let partitioned = match early_extra {
        Some(made) if early_dataset_kept => made?,
        _ => also(&Dataset::File(temps.out.clone()), &AtomicBool::new(false))?,
    };

    let items_ok: u64 = scans.iter().map(|s| s.ok).sum();
    let rows: u64 = scans.iter().map(|s| s.rows).sum();
    let committed = || scans.iter().filter(|s| s.ok > 0);
    let failed: u64 = scans.iter().map(|s| s.failed.len() as u64).sum();
    let appended = old.as_ref().map_or(0, |o| o.rows);
    let stats = Stats {
        run: run.name.clone(),
        output: match args.format {
            _ if partitioned.is_some() => output.with_extension(""),
            Some(OutputFormat::Parquet) => output.with_extension("parquet"),
            _ => output.to_path_buf(),
        },
        parquet: (args.format == Some(OutputFormat::Both) && partitioned.is_none())
            .then(|| output.with_extension("parquet")),
        shards: plan.num_shards,
        shards_missing: plan.missing.clone(),
        items: h.source_items,
        items_ok,
        items_failed: failed,
        items_missing: h.source_items.saturating_sub(items_ok + failed),
        cached_share: if items_ok == 0 {
            0.0
        } else {
            scans.iter().map(|s| s.cached).sum::<u64>() as f64 / items_ok as f64
        },
        rows: rows - deduped + appended,
        rows_per_item: Spread {
            min: committed().map(|s| s.rows_min).min().unwrap_or(0),
            max: committed().map(|s| s.rows_max).max().unwrap_or(0),
            mean: if items_ok == 0 {
                0.0
            } else {
                rows as f64 / items_ok as f64
            },
        },
        rows_per_shard: spread(scans.iter().map(|s| s.rows)),
        bytes,
        wall_time_s: logs.wall_time_s,
        partitioned,
        rows_deduplicated: deduped,
        rows_appended_to: appended,
        incomplete_items: incomplete,
        revisions: revisions(&scans),
        items_verified: verified.map(|v| v.items),
        items_unverified: verified.map(|v| v.unchecked),
        redo_stale_hint: String::new(),
        shards_kept: false,
        per_shard: scans
            .iter()
            .map(|s| ShardStats {
                shard: s.header.shard,
                items: s.header.items_total,
                committed: s.ok,
                failed: s.failed.len() as u64,
                cached: s.cached,
                rows: s.rows,
            })
            .collect(),
    };
    let json = serde_json::to_vec_pretty(&stats).unwrap_or_default();
    let mut f = crate::store::files::create(&temps.stats)?;
    f.write_all(&json)
        .and_then(|_| f.write_all(b"\n"))
        .and_then(|_| f.sync_all())
        .ctx("cannot write", &temps.stats)?;
    std::fs::rename(&temps.manifest_final, dir.join("manifest_final.csv"))
        .ctx("cannot rename", &temps.manifest_final)?;
    std::fs::rename(&temps.stats, dir.join("stats.json")).ctx("cannot rename", &temps.stats)?;
    sync_dir(dir)?;
    guard.keep();
    Ok((stats, scans, temps.out))
}

/// Tells the waiter for the early dataset that none will come, when dropped.
struct LetGo<'a>(&'a EarlyDataset);

impl Drop for LetGo<'_> {
    fn drop(&mut self) {
        self.0.withdraw();
    }
}

/// The general merge: items of all shards interleaved by index (stride plans, `--dedupe-key`).
fn write_interleaved(
    scans: &[ShardScan],
    old: &Option<OldOutput>,
    dedupe_col: Option<usize>,
    temps: &Temps,
) -> Result<Written> {
    let header = header_line(&scans[0].header.columns);
    let out = crate::store::files::create(&temps.out)?;
    let mut copier = RangeCopier::new(out, &temps.out)?;
    copier.write_bytes(&header)?;
    let old_slot = match old {
        Some(o) => Some(copier.add_source(&o.path)?),
        None => None,
    };
    let slots: Vec<usize> = scans
        .iter()
        .map(|s| copier.add_source(&s.data))
        .collect::<Result<_>>()?;
    // Only --dedupe-key parses rows (through these); like the copy, it opens data files on
    // demand, a few at a time.
    let mut files = FileCache::new(scans.iter().map(|s| s.data.clone()).collect());
    let mf_path = &temps.manifest_final;
    let mut mf = crate::store::files::create(mf_path)?;
    let mut rows = FinalRows::new();
    rows.header();
    let mut dedupe = match dedupe_col {
        None => None,
        Some(col) => Some(Dedupe {
            col,
            keep: last_rows_by_key(scans, old, &mut files, col)?,
            row_no: 0,
            dropped: 0,
            rows: RangeRows::new(),
            out: Vec::new(),
        }),
    };
    let h = &scans[0].header;
    walk(scans, old, |step| {
        match step {
            Step::Old { file, from, to } => match &mut dedupe {
                None => copier.push(old_slot.unwrap_or(0), from, to - from)?,
                Some(d) => d.emit(Rows::File(file), from, to, &mut copier)?,
            },
            Step::Item { slot, rec } => {
                match &mut dedupe {
                    None => copier.push(slots[slot], rec.offset, rec.bytes)?,
                    Some(d) => d.emit(
                        Rows::Slot(&mut files, slot),
                        rec.offset,
                        rec.offset + rec.bytes,
                        &mut copier,
                    )?,
                }
                rows.ok(&rec.as_ref(), scans[slot].header.shard);
            }
            Step::Gap { index } => {
                let shard = shard_of(h.sharding, h.source_items, h.num_shards, index);
                // Scans are in shard order.
                let failed = scans
                    .binary_search_by_key(&shard, |s| s.header.shard)
                    .ok()
                    .and_then(|at| scans[at].failed.get(&index));
                rows.gap(index, shard, failed);
            }
        }
        rows.flush_to(&mut mf, mf_path, false)?;
        Ok(())
    })?;
    let (out_file, bytes) = copier.finish()?;
    if !temps.transient {
        out_file.sync_all().ctx("cannot sync", &temps.out)?;
    }
    rows.flush_to(&mut mf, mf_path, true)?;
    mf.sync_all().ctx("cannot sync", mf_path)?;
    Ok(Written {
        deduped: dedupe.as_ref().map_or(0, |d| d.dropped),
        bytes,
        incomplete: std::mem::take(&mut rows.incomplete),
        early_dataset_kept: false,
    })
}

fn spread(values: impl Iterator<Item = u64>) -> Spread {
    let v: Vec<u64> = values.collect();
    if v.is_empty() {
        return Spread::default();
    }
    Spread {
        min: v.iter().copied().min().unwrap_or(0),
        max: v.iter().copied().max().unwrap_or(0),
        mean: v.iter().sum::<u64>() as f64 / v.len() as f64,
    }
}

/// Visits the merged order: the old output's body, then every item index of the plan in order
/// (committed items, and gaps for the others).
fn walk(
    scans: &[ShardScan],
    old: &Option<OldOutput>,
    mut visit: impl FnMut(Step<'_>) -> Result<()>,
) -> Result<()> {
    if let Some(o) = old {
        visit(Step::Old {
            file: &o.file,
            from: o.body_start,
            to: o.len,
        })?;
    }
    let mut items = Interleave::new(scans)?;
    let mut expected = 0u64;
    while let Some((slot, rec)) = items.next_item()? {
        while expected < rec.index {
            visit(Step::Gap { index: expected })?;
            expected += 1;
        }
        expected = rec.index + 1;
        visit(Step::Item { slot, rec })?;
    }
    let n = scans[0].header.source_items;
    while expected < n {
        visit(Step::Gap { index: expected })?;
        expected += 1;
    }
    Ok(())
}

/// Pass 1 of `--dedupe-key`: the last row number of every key value, in merged order.
fn last_rows_by_key(
    scans: &[ShardScan],
    old: &Option<OldOutput>,
    files: &mut FileCache,
    col: usize,
) -> Result<HashMap<Vec<u8>, u64>> {
    let mut last: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut row = 0u64;
    let mut rows = RangeRows::new();
    walk(scans, old, |step| {
        let see = |_: &[u8], fields: &[&[u8]]| {
            if let Some(k) = fields.get(col) {
                match last.get_mut(*k) {
                    Some(r) => *r = row,
                    None => {
                        last.insert(k.to_vec(), row);
                    }
                }
            }
            row += 1;
        };
        match step {
            Step::Old { file, from, to, .. } => rows.for_each(file, from, to, see),
            Step::Item { slot, rec } => {
                files.rows(&mut rows, slot, rec.offset, rec.offset + rec.bytes, see)
            }
            Step::Gap { .. } => Ok(()),
        }
    })?;
    Ok(last)
}

/// Pass 2 of `--dedupe-key`: copies the rows that are the last of their key. (Rows were written
/// by our own writer, so their raw bytes are already canonical.)
struct Dedupe {
    col: usize,
    keep: HashMap<Vec<u8>, u64>,
    row_no: u64,
    dropped: u64,
    rows: RangeRows,
    out: Vec<u8>,
}

/// Where the rows `Dedupe::emit` filters are.
enum Rows<'f> {
    File(&'f File),
    Slot(&'f mut FileCache, usize),
}

impl Dedupe {
    fn emit(&mut self, src: Rows<'_>, from: u64, to: u64, copier: &mut RangeCopier) -> Result<()> {
        let out = &mut self.out;
        out.clear();
        let (col, keep) = (self.col, &self.keep);
        let (row_no, dropped) = (&mut self.row_no, &mut self.dropped);
        let filter = |raw: &[u8], fields: &[&[u8]]| {
            let last = fields.get(col).and_then(|k| keep.get(*k)).copied();
            if last == Some(*row_no) {
                out.extend_from_slice(raw);
            } else {
                *dropped += 1;
            }
            *row_no += 1;
        };
        match src {
            Rows::File(file) => self.rows.for_each(file, from, to, filter)?,
            Rows::Slot(files, slot) => files.rows(&mut self.rows, slot, from, to, filter)?,
        }
        copier.write_bytes(out)
    }
}
