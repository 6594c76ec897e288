//! The launchers' report of failed shards and the hints the tools print: every failed shard says
//! why in full and names the file with the rest, and every suggested command, pasted as printed,
//! acts on the same run (the same --config, from wherever it was printed).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

fn bin(name: &str) -> PathBuf {
    Path::new(WORKER).with_file_name(name)
}

/// `run_parallel.sh` run from `dir` with the test build's binaries.
fn launcher_in(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(script("run_parallel.sh"));
    c.current_dir(dir)
        .args(args)
        .env("SHARDRUN_BIN", bin("shard-worker").parent().unwrap())
        .env("SHARDRUN_NO_DISPLAY", "1")
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX");
    c
}

pub fn launch(p: &Project, args: &[&str]) -> Output {
    launcher_in(p.root(), args).output().expect("run launcher")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A line with every `(pid N)` replaced by `(pid _)`, for exact comparisons.
fn masked(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(at) = rest.find("(pid ") {
        out.push_str(&rest[..at]);
        out.push_str("(pid _)");
        rest = &rest[at..];
        rest = &rest[rest.find(')').map_or(rest.len(), |e| e + 1)..];
    }
    out + rest
}

/// The lines of a report that start with `prefix`, masked and sorted (shards end in any order).
fn lines_with(text: &str, prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(masked)
        .collect();
    v.sort();
    v
}

/// The command after `marker` on the line that holds it (a hint).
fn hint_after<'a>(text: &'a str, marker: &str) -> &'a str {
    let line = text
        .lines()
        .find(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("no {marker:?} in:\n{text}"));
    line.split_once(marker).unwrap().1.trim()
}

/// Runs a hint as a user would paste it, from `dir`.
fn paste(dir: &Path, hint: &str) -> Output {
    Command::new("bash")
        .arg("-c")
        .arg(hint)
        .current_dir(dir)
        .env("SHARDRUN_BIN", bin("shard-worker").parent().unwrap())
        .env("SHARDRUN_NO_DISPLAY", "1")
        .output()
        .expect("run bash")
}

/// A message longer than any cut the report might make (the old one cut at 200 characters).
const LONG: &str = "the model file weights/v2.bin has no tensor named decoder.layers.11.attn, \
     which version 2 of the checkpoint format expects; convert it with convert.py or point \
     MODEL at a version 1 file, then run again so that every item can be generated";

/// A generator that fails on keys 3 and 13 (until `fixed` exists), saying why on stderr.
fn failing_project() -> Project {
    let p = Project::new();
    p.script(
        "g.sh",
        &format!(
            "#!/bin/sh\ncase \"$1\" in *3) [ -f fixed ] || {{ echo 'Traceback (most recent call last):' >&2; echo \"{LONG}\" >&2; exit 1; }};; esac\necho \"$1\"\n"
        ),
    );
    p.write(
        "conf/my gen.yaml",
        "run: t\nshards: 2\nitems: {range: {start: 0, end: 20}}\ngenerator: {command: [./g.sh, \"{key}\"], retries: 0}\noutput: {columns: [k]}\n",
    );
    p
}

/// Regression: the report cut the reason at 200 characters mid-word, and the hint of the launcher
/// and of merge lost the --config, so pasting it acted on another run.
#[test]
fn a_failed_shards_line_gives_its_full_reason_and_log_and_its_hint_reruns_the_same_run() {
    let p = failing_project();
    let out = launch(&p, &["--config", "conf/my gen.yaml"]);
    assert_exit(&out, 1, "a run with failing items", p.root());
    let text = stdout(&out);
    assert_eq!(
        lines_with(&text, "✗"),
        [0, 1]
            .iter()
            .map(|i| format!(
                "✗ shard {i}/2 (pid _) failed: exit 1: 1 of 10 items failed; first: key {}: exit code 1 \
                 (its last stderr line: {LONG}) (see logs/t/shard_{i}_of_2.log)",
                if *i == 0 { 3 } else { 13 }
            ))
            .collect::<Vec<_>>(),
        "{text}"
    );
    let hint = hint_after(&text, "re-run only those shards: ");
    assert_eq!(
        hint,
        format!(
            "{} --config 'conf/my gen.yaml' --only-failed",
            script("run_parallel.sh").display()
        )
    );

    // merge names the same command, from here and, with --root, from elsewhere.
    let merge = Command::new(bin("merge"))
        .args(["--config", "conf/my gen.yaml"])
        .current_dir(p.root())
        .output()
        .unwrap();
    assert_exit(&merge, 1, "merge of an incomplete run", p.root());
    assert!(
        stderr(&merge).contains(&format!("Finish it ({hint})")),
        "{}",
        stderr(&merge)
    );
    let elsewhere = tempfile::tempdir().unwrap();
    let merge = Command::new(bin("merge"))
        .args(["--run", "t", "--root"])
        .arg(p.root())
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    assert_exit(&merge, 1, "merge --run --root", p.root());
    let merge_hint = hint_after(&stderr(&merge), "Finish it (")
        .split(") or merge")
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        merge_hint,
        format!("cd {} && {hint}", p.root().display()),
        "{}",
        stderr(&merge)
    );

    // Pasted as printed, from elsewhere, the hint re-runs exactly the failed shards of this run.
    p.write("fixed", "");
    let again = paste(elsewhere.path(), &merge_hint);
    assert_exit(&again, 0, "the pasted hint", p.root());
    assert!(stderr(&again).contains("re-running shard(s) 0,1 of 2"));
    let merged = Command::new(bin("merge"))
        .args(["--config", "conf/my gen.yaml"])
        .current_dir(p.root())
        .output()
        .unwrap();
    assert_exit(&merged, 0, "merge after the fix", p.root());
    assert_eq!(p.read("data/t/combined.csv").lines().count(), 21);
}

