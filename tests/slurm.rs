//! scripts/run_slurm.sh on a real one-node Slurm cluster (scripts/slurm_local.sh): cancel, requeue,
//! --only-failed, the split at MaxArraySize; and, with no cluster, its plans and refusals, the
//! Kubernetes Indexed Job example and the worker's JOB_COMPLETION_INDEX.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::common::*;

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

fn bin_dir() -> PathBuf {
    Path::new(WORKER).parent().expect("bin dir").to_path_buf()
}

/// A launcher script run from the project root `p` with the test build's binaries.
fn launcher(p: &Project, name: &str, args: &[&str]) -> Command {
    let mut c = Command::new(script(name));
    c.current_dir(p.root())
        .args(args)
        .env("SHARDRUN_BIN", bin_dir())
        .env("SHARDRUN_SLURM_POLL", "0.3")
        .env("SHARDRUN_NO_DISPLAY", "1")
        .env_remove("SHARDRUN_MAX_ARRAY_SIZE");
    for v in [
        "SLURM_ARRAY_TASK_ID",
        "SLURM_ARRAY_JOB_ID",
        "SLURM_JOB_ID",
        "JOB_COMPLETION_INDEX",
    ] {
        c.env_remove(v);
    }
    c
}

fn slurm(p: &Project, args: &[&str]) -> Output {
    launcher(p, "run_slurm.sh", args)
        .output()
        .expect("run run_slurm.sh")
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &stderr(o)
}

/// Runs a command line, panicking with its output when it fails.
fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(out.status.success(), "{args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---- the shared cluster -------------------------------------------------------------------

/// The Slurm tests share one local cluster and take turns on it (2 CPUs are quickly full).
static TURN: Mutex<()> = Mutex::new(());
/// `slurm_local.sh up`, once per test process: Ok, or why this machine cannot host a cluster.
static CLUSTER: OnceLock<Result<(), String>> = OnceLock::new();
/// `slurm_local.sh up-accounting` (a second cluster, with slurmdbd), the same way.
static ACCOUNTING: OnceLock<Result<(), String>> = OnceLock::new();
/// The accounting cluster's configuration: its commands and launchers run with this SLURM_CONF.
const ACCOUNTING_CONF: &str = "/etc/slurm-accounting/slurm.conf";

/// Brings the local cluster up and returns this test's turn on it; `None` after a loud `SKIPPED`
/// line where that is impossible here (not root, no packages), except under `CI=true`, which
/// must run these tests and fails instead.
fn cluster(test: &str) -> Option<MutexGuard<'static, ()>> {
    bring_up(test, "up", &CLUSTER, "no local Slurm cluster here")
}

/// The same for the accounting cluster (`slurm_local.sh up-accounting`); the turn is the same
/// one: both clusters run on this machine's CPUs.
fn accounting_cluster(test: &str) -> Option<MutexGuard<'static, ()>> {
    bring_up(
        test,
        "up-accounting",
        &ACCOUNTING,
        "no local Slurm cluster with accounting here",
    )
}

fn bring_up(
    test: &str,
    command: &str,
    once: &OnceLock<Result<(), String>>,
    missing: &str,
) -> Option<MutexGuard<'static, ()>> {
    let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let up = once.get_or_init(|| {
        // SAFETY: getuid(2) cannot fail.
        if unsafe { libc::getuid() } != 0 {
            return Err("not root (slurm_local.sh installs packages and starts daemons)".into());
        }
        let t = Instant::now();
        let out = Command::new(script("slurm_local.sh"))
            .arg(command)
            .output()
            .expect("run slurm_local.sh");
        match out.status.code() {
            Some(0) => {
                eprintln!(
                    "slurm_local.sh {command}: {:.1} s",
                    t.elapsed().as_secs_f64()
                );
                Ok(())
            }
            Some(2 | 3) => Err(format!("slurm_local.sh {command}: {}", text(&out).trim())),
            _ => panic!("slurm_local.sh {command} failed:\n{}", text(&out)),
        }
    });
    match up {
        Ok(()) => Some(turn),
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{test}: needs a local Slurm cluster under CI=true, but {why}")
        }
        Err(why) => {
            // Straight to the file descriptor: the test harness captures eprintln!.
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIPPED: {test}: {missing}: {why} ***\n"
            );
            None
        }
    }
}

/// The array job ids of a run's submissions, in order.
fn submitted_jobs(p: &Project, run: &str) -> Vec<String> {
    p.read(&format!("logs/{run}/slurm.status"))
        .lines()
        .filter(|l| l.contains(" submit job="))
        .filter_map(|l| l.split(" job=").nth(1))
        .map(|r| r.split(' ').next().unwrap_or_default().to_string())
        .collect()
}

fn last_line_with<'a>(log: &'a str, event: &str) -> &'a str {
    log.lines()
        .rev()
        .find(|l| l.split(' ').nth(1) == Some(event))
        .unwrap_or("")
}

/// A generator slow enough to catch its shard mid-run, and a pure function of its item.
const SLOW: &str = "#!/bin/sh\nsleep 0.4\necho \"$1,$2,$(( $2 % 97 ))\"\n";

fn slow_config(run: &str) -> String {
    format!(
        "run: {run}\nseed: 5\nitems: {{range: {{start: 0, end: 18}}}}\n\
         generator: {{command: [./g.sh, \"{{key}}\", \"{{seed}}\"], retries: 0}}\n\
         output: {{columns: [key, seed, bucket]}}\n"
    )
}

#[test]
fn a_cancelled_task_is_resubmitted_alone_and_merges_like_a_local_run() {
    let Some(_turn) = cluster("a_cancelled_task_is_resubmitted_alone_and_merges_like_a_local_run")
    else {
        return;
    };
    let t0 = Instant::now();
    // The same configuration, run locally with 2 shards in its own root (no shared cache), meanwhile.
    let local = Project::new();
    local.script("g.sh", SLOW);
    local.write("conf/c.yaml", &slow_config("local"));
    let mut local_run = spawn(launcher(
        &local,
        "run_parallel.sh",
        &["--config", "conf/c.yaml", "--num-shards", "2", "--merge"],
    ));

    let p = Project::new();
    p.script("g.sh", SLOW);
    p.write("conf/c.yaml", &slow_config("c"));
    let mut run = spawn(launcher(
        &p,
        "run_slurm.sh",
        &["--config", "conf/c.yaml", "--num-shards", "3", "--wait"],
    ));
    for i in [0, 1] {
        wait_for(
            &format!("shard {i} under way"),
            Duration::from_secs(30),
            || {
                p.read(&format!("logs/c/shard_{i}_of_3.log"))
                    .contains(" item done=")
            },
        );
    }
    let job = submitted_jobs(&p, "c").pop().expect("a submit line");
    // Shard 1 is cancelled for good; shard 0 is requeued (as after a node failure) and resumes.
    sh(&["scancel", &format!("{job}_1")]);
    sh(&["scontrol", "requeue", &format!("{job}_0")]);
    // The monitor knows the requeued task from Slurm (its log only says it was interrupted).
    wait_for(
        "monitor to show shard 0 requeued",
        Duration::from_secs(10),
        || monitor_json(&p, "conf/c.yaml")["slurm"]["requeued"] == "0",
    );
    // While its tasks are queued, the run cannot be submitted again.
    let out = slurm(&p, &["--config", "conf/c.yaml", "--only-failed"]);
    assert_exit(&out, 2, "a second submission", p.root());
    assert!(
        stderr(&out).contains(&format!("still has job(s) {job} in the Slurm queue")),
        "{}",
        stderr(&out)
    );
    // slurm_local.sh sets cred_expire=10: the requeued task starts again about 11 s later.
    wait_for(
        "the requeued shard 0 to start again",
        Duration::from_secs(40),
        || p.read("logs/c/shard_0_of_3.log").contains(" restart=1"),
    );
    let status = wait_child(&mut run, Duration::from_secs(60));
    let out = run.wait_with_output().unwrap();
    assert_eq!(
        status.code(),
        Some(1),
        "--wait with a cancelled task:\n{}",
        text(&out)
    );
    let report = text(&out);
    assert!(
        report.contains(&format!("✓ shard 0/3 (job {job}_0) ok")),
        "{report}"
    );
    assert!(
        report.contains(&format!("✗ shard 1/3 (job {job}_1) interrupted")),
        "{report}"
    );
    assert!(report.contains("✓ shard 2/3"), "{report}");

    // The cancelled worker got Slurm's SIGTERM and committed what it had finished.
    let log1 = p.read("logs/c/shard_1_of_3.log");
    let finish1 = last_line_with(&log1, "finish");
    assert!(
        finish1.contains("status=interrupted") && finish1.ends_with(" exit=143"),
        "{log1}"
    );
    assert!(log1.contains(" signal signal=SIGTERM"), "{log1}");
    // Slurm signals every process of the task, the generators' guard too: it outlives the
    // signal, so the worker has nothing to warn about.
    let out1 = p.read(&format!("logs/c/slurm-{job}_1.out"));
    assert!(!out1.contains("stopped reading"), "{out1}");
    // The requeued one resumed: its second start found items committed by the first.
    let log0 = p.read("logs/c/shard_0_of_3.log");
    let restart = last_line_with(&log0, "start");
    assert!(
        restart.contains(" restart=1") && !restart.contains(" committed=0 "),
        "{log0}"
    );
    assert!(p
        .read(&format!("logs/c/slurm-{job}_0.out"))
        .contains("restart 1"));

    let before: Vec<String> = [0, 2]
        .iter()
        .map(|i| p.read(&format!("logs/c/shard_{i}_of_3.log")))
        .collect();
    let out = slurm(&p, &["--config", "conf/c.yaml", "--only-failed", "--wait"]);
    assert_exit(&out, 0, "--only-failed --wait", p.root());
    let report = text(&out);
    assert!(report.contains("re-submitting shard(s) 1 of 3"), "{report}");
    assert!(
        report.contains("✓ shard 1/3")
            && !report.contains("shard 0/3")
            && !report.contains("shard 2/3"),
        "{report}"
    );
    let status_file = p.read("logs/c/slurm.status");
    let resubmit = last_line_with(&status_file, "submit");
    assert!(
        resubmit.ends_with(" offset=0 array=1 shards=1"),
        "{status_file}"
    );
    let after: Vec<String> = [0, 2]
        .iter()
        .map(|i| p.read(&format!("logs/c/shard_{i}_of_3.log")))
        .collect();
    assert_eq!(before, after, "shards that succeeded must not run again");
    let start1 = last_line_with(&p.read("logs/c/shard_1_of_3.log"), "start").to_string();
    assert!(
        !start1.contains(" committed=0 "),
        "shard 1 should resume: {start1}"
    );
    let out = slurm(&p, &["--config", "conf/c.yaml", "--only-failed"]);
    assert_exit(&out, 0, "nothing left", p.root());
    assert!(text(&out).contains("nothing to do"), "{}", text(&out));

    let out = Command::new(bin_dir().join("merge"))
        .current_dir(p.root())
        .args(["--config", "conf/c.yaml"])
        .output()
        .unwrap();
    assert_exit(&out, 0, "merge", p.root());
    let status = wait_child(&mut local_run, Duration::from_secs(60));
    let out = local_run.wait_with_output().unwrap();
    assert_eq!(status.code(), Some(0), "local run:\n{}", text(&out));
    let slurm_csv = std::fs::read(p.path("data/c/combined.csv")).unwrap();
    let local_csv = std::fs::read(local.path("data/local/combined.csv")).unwrap();
    assert_eq!(String::from_utf8_lossy(&slurm_csv).lines().count(), 19);
    assert!(
        slurm_csv == local_csv,
        "Slurm and local runs differ:\n--- slurm\n{}\n--- local\n{}",
        String::from_utf8_lossy(&slurm_csv),
        String::from_utf8_lossy(&local_csv)
    );
    eprintln!("slurm end to end: {:.1} s", t0.elapsed().as_secs_f64());
}

