//! scripts/run_parallel.sh: PIDs, signals, exit codes, --only-failed, --dry-run, one launcher per run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::common::*;

fn launcher_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/run_parallel.sh")
}

fn bin_dir() -> PathBuf {
    Path::new(WORKER).parent().expect("bin dir").to_path_buf()
}

/// The launcher, run from the project root `p` with the test build's binaries.
fn launcher(p: &Project, args: &[&str]) -> Command {
    let mut c = Command::new(launcher_path());
    c.current_dir(p.root())
        .args(args)
        .env("SHARDRUN_BIN", bin_dir());
    c.env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX");
    c
}

fn launch(p: &Project, args: &[&str]) -> Output {
    launcher(p, args).output().expect("run launcher")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Worker pids recorded in the status file.
fn worker_pids(p: &Project, run: &str) -> Vec<i32> {
    p.read(&format!("logs/{run}/launcher.status"))
        .lines()
        .filter(|l| l.contains(" start shard="))
        .filter_map(|l| {
            l.rsplit_once("pid=")
                .and_then(|(_, v)| v.trim().parse().ok())
        })
        .collect()
}

/// A generator that records its pid and its background child's pid, then sleeps.
const SLEEPER: &str =
    "#!/bin/sh\necho $$ >> pids\nsleep 60 &\necho $! >> pids\nsleep 60\necho \"$1\"\n";

fn sleeper_config(p: &Project) {
    p.script("g.sh", SLEEPER);
    p.write(
        "conf/s.yaml",
        "run: s\nshards: 2\nitems: {range: {start: 0, end: 20}}\ngenerator: {command: [./g.sh, \"{key}\"], jobs: 2}\noutput: {columns: [k]}\n",
    );
}

fn assert_all_gone(p: &Project, run: &str) {
    let mut pids = worker_pids(p, run);
    pids.extend(
        p.read("pids")
            .lines()
            .filter_map(|l| l.trim().parse::<i32>().ok()),
    );
    assert!(!pids.is_empty());
    for pid in pids {
        wait_for(
            &format!("process {pid} to be gone"),
            Duration::from_secs(3),
            || !alive(pid),
        );
        // Nothing is left in its process group either (generators lead their own groups).
        // SAFETY: kill(2) with signal 0 only checks for existence.
        let group_alive = unsafe { libc::kill(-pid, 0) } == 0;
        if group_alive {
            let members: Vec<String> = std::fs::read_dir("/proc")
                .unwrap()
                .flatten()
                .filter_map(|e| {
                    let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
                    let rest = stat
                        .rsplit_once(')')?
                        .1
                        .split_whitespace()
                        .collect::<Vec<_>>();
                    (rest.get(2)? == &pid.to_string() && rest[0] != "Z")
                        .then(|| e.file_name().to_string_lossy().into_owned())
                })
                .collect();
            assert!(
                members.is_empty(),
                "process group {pid} still has {members:?}"
            );
        }
    }
}

#[test]
fn the_launcher_runs_every_shard_records_pids_and_merges() {
    let p = Project::new();
    p.write(
        "conf/e.yaml",
        "run: e\nshards: 3\nitems: {range: {start: 0, end: 30}}\ngenerator: {builtin: echo, params: {rows: 2}}\n",
    );
    let out = launch(&p, &["--config", "conf/e.yaml", "--merge"]);
    assert_exit(&out, 0, "launcher", p.root());
    let text = stdout(&out);
    for i in 0..3 {
        assert!(text.contains(&format!("✓ shard {i}/3 (pid ")), "{text}");
    }
    assert!(text.contains("ok: 10 items, 20 rows"), "{text}");
    assert_eq!(p.read("data/e/combined.csv").lines().count(), 61);
    let status = p.read("logs/e/launcher.status");
    assert_eq!(status.matches(" end shard=").count(), 3, "{status}");
    assert!(status.contains("exit=0 state=ok"), "{status}");
    // The worker's own log is the only place its lines go: no duplicates in a stderr file.
    assert_eq!(p.read("logs/e/shard_0_of_3.stderr"), "");
}

#[test]
fn sigint_to_the_launcher_exits_130_and_leaves_no_process() {
    for (sig, code) in [(libc::SIGINT, 130), (libc::SIGTERM, 143)] {
        let p = Project::new();
        sleeper_config(&p);
        let mut child = spawn(launcher(&p, &["--config", "conf/s.yaml"]));
        wait_for("4 generators", Duration::from_secs(20), || {
            p.read("pids").lines().count() >= 8
        });
        let t = Instant::now();
        signal(child.id(), sig);
        let status = wait_child(&mut child, Duration::from_secs(10));
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "took {:?}",
            t.elapsed()
        );
        assert_eq!(status.code(), Some(code));
        let out = child.wait_with_output().unwrap();
        assert!(stdout(&out).contains("interrupted"), "{}", stdout(&out));
        assert_all_gone(&p, "s");
        let st = p.read("logs/s/launcher.status");
        assert_eq!(st.matches("state=interrupted").count(), 2, "{st}");
    }
}

