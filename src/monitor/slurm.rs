//! What Slurm says about a run that `scripts/run_slurm.sh` submitted: which shards wait in the
//! queue, were requeued, never started or were cancelled before they started. A shard's log
//! cannot tell these apart (it has no line until the worker starts); the run's record
//! (`logs/<run>/slurm.status`: its last `launch` line and the `submit` lines after it) names the
//! jobs, and `scontrol -o show job <array job>` (one call per array, per refresh) says where
//! their tasks are.
//!
//! `scontrol` rather than `sacct`: the monitor asks about the live queue, which the controller
//! knows whether or not accounting is on. A task it no longer lists has left the queue.

use crate::format::human::ranges;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;

use chrono::{DateTime, FixedOffset};
use serde::Serialize;

use super::log_tail::LogTail;

/// The run's last Slurm submission, from its record.
#[derive(Debug, Clone)]
pub struct SlurmRun {
    launched: DateTime<FixedOffset>,
    per_task: u32,
    max_array: u32,
    /// Array job id by offset.
    jobs: BTreeMap<u32, u64>,
    /// The shards of the submission.
    shards: Vec<u32>,
}

/// What the snapshot says about the queue (`slurm` in `monitor --json`). Shard sets are
/// compressed ranges (`3-7,19`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct SlurmView {
    /// The array jobs of the run's last submission.
    pub jobs: Vec<u64>,
    /// False when `scontrol` could not be asked (not installed here, controller down): the
    /// other fields then say nothing.
    pub known: bool,
    /// True while any task of those jobs is in Slurm's queue (pending, running, requeued).
    pub in_queue: bool,
    /// Shards whose task waits in the queue and has not started them.
    pub queued: String,
    /// Shards whose task was requeued (node failure, preemption, `scontrol requeue`) and waits
    /// or runs again.
    pub requeued: String,
    /// Shards whose task left the queue without starting them: cancelled before they started
    /// (`scancel` of a pending task, or of the whole array).
    pub cancelled: String,
}

impl SlurmView {
    /// True when the run's jobs have all left the queue: nothing more will start.
    pub fn ended(&self) -> bool {
        self.known && !self.in_queue
    }

    /// The shards queued or requeued, in order: they will run (again).
    pub fn waiting(&self) -> Vec<u32> {
        let mut v: Vec<u32> = [&self.queued, &self.requeued]
            .iter()
            .filter_map(|set| expand(set))
            .flatten()
            .collect();
        v.sort_unstable();
        v
    }

    /// One line for the text views; `None` when there is nothing to say.
    pub fn line(&self) -> Option<String> {
        let jobs: Vec<String> = self.jobs.iter().map(u64::to_string).collect();
        let mut parts = vec![format!("slurm: job(s) {}", jobs.join(" "))];
        if !self.known {
            parts.push("(scontrol does not answer: queue unknown)".into());
            return Some(parts.join(" "));
        }
        parts.push(
            if self.in_queue {
                "in the queue"
            } else {
                "no longer in the queue"
            }
            .into(),
        );
        for (what, set) in [
            ("queued", &self.queued),
            ("requeued", &self.requeued),
            ("cancelled, never started", &self.cancelled),
        ] {
            if !set.is_empty() {
                parts.push(format!("; {what}: {} ({set})", count(set)));
            }
        }
        Some(parts.join(" ").replace(" ;", ";"))
    }
}

/// How many numbers a range string holds.
fn count(set: &str) -> u64 {
    set.split(',')
        .filter_map(|r| match r.split_once('-') {
            Some((a, b)) => Some(b.parse::<u64>().ok()? - a.parse::<u64>().ok()? + 1),
            None => r.parse::<u64>().ok().map(|_| 1),
        })
        .sum()
}

/// "0-2,5%3" → [0, 1, 2, 5] (a throttle ignored); `None` when malformed.
fn expand(spec: &str) -> Option<Vec<u32>> {
    let spec = spec.split('%').next().unwrap_or("");
    let mut out = Vec::new();
    for r in spec.split(',').filter(|r| !r.is_empty()) {
        match r.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (a.parse::<u32>().ok()?, b.parse::<u32>().ok()?);
                if b < a || b - a > 4_000_001 {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(r.parse().ok()?),
        }
    }
    Some(out)
}