/// Regression: a worker's error (here: outputs it refuses to resume) was cut and the line
/// pointed at the shard's log, while the error is in the .stderr file.
#[test]
fn a_worker_error_is_quoted_whole_from_its_stderr_file() {
    let p = Project::new();
    let cfg = "run: e\nitems: {range: {start: 0, end: 4}}\ngenerator: {builtin: echo}\n";
    p.write("conf/e.yaml", cfg);
    assert_exit(
        &launch(&p, &["--config", "conf/e.yaml", "--num-shards", "1"]),
        0,
        "first run",
        p.root(),
    );
    // A data file cut short outside shardrun: only the worker, opening it, can tell.
    std::fs::write(p.path("data/e/process-0.csv"), "key\n").unwrap();
    let out = launch(&p, &["--config", "conf/e.yaml", "--num-shards", "1"]);
    assert_exit(&out, 1, "a refused resume", p.root());
    let err_file = p.read("logs/e/shard_0_of_1.stderr");
    let why = err_file
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("shard-worker: error: "))
        .unwrap_or_else(|| panic!("no error in the .stderr file: {err_file}"));
    assert!(why.len() > 200, "a long message proves nothing is cut");
    assert_eq!(
        lines_with(&stdout(&out), "✗"),
        [format!(
            "✗ shard 0/1 (pid _) error: exit 2: {why} (see logs/e/shard_0_of_1.stderr)"
        )],
        "{}",
        stdout(&out)
    );
}

/// Launches `conf/p.yaml` with 2 shards; the preflight must refuse it with exit 2 before anything
/// is started or written, naming `needle`; after `fix`, the same command runs normally.
fn preflight_refuses_then_runs_after_the_fix(
    cfg: &str,
    setup: impl Fn(&Project),
    needle: &str,
    fix: impl Fn(&Project),
) {
    let p = Project::new();
    p.write("conf/p.yaml", cfg);
    setup(&p);
    let out = launch(&p, &["--config", "conf/p.yaml", "--num-shards", "2"]);
    assert_exit(&out, 2, "a launch the preflight refuses", p.root());
    assert!(stderr(&out).contains(needle), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("nothing was started or recorded"),
        "{}",
        stderr(&out)
    );
    assert!(
        !p.path("logs").exists() && !p.path("data").exists() && !p.path(".cache").exists(),
        "nothing may be written:\n{}",
        p.listing()
    );
    fix(&p);
    let out = launch(
        &p,
        &["--config", "conf/p.yaml", "--num-shards", "2", "--merge"],
    );
    assert_exit(&out, 0, "the same launch after the fix", p.root());
    assert_eq!(p.read("data/p/combined.csv").lines().count(), 5);
}

/// Regression: a bad builtin parameter started every shard, each failing, and recorded the
/// launch, so that after the fix --only-failed refused the changed configuration.
#[test]
fn preflight_refuses_a_bad_builtin_param_before_any_shard_starts() {
    let good = "run: p\nitems: {range: {start: 0, end: 4}}\ngenerator: {builtin: echo}\n";
    preflight_refuses_then_runs_after_the_fix(
        &good.replace("echo}", "echo, params: {rowz: 2}}"),
        |_| {},
        "generator.params.rowz",
        |p| {
            p.write("conf/p.yaml", good);
        },
    );
}

