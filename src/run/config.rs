//! The run configuration: the YAML schema (`RawConfig`, unknown keys rejected) and its validated,
//! resolved form (`Config`). Only this module touches the YAML crate.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value as Yaml;

use crate::error::{Error, Invalid, Result};
use crate::run::paths::validate_name;
use crate::run::types::ColumnType;

// ---------------------------------------------------------------------------------------------
// Raw: mirrors the YAML file.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    run: Option<String>,
    seed: Option<u64>,
    shards: Option<u32>,
    sharding: Option<Sharding>,
    items: RawItems,
    generator: RawGenerator,
    #[serde(default)]
    output: RawOutput,
    #[serde(default)]
    cache: RawCache,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawItems {
    range: Option<RawRange>,
    list: Option<Vec<Yaml>>,
    product: Option<serde_yaml_ng::Mapping>,
    file: Option<String>,
    csv: Option<RawCsv>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRange {
    start: i64,
    end: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCsv {
    path: String,
    key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGenerator {
    builtin: Option<String>,
    command: Option<Vec<Yaml>>,
    mode: Option<String>,
    marker: Option<String>,
    params: Option<Yaml>,
    jobs: Option<u32>,
    retries: Option<u32>,
    timeout: Option<Yaml>,
    rate: Option<Yaml>,
    halt: Option<RawHalt>,
    version: Option<Yaml>,
    max_item_bytes: Option<Yaml>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHalt {
    failures: Yaml,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutput {
    /// Each a name (a string column) or `{name: x, type: t}`.
    columns: Option<Vec<Yaml>>,
    format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    enabled: Option<bool>,
    dir: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Resolved.

/// The end-of-item marker line of persistent generators when `generator.marker` is not set: the
/// ASCII record separator.
pub const DEFAULT_MARKER: &str = "\u{1e}";

/// How items are assigned to shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sharding {
    /// Balanced blocks of consecutive items.
    #[default]
    Contiguous,
    /// Shard i holds the items whose index is i modulo the shard count.
    Stride,
}

impl Sharding {
    /// The config spelling.
    pub fn name(self) -> &'static str {
        match self {
            Sharding::Contiguous => "contiguous",
            Sharding::Stride => "stride",
        }
    }
}

/// The item source, with paths resolved against the root.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemSpec {
    /// Integers `start..end`.
    Range { start: i64, end: i64 },
    /// Literal keys.
    List(Vec<String>),
    /// Cartesian product of named value lists, last dimension varying fastest.
    Product(Vec<(String, Vec<String>)>),
    /// One item per non-empty line of a text file.
    File(PathBuf),
    /// One item per row of a CSV file with a header; `key` names the key column.
    Csv { path: PathBuf, key: String },
}

/// What produces the rows.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GeneratorKind {
    /// An embedded generator with its parameters.
    Builtin {
        name: String,
        params: serde_json::Map<String, serde_json::Value>,
    },
    /// A user's program, one process per item attempt.
    Command { argv: Vec<String> },
}

/// Upper bound of `shards` (and every `--num-shards`): a plan of more shards than this is
/// refused up front rather than attempted (launchers hold per-shard state).
pub const MAX_SHARDS: u32 = 100_000;
/// Upper bound of `generator.jobs` (and `--jobs`): threads per worker.
pub const MAX_JOBS: u32 = 1024;
/// Upper bound of `generator.retries`.
pub const MAX_RETRIES: u32 = 100;
/// Upper bound of the number of items of a source.
pub const MAX_ITEMS: u64 = 1 << 40;
/// Upper bound of the items of one shard: a worker keeps a bit per item of its shard and, on a
/// resume with a warm cache, 16 bytes per pending or committed item, so this bounds its memory
/// (under 1 GiB) whatever the source. A larger plan is refused up front: more shards fit it.
pub const MAX_SHARD_ITEMS: u64 = 50_000_000;

/// How a command generator is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// One process per item attempt.
    PerItem,
    /// One long-lived process per slot serves many items.
    Persistent,
}

/// Stop starting items after this many failures.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Halt {
    /// An absolute number of failed items.
    Count(u64),
    /// A percentage of the items this run attempts.
    Percent(f64),
}

