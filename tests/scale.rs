//! Many shards under a small open-file limit: merge and monitor see every shard, in item order.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::common::*;
use crate::merge::MERGE;

const MONITOR: &str = env!("CARGO_BIN_EXE_monitor");

/// `program args…` under `ulimit -n limit` (soft and hard: `ulimit -n` of sh sets both).
fn limited(limit: u32, program: &str, args: &[&str]) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!(
            "ulimit -n {limit} && [ \"$(ulimit -Hn)\" = {limit} ] && exec \"$0\" \"$@\""
        ))
        .arg(program)
        .args(args);
    c
}

/// Runs shards 0..n of `config` with a few workers at a time (each one mostly waits for fsync).
fn run_shards(p: &Project, config: &str, n: u32) {
    let next = AtomicU32::new(0);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    break;
                }
                p.run_shard(config, i, n, &["--no-cache", "--quiet"], 0);
            });
        }
    });
}

/// Regression (cluster scale): merge and monitor held a descriptor per shard; 2,000 shards under
/// a 256 open-file limit must merge in item order and show every shard.
#[test]
fn merge_and_monitor_of_2000_shards_work_under_ulimit_n_256() {
    let p = Project::new();
    p.write(
        "t.yaml",
        "run: t\nsharding: stride\nitems: {range: {start: 0, end: 4000}}\ngenerator: {builtin: echo}\n",
    );
    run_shards(&p, "t.yaml", 2000);
    let root = p.root().to_str().expect("utf-8 path");

    let mon = limited(256, MONITOR, &["--root", root, "--run", "t", "--json"])
        .output()
        .expect("monitor");
    assert_exit(&mon, 0, "monitor under ulimit -n 256", p.root());
    let snap: serde_json::Value = serde_json::from_slice(&mon.stdout).expect("json");
    let shards = snap["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), 2000);
    for (i, s) in shards.iter().enumerate() {
        assert_eq!(s["shard"], i as u64, "{s}");
        assert_eq!(s["state"], "done", "{s}");
        assert_eq!(s["items_done"], 2, "{s}");
    }
    assert_eq!(snap["summary"]["done"], 2000);
    assert_eq!(snap["summary"]["items_total"], 4000);
    assert_eq!(snap["summary"]["items_done"], 4000);

    let want = dataset_in_item_order(&p.path("data/t"));
    // --dedupe-key reads rows item by item: its data files too are opened a few at a time.
    let out = limited(
        256,
        MERGE,
        &[
            "--root",
            root,
            "--run",
            "t",
            "--keep-shards",
            "--dedupe-key",
            "key",
        ],
    )
    .output()
    .expect("merge --dedupe-key");
    assert_exit(&out, 0, "merge --dedupe-key under ulimit -n 256", p.root());
    let deduped = std::fs::read(p.path("data/t/combined.csv")).expect("combined.csv");
    let out = limited(256, MERGE, &["--root", root, "--run", "t"])
        .output()
        .expect("merge");
    assert_exit(&out, 0, "merge under ulimit -n 256", p.root());
    let got = std::fs::read(p.path("data/t/combined.csv")).expect("combined.csv");
    let body = &got[got.iter().position(|&b| b == b'\n').expect("header") + 1..];
    assert!(
        body == want.as_slice(),
        "combined.csv is not the shards' rows in item order"
    );
    assert!(
        got == deduped,
        "--dedupe-key of unique keys changed the dataset"
    );
    let keys: Vec<u64> = String::from_utf8_lossy(body)
        .lines()
        .map(|l| l.split(',').next().unwrap().parse().expect("key"))
        .collect();
    assert_eq!(
        keys,
        (0..4000).collect::<Vec<u64>>(),
        "every item, in order"
    );
    let final_lines = p.read("data/t/manifest_final.csv").lines().count();
    assert_eq!(final_lines, 4001);
}

/// Merge keeps the shards' rows of manifest_final.csv in memory up to a budget (16 MiB) and
/// puts a larger part in a temporary file: a shard past it gives the same manifest_final.csv as
/// the general (item by item) merge, and no temporary file is left.
#[test]
fn a_shard_part_past_the_memory_budget_goes_through_a_file_and_changes_nothing() {
    let p = Project::new();
    // Three shards of 200,000 items (parts of about 9 MiB): shard 0's part is the start of the
    // final file itself, shard 1's fits in the budget, shard 2's goes past it half-way.
    p.write(
        "t.yaml",
        "run: t\nitems: {range: {start: 0, end: 600000}}\ngenerator: {builtin: echo}\n",
    );
    for i in 0..3 {
        p.run_shard("t.yaml", i, 3, &["--no-cache", "--quiet"], 0);
    }
    let root = p.root().to_str().expect("utf-8 path");
    let merge = |extra: &[&str]| {
        let out = Command::new(MERGE)
            .args(["--root", root, "--run", "t", "--keep-shards"])
            .args(extra)
            .output()
            .expect("merge");
        assert_exit(&out, 0, "merge", p.root());
        let listing = listing(&p.path("data/t"));
        assert!(!listing.contains(".tmp"), "{listing}");
        (
            std::fs::read(p.path("data/t/manifest_final.csv")).expect("manifest_final.csv"),
            std::fs::read(p.path("data/t/combined.csv")).expect("combined.csv"),
        )
    };
    let (blocks, data) = merge(&[]);
    let rows = blocks.iter().filter(|&&b| b == b'\n').count();
    assert_eq!(rows, 600_001);
    // the parts of shards 1 and 2 together: past the 16 MiB budget
    let parts = blocks.len() / 3 * 2;
    assert!(parts > 16 << 20, "{parts} bytes");
    // The general merge writes manifest_final.csv row by row (a unique key, so nothing is
    // dropped).
    let (general, data2) = merge(&["--dedupe-key", "key"]);
    assert!(
        blocks == general,
        "manifest_final.csv differs between the two merges"
    );
    assert!(data == data2, "combined.csv differs between the two merges");
}
