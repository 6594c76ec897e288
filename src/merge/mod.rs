//! `merge`: one dataset out of a run's shards, in global item order, written atomically.
//!
//! The merge is a copy, not a re-parse: rows were validated when the workers wrote them, so the
//! committed byte ranges the manifests record are copied (adjacent ranges coalesced, with
//! `copy_file_range`) in item order. Only `--dedupe-key` and a Parquet output parse rows. With a
//! contiguous plan (every shard one block of the item order) each manifest is read once, shards
//! in parallel, while the data is copied in the background; stride plans and `--dedupe-key`
//! interleave the shards' items by index ([`Interleave`]). Outputs are written to temporary
//! files, synced, and renamed into place: `manifest_final.csv`, `stats.json`, then
//! `combined.parquet` when asked for (made from the merged CSV rows, `parquet.rs`;
//! with contiguous blocks, from the shards' data ranges from the start, while the manifests
//! are read), or the `--partition-by` tree (`partition.rs`), then `combined.csv` last. Shard outputs are deleted only after that, with a marker file so
//! that a crash during the clean-up is finished by the next merge.

mod blocks;
mod copy;
mod csv_rows;
mod final_rows;
mod output;
mod parquet;
mod parquet_read;
mod partition;
mod range_rows;
mod scan;
mod shard_logs;
mod staging;
mod threads;
mod verify;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::run::config::OutputFormat;
use crate::run::paths::{validate_name, RunPaths};
use crate::run::plan::ShardPlan;
use crate::run::runs::{find_run, RunRef};
use crate::store::lock::ShardLock;
use crate::store::record::Header;
pub use output::{describe_revisions, RevisionCount, Stats};
pub use partition::{PartitionCount, Partitioned};
use scan::ShardScan;

/// What the `merge` command line asks for, parsed by clap straight into this struct.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct MergeArgs {
    /// Run configuration (YAML); its `run` names the run.
    #[arg(long, conflicts_with = "run")]
    pub config: Option<PathBuf>,
    /// Run name (`data/<run>/`). Default: the most recently active run under logs/.
    #[arg(long)]
    pub run: Option<String>,
    /// Root directory holding data/ and logs/ (default: .).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Name of the merged file in `data/<run>/`.
    #[arg(long, default_value = "combined.csv")]
    pub output_name: String,
    /// Keep the shard outputs after a successful merge (default: delete them; never the cache).
    #[arg(long)]
    pub keep_shards: bool,
    /// Keep only the last row (in merged order) of each value of this column.
    #[arg(long)]
    pub dedupe_key: Option<String>,
    /// Add this run's rows after the existing output's rows instead of replacing it.
    #[arg(long)]
    pub append: bool,
    /// Merge what is committed even if shards or items are missing or failed (implies --keep-shards).
    #[arg(long)]
    pub allow_partial: bool,
    /// Refuse (exit 1, nothing changed) when the committed items were made by more than one
    /// revision of the generator.
    #[arg(long)]
    pub single_revision: bool,
    /// Check every committed item's rows against the checksum in its manifest record before
    /// anything is renamed into place (reads the shard data once more).
    #[arg(long)]
    pub verify: bool,
    /// What to write: csv (combined.csv), parquet (combined.parquet) or both. Default: the
    /// configuration's `output.format`, else csv.
    #[arg(long, value_enum)]
    pub format: Option<OutputFormat>,
    /// Write one Hive-style directory per value of this column (`COLUMN=value/part-00000.csv`
    /// and/or `.parquet`) under `data/<run>/combined/` instead of one file.
    #[arg(long, value_name = "COLUMN")]
    pub partition_by: Option<String>,
}

/// How a merge ended.
#[derive(Debug)]
pub enum Outcome {
    /// The dataset was written; the summary to print.
    Merged(Box<Stats>),
    /// Nothing to do: the run was merged before (message says so).
    AlreadyMerged(String),
}

const MARKER: &str = ".merge-cleanup";
/// Suffixes of the hidden names of a partitioned tree being built, and of the tree it replaces.
const TREE_TMP: &str = ".partitions.tmp";
const TREE_OLD: &str = ".partitions.old";

