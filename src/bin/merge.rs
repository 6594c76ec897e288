//! `merge`: one dataset out of a run's shards (see the README).

use clap::Parser;
use shardrun::format::human::thousands;
use shardrun::merge::{describe_revisions, MergeArgs, Outcome, Stats};

/// Merges a run's shard outputs into one CSV in global item order, atomically.
#[derive(Debug, Parser)]
#[command(name = "merge", version)]
struct Cli {
    #[command(flatten)]
    args: MergeArgs,
}

fn main() {
    let args = Cli::parse().args;
    let code = match shardrun::merge::run(&args) {
        Ok(Outcome::Merged(stats)) => {
            if stats.revisions.len() > 1 {
                eprintln!("merge: warning: {}", mixed_revisions(&stats));
            }
            shardrun::format::stdout::print(&summary(&stats));
            0
        }
        Ok(Outcome::AlreadyMerged(msg)) => {
            shardrun::format::stdout::println(&msg);
            0
        }
        Err(e) => {
            eprintln!("merge: error: {e}");
            e.exit_code().code()
        }
    };
    std::process::exit(code);
}

/// The warning for a dataset made by more than one revision of the generator, with the command
/// that makes it uniform.
fn mixed_revisions(s: &Stats) -> String {
    format!(
        "the dataset mixes {} revisions of the generator: {}. To regenerate the items that older \
         code made: {}, then merge again (the shard outputs are kept for that)",
        s.revisions.len(),
        describe_revisions(&s.revisions),
        s.redo_stale_hint
    )
}

fn summary(s: &Stats) -> String {
    let mut out = format!(
        "merged run {}: {} shards, {} items ({} ok, {} failed, {} missing), {} rows, {:.1} MiB -> {}\n",
        s.run,
        s.shards,
        thousands(s.items),
        thousands(s.items_ok),
        thousands(s.items_failed),
        thousands(s.items_missing),
        thousands(s.rows),
        s.bytes as f64 / (1024.0 * 1024.0),
        match (&s.parquet, &s.partitioned) {
            (_, Some(t)) => format!(
                "{} ({} partitions by {})",
                s.output.display(),
                thousands(t.partitions.len() as u64),
                t.column
            ),
            (Some(p), None) => format!("{} and {}", s.output.display(), p.display()),
            (None, None) => s.output.display().to_string(),
        }
    );
    out.push_str("  shard      items       rows  cached  failed\n");
    for p in &s.per_shard {
        out.push_str(&format!(
            "  {:>5} {:>10} {:>10} {:>6.0}% {:>7}\n",
            p.shard,
            thousands(p.committed),
            thousands(p.rows),
            if p.committed == 0 {
                0.0
            } else {
                100.0 * p.cached as f64 / p.committed as f64
            },
            thousands(p.failed)
        ));
    }
    for m in &s.shards_missing {
        out.push_str(&format!("  {m:>5}    missing\n"));
    }
    out.push_str(&format!(
        "  rows per item: min {}, max {}, mean {:.1}; cached {:.0}%{}{}\n",
        s.rows_per_item.min,
        s.rows_per_item.max,
        s.rows_per_item.mean,
        100.0 * s.cached_share,
        s.wall_time_s
            .map(|w| format!("; run wall time {w:.1} s"))
            .unwrap_or_default(),
        if s.rows_deduplicated > 0 {
            format!(
                "; {} duplicate rows dropped",
                thousands(s.rows_deduplicated)
            )
        } else {
            String::new()
        },
    ));
    if !s.incomplete_items.is_empty() {
        out.push_str(&format!(
            "  not in the dataset (first {}): {}\n",
            s.incomplete_items.len(),
            s.incomplete_items.join(", ")
        ));
    }
    if let Some(n) = s.items_verified {
        out.push_str(&format!(
            "  checksums verified: {} items{}\n",
            thousands(n),
            match s.items_unverified {
                Some(u) if u > 0 =>
                    format!(" ({} committed by shardrun 0.1 have none)", thousands(u)),
                _ => String::new(),
            }
        ));
    }
    if let [only] = s.revisions.as_slice() {
        if !only.revision.is_empty() {
            out.push_str(&format!("  generator revision {}\n", only.revision));
        }
    } else if !s.revisions.is_empty() {
        out.push_str(&format!(
            "  generator revisions: {}\n",
            describe_revisions(&s.revisions)
        ));
    }
    out.push_str(if s.shards_kept {
        "  shard outputs kept\n"
    } else {
        "  shard outputs removed (the cache is kept)\n"
    });
    out
}