/// Generator settings.
#[derive(Debug, Clone, Serialize)]
pub struct GeneratorSpec {
    pub kind: GeneratorKind,
    pub mode: Mode,
    /// End-of-item marker line of persistent generators.
    pub marker: String,
    pub jobs: u32,
    pub retries: u32,
    #[serde(with = "opt_duration")]
    pub timeout: Option<Duration>,
    /// Minimum interval between two item starts (from `rate`).
    #[serde(with = "opt_duration")]
    pub min_start_interval: Option<Duration>,
    pub halt: Option<Halt>,
    pub version: String,
    /// The most output one item of a command generator may write (its stdout, in bytes).
    pub max_item_bytes: u64,
}

/// Cache settings.
#[derive(Debug, Clone, Serialize)]
pub struct CacheSpec {
    pub enabled: bool,
    pub dir: PathBuf,
}

/// Which merged files `merge` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    #[default]
    Csv,
    Parquet,
    Both,
}

impl OutputFormat {
    /// Parses the config / `--format` spelling.
    pub fn from_name(s: &str) -> Option<OutputFormat> {
        match s {
            "csv" => Some(OutputFormat::Csv),
            "parquet" => Some(OutputFormat::Parquet),
            "both" => Some(OutputFormat::Both),
            _ => None,
        }
    }
}

/// A validated configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// The config file as given.
    pub path: PathBuf,
    /// Directory that relative paths resolve against and commands run in.
    pub root: PathBuf,
    pub run: String,
    pub seed: u64,
    pub shards: Option<u32>,
    pub sharding: Sharding,
    pub items: ItemSpec,
    pub generator: GeneratorSpec,
    /// Required for command generators; builtins define their own.
    pub columns: Option<Vec<String>>,
    /// The type of each of `columns` (all `string` unless declared).
    pub types: Vec<ColumnType>,
    /// `output.format`: what merge writes unless its `--format` says otherwise.
    pub format: OutputFormat,
    pub cache: CacheSpec,
}

mod opt_duration {
    use serde::Serializer;
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&format!("{}ms", d.as_millis())),
            None => s.serialize_none(),
        }
    }
}

impl Config {
    /// Reads, parses and validates `path`; relative paths inside resolve against `root`.
    pub fn load(path: &Path, root: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::usage(format!(
                "cannot read the configuration {}: {e}",
                path.display()
            ))
        })?;
        Self::parse(&text, path, root)
    }

    /// Parses and validates YAML text (`path` names it in messages and gives the default run name).
    pub fn parse(text: &str, path: &Path, root: &Path) -> Result<Config> {
        let where_ = path.display();
        check_shape(text).map_err(|e| e.at(&where_))?;
        let raw: RawConfig =
            serde_yaml_ng::from_str(text).map_err(|e| Error::usage(format!("{where_}: {e}")))?;
        resolve(raw, path, root).map_err(|e| e.at(&where_))
    }
}

/// Upper bound of a configuration file's size (long item lists belong in `items.file`).
pub const MAX_CONFIG_BYTES: usize = 16 << 20;
/// Upper bound of the nesting of flow collections (`[`, `{`) in a configuration.
pub const MAX_NESTING: usize = 64;