/// Runs a merge.
pub fn run(args: &MergeArgs) -> Result<Outcome> {
    let run = find_run(
        args.config.as_deref(),
        args.run.as_deref(),
        args.root.as_deref(),
    )?;
    if run.picked {
        eprintln!(
            "merge: using the most recently active run {:?} (pass --run or --config to choose)",
            run.name
        );
    }
    let paths = &run.paths;
    let output_name = check_output_name(&args.output_name)?;
    let output = paths.data_dir.join(output_name);
    let format = args
        .format
        .or(run.config.as_ref().map(|c| c.format))
        .or_else(|| recorded_format(paths))
        .unwrap_or_default();
    let args = &MergeArgs {
        format: Some(format),
        ..args.clone()
    };
    let parquet_out = output.with_extension("parquet");
    // With --partition-by, the directory named like the output without `.csv`.
    let tree = args
        .partition_by
        .as_ref()
        .map(|_| output.with_extension(""));
    // The file (or tree) renamed last: once it is in place, the whole dataset is.
    let last = if let Some(t) = &tree {
        t
    } else if format == OutputFormat::Parquet {
        &parquet_out
    } else {
        &output
    };
    if let Some(col) = &args.partition_by {
        check_partitioning(col, args, last)?;
    }
    std::fs::create_dir_all(paths.locks_dir()).ctx("cannot create", &paths.locks_dir())?;
    let _merge_lock = ShardLock::acquire(
        &paths.locks_dir().join("merge.lock"),
        &format!("merging run {:?}", run.name),
        &format!("merge pid {}", std::process::id()),
    )?;
    // Exclusive: no worker of any shard plan writes while the merge reads (or cleans up).
    let _run_lock = ShardLock::own_run(
        &paths.locks_dir(),
        &run.name,
        &format!("merge pid {}", std::process::id()),
    )?;
    remove_stale_temps(&paths.data_dir);
    if let Some(msg) = finish_cleanup(paths, last)? {
        return Ok(Outcome::AlreadyMerged(msg));
    }
    let manifests = paths.manifests().ctx("cannot list", &paths.data_dir)?;
    if manifests.is_empty() {
        if last.exists() {
            return Ok(Outcome::AlreadyMerged(format!(
                "run {:?} is already merged into {} and its shards were cleaned up; nothing to do",
                run.name,
                last.display()
            )));
        }
        return Err(Error::Refused(format!(
            "run {:?} has no shard outputs in {}; run its shards first",
            run.name,
            paths.data_dir.display()
        )));
    }
    let plan = check_plan(&run, &manifests)?;
    let shards = plan
        .present
        .iter()
        .map(|(_, m)| ShardFiles::read(m, &paths.data_dir))
        .collect::<Result<Vec<_>>>()?;
    check_headers(&run, &shards)?;
    let types = column_types(&shards)?;
    if let Some(s) = shards.iter().find(|s| s.data == output) {
        return Err(Error::usage(format!(
            "--output-name {}: that is shard {}'s data file; choose another name",
            args.output_name, s.header.shard
        )));
    }
    let partition_col = match &args.partition_by {
        None => None,
        Some(col) => Some(
            shards[0]
                .header
                .columns
                .iter()
                .position(|c| c == col)
                .ok_or_else(|| {
                    Error::usage(format!(
                        "--partition-by {col:?}: no such column (columns: {})",
                        shards[0].header.columns.join(", ")
                    ))
                })?,
        ),
    };
    let hidden = |suffix: &str| {
        let name = last.file_name().unwrap_or_default().to_string_lossy();
        paths.data_dir.join(format!(".{name}{suffix}"))
    };
    let (tree_tmp, tree_old) = (hidden(TREE_TMP), hidden(TREE_OLD));
    // --append with the format parquet alone appends to combined.parquet, read back as CSV rows
    // into a temporary file (removed at the end, whatever happens).
    let mut append_tmp = staging::TempFiles(Vec::new());
    let append_to = match (args.append, format) {
        (false, _) => None,
        (true, OutputFormat::Parquet) if parquet_out.is_file() => {
            let tmp = hidden(".append.tmp");
            append_tmp.0.push(tmp.clone());
            parquet_read::to_csv(&parquet_out, &tmp, &shards[0].header.columns, &types)?;
            Some(tmp)
        }
        (true, OutputFormat::Parquet) => None,
        (true, _) => Some(output.clone()),
    };
    let pq_tmp = (format != OutputFormat::Csv && tree.is_none()).then(|| {
        let name = parquet_out
            .file_name()
            .unwrap_or_default()
            .to_string_lossy();
        paths.data_dir.join(format!(".{name}.tmp"))
    });
    // The Parquet file (or the partitions) is made from the merged CSV rows, before anything is
    // renamed.
    let write_parquet = |dataset: &staging::Dataset, stop: &_| match (&pq_tmp, partition_col) {
        (_, Some(col)) => partition::write(
            dataset,
            stop,
            &tree_tmp,
            col,
            format,
            &shards[0].header.columns,
            &types,
        )
        .inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&tree_tmp);
        })
        .map(Some),
        (None, None) => Ok(None),
        (Some(tmp), None) => {
            parquet::write_from_csv(dataset, stop, tmp, &shards[0].header.columns, &types)
                .inspect_err(|_| {
                    let _ = std::fs::remove_file(tmp);
                })
                .map(|()| None)
        }
    };
    let written = output::write(
        &run,
        &plan,
        &shards,
        args,
        output::Target {
            output: &output,
            append_to: append_to.as_deref(),
        },
        |scans| {
            check_complete(&run, &plan, scans, args)?;
            check_revisions(&run, scans, args)
        },
        write_parquet,
    );
    // Files made from the dataset while the manifests were read are removed on a refusal.
    if written.is_err() {
        if let Some(tmp) = &pq_tmp {
            let _ = std::fs::remove_file(tmp);
        }
        let _ = std::fs::remove_dir_all(&tree_tmp);
    }
    let (mut stats, scans, out_tmp) = written?;
    stats.redo_stale_hint = crate::hints::redo_stale(&run, args.config.as_deref());
    // A dataset of mixed revisions keeps its shards, so that --redo-stale can make it uniform.
    stats.shards_kept = args.keep_shards || args.allow_partial || stats.revisions.len() > 1;
    let clean = !stats.shards_kept;
    if clean {
        // The marker names the new dataset (by inode) before it is renamed into place: a re-run
        // after a crash then knows whether these shards are already in the output.
        let last_tmp = match (&pq_tmp, format) {
            _ if tree.is_some() => &tree_tmp,
            (Some(tmp), OutputFormat::Parquet) => tmp,
            _ => &out_tmp,
        };
        write_marker(paths, &scans, last, last_tmp)?;
    }
    if let Some(tmp) = &pq_tmp {
        std::fs::rename(tmp, &parquet_out).ctx("cannot rename", tmp)?;
    }
    // The CSV rows are only read back for the Parquet file or the partitions: made as a file
    // only when the shards' data could not be read as they are.
    let remove_transient = || match std::fs::remove_file(&out_tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).ctx("cannot remove", &out_tmp),
        _ => Ok(()),
    };
    if let Some(t) = &tree {
        remove_transient()?;
        partition::install(&tree_tmp, t, &tree_old, &paths.data_dir)?;
    } else if format == OutputFormat::Parquet {
        remove_transient()?;
    } else {
        std::fs::rename(&out_tmp, &output).ctx("cannot rename", &out_tmp)?;
    }
    sync_dir(&paths.data_dir)?;
    if clean {
        cleanup(paths, &scans, plan.num_shards)?;
    }
    Ok(Outcome::Merged(Box::new(stats)))
}

