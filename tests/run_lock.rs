//! The run lock: no worker of any shard plan writes while `merge` reads a run, a running worker
//! of any plan refuses the merge, and a merge of many shards fits a small open-file limit.

use std::time::{Duration, Instant};

use crate::common::*;

use crate::merge::{merge, MERGE};

/// Regression: merge locked only the shards of its own plan, so a `--force` worker of another
/// shard count rewrote `process-0.csv` while merge copied it, and merge exited 0 with a torn
/// dataset. The merge is stopped (SIGSTOP) once it has started writing its output, the other
/// plan's worker is started, then the merge is let go on.
#[test]
fn a_force_worker_of_another_shard_count_is_refused_while_merge_runs() {
    let p = Project::new();
    p.write("big.yaml", "run: big\nitems: {range: {start: 0, end: 60000}}\ngenerator: {builtin: echo, params: {rows: 2, pad: 100}}\n");
    for i in 0..2 {
        p.run_shard("big.yaml", i, 2, &["--no-cache"], 0);
    }
    let out = merge(&p, &["--run", "big", "--keep-shards"]);
    assert_exit(&out, 0, "first merge", p.root());
    let expected = std::fs::read(p.path("data/big/combined.csv")).unwrap();
    let tmp = p.path("data/big/.combined.csv.tmp");
    let mut caught = None;
    for _ in 0..50 {
        std::fs::remove_file(p.path("data/big/combined.csv")).unwrap();
        let mut cmd = std::process::Command::new(MERGE);
        cmd.arg("--root")
            .arg(p.root())
            .args(["--run", "big", "--keep-shards"]);
        let mut child = spawn(cmd);
        let start = Instant::now();
        while !tmp.exists() && start.elapsed() < Duration::from_secs(10) {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::hint::spin_loop();
        }
        signal(child.id(), libc::SIGSTOP);
        if child.try_wait().unwrap().is_none() && tmp.exists() {
            caught = Some(child);
            break;
        }
        // The merge ended before it could be stopped: try again.
        signal(child.id(), libc::SIGCONT);
        assert!(wait_child(&mut child, Duration::from_secs(30)).success());
    }
    let mut child = caught.expect("a merge stopped while it writes its output, in 50 tries");
    let merge_pid = child.id();
    let worker = p.run(
        "big.yaml",
        &[
            "--shard-index",
            "0",
            "--num-shards",
            "3",
            "--force",
            "--no-cache",
        ],
    );
    signal(child.id(), libc::SIGCONT);
    let status = wait_child(&mut child, Duration::from_secs(60));
    let merged = child.wait_with_output().unwrap();
    assert!(status.success(), "merge: {}", stderr(&merged));
    let got = std::fs::read(p.path("data/big/combined.csv")).unwrap();
    assert!(
        got == expected,
        "combined.csv differs from the dataset ({} bytes, expected {}); the worker said: {}",
        got.len(),
        expected.len(),
        stderr(&worker)
    );
    assert_exit(
        &worker,
        3,
        "a worker of another plan during merge",
        p.root(),
    );
    assert!(
        stderr(&worker).contains(&format!("being merged by merge pid {merge_pid}")),
        "{}",
        stderr(&worker)
    );
}

