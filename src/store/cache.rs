//! The item cache: results keyed by generator identity and the whole item, shared by every shard
//! under any shard count, so a reshard or a re-run does not redo finished work.
//!
//! Layout: `<cache.dir>/<generator-id>/pack-<k>.bin`. Each worker appends to one pack it holds an
//! exclusive lock on (the first free `k`), so the number of files grows with the number of
//! workers running at once, never with the item count. A pack is a sequence of entries:
//!
//! ```text
//! "SRC1" | key: 32 bytes | rows: u64 LE | len: u64 LE | payload: len bytes | check: 16 bytes
//! ```
//!
//! `key` is the BLAKE3 hash of (generator id, index, key, fields, seed); `check` is the first 16
//! bytes of BLAKE3(key, rows, payload). An entry torn by a crash fails its length or its check
//! and is never served; a writer cuts its pack back to the last whole entry on open.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};
use crate::run::items::Item;

const MAGIC: &[u8; 4] = b"SRC1";
const HEAD: usize = 4 + 32 + 8 + 8;
const CHECK: usize = 16;

/// The cache key of an item under a generator identity.
pub type Key = [u8; 32];

/// Computes the cache key of `item` for the generator identified by `generator_id`.
pub fn item_key(generator_id: &str, item: &Item) -> Key {
    let mut h = blake3::Hasher::new();
    h.update(generator_id.as_bytes()).update(b"\0");
    h.update(&item.index.to_le_bytes());
    h.update(&item.seed.to_le_bytes());
    h.update(&(item.key.len() as u64).to_le_bytes())
        .update(item.key.as_bytes());
    for (k, v) in &item.fields {
        h.update(&(k.len() as u64).to_le_bytes())
            .update(k.as_bytes());
        h.update(&(v.len() as u64).to_le_bytes())
            .update(v.as_bytes());
    }
    *h.finalize().as_bytes()
}

/// The first 8 bytes of a key: enough to index by (a collision only costs a failed full-key
/// comparison, i.e. a cache miss) at a third of the memory.
fn short(key: &Key) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&key[..8]);
    u64::from_le_bytes(b)
}

/// Where an entry starts: pack number in the top 16 bits, byte offset in the low 48.
#[derive(Debug, Clone, Copy)]
struct Loc(u64);

impl Loc {
    fn new(pack: usize, offset: u64) -> Self {
        Loc(((pack as u64) << 48) | offset)
    }
    fn pack(self) -> usize {
        (self.0 >> 48) as usize
    }
    fn offset(self) -> u64 {
        self.0 & ((1 << 48) - 1)
    }
}

/// An open cache for one generator identity.
#[derive(Debug)]
pub struct Cache {
    packs: Vec<File>,
    /// (short key, location), sorted by key; built once at open.
    index: Vec<(u64, Loc)>,
    writer: BufWriter<File>,
    writer_path: PathBuf,
    writer_pack: usize,
    writer_len: u64,
}

