//! What both merge paths share around the copy itself: the temporary files merge writes before
//! renaming into place (and removes on failure), the existing output that `--append` grows, and
//! the scan of every shard with, for the block merge, each shard's part of
//! `manifest_final.csv`. Kept apart so that the two paths ([`super::blocks`] and
//! [`super::output`]) depend on it and not on each other.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Where the dataset is offered to what is made from it early (see [`EarlyDataset`]).
    pub(super) early: EarlyDataset,
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
    /// The dataset is the one offered early (the files made from it are good).
    pub(super) early_dataset_kept: bool,
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

/// The merged dataset as CSV bytes, for what is made from it (the Parquet file, the partitions):
/// a file, or the byte ranges of other files it is made of, after its header line. The ranges
/// are what the block merge copies, so both read the same bytes; reading them directly lets the
/// Parquet file be made without waiting for (or, for the format parquet alone, making) the
/// CSV copy.
#[derive(Clone)]
pub(super) enum Dataset {
    File(PathBuf),
    Ranges { header: Vec<u8>, ranges: Segments },
}

/// (source file, from, to) of each byte range, in dataset order.
pub(super) type Segments = Vec<(PathBuf, u64, u64)>;

impl Dataset {
    /// A reader of the dataset's bytes that gives up with an error once `stop` is set.
    pub(super) fn reader<'a>(&self, stop: &'a AtomicBool) -> Result<DatasetReader<'a>> {
        let (header, ranges, current) = match self {
            Dataset::File(path) => (
                Vec::new(),
                Vec::new(),
                Some(Open {
                    file: File::open(path).ctx("cannot open", path)?.take(u64::MAX),
                    path: path.clone(),
                    exact: false,
                }),
            ),
            Dataset::Ranges { header, ranges } => (header.clone(), ranges.clone(), None),
        };
        Ok(DatasetReader {
            header: std::io::Cursor::new(header),
            ranges: ranges.into_iter(),
            current,
            stop,
        })
    }

    /// What messages call it.
    pub(super) fn describe(&self) -> String {
        match self {
            Dataset::File(path) => path.display().to_string(),
            Dataset::Ranges { ranges, .. } => {
                let files: Vec<_> = ranges
                    .iter()
                    .map(|(p, ..)| p.display().to_string())
                    .collect();
                match files.as_slice() {
                    [one] => format!("the merged rows of {one}"),
                    [first, .., last] => format!("the merged rows of {first} to {last}"),
                    [] => "the merged rows".into(),
                }
            }
        }
    }
}

/// Reads a [`Dataset`]: the header, then each range in turn (one file open at a time, whatever
/// the shard count).
pub(super) struct DatasetReader<'a> {
    header: std::io::Cursor<Vec<u8>>,
    ranges: std::vec::IntoIter<(PathBuf, u64, u64)>,
    current: Option<Open>,
    stop: &'a AtomicBool,
}

/// The file being read, up to the end of its range (`exact`: the range must be there whole).
struct Open {
    file: std::io::Take<File>,
    path: PathBuf,
    exact: bool,
}

impl Read for DatasetReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("the merge stopped"));
        }
        let n = self.header.read(buf)?;
        if n > 0 {
            return Ok(n);
        }
        let with_path = |path: &Path, e: std::io::Error| {
            std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
        };
        loop {
            if let Some(open) = &mut self.current {
                let n = open.file.read(buf).map_err(|e| with_path(&open.path, e))?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                // A range is read whole, or the file changed under the merge.
                if open.exact && open.file.limit() > 0 {
                    let e = std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the file is shorter than when the merge started",
                    );
                    return Err(with_path(&open.path, e));
                }
                self.current = None;
            }
            let Some((path, from, to)) = self.ranges.next() else {
                return Ok(0);
            };
            let mut file = File::open(&path).map_err(|e| with_path(&path, e))?;
            file.seek(SeekFrom::Start(from))
                .map_err(|e| with_path(&path, e))?;
            self.current = Some(Open {
                file: file.take(to.saturating_sub(from)),
                path,
                exact: true,
            });
        }
    }
}

/// Hands the dataset to whoever makes files from it while the manifests are still read (the
/// Parquet file or the partitions): offered as soon as its bytes are known to be final, or
/// withdrawn when they will not be. Only the first word counts. `stop` tells a reader of an
/// offered dataset to give up (a shard refused the merge).
#[derive(Default)]
pub(super) struct EarlyDataset {
    state: Mutex<Option<Option<Dataset>>>,
    changed: Condvar,
    pub(super) stop: AtomicBool,
}

impl EarlyDataset {
    fn settle(&self, dataset: Option<Dataset>) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.is_none() {
            *s = Some(dataset);
            self.changed.notify_all();
        }
    }

    pub(super) fn offer(&self, dataset: Dataset) {
        self.settle(Some(dataset));
    }

    pub(super) fn withdraw(&self) {
        self.settle(None);
    }

    /// Waits for the word: the dataset offered, or `None`.
    pub(super) fn wait(&self) -> Option<Dataset> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match &*s {
                Some(d) => return d.clone(),
                None => s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Dataset, Read};
    use std::sync::atomic::{AtomicBool, Ordering};

    fn read_all(d: &Dataset, stop: &AtomicBool) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        d.reader(stop).expect("opens").read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn ranges_are_read_after_the_header_in_order_and_must_be_whole() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.csv");
        let b = dir.path().join("b.csv");
        std::fs::write(&a, "x\n1\n2\n").unwrap();
        std::fs::write(&b, "x\n3\n4\n5\n").unwrap();
        let never = AtomicBool::new(false);
        let d = Dataset::Ranges {
            header: b"x\n".to_vec(),
            ranges: vec![(b.clone(), 2, 6), (a.clone(), 2, 6), (b.clone(), 6, 8)],
        };
        assert_eq!(read_all(&d, &never).unwrap(), b"x\n3\n4\n1\n2\n5\n");
        assert!(d.describe().contains("b.csv"));

        // A file shorter than its range (changed under the merge) is an error naming it.
        let short = Dataset::Ranges {
            header: Vec::new(),
            ranges: vec![(a.clone(), 2, 60)],
        };
        let e = read_all(&short, &never).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
        assert!(e.to_string().contains("a.csv"), "{e}");

        // A plain file is read whole.
        assert_eq!(
            read_all(&Dataset::File(b.clone()), &never).unwrap(),
            b"x\n3\n4\n5\n"
        );

        // Told to stop, the reader gives up at its next read.
        let stop = AtomicBool::new(false);
        let mut r = d.reader(&stop).unwrap();
        let mut first = [0u8; 2];
        r.read_exact(&mut first).unwrap();
        stop.store(true, Ordering::Relaxed);
        assert!(r.read(&mut first).is_err());
    }
}
