//! Copying byte ranges between files into one output, in order. Adjacent ranges are coalesced
//! and large ones copied by the kernel (`copy_file_range`); small ranges that cannot be coalesced
//! (items interleaved from several shards, a stride plan) go through user-space buffers instead,
//! read in large blocks from each source. Either way a million one-row items is not a million
//! system calls.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};

/// Ranges shorter than this are copied through user space.
const SMALL: u64 = 64 * 1024;
/// Output bytes gathered before one write.
const OUT_BUFFER: usize = 1 << 20;
/// Read-ahead per source for small ranges, shared by all sources (each gets between
/// [`MIN_WINDOW`] and [`MAX_WINDOW`]), so memory stays bounded with a thousand shards.
const WINDOWS_TOTAL: usize = 16 << 20;
const MIN_WINDOW: usize = SMALL as usize;
const MAX_WINDOW: usize = 1 << 20;
/// Sources kept open at once: the oldest opened is closed (and opened again when needed) beyond
/// this, so a merge of ten thousand shards fits under a small open-file limit. Sources are mostly
/// used one after the other, or through their read-ahead windows, so reopening is rare.
const MAX_OPEN: usize = 32;

/// Appends ranges of source files to one output file.
pub struct RangeCopier {
    out: File,
    out_path: PathBuf,
    /// Logical end of the output: what is in the file plus `buffer`.
    out_pos: u64,
    /// Bytes not yet written, which belong just before `out_pos`.
    buffer: Vec<u8>,
    /// The pending range: (source slot, start, end).
    pending: Option<(usize, u64, u64)>,
    sources: Vec<Source>,
    /// Slots whose file is open, oldest first.
    open: std::collections::VecDeque<usize>,
    kernel_copy: bool,
    /// A released source's window, handed to the next source that needs one: copying ten
    /// thousand small sources one after the other allocates (and zeroes) one window, not ten
    /// thousand.
    spare_window: Vec<u8>,
}

struct Source {
    /// Open while in [`RangeCopier::open`].
    file: Option<File>,
    path: PathBuf,
    /// Bytes of the file from offset `window_start`, read ahead for small ranges: the first
    /// `window_len` bytes of `window` (allocated once, not cleared between reads).
    window: Vec<u8>,
    window_start: u64,
    window_len: usize,
}

impl RangeCopier {
    /// Copies into `out` (written from its current length on).
    pub fn new(out: File, out_path: &Path) -> Result<Self> {
        let out_pos = out.metadata().ctx("cannot stat", out_path)?.len();
        Ok(RangeCopier {
            out,
            out_path: out_path.to_path_buf(),
            out_pos,
            buffer: Vec::new(),
            pending: None,
            sources: Vec::new(),
            open: std::collections::VecDeque::new(),
            kernel_copy: true,
            spare_window: Vec::new(),
        })
    }

    /// Registers a source file; returns its slot.
    pub fn add_source(&mut self, path: &Path) -> Result<usize> {
        self.sources.push(Source {
            file: None,
            path: path.to_path_buf(),
            window: Vec::new(),
            window_start: 0,
            window_len: 0,
        });
        let slot = self.sources.len() - 1;
        // Opened now, so that a missing source is an error before anything is copied.
        self.source_file(slot)?;
        Ok(slot)
    }

    /// Frees source `slot`'s read-ahead window and closes its file: a caller that is done with
    /// a source says so, so that copying ten thousand sources one after the other holds one
    /// window at a time, not one per source. Ranges of it still queued are copied all the same
    /// (copied now).
    pub fn release(&mut self, slot: usize) -> Result<()> {
        if self.pending.is_some_and(|(s, _, _)| s == slot) {
            self.flush_pending()?;
        }
        let src = &mut self.sources[slot];
        let window = std::mem::take(&mut src.window);
        if window.len() > self.spare_window.len() {
            self.spare_window = window;
        }
        src.window_len = 0;
        if src.file.take().is_some() {
            self.open.retain(|&s| s != slot);
        }
        Ok(())
    }