/// Refuses what `--partition-by` cannot do before anything is read.
fn check_partitioning(column: &str, args: &MergeArgs, tree: &Path) -> Result<()> {
    if args.append {
        return Err(Error::usage(
            "--append grows one file, and --partition-by writes the dataset as a tree of \
             partitions, which is rewritten whole; merge without --append (or append without \
             --partition-by, then partition a later merge)",
        ));
    }
    partition::column_prefix(column)?;
    if std::fs::symlink_metadata(tree).is_ok_and(|m| !m.is_dir()) {
        return Err(Error::usage(format!(
            "--partition-by writes the directory {}, and a file of that name exists; move it \
             away or choose another --output-name",
            tree.display()
        )));
    }
    Ok(())
}

fn check_output_name(name: &str) -> Result<&str> {
    validate_name(name).map_err(|e| e.at("--output-name"))?;
    if !name.ends_with(".csv") || name.starts_with("manifest_") || name == "manifest_final.csv" {
        return Err(Error::usage(format!(
            "--output-name {name:?}: give a .csv file name other than the manifests'"
        )));
    }
    Ok(name)
}

/// The shard plan found on disk.
pub struct PlanOnDisk {
    pub num_shards: u32,
    /// (shard index, manifest path) of the shards present.
    pub present: Vec<(u32, PathBuf)>,
    pub missing: Vec<u32>,
}

