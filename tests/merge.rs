//! merge: item order, byte identity, refusals that change nothing, crashes, dedupe and append.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::*;

pub const MERGE: &str = env!("CARGO_BIN_EXE_merge");

/// A generator whose rows hold commas, quotes, newlines, non-ASCII text and empty fields, with
/// 0 to 3 rows per item: a pure function of the item.
const TRICKY: &str = r#"#!/bin/sh
n=$(( $2 % 4 ))
i=0
while [ $i -lt $n ]; do
  printf '%s,%s,"comma, ""quote""\nnew line — ünïcödé",\n' "$1" "$i"
  i=$((i + 1))
done
"#;

fn tricky_config(
    p: &Project,
    run: &str,
    sharding: &str,
    jobs: u32,
    seed: u32,
    columns: &str,
) -> String {
    p.script("gen/tricky.sh", TRICKY);
    let name = format!("{run}.yaml");
    p.write(
        &name,
        &format!(
            "run: {run}\nseed: {seed}\nsharding: {sharding}\nitems: {{range: {{start: 0, end: 30}}}}\n\
             generator: {{command: [gen/tricky.sh, \"{{key}}\", \"{{index}}\"], jobs: {jobs}, retries: 0}}\n\
             output: {{columns: [{columns}]}}\n"
        ),
    );
    name
}

pub fn merge(p: &Project, args: &[&str]) -> std::process::Output {
    std::process::Command::new(MERGE)
        .arg("--root")
        .arg(p.root())
        .args(args)
        .output()
        .expect("run merge")
}

pub fn merge_ok(p: &Project, args: &[&str]) -> std::process::Output {
    let out = merge(p, args);
    assert_exit(&out, 0, &format!("merge {args:?}"), p.root());
    out
}

