//! The rows in byte ranges of CSV files, parsed with one reused parser and reused buffers:
//! `--dedupe-key` reads every committed item's range (often a single row) twice, and building a
//! reader, a read buffer and a duplicated descriptor per range cost 40 µs an item.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use crate::error::{Error, IoContext, Result};
use crate::format::csv_out::RowWriter;

/// Files kept open at once by a [`FileCache`]: a merge of ten thousand shards must fit under a
/// small open-file limit.
const MAX_OPEN: usize = 32;

/// Read-ahead per open file for small ranges: the items of a shard come in offset order, so a
/// window holds many of them and a read serves them all.
const WINDOW: usize = 64 << 10;

/// The shards' data files, opened on demand, at most [`MAX_OPEN`] at a time (the least
/// recently used is closed first), each with a read-ahead window.
pub(super) struct FileCache {
    paths: Vec<PathBuf>,
    open: VecDeque<OpenFile>,
}

struct OpenFile {
    slot: usize,
    file: File,
    window: Vec<u8>,
    window_start: u64,
}

impl FileCache {
    pub(super) fn new(paths: Vec<PathBuf>) -> Self {
        FileCache {
            paths,
            open: VecDeque::new(),
        }
    }

    /// The open file of slot `slot`, first in the cache.
    fn open(&mut self, slot: usize) -> Result<&mut OpenFile> {
        match self.open.iter().position(|o| o.slot == slot) {
            Some(0) => {}
            Some(at) => {
                if let Some(entry) = self.open.remove(at) {
                    self.open.push_front(entry);
                }
            }
            None => {
                let path = &self.paths[slot];
                let file = File::open(path).ctx("cannot open", path)?;
                // The closed file's window is reused, emptied (its bytes are another file's).
                let mut window = if self.open.len() >= MAX_OPEN {
                    self.open.pop_back().map(|o| o.window).unwrap_or_default()
                } else {
                    Vec::new()
                };
                window.clear();
                self.open.push_front(OpenFile {
                    slot,
                    file,
                    window,
                    window_start: 0,
                });
            }
        }
        Ok(&mut self.open[0])
    }

    /// Calls `f` with each row in `from..to` of slot `slot`'s file (see [`RangeRows::for_each`]),
    /// through the file's window when the range is small.
    pub(super) fn rows(
        &mut self,
        rows: &mut RangeRows,
        slot: usize,
        from: u64,
        to: u64,
        f: impl FnMut(&[u8], &[&[u8]]),
    ) -> Result<()> {
        let path = self.paths[slot].clone();
        let o = self.open(slot)?;
        let len = usize::try_from(to - from).unwrap_or(usize::MAX);
        if len > WINDOW {
            return rows.for_each(&o.file, from, to, f);
        }
        let inside =
            |o: &OpenFile| from >= o.window_start && to <= o.window_start + o.window.len() as u64;
        if !inside(o) {
            o.window.resize(WINDOW, 0);
            let mut got = 0;
            while got < len {
                match o.file.read_at(&mut o.window[got..], from + got as u64) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e).ctx("cannot read", &path),
                }
            }
            o.window.truncate(got);
            o.window_start = from;
            if !inside(o) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file ended before the item's rows",
                ))
                .ctx("cannot read", &path);
            }
        }
        let at = (from - o.window_start) as usize;
        rows.for_each_in(&o.window[at..at + len], f);
        Ok(())
    }
}

/// Bytes read from a file at a time (a range is read in pieces of this size).
const CHUNK: usize = 1 << 20;

/// A parser and its buffers, for ranges read one after the other.
pub(super) struct RangeRows {
    reader: csv_core::Reader,
    chunk: Vec<u8>,
    fields: Vec<u8>,
    ends: Vec<usize>,
    /// Bytes of `fields` and entries of `ends` of the row being parsed.
    out_len: usize,
    ends_len: usize,
    row: RowWriter,
}

impl RangeRows {
    pub(super) fn new() -> Self {
        RangeRows {
            reader: csv_core::Reader::new(),
            chunk: Vec::new(),
            fields: vec![0; 1024],
            ends: vec![0; 16],
            out_len: 0,
            ends_len: 0,
            row: RowWriter::new(),
        }
    }

