//! `monitor`: the state of every shard of a run, from the shard logs (and `/proc` for live local
//! workers), as a snapshot, a live display, or JSON; and the failed items of a run, from its
//! manifests (`failures.rs`).

pub mod display;
pub mod failures;
pub(crate) mod log_tail;
pub mod notify;
pub mod screen;
pub mod serve;
pub mod slurm;

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::run::config::{Config, Sharding};
use crate::run::paths::RunPaths;
use crate::run::plan::ShardPlan;
use log_tail::LogTail;

/// A shard's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Running,
    Done,
    Failed,
    Interrupted,
    Died,
}

impl State {
    /// True once the shard will not change without a new run.
    pub fn ended(self) -> bool {
        !matches!(self, State::Pending | State::Running)
    }
}

/// One row of the snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct ShardView {
    pub shard: u32,
    pub state: State,
    pub stalled: bool,
    pub items_done: u64,
    pub items_total: u64,
    pub items_failed: u64,
    pub rows: u64,
    pub current: Option<String>,
    pub rate: Option<f64>,
    pub eta_s: Option<f64>,
    pub pid: Option<u32>,
    pub host: Option<String>,
    pub cpu_pct: Option<f64>,
    pub rss_bytes: Option<u64>,
    pub silent_s: Option<f64>,
}

/// Totals of a snapshot.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub done: u32,
    pub running: u32,
    pub failed: u32,
    pub interrupted: u32,
    pub pending: u32,
    pub died: u32,
    pub stalled: u32,
    pub rows: u64,
    pub items_done: u64,
    /// Every shard's item count, started or not, when the plan is known (see
    /// `items_total_complete`).
    pub items_total: u64,
    /// False when a shard that has not started has an unknown item count (no manifest of the
    /// run yet and no `--config`): `items_total` then counts the started shards only.
    pub items_total_complete: bool,
    /// Items whose last attempt failed, in the shards' current runs.
    pub items_failed: u64,
    pub rate: Option<f64>,
    pub eta_s: Option<f64>,
    pub unparsed_lines: u64,
    pub bytes_read: u64,
}

/// A whole snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub run: String,
    pub num_shards: u32,
    pub shards: Vec<ShardView>,
    pub summary: Summary,
    /// For a run submitted by run_slurm.sh: where its tasks are in Slurm's queue.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slurm: Option<slurm::SlurmView>,
}

impl Snapshot {
    /// True when every shard has ended.
    pub fn all_ended(&self) -> bool {
        self.shards.iter().all(|s| s.state.ended())
    }

    /// True when every shard is done.
    pub fn all_done(&self) -> bool {
        self.shards.iter().all(|s| s.state == State::Done)
    }
}

/// The item count of every shard, known before any starts: from the run's manifests (each
/// header names the source's item count and the sharding) or its configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub n_items: u64,
    pub sharding: Sharding,
}

impl Plan {
    /// The first manifest of the run under this shard count, else the configuration's item
    /// source. `None` when neither tells (a run with no started shard, watched without --config).
    pub fn find(paths: &RunPaths, num_shards: u32, config: Option<&Config>) -> Option<Plan> {
        let from_manifest = paths.manifests().ok().and_then(|list| {
            list.into_iter()
                .filter(|(_, n, _)| *n == num_shards)
                .find_map(|(_, _, path)| crate::store::record::read_header(&path))
                .filter(|h| h.num_shards == num_shards)
                .map(|h| Plan {
                    n_items: h.source_items,
                    sharding: h.sharding,
                })
        });
        from_manifest.or_else(|| {
            let c = config?;
            let source = crate::run::items::ItemSource::load(&c.items, c.seed).ok()?;
            Some(Plan {
                n_items: source.len(),
                sharding: c.sharding,
            })
        })
    }

