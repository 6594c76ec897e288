//! How a snapshot is shown: a table, one plain line per refresh, or progress bars on a terminal.

use std::fmt::Write as _;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{ShardView, Snapshot, State};
use crate::human::thousands;

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

fn symbol(state: State) -> &'static str {
    match state {
        State::Pending => "·",
        State::Running => "▶",
        State::Done => "✓",
        State::Failed => "✗",
        State::Interrupted => "‖",
        State::Died => "☠",
    }
}

fn state_name(v: &ShardView) -> String {
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

fn pct(v: &ShardView) -> f64 {
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
        let _ = write!(line, "  {} failed", thousands(v.items_failed));
    }
    if let Some(cur) = v.current.as_deref().filter(|_| v.state == State::Running) {
        let _ = write!(line, "  current {}", shorten(cur, 24));
    }
    line
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        s.chars()
            .take(max - 1)
            .chain(std::iter::once('…'))
            .collect()
    }
}

/// The summary line.
pub fn summary_line(s: &Snapshot) -> String {
    let m = &s.summary;
    format!(
        "run {}: {} done, {} running, {} failed, {} interrupted, {} died, {} pending{}; {}/{} items, {} rows, {}, ETA {}",
        s.run,
        m.done,
        m.running,
        m.failed,
        m.interrupted,
        m.died,
        m.pending,
        if m.stalled > 0 { format!(" ({} stalled)", m.stalled) } else { String::new() },
        thousands(m.items_done),
        thousands(m.items_total),
        thousands(m.rows),
        m.rate.map_or("rate unknown".to_string(), |r| format!("{r:.1} items/s")),
        if m.running == 0 { "-".into() } else { eta(m.eta_s) }
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
    out
}

/// One timestamped line per refresh, for logs and pipes.
pub fn plain_line(s: &Snapshot) -> String {
    format!("{} {}\n", crate::log::timestamp(), summary_line(s))
}

const TOTAL_TEMPLATE: &str = "{prefix} [{bar:10}] {pos}/{len} {msg}";

/// The total bar's message: the counts that need attention, rows, rate and ETA, short enough for
/// the line to fit 100 columns (each shard's bar shows its own state).
pub fn total_message(m: &super::Summary) -> String {
    let mut parts = Vec::new();
    let not_ok = m.failed + m.died + m.interrupted;
    for (n, what) in [(m.running, "running"), (not_ok, "not ok")] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    parts.push(format!("{} rows", thousands(m.rows)));
    if m.running > 0 {
        parts.push(format!("ETA {}", eta(m.eta_s)));
    }
    parts.join(", ")
}

/// Progress bars on a terminal: one per shard and a total.
pub struct Bars {
    multi: MultiProgress,
    shards: Vec<ProgressBar>,
    total: ProgressBar,
}

impl Bars {
    /// Bars for `num_shards` shards, drawn on stderr... stdout's terminal.
    pub fn new(num_shards: u32) -> Bars {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let shards = (0..num_shards)
            .map(|i| {
                let b = multi.add(ProgressBar::new(0));
                b.set_style(style.clone());
                b.set_prefix(format!("shard {i:>3}"));
                b
            })
            .collect();
        let total = multi.add(ProgressBar::new(0));
        // Narrower, so that the whole total line fits 100 columns (a line the terminal wraps
        // breaks the redraw of every frame).
        total.set_style(
            ProgressStyle::with_template(TOTAL_TEMPLATE)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        total.set_prefix("total    ".to_string());
        Bars {
            multi,
            shards,
            total,
        }
    }

    /// Redraws with a new snapshot.
    pub fn update(&self, s: &Snapshot) {
        for (b, v) in self.shards.iter().zip(&s.shards) {
            b.set_length(v.items_total);
            b.set_position(v.items_done);
            let mut msg = format!("{} {} rows", state_name(v), thousands(v.rows));
            if v.state == State::Running {
                let _ = write!(msg, " ETA {}", eta(v.eta_s));
            }
            b.set_message(msg);
        }
        self.total.set_length(s.summary.items_total);
        self.total.set_position(s.summary.items_done);
        self.total.set_message(total_message(&s.summary));
    }

    /// Leaves the last frame on screen.
    pub fn finish(&self) {
        for b in &self.shards {
            b.abandon();
        }
        self.total.abandon();
        let _ = self.multi.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: the total bar carried the whole summary line (over 150 columns), which a
    /// terminal wraps, breaking every redraw.
    #[test]
    fn the_total_line_fits_100_columns_for_999_shards_and_a_billion_rows() {
        // 999 shards, a billion rows, 100 hours to go.
        let m = super::super::Summary {
            running: 333,
            failed: 333,
            died: 333,
            interrupted: 333,
            stalled: 333,
            rows: 999_999_999,
            rate: Some(99_999.9),
            eta_s: Some(99.0 * 3600.0 + 3599.0),
            ..Default::default()
        };
        let msg = total_message(&m);
        // `{prefix} [{bar:10}] {pos}/{len} {msg}` with 9-digit counts of items.
        assert!(TOTAL_TEMPLATE.contains("{bar:10}"));
        let width = "total    ".len() + 2 + 10 + 2 + "999999999/999999999".len() + 1;
        assert!(
            width + msg.chars().count() <= 100,
            "{} columns: {msg}",
            width + msg.chars().count()
        );
    }
}
