//! `combined.parquet`: the merged CSV rows (already in item order, byte-identical for any shard
//! count or history) read as a stream and written as Parquet, typed by the column types.
//!
//! The rows are read as the merged CSV ([`super::staging::Dataset`]: the finished file, or with
//! contiguous blocks the very byte ranges of the shards it is made of), which keeps one path to
//! the dataset's order and contents (`--append` and `--dedupe-key` included). Rows are buffered one row group at a time,
//! so memory is bounded by the row group, not the dataset; row groups are cut by row count and
//! buffered bytes, which depend on the data only. Writer settings are fixed (no timestamp, a
//! fixed `created_by`), so the same rows give the same bytes.
//!
//! Two threads share the work: this one parses the CSV and the typed values into a row group
//! while a writer thread encodes and compresses the previous one (at most two row groups are
//! held, one on each side). A row group's strings live in one buffer, each value a slice of it,
//! not an allocation of its own.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use parquet::basic::{
    Compression, LogicalType, Repetition, TimeUnit, Type as PhysicalType, ZstdLevel,
};
use parquet::column::writer::ColumnWriter;
use parquet::data_type::ByteArray;
use parquet::file::properties::EnabledStatistics;
use parquet::file::properties::{WriterProperties, WriterVersion};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::Type;

use super::csv_rows::{CsvRows, Fields};
use super::staging::Dataset;
use crate::error::{Error, IoContext, Result};
use crate::run::types::{ColumnType, Value};

/// Rows per row group at most (and at most [`GROUP_BYTES`] of buffered rows, counted with their
/// per-value overhead): large enough for readers to scan fast, small enough to bound the merge's
/// memory.
const GROUP_ROWS: usize = 128 * 1024;
const GROUP_BYTES: usize = 48 << 20;

/// The CSV reader's buffer: large reads, each copied once (the reader reads the files directly).
pub(super) const READ_BUFFER: usize = 1 << 20;

/// The zstd level: zstd's default, a good ratio at a speed close to the copy's.
const ZSTD_LEVEL: i32 = 3;

/// The most dictionary bytes a column chunk holds before its pages are written plain.
const DICTIONARY_BYTES: usize = 64 << 10;

/// Writes `out` (then syncs it) from the CSV rows of `dataset`, whose header is `columns`.
pub(super) fn write_from_csv(
    dataset: &Dataset,
    stop: &AtomicBool,
    out: &Path,
    columns: &[String],
    types: &[ColumnType],
) -> Result<()> {
    let fail = |e: parquet::errors::ParquetError| {
        Error::Refused(format!("cannot write {}: {e}", out.display()))
    };
    let mut reader = CsvRows::new(dataset.reader(stop)?, READ_BUFFER);
    let read_failed =
        |e: std::io::Error| Error::Refused(format!("cannot read {} back: {e}", dataset.describe()));
    // The header line (the columns are known).
    reader.next_record().map_err(read_failed)?;
    let file = crate::store::files::create(out)?;
    let writer = SerializedFileWriter::new(
        BufWriter::with_capacity(1 << 20, file),
        schema(columns, types).map_err(fail)?,
        properties().map_err(fail)?,
    )
    .map_err(fail)?;
    // Full row groups go to the writer thread; empty ones come back to be filled again.
    let (full_tx, full_rx) = crossbeam_channel::bounded::<Group>(0);
    let (empty_tx, empty_rx) = crossbeam_channel::bounded::<Group>(2);
    let writer = std::thread::scope(|scope| -> Result<_> {
        let encoder = scope.spawn(move || -> parquet::errors::Result<_> {
            let mut writer = writer;
            for mut group in full_rx {
                group.write(&mut writer)?;
                let _ = empty_tx.send(group);
            }
            Ok(writer)
        });
        let parsed = (|| -> Result<()> {
            let mut group = Group::new(types);
            let mut row = 0u64;
            loop {
                let more = match reader.next_record().map_err(read_failed)? {
                    Some(fields) => {
                        row += 1;
                        group.push(&fields, columns, row)?;
                        true
                    }
                    None => false,
                };
                let full = group.rows >= GROUP_ROWS || group.bytes >= GROUP_BYTES;
                if full || (!more && group.rows > 0) {
                    group.check_strings(columns, row + 1 - group.rows as u64)?;
                    let next = empty_rx.try_recv().unwrap_or_else(|_| Group::new(types));
                    // A closed channel means the writer stopped on an error, reported below.
                    if full_tx.send(std::mem::replace(&mut group, next)).is_err() {
                        break;
                    }
                }
                if !more {
                    break;
                }
            }
            Ok(())
        })();
        drop(full_tx);
        let encoded = encoder
            .join()
            .unwrap_or_else(|_| Err(parquet::errors::ParquetError::General("panic".into())));
        parsed?;
        encoded.map_err(fail)
    })?;
    let buf = writer.into_inner().map_err(fail)?;
    let file = buf
        .into_inner()
        .map_err(|e| e.into_error())
        .ctx("cannot write", out)?;
    file.sync_all().ctx("cannot sync", out)
}