fn check_plan(run: &RunRef, manifests: &[(u32, u32, PathBuf)]) -> Result<PlanOnDisk> {
    let mut counts: Vec<u32> = manifests.iter().map(|(_, n, _)| *n).collect();
    counts.dedup();
    if counts.len() > 1 {
        return Err(Error::Refused(format!(
            "run {:?} holds shards of different plans ({} shards); they cannot be merged together. \
             Re-run the run with one shard count (the launcher's --force reuses cached items)",
            run.name,
            counts.iter().map(u32::to_string).collect::<Vec<_>>().join(" and ")
        )));
    }
    let num_shards = counts[0];
    let present: Vec<(u32, PathBuf)> = manifests.iter().map(|(i, _, p)| (*i, p.clone())).collect();
    let mut seen = vec![false; num_shards as usize];
    for (i, _) in &present {
        if let Some(s) = seen.get_mut(*i as usize) {
            *s = true;
        }
    }
    let missing = (0..num_shards).filter(|&i| !seen[i as usize]).collect();
    Ok(PlanOnDisk {
        num_shards,
        present,
        missing,
    })
}

/// A shard's files, and its manifest's header (shared with the shard's scan: at ten thousand
/// shards, the headers are most of merge's memory).
pub struct ShardFiles {
    pub header: std::sync::Arc<Header>,
    pub manifest: PathBuf,
    pub data: PathBuf,
}

impl ShardFiles {
    fn read(manifest: &Path, data_dir: &Path) -> Result<Self> {
        let header =
            crate::store::record::read_header(manifest).ok_or_else(|| scan::no_header(manifest))?;
        Ok(ShardFiles {
            data: data_dir.join(format!("{}.csv", header.name)),
            manifest: manifest.to_path_buf(),
            header: std::sync::Arc::new(header),
        })
    }
}

/// Checks that the shards can be merged at all: same columns, configuration and plan.
fn check_headers(run: &RunRef, shards: &[ShardFiles]) -> Result<()> {
    let first = &shards[0];
    for s in &shards[1..] {
        if s.header.columns != first.header.columns {
            let at = s
                .header
                .columns
                .iter()
                .zip(&first.header.columns)
                .position(|(a, b)| a != b)
                .unwrap_or(s.header.columns.len().min(first.header.columns.len()));
            return Err(Error::Refused(format!(
                "{}: header differs from {} at column {} ({:?} vs {:?})",
                s.data.display(),
                first.data.display(),
                at + 1,
                s.header
                    .columns
                    .get(at)
                    .map(String::as_str)
                    .unwrap_or("<none>"),
                first
                    .header
                    .columns
                    .get(at)
                    .map(String::as_str)
                    .unwrap_or("<none>")
            )));
        }
        for key in ["items", "generator", "seed"] {
            if s.header.fingerprint.get(key) != first.header.fingerprint.get(key) {
                return Err(Error::Refused(format!(
                    "{} and {} were written under different configurations ({key} differs); \
                     re-run the run under one configuration before merging",
                    s.manifest.display(),
                    first.manifest.display()
                )));
            }
        }
        if (s.header.sharding, s.header.source_items)
            != (first.header.sharding, first.header.source_items)
        {
            return Err(Error::Refused(format!(
                "{} and {} come from different shard plans",
                s.manifest.display(),
                first.manifest.display()
            )));
        }
    }
    if let Some(cfg) = &run.config {
        check_config(run, cfg, &first.header)?;
    }
    Ok(())
}

