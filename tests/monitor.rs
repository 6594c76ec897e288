//! monitor: states from real workers (died included), JSON, follow exit codes, a real terminal.

use std::process::Command;
use std::time::Duration;

use crate::common::*;

const MONITOR: &str = env!("CARGO_BIN_EXE_monitor");

fn monitor(p: &Project, args: &[&str]) -> std::process::Output {
    Command::new(MONITOR)
        .arg("--root")
        .arg(p.root())
        .args(args)
        .output()
        .expect("monitor")
}

fn json(p: &Project, run: &str) -> serde_json::Value {
    let out = monitor(p, &["--run", run, "--json"]);
    assert_exit(&out, 0, "monitor --json", p.root());
    serde_json::from_slice(&out.stdout).expect("valid JSON")
}

fn slow_config(p: &Project, run: &str, items: u32, fail_key: Option<&str>) -> String {
    let fail = fail_key
        .map(|k| format!("[ \"$1\" = {k} ] && exit 9\n"))
        .unwrap_or_default();
    p.script(
        &format!("{run}.sh"),
        &format!("#!/bin/sh\n{fail}sleep 0.05\necho \"$1\"\n"),
    );
    let cfg = format!("{run}.yaml");
    p.write(
        &cfg,
        &format!("run: {run}\nitems: {{range: {{start: 0, end: {items}}}}}\ngenerator: {{command: [./{run}.sh, \"{{key}}\"], retries: 0}}\noutput: {{columns: [k]}}\n"),
    );
    cfg
}

#[test]
fn states_come_from_the_logs_with_json_fields_and_pending_shards() {
    let p = Project::new();
    let cfg = slow_config(&p, "j", 9, Some("4"));
    p.run_shard(&cfg, 0, 3, &[], 0);
    p.run_shard(&cfg, 1, 3, &[], 1);
    let j = json(&p, "j");
    assert_eq!(j["num_shards"], 3);
    let shards = j["shards"].as_array().unwrap();
    for s in shards {
        for k in [
            "shard",
            "state",
            "items_done",
            "items_total",
            "rows",
            "current",
            "eta_s",
            "pid",
        ] {
            assert!(s.get(k).is_some(), "missing {k} in {s}");
        }
    }
    let states: Vec<&str> = shards
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["done", "failed", "pending"]);
    assert_eq!(shards[0]["items_done"], 3);
    assert_eq!(shards[1]["items_failed"], 1);
    // The shard that has not started counts with its planned items (from the other shards'
    // manifests), so the totals cover the whole run.
    assert_eq!(shards[2]["items_total"], 3, "{}", shards[2]);
    let sum = &j["summary"];
    assert_eq!(
        (
            sum["done"].as_u64(),
            sum["failed"].as_u64(),
            sum["pending"].as_u64()
        ),
        (Some(1), Some(1), Some(1))
    );
    assert_eq!(sum["rows"], 5);
    assert_eq!(sum["items_total"], 9);
    assert_eq!(sum["items_total_complete"], true);
    assert_eq!(sum["items_failed"], 1);
    // The table names every shard and the summary.
    let out = monitor(&p, &["--run", "j"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("✓ shard   0/3")
            && text.contains("✗ shard   1/3")
            && text.contains("1 item failed")
            && text.contains("· shard   2/3 pending       0.0%         0/3")
            && text.contains("1 pending")
            && text.contains("5/9 items, 1 item failed"),
        "{text}"
    );
}

#[test]
fn a_worker_killed_with_kill_9_is_shown_as_died() {
    let p = Project::new();
    let cfg = slow_config(&p, "k", 400, None);
    let mut worker = spawn(p.worker(&cfg, &["--shard-index", "0", "--num-shards", "1"]));
    wait_for("some progress", Duration::from_secs(20), || {
        p.read("logs/k/shard_0_of_1.log").contains(" item ")
    });
    let j = json(&p, "k");
    let s = &j["shards"][0];
    assert_eq!(s["state"], "running", "{s}");
    assert_eq!(s["pid"], worker.id());
    assert!(s["rss_bytes"].as_u64().unwrap() > 0, "{s}");
    signal(worker.id(), libc::SIGKILL);
    let _ = worker.wait();
    let j = json(&p, "k");
    assert_eq!(j["shards"][0]["state"], "died", "{}", j["shards"][0]);
    assert_eq!(j["summary"]["died"], 1);
}