/// Hash of every file under data/<run>/ (name -> contents), to prove nothing changed.
pub fn snapshot(p: &Project, run: &str) -> BTreeMap<String, Vec<u8>> {
    let dir = p.path(&format!("data/{run}"));
    std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn combined_is_byte_identical_across_plans_and_in_item_order() {
    let p = Project::new();
    let one = tricky_config(&p, "one", "contiguous", 1, 1, "k,i,text,empty");
    p.run_shard(&one, 0, 1, &[], 0);
    merge_ok(&p, &["--run", "one", "--keep-shards"]);
    let reference = std::fs::read(p.path("data/one/combined.csv")).unwrap();
    assert!(reference.starts_with(b"k,i,text,empty\n"));
    assert!(String::from_utf8_lossy(&reference)
        .contains("\"comma, \"\"quote\"\"\nnew line — ünïcödé\","));
    // Item order: the key column runs 1, 1, 2, 2, 2, 3, ... never backwards.
    let keys: Vec<u64> = csv::ReaderBuilder::new()
        .from_reader(&reference[..])
        .records()
        .map(|r| r.unwrap()[0].parse().unwrap())
        .collect();
    assert!(keys.windows(2).all(|w| w[0] <= w[1]), "{keys:?}");
    for (run, sharding, shards, jobs) in [("three", "stride", 3, 3), ("seven", "contiguous", 7, 2)]
    {
        let cfg = tricky_config(&p, run, sharding, jobs, 1, "k,i,text,empty");
        for i in 0..shards {
            p.run_shard(&cfg, i, shards, &[], 0);
        }
        let out = merge_ok(&p, &["--config", p.path(&cfg).to_str().unwrap()]);
        assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{shards} shards")));
        assert!(
            std::fs::read(p.path(&format!("data/{run}/combined.csv"))).unwrap() == reference,
            "{run}"
        );
        // Default: shard outputs removed after success, cache and logs kept.
        assert!(!p.path(&format!("data/{run}/process-0.csv")).exists());
        assert!(!p
            .path(&format!("data/{run}/manifest_shard0_of_{shards}.jsonl"))
            .exists());
        assert!(p
            .path(&format!("logs/{run}/shard_0_of_{shards}.log"))
            .exists());
        assert!(p.path("data/cache").is_dir());
        let stats: serde_json::Value = serde_json::from_slice(
            &std::fs::read(p.path(&format!("data/{run}/stats.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(stats["items_ok"], 30);
        assert_eq!(stats["rows"], keys.len());
        assert_eq!(stats["rows_per_item"]["max"], 3);
        let mf = p.read(&format!("data/{run}/manifest_final.csv"));
        assert_eq!(mf.lines().count(), 31);
        assert!(
            mf.starts_with(
                "key,index,shard,status,rows,duration_ms,cached,attempts,reason,revision\n0,0,0,ok,0,"
            ),
            "{mf}"
        );
        // A second merge says it is done.
        let again = merge_ok(&p, &["--run", run]);
        assert!(String::from_utf8_lossy(&again.stdout).contains("already merged"));
    }
    assert!(
        p.path("data/one/process-0.csv").exists(),
        "--keep-shards keeps the shards"
    );
}

/// Regression (scale): the refusal of an incomplete run named every shard, one by one (a
/// message of tens of thousands of characters at 10,000 shards).
#[test]
fn the_refusal_of_a_run_with_many_incomplete_shards_stays_short() {
    let p = Project::new();
    p.script(
        "gen/odd.sh",
        "#!/bin/sh\n[ $(($1 % 2)) = 1 ] && exit 3\necho \"$1,x\"\n",
    );
    p.write("o.yaml", "run: o\nitems: {range: {start: 0, end: 40}}\ngenerator: {command: [gen/odd.sh, \"{key}\"], retries: 0}\noutput: {columns: [k, v]}\n");
    for i in (0..17).chain([19]) {
        p.run_shard("o.yaml", i, 20, &["--quiet"], 1);
    }
    let out = merge(&p, &["--run", "o"]);
    assert_exit(&out, 1, "incomplete run", p.root());
    let err = stderr(&out);
    assert!(err.contains("shards 17-18 of 20 never ran."), "{err}");
    for i in 17..19 {
        p.run_shard("o.yaml", i, 20, &["--quiet"], 1);
    }
    let out = merge(&p, &["--run", "o"]);
    assert_exit(&out, 1, "incomplete run", p.root());
    let err = stderr(&out);
    assert!(
        err.contains("shard 4 of 20 has 1 of 2 items committed (1 failed)"),
        "{err}"
    );
    assert!(!err.contains("shard 5 of 20"), "{err}");
    assert!(
        err.contains("15 more shards with items not committed (monitor --run o lists them)"),
        "{err}"
    );
    assert!(err.len() < 1000, "{} characters: {err}", err.len());
}

#[test]
fn refusals_exit_1_and_change_no_file() {
    let p = Project::new();
    // A missing shard.
    let cfg = tricky_config(&p, "m", "contiguous", 1, 1, "k,i,text,empty");
    p.run_shard(&cfg, 0, 3, &[], 0);
    p.run_shard(&cfg, 2, 3, &[], 0);
    let before = snapshot(&p, "m");
    let out = merge(&p, &["--run", "m"]);
    assert_exit(&out, 1, "missing shard", p.root());
    assert!(
        stderr(&out).contains("shard 1 of 3 never ran"),
        "{}",
        stderr(&out)
    );
    assert_eq!(snapshot(&p, "m"), before);
    // A failed item.
    p.script(
        "gen/fail.sh",
        "#!/bin/sh\n[ \"$1\" = 4 ] && exit 3\necho \"$1,x\"\n",
    );
    p.write("f.yaml", "run: f\nitems: {range: {start: 0, end: 8}}\ngenerator: {command: [gen/fail.sh, \"{key}\"], retries: 0}\noutput: {columns: [k, v]}\n");
    p.run_shard("f.yaml", 0, 2, &[], 0);
    p.run_shard("f.yaml", 1, 2, &[], 1);
    let before = snapshot(&p, "f");
    let out = merge(&p, &["--run", "f"]);
    assert_exit(&out, 1, "failed item", p.root());
    assert!(
        stderr(&out).contains("shard 1 of 2 has 3 of 4 items committed (1 failed)"),
        "{}",
        stderr(&out)
    );
    assert_eq!(snapshot(&p, "f"), before);
    // --allow-partial merges what exists, lists the failure and keeps the shards.
    let out = merge_ok(&p, &["--run", "f", "--allow-partial"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("4 (failed: 4)"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        p.read("data/f/combined.csv"),
        "k,v\n0,x\n1,x\n2,x\n3,x\n5,x\n6,x\n7,x\n"
    );
    assert!(p
        .read("data/f/manifest_final.csv")
        .contains("4,4,1,failed,0,0,false,1,exit code 3"));
    assert!(p.path("data/f/process-1.csv").exists());
    // Headers that differ, named with the column.
    let a = tricky_config(&p, "h", "contiguous", 1, 1, "k,i,text,empty");
    p.run_shard(&a, 0, 2, &[], 0);
    let b = tricky_config(&p, "h", "contiguous", 1, 1, "k,i,TEXT,empty");
    p.run_shard(&b, 1, 2, &[], 0);
    let before = snapshot(&p, "h");
    let out = merge(&p, &["--run", "h"]);
    assert_exit(&out, 1, "header mismatch", p.root());
    assert!(
        stderr(&out).contains("process-1.csv: header differs") && stderr(&out).contains("column 3"),
        "{}",
        stderr(&out)
    );
    assert_eq!(snapshot(&p, "h"), before);
    // Shards written under different seeds.
    let a = tricky_config(&p, "s", "contiguous", 1, 1, "k,i,text,empty");
    p.run_shard(&a, 0, 2, &[], 0);
    let b = tricky_config(&p, "s", "contiguous", 1, 2, "k,i,text,empty");
    p.run_shard(&b, 1, 2, &[], 0);
    let before = snapshot(&p, "s");
    let out = merge(&p, &["--run", "s"]);
    assert_exit(&out, 1, "fingerprint mismatch", p.root());
    assert!(stderr(&out).contains("seed differs"), "{}", stderr(&out));
    assert_eq!(snapshot(&p, "s"), before);
    // Unknown run: usage error.
    assert_exit(&merge(&p, &["--run", "nope"]), 2, "unknown run", p.root());
}

#[test]
fn kill_9_during_merge_never_leaves_a_truncated_dataset() {
    let p = Project::new();
    p.write("big.yaml", "run: big\nitems: {range: {start: 0, end: 60000}}\ngenerator: {builtin: echo, params: {rows: 2, pad: 100}}\n");
    for i in 0..2 {
        p.run_shard("big.yaml", i, 2, &["--no-cache"], 0);
    }
    let t = std::time::Instant::now();
    merge_ok(&p, &["--run", "big", "--keep-shards"]);
    // Kill at random moments spread over a whole merge.
    let span = (t.elapsed().as_micros() as u64 * 5 / 4).max(1000);
    let expected = std::fs::read(p.path("data/big/combined.csv")).unwrap();
    let expected_final = std::fs::read(p.path("data/big/manifest_final.csv")).unwrap();
    std::fs::remove_file(p.path("data/big/combined.csv")).unwrap();
    // Whatever is in place is the whole dataset, byte for byte, and so is manifest_final.csv.
    let check = |p: &Project| {
        if let Ok(got) = std::fs::read(p.path("data/big/combined.csv")) {
            assert!(
                got == expected,
                "a different combined.csv is in place ({} bytes, expected {})",
                got.len(),
                expected.len()
            );
        }
        if let Ok(got) = std::fs::read(p.path("data/big/manifest_final.csv")) {
            assert!(
                got == expected_final,
                "a different manifest_final.csv is in place"
            );
        }
    };
    let mut rng = TestRng(77);
    let mut kills = 0;
    let mut completed = 0;
    for keep in [
        true, true, true, true, true, true, false, false, false, false,
    ] {
        let mut cmd = std::process::Command::new(MERGE);
        cmd.arg("--root").arg(p.root()).args(["--run", "big"]);
        if keep {
            cmd.arg("--keep-shards");
        }
        let mut child = spawn(cmd);
        std::thread::sleep(Duration::from_micros(rng.below(span)));
        if child.try_wait().unwrap().is_none() {
            signal(child.id(), libc::SIGKILL);
            kills += 1;
        }
        if child.wait().unwrap().success() {
            completed += 1;
        }
        check(&p);
        if !keep && !p.path("data/big/manifest_shard0_of_2.jsonl").exists() {
            break;
        }
    }
    eprintln!("{kills} merges killed, {completed} completed before the kill");
    let out = merge_ok(&p, &["--run", "big"]);
    check(&p);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("merged run big") || text.contains("already merged"),
        "{text}"
    );
    assert!(!p.path("data/big/process-0.csv").exists());
    let combined = std::fs::read(p.path("data/big/combined.csv")).unwrap();
    assert_eq!(combined.iter().filter(|&&b| b == b'\n').count(), 120_001);
    assert!(combined == expected);
}

#[test]
fn dedupe_keeps_the_last_row_per_key_and_append_adds_after_the_old_rows() {
    let p = Project::new();
    p.script("gen/d.sh", "#!/bin/sh\necho \"$(( $1 % 3 )),$1\"\n");
    p.write("d.yaml", "run: d\nitems: {range: {start: 0, end: 7}}\ngenerator: {command: [gen/d.sh, \"{key}\"]}\noutput: {columns: [id, item]}\n");
    for i in 0..2 {
        p.run_shard("d.yaml", i, 2, &[], 0);
    }
    merge_ok(&p, &["--run", "d", "--keep-shards", "--dedupe-key", "id"]);
    assert_eq!(p.read("data/d/combined.csv"), "id,item\n1,4\n2,5\n0,6\n");
    merge_ok(
        &p,
        &["--run", "d", "--keep-shards", "--output-name", "all.csv"],
    );
    merge_ok(
        &p,
        &[
            "--run",
            "d",
            "--keep-shards",
            "--output-name",
            "all.csv",
            "--append",
        ],
    );
    let all = p.read("data/d/all.csv");
    assert_eq!(all.lines().count(), 15, "{all}");
    merge_ok(
        &p,
        &[
            "--run",
            "d",
            "--keep-shards",
            "--output-name",
            "all.csv",
            "--append",
            "--dedupe-key",
            "item",
        ],
    );
    assert_eq!(
        p.read("data/d/all.csv"),
        "id,item\n0,0\n1,1\n2,2\n0,3\n1,4\n2,5\n0,6\n"
    );
    let out = merge(&p, &["--run", "d", "--dedupe-key", "nope"]);
    assert_exit(&out, 2, "unknown dedupe column", p.root());
}

#[test]
fn kill_9_during_merge_append_never_appends_the_shards_twice() {
    let p = Project::new();
    p.write("ap.yaml", "run: ap\nitems: {range: {start: 0, end: 40000}}\ngenerator: {builtin: echo, params: {rows: 1, pad: 50}}\n");
    for i in 0..2 {
        p.run_shard("ap.yaml", i, 2, &["--no-cache"], 0);
    }
    // An existing output to append to: the same shards once.
    let t = std::time::Instant::now();
    merge_ok(&p, &["--run", "ap", "--keep-shards"]);
    let span = (t.elapsed().as_micros() as u64 * 3).max(1000);
    let mut rng = TestRng(4242);
    let mut kills = 0;
    for round in 0..15u64 {
        if !p.path("data/ap/manifest_shard0_of_2.jsonl").exists() {
            break;
        }
        let mut cmd = std::process::Command::new(MERGE);
        cmd.arg("--root")
            .arg(p.root())
            .args(["--run", "ap", "--append"]);
        let mut child = spawn(cmd);
        // Later and later kills, so they land in every phase before one merge completes.
        std::thread::sleep(Duration::from_micros(
            span * round / 15 + rng.below(span / 15),
        ));
        if child.try_wait().unwrap().is_none() {
            signal(child.id(), libc::SIGKILL);
            kills += 1;
        }
        let _ = child.wait();
    }
    eprintln!("{kills} appends killed");
    assert!(kills >= 3, "only {kills} kills landed");
    merge_ok(&p, &["--run", "ap", "--append"]);
    let combined = std::fs::read(p.path("data/ap/combined.csv")).unwrap();
    let lines = combined.iter().filter(|&&b| b == b'\n').count();
    assert_eq!(
        lines,
        1 + 2 * 40_000,
        "the shards must be appended exactly once"
    );
    assert!(!p.path("data/ap/process-0.csv").exists());
}

#[test]
fn a_shard_file_is_never_the_merge_output() {
    let p = Project::new();
    p.write(
        "o.yaml",
        "run: o\nitems: {list: [a, b]}\ngenerator: {builtin: echo}\n",
    );
    p.run_shard("o.yaml", 0, 1, &[], 0);
    let out = merge(&p, &["--run", "o", "--output-name", "process-0.csv"]);
    assert_exit(&out, 2, "output over a shard", p.root());
    assert!(p.path("data/o/process-0.csv").exists());
    let out = p.run(
        "o.yaml",
        &[
            "--shard-index",
            "0",
            "--num-shards",
            "1",
            "--name",
            "combined",
        ],
    );
    assert_exit(&out, 2, "reserved name", p.root());
}

/// Contiguous shards are merged block by block (each shard's rows of manifest_final.csv written
/// while its manifest is read, the data copied meanwhile); `--dedupe-key` goes through the
/// general interleave instead. On the same shards, with failed items, a missing shard and
/// manifests out of item order, both must write the same bytes.
#[test]
fn block_merge_and_interleaved_merge_write_the_same_outputs() {
    let p = Project::new();
    // (run, jobs, the shard that never runs, a failed item's row, a missing item's row)
    for (run, jobs, skipped, failed_row, missing_row) in [
        (
            "sorted",
            1,
            2,
            "\n3,3,0,failed,0,0,false,1,exit code 3,",
            "\n,25,2,missing,0,0,false,0,,\n",
        ),
        (
            "unsorted",
            3,
            0,
            "\n17,17,1,failed,0,0,false,1,exit code 3,",
            "\n,5,0,missing,0,0,false,0,,\n",
        ),
    ] {
        // One script per run, so the second run does not take its items from the cache.
        p.script(
            &format!("gen/{run}.sh"),
            "#!/bin/sh\n[ $(( $1 % 7 )) = 3 ] && exit 3\nsleep 0.0$(( 4 - 2 * ($1 % 3) ))\n\
             i=0\nwhile [ $i -lt $(( $1 % 3 )) ]; do echo \"$1,$i,$1-$i\"; i=$((i + 1)); done\n",
        );
        p.write(
            &format!("{run}.yaml"),
            &format!(
                "run: {run}\nitems: {{range: {{start: 0, end: 40}}}}\n\
                 generator: {{command: [gen/{run}.sh, \"{{key}}\"], jobs: {jobs}, retries: 0}}\n\
                 output: {{columns: [k, r, u]}}\n"
            ),
        );
        for i in (0..4).filter(|&i| i != skipped) {
            p.run_shard(&format!("{run}.yaml"), i, 4, &[], 1);
        }
        let outputs = |extra: &[&str]| {
            let mut args = vec!["--run", run, "--allow-partial", "--keep-shards"];
            args.extend_from_slice(extra);
            let out = merge_ok(&p, &args);
            let files = ["combined.csv", "manifest_final.csv", "stats.json"]
                .map(|f| p.read(&format!("data/{run}/{f}")));
            (String::from_utf8_lossy(&out.stdout).into_owned(), files)
        };
        let (blocks_stdout, blocks) = outputs(&[]);
        let (interleaved_stdout, interleaved) = outputs(&["--dedupe-key", "u"]);
        assert_eq!(blocks, interleaved, "{run}");
        assert_eq!(blocks_stdout, interleaved_stdout, "{run}");
        let [combined, mf, _] = &blocks;
        // 40 items, 10 per shard, one shard never ran; items 3, 10, 17, 24, 31, 38 fail.
        assert!(mf.starts_with("key,index,shard,status,"), "{mf}");
        assert!(mf.contains(failed_row), "{mf}");
        assert!(mf.contains(missing_row), "{mf}");
        let keys: Vec<u64> = combined
            .lines()
            .skip(1)
            .map(|l| l.split(',').next().unwrap().parse().unwrap())
            .collect();
        assert!(keys.windows(2).all(|w| w[0] <= w[1]), "{combined}");
        let skipped_block = u64::from(skipped) * 10..u64::from(skipped) * 10 + 10;
        assert!(!keys.iter().any(|k| skipped_block.contains(k) || k % 7 == 3));
        if jobs > 1 {
            let m = p.read(&format!("data/{run}/manifest_shard1_of_4.jsonl"));
            let order: Vec<u64> = m
                .lines()
                .skip(1)
                .filter(|l| l.contains("\"ok\""))
                .map(|l| l[9..l.find(',').unwrap()].parse().unwrap())
                .collect();
            assert!(
                order.windows(2).any(|w| w[0] > w[1]),
                "shard 1 committed in item order, so the out-of-order case is not tested: {order:?}"
            );
        }
    }
}

/// `merge | head -1`, `monitor | head -1`, `shard-worker --dry-run | head -1`: a reader that goes
/// away ends the program quietly with exit 0 (the merge is complete by then), never with a panic.
#[test]
fn a_closed_stdout_ends_quietly_with_the_work_done() {
    let p = Project::new();
    let cfg = tricky_config(&p, "pipe", "contiguous", 1, 1, "k,i,text,empty");
    p.run_shard(&cfg, 0, 1, &[], 0);
    let closed = || {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        writer
    };
    let monitor = std::process::Command::new(env!("CARGO_BIN_EXE_monitor"))
        .args(["--run", "pipe", "--root"])
        .arg(p.root())
        .stdout(closed())
        .output()
        .expect("run monitor");
    let mut dry = p.worker(&cfg, &["--dry-run"]);
    let dry = dry.stdout(closed()).output().expect("run the dry run");
    let merged = std::process::Command::new(MERGE)
        .args(["--run", "pipe", "--root"])
        .arg(p.root())
        .stdout(closed())
        .output()
        .expect("run merge");
    for (what, out) in [("monitor", monitor), ("dry run", dry), ("merge", merged)] {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{what}: {err}");
        assert_eq!(out.status.code(), Some(0), "{what}: {err}");
    }
    assert!(p.path("data/pipe/combined.csv").is_file());
}

/// A stride plan interleaves the shards' items one by one: more items than one read-ahead batch
/// per shard, merged from 3 shards, must give the same dataset as one contiguous shard.
#[test]
fn a_large_stride_merge_equals_the_contiguous_one() {
    let p = Project::new();
    for (run, sharding, shards) in [("whole", "contiguous", 1), ("strided", "stride", 3)] {
        p.write(
            &format!("{run}.yaml"),
            &format!(
                "run: {run}\nsharding: {sharding}\nitems: {{range: {{start: 0, end: 30000}}}}\n\
                 generator: {{builtin: echo, params: {{rows: 2, pad: 3}}}}\ncache: {{enabled: false}}\n"
            ),
        );
        for i in 0..shards {
            p.run_shard(&format!("{run}.yaml"), i, shards, &[], 0);
        }
        merge_ok(&p, &["--run", run, "--keep-shards"]);
    }
    let whole = std::fs::read(p.path("data/whole/combined.csv")).unwrap();
    let strided = std::fs::read(p.path("data/strided/combined.csv")).unwrap();
    assert_eq!(whole.iter().filter(|&&b| b == b'\n').count(), 60_001);
    assert!(
        whole == strided,
        "the stride merge differs from the contiguous one"
    );
}

/// Without shard logs that say the run is complete, merge copies the data only after it has
/// validated the manifests; the outputs are the same either way, in item order or not.
#[test]
fn a_merge_without_logs_writes_the_same_outputs() {
    let p = Project::new();
    for (run, jobs) in [("inorder", 1), ("outoforder", 3)] {
        p.script(
            &format!("gen/{run}.sh"),
            "#!/bin/sh\nsleep 0.0$(( 4 - 2 * ($1 % 3) ))\necho \"$1,x\"\n",
        );
        p.write(
            &format!("{run}.yaml"),
            &format!(
                "run: {run}\nitems: {{range: {{start: 0, end: 24}}}}\n\
                 generator: {{command: [gen/{run}.sh, \"{{key}}\"], jobs: {jobs}}}\n\
                 output: {{columns: [k, v]}}\n"
            ),
        );
        for i in 0..2 {
            p.run_shard(&format!("{run}.yaml"), i, 2, &[], 0);
        }
        let outputs = || {
            merge_ok(&p, &["--run", run, "--keep-shards"]);
            ["combined.csv", "manifest_final.csv"].map(|f| p.read(&format!("data/{run}/{f}")))
        };
        let with_logs = outputs();
        std::fs::remove_dir_all(p.path(&format!("logs/{run}"))).unwrap();
        assert_eq!(outputs(), with_logs, "{run}");
        let keys: Vec<u64> = with_logs[0]
            .lines()
            .skip(1)
            .map(|l| l.split(',').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(keys, (0..24).collect::<Vec<_>>(), "{run}");
    }
}