#[test]
fn shards_beyond_max_array_size_run_as_several_offset_arrays() {
    let Some(_turn) = cluster("shards_beyond_max_array_size_run_as_several_offset_arrays") else {
        return;
    };
    let p = Project::new();
    p.write(
        "conf/m.yaml",
        "run: m\nitems: {range: {start: 0, end: 10}}\ngenerator: {builtin: echo, params: {rows: 2}}\n",
    );
    let out = launcher(
        &p,
        "run_slurm.sh",
        &["--config", "conf/m.yaml", "--num-shards", "5", "--wait"],
    )
    .env("SHARDRUN_MAX_ARRAY_SIZE", "2")
    .output()
    .unwrap();
    assert_exit(&out, 0, "5 shards, MaxArraySize 2", p.root());
    let status = p.read("logs/m/slurm.status");
    let submits: Vec<&str> = status
        .lines()
        .filter(|l| l.contains(" submit "))
        .map(|l| l.split_once(" offset=").map(|(_, r)| r).unwrap_or(""))
        .collect();
    assert_eq!(
        submits,
        [
            "0 array=0-1 shards=0-1",
            "2 array=0-1 shards=2-3",
            "4 array=0 shards=4"
        ],
        "{status}"
    );
    let jobs = submitted_jobs(&p, "m");
    for i in 0..5 {
        let log = p.read(&format!("logs/m/shard_{i}_of_5.log"));
        assert!(
            last_line_with(&log, "finish").contains("status=ok"),
            "shard {i}: {log}"
        );
        let job = &jobs[i / 2];
        let out_file = p.read(&format!("logs/m/slurm-{job}_{}.out", i % 2));
        assert!(
            out_file.contains(&format!("shard {i} of 5")),
            "shard {i}: {out_file}"
        );
    }
    assert!(text(&out).contains("5 shards: 5 ok"), "{}", text(&out));

    // A sparse set across the arrays (as if shards 1 and 4 had failed): one submission per
    // array, each with only its own tasks.
    for i in [1, 4] {
        let log = p.path(&format!("logs/m/shard_{i}_of_5.log"));
        let mut f = std::fs::OpenOptions::new().append(true).open(log).unwrap();
        writeln!(
            f,
            "2026-01-01T00:00:00.000Z finish status=failed done=0 exit=1"
        )
        .unwrap();
    }
    let out = launcher(
        &p,
        "run_slurm.sh",
        &["--config", "conf/m.yaml", "--only-failed", "--wait"],
    )
    .env("SHARDRUN_MAX_ARRAY_SIZE", "2")
    .output()
    .unwrap();
    assert_exit(&out, 0, "sparse --only-failed across arrays", p.root());
    let status = p.read("logs/m/slurm.status");
    let submits: Vec<&str> = status
        .lines()
        .filter(|l| l.contains(" submit "))
        .skip(3)
        .map(|l| l.split_once(" offset=").map(|(_, r)| r).unwrap_or(""))
        .collect();
    assert_eq!(
        submits,
        ["0 array=1 shards=1", "4 array=0 shards=4"],
        "{status}"
    );
    assert!(text(&out).contains("2 shards: 2 ok"), "{}", text(&out));
    let out = slurm(&p, &["--config", "conf/m.yaml", "--status"]);
    assert!(
        text(&out)
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["ok", "5", "0-4"]),
        "{}",
        text(&out)
    );
    let out = Command::new(bin_dir().join("merge"))
        .current_dir(p.root())
        .args(["--config", "conf/m.yaml"])
        .output()
        .unwrap();
    assert_exit(&out, 0, "merge", p.root());
    assert_eq!(p.read("data/m/combined.csv").lines().count(), 21);
}

// ---- without a cluster ---------------------------------------------------------------------

const ECHO5: &str =
    "run: d\nitems: {list: [a, b, c, d, e, f, g, h, i, j]}\ngenerator: {builtin: echo}\n";

#[test]
fn dry_run_prints_the_plan_and_the_split_sbatch_commands_and_writes_nothing() {
    let p = Project::new();
    p.write("conf/d.yaml", ECHO5);
    let out = launcher(
        &p,
        "run_slurm.sh",
        &[
            "--config",
            "conf/d.yaml",
            "--num-shards",
            "5",
            "--dry-run",
            "--jobs",
            "3",
            "--",
            "--array=%3",
            "--time=10",
        ],
    )
    .env("SHARDRUN_MAX_ARRAY_SIZE", "2")
    .output()
    .unwrap();
    assert_exit(&out, 0, "dry run", p.root());
    let t = text(&out);
    assert!(
        t.contains("shard 0/5 of run d (process-0.csv): 2 items, a … b"),
        "{t}"
    );
    assert!(
        t.contains("shard 4/5 of run d (process-4.csv): 2 items, i … j"),
        "{t}"
    );
    let sbatch: Vec<&str> = t.lines().filter(|l| l.starts_with("sbatch ")).collect();
    assert_eq!(sbatch.len(), 3, "{t}");
    for (line, (array, offset)) in sbatch.iter().zip([("0-1%3", 0), ("0-1%3", 2), ("0%3", 4)]) {
        assert!(line.contains(&format!(" --array={array} ")), "{line}");
        assert!(line.contains(" --cpus-per-task=3 --time=10 "), "{line}");
        assert!(
            line.contains(" --requeue ") && line.contains("--output=logs/d/slurm-%A_%a.out"),
            "{line}"
        );
        assert!(
            line.contains(&format!("logs/d/slurm_task.sh {offset}   #")),
            "{line}"
        );
    }
    assert!(
        !p.path("logs").exists() && !p.path("data").exists(),
        "{}",
        p.listing()
    );
}

#[test]
fn only_failed_plans_from_the_shard_logs_and_leaves_the_configuration_to_the_workers() {
    let p = Project::new();
    let cfg = p.write("conf/d.yaml", ECHO5);
    let sum = sh(&["sha256sum", cfg.to_str().unwrap()]);
    let sum = sum.split(' ').next().unwrap();
    p.write(
        "logs/d/slurm.status",
        &format!("2026-01-01T00:00:00.000Z launch run=d num_shards=5 shards=0,1,2,3,4 config=conf/d.yaml config_sum={sum}\n"),
    );
    let finish = |status: &str| {
        format!("2026-01-01T00:00:01.000Z finish status={status} done=1 total=2 failed=0 cached=0 generated=1 rows=1 elapsed_s=1 exit=0\n")
    };
    p.write("logs/d/shard_0_of_5.log", &finish("ok"));
    p.write(
        "logs/d/shard_1_of_5.log",
        &(finish("ok") + &finish("interrupted")),
    );
    p.write(
        "logs/d/shard_2_of_5.log",
        &(finish("failed") + &finish("ok")),
    );
    p.write("logs/d/shard_3_of_5.log", &finish("ok"));
    // shard 4 never wrote a log.
    let dry = |p: &Project| {
        launcher(
            p,
            "run_slurm.sh",
            &["--config", "conf/d.yaml", "--only-failed", "--dry-run"],
        )
        .env("SHARDRUN_MAX_ARRAY_SIZE", "2")
        .output()
        .unwrap()
    };
    let out = dry(&p);
    assert_exit(&out, 0, "--only-failed --dry-run", p.root());
    let t = text(&out);
    assert!(t.contains("shard 1/5") && t.contains("shard 4/5"), "{t}");
    assert!(
        !t.contains("shard 0/5") && !t.contains("shard 2/5") && !t.contains("shard 3/5"),
        "{t}"
    );
    let sbatch: Vec<&str> = t.lines().filter(|l| l.starts_with("sbatch ")).collect();
    assert_eq!(sbatch.len(), 2, "{t}");
    assert!(
        sbatch[0].contains(" --array=1 ") && sbatch[0].ends_with("slurm_task.sh 0   # shards 1"),
        "{t}"
    );
    assert!(
        sbatch[1].contains(" --array=0 ") && sbatch[1].ends_with("slurm_task.sh 4   # shards 4"),
        "{t}"
    );

    let out = launcher(
        &p,
        "run_slurm.sh",
        &[
            "--config",
            "conf/d.yaml",
            "--only-failed",
            "--num-shards",
            "4",
            "--dry-run",
        ],
    )
    .output()
    .unwrap();
    assert_exit(&out, 2, "--only-failed with another shard count", p.root());
    assert!(
        stderr(&out).contains("launched with 5 shards"),
        "{}",
        stderr(&out)
    );

    p.write("conf/d.yaml", &ECHO5.replace("j]", "j, k]"));
    let out = dry(&p);
    // The shards' outputs are the workers' to judge: here there are none (only logs), so a
    // changed configuration mixes nothing and is planned (a manifest of another identity is
    // refused by the preflight, tests/launcher.rs).
    assert_exit(&out, 0, "changed configuration without outputs", p.root());
}

