//! Bad input gets exit 2, one clear message naming the problem, and nothing written.

use crate::common::*;

const OK_ITEMS: &str = "items: {list: [a, b]}\n";

/// Runs shard 0 of 1 on `config` text with `args`; asserts exit 2, that stderr mentions every
/// `needle`, and that no data or log was written.
fn refused(config: &str, args: &[&str], needles: &[&str]) {
    let p = Project::new();
    p.write("conf/x.yaml", config);
    let mut all = vec!["--shard-index", "0", "--num-shards", "1"];
    if args
        .iter()
        .any(|a| a.starts_with("--shard-index") || a.starts_with("--num-shards"))
    {
        all.clear();
    }
    all.extend_from_slice(args);
    let out = p.run("conf/x.yaml", &all);
    assert_exit(
        &out,
        2,
        &format!("config:\n{config}\nargs: {args:?}"),
        p.root(),
    );
    let e = stderr(&out);
    for n in needles {
        assert!(e.contains(n), "stderr lacks {n:?}:\n{e}");
    }
    assert!(!e.contains("panicked"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "one message, got:\n{e}");
    assert!(
        !p.path("data").exists() && !p.path("logs").exists(),
        "wrote files:\n{}",
        p.listing()
    );
}

#[test]
fn malformed_yaml_names_line_and_column() {
    refused(
        "items: {list: [a, b]\ngenerator: {builtin: echo}\n",
        &[],
        &["conf/x.yaml", "line", "column"],
    );
}

#[test]
fn an_unknown_key_is_named() {
    refused(
        &format!("{OK_ITEMS}generator: {{builtin: echo}}\nbogus: 1\n"),
        &[],
        &["bogus", "line 3"],
    );
}

#[test]
fn builtin_and_command_must_be_exactly_one() {
    refused(
        &format!(
            "{OK_ITEMS}generator: {{builtin: echo, command: [x]}}\noutput: {{columns: [a]}}\n"
        ),
        &[],
        &["not both"],
    );
    refused(
        &format!("{OK_ITEMS}generator: {{retries: 1}}\n"),
        &[],
        &["builtin", "command"],
    );
}

#[test]
fn an_unknown_builtin_lists_the_known_ones() {
    refused(
        &format!("{OK_ITEMS}generator: {{builtin: vitalz}}\n"),
        &[],
        &["vitalz", "vitals, echo"],
    );
}

#[test]
fn bad_builtin_params_are_named() {
    refused(
        &format!("{OK_ITEMS}generator: {{builtin: echo, params: {{rowz: 2}}}}\n"),
        &[],
        &["rowz"],
    );
    refused(
        &format!("{OK_ITEMS}generator: {{builtin: echo, params: {{rows: -1}}}}\n"),
        &[],
        &["rows"],
    );
}

#[test]
fn shard_arguments_are_checked() {
    let cfg = format!("{OK_ITEMS}generator: {{builtin: echo}}\n");
    refused(
        &cfg,
        &["--shard-index", "0", "--num-shards", "0"],
        &["--num-shards"],
    );
    refused(
        &cfg,
        &["--shard-index", "4", "--num-shards", "4"],
        &["--shard-index 4", "0 to 3"],
    );
    refused(&cfg, &["--shard-index", "1"], &["--num-shards"]);
}

#[test]
fn unsafe_names_are_refused() {
    let cfg = format!("{OK_ITEMS}generator: {{builtin: echo}}\n");
    for name in ["a/b", "..", "../x", ".hidden", ""] {
        refused(&cfg, &["--name", name], &["--name"]);
    }
}

#[test]
fn missing_inputs_are_named() {
    refused(
        "items: {file: in/items.txt}\ngenerator: {builtin: echo}\n",
        &[],
        &["items.file", "in/items.txt"],
    );
    let p = Project::new();
    p.write("in/rows.csv", "id,text\n1,a\n");
    p.write(
        "x.yaml",
        "items: {csv: {path: in/rows.csv, key: sentence_id}}\ngenerator: {builtin: echo}\n",
    );
    let out = p.run("x.yaml", &[]);
    assert_exit(&out, 2, "missing csv key", p.root());
    assert!(stderr(&out).contains("sentence_id") && stderr(&out).contains("id, text"));
}

#[test]
fn duplicate_keys_name_both_positions() {
    refused(
        "items: {list: [a, b, a]}\ngenerator: {builtin: echo}\n",
        &[],
        &["\"a\"", "positions 0 and 2"],
    );
    let p = Project::new();
    p.write("items.txt", "x\ny\n\nx\n");
    p.write(
        "x.yaml",
        "items: {file: items.txt}\ngenerator: {builtin: echo}\n",
    );
    let out = p.run("x.yaml", &[]);
    assert_exit(&out, 2, "duplicate lines", p.root());
    assert!(stderr(&out).contains("lines 1 and 4"), "{}", stderr(&out));
}

#[test]
fn a_missing_command_is_detected_before_the_first_item() {
    refused(
        &format!("{OK_ITEMS}generator: {{command: [no-such-generator-xyz, \"{{key}}\"]}}\noutput: {{columns: [a]}}\n"),
        &[],
        &["no-such-generator-xyz"],
    );
    refused(
        &format!("{OK_ITEMS}generator: {{command: [./missing.py]}}\noutput: {{columns: [a]}}\n"),
        &[],
        &["./missing.py"],
    );
}

#[test]
fn an_unknown_placeholder_is_named() {
    refused(
        &format!(
            "{OK_ITEMS}generator: {{command: [sh, \"{{ticker}}\"]}}\noutput: {{columns: [a]}}\n"
        ),
        &[],
        &["{ticker}"],
    );
}

#[test]
fn a_missing_root_or_config_is_a_usage_error() {
    let p = Project::new();
    p.write(
        "x.yaml",
        &format!("{OK_ITEMS}generator: {{builtin: echo}}\n"),
    );
    let out = std::process::Command::new(WORKER)
        .args([
            "--config",
            p.path("x.yaml").to_str().unwrap(),
            "--root",
            "/nonexistent/root",
        ])
        .output()
        .unwrap();
    assert_exit(&out, 2, "missing root", p.root());
    assert!(stderr(&out).contains("/nonexistent/root"));
    let out = p.run("nope.yaml", &[]);
    assert_exit(&out, 2, "missing config", p.root());
    assert!(stderr(&out).contains("nope.yaml"));
}

#[test]
fn an_unwritable_data_directory_is_a_usage_error() {
    let p = Project::new();
    p.write(
        "x.yaml",
        &format!("run: w\n{OK_ITEMS}generator: {{builtin: echo}}\n"),
    );
    p.write("data", "a file where the data directory should be");
    let out = p.run("x.yaml", &[]);
    assert_exit(&out, 2, "unwritable data dir", p.root());
    assert!(stderr(&out).contains("data/w"), "{}", stderr(&out));
}

#[test]
fn two_shards_cannot_share_a_name() {
    let p = Project::new();
    p.write(
        "x.yaml",
        &format!("run: n\n{OK_ITEMS}generator: {{builtin: echo}}\n"),
    );
    p.run_shard("x.yaml", 0, 2, &["--name", "same"], 0);
    let out = p.run_shard("x.yaml", 1, 2, &["--name", "same"], 2);
    assert!(
        stderr(&out).contains("already belongs to shard 0 of 2"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_name_claimed_by_an_older_run_layout_is_found_and_a_stale_claim_is_not_a_conflict() {
    let p = Project::new();
    p.write(
        "x.yaml",
        &format!("run: n\n{OK_ITEMS}generator: {{builtin: echo}}\n"),
    );
    p.run_shard("x.yaml", 0, 3, &["--name", "same"], 0);
    // A run made before name claims: only the manifests say who uses a name.
    std::fs::remove_file(p.path("data/n/.locks/claims")).unwrap();
    std::fs::remove_file(p.path("data/n/.locks/same.csv.claim")).unwrap();
    let out = p.run_shard("x.yaml", 1, 3, &["--name", "same"], 2);
    assert!(
        stderr(&out).contains("already belongs to shard 0 of 3"),
        "{}",
        stderr(&out)
    );
    // The full read wrote the claims it found: the next refusal reads the claim alone.
    p.run_shard("x.yaml", 1, 3, &["--name", "other"], 0);
    assert!(p.path("data/n/.locks/claims").exists());
    assert_eq!(
        std::fs::read_to_string(p.path("data/n/.locks/same.csv.claim")).unwrap(),
        "0 3\n"
    );
    let out = p.run_shard("x.yaml", 2, 3, &["--name", "same"], 2);
    assert!(
        stderr(&out).contains("already belongs to shard 0 of 3"),
        "{}",
        stderr(&out)
    );
    // A claim whose manifest is gone (removed by hand) does not block the name.
    std::fs::remove_file(p.path("data/n/manifest_shard0_of_3.jsonl")).unwrap();
    p.run_shard("x.yaml", 2, 3, &["--name", "same"], 0);
    assert_eq!(
        std::fs::read_to_string(p.path("data/n/.locks/same.csv.claim")).unwrap(),
        "2 3\n"
    );
}

#[test]
fn a_worker_of_another_shard_plan_is_refused_the_name_unless_forced() {
    let p = Project::new();
    p.write(
        "x.yaml",
        &format!("run: n\n{OK_ITEMS}generator: {{builtin: echo}}\n"),
    );
    p.run_shard("x.yaml", 0, 2, &[], 0);
    p.run_shard("x.yaml", 1, 2, &[], 0);
    let out = p.run_shard("x.yaml", 1, 3, &[], 2);
    assert!(
        stderr(&out).contains("already belongs to shard 1 of 2")
            && stderr(&out).contains("made with 2 shards"),
        "{}",
        stderr(&out)
    );
    p.run_shard("x.yaml", 1, 3, &["--force"], 0);
    assert!(!p.path("data/n/manifest_shard1_of_2.jsonl").exists());
    assert!(p.path("data/n/manifest_shard0_of_2.jsonl").exists());
}

#[test]
fn an_item_past_max_item_bytes_fails_and_a_stderr_flood_is_capped_in_the_log() {
    let p = Project::new();
    // Item 1 writes 5,000 bytes of one field; item 2 writes 20 MiB to stderr and succeeds.
    p.script(
        "g.sh",
        "#!/bin/sh\nif [ \"$1\" = 1 ]; then printf '1,%05000d\\n' 0; exit 0; fi\n\
         if [ \"$1\" = 2 ]; then i=0; while [ $i -lt 20 ]; do head -c 1048576 /dev/zero | tr '\\0' 'e' | fold -w 100; i=$((i+1)); done >&2; echo last-line >&2; fi\n\
         echo \"$1,ok\"\n",
    );
    p.write(
        "c.yaml",
        "run: lim\nitems: {range: {start: 0, end: 4}}\n\
         generator: {command: [./g.sh, \"{key}\"], retries: 0, max_item_bytes: 4KiB}\n\
         output: {columns: [k, v]}\n",
    );
    let out = p.run_shard("c.yaml", 0, 1, &["--quiet"], 1);
    let recs = manifest_records(&p.path("data/lim/manifest_shard0_of_1.jsonl"));
    let failed: Vec<_> = recs.iter().filter(|r| r["status"] == "failed").collect();
    assert_eq!(failed.len(), 1, "{recs:?}");
    assert_eq!(failed[0]["key"], "1");
    assert!(
        failed[0]["reason"]
            .as_str()
            .unwrap()
            .contains("max_item_bytes (4096 bytes)"),
        "{:?}",
        failed[0]
    );
    let log = p.read("logs/lim/shard_0_of_1.log");
    assert!(
        log.len() < 1 << 20,
        "the log keeps a bounded part of the stderr flood: {} bytes",
        log.len()
    );
    assert!(
        log.contains(" stderr_dropped key=2 lines="),
        "{}",
        &log[..2000]
    );
    assert!(log.contains("last-line\n"), "the end of stderr is kept");
    drop(out);
    // A bad size is a clear configuration error.
    p.write(
        "d.yaml",
        &p.read("c.yaml")
            .replace("4KiB", "4 parsecs")
            .replace("run: lim", "run: d"),
    );
    let out = p.run_shard("d.yaml", 0, 1, &[], 2);
    assert!(
        stderr(&out).contains("generator.max_item_bytes"),
        "{}",
        stderr(&out)
    );
}
