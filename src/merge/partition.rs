//! `merge --partition-by COLUMN`: the merged dataset split into one Hive-style directory per
//! value of a column, `COLUMN=value/part-00000.csv` and/or `.parquet`, the rows of each in item
//! order.
//!
//! Like the Parquet file, the partitions are made from the finished CSV temporary file (so
//! `--dedupe-key` applies to the whole dataset first), read as a stream: each row is appended to
//! its partition's CSV file through at most [`OPEN_WRITERS`] open, buffered files (the least
//! recently used is flushed and closed when another is needed), then each partition's Parquet
//! file is made from its CSV file, one partition at a time. Memory and descriptors are bounded
//! whatever the number of partitions; that number is capped at [`MAX_PARTITIONS`] (a clear
//! refusal beyond), since every partition is a directory and a line of `stats.json`.
//!
//! The whole tree is built in a temporary directory, every file and directory synced, then put
//! in place by one atomic exchange with the previous tree ([`install`]): a crash leaves the old
//! tree or the new one.
//!
//! Directory names are never a raw value ([`segment`]): bytes that are unsafe or ambiguous in a
//! path are percent-encoded as Hive and PyArrow write them (PyArrow and DuckDB decode them), the
//! empty value is Hive's `__HIVE_DEFAULT_PARTITION__` (read back as null), and a long value is
//! cut and ends with `~` and a hash of the whole value, so names stay under the file-name limit
//! and distinct values always get distinct directories. Every file keeps the partition column
//! with its exact value.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use serde::Serialize;

use super::staging::Dataset;
use super::sync_dir;
use crate::error::{Error, IoContext, Result};
use crate::format::csv_out::{header_line, RowWriter};
use crate::run::config::OutputFormat;
use crate::run::types::ColumnType;

/// Most partitions one merge writes; beyond, the merge is refused (nothing changed).
pub const MAX_PARTITIONS: usize = 100_000;
/// Partition files open at once while the rows are routed (64 KiB of buffer each).
const OPEN_WRITERS: usize = 64;
const WRITER_BUFFER: usize = 64 << 10;
/// The directory of the empty value (Hive's name for a null partition).
pub const EMPTY_VALUE: &str = "__HIVE_DEFAULT_PARTITION__";
/// Encoded values longer than this are cut to at most [`KEPT_PREFIX`] bytes, then `~` and a
/// 32-digit hash: with the column name (at most [`MAX_COLUMN_NAME`] encoded bytes) a directory
/// name stays under 255 bytes, the usual file-name limit.
const MAX_VALUE_NAME: usize = 128;
const KEPT_PREFIX: usize = 96;
const MAX_COLUMN_NAME: usize = 100;
/// How much of a value `stats.json` shows.
const SHOWN_VALUE: usize = 200;
/// The file name in each partition directory (one file per format).
pub const PART_STEM: &str = "part-00000";

/// What `stats.json` says about the partitions.
#[derive(Debug, Serialize)]
pub struct Partitioned {
    /// The column the dataset is partitioned by.
    pub column: String,
    /// One entry per partition, by directory name.
    pub partitions: Vec<PartitionCount>,
}

/// One partition: its directory, its value and its rows.
#[derive(Debug, Serialize)]
pub struct PartitionCount {
    pub directory: String,
    /// The value (lossy UTF-8; cut to 200 bytes when `value_cut`).
    pub value: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub value_cut: bool,
    pub rows: u64,
}

