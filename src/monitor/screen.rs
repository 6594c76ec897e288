//! The live view on a terminal: one frame per refresh, redrawn in place, never taller than the
//! terminal. When every shard fits, one bar per shard; otherwise a summary, the distribution of
//! progress, the shards that need attention (failed, died, interrupted, stalled, failing items)
//! and the slowest running ones. The state line and the total are always the last two lines,
//! and all of a frame comes from one snapshot, so the total always agrees with the rows above.

use std::cmp::Ordering;
use std::fmt::Write as _;

use super::display::{eta, eta_text, items_failed, items_of, pct, shorten, state_name, symbol};
use super::{ShardView, Snapshot, State};
use crate::format::human::thousands;

/// Characters of a progress bar.
const BAR: usize = 16;

/// `[=========>          ]` for `pct` percent (an empty bar at 0, a full one at 100).
fn bar(pct: f64) -> String {
    let filled = ((pct.clamp(0.0, 100.0) / 100.0) * BAR as f64).round() as usize;
    let mut b = String::with_capacity(BAR + 2);
    b.push('[');
    for i in 0..BAR {
        b.push(match i.cmp(&filled) {
            Ordering::Less if i + 1 == filled && filled < BAR => '>',
            Ordering::Less => '=',
            _ => ' ',
        });
    }
    b.push(']');
    b
}

/// Width of the shard number column.
fn digits(num_shards: u32) -> usize {
    num_shards.saturating_sub(1).to_string().len().max(3)
}

/// One shard as a bar line.
fn shard_bar(v: &ShardView, num_shards: u32) -> String {
    let mut line = format!(
        "{} shard {:>w$} {} {:>5.1}% {}/{} {}",
        symbol(v.state),
        v.shard,
        bar(pct(v)),
        pct(v),
        thousands(v.items_done),
        thousands(v.items_total),
        state_name(v),
        w = digits(num_shards),
    );
    if v.items_failed > 0 {
        let _ = write!(line, "  {}", items_failed(v.items_failed));
    }
    if v.state == State::Running {
        let _ = write!(line, "  ETA {}", eta(v.eta_s));
        if let Some(r) = v.rate {
            let _ = write!(line, "  {r:.1} items/s");
        }
        if let Some(cur) = v.current.as_deref() {
            let _ = write!(line, "  current {}", shorten(cur, 24));
        }
    }
    if let Some(host) = super::display::elsewhere(v) {
        let _ = write!(line, "  on {host}");
    }
    line
}

/// The total as a bar line (under 100 columns whatever the counts).
fn total_bar(s: &Snapshot) -> String {
    let m = &s.summary;
    let p = if m.items_total == 0 {
        if s.all_done() {
            100.0
        } else {
            0.0
        }
    } else {
        100.0 * m.items_done as f64 / m.items_total as f64
    };
    let mut line = format!(
        "{:<w$} {} {:>5.1}% {} items",
        "total",
        bar(p),
        p,
        items_of(s),
        w = 8 + digits(s.num_shards),
    );
    if m.items_failed > 0 {
        let _ = write!(line, ", {} failed", thousands(m.items_failed));
    }
    let _ = write!(line, "  ETA {}", eta_text(s));
    line
}

/// The shard count per state (the states no shard is in are left out, but for the first three)
/// and the overall rate.
fn states_line(s: &Snapshot) -> String {
    let m = &s.summary;
    let mut line = format!(
        "run {}: {} done, {} running, {} failed",
        s.run, m.done, m.running, m.failed
    );
    for (n, name) in [
        (m.interrupted, "interrupted"),
        (m.died, "died"),
        (m.pending, "pending"),
    ] {
        if n > 0 {
            let _ = write!(line, ", {n} {name}");
        }
    }
    if m.stalled > 0 {
        let _ = write!(line, " ({} stalled)", m.stalled);
    }
    match m.rate {
        Some(r) if r >= 100.0 => {
            let _ = write!(line, "; {} items/s", thousands(r.round() as u64));
        }
        Some(r) => {
            let _ = write!(line, "; {r:.1} items/s");
        }
        None => line.push_str("; rate unknown"),
    }
    line
}

/// How many shards are at each stage of progress.
fn distribution(s: &Snapshot) -> String {
    const STAGES: [&str; 6] = ["0%", "1-24%", "25-49%", "50-74%", "75-99%", "100%"];
    let mut counts = [0u64; 6];
    for v in &s.shards {
        let p = pct(v);
        let stage = if p <= 0.0 {
            0
        } else if p >= 100.0 {
            5
        } else {
            1 + ((p / 25.0) as usize).min(3)
        };
        counts[stage] += 1;
    }
    let parts: Vec<String> = STAGES
        .iter()
        .zip(counts)
        .map(|(name, n)| format!("{name} {}", thousands(n)))
        .collect();
    format!("shards by progress: {}", parts.join(" · "))
}

/// How much a shard needs attention: lower first; `None` for a shard that does not.
fn attention(v: &ShardView) -> Option<u8> {
    match v.state {
        State::Died => Some(0),
        State::Failed => Some(1),
        State::Interrupted => Some(2),
        State::Running if v.stalled => Some(3),
        State::Running if v.items_failed > 0 => Some(4),
        _ => None,
    }
}

