//! Column types: what `output.columns` may declare, how a CSV field is read as each type, and the
//! check of an item's finished rows against them (run by the worker before it commits the item,
//! so that merge never meets a value that does not parse as its column's type).
//!
//! The CSV bytes are never changed by types; a type only says how a field is read (by the
//! Parquet writer, and by the check). An empty field is null for every type but `string`.

use serde::{Deserialize, Serialize};

use crate::error::Reason;

/// The type of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    /// Any bytes, passed through (UTF-8 when the output is Parquet); an empty field is the empty
    /// string (never null).
    #[default]
    String,
    /// A decimal integer from -2^63 to 2^63-1: optional sign, ASCII digits.
    Int64,
    /// A 64-bit float: the decimal syntax of Rust's `f64` parser, or `inf` / `nan`.
    Float64,
    /// `true`, `false` (any case), `1` or `0`.
    Bool,
    /// A calendar date `YYYY-MM-DD`.
    Date,
    /// `YYYY-MM-DDTHH:MM:SS` (or a space for `T`), up to 6 fraction digits, then `Z`, an offset
    /// `+HH:MM` / `-HH:MM`, or nothing (UTC).
    Timestamp,
}

/// The spellings `output.columns` accepts, for messages.
pub const TYPE_NAMES: &str = "string, int64, float64, bool, date, timestamp";

impl ColumnType {
    /// The config spelling.
    pub fn name(self) -> &'static str {
        match self {
            ColumnType::String => "string",
            ColumnType::Int64 => "int64",
            ColumnType::Float64 => "float64",
            ColumnType::Bool => "bool",
            ColumnType::Date => "date",
            ColumnType::Timestamp => "timestamp",
        }
    }

    /// Parses a config spelling.
    pub fn from_name(s: &str) -> Option<ColumnType> {
        [
            ColumnType::String,
            ColumnType::Int64,
            ColumnType::Float64,
            ColumnType::Bool,
            ColumnType::Date,
            ColumnType::Timestamp,
        ]
        .into_iter()
        .find(|t| t.name() == s)
    }

    /// What a value of this type looks like, for messages.
    fn expected(self) -> &'static str {
        match self {
            ColumnType::String => "UTF-8 text, which Parquet strings must be",
            ColumnType::Int64 => "a whole number from -9223372036854775808 to 9223372036854775807",
            ColumnType::Float64 => "a number such as -1.5, 2e-3, inf or nan",
            ColumnType::Bool => "true, false, 1 or 0",
            ColumnType::Date => "a date YYYY-MM-DD",
            ColumnType::Timestamp => {
                "a timestamp YYYY-MM-DDTHH:MM:SS[.ffffff][Z|+HH:MM] (no offset: UTC)"
            }
        }
    }

    /// Reads a non-empty field; `None` if it is not a value of this type.
    pub fn parse(self, field: &[u8]) -> Option<Value<'_>> {
        let text = std::str::from_utf8(field).ok()?;
        Some(match self {
            ColumnType::String => Value::Str(text),
            ColumnType::Int64 => Value::Int(parse_int(text)?),
            ColumnType::Float64 => Value::Float(parse_float(text)?),
            ColumnType::Bool => Value::Bool(parse_bool(text)?),
            ColumnType::Date => Value::Date(parse_date(text)?),
            ColumnType::Timestamp => Value::Micros(parse_timestamp(text)?),
        })
    }
}

/// A field read as its column's type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Str(&'a str),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// Days since 1970-01-01.
    Date(i32),
    /// Microseconds since 1970-01-01T00:00:00Z.
    Micros(i64),
}

fn parse_int(s: &str) -> Option<i64> {
    // i64's parser also takes a leading '+'; it refuses spaces, underscores and overflow.
    s.parse().ok()
}

fn parse_float(s: &str) -> Option<f64> {
    let x: f64 = s.parse().ok()?;
    // A finite number too large for f64 parses as infinity: refuse it rather than change it.
    if x.is_infinite() && !s.to_ascii_lowercase().contains("inf") {
        return None;
    }
    Some(x)
}

fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" => Some(true),
        "0" => Some(false),
        _ if s.eq_ignore_ascii_case("true") => Some(true),
        _ if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

/// `YYYY-MM-DD`, exactly: chrono alone would also take signs, short fields and longer years.
fn naive_date(s: &str) -> Option<chrono::NaiveDate> {
    let b = s.as_bytes();
    let shape = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && [0, 1, 2, 3, 5, 6, 8, 9]
            .iter()
            .all(|&i| b[i].is_ascii_digit());
    if !shape {
        return None;
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()
}

fn parse_date(s: &str) -> Option<i32> {
    let d = naive_date(s)?;
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
    i32::try_from((d - epoch).num_days()).ok()
}

fn parse_timestamp(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 19 || !(b[10] == b'T' || b[10] == b' ') {
        return None;
    }
    let date = naive_date(&s[..10])?;
    let rest = &s[11..];
    // Split off the offset: `Z`, `±HH:MM`, or none.
    let (clock, offset_secs) = if let Some(c) = rest.strip_suffix('Z') {
        (c, 0)
    } else if rest.len() >= 14 && matches!(rest.as_bytes()[rest.len() - 6], b'+' | b'-') {
        let (c, off) = rest.split_at(rest.len() - 6);
        let ob = off.as_bytes();
        if ob[3] != b':' || ![1, 2, 4, 5].iter().all(|&i| ob[i].is_ascii_digit()) {
            return None;
        }
        let (h, m) = (i64::from(ob[1] - b'0') * 10 + i64::from(ob[2] - b'0'), {
            i64::from(ob[4] - b'0') * 10 + i64::from(ob[5] - b'0')
        });
        if h > 23 || m > 59 {
            return None;
        }
        let secs = (h * 60 + m) * 60;
        (c, if ob[0] == b'-' { -secs } else { secs })
    } else {
        (rest, 0)
    };
    let cb = clock.as_bytes();
    let hms = cb.len() >= 8
        && cb[2] == b':'
        && cb[5] == b':'
        && [0, 1, 3, 4, 6, 7].iter().all(|&i| cb[i].is_ascii_digit());
    if !hms {
        return None;
    }
    let (h, m, sec) = (
        u32::from(cb[0] - b'0') * 10 + u32::from(cb[1] - b'0'),
        u32::from(cb[3] - b'0') * 10 + u32::from(cb[4] - b'0'),
        u32::from(cb[6] - b'0') * 10 + u32::from(cb[7] - b'0'),
    );
    let frac = &cb[8..];
    let micros = match frac {
        [] => 0,
        // Up to microseconds: a finer fraction would be cut by the Parquet value.
        [b'.', digits @ ..]
            if (1..=6).contains(&digits.len()) && digits.iter().all(u8::is_ascii_digit) =>
        {
            let padded = digits.iter().chain(std::iter::repeat(&b'0')).take(6);
            padded.fold(0u32, |v, d| v * 10 + u32::from(d - b'0'))
        }
        _ => return None,
    };
    let time = chrono::NaiveTime::from_hms_micro_opt(h, m, sec, micros)?;
    let utc = date.and_time(time).and_utc().timestamp_micros();
    utc.checked_sub(offset_secs.checked_mul(1_000_000)?)
}

/// Checks an item's rows (CSV as the worker commits them: `types.len()` fields a record) against
/// the column types; `utf8_strings` also requires `string` fields to be UTF-8 (a Parquet output).
/// The error names the column, the row (1-based, within the item) and the value.
pub fn check_rows(
    columns: &[String],
    types: &[ColumnType],
    rows: &[u8],
    utf8_strings: bool,
) -> Result<(), Reason> {
    // Every column a string (the default): nothing to check for a CSV output, and for Parquet,
    // valid UTF-8 as a whole means every field is (the CSV syntax is ASCII). Only a failure
    // needs the per-field parse, for its message.
    if types.iter().all(|t| *t == ColumnType::String)
        && (!utf8_strings || std::str::from_utf8(rows).is_ok())
    {
        return Ok(());
    }
    // A parser costs more to build than an item to check: each thread keeps one.
    thread_local! {
        static PARSER: std::cell::RefCell<(csv_core::Reader, Vec<u8>, Vec<usize>)> =
            std::cell::RefCell::new((csv_core::Reader::new(), vec![0u8; 4096], Vec::new()));
    }
    PARSER.with(|p| {
        let (reader, field_buf, ends) = &mut *p.borrow_mut();
        reader.reset();
        ends.clear();
        ends.resize(types.len().max(1) + 1, 0);
        parse_rows(columns, types, rows, utf8_strings, reader, field_buf, ends)
    })
}

fn parse_rows(
    columns: &[String],
    types: &[ColumnType],
    rows: &[u8],
    utf8_strings: bool,
    reader: &mut csv_core::Reader,
    field_buf: &mut Vec<u8>,
    ends: &mut Vec<usize>,
) -> Result<(), Reason> {
    let (mut input, mut out_len, mut ends_len, mut row) = (rows, 0usize, 0usize, 0u64);
    loop {
        let (res, nin, nout, nend) =
            reader.read_record(input, &mut field_buf[out_len..], &mut ends[ends_len..]);
        input = &input[nin..];
        out_len += nout;
        ends_len += nend;
        match res {
            // All consumed: the next call, with no input, reads the end.
            csv_core::ReadRecordResult::InputEmpty => {}
            csv_core::ReadRecordResult::OutputFull => {
                let n = field_buf.len() * 2;
                field_buf.resize(n, 0);
            }
            csv_core::ReadRecordResult::OutputEndsFull => {
                let n = ends.len() * 2;
                ends.resize(n, 0);
            }
            csv_core::ReadRecordResult::Record => {
                row += 1;
                check_record(
                    columns,
                    types,
                    field_buf,
                    &ends[..ends_len],
                    row,
                    utf8_strings,
                )?;
                out_len = 0;
                ends_len = 0;
            }
            csv_core::ReadRecordResult::End => return Ok(()),
        }
    }
}

fn check_record(
    columns: &[String],
    types: &[ColumnType],
    buf: &[u8],
    ends: &[usize],
    row: u64,
    utf8_strings: bool,
) -> Result<(), Reason> {
    if ends.len() != types.len() {
        return Err(format!(
            "row {row} has {} fields, expected {}",
            ends.len(),
            types.len()
        ));
    }
    let mut start = 0;
    for (i, (&end, ty)) in ends.iter().zip(types).enumerate() {
        let field = &buf[start..end];
        start = end;
        let skip = if *ty == ColumnType::String {
            !utf8_strings
        } else {
            field.is_empty()
        };
        if !skip && ty.parse(field).is_none() {
            return Err(bad_value(columns.get(i), *ty, row, field));
        }
    }
    Ok(())
}

/// The reason an item fails: column, type, row and the value (shortened if long).
fn bad_value(column: Option<&String>, ty: ColumnType, row: u64, field: &[u8]) -> String {
    const SHOWN: usize = 80;
    let text = String::from_utf8_lossy(&field[..field.len().min(SHOWN)]);
    let more = if field.len() > SHOWN {
        format!(" (first {SHOWN} of {} bytes)", field.len())
    } else {
        String::new()
    };
    format!(
        "bad value: column {:?} ({}), row {row}: {text:?}{more} is not {}; an empty field is null",
        column.map(String::as_str).unwrap_or("?"),
        ty.name(),
        ty.expected()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ColumnType as T;

    fn ok(t: T, s: &str) -> Value<'_> {
        t.parse(s.as_bytes())
            .unwrap_or_else(|| panic!("{s:?} should be a {}", t.name()))
    }

    #[test]
    fn ints_take_the_i64_range_only() {
        assert_eq!(ok(T::Int64, "-42"), Value::Int(-42));
        assert_eq!(ok(T::Int64, "+7"), Value::Int(7));
        assert_eq!(ok(T::Int64, "9223372036854775807"), Value::Int(i64::MAX));
        for bad in ["9223372036854775808", "1.0", " 1", "1_000", "0x10", "-"] {
            assert!(T::Int64.parse(bad.as_bytes()).is_none(), "{bad}");
        }
    }

    #[test]
    fn floats_refuse_overflow_and_words() {
        assert_eq!(ok(T::Float64, "2e-3"), Value::Float(0.002));
        assert_eq!(ok(T::Float64, ".5"), Value::Float(0.5));
        assert_eq!(ok(T::Float64, "-inf"), Value::Float(f64::NEG_INFINITY));
        assert!(matches!(ok(T::Float64, "NaN"), Value::Float(x) if x.is_nan()));
        for bad in ["1e400", "abc", "1,5", " 1", "1.5x"] {
            assert!(T::Float64.parse(bad.as_bytes()).is_none(), "{bad}");
        }
    }

    #[test]
    fn bools_dates_and_timestamps() {
        assert_eq!(ok(T::Bool, "TRUE"), Value::Bool(true));
        assert_eq!(ok(T::Bool, "0"), Value::Bool(false));
        assert!(T::Bool.parse(b"yes").is_none());
        assert_eq!(ok(T::Date, "1970-01-02"), Value::Date(1));
        assert_eq!(ok(T::Date, "1969-12-31"), Value::Date(-1));
        for bad in ["2023-02-29", "2023-2-01", "+2023-01-01", "20230101"] {
            assert!(T::Date.parse(bad.as_bytes()).is_none(), "{bad}");
        }
        assert_eq!(
            ok(T::Timestamp, "1970-01-01T00:00:01Z"),
            Value::Micros(1_000_000)
        );
        assert_eq!(
            ok(T::Timestamp, "1970-01-01 00:00:00.5"),
            Value::Micros(500_000)
        );
        assert_eq!(
            ok(T::Timestamp, "1970-01-01T01:00:00+01:00"),
            Value::Micros(0)
        );
        assert_eq!(
            ok(T::Timestamp, "1969-12-31T23:00:00.000001-01:00"),
            Value::Micros(1)
        );
        for bad in [
            "1970-01-01T00:00:00.1234567",
            "1970-01-01T24:00:00",
            "1970-01-01",
            "1970-01-01T00:00",
            "1970-01-01T00:00:00+1:00",
        ] {
            assert!(T::Timestamp.parse(bad.as_bytes()).is_none(), "{bad}");
        }
    }

    #[test]
    fn check_rows_names_column_row_and_value() {
        let cols = ["k", "n"].map(String::from);
        let types = [T::String, T::Int64];
        assert!(check_rows(&cols, &types, b"a,1\n\"b,\"\"\",\nc,-3\n", false).is_ok());
        let e = check_rows(&cols, &types, b"a,1\nb,2\nc,x\"y\n", false).unwrap_err();
        assert!(e.contains("column \"n\" (int64), row 3: \"x\\\"y\""), "{e}");
        let long = format!("a,{}\n", "9".repeat(200));
        let e = check_rows(&cols, &types, long.as_bytes(), false).unwrap_err();
        assert!(e.contains("first 80 of 200 bytes"), "{e}");
    }

    #[test]
    fn string_columns_must_be_utf8_for_parquet_only() {
        let cols = ["k".to_string()];
        assert!(check_rows(&cols, &[T::String], "é\n\"\"\n".as_bytes(), true).is_ok());
        assert!(check_rows(&cols, &[T::String], b"ok\n\xff\n", false).is_ok());
        let e = check_rows(&cols, &[T::String], b"ok\n\xff\n", true).unwrap_err();
        assert!(e.contains("row 2") && e.contains("UTF-8"), "{e}");
    }
}
