//! Reading a run's shards for merging: validation of each shard, its committed items as a stream
//! in item order, and (for plans where every shard holds one contiguous block of items) the
//! shard's rows of `manifest_final.csv`, written while its manifest is read.

use crate::store::record;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::final_rows::FinalRows;
use super::ShardFiles;
use crate::error::{Error, IoContext, Result};
use crate::run::plan::ShardPlan;
use crate::store::record::{Header, Lines, Record, Status};

/// One shard as merge sees it.
#[derive(Debug)]
pub struct ShardScan {
    pub header: std::sync::Arc<Header>,
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
    /// Committed items per generator revision that made them.
    pub revisions: BTreeMap<String, u64>,
    /// Byte length of the manifest's valid prefix.
    valid_len: u64,
    /// End of the committed rows in the data file.
    pub data_end: u64,
    /// Committed items' (index, manifest line offset) in item order, when the manifest does not
    /// list them in item order already (jobs > 1, retried items).
    order: Option<Vec<(u64, u64)>>,
    /// The shard's rows of `manifest_final.csv`, when asked for.
    pub part: Option<Part>,
}

/// A shard's rows of `manifest_final.csv`, in item order.
#[derive(Debug)]
pub struct Part {
    pub rows: PartRows,
    /// The shard's first incomplete items (see [`FinalRows::incomplete`]).
    pub incomplete: Vec<String>,
}

/// Where a part's rows are: in memory while the merge's budget for parts lasts (the common
/// case: small shards, where a temporary file per shard cost more than the rest of the merge),
/// otherwise in a temporary file of `len` bytes (or the final file itself, for shard 0).
#[derive(Debug)]
pub enum PartRows {
    Memory(Vec<u8>),
    File { path: PathBuf, len: u64 },
}

/// Bytes of parts that all shards together may keep in memory; a part that would go past it is
/// written to its temporary file instead. Bounds merge's memory whatever the shard count.
/// Dropping it removes the temporary files of the parts that went to one.
#[derive(Debug)]
pub struct PartBudget {
    left: std::sync::atomic::AtomicU64,
    spilled: std::sync::Mutex<Vec<PathBuf>>,
}

impl PartBudget {
    pub fn new(bytes: u64) -> Self {
        PartBudget {
            left: std::sync::atomic::AtomicU64::new(bytes),
            spilled: Default::default(),
        }
    }

    /// Takes `n` bytes from the budget; false (and nothing taken) when fewer are left.
    fn take(&self, n: u64) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.left
            .fetch_update(Relaxed, Relaxed, |left| left.checked_sub(n))
            .is_ok()
    }

    fn give_back(&self, n: u64) {
        self.left.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Creates a part's temporary file, to be removed when the budget is dropped.
    fn spill(&self, path: &Path) -> Result<File> {
        let file = crate::store::files::create(path)?;
        self.spilled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(path.to_path_buf());
        Ok(file)
    }
}

