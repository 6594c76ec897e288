//! The shard worker on good input: outputs, determinism, resume, cache, retries, logs.

use crate::common::*;

const ECHO: &str = "run: t\nseed: 3\nitems: {list: [alpha, beta, gamma, delta, epsilon]}\ngenerator: {builtin: echo, params: {rows: 2, pad: 3}}\n";

/// A command generator that counts its invocations in `calls.log` and prints 0-3 rows with
/// awkward characters, a pure function of the item.
const GEN: &str = r#"#!/bin/sh
echo "$SHARDRUN_ITEM_KEY" >> "$(dirname "$0")/calls.log"
n=$(( $2 % 4 ))
i=0
while [ $i -lt $n ]; do
  printf '%s,%s,"say ""hi"", %s"\n' "$1" "$i" "$3"
  i=$((i + 1))
done
"#;

fn command_config(p: &Project, items: u32, extra: &str) -> String {
    p.script("gen/gen.sh", GEN);
    format!(
        "run: c\nseed: 11\nitems: {{range: {{start: 0, end: {items}}}}}\n\
         generator:\n  command: [gen/gen.sh, \"{{key}}\", \"{{index}}\", \"{{seed}}\"]\n  retries: 0\n{extra}\
         output: {{columns: [key, row, text]}}\n"
    )
}

fn calls(p: &Project) -> usize {
    p.read("gen/calls.log").lines().count()
}

#[test]
fn echo_shards_write_their_contiguous_items_with_one_header() {
    let p = Project::new();
    p.write("t.yaml", ECHO);
    p.run_shard("t.yaml", 0, 2, &[], 0);
    p.run_shard("t.yaml", 1, 2, &[], 0);
    let s0 = p.read("data/t/process-0.csv");
    let keys: Vec<&str> = s0
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(s0.lines().next(), Some("key,index,seed,row,pad"));
    assert_eq!(keys, ["alpha", "alpha", "beta", "beta", "gamma", "gamma"]);
    assert!(s0.lines().nth(1).unwrap().ends_with(",0,xxx"), "{s0}");
    let s1 = p.read("data/t/process-1.csv");
    assert_eq!(s1.lines().count(), 5, "{s1}");
    assert!(p.path("data/t/run.json").is_file());
    let log = p.read("logs/t/shard_1_of_2.log");
    assert!(
        log.contains(" start ") && log.contains(" finish status=ok"),
        "{log}"
    );
}

#[test]
fn dataset_is_identical_for_any_shard_count_mode_and_jobs() {
    let p = Project::new();
    let base = command_config(&p, 40, "");
    let mut reference: Option<Vec<u8>> = None;
    for sharding in ["contiguous", "stride"] {
        for shards in [1u32, 3, 7] {
            for jobs in ["1", "4"] {
                let run = format!("d-{sharding}-{shards}-{jobs}");
                let cfg = base.replace("run: c", &format!("run: {run}\nsharding: {sharding}"));
                p.write("d.yaml", &cfg);
                for i in 0..shards {
                    p.run_shard("d.yaml", i, shards, &["--jobs", jobs, "--no-cache"], 0);
                }
                let data = p.dataset(&run);
                match &reference {
                    None => {
                        assert!(
                            data.len() > 500,
                            "too little data to compare: {}",
                            data.len()
                        );
                        reference = Some(data);
                    }
                    Some(r) => assert!(r == &data, "{run} differs from the 1-shard run"),
                }
            }
        }
    }
}

#[test]
fn vitals_dataset_is_identical_across_shard_counts() {
    let p = Project::new();
    let cfg = "run: v1\nitems: {range: {start: 0, end: 30}}\ngenerator: {builtin: vitals, params: {hours: 6}}\n";
    p.write("v.yaml", cfg);
    p.run_shard("v.yaml", 0, 1, &[], 0);
    p.write(
        "v.yaml",
        &cfg.replace("v1", "v3")
            .replace("items:", "sharding: stride\nitems:"),
    );
    for i in 0..3 {
        p.run_shard("v.yaml", i, 3, &["--jobs", "2"], 0);
    }
    let one = p.dataset("v1");
    assert!(one.len() > 1000);
    assert!(one == p.dataset("v3"));
}

