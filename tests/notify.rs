//! --notify CMD ... ';' on monitor --follow and the launchers: the command gets the run's summary
//! as JSON and SHARDRUN_* variables; a failing or hanging command never changes the exit code
//! nor blocks past its timeout.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

const MONITOR: &str = env!("CARGO_BIN_EXE_monitor");

fn script_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

fn launcher(p: &Project, script: &str, args: &[&str]) -> Command {
    let mut c = Command::new(script_path(script));
    c.current_dir(p.root())
        .args(args)
        .env("SHARDRUN_BIN", Path::new(WORKER).parent().unwrap())
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .env_remove("SHARDRUN_NOTIFY_TIMEOUT");
    c
}

/// A run of 10 items; `bad` fails.
fn config(p: &Project, bad: Option<u32>) {
    let fail = bad
        .map(|k| format!("[ \"$1\" = {k} ] && exit 9\n"))
        .unwrap_or_default();
    p.script("g.sh", &format!("#!/bin/sh\n{fail}echo \"$1\"\n"));
    p.write(
        "n.yaml",
        "run: n\nitems: {range: {start: 0, end: 10}}\ngenerator: {command: [./g.sh, \"{key}\"], retries: 0}\noutput: {columns: [k]}\n",
    );
    // Writes what it was given next to the project, with its arguments.
    p.script(
        "record.sh",
        "#!/bin/sh\ncat > notice.json\nenv | grep '^SHARDRUN_' | sort > notice.env\nprintf '%s\\n' \"$@\" > notice.args\n",
    );
}

fn env_of(p: &Project) -> String {
    p.read("notice.env")
}

#[test]
fn monitor_follow_notify_gives_the_command_the_summary_as_json_and_variables() {
    let p = Project::new();
    config(&p, Some(4));
    p.run_shard("n.yaml", 0, 2, &[], 1);
    p.run_shard("n.yaml", 1, 2, &[], 0);
    let out = Command::new(MONITOR)
        .current_dir(p.root())
        .args(["--root", ".", "--run", "n", "--follow", "--interval", "0.2"])
        .args([
            "--notify",
            "./record.sh",
            "two words",
            "--run",
            ";",
            "--json",
        ])
        .output()
        .unwrap();
    // The monitor's own exit code (1: a shard failed); `--run` after --notify was the command's.
    assert_exit(&out, 1, "monitor --follow --notify", p.root());
    assert_eq!(p.read("notice.args"), "two words\n--run\n");
    let notice: serde_json::Value = serde_json::from_str(&p.read("notice.json")).unwrap();
    assert_eq!(notice["run"], "n");
    assert_eq!(notice["state"], "failed");
    assert_eq!(notice["exit_code"], 1);
    assert_eq!(notice["summary"]["done"], 1);
    assert_eq!(notice["summary"]["failed"], 1);
    assert_eq!(notice["summary"]["items_done"], 9);
    assert_eq!(notice["summary"]["items_failed"], 1);
    assert_eq!(
        notice["shards_not_done"],
        serde_json::json!([{"shard": 0, "state": "failed"}])
    );
    let env = env_of(&p);
    for var in [
        "SHARDRUN_RUN=n",
        "SHARDRUN_STATE=failed",
        "SHARDRUN_EXIT_CODE=1",
        "SHARDRUN_NUM_SHARDS=2",
        "SHARDRUN_SHARDS_DONE=1",
        "SHARDRUN_SHARDS_FAILED=1",
        "SHARDRUN_ITEMS_DONE=9",
        "SHARDRUN_ITEMS_TOTAL=10",
        "SHARDRUN_ITEMS_FAILED=1",
        "SHARDRUN_ROWS=9",
    ] {
        assert!(env.lines().any(|l| l == var), "{var} missing in:\n{env}");
    }
    // Without its ';' the command's words are ambiguous: refused, with the form to use.
    let out = Command::new(MONITOR)
        .args([
            "--root",
            ".",
            "--run",
            "n",
            "--follow",
            "--notify",
            "./record.sh",
        ])
        .current_dir(p.root())
        .output()
        .unwrap();
    assert_exit(&out, 2, "--notify without ;", p.root());
    assert!(
        stderr(&out).contains("no ';' ends the command"),
        "{}",
        stderr(&out)
    );
    let out = Command::new(MONITOR)
        .args(["--root", ".", "--run", "n", "--notify", "./record.sh", ";"])
        .current_dir(p.root())
        .output()
        .unwrap();
    assert_exit(&out, 2, "--notify without --follow", p.root());
    assert!(stderr(&out).contains("--follow"), "{}", stderr(&out));
}

