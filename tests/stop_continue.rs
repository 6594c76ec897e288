//! Ctrl-Z and `fg` while a worker spawns generators: it is stopped and continued over and over,
//! and must still finish.

use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use crate::common::*;

/// A terminal's Ctrl-Z sends SIGTSTP to the foreground process group (the worker's), and `fg`
/// sends it SIGCONT. A generator caught between `clone` and its own `setpgid` is still in that
/// group and gets the SIGTSTP too; had it stopped before `execve`, in its new group where the
/// SIGCONT does not reach it, the worker's spawning thread would wait for it for good. This is
/// what happens with `std::process::Command` and `process_group` (see the ignored test
/// `std_command_with_process_group_hangs_on_stop_signals` in src/child/spawn.rs); the worker's
/// own spawn discards such signals in the child. The bound only catches a hang.
#[test]
fn a_worker_stopped_and_continued_hundreds_of_times_while_spawning_finishes() {
    const ITEMS: usize = 10_000;
    let p = Project::new();
    p.write(
        "z.yaml",
        &format!(
            "run: z\nitems: {{range: {{start: 0, end: {ITEMS}}}}}\n\
             generator: {{command: [\"true\"], jobs: 2, retries: 0}}\n\
             output: {{columns: [k]}}\ncache: {{enabled: false}}\n"
        ),
    );
    let mut cmd = p.worker(
        "z.yaml",
        &["--shard-index", "0", "--num-shards", "1", "--quiet"],
    );
    // A group of its own, as a shell's job control gives a foreground job.
    cmd.process_group(0);
    let mut child = spawn(cmd);
    let group = child.id() as libc::pid_t;
    let started = Instant::now();
    let mut rounds = 0u32;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(300) {
            // SAFETY: kill(2) of the group that the worker we started leads.
            unsafe { libc::killpg(group, libc::SIGKILL) };
            let _ = child.wait();
            panic!("the worker hung after being stopped and continued {rounds} times");
        }
        // SAFETY: kill(2) of the group that the worker we started leads.
        unsafe {
            libc::killpg(group, libc::SIGTSTP);
            std::thread::sleep(Duration::from_millis(2));
            libc::killpg(group, libc::SIGCONT);
        }
        rounds += 1;
        std::thread::sleep(Duration::from_millis(1));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert_eq!(status.code(), Some(0), "{stderr}\n{}", p.listing());
    assert!(
        rounds >= 200,
        "the worker finished after {rounds} rounds only: the test proves little"
    );
    let records = manifest_records(&p.path("data/z/manifest_shard0_of_1.jsonl"));
    assert_eq!(records.len(), ITEMS, "{}", p.listing());
    assert!(records.iter().all(|r| r["status"] == "ok"));
}