impl Drop for PartBudget {
    fn drop(&mut self) {
        let spilled = self.spilled.get_mut().unwrap_or_else(|e| e.into_inner());
        for p in spilled.iter() {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl ShardScan {
    /// True when the committed rows lie in the data file in item order, back to back from the
    /// header on: the shard's part of the dataset is then one byte range.
    pub fn in_item_order(&self) -> bool {
        self.order.is_none()
    }
}

/// What a scan checks and produces, besides the shard's own manifest.
pub struct ScanSpec<'a> {
    /// The shard's files and manifest header, as read before the scan.
    pub files: &'a ShardFiles,
    /// Write the shard's rows of `manifest_final.csv` (contiguous plans only: the rows of all
    /// shards are then concatenated in shard order).
    pub part: Option<PartSpec<'a>>,
}

/// Where a shard's rows of `manifest_final.csv` go.
#[derive(Clone)]
pub struct PartSpec<'a> {
    /// The temporary file, used only when the part does not fit in `budget` (always, for the
    /// final file).
    pub path: PathBuf,
    pub budget: &'a PartBudget,
    /// Bytes that go before the rows (the header row, when the part starts the final file).
    pub prefix: Vec<u8>,
    /// The part is the final file itself: its write-back starts as it is written.
    pub is_final: bool,
}

/// Reads and checks one shard's manifest and data file, in one pass over the manifest. A
/// manifest out of item order takes a second pass to sort its items, and, when a part is asked
/// for and the manifest is out of order or has failures, one more to write the part.
pub fn scan(spec: ScanSpec<'_>) -> Result<ShardScan> {
    let ScanSpec { files, part } = spec;
    let header = files.header.clone();
    let manifest = files.manifest.clone();
    let plan = ShardPlan::new(
        header.sharding,
        header.source_items,
        header.num_shards,
        header.shard,
    );
    let shard = header.shard;
    let mut failed = BTreeMap::new();
    let mut revisions = RevisionCounts::default();
    let (mut ok, mut rows, mut cached, mut rows_min, mut rows_max) = (0, 0, 0, u64::MAX, 0);
    // Items with a committed record so far, by position in the shard: a second record of one
    // (a failure after it, or a new commit by --redo-stale) supersedes it, and the figures are
    // then worked out again from the latest records.
    let mut committed = vec![0u64; usize::try_from(plan.len().div_ceil(64)).unwrap_or(0)];
    let mut superseded = false;
    let mut sorted = true;
    let mut last: Option<u64> = None;
    let mut stray: Option<u64> = None;
    // The part is written in the same pass while the manifest is in item order without
    // failures (the common case); otherwise it is written again afterwards.
    let mut writer = match &part {
        Some(spec) => Some(PartWriter::create(spec, plan.global(0))?),
        None => None,
    };
    let mut write_err = None;
    let found = record::scan(&manifest, |rec, _| {
        match (rec.status, plan.position(rec.index)) {
            (_, None) => {
                stray.get_or_insert(rec.index);
            }
            (_, Some(pos)) if superseded || test_and_set(&mut committed, pos, rec.status) => {
                superseded = true;
            }
            (Status::Ok, _) => {
                revisions.add(rec.rev);
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
                if let Some(w) = &mut writer {
                    if sorted && w.clean {
                        if let Err(e) = w.ok(&rec, shard, &failed) {
                            write_err.get_or_insert(e);
                        }
                    }
                }
            }
            (Status::Failed, _) => {
                if let Some(w) = &mut writer {
                    w.clean = false;
                }
                failed.insert(rec.index, rec.to_record());
            }
        }
    })?;
    drop(committed);
    if let Some(e) = write_err {
        return Err(e);
    }
    let Some((_, valid_len, data_end)) = found else {
        return Err(no_header(&manifest));
    };
    if let Some(index) = stray {
        return Err(Error::Refused(format!(
            "{} records item {index}, which is not in shard {} of {}'s plan; the manifest was \
             changed outside shardrun. Re-run that shard with --force",
            manifest.display(),
            header.shard,
            header.num_shards
        )));
    }
    let data = files.data.clone();
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
    let order = if superseded {
        let latest = latest_records(&manifest)?;
        (ok, rows, cached, rows_min, rows_max) = (
            latest.ok,
            latest.rows,
            latest.cached,
            latest.rows_min,
            latest.rows_max,
        );
        failed = latest.failed;
        revisions = latest.revisions;
        sorted = false;
        Some(latest.order)
    } else if sorted {
        None
    } else {
        // Only a manifest out of item order (jobs > 1, retried items) needs an index to sort:
        // a second pass collects it, so the common case costs no memory per item.
        let mut ok_lines: Vec<(u64, u64)> = Vec::new();
        record::scan(&manifest, |rec, off| {
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
    let mut scan = ShardScan {
        header,
        manifest,
        data,
        ok,
        rows,
        cached,
        rows_min: if ok == 0 { 0 } else { rows_min },
        rows_max,
        failed,
        revisions: revisions.finish(),
        valid_len,
        data_end,
        order,
        part: None,
    };
    if let (Some(mut w), Some(spec)) = (writer, part) {
        if !(sorted && w.clean) {
            w.restart(&spec, plan.global(0))?;
            let mut items = scan.stream()?;
            while let Some(rec) = items.next_record()? {
                w.ok(&rec.as_ref(), shard, &scan.failed)?;
            }
        }
        let end = plan.global(0) + plan.len();
        scan.part = Some(w.finish(end, shard, &scan.failed)?);
    }
    Ok(scan)
}

/// Marks `pos` as committed (for an ok record); true when it was already committed, that is
/// when this record supersedes a commit.
fn test_and_set(bits: &mut [u64], pos: u64, status: Status) -> bool {
    let (word, bit) = ((pos / 64) as usize, 1u64 << (pos % 64));
    let Some(w) = bits.get_mut(word) else {
        return false;
    };
    let was = *w & bit != 0;
    if status == Status::Ok {
        *w |= bit;
    }
    was
}

/// Committed items per revision, counted in runs: consecutive records almost always name the
/// same revision, so most records cost one short comparison, not a map lookup.
#[derive(Default)]
struct RevisionCounts {
    done: BTreeMap<String, u64>,
    current: String,
    run: u64,
}

impl RevisionCounts {
    fn add(&mut self, rev: &str) {
        if self.run > 0 && self.current == rev {
            self.run += 1;
            return;
        }
        self.flush();
        self.current.clear();
        self.current.push_str(rev);
        self.run = 1;
    }

    fn flush(&mut self) {
        if self.run > 0 {
            match self.done.get_mut(&self.current) {
                Some(n) => *n += self.run,
                None => {
                    self.done.insert(self.current.clone(), self.run);
                }
            }
            self.run = 0;
        }
    }

    fn finish(mut self) -> BTreeMap<String, u64> {
        self.flush();
        self.done
    }
}

/// A shard's figures from the latest record of each item.
struct Latest {
    ok: u64,
    rows: u64,
    cached: u64,
    rows_min: u64,
    rows_max: u64,
    failed: BTreeMap<u64, Record>,
    revisions: RevisionCounts,
    /// The committed items' (index, manifest line offset), in item order.
    order: Vec<(u64, u64)>,
}

/// Works out a shard's figures again when some item has more than one record: the latest
/// record of each item counts. Two more passes over the manifest (one finds each item's last
/// record, one reads them), 16 bytes per record; only shards with superseded records pay it.
fn latest_records(manifest: &Path) -> Result<Latest> {
    let mut last: Vec<(u64, u64)> = Vec::new();
    record::scan(manifest, |rec, off| last.push((rec.index, off)))?;
    // Sorted by index, then by position in the file: the last of each index is its latest.
    last.sort_unstable();
    let mut keep = 0;
    for i in 0..last.len() {
        if i + 1 == last.len() || last[i + 1].0 != last[i].0 {
            last[keep] = last[i];
            keep += 1;
        }
    }
    last.truncate(keep);
    let mut out = Latest {
        ok: 0,
        rows: 0,
        cached: 0,
        rows_min: u64::MAX,
        rows_max: 0,
        failed: BTreeMap::new(),
        revisions: RevisionCounts::default(),
        order: Vec::new(),
    };
    record::scan(manifest, |rec, off| {
        if last.binary_search(&(rec.index, off)).is_err() {
            return;
        }
        match rec.status {
            Status::Ok => {
                out.ok += 1;
                out.rows += rec.rows;
                out.cached += u64::from(rec.cached);
                out.rows_min = out.rows_min.min(rec.rows);
                out.rows_max = out.rows_max.max(rec.rows);
                out.revisions.add(rec.rev);
                out.order.push((rec.index, off));
            }
            Status::Failed => {
                out.failed.insert(rec.index, rec.to_record());
            }
        }
    })?;
    out.order.sort_unstable();
    Ok(out)
}

/// The refusal for a manifest without a valid header line.
pub fn no_header(manifest: &Path) -> Error {
    Error::Refused(format!(
        "{} has no valid header; the shard never started properly. Re-run it before merging",
        manifest.display()
    ))
}

/// Writes a shard's part of `manifest_final.csv`: every index of its block in order, committed
/// items and gaps.
struct PartWriter<'a> {
    sink: PartSink<'a>,
    rows: FinalRows,
    /// The next index a row is due for.
    next: u64,
    len: u64,
    /// Still valid for a single pass: every record so far came in item order, none failed.
    clean: bool,
    /// Start write-back every [`WRITEBACK`] bytes (the final file).
    writeback: bool,
    written_back: u64,
}

/// Where a part's rows are being written.
enum PartSink<'a> {
    /// In memory, `buf.len()` bytes of `budget` taken.
    Memory {
        buf: Vec<u8>,
        budget: &'a PartBudget,
        path: PathBuf,
    },
    File {
        file: File,
        path: PathBuf,
    },
}

impl PartSink<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        if let PartSink::Memory { buf, budget, path } = self {
            if budget.take(bytes.len() as u64) {
                buf.extend_from_slice(bytes);
                return Ok(());
            }
            // Past the budget: this part goes to its file, and gives its memory back.
            let mut file = budget.spill(path)?;
            file.write_all(buf).ctx("cannot write", path)?;
            budget.give_back(buf.len() as u64);
            *buf = Vec::new();
            *self = PartSink::File {
                file,
                path: std::mem::take(path),
            };
        }
        match self {
            PartSink::File { file, path } => file.write_all(bytes).ctx("cannot write", path),
            PartSink::Memory { .. } => unreachable!("a memory sink was turned into a file above"),
        }
    }