fn properties() -> parquet::errors::Result<Arc<WriterProperties>> {
    Ok(Arc::new(
        WriterProperties::builder()
            // Fixed, so that the bytes do not change with the library's version string.
            .set_created_by("shardrun".to_string())
            .set_writer_version(WriterVersion::PARQUET_1_0)
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(ZSTD_LEVEL)?))
            // Row groups are cut here, by the data; the writer's own limit must not cut them.
            .set_max_row_group_row_count(None)
            // Min/max per column chunk (what readers prune row groups with), not per page too:
            // page statistics cost a comparison of every value for little use.
            .set_statistics_enabled(EnabledStatistics::Chunk)
            // A column whose dictionary outgrows this in a row group (keys, ids, free text) falls
            // back to plain pages early instead of hashing every value for nothing; columns of
            // a few thousand short values keep theirs. (The default, 1 MiB, made 4,000,000 echo
            // rows 40 % slower and the file 55 % larger.)
            .set_dictionary_page_size_limit(DICTIONARY_BYTES)
            .build(),
    ))
}

fn schema(columns: &[String], types: &[ColumnType]) -> parquet::errors::Result<Arc<Type>> {
    let fields = columns
        .iter()
        .zip(types)
        .map(|(name, ty)| {
            let (physical, logical) = match ty {
                ColumnType::String => (PhysicalType::BYTE_ARRAY, Some(LogicalType::String)),
                ColumnType::Int64 => (PhysicalType::INT64, None),
                ColumnType::Float64 => (PhysicalType::DOUBLE, None),
                ColumnType::Bool => (PhysicalType::BOOLEAN, None),
                ColumnType::Date => (PhysicalType::INT32, Some(LogicalType::Date)),
                ColumnType::Timestamp => (
                    PhysicalType::INT64,
                    Some(LogicalType::timestamp(true, TimeUnit::MICROS)),
                ),
            };
            // A string is never null (an empty field is the empty string); other types read an
            // empty field as null.
            let repetition = if *ty == ColumnType::String {
                Repetition::REQUIRED
            } else {
                Repetition::OPTIONAL
            };
            Type::primitive_type_builder(name, physical)
                .with_repetition(repetition)
                .with_logical_type(logical)
                .build()
                .map(Arc::new)
        })
        .collect::<parquet::errors::Result<Vec<_>>>()?;
    Ok(Arc::new(
        Type::group_type_builder("schema")
            .with_fields(fields)
            .build()?,
    ))
}

/// One column's values of the row group being built; `defs` holds the definition levels of an
/// optional column (1 value, 0 null).
enum Values {
    /// The row group's strings one after the other, and where each ends.
    Str(Vec<u8>, Vec<usize>),
    Int(Vec<i64>, Vec<i16>),
    Float(Vec<f64>, Vec<i16>),
    Bool(Vec<bool>, Vec<i16>),
    Date(Vec<i32>, Vec<i16>),
}

struct Group {
    types: Vec<ColumnType>,
    columns: Vec<Values>,
    rows: usize,
    bytes: usize,
    /// What a buffered row costs besides its bytes: per field, the value's slot (a string is a
    /// separate allocation), so that many short fields are counted too.
    slot_bytes: usize,
}

impl Group {
    fn new(types: &[ColumnType]) -> Self {
        let columns = types
            .iter()
            .map(|t| match t {
                ColumnType::String => Values::Str(Vec::new(), Vec::new()),
                ColumnType::Int64 | ColumnType::Timestamp => Values::Int(Vec::new(), Vec::new()),
                ColumnType::Float64 => Values::Float(Vec::new(), Vec::new()),
                ColumnType::Bool => Values::Bool(Vec::new(), Vec::new()),
                ColumnType::Date => Values::Date(Vec::new(), Vec::new()),
            })
            .collect();
        let slot_bytes = types
            .iter()
            .map(|t| match t {
                ColumnType::String => std::mem::size_of::<ByteArray>() + 8,
                _ => 10,
            })
            .sum();
        Group {
            types: types.to_vec(),
            columns,
            rows: 0,
            bytes: 0,
            slot_bytes,
        }
    }