#[test]
fn follow_exits_0_when_every_shard_succeeds_and_1_when_one_fails() {
    for (fail, want) in [(None, 0), (Some("3"), 1)] {
        let p = Project::new();
        let cfg = slow_config(&p, "f", 12, fail);
        let mut workers: Vec<_> = (0..2)
            .map(|i| {
                spawn(p.worker(
                    &cfg,
                    &["--shard-index", &i.to_string(), "--num-shards", "2"],
                ))
            })
            .collect();
        wait_for("both logs", Duration::from_secs(20), || {
            p.path("logs/f/shard_0_of_2.log").exists() && p.path("logs/f/shard_1_of_2.log").exists()
        });
        let mut m = Command::new(MONITOR);
        m.arg("--root")
            .arg(p.root())
            .args(["--run", "f", "--follow", "--interval", "0.2"]);
        let mut child = spawn(m);
        let status = wait_child(&mut child, Duration::from_secs(30));
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            status.code(),
            Some(want),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.lines().all(|l| l.starts_with("20")),
            "plain lines are timestamped: {text}"
        );
        // A failed item shows in the plain lines, not only a failed shard.
        let last = text.lines().last().unwrap_or_default();
        assert_eq!(
            last.contains("11/12 items, 1 item failed"),
            fail.is_some(),
            "{last}"
        );
        for w in &mut workers {
            let _ = w.wait();
        }
    }
}

#[test]
fn follow_draws_progress_bars_in_a_terminal() {
    let p = Project::new();
    let cfg = slow_config(&p, "t", 40, None);
    let mut worker = spawn(p.worker(&cfg, &["--shard-index", "0", "--num-shards", "1"]));
    wait_for("the log", Duration::from_secs(20), || {
        p.path("logs/t/shard_0_of_1.log").exists()
    });
    let session = format!("shardrun-mon-{}", std::process::id());
    let cmd = format!(
        "{MONITOR} --root {} --run t --follow --interval 0.2; echo $? > {}/exit.code; sleep 30",
        p.root().display(),
        p.root().display()
    );
    let ok = Command::new("tmux")
        .args([
            "new-session",
            "-d",
            "-x",
            "180",
            "-y",
            "20",
            "-s",
            &session,
            "bash",
            "-c",
            &cmd,
        ])
        .status()
        .expect("tmux is required for this test (scripts/test.sh installs it)");
    assert!(ok.success());
    let capture = || {
        String::from_utf8_lossy(
            &Command::new("tmux")
                .args(["capture-pane", "-p", "-t", &session])
                .output()
                .unwrap()
                .stdout,
        )
        .into_owned()
    };
    let mut seen_bar = String::new();
    wait_for("a progress bar", Duration::from_secs(20), || {
        seen_bar = capture();
        seen_bar.contains("shard   0 [") && seen_bar.contains("total ")
    });
    wait_for("monitor to exit", Duration::from_secs(30), || {
        p.path("exit.code").exists()
    });
    let screen = capture();
    let _ = Command::new("tmux")
        .args(["kill-session", "-t", &session])
        .status();
    let _ = worker.wait();
    assert_eq!(p.read("exit.code").trim(), "0", "{screen}");
    assert!(
        screen.contains("✓ shard   0 [================] 100.0% 40/40 done")
            && screen.contains("1 done")
            && screen.contains("40/40 items"),
        "the last frame stays: {screen}"
    );
}

#[test]
fn an_unknown_run_or_a_broken_config_exits_2() {
    let p = Project::new();
    let out = monitor(&p, &["--run", "nope"]);
    assert_exit(&out, 2, "unknown run", p.root());
    assert!(stderr(&out).contains("nope"));
    p.write("bad.yaml", "items: [\n");
    let out = monitor(&p, &["--config", p.path("bad.yaml").to_str().unwrap()]);
    assert_exit(&out, 2, "broken config", p.root());
}

/// A generator that writes two stderr lines and fails for the keys listed in `bad.txt`.
fn failing_config(p: &Project, run: &str, items: u32, bad: &[&str]) -> String {
    p.write("bad.txt", &format!("{}\n", bad.join("\n")));
    p.script(
        &format!("{run}.sh"),
        "#!/bin/sh\nif grep -qx \"$1\" bad.txt; then echo \"oops $1 a\" >&2; echo \"oops $1 b\" >&2; exit 3; fi\necho \"$1\"\n",
    );
    let cfg = format!("{run}.yaml");
    p.write(
        &cfg,
        &format!("run: {run}\nitems: {{range: {{start: 0, end: {items}}}}}\ngenerator: {{command: [./{run}.sh, \"{{key}}\"], retries: 1}}\noutput: {{columns: [k]}}\n"),
    );
    cfg
}

