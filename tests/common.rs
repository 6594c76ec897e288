//! Helpers shared by the integration tests.

#![allow(dead_code)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const WORKER: &str = env!("CARGO_BIN_EXE_shard-worker");

/// A temp project root with a config in it.
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    pub fn new() -> Self {
        Project {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes a file (creating parents) and returns its path.
    pub fn write(&self, rel: &str, contents: &str) -> PathBuf {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, contents).expect("write");
        p
    }

    /// Writes an executable script.
    pub fn script(&self, rel: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = self.write(rel, body);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        p
    }

    /// A worker command for `config` with `args`, rooted here.
    pub fn worker(&self, config: &str, args: &[&str]) -> Command {
        let mut c = Command::new(WORKER);
        c.arg("--config")
            .arg(self.path(config))
            .arg("--root")
            .arg(self.root());
        c.args(args);
        c.env_remove("SLURM_ARRAY_TASK_ID")
            .env_remove("JOB_COMPLETION_INDEX");
        c
    }

    /// Runs a worker to completion.
    pub fn run(&self, config: &str, args: &[&str]) -> Output {
        self.worker(config, args).output().expect("run worker")
    }

    /// Runs shard `i` of `n` and asserts its exit code.
    pub fn run_shard(&self, config: &str, i: u32, n: u32, extra: &[&str], want: i32) -> Output {
        let (i, n) = (i.to_string(), n.to_string());
        let mut args = vec!["--shard-index", &i, "--num-shards", &n];
        args.extend_from_slice(extra);
        let out = self.run(config, &args);
        assert_exit(&out, want, &format!("shard {i}/{n} {extra:?}"), self.root());
        out
    }

    /// Every file under the root, for failure messages.
    pub fn listing(&self) -> String {
        listing(self.root())
    }

    /// The committed rows of every shard of `run`, concatenated in global item order.
    pub fn dataset(&self, run: &str) -> Vec<u8> {
        dataset_in_item_order(&self.root().join("data").join(run))
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_default()
    }
}

pub fn listing(root: &Path) -> String {
    let mut s = String::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let len = e.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = writeln!(
                s,
                "  {} ({len} bytes)",
                p.strip_prefix(root).unwrap_or(&p).display()
            );
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    s
}

/// Asserts an exit code, printing everything useful when it differs.
pub fn assert_exit(out: &Output, want: i32, what: &str, root: &Path) {
    let code = out.status.code().unwrap_or(-1);
    assert_eq!(
        code,
        want,
        "{what}: exit {code}, want {want}\n--- stdout\n{}\n--- stderr\n{}\n--- files\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        listing(root)
    );
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Reads the manifests of a run directory and concatenates the rows of committed items in item
/// order (the latest record per item wins, as on resume). Panics on duplicates across shards.
pub fn dataset_in_item_order(run_dir: &Path) -> Vec<u8> {
    let mut items: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(run_dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    entries.sort();
    for m in entries {
        let name = m.file_name().unwrap().to_string_lossy().into_owned();
        if !(name.starts_with("manifest_shard") && name.ends_with(".jsonl")) {
            continue;
        }
        let text = std::fs::read_to_string(&m).expect("manifest");
        let mut lines = text.lines();
        let header: serde_json::Value =
            serde_json::from_str(lines.next().expect("header")).expect("header json");
        let data = std::fs::read(run_dir.join(format!("{}.csv", header["name"].as_str().unwrap())))
            .expect("data");
        let mut latest = std::collections::BTreeMap::new();
        for l in lines {
            let r: serde_json::Value = serde_json::from_str(l).expect("record json");
            latest.insert(r["index"].as_u64().unwrap(), r);
        }
        for (i, r) in latest {
            if r["status"] == "ok" {
                let (o, n) = (
                    r["offset"].as_u64().unwrap() as usize,
                    r["bytes"].as_u64().unwrap() as usize,
                );
                items.push((i, data[o..o + n].to_vec()));
            }
        }
    }
    items.sort_by_key(|(i, _)| *i);
    for w in items.windows(2) {
        assert_ne!(w[0].0, w[1].0, "item {} committed by two shards", w[0].0);
    }
    items.into_iter().flat_map(|(_, d)| d).collect()
}

/// Records of a manifest (after the header), as JSON values.
pub fn manifest_records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str(l).expect("record"))
        .collect()
}

/// Waits (bounded) until `cond` holds.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Spawns a worker in the background with piped output.
pub fn spawn(mut cmd: Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn worker")
}

/// Waits for a child with a bound; kills it and panics on timeout.
pub fn wait_child(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return s;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            panic!("process {} did not exit within {timeout:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// True while a process with this pid exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Sends a signal.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a pid we started.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// A tiny deterministic PRNG for test schedules (xorshift).
pub struct TestRng(pub u64);
impl TestRng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