    /// Empties the sink for a new pass (the budget taken is given back).
    fn restart(&mut self, prefix: &[u8]) -> Result<()> {
        match self {
            PartSink::Memory { buf, budget, .. } => {
                budget.give_back(buf.len() as u64);
                buf.clear();
            }
            PartSink::File { file, path } => {
                use std::io::Seek;
                file.set_len(0)
                    .and_then(|()| file.rewind())
                    .ctx("cannot write", path)?;
            }
        }
        self.write(prefix)
    }
}

/// How much of the final file is written before its write-back is started.
const WRITEBACK: u64 = 16 << 20;

impl<'a> PartWriter<'a> {
    fn create(spec: &PartSpec<'a>, first: u64) -> Result<Self> {
        let path = spec.path.clone();
        let mut sink = if spec.is_final {
            PartSink::File {
                file: crate::store::files::create(&path)?,
                path,
            }
        } else {
            PartSink::Memory {
                buf: Vec::new(),
                budget: spec.budget,
                path,
            }
        };
        sink.write(&spec.prefix)?;
        Ok(PartWriter {
            sink,
            rows: FinalRows::new(),
            next: first,
            len: spec.prefix.len() as u64,
            clean: true,
            writeback: spec.is_final,
            written_back: 0,
        })
    }

    /// Starts the part again (a second pass), keeping its file or memory.
    fn restart(&mut self, spec: &PartSpec<'a>, first: u64) -> Result<()> {
        self.sink.restart(&spec.prefix)?;
        self.rows = FinalRows::new();
        self.next = first;
        self.len = spec.prefix.len() as u64;
        self.written_back = 0;
        Ok(())
    }