/// Regression: a command naming a missing script started every shard, and every item failed
/// (with retries and backoff) on "can't open file".
#[test]
fn preflight_refuses_a_missing_script_before_any_shard_starts() {
    preflight_refuses_then_runs_after_the_fix(
        "run: p\nitems: {range: {start: 0, end: 4}}\ngenerator: {command: [sh, gen.sh, \"{key}\"]}\noutput: {columns: [k]}\n",
        |_| {},
        "generator.command names \"gen.sh\"",
        |p| {
            p.write("gen.sh", "echo \"$1\"\n");
        },
    );
}

#[test]
fn preflight_refuses_an_unreadable_items_file_before_any_shard_starts() {
    preflight_refuses_then_runs_after_the_fix(
        "run: p\nitems: {file: items.txt}\ngenerator: {builtin: echo}\n",
        |p| std::fs::create_dir(p.path("items.txt")).unwrap(),
        "items.txt",
        |p| {
            std::fs::remove_dir(p.path("items.txt")).unwrap();
            p.write("items.txt", "a\nb\nc\nd\n");
        },
    )
}

/// `--check` reads and writes nothing, and reports a shard whose lock is held (exit 3).
#[test]
fn check_writes_nothing_and_reports_a_held_lock() {
    let p = Project::new();
    p.write(
        "conf/c.yaml",
        "run: c\nitems: {range: {start: 0, end: 4}}\ngenerator: {builtin: echo}\n",
    );
    let out = p
        .worker("conf/c.yaml", &["--num-shards", "2", "--check"])
        .output()
        .unwrap();
    assert_exit(&out, 0, "--check", p.root());
    assert!(stdout(&out).contains("check ok: run c, 2 of 2 shard(s), 4 items"));
    assert!(
        !p.path("data").exists() && !p.path("logs").exists(),
        "{}",
        p.listing()
    );
    let lock = p.write("data/c/.locks/shard1_of_2.lock", "pid 1 on host h");
    let held = File::open(&lock).unwrap();
    held.lock().unwrap();
    let out = p
        .worker("conf/c.yaml", &["--num-shards", "2", "--check"])
        .output()
        .unwrap();
    assert_exit(&out, 3, "--check of a locked shard", p.root());
    assert!(stderr(&out).contains("shard 1 of 2 of run \"c\" is locked by pid 1 on host h"));
}

/// Regression: a generator that cannot work (here: a missing model) was run on every item of
/// every shard, with retries and backoff; now each shard stops after the first
/// `FAIL_FAST_ITEMS` attempted items all failed, and the report says why.
#[test]
fn a_generator_that_always_fails_stops_each_shard_after_the_fail_fast_threshold() {
    let n = shardrun::worker::FAIL_FAST_ITEMS;
    let p = Project::new();
    p.script(
        "g.sh",
        "#!/bin/sh\necho \"$1\" >> calls\necho 'cannot load model.bin' >&2\nexit 1\n",
    );
    let cfg = "run: ff\nshards: 2\nitems: {range: {start: 0, end: 100}}\ngenerator: {command: [./g.sh, \"{key}\"], retries: 0}\noutput: {columns: [k]}\n";
    p.write("conf/ff.yaml", cfg);
    let out = launch(&p, &["--config", "conf/ff.yaml"]);
    assert_exit(&out, 1, "a generator that always fails", p.root());
    assert_eq!(p.read("calls").lines().count() as u64, 2 * n, "items tried");
    assert_eq!(
        lines_with(&stdout(&out), "✗"),
        [(0, 0), (1, 50)]
            .iter()
            .map(|(i, key)| format!(
                "✗ shard {i}/2 (pid _) failed: exit 1: the first {n} items this run attempted all \
                 failed; starting no new items (set generator.halt to choose another limit); first \
                 failed item: key {key}: exit code 1 (its last stderr line: cannot load model.bin) \
                 (see logs/ff/shard_{i}_of_2.log)"
            ))
            .collect::<Vec<_>>(),
        "{}",
        stdout(&out)
    );

    // generator.halt overrides the threshold.
    p.write(
        "conf/ff.yaml",
        &cfg.replace(
            "retries: 0",
            &format!("retries: 0, halt: {{failures: {}}}", n + 5),
        ),
    );
    std::fs::remove_file(p.path("calls")).unwrap();
    let out = launch(&p, &["--config", "conf/ff.yaml", "--force"]);
    assert_exit(&out, 1, "the same with generator.halt", p.root());
    assert_eq!(p.read("calls").lines().count() as u64, 2 * (n + 5));
    assert!(
        stdout(&out).contains("generator.halt.failures reached"),
        "{}",
        stdout(&out)
    );
}

