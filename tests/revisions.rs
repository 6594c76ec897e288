//! The fix loop: a generator with a bug, a fixed script, `--only-failed`-style re-runs that keep
//! the committed items, `--redo-stale`, and what merge says about mixed revisions.

use std::time::Duration;

use crate::common::*;
use crate::merge::{merge, merge_ok, snapshot};

/// A generator that fails on keys ending in 3 while `BUG` is set, and writes `key*MUL`; each
/// call leaves a file in `calls/`, so a test can count exactly which items were generated.
fn generator(bug: bool, mul: u32, delay: &str) -> String {
    format!(
        "#!/bin/sh\n: > \"$2/$1.$$\"\nsleep {delay}\n\
         if {bug} && [ $(( $1 % 10 )) -eq 3 ]; then echo \"bug on key $1\" >&2; exit 1; fi\n\
         echo \"$1,$(( $1 * {mul} ))\"\n",
        bug = if bug { "true" } else { "false" },
    )
}

fn project(sharding: &str, bug: bool, mul: u32, delay: &str) -> Project {
    let p = Project::new();
    p.script("gen.sh", &generator(bug, mul, delay));
    std::fs::create_dir_all(p.path("calls")).unwrap();
    p.write(
        "conf.yaml",
        &format!(
            "run: fix\nseed: 3\nsharding: {sharding}\nitems: {{range: {{start: 0, end: 90}}}}\n\
             generator: {{command: [./gen.sh, \"{{key}}\", calls], retries: 0}}\n\
             output: {{columns: [key, value]}}\n"
        ),
    );
    p
}

/// Items generated since the last call (the files in `calls/`, which it empties).
fn calls(p: &Project) -> Vec<u64> {
    let mut keys: Vec<u64> = std::fs::read_dir(p.path("calls"))
        .unwrap()
        .flatten()
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            std::fs::remove_file(e.path()).unwrap();
            name.split('.').next().unwrap().parse().unwrap()
        })
        .collect();
    keys.sort_unstable();
    keys
}

fn run_all(p: &Project, extra: &[&str], want: i32) {
    for i in 0..3 {
        p.run_shard("conf.yaml", i, 3, extra, want);
    }
}

/// The merged dataset of a clean run of `gen` (no bug) with multiplier `mul`.
fn clean_dataset(sharding: &str, mul: u32) -> Vec<u8> {
    let p = project(sharding, false, mul, "0");
    run_all(&p, &[], 0);
    merge_ok(&p, &["--run", "fix"]);
    std::fs::read(p.path("data/fix/combined.csv")).unwrap()
}

fn stats(p: &Project) -> serde_json::Value {
    serde_json::from_str(&p.read("data/fix/stats.json")).unwrap()
}

fn keys_ending_in_3() -> Vec<u64> {
    (0..90).filter(|k| k % 10 == 3).collect()
}

#[test]
fn a_fixed_script_regenerates_only_the_failed_items() {
    let p = project("contiguous", true, 2, "0");
    run_all(&p, &[], 1);
    assert_eq!(calls(&p).len(), 90);
    // The fix: the same output for the good keys, none failing.
    p.script("gen.sh", &generator(false, 2, "0"));
    let out = p.run_shard("conf.yaml", 0, 3, &[], 0);
    assert!(
        stderr(&out).contains("stale=27"),
        "the start line counts the committed items of the old code: {}",
        stderr(&out)
    );
    p.run_shard("conf.yaml", 1, 3, &[], 0);
    p.run_shard("conf.yaml", 2, 3, &[], 0);
    assert_eq!(
        calls(&p),
        keys_ending_in_3(),
        "only the failed items run again"
    );

    let out = merge_ok(&p, &["--run", "fix"]);
    let warning = stderr(&out);
    assert!(
        warning.contains("mixes 2 revisions")
            && warning.contains("81 items by")
            && warning.contains("9 items by")
            && warning.contains("--redo-stale"),
        "{warning}"
    );
    assert_eq!(
        std::fs::read(p.path("data/fix/combined.csv")).unwrap(),
        clean_dataset("contiguous", 2),
        "a fix that does not change the good items gives the clean run's dataset"
    );
    let revs = stats(&p)["revisions"].as_array().unwrap().clone();
    let counts: Vec<u64> = revs.iter().map(|r| r["items"].as_u64().unwrap()).collect();
    assert_eq!(counts, [81, 9]);
    // manifest_final.csv names the revision of every item; the shards are kept for --redo-stale.
    let finals = p.read("data/fix/manifest_final.csv");
    assert!(finals
        .starts_with("key,index,shard,status,rows,duration_ms,cached,attempts,reason,revision\n"));
    let new_rev = revs[1]["revision"].as_str().unwrap();
    for line in finals.lines().skip(1) {
        let key: u64 = line.split(',').next().unwrap().parse().unwrap();
        assert_eq!(line.ends_with(new_rev), key % 10 == 3, "{line}");
    }
    assert!(p.path("data/fix/process-0.csv").is_file());
}

