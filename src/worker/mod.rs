//! Running one shard: lock it, open its store, produce the pending items (cache first, then the
//! generator, `jobs` at a time), group-commit them, and report through the log.

pub mod preflight;
pub mod shard;

use crate::store::record;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::child::signals::Interrupt;
use crate::child::stderr_cap::StderrCap;
use crate::error::{Error, ExitCode, IoContext, Result};
use crate::format::csv_out::RowWriter;
use crate::generator::command::{AttemptError, Slot};
use crate::run::config::Halt;
use crate::run::items::Item;
use crate::store::cache::{self, Cache};
use crate::store::lock::ShardLock;
use crate::store::log::{EventLog, V};
use crate::store::manifest::ShardStore;
use crate::store::record::{Record, Status};
use crate::worker::shard::{Generator, Shard, WorkerArgs, VERSION};

/// Commit at least this often while items complete.
const COMMIT_INTERVAL: Duration = Duration::from_millis(1000);
/// ... or when this many bytes of rows are waiting.
const COMMIT_BYTES: usize = 8 << 20;
/// At most one `item` log line per this interval (every item still counts in `done`).
const ITEM_LOG_INTERVAL: Duration = Duration::from_millis(50);
/// First retry delay; doubles per attempt up to `MAX_BACKOFF`.
const BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Fail fast: when this many items are the first a run attempts and all failed, the generator is
/// broken rather than unlucky (a missing module, a wrong path), so the shard stops instead of
/// spending retries and backoff on every item. `generator.halt`, when set, decides instead.
pub const FAIL_FAST_ITEMS: u64 = 20;

/// Runs the worker as the command line asks and returns its exit code.
pub fn run(args: &WorkerArgs) -> Result<ExitCode> {
    if args.describe {
        return describe(args);
    }
    let shard = Shard::resolve(args)?;
    if args.dry_run {
        crate::format::stdout::println(&shard.describe());
        return Ok(ExitCode::Ok);
    }
    let interrupt = Interrupt::install()?;
    execute(&shard, args, &interrupt)
}

/// `--describe`: what scripts need to know about a run, as `key=value` lines.
fn describe(args: &WorkerArgs) -> Result<ExitCode> {
    let root = crate::worker::shard::resolve_root(args.root.as_deref())?;
    let config = crate::run::config::Config::load(&args.config, &root)?;
    let paths = crate::run::paths::RunPaths::new(&root, &config.run);
    crate::format::stdout::print(&format!(
        "run={}\nshards={}\ndata_dir={}\nlogs_dir={}\n",
        config.run,
        config.shards.map(|n| n.to_string()).unwrap_or_default(),
        paths.data_dir.display(),
        paths.logs_dir.display()
    ));
    Ok(ExitCode::Ok)
}

/// Result of producing one item.
enum Outcome {
    Ok {
        item: Item,
        rows: Vec<u8>,
        count: u64,
        attempts: u32,
        ms: u64,
    },
    Failed {
        item: Item,
        attempts: u32,
        reason: String,
        ms: u64,
        /// The last line the generator wrote to stderr in its last attempt (often the cause).
        stderr: Option<String>,
    },
    Stopped,
    /// The shard cannot go on (a persistent generator that never starts): stop with this reason.
    Fatal {
        item: Item,
        attempts: u32,
        reason: String,
        ms: u64,
    },
}

fn create_dir(dir: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| {
        Error::usage(format!(
            "cannot create the directory {}: {e} (check --root and that it is writable)",
            dir.display()
        ))
    })
}

/// Identity of this process, as the start line and the lock files record it.
struct Me {
    pid: u32,
    pid_start: String,
    host: String,
}

impl Me {
    fn new() -> Me {
        let pid = std::process::id();
        Me {
            pid,
            pid_start: crate::child::proc_info::start_time(pid).unwrap_or_else(|| "0".into()),
            host: crate::child::proc_info::hostname(),
        }
    }
}

