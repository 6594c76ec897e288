//! Resolving a shard before it runs: which shard this process is, its items, its generator and
//! the fingerprint of what defines its outputs. Everything here validates; nothing writes.

use std::path::{Path, PathBuf};

use crate::error::{Error, Invalid, Result};
use crate::generator::command::{CommandGen, CommandSpec};
use crate::generator::{builtin, Builtin};
use crate::run::config::{Config, GeneratorKind};
use crate::run::items::ItemSource;
use crate::run::paths::{validate_name, RunPaths};
use crate::run::plan::ShardPlan;
use crate::run::types::ColumnType;
use crate::store::record::Fingerprint;

/// The shardrun version recorded with every run.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What runs one shard: the `shard-worker` command line, parsed by clap straight into this
/// struct (the binary adds only `--check`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct WorkerArgs {
    /// Run configuration (YAML).
    #[arg(long, default_value = "conf/default.yaml")]
    pub config: PathBuf,
    /// This shard's index, 0-based (default: $SLURM_ARRAY_TASK_ID or $JOB_COMPLETION_INDEX).
    #[arg(long)]
    pub shard_index: Option<u32>,
    /// Number of shards of the run (required with a shard index; default without one: 1).
    #[arg(long)]
    pub num_shards: Option<u32>,
    /// Data file name, without .csv (default: `process-<shard-index>`).
    #[arg(long)]
    pub name: Option<String>,
    /// Discard this shard's outputs (not the cache) and regenerate it.
    #[arg(long)]
    pub force: bool,
    /// Print this shard's items (count, first and last key) and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Items in flight within the shard (overrides generator.jobs).
    #[arg(long)]
    pub jobs: Option<u32>,
    /// Neither read nor write the item cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Directory that relative paths resolve against and commands run in (default: .).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Write log lines only to the shard log, not also to stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Print the run's name, default shard count and directories as key=value lines, and exit.
    #[arg(long)]
    pub describe: bool,
    /// Also regenerate the committed items that an older revision of the generator made
    /// (a changed script or generator.version); the new commits supersede the old ones.
    #[arg(long, conflicts_with = "force")]
    pub redo_stale: bool,
}

/// The generator a shard runs.
pub enum Generator {
    Builtin(Box<dyn Builtin>),
    Command(CommandGen),
}

/// A fully resolved shard, ready to run.
pub struct Shard {
    pub config: Config,
    pub paths: RunPaths,
    pub index: u32,
    pub num_shards: u32,
    pub name: String,
    pub source: ItemSource,
    pub plan: ShardPlan,
    pub generator: Generator,
    pub columns: Vec<String>,
    /// The type of each column.
    pub types: Vec<ColumnType>,
    /// Names the generator's outputs in the cache: its identity and its revision together.
    pub generator_id: String,
    /// What defines the dataset; a change refuses a resume (see [`Fingerprint`]).
    pub fingerprint: Fingerprint,
    /// The code that makes the items (a short hash): argv-named files and `generator.version`.
    /// A change is not refused: each manifest record names the revision that made it.
    pub revision: String,
    pub jobs: u32,
    pub use_cache: bool,
}

/// Environment variables that name the shard index, in order of precedence.
const INDEX_ENV: [&str; 2] = ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"];

impl Shard {
    /// Validates arguments and configuration and loads the items.
    pub fn resolve(args: &WorkerArgs) -> Result<Shard> {
        let root = resolve_root(args.root.as_deref())?;
        let config = Config::load(&args.config, &root)?;
        let (index, num_shards) = shard_identity(args, &config)?;
        let name = args
            .name
            .clone()
            .unwrap_or_else(|| format!("process-{index}"));
        validate_name(&name).map_err(|e| e.at("--name"))?;
        if crate::run::paths::RESERVED_NAMES.contains(&name.as_str())
            || name.starts_with("manifest_")
        {
            return Err(Error::usage(format!(
                "--name {name:?} is reserved for merge's outputs; choose another name"
            )));
        }
        let jobs = args.jobs.unwrap_or(config.generator.jobs);
        if !(1..=crate::run::config::MAX_JOBS).contains(&jobs) {
            return Err(Error::usage(format!(
                "--jobs: must be 1 to {}",
                crate::run::config::MAX_JOBS
            )));
        }
        let source = ItemSource::load(&config.items, config.seed)?;
        let plan = ShardPlan::new(config.sharding, source.len(), num_shards, index);
        check_shard_size(&plan, source.len(), index, num_shards)?;
        let GeneratorIds {
            generator,
            columns,
            types,
            identity,
            revision,
            cache_id: generator_id,
        } = build_generator(&config, &source, index, num_shards)?;
        let fingerprint = [
            (
                "items".to_string(),
                format!("{} ({} items)", source.content_hash(), source.len()),
            ),
            ("generator".to_string(), identity),
            ("seed".to_string(), config.seed.to_string()),
            (
                "plan".to_string(),
                plan_fingerprint(config.sharding, index, num_shards),
            ),
        ]
        .into();
        Ok(Shard {
            paths: RunPaths::new(&root, &config.run),
            use_cache: config.cache.enabled && !args.no_cache,
            config,
            index,
            num_shards,
            name,
            source,
            plan,
            generator,
            columns,
            types,
            generator_id,
            fingerprint,
            revision,
            jobs,
        })
    }