/// With `--config`, checks that the shards were written under that configuration's identity
/// (items, generator, seed, sharding, columns), not only its run name. The generator revision
/// may differ (a fixed script): merge reports revisions separately.
fn check_config(run: &RunRef, cfg: &crate::run::config::Config, header: &Header) -> Result<()> {
    let mismatch = |what: &str, shards: &str, config: &str| {
        Error::Refused(format!(
            "the shards of run {:?} were written under another configuration than {}: {what} \
             differs (shards: {shards}; configuration: {config}). Merge them as they are with \
             --run {}, or re-run the run under this configuration (the launcher's --force \
             reuses cached items)",
            run.name,
            cfg.path.display(),
            run.name
        ))
    };
    let recorded = |k: &str| header.fingerprint.get(k).map(String::as_str).unwrap_or("?");
    if cfg.seed.to_string() != recorded("seed") {
        return Err(mismatch(
            "the seed",
            recorded("seed"),
            &cfg.seed.to_string(),
        ));
    }
    if cfg.sharding != header.sharding {
        return Err(mismatch(
            "the sharding",
            header.sharding.name(),
            cfg.sharding.name(),
        ));
    }
    // The full identity needs the items and the generator resolved as a worker would; when that
    // is not possible here (a generator's program missing on this machine), the checks above
    // are what can be told.
    let args = crate::worker::shard::WorkerArgs {
        config: cfg.path.clone(),
        shard_index: Some(header.shard),
        num_shards: Some(header.num_shards),
        root: Some(run.root.clone()),
        ..Default::default()
    };
    let Ok(shard) = crate::worker::shard::Shard::resolve(&args) else {
        return Ok(());
    };
    for (key, what) in [("items", "the item source"), ("generator", "the generator")] {
        let wanted = shard
            .fingerprint
            .get(key)
            .map(String::as_str)
            .unwrap_or("?");
        if wanted != recorded(key) {
            return Err(mismatch(what, recorded(key), wanted));
        }
    }
    if shard.columns != header.columns {
        return Err(mismatch(
            "the columns",
            &header.columns.join(","),
            &shard.columns.join(","),
        ));
    }
    Ok(())
}