fn execute(shard: &Shard, args: &WorkerArgs, interrupt: &Interrupt) -> Result<ExitCode> {
    let echo = !args.quiet;
    let paths = &shard.paths;
    create_dir(&paths.data_dir)?;
    create_dir(&paths.logs_dir)?;
    create_dir(&paths.locks_dir())?;
    let me = Me::new();
    let holder = format!(
        "pid {} on host {} (since {})",
        me.pid,
        me.host,
        crate::store::log::timestamp()
    );
    // Shared with the run's other workers, whatever their plan; a merge takes it exclusive.
    let _run_lock = ShardLock::share_run(&paths.locks_dir(), &shard.config.run)?;
    let _shard_lock = ShardLock::acquire(
        &paths
            .locks_dir()
            .join(format!("shard{}_of_{}.lock", shard.index, shard.num_shards)),
        &format!(
            "shard {} of {} of run {:?}",
            shard.index, shard.num_shards, shard.config.run
        ),
        &holder,
    )?;
    let _name_lock = ShardLock::acquire(
        &paths.locks_dir().join(format!("{}.csv.lock", shard.name)),
        &format!("{}", paths.data_file(&shard.name).display()),
        &holder,
    )?;
    let header = shard.manifest_header();
    let mut resumed = Resumed::new(&shard.plan, &shard.revision);
    let store = ShardStore::open(paths, &header, args.force, |r| resumed.add(r))?;
    let log = EventLog::open(&paths.log(shard.index, shard.num_shards), echo)?;
    write_run_record(shard)?;

    let stale = resumed.stale_count();
    if args.redo_stale {
        resumed.forget_stale();
    }
    let Resumed {
        committed, rows, ..
    } = resumed;
    let done = committed.count();
    let total = shard.plan.len();
    let cache = if shard.use_cache && done < total {
        let dir = &shard.config.cache.dir;
        let wanted = if cache::has_entries(dir, &shard.generator_id) {
            let stop = interrupt.flag();
            cache::Wanted::new(
                committed
                    .pending(&shard.plan)
                    .take_while(|_| !stop.load(Ordering::Relaxed))
                    .map(|i| cache::item_key(&shard.generator_id, &shard.source.item(i))),
            )
        } else {
            cache::Wanted::default()
        };
        Some(Cache::open(dir, &shard.generator_id, &wanted)?)
    } else {
        None
    };
    let restart = std::env::var("SLURM_RESTART_COUNT").unwrap_or_default();
    let mut start_fields = vec![
        ("run", V::S(&shard.config.run)),
        ("shard", V::D(&shard.index)),
        ("num_shards", V::D(&shard.num_shards)),
        ("name", V::S(&shard.name)),
        ("pid", V::D(&me.pid)),
        ("pid_start", V::S(&me.pid_start)),
        ("host", V::S(&me.host)),
        ("items", V::D(&total)),
        ("committed", V::D(&done)),
        ("rows", V::D(&rows)),
        ("jobs", V::D(&shard.jobs)),
        ("version", V::S(VERSION)),
        ("revision", V::S(&shard.revision)),
        ("stale", V::D(&stale)),
    ];
    if args.redo_stale {
        start_fields.push(("redo_stale", V::S("yes")));
    }
    if !restart.is_empty() && restart != "0" {
        start_fields.push(("restart", V::S(&restart)));
    }
    log.event("start", &start_fields);
    if let Some(message) = &store.repaired {
        log.event("warning", &[("message", V::S(message))]);
    }
    if matches!(shard.generator, Generator::Command(_)) && done < total {
        // Whatever the generators start in the background dies with them, even if this
        // worker is SIGKILLed (see src/child/guard.rs). Best effort: without it, only that case
        // changes.
        match crate::child::guard::start() {
            Ok((pipe, pid)) => crate::child::groups::set_guard(pipe, pid),
            Err(e) => log.event(
                "warning",
                &[(
                    "message",
                    V::S(&format!(
                        "cannot start the guard of the generators' process groups: {e}"
                    )),
                )],
            ),
        }
    }

    let rate = RateLimit::new(shard.config.generator.min_start_interval);
    let mut run = Run {
        shard,
        log: &log,
        store,
        cache,
        interrupt,
        done,
        total,
        rows,
        failed: 0,
        cached: 0,
        generated: 0,
        started: Instant::now(),
        last_commit: Instant::now(),
        last_item_log: None,
        halted: false,
        attempted: 0,
        rate: &rate,
        why: Why::default(),
    };
    let result = run.produce_all(&committed);
    let result = result.and_then(|()| run.commit());
    let code = run.finish(result);
    // Launchers and monitor read the shard's outcome from its log: one that could not be written
    // (its file system full) must not pass for a clean run.
    if let Some((source, path)) = log.take_error() {
        let err = Error::Io {
            what: "cannot write the shard log",
            path: path.to_path_buf(),
            source,
        };
        if code == ExitCode::Ok {
            return Err(err);
        }
        eprintln!("shard-worker: error: {err}");
    }
    Ok(code)
}

