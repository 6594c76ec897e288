//! Persistent generators: one process per slot serves many items, with every per-item promise.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;

/// A Python generator usable in both modes; `BEHAVE` in the environment picks a misbehaviour.
const GEN: &str = r#"import os, sys, time
sys.path.insert(0, os.environ["SHARDRUN_PY"])
import shardrun_gen

def rows(item):
    k, i = item["key"], item["index"]
    behave = os.environ.get("BEHAVE", "")
    with open("calls.log", "a") as f:
        f.write(f"{os.getpid()} {k}\n")
    if behave == "hang" and k == "5" and not os.path.exists("hung"):
        open("hung", "w").close()
        time.sleep(300)
    if behave == "crash7" and i % 7 == 6:
        os._exit(3)
    if behave == "big" and k == "1":
        return ([k, j, "x" * 1000] for j in range(52_000))
    if behave == "slow":
        time.sleep(0.02)
    return [[k, j, f'say "{k}", ünï\nline'] for j in range(i % 4)]

if __name__ == "__main__":
    if "--serve" in sys.argv:
        shardrun_gen.serve(rows)
    else:
        shardrun_gen.run_once(rows)
"#;

fn setup(p: &Project, run: &str, mode: &str, items: u32, extra: &str) -> String {
    p.write("gen.py", GEN);
    let argv = if mode == "persistent" {
        "[python3, gen.py, --serve]"
    } else {
        "[python3, gen.py]"
    };
    let cfg = format!("{run}.yaml");
    p.write(
        &cfg,
        &format!(
            "run: {run}\nseed: 5\nitems: {{range: {{start: 0, end: {items}}}}}\n\
             generator: {{command: {argv}, mode: {mode}{extra}}}\n\
             output: {{columns: [key, row, text]}}\ncache: {{enabled: false}}\n"
        ),
    );
    cfg
}

fn with_py(mut c: std::process::Command, behave: &str) -> std::process::Command {
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join("python");
    c.env("SHARDRUN_PY", py).env("BEHAVE", behave);
    c
}

fn run(p: &Project, cfg: &str, args: &[&str], behave: &str) -> std::process::Output {
    let mut all = vec!["--shard-index", "0", "--num-shards", "1"];
    all.extend_from_slice(args);
    with_py(p.worker(cfg, &all), behave)
        .output()
        .expect("worker")
}

fn processes_started(p: &Project) -> usize {
    let calls = p.read("calls.log");
    let mut pids: Vec<&str> = calls.lines().filter_map(|l| l.split(' ').next()).collect();
    pids.sort_unstable();
    pids.dedup();
    pids.len()
}

#[test]
fn persistent_and_per_item_modes_give_byte_identical_datasets() {
    let p = Project::new();
    let a = setup(&p, "per", "per-item", 24, "");
    assert_exit(&run(&p, &a, &[], ""), 0, "per-item", p.root());
    assert_eq!(processes_started(&p), 24);
    std::fs::remove_file(p.path("calls.log")).unwrap();
    let b = setup(&p, "pers", "persistent", 24, ", jobs: 3");
    assert_exit(&run(&p, &b, &[], ""), 0, "persistent", p.root());
    assert_eq!(processes_started(&p), 3, "one process per slot");
    let (x, y) = (p.dataset("per"), p.dataset("pers"));
    assert!(!x.is_empty() && x == y, "datasets differ");
}

#[test]
fn a_hanging_item_times_out_and_the_restarted_generator_serves_the_rest() {
    let p = Project::new();
    let cfg = setup(&p, "h", "persistent", 10, ", timeout: 1s, retries: 0");
    let out = run(&p, &cfg, &[], "hang");
    assert_exit(&out, 1, "one item timed out", p.root());
    let recs = manifest_records(&p.path("data/h/manifest_shard0_of_1.jsonl"));
    let failed: Vec<_> = recs.iter().filter(|r| r["status"] == "failed").collect();
    assert_eq!(failed.len(), 1, "{recs:?}");
    assert_eq!(failed[0]["key"], "5");
    assert!(
        failed[0]["reason"]
            .as_str()
            .unwrap()
            .contains("timed out after 1s"),
        "{recs:?}"
    );
    assert_eq!(recs.iter().filter(|r| r["status"] == "ok").count(), 9);
    assert_eq!(processes_started(&p), 2);
    // The re-run retries just that item, and the result equals an undisturbed run.
    assert_exit(&run(&p, &cfg, &[], "hang"), 0, "re-run", p.root());
    let reference = setup(&p, "ref", "persistent", 10, "");
    assert_exit(&run(&p, &reference, &[], ""), 0, "reference", p.root());
    assert!(p.dataset("h") == p.dataset("ref"));
}