/// Running shards, the slowest first: the longest ETA (an unknown one first), then the least
/// progress.
fn slowest_first(a: &ShardView, b: &ShardView) -> Ordering {
    let eta = |v: &ShardView| v.eta_s.unwrap_or(f64::INFINITY);
    eta(b)
        .total_cmp(&eta(a))
        .then(pct(a).total_cmp(&pct(b)))
        .then(a.shard.cmp(&b.shard))
}

/// The frame for a terminal of `width` columns and `height` lines (one line is left free so the
/// frame never scrolls the screen).
pub fn frame(s: &Snapshot, width: usize, height: usize) -> Vec<String> {
    // The queue's line of a Slurm run is pinned under the total, like it.
    let slurm = s.slurm.as_ref().and_then(|v| v.line());
    let avail = height
        .saturating_sub(1 + usize::from(slurm.is_some()))
        .max(2);
    let n = s.shards.len();
    let mut lines: Vec<String> = Vec::new();
    if n + 2 <= avail {
        lines.extend(s.shards.iter().map(|v| shard_bar(v, s.num_shards)));
    } else if avail > 3 {
        lines.push(distribution(s));
        lines.extend(attention_rows(s, avail - 3));
    }
    lines.push(states_line(s));
    lines.push(total_bar(s));
    lines.extend(slurm);
    let width = width.max(20) - 1;
    lines.into_iter().map(|l| shorten(&l, width)).collect()
}

/// At most `room` lines: the shards that need attention, then the slowest running ones, and a
/// line saying how many of each did not fit.
fn attention_rows(s: &Snapshot, room: usize) -> Vec<String> {
    let mut problems: Vec<&ShardView> =
        s.shards.iter().filter(|v| attention(v).is_some()).collect();
    problems.sort_by_key(|v| (attention(v), v.shard));
    let mut running: Vec<&ShardView> = s
        .shards
        .iter()
        .filter(|v| v.state == State::Running && attention(v).is_none())
        .collect();
    running.sort_by(|a, b| slowest_first(a, b));
    let (p, r) = if problems.len() + running.len() <= room {
        (problems.len(), running.len())
    } else {
        let room = room.saturating_sub(1);
        let p = problems
            .len()
            .min((room / 2).max(room.saturating_sub(running.len())));
        (p, running.len().min(room - p))
    };
    let mut rows: Vec<String> = problems[..p]
        .iter()
        .chain(&running[..r])
        .map(|v| shard_bar(v, s.num_shards))
        .collect();
    let (more_p, more_r) = (problems.len() - p, running.len() - r);
    let mut more = Vec::new();
    if more_p > 0 {
        more.push(format!(
            "{} more needing attention",
            thousands(more_p as u64)
        ));
    }
    if more_r > 0 {
        more.push(format!("{} more running", thousands(more_r as u64)));
    }
    if !more.is_empty() {
        rows.push(format!("… {}", more.join(", ")));
    }
    rows
}

/// The terminal's (columns, lines), if stdout is one.
fn terminal_size() -> Option<(usize, usize)> {
    // SAFETY: TIOCGWINSZ writes one `winsize` into the struct it is given, which outlives the call.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col as usize, ws.ws_row as usize))
}

/// Draws frames in place on stdout.
#[derive(Debug, Default)]
pub struct Screen {
    /// Lines of the frame on screen.
    drawn: usize,
}

impl Screen {
    /// A screen with nothing drawn yet.
    pub fn new() -> Screen {
        Screen::default()
    }