fn write_run_record(shard: &Shard) -> Result<()> {
    let record = serde_json::json!({
        "shardrun": VERSION,
        "run": shard.config.run,
        "num_shards": shard.num_shards,
        "fingerprint": {
            "items": shard.fingerprint.get("items"),
            "generator": shard.fingerprint.get("generator"),
            "seed": shard.fingerprint.get("seed"),
            "sharding": shard.config.sharding.name(),
        },
        "revision": shard.revision,
        "columns": shard.columns,
        "config": shard.config,
    });
    let path = shard.paths.run_record();
    let tmp = shard
        .paths
        .data_dir
        .join(format!(".run.json.{}.tmp", std::process::id()));
    let text = serde_json::to_vec_pretty(&record).unwrap_or_default();
    let mut f = crate::store::files::create(&tmp)?;
    std::io::Write::write_all(&mut f, &text)
        .and_then(|_| std::fs::rename(&tmp, &path))
        .ctx("cannot write the run record", &path)
}

/// Which of the shard's items are committed: one bit per position in the shard, so the memory
/// is the shard's item count / 8, whatever the size of the source.
struct Committed(Vec<u64>, u64);

impl Committed {
    fn new(len: u64) -> Self {
        Committed(vec![0; usize::try_from(len.div_ceil(64)).unwrap_or(0)], len)
    }
    fn set(&mut self, pos: u64) {
        if let Some(w) = self.0.get_mut((pos / 64) as usize) {
            *w |= 1 << (pos % 64);
        }
    }
    fn clear(&mut self, pos: u64) {
        if let Some(w) = self.0.get_mut((pos / 64) as usize) {
            *w &= !(1 << (pos % 64));
        }
    }
    fn get(&self, pos: u64) -> bool {
        self.0
            .get((pos / 64) as usize)
            .is_some_and(|w| w & (1 << (pos % 64)) != 0)
    }
    fn count(&self) -> u64 {
        self.0.iter().map(|w| u64::from(w.count_ones())).sum()
    }
    /// Global indices of the shard's items that are not committed, in shard order.
    fn pending<'p>(
        &'p self,
        plan: &'p crate::run::plan::ShardPlan,
    ) -> impl Iterator<Item = u64> + 'p {
        (0..self.1)
            .filter(|&p| !self.get(p))
            .map(|p| plan.global(p))
    }
}

/// What a resumed shard already holds, built from its manifest's records in file order: the
/// latest record of an item counts (a failure after a commit, or a second commit made by
/// `--redo-stale`, supersedes the earlier record).
struct Resumed<'a> {
    plan: &'a crate::run::plan::ShardPlan,
    revision: &'a str,
    committed: Committed,
    /// Committed items that an older revision made.
    stale: Committed,
    /// Rows of each committed item (by position), to keep `rows` right when a record is
    /// superseded.
    item_rows: Vec<u64>,
    rows: u64,
}

impl<'a> Resumed<'a> {
    fn new(plan: &'a crate::run::plan::ShardPlan, revision: &'a str) -> Self {
        Resumed {
            plan,
            revision,
            committed: Committed::new(plan.len()),
            stale: Committed::new(plan.len()),
            item_rows: Vec::new(),
            rows: 0,
        }
    }

    fn add(&mut self, r: record::RecordRef<'_>) {
        let Some(pos) = self.plan.position(r.index) else {
            return;
        };
        if self.committed.get(pos) {
            // Superseded: take the earlier commit's rows back.
            self.rows -= self.item_rows.get(pos as usize).copied().unwrap_or(0);
        }
        match r.status {
            Status::Ok => {
                self.committed.set(pos);
                if r.rev == self.revision {
                    self.stale.clear(pos);
                } else {
                    self.stale.set(pos);
                }
                self.rows += r.rows;
                let pos = pos as usize;
                if self.item_rows.len() <= pos {
                    self.item_rows.resize(pos + 1, 0);
                }
                self.item_rows[pos] = r.rows;
            }
            Status::Failed => {
                self.committed.clear(pos);
                self.stale.clear(pos);
            }
        }
    }