    /// The row of a committed item, after those of the gaps before it.
    fn ok(
        &mut self,
        rec: &record::RecordRef<'_>,
        shard: u32,
        failed: &BTreeMap<u64, Record>,
    ) -> Result<()> {
        self.gaps_until(rec.index, shard, failed)?;
        self.rows.ok(rec, shard);
        self.next = rec.index + 1;
        self.write(false)
    }

    /// The rows of the items before `end` that are not committed (a long run of them when a
    /// shard stopped early: written as the buffer fills).
    fn gaps_until(&mut self, end: u64, shard: u32, failed: &BTreeMap<u64, Record>) -> Result<()> {
        while self.next < end {
            self.rows.gap(self.next, shard, failed.get(&self.next));
            self.next += 1;
            self.write(false)?;
        }
        Ok(())
    }

    /// Writes the buffered rows once they fill a block (always with `force`).
    fn write(&mut self, force: bool) -> Result<()> {
        if !force && !self.rows.is_full() {
            return Ok(());
        }
        let bytes = self.rows.as_bytes();
        self.sink.write(bytes)?;
        self.len += bytes.len() as u64;
        self.rows.clear();
        if let PartSink::File { file, .. } = &self.sink {
            if self.writeback && self.len - self.written_back >= WRITEBACK {
                crate::merge::copy::start_writeback(file, self.written_back, self.len);
                self.written_back = self.len;
            }
        }
        Ok(())
    }

