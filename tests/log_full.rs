//! A shard log that cannot be written (its file system full) is reported, never silently lost.

use crate::common::*;

/// `/dev/full` bind-mounted over a regular file (shardrun refuses to write through a symbolic
/// link, so a link to it would not do); unmounted when dropped. `None` (the test says it is
/// skipped) where mounting is not allowed.
struct FullFile(std::path::PathBuf);

impl FullFile {
    fn at(path: std::path::PathBuf) -> Option<FullFile> {
        std::fs::write(&path, b"").unwrap();
        let ok = std::process::Command::new("mount")
            .arg("--bind")
            .arg("/dev/full")
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            println!("skipped: cannot bind-mount /dev/full (needs root)");
            return None;
        }
        Some(FullFile(path))
    }
}

impl Drop for FullFile {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Regression: with the log's file system full the last line was torn, the `finish` line lost
/// and the worker exited 0, so the launcher and monitor took the finished shard for dead. The
/// log is `/dev/full` here (bind-mounted): every write fails with ENOSPC.
#[test]
fn a_log_write_error_is_reported_on_stderr_and_in_the_exit_code() {
    let p = Project::new();
    p.write(
        "f.yaml",
        "run: f\nitems: {range: {start: 0, end: 4}}\ngenerator: {builtin: echo}\n",
    );
    std::fs::create_dir_all(p.path("logs/f")).unwrap();
    let Some(_full) = FullFile::at(p.path("logs/f/shard_0_of_1.log")) else {
        return;
    };
    let out = p.run("f.yaml", &["--quiet"]);
    assert_exit(&out, 1, "a worker whose log cannot be written", p.root());
    let e = stderr(&out);
    assert!(
        e.contains("cannot write the shard log") && e.contains("No space left on device"),
        "{e}"
    );
    // The items themselves are committed: the manifest says so, and the run merges.
    let ok = manifest_records(&p.path("data/f/manifest_shard0_of_1.jsonl"))
        .iter()
        .filter(|r| r["status"] == "ok")
        .count();
    assert_eq!(ok, 4);
}

/// A shard whose log ended early (here: never written) but whose manifest holds every item is
/// `done` for monitor, which reads the manifest when the log does not say; the launcher names
/// the log error in its summary.
#[test]
fn monitor_and_launcher_fall_back_to_the_manifest_when_a_log_ends_early() {
    let p = Project::new();
    p.write(
        "conf/f.yaml",
        "run: f\nshards: 2\nitems: {range: {start: 0, end: 6}}\ngenerator: {builtin: echo}\n",
    );
    std::fs::create_dir_all(p.path("logs/f")).unwrap();
    let Some(_full) = FullFile::at(p.path("logs/f/shard_1_of_2.log")) else {
        return;
    };
    let out = std::process::Command::new(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/run_parallel.sh"),
    )
    .current_dir(p.root())
    .args(["--config", "conf/f.yaml"])
    .env(
        "SHARDRUN_BIN",
        std::path::Path::new(WORKER).parent().unwrap(),
    )
    .env("SHARDRUN_NO_DISPLAY", "1")
    .output()
    .unwrap();
    assert_exit(&out, 1, "launcher with an unwritable shard log", p.root());
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &stderr(&out);
    assert!(
        text.contains("failed: exit 1: cannot write the shard log"),
        "{text}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_monitor"))
        .arg("--root")
        .arg(p.root())
        .args(["--run", "f", "--json"])
        .output()
        .unwrap();
    assert_exit(&out, 0, "monitor --json", p.root());
    let snap: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let states: Vec<&str> = snap["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["done", "done"], "{snap}");
    assert_eq!(snap["shards"][1]["items_done"], 3, "{snap}");
}
