//! The project's one CSV writer: RFC 4180 quoting, `\n` line ends, byte-for-byte stable.
//!
//! Every row that reaches a shard file goes through [`RowWriter`], whether an embedded generator
//! produced it or it was parsed from a command's stdout. Owning the writer (instead of relying on a
//! crate's defaults) is what makes the promise "identical bytes across runs and versions" ours to
//! keep: a field is quoted exactly when it contains a comma, a double quote, `\r` or `\n`, or when
//! it is the only field of a record and empty (so the record is not a blank line).

use std::fmt::{Display, Write as _};

/// Accumulates CSV records for one item (or one header) in memory.
#[derive(Debug, Default)]
pub struct RowWriter {
    buf: Vec<u8>,
    rows: u64,
    fields_in_record: usize,
    scratch: String,
}

impl RowWriter {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one field (raw bytes, quoted if needed) to the current record.
    pub fn field(&mut self, value: &[u8]) {
        if self.fields_in_record > 0 {
            self.buf.push(b',');
        }
        self.fields_in_record += 1;
        if needs_quotes(value) {
            self.buf.push(b'"');
            for &b in value {
                if b == b'"' {
                    self.buf.push(b'"');
                }
                self.buf.push(b);
            }
            self.buf.push(b'"');
        } else {
            self.buf.extend_from_slice(value);
        }
    }

    /// Appends one field from anything printable (numbers, keys) without a heap allocation per
    /// field.
    pub fn field_display(&mut self, value: impl Display) {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        // Writing into a String cannot fail.
        let _ = write!(scratch, "{value}");
        self.field(scratch.as_bytes());
        self.scratch = scratch;
    }

    /// Appends an unsigned integer field. Digits are written directly (never quoted), without
    /// going through `core::fmt`: merge and the embedded generators write millions of them.
    pub fn field_u64(&mut self, value: u64) {
        if self.fields_in_record > 0 {
            self.buf.push(b',');
        }
        self.fields_in_record += 1;
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    /// Ends the current record. A record of a single empty field is written as `""`.
    pub fn end_record(&mut self) {
        if self.fields_in_record == 1 && self.last_record_is_empty() {
            self.buf.extend_from_slice(b"\"\"");
        }
        self.buf.push(b'\n');
        self.rows += 1;
        self.fields_in_record = 0;
    }

    /// Writes a whole record at once.
    pub fn record<I, F>(&mut self, fields: I)
    where
        I: IntoIterator<Item = F>,
        F: AsRef<[u8]>,
    {
        for f in fields {
            self.field(f.as_ref());
        }
        self.end_record();
    }

    /// Number of records written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True when nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The encoded records.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Takes the encoded records and row count out, leaving the writer empty for reuse.
    pub fn take(&mut self) -> (Vec<u8>, u64) {
        let rows = std::mem::replace(&mut self.rows, 0);
        self.fields_in_record = 0;
        (std::mem::take(&mut self.buf), rows)
    }

    /// Discards everything written (a failed attempt's partial output).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.rows = 0;
        self.fields_in_record = 0;
    }

    fn last_record_is_empty(&self) -> bool {
        matches!(self.buf.last(), None | Some(b'\n'))
    }
}

fn needs_quotes(value: &[u8]) -> bool {
    value
        .iter()
        .any(|&b| matches!(b, b',' | b'"' | b'\n' | b'\r'))
}

/// Encodes a header line for `columns`.
pub fn header_line(columns: &[String]) -> Vec<u8> {
    let mut w = RowWriter::new();
    w.record(columns.iter().map(|c| c.as_bytes()));
    w.take().0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(fields: &[&str]) -> String {
        let mut w = RowWriter::new();
        w.record(fields.iter().map(|f| f.as_bytes()));
        String::from_utf8(w.take().0).unwrap()
    }

    #[test]
    fn plain_fields_are_not_quoted() {
        assert_eq!(encode(&["a", "b c", "1.5"]), "a,b c,1.5\n");
    }

    #[test]
    fn special_characters_are_quoted_and_quotes_doubled() {
        assert_eq!(
            encode(&["a,b", "say \"hi\"", "two\nlines", "cr\r"]),
            "\"a,b\",\"say \"\"hi\"\"\",\"two\nlines\",\"cr\r\"\n"
        );
    }

    #[test]
    fn empty_fields_stay_empty_unless_alone() {
        assert_eq!(encode(&["", "x", ""]), ",x,\n");
        assert_eq!(encode(&[""]), "\"\"\n");
    }

    #[test]
    fn non_utf8_bytes_pass_through() {
        let mut w = RowWriter::new();
        w.record([&b"\xff\xfe"[..], b"ok"]);
        assert_eq!(w.take().0, b"\xff\xfe,ok\n");
    }

    #[test]
    fn display_fields_and_row_count() {
        let mut w = RowWriter::new();
        w.field_display(42);
        w.field_u64(0);
        w.field_u64(u64::MAX);
        for v in [7, 10, 99, 100, 101, 12345, 1_000_000, 9_999_999_999] {
            let mut one = RowWriter::new();
            one.field_u64(v);
            assert_eq!(one.as_bytes(), v.to_string().as_bytes());
        }
        w.field_display(format_args!("{:.2}", 1.005f64));
        w.end_record();
        w.record(["x"]);
        assert_eq!(w.rows(), 2);
        assert_eq!(w.as_bytes(), b"42,0,18446744073709551615,1.00\nx\n");
    }
}
