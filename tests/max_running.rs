//! scripts/run_parallel.sh --max-running: N shards through at most P workers, queued shards are
//! `pending`, an interruption leaves them for --only-failed.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::common::*;

fn launcher(p: &Project, args: &[&str]) -> Command {
    let mut c = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/run_parallel.sh"));
    c.current_dir(p.root())
        .args(args)
        .env("SHARDRUN_BIN", Path::new(WORKER).parent().expect("bin dir"));
    c.env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX");
    c
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// 8 shards of 2 items, each item sleeping `sleep` seconds.
fn slow_config(p: &Project, sleep: &str) {
    p.script("g.sh", &format!("#!/bin/sh\nsleep {sleep}\necho \"$1\"\n"));
    p.write(
        "conf/m.yaml",
        "run: m\nshards: 8\nitems: {range: {start: 0, end: 16}}\ngenerator: {command: [./g.sh, \"{key}\"], jobs: 1}\noutput: {columns: [k]}\n",
    );
}

/// The live `shard-worker` children of process `parent`, from /proc.
fn workers_of(parent: u32) -> usize {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return 0;
    };
    rd.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            let Some((head, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            head.ends_with("(shard-worker")
                && fields.first() != Some(&"Z")
                && fields.get(1) == Some(&parent.to_string().as_str())
        })
        .count()
}

/// The most shards the status file shows started and not yet ended at once.
fn most_at_once(status: &str) -> i32 {
    let (mut now, mut most) = (0, 0);
    for l in status.lines() {
        if l.contains(" start shard=") {
            now += 1;
        } else if l.contains(" end shard=") {
            now -= 1;
        }
        most = most.max(now);
    }
    most
}

#[test]
fn max_running_2_never_has_more_than_2_workers_and_runs_every_shard() {
    let p = Project::new();
    slow_config(&p, "0.2");
    let mut child = spawn(launcher(
        &p,
        &["--config", "conf/m.yaml", "--max-running", "2"],
    ));
    let mut most = 0;
    let status = loop {
        most = most.max(workers_of(child.id()));
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let out = child.wait_with_output().expect("output");
    assert_eq!(status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(most, 2, "workers alive at once, sampled from /proc");
    let st = p.read("logs/m/launcher.status");
    assert_eq!(most_at_once(&st), 2, "{st}");
    assert!(st.contains(" max_running=2 "), "{st}");
    assert_eq!(st.matches("state=ok").count(), 8, "{st}");
    assert!(
        stdout(&out).contains("8 shard(s): 8 ok, 0 not ok; 16 items, 16 rows"),
        "{}",
        stdout(&out)
    );
    let data = String::from_utf8(p.dataset("m")).expect("utf8");
    assert_eq!(data.lines().count(), 16, "{data}");
}

#[test]
fn ctrl_c_while_shards_are_queued_leaves_them_pending_for_only_failed() {
    let p = Project::new();
    slow_config(&p, "0.5");
    let mut child = spawn(launcher(
        &p,
        &["--config", "conf/m.yaml", "--max-running", "2"],
    ));
    // Started, and working: the launcher has recorded the 2 starts and each worker has begun an
    // the shard (its start line logged, its signal handling in place). A Ctrl-C before that point
    // reaches a worker that has nothing to report yet, which the monitor cannot tell from a
    // queued shard.
    wait_for("2 workers working", Duration::from_secs(20), || {
        p.read("logs/m/launcher.status")
            .matches(" start shard=")
            .count()
            == 2
            && (0..2).all(|i| {
                std::fs::read_to_string(p.path(&format!("logs/m/shard_{i}_of_8.log")))
                    .is_ok_and(|log| log.contains(" start run=m "))
            })
    });
    signal(child.id(), libc::SIGINT);
    let status = wait_child(&mut child, Duration::from_secs(15));
    let out = child.wait_with_output().expect("output");
    let text = stdout(&out);
    assert_eq!(status.code(), Some(130), "{text}{}", stderr(&out));
    let st = p.read("logs/m/launcher.status");
    assert_eq!(st.matches(" start shard=").count(), 2, "{st}");
    assert_eq!(st.matches("state=interrupted").count(), 2, "{st}");
    assert!(
        st.contains(" pending shards=2,3,4,5,6,7 num_shards=8"),
        "{st}"
    );
    assert!(text.contains("(6 never started)"), "{text}");
    assert!(text.contains("--only-failed"), "{text}");
    // The monitor counts the never-started shards as pending, with their planned items.
    let mon = Command::new(Path::new(WORKER).with_file_name("monitor"))
        .args(["--run", "m", "--json"])
        .current_dir(p.root())
        .output()
        .expect("monitor");
    let snap: serde_json::Value = serde_json::from_slice(&mon.stdout).expect("json");
    assert_eq!(snap["summary"]["pending"], 6, "{snap}");
    assert_eq!(snap["summary"]["items_total"], 16, "{snap}");

    let again = launcher(
        &p,
        &[
            "--config",
            "conf/m.yaml",
            "--only-failed",
            "--max-running",
            "2",
        ],
    )
    .output()
    .expect("launcher");
    assert_exit(&again, 0, "--only-failed", p.root());
    assert!(
        stdout(&again).contains("8 shard(s): 8 ok, 0 not ok; 16 items, 16 rows"),
        "{}",
        stdout(&again)
    );
    let data = String::from_utf8(p.dataset("m")).expect("utf8");
    assert_eq!(data.lines().count(), 16, "{data}");
}

#[test]
fn a_bad_max_running_is_a_usage_error() {
    let p = Project::new();
    slow_config(&p, "0");
    for bad in ["0", "-1", "two", "100001"] {
        let out = launcher(&p, &["--config", "conf/m.yaml", "--max-running", bad])
            .output()
            .expect("launcher");
        assert_exit(&out, 2, &format!("--max-running {bad}"), p.root());
        assert!(
            stderr(&out).contains("--max-running must be"),
            "{}",
            stderr(&out)
        );
    }
}