#[test]
fn failures_lists_each_failed_item_with_its_reason_and_log_lines_and_the_latest_record_wins() {
    let p = Project::new();
    let cfg = failing_config(&p, "fl", 30, &["3", "13", "14", "25"]);
    for i in 0..3 {
        p.run_shard(&cfg, i, 3, &["--quiet"], 1);
    }
    // Key 13 is fixed and shard 1 runs again: 13 is committed, 14 fails a second time.
    p.write("bad.txt", "3\n14\n25\n");
    p.run_shard(&cfg, 1, 3, &["--quiet"], 1);

    let out = monitor(&p, &["--run", "fl", "--failures", "--json"]);
    assert_exit(&out, 0, "monitor --failures --json", p.root());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(j["failed_items"], 3, "{j}");
    assert_eq!(j["shards_with_failures"], 3);
    let items = j["items"].as_array().unwrap();
    let got: Vec<(u64, &str)> = items
        .iter()
        .map(|it| (it["shard"].as_u64().unwrap(), it["key"].as_str().unwrap()))
        .collect();
    assert_eq!(
        got,
        [(0, "3"), (1, "14"), (2, "25")],
        "13 was committed later"
    );
    for it in items {
        let key = it["key"].as_str().unwrap();
        let shard = it["shard"].as_u64().unwrap();
        assert_eq!(it["attempts"], 2, "{it}");
        assert!(
            it["reason"].as_str().unwrap().contains("exit code 3"),
            "{it}"
        );
        assert!(!it["rev"].as_str().unwrap().is_empty(), "{it}");
        let log_rel = format!("logs/fl/shard_{shard}_of_3.log");
        assert_eq!(
            it["log"].as_str().unwrap(),
            p.path(&log_rel).to_str().unwrap()
        );
        let log: Vec<String> = p.read(&log_rel).lines().map(String::from).collect();
        // The lines of the run that wrote the failed record: after the log's last start line.
        let last_start = log.iter().rposition(|l| l.contains(" start ")).unwrap() as u64 + 1;
        let numbers: Vec<u64> = it["log_lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_u64().unwrap())
            .collect();
        assert_eq!(
            numbers.len(),
            7,
            "2 x (2 stderr + attempt_failed) + item_failed: {it}"
        );
        let events: Vec<&str> = numbers
            .iter()
            .map(|&n| {
                assert!(n > last_start, "line {n} is from an earlier run: {it}");
                let line = &log[n as usize - 1];
                assert!(line.contains(&format!(" key={key} ")), "{line}");
                line.split(' ').nth(1).unwrap()
            })
            .collect();
        assert_eq!(events.iter().filter(|e| **e == "stderr").count(), 4);
        assert_eq!(events.last(), Some(&"item_failed"));
        assert_eq!(it["stderr_lines"], 4);
        assert_eq!(
            it["stderr_tail"],
            serde_json::json!([format!("oops {key} a"), format!("oops {key} b")])
        );
    }

    // The text names each item and a command that prints exactly its lines.
    let out = monitor(&p, &["--run", "fl", "--failures"]);
    assert_exit(&out, 0, "monitor --failures", p.root());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.starts_with("run fl: 3 failed items in 3 of 3 shards"),
        "{text}"
    );
    assert!(!text.contains("key 13 "), "{text}");
    let block = text
        .split("\n\n")
        .find(|b| b.contains("key 14 "))
        .expect(&text);
    assert!(
        block.contains("shard 1/3") && block.contains("reason: exit code 3"),
        "{block}"
    );
    assert!(block.contains("    | oops 14 b"), "{block}");
    let cmd = block
        .lines()
        .find_map(|l| l.trim().strip_prefix("log: "))
        .expect(block);
    let shown = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert_eq!(shown.lines().count(), 7, "{cmd}\n{shown}");
    assert!(shown.lines().all(|l| l.contains(" key=14 ")), "{shown}");
}

#[test]
fn failures_of_a_run_without_failures_or_manifests_say_so() {
    let p = Project::new();
    let cfg = failing_config(&p, "ok", 6, &[]);
    p.run_shard(&cfg, 0, 2, &["--quiet"], 0);
    let out = monitor(&p, &["--run", "ok", "--failures"]);
    assert_exit(&out, 0, "monitor --failures", p.root());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "run ok: 0 failed items in 0 of 2 shards (the latest record of each item); 1 shard not started\n"
    );
    let out = monitor(&p, &["--run", "ok", "--failures", "--follow"]);
    assert_exit(&out, 2, "--failures with --follow", p.root());
}