/// The directory name part for `value` (without the `COLUMN=`): see the module doc.
pub fn segment(value: &[u8]) -> String {
    if value.is_empty() {
        return EMPTY_VALUE.to_string();
    }
    let mut out = String::with_capacity(value.len());
    // Where the name may be cut: after a whole character or a whole %XX.
    let mut cut = 0;
    fn unit(out: &str, cut: &mut usize) {
        if out.len() <= KEPT_PREFIX {
            *cut = out.len();
        }
    }
    // No name holds "..", even after its `COLUMN=` prefix (where it would be harmless), so that
    // no tool or reader has to wonder: the dots of "." and of a value with two in a row are
    // encoded.
    let dots = value == b"." || value.windows(2).any(|w| w == b"..");
    let mut rest = value;
    while !rest.is_empty() {
        let (good, bad) = match std::str::from_utf8(rest) {
            Ok(s) => (s, &[][..]),
            Err(e) => {
                let (g, b) = rest.split_at(e.valid_up_to());
                (std::str::from_utf8(g).unwrap_or_default(), b)
            }
        };
        for c in good.chars() {
            if c.is_ascii() && (must_encode(c as u8) || (dots && c == '.')) {
                push_pct(&mut out, c as u8);
            } else {
                out.push(c);
            }
            unit(&out, &mut cut);
        }
        // Bytes that are not UTF-8 (a `string` value under the format csv) are encoded one by one.
        let n = match std::str::from_utf8(bad) {
            Ok(_) => bad.len(),
            Err(e) => e.error_len().unwrap_or(bad.len()),
        };
        for &b in &bad[..n] {
            push_pct(&mut out, b);
            unit(&out, &mut cut);
        }
        rest = &bad[n..];
    }
    if out == EMPTY_VALUE {
        // A value that spells the placeholder must not share the empty value's directory.
        out.replace_range(..1, "%5F");
    }
    if out.len() > MAX_VALUE_NAME {
        out.truncate(cut);
        out.push('~');
        out.push_str(&blake3::hash(value).to_hex()[..32]);
    }
    out
}

/// Bytes never left raw in a name: control characters, the path separators, the characters
/// Hive escapes, `%` (so decoding is exact) and `~` (which marks a cut value).
fn must_encode(b: u8) -> bool {
    b < 0x20 || b == 0x7f || br##""#%'*/:=?\{}[]^~<>|"##.contains(&b)
}

fn push_pct(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[usize::from(b >> 4)] as char);
    out.push(HEX[usize::from(b & 15)] as char);
}

/// The `COLUMN=` part of every directory name; a column name too long for a path is refused.
pub fn column_prefix(column: &str) -> Result<String> {
    let enc = segment(column.as_bytes());
    if enc.len() > MAX_COLUMN_NAME || enc.contains('~') {
        return Err(Error::usage(format!(
            "--partition-by {column:?}: the column name is too long to name directories \
             (at most {MAX_COLUMN_NAME} bytes once encoded); partition by a shorter column name"
        )));
    }
    Ok(format!("{enc}="))
}

/// One partition while the rows are routed.
struct Part {
    dir: String,
    value: String,
    value_cut: bool,
    rows: u64,
    /// Its slot in the open writers, if open.
    slot: Option<usize>,
}

/// An open partition file and when it was last written (for the least-recently-used choice).
struct Open {
    part: usize,
    writer: BufWriter<File>,
    used: u64,
}