#[test]
fn bad_run_slurm_arguments_exit_2() {
    let p = Project::new();
    p.write("conf/d.yaml", ECHO5);
    for args in [
        &["--config", "conf/d.yaml", "--num-shards", "0", "--dry-run"][..],
        &["--config", "conf/d.yaml", "--bogus"],
        &["--config", "missing.yaml"],
        &["--config", "conf/d.yaml", "--only-failed", "--force"],
        &[
            "--config",
            "conf/d.yaml",
            "--num-shards",
            "2",
            "--dry-run",
            "--",
            "--array=0-3",
        ],
        &[
            "--config",
            "conf/d.yaml",
            "--num-shards",
            "2",
            "--dry-run",
            "--throttle",
            "x",
        ],
        // No shard count: neither --num-shards nor `shards:` in the configuration.
        &["--config", "conf/d.yaml", "--dry-run"],
        &["--config", "conf/d.yaml", "--status", "--only-failed"],
        &["--config", "conf/d.yaml", "--cancel", "--", "--time=5"],
        &["--config", "conf/d.yaml", "--status", "--cancel"],
        &[
            "--config",
            "conf/d.yaml",
            "--num-shards",
            "2",
            "--shards-per-task",
            "0",
            "--dry-run",
        ],
        // --status of a run never submitted to Slurm.
        &["--config", "conf/d.yaml", "--status"],
        // Options run_slurm.sh sets itself: the jobs are found by name and work directory.
        &[
            "--config",
            "conf/d.yaml",
            "--num-shards",
            "2",
            "--dry-run",
            "--",
            "-J",
            "x",
        ],
        &[
            "--config",
            "conf/d.yaml",
            "--num-shards",
            "2",
            "--dry-run",
            "--",
            "--chdir=/tmp",
        ],
        &[
            "--config",
            "conf/d.yaml",
            "--num-shards",
            "2",
            "--dry-run",
            "--",
            "-D",
            "/tmp",
        ],
        &[
            "--config",
            "conf/d.yaml",
            "--num-shards",
            "2",
            "--dry-run",
            "--",
            "--kill-on-invalid-dep=no",
        ],
        // --notify with neither --wait nor --merge: nothing would see the run end.
        &[
            "--config",
            "conf/d.yaml",
            "--num-shards",
            "2",
            "--notify",
            "true",
            ";",
        ],
    ] {
        let out = slurm(&p, args);
        assert_exit(&out, 2, &format!("{args:?}"), p.root());
        assert!(stderr(&out).contains("error:"), "{}", stderr(&out));
    }
    let out = slurm(&p, &["--help"]);
    assert_exit(&out, 0, "--help", p.root());
    assert!(String::from_utf8_lossy(&out.stdout).contains("MaxArraySize"));
}

// ---- Kubernetes ----------------------------------------------------------------------------

fn k8s_documents() -> Vec<serde_yaml_ng::Value> {
    use serde::Deserialize as _;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/k8s-indexed-job.yaml");
    let text = std::fs::read_to_string(&path).expect("deploy/k8s-indexed-job.yaml");
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde_yaml_ng::Value::deserialize(d).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

#[test]
fn the_kubernetes_example_is_an_indexed_job_with_one_completion_per_shard() {
    let docs = k8s_documents();
    let of_kind = |k: &str| {
        docs.iter()
            .find(|d| d["kind"].as_str() == Some(k))
            .unwrap_or_else(|| panic!("no {k} in the manifest"))
    };
    let job = of_kind("Job");
    let spec = &job["spec"];
    assert_eq!(spec["completionMode"].as_str(), Some("Indexed"));
    let completions = spec["completions"].as_u64().expect("completions");
    assert!(spec["parallelism"].as_u64().is_some());
    let container = &spec["template"]["spec"]["containers"][0];
    assert_eq!(container["command"][0].as_str(), Some("shard-worker"));
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string args"))
        .collect();
    let after = |flag: &str| {
        args.iter()
            .position(|a| *a == flag)
            .map(|i| args[i + 1])
            .unwrap_or_else(|| panic!("no {flag} in {args:?}"))
    };
    assert_eq!(after("--num-shards"), completions.to_string());
    assert!(
        !args.contains(&"--shard-index"),
        "the index comes from JOB_COMPLETION_INDEX"
    );
    let mounts: Vec<&str> = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert!(mounts.contains(&after("--root")), "{mounts:?}");
    assert!(
        mounts.iter().any(|m| after("--config").starts_with(m)),
        "{mounts:?}"
    );
    assert_eq!(
        of_kind("PersistentVolumeClaim")["spec"]["accessModes"][0].as_str(),
        Some("ReadWriteMany")
    );

    // Its configuration is valid: the worker plans pod 1's shard from JOB_COMPLETION_INDEX.
    let p = Project::new();
    let conf = of_kind("ConfigMap")["data"]
        .as_mapping()
        .unwrap()
        .iter()
        .next()
        .map(|(_, v)| v.as_str().unwrap().to_string())
        .unwrap();
    p.write("icu.yaml", &conf);
    let n = completions.to_string();
    let out = p
        .worker("icu.yaml", &["--num-shards", &n, "--dry-run"])
        .env("JOB_COMPLETION_INDEX", "1")
        .output()
        .unwrap();
    assert_exit(&out, 0, "dry run of the manifest's configuration", p.root());
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(plan.contains(&format!("shard 1/{n} of run icu")), "{plan}");
}

#[test]
fn the_worker_takes_its_shard_from_job_completion_index() {
    let p = Project::new();
    p.write(
        "k.yaml",
        "run: k\nitems: {range: {start: 0, end: 6}}\ngenerator: {builtin: echo}\n",
    );
    let out = p
        .worker("k.yaml", &["--num-shards", "2"])
        .env("JOB_COMPLETION_INDEX", "1")
        .output()
        .unwrap();
    assert_exit(&out, 0, "JOB_COMPLETION_INDEX=1 --num-shards 2", p.root());
    let keys: Vec<String> = p
        .read("data/k/process-1.csv")
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().to_string())
        .collect();
    assert_eq!(keys, ["3", "4", "5"]);
    let log = p.read("logs/k/shard_1_of_2.log");
    assert!(
        last_line_with(&log, "finish").contains("status=ok"),
        "{log}"
    );
    assert!(
        !p.path("logs/k/shard_0_of_2.log").exists(),
        "{}",
        p.listing()
    );
}

/// Regression: run_slurm.sh's line for a failed shard said only how many items failed; it now
/// quotes the worker's reason in full and names the shard's log, and its hint repeats --config.
#[test]
fn a_failed_slurm_shard_is_reported_with_its_full_reason_and_log() {
    let Some(_turn) = cluster("a_failed_slurm_shard_is_reported_with_its_full_reason_and_log")
    else {
        return;
    };
    let p = Project::new();
    p.script(
        "g.sh",
        "#!/bin/sh\n[ \"$1\" = 3 ] && { echo 'no module named torch_geometric_temporal_extensions' >&2; exit 1; }\necho \"$1\"\n",
    );
    p.write(
        "conf/my f.yaml",
        "run: f\nitems: {range: {start: 0, end: 4}}\ngenerator: {command: [./g.sh, \"{key}\"], retries: 0}\noutput: {columns: [k]}\n",
    );
    let out = slurm(
        &p,
        &["--config", "conf/my f.yaml", "--num-shards", "2", "--wait"],
    );
    assert_exit(&out, 1, "--wait with a failed shard", p.root());
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = report
        .lines()
        .find(|l| l.starts_with("✗ shard 1/2 (job "))
        .unwrap_or_else(|| panic!("{}", text(&out)));
    assert!(
        line.contains(
            ") failed: exit 1: 1 of 2 items failed; first: key 3: exit code 1 (its last stderr \
             line: no module named torch_geometric_temporal_extensions) (Slurm: "
        ) && line.contains("see logs/f/shard_1_of_2.log, logs/f/slurm-"),
        "{report}"
    );
    assert!(
        report.contains("--config 'conf/my f.yaml' --only-failed"),
        "{report}"
    );
}

// ---- options remembered, a finished run, the dry run's array ------------------------------

/// `scontrol show job` of a job: its `Key=Value` fields.
fn job_fields(job: &str) -> String {
    sh(&["scontrol", "-o", "show", "job", job])
}

/// A generator that fails on key 3 while the file `fail` exists.
const FLAKY: &str =
    "#!/bin/sh\n[ -e fail ] && [ \"$1\" = 3 ] && { echo 'flaky' >&2; exit 1; }\necho \"$1\"\n";

fn flaky_project(run: &str) -> Project {
    let p = Project::new();
    p.script("g.sh", FLAKY);
    p.write("fail", "");
    p.write(
        "conf/f.yaml",
        &format!(
            "run: {run}\nitems: {{range: {{start: 0, end: 4}}}}\n\
             generator: {{command: [./g.sh, \"{{key}}\"], retries: 0}}\noutput: {{columns: [k]}}\n"
        ),
    );
    p
}