#[test]
fn a_rerun_skips_committed_items() {
    let p = Project::new();
    p.write("c.yaml", &command_config(&p, 12, ""));
    p.run_shard("c.yaml", 0, 2, &["--no-cache"], 0);
    assert_eq!(calls(&p), 6);
    let before = std::fs::read(p.path("data/c/process-0.csv")).unwrap();
    p.run_shard("c.yaml", 0, 2, &["--no-cache"], 0);
    assert_eq!(calls(&p), 6, "a re-run must not invoke the generator again");
    assert_eq!(
        std::fs::read(p.path("data/c/process-0.csv")).unwrap(),
        before
    );
    let log = p.read("logs/c/shard_0_of_2.log");
    assert!(log.contains("committed=6"), "{log}");
}

#[test]
fn cache_serves_items_after_a_reshard_without_running_the_generator() {
    let p = Project::new();
    p.write("c.yaml", &command_config(&p, 20, ""));
    for i in 0..2 {
        p.run_shard("c.yaml", i, 2, &[], 0);
    }
    let reference = p.dataset("c");
    assert_eq!(calls(&p), 20);
    for i in 0..3 {
        p.run_shard("c.yaml", i, 3, &["--force"], 0);
    }
    assert_eq!(calls(&p), 20, "every item should come from the cache");
    let log = p.read("logs/c/shard_1_of_3.log");
    assert!(log.contains("status=cached"), "{log}");
    // The old plan's manifests were replaced by the new plan's.
    let manifests: Vec<_> = std::fs::read_dir(p.path("data/c"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("manifest_"))
        .collect();
    assert_eq!(manifests.len(), 3, "{manifests:?}");
    assert!(reference == p.dataset("c"));
    let recs = manifest_records(&p.path("data/c/manifest_shard2_of_3.jsonl"));
    assert!(recs.iter().all(|r| r["cached"] == true), "{recs:?}");
}

#[test]
fn editing_the_generator_script_makes_a_new_revision_that_the_cache_does_not_serve() {
    let p = Project::new();
    p.write("c.yaml", &command_config(&p, 4, ""));
    p.run_shard("c.yaml", 0, 1, &[], 0);
    assert_eq!(calls(&p), 4);
    p.script("gen/gen.sh", &format!("{GEN}\n# edited\n"));
    // Not refused: the committed items are kept, and counted as stale.
    let out = p.run_shard("c.yaml", 0, 1, &[], 0);
    assert!(stderr(&out).contains("stale=4"), "{}", stderr(&out));
    assert_eq!(calls(&p), 4);
    p.run_shard("c.yaml", 0, 1, &["--force"], 0);
    assert_eq!(calls(&p), 8, "an edited script must run again");
}

#[test]
fn a_changed_seed_refuses_to_resume_and_says_what_changed() {
    let p = Project::new();
    p.write("t.yaml", ECHO);
    p.run_shard("t.yaml", 0, 1, &[], 0);
    p.write("t.yaml", &ECHO.replace("seed: 3", "seed: 4"));
    let out = p.run_shard("t.yaml", 0, 1, &[], 2);
    let e = stderr(&out);
    assert!(e.contains("seed (3 -> 4)") && e.contains("--force"), "{e}");
    p.run_shard("t.yaml", 0, 1, &["--force"], 0);
    assert!(p
        .read("data/t/process-0.csv")
        .contains(&format!(",{},", shardrun::run::seed::item_seed(4, "alpha"))));
}

#[test]
fn a_bad_record_fails_its_item_and_the_rest_still_commit() {
    let p = Project::new();
    p.script(
        "g.sh",
        "#!/bin/sh\nif [ \"$1\" = b ]; then echo 'only,two'; else echo \"$1,1,2\"; fi\n",
    );
    p.write(
        "b.yaml",
        "run: b\nitems: {list: [a, b, c]}\ngenerator: {command: [./g.sh, \"{key}\"], retries: 1}\noutput: {columns: [k, x, y]}\n",
    );
    let out = p.run_shard("b.yaml", 0, 1, &[], 1);
    let recs = manifest_records(&p.path("data/b/manifest_shard0_of_1.jsonl"));
    let failed: Vec<_> = recs.iter().filter(|r| r["status"] == "failed").collect();
    assert_eq!(failed.len(), 1, "{recs:?}");
    assert_eq!(failed[0]["key"], "b");
    assert_eq!(failed[0]["attempts"], 2);
    let reason = failed[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("record 1 has 2 fields, expected 3"),
        "{reason}"
    );
    assert_eq!(p.read("data/b/process-0.csv"), "k,x,y\na,1,2\nc,1,2\n");
    assert!(stderr(&out).contains("item_failed"), "{}", stderr(&out));
}

#[test]
fn a_failed_item_is_retried_by_the_next_run() {
    let p = Project::new();
    p.script(
        "g.sh",
        "#!/bin/sh\nif [ \"$1\" = b ] && [ ! -f fixed ]; then exit 7; fi\necho \"$1\"\n",
    );
    p.write(
        "r.yaml",
        "run: r\nitems: {list: [a, b, c]}\ngenerator: {command: [./g.sh, \"{key}\"], retries: 0}\noutput: {columns: [k]}\n",
    );
    p.run_shard("r.yaml", 0, 1, &[], 1);
    let recs = manifest_records(&p.path("data/r/manifest_shard0_of_1.jsonl"));
    assert!(
        recs.iter().any(|r| r["reason"] == "exit code 7"),
        "{recs:?}"
    );
    p.write("fixed", "");
    p.run_shard("r.yaml", 0, 1, &[], 0);
    assert_eq!(p.dataset("r"), b"a\nb\nc\n");
}

#[test]
fn a_flaky_generator_succeeds_on_retry() {
    let p = Project::new();
    p.script(
        "g.sh",
        "#!/bin/sh\nif [ ! -f \"tried-$1\" ]; then touch \"tried-$1\"; echo boom >&2; exit 1; fi\necho \"$1\"\n",
    );
    p.write(
        "f.yaml",
        "run: f\nitems: {list: [a, b]}\ngenerator: {command: [./g.sh, \"{key}\"], retries: 1}\noutput: {columns: [k]}\n",
    );
    p.run_shard("f.yaml", 0, 1, &[], 0);
    let recs = manifest_records(&p.path("data/f/manifest_shard0_of_1.jsonl"));
    assert!(
        recs.iter()
            .all(|r| r["attempts"] == 2 && r["status"] == "ok"),
        "{recs:?}"
    );
    let log = p.read("logs/f/shard_0_of_1.log");
    assert!(log.contains("stderr key=a line=boom"), "{log}");
    assert!(
        log.contains("attempt_failed key=a index=0 attempt=1/2 reason=\"exit code 1\""),
        "{log}"
    );
}

#[test]
fn the_generator_gets_the_item_as_argv_env_and_json_on_stdin() {
    let p = Project::new();
    p.script(
        "g.sh",
        "#!/bin/sh\njson=$(cat)\nprintf '%s|%s|%s|%s|%s|%s,%s\\n' \"$SHARDRUN_ITEM_KEY\" \"$SHARDRUN_ITEM_INDEX\" \"$SHARDRUN_ITEM_SEED\" \"$SHARDRUN_SHARD_INDEX\" \"$SHARDRUN_NUM_SHARDS\" \"$1\" \"$(printf %s \"$json\" | tr ',' ';' | tr -d '\"')\"\n",
    );
    p.write(
        "e.yaml",
        "run: e\nseed: 5\nitems: {product: {t: [A, B], d: [x]}}\ngenerator: {command: [./g.sh, \"{t}-{shard}-{slot}\"]}\noutput: {columns: [a, b]}\n",
    );
    p.run_shard("e.yaml", 1, 2, &[], 0);
    let seed = shardrun::run::seed::item_seed(5, "B|x");
    assert_eq!(
        p.read("data/e/process-1.csv"),
        format!("a,b\nB|x|1|{seed}|1|2|B-1-0,{{index:1;key:B|x;seed:{seed};fields:{{t:B;d:x}}}}\n")
    );
}

#[test]
fn a_timeout_kills_the_whole_process_group() {
    let p = Project::new();
    p.script(
        "g.sh",
        "#!/bin/sh\nsleep 300 &\necho $! > child.pid\nsleep 300\n",
    );
    p.write(
        "t.yaml",
        "run: to\nitems: {list: [a]}\ngenerator: {command: [./g.sh], timeout: 300ms, retries: 0}\noutput: {columns: [k]}\n",
    );
    let start = std::time::Instant::now();
    p.run_shard("t.yaml", 0, 1, &[], 1);
    assert!(start.elapsed().as_secs() < 20);
    let pid: i32 = p.read("child.pid").trim().parse().unwrap();
    wait_for(
        "the background child to die",
        std::time::Duration::from_secs(5),
        || !alive(pid),
    );
    let recs = manifest_records(&p.path("data/to/manifest_shard0_of_1.jsonl"));
    assert_eq!(recs[0]["reason"], "timed out after 300ms");
}

#[test]
fn dry_run_prints_the_plan_and_writes_nothing() {
    let p = Project::new();
    p.write("t.yaml", ECHO);
    let out = p.run_shard("t.yaml", 1, 2, &["--dry-run"], 0);
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("2 items") && s.contains("delta … epsilon"),
        "{s}"
    );
    assert!(
        !p.path("data").exists() && !p.path("logs").exists(),
        "{}",
        p.listing()
    );
}