/// Writes the partitioned dataset into `tree` (a new directory) from the merged CSV rows of
/// `dataset`, then syncs it all.
pub(super) fn write(
    dataset: &Dataset,
    stop: &AtomicBool,
    tree: &Path,
    column: usize,
    format: OutputFormat,
    columns: &[String],
    types: &[ColumnType],
) -> Result<Partitioned> {
    let prefix = column_prefix(&columns[column])?;
    // A tree made before from a copy that was then not kept.
    match std::fs::remove_dir_all(tree) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).ctx("cannot remove", tree);
        }
        _ => {}
    }
    crate::store::files::create_dir_all(tree).ctx("cannot create", tree)?;
    let header = header_line(columns);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .buffer_capacity(super::parquet::READ_BUFFER)
        .from_reader(dataset.reader(stop)?);
    let mut parts: Vec<Part> = Vec::new();
    let mut by_dir: HashMap<String, usize> = HashMap::new();
    let mut open: Vec<Open> = Vec::new();
    let mut record = csv::ByteRecord::new();
    let mut row = RowWriter::new();
    let mut clock = 0u64;
    while reader
        .read_byte_record(&mut record)
        .map_err(|e| Error::Refused(format!("cannot read {} back: {e}", dataset.describe())))?
    {
        let value = record.get(column).unwrap_or_default();
        let dir = format!("{prefix}{}", segment(value));
        let p = match by_dir.get(&dir) {
            Some(&p) => p,
            None => {
                if parts.len() >= MAX_PARTITIONS {
                    return Err(too_many(&columns[column]));
                }
                let shown = String::from_utf8_lossy(value);
                let mut end = shown.len().min(SHOWN_VALUE);
                while !shown.is_char_boundary(end) {
                    end -= 1;
                }
                by_dir.insert(dir.clone(), parts.len());
                parts.push(Part {
                    dir,
                    value: shown[..end].to_string(),
                    value_cut: end < shown.len(),
                    rows: 0,
                    slot: None,
                });
                parts.len() - 1
            }
        };
        clock += 1;
        let slot = writer_for(tree, &mut parts, &mut open, p, &header, clock)?;
        row.clear();
        row.record(record.iter());
        let path = || part_file(tree, &parts[p].dir, "csv");
        open[slot]
            .writer
            .write_all(row.as_bytes())
            .ctx("cannot write", &path())?;
        parts[p].rows += 1;
    }
    for o in open.drain(..) {
        let path = part_file(tree, &parts[o.part].dir, "csv");
        o.writer
            .into_inner()
            .map_err(|e| e.into_error())
            .ctx("cannot write", &path)?;
    }
    for p in &parts {
        finish_part(tree, &p.dir, format, columns, types)?;
    }
    sync_dir(tree)?;
    parts.sort_by(|a, b| a.dir.cmp(&b.dir));
    Ok(Partitioned {
        column: columns[column].clone(),
        partitions: parts
            .into_iter()
            .map(|p| PartitionCount {
                directory: p.dir,
                value: p.value,
                value_cut: p.value_cut,
                rows: p.rows,
            })
            .collect(),
    })
}

fn too_many(column: &str) -> Error {
    Error::Refused(format!(
        "--partition-by {column:?}: the column has more than {MAX_PARTITIONS} distinct values, \
         the most partitions merge writes (each is a directory); nothing was changed. Partition \
         by a column with fewer values, or merge without --partition-by"
    ))
}

fn part_file(tree: &Path, dir: &str, ext: &str) -> PathBuf {
    tree.join(dir).join(format!("{PART_STEM}.{ext}"))
}

/// The open writer of partition `p` (opening it, and closing the least recently used one, as
/// needed): a new partition's file is created with the header, a known one reopened to append.
fn writer_for(
    tree: &Path,
    parts: &mut [Part],
    open: &mut Vec<Open>,
    p: usize,
    header: &[u8],
    clock: u64,
) -> Result<usize> {
    if let Some(s) = parts[p].slot {
        open[s].used = clock;
        return Ok(s);
    }
    if open.len() >= OPEN_WRITERS {
        let (s, _) = open
            .iter()
            .enumerate()
            .min_by_key(|(_, o)| o.used)
            .unwrap_or((0, &open[0]));
        let old = open.swap_remove(s);
        let path = part_file(tree, &parts[old.part].dir, "csv");
        parts[old.part].slot = None;
        old.writer
            .into_inner()
            .map_err(|e| e.into_error())
            .ctx("cannot write", &path)?;
        // swap_remove moved the last writer into slot s.
        if let Some(moved) = open.get(s) {
            parts[moved.part].slot = Some(s);
        }
    }
    let path = part_file(tree, &parts[p].dir, "csv");
    let file = if parts[p].rows == 0 {
        let dir = tree.join(&parts[p].dir);
        std::fs::create_dir(&dir).ctx("cannot create", &dir)?;
        let mut f = crate::store::files::create(&path)?;
        f.write_all(header).ctx("cannot write", &path)?;
        f
    } else {
        crate::store::files::open(
            crate::store::files::options().append(true),
            &path,
            "cannot open",
        )?
    };
    open.push(Open {
        part: p,
        writer: BufWriter::with_capacity(WRITER_BUFFER, file),
        used: clock,
    });
    parts[p].slot = Some(open.len() - 1);
    Ok(open.len() - 1)
}