    /// Adds one CSV record (row `row` of the dataset, for messages).
    fn push(&mut self, record: &Fields<'_>, names: &[String], row: u64) -> Result<()> {
        if record.len() != self.types.len() {
            return Err(Error::Refused(format!(
                "row {row} of the merged dataset has {} fields, expected {}",
                record.len(),
                self.types.len()
            )));
        }
        let mut bytes = 0;
        for (i, field) in record.iter().enumerate() {
            bytes += field.len();
            let ty = self.types[i];
            let value = if ty == ColumnType::String {
                // Checked as UTF-8 once per row group (`check_strings`), not value by value.
                if let Values::Str(buf, ends) = &mut self.columns[i] {
                    buf.extend_from_slice(field);
                    ends.push(buf.len());
                }
                continue;
            } else if field.is_empty() {
                None
            } else if ty == ColumnType::Int64 {
                // Most typed columns are integers: read them from the bytes directly, without the
                // UTF-8 check and `str::parse` (a tenth of the conversion's CPU).
                Some(Value::Int(
                    parse_i64(field).ok_or_else(|| refusal(&names[i], ty, row, field))?,
                ))
            } else {
                // The worker checked every value before committing it; a value that still does
                // not read (a shard written before types were declared) stops the merge.
                Some(
                    ty.parse(field)
                        .ok_or_else(|| refusal(&names[i], ty, row, field))?,
                )
            };
            push_value(&mut self.columns[i], value);
        }
        self.rows += 1;
        self.bytes += bytes + self.slot_bytes;
        Ok(())
    }

    /// Refuses a string that is not UTF-8 (Parquet strings must be). One check of each string
    /// column's whole buffer: a call per value was a twentieth of the conversion's CPU with short
    /// fields. A buffer that is all ASCII holds only valid strings; otherwise each value is
    /// checked, to name the first bad one (`first_row` is the group's first row, for messages).
    fn check_strings(&self, names: &[String], first_row: u64) -> Result<()> {
        for (i, column) in self.columns.iter().enumerate() {
            let Values::Str(buf, ends) = column else {
                continue;
            };
            if buf.is_ascii() {
                continue;
            }
            let mut start = 0;
            for (n, &end) in ends.iter().enumerate() {
                let field = &buf[start..end];
                if std::str::from_utf8(field).is_err() {
                    let row = first_row + n as u64;
                    return Err(refusal(&names[i], ColumnType::String, row, field));
                }
                start = end;
            }
        }
        Ok(())
    }

    fn write(
        &mut self,
        writer: &mut SerializedFileWriter<BufWriter<File>>,
    ) -> parquet::errors::Result<()> {
        let mut rg = writer.next_row_group()?;
        let mut columns = self.columns.iter_mut();
        while let Some(mut col) = rg.next_column()? {
            let Some(values) = columns.next() else {
                break;
            };
            match (col.untyped(), values) {
                (ColumnWriter::ByteArrayColumnWriter(w), Values::Str(buf, ends)) => {
                    let all = bytes::Bytes::from(std::mem::take(buf));
                    let mut start = 0;
                    let values: Vec<ByteArray> = ends
                        .iter()
                        .map(|&end| {
                            let v = ByteArray::from(all.slice(start..end));
                            start = end;
                            v
                        })
                        .collect();
                    w.write_batch(&values, None, None)?;
                    ends.clear();
                }
                (ColumnWriter::Int64ColumnWriter(w), Values::Int(v, d)) => {
                    w.write_batch(v, Some(d), None)?;
                    v.clear();
                    d.clear();
                }
                (ColumnWriter::DoubleColumnWriter(w), Values::Float(v, d)) => {
                    w.write_batch(v, Some(d), None)?;
                    v.clear();
                    d.clear();
                }
                (ColumnWriter::BoolColumnWriter(w), Values::Bool(v, d)) => {
                    w.write_batch(v, Some(d), None)?;
                    v.clear();
                    d.clear();
                }
                (ColumnWriter::Int32ColumnWriter(w), Values::Date(v, d)) => {
                    w.write_batch(v, Some(d), None)?;
                    v.clear();
                    d.clear();
                }
                _ => {
                    return Err(parquet::errors::ParquetError::General(
                        "column writer does not match the column type".into(),
                    ))
                }
            }
            col.close()?;
        }
        rg.close()?;
        self.rows = 0;
        self.bytes = 0;
        Ok(())
    }
}