/// Checks that every item of the plan is committed, unless `--allow-partial`.
fn check_complete(
    run: &RunRef,
    plan: &PlanOnDisk,
    scans: &[ShardScan],
    args: &MergeArgs,
) -> Result<()> {
    if args.allow_partial {
        return Ok(());
    }
    let mut problems = Vec::new();
    if !plan.missing.is_empty() {
        problems.push(format!(
            "shard{} {} of {} never ran",
            if plan.missing.len() == 1 { "" } else { "s" },
            list(&plan.missing),
            plan.num_shards
        ));
    }
    // A few incomplete shards are named; the rest counted (a message, not ten thousand lines).
    const NAMED: usize = 5;
    let (mut named, mut unnamed) = (0usize, 0u64);
    for s in scans {
        let h = &s.header;
        let failed = s.failed.len() as u64;
        if s.ok < h.items_total && named == NAMED {
            unnamed += 1;
        } else if s.ok < h.items_total {
            named += 1;
            problems.push(format!(
                "shard {} of {} has {} of {} items committed{}",
                h.shard,
                h.num_shards,
                s.ok,
                h.items_total,
                if failed > 0 {
                    format!(" ({failed} failed)")
                } else {
                    String::new()
                }
            ));
        }
    }
    if unnamed > 0 {
        problems.push(format!(
            "{} more shard{} with items not committed (monitor --run {} lists them)",
            crate::format::human::thousands(unnamed),
            if unnamed == 1 { "" } else { "s" },
            run.name
        ));
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(Error::Refused(format!(
        "run {:?} is not complete: {}. Finish it ({}) or merge what exists with --allow-partial",
        run.name,
        problems.join("; "),
        crate::hints::finish_run(run, args.config.as_deref())
    )))
}

/// With `--single-revision`, refuses a run whose committed items were made by more than one
/// generator revision.
fn check_revisions(run: &RunRef, scans: &[ShardScan], args: &MergeArgs) -> Result<()> {
    let revisions = output::revisions(scans);
    if !args.single_revision || revisions.len() <= 1 {
        return Ok(());
    }
    Err(Error::Refused(format!(
        "run {:?} mixes {} generator revisions ({}); --single-revision refuses it, and nothing \
         was changed. Regenerate the items of the older code: {}, then merge again",
        run.name,
        revisions.len(),
        output::describe_revisions(&revisions),
        crate::hints::redo_stale(run, args.config.as_deref())
    )))
}

/// The configuration's `output.format` as the run record holds it (the run was last started
/// with it).
fn recorded_format(paths: &RunPaths) -> Option<OutputFormat> {
    let text = std::fs::read(paths.run_record()).ok()?;
    let record: serde_json::Value = serde_json::from_slice(&text).ok()?;
    OutputFormat::from_name(record.get("config")?.get("format")?.as_str()?)
}

/// The column types the shards recorded (all `string` in manifests written before types
/// existed); shards that recorded different types refuse the merge.
fn column_types(shards: &[ShardFiles]) -> Result<Vec<crate::run::types::ColumnType>> {
    let mut typed = shards.iter().filter(|s| !s.header.types.is_empty());
    let Some(first) = typed.next() else {
        return Ok(vec![Default::default(); shards[0].header.columns.len()]);
    };
    if let Some(other) = typed.find(|s| s.header.types != first.header.types) {
        return Err(Error::Refused(format!(
            "{} and {} record different column types; re-run the run under one configuration \
             before merging",
            other.manifest.display(),
            first.manifest.display()
        )));
    }
    Ok(first.header.types.clone())
}

fn list(v: &[u32]) -> String {
    crate::format::human::ranges(v, ", ")
}

/// Global item indices in order, each with the shard that should hold it.
pub fn shard_of(
    sharding: crate::run::config::Sharding,
    n: u64,
    num_shards: u32,
    index: u64,
) -> u32 {
    match sharding {
        crate::run::config::Sharding::Stride => (index % u64::from(num_shards)) as u32,
        crate::run::config::Sharding::Contiguous => {
            // The first n % N shards hold q + 1 items, the rest q.
            let k = u64::from(num_shards);
            let (q, r) = (n / k, n % k);
            let big = r * (q + 1);
            let s = if index < big {
                index / (q + 1)
            } else {
                r + (index - big) / q.max(1)
            };
            s as u32
        }
    }
}

/// Merges the streams of several shards by item index.
pub struct Interleave {
    streams: Vec<Items>,
    heap: BinaryHeap<Reverse<(u64, usize)>>,
    heads: Vec<Option<crate::store::record::Record>>,
}

/// Shards up to which each shard's manifest is parsed on a thread of its own.
const READ_AHEAD_SHARDS: usize = 8;

/// Shards up to which each shard's manifest stays open during the interleave; beyond, each is
/// opened only to read a batch, with this much buffer for all shards together.
const OPEN_SHARDS: usize = 64;
const PARKED_BUFFERS: usize = 16 << 20;

/// A shard's committed items, read directly, ahead, or a batch at a time.
enum Items {
    Direct(scan::ItemStream),
    Ahead(scan::ReadAhead),
    Parked(scan::ParkedStream),
}

impl Items {
    fn next_record(&mut self) -> Result<Option<crate::store::record::Record>> {
        match self {
            Items::Direct(s) => s.next_record(),
            Items::Ahead(s) => s.next_record(),
            Items::Parked(s) => s.next_record(),
        }
    }
}

impl Interleave {
    /// Opens every shard's stream (read ahead on threads when there are few shards).
    pub fn new(scans: &[ShardScan]) -> Result<Self> {
        let ahead = scans.len() <= READ_AHEAD_SHARDS;
        let mut streams = Vec::with_capacity(scans.len());
        let parked = scans.len() > OPEN_SHARDS;
        let budget = (PARKED_BUFFERS / scans.len().max(1)).clamp(4 << 10, 64 << 10);
        for s in scans {
            if parked {
                streams.push(Items::Parked(s.parked(budget)?));
                continue;
            }
            let started = if ahead {
                scan::ReadAhead::start(s.stream()?)
            } else {
                None
            };
            streams.push(match started {
                Some(r) => Items::Ahead(r),
                None => Items::Direct(s.stream()?),
            });
        }
        let mut heap = BinaryHeap::new();
        let mut heads = Vec::new();
        for (slot, s) in streams.iter_mut().enumerate() {
            let head = s.next_record()?;
            if let Some(r) = &head {
                heap.push(Reverse((r.index, slot)));
            }
            heads.push(head);
        }
        Ok(Interleave {
            streams,
            heap,
            heads,
        })
    }

    /// The next committed item in global order, with its shard slot.
    pub fn next_item(&mut self) -> Result<Option<(usize, crate::store::record::Record)>> {
        let Some(Reverse((_, slot))) = self.heap.pop() else {
            return Ok(None);
        };
        let rec = self.heads[slot].take();
        let next = self.streams[slot].next_record()?;
        if let Some(r) = &next {
            heap_push(&mut self.heap, r.index, slot);
        }
        self.heads[slot] = next;
        Ok(rec.map(|r| (slot, r)))
    }
}

fn heap_push(heap: &mut BinaryHeap<Reverse<(u64, usize)>>, index: u64, slot: usize) {
    heap.push(Reverse((index, slot)));
}

/// Removes the per-shard temporary files of a merge that was killed (under the merge lock, so no
/// other merge is using them): their number depends on the shard count, so a later merge would
/// not overwrite them all. Best effort.
fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let parquet_tmp = name.starts_with('.')
            && (name.ends_with(".parquet.tmp") || name.ends_with(".append.tmp"));
        if name.starts_with('.') && (name.ends_with(TREE_TMP) || name.ends_with(TREE_OLD)) {
            let _ = std::fs::remove_dir_all(e.path());
            continue;
        }
        if parquet_tmp || (name.starts_with(".manifest_final.part") && name.ends_with(".tmp")) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Finishes a clean-up a crash interrupted; `Some(message)` when the run was already merged.
/// The marker's first line names the dataset it belongs to (file name and inode): if that file
/// is not in place, the crash came before the rename, and the merge simply starts again.
fn finish_cleanup(paths: &RunPaths, output: &Path) -> Result<Option<String>> {
    let marker = paths.data_dir.join(MARKER);
    let Ok(text) = std::fs::read_to_string(&marker) else {
        return Ok(None);
    };
    let mut lines = text.lines();
    let first = lines.next().unwrap_or("");
    let in_place = first
        .strip_prefix("output ")
        .and_then(|r| r.rsplit_once(' '))
        .is_some_and(|(name, ino)| {
            let target = paths.data_dir.join(name);
            std::fs::metadata(&target).is_ok_and(|m| m.ino().to_string() == ino)
        });
    if in_place {
        for line in lines.filter(|l| !l.is_empty()) {
            let p = paths.data_dir.join(line);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).ctx("cannot remove", &p),
            }
        }
    }
    std::fs::remove_file(&marker).ctx("cannot remove", &marker)?;
    sync_dir(&paths.data_dir)?;
    Ok(in_place.then(|| {
        format!(
            "run already merged into {}; finished removing its shard outputs",
            output.display()
        )
    }))
}