#[test]
fn sbatch_options_are_remembered_until_a_new_double_dash_and_a_finished_run_submits_nothing() {
    let Some(_turn) = cluster("sbatch_options_are_remembered") else {
        return;
    };
    let p = flaky_project("o");
    let out = slurm(
        &p,
        &[
            "--config",
            "conf/f.yaml",
            "--num-shards",
            "2",
            "--wait",
            "--",
            "--time=5",
            "--comment=first options",
        ],
    );
    assert_exit(&out, 1, "a failed shard", p.root());
    let first = submitted_jobs(&p, "o").pop().unwrap();
    let f = job_fields(&first);
    assert!(
        f.contains("TimeLimit=00:05:00") && f.contains("Comment=first options"),
        "{f}"
    );
    // The printed hint is the plain --only-failed: the options come with the run.
    assert!(
        text(&out).contains("--config conf/f.yaml --only-failed"),
        "{}",
        text(&out)
    );

    std::fs::remove_file(p.path("fail")).unwrap();
    let out = slurm(
        &p,
        &["--config", "conf/f.yaml", "--only-failed", "--dry-run"],
    );
    assert_exit(&out, 0, "--only-failed --dry-run", p.root());
    let t = text(&out);
    assert!(
        t.contains("options for sbatch (remembered from the launch of ")
            && t.contains("a new -- replaces them): --time=5 '--comment=first options'"),
        "{t}"
    );
    assert!(
        t.contains(" --time=5 '--comment=first options' logs/o/slurm_task.sh 0   # shards 1"),
        "{t}"
    );

    let out = slurm(&p, &["--config", "conf/f.yaml", "--only-failed", "--wait"]);
    assert_exit(&out, 0, "--only-failed with remembered options", p.root());
    let second = submitted_jobs(&p, "o").pop().unwrap();
    assert_ne!(first, second);
    let f = job_fields(&second);
    assert!(
        f.contains("TimeLimit=00:05:00") && f.contains("Comment=first options"),
        "{f}"
    );
    assert!(
        text(&out).contains("1 shard: 1 ok, 0 not ok; 2 items, 2 rows"),
        "{}",
        text(&out)
    );

    // The run is finished: the plain command submits nothing, --force would.
    let out = slurm(&p, &["--config", "conf/f.yaml", "--num-shards", "2"]);
    assert_exit(&out, 0, "the plain command after a finished run", p.root());
    assert!(
        text(&out)
            .contains("nothing to do: all 2 shards of run 'o' succeeded; --force starts it over"),
        "{}",
        text(&out)
    );
    assert_eq!(
        submitted_jobs(&p, "o").len(),
        2,
        "{}",
        p.read("logs/o/slurm.status")
    );

    // A new -- replaces them (an empty one clears them), and is remembered in turn.
    let out = slurm(
        &p,
        &[
            "--config",
            "conf/f.yaml",
            "--num-shards",
            "2",
            "--force",
            "--wait",
            "--",
            "--time=7",
        ],
    );
    assert_exit(&out, 0, "--force with new options", p.root());
    let third = submitted_jobs(&p, "o").pop().unwrap();
    let f = job_fields(&third);
    assert!(
        f.contains("TimeLimit=00:07:00") && !f.contains("first options"),
        "{f}"
    );
    let out = slurm(
        &p,
        &[
            "--config",
            "conf/f.yaml",
            "--force",
            "--num-shards",
            "2",
            "--dry-run",
        ],
    );
    assert!(
        text(&out).contains("a new -- replaces them): --time=7\n"),
        "{}",
        text(&out)
    );
    let out = slurm(
        &p,
        &[
            "--config",
            "conf/f.yaml",
            "--force",
            "--num-shards",
            "2",
            "--dry-run",
            "--",
        ],
    );
    assert!(!text(&out).contains("--time=7"), "{}", text(&out));
}

#[test]
fn dry_run_prints_a_sparse_array_as_compressed_ranges_without_backslashes() {
    let p = Project::new();
    p.write("conf/d.yaml", ECHO5);
    p.write(
        "logs/d/slurm.status",
        "2026-01-01T00:00:00.000Z launch run=d num_shards=10 shards=0-9 config=conf/d.yaml\n",
    );
    for i in [1, 6, 8, 9] {
        p.write(
            &format!("logs/d/shard_{i}_of_10.log"),
            "2026-01-01T00:00:01.000Z finish status=ok done=1 total=1 failed=0 cached=0 generated=1 rows=1 elapsed_s=1 exit=0\n",
        );
    }
    let out = slurm(
        &p,
        &["--config", "conf/d.yaml", "--only-failed", "--dry-run"],
    );
    assert_exit(&out, 0, "--only-failed --dry-run", p.root());
    let t = text(&out);
    let line = t
        .lines()
        .find(|l| l.starts_with("sbatch "))
        .unwrap_or_else(|| panic!("{t}"));
    assert!(
        line.contains(" --array=0,2-5,7 ") && line.ends_with("# shards 0,2-5,7"),
        "{t}"
    );
    assert!(!line.contains('\\'), "{line}");
}

// ---- --status, --cancel, --wait on an existing submission, --merge -------------------------

/// Jobs of `ids` still in the queue (any task).
fn queued(ids: &[String]) -> String {
    sh(&["squeue", "-h", "-j", &ids.join(","), "-o", "%i %T"])
}