/// Refuses a configuration too large or too deeply nested before the YAML parser sees it: the
/// parser's time grows with the square of the nesting depth (160 KB of nested `[` took 96 s
/// before it gave up). A light scan: quoted scalars and comments are skipped, and a bracket
/// counts only where a value starts, so `a[b` in a plain scalar is not nesting.
fn check_shape(text: &str) -> Result<(), Invalid> {
    if text.len() > MAX_CONFIG_BYTES {
        return Err(format!(
            "the configuration is {} bytes; at most {MAX_CONFIG_BYTES} are read (put long item \
             lists in items.file)",
            text.len()
        )
        .into());
    }
    let (mut depth, mut line) = (0usize, 1usize);
    // The last byte that is not a blank (a new line counts), and whether a blank came since. In
    // a flow collection a bracket or a quote after one of `: , [ {` starts a value; outside one,
    // anywhere but inside a plain scalar, which runs to the end of its line or a `:`.
    let (mut prev, mut blank, mut plain) = (b'\n', true, false);
    let mut bytes = text.bytes().peekable();
    while let Some(b) = bytes.next() {
        let starts_value = if depth == 0 {
            !plain
        } else {
            matches!(prev, b':' | b',' | b'[' | b'{' | b'?' | b'-')
        };
        match b {
            b' ' | b'\t' | b'\r' => {
                blank = true;
                continue;
            }
            b'\n' => (line, plain) = (line + 1, false),
            b':' => plain = false,
            b'#' if blank => {
                for c in bytes.by_ref() {
                    if c == b'\n' {
                        line += 1;
                        break;
                    }
                }
                (prev, blank, plain) = (b'\n', true, false);
                continue;
            }
            b'"' | b'\'' if starts_value => {
                let mut escaped = false;
                while let Some(c) = bytes.next() {
                    if c == b'\n' {
                        line += 1;
                    }
                    if b == b'"' && c == b'\\' && !escaped {
                        escaped = true;
                        continue;
                    }
                    if c == b && !escaped {
                        // '' inside a single-quoted scalar is an escaped quote.
                        if b == b'\'' && bytes.peek() == Some(&b'\'') {
                            bytes.next();
                            continue;
                        }
                        break;
                    }
                    escaped = false;
                }
                (prev, blank) = (b'"', false);
                continue;
            }
            b'[' | b'{' if starts_value => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(format!(
                        "line {line}: lists and mappings nested deeper than {MAX_NESTING} levels"
                    )
                    .into());
                }
            }
            b']' | b'}' if depth > 0 => depth -= 1,
            b'-' | b'?' | b',' | b']' | b'}' => {}
            _ => plain = depth == 0,
        }
        (prev, blank) = (b, b == b'\n');
    }
    Ok(())
}