#[test]
fn totals_count_shards_that_have_not_started_from_the_config() {
    let p = Project::new();
    let cfg = slow_config(&p, "q", 10, None);
    // A queued run: the launcher made its log directory, no worker has started.
    std::fs::create_dir_all(p.path("logs/q")).unwrap();
    let cfg_path = p.path(&cfg);
    let out = monitor(
        &p,
        &[
            "--config",
            cfg_path.to_str().unwrap(),
            "--num-shards",
            "4",
            "--json",
        ],
    );
    assert_exit(&out, 0, "monitor --config --json", p.root());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let totals: Vec<u64> = j["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["items_total"].as_u64().unwrap())
        .collect();
    assert_eq!(totals, [3, 3, 2, 2], "{j}");
    assert_eq!(j["summary"]["items_total"], 10);
    assert_eq!(j["summary"]["items_total_complete"], true);
    // Without the config nothing tells the plan yet: the total says it is partial.
    let out = monitor(&p, &["--run", "q", "--num-shards", "4", "--json"]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["summary"]["items_total"], 0);
    assert_eq!(j["summary"]["items_total_complete"], false);
    let out = monitor(&p, &["--run", "q", "--num-shards", "4"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("0/0+ items"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn follow_in_a_small_terminal_shows_the_summary_the_failed_shards_and_the_total() {
    let p = Project::new();
    // 30 shards of 3 items; shards 2 and 16 fail an item; shards 20 to 29 have not started.
    p.script(
        "m.sh",
        "#!/bin/sh\ncase \"$1\" in 7|50) exit 4;; esac\necho \"$1\"\n",
    );
    p.write(
        "m.yaml",
        "run: m\nitems: {range: {start: 0, end: 90}}\ngenerator: {command: [./m.sh, \"{key}\"], retries: 0}\noutput: {columns: [k]}\n",
    );
    for i in 0..20 {
        let want = if i == 2 || i == 16 { 1 } else { 0 };
        p.run_shard("m.yaml", i, 30, &["--quiet"], want);
    }
    let session = format!("shardrun-mon-small-{}", std::process::id());
    let cmd = format!(
        "{MONITOR} --root {} --run m --follow --interval 0.2; echo $? > {}/exit.code; sleep 30",
        p.root().display(),
        p.root().display()
    );
    let ok = Command::new("tmux")
        .args([
            "new-session",
            "-d",
            "-x",
            "100",
            "-y",
            "12",
            "-s",
            &session,
            "bash",
            "-c",
            &cmd,
        ])
        .status()
        .expect("tmux is required for this test (scripts/test.sh installs it)");
    assert!(ok.success());
    let capture = || {
        String::from_utf8_lossy(
            &Command::new("tmux")
                .args(["capture-pane", "-p", "-t", &session])
                .output()
                .unwrap()
                .stdout,
        )
        .into_owned()
    };
    let mut screen = String::new();
    wait_for("a frame", Duration::from_secs(20), || {
        screen = capture();
        screen.contains("total ")
    });
    // Two refreshes later the frame is redrawn in place, not appended.
    std::thread::sleep(Duration::from_millis(600));
    screen = capture();
    let _ = Command::new("tmux")
        .args(["send-keys", "-t", &session, "C-c", ""])
        .status();
    wait_for("monitor to exit", Duration::from_secs(20), || {
        p.path("exit.code").exists()
    });
    let after = capture();
    let _ = Command::new("tmux")
        .args(["kill-session", "-t", &session])
        .status();
    let lines: Vec<&str> = screen.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() <= 11, "the frame fits the pane: {screen}");
    assert_eq!(
        screen.matches("total ").count(),
        1,
        "one frame on screen: {screen}"
    );
    assert!(screen.contains("shards by progress: 0% 10 "), "{screen}");
    assert!(
        screen.contains("✗ shard   2 [") && screen.contains("✗ shard  16 ["),
        "the failed shards are shown: {screen}"
    );
    assert!(
        screen.contains("run m: 18 done, 0 running, 2 failed, 10 pending"),
        "{screen}"
    );
    let total = lines.last().unwrap();
    assert!(
        total.starts_with("total ") && total.contains(" 58/90 items, 2 failed"),
        "the total is the last line and counts the pending shards: {screen}"
    );
    assert!(lines.iter().all(|l| l.chars().count() < 100), "{screen}");
    assert_eq!(p.read("exit.code").trim(), "130");
    assert!(after.contains("total "), "the last frame stays: {after}");
}
