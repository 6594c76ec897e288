//! Crashes, signals and contention: kill -9 at random moments, SIGINT/SIGTERM, a second worker.

use std::time::{Duration, Instant};

use crate::common::*;

/// A slowish generator: 0-3 rows per item with a short sleep, a pure function of the item.
const SLOW: &str = r#"#!/bin/sh
echo $$ >> "$(dirname "$0")/pids"
sleep 0.0$(( $2 % 3 ))
n=$(( $2 % 4 ))
i=0
while [ $i -lt $n ]; do
  printf '%s,%s,"a ""quoted"", field"\n' "$1" "$i"
  i=$((i + 1))
done
"#;

fn slow_config(p: &Project, run: &str, items: u32, jobs: u32) -> String {
    p.script("gen/slow.sh", SLOW);
    let cfg = format!(
        "run: {run}\nseed: 1\nitems: {{range: {{start: 0, end: {items}}}}}\n\
         generator: {{command: [gen/slow.sh, \"{{key}}\", \"{{index}}\"], jobs: {jobs}, retries: 0}}\n\
         output: {{columns: [key, row, text]}}\ncache: {{enabled: false}}\n"
    );
    p.write(&format!("{run}.yaml"), &cfg);
    format!("{run}.yaml")
}

const ITEMS: u32 = 150;

#[test]
fn kill_9_at_random_moments_then_rerun_gives_exactly_the_uninterrupted_rows() {
    let p = Project::new();
    let reference_cfg = slow_config(&p, "ref", ITEMS, 1);
    p.run_shard(&reference_cfg, 0, 1, &[], 0);
    let reference = p.dataset("ref");
    assert!(!reference.is_empty());

    for jobs in [1, 3] {
        let run = format!("k{jobs}");
        let cfg = slow_config(&p, &run, ITEMS, jobs);
        let mut rng = TestRng(0x9e37_79b9 + u64::from(jobs));
        let mut kills = 0;
        for _round in 0..12 {
            let mut child = spawn(p.worker(&cfg, &["--shard-index", "0", "--num-shards", "1"]));
            std::thread::sleep(Duration::from_millis(20 + rng.below(200)));
            if child.try_wait().unwrap().is_none() {
                signal(child.id(), libc::SIGKILL);
                kills += 1;
            }
            let _ = child.wait();
        }
        assert!(kills >= 6, "only {kills} kills landed");
        eprintln!("jobs {jobs}: {kills} kills, then a clean re-run");
        p.run_shard(&cfg, 0, 1, &[], 0);
        assert!(
            p.dataset(&run) == reference,
            "jobs {jobs}: rows differ after {kills} kills"
        );
        // The data file holds no torn or uncommitted bytes either.
        let data = std::fs::read(p.path(&format!("data/{run}/process-0.csv"))).unwrap();
        assert_eq!(data.len(), reference.len() + "key,row,text\n".len());
    }
}

#[test]
fn sigint_drains_exits_130_and_leaves_no_generator_behind() {
    for (sig, code) in [(libc::SIGINT, 130), (libc::SIGTERM, 143)] {
        let p = Project::new();
        p.script(
            "g.sh",
            "#!/bin/sh\necho $$ >> pids\nsleep 30 &\necho $! >> pids\nsleep 30\necho \"$1\"\n",
        );
        p.write(
            "s.yaml",
            "run: s\nitems: {range: {start: 0, end: 10}}\ngenerator: {command: [./g.sh, \"{key}\"], jobs: 2}\noutput: {columns: [k]}\n",
        );
        let mut child = spawn(p.worker("s.yaml", &["--shard-index", "0", "--num-shards", "1"]));
        wait_for("generators to start", Duration::from_secs(10), || {
            p.read("pids").lines().count() >= 4
        });
        let t = Instant::now();
        signal(child.id(), sig);
        let status = wait_child(&mut child, Duration::from_secs(5));
        assert_eq!(status.code(), Some(code));
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "took {:?}",
            t.elapsed()
        );
        for pid in p.read("pids").lines() {
            let pid: i32 = pid.parse().unwrap();
            wait_for(
                &format!("generator process {pid} to be gone"),
                Duration::from_secs(2),
                || !alive(pid),
            );
        }
        let log = p.read("logs/s/shard_0_of_1.log");
        assert!(log.contains("finish status=interrupted"), "{log}");
    }
}

