//! How a snapshot is shown as text: a table, one plain line per refresh, and the pieces of the
//! terminal frame (`screen.rs`).

use std::fmt::Write as _;

use super::{ShardView, Snapshot, State};
use crate::format::human::thousands;

/// `1:02:03`, `4:05`, or `unknown`.
pub fn eta(secs: Option<f64>) -> String {
    let Some(s) = secs.filter(|s| s.is_finite() && *s >= 0.0) else {
        return "unknown".into();
    };
    let s = s.round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

pub(crate) fn symbol(state: State) -> &'static str {
    match state {
        State::Pending => "·",
        State::Running => "▶",
        State::Done => "✓",
        State::Failed => "✗",
        State::Interrupted => "‖",
        State::Died => "☠",
    }
}

pub(crate) fn state_name(v: &ShardView) -> String {
    let s = serde_json::to_value(v.state)
        .ok()
        .and_then(|x| x.as_str().map(String::from))
        .unwrap_or_default();
    if v.stalled {
        format!("{s} (stalled)")
    } else {
        s
    }
}

pub(crate) fn pct(v: &ShardView) -> f64 {
    if v.items_total == 0 {
        if v.state == State::Done {
            100.0
        } else {
            0.0
        }
    } else {
        100.0 * v.items_done as f64 / v.items_total as f64
    }
}

fn shard_line(v: &ShardView, n: u32) -> String {
    let mut line = format!(
        "{} shard {:>3}/{n} {:<11} {:>5.1}% {:>9}/{:<9} rows {:>11}  ETA {:>8}",
        symbol(v.state),
        v.shard,
        state_name(v),
        pct(v),
        thousands(v.items_done),
        thousands(v.items_total),
        thousands(v.rows),
        if v.state == State::Running {
            eta(v.eta_s)
        } else {
            "-".into()
        },
    );
    if let Some(r) = v.rate {
        let _ = write!(line, "  {r:.1} items/s");
    }
    if let (Some(c), Some(m)) = (v.cpu_pct, v.rss_bytes) {
        let _ = write!(line, "  cpu {c:.0}%  mem {:.0} MiB", m as f64 / 1048576.0);
    }
    if v.items_failed > 0 {
        let _ = write!(line, "  {}", items_failed(v.items_failed));
    }
    if let Some(cur) = v.current.as_deref().filter(|_| v.state == State::Running) {
        let _ = write!(line, "  current {}", shorten(cur, 24));
    }
    if let Some(host) = elsewhere(v) {
        let _ = write!(line, "  on {host}");
    }
    line
}

/// The host a shard runs (or ran) on, when it is not this one: on a cluster the shards of one
/// run are spread over nodes, and a died or stalled shard is looked at on its node.
pub(crate) fn elsewhere(v: &ShardView) -> Option<&str> {
    static LOCAL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let local = LOCAL.get_or_init(crate::child::proc_info::hostname);
    v.host.as_deref().filter(|h| !h.is_empty() && h != local)
}

pub(crate) fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        s.chars()
            .take(max - 1)
            .chain(std::iter::once('…'))
            .collect()
    }
}

/// `1 item failed`, `12 items failed`.
pub(crate) fn items_failed(n: u64) -> String {
    format!(
        "{} item{} failed",
        thousands(n),
        if n == 1 { "" } else { "s" }
    )
}

/// `done/total`, the total marked `+` when it counts the started shards only.
pub(crate) fn items_of(s: &Snapshot) -> String {
    let m = &s.summary;
    format!(
        "{}/{}{}",
        thousands(m.items_done),
        thousands(m.items_total),
        if m.items_total_complete { "" } else { "+" }
    )
}

/// The shard count per state.
pub(crate) fn states_text(s: &Snapshot) -> String {
    let m = &s.summary;
    format!(
        "run {}: {} done, {} running, {} failed, {} interrupted, {} died, {} pending{}",
        s.run,
        m.done,
        m.running,
        m.failed,
        m.interrupted,
        m.died,
        m.pending,
        if m.stalled > 0 {
            format!(" ({} stalled)", m.stalled)
        } else {
            String::new()
        },
    )
}

/// The overall rate, or `rate unknown`.
pub(crate) fn rate_text(s: &Snapshot) -> String {
    s.summary
        .rate
        .map_or("rate unknown".to_string(), |r| format!("{r:.1} items/s"))
}

/// The overall ETA (`-` when nothing runs).
pub(crate) fn eta_text(s: &Snapshot) -> String {
    if s.summary.running == 0 {
        "-".into()
    } else {
        eta(s.summary.eta_s)
    }
}

/// The summary line.
pub fn summary_line(s: &Snapshot) -> String {
    let m = &s.summary;
    format!(
        "{}; {} items{}, {} rows, {}, ETA {}",
        states_text(s),
        items_of(s),
        if m.items_failed > 0 {
            format!(", {}", items_failed(m.items_failed))
        } else {
            String::new()
        },
        thousands(m.rows),
        rate_text(s),
        eta_text(s),
    )
}

/// A snapshot as a table.
pub fn table(s: &Snapshot) -> String {
    let mut out = String::new();
    for v in &s.shards {
        out.push_str(&shard_line(v, s.num_shards));
        out.push('\n');
    }
    out.push_str(&summary_line(s));
    out.push('\n');
    if let Some(line) = s.slurm.as_ref().and_then(|v| v.line()) {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// One timestamped line per refresh, for logs and pipes.
pub fn plain_line(s: &Snapshot) -> String {
    let slurm = s.slurm.as_ref().and_then(|v| v.line());
    let slurm = slurm.map(|l| format!(" | {l}")).unwrap_or_default();
    format!(
        "{} {}{slurm}\n",
        crate::store::log::timestamp(),
        summary_line(s)
    )
}