impl SlurmRun {
    /// The run's last Slurm submission, when its last launch was a Slurm one (a later
    /// `run_parallel.sh` launch makes it a local run again).
    pub fn load(logs_dir: &Path) -> Option<SlurmRun> {
        let text = std::fs::read_to_string(logs_dir.join("slurm.status")).ok()?;
        let lines: Vec<_> = text
            .lines()
            .filter_map(crate::store::log::parse_line)
            .collect();
        let at = lines.iter().rposition(|(_, e, _)| *e == "launch")?;
        let (ts, _, fields) = &lines[at];
        let local_later = std::fs::read_to_string(logs_dir.join("launcher.status"))
            .ok()
            .and_then(|t| {
                t.lines()
                    .filter_map(crate::store::log::parse_line)
                    .rfind(|(_, e, _)| *e == "launch")
                    .map(|(t, _, _)| t.to_string())
            })
            .is_some_and(|t| t.as_str() > *ts);
        if local_later {
            return None;
        }
        let get = |fields: &[(&str, String)], k: &str| {
            fields
                .iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.clone())
        };
        let mut run = SlurmRun {
            launched: DateTime::parse_from_rfc3339(ts).ok()?,
            per_task: get(fields, "shards_per_task")
                .and_then(|v| v.parse().ok())
                .filter(|k| *k >= 1)
                .unwrap_or(1),
            max_array: get(fields, "max_array_size")?
                .parse()
                .ok()
                .filter(|m| *m >= 1)?,
            jobs: BTreeMap::new(),
            shards: Vec::new(),
        };
        for (_, event, fields) in &lines[at + 1..] {
            if *event != "submit" || get(fields, "merge").as_deref() == Some("1") {
                continue;
            }
            let (Some(job), Some(offset), Some(shards)) = (
                get(fields, "job").and_then(|v| v.parse().ok()),
                get(fields, "offset").and_then(|v| v.parse().ok()),
                get(fields, "shards").and_then(|v| expand(&v.replace(' ', ""))),
            ) else {
                continue;
            };
            run.jobs.insert(offset, job);
            run.shards.extend(shards);
        }
        run.shards.sort_unstable();
        run.shards.dedup();
        (!run.jobs.is_empty()).then_some(run)
    }

    /// (array job, task) of shard `i`.
    fn task_of(&self, i: u32) -> Option<(u64, u32)> {
        let t = i / self.per_task;
        let offset = t / self.max_array * self.max_array;
        Some((*self.jobs.get(&offset)?, t - offset))
    }

    /// Asks Slurm once and compares with the logs (`tails`, indexed by shard).
    pub fn view(&self, tails: &[LogTail]) -> SlurmView {
        let mut v = SlurmView {
            jobs: self.jobs.values().copied().collect(),
            ..SlurmView::default()
        };
        let Some(tasks) = self.query() else {
            return v;
        };
        v.known = true;
        v.in_queue = tasks.values().any(|t| t.live());
        let (mut queued, mut requeued, mut cancelled) = (Vec::new(), Vec::new(), Vec::new());
        for &i in &self.shards {
            let Some(tail) = tails.get(i as usize) else {
                continue;
            };
            // Started in this submission: its log says the rest.
            let started = tail
                .state
                .start
                .as_ref()
                .and_then(|s| s.at)
                .is_some_and(|at| at >= self.launched);
            let running = started && tail.state.finish.is_none();
            let task = self.task_of(i).and_then(|k| tasks.get(&k));
            match task {
                Some(t) if t.restarts > 0 && t.live() && (!started || !running) => requeued.push(i),
                Some(t) if t.live() && !started => queued.push(i),
                Some(t) if !t.live() && !started => cancelled.push(i),
                None if !started && !v.in_queue => cancelled.push(i),
                _ => {}
            }
        }
        v.queued = ranges(&queued, ",");
        v.requeued = ranges(&requeued, ",");
        v.cancelled = ranges(&cancelled, ",");
        v
    }

    /// Every task of the run's jobs that the controller lists; `None` when it cannot be asked.
    /// One call per array job (a split run has a few), not one listing of the whole cluster.
    fn query(&self) -> Option<HashMap<(u64, u32), Task>> {
        let mut tasks = HashMap::new();
        for job in self.jobs.values() {
            let out = Command::new("scontrol")
                .args(["-o", "show", "job", &job.to_string()])
                .stdin(std::process::Stdio::null())
                .output()
                .ok()?;
            if !out.status.success() {
                // A job the controller has forgotten is gone; any other failure (controller
                // down) says nothing.
                if String::from_utf8_lossy(&out.stderr).contains("Invalid job id") {
                    continue;
                }
                return None;
            }
            parse_tasks(&String::from_utf8_lossy(&out.stdout), *job, &mut tasks);
        }
        Some(tasks)
    }
}

/// Adds the tasks of array job `ours` that `scontrol -o show job` lists in `text`.
fn parse_tasks(text: &str, ours: u64, tasks: &mut HashMap<(u64, u32), Task>) {
    for line in text.lines() {
        let field = |k: &str| {
            line.split(' ')
                .find_map(|w| w.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
        };
        if field("ArrayJobId").and_then(|v| v.parse::<u64>().ok()) != Some(ours) {
            continue;
        }
        let task = Task {
            state: field("JobState").unwrap_or("").to_string(),
            restarts: field("Restarts").and_then(|v| v.parse().ok()).unwrap_or(0),
        };
        for t in field("ArrayTaskId").and_then(expand).unwrap_or_default() {
            tasks.insert((ours, t), task.clone());
        }
    }
}

#[derive(Debug, Clone)]
struct Task {
    state: String,
    restarts: u32,
}

impl Task {
    /// Still in the queue: waiting, running, or on its way back.
    fn live(&self) -> bool {
        matches!(
            self.state.as_str(),
            "PENDING"
                | "RUNNING"
                | "REQUEUED"
                | "REQUEUE_HOLD"
                | "REQUEUE_FED"
                | "SUSPENDED"
                | "COMPLETING"
                | "CONFIGURING"
                | "RESIZING"
                | "STOPPED"
                | "SIGNALING"
                | "STAGE_OUT"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_round_trip() {
        assert_eq!(expand("0-2,5%3"), Some(vec![0, 1, 2, 5]));
        assert_eq!(ranges(&[0, 1, 2, 5, 7, 8], ","), "0-2,5,7-8");
        assert_eq!(count("0-2,5,7-8"), 6);
        assert_eq!(expand("3-x"), None);
    }
}