    /// The header of this shard's manifest.
    pub fn manifest_header(&self) -> crate::store::record::Header {
        crate::store::record::Header {
            format: crate::store::record::FORMAT.into(),
            shardrun: VERSION.into(),
            run: self.config.run.clone(),
            shard: self.index,
            num_shards: self.num_shards,
            name: self.name.clone(),
            columns: self.columns.clone(),
            types: self.types.clone(),
            items_total: self.plan.len(),
            source_items: self.source.len(),
            sharding: self.config.sharding,
            fingerprint: self.fingerprint.clone(),
            data_start: crate::format::csv_out::header_line(&self.columns).len() as u64,
        }
    }

    /// The manifest header that shard `index` of the same plan would write, as `name`.
    pub fn manifest_header_of(&self, index: u32, name: &str) -> crate::store::record::Header {
        let mut h = self.manifest_header();
        h.shard = index;
        h.name = name.to_string();
        h.items_total = ShardPlan::new(
            self.config.sharding,
            self.source.len(),
            self.num_shards,
            index,
        )
        .len();
        h.fingerprint.insert(
            "plan".to_string(),
            plan_fingerprint(self.config.sharding, index, self.num_shards),
        );
        h
    }

    /// The `--dry-run` report: item count and first and last key.
    pub fn describe(&self) -> String {
        let head = format!(
            "shard {}/{} of run {} ({}.csv): {} item{}",
            self.index,
            self.num_shards,
            self.config.run,
            self.name,
            self.plan.len(),
            if self.plan.len() == 1 { "" } else { "s" }
        );
        if self.plan.is_empty() {
            return head;
        }
        let first = self.source.key(self.plan.global(0));
        let last = self.source.key(self.plan.global(self.plan.len() - 1));
        format!("{head}, {first} … {last}")
    }
}

/// The fingerprint's `plan` component: the sharding, the shard and the shard count.
fn plan_fingerprint(sharding: crate::run::config::Sharding, index: u32, num_shards: u32) -> String {
    format!("{}, shard {index} of {num_shards}", sharding.name())
}

/// The root directory: `--root` (must exist) or the current directory.
pub fn resolve_root(root: Option<&Path>) -> Result<PathBuf> {
    match root {
        None => std::env::current_dir()
            .map_err(|e| Error::usage(format!("cannot read the current directory: {e}"))),
        Some(r) if r.is_dir() => Ok(r.to_path_buf()),
        Some(r) => Err(Error::usage(format!(
            "--root {}: not an existing directory",
            r.display()
        ))),
    }
}

/// The shard index and count: flags first, then the scheduler's environment.
/// Refuses a shard too large for the worker's bounded memory, saying how many shards fit.
fn check_shard_size(plan: &ShardPlan, total: u64, index: u32, num_shards: u32) -> Result<()> {
    let max = crate::run::config::MAX_SHARD_ITEMS;
    if plan.len() <= max {
        return Ok(());
    }
    let need = total.div_ceil(max);
    Err(Error::usage(format!(
        "shard {index} of {num_shards} would hold {} items; a shard holds at most {max} \
         (README, Limits). {}",
        plan.len(),
        if need <= u64::from(crate::run::config::MAX_SHARDS) {
            format!("Use at least {need} shards (--num-shards {need})")
        } else {
            format!(
                "The {total} items need more than {} shards: split the source into several runs",
                crate::run::config::MAX_SHARDS
            )
        }
    )))
}

fn shard_identity(args: &WorkerArgs, config: &Config) -> Result<(u32, u32)> {
    // The config's `shards` is the launchers' default; a worker is always told its count, so
    // that an array of only the failed shards still knows the plan.
    let num = args.num_shards;
    let mut index = args.shard_index;
    if index.is_none() {
        for var in INDEX_ENV {
            if let Ok(v) = std::env::var(var) {
                if v.trim().is_empty() {
                    continue;
                }
                index = Some(v.trim().parse().map_err(|_| {
                    Error::usage(format!("{var}={v:?} is not a shard index (a whole number)"))
                })?);
                break;
            }
        }
    }
    let (index, num) = match (index, num) {
        (Some(i), Some(n)) => (i, n),
        (Some(_), None) => {
            return Err(Error::usage(format!(
                "--num-shards is required with a shard index{}",
                config
                    .shards
                    .map(|n| format!(" (the configuration's default is {n})"))
                    .unwrap_or_default()
            )))
        }
        (None, Some(1)) | (None, None) => (0, 1),
        (None, Some(n)) => {
            return Err(Error::usage(format!(
                "which shard? Pass --shard-index (0 to {}), or run as a Slurm array task or Kubernetes indexed job",
                n.saturating_sub(1)
            )))
        }
    };
    if !(1..=crate::run::config::MAX_SHARDS).contains(&num) {
        return Err(Error::usage(format!(
            "--num-shards must be 1 to {}, not {num}",
            crate::run::config::MAX_SHARDS
        )));
    }
    if index >= num {
        return Err(Error::usage(format!(
            "--shard-index {index} is out of range for --num-shards {num} (valid: 0 to {})",
            num - 1
        )));
    }
    Ok((index, num))
}