fn a_changing_fix_is_made_uniform_by_redo_stale(sharding: &str) {
    let p = project(sharding, true, 2, "0");
    run_all(&p, &[], 1);
    calls(&p);
    // A fix that changes every value: the 81 committed items are now stale.
    p.script("gen.sh", &generator(false, 5, "0"));
    run_all(&p, &[], 0);
    assert_eq!(calls(&p), keys_ending_in_3());

    let before = snapshot(&p, "fix");
    let out = merge(&p, &["--run", "fix", "--single-revision"]);
    assert_exit(&out, 1, "merge --single-revision", p.root());
    assert!(stderr(&out).contains("--redo-stale"), "{}", stderr(&out));
    assert_eq!(
        before,
        snapshot(&p, "fix"),
        "a refused merge changes nothing"
    );

    run_all(&p, &["--redo-stale"], 0);
    let stale: Vec<u64> = (0..90).filter(|k| k % 10 != 3).collect();
    assert_eq!(calls(&p), stale, "exactly the stale items are regenerated");
    // Nothing is stale any more: a second --redo-stale generates nothing.
    run_all(&p, &["--redo-stale"], 0);
    assert!(calls(&p).is_empty());

    let out = merge_ok(&p, &["--run", "fix", "--single-revision"]);
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(p.path("data/fix/combined.csv")).unwrap(),
        clean_dataset(sharding, 5),
        "--redo-stale gives the clean run's dataset"
    );
    let st = stats(&p);
    assert_eq!(st["items_ok"], 90);
    assert_eq!(st["rows"], 90, "superseded commits are not counted");
    assert_eq!(st["revisions"].as_array().unwrap().len(), 1);
}

#[test]
fn redo_stale_makes_a_contiguous_run_uniform() {
    a_changing_fix_is_made_uniform_by_redo_stale("contiguous");
}

#[test]
fn redo_stale_makes_a_stride_run_uniform() {
    a_changing_fix_is_made_uniform_by_redo_stale("stride");
}

#[test]
fn a_failure_during_redo_stale_replaces_the_stale_item_and_is_retried_later() {
    let p = project("contiguous", false, 2, "0");
    run_all(&p, &[], 0);
    calls(&p);
    // The new code fails on keys ending in 3: those items are now failed (the latest record
    // of an item counts), the others are regenerated.
    p.script("gen.sh", &generator(true, 5, "0"));
    run_all(&p, &["--redo-stale"], 1);
    assert_eq!(calls(&p).len(), 90);
    let out = merge(&p, &["--run", "fix"]);
    assert_exit(&out, 1, "merge of a run with failed items", p.root());
    // After the fix, a plain re-run generates exactly those.
    p.script("gen.sh", &generator(false, 5, "0"));
    run_all(&p, &[], 0);
    assert_eq!(calls(&p), keys_ending_in_3());
    merge_ok(&p, &["--run", "fix"]);
    assert_eq!(
        std::fs::read(p.path("data/fix/combined.csv")).unwrap(),
        clean_dataset("contiguous", 5)
    );
}

#[test]
fn kill_9_during_redo_stale_loses_nothing_and_duplicates_nothing() {
    let p = project("contiguous", false, 2, "0");
    p.run_shard("conf.yaml", 0, 1, &[], 0);
    calls(&p);
    p.script("gen.sh", &generator(false, 7, "0.01"));
    let manifest = p.path("data/fix/manifest_shard0_of_1.jsonl");
    let mut rng = TestRng(0x5eed);
    for round in 0..4 {
        let before = manifest_records(&manifest).len();
        let mut child = spawn(p.worker("conf.yaml", &["--redo-stale"]));
        // Kill at a different point each round, after some new commits.
        let want = before + 1 + rng.below(15) as usize;
        wait_for("new commits", Duration::from_secs(30), || {
            manifest_records(&manifest).len() >= want || child.try_wait().ok().flatten().is_some()
        });
        let _ = child.kill();
        let _ = child.wait();
        // Whatever is on disk now holds every item exactly once (old or new value).
        let data = p.dataset("fix");
        let lines: Vec<&str> = std::str::from_utf8(&data).unwrap().lines().collect();
        assert_eq!(lines.len(), 90, "round {round}: every item once");
        for (k, line) in lines.iter().enumerate() {
            assert!(
                *line == format!("{k},{}", k * 2) || *line == format!("{k},{}", k * 7),
                "round {round}: item {k} is {line:?}"
            );
        }
    }
    p.run_shard("conf.yaml", 0, 1, &["--redo-stale"], 0);
    let out = merge_ok(&p, &["--run", "fix", "--single-revision"]);
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
    let want: String = (0..90).map(|k| format!("{k},{}\n", k * 7)).collect();
    assert_eq!(
        p.read("data/fix/combined.csv"),
        format!("key,value\n{want}")
    );
}