    fn finish(mut self, end: u64, shard: u32, failed: &BTreeMap<u64, Record>) -> Result<Part> {
        self.gaps_until(end, shard, failed)?;
        self.write(true)?;
        let incomplete = std::mem::take(&mut self.rows.incomplete);
        let rows = match self.sink {
            PartSink::Memory { mut buf, .. } => {
                buf.shrink_to_fit();
                PartRows::Memory(buf)
            }
            PartSink::File { path, .. } => PartRows::File {
                path,
                len: self.len,
            },
        };
        Ok(Part { rows, incomplete })
    }
}

/// The committed items of one shard in item order.
pub struct ItemStream {
    lines: Lines,
    order: Option<std::vec::IntoIter<(u64, u64)>>,
    end: u64,
    /// One line read at an offset (out-of-order manifests).
    line: Vec<u8>,
}

impl ShardScan {
    /// Opens a stream over the committed items.
    pub fn stream(&self) -> Result<ItemStream> {
        let file = File::open(&self.manifest).ctx("cannot open", &self.manifest)?;
        // A small buffer: the general merge keeps one stream open per shard.
        let mut lines = Lines::with_capacity(file, 64 * 1024);
        lines.next_line().ctx("cannot read", &self.manifest)?; // the header
        Ok(ItemStream {
            lines,
            order: self.order.clone().map(Vec::into_iter),
            end: self.valid_len,
            line: Vec::new(),
        })
    }
}

/// A shard's committed items in item order, read a batch at a time with the manifest open only
/// while a batch is read: the interleaved merge of thousands of shards then needs no descriptor
/// per shard (a small `ulimit -n` is enough) and `budget` bytes of buffer each.
pub struct ParkedStream {
    path: PathBuf,
    /// Next byte to read (manifests in item order) and the end of the valid prefix.
    at: u64,
    end: u64,
    /// Where each committed item's line is, in item order (other manifests).
    order: Option<std::vec::IntoIter<(u64, u64)>>,
    batch: std::collections::VecDeque<Record>,
    budget: usize,
}

impl ShardScan {
    /// A stream over the committed items that reads `budget` bytes of manifest at a time.
    pub fn parked(&self, budget: usize) -> Result<ParkedStream> {
        let header_len = {
            let file = File::open(&self.manifest).ctx("cannot open", &self.manifest)?;
            let mut line = Vec::new();
            read_line_at(&file, 0, &mut line).ctx("cannot read", &self.manifest)?;
            line.len() as u64
        };
        Ok(ParkedStream {
            path: self.manifest.clone(),
            at: header_len,
            end: self.valid_len,
            order: self.order.clone().map(Vec::into_iter),
            batch: std::collections::VecDeque::new(),
            budget: budget.max(512),
        })
    }
}

impl ParkedStream {
    /// The next committed item's record.
    pub fn next_record(&mut self) -> Result<Option<Record>> {
        if self.batch.is_empty() {
            self.refill()?;
        }
        Ok(self.batch.pop_front())
    }

    fn refill(&mut self) -> Result<()> {
        let done = match &self.order {
            Some(o) => o.len() == 0,
            None => self.at >= self.end,
        };
        if done {
            return Ok(());
        }
        let file = File::open(&self.path).ctx("cannot open", &self.path)?;
        let mut line = Vec::new();
        if let Some(order) = &mut self.order {
            // Out of item order: each line is read where the sort put it, a few per opening.
            for (_, off) in order.take((self.budget / 128).max(1)) {
                read_line_at(&file, off, &mut line).map_err(changed)?;
                match record::parse_record(&line) {
                    Some(rec) if rec.status == Status::Ok => self.batch.push_back(rec),
                    _ => return Err(changed(format!("no committed record at byte {off}"))),
                }
            }
            return Ok(());
        }
        // In item order: whole lines from `at`, as many as fit in the budget (at least one).
        let mut buf = vec![0u8; self.budget.min((self.end - self.at) as usize)];
        loop {
            let n = read_full_at(&file, &mut buf, self.at).map_err(changed)?;
            buf.truncate(n);
            let complete = match memchr::memrchr(b'\n', &buf) {
                Some(nl) => nl + 1,
                None if self.at + n as u64 >= self.end => n,
                None if n == 0 => return Err(changed("the manifest ended early")),
                // One line longer than the budget: read it whole.
                None => {
                    buf.resize((n * 2).min((self.end - self.at) as usize), 0);
                    continue;
                }
            };
            for l in buf[..complete].split_inclusive(|&b| b == b'\n') {
                let rec =
                    record::parse_record(l).ok_or_else(|| changed(String::from_utf8_lossy(l)))?;
                if rec.status == Status::Ok {
                    self.batch.push_back(rec);
                }
            }
            self.at += complete as u64;
            return Ok(());
        }
    }
}

