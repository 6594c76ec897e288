//! Typed columns and the merged formats: a value that is not its column's type fails its item
//! with the reason (the rest merge); `output.format` / `merge --format` write `combined.parquet`.

use crate::common::*;
use crate::merge::merge_ok;

/// A generator writing two rows per item, `key,score,day`; on key 5 the second row's score is
/// not a number.
const TYPED_GEN: &str = "#!/bin/sh\n\
    echo \"$1,1.5,2024-01-0$(( $1 % 9 + 1 ))\"\n\
    if [ \"$1\" = 5 ]; then echo \"$1,abc,\"; else echo \"$1,,\"; fi\n";

fn typed_project(format: &str) -> Project {
    let p = Project::new();
    p.script("gen.sh", TYPED_GEN);
    p.write(
        "conf.yaml",
        &format!(
            "run: typed\nitems: {{range: {{start: 0, end: 12}}}}\n\
             generator: {{command: [./gen.sh, \"{{key}}\"], retries: 0}}\n\
             output:\n  format: {format}\n  columns:\n    - key\n    - {{name: score, type: float64}}\n    - {{name: day, type: date}}\n"
        ),
    );
    p
}

#[test]
fn a_value_not_of_its_column_type_fails_the_item_with_the_reason() {
    let p = typed_project("csv");
    let out = p.run_shard("conf.yaml", 0, 1, &[], 1);
    let records = manifest_records(&p.path("data/typed/manifest_shard0_of_1.jsonl"));
    let failed: Vec<_> = records.iter().filter(|r| r["status"] == "failed").collect();
    assert_eq!(failed.len(), 1, "{records:?}");
    assert_eq!(failed[0]["key"], "5");
    let reason = failed[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("column \"score\" (float64), row 2: \"abc\""),
        "{reason}\n{}",
        stderr(&out)
    );
    // The rest merge, empty fields (nulls) included.
    merge_ok(&p, &["--run", "typed", "--allow-partial"]);
    let csv = p.read("data/typed/combined.csv");
    assert_eq!(csv.lines().count(), 1 + 11 * 2, "{csv}");
    assert!(
        csv.starts_with("key,score,day\n0,1.5,2024-01-01\n0,,\n"),
        "{csv}"
    );
    assert!(!csv.contains("abc"), "{csv}");
}

#[test]
fn a_bad_column_type_is_refused_up_front() {
    let p = Project::new();
    p.script("gen.sh", TYPED_GEN);
    p.write(
        "conf.yaml",
        "items: {range: {start: 0, end: 2}}\ngenerator: {command: [./gen.sh, \"{key}\"]}\n\
         output: {columns: [key, {name: score, type: float32}]}\n",
    );
    let out = p.run("conf.yaml", &[]);
    assert_exit(&out, 2, "worker", p.root());
    let e = stderr(&out);
    assert!(
        e.contains("output.columns[1]: type \"float32\" of column \"score\" is not a type"),
        "{e}"
    );
}