impl Cache {
    /// Opens the cache of `generator_id` under `root_dir`, indexing only the `wanted` keys (the
    /// items this worker still has to produce), and takes a pack to append to.
    pub fn open(root_dir: &Path, generator_id: &str, wanted: &Wanted) -> Result<Cache> {
        let dir = root_dir.join(generator_id);
        crate::store::files::create_dir_all(&dir).ctx("cannot create the cache directory", &dir)?;
        let (writer_file, writer_path, writer_k) = take_pack(&dir)?;
        let mut packs = Vec::new();
        let mut index = Vec::new();
        let mut writer_pack = 0;
        let mut writer_len = 0;
        let mut k = 0;
        loop {
            let path = dir.join(format!("pack-{k}.bin"));
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) => return Err(e).ctx("cannot open the cache pack", &path),
            };
            let pack = packs.len();
            let valid =
                scan(&file, pack, wanted, &mut index).ctx("cannot read the cache pack", &path)?;
            if k == writer_k {
                writer_pack = pack;
                writer_len = valid;
            }
            packs.push(file);
            k += 1;
        }
        // Later entries of a key win: a stable sort keeps scan order, then keep the last.
        index.sort_by_key(|(k, _)| *k);
        index.reverse();
        index.dedup_by_key(|(k, _)| *k);
        index.reverse();
        writer_file
            .set_len(writer_len)
            .ctx("cannot repair the cache pack", &writer_path)?;
        let mut writer_file = writer_file;
        writer_file
            .seek(SeekFrom::Start(writer_len))
            .ctx("cannot seek in the cache pack", &writer_path)?;
        Ok(Cache {
            packs,
            index,
            writer: BufWriter::with_capacity(1 << 20, writer_file),
            writer_path,
            writer_pack,
            writer_len,
        })
    }

    /// The cached rows and row count of `key`, if a whole, verified entry exists.
    pub fn get(&mut self, key: &Key) -> Option<(Vec<u8>, u64)> {
        let short = short(key);
        let at = self.index.binary_search_by_key(&short, |(k, _)| *k).ok()?;
        let loc = self.index[at].1;
        if loc.pack() == self.writer_pack && self.writer.flush().is_err() {
            return None;
        }
        let file = &self.packs[loc.pack()];
        let mut head = [0u8; HEAD];
        file.read_exact_at(&mut head, loc.offset()).ok()?;
        let (rows, len) = entry_sizes(&head);
        if &head[..4] != MAGIC || &head[4..36] != key || len > (1 << 40) {
            return None;
        }
        let mut buf = vec![0u8; len as usize + CHECK];
        file.read_exact_at(&mut buf, loc.offset() + HEAD as u64)
            .ok()?;
        let (payload, check) = buf.split_at(len as usize);
        if check != checksum(key, rows, payload) {
            return None;
        }
        buf.truncate(len as usize);
        Some((buf, rows))
    }

    /// Stores an item's rows. Not synced: a lost entry only means the item is generated again.
    pub fn put(&mut self, key: &Key, rows: u64, payload: &[u8]) -> Result<()> {
        let mut head = [0u8; HEAD];
        head[..4].copy_from_slice(MAGIC);
        head[4..36].copy_from_slice(key);
        head[36..44].copy_from_slice(&rows.to_le_bytes());
        head[44..52].copy_from_slice(&(payload.len() as u64).to_le_bytes());
        self.writer
            .write_all(&head)
            .and_then(|_| self.writer.write_all(payload))
            .and_then(|_| self.writer.write_all(&checksum(key, rows, payload)))
            .ctx("cannot write to the cache pack", &self.writer_path)?;
        // Not indexed: an item is looked up once per run, before it is produced.
        self.writer_len += (HEAD + payload.len() + CHECK) as u64;
        Ok(())
    }

    /// Hands buffered entries to the kernel (so other workers can read them).
    pub fn flush(&mut self) -> Result<()> {
        self.writer
            .flush()
            .ctx("cannot write to the cache pack", &self.writer_path)
    }
}

fn checksum(key: &Key, rows: u64, payload: &[u8]) -> [u8; CHECK] {
    let mut h = blake3::Hasher::new();
    h.update(key).update(&rows.to_le_bytes()).update(payload);
    let mut out = [0u8; CHECK];
    out.copy_from_slice(&h.finalize().as_bytes()[..CHECK]);
    out
}

/// The first pack this process can lock for writing; packs others hold are skipped.
fn take_pack(dir: &Path) -> Result<(File, PathBuf, usize)> {
    for k in 0.. {
        let path = dir.join(format!("pack-{k}.bin"));
        let file = crate::store::files::open(
            crate::store::files::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false),
            &path,
            "cannot open the cache pack",
        )?;
        match file.try_lock() {
            Ok(()) => return Ok((file, path, k)),
            Err(std::fs::TryLockError::WouldBlock) => continue,
            Err(std::fs::TryLockError::Error(e)) => return Err(e).ctx("cannot lock", &path),
        }
    }
    unreachable!("the loop over pack numbers only ends by returning")
}

/// Indexes the whole entries of a pack whose key is wanted; returns the length of the valid
/// prefix (a torn tail ends the scan).
fn scan(
    file: &File,
    pack: usize,
    wanted: &Wanted,
    index: &mut Vec<(u64, Loc)>,
) -> std::io::Result<u64> {
    let len = file.metadata()?.len();
    let mut r = BufReader::with_capacity(1 << 16, file);
    let mut offset = 0u64;
    let mut head = [0u8; HEAD];
    while offset + (HEAD + CHECK) as u64 <= len {
        r.read_exact(&mut head)?;
        if &head[..4] != MAGIC {
            break;
        }
        let (_, plen) = entry_sizes(&head);
        // A corrupt length must not wrap around: anything past the file ends the scan.
        let Some(end) = plen
            .checked_add(offset + (HEAD + CHECK) as u64)
            .filter(|&e| e <= len)
        else {
            break;
        };
        let mut key = [0u8; 32];
        key.copy_from_slice(&head[4..36]);
        let s = short(&key);
        if wanted.contains(s) {
            index.push((s, Loc::new(pack, offset)));
        }
        r.seek_relative((plen as usize + CHECK) as i64)?;
        offset = end;
    }
    Ok(offset)
}