#[test]
fn a_generator_that_crashes_every_7th_item_fails_only_those() {
    let p = Project::new();
    let cfg = setup(&p, "c", "persistent", 30, ", retries: 0");
    let out = run(&p, &cfg, &[], "crash7");
    assert_exit(&out, 1, "crashes", p.root());
    let recs = manifest_records(&p.path("data/c/manifest_shard0_of_1.jsonl"));
    let failed: Vec<u64> = recs
        .iter()
        .filter(|r| r["status"] == "failed")
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    assert_eq!(failed, [6, 13, 20, 27]);
    let reason = recs.iter().find(|r| r["status"] == "failed").unwrap()["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.contains("exit code 3"), "{reason}");
    assert_eq!(recs.iter().filter(|r| r["status"] == "ok").count(), 26);
}

#[test]
fn a_generator_that_never_starts_stops_the_shard_after_a_few_tries() {
    let p = Project::new();
    p.script(
        "broken.sh",
        "#!/bin/sh\necho 'cannot import torch' >&2\nexit 7\n",
    );
    p.write(
        "n.yaml",
        "run: n\nitems: {range: {start: 0, end: 50}}\ngenerator: {command: [./broken.sh], mode: persistent, retries: 5}\noutput: {columns: [k]}\n",
    );
    let t = Instant::now();
    let out = run(&p, "n.yaml", &[], "");
    assert_exit(&out, 1, "never starts", p.root());
    assert!(t.elapsed() < Duration::from_secs(20));
    let log = p.read("logs/n/shard_0_of_1.log");
    assert!(
        log.contains("did not start") && log.contains("3 times in a row"),
        "{log}"
    );
    assert!(log.contains("cannot import torch"), "{log}");
    assert!(log.contains("finish status=halted"), "{log}");
    assert_eq!(log.matches(" attempt_failed ").count(), 2, "{log}");
}

#[test]
fn output_after_the_marker_is_a_protocol_error_and_the_rest_continue() {
    let p = Project::new();
    p.script(
        "junk.py",
        "#!/usr/bin/env python3\nimport sys, json\nfor line in sys.stdin:\n    k = json.loads(line)['key']\n    out = f'{k}\\n\\x1e\\n'\n    if k == '2':\n        out += 'JUNK\\n'\n    sys.stdout.write(out)\n    sys.stdout.flush()\n",
    );
    p.write(
        "j.yaml",
        "run: j\nitems: {range: {start: 0, end: 6}}\ngenerator: {command: [./junk.py], mode: persistent, retries: 1}\noutput: {columns: [k]}\n",
    );
    let out = run(&p, "j.yaml", &[], "");
    assert_exit(&out, 0, "protocol error retried", p.root());
    let log = p.read("logs/j/shard_0_of_1.log");
    assert!(
        log.contains("protocol error: output after the end-of-item marker"),
        "{log}"
    );
    assert!(log.contains("JUNK"), "{log}");
    assert_eq!(p.dataset("j"), b"0\n1\n2\n3\n4\n5\n");
}

#[test]
fn fifty_mebibytes_for_one_item_stream_through() {
    let p = Project::new();
    let cfg = setup(&p, "b", "persistent", 3, "");
    let out = run(&p, &cfg, &[], "big");
    assert_exit(&out, 0, "big item", p.root());
    let recs = manifest_records(&p.path("data/b/manifest_shard0_of_1.jsonl"));
    let big = recs.iter().find(|r| r["key"] == "1").unwrap();
    assert_eq!(big["rows"], 52_000);
    assert!(big["bytes"].as_u64().unwrap() > 50 << 20);
}

#[test]
fn kill_9_of_the_worker_or_the_generator_then_resume_gives_exact_rows() {
    let p = Project::new();
    let reference = setup(&p, "r", "persistent", 200, "");
    assert_exit(&run(&p, &reference, &[], ""), 0, "reference", p.root());
    let cfg = setup(&p, "k", "persistent", 200, ", jobs: 2, retries: 3");
    let mut rng = TestRng(99);
    let mut kills = 0;
    for round in 0..10 {
        let mut c = with_py(
            p.worker(&cfg, &["--shard-index", "0", "--num-shards", "1"]),
            "slow",
        );
        let mut child = spawn({
            c.stdout(std::process::Stdio::null());
            c
        });
        std::thread::sleep(Duration::from_millis(150 + rng.below(300)));
        if round % 2 == 0 {
            // Kill a generator process: its item is retried on a fresh one.
            if let Some(pid) = p
                .read("calls.log")
                .lines()
                .last()
                .and_then(|l| l.split(' ').next()?.parse::<i32>().ok())
            {
                // SAFETY: kill(2) of a process this test's worker started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(50 + rng.below(100)));
        }
        if child.try_wait().unwrap().is_none() {
            signal(child.id(), libc::SIGKILL);
            kills += 1;
        }
        let _ = child.wait();
    }
    assert!(kills >= 5, "only {kills} worker kills landed");
    assert_exit(&run(&p, &cfg, &[], ""), 0, "final run", p.root());
    assert!(p.dataset("k") == p.dataset("r"), "rows differ after kills");
}

#[test]
fn sigint_drains_a_persistent_shard_and_leaves_no_process() {
    let p = Project::new();
    let cfg = setup(&p, "s", "persistent", 400, ", jobs: 2");
    let mut child = spawn(with_py(
        p.worker(&cfg, &["--shard-index", "0", "--num-shards", "1"]),
        "slow",
    ));
    wait_for("both generators", Duration::from_secs(20), || {
        processes_started(&p) >= 2
    });
    let t = Instant::now();
    signal(child.id(), libc::SIGINT);
    assert_eq!(
        wait_child(&mut child, Duration::from_secs(10)).code(),
        Some(130)
    );
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
    let calls = p.read("calls.log");
    for pid in calls
        .lines()
        .filter_map(|l| l.split(' ').next()?.parse::<i32>().ok())
    {
        wait_for(
            &format!("generator {pid} to be gone"),
            Duration::from_secs(2),
            || !alive(pid),
        );
    }
}

#[test]
fn per_item_placeholders_are_refused_in_persistent_mode() {
    let p = Project::new();
    p.write(
        "x.yaml",
        "run: x\nitems: {list: [a]}\ngenerator: {command: [python3, gen.py, \"{key}\"], mode: persistent}\noutput: {columns: [k]}\n",
    );
    p.write("gen.py", "");
    let out = run(&p, "x.yaml", &[], "");
    assert_exit(&out, 2, "placeholder", p.root());
    assert!(
        stderr(&out).contains("only {shard} and {slot}"),
        "{}",
        stderr(&out)
    );
}

/// Values that hold a line equal to the end-of-item marker, and carriage returns.
const TRICKY: &str = r#"import os, sys
sys.path.insert(0, os.environ["SHARDRUN_PY"])
import shardrun_gen

def rows(item):
    k = item["key"]
    return [
        [k, "Intro\n---\nDetails"],
        [k, "a\n\x1e\nb"],
        [k, "ends in CR\r"],
        [k, "CR\rinside"],
        [k, "\r"],
    ]

if __name__ == "__main__":
    if "--serve" in sys.argv:
        shardrun_gen.serve(rows)
    else:
        shardrun_gen.run_once(rows)
"#;

#[test]
fn marker_lines_inside_quoted_values_and_carriage_returns_arrive_exactly_in_both_modes() {
    let p = Project::new();
    p.write("tricky.py", TRICKY);
    let mut datasets = Vec::new();
    for (name, argv, extra) in [
        ("per", "[python3, tricky.py]", ""),
        (
            "pers",
            "[python3, tricky.py, --serve]",
            ", mode: persistent",
        ),
        (
            "dash",
            "[python3, tricky.py, --serve]",
            ", mode: persistent, marker: \"---\"",
        ),
    ] {
        let cfg = format!("{name}.yaml");
        p.write(
            &cfg,
            &format!(
                "run: {name}\nitems: {{range: {{start: 0, end: 6}}}}\n\
                 generator: {{command: {argv}, timeout: 20s{extra}}}\n\
                 output: {{columns: [key, text]}}\ncache: {{enabled: false}}\n"
            ),
        );
        let out = run(&p, &cfg, &[], "");
        assert_exit(&out, 0, name, p.root());
        datasets.push(p.dataset(name));
    }
    let want: String = (0..6)
        .map(|k| {
            format!(
                "{k},\"Intro\n---\nDetails\"\n{k},\"a\n\x1e\nb\"\n{k},\"ends in CR\r\"\n\
                 {k},\"CR\rinside\"\n{k},\"\r\"\n"
            )
        })
        .collect();
    for (d, run) in datasets.iter().zip(["per", "pers", "dash"]) {
        assert_eq!(String::from_utf8_lossy(d), want, "{run}");
    }
}

#[test]
fn output_that_ends_inside_a_quoted_field_fails_the_item_in_both_modes() {
    let p = Project::new();
    // Key 2 leaves a quote open: a shell generator for per-item mode, and a Python loop
    // speaking the protocol for persistent mode (which then waits for the next request).
    p.script(
        "open.sh",
        "#!/bin/sh\nif [ \"$1\" = 2 ]; then printf '%s,\"abc' \"$1\"; else echo \"$1,ok\"; fi\n",
    );
    p.write(
        "serve.py",
        "import sys, json\nfor line in sys.stdin:\n    k = json.loads(line)['key']\n    \
         sys.stdout.write(k + (',\"abc\\n' if k == '2' else ',ok\\n') + '\\x1e\\n')\n    \
         sys.stdout.flush()\n",
    );
    for (name, argv, extra) in [
        ("per", "[./open.sh, \"{key}\"]", ""),
        ("pers", "[python3, serve.py]", ", mode: persistent"),
    ] {
        let cfg = format!("{name}.yaml");
        p.write(
            &cfg,
            &format!(
                "run: {name}\nitems: {{range: {{start: 0, end: 5}}}}\n\
                 generator: {{command: {argv}, retries: 0{extra}}}\n\
                 output: {{columns: [key, text]}}\ncache: {{enabled: false}}\n"
            ),
        );
        let started = Instant::now();
        let out = run(&p, &cfg, &[], "");
        assert_exit(&out, 1, name, p.root());
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{name}: no hang"
        );
        let recs = manifest_records(&p.path(&format!("data/{name}/manifest_shard0_of_1.jsonl")));
        let failed: Vec<_> = recs.iter().filter(|r| r["status"] == "failed").collect();
        assert_eq!(failed.len(), 1, "{name}: {recs:?}");
        assert_eq!(failed[0]["key"], "2");
        let reason = failed[0]["reason"].as_str().unwrap();
        assert!(reason.contains("inside a quoted field"), "{name}: {reason}");
        assert_eq!(
            String::from_utf8_lossy(&p.dataset(name)),
            "0,ok\n1,ok\n3,ok\n4,ok\n",
            "{name}"
        );
    }
}

/// A persistent generator that exits (status 0) right after each answer: the next item is sent
/// to a new process, never failed for the exit of the previous one.
#[test]
fn a_generator_that_exits_after_each_answer_is_restarted_for_the_next_item() {
    let p = Project::new();
    p.script(
        "one.sh",
        "#!/bin/sh\nread -r line\nk=$(echo \"$line\" | sed 's/.*\"key\": *\"\\([^\"]*\\)\".*/\\1/')\n\
         printf '%s,ok\\n\\036\\n' \"$k\"\n",
    );
    p.write(
        "one.yaml",
        "run: one\nitems: {range: {start: 0, end: 40}}\n\
         generator: {command: [./one.sh], mode: persistent, retries: 0, jobs: 2}\n\
         output: {columns: [k, v]}\ncache: {enabled: false}\n",
    );
    let out = run(&p, "one.yaml", &[], "");
    assert_exit(&out, 0, "one answer per process", p.root());
    let want: String = (0..40).map(|k| format!("{k},ok\n")).collect();
    assert_eq!(String::from_utf8_lossy(&p.dataset("one")), want);
}

/// A persistent generator that answers one request and exits (with `$CODE`).
const ONE_SHOT: &str = r#"import os, sys
sys.stdin.readline()
sys.stdout.write("a,b\n" + os.environ["SHARDRUN_MARKER"] + "\n")
sys.stdout.flush()
sys.exit(int(os.environ["CODE"]))
"#;

/// Regression: a persistent generator that exited right after answering (with a non-zero code)
/// made the next item fail ("ended before the end-of-item marker") instead of a fresh process
/// serving it.
#[test]
fn a_generator_exiting_after_each_answer_is_restarted_for_the_next_item() {
    let p = Project::new();
    p.write("one.py", ONE_SHOT);
    p.write(
        "one.yaml",
        "run: one\nitems: {range: {start: 0, end: 6}}\n\
         generator: {command: [python3, one.py], mode: persistent, retries: 0}\n\
         output: {columns: [x, y]}\ncache: {enabled: false}\n",
    );
    for code in ["0", "3"] {
        let out = p
            .worker(
                "one.yaml",
                &["--shard-index", "0", "--num-shards", "1", "--force"],
            )
            .env("CODE", code)
            .output()
            .expect("worker");
        assert_exit(
            &out,
            0,
            &format!("exit code {code} after each answer"),
            p.root(),
        );
        assert_eq!(p.dataset("one"), b"a,b\n".repeat(6));
    }
}