#[test]
fn run_parallel_notify_gets_the_json_and_a_failing_command_keeps_the_exit_code() {
    let p = Project::new();
    config(&p, None);
    let out = launcher(
        &p,
        "run_parallel.sh",
        &[
            "--config",
            "n.yaml",
            "--num-shards",
            "2",
            "--notify",
            "./record.sh",
            ";",
        ],
    )
    .output()
    .unwrap();
    assert_exit(&out, 0, "launcher --notify", p.root());
    let notice: serde_json::Value = serde_json::from_str(&p.read("notice.json")).unwrap();
    assert_eq!(notice["state"], "done");
    assert_eq!(notice["exit_code"], 0);
    assert_eq!(notice["summary"]["done"], 2);
    assert_eq!(notice["summary"]["rows"], 10);
    assert!(env_of(&p).contains("SHARDRUN_STATE=done\n"));

    // A command that fails, and one that cannot be started: reported, exit code unchanged.
    for cmd in [&["sh", "-c", "exit 7"][..], &["./no-such-notifier"][..]] {
        let mut args = vec![
            "--config",
            "n.yaml",
            "--num-shards",
            "2",
            "--force",
            "--notify",
        ];
        args.extend_from_slice(cmd);
        args.push(";");
        let out = launcher(&p, "run_parallel.sh", &args).output().unwrap();
        assert_exit(&out, 0, "failing notify command", p.root());
        let err = stderr(&out);
        assert!(
            err.contains("--notify command") && err.contains("exit code is unchanged"),
            "{err}"
        );
    }

    // A failed run notifies with its own exit code (1), which stays 1.
    config(&p, Some(3));
    let out = launcher(
        &p,
        "run_parallel.sh",
        &[
            "--config",
            "n.yaml",
            "--num-shards",
            "2",
            "--force",
            "--notify",
            "sh",
            "-c",
            "exit 0",
            ";",
        ],
    )
    .output()
    .unwrap();
    assert_exit(&out, 1, "failed run with --notify", p.root());

    // Ambiguous or misplaced forms are refused before anything runs.
    for (args, want) in [
        (
            &["--notify", "./record.sh", "--num-shards", "2"][..],
            "no ';' ends the command",
        ),
        (&["--notify", ";"][..], "no command before ';'"),
        (
            &["--notify", "a", ";", "--notify", "b", ";"][..],
            "given twice",
        ),
    ] {
        let mut all = vec!["--config", "n.yaml"];
        all.extend_from_slice(args);
        let out = launcher(&p, "run_parallel.sh", &all).output().unwrap();
        assert_exit(&out, 2, "bad --notify", p.root());
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
    }
    let out = launcher(
        &p,
        "run_slurm.sh",
        &[
            "--config",
            "n.yaml",
            "--num-shards",
            "2",
            "--notify",
            "true",
            ";",
        ],
    )
    .output()
    .unwrap();
    assert_exit(&out, 2, "run_slurm --notify without --wait", p.root());
    assert!(stderr(&out).contains("--wait"), "{}", stderr(&out));
}

#[test]
fn a_hanging_notify_command_is_killed_with_its_group_at_the_timeout() {
    let p = Project::new();
    config(&p, None);
    // The command starts a child of its own, then hangs; both must be gone after the timeout.
    p.script(
        "hang.sh",
        "#!/bin/sh\nsleep 300 &\necho $! > child.pid\necho $$ > notifier.pid\nsleep 300\n",
    );
    let started = Instant::now();
    let out = launcher(
        &p,
        "run_parallel.sh",
        &[
            "--config",
            "n.yaml",
            "--num-shards",
            "2",
            "--notify",
            "./hang.sh",
            ";",
        ],
    )
    .env("SHARDRUN_NOTIFY_TIMEOUT", "1")
    .output()
    .unwrap();
    let took = started.elapsed();
    assert_exit(&out, 0, "hanging notify", p.root());
    assert!(took < Duration::from_secs(30), "the launcher took {took:?}");
    assert!(
        stderr(&out).contains("did not end within 1 s"),
        "{}",
        stderr(&out)
    );
    for f in ["child.pid", "notifier.pid"] {
        let pid: i32 = p.read(f).trim().parse().unwrap();
        wait_for(&format!("{f} to be gone"), Duration::from_secs(5), || {
            !alive(pid)
        });
    }
    let out = launcher(
        &p,
        "run_parallel.sh",
        &["--config", "n.yaml", "--notify", "x", ";"],
    )
    .env("SHARDRUN_NOTIFY_TIMEOUT", "0")
    .output()
    .unwrap();
    assert_exit(&out, 2, "zero timeout", p.root());
}