/// The generator and the hashes that name what it makes.
struct GeneratorIds {
    generator: Generator,
    columns: Vec<String>,
    types: Vec<ColumnType>,
    /// What the generator is: kind, argv template or builtin name and parameters, columns.
    identity: String,
    /// Which code it runs: the contents of the files its argv names, `generator.version` (and
    /// shardrun's version for a builtin, whose code is shardrun's).
    revision: String,
    /// Identity and revision together, as earlier versions hashed them: cached items stay valid.
    cache_id: String,
}

fn build_generator(
    config: &Config,
    source: &ItemSource,
    index: u32,
    num_shards: u32,
) -> Result<GeneratorIds> {
    let spec = &config.generator;
    let bad = |e: Invalid| e.at(config.path.display());
    let mut cache_id = blake3::Hasher::new();
    let mut identity = blake3::Hasher::new();
    let mut revision = blake3::Hasher::new();
    match &spec.kind {
        GeneratorKind::Builtin { name, params } => {
            let b = builtin(name, params).map_err(bad)?;
            let columns = b.columns();
            // A builtin's types are part of its code: its name and revision cover them.
            let types = b.column_types();
            let mut sorted: Vec<_> = params.iter().collect();
            sorted.sort_by(|a, b| a.0.cmp(b.0));
            let params_json = serde_json::to_string(&sorted).unwrap_or_default();
            cache_id.update(
                format!(
                    "builtin\0{name}\0{params_json}\0{VERSION}\0{}",
                    spec.version
                )
                .as_bytes(),
            );
            identity.update(format!("builtin\0{name}\0{params_json}").as_bytes());
            revision.update(format!("{VERSION}\0{}", spec.version).as_bytes());
            Ok(GeneratorIds {
                generator: Generator::Builtin(b),
                columns,
                types,
                identity: hex16(identity),
                revision: short_revision(revision),
                cache_id: hex16(cache_id),
            })
        }
        GeneratorKind::Command { argv } => {
            let columns = config.columns.clone().unwrap_or_default();
            let cmd = CommandGen::new(CommandSpec {
                argv,
                columns: columns.clone(),
                fields: &source.field_names(),
                root: &config.root,
                timeout: spec.timeout,
                shard: index,
                num_shards,
                marker: (spec.mode == crate::run::config::Mode::Persistent)
                    .then(|| spec.marker.as_bytes().to_vec()),
                max_item_bytes: spec.max_item_bytes,
            })
            .map_err(bad)?;
            let mut what = Vec::new();
            what.extend_from_slice(b"command\0");
            for a in argv {
                what.extend_from_slice(a.as_bytes());
                what.push(0);
            }
            what.push(1);
            for c in &columns {
                what.extend_from_slice(c.as_bytes());
                what.push(0);
            }
            what.push(1);
            // Declared types are part of the dataset; all-string columns hash as before types
            // existed, so that the runs made then still resume and hit the cache.
            let types = config.types.clone();
            if types.iter().any(|t| *t != ColumnType::String) {
                for t in &types {
                    what.extend_from_slice(t.name().as_bytes());
                    what.push(0);
                }
                what.push(1);
            }
            identity.update(&what);
            cache_id.update(&what);
            for h in [&mut cache_id, &mut revision] {
                h.update(spec.version.as_bytes()).update(b"\x01");
            }
            for (arg, path) in cmd.named_files() {
                let contents = std::fs::read(&path).map_err(|e| {
                    bad(Invalid(format!(
                        "cannot read {} named by the command: {e}",
                        path.display()
                    )))
                })?;
                let digest = blake3::hash(&contents);
                for h in [&mut cache_id, &mut revision] {
                    h.update(arg.as_bytes()).update(b"\0");
                    h.update(digest.as_bytes());
                }
            }
            Ok(GeneratorIds {
                generator: Generator::Command(cmd),
                columns,
                types,
                identity: hex16(identity),
                revision: short_revision(revision),
                cache_id: hex16(cache_id),
            })
        }
    }
}

/// A revision as records and reports show it: 12 hex digits.
fn short_revision(h: blake3::Hasher) -> String {
    h.finalize().to_hex()[..12].to_string()
}

fn hex16(h: blake3::Hasher) -> String {
    h.finalize().to_hex()[..16].to_string()
}