#[test]
fn a_split_run_is_watched_reattached_and_cancelled_from_its_records() {
    let Some(_turn) = cluster("a_split_run_is_watched_reattached_and_cancelled_from_its_records")
    else {
        return;
    };
    let p = Project::new();
    p.script("g.sh", SLOW);
    // 20 items of 0.4 s per shard: the first two are still running when --cancel comes.
    p.write(
        "conf/c.yaml",
        &slow_config("a").replace("end: 18", "end: 100"),
    );
    // Three arrays (MaxArraySize 2); the user's own output file name.
    let out = launcher(
        &p,
        "run_slurm.sh",
        &[
            "--config",
            "conf/c.yaml",
            "--num-shards",
            "5",
            "--",
            "--output=logs/a/out-%x-%A.%a.txt",
        ],
    )
    .env("SHARDRUN_MAX_ARRAY_SIZE", "2")
    .output()
    .unwrap();
    assert_exit(&out, 0, "submission", p.root());
    assert!(
        text(&out).contains("--config conf/c.yaml --status"),
        "{}",
        text(&out)
    );
    let jobs = submitted_jobs(&p, "a");
    assert_eq!(jobs.len(), 3, "{}", p.read("logs/a/slurm.status"));
    wait_for("shard 0 under way", Duration::from_secs(30), || {
        p.read("logs/a/shard_0_of_5.log").contains(" item done=")
    });

    let out = slurm(&p, &["--config", "conf/c.yaml", "--status"]);
    assert_exit(&out, 0, "--status", p.root());
    let t = text(&out);
    assert!(
        t.contains(&format!("job(s) {} (name shardrun-a)", jobs.join(" ")))
            && t.contains("job states from scontrol"),
        "{t}"
    );
    let row = |t: &str, state: &str| {
        t.lines()
            .find(|l| l.trim_start().starts_with(state))
            .map(|l| l.split_whitespace().last().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    assert_eq!(row(&t, "running"), "0-1", "{t}");
    assert_eq!(row(&t, "queued"), "2-4", "{t}");

    // --wait re-attaches to the submission, and reports what --cancel leaves.
    let mut waiting = spawn(launcher(
        &p,
        "run_slurm.sh",
        &["--config", "conf/c.yaml", "--wait"],
    ));
    wait_for("--wait to re-attach", Duration::from_secs(10), || {
        p.read("logs/a/slurm.status").lines().count() >= 4
            && std::fs::read_dir(p.path("logs/a")).is_ok()
    });
    std::thread::sleep(Duration::from_millis(500));
    let out = slurm(&p, &["--config", "conf/c.yaml", "--cancel"]);
    assert_exit(&out, 0, "--cancel", p.root());
    assert!(
        text(&out).contains("nothing of it is queued"),
        "{}",
        text(&out)
    );
    assert_eq!(queued(&jobs), "", "after --cancel");
    let status = wait_child(&mut waiting, Duration::from_secs(30));
    let out = waiting.wait_with_output().unwrap();
    let report = text(&out);
    assert_eq!(status.code(), Some(1), "{report}");
    assert!(report.contains("waiting for its submission of"), "{report}");
    // Slurm signals the generators too; a generator dead of that SIGTERM is no item failure.
    for i in [0, 1] {
        assert!(
            report.contains(&format!("✗ shard {i}/5 (job {}_{i}) interrupted", jobs[0])),
            "{report}"
        );
    }
    // A task that never started has no output file, and the report says so by its real name.
    assert!(
        report.contains(&format!(
            "✗ shard 4/5 (job {}_0) did not finish (Slurm: CANCELLED, exit 0:0) (no Slurm output file: logs/a/out-shardrun-a-{}.0.txt was never written",
            jobs[2], jobs[2]
        )),
        "{report}"
    );
    assert!(p
        .path(&format!("logs/a/out-shardrun-a-{}.0.txt", jobs[0]))
        .exists());

    let out = slurm(&p, &["--config", "conf/c.yaml", "--status"]);
    let t = text(&out);
    assert_eq!(row(&t, "cancelled, never started"), "2-4", "{t}");
    assert!(!t.contains(" ok ") && !t.contains("queued"), "{t}");
    let out = slurm(&p, &["--config", "conf/c.yaml", "--cancel"]);
    assert_exit(&out, 0, "--cancel with nothing queued", p.root());
    assert!(text(&out).contains("nothing to cancel"), "{}", text(&out));
}

#[test]
fn a_merge_job_writes_the_dataset_once_every_shard_succeeded() {
    let Some(_turn) = cluster("a_merge_job_writes_the_dataset_once_every_shard_succeeded") else {
        return;
    };
    let p = flaky_project("mj");
    let out = slurm(
        &p,
        &[
            "--config",
            "conf/f.yaml",
            "--num-shards",
            "2",
            "--merge",
            "--wait",
        ],
    );
    assert_exit(&out, 1, "--merge with a failed shard", p.root());
    let t = text(&out);
    let merge_job = last_line_with(&p.read("logs/mj/slurm.status"), "submit")
        .split(" job=")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap()
        .to_string();
    assert!(
        t.contains(&format!("merge job {merge_job} did not run")),
        "{t}"
    );
    assert!(
        t.contains("--config conf/f.yaml --only-failed --merge"),
        "{t}"
    );
    assert_eq!(
        queued(&[merge_job]),
        "",
        "the merge job must not stay pending"
    );
    assert!(!p.path("data/mj/combined.csv").exists());
    // merge's own refusal of the run points at the same re-submission, merge job included.
    let out = crate::merge::merge(&p, &["--run", "mj"]);
    assert_exit(&out, 1, "merge of an incomplete run", p.root());
    assert!(
        stderr(&out).contains("run_slurm.sh --config conf/f.yaml --only-failed --merge"),
        "{}",
        stderr(&out)
    );

    // Submitted without --wait: the dataset appears with nothing running here.
    std::fs::remove_file(p.path("fail")).unwrap();
    let out = slurm(&p, &["--config", "conf/f.yaml", "--only-failed", "--merge"]);
    assert_exit(&out, 0, "--only-failed --merge", p.root());
    assert!(
        text(&out).contains("the merge job writes data/mj/"),
        "{}",
        text(&out)
    );
    wait_for("combined.csv", Duration::from_secs(60), || {
        p.path("data/mj/combined.csv").exists() && queued(&submitted_jobs(&p, "mj")).is_empty()
    });
    assert_eq!(p.read("data/mj/combined.csv"), "k\n0\n1\n2\n3\n");
    let out = slurm(&p, &["--config", "conf/f.yaml", "--status"]);
    let t = text(&out);
    let merge_job = submitted_jobs(&p, "mj").pop().unwrap();
    assert!(
        t.contains(&format!(
            "merge job {merge_job}: COMPLETED, exit 0:0 (output logs/mj/slurm-merge-{merge_job}.out)"
        )),
        "{t}"
    );
}

/// The notices the recorder `note.sh` got: each is its stdin, its SHARDRUN_STATE and its
/// arguments, then a `----` line.
const NOTE: &str = "#!/bin/sh\n{ cat; echo; echo \"state=$SHARDRUN_STATE\"; \
                    for a in \"$@\"; do echo \"arg=$a\"; done; echo ----; } >> notices.txt\n";

/// Submitted with --merge --notify and no --wait: the merge job sends one notice for the whole
/// run, also when a shard failed (then Slurm would cancel an afterok merge job, and nobody would
/// hear of the run), and the command's words reach it as typed, never evaluated by a shell.
#[test]
fn a_merge_job_sends_one_notice_for_the_run_without_wait() {
    let Some(_turn) = cluster("a_merge_job_sends_one_notice_for_the_run_without_wait") else {
        return;
    };
    let p = flaky_project("mn");
    p.script("note.sh", NOTE);
    let notify = ["--notify", "./note.sh", "a b", "$HOME", "it's;", ";"];
    let notices = |n: usize| {
        wait_for("the notice", Duration::from_secs(60), || {
            p.path("notices.txt").exists()
                && p.read("notices.txt").matches("\n----\n").count() >= n
                && queued(&submitted_jobs(&p, "mn")).is_empty()
        });
        p.read("notices.txt")
    };
    let mut args = vec!["--config", "conf/f.yaml", "--num-shards", "2", "--merge"];
    args.extend(notify);
    let out = slurm(&p, &args);
    assert_exit(&out, 0, "--merge --notify", p.root());
    assert!(
        text(&out).contains("sends the --notify notice"),
        "{}",
        text(&out)
    );
    let status = p.read("logs/mn/slurm.status");
    let line = last_line_with(&status, "submit");
    assert!(
        line.contains(" merge=1 ") && line.ends_with(" notify=1"),
        "{line}"
    );
    let t = notices(1);
    assert_eq!(t.matches("\n----\n").count(), 1, "one notice: {t}");
    assert!(
        t.contains("state=failed\n") && t.contains("\"state\": \"failed\""),
        "{t}"
    );
    assert!(t.contains("arg=a b\narg=$HOME\narg=it's;\n----"), "{t}");
    assert!(!p.path("data/mn/combined.csv").exists());

    std::fs::remove_file(p.path("fail")).unwrap();
    std::fs::remove_file(p.path("notices.txt")).unwrap();
    let mut args = vec!["--config", "conf/f.yaml", "--only-failed", "--merge"];
    args.extend(notify);
    let out = slurm(&p, &args);
    assert_exit(&out, 0, "--only-failed --merge --notify", p.root());
    let t = notices(1);
    assert_eq!(t.matches("\n----\n").count(), 1, "one notice: {t}");
    assert!(
        t.contains("state=done\n") && t.contains("\"run\": \"mn\""),
        "{t}"
    );
    assert_eq!(p.read("data/mn/combined.csv"), "k\n0\n1\n2\n3\n");
    let merge_job = submitted_jobs(&p, "mn").pop().unwrap();
    let out = slurm(&p, &["--config", "conf/f.yaml", "--status"]);
    assert!(
        text(&out).contains(&format!("merge job {merge_job}: COMPLETED, exit 0:0")),
        "{}",
        text(&out)
    );
}

/// 10,000 shards, a sparse set of them failed across several arrays: --only-failed plans one
/// submission per array with compressed ranges, reading the 10,000 logs at once.
#[test]
fn only_failed_of_ten_thousand_shards_is_split_into_compressed_ranges() {
    let p = Project::new();
    p.write(
        "conf/s.yaml",
        "run: s\nitems: {range: {start: 0, end: 20000}}\ngenerator: {builtin: echo}\n",
    );
    p.write(
        "logs/s/slurm.status",
        "2026-01-01T00:00:00.000Z launch run=s num_shards=10000 shards=0-9999 config=conf/s.yaml\n",
    );
    let failed = [3, 4, 5, 6, 7, 19, 200, 1500, 1501, 9999];
    for i in (0..10_000).filter(|i| !failed.contains(i)) {
        let status = if i == 260 { "failed" } else { "ok" };
        std::fs::write(
            p.path(&format!("logs/s/shard_{i}_of_10000.log")),
            format!("2026-01-01T00:00:01.000Z finish status={status} done=2 exit=0\n"),
        )
        .unwrap();
    }
    let out = slurm(
        &p,
        &["--config", "conf/s.yaml", "--only-failed", "--dry-run"],
    );
    assert_exit(
        &out,
        0,
        "--only-failed --dry-run of 10,000 shards",
        p.root(),
    );
    let t = text(&out);
    let sbatch: Vec<&str> = t.lines().filter(|l| l.starts_with("sbatch ")).collect();
    assert_eq!(sbatch.len(), 3, "{t}");
    for (line, (array, offset, shards)) in sbatch.iter().zip([
        ("3-7,19,200,260", 0, "3-7,19,200,260"),
        ("499-500", 1001, "1500-1501"),
        ("990", 9009, "9999"),
    ]) {
        assert!(
            line.contains(&format!(" --array={array} "))
                && line.ends_with(&format!("slurm_task.sh {offset}   # shards {shards}")),
            "{t}"
        );
    }
}

// ---- several shards per task -------------------------------------------------------------

#[test]
fn four_shards_per_task_give_a_local_runs_bytes_and_only_failed_reruns_only_failed_shards() {
    let Some(_turn) = cluster("four_shards_per_task") else {
        return;
    };
    let gen = "#!/bin/sh\n[ -e fail ] && { [ \"$1\" = 3 ] || [ \"$1\" = 29 ]; } && { echo flaky >&2; exit 1; }\necho \"$1,$(( $1 * 7 % 13 ))\"\n";
    let conf = |run: &str| {
        format!(
            "run: {run}\nitems: {{range: {{start: 0, end: 32}}}}\n\
             generator: {{command: [./g.sh, \"{{key}}\"], retries: 0}}\noutput: {{columns: [k, v]}}\n"
        )
    };
    let local = Project::new();
    local.script("g.sh", gen);
    local.write("conf/c.yaml", &conf("l"));
    let out = launcher(
        &local,
        "run_parallel.sh",
        &["--config", "conf/c.yaml", "--num-shards", "16", "--merge"],
    )
    .output()
    .unwrap();
    assert_exit(&out, 0, "local run", local.root());

    let p = Project::new();
    p.script("g.sh", gen);
    p.write("fail", "");
    p.write("conf/c.yaml", &conf("k"));
    let out = slurm(
        &p,
        &[
            "--config",
            "conf/c.yaml",
            "--num-shards",
            "16",
            "--shards-per-task",
            "4",
            "--wait",
        ],
    );
    assert_exit(&out, 1, "two failed shards", p.root());
    let t = text(&out);
    let job = submitted_jobs(&p, "k").pop().unwrap();
    assert!(
        t.contains(&format!("✗ shard 1/16 (job {job}_0) failed"))
            && t.contains(&format!("✗ shard 14/16 (job {job}_3) failed"))
            && t.contains(&format!("✓ shard 15/16 (job {job}_3) ok"))
            && t.contains("16 shards: 14 ok, 2 not ok"),
        "{t}"
    );
    assert!(last_line_with(&p.read("logs/k/slurm.status"), "submit")
        .ends_with(" array=0-3 shards=0-15"));

    std::fs::remove_file(p.path("fail")).unwrap();
    let starts = |i: u32| {
        p.read(&format!("logs/k/shard_{i}_of_16.log"))
            .lines()
            .filter(|l| l.split(' ').nth(1) == Some("start"))
            .count()
    };
    let before: Vec<usize> = (0..16).map(starts).collect();
    let out = slurm(
        &p,
        &[
            "--config",
            "conf/c.yaml",
            "--only-failed",
            "--merge",
            "--wait",
        ],
    );
    assert_exit(&out, 0, "--only-failed of 2 shards in 2 tasks", p.root());
    assert!(
        last_line_with(&p.read("logs/k/slurm.status"), "submit").contains(" merge=1 "),
        "{}",
        p.read("logs/k/slurm.status")
    );
    let submit = p
        .read("logs/k/slurm.status")
        .lines()
        .rfind(|l| l.contains(" submit ") && l.contains(" array="))
        .unwrap()
        .to_string();
    assert!(submit.ends_with(" array=0,3 shards=1,14"), "{submit}");
    for i in 0..16 {
        let want = before[i as usize] + usize::from(i == 1 || i == 14);
        assert_eq!(
            starts(i),
            want,
            "shard {i} must run again only if it failed"
        );
    }
    assert_eq!(
        p.read("data/k/combined.csv"),
        local.read("data/l/combined.csv"),
        "4 shards per task and a local run must give the same bytes"
    );
}

// ---- the monitor of a Slurm run --------------------------------------------------------------

fn monitor_json(p: &Project, config: &str) -> serde_json::Value {
    let out = Command::new(bin_dir().join("monitor"))
        .current_dir(p.root())
        .args(["--config", config, "--json"])
        .output()
        .unwrap();
    assert_exit(&out, 0, "monitor --json", p.root());
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_monitor_shows_queued_shards_and_follow_ends_when_the_jobs_are_cancelled() {
    let Some(_turn) = cluster("the_monitor_shows_queued_shards") else {
        return;
    };
    let p = Project::new();
    p.script("g.sh", SLOW);
    p.write("conf/c.yaml", &slow_config("q"));
    let out = slurm(
        &p,
        &[
            "--config",
            "conf/c.yaml",
            "--num-shards",
            "4",
            "--throttle",
            "1",
        ],
    );
    assert_exit(&out, 0, "submission", p.root());
    let job = submitted_jobs(&p, "q").pop().unwrap();
    wait_for("shard 0 under way", Duration::from_secs(30), || {
        p.read("logs/q/shard_0_of_4.log").contains(" item done=")
    });
    let snap = monitor_json(&p, "conf/c.yaml");
    assert_eq!(snap["slurm"]["queued"], "1-3", "{snap}");
    assert_eq!(snap["slurm"]["in_queue"], true, "{snap}");
    assert_eq!(snap["summary"]["items_total"], 18, "{snap}");

    let mut follow = spawn({
        let mut c = Command::new(bin_dir().join("monitor"));
        c.current_dir(p.root())
            .args(["--config", "conf/c.yaml", "--follow", "--interval", "0.3"]);
        c
    });
    std::thread::sleep(Duration::from_millis(600));
    sh(&["scancel", &job]);
    let status = wait_child(&mut follow, Duration::from_secs(40));
    let out = follow.wait_with_output().unwrap();
    assert_eq!(status.code(), Some(1), "{}", text(&out));
    let last = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .to_string();
    assert!(
        last.contains(&format!(
            "slurm: job(s) {job} no longer in the queue; cancelled, never started: 3 (1-3)"
        )),
        "{}",
        text(&out)
    );
}

/// Where accounting is on, the states of jobs the controller forgot come from one `sacct` call
/// (here a stand-in that prints what sacct prints for an array with a pending range and a
/// cancelled merge job, and a controller that knows none of them). Regression: job ids come
/// back (they wrap at MaxJobId; a controller's state can be reset), and `sacct --jobs` then
/// lists the older jobs of the same id too, first: their states were taken for the run's.
/// Where sacct fails, the output says so instead of "no accounting".
#[test]
fn status_reads_task_states_from_sacct_when_accounting_is_on() {
    let p = Project::new();
    p.write("conf/d.yaml", ECHO5);
    p.write(
        "logs/d/slurm.status",
        "2026-01-01T00:00:00.000Z launch run=d num_shards=5 shards=0-3 mode=plain jobs= merge=1 shards_per_task=1 max_array_size=1001 sbatch=\"\"\n\
         2026-01-01T00:00:00.100Z submit job=12 offset=0 array=0-3 shards=0-3\n\
         2026-01-01T00:00:00.200Z submit job=13 merge=1 after=12\n",
    );
    let finish = |status: &str| {
        format!("2026-01-01T00:00:05.000Z finish status={status} done=1 total=2 failed=0 cached=0 generated=1 rows=1 elapsed_s=1 exit=0\n")
    };
    p.write("logs/d/shard_0_of_5.log", &finish("ok"));
    p.write("logs/d/shard_1_of_5.log", &finish("failed"));
    p.write("logs/d/shard_4_of_5.log", &finish("ok"));
    p.script(
        "bin/sacct",
        // Slurm 22.05's sacct refuses a field it does not have (Restarts): regression, the
        // launcher asked for it and so never used accounting.
        "#!/bin/sh\ncase \"$*\" in *Restarts*) echo 'sacct: error: Invalid field requested: \"Restarts\"' >&2; exit 1;; esac\n\
         since=1970-01-01T00:00:00\n\
         while [ $# -gt 0 ]; do [ \"$1\" = -S ] && since=$2; shift; done\n\
         # Jobs 12 and 13 of an earlier life of the cluster, which ended in 2025.\n\
         if awk -v s=\"$since\" 'BEGIN { exit !(s <= \"2025-06-01T00:00:00\") }'; then\n\
         printf '12_0|FAILED|1:0|2025-06-01T00:00:00\\n12_2|COMPLETED|0:0|2025-06-01T00:00:00\\n13|COMPLETED|0:0|2025-06-01T00:00:00\\n'\n\
         fi\n\
         # One that ended within the minute before the submission (reset and reused at once).\n\
         printf '13|COMPLETED|0:0|2025-12-31T23:59:50\\n'\n\
         printf '12_0|COMPLETED|0:0|2026-01-01T00:00:00\\n12_1|FAILED|1:0|2026-01-01T00:00:00\\n12_[2-3]|PENDING|0:0|2026-01-01T00:00:00\\n13|CANCELLED by 0|0:0|2026-01-01T00:00:00\\n'\n",
    );
    p.script("bin/scontrol", "#!/bin/sh\nexit 1\n");
    let path = format!(
        "{}:{}",
        p.path("bin").display(),
        std::env::var("PATH").unwrap()
    );
    let out = launcher(&p, "run_slurm.sh", &["--config", "conf/d.yaml", "--status"])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert_exit(&out, 0, "--status with sacct", p.root());
    let t = text(&out);
    let rows: Vec<Vec<&str>> = t
        .lines()
        .filter(|l| l.starts_with("  "))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(t.contains("job states from sacct"), "{t}");
    assert!(rows.contains(&vec!["ok", "2", "0,4"]), "{t}");
    assert!(rows.contains(&vec!["failed", "1", "1"]), "{t}");
    assert!(rows.contains(&vec!["queued", "2", "2-3"]), "{t}");
    assert!(
        t.contains("merge job 13: CANCELLED, exit 0:0 (no Slurm output file: logs/d/slurm-merge-13.out was never written"),
        "{t}"
    );

    // slurmdbd unreachable: not "this cluster keeps no accounting", but sacct's own words.
    p.script(
        "bin/sacct",
        "#!/bin/sh\necho 'sacct: error: slurm_persist_conn_open_without_init: failed to open persistent connection to host:127.0.0.1:6929: Connection refused' >&2\n\
         echo 'sacct: error: Problem talking to the database: Connection refused' >&2\nexit 1\n",
    );
    let out = launcher(&p, "run_slurm.sh", &["--config", "conf/d.yaml", "--status"])
        .env("PATH", path)
        .output()
        .unwrap();
    assert_exit(&out, 0, "--status with a failing sacct", p.root());
    let t = text(&out);
    let why = "sacct failed: sacct: error: Problem talking to the database: Connection refused";
    assert!(
        t.contains(&format!("\njob states from scontrol ({why})\n")),
        "{t}"
    );
    assert!(t.contains("  gone  "), "{t}");
    assert!(
        t.contains(&format!(
            "merge job 13: gone: Slurm forgets a job 300 s after it ends, and {why} ("
        )),
        "{t}"
    );
    assert!(!t.contains("keeps no accounting"), "{t}");
}

/// On the accounting cluster (`slurm_local.sh up-accounting`, MinJobAge=2): once the controller
/// has forgotten a run's jobs, `--status` takes their states from the real `sacct` and shows what
/// it showed while the controller knew them: shard 1 failed (its log says so), shard 2's worker
/// was killed and wrote no end (only Slurm can say how its task ended: FAILED), the merge job
/// was ended by Slurm (CANCELLED); the printed `--only-failed` hint re-submits shards 1 and 2.
#[test]
fn status_reads_forgotten_jobs_from_a_real_sacct() {
    let Some(turn) = accounting_cluster("status_reads_forgotten_jobs_from_a_real_sacct") else {
        return;
    };
    let p = Project::new();
    p.script(
        "g.sh",
        "#!/bin/sh\ncase \"$1\" in\n  3) echo 'no such file: input_3.csv' >&2; exit 1 ;;\n  5) kill -KILL $PPID; exit 1 ;;\nesac\necho \"$1\"\n",
    );
    p.write(
        "conf/a.yaml",
        "run: a\nitems: {range: {start: 0, end: 6}}\ngenerator: {command: [./g.sh, \"{key}\"], retries: 0}\noutput: {columns: [k]}\n",
    );
    let run = |args: &[&str]| {
        launcher(&p, "run_slurm.sh", args)
            .env("SLURM_CONF", ACCOUNTING_CONF)
            .output()
            .expect("run run_slurm.sh")
    };
    let out = run(&[
        "--config",
        "conf/a.yaml",
        "--num-shards",
        "3",
        "--merge",
        "--wait",
    ]);
    assert_exit(&out, 1, "--wait with a failed and a killed shard", p.root());
    let report = text(&out);
    let jobs = submitted_jobs(&p, "a");
    let [array, merge] = &jobs[..] else {
        panic!("an array and a merge job: {jobs:?}\n{report}")
    };
    assert!(array.parse::<u64>().unwrap() >= 1_000_000, "{report}");
    assert!(
        report.contains(&format!("✓ shard 0/3 (job {array}_0) ok")),
        "{report}"
    );
    assert!(
        report.contains(&format!(
            "✗ shard 1/3 (job {array}_1) failed: exit 1: 1 of 2 items failed; first: key 3"
        )) && report.contains("(Slurm: FAILED, exit 1:0; see logs/a/shard_1_of_3.log"),
        "{report}"
    );
    assert!(
        report.contains(&format!(
            "✗ shard 2/3 (job {array}_2) did not finish (Slurm: FAILED, exit "
        )),
        "{report}"
    );
    let hint = resubmit_hint(&out);
    let status = |what: &str| {
        let out = run(&["--config", "conf/a.yaml", "--status"]);
        assert_exit(&out, 0, what, p.root());
        text(&out)
    };
    let rows = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| l.starts_with("  "))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect()
    };
    // As the controller (and, for what it already forgot, sacct) sees it now.
    let before = status("--status after the run");
    drop(turn);

    // slurmctld forgets a job a few seconds after its end (MinJobAge=2), at one of its purges.
    let forgotten = |job: &str| {
        let out = Command::new("scontrol")
            .args(["show", "job", job])
            .env("SLURM_CONF", ACCOUNTING_CONF)
            .output()
            .expect("run scontrol");
        if out.status.success() {
            std::thread::sleep(Duration::from_secs(1));
            return false;
        }
        assert!(
            text(&out).contains("Invalid job id specified"),
            "{}",
            text(&out)
        );
        true
    };
    wait_for(
        "the controller to forget the run's jobs",
        Duration::from_secs(240),
        || forgotten(array) && forgotten(merge),
    );

    let after = status("--status from sacct");
    assert!(after.contains("\njob states from sacct\n"), "{after}");
    assert_eq!(rows(&after), rows(&before), "{before}\n---\n{after}");
    let rows = rows(&after);
    for want in ["ok 1 0", "failed 1 1", "did not finish (Slurm: FAILED) 1 2"] {
        assert!(rows.contains(&want.to_string()), "{want}: {after}");
    }
    assert!(
        rows.contains(&format!(
            "merge job {merge}: CANCELLED, exit 0:0 (no Slurm output file: \
             logs/a/slurm-merge-{merge}.out was never written (the task never started))"
        )),
        "{after}"
    );
    assert!(!after.contains("gone"), "{after}");

    // The printed hint re-submits exactly the shards that did not succeed.
    assert!(
        hint.ends_with(" --config conf/a.yaml --only-failed --merge"),
        "{hint}"
    );
    let dry = paste_with(
        &p,
        &format!("{hint} --dry-run"),
        &[("SLURM_CONF", ACCOUNTING_CONF)],
    );
    assert_exit(&dry, 0, "the hint with --dry-run", p.root());
    let plan = text(&dry);
    assert!(plan.contains("--array=1-2 "), "{plan}");
    assert!(plan.contains("# shards 1-2\n"), "{plan}");
}

/// A scheduler stopping a job signals every process of it at once, so a generator may die of the
/// SIGTERM before its worker has seen its own: that is the worker being stopped, not the item
/// failing. Here the generator kills itself and has the worker signalled a moment later.
#[test]
fn a_generator_killed_by_the_jobs_sigterm_leaves_its_item_pending() {
    let p = Project::new();
    p.script(
        "g.sh",
        "#!/bin/sh\nif [ \"$1\" = 2 ]; then\n  setsid sh -c \"sleep 0.1; kill -TERM $PPID\" </dev/null >/dev/null 2>&1 &\n  sleep 0.05\n  kill -TERM $$\nfi\n[ \"$1\" -gt 2 ] && sleep 2\necho \"$1\"\n",
    );
    p.write(
        "t.yaml",
        "run: t\nitems: {range: {start: 0, end: 5}}\ngenerator: {command: [./g.sh, \"{key}\"], retries: 0}\noutput: {columns: [k]}\n",
    );
    let out = p.run("t.yaml", &[]);
    assert_exit(&out, 143, "a worker stopped by SIGTERM", p.root());
    let log = p.read("logs/t/shard_0_of_1.log");
    let finish = last_line_with(&log, "finish");
    assert!(
        finish.contains("status=interrupted") && finish.contains(" failed=0 "),
        "{log}"
    );
    assert!(!log.contains(" item_failed "), "{log}");
}

// ---- the --notify command, remembered with the run; notices of a run that is cancelled -------

/// The launcher's printed `next:` hint after "re-submit only those shards: ".
fn resubmit_hint(out: &Output) -> String {
    text(out)
        .lines()
        .find_map(|l| l.split("re-submit only those shards: ").nth(1))
        .unwrap_or_else(|| panic!("no re-submit hint in:\n{}", text(out)))
        .to_string()
}

/// Runs a printed hint as a user pastes it: through a shell, from the project root.
fn paste(p: &Project, hint: &str) -> Output {
    paste_with(p, hint, &[])
}

/// `paste` with more environment variables (SLURM_CONF of the accounting cluster).
fn paste_with(p: &Project, hint: &str, env: &[(&str, &str)]) -> Output {
    // The launcher's settings (binaries, poll), with the hint as the command.
    let settings = launcher(p, "run_slurm.sh", &[]);
    let mut sh = Command::new("sh");
    sh.arg("-c").arg(hint).current_dir(p.root());
    for (k, v) in settings.get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    sh.envs(env.iter().copied());
    sh.output().expect("run the hint")
}

/// Regression: --only-failed (and the printed hint) forgot the run's --notify command, so the
/// re-run sent no notice. On the real cluster: remembered exactly (hostile words) by the pasted
/// hint of a --wait run and by the merge job of a later --merge, then dropped by --no-notify.
#[test]
fn the_notify_command_is_remembered_with_the_run_until_no_notify() {
    let Some(_turn) = cluster("the_notify_command_is_remembered_with_the_run_until_no_notify")
    else {
        return;
    };
    use crate::notify::{recorded_notices, ARGV_RECORDER, HOSTILE_ARGS};
    let hostile: Vec<String> = HOSTILE_ARGS.iter().map(|s| s.to_string()).collect();
    let p = flaky_project("rn");
    p.script("argv.sh", ARGV_RECORDER);
    let mut args = vec!["--config", "conf/f.yaml", "--num-shards", "2", "--wait"];
    args.push("--notify");
    args.push("./argv.sh");
    args.extend_from_slice(HOSTILE_ARGS);
    args.push(";");
    let out = slurm(&p, &args);
    assert_exit(&out, 1, "a failed shard, --wait --notify", p.root());
    assert_eq!(recorded_notices(&p), vec![hostile.clone()]);
    let status = p.read("logs/rn/slurm.status");
    assert!(
        last_line_with(&status, "launch").contains(" notify_cmd=\"./argv.sh 'a b' 'it'\\\\''s' "),
        "{status}"
    );
    // Waited for, the run's notice came from the waiter: the hint waits too.
    let hint = resubmit_hint(&out);
    assert!(
        hint.ends_with("--config conf/f.yaml --only-failed --wait"),
        "{hint}"
    );
    let out = slurm(&p, &["--config", "conf/f.yaml", "--status"]);
    assert!(
        text(&out).contains("--notify command: ./argv.sh 'a b' "),
        "{}",
        text(&out)
    );

    std::fs::remove_file(p.path("fail")).unwrap();
    let out = paste(&p, &hint);
    assert_exit(&out, 0, "the pasted hint", p.root());
    assert_eq!(recorded_notices(&p), vec![hostile.clone(); 2]);

    // A later --merge without --wait: the merge job sends the remembered notice.
    let out = slurm(
        &p,
        &[
            "--config",
            "conf/f.yaml",
            "--num-shards",
            "2",
            "--force",
            "--merge",
        ],
    );
    assert_exit(&out, 0, "--force --merge", p.root());
    assert!(
        text(&out).contains("sends the --notify notice"),
        "{}",
        text(&out)
    );
    wait_for("the merge job's notice", Duration::from_secs(60), || {
        recorded_notices(&p).len() == 3 && queued(&submitted_jobs(&p, "rn")).is_empty()
    });
    assert_eq!(recorded_notices(&p)[2], hostile);
    assert_eq!(p.read("data/rn/combined.csv"), "k\n0\n1\n2\n3\n");

    // --no-notify: no notice, and the run forgets the command.
    for extra in [&["--no-notify"][..], &[][..]] {
        let mut args = vec![
            "--config",
            "conf/f.yaml",
            "--num-shards",
            "2",
            "--force",
            "--merge",
            "--wait",
        ];
        args.extend_from_slice(extra);
        let out = slurm(&p, &args);
        assert_exit(&out, 0, "--force --merge --wait", p.root());
    }
    assert_eq!(recorded_notices(&p).len(), 3);
    assert!(
        last_line_with(&p.read("logs/rn/slurm.status"), "launch").ends_with(" notify_cmd=\"\""),
        "{}",
        p.read("logs/rn/slurm.status")
    );
}

/// With --merge --notify, the merge job sends the run's one notice. Cancelled before it starts
/// (`--cancel` of the whole run), it never will: --cancel sends it. Stopped while it runs (a
/// plain scancel, its time limit), its script sends it. Either way exactly one notice, with the
/// exit code of a SIGTERM (143).
#[test]
fn a_run_whose_merge_job_never_notifies_still_sends_one_notice() {
    let Some(_turn) = cluster("a_run_whose_merge_job_never_notifies_still_sends_one_notice") else {
        return;
    };
    let p = Project::new();
    p.script("g.sh", SLOW);
    p.script("note.sh", NOTE);
    p.write("conf/c.yaml", &slow_config("cn"));
    let notify = ["--notify", "./note.sh", "a b", ";"];
    let mut args = vec!["--config", "conf/c.yaml", "--num-shards", "2", "--merge"];
    args.extend(notify);
    let out = slurm(&p, &args);
    assert_exit(&out, 0, "--merge --notify", p.root());
    let out = slurm(&p, &["--config", "conf/c.yaml", "--cancel"]);
    assert_exit(&out, 0, "--cancel", p.root());
    assert!(
        text(&out).contains("never started: sending the run's --notify notice from here"),
        "{}",
        text(&out)
    );
    let t = p.read("notices.txt");
    assert_eq!(t.matches("\n----\n").count(), 1, "{t}");
    assert!(
        t.contains("state=interrupted\n")
            && t.contains("\"exit_code\": 143")
            && t.contains("arg=a b\n"),
        "{t}"
    );
    let merge_job = submitted_jobs(&p, "cn").pop().unwrap();
    assert!(!p
        .path(&format!("logs/cn/slurm-merge-{merge_job}.out"))
        .exists());

    // A merge job stopped while it runs: a stand-in merge that only sleeps, killed by scancel.
    std::fs::remove_file(p.path("notices.txt")).unwrap();
    let bin = p.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for b in ["shard-worker", "monitor"] {
        std::os::unix::fs::symlink(bin_dir().join(b), bin.join(b)).unwrap();
    }
    p.script("bin/merge", "#!/bin/sh\necho merging\nexec sleep 300\n");
    let mut args = vec!["--config", "conf/c.yaml", "--num-shards", "2", "--merge"];
    args.extend(notify);
    let out = launcher(&p, "run_slurm.sh", &args)
        .env("SHARDRUN_BIN", &bin)
        .output()
        .unwrap();
    assert_exit(&out, 0, "--merge --notify, a slow merge", p.root());
    let merge_job = submitted_jobs(&p, "cn").pop().unwrap();
    let out_file = p.path(&format!("logs/cn/slurm-merge-{merge_job}.out"));
    wait_for("the merge job to run", Duration::from_secs(90), || {
        std::fs::read_to_string(&out_file).is_ok_and(|t| t.contains("merging"))
    });
    sh(&["scancel", &merge_job]);
    wait_for(
        "the stopped merge job's notice",
        Duration::from_secs(60),
        || p.path("notices.txt").exists() && queued(std::slice::from_ref(&merge_job)).is_empty(),
    );
    let t = p.read("notices.txt");
    assert_eq!(t.matches("\n----\n").count(), 1, "{t}");
    assert!(
        t.contains("\"exit_code\": 143") && t.contains("arg=a b\n"),
        "{t}"
    );
    // Nothing left to cancel: --cancel sends no second notice.
    let out = slurm(&p, &["--config", "conf/c.yaml", "--cancel"]);
    assert_exit(&out, 0, "--cancel of a finished run", p.root());
    assert_eq!(p.read("notices.txt").matches("\n----\n").count(), 1);
}

/// The dry run shows the --notify command remembered with the run and the merge job that would
/// send it; --no-notify drops it; --status and --cancel take no notify option.
#[test]
fn dry_run_shows_the_remembered_notify_command_and_no_notify_drops_it() {
    let p = Project::new();
    p.write("conf/d.yaml", ECHO5);
    p.write(
        "logs/d/slurm.status",
        "2026-01-01T00:00:00.000Z launch run=d num_shards=5 shards=0-4 mode=plain jobs= merge=1 shards_per_task=1 max_array_size=1001 sbatch=\"--time=5\" notify_cmd=\"./n.sh 'a b' 'x'$'\\\\x0a''y'\"\n\
         2026-01-01T00:00:00.100Z submit job=12 offset=0 array=0-4 shards=0-4\n",
    );
    let dry = |extra: &[&str]| {
        let mut args = vec!["--config", "conf/d.yaml", "--num-shards", "5", "--dry-run"];
        args.extend_from_slice(extra);
        let out = slurm(&p, &args);
        assert_exit(&out, 0, "--dry-run", p.root());
        text(&out)
    };
    let t = dry(&["--merge"]);
    assert!(
        t.contains("--notify command (remembered from the launch of 2026-01-01T00:00:00.000Z; a new --notify replaces it, --no-notify drops it): ./n.sh 'a b' 'x'$'\\x0a''y'\n"),
        "{t}"
    );
    assert!(
        t.contains("--dependency=afterany:") && t.contains("logs/d/slurm_merge.sh"),
        "{t}"
    );
    let t = dry(&[]);
    assert!(t.contains("(no notice for this submission: "), "{t}");
    let t = dry(&["--merge", "--no-notify"]);
    assert!(
        !t.contains("--notify command") && t.contains("--dependency=afterok:"),
        "{t}"
    );
    let t = dry(&["--merge", "--notify", "./other.sh", ";"]);
    assert!(
        t.contains(
            "--notify command (recorded with the run; later launches reuse it): ./other.sh\n"
        ),
        "{t}"
    );
    for cmd in ["--status", "--cancel"] {
        let out = slurm(&p, &["--config", "conf/d.yaml", cmd, "--no-notify"]);
        assert_exit(&out, 2, "a notify option with --status/--cancel", p.root());
    }
}

/// A re-submission of a finished run: its shards' logs tell how they ended before. While its
/// task waits in the queue (held), the monitor shows the shard as pending and `--follow` goes
/// on; it ends when the task has run. A refusal while it is queued names `--cancel`. After a
/// merge that deleted the shard files, the plain command submits nothing.
#[test]
fn follow_waits_for_a_resubmission_and_a_merged_run_submits_nothing() {
    let Some(_turn) = cluster("follow_waits_for_a_resubmission") else {
        return;
    };
    let p = flaky_project("rs");
    let first = slurm(
        &p,
        &["--config", "conf/f.yaml", "--num-shards", "2", "--wait"],
    );
    assert_exit(&first, 1, "a failed shard", p.root());
    let status = slurm(&p, &["--config", "conf/f.yaml", "--status"]);
    assert_exit(&status, 0, "--status of a failed run", p.root());
    let t = text(&status);
    assert!(
        t.contains("--config conf/f.yaml --failures\n")
            && t.contains("next:  ")
            && t.contains("--config conf/f.yaml --only-failed\n"),
        "{t}"
    );
    std::fs::remove_file(p.path("fail")).unwrap();
    // Held in the queue until released below.
    let out = slurm(
        &p,
        &["--config", "conf/f.yaml", "--only-failed", "--", "--hold"],
    );
    assert_exit(&out, 0, "--only-failed --hold", p.root());
    let job = submitted_jobs(&p, "rs").pop().unwrap();
    // A held job outlives a failed test unless cancelled.
    let _cancel = CancelOnDrop(job.clone());
    let snap = monitor_json(&p, "conf/f.yaml");
    assert_eq!(snap["slurm"]["queued"], "1", "{snap}");
    assert_eq!(snap["shards"][1]["state"], "pending", "{snap}");
    assert_eq!(snap["summary"]["failed"], 0, "{snap}");

    let out = slurm(&p, &["--config", "conf/f.yaml", "--only-failed"]);
    assert_exit(&out, 2, "a submission while queued", p.root());
    assert!(
        text(&out).contains("or cancel them (")
            && text(&out).contains("--config conf/f.yaml --cancel) first"),
        "{}",
        text(&out)
    );

    let mut follow = spawn({
        let mut c = Command::new(bin_dir().join("monitor"));
        c.current_dir(p.root()).args([
            "--config",
            "conf/f.yaml",
            "--follow",
            "--json",
            "--interval",
            "0.2",
        ]);
        c
    });
    // Several refreshes while the task is held: each one sees every log ended (the earlier
    // submission's), and must go on.
    wait_for("three snapshots", Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_millis(700));
        true
    });
    assert!(
        follow.try_wait().unwrap().is_none(),
        "monitor --follow ended while shard 1 was queued"
    );
    sh(&["scontrol", "release", &job]);
    let status = wait_child(&mut follow, Duration::from_secs(60));
    let out = follow.wait_with_output().unwrap();
    assert_eq!(status.code(), Some(0), "{}", text(&out));

    crate::merge::merge_ok(&p, &["--run", "rs"]);
    assert!(!p.path("data/rs/manifest_shard0_of_2.jsonl").exists());
    let before = submitted_jobs(&p, "rs").len();
    for args in [
        &["--config", "conf/f.yaml"][..],
        &["--config", "conf/f.yaml", "--wait"][..],
    ] {
        let out = slurm(&p, args);
        assert_exit(&out, 0, "the plain command after a merged run", p.root());
        assert!(
            text(&out).contains("nothing to do: all 2 shards of run 'rs' succeeded and were merged (data/rs/stats.json)"),
            "{}",
            text(&out)
        );
    }
    assert_eq!(submitted_jobs(&p, "rs").len(), before);
    let status = slurm(&p, &["--config", "conf/f.yaml", "--status"]);
    assert!(
        text(&status).contains("merged: data/rs/stats.json"),
        "{}",
        text(&status)
    );
}

