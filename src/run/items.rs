//! Work items and their sources (range, list, product, file, csv).
//!
//! A source is loaded once per worker and then asked for item `i` on demand, so a million-item
//! source holds a few flat buffers (the keys in one arena), not a million objects.

use std::path::Path;

use crate::error::{Error, Result};
use crate::run::config::ItemSpec;
use crate::run::seed::item_seed;

/// One work item, as a generator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Position in the item source (0-based), the global order of the merged dataset.
    pub index: u64,
    /// The item's identity (range: the integer; list/file: the line; product: values joined by
    /// `|`; csv: the key column).
    pub key: String,
    /// Per-item seed, a function of (global seed, key) only.
    pub seed: u64,
    /// Named fields (product dimensions or csv columns), in source order; empty otherwise.
    pub fields: Vec<(String, String)>,
}

/// Keys stored back to back in one buffer.
#[derive(Debug, Default)]
struct KeyArena {
    bytes: String,
    ends: Vec<usize>,
}

impl KeyArena {
    fn push(&mut self, key: &str) {
        self.bytes.push_str(key);
        self.ends.push(self.bytes.len());
    }
    fn get(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.bytes[start..self.ends[i]]
    }
    fn len(&self) -> usize {
        self.ends.len()
    }
    /// The first pair of positions holding equal keys, if any.
    fn first_duplicate(&self) -> Option<(usize, usize)> {
        let mut order: Vec<u32> = (0..self.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| {
            self.get(a as usize)
                .cmp(self.get(b as usize))
                .then(a.cmp(&b))
        });
        order
            .windows(2)
            .filter(|w| self.get(w[0] as usize) == self.get(w[1] as usize))
            .map(|w| (w[0] as usize, w[1] as usize))
            .min()
    }
}

#[derive(Debug)]
enum Source {
    Range {
        start: i64,
        len: u64,
    },
    List(Vec<String>),
    Product {
        dims: Vec<(String, Vec<String>)>,
        len: u64,
    },
    Lines(KeyArena),
    Csv(CsvItems),
}

#[derive(Debug)]
struct CsvItems {
    columns: Vec<String>,
    data: Vec<u8>,
    record_starts: Vec<u64>,
    keys: KeyArena,
}

/// A loaded item source.
#[derive(Debug)]
pub struct ItemSource {
    source: Source,
    global_seed: u64,
    content_hash: String,
}

impl ItemSource {
    /// Loads and checks the source (duplicate keys, unreadable or malformed files: exit 2).
    pub fn load(spec: &ItemSpec, global_seed: u64) -> Result<ItemSource> {
        let mut hasher = blake3::Hasher::new();
        let source = match spec {
            ItemSpec::Range { start, end } => {
                hasher.update(format!("range\0{start}\0{end}").as_bytes());
                Source::Range {
                    start: *start,
                    len: end.abs_diff(*start),
                }
            }
            ItemSpec::List(keys) => {
                hasher.update(b"list\0");
                let mut arena = KeyArena::default();
                for k in keys {
                    hasher.update(k.as_bytes()).update(b"\0");
                    arena.push(k);
                }
                if let Some((a, b)) = arena.first_duplicate() {
                    return Err(Error::usage(format!(
                        "items.list: duplicate key {:?} at positions {a} and {b} (0-based); every item needs its own key",
                        keys[a]
                    )));
                }
                Source::List(keys.clone())
            }
            ItemSpec::Product(dims) => {
                hasher.update(b"product\0");
                let mut len: u64 = 1;
                for (name, values) in dims {
                    hasher.update(name.as_bytes()).update(b"\0");
                    for v in values {
                        hasher.update(v.as_bytes()).update(b"\0");
                    }
                    hasher.update(b"\x01");
                    len = len
                        .checked_mul(values.len() as u64)
                        .filter(|&n| n <= crate::run::config::MAX_ITEMS)
                        .ok_or_else(|| {
                            Error::usage(format!(
                                "items.product: more than {} items (the limit of a source; \
                                 README, Limits)",
                                crate::run::config::MAX_ITEMS
                            ))
                        })?;
                }
                Source::Product {
                    dims: dims.clone(),
                    len,
                }
            }
            ItemSpec::File(path) => {
                let data = read_input(path, "items.file")?;
                hasher.update(b"file\0").update(&data);
                Source::Lines(load_lines(path, &data)?)
            }
            ItemSpec::Csv { path, key } => {
                let data = read_input(path, "items.csv.path")?;
                hasher
                    .update(b"csv\0")
                    .update(key.as_bytes())
                    .update(b"\0")
                    .update(&data);
                Source::Csv(load_csv(path, data, key)?)
            }
        };
        Ok(ItemSource {
            source,
            global_seed,
            content_hash: hasher.finalize().to_hex()[..16].to_string(),
        })
    }