    /// The item count of shard `index` of `num_shards`.
    pub fn items(&self, index: u32, num_shards: u32) -> u64 {
        ShardPlan::new(self.sharding, self.n_items, num_shards, index).len()
    }
}

/// Watches the logs of one run.
pub struct Monitor {
    run: String,
    paths: RunPaths,
    num_shards: u32,
    config: Option<Config>,
    /// Looked for until found, and only while a shard has not started.
    plan: Option<Plan>,
    tails: Vec<LogTail>,
    stall: Duration,
    host: String,
    /// (pid, cpu ticks, when) of the previous refresh, for CPU % between refreshes.
    cpu_prev: Vec<Option<(u32, u64, std::time::Instant)>>,
    /// Each shard's manifest as last counted (for shards whose log ended early).
    manifests: Vec<Option<ManifestCount>>,
    /// The run's last Slurm submission, when it has one, read again when `slurm.status` changes
    /// (a re-submission while the monitor runs).
    slurm: Option<slurm::SlurmRun>,
    /// The length and time of `slurm.status` when it was last read.
    slurm_stamp: Option<(u64, std::time::SystemTime)>,
}

/// What a shard's manifest says: committed items, their rows, the shard's item count, and the
/// manifest's length when it was counted (it is counted again only when that changes).
struct ManifestCount {
    len: u64,
    ok: u64,
    rows: u64,
    total: u64,
}

/// Counts the committed items of the manifest at `path` (`None` when there is none).
fn count_manifest<'c>(
    cache: &'c mut Option<ManifestCount>,
    path: &Path,
) -> Option<&'c ManifestCount> {
    let len = std::fs::metadata(path).ok()?.len();
    if cache.as_ref().map(|c| c.len) != Some(len) {
        let (mut ok, mut rows) = (0, 0);
        let (header, _, _) = crate::store::record::scan(path, |r, _| {
            if r.status == crate::store::record::Status::Ok {
                ok += 1;
                rows += r.rows;
            }
        })
        .ok()??;
        *cache = Some(ManifestCount {
            len,
            ok,
            rows,
            total: header.items_total,
        });
    }
    cache.as_ref()
}

impl Monitor {
    /// Watches `run` under `paths` with `num_shards` shards.
    pub fn new(run: &str, paths: &RunPaths, num_shards: u32, stall: Duration) -> Monitor {
        Monitor {
            run: run.to_string(),
            paths: paths.clone(),
            num_shards,
            config: None,
            plan: None,
            tails: (0..num_shards)
                .map(|i| LogTail::new(&paths.log(i, num_shards)))
                .collect(),
            stall,
            host: crate::child::proc_info::hostname(),
            cpu_prev: vec![None; num_shards as usize],
            manifests: (0..num_shards).map(|_| None).collect(),
            slurm: None,
            slurm_stamp: None,
        }
    }

    /// The run's configuration (`--config`): the plan of shards that have not started yet.
    pub fn with_config(mut self, config: Option<Config>) -> Monitor {
        self.config = config;
        self
    }

    /// The shard count watched.
    pub fn num_shards(&self) -> u32 {
        self.num_shards
    }