#[test]
fn a_changed_identity_is_still_refused() {
    let p = project("contiguous", false, 2, "0");
    p.run_shard("conf.yaml", 0, 1, &[], 0);
    // The argv template is part of what the dataset is: a change needs --force.
    let conf = p.read("conf.yaml").replace("calls]", "calls, extra]");
    p.write("conf.yaml", &conf);
    let out = p.run_shard("conf.yaml", 0, 1, &[], 2);
    assert!(
        stderr(&out).contains("changed generator"),
        "{}",
        stderr(&out)
    );
    // generator.version is a revision: not refused, the items are stale.
    let p = project("contiguous", false, 2, "0");
    p.run_shard("conf.yaml", 0, 1, &[], 0);
    let conf = p
        .read("conf.yaml")
        .replace("retries: 0", "retries: 0, version: \"2\"");
    p.write("conf.yaml", &conf);
    let out = p.run_shard("conf.yaml", 0, 1, &[], 0);
    assert!(stderr(&out).contains("stale=90"), "{}", stderr(&out));
}

#[test]
fn merge_config_compares_the_whole_identity_but_not_the_revision() {
    let p = project("contiguous", false, 2, "0");
    run_all(&p, &[], 0);
    let conf = p.read("conf.yaml");
    let config = p.path("conf.yaml");
    let config = config.to_str().unwrap();
    for (change, what) in [
        (conf.replace("seed: 3", "seed: 4"), "the seed"),
        (conf.replace("end: 90", "end: 91"), "the item source"),
        (conf.replace("calls]", "calls, x]"), "the generator"),
        (conf.replace("[key, value]", "[key, v]"), "the generator"),
        (
            conf.replace("sharding: contiguous", "sharding: stride"),
            "the sharding",
        ),
    ] {
        p.write("conf.yaml", &change);
        let before = snapshot(&p, "fix");
        let out = merge(&p, &["--config", config]);
        assert_exit(
            &out,
            1,
            &format!("merge --config after {what} changed"),
            p.root(),
        );
        assert!(stderr(&out).contains(what), "{what}: {}", stderr(&out));
        assert_eq!(before, snapshot(&p, "fix"));
    }
    // A fixed script is a new revision of the same dataset: merged.
    p.write("conf.yaml", &conf);
    p.script("gen.sh", &generator(false, 2, "0.0"));
    merge_ok(&p, &["--config", config]);
}

/// The text after `after` up to `until` (or the line's end) on the first line holding `after`.
fn hint(text: &str, after: &str, until: &str) -> String {
    let line = text
        .lines()
        .find(|l| l.contains(after))
        .unwrap_or_else(|| panic!("no {after:?} in:\n{text}"));
    let rest = &line[line.find(after).unwrap() + after.len()..];
    rest.split(until).next().unwrap().trim().to_string()
}

/// Runs a suggested command as a user pastes it.
fn paste(p: &Project, cmd: &str) -> std::process::Output {
    std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(p.root())
        .env(
            "SHARDRUN_BIN",
            std::path::Path::new(WORKER).parent().unwrap(),
        )
        .env("SHARDRUN_NO_DISPLAY", "1")
        .env_remove("SLURM_ARRAY_TASK_ID")
        .output()
        .unwrap()
}

/// The whole loop through the launcher, following only what the tools print: a bug, the fix,
/// the suggested re-run, the merge's warning, its suggested --redo-stale, a uniform dataset.
#[test]
fn the_fix_loop_works_by_pasting_the_printed_hints() {
    let p = project("contiguous", true, 2, "0");
    std::fs::create_dir_all(p.path("conf")).unwrap();
    std::fs::rename(p.path("conf.yaml"), p.path("conf/fix.yaml")).unwrap();
    let launcher = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/run_parallel.sh");
    let out = paste(
        &p,
        &format!(
            "{} --config conf/fix.yaml --num-shards 3",
            launcher.display()
        ),
    );
    assert_exit(&out, 1, "the buggy run", p.root());
    assert_eq!(calls(&p).len(), 90);
    let rerun = hint(
        &String::from_utf8_lossy(&out.stdout),
        "re-run only those shards: ",
        "\u{0}",
    );
    assert!(
        rerun.ends_with("--config conf/fix.yaml --only-failed"),
        "{rerun}"
    );

    // The fix changes every value: after the re-run, the good items are stale.
    p.script("gen.sh", &generator(false, 5, "0"));
    let out = paste(&p, &rerun);
    assert_exit(&out, 0, &rerun, p.root());
    assert_eq!(
        calls(&p),
        keys_ending_in_3(),
        "only the failed items run again"
    );
    let merge_cmd = hint(&String::from_utf8_lossy(&out.stdout), "next: ", "   (watch");
    let out = paste(&p, &merge_cmd);
    assert_exit(&out, 0, &merge_cmd, p.root());
    let redo = hint(&stderr(&out), "code made: ", ", then merge again");
    assert!(
        redo.ends_with("--config conf/fix.yaml --redo-stale"),
        "{redo}"
    );

    let out = paste(&p, &redo);
    assert_exit(&out, 0, &redo, p.root());
    assert_eq!(calls(&p).len(), 81, "exactly the stale items");
    let out = paste(&p, &format!("{merge_cmd} --single-revision"));
    assert_exit(&out, 0, "the final merge", p.root());
    assert_eq!(
        std::fs::read(p.path("data/fix/combined.csv")).unwrap(),
        clean_dataset("contiguous", 5)
    );
}