    fn stale_count(&self) -> u64 {
        self.stale.count()
    }

    /// Makes the stale items pending again (`--redo-stale`): their new commits will supersede
    /// the old ones.
    fn forget_stale(&mut self) {
        let words = self.stale.0.iter().zip(self.committed.0.iter_mut());
        for (w, (&stale, committed)) in words.enumerate() {
            *committed &= !stale;
            let mut bits = stale;
            while bits != 0 {
                let b = u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                let pos = w as u64 * 64 + b;
                self.rows -= self.item_rows.get(pos as usize).copied().unwrap_or(0);
            }
        }
    }
}

/// Spaces item starts to honour `generator.rate`.
struct RateLimit {
    interval: Option<Duration>,
    next: Mutex<Instant>,
}

impl RateLimit {
    fn new(interval: Option<Duration>) -> Self {
        RateLimit {
            interval,
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits for this start's turn; false if a stop was requested meanwhile.
    fn wait(&self, stop: &AtomicBool) -> bool {
        let Some(interval) = self.interval else {
            return true;
        };
        let at = {
            let Ok(mut next) = self.next.lock() else {
                return true;
            };
            let at = (*next).max(Instant::now());
            *next = at + interval;
            at
        };
        sleep_until(at, stop)
    }
}

/// Sleeps until `at` in short steps; false if a stop was requested.
fn sleep_until(at: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        let now = Instant::now();
        if now >= at {
            return true;
        }
        std::thread::sleep((at - now).min(Duration::from_millis(50)));
    }
}

/// The state of a running shard.
struct Run<'a> {
    shard: &'a Shard,
    log: &'a EventLog,
    store: ShardStore,
    cache: Option<Cache>,
    interrupt: &'a Interrupt,
    done: u64,
    total: u64,
    rows: u64,
    failed: u64,
    cached: u64,
    generated: u64,
    started: Instant,
    last_commit: Instant,
    last_item_log: Option<Instant>,
    halted: bool,
    attempted: u64,
    rate: &'a RateLimit,
    why: Why,
}

/// Why a shard did not end ok, for the one line it prints on stderr at the end: a launcher shows
/// that line in its report (the log holds the details).
#[derive(Default)]
struct Why {
    /// The first failed item: its key and the first line of its reason.
    first_failure: Option<String>,
    /// What stopped the shard (`halt`).
    halt: Option<String>,
}

/// The first line of a message (reasons may quote a multi-line stderr or traceback).
fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

