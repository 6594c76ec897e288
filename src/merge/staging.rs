//! What both merge paths share around the copy itself: the temporary files merge writes before
//! renaming into place (and removes on failure), the existing output that `--append` grows, and
//! the scan of every shard with, for the block merge, each shard's part of
//! `manifest_final.csv`. Kept apart so that the two paths ([`super::blocks`] and
//! [`super::output`]) depend on it and not on each other.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

use super::final_rows::FinalRows;
use super::scan::{self, PartBudget, PartSpec, ScanSpec, ShardScan};
use super::ShardFiles;
use crate::error::{Error, IoContext, Result};

/// Where merge writes before renaming into place.
pub(super) struct Temps {
    pub(super) out: PathBuf,
    pub(super) manifest_final: PathBuf,
    pub(super) stats: PathBuf,
    /// Told when the dataset's background copy is complete (see [`CopyDone`]).
    pub(super) copied: std::sync::Arc<CopyDone>,
    /// `out` is only read back, never put in place (the format parquet alone, or partitions):
    /// it is not synced nor written back early, which would only cost disk bandwidth.
    pub(super) transient: bool,
}

/// What writing the dataset and `manifest_final.csv` gave.
pub(super) struct Written {
    /// Rows dropped by `--dedupe-key`.
    pub(super) deduped: u64,
    /// Length of the dataset.
    pub(super) bytes: u64,
    /// The first incomplete items, in item order.
    pub(super) incomplete: Vec<String>,
    /// The dataset is the background copy (the files made from it early are good).
    pub(super) background_copy_kept: bool,
}

/// Scans every shard, on up to one thread per core; with `parts`, each writes its rows of
/// `manifest_final.csv` (see [`part_spec`]) within the budget. `scanned` sees each result as
/// soon as it is known.
pub(super) fn scan_all(
    dir: &Path,
    shards: &[ShardFiles],
    parts: Option<(&Path, &PartBudget)>,
    scanned: &(dyn Fn(&Result<ShardScan>) + Sync),
) -> Result<Vec<ShardScan>> {
    super::threads::each_on_threads("merge-scan", shards, |s| {
        let result = scan::scan(ScanSpec {
            files: s,
            part: parts
                .map(|(final_path, budget)| part_spec(dir, s.header.shard, final_path, budget)),
        });
        scanned(&result);
        result
    })
    .into_iter()
    .collect()
}

/// Removes the temporary outputs unless the merge got far enough to keep them: a failed merge
/// leaves no debris.
pub(super) struct TempFiles(pub(super) Vec<PathBuf>);

impl TempFiles {
    pub(super) fn keep(&mut self) {
        self.0.clear();
    }
}

impl Drop for TempFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The existing output that `--append` grows.
pub(super) struct OldOutput {
    pub(super) file: File,
    pub(super) path: PathBuf,
    pub(super) rows: u64,
    /// Where the rows start (after the header line).
    pub(super) body_start: u64,
    pub(super) len: u64,
}

/// Opens the existing output for `--append`; its header must match the shards'.
pub(super) fn open_old(output: &Path, columns: &[String]) -> Result<Option<OldOutput>> {
    let file = match File::open(output) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).ctx("cannot open", output),
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(&file);
    let mut first = csv::ByteRecord::new();
    reader
        .read_byte_record(&mut first)
        .map_err(|e| Error::Refused(format!("{}: {e}", output.display())))?;
    let old_cols: Vec<&[u8]> = first.iter().collect();
    if let Some(at) = (0..old_cols.len().max(columns.len()))
        .find(|&i| old_cols.get(i).copied() != columns.get(i).map(|c| c.as_bytes()))
    {
        return Err(Error::Refused(format!(
            "{}: header differs from the shards' at column {} ({:?} vs {:?}); --append needs the same columns",
            output.display(),
            at + 1,
            old_cols.get(at).map(|c| String::from_utf8_lossy(c).into_owned()).unwrap_or_else(|| "<none>".into()),
            columns.get(at).map(String::as_str).unwrap_or("<none>")
        )));
    }
    let body_start = reader.position().byte();
    let mut rows = 0;
    let mut rec = csv::ByteRecord::new();
    while reader
        .read_byte_record(&mut rec)
        .map_err(|e| Error::Refused(format!("{}: {e}", output.display())))?
    {
        rows += 1;
    }
    let len = reader.position().byte();
    Ok(Some(OldOutput {
        file: File::open(output).ctx("cannot open", output)?,
        path: output.to_path_buf(),
        rows,
        body_start,
        len,
    }))
}

/// Where shard `shard`'s rows of `manifest_final.csv` go: shard 0's rows start the final file
/// itself (after the header row), so only the other shards' rows are copied into it, from
/// memory or (past the budget) from a temporary file.
pub(super) fn part_spec<'a>(
    dir: &Path,
    shard: u32,
    final_path: &Path,
    budget: &'a PartBudget,
) -> PartSpec<'a> {
    if shard == 0 {
        let mut header = FinalRows::new();
        header.header();
        PartSpec {
            path: final_path.to_path_buf(),
            budget,
            prefix: header.as_bytes().to_vec(),
            is_final: true,
        }
    } else {
        PartSpec {
            path: dir.join(format!(".manifest_final.part{shard}.tmp")),
            budget,
            prefix: Vec::new(),
            is_final: false,
        }
    }
}

/// Tells whoever waits that the background copy of the dataset is complete and synced (`true`),
/// or will not be (`false`): the Parquet file or the partitions are then made from it while the
/// manifests are still being read. Only the first `set` counts.
#[derive(Default)]
pub(super) struct CopyDone {
    state: Mutex<Option<bool>>,
    changed: Condvar,
}

impl CopyDone {
    pub(super) fn set(&self, complete: bool) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.is_none() {
            *s = Some(complete);
            self.changed.notify_all();
        }
    }

    pub(super) fn wait(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while s.is_none() {
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        *s == Some(true)
    }
}