/// A user's --dependency holds the arrays; the merge job depends on the arrays only (sbatch
/// keeps the last --dependency, which replaced the arrays' and let the merge run first).
#[test]
fn a_user_dependency_holds_the_arrays_not_the_merge_job() {
    let p = flaky_project("dp");
    let out = slurm(
        &p,
        &[
            "--config",
            "conf/f.yaml",
            "--num-shards",
            "2",
            "--merge",
            "--dry-run",
            "--",
            "--dependency=afterok:1",
            "-d",
            "singleton",
        ],
    );
    assert_exit(&out, 0, "--dry-run", p.root());
    let t = text(&out);
    let merge_line = t
        .lines()
        .find(|l| l.contains("--job-name=shardrun-dp-merge"))
        .unwrap_or_else(|| panic!("no merge job line in:\n{t}"));
    assert_eq!(
        merge_line.matches("--dependency").count(),
        1,
        "{merge_line}"
    );
    assert!(!merge_line.contains("singleton"), "{merge_line}");
    // The merge job runs in the project (its configuration is named as the user named it).
    assert!(
        merge_line.contains("--config conf/f.yaml --root "),
        "{merge_line}"
    );
    let array_line = t
        .lines()
        .find(|l| l.contains("--array="))
        .unwrap_or_else(|| panic!("no array line in:\n{t}"));
    assert!(
        array_line.contains("--dependency=afterok:1 -d singleton"),
        "{array_line}"
    );
}