/// Makes a partition's Parquet file from its CSV file (format `parquet` or `both`), removes the
/// CSV file with the format `parquet`, and syncs what stays.
fn finish_part(
    tree: &Path,
    dir: &str,
    format: OutputFormat,
    columns: &[String],
    types: &[ColumnType],
) -> Result<()> {
    let csv = part_file(tree, dir, "csv");
    if format != OutputFormat::Csv {
        super::parquet::write_from_csv(
            &Dataset::File(csv.clone()),
            &AtomicBool::new(false),
            &part_file(tree, dir, "parquet"),
            columns,
            types,
        )?;
    }
    if format == OutputFormat::Parquet {
        std::fs::remove_file(&csv).ctx("cannot remove", &csv)?;
    } else {
        File::open(&csv)
            .and_then(|f| f.sync_all())
            .ctx("cannot sync", &csv)?;
    }
    sync_dir(&tree.join(dir))
}

/// Puts the finished tree `tmp` in place at `dest`: renamed if `dest` does not exist, else
/// exchanged with it atomically (Linux `renameat2`), the old tree then removed from `tmp`'s
/// name. Where the exchange is not supported, `dest` is moved to `old` first: a crash between
/// the two renames leaves no tree (and the shards, so the next merge writes it again).
pub(super) fn install(tmp: &Path, dest: &Path, old: &Path, data_dir: &Path) -> Result<()> {
    if std::fs::symlink_metadata(dest).is_err() {
        std::fs::rename(tmp, dest).ctx("cannot rename", tmp)?;
        return sync_dir(data_dir);
    }
    let leftover = if exchange(tmp, dest).ctx("cannot replace", dest)? {
        tmp
    } else {
        std::fs::rename(dest, old).ctx("cannot rename", dest)?;
        std::fs::rename(tmp, dest).ctx("cannot rename", tmp)?;
        old
    };
    sync_dir(data_dir)?;
    std::fs::remove_dir_all(leftover).ctx("cannot remove", leftover)?;
    sync_dir(data_dir)
}

/// Swaps two paths atomically; `Ok(false)` when the system or file system cannot.
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<bool> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let a = CString::new(a.as_os_str().as_bytes())?;
    let b = CString::new(b.as_os_str().as_bytes())?;
    const RENAME_EXCHANGE: libc::c_uint = 2;
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => Ok(false),
        _ => Err(e),
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> std::io::Result<bool> {
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_values_get_safe_distinct_names() {
        let long = "x".repeat(500);
        let long2 = format!("{}y", "x".repeat(499));
        let values: Vec<&[u8]> = vec![
            b"../x",
            b"a/b",
            b"",
            b".",
            b"..",
            b"...",
            b"a..b",
            b"a=b",
            b"50%",
            b"%25",
            b"caf\xc3\xa9",
            b"\xff\xfe",
            b"~",
            b"__HIVE_DEFAULT_PARTITION__",
            b"line\nbreak",
            long.as_bytes(),
            long2.as_bytes(),
            b"plain",
        ];
        let names: Vec<String> = values.iter().map(|v| segment(v)).collect();
        for (v, n) in values.iter().zip(&names) {
            assert!(!n.is_empty() && n.len() <= MAX_VALUE_NAME + 33, "{n}");
            assert!(
                !n.contains('/') && !n.contains("..") && n != ".",
                "{v:?} -> {n}"
            );
            assert!(!n.bytes().any(|b| b < 0x20), "{n}");
        }
        let mut uniq = names.clone();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), names.len(), "{names:?}");
        assert_eq!(segment(b""), EMPTY_VALUE);
        assert_eq!(segment(b"a/b"), "a%2Fb");
        assert_eq!(segment(b"..").as_str(), "%2E%2E");
        assert_eq!(segment("café".as_bytes()), "café");
        assert_eq!(segment(b"50%"), "50%25");
        assert!(segment(long.as_bytes()).starts_with(&"x".repeat(KEPT_PREFIX)));
    }

    #[test]
    fn a_cut_never_splits_an_escape_or_a_character() {
        let v = "é/".repeat(100);
        let n = segment(v.as_bytes());
        let (head, hash) = n.rsplit_once('~').unwrap();
        assert_eq!(hash.len(), 32);
        assert!(head.len() <= KEPT_PREFIX);
        assert!(head.ends_with("%2F") || head.ends_with('é'), "{head}");
    }
}