    /// The open file of source `slot`, opened again if it was closed.
    fn source_file(&mut self, slot: usize) -> Result<&File> {
        if self.sources[slot].file.is_none() {
            while self.open.len() >= MAX_OPEN {
                if let Some(old) = self.open.pop_front() {
                    self.sources[old].file = None;
                }
            }
            let path = &self.sources[slot].path;
            let file = File::open(path).ctx("cannot open", path)?;
            self.sources[slot].file = Some(file);
            self.open.push_back(slot);
        }
        let src = &self.sources[slot];
        src.file
            .as_ref()
            .ok_or_else(|| std::io::Error::other("closed"))
            .ctx("cannot open", &src.path)
    }

    /// Writes bytes directly (a header, rows filtered in memory).
    pub fn write_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        self.flush_pending()?;
        self.buffer.extend_from_slice(bytes);
        self.out_pos += bytes.len() as u64;
        self.write_buffer_if_full()
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

    /// Copies whatever is queued now, and writes what is buffered.
    pub fn flush(&mut self) -> Result<()> {
        self.flush_pending()?;
        self.write_buffer()
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
        self.flush()?;
        Ok((self.out, self.out_pos))
    }

    fn flush_pending(&mut self) -> Result<()> {
        let Some((slot, start, end)) = self.pending.take() else {
            return Ok(());
        };
        if end - start < SMALL {
            self.copy_small(slot, start, end)?;
            self.out_pos += end - start;
            return self.write_buffer_if_full();
        }
        self.write_buffer()?;
        let mut off_in = start as i64;
        let mut off_out = self.out_pos as i64;
        let mut left = end - start;
        while left > 0 && self.kernel_copy {
            let src = self.source_file(slot)?.as_raw_fd();
            // SAFETY: valid fds and offset pointers owned by this frame.
            let n = unsafe {
                libc::copy_file_range(
                    src,
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
                return Err(ended_early()).ctx("cannot copy from", &self.sources[slot].path);
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

    /// Appends bytes `start..end` of a source to the buffer, through its read-ahead window.
    fn copy_small(&mut self, slot: usize, start: u64, end: u64) -> Result<()> {
        let window_size = (WINDOWS_TOTAL / self.sources.len().max(1)).clamp(MIN_WINDOW, MAX_WINDOW);
        let in_window = |src: &Source| {
            start >= src.window_start && end <= src.window_start + src.window_len as u64
        };
        if !in_window(&self.sources[slot]) {
            self.source_file(slot)?;
        }
        let src = &mut self.sources[slot];
        if !in_window(src) {
            let Some(file) = &src.file else {
                return Err(ended_early()).ctx("cannot read", &src.path);
            };
            if src.window.len() != window_size {
                src.window = if self.spare_window.len() == window_size {
                    std::mem::take(&mut self.spare_window)
                } else {
                    vec![0; window_size]
                };
            }
            // Read ahead as far as the window goes, but stop once the range is in: a short read
            // is the end of the file, and asking again only to hear so would double the reads of
            // a merge of many small shards.
            let needed = (end - start) as usize;
            let mut filled = 0;
            while filled < window_size {
                match file.read_at(&mut src.window[filled..], start + filled as u64) {
                    Ok(0) => break,
                    Ok(n) if filled + n >= needed => {
                        filled += n;
                        break;
                    }
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e).ctx("cannot read", &src.path),
                }
            }
            src.window_len = filled;
            src.window_start = start;
            if !in_window(src) {
                return Err(ended_early()).ctx("cannot copy from", &src.path);
            }
        }
        let from = (start - src.window_start) as usize;
        let to = (end - src.window_start) as usize;
        self.buffer.extend_from_slice(&src.window[from..to]);
        Ok(())
    }

    fn write_buffer_if_full(&mut self) -> Result<()> {
        if self.buffer.len() >= OUT_BUFFER {
            self.write_buffer()?;
        }
        Ok(())
    }

    /// Writes the buffered bytes where they belong: just before `out_pos`.
    fn write_buffer(&mut self) -> Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let at = self.out_pos - self.buffer.len() as u64;
        self.out
            .write_all_at(&self.buffer, at)
            .ctx("cannot write", &self.out_path)?;
        self.buffer.clear();
        Ok(())
    }

    fn copy_userspace(&mut self, slot: usize, from: u64, to: u64, len: u64) -> Result<()> {
        self.source_file(slot)?;
        let Source { file, path, .. } = &mut self.sources[slot];
        let Some(file) = file else {
            return Err(ended_early()).ctx("cannot copy from", path);
        };
        file.seek(SeekFrom::Start(from)).ctx("cannot seek", path)?;
        self.out
            .seek(SeekFrom::Start(to))
            .ctx("cannot seek", &self.out_path)?;
        let copied = std::io::copy(&mut (&*file).take(len), &mut self.out)
            .ctx("cannot copy into", &self.out_path)?;
        if copied != len {
            return Err(ended_early()).ctx("cannot copy from", path);
        }
        Ok(())
    }
}

fn ended_early() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the source ended early")
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
    fn interleaved_small_and_large_ranges_land_in_order() {
        let dir = tempfile::tempdir().unwrap();
        // Two sources of numbered 3-byte rows, merged alternately (a stride plan), with a
        // range above the user-space threshold in the middle and bytes written directly.
        let rows = |tag: u8, n: usize| -> Vec<u8> {
            (0..n)
                .flat_map(|i| [tag, b'0' + (i % 10) as u8, b'\n'])
                .collect()
        };
        let (a, b) = (rows(b'a', 100_000), rows(b'b', 100_000));
        let (pa, pb) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&pa, &a).unwrap();
        std::fs::write(&pb, &b).unwrap();
        let out_path = dir.path().join("out");
        let mut c = RangeCopier::new(File::create(&out_path).unwrap(), &out_path).unwrap();
        let (sa, sb) = (c.add_source(&pa).unwrap(), c.add_source(&pb).unwrap());
        let mut want = b"H\n".to_vec();
        c.write_bytes(b"H\n").unwrap();
        for i in 0..50_000u64 {
            c.push(sa, i * 3, 3).unwrap();
            c.push(sb, i * 3, 3).unwrap();
            want.extend_from_slice(&a[i as usize * 3..i as usize * 3 + 3]);
            want.extend_from_slice(&b[i as usize * 3..i as usize * 3 + 3]);
        }
        c.push(sa, 150_000, 150_000).unwrap();
        want.extend_from_slice(&a[150_000..]);
        c.write_bytes(b"mid\n").unwrap();
        want.extend_from_slice(b"mid\n");
        c.push(sb, 150_000, 3).unwrap();
        want.extend_from_slice(&b[150_000..150_003]);
        assert_eq!(c.position(), want.len() as u64);
        let (_, len) = c.finish().unwrap();
        assert_eq!(len, want.len() as u64);
        assert!(std::fs::read(&out_path).unwrap() == want);
    }