/// Cancels a Slurm job when dropped, also when the test fails.
struct CancelOnDrop(String);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("scancel").arg(&self.0).status();
    }
}

/// Every task of a run still queued (held here): no shard has a log yet, and the monitor takes
/// the shard count from the submission's record (it asked for --num-shards).
#[test]
fn the_monitor_of_a_run_with_every_task_queued_needs_no_shard_count() {
    let Some(_turn) = cluster("the_monitor_of_a_run_with_every_task_queued") else {
        return;
    };
    let p = flaky_project("hq");
    let out = slurm(
        &p,
        &[
            "--config",
            "conf/f.yaml",
            "--num-shards",
            "2",
            "--",
            "--hold",
        ],
    );
    assert_exit(&out, 0, "a held submission", p.root());
    let _cancel = CancelOnDrop(submitted_jobs(&p, "hq").pop().unwrap());
    for args in [&["--run", "hq", "--json"][..], &["--json"][..]] {
        let out = Command::new(bin_dir().join("monitor"))
            .current_dir(p.root())
            .args(args)
            .output()
            .unwrap();
        assert_exit(&out, 0, "monitor of a queued run", p.root());
        let snap: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(snap["num_shards"], 2, "{snap}");
        assert_eq!(snap["slurm"]["queued"], "0-1", "{snap}");
        assert_eq!(snap["summary"]["pending"], 2, "{snap}");
    }
}