fn resolve(raw: RawConfig, path: &Path, root: &Path) -> Result<Config, Invalid> {
    let run = match raw.run {
        Some(r) => r,
        None => path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    validate_name(&run).map_err(|e| e.within("run"))?;
    if raw.shards == Some(0) {
        return Err("shards: must be at least 1".into());
    }
    if raw.shards.is_some_and(|n| n > MAX_SHARDS) {
        return Err(format!("shards: must be 1 to {MAX_SHARDS}").into());
    }
    let items = resolve_items(raw.items, root)?;
    let generator = resolve_generator(raw.generator)?;
    let (columns, types) = match raw.output.columns {
        Some(entries) => {
            let (cols, types) = resolve_columns(&entries)?;
            validate_columns(&cols)?;
            (Some(cols), types)
        }
        None => (None, Vec::new()),
    };
    let format = match raw.output.format.as_deref() {
        None => OutputFormat::default(),
        Some(f) => OutputFormat::from_name(f).ok_or_else(|| {
            format!("output.format: {f:?} is not a format (csv, parquet or both)")
        })?,
    };
    if matches!(generator.kind, GeneratorKind::Command { .. }) && columns.is_none() {
        return Err(
            "output.columns: required for a command generator (the CSV header its rows must match)"
                .into(),
        );
    }
    if matches!(generator.kind, GeneratorKind::Builtin { .. }) && columns.is_some() {
        return Err("output.columns: only for command generators (embedded generators define their own columns)".into());
    }
    let cache = CacheSpec {
        enabled: raw.cache.enabled.unwrap_or(true),
        dir: root.join(raw.cache.dir.as_deref().unwrap_or("data/cache")),
    };
    Ok(Config {
        path: path.to_path_buf(),
        root: root.to_path_buf(),
        run,
        seed: raw.seed.unwrap_or(0),
        shards: raw.shards,
        sharding: raw.sharding.unwrap_or_default(),
        items,
        generator,
        columns,
        types,
        format,
        cache,
    })
}

/// `output.columns` entries: a name, or a mapping `{name: x, type: t}`.
fn resolve_columns(entries: &[Yaml]) -> Result<(Vec<String>, Vec<ColumnType>), Invalid> {
    let mut cols = Vec::with_capacity(entries.len());
    let mut types = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let at = format!("output.columns[{i}]");
        let (name, ty) = match e {
            Yaml::String(s) => (s.clone(), ColumnType::String),
            Yaml::Mapping(m) => {
                if let Some(k) = m
                    .keys()
                    .find(|k| !matches!(k.as_str(), Some("name" | "type")))
                {
                    return Err(format!(
                        "{at}: unknown key {k:?} (a column is a name or {{name: x, type: t}})"
                    )
                    .into());
                }
                let name = m
                    .get("name")
                    .and_then(Yaml::as_str)
                    .ok_or_else(|| format!("{at}: needs `name: <column name>` (a string)"))?;
                let ty = m.get("type").and_then(Yaml::as_str).ok_or_else(|| {
                    format!(
                        "{at}: needs `type:` (one of {})",
                        crate::run::types::TYPE_NAMES
                    )
                })?;
                let ty = ColumnType::from_name(ty).ok_or_else(|| {
                    format!(
                        "{at}: type {ty:?} of column {name:?} is not a type (one of {})",
                        crate::run::types::TYPE_NAMES
                    )
                })?;
                (name.to_string(), ty)
            }
            other => {
                return Err(format!(
                    "{at}: {other:?} is not a column (a name or {{name: x, type: t}})"
                )
                .into())
            }
        };
        cols.push(name);
        types.push(ty);
    }
    Ok((cols, types))
}

fn validate_columns(cols: &[String]) -> Result<(), Invalid> {
    if cols.is_empty() {
        return Err("output.columns: must name at least one column".into());
    }
    for (i, c) in cols.iter().enumerate() {
        if let Some(j) = cols[..i].iter().position(|d| d == c) {
            return Err(format!(
                "output.columns: column {c:?} appears twice (positions {} and {})",
                j + 1,
                i + 1
            )
            .into());
        }
    }
    Ok(())
}

