//! `--append` with the format `parquet` alone: the existing `combined.parquet` read back as CSV
//! rows, so that the merge appends to it exactly as it appends to `combined.csv`.
//!
//! The file must have the shards' columns, names and types (as this merge would write them);
//! anything else is refused before the merge writes anything. Each value is written as the
//! canonical text of its type, which the column type reads back to the same value: a string as
//! it is, an integer in decimal, a float in Rust's shortest round-trip form (`1e-300`, `inf`,
//! `NaN`), a bool as `true`/`false`, a date as `YYYY-MM-DD`, a timestamp as
//! `YYYY-MM-DDTHH:MM:SS.ffffffZ`, a null as the empty field. The Parquet file made from the
//! appended rows therefore holds the old rows' values unchanged. Rows are read one row group at a
//! time (the library's row iterator), so memory is bounded by a row group.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use parquet::basic::{LogicalType, Type as PhysicalType};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;

use crate::error::{Error, IoContext, Result};
use crate::format::csv_out::{header_line, RowWriter};
use crate::run::types::ColumnType;

/// Writes `csv` (header and rows) from the Parquet file `parquet`, which must have `columns`
/// typed `types`.
pub(super) fn to_csv(
    parquet: &Path,
    csv: &Path,
    columns: &[String],
    types: &[ColumnType],
) -> Result<()> {
    let bad = |e: parquet::errors::ParquetError| {
        Error::Refused(format!(
            "--append: cannot read {}: {e}; nothing was changed. Merge without --append to \
             replace it",
            parquet.display()
        ))
    };
    let file = File::open(parquet).ctx("cannot open", parquet)?;
    let reader = SerializedFileReader::new(file).map_err(bad)?;
    check_schema(parquet, &reader, columns, types)?;
    let out = crate::store::files::create(csv)?;
    let mut out = BufWriter::with_capacity(1 << 20, out);
    out.write_all(&header_line(columns))
        .ctx("cannot write", csv)?;
    let mut row_text = RowWriter::new();
    let mut text = String::new();
    for row in reader.get_row_iter(None).map_err(bad)? {
        let row = row.map_err(bad)?;
        for (_, field) in row.get_column_iter() {
            text.clear();
            canonical(field, &mut text);
            row_text.field(text.as_bytes());
        }
        row_text.end_record();
        if row_text.len() >= 1 << 16 {
            out.write_all(row_text.as_bytes())
                .ctx("cannot write", csv)?;
            row_text.clear();
        }
    }
    out.write_all(row_text.as_bytes())
        .ctx("cannot write", csv)?;
    out.into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .ctx("cannot write", csv)
}

/// The column names and types this merge would write, or a refusal naming the first difference.
fn check_schema(
    path: &Path,
    reader: &SerializedFileReader<File>,
    columns: &[String],
    types: &[ColumnType],
) -> Result<()> {
    let schema = reader.metadata().file_metadata().schema_descr();
    let found: Vec<(String, Option<ColumnType>)> = schema
        .columns()
        .iter()
        .map(|c| {
            let ty = match (c.physical_type(), c.logical_type_ref()) {
                (PhysicalType::BYTE_ARRAY, Some(LogicalType::String)) => Some(ColumnType::String),
                (PhysicalType::INT64, None) => Some(ColumnType::Int64),
                (PhysicalType::DOUBLE, None) => Some(ColumnType::Float64),
                (PhysicalType::BOOLEAN, None) => Some(ColumnType::Bool),
                (PhysicalType::INT32, Some(LogicalType::Date)) => Some(ColumnType::Date),
                (PhysicalType::INT64, Some(LogicalType::Timestamp { .. })) => {
                    Some(ColumnType::Timestamp)
                }
                _ => None,
            };
            (c.name().to_string(), ty)
        })
        .collect();
    let n = found.len().max(columns.len());
    for i in 0..n {
        let have = found.get(i);
        let want = columns.get(i).zip(types.get(i));
        let same =
            matches!((have, want), (Some((hn, Some(ht))), Some((wn, wt))) if hn == wn && ht == wt);
        if !same {
            let show = |c: Option<(&str, Option<ColumnType>)>| match c {
                None => "<none>".to_string(),
                Some((name, ty)) => format!(
                    "{name:?} ({})",
                    ty.map_or("a type shardrun does not write", |t| t.name())
                ),
            };
            return Err(Error::Refused(format!(
                "{}: column {} is {}, the shards' is {}; --append needs the same columns and \
                 types. Nothing was changed; merge without --append to replace it",
                path.display(),
                i + 1,
                show(have.map(|(n, t)| (n.as_str(), *t))),
                show(want.map(|(n, t)| (n.as_str(), Some(*t))))
            )));
        }
    }
    Ok(())
}

/// The text of a value that its column type reads back to the same value (empty: null).
fn canonical(field: &Field, out: &mut String) {
    use std::fmt::Write as _;
    let _ = match field {
        Field::Null => Ok(()),
        Field::Str(s) => {
            out.push_str(s);
            Ok(())
        }
        Field::Long(n) => write!(out, "{n}"),
        // Debug is the shortest text that parses back to the same f64, with an exponent for
        // very large and small magnitudes.
        Field::Double(x) => write!(out, "{x:?}"),
        Field::Bool(b) => write!(out, "{b}"),
        Field::Date(days) => {
            let d = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)
                .and_then(|e| e.checked_add_signed(chrono::Duration::days(i64::from(*days))));
            match d {
                Some(d) => write!(out, "{}", d.format("%Y-%m-%d")),
                None => Ok(()),
            }
        }
        Field::TimestampMicros(us) => match chrono::DateTime::from_timestamp_micros(*us) {
            Some(t) => write!(out, "{}", t.format("%Y-%m-%dT%H:%M:%S%.6fZ")),
            None => Ok(()),
        },
        // check_schema admits only the types above.
        other => write!(out, "{other}"),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_text_reads_back_to_the_same_value() {
        let cases = [
            (Field::Double(1e-300), ColumnType::Float64),
            (Field::Double(-0.0), ColumnType::Float64),
            (Field::Double(f64::INFINITY), ColumnType::Float64),
            (Field::Double(0.1), ColumnType::Float64),
            (Field::Long(i64::MIN), ColumnType::Int64),
            (Field::Date(-719162), ColumnType::Date),
            (Field::Date(2932896), ColumnType::Date),
            (Field::TimestampMicros(-1), ColumnType::Timestamp),
            (
                Field::TimestampMicros(1_700_000_000_123_456),
                ColumnType::Timestamp,
            ),
            (Field::Bool(false), ColumnType::Bool),
        ];
        for (field, ty) in cases {
            let mut s = String::new();
            canonical(&field, &mut s);
            let back = ty.parse(s.as_bytes()).unwrap_or_else(|| panic!("{s}"));
            let same = match (&field, back) {
                (Field::Double(a), crate::run::types::Value::Float(b)) => {
                    a.to_bits() == b.to_bits()
                }
                (Field::Long(a), crate::run::types::Value::Int(b)) => *a == b,
                (Field::Date(a), crate::run::types::Value::Date(b)) => *a == b,
                (Field::TimestampMicros(a), crate::run::types::Value::Micros(b)) => *a == b,
                (Field::Bool(a), crate::run::types::Value::Bool(b)) => *a == b,
                _ => false,
            };
            assert!(same, "{field:?} -> {s}");
        }
        let mut s = String::new();
        canonical(&Field::Double(f64::NAN), &mut s);
        assert!(
            matches!(ColumnType::Float64.parse(s.as_bytes()), Some(crate::run::types::Value::Float(x)) if x.is_nan())
        );
    }
}