    /// Regression (cluster scale): every source kept its read-ahead window (at least 64 KiB)
    /// to the end, so a merge of 10,000 shards held 10,000 windows.
    #[test]
    fn released_sources_hold_no_window_and_queued_ranges_still_copy() {
        let dir = tempfile::tempdir().unwrap();
        let out_path = dir.path().join("out");
        let mut c = RangeCopier::new(File::create(&out_path).unwrap(), &out_path).unwrap();
        let mut want = Vec::new();
        for i in 0..300 {
            let p = dir.path().join(format!("s{i}"));
            std::fs::write(&p, format!("row {i}\n")).unwrap();
            let slot = c.add_source(&p).unwrap();
            c.push(slot, 0, 4).unwrap();
            c.flush().unwrap();
            c.push(slot, 4, format!("{i}\n").len() as u64).unwrap();
            // Released with a range still queued: it is copied all the same.
            c.release(slot).unwrap();
            want.extend_from_slice(format!("row {i}\n").as_bytes());
        }
        let held: usize = c.sources.iter().map(|s| s.window.capacity()).sum();
        assert!(held <= MAX_WINDOW, "windows held: {held} bytes");
        assert!(c.open.len() <= 1);
        c.finish().unwrap();
        assert_eq!(std::fs::read(&out_path).unwrap(), want);
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