/// A value the worker did not check: committed under another `output.format` (a string that is
/// not UTF-8) or before the column was typed.
fn refusal(name: &str, ty: ColumnType, row: u64, field: &[u8]) -> Error {
    let shown = String::from_utf8_lossy(&field[..field.len().min(80)]);
    let what = if ty == ColumnType::String {
        "is not UTF-8, which Parquet strings must be; merge with --format csv, or regenerate \
         the items under output.format parquet (which fails such items with the reason)"
            .to_string()
    } else {
        format!(
            "is not a {} value; regenerate the items that made it (they predate the type check)",
            ty.name()
        )
    };
    Error::Refused(format!(
        "row {row} of the merged dataset, column {name:?} ({}): {shown:?} {what}; nothing was changed",
        ty.name()
    ))
}

/// What `i64::from_str` reads, from bytes: an optional sign, then one digit or more; overflow is
/// refused.
fn parse_i64(field: &[u8]) -> Option<i64> {
    let (negative, digits) = match field.split_first()? {
        (b'-', rest) => (true, rest),
        (b'+', rest) => (false, rest),
        _ => (false, field),
    };
    if digits.is_empty() {
        return None;
    }
    let mut n: i64 = 0;
    for &b in digits {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        // Built on the sign's side so that i64::MIN, whose magnitude is not an i64, reads too.
        n = n.checked_mul(10)?;
        n = if negative {
            n.checked_sub(i64::from(d))?
        } else {
            n.checked_add(i64::from(d))?
        };
    }
    Some(n)
}

fn push_value(values: &mut Values, value: Option<Value<'_>>) {
    let def = i16::from(value.is_some());
    match (values, value) {
        (Values::Str(buf, ends), x) => {
            if let Some(Value::Str(s)) = x {
                buf.extend_from_slice(s.as_bytes());
            }
            ends.push(buf.len());
        }
        (Values::Int(v, d), x) => {
            d.push(def);
            if let Some(Value::Int(n) | Value::Micros(n)) = x {
                v.push(n);
            }
        }
        (Values::Float(v, d), x) => {
            d.push(def);
            if let Some(Value::Float(f)) = x {
                v.push(f);
            }
        }
        (Values::Bool(v, d), x) => {
            d.push(def);
            if let Some(Value::Bool(b)) = x {
                v.push(b);
            }
        }
        (Values::Date(v, d), x) => {
            d.push(def);
            if let Some(Value::Date(n)) = x {
                v.push(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_i64, ColumnType, CsvRows, Group};

    /// Strings are checked a row group at a time: valid non-ASCII passes, and the first invalid
    /// value is named by its row and column, also when it sits next to valid multi-byte text.
    #[test]
    fn strings_are_checked_as_utf8_per_group_and_the_first_bad_row_is_named() {
        let names = ["a".to_string(), "b".to_string()];
        let types = [ColumnType::String, ColumnType::String];
        // Pushes the record `a,b` as the merged rows are read.
        let push = |group: &mut Group, a: &[u8], b: &[u8], row: u64| {
            let line = [a, b",", b, b"\n"].concat();
            let mut rows = CsvRows::new(&line[..], 64);
            let fields = rows.next_record().unwrap().unwrap();
            group.push(&fields, &names, row)
        };
        let mut group = Group::new(&types);
        for (row, (a, b)) in [("x", "é"), ("日本", ""), ("", "ok")].iter().enumerate() {
            push(&mut group, a.as_bytes(), b.as_bytes(), 11 + row as u64).unwrap();
        }
        group.check_strings(&names, 11).unwrap();
        // A lead byte at the end of one value and its continuation at the start of the next:
        // the buffer is valid UTF-8 as a whole, each value is not.
        push(&mut group, b"ok", b"\xc3", 14).unwrap();
        push(&mut group, b"ok", b"\xa9", 15).unwrap();
        let e = group.check_strings(&names, 11).unwrap_err().to_string();
        assert!(
            e.contains("row 14 of the merged dataset, column \"b\""),
            "{e}"
        );
    }

    /// The byte reader takes exactly what the worker's check (`str::parse::<i64>`) takes.
    #[test]
    fn parse_i64_matches_str_parse() {
        let cases = [
            "0",
            "-0",
            "+0",
            "7",
            "-7",
            "+7",
            "",
            "-",
            "+",
            "--1",
            "+-1",
            "1-",
            " 1",
            "1 ",
            "1_0",
            "12a",
            "0x10",
            "007",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775808",
            "-9223372036854775809",
            "+9223372036854775807",
            "99999999999999999999",
            "١",
            "1.0",
            "1e3",
        ];
        for case in cases {
            assert_eq!(
                parse_i64(case.as_bytes()),
                case.parse::<i64>().ok(),
                "{case:?}"
            );
        }
        assert_eq!(parse_i64(b"\xff1"), None);
    }
}
