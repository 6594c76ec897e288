//! Copying byte ranges between files with the kernel's help (`copy_file_range`), coalescing
//! adjacent ranges so a million one-row items is not a million system calls.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};

/// Appends ranges of source files to one output file.
pub struct RangeCopier {
    out: File,
    out_path: PathBuf,
    out_pos: u64,
    /// The pending range: (source slot, start, end).
    pending: Option<(usize, u64, u64)>,
    sources: Vec<(File, PathBuf)>,
    kernel_copy: bool,
}

impl RangeCopier {
    /// Copies into `out` (written from its current length on).
    pub fn new(out: File, out_path: &Path) -> Result<Self> {
        let out_pos = out.metadata().ctx("cannot stat", out_path)?.len();
        Ok(RangeCopier {
            out,
            out_path: out_path.to_path_buf(),
            out_pos,
            pending: None,
            sources: Vec::new(),
            kernel_copy: true,
        })
    }

    /// Registers a source file; returns its slot.
    pub fn add_source(&mut self, path: &Path) -> Result<usize> {
        let f = File::open(path).ctx("cannot open", path)?;
        self.sources.push((f, path.to_path_buf()));
        Ok(self.sources.len() - 1)
    }

    /// Writes bytes directly (a header).
    pub fn write_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        self.flush_pending()?;
        self.out
            .seek(SeekFrom::Start(self.out_pos))
            .and_then(|_| self.out.write_all(bytes))
            .ctx("cannot write", &self.out_path)?;
        self.out_pos += bytes.len() as u64;
        Ok(())
    }

    /// Queues `len` bytes at `offset` of source `slot`.
    pub fn push(&mut self, slot: usize, offset: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        if let Some((s, _, end)) = &mut self.pending {
            if *s == slot && *end == offset {
                *end += len;
                return Ok(());
            }
        }
        self.flush_pending()?;
        self.pending = Some((slot, offset, offset + len));
        Ok(())
    }

    /// Copies whatever is queued now.
    pub fn flush(&mut self) -> Result<()> {
        self.flush_pending()
    }

    /// Bytes in the output so far, queued ranges included.
    pub fn position(&self) -> u64 {
        self.out_pos + self.pending.map_or(0, |(_, start, end)| end - start)
    }

    /// Asks the kernel to start writing `len` bytes of the output at `from` back to disk now,
    /// without waiting: the final `fsync` then has little left to do. Advisory only.
    pub fn start_writeback(&self, from: u64, len: u64) {
        start_writeback(&self.out, from, from + len);
    }

    /// Copies whatever is queued; returns the output length and file.
    pub fn finish(mut self) -> Result<(File, u64)> {
        self.flush_pending()?;
        Ok((self.out, self.out_pos))
    }

    fn flush_pending(&mut self) -> Result<()> {
        let Some((slot, start, end)) = self.pending.take() else {
            return Ok(());
        };
        let mut off_in = start as i64;
        let mut off_out = self.out_pos as i64;
        let mut left = end - start;
        while left > 0 && self.kernel_copy {
            let src = &self.sources[slot].0;
            // SAFETY: valid fds and offset pointers owned by this frame.
            let n = unsafe {
                libc::copy_file_range(
                    src.as_raw_fd(),
                    &mut off_in,
                    self.out.as_raw_fd(),
                    &mut off_out,
                    left.min(1 << 30) as usize,
                    0,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EXDEV | libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL) => {
                        self.kernel_copy = false;
                    }
                    Some(libc::EINTR) => {}
                    _ => return Err(e).ctx("cannot copy into", &self.out_path),
                }
            } else if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the source ended early",
                ))
                .ctx("cannot copy from", &self.sources[slot].1);
            } else {
                left -= n as u64;
            }
        }
        if left > 0 {
            self.copy_userspace(slot, off_in as u64, off_out as u64, left)?;
        }
        self.out_pos += end - start;
        Ok(())
    }

    fn copy_userspace(&mut self, slot: usize, from: u64, to: u64, len: u64) -> Result<()> {
        let (src, src_path) = &mut self.sources[slot];
        src.seek(SeekFrom::Start(from))
            .ctx("cannot seek", src_path)?;
        self.out
            .seek(SeekFrom::Start(to))
            .ctx("cannot seek", &self.out_path)?;
        let copied = std::io::copy(&mut (&*src).take(len), &mut self.out)
            .ctx("cannot copy into", &self.out_path)?;
        if copied != len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the source ended early",
            ))
            .ctx("cannot copy from", src_path);
        }
        Ok(())
    }
}

/// Asks the kernel to start writing bytes `from..to` of `file` back to disk now, without
/// waiting, so that a later `fsync` has little left to do. Advisory: errors are ignored.
pub fn start_writeback(file: &File, from: u64, to: u64) {
    // SAFETY: sync_file_range on a valid descriptor; it neither reads nor writes our memory.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            from as libc::off64_t,
            to.saturating_sub(from) as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_copied_in_order_and_coalesced() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&a, b"0123456789").unwrap();
        std::fs::write(&b, b"abcdef").unwrap();
        let out_path = dir.path().join("out");
        let out = File::create(&out_path).unwrap();
        let mut c = RangeCopier::new(out, &out_path).unwrap();
        let (sa, sb) = (c.add_source(&a).unwrap(), c.add_source(&b).unwrap());
        c.write_bytes(b"H\n").unwrap();
        c.push(sa, 2, 3).unwrap();
        c.push(sa, 5, 2).unwrap();
        c.push(sb, 0, 2).unwrap();
        c.push(sa, 9, 1).unwrap();
        let (_, len) = c.finish().unwrap();
        assert_eq!(std::fs::read(&out_path).unwrap(), b"H\n23456ab9");
        assert_eq!(len, 10);
    }

    #[test]
    fn a_range_past_the_end_of_its_source_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, b"012").unwrap();
        let out_path = dir.path().join("out");
        let mut c = RangeCopier::new(File::create(&out_path).unwrap(), &out_path).unwrap();
        let s = c.add_source(&a).unwrap();
        c.push(s, 1, 5).unwrap();
        assert!(c.finish().is_err());
    }
}
