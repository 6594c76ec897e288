//! Documented maxima: numbers on every command line, plan sizes and configuration files beyond
//! them are refused up front (exit 2, naming the limit), never looped over, wrapped, aborted on
//! or parsed for minutes.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::*;

const MONITOR: &str = env!("CARGO_BIN_EXE_monitor");

fn script(name: &str) -> Command {
    let mut c = Command::new(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("scripts")
            .join(name),
    );
    c.env("SHARDRUN_BIN", Path::new(WORKER).parent().expect("bin dir"))
        .env("SHARDRUN_NO_DISPLAY", "1")
        .env_remove("SHARDRUN_MAX_ARRAY_SIZE")
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX");
    c
}

/// Runs `cmd` with a bound: a command that loops is killed and fails the test.
fn bounded(what: &str, cmd: Command, p: &Project, want: i32) -> String {
    let mut child = spawn(cmd);
    wait_child(&mut child, Duration::from_secs(20));
    let out = child.wait_with_output().unwrap();
    assert_exit(&out, want, what, p.root());
    stderr(&out)
}

/// Regression: `run_parallel.sh --num-shards 99999999999999999999` looped forever (and grew to
/// gigabytes), `18446744073709551617` wrapped to 1; monitor's `--interval 1e300` panicked.
#[test]
fn numbers_above_their_documented_maximum_exit_2_naming_it() {
    let p = Project::new();
    p.write(
        "c.yaml",
        "run: c\nitems: {range: {start: 0, end: 4}}\ngenerator: {builtin: echo}\n",
    );
    let huge = ["99999999999999999999", "18446744073709551617", "100001"];
    for n in huge {
        for name in ["run_parallel.sh", "run_slurm.sh"] {
            let mut cmd = script(name);
            cmd.current_dir(p.root())
                .args(["--config", "c.yaml", "--dry-run", "--num-shards", n]);
            let e = bounded(&format!("{name} --num-shards {n}"), cmd, &p, 2);
            assert!(e.contains("from 1 to 100000"), "{e}");
        }
        let out = p.run("c.yaml", &["--shard-index", "0", "--num-shards", n]);
        assert_exit(&out, 2, &format!("worker --num-shards {n}"), p.root());
    }
    for (flag, v) in [
        ("--jobs", "1025"),
        ("--jobs", "18446744073709551617"),
        ("--stagger", "99999999999999999999"),
        ("--grace", "3601"),
        ("--grace", "3600.5"),
    ] {
        let mut cmd = script("run_parallel.sh");
        cmd.current_dir(p.root())
            .args(["--config", "c.yaml", "--dry-run", flag, v]);
        let e = bounded(&format!("run_parallel.sh {flag} {v}"), cmd, &p, 2);
        assert!(e.contains(flag) && e.contains(" to "), "{e}");
    }
    let mut cmd = script("run_slurm.sh");
    cmd.current_dir(p.root()).args([
        "--config",
        "c.yaml",
        "--dry-run",
        "--num-shards",
        "2",
        "--throttle",
        "99999999999999999999",
    ]);
    bounded("run_slurm.sh --throttle", cmd, &p, 2);
    let mut cmd = script("run_slurm.sh");
    cmd.current_dir(p.root())
        .args(["--config", "c.yaml", "--dry-run", "--num-shards", "2"])
        .env("SHARDRUN_MAX_ARRAY_SIZE", "99999999999999999999");
    bounded("SHARDRUN_MAX_ARRAY_SIZE", cmd, &p, 2);
    // The largest documented value still works.
    let mut cmd = script("run_parallel.sh");
    cmd.current_dir(p.root())
        .args(["--config", "c.yaml", "--dry-run", "--grace", "3600.0"]);
    bounded("run_parallel.sh --grace 3600.0", cmd, &p, 0);
    // The configuration's `shards`.
    p.write(
        "big.yaml",
        "run: b\nshards: 100001\nitems: {range: {start: 0, end: 4}}\ngenerator: {builtin: echo}\n",
    );
    let out = p.run("big.yaml", &["--dry-run"]);
    assert_exit(&out, 2, "shards: 100001", p.root());
    assert!(stderr(&out).contains("1 to 100000"), "{}", stderr(&out));
    // monitor's durations and shard count.
    p.run_shard("c.yaml", 0, 1, &[], 0);
    for args in [
        &["--interval", "1e300"][..],
        &["--stall", "1e300"],
        &["--stall", "inf"],
        &["--num-shards", "0"],
        &["--num-shards", "100001"],
    ] {
        let mut cmd = Command::new(MONITOR);
        cmd.arg("--root")
            .arg(p.root())
            .args(["--run", "c"])
            .args(args);
        let e = bounded(&format!("monitor {args:?}"), cmd, &p, 2);
        assert!(!e.contains("panicked"), "{e}");
    }
}