/// A merge refuses (exit 1, naming the shard and its pid) while a worker of another shard plan
/// runs; before the run lock it only saw the other plan's manifest.
#[test]
fn merge_refuses_while_a_worker_of_another_plan_runs() {
    let p = Project::new();
    p.script(
        "g.sh",
        "#!/bin/sh\nif [ -f slow ]; then echo $$ >> pids; while [ -f slow ]; do sleep 0.05; done; fi\necho \"$1,x\"\n",
    );
    p.write("c.yaml", "run: c\nitems: {range: {start: 0, end: 6}}\ngenerator: {command: [./g.sh, \"{key}\"]}\noutput: {columns: [k, v]}\n");
    for i in 0..2 {
        p.run_shard("c.yaml", i, 2, &[], 0);
    }
    p.write("slow", "");
    let mut worker = spawn(p.worker(
        "c.yaml",
        &[
            "--shard-index",
            "1",
            "--num-shards",
            "3",
            "--name",
            "three-1",
            "--no-cache",
        ],
    ));
    wait_for("the blocked generator", Duration::from_secs(20), || {
        p.path("pids").exists()
    });
    let out = merge(&p, &["--run", "c"]);
    assert_exit(
        &out,
        1,
        "merge while a worker of another plan runs",
        p.root(),
    );
    let want = format!("shard 1 of 3 is locked by pid {}", worker.id());
    assert!(stderr(&out).contains(&want), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("merge once the shard has finished"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_file(p.path("slow")).unwrap();
    assert!(wait_child(&mut worker, Duration::from_secs(20)).success());
}

/// Regression (cluster scale): merge held every shard's lock and files open at once, so 300
/// shards failed under a 256 open-file limit ("Too many open files"), with either plan.
#[test]
fn a_merge_of_300_shards_fits_under_ulimit_n_256() {
    let p = Project::new();
    for sharding in ["contiguous", "stride"] {
        p.write(
            "t.yaml",
            &format!(
                "run: {sharding}\nsharding: {sharding}\nitems: {{range: {{start: 0, end: 600}}}}\n\
                 generator: {{builtin: echo}}\n"
            ),
        );
        for i in 0..300 {
            p.run_shard("t.yaml", i, 300, &["--no-cache"], 0);
        }
        merge_checked(&p, sharding, 256);
    }
}

/// Merges `run` under `ulimit -n limit` and checks the dataset against the shards' rows.
fn merge_checked(p: &Project, run: &str, limit: u32) {
    let want = dataset_in_item_order(&p.path(&format!("data/{run}")));
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
        .arg(MERGE)
        .arg("--root")
        .arg(p.root())
        .args(["--run", run])
        .output()
        .unwrap();
    assert_exit(
        &out,
        0,
        &format!("merge {run} under ulimit -n {limit}"),
        p.root(),
    );
    let got = std::fs::read(p.path(&format!("data/{run}/combined.csv"))).unwrap();
    let body = &got[got.iter().position(|&b| b == b'\n').unwrap() + 1..];
    assert!(
        body == want.as_slice(),
        "{run}: combined.csv is not the shards' rows in item order"
    );
    let rows = want.iter().filter(|&&b| b == b'\n').count();
    let lines = p
        .read(&format!("data/{run}/manifest_final.csv"))
        .lines()
        .count();
    assert_eq!(lines, rows + 1);
}

/// Over 64 shards the interleaved merge reads each manifest a batch at a time; shards whose
/// manifests are not in item order (`jobs` > 1) are read by offset, and must come out the same.
#[test]
fn an_interleaved_merge_of_many_out_of_order_shards_is_in_item_order() {
    let p = Project::new();
    p.script(
        "g.sh",
        "#!/bin/sh\nsleep 0.0$(( ($1 * 7) % 5 ))\necho \"$1,x\"\n",
    );
    p.write(
        "o.yaml",
        "run: o\nsharding: stride\nitems: {range: {start: 0, end: 280}}\n\
         generator: {command: [./g.sh, \"{key}\"], jobs: 4}\noutput: {columns: [k, v]}\n",
    );
    for i in 0..70 {
        p.run_shard("o.yaml", i, 70, &["--no-cache"], 0);
    }
    let out_of_order = (0..70).any(|i| {
        let path = p.path(&format!("data/o/manifest_shard{i}_of_70.jsonl"));
        let idx: Vec<u64> = manifest_records(&path)
            .iter()
            .map(|r| r["index"].as_u64().unwrap())
            .collect();
        idx.windows(2).any(|w| w[0] > w[1])
    });
    assert!(
        out_of_order,
        "some shard should have committed out of item order"
    );
    merge_checked(&p, "o", 100);
}

/// The launchers' `--force` with a new shard count deletes the other plan's outputs: never
/// while a merge holds the run (here the merge's exclusive lock is held by `flock`).
#[test]
fn a_launcher_force_does_not_discard_outputs_under_a_merge() {
    use std::os::unix::process::CommandExt;
    let p = Project::new();
    p.write(
        "conf/c.yaml",
        "run: c\nitems: {range: {start: 0, end: 6}}\ngenerator: {builtin: echo}\n",
    );
    for i in 0..2 {
        p.run_shard("conf/c.yaml", i, 2, &[], 0);
    }
    let lock = p.path("data/c/.locks/run.lock");
    std::fs::write(&lock, "merge pid 4242").unwrap();
    let mut holder = std::process::Command::new("flock");
    holder
        .args(["-x", "-w", "10"])
        .arg(&lock)
        .args(["sleep", "60"])
        .process_group(0);
    let holder = KillGroup(spawn(holder));
    // The lock is held once a shared try fails.
    wait_for(
        "flock to hold the run lock",
        Duration::from_secs(10),
        || {
            !std::process::Command::new("flock")
                .args(["-s", "-n"])
                .arg(&lock)
                .arg("true")
                .status()
                .unwrap()
                .success()
        },
    );
    let before = std::fs::read(p.path("data/c/process-0.csv")).unwrap();
    // run_slurm.sh needs Slurm's commands before it looks at the run (CI may run this test
    // before any Slurm is installed): an empty queue, and an sbatch that must not be reached.
    p.script("bin/squeue", "#!/bin/sh\nexit 0\n");
    p.script(
        "bin/sbatch",
        "#!/bin/sh\necho 'sbatch called under a merge' >&2\nexit 99\n",
    );
    let path = format!(
        "{}:{}",
        p.path("bin").display(),
        std::env::var("PATH").unwrap()
    );
    for name in ["run_parallel.sh", "run_slurm.sh"] {
        let out = std::process::Command::new(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("scripts")
                .join(name),
        )
        .current_dir(p.root())
        .args(["--config", "conf/c.yaml", "--force", "--num-shards", "3"])
        .env(
            "SHARDRUN_BIN",
            std::path::Path::new(WORKER).parent().unwrap(),
        )
        .env("SHARDRUN_NO_DISPLAY", "1")
        .env("SHARDRUN_MAX_ARRAY_SIZE", "1001")
        .env("PATH", &path)
        .output()
        .unwrap();
        assert_exit(&out, 2, &format!("{name} --force under a merge"), p.root());
        assert!(
            stderr(&out).contains("is being merged by merge pid 4242"),
            "{}",
            stderr(&out)
        );
        assert!(p.path("data/c/manifest_shard0_of_2.jsonl").exists());
        assert_eq!(
            std::fs::read(p.path("data/c/process-0.csv")).unwrap(),
            before
        );
    }
    drop(holder);
}

/// Kills a child's process group when dropped, also when the test fails.
struct KillGroup(std::process::Child);

impl Drop for KillGroup {
    fn drop(&mut self) {
        // SAFETY: killpg(2) of a process group this test started.
        unsafe {
            libc::killpg(self.0.id() as i32, libc::SIGKILL);
        }
        let _ = self.0.wait();
    }
}