/// Writes the clean-up marker: the dataset about to be renamed into place (name and inode),
/// then the shard files it contains.
fn write_marker(
    paths: &RunPaths,
    scans: &[ShardScan],
    output: &Path,
    out_tmp: &Path,
) -> Result<()> {
    let ino = std::fs::metadata(out_tmp)
        .ctx("cannot stat", out_tmp)?
        .ino();
    let name = output.file_name().unwrap_or_default().to_string_lossy();
    let mut text = format!("output {name} {ino}\n");
    for s in scans {
        for p in [&s.data, &s.manifest] {
            if let Some(n) = p.file_name() {
                text.push_str(&n.to_string_lossy());
                text.push('\n');
            }
        }
    }
    let marker = paths.data_dir.join(MARKER);
    let tmp = paths.data_dir.join(format!("{MARKER}.tmp"));
    let mut f = crate::store::files::create(&tmp)?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .ctx("cannot write", &tmp)?;
    std::fs::rename(&tmp, &marker).ctx("cannot write", &marker)?;
    sync_dir(&paths.data_dir)
}

/// Deletes the shard outputs (data files, manifests), never the cache, the logs or the run
/// record, then the marker that listed them.
fn cleanup(paths: &RunPaths, scans: &[ShardScan], num_shards: u32) -> Result<()> {
    for s in scans {
        for p in [&s.data, &s.manifest] {
            std::fs::remove_file(p).ctx("cannot remove", p)?;
        }
    }
    for i in 0..num_shards {
        let _ = std::fs::remove_file(
            paths
                .locks_dir()
                .join(format!("shard{i}_of_{num_shards}.lock")),
        );
    }
    let marker = paths.data_dir.join(MARKER);
    std::fs::remove_file(&marker).ctx("cannot remove", &marker)?;
    sync_dir(&paths.data_dir)
}

/// fsync of a directory, so renames and deletions in it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx("cannot sync the directory", dir)
}

/// The shard plan of `scan`'s shard.
pub fn plan_of(scan: &ShardScan) -> ShardPlan {
    let h = &scan.header;
    ShardPlan::new(h.sharding, h.source_items, h.num_shards, h.shard)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::config::Sharding;

    #[test]
    fn shard_of_inverts_the_plan() {
        for sharding in [Sharding::Contiguous, Sharding::Stride] {
            for n in [0u64, 1, 7, 10, 101] {
                for k in [1u32, 2, 3, 7, 16] {
                    for i in 0..k {
                        for idx in ShardPlan::new(sharding, n, k, i).indices() {
                            assert_eq!(
                                shard_of(sharding, n, k, idx),
                                i,
                                "{sharding:?} n={n} k={k} idx={idx}"
                            );
                        }
                    }
                }
            }
        }
    }
}