    /// Number of items.
    pub fn len(&self) -> u64 {
        match &self.source {
            Source::Range { len, .. } | Source::Product { len, .. } => *len,
            Source::List(v) => v.len() as u64,
            Source::Lines(a) => a.len() as u64,
            Source::Csv(c) => c.keys.len() as u64,
        }
    }

    /// True when the source holds no item.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A short hash of the source's contents (part of the shard fingerprint).
    pub fn content_hash(&self) -> &str {
        &self.content_hash
    }

    /// The key of item `index` (cheaper than [`ItemSource::item`]).
    pub fn key(&self, index: u64) -> String {
        match &self.source {
            Source::Range { start, .. } => (i128::from(*start) + i128::from(index)).to_string(),
            Source::List(v) => v[index as usize].clone(),
            Source::Product { dims, .. } => product_values(dims, index).join("|"),
            Source::Lines(a) => a.get(index as usize).to_string(),
            Source::Csv(c) => c.keys.get(index as usize).to_string(),
        }
    }

    /// Item `index` (`index < len()`), with its seed and fields.
    pub fn item(&self, index: u64) -> Item {
        let (key, fields) = match &self.source {
            Source::Product { dims, .. } => {
                let values = product_values(dims, index);
                let key = values.join("|");
                let fields = dims.iter().map(|(n, _)| n.clone()).zip(values).collect();
                (key, fields)
            }
            Source::Csv(c) => (c.keys.get(index as usize).to_string(), c.fields(index)),
            _ => (self.key(index), Vec::new()),
        };
        Item {
            index,
            seed: item_seed(self.global_seed, &key),
            key,
            fields,
        }
    }

    /// Field names available as `{<field>}` placeholders.
    pub fn field_names(&self) -> Vec<String> {
        match &self.source {
            Source::Product { dims, .. } => dims.iter().map(|(n, _)| n.clone()).collect(),
            Source::Csv(c) => c.columns.clone(),
            _ => Vec::new(),
        }
    }
}

fn product_values(dims: &[(String, Vec<String>)], mut index: u64) -> Vec<String> {
    let mut values = vec![String::new(); dims.len()];
    for (slot, (_, vals)) in values.iter_mut().zip(dims).rev() {
        let n = vals.len() as u64;
        *slot = vals[(index % n) as usize].clone();
        index /= n;
    }
    values
}

fn read_input(path: &Path, key: &str) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| Error::usage(format!("{key}: cannot read {}: {e}", path.display())))
}

fn load_lines(path: &Path, data: &[u8]) -> Result<KeyArena> {
    let mut arena = KeyArena::default();
    let mut line_of = Vec::new();
    for (n, line) in data.split(|&b| b == b'\n').enumerate() {
        let text = std::str::from_utf8(line).map_err(|e| {
            Error::usage(format!(
                "{}:{}: the line is not valid UTF-8 (byte {}); item files must be UTF-8 text",
                path.display(),
                n + 1,
                e.valid_up_to() + 1
            ))
        })?;
        let key = text.trim();
        if !key.is_empty() {
            arena.push(key);
            line_of.push(n + 1);
        }
    }
    if let Some((a, b)) = arena.first_duplicate() {
        return Err(Error::usage(format!(
            "{}: duplicate key {:?} on lines {} and {}; every item needs its own key",
            path.display(),
            arena.get(a),
            line_of[a],
            line_of[b]
        )));
    }
    Ok(arena)
}

