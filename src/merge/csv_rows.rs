//! The merged CSV rows read back for the Parquet writer, field by field, without copying them
//! into a record first.
//!
//! Nearly every line merge reads back is a plain one: no quote, no carriage return. Its fields
//! are the bytes between its commas, taken where they lie in the read buffer. Any other record
//! (a quoted field, a CR, an empty line, a last line without its newline) goes through
//! `csv_core`, the `csv` crate's own parser, from where it starts: the records are exactly those
//! `csv::Reader` gives, about twice as fast (the parse was a fifth of the Parquet merge's CPU).

use std::io::Read;

use csv_core::ReadRecordResult;

/// Reads CSV records from `input`; see the module's notes.
pub(super) struct CsvRows<R> {
    input: R,
    buf: Vec<u8>,
    /// The unread bytes are `buf[pos..len]`.
    pos: usize,
    len: usize,
    eof: bool,
    core: csv_core::Reader,
    /// A record parsed by `csv_core`: its unescaped bytes and where each field ends.
    slow_bytes: Vec<u8>,
    slow_ends: Vec<usize>,
    /// The current record's fields, as (start, end) in `buf` or `slow_bytes`.
    bounds: Vec<(usize, usize)>,
}

/// One record: its fields in order.
pub(super) struct Fields<'a> {
    bytes: &'a [u8],
    bounds: &'a [(usize, usize)],
}

impl<'a> Fields<'a> {
    pub(super) fn len(&self) -> usize {
        self.bounds.len()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let bytes = self.bytes;
        self.bounds.iter().map(move |&(s, e)| &bytes[s..e])
    }
}

impl<R: Read> CsvRows<R> {
    pub(super) fn new(input: R, capacity: usize) -> Self {
        CsvRows {
            input,
            buf: vec![0; capacity.max(64)],
            pos: 0,
            len: 0,
            eof: false,
            core: csv_core::Reader::new(),
            slow_bytes: vec![0; 1024],
            slow_ends: vec![0; 16],
            bounds: Vec::new(),
        }
    }

    /// The next record, or `None` at the end of the input.
    pub(super) fn next_record(&mut self) -> std::io::Result<Option<Fields<'_>>> {
        loop {
            let unread = &self.buf[self.pos..self.len];
            match memchr::memchr3(b'\n', b'"', b'\r', unread) {
                Some(end) if unread[end] == b'\n' && end > 0 => {
                    let line = &unread[..end];
                    self.bounds.clear();
                    let mut start = 0;
                    for comma in memchr::memchr_iter(b',', line) {
                        self.bounds.push((start, comma));
                        start = comma + 1;
                    }
                    self.bounds.push((start, end));
                    let at = self.pos;
                    self.pos += end + 1;
                    return Ok(Some(Fields {
                        bytes: &self.buf[at..at + end],
                        bounds: &self.bounds,
                    }));
                }
                Some(_) => return self.slow_record(),
                None if self.eof => {
                    return if unread.is_empty() {
                        Ok(None)
                    } else {
                        self.slow_record()
                    };
                }
                None => self.fill()?,
            }
        }
    }

    /// Reads more input after the unread bytes (moved to the front, the buffer grown when they
    /// fill it: a line longer than the buffer).
    fn fill(&mut self) -> std::io::Result<()> {
        if self.pos > 0 {
            self.buf.copy_within(self.pos..self.len, 0);
            self.len -= self.pos;
            self.pos = 0;
        }
        if self.len == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = loop {
            match self.input.read(&mut self.buf[self.len..]) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        self.len += n;
        self.eof = n == 0;
        Ok(())
    }

    /// One record through `csv_core`, from the unread bytes on (reading more as it needs). At
    /// the end of the input, an empty input tells `csv_core` that the data ended.
    fn slow_record(&mut self) -> std::io::Result<Option<Fields<'_>>> {
        let (mut out, mut ends) = (0, 0);
        loop {
            let (result, nin, nout, nend) = self.core.read_record(
                &self.buf[self.pos..self.len],
                &mut self.slow_bytes[out..],
                &mut self.slow_ends[ends..],
            );
            self.pos += nin;
            out += nout;
            ends += nend;
            match result {
                ReadRecordResult::InputEmpty if !self.eof => self.fill()?,
                ReadRecordResult::InputEmpty => {}
                ReadRecordResult::OutputFull => grow(&mut self.slow_bytes),
                ReadRecordResult::OutputEndsFull => grow(&mut self.slow_ends),
                ReadRecordResult::Record => return Ok(Some(self.slow_fields(ends))),
                ReadRecordResult::End => return Ok(None),
            }
        }
    }

    fn slow_fields(&mut self, ends: usize) -> Fields<'_> {
        self.bounds.clear();
        let mut start = 0;
        for &end in &self.slow_ends[..ends] {
            self.bounds.push((start, end));
            start = end;
        }
        Fields {
            bytes: &self.slow_bytes,
            bounds: &self.bounds,
        }
    }
}

