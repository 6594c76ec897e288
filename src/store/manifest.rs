//! A shard's durable state: its data file and its manifest, committed together.
//!
//! The manifest (`manifest_shard<I>_of_<N>.jsonl`) is a JSON-lines log: a header record, then one
//! record per finished item (`ok` with the byte range of its rows in the data file, or `failed`
//! with the reason). A group commit first writes and syncs the items' rows to the data file, then
//! appends and syncs their records. So an item's rows are visible (to resume and merge) only once
//! its record is durable, and after a crash at any instant the next open keeps exactly the
//! records that are whole and point inside the data file, truncates the manifest after them and
//! the data file after the last committed byte. Nothing torn, nothing duplicated.

//!
//! The record codec is [`super::record`].

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::record::{
    read_header, scan, with_record, write_record, Header, Record, RecordRef, Status,
};
use crate::error::{Error, IoContext, Result};
use crate::run::paths::RunPaths;

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
///
/// Who uses a name is recorded in `.locks/<name>.csv.claim` (`<shard> <num_shards>`), written
/// under the name's lock before the manifest is made, so a starting shard reads one small file
/// instead of every other shard's manifest header (at 10,000 shards, a run's starts would
/// otherwise open 10,000² files). `.locks/claims` says that every manifest of the run has its
/// claim; a run without it (made by an older shardrun) is read once in full, which writes the
/// missing claims.
fn check_name_conflicts(paths: &RunPaths, header: &Header, force: bool) -> Result<()> {
    let locks = paths.locks_dir();
    crate::store::files::create_dir_all(&locks).ctx("cannot create", &locks)?;
    let claims_complete = locks.join(CLAIMS_COMPLETE);
    let others: Vec<(u32, u32, PathBuf)> = if claims_complete.exists() {
        read_claim(&claim_path(paths, &header.name))
            .map(|(i, n)| (i, n, paths.manifest(i, n)))
            .into_iter()
            .collect()
    } else {
        paths
            .manifests()
            .ctx("cannot list the run directory", &paths.data_dir)?
    };
    let mut found = Vec::new();
    for (i, n, path) in others {
        if (i, n) == (header.shard, header.num_shards) {
            continue;
        }
        let Some(other) = read_header(&path) else {
            continue;
        };
        found.push((i, n, other.name.clone()));
        if other.name != header.name {
            continue;
        }
        if force && n != header.num_shards {
            std::fs::remove_file(&path).ctx("cannot remove the stale manifest", &path)?;
            found.pop();
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
    if !claims_complete.exists() {
        // A run from before claims: every manifest read above gets its claim, once.
        for (i, n, name) in &found {
            write_claim(paths, name, *i, *n)?;
        }
        write_claim(paths, &header.name, header.shard, header.num_shards)?;
        crate::store::files::create(&claims_complete)?;
    } else {
        write_claim(paths, &header.name, header.shard, header.num_shards)?;
    }
    Ok(())
}

/// The marker in a run's lock directory that says every manifest has its name claim.
const CLAIMS_COMPLETE: &str = "claims";

fn claim_path(paths: &RunPaths, name: &str) -> PathBuf {
    paths.locks_dir().join(format!("{name}.csv.claim"))
}

/// The shard plan that last claimed a name; `None` for no claim or a torn one (a claim is
/// written before its manifest, so a torn claim has no manifest behind it).
fn read_claim(path: &Path) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(path).ok()?;
    let (i, n) = text.strip_suffix('\n')?.split_once(' ')?;
    Some((i.parse().ok()?, n.parse().ok()?))
}

fn write_claim(paths: &RunPaths, name: &str, shard: u32, num_shards: u32) -> Result<()> {
    let path = claim_path(paths, name);
    if read_claim(&path) == Some((shard, num_shards)) {
        return Ok(());
    }
    std::fs::write(&path, format!("{shard} {num_shards}\n")).ctx("cannot write", &path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::tests::rec;
    use crate::store::record::FORMAT;

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