/// The keys a worker may look up, so that only those are indexed (memory stays proportional to
/// the shard's pending items, not to the whole cache).
#[derive(Debug, Default)]
pub struct Wanted(Vec<u64>);

impl Wanted {
    /// Collects the keys.
    pub fn new(keys: impl IntoIterator<Item = Key>) -> Self {
        let mut v: Vec<u64> = keys.into_iter().map(|k| short(&k)).collect();
        v.sort_unstable();
        v.dedup();
        Wanted(v)
    }

    fn contains(&self, short: u64) -> bool {
        self.0.binary_search(&short).is_ok()
    }
}

/// True when some pack of `generator_id` holds data (else there is nothing to look up).
pub fn has_entries(root_dir: &Path, generator_id: &str) -> bool {
    std::fs::read_dir(root_dir.join(generator_id))
        .map(|rd| {
            rd.flatten()
                .any(|e| e.metadata().is_ok_and(|m| m.is_file() && m.len() > 0))
        })
        .unwrap_or(false)
}

/// (rows, payload length) from an entry header.
fn entry_sizes(head: &[u8; HEAD]) -> (u64, u64) {
    let mut rows = [0u8; 8];
    let mut len = [0u8; 8];
    rows.copy_from_slice(&head[36..44]);
    len.copy_from_slice(&head[44..52]);
    (u64::from_le_bytes(rows), u64::from_le_bytes(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(i: u64) -> Item {
        Item {
            index: i,
            key: format!("k{i}"),
            seed: i * 7,
            fields: vec![],
        }
    }

    #[test]
    fn entries_round_trip_across_opens_and_torn_tails_are_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<Key> = (0..3).map(|i| item_key("g", &item(i))).collect();
        let wanted = Wanted::new(keys.iter().copied());
        {
            let mut c = Cache::open(dir.path(), "g", &wanted).unwrap();
            assert!(c.get(&keys[0]).is_none());
            c.put(&keys[0], 2, b"a\nb\n").unwrap();
            c.put(&keys[1], 1, b"c\n").unwrap();
            c.flush().unwrap();
        }
        {
            let mut c = Cache::open(dir.path(), "g", &wanted).unwrap();
            assert_eq!(c.get(&keys[0]).unwrap(), (b"a\nb\n".to_vec(), 2));
            assert_eq!(c.get(&keys[1]).unwrap(), (b"c\n".to_vec(), 1));
        }
        // Tear the last entry as a kill -9 mid-write would.
        let pack = dir.path().join("g/pack-0.bin");
        let len = std::fs::metadata(&pack).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&pack)
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        let mut c = Cache::open(dir.path(), "g", &wanted).unwrap();
        assert_eq!(c.get(&keys[0]).unwrap().1, 2);
        assert!(c.get(&keys[1]).is_none(), "a torn entry must not be served");
        c.put(&keys[2], 1, b"z\n").unwrap();
        c.flush().unwrap();
        drop(c);
        let mut c = Cache::open(dir.path(), "g", &wanted).unwrap();
        assert_eq!(c.get(&keys[2]).unwrap().0, b"z\n");
        assert_eq!(c.get(&keys[0]).unwrap().1, 2);
    }

    #[test]
    fn a_corrupted_payload_fails_its_check() {
        let dir = tempfile::tempdir().unwrap();
        let key = item_key("g", &item(0));
        let wanted = Wanted::new([key]);
        {
            let mut c = Cache::open(dir.path(), "g", &wanted).unwrap();
            c.put(&key, 1, b"hello\n").unwrap();
            c.flush().unwrap();
        }
        let pack = dir.path().join("g/pack-0.bin");
        let f = std::fs::OpenOptions::new().write(true).open(&pack).unwrap();
        f.write_all_at(b"J", HEAD as u64).unwrap();
        let mut c = Cache::open(dir.path(), "g", &wanted).unwrap();
        assert!(c.get(&key).is_none());
    }

    #[test]
    fn concurrent_writers_take_different_packs() {
        let dir = tempfile::tempdir().unwrap();
        let a = Cache::open(dir.path(), "g", &Wanted::default()).unwrap();
        let b = Cache::open(dir.path(), "g", &Wanted::default()).unwrap();
        assert_ne!(a.writer_path, b.writer_path);
    }

    #[test]
    fn keys_cover_the_whole_item() {
        let base = item_key("g", &item(1));
        assert_ne!(base, item_key("h", &item(1)));
        let mut other = item(1);
        other.seed += 1;
        assert_ne!(base, item_key("g", &other));
        let mut other = item(1);
        other.fields.push(("f".into(), "v".into()));
        assert_ne!(base, item_key("g", &other));
    }
}
