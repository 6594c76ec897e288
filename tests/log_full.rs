//! A shard log that cannot be written (its file system full) is reported, never silently lost.

use crate::common::*;

/// Regression: with the log's file system full the last line was torn, the `finish` line lost
/// and the worker exited 0, so the launcher and monitor took the finished shard for dead. The
/// log is `/dev/full` here: every write fails with ENOSPC.
#[test]
fn a_log_write_error_is_reported_on_stderr_and_in_the_exit_code() {
    let p = Project::new();
    p.write(
        "f.yaml",
        "run: f\nitems: {range: {start: 0, end: 4}}\ngenerator: {builtin: echo}\n",
    );
    std::fs::create_dir_all(p.path("logs/f")).unwrap();
    std::os::unix::fs::symlink("/dev/full", p.path("logs/f/shard_0_of_1.log")).unwrap();
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