fn resolve_items(raw: RawItems, root: &Path) -> Result<ItemSpec, Invalid> {
    let mut found = Vec::new();
    if let Some(r) = raw.range {
        found.push(("range", {
            if r.end.abs_diff(r.start) > MAX_ITEMS {
                return Err(format!("items.range: more than {MAX_ITEMS} items").into());
            }
            if r.start > r.end {
                return Err(format!(
                    "items.range: start ({}) is greater than end ({}); end is exclusive",
                    r.start, r.end
                )
                .into());
            }
            ItemSpec::Range {
                start: r.start,
                end: r.end,
            }
        }));
    }
    if let Some(list) = raw.list {
        let keys = list
            .iter()
            .enumerate()
            .map(|(i, v)| {
                scalar(v).ok_or_else(|| format!("items.list[{i}]: must be a string or number"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        found.push(("list", ItemSpec::List(keys)));
    }
    if let Some(map) = raw.product {
        found.push(("product", resolve_product(map)?));
    }
    if let Some(f) = raw.file {
        found.push(("file", ItemSpec::File(root.join(f))));
    }
    if let Some(c) = raw.csv {
        found.push((
            "csv",
            ItemSpec::Csv {
                path: root.join(c.path),
                key: c.key,
            },
        ));
    }
    match found.len() {
        1 => Ok(found.pop().map(|(_, s)| s).ok_or("items: empty")?),
        0 => Err("items: give exactly one source: range, list, product, file or csv".into()),
        _ => Err(format!(
            "items: give exactly one source, found {}",
            found
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(" and ")
        )
        .into()),
    }
}

fn resolve_product(map: serde_yaml_ng::Mapping) -> Result<ItemSpec, Invalid> {
    if map.is_empty() {
        return Err("items.product: needs at least one field".into());
    }
    let mut dims = Vec::new();
    for (k, v) in map {
        let name = scalar(&k).ok_or("items.product: field names must be strings")?;
        let seq = v
            .as_sequence()
            .ok_or_else(|| format!("items.product.{name}: must be a list of values"))?;
        let mut values = Vec::with_capacity(seq.len());
        // First position of each value: one lookup per value, not a scan of the values so far.
        let mut seen = std::collections::HashMap::with_capacity(seq.len());
        for (i, x) in seq.iter().enumerate() {
            let s = scalar(x)
                .ok_or_else(|| format!("items.product.{name}[{i}]: must be a string or number"))?;
            if let Some(j) = seen.insert(s.clone(), i) {
                return Err(format!(
                    "items.product.{name}: duplicate value {s:?} at positions {j} and {i} (keys would repeat)"
                ).into());
            }
            values.push(s);
        }
        dims.push((name, values));
    }
    Ok(ItemSpec::Product(dims))
}

/// A YAML scalar as the string a user typed (numbers in their shortest form).
fn scalar(v: &Yaml) -> Option<String> {
    match v {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn resolve_generator(raw: RawGenerator) -> Result<GeneratorSpec, Invalid> {
    let kind = match (raw.builtin, raw.command) {
        (Some(_), Some(_)) => {
            return Err("generator: give either builtin or command, not both".into())
        }
        (None, None) => {
            return Err("generator: give one of builtin (e.g. vitals) or command".into())
        }
        (Some(name), None) => {
            let params = match raw.params {
                None | Some(Yaml::Null) => serde_json::Map::new(),
                Some(p @ Yaml::Mapping(_)) => match serde_json::to_value(&p) {
                    Ok(serde_json::Value::Object(m)) => m,
                    _ => return Err("generator.params: must be a mapping of plain values".into()),
                },
                Some(_) => return Err("generator.params: must be a mapping".into()),
            };
            GeneratorKind::Builtin { name, params }
        }
        (None, Some(argv)) => {
            if raw.params.is_some() {
                return Err("generator.params: only for builtin generators (pass values to a command in its argv)".into());
            }
            let argv = argv
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    scalar(v).ok_or_else(|| format!("generator.command[{i}]: must be a string"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if argv.first().is_none_or(|p| p.is_empty()) {
                return Err("generator.command: must name a program".into());
            }
            GeneratorKind::Command { argv }
        }
    };
    let mode = match raw.mode.as_deref() {
        None | Some("per-item") => Mode::PerItem,
        Some("persistent") => Mode::Persistent,
        Some(m) => {
            return Err(
                format!("generator.mode: unknown mode {m:?} (per-item or persistent)").into(),
            )
        }
    };
    if mode == Mode::Persistent && !matches!(kind, GeneratorKind::Command { .. }) {
        return Err("generator.mode: persistent is for command generators".into());
    }
    if raw.marker.is_some() && mode != Mode::Persistent {
        return Err("generator.marker: only for mode: persistent".into());
    }
    let marker = raw.marker.unwrap_or_else(|| DEFAULT_MARKER.to_string());
    if marker.is_empty() || marker.contains(['\n', '\r']) {
        return Err("generator.marker: must be a non-empty string without line breaks".into());
    }
    let jobs = raw.jobs.unwrap_or(1);
    if !(1..=MAX_JOBS).contains(&jobs) {
        return Err(format!("generator.jobs: must be 1 to {MAX_JOBS}").into());
    }
    let retries = raw.retries.unwrap_or(2);
    if retries > MAX_RETRIES {
        return Err(format!("generator.retries: at most {MAX_RETRIES}").into());
    }
    let timeout = match &raw.timeout {
        None => None,
        Some(v) => parse_duration(v).map_err(|e| e.within("generator.timeout"))?,
    };
    let min_start_interval = match &raw.rate {
        None => None,
        Some(v) => Some(parse_rate(v).map_err(|e| e.within("generator.rate"))?),
    };
    let halt = match raw.halt {
        None => None,
        Some(h) => Some(parse_halt(&h.failures).map_err(|e| e.within("generator.halt.failures"))?),
    };
    let version = match raw.version {
        None => String::new(),
        Some(v) => scalar(&v).ok_or("generator.version: must be a string or number")?,
    };
    let max_item_bytes = match &raw.max_item_bytes {
        None => DEFAULT_MAX_ITEM_BYTES,
        Some(v) => parse_size(v).map_err(|e| e.within("generator.max_item_bytes"))?,
    };
    Ok(GeneratorSpec {
        kind,
        mode,
        marker,
        jobs,
        retries,
        timeout,
        min_start_interval,
        halt,
        version,
        max_item_bytes,
    })
}

/// The default of `generator.max_item_bytes`: an item is held in memory while it is made, so
/// this bounds a worker's memory per slot.
pub const DEFAULT_MAX_ITEM_BYTES: u64 = 1 << 30;
/// The largest `generator.max_item_bytes` accepted.
pub const MAX_ITEM_BYTES: u64 = 16 << 30;

/// A size: a whole number of bytes, or one with a `KiB`, `MiB` or `GiB` suffix.
pub fn parse_size(v: &Yaml) -> Result<u64, Invalid> {
    let bad = || {
        Invalid::from(
            "must be a size such as 1048576, 64MiB or 1GiB (at least 1 byte, at most 16GiB)",
        )
    };
    let text = match v {
        Yaml::Number(n) => n.to_string(),
        Yaml::String(s) => s.trim().to_string(),
        _ => return Err(bad()),
    };
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text.as_str(), ""),
    };
    let unit: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(bad()),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    match n.checked_mul(unit) {
        Some(b) if (1..=MAX_ITEM_BYTES).contains(&b) => Ok(b),
        _ => Err(bad()),
    }
}

/// `300s`, `5m`, `1h`, `250ms`, or a bare number of seconds; `0` or `none` means no limit.
pub fn parse_duration(v: &Yaml) -> Result<Option<Duration>, Invalid> {
    let text = match v {
        Yaml::Number(n) => n.to_string(),
        Yaml::String(s) => s.trim().to_string(),
        Yaml::Null => return Ok(None),
        _ => return Err("must be a duration such as 300s, 5m, 1h or 250ms".into()),
    };
    if text == "none" {
        return Ok(None);
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 300s, 5m, 1h or 250ms"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        u => return Err(format!("{text:?}: unknown unit {u:?} (ms, s, m or h)").into()),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{text:?} is not a valid duration").into());
    }
    if secs == 0.0 {
        return Ok(None);
    }
    Duration::try_from_secs_f64(secs)
        .map(Some)
        .map_err(|_| Invalid(format!("{text:?} is out of range")))
}

/// `10/s`, `600/m`, `1000/h` (or a bare number per second) as the minimum interval between starts.
pub fn parse_rate(v: &Yaml) -> Result<Duration, Invalid> {
    let text = match v {
        Yaml::Number(n) => n.to_string(),
        Yaml::String(s) => s.trim().to_string(),
        _ => return Err("must be a rate such as 10/s, 600/m or 1000/h".into()),
    };
    let (num, per) = text.split_once('/').unwrap_or((&text, "s"));
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a rate such as 10/s, 600/m or 1000/h"))?;
    let window = match per.trim() {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        u => return Err(format!("{text:?}: unknown unit {u:?} (s, m or h)").into()),
    };
    if !(n.is_finite() && n > 0.0) {
        return Err(format!("{text:?}: the rate must be positive").into());
    }
    // Slower than one item a day is no rate limit anyone means; it also keeps the spacing of
    // item starts far from the clock's range.
    match Duration::try_from_secs_f64(window / n) {
        Ok(d) if d <= MAX_RATE_INTERVAL => Ok(d),
        _ => Err(format!(
            "{text:?} is too slow: the slowest rate is one item a day (1/h is 24 times that)"
        )
        .into()),
    }
}

/// The longest spacing of item starts `generator.rate` may ask for.
pub const MAX_RATE_INTERVAL: Duration = Duration::from_secs(24 * 3600);

fn parse_halt(v: &Yaml) -> Result<Halt, Invalid> {
    match v {
        Yaml::Number(n) => n
            .as_u64()
            .filter(|&n| n > 0)
            .map(Halt::Count)
            .ok_or_else(|| Invalid(format!("{n} is not a positive whole number"))),
        Yaml::String(s) => {
            let pct = s
                .trim()
                .strip_suffix('%')
                .and_then(|p| p.trim().parse::<f64>().ok())
                .filter(|p| *p > 0.0 && *p <= 100.0)
                .ok_or_else(|| format!("{s:?} is neither a count nor a percentage like 10%"))?;
            Ok(Halt::Percent(pct))
        }
        _ => Err("must be a count (50) or a percentage (\"10%\")".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(text, Path::new("conf/t.yaml"), Path::new("/r"))
    }

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    const MIN: &str = "items: {range: {start: 0, end: 3}}\ngenerator: {builtin: echo}\n";

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = parse(MIN).unwrap();
        assert_eq!(c.run, "t");
        assert_eq!(c.seed, 0);
        assert_eq!(c.sharding, Sharding::Contiguous);
        assert_eq!(c.generator.jobs, 1);
        assert_eq!(c.generator.retries, 2);
        assert_eq!(c.generator.timeout, None);
        assert!(c.cache.enabled);
        assert_eq!(c.cache.dir, Path::new("/r/data/cache"));
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let e = err(&format!("{MIN}bogus: 1\n"));
        assert!(e.contains("bogus") && e.contains("line 3"), "{e}");
        let e = err("items: {range: {start: 0, end: 3}}\ngenerator: {builtin: echo, jbos: 2}\n");
        assert!(e.contains("jbos"), "{e}");
    }

    #[test]
    fn malformed_yaml_reports_line_and_column() {
        let e = err("items: {range: {start: 0, end: 3}\ngenerator: [\n");
        assert!(
            e.contains("conf/t.yaml") && e.contains("line") && e.contains("column"),
            "{e}"
        );
    }

    #[test]
    fn builtin_and_command_are_exclusive() {
        let both = "items: {list: [a]}\ngenerator: {builtin: echo, command: [x]}\noutput: {columns: [a]}\n";
        assert!(err(both).contains("not both"));
        assert!(err("items: {list: [a]}\ngenerator: {jobs: 2}\n").contains("one of builtin"));
    }

    #[test]
    fn command_generator_needs_columns() {
        let e = err("items: {list: [a]}\ngenerator: {command: [python3, g.py]}\n");
        assert!(e.contains("output.columns"), "{e}");
    }

    #[test]
    fn exactly_one_item_source() {
        assert!(err("items: {}\ngenerator: {builtin: echo}\n").contains("exactly one"));
        let e = err("items: {list: [a], file: x.txt}\ngenerator: {builtin: echo}\n");
        assert!(e.contains("list and file"), "{e}");
    }

    #[test]
    fn range_start_after_end_is_an_error() {
        assert!(
            err("items: {range: {start: 5, end: 2}}\ngenerator: {builtin: echo}\n")
                .contains("greater than end")
        );
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing_and_brackets_in_scalars_are_not_nesting() {
        let deep = |n: usize| {
            format!(
                "items: {{list: {}a{}}}\ngenerator: {{builtin: echo}}\n",
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        let e = err(&deep(80_000));
        assert!(
            e.contains("line 1: lists and mappings nested deeper than 64"),
            "{e}"
        );
        // 63 lists inside `items: {...}` is 64 levels: the parser decides (a list of lists is
        // not a key), but the shape check lets it through.
        assert!(!err(&deep(63)).contains("nested deeper"));
        let many = "[".repeat(100);
        for ok in [
            format!("items: {{list: [\"{many}\", '{many}', 'it''s {many}']}}\n"),
            format!("items: {{list: [a]}}  # {many}\n"),
            format!("items:\n  list:\n    - a{many}\n"),
            format!("items: {{list: [\"\\\"{many}\"]}}\n"),
        ] {
            let text = format!("{ok}generator: {{builtin: echo}}\n");
            assert!(parse(&text).is_ok(), "{text}: {}", err(&text));
        }
    }

    #[test]
    fn a_product_of_100000_values_is_checked_in_linear_time() {
        let values: Vec<String> = (0..100_000).map(|i| i.to_string()).collect();
        let text = format!(
            "items: {{product: {{v: [{}]}}}}\ngenerator: {{builtin: echo}}\n",
            values.join(", ")
        );
        let t = std::time::Instant::now();
        parse(&text).unwrap();
        // Was 16.6 s (a scan of the values so far per value); a list of the same size: 0.25 s.
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            t.elapsed()
        );
        let e = err(&format!(
            "items: {{product: {{v: [{}, 7]}}}}\ngenerator: {{builtin: echo}}\n",
            values.join(", ")
        ));
        assert!(
            e.contains("duplicate value \"7\" at positions 7 and 100000"),
            "{e}"
        );
    }

    #[test]
    fn product_keeps_order_and_rejects_duplicate_values() {
        let c = parse("items: {product: {t: [B, A], d: [1, 2]}}\ngenerator: {builtin: echo}\n")
            .unwrap();
        match c.items {
            ItemSpec::Product(d) => {
                assert_eq!(
                    d[0],
                    ("t".to_string(), vec!["B".to_string(), "A".to_string()])
                );
                assert_eq!(d[1].0, "d");
            }
            other => panic!("{other:?}"),
        }
        let e = err("items: {product: {t: [A, B, A]}}\ngenerator: {builtin: echo}\n");
        assert!(e.contains("positions 0 and 2"), "{e}");
    }

    #[test]
    fn run_name_rules_apply() {
        assert!(err(&format!("run: ../x\n{MIN}")).contains("run:"));
        assert!(err(&format!("run: .hidden\n{MIN}")).contains("run:"));
    }

    #[test]
    fn durations_rates_and_halts_parse() {
        let y = |s: &str| Yaml::String(s.into());
        assert_eq!(
            parse_duration(&y("300s")).unwrap(),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            parse_duration(&y("5m")).unwrap(),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            parse_duration(&y("250ms")).unwrap(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_duration(&y("0")).unwrap(), None);
        assert!(parse_duration(&y("5 parsecs")).is_err());
        assert_eq!(parse_rate(&y("10/s")).unwrap(), Duration::from_millis(100));
        assert_eq!(parse_rate(&y("60/m")).unwrap(), Duration::from_secs(1));
        assert!(parse_rate(&y("0/s")).is_err());
        assert_eq!(parse_halt(&y("10%")).unwrap(), Halt::Percent(10.0));
        assert!(parse_halt(&y("ten")).is_err());
        let c = parse(
            "items: {list: [a]}\ngenerator: {builtin: echo, halt: {failures: 3}, rate: 2/s}\n",
        )
        .unwrap();
        assert_eq!(c.generator.halt, Some(Halt::Count(3)));
        assert_eq!(
            c.generator.min_start_interval,
            Some(Duration::from_millis(500))
        );
    }
}