/// Regression: a range of 10^12 items or a product of 10^18 passed `--dry-run`, then the worker
/// aborted (exit 134) allocating a bit per item of its shard. Refused up front now, with the
/// limit and the shard count that fits.
#[test]
fn plans_too_large_for_bounded_memory_are_refused_up_front() {
    let p = Project::new();
    p.write(
        "r.yaml",
        "run: r\nitems: {range: {start: 0, end: 1000000000000}}\ngenerator: {builtin: echo}\n",
    );
    for args in [&["--dry-run"][..], &[]] {
        let out = p.run("r.yaml", args);
        assert_exit(&out, 2, &format!("range of 10^12, {args:?}"), p.root());
        let e = stderr(&out);
        assert!(
            e.contains("at most 50000000") && e.contains("--num-shards 20000"),
            "{e}"
        );
    }
    assert!(!p.path("data/r").exists(), "a refused plan wrote nothing");
    // The hint works: shard 0 of 20000 holds 50,000,000 items.
    let out = p.run(
        "r.yaml",
        &["--shard-index", "0", "--num-shards", "20000", "--dry-run"],
    );
    assert_exit(&out, 0, "range of 10^12 on 20000 shards", p.root());
    // A product of 100^9 = 10^18 items: beyond the source limit, like a range.
    let dims: Vec<String> = (0..9)
        .map(|d| {
            let values: Vec<String> = (0..100).map(|v| v.to_string()).collect();
            format!("f{d}: [{}]", values.join(", "))
        })
        .collect();
    p.write(
        "p.yaml",
        &format!(
            "run: p\nitems: {{product: {{{}}}}}\ngenerator: {{builtin: echo}}\n",
            dims.join(", ")
        ),
    );
    let out = p.run("p.yaml", &["--dry-run"]);
    assert_exit(&out, 2, "product of 10^18", p.root());
    assert!(
        stderr(&out).contains("items.product: more than 1099511627776 items"),
        "{}",
        stderr(&out)
    );
}

/// Regression: 160 KB of nested flow lists took 96 s of CPU before the YAML parser gave up;
/// a configuration is now refused by its shape (size, nesting) before it is parsed.
#[test]
fn a_deeply_nested_or_huge_configuration_is_refused_before_parsing() {
    let p = Project::new();
    let n = 80_000;
    p.write(
        "deep.yaml",
        &format!(
            "items: {{list: {}a{}}}\ngenerator: {{builtin: echo}}\n",
            "[".repeat(n),
            "]".repeat(n)
        ),
    );
    let t = std::time::Instant::now();
    let e = bounded("deep nesting", p.worker("deep.yaml", &["--dry-run"]), &p, 2);
    assert!(e.contains("nested deeper than 64 levels"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let mut big = String::from("items: {list: [a]}\ngenerator: {builtin: echo}\n");
    while big.len() <= 16 << 20 {
        big.push_str(&format!("# {}\n", "x".repeat(1000)));
    }
    p.write("big.yaml", &big);
    let e = bounded(
        "a 16 MiB configuration",
        p.worker("big.yaml", &["--dry-run"]),
        &p,
        2,
    );
    assert!(e.contains("at most 16777216"), "{e}");
}
