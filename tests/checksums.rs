//! Checksums of committed items: `merge --verify` and the resume's check of the last items.

use crate::common::*;
use crate::merge::{merge, merge_ok, snapshot};

fn project() -> Project {
    let p = Project::new();
    p.write(
        "conf.yaml",
        "run: sum\nseed: 1\nitems: {range: {start: 0, end: 200}}\n\
         generator: {builtin: echo, params: {rows: 2, pad: 20}}\n",
    );
    p
}

/// Flips one byte of a shard data file, `back` bytes before its end.
fn flip(p: &Project, rel: &str, back: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p.path(rel))
        .unwrap();
    let at = f.metadata().unwrap().len() - back;
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x20;
    f.write_all_at(&b, at).unwrap();
}

#[test]
fn merge_verify_refuses_a_flipped_byte_and_changes_nothing() {
    let p = project();
    for i in 0..2 {
        p.run_shard("conf.yaml", i, 2, &[], 0);
    }
    let out = merge_ok(&p, &["--run", "sum", "--verify", "--keep-shards"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("checksums verified: 200 items"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let good = std::fs::read(p.path("data/sum/combined.csv")).unwrap();
    // An 'x' of the padding becomes an 'X': the CSV stays valid, the value is wrong.
    flip(&p, "data/sum/process-1.csv", 5);
    let before = snapshot(&p, "sum");
    let out = merge(&p, &["--run", "sum", "--verify"]);
    assert_exit(&out, 1, "merge --verify of a damaged shard", p.root());
    let err = stderr(&out);
    assert!(
        err.contains("item 199") && err.contains("process-1.csv") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        before,
        snapshot(&p, "sum"),
        "a refused merge changes nothing"
    );
    assert_eq!(
        std::fs::read(p.path("data/sum/combined.csv")).unwrap(),
        good
    );
    // Both merge paths verify: the interleave of --dedupe-key too.
    let out = merge(&p, &["--run", "sum", "--verify", "--dedupe-key", "key"]);
    assert_exit(&out, 1, "merge --verify --dedupe-key", p.root());
}

#[test]
fn a_resume_regenerates_a_damaged_last_item() {
    let p = project();
    let out = p.run("conf.yaml", &[]);
    assert_exit(&out, 0, "first run", p.root());
    let good = p.dataset("sum");
    flip(&p, "data/sum/process-0.csv", 5);
    assert_ne!(p.dataset("sum"), good);
    let out = p.run("conf.yaml", &[]);
    assert_exit(&out, 0, "resume", p.root());
    let err = stderr(&out);
    assert!(
        err.contains("warning") && err.contains("item 199") && err.contains("checksum"),
        "{err}"
    );
    assert_eq!(
        p.dataset("sum"),
        good,
        "the damaged item is generated again"
    );
    let out = merge_ok(&p, &["--run", "sum", "--verify"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("verified: 200"));
}