#[test]
fn the_shard_index_comes_from_slurm_or_kubernetes() {
    let p = Project::new();
    p.write("t.yaml", ECHO);
    let out = p
        .worker("t.yaml", &["--num-shards", "2"])
        .env("SLURM_ARRAY_TASK_ID", "1")
        .output()
        .unwrap();
    assert_exit(&out, 0, "slurm", p.root());
    assert!(p.path("data/t/process-1.csv").is_file());
    let out = p
        .worker("t.yaml", &["--num-shards", "3"])
        .env("JOB_COMPLETION_INDEX", "2")
        .output()
        .unwrap();
    assert_exit(&out, 0, "k8s", p.root());
    assert!(p.path("data/t/process-2.csv").is_file());
    let out = p
        .worker("t.yaml", &["--num-shards", "2"])
        .env("SLURM_ARRAY_TASK_ID", "x")
        .output()
        .unwrap();
    assert_exit(&out, 2, "bad env", p.root());
    assert!(stderr(&out).contains("SLURM_ARRAY_TASK_ID"));
}

#[test]
fn halt_stops_starting_items_after_enough_failures() {
    let p = Project::new();
    p.script("g.sh", "#!/bin/sh\nexit 1\n");
    p.write(
        "h.yaml",
        "run: h\nitems: {range: {start: 0, end: 50}}\ngenerator: {command: [./g.sh], retries: 0, halt: {failures: 3}}\noutput: {columns: [k]}\n",
    );
    p.run_shard("h.yaml", 0, 1, &[], 1);
    let recs = manifest_records(&p.path("data/h/manifest_shard0_of_1.jsonl"));
    assert_eq!(recs.len(), 3, "{recs:?}");
    assert!(p
        .read("logs/h/shard_0_of_1.log")
        .contains("finish status=halted"));
}