#[test]
fn a_second_worker_on_the_same_shard_exits_3_naming_the_holder() {
    let p = Project::new();
    p.script("g.sh", "#!/bin/sh\ntouch started\nsleep 30\n");
    p.write(
        "l.yaml",
        "run: l\nitems: {list: [a]}\ngenerator: {command: [./g.sh]}\noutput: {columns: [k]}\n",
    );
    let mut first = spawn(p.worker("l.yaml", &["--shard-index", "0", "--num-shards", "1"]));
    wait_for("the first worker to start", Duration::from_secs(10), || {
        p.path("started").exists()
    });
    let out = p.run("l.yaml", &["--shard-index", "0", "--num-shards", "1"]);
    assert_exit(&out, 3, "second worker", p.root());
    assert!(
        stderr(&out).contains(&format!("pid {}", first.id())),
        "{}",
        stderr(&out)
    );
    signal(first.id(), libc::SIGKILL);
    let _ = first.wait();
    // The kernel released the dead holder's lock: no stale lock.
    p.script("g.sh", "#!/bin/sh\necho ok\n");
    let out = p.run(
        "l.yaml",
        &["--shard-index", "0", "--num-shards", "1", "--force"],
    );
    assert_exit(&out, 0, "after the holder died", p.root());
}

#[test]
fn sigint_stops_a_long_embedded_item_within_2_seconds() {
    let p = Project::new();
    p.write(
        "v.yaml",
        "run: v\nitems: {range: {start: 0, end: 4}}\ngenerator: {builtin: vitals, params: {hours: 8760, window: 60000, step: 1}}\n",
    );
    let mut child = spawn(p.worker("v.yaml", &["--shard-index", "0", "--num-shards", "1"]));
    wait_for("the start line", Duration::from_secs(10), || {
        p.read("logs/v/shard_0_of_1.log").contains(" start ")
    });
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    signal(child.id(), libc::SIGINT);
    let status = wait_child(&mut child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(130));
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn a_second_sigint_exits_at_once_and_kills_every_generator_group() {
    let p = Project::new();
    // Generators that ignore SIGTERM and keep a background child: only SIGKILL of the whole
    // group removes them.
    p.script(
        "g.sh",
        "#!/bin/sh\ntrap '' TERM\nsleep 300 &\necho $! >> pids\necho $$ >> pids\nwait\n",
    );
    p.write(
        "s.yaml",
        "run: s2\nitems: {range: {start: 0, end: 10}}\ngenerator: {command: [./g.sh], jobs: 3}\noutput: {columns: [k]}\n",
    );
    let mut child = spawn(p.worker("s.yaml", &["--shard-index", "0", "--num-shards", "1"]));
    wait_for("3 generators", Duration::from_secs(10), || {
        p.read("pids").lines().count() >= 6
    });
    signal(child.id(), libc::SIGINT);
    std::thread::sleep(Duration::from_millis(100));
    signal(child.id(), libc::SIGINT);
    let status = wait_child(&mut child, Duration::from_secs(5));
    assert_eq!(status.code(), Some(130));
    for pid in p.read("pids").lines() {
        let pid: i32 = pid.parse().unwrap();
        wait_for(
            &format!("process {pid} to be gone"),
            Duration::from_secs(2),
            || !alive(pid),
        );
    }
}

/// kill -9 of the worker: its generators die with it (parent-death signal), and so does what
/// they started in the background, which that signal does not reach: the worker's guard
/// process kills their process groups.
#[test]
fn kill_9_of_the_worker_leaves_no_generator_or_background_child() {
    let p = Project::new();
    p.script(
        "g.sh",
        "#!/bin/sh\nsleep 300 &\necho $! >> pids\necho $$ >> pids\nwait\n",
    );
    p.write(
        "k.yaml",
        "run: k9\nitems: {range: {start: 0, end: 10}}\ngenerator: {command: [./g.sh], jobs: 2}\noutput: {columns: [k]}\n",
    );
    let mut child = spawn(p.worker("k.yaml", &["--shard-index", "0", "--num-shards", "1"]));
    wait_for(
        "2 generators and their children",
        Duration::from_secs(10),
        || p.read("pids").lines().count() >= 4,
    );
    signal(child.id(), libc::SIGKILL);
    child.wait().unwrap();
    for pid in p.read("pids").lines() {
        let pid: i32 = pid.parse().unwrap();
        wait_for(
            &format!("process {pid} to be gone"),
            Duration::from_secs(3),
            || !alive(pid),
        );
    }
}

/// A guard that stops reading (stopped by a signal) would miss messages and could later kill a
/// group id that is no longer a generator's: once its pipe is full, the worker SIGKILLs and
/// reaps it, says so on stderr, and carries on.
#[test]
fn a_guard_that_stops_reading_is_killed_rather_than_kept_out_of_step() {
    let p = Project::new();
    p.write(
        "many.yaml",
        "run: many\nitems: {range: {start: 0, end: 3000}}\ngenerator: {command: [echo, \"{key}\"], jobs: 1}\noutput: {columns: [k]}\ncache: {enabled: false}\n",
    );
    let mut child = spawn(p.worker("many.yaml", &["--shard-index", "0", "--num-shards", "1"]));
    let worker = child.id() as i32;
    let mut guard = None;
    wait_for("the guard process", Duration::from_secs(10), || {
        guard = children(worker).into_iter().find(|&c| {
            std::fs::read(format!("/proc/{c}/cmdline"))
                .is_ok_and(|cmd| cmd.windows(8).any(|w| w == b"--guard-"))
        });
        guard.is_some()
    });
    let guard = guard.unwrap();
    signal(guard as u32, libc::SIGSTOP);
    // The smallest pipe (one page): full after a few hundred messages.
    let fd0 = std::fs::File::open(format!("/proc/{guard}/fd/0")).unwrap();
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&fd0),
            libc::F_SETPIPE_SZ,
            4096,
        )
    };
    drop(fd0);
    let status = wait_child(&mut child, Duration::from_secs(120));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("guard of the generators' process groups stopped reading"),
        "{stderr}"
    );
    assert!(!alive(guard), "the stopped guard was left behind");
    assert_eq!(
        p.dataset("many").iter().filter(|&&b| b == b'\n').count(),
        3000
    );
}