impl Run<'_> {
    fn stopping(&self) -> bool {
        self.halted || self.interrupt.requested()
    }

    /// Produces every pending item, serving the cache first.
    fn produce_all(&mut self, committed: &Committed) -> Result<()> {
        let shard = self.shard;
        let mut pending = committed.pending(&shard.plan).map(|i| shard.source.item(i));
        let (stop, rate, log) = (self.interrupt.flag(), self.rate, self.log);
        if shard.jobs == 1 {
            // One slot: produced on this thread, without channels.
            let mut producer = Producer::new(shard, 0, stop, rate, log);
            while let Some(item) = self.next_uncached(&mut pending)? {
                self.attempted += 1;
                self.handle(producer.produce(item))?;
            }
            return Ok(());
        }
        std::thread::scope(|scope| {
            let (work_tx, work_rx) = crossbeam_channel::bounded::<Item>(0);
            let (done_tx, done_rx) = crossbeam_channel::unbounded::<Outcome>();
            for slot in 0..shard.jobs {
                let (rx, tx) = (work_rx.clone(), done_tx.clone());
                scope.spawn(move || {
                    // Made on the slot's own thread, which lives as long as its generator
                    // processes (their parent-death signal follows the thread that started them).
                    let mut producer = Producer::new(shard, slot, stop, rate, log);
                    for item in rx {
                        if tx.send(producer.produce(item)).is_err() {
                            break;
                        }
                    }
                });
            }
            drop((work_rx, done_tx));
            let mut in_flight = 0u32;
            let result = (|| {
                while let Some(item) = self.next_uncached(&mut pending)? {
                    while in_flight >= shard.jobs {
                        self.wait_one(&done_rx, &mut in_flight)?;
                    }
                    if self.stopping() {
                        break;
                    }
                    self.attempted += 1;
                    if work_tx.send(item).is_err() {
                        break;
                    }
                    in_flight += 1;
                    while let Ok(o) = done_rx.try_recv() {
                        in_flight -= 1;
                        self.handle(o)?;
                    }
                }
                drop(work_tx);
                while in_flight > 0 {
                    self.wait_one(&done_rx, &mut in_flight)?;
                }
                Ok(())
            })();
            if result.is_err() {
                // Stop the slots' generators so the scope can end promptly.
                self.interrupt.flag().store(true, Ordering::SeqCst);
            }
            result
        })
    }

    fn wait_one(
        &mut self,
        done_rx: &crossbeam_channel::Receiver<Outcome>,
        in_flight: &mut u32,
    ) -> Result<()> {
        match done_rx.recv_timeout(COMMIT_INTERVAL) {
            Ok(o) => {
                *in_flight -= 1;
                self.handle(o)
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => self.maybe_commit(),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                *in_flight = 0;
                Ok(())
            }
        }
    }

    /// The next item that needs the generator; cache hits are committed on the way.
    fn next_uncached(&mut self, pending: &mut impl Iterator<Item = Item>) -> Result<Option<Item>> {
        loop {
            if self.stopping() {
                return Ok(None);
            }
            let Some(item) = pending.next() else {
                return Ok(None);
            };
            let hit = self
                .cache
                .as_mut()
                .and_then(|c| c.get(&cache::item_key(&self.shard.generator_id, &item)));
            match hit {
                Some((rows, count)) => {
                    self.cached += 1;
                    self.record_ok(item, &rows, count, 1, 0, true)?;
                }
                None => return Ok(Some(item)),
            }
        }
    }

    fn handle(&mut self, outcome: Outcome) -> Result<()> {
        match outcome {
            Outcome::Ok {
                item,
                rows,
                count,
                attempts,
                ms,
            } => {
                // A value that does not read as its column's type fails the item here, so that
                // merge (and the cache) never meet it. A builtin writes its own typed values.
                let checked = match self.shard.generator {
                    Generator::Command(_) => crate::run::types::check_rows(
                        &self.shard.columns,
                        &self.shard.types,
                        &rows,
                        self.shard.config.format != crate::run::config::OutputFormat::Csv,
                    ),
                    Generator::Builtin(_) => Ok(()),
                };
                if let Err(reason) = checked {
                    return self.handle(Outcome::Failed {
                        item,
                        attempts,
                        reason,
                        ms,
                        stderr: None,
                    });
                }
                self.generated += 1;
                if let Some(c) = self.cache.as_mut() {
                    let key = cache::item_key(&self.shard.generator_id, &item);
                    if let Err(e) = c.put(&key, count, &rows) {
                        self.cache_failed(&e);
                    }
                }
                self.record_ok(item, &rows, count, attempts, ms, false)
            }
            Outcome::Failed {
                item,
                attempts,
                reason,
                ms,
                stderr,
            } => {
                self.failed += 1;
                if self.why.first_failure.is_none() {
                    let said = stderr.map(|l| format!(" (its last stderr line: {l})"));
                    self.why.first_failure = Some(format!(
                        "key {}: {}{}",
                        item.key,
                        first_line(&reason),
                        said.unwrap_or_default()
                    ));
                }
                self.log.event(
                    "item_failed",
                    &[
                        ("done", V::D(&self.done)),
                        ("total", V::D(&self.total)),
                        ("key", V::S(&item.key)),
                        ("index", V::D(&item.index)),
                        ("attempts", V::D(&attempts)),
                        ("reason", V::S(&reason)),
                    ],
                );
                self.store.push_failed(Record {
                    index: item.index,
                    key: item.key,
                    status: Status::Failed,
                    offset: 0,
                    bytes: 0,
                    crc: None,
                    rows: 0,
                    ms,
                    cached: false,
                    attempts,
                    rev: self.shard.revision.clone(),
                    reason: Some(reason),
                });
                self.check_halt();
                self.maybe_commit()
            }
            Outcome::Fatal {
                item,
                attempts,
                reason,
                ms,
            } => {
                if !self.halted {
                    self.halt(self.failed + 1, first_line(&reason).to_string());
                }
                self.handle(Outcome::Failed {
                    item,
                    attempts,
                    reason,
                    ms,
                    stderr: None,
                })
            }
            Outcome::Stopped => Ok(()),
        }
    }

    fn cache_failed(&mut self, e: &Error) {
        self.log.event(
            "warning",
            &[(
                "message",
                V::S(&format!("cache disabled for this run: {e}")),
            )],
        );
        self.cache = None;
    }

    fn record_ok(
        &mut self,
        item: Item,
        rows: &[u8],
        count: u64,
        attempts: u32,
        ms: u64,
        cached: bool,
    ) -> Result<()> {
        self.done += 1;
        self.rows += count;
        let now = Instant::now();
        let due = self
            .last_item_log
            .is_none_or(|t| now.duration_since(t) >= ITEM_LOG_INTERVAL);
        if due || self.done == self.total {
            self.last_item_log = Some(now);
            self.log.event(
                "item",
                &[
                    ("done", V::D(&self.done)),
                    ("total", V::D(&self.total)),
                    ("rows", V::D(&self.rows)),
                    ("key", V::S(&item.key)),
                    ("index", V::D(&item.index)),
                    ("status", V::S(if cached { "cached" } else { "generated" })),
                    ("item_rows", V::D(&count)),
                    ("ms", V::D(&ms)),
                ],
            );
        }
        self.store.push_ok(
            Record {
                index: item.index,
                key: item.key,
                status: Status::Ok,
                offset: 0,
                bytes: 0,
                crc: None,
                rows: count,
                ms,
                cached,
                attempts,
                rev: self.shard.revision.clone(),
                reason: None,
            },
            rows,
        )?;
        self.maybe_commit()
    }

    fn check_halt(&mut self) {
        let Some(halt) = self.shard.config.generator.halt else {
            if !self.halted && self.generated == 0 && self.failed >= FAIL_FAST_ITEMS {
                self.halt(
                    self.failed,
                    format!(
                        "the first {FAIL_FAST_ITEMS} items this run attempted all failed; \
                         starting no new items (set generator.halt to choose another limit)"
                    ),
                );
            }
            return;
        };
        let limit_reached = match halt {
            Halt::Count(n) => self.failed >= n,
            Halt::Percent(p) => {
                let todo = self
                    .total
                    .saturating_sub(self.done - self.generated - self.cached);
                (self.failed as f64) * 100.0 >= p * (todo.max(1) as f64)
            }
        };
        if limit_reached && !self.halted {
            self.halt(
                self.failed,
                "generator.halt.failures reached; starting no new items".into(),
            );
        }
    }

    /// Starts no new items, and says why in the log.
    fn halt(&mut self, failed: u64, reason: String) {
        self.halted = true;
        self.log.event(
            "halt",
            &[("failed", V::D(&failed)), ("reason", V::S(&reason))],
        );
        self.why.halt = Some(reason);
    }

    fn maybe_commit(&mut self) -> Result<()> {
        let (bytes, items) = self.store.pending();
        if items > 0 && (bytes >= COMMIT_BYTES || self.last_commit.elapsed() >= COMMIT_INTERVAL) {
            self.commit()?;
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<()> {
        if let Some(c) = self.cache.as_mut() {
            if let Err(e) = c.flush() {
                self.cache_failed(&e);
            }
        }
        self.store.commit()?;
        self.last_commit = Instant::now();
        Ok(())
    }

    /// Logs the finish line and picks the exit code.
    fn finish(&mut self, result: Result<()>) -> ExitCode {
        let (status, code) = match &result {
            Err(e) => {
                self.log
                    .event("error", &[("message", V::S(&e.to_string()))]);
                ("error", ExitCode::ItemsFailed)
            }
            Ok(()) => match self.interrupt.exit_code() {
                Some(code) => ("interrupted", code),
                None if self.halted => ("halted", ExitCode::ItemsFailed),
                None if self.failed > 0 => ("failed", ExitCode::ItemsFailed),
                None => ("ok", ExitCode::Ok),
            },
        };
        if status == "interrupted" {
            self.log
                .event("signal", &[("signal", V::S(self.interrupt.signal_name()))]);
        }
        let elapsed = format!("{:.3}", self.started.elapsed().as_secs_f64());
        self.log.event(
            "finish",
            &[
                ("status", V::S(status)),
                ("done", V::D(&self.done)),
                ("total", V::D(&self.total)),
                ("failed", V::D(&self.failed)),
                ("cached", V::D(&self.cached)),
                ("generated", V::D(&self.generated)),
                ("rows", V::D(&self.rows)),
                ("elapsed_s", V::S(&elapsed)),
                ("exit", V::D(&code.code())),
            ],
        );
        self.say_why(status, result.err());
        code
    }

    /// One line on stderr when the shard did not end ok (even with --quiet, whose stderr the
    /// launchers keep for exactly this): `shard-worker: <status>: <why>`.
    fn say_why(&self, status: &str, error: Option<Error>) {
        let first = self.why.first_failure.as_deref().unwrap_or("");
        let why = match status {
            "error" => error.map(|e| e.to_string()).unwrap_or_default(),
            "halted" => format!(
                "{}; first failed item: {first}",
                self.why.halt.as_deref().unwrap_or("stopped")
            ),
            "failed" => format!(
                "{} of {} items failed; first: {first}",
                self.failed, self.total
            ),
            _ => return,
        };
        eprintln!("shard-worker: {status}: {}", first_line(&why));
    }
}

/// One line of a generator's stderr, tagged with the item being made.
fn log_stderr(log: &EventLog, key: &str, line: &[u8]) {
    log.event(
        "stderr",
        &[
            ("key", V::S(key)),
            ("line", V::S(&String::from_utf8_lossy(line))),
        ],
    );
}

/// Says how much of an attempt's stderr the log left out (see [`StderrCap`]).
fn log_dropped(log: &EventLog, key: &str, lines: u64, bytes: u64) {
    log.event(
        "stderr_dropped",
        &[
            ("key", V::S(key)),
            ("lines", V::D(&lines)),
            ("bytes", V::D(&bytes)),
        ],
    );
}

/// One slot of a shard: makes items one at a time with the shard's generator, keeping what the
/// generator keeps between items (a persistent process, a parser, the row buffer). The slot body
/// of both the one-slot loop and the `jobs` > 1 threads. Dropping it ends the slot's persistent
/// process, logging its last stderr lines.
struct Producer<'a> {
    shard: &'a Shard,
    slot: u32,
    stop: &'a AtomicBool,
    rate: &'a RateLimit,
    log: &'a EventLog,
    out: RowWriter,
    state: Slot,
}