fn grow<T: Default + Clone>(v: &mut Vec<T>) {
    v.resize(v.len() * 2, T::default());
}

#[cfg(test)]
mod tests {
    use super::CsvRows;

    /// The records of `data` as `csv::Reader` gives them (any field count).
    fn by_csv(data: &[u8]) -> Vec<Vec<Vec<u8>>> {
        let mut r = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(data);
        r.byte_records()
            .map(|rec| rec.unwrap().iter().map(<[u8]>::to_vec).collect())
            .collect()
    }

    fn by_rows(data: &[u8], capacity: usize) -> Vec<Vec<Vec<u8>>> {
        let mut r = CsvRows::new(data, capacity);
        let mut all = Vec::new();
        while let Some(f) = r.next_record().unwrap() {
            assert_eq!(f.len(), f.iter().count());
            all.push(f.iter().map(<[u8]>::to_vec).collect());
        }
        all
    }

    #[test]
    fn records_are_those_of_the_csv_crate() {
        let cases: &[&[u8]] = &[
            b"",
            b"a,b\n1,2\n",
            b"a,b\n1,2",
            b"a\n\n\nb\n",
            b"\"\"\n",
            b",\n,,\n",
            b"a,\"x,y\"\n\"q\"\"uote\",\"line\nbreak\"\n",
            b"a\r\nb\r\nc\rd\n",
            b"x,\"cr\rin\",y\n",
            b"mid\"quote,z\n",
            b"\"unterminated,at end",
            b"caf\xc3\xa9,\xff\n",
        ];
        for data in cases {
            for capacity in [1, 3, 7, 1 << 16] {
                assert_eq!(
                    by_rows(data, capacity),
                    by_csv(data),
                    "{:?} with a buffer of {capacity}",
                    String::from_utf8_lossy(data)
                );
            }
        }
    }

    /// Every string of a small alphabet of the bytes that matter, up to a length, and a long
    /// pseudo-random stream of them, against the `csv` crate.
    #[test]
    fn records_match_the_csv_crate_on_every_short_input() {
        let alphabet = [b'a', b',', b'"', b'\n', b'\r'];
        for len in 0..=6u32 {
            for mut n in 0..alphabet.len().pow(len) {
                let mut data = Vec::new();
                for _ in 0..len {
                    data.push(alphabet[n % alphabet.len()]);
                    n /= alphabet.len();
                }
                for capacity in [1, 4, 64] {
                    assert_eq!(by_rows(&data, capacity), by_csv(&data), "{data:?}");
                }
            }
        }
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let data: Vec<u8> = (0..200_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Mostly plain bytes and commas, with now and then a quote, CR or newline.
                match x % 40 {
                    0 => b'"',
                    1 => b'\r',
                    2..=5 => b'\n',
                    6..=11 => b',',
                    _ => b'a' + (x % 26) as u8,
                }
            })
            .collect();
        assert_eq!(by_rows(&data, 4096), by_csv(&data));
    }
}