    /// Reads what the logs appended and returns the current snapshot.
    pub fn snapshot(&mut self) -> Snapshot {
        refresh_all(&mut self.tails);
        if self.plan.is_none() && self.tails.iter().any(|t| t.state.start.is_none()) {
            self.plan = Plan::find(&self.paths, self.num_shards, self.config.as_ref());
        }
        let now = chrono::Utc::now().fixed_offset();
        let stamp = std::fs::metadata(self.paths.logs_dir.join("slurm.status"))
            .ok()
            .and_then(|m| Some((m.len(), m.modified().ok()?)));
        if stamp != self.slurm_stamp {
            self.slurm = slurm::SlurmRun::load(&self.paths.logs_dir);
            self.slurm_stamp = stamp;
        }
        let queue = self.slurm.as_ref().map(|s| s.view(&self.tails));
        // Shards whose task waits in Slurm's queue: what their logs say is from an earlier
        // submission, and they will run again.
        let waiting = queue.as_ref().map(|q| q.waiting()).unwrap_or_default();
        let mut shards = Vec::with_capacity(self.tails.len());
        let mut summary = Summary {
            items_total_complete: true,
            ..Summary::default()
        };
        for (i, tail) in self.tails.iter().enumerate() {
            let mut view = self.view(i as u32, tail, now);
            if view.state.ended() && waiting.binary_search(&(i as u32)).is_ok() {
                view.state = State::Pending;
                view.eta_s = None;
            }
            // A log that ends early (its file system was full, or the worker died after its last
            // commit) does not say what the shard did; its manifest does. An item is committed
            // at most once, so as many committed items as the shard has means it is done.
            if matches!(view.state, State::Died | State::Pending) {
                let path = self.paths.manifest(i as u32, self.num_shards);
                if let Some(c) = count_manifest(&mut self.manifests[i], &path) {
                    if c.ok == c.total {
                        view.state = State::Done;
                        (view.items_done, view.items_total, view.rows) = (c.ok, c.total, c.rows);
                        view.eta_s = Some(0.0);
                    }
                }
            }
            summary.rows += view.rows;
            summary.items_done += view.items_done;
            summary.items_total += view.items_total;
            summary.items_failed += view.items_failed;
            summary.items_total_complete &= tail.state.start.is_some() || self.plan.is_some();
            if view.state == State::Running {
                summary.rate = Some(summary.rate.unwrap_or(0.0) + view.rate.unwrap_or(0.0));
            }
            summary.stalled += u32::from(view.stalled);
            match view.state {
                State::Pending => summary.pending += 1,
                State::Running => summary.running += 1,
                State::Done => summary.done += 1,
                State::Failed => summary.failed += 1,
                State::Interrupted => summary.interrupted += 1,
                State::Died => summary.died += 1,
            }
            summary.unparsed_lines += tail.unparsed;
            summary.bytes_read += tail.bytes_read;
            shards.push(view);
        }
        for (i, view) in shards.iter_mut().enumerate() {
            self.cpu(i, view);
        }
        summary.rate = summary.rate.filter(|r| *r > 0.0);
        // The items left over the recent rate of the running shards: with shards still queued
        // (a launcher's --max-running, a Slurm queue) the rate is that of the slots in use.
        let left = summary.items_total.saturating_sub(summary.items_done);
        summary.eta_s = match summary.rate {
            _ if summary.running == 0 || left == 0 => None,
            Some(r) if summary.items_total_complete => Some(left as f64 / r),
            _ => None,
        };
        Snapshot {
            run: self.run.clone(),
            num_shards: self.num_shards,
            shards,
            summary,
            slurm: queue,
        }
    }

    fn view(
        &self,
        shard: u32,
        tail: &LogTail,
        now: chrono::DateTime<chrono::FixedOffset>,
    ) -> ShardView {
        let s = &tail.state;
        let silent_s = s
            .last_event
            .map(|t| ((now - t).num_milliseconds() as f64 / 1000.0).max(0.0));
        let stalled_for = silent_s.is_some_and(|x| x > self.stall.as_secs_f64());
        let start = s.start.as_ref();
        let local = start.is_some_and(|st| st.host == self.host);
        let state = match (tail.exists(), start, &s.finish) {
            (false, _, _) | (true, None, _) => State::Pending,
            (_, Some(_), Some((status, _))) => match status.as_str() {
                "ok" => State::Done,
                "interrupted" => State::Interrupted,
                _ => State::Failed,
            },
            (_, Some(st), None) => {
                let gone =
                    local && !crate::child::proc_info::is_same_process(st.pid, &st.pid_start);
                if gone || (!local && stalled_for) {
                    State::Died
                } else {
                    State::Running
                }
            }
        };
        let rate = if state == State::Running {
            s.rate()
        } else {
            None
        };
        // A shard that has not started has the plan's item count.
        let total = match (start, self.plan) {
            (None, Some(p)) => p.items(shard, self.num_shards),
            _ => s.total,
        };
        let left = total.saturating_sub(s.done);
        let eta_s = match rate {
            Some(r) if state == State::Running && left > 0 => Some(left as f64 / r),
            _ if state == State::Done => Some(0.0),
            _ => None,
        };
        let live = state == State::Running && local;
        ShardView {
            shard,
            state,
            stalled: state == State::Running && stalled_for,
            items_done: s.done,
            items_total: total,
            items_failed: s.failed,
            rows: s.rows,
            current: s.current.clone(),
            rate,
            eta_s,
            pid: start.map(|st| st.pid),
            host: start.map(|st| st.host.clone()),
            cpu_pct: None,
            rss_bytes: if live {
                start.and_then(|st| crate::child::proc_info::rss_bytes(st.pid))
            } else {
                None
            },
            silent_s,
        }
    }