/// Reads into `buf` from `offset` until it is full or the file ends; returns the bytes read.
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Items handed over by a read-ahead thread at a time.
const BATCH: usize = 4096;

/// A shard's committed items in item order, parsed on a thread of its own a few batches ahead
/// of their consumer, so that parsing overlaps the interleave and the copy. The thread stops
/// when this is dropped.
pub struct ReadAhead {
    rx: Option<std::sync::mpsc::Receiver<Result<Vec<Record>>>>,
    batch: std::vec::IntoIter<Record>,
    done: bool,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ReadAhead {
    /// Starts reading `stream` ahead; `None` when no thread can be made (the stream is then
    /// dropped: open another).
    pub fn start(mut stream: ItemStream) -> Option<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        let thread = std::thread::Builder::new()
            .name("merge-read".into())
            .spawn(move || loop {
                let mut batch = Vec::with_capacity(BATCH);
                let read = (|| {
                    while batch.len() < BATCH {
                        match stream.next_record()? {
                            Some(r) => batch.push(r),
                            None => break,
                        }
                    }
                    Ok(())
                })();
                let last = batch.len() < BATCH || read.is_err();
                if tx.send(read.map(|()| batch)).is_err() || last {
                    return;
                }
            })
            .ok()?;
        Some(ReadAhead {
            rx: Some(rx),
            batch: Vec::new().into_iter(),
            done: false,
            thread: Some(thread),
        })
    }

    /// The next committed item's record.
    pub fn next_record(&mut self) -> Result<Option<Record>> {
        loop {
            if let Some(r) = self.batch.next() {
                return Ok(Some(r));
            }
            if self.done {
                return Ok(None);
            }
            let batch = match self.rx.as_ref().map(std::sync::mpsc::Receiver::recv) {
                Some(Ok(batch)) => batch?,
                _ => return Err(changed("the thread reading a manifest ended early")),
            };
            self.done = batch.len() < BATCH;
            self.batch = batch.into_iter();
        }
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.rx = None; // A blocked sender sees the channel closed and stops.
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads the line starting at `offset` (with its newline, if any) into `line`.
fn read_line_at(file: &File, offset: u64, line: &mut Vec<u8>) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    line.clear();
    let mut chunk = [0u8; 512];
    loop {
        let n = file.read_at(&mut chunk, offset + line.len() as u64)?;
        if n == 0 {
            return Ok(());
        }
        if let Some(nl) = memchr::memchr(b'\n', &chunk[..n]) {
            line.extend_from_slice(&chunk[..=nl]);
            return Ok(());
        }
        line.extend_from_slice(&chunk[..n]);
    }
}

fn changed(e: impl std::fmt::Display) -> Error {
    Error::Refused(format!("a manifest changed during the merge: {e}"))
}

impl ItemStream {
    /// The next committed item's record.
    pub fn next_record(&mut self) -> Result<Option<Record>> {
        if let Some(order) = &mut self.order {
            // Out of item order: each line is read where the sort put it.
            let Some((_, off)) = order.next() else {
                return Ok(None);
            };
            read_line_at(self.lines.file(), off, &mut self.line).map_err(changed)?;
            return match record::parse_record(&self.line) {
                Some(rec) if rec.status == Status::Ok => Ok(Some(rec)),
                _ => Err(changed(format!("no committed record at byte {off}"))),
            };
        }
        loop {
            let Some((line, at)) = self.lines.next_line().map_err(changed)? else {
                return Ok(None);
            };
            if at >= self.end {
                return Ok(None);
            }
            let rec =
                record::parse_record(line).ok_or_else(|| changed(String::from_utf8_lossy(line)))?;
            if rec.status == Status::Ok {
                return Ok(Some(rec));
            }
        }
    }
}