/// A closed terminal: SIGHUP reaches the launcher and its workers. Before, both died at once:
/// no drain, no `finish` line, generators left to the guard.
#[test]
fn sighup_drains_like_sigterm_and_exits_129() {
    let p = Project::new();
    sleeper_config(&p);
    let mut child = spawn(launcher(&p, &["--config", "conf/s.yaml"]));
    wait_for(
        "4 generators and 2 recorded workers",
        Duration::from_secs(20),
        || p.read("pids").lines().count() >= 8 && worker_pids(&p, "s").len() == 2,
    );
    let t = Instant::now();
    // The workers first, so that their first signal is SIGHUP, not the launcher's SIGTERM.
    for pid in worker_pids(&p, "s") {
        signal(pid as u32, libc::SIGHUP);
    }
    signal(child.id(), libc::SIGHUP);
    let status = wait_child(&mut child, Duration::from_secs(10));
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(status.code(), Some(129));
    assert_all_gone(&p, "s");
    let st = p.read("logs/s/launcher.status");
    assert_eq!(st.matches("state=interrupted").count(), 2, "{st}");
    for i in 0..2 {
        let log = p.read(&format!("logs/s/shard_{i}_of_2.log"));
        assert!(log.contains(" signal signal=SIGHUP"), "{log}");
        assert!(log.contains(" finish status=interrupted"), "{log}");
    }
}

#[test]
fn a_failed_shard_is_named_and_only_failed_reruns_just_that_shard() {
    let p = Project::new();
    p.script("g.sh", "#!/bin/sh\nif [ \"$1\" = 5 ] && [ ! -f fixed ]; then echo 'no luck' >&2; exit 4; fi\necho \"$1\"\n");
    p.write(
        "conf/f.yaml",
        "run: f\nshards: 3\nitems: {range: {start: 0, end: 9}}\ngenerator: {command: [./g.sh, \"{key}\"], retries: 0}\noutput: {columns: [k]}\n",
    );
    let out = launch(&p, &["--config", "conf/f.yaml"]);
    assert_exit(&out, 1, "a failing shard", p.root());
    let text = stdout(&out);
    assert!(
        text.contains("✗ shard 1/3")
            && text.contains("failed: exit 1: 1 of 3 items failed; first: key 5: exit code 4"),
        "{text}"
    );
    assert!(text.contains("--only-failed"), "{text}");
    let before: Vec<String> = [0, 2]
        .iter()
        .map(|i| p.read(&format!("logs/f/shard_{i}_of_3.log")))
        .collect();
    p.write("fixed", "");
    let out = launch(&p, &["--config", "conf/f.yaml", "--only-failed"]);
    assert_exit(&out, 0, "--only-failed", p.root());
    let text = stdout(&out) + &stderr(&out);
    assert!(text.contains("re-running shard(s) 1 of 3"), "{text}");
    assert!(
        !text.contains("shard 0/3") && !text.contains("shard 2/3"),
        "{text}"
    );
    let after: Vec<String> = [0, 2]
        .iter()
        .map(|i| p.read(&format!("logs/f/shard_{i}_of_3.log")))
        .collect();
    assert_eq!(before, after, "shards that succeeded must not run again");
    let out = launch(&p, &["--config", "conf/f.yaml", "--only-failed"]);
    assert_exit(&out, 0, "nothing to do", p.root());
    assert!(stdout(&out).contains("nothing to do"), "{}", stdout(&out));
}