impl<'a> Producer<'a> {
    fn new(
        shard: &'a Shard,
        slot: u32,
        stop: &'a AtomicBool,
        rate: &'a RateLimit,
        log: &'a EventLog,
    ) -> Self {
        Producer {
            shard,
            slot,
            stop,
            rate,
            log,
            out: RowWriter::new(),
            state: Slot::default(),
        }
    }

    /// Produces one item, retrying a failed command with backoff.
    fn produce(&mut self, item: Item) -> Outcome {
        let Producer {
            slot,
            stop,
            rate,
            log,
            ..
        } = *self;
        let (out, state) = (&mut self.out, &mut self.state);
        let started = Instant::now();
        let ms = |s: Instant| s.elapsed().as_millis() as u64;
        match &self.shard.generator {
            Generator::Builtin(b) => {
                // generator.rate applies to builtins too (a quota is a quota).
                if !rate.wait(stop) {
                    return Outcome::Stopped;
                }
                out.clear();
                match b.generate(&item, out, stop) {
                    Ok(()) => {
                        let (rows, count) = out.take();
                        Outcome::Ok {
                            item,
                            rows,
                            count,
                            attempts: 1,
                            ms: ms(started),
                        }
                    }
                    Err(_) if stop.load(Ordering::SeqCst) => Outcome::Stopped,
                    Err(reason) => Outcome::Failed {
                        item,
                        attempts: 1,
                        reason,
                        ms: ms(started),
                        stderr: None,
                    },
                }
            }
            Generator::Command(cmd) => {
                let max_attempts = self.shard.config.generator.retries + 1;
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    if !rate.wait(stop) {
                        return Outcome::Stopped;
                    }
                    out.clear();
                    let key = &item.key;
                    let mut cap = StderrCap::new();
                    // The last non-blank stderr line names the failure in the launcher's report.
                    let mut last_line: Vec<u8> = Vec::new();
                    let result = {
                        let mut on_stderr = |line: &[u8]| {
                            if !line.trim_ascii().is_empty() {
                                last_line.clear();
                                last_line.extend_from_slice(line.trim_ascii_end());
                            }
                            cap.line(line, &mut |l| log_stderr(log, key, l));
                        };
                        if cmd.is_persistent() {
                            cmd.serve(&item, slot, state, stop, &mut on_stderr, out)
                        } else {
                            cmd.attempt(&item, slot, state, stop, &mut on_stderr, out)
                        }
                    };
                    cap.finish(
                        &mut |lines, bytes| log_dropped(log, key, lines, bytes),
                        &mut |l| log_stderr(log, key, l),
                    );
                    match result {
                        Ok(()) => {
                            let (rows, count) = out.take();
                            return Outcome::Ok {
                                item,
                                rows,
                                count,
                                attempts: attempt,
                                ms: ms(started),
                            };
                        }
                        Err(AttemptError::Stopped) => return Outcome::Stopped,
                        Err(AttemptError::Fatal(reason)) => {
                            return Outcome::Fatal {
                                item,
                                attempts: attempt,
                                reason,
                                ms: ms(started),
                            }
                        }
                        Err(AttemptError::Failed(reason)) => {
                            log.event(
                                "attempt_failed",
                                &[
                                    ("key", V::S(&item.key)),
                                    ("index", V::D(&item.index)),
                                    ("attempt", V::S(&format!("{attempt}/{max_attempts}"))),
                                    ("reason", V::S(&reason)),
                                ],
                            );
                            if attempt >= max_attempts {
                                return Outcome::Failed {
                                    item,
                                    attempts: attempt,
                                    reason,
                                    ms: ms(started),
                                    stderr: (!last_line.is_empty())
                                        .then(|| String::from_utf8_lossy(&last_line).into_owned()),
                                };
                            }
                            let delay = BACKOFF
                                .saturating_mul(1 << (attempt - 1).min(16))
                                .min(MAX_BACKOFF);
                            if !sleep_until(Instant::now() + delay, stop) {
                                return Outcome::Stopped;
                            }
                        }
                    }
                }
            }
        }
    }
}