    /// CPU % since the previous refresh (or since the process started, on the first one).
    fn cpu(&mut self, i: usize, view: &mut ShardView) {
        let Some(pid) = view.pid.filter(|_| view.rss_bytes.is_some()) else {
            self.cpu_prev[i] = None;
            return;
        };
        let Some((ticks, age_s)) = crate::child::proc_info::cpu_ticks(pid) else {
            return;
        };
        let now = std::time::Instant::now();
        let hz = crate::child::proc_info::clock_ticks_per_second();
        view.cpu_pct = match self.cpu_prev[i] {
            Some((p, t0, when)) if p == pid && now > when => Some(
                100.0 * (ticks.saturating_sub(t0)) as f64
                    / hz
                    / now.duration_since(when).as_secs_f64(),
            ),
            _ if age_s > 0.0 => Some(100.0 * ticks as f64 / hz / age_s),
            _ => None,
        };
        self.cpu_prev[i] = Some((pid, ticks, now));
    }
}

/// Refreshes every log, on all cores when there are many (the first snapshot reads them whole).
fn refresh_all(tails: &mut [LogTail]) {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    if tails.len() < 16 || threads == 1 {
        tails.iter_mut().for_each(LogTail::refresh);
        return;
    }
    let per = tails.len().div_ceil(threads);
    std::thread::scope(|s| {
        for chunk in tails.chunks_mut(per) {
            s.spawn(move || chunk.iter_mut().for_each(LogTail::refresh));
        }
    });
}

/// The shard count of a run: the launcher's last record, else the newest log's name.
pub fn plan_shards(paths: &RunPaths) -> Option<u32> {
    // The last launch of either launcher: a Slurm run's tasks may all still be queued, with
    // no shard log yet.
    let last_launch = |file: &str| {
        let status = std::fs::read_to_string(paths.logs_dir.join(file)).unwrap_or_default();
        status
            .lines()
            .rev()
            .filter_map(crate::store::log::parse_line)
            .find(|(_, e, _)| *e == "launch")
            .and_then(|(at, _, f)| {
                let n: u32 = f
                    .iter()
                    .find(|(k, _)| *k == "num_shards")
                    .and_then(|(_, v)| v.parse().ok())?;
                Some((at.to_string(), n))
            })
    };
    let launched = [last_launch("launcher.status"), last_launch("slurm.status")]
        .into_iter()
        .flatten()
        .max();
    launched
        .map(|(_, n)| n)
        .or_else(|| newest_log_plan(&paths.logs_dir))
}

fn newest_log_plan(dir: &Path) -> Option<u32> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n: u32 = name
                .strip_prefix("shard_")?
                .strip_suffix(".log")?
                .split_once("_of_")?
                .1
                .parse()
                .ok()?;
            Some((e.metadata().ok()?.modified().ok()?, n))
        })
        .max()
        .map(|(_, n)| n)
}