#[test]
fn only_failed_refuses_a_changed_configuration_and_a_new_shard_count() {
    let p = Project::new();
    let cfg = "run: c\nitems: {range: {start: 0, end: 4}}\ngenerator: {builtin: echo}\n";
    p.write("conf/c.yaml", cfg);
    assert_exit(
        &launch(&p, &["--config", "conf/c.yaml", "--num-shards", "2"]),
        0,
        "first run",
        p.root(),
    );
    // A new revision of the generator is not a new dataset: --only-failed goes on.
    p.write(
        "conf/c.yaml",
        &cfg.replace(
            "{builtin: echo}",
            "{builtin: echo, version: \"2\", retries: 5}",
        ),
    );
    let out = launch(&p, &["--config", "conf/c.yaml", "--only-failed"]);
    assert_exit(&out, 0, "a new generator.version", p.root());
    // A new identity is: the workers' preflight names what changed, and nothing starts.
    p.write("conf/c.yaml", &cfg.replace("end: 4", "end: 5"));
    let out = launch(&p, &["--config", "conf/c.yaml", "--only-failed"]);
    assert_exit(&out, 2, "changed config", p.root());
    let e = stderr(&out);
    assert!(
        e.contains("different configuration") && e.contains("changed items"),
        "{e}"
    );
    // The refusal's way out, pasted as printed (--force does not go with --only-failed).
    let over = e
        .lines()
        .find_map(|l| {
            l.split_once("cached items are reused): ")
                .map(|(_, c)| c.to_string())
        })
        .unwrap_or_else(|| panic!("no start-over command in:\n{e}"));
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(&over)
        .current_dir(p.root())
        .env("SHARDRUN_BIN", bin_dir())
        .output()
        .unwrap();
    assert_exit(&out, 0, &over, p.root());
    let out = launch(&p, &["--config", "conf/c.yaml", "--num-shards", "3"]);
    assert_exit(&out, 2, "new shard count", p.root());
    assert!(
        stderr(&out).contains("outputs from 2 shards"),
        "{}",
        stderr(&out)
    );
    let out = launch(
        &p,
        &[
            "--config",
            "conf/c.yaml",
            "--num-shards",
            "3",
            "--force",
            "--merge",
        ],
    );
    assert_exit(&out, 0, "--force with a new shard count", p.root());
    assert_eq!(p.read("data/c/combined.csv").lines().count(), 6);
}

#[test]
fn dry_run_prints_the_plan_and_starts_nothing() {
    let p = Project::new();
    p.write(
        "conf/d.yaml",
        "run: d\nitems: {list: [a, b, c, d, e]}\ngenerator: {builtin: echo}\n",
    );
    let out = launch(
        &p,
        &["--config", "conf/d.yaml", "--num-shards", "2", "--dry-run"],
    );
    assert_exit(&out, 0, "dry run", p.root());
    let text = stdout(&out);
    assert!(
        text.contains("shard 0/2") && text.contains("3 items, a … c"),
        "{text}"
    );
    assert!(
        text.contains("shard 1/2") && text.contains("2 items, d … e"),
        "{text}"
    );
    assert!(
        !p.path("data").exists() && !p.path("logs").exists(),
        "{}",
        p.listing()
    );
}

#[test]
fn a_second_launcher_on_the_same_run_refuses() {
    let p = Project::new();
    sleeper_config(&p);
    let mut first = spawn(launcher(&p, &["--config", "conf/s.yaml"]));
    wait_for(
        "the first launcher's workers",
        Duration::from_secs(20),
        || !p.read("pids").is_empty(),
    );
    let out = launch(&p, &["--config", "conf/s.yaml"]);
    assert_exit(&out, 2, "second launcher", p.root());
    assert!(
        stderr(&out).contains("another launcher"),
        "{}",
        stderr(&out)
    );
    signal(first.id(), libc::SIGTERM);
    assert_eq!(
        wait_child(&mut first, Duration::from_secs(10)).code(),
        Some(143)
    );
    assert_all_gone(&p, "s");
}

#[test]
fn bad_launcher_arguments_exit_2() {
    let p = Project::new();
    for args in [
        &["--num-shards", "0"][..],
        &["--bogus"],
        &["--config", "missing.yaml"],
        &["--stagger", "x"],
    ] {
        let out = launch(&p, args);
        assert_exit(&out, 2, &format!("{args:?}"), p.root());
        assert!(stderr(&out).contains("error:"), "{}", stderr(&out));
    }
    let out = launch(&p, &["--help"]);
    assert_exit(&out, 0, "--help", p.root());
    assert!(stdout(&out).contains("--only-failed"));
}