impl Drop for Producer<'_> {
    fn drop(&mut self) {
        let log = self.log;
        let mut cap = StderrCap::new();
        self.state
            .finish(&mut |line: &[u8]| cap.line(line, &mut |l| log_stderr(log, "", l)));
        cap.finish(
            &mut |lines, bytes| log_dropped(log, "", lines, bytes),
            &mut |l| log_stderr(log, "", l),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::config::Sharding;
    use crate::run::plan::ShardPlan;
    use crate::store::record::RecordRef;

    fn rec(index: u64, status: Status, rows: u64, rev: &str) -> RecordRef<'_> {
        RecordRef {
            index,
            key: "",
            status,
            offset: 0,
            bytes: 0,
            crc: None,
            rows,
            ms: 0,
            cached: false,
            attempts: 1,
            rev,
            reason: None,
        }
    }

    #[test]
    fn the_latest_record_of_an_item_counts_on_resume() {
        // Shard 1 of 2 of 10 items: indices 5 to 9.
        let plan = ShardPlan::new(Sharding::Contiguous, 10, 2, 1);
        let mut r = Resumed::new(&plan, "new");
        r.add(rec(5, Status::Ok, 3, "old"));
        r.add(rec(6, Status::Ok, 2, "old"));
        r.add(rec(7, Status::Failed, 0, "old"));
        r.add(rec(8, Status::Ok, 4, "new"));
        // A redone item supersedes its stale commit; a failure after a commit uncommits it.
        r.add(rec(5, Status::Ok, 10, "new"));
        r.add(rec(8, Status::Failed, 0, "new"));
        r.add(rec(7, Status::Ok, 1, "new"));
        assert_eq!((r.committed.count(), r.rows, r.stale_count()), (3, 13, 1));
        assert!(r.stale.get(plan.position(6).unwrap()));
        r.forget_stale();
        assert_eq!((r.committed.count(), r.rows), (2, 11));
        let pending: Vec<u64> = r.committed.pending(&plan).collect();
        assert_eq!(pending, [6, 8, 9]);
    }
}
