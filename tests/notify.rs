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

/// Words a --notify command may be given that a record of it could mangle: spaces, quotes of both
/// kinds, ';' inside a word, shell syntax that must never be evaluated, backslashes, line breaks
/// and other control characters, UTF-8, empty words, words that look like options or log fields.
/// (A word that is exactly ';' ends the command, so it cannot be one.)
pub(crate) const HOSTILE_ARGS: &[&str] = &[
    "a b",
    "it's",
    "\"dq\"",
    "a;b",
    "; ",
    "';'",
    "$HOME",
    "`id`",
    "$(id)",
    "\\",
    "\\\\n",
    "line\nbreak",
    "tab\there",
    "cr\rx",
    "\u{1}\u{7f}",
    "é 日本 🎉",
    "",
    "-x",
    "--",
    "--no-notify",
    "--notify",
    "=",
    "$'\\x41'",
    "'",
    "''",
    " lead",
    "trail ",
    "*",
    "!x",
    "a'b\"c\\d",
    "notify_cmd=x sbatch=\"y\"",
];

/// A --notify command that writes its arguments, NUL-separated, to argv.<n>.bin (n: 0 for the first
/// notice, 1 for the next, ...).
pub(crate) const ARGV_RECORDER: &str =
    "#!/bin/sh\ncat >/dev/null\nn=$(ls argv.*.bin 2>/dev/null | wc -l)\n\
     for a in \"$@\"; do printf '%s\\0' \"$a\"; done > argv.$n.tmp\nmv argv.$n.tmp argv.$n.bin\n";

/// The arguments of each notice ARGV_RECORDER recorded, in order.
pub(crate) fn recorded_notices(p: &Project) -> Vec<Vec<String>> {
    (0..)
        .map_while(|n| std::fs::read(p.path(&format!("argv.{n}.bin"))).ok())
        .map(|bytes| {
            let mut words: Vec<String> = bytes
                .split(|b| *b == 0)
                .map(|w| String::from_utf8_lossy(w).into_owned())
                .collect();
            words.pop(); // after the last NUL
            words
        })
        .collect()
}

fn hostile_notify() -> Vec<&'static str> {
    let mut v = vec!["--notify", "./argv.sh"];
    v.extend_from_slice(HOSTILE_ARGS);
    v.push(";");
    v
}

fn hostile_argv() -> Vec<String> {
    HOSTILE_ARGS.iter().map(|s| s.to_string()).collect()
}

/// Regression: --only-failed (and the printed hint) forgot the --notify command of the run, so
/// the re-run ended with no notice. It is recorded with the launch, exactly, whatever its words.
#[test]
fn run_parallel_remembers_the_notify_command_until_a_new_one_or_no_notify() {
    let p = Project::new();
    config(&p, None);
    p.script("argv.sh", ARGV_RECORDER);
    p.script(
        "g.sh",
        "#!/bin/sh\n[ -e fail ] && [ \"$1\" = 3 ] && exit 9\necho \"$1\"\n",
    );
    p.write("fail", "");
    let run = |args: &[&str]| {
        let mut all = vec!["--config", "n.yaml"];
        all.extend_from_slice(args);
        launcher(&p, "run_parallel.sh", &all).output().unwrap()
    };
    let mut first = vec!["--num-shards", "2"];
    first.extend(hostile_notify());
    let out = run(&first);
    assert_exit(&out, 1, "a failed shard, with --notify", p.root());
    assert_eq!(recorded_notices(&p), vec![hostile_argv()]);
    let hint = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            l.split("re-run only those shards: ")
                .nth(1)
                .map(str::to_string)
        })
        .expect("a next: hint");
    assert!(hint.ends_with("--config n.yaml --only-failed"), "{hint}");

    let out = run(&["--only-failed", "--dry-run"]);
    assert_exit(&out, 0, "--only-failed --dry-run", p.root());
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("--notify command (remembered from the launch of "),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The hint, pasted as printed (its words as a shell splits them), sends the same notice.
    std::fs::remove_file(p.path("fail")).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(&hint)
        .current_dir(p.root())
        .env("SHARDRUN_BIN", Path::new(WORKER).parent().unwrap())
        .output()
        .unwrap();
    assert_exit(&out, 0, "the pasted --only-failed hint", p.root());
    assert_eq!(recorded_notices(&p), vec![hostile_argv(); 2]);

    // A new --notify replaces it, and is remembered in turn.
    let out = run(&["--force", "--notify", "./argv.sh", "new one", ";"]);
    assert_exit(&out, 0, "--force with a new --notify", p.root());
    let out = run(&["--force"]);
    assert_exit(&out, 0, "--force with the remembered one", p.root());
    let n = recorded_notices(&p);
    assert_eq!(n.len(), 4);
    assert_eq!(n[2], ["new one"]);
    assert_eq!(n[3], ["new one"]);

    // --no-notify sends none, and the run forgets it.
    let out = run(&["--force", "--no-notify"]);
    assert_exit(&out, 0, "--no-notify", p.root());
    let out = run(&["--force"]);
    assert_exit(&out, 0, "after --no-notify", p.root());
    assert_eq!(recorded_notices(&p).len(), 4);
    let out = run(&["--no-notify", "--notify", "x", ";"]);
    assert_exit(&out, 2, "--notify with --no-notify", p.root());
    assert!(stderr(&out).contains("contradict"), "{}", stderr(&out));

    // A damaged record is refused, with what to do.
    let status = p.read("logs/n/launcher.status");
    p.write(
        "logs/n/launcher.status",
        &format!(
            "{status}2099-01-01T00:00:00.000Z launch run=n num_shards=2 shards=0,1 notify_cmd=\"'x\"\n"
        ),
    );
    let out = run(&["--force"]);
    assert_exit(&out, 2, "a damaged notify record", p.root());
    assert!(
        stderr(&out).contains("--notify command recorded in logs/n/launcher.status is damaged"),
        "{}",
        stderr(&out)
    );
}