fn load_csv(path: &Path, data: Vec<u8>, key: &str) -> Result<CsvItems> {
    let bad = |msg: String| Error::usage(format!("{}: {msg}", path.display()));
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(&data[..]);
    let columns: Vec<String> = reader
        .headers()
        .map_err(|e| bad(format!("cannot read the header: {e}")))?
        .iter()
        .map(str::to_string)
        .collect();
    let key_col = columns.iter().position(|c| c == key).ok_or_else(|| {
        bad(format!(
            "no column {key:?} (items.csv.key); the header has: {}",
            columns.join(", ")
        ))
    })?;
    let mut keys = KeyArena::default();
    let mut record_starts = Vec::new();
    let mut lines = Vec::new();
    let mut record = csv::StringRecord::new();
    loop {
        let start = reader.position().byte();
        let line = reader.position().line();
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => return Err(bad(csv_error(&e))),
        }
        keys.push(&record[key_col]);
        record_starts.push(start);
        lines.push(line);
    }
    if let Some((a, b)) = keys.first_duplicate() {
        return Err(bad(format!(
            "duplicate key {:?} in column {key:?} on lines {} and {}; every item needs its own key",
            keys.get(a),
            lines[a],
            lines[b]
        )));
    }
    Ok(CsvItems {
        columns,
        data,
        record_starts,
        keys,
    })
}

/// A csv error as "line N: what", without the crate's internal wording.
fn csv_error(e: &csv::Error) -> String {
    let line = e.position().map(|p| p.line()).unwrap_or(0);
    match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("line {line}: the row has {len} fields but the header has {expected_len}; every row needs one value per column"),
        csv::ErrorKind::Utf8 { .. } => format!("line {line}: the row is not valid UTF-8; CSV item files must be UTF-8 text"),
        _ => format!("line {line}: {e}"),
    }
}