/// Regression: `generator.rate` was silently ignored with a builtin generator.
#[test]
fn generator_rate_paces_a_builtin_generator_too() {
    let p = Project::new();
    p.write(
        "conf/r.yaml",
        "run: r\nitems: {range: {start: 0, end: 6}}\ngenerator: {builtin: echo, rate: 10/s}\n",
    );
    let t = std::time::Instant::now();
    let out = p.worker("conf/r.yaml", &["--quiet"]).output().unwrap();
    assert_exit(&out, 0, "a paced builtin", p.root());
    // 6 starts at most 10 per second: the last one at least 0.5 s after the first.
    assert!(
        t.elapsed() >= std::time::Duration::from_millis(500),
        "took {:?}",
        t.elapsed()
    );
}

/// Regression: `monitor --follow --config X` started before the run exited 2 ("unknown run").
#[test]
fn monitor_follow_waits_for_a_run_that_has_not_started_yet() {
    let p = Project::new();
    p.write(
        "conf/w.yaml",
        "run: w\nitems: {range: {start: 0, end: 6}}\ngenerator: {builtin: echo}\n",
    );
    let err = p.path("monitor.err");
    let mut monitor = Command::new(bin("monitor"));
    monitor
        .args(["--config", "conf/w.yaml", "--follow", "--interval", "0.1"])
        .current_dir(p.root())
        .stdout(std::process::Stdio::piped())
        .stderr(File::create(&err).unwrap());
    let mut child = monitor.spawn().expect("spawn monitor");
    wait_for(
        "the monitor to wait for the run",
        std::time::Duration::from_secs(10),
        || {
            p.read("monitor.err")
                .contains("has not started yet; waiting")
        },
    );
    let out = launch(&p, &["--config", "conf/w.yaml", "--num-shards", "2"]);
    assert_exit(&out, 0, "the run", p.root());
    let status = wait_child(&mut child, std::time::Duration::from_secs(20));
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        p.read("monitor.err")
    );
    assert!(stdout(&out).contains("6/6 items"), "{}", stdout(&out));
}

/// Regression: in a terminal, after Ctrl-C, bash added a `Killed` job notice (and a `wait: no
/// such job` line) for a worker SIGKILLed after the grace period, and its line said
/// ", items committed" without a number.
#[test]
fn ctrl_c_with_a_hung_worker_leaves_no_job_notice() {
    if Command::new("tmux").arg("-V").output().is_err() {
        panic!("tmux is required for this test (scripts/test.sh installs it)");
    }
    let p = Project::new();
    p.script(
        "g.sh",
        "#!/bin/sh\necho $$ >> pids\nsleep 60\necho \"$1\"\n",
    );
    p.write(
        "conf/c.yaml",
        "run: c\nshards: 2\nitems: {range: {start: 0, end: 20}}\ngenerator: {command: [./g.sh, \"{key}\"]}\noutput: {columns: [k]}\n",
    );
    let session = format!("shardrun-notice-{}", std::process::id());
    let cmd = format!(
        "cd {root} && SHARDRUN_BIN={bin} {launcher} --config conf/c.yaml --grace 1; echo $? > exit.code; sleep 30",
        root = p.root().display(),
        bin = bin("shard-worker").parent().unwrap().display(),
        launcher = script("run_parallel.sh").display()
    );
    let tmux = |args: &[&str]| Command::new("tmux").args(args).output().expect("tmux");
    let new = ["new-session", "-d", "-x", "100", "-y", "40", "-s", &session];
    assert!(tmux(&[&new[..], &["bash", "-c", &cmd]].concat())
        .status
        .success());
    wait_for(
        "both generators",
        std::time::Duration::from_secs(20),
        || p.read("pids").lines().count() >= 2,
    );
    // A worker that cannot answer: the launcher SIGKILLs it after the grace period.
    let worker: u32 = p
        .read("logs/c/launcher.status")
        .lines()
        .find(|l| l.contains(" start shard=0 "))
        .and_then(|l| l.rsplit_once("pid=")?.1.trim().parse().ok())
        .unwrap();
    signal(worker, libc::SIGSTOP);
    tmux(&["send-keys", "-t", &session, "C-c"]);
    wait_for(
        "the launcher to exit",
        std::time::Duration::from_secs(15),
        || p.path("exit.code").exists(),
    );
    let text =
        String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", &session]).stdout).into_owned();
    let _ = tmux(&["kill-session", "-t", &session]);
    assert_eq!(p.read("exit.code").trim(), "130", "{text}");
    assert!(
        !text.contains("Killed") && !text.contains("no such job"),
        "{text}"
    );
    assert!(
        text.contains("✗ shard 0/2 (pid")
            && text.contains("interrupted: exit 137, 0 items committed"),
        "{text}"
    );
}