    /// Parses the rows in `from..to` of `file`, giving each row's bytes as our writer writes
    /// them (the shards' rows were written by it, so these are their exact bytes) and its
    /// fields. Read in pieces: the range may be a whole dataset (`--append`).
    pub(super) fn for_each(
        &mut self,
        file: &File,
        from: u64,
        to: u64,
        mut f: impl FnMut(&[u8], &[&[u8]]),
    ) -> Result<()> {
        let bad = |e: std::io::Error| Error::Refused(format!("cannot read shard data: {e}"));
        self.start();
        let mut at = from;
        let mut chunk = std::mem::take(&mut self.chunk);
        loop {
            // The next piece of the range; empty once it is all read, which tells the parser the
            // input ended (it answers End, after the last row if that had no newline).
            let want = usize::try_from(to - at).unwrap_or(CHUNK).min(CHUNK);
            if chunk.len() < want {
                chunk.resize(want, 0);
            }
            let mut got = 0;
            while got < want {
                match file.read_at(&mut chunk[got..want], at + got as u64) {
                    Ok(0) => {
                        self.chunk = chunk;
                        return Err(bad(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the file ended before the item's rows",
                        )));
                    }
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        self.chunk = chunk;
                        return Err(bad(e));
                    }
                }
            }
            at += got as u64;
            if self.feed(&chunk[..got], &mut f) {
                self.chunk = chunk;
                return Ok(());
            }
        }
    }

    /// Like [`RangeRows::for_each`], for rows already in memory.
    pub(super) fn for_each_in(&mut self, bytes: &[u8], mut f: impl FnMut(&[u8], &[&[u8]])) {
        self.start();
        if !self.feed(bytes, &mut f) {
            self.feed(&[], &mut f);
        }
    }

    fn start(&mut self) {
        self.reader.reset();
        self.out_len = 0;
        self.ends_len = 0;
    }

    /// Parses `input` (empty: the end), calling `f` for each whole row; true at the end.
    fn feed(&mut self, mut input: &[u8], f: &mut impl FnMut(&[u8], &[&[u8]])) -> bool {
        loop {
            let (res, nin, nout, nend) = self.reader.read_record(
                input,
                &mut self.fields[self.out_len..],
                &mut self.ends[self.ends_len..],
            );
            input = &input[nin..];
            self.out_len += nout;
            self.ends_len += nend;
            match res {
                csv_core::ReadRecordResult::InputEmpty => return false,
                csv_core::ReadRecordResult::OutputFull => {
                    let n = self.fields.len() * 2;
                    self.fields.resize(n, 0);
                }
                csv_core::ReadRecordResult::OutputEndsFull => {
                    let n = self.ends.len() * 2;
                    self.ends.resize(n, 0);
                }
                csv_core::ReadRecordResult::Record => {
                    let mut start = 0;
                    let mut fields: Vec<&[u8]> = Vec::with_capacity(self.ends_len);
                    for &end in &self.ends[..self.ends_len] {
                        fields.push(&self.fields[start..end]);
                        start = end;
                    }
                    self.row.clear();
                    self.row.record(fields.iter().copied());
                    f(self.row.as_bytes(), &fields);
                    self.out_len = 0;
                    self.ends_len = 0;
                }
                csv_core::ReadRecordResult::End => return true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows_of(data: &[u8], from: u64, to: u64) -> Vec<(Vec<u8>, Vec<Vec<u8>>)> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.csv");
        std::fs::write(&path, data).unwrap();
        let file = File::open(&path).unwrap();
        let mut out = Vec::new();
        RangeRows::new()
            .for_each(&file, from, to, |raw, fields| {
                out.push((raw.to_vec(), fields.iter().map(|f| f.to_vec()).collect()));
            })
            .unwrap();
        out
    }

    #[test]
    fn rows_of_a_range_come_back_with_their_exact_bytes_and_fields() {
        let mut w = RowWriter::new();
        let rows: Vec<Vec<&[u8]>> = vec![
            vec![b"1", b"plain"],
            vec![b"2", b"with,comma"],
            vec![b"3", b"quote\"d"],
            vec![b"4", b"line\nbreak\r\nand CR\r"],
            vec![b"5", b""],
        ];
        for r in &rows {
            w.record(r.iter().copied());
        }
        let data = [b"h1,h2\n".as_slice(), w.as_bytes()].concat();
        let got = rows_of(&data, 6, data.len() as u64);
        assert_eq!(got.len(), rows.len());
        let mut again = RowWriter::new();
        for ((raw, fields), want) in got.iter().zip(&rows) {
            assert_eq!(fields, want);
            again.clear();
            again.record(want.iter().copied());
            assert_eq!(raw, again.as_bytes());
        }
        // A range of one row in the middle.
        let first = rows_of(&data, 6, data.len() as u64)[0].0.len() as u64;
        let one = rows_of(&data, 6 + first, 6 + first + got[1].0.len() as u64);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].1, rows[1]);
    }

    #[test]
    fn a_range_larger_than_a_chunk_is_read_in_pieces_without_losing_a_row() {
        let mut w = RowWriter::new();
        let n = 3 * CHUNK / 20;
        for i in 0..n {
            let v = format!("value \"{i}\" with, text");
            w.record([i.to_string().as_bytes(), v.as_bytes()]);
        }
        let data = w.as_bytes().to_vec();
        let got = rows_of(&data, 0, data.len() as u64);
        assert_eq!(got.len(), n);
        let joined: Vec<u8> = got.iter().flat_map(|(raw, _)| raw.clone()).collect();
        assert!(joined == data);
        assert_eq!(got[n - 1].1[0], (n - 1).to_string().into_bytes());
    }

    /// Regression: a file closed to make room gave its window to the next one still holding
    /// its own bytes, which were then served as the new file's rows.
    #[test]
    fn more_files_than_stay_open_each_give_their_own_rows() {
        let dir = tempfile::tempdir().unwrap();
        let n = MAX_OPEN * 2 + 3;
        let paths: Vec<PathBuf> = (0..n)
            .map(|i| {
                let p = dir.path().join(format!("{i}.csv"));
                std::fs::write(&p, format!("{i},a\n{i},b\n")).unwrap();
                p
            })
            .collect();
        let mut files = FileCache::new(paths);
        let mut rows = RangeRows::new();
        for round in 0..3 {
            for i in (0..n).rev().chain(0..n) {
                let len = format!("{i},a\n").len() as u64;
                let (from, to) = if round % 2 == 0 {
                    (0, len)
                } else {
                    (len, 2 * len)
                };
                let mut seen = Vec::new();
                files
                    .rows(&mut rows, i, from, to, |raw, _| seen.push(raw.to_vec()))
                    .unwrap();
                let want = format!("{i},{}\n", if round % 2 == 0 { "a" } else { "b" });
                assert_eq!(seen, vec![want.into_bytes()], "file {i}, round {round}");
            }
        }
    }
}