    /// Replaces the frame on screen with the one of `s`, in a single write so a reader never
    /// sees half a frame.
    pub fn draw(&mut self, s: &Snapshot) {
        let (width, height) = terminal_size().unwrap_or((80, 24));
        let lines = frame(s, width, height);
        let mut text = String::new();
        if self.drawn > 0 {
            // Back to the first line of the previous frame, then clear everything below.
            let _ = write!(text, "\x1b[{}A\r", self.drawn);
        }
        text.push_str("\x1b[J");
        for l in &lines {
            text.push_str(l);
            text.push('\n');
        }
        self.drawn = lines.len();
        crate::format::stdout::print(&text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::Summary;

    fn view(shard: u32, state: State, done: u64, total: u64) -> ShardView {
        ShardView {
            shard,
            state,
            stalled: false,
            items_done: done,
            items_total: total,
            items_failed: 0,
            rows: done,
            current: None,
            rate: None,
            eta_s: None,
            pid: None,
            host: None,
            cpu_pct: None,
            rss_bytes: None,
            silent_s: None,
        }
    }

    fn snapshot(shards: Vec<ShardView>) -> Snapshot {
        let mut m = Summary {
            items_total_complete: true,
            ..Summary::default()
        };
        for v in &shards {
            m.items_done += v.items_done;
            m.items_total += v.items_total;
            m.items_failed += v.items_failed;
            match v.state {
                State::Pending => m.pending += 1,
                State::Running => m.running += 1,
                State::Done => m.done += 1,
                State::Failed => m.failed += 1,
                State::Interrupted => m.interrupted += 1,
                State::Died => m.died += 1,
            }
        }
        Snapshot {
            run: "r".into(),
            num_shards: shards.len() as u32,
            shards,
            summary: m,
            slurm: None,
        }
    }

    #[test]
    fn bars_are_empty_at_zero_and_full_at_one_hundred() {
        assert_eq!(bar(0.0), format!("[{}]", " ".repeat(BAR)));
        assert_eq!(bar(100.0), format!("[{}]", "=".repeat(BAR)));
        assert_eq!(bar(50.0), format!("[{}>{}]", "=".repeat(7), " ".repeat(8)));
    }

    #[test]
    fn a_pending_shard_is_drawn_empty_with_its_planned_items_and_failed_items_show() {
        let mut failing = view(1, State::Running, 4, 10);
        failing.items_failed = 2;
        let s = snapshot(vec![
            view(0, State::Done, 10, 10),
            failing,
            view(2, State::Pending, 0, 10),
        ]);
        let f = frame(&s, 200, 40);
        assert_eq!(f.len(), 5, "{f:#?}");
        assert!(f[1].contains("4/10 running  2 items failed"), "{}", f[1]);
        assert!(
            f[2].starts_with(&format!(
                "· shard   2 [{}]   0.0% 0/10 pending",
                " ".repeat(BAR)
            )),
            "{}",
            f[2]
        );
        assert!(f[3].starts_with("run r: 1 done, 1 running"), "{}", f[3]);
        assert!(
            f[4].starts_with("total") && f[4].contains("14/30 items, 2 failed"),
            "{}",
            f[4]
        );
    }

    #[test]
    fn many_shards_give_a_summary_the_shards_needing_attention_and_the_slowest() {
        let shards_of = |i: u32| match i {
            0..40 => view(i, State::Pending, 0, 10),
            40..60 => {
                let mut v = view(i, State::Running, 5, 10);
                v.eta_s = Some(f64::from(i));
                v
            }
            _ => view(i, State::Done, 10, 10),
        };
        let mut shards: Vec<ShardView> = (0..120).map(shards_of).collect();
        shards[75] = view(75, State::Failed, 9, 10);
        shards[75].items_failed = 1;
        shards[101] = view(101, State::Died, 3, 10);
        let s = snapshot(shards);
        let f = frame(&s, 120, 12);
        assert!(f.len() <= 11, "{f:#?}");
        assert!(
            f[0].starts_with(
                "shards by progress: 0% 40 · 1-24% 0 · 25-49% 1 · 50-74% 20 · 75-99% 1 · 100% 58"
            ),
            "{}",
            f[0]
        );
        assert!(
            f[1].contains("shard 101") && f[1].contains("died"),
            "{f:#?}"
        );
        assert!(
            f[2].contains("shard  75") && f[2].contains("1 item failed"),
            "{f:#?}"
        );
        // The slowest running shard (the longest ETA) comes first.
        assert!(f[3].contains("shard  59"), "{f:#?}");
        assert_eq!(f[f.len() - 3], "… 15 more running", "{f:#?}");
        assert_eq!(
            f[f.len() - 2],
            "run r: 58 done, 20 running, 1 failed, 1 died, 40 pending; rate unknown"
        );
        assert!(f[f.len() - 1].starts_with("total"), "{f:#?}");
        assert!(f.iter().all(|l| l.chars().count() < 120));
    }

    #[test]
    fn a_slurm_runs_queue_line_stays_pinned_under_the_total_and_other_hosts_are_named() {
        let mut shards: Vec<ShardView> = (0..120).map(|i| view(i, State::Pending, 0, 3)).collect();
        shards[75] = view(75, State::Failed, 1, 3);
        shards[75].host = Some("node-7".into());
        let mut s = snapshot(shards);
        s.slurm = Some(crate::monitor::slurm::SlurmView {
            jobs: vec![42],
            known: true,
            in_queue: true,
            queued: "0-74,76-119".into(),
            requeued: String::new(),
            cancelled: String::new(),
        });
        for height in [6, 20, 50] {
            let lines = frame(&s, 200, height);
            assert!(lines.len() < height, "{height}: {lines:?}");
            let last = lines.last().unwrap();
            assert!(last.starts_with("slurm: job(s) 42 in the queue"), "{last}");
            assert!(lines[lines.len() - 2].contains("items"), "{lines:?}");
        }
        let lines = frame(&s, 200, 50);
        assert!(
            lines
                .iter()
                .any(|l| l.contains(" 75 [") && l.ends_with("on node-7")),
            "{lines:?}"
        );
    }

    #[test]
    fn the_total_line_fits_100_columns_with_large_counts() {
        let mut v = view(9999, State::Running, 12_345_678, 99_999_999);
        v.items_failed = 999_999;
        let mut s = snapshot(vec![v]);
        s.num_shards = 10_000;
        s.summary.eta_s = Some(359_999.0);
        s.summary.items_total_complete = false;
        let t = total_bar(&s);
        assert!(
            t.chars().count() <= 100,
            "{} columns: {t}",
            t.chars().count()
        );
    }
}