/// Ctrl-C in a real terminal: the launcher and its workers all get SIGINT from the terminal.
#[test]
fn ctrl_c_in_a_terminal_stops_the_run_cleanly() {
    if Command::new("tmux").arg("-V").output().is_err() {
        panic!("tmux is required for this test (scripts/test.sh installs it)");
    }
    let p = Project::new();
    sleeper_config(&p);
    let session = format!("shardrun-test-{}", std::process::id());
    let cmd = format!(
        "cd {root} && SHARDRUN_BIN={bin} {launcher} --config conf/s.yaml; echo $? > exit.code; sleep 30",
        root = p.root().display(),
        bin = bin_dir().display(),
        launcher = launcher_path().display()
    );
    let ok = Command::new("tmux")
        .args([
            "new-session",
            "-d",
            "-x",
            "200",
            "-y",
            "50",
            "-s",
            &session,
            "bash",
            "-c",
            &cmd,
        ])
        .status()
        .unwrap();
    assert!(ok.success());
    let kill_session = || {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &session])
            .status();
    };
    wait_for("4 generators", Duration::from_secs(20), || {
        p.read("pids").lines().count() >= 8
    });
    let t = Instant::now();
    Command::new("tmux")
        .args(["send-keys", "-t", &session, "C-c"])
        .status()
        .unwrap();
    wait_for("the launcher to exit", Duration::from_secs(10), || {
        p.path("exit.code").exists()
    });
    let elapsed = t.elapsed();
    let screen = String::from_utf8_lossy(
        &Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &session])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    kill_session();
    assert_eq!(p.read("exit.code").trim(), "130", "{screen}");
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    assert!(
        screen.contains("interrupted") && screen.contains("✗ shard 1/2 (pid"),
        "{screen}"
    );
    assert_all_gone(&p, "s");
}

#[test]
fn after_the_grace_period_no_generator_survives() {
    let p = Project::new();
    // Generators that ignore SIGTERM and keep a background child in their group.
    p.script(
        "g.sh",
        "#!/bin/sh\ntrap '' TERM\necho $$ >> pids\nsleep 60 &\necho $! >> pids\nwait\n",
    );
    p.write(
        "conf/s.yaml",
        "run: s\nshards: 2\nitems: {range: {start: 0, end: 20}}\ngenerator: {command: [./g.sh], jobs: 2}\noutput: {columns: [k]}\n",
    );
    let mut child = spawn(launcher(&p, &["--config", "conf/s.yaml", "--grace", "0"]));
    wait_for("4 generators", Duration::from_secs(20), || {
        p.read("pids").lines().count() >= 8
    });
    signal(child.id(), libc::SIGINT);
    assert_eq!(
        wait_child(&mut child, Duration::from_secs(10)).code(),
        Some(130)
    );
    assert_all_gone(&p, "s");
}

/// A worker that does not respond at all (here: stopped) is SIGKILLed after the grace period.
/// Its generator's leader dies with it (parent-death signal), but a background child of the
/// generator does not get that signal: the launcher kills the worker's generator groups too.
#[test]
fn a_hung_worker_killed_after_the_grace_period_leaves_no_generator_behind() {
    let p = Project::new();
    p.script(
        "g.sh",
        "#!/bin/sh\necho $$ >> pids\nsleep 60 &\necho $! >> pids\nwait\n",
    );
    p.write(
        "conf/h.yaml",
        "run: h\nshards: 1\nitems: {range: {start: 0, end: 5}}\ngenerator: {command: [./g.sh], jobs: 1}\noutput: {columns: [k]}\n",
    );
    let mut child = spawn(launcher(&p, &["--config", "conf/h.yaml", "--grace", "1"]));
    wait_for(
        "the generator and its child",
        Duration::from_secs(20),
        || p.read("pids").lines().count() >= 2,
    );
    let workers = worker_pids(&p, "h");
    assert_eq!(workers.len(), 1, "{workers:?}");
    signal(workers[0] as u32, libc::SIGSTOP);
    signal(child.id(), libc::SIGINT);
    assert_eq!(
        wait_child(&mut child, Duration::from_secs(15)).code(),
        Some(130)
    );
    assert_all_gone(&p, "h");
}