/// The guard carried the worker's process name, so `pkill -9 shard-worker` (which matches
/// process names) killed it along with the worker, and what the generators started in the
/// background lived on. It is now named `shardrun-guard`: `pkill shard-worker` kills the
/// worker only, and the guard then kills the generators' groups.
#[test]
fn pkill_shard_worker_does_not_match_the_guard_which_then_kills_the_background_children() {
    let p = Project::new();
    p.script(
        "g.sh",
        "#!/bin/sh\nsleep 300 &\necho $! >> pids\necho $$ >> pids\nwait\n",
    );
    p.write(
        "pk.yaml",
        "run: pk\nitems: {range: {start: 0, end: 10}}\ngenerator: {command: [./g.sh], jobs: 2}\noutput: {columns: [k]}\n",
    );
    let mut cmd = p.worker("pk.yaml", &["--shard-index", "0", "--num-shards", "1"]);
    // A group of its own, for the pkill below to reach this worker only.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = spawn(cmd);
    let worker = child.id() as i32;
    wait_for(
        "2 generators and their children",
        Duration::from_secs(10),
        || p.read("pids").lines().count() >= 4,
    );
    let guard = children(worker)
        .into_iter()
        .find(|&c| {
            std::fs::read(format!("/proc/{c}/cmdline"))
                .is_ok_and(|cmd| cmd.windows(8).any(|w| w == b"--guard-"))
        })
        .expect("the worker has a guard");
    let comm = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm(guard), "shardrun-guard\n");
    assert_eq!(comm(worker), "shard-worker\n");
    // What pkill would match, among the worker's children and the worker itself: pgrep and
    // pkill share their matching. (Limited to this worker: other runs may share the machine.)
    let pgrep = |args: &[&str]| {
        let out = std::process::Command::new("pgrep")
            .args(args)
            .output()
            .expect("run pgrep");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(|p| p.parse::<i32>().unwrap())
            .collect::<Vec<_>>()
    };
    let worker_s = worker.to_string();
    assert_eq!(pgrep(&["-P", &worker_s, "shard-worker"]), Vec::<i32>::new());
    assert_eq!(pgrep(&["-P", &worker_s, "shardrun-guard"]), vec![guard]);
    let status = std::process::Command::new("pkill")
        .args(["-9", "-g", &worker_s, "shard-worker"])
        .status()
        .expect("run pkill");
    assert!(status.success());
    child.wait().unwrap();
    for pid in p.read("pids").lines() {
        let pid: i32 = pid.parse().unwrap();
        wait_for(
            &format!("process {pid} to be gone"),
            Duration::from_secs(3),
            || !alive(pid),
        );
    }
    wait_for("the guard to exit", Duration::from_secs(3), || {
        !alive(guard)
    });
}

/// The children of `pid`, from /proc.
fn children(pid: i32) -> Vec<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
                .flat_map(|s| {
                    s.split_whitespace()
                        .filter_map(|c| c.parse().ok())
                        .collect::<Vec<i32>>()
                })
                .collect()
        })
        .unwrap_or_default()
}
