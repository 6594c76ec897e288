//! `merge --verify`: every committed item's rows checked against the checksum its manifest
//! record holds, before anything is renamed into place. Shards are checked on up to one thread
//! per core; each reads its data file in item order through one large window, so small items
//! cost no system call each.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::scan::ShardScan;
use crate::error::{Error, IoContext, Result};

/// What a verification found: items checked, and committed items without a checksum (written
/// before checksums were recorded).
#[derive(Debug, Default, Clone, Copy)]
pub struct Verified {
    pub items: u64,
    pub unchecked: u64,
}

/// Checks every committed item of every shard; a refusal names the first item that differs.
pub fn verify_all(scans: &[ShardScan]) -> Result<Verified> {
    let mut total = Verified::default();
    for v in super::threads::each_on_threads("merge-verify", scans, verify_shard) {
        let v = v?;
        total.items += v.items;
        total.unchecked += v.unchecked;
    }
    Ok(total)
}

/// Bytes of a data file read at a time.
const WINDOW: usize = 4 << 20;

fn verify_shard(scan: &ShardScan) -> Result<Verified> {
    let data = File::open(&scan.data).ctx("cannot open", &scan.data)?;
    let mut window = Window {
        file: &data,
        buf: Vec::new(),
        start: 0,
    };
    let mut found = Verified::default();
    let mut items = scan.stream()?;
    while let Some(rec) = items.next_record()? {
        let Some(want) = rec.crc else {
            found.unchecked += 1;
            continue;
        };
        let mut hasher = crc32fast::Hasher::new();
        window
            .each_chunk(rec.offset, rec.bytes, |chunk| hasher.update(chunk))
            .ctx("cannot read", &scan.data)?;
        if hasher.finalize() != want {
            return Err(Error::Refused(format!(
                "{}: the rows of item {} ({:?}, bytes {}..{}) do not match the checksum in {}; \
                 the file changed after the item was committed (a disk error or an edit). \
                 Nothing was changed. Regenerate that shard with shard-worker --force \
                 --shard-index {} --num-shards {} (cached items are reused)",
                scan.data.display(),
                rec.index,
                rec.key,
                rec.offset,
                rec.offset + rec.bytes,
                scan.manifest.display(),
                scan.header.shard,
                scan.header.num_shards,
            )));
        }
        found.items += 1;
    }
    Ok(found)
}

/// A read window over a data file: ranges read in increasing order cost one read per window.
struct Window<'f> {
    file: &'f File,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    start: u64,
}

impl Window<'_> {
    /// Passes the bytes `offset..offset + len` to `f`, in chunks.
    fn each_chunk(
        &mut self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(&[u8]),
    ) -> std::io::Result<()> {
        let end = offset + len;
        let mut at = offset;
        while at < end {
            let in_window = at >= self.start && at < self.start + self.buf.len() as u64;
            if !in_window {
                self.fill(at)?;
            }
            let from = (at - self.start) as usize;
            let to = ((end - self.start) as usize).min(self.buf.len());
            f(&self.buf[from..to]);
            at = self.start + to as u64;
        }
        Ok(())
    }

    fn fill(&mut self, at: u64) -> std::io::Result<()> {
        self.buf.resize(WINDOW, 0);
        let mut n = 0;
        while n < WINDOW {
            match self.file.read_at(&mut self.buf[n..], at + n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the file ends before byte {at}"),
            ));
        }
        self.buf.truncate(n);
        self.start = at;
        Ok(())
    }
}