#[test]
fn an_empty_source_is_a_valid_header_only_shard() {
    let p = Project::new();
    p.write(
        "e.yaml",
        "run: e\nitems: {range: {start: 3, end: 3}}\ngenerator: {builtin: echo}\n",
    );
    p.run_shard("e.yaml", 0, 2, &[], 0);
    assert_eq!(p.read("data/e/process-0.csv"), "key,index,seed,row,pad\n");
}

#[test]
fn the_log_follows_the_documented_grammar() {
    let p = Project::new();
    p.write("t.yaml", ECHO);
    p.run_shard("t.yaml", 0, 1, &[], 0);
    let log = p.read("logs/t/shard_0_of_1.log");
    for line in log.lines() {
        let (ts, event, fields) =
            shardrun::store::log::parse_line(line).unwrap_or_else(|| panic!("bad line {line}"));
        assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok(), "{ts}");
        if event == "start" {
            let keys: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
            for k in [
                "pid",
                "pid_start",
                "host",
                "shard",
                "num_shards",
                "items",
                "committed",
            ] {
                assert!(keys.contains(&k), "start line lacks {k}: {line}");
            }
        }
    }
    let last = log.lines().last().unwrap();
    assert!(
        last.contains("finish status=ok done=5 total=5 failed=0") && last.contains("rows=10"),
        "{last}"
    );
}