impl CsvItems {
    fn fields(&self, index: u64) -> Vec<(String, String)> {
        let start = self.record_starts[index as usize] as usize;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(&self.data[start..]);
        let mut record = csv::StringRecord::new();
        // The record was parsed successfully at load time, so reading it again cannot fail.
        let _ = reader.read_record(&mut record);
        self.columns
            .iter()
            .cloned()
            .zip(record.iter().map(str::to_string))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn keys(src: &ItemSource) -> Vec<String> {
        (0..src.len()).map(|i| src.item(i).key).collect()
    }

    #[test]
    fn range_keys_are_the_integers() {
        let s = ItemSource::load(&ItemSpec::Range { start: -2, end: 2 }, 1).unwrap();
        assert_eq!(keys(&s), ["-2", "-1", "0", "1"]);
        assert_eq!(s.item(2).index, 2);
        assert!(ItemSource::load(&ItemSpec::Range { start: 5, end: 5 }, 1)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn product_varies_the_last_field_fastest() {
        let spec = ItemSpec::Product(vec![
            ("t".into(), vec!["A".into(), "B".into()]),
            ("d".into(), vec!["1".into(), "2".into(), "3".into()]),
        ]);
        let s = ItemSource::load(&spec, 0).unwrap();
        assert_eq!(keys(&s), ["A|1", "A|2", "A|3", "B|1", "B|2", "B|3"]);
        assert_eq!(
            s.item(4).fields,
            vec![("t".into(), "B".into()), ("d".into(), "2".into())]
        );
    }

    #[test]
    fn seeds_depend_on_key_not_position() {
        let a = ItemSource::load(&ItemSpec::List(vec!["x".into(), "y".into()]), 9).unwrap();
        let b = ItemSource::load(&ItemSpec::List(vec!["y".into(), "x".into()]), 9).unwrap();
        assert_eq!(a.item(0).seed, b.item(1).seed);
    }

    #[test]
    fn list_duplicates_name_both_positions() {
        let e = ItemSource::load(&ItemSpec::List(vec!["a".into(), "b".into(), "a".into()]), 0)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"a\"") && e.contains("positions 0 and 2"),
            "{e}"
        );
    }

    fn temp_file(contents: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(contents).unwrap();
        f
    }

    #[test]
    fn file_source_skips_blank_lines_and_trims() {
        let f = temp_file(b"AAPL\n\n  MSFT \r\nNVDA");
        let s = ItemSource::load(&ItemSpec::File(f.path().into()), 0).unwrap();
        assert_eq!(keys(&s), ["AAPL", "MSFT", "NVDA"]);
    }

    #[test]
    fn file_duplicates_name_both_lines() {
        let f = temp_file(b"a\nb\n\na\n");
        let e = ItemSource::load(&ItemSpec::File(f.path().into()), 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("lines 1 and 4"), "{e}");
    }

    #[test]
    fn file_with_invalid_utf8_names_the_line() {
        let f = temp_file(b"ok\nbad\xff\n");
        let e = ItemSource::load(&ItemSpec::File(f.path().into()), 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains(":2:") && e.contains("UTF-8"), "{e}");
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let e = ItemSource::load(&ItemSpec::File("/nonexistent/items.txt".into()), 0)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("items.file") && e.contains("/nonexistent/items.txt"),
            "{e}"
        );
    }

    #[test]
    fn csv_items_carry_every_column_as_a_field() {
        let f = temp_file(b"id,text\ns1,\"hello, world\"\ns2,\"two\nlines\"\n");
        let spec = ItemSpec::Csv {
            path: f.path().into(),
            key: "id".into(),
        };
        let s = ItemSource::load(&spec, 0).unwrap();
        assert_eq!(keys(&s), ["s1", "s2"]);
        assert_eq!(
            s.item(1).fields,
            vec![
                ("id".into(), "s2".into()),
                ("text".into(), "two\nlines".into())
            ]
        );
        assert_eq!(s.field_names(), ["id", "text"]);
    }

    #[test]
    fn csv_errors_name_the_problem() {
        let f = temp_file(b"id,text\ns1,a\n");
        let spec = ItemSpec::Csv {
            path: f.path().into(),
            key: "sentence_id".into(),
        };
        let e = ItemSource::load(&spec, 0).unwrap_err().to_string();
        assert!(e.contains("sentence_id") && e.contains("id, text"), "{e}");
        let f = temp_file(b"id,text\ns1,a\ns2\n");
        let spec = ItemSpec::Csv {
            path: f.path().into(),
            key: "id".into(),
        };
        let e = ItemSource::load(&spec, 0).unwrap_err().to_string();
        assert!(e.contains("line 3"), "{e}");
        let f = temp_file(b"id\nx\ny\nx\n");
        let spec = ItemSpec::Csv {
            path: f.path().into(),
            key: "id".into(),
        };
        let e = ItemSource::load(&spec, 0).unwrap_err().to_string();
        assert!(e.contains("lines 2 and 4"), "{e}");
    }

    #[test]
    fn a_million_item_file_loads_in_flat_buffers() {
        let mut text = Vec::new();
        for i in 0..1_000_000 {
            writeln!(text, "item-{i}").unwrap();
        }
        let f = temp_file(&text);
        let s = ItemSource::load(&ItemSpec::File(f.path().into()), 0).unwrap();
        assert_eq!(s.len(), 1_000_000);
        assert_eq!(s.item(999_999).key, "item-999999");
    }
}
