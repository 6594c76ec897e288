//! `merge --partition-by`: one Hive-style directory per value, safe names for hostile values,
//! every row in exactly one partition in item order, byte-identical trees, atomic replacement,
//! bounded descriptors, and the refusals.

use std::collections::BTreeMap;
use std::path::Path;

use crate::common::*;
use crate::formats::{check_partitions_with_readers, run_all_shards};
use crate::merge::{merge, merge_ok};

/// `key,tag,n` per item; `tag` cycles through values that are unsafe as directory names.
const HOSTILE_GEN: &str = r#"#!/bin/sh
k=$1
long=$(printf 'L%.0s' $(seq 300))
case $(( k % 13 )) in
0) v='../x' ;;
1) v='a/b' ;;
2) v='' ;;
3) v="$long" ;;
4) v="${long}2" ;;
5) v='日本語 é' ;;
6) v='a=b' ;;
7) v='50%' ;;
8) v='..' ;;
9) v='__HIVE_DEFAULT_PARTITION__' ;;
10) v='"with, comma ""and"" quote"' ;;
11) v='"two
lines"' ;;
*) v='plain' ;;
esac
printf '%s,%s,%s\n' "$k" "$v" "$((k * 3))"
"#;

fn hostile_project(format: &str, sharding: &str, items: u32) -> Project {
    let p = Project::new();
    p.script("gen.sh", HOSTILE_GEN);
    p.write(
        "conf.yaml",
        &format!(
            "run: h\nsharding: {sharding}\nitems: {{range: {{start: 0, end: {items}}}}}\n\
             generator: {{command: [./gen.sh, \"{{key}}\"], retries: 0}}\n\
             output: {{format: {format}, columns: [key, tag, {{name: n, type: int64}}]}}\n"
        ),
    );
    p
}

fn csv_rows(bytes: &[u8]) -> Vec<Vec<Vec<u8>>> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(bytes)
        .byte_records()
        .map(|r| r.unwrap().iter().map(<[u8]>::to_vec).collect())
        .collect()
}

/// Every file under `dir`, by path relative to it.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if e.path().is_dir() {
            for (k, v) in tree(&e.path()) {
                out.insert(format!("{name}/{k}"), v);
            }
        } else {
            out.insert(name, std::fs::read(e.path()).unwrap());
        }
    }
    out
}

fn hidden_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && n != ".locks")
        .collect()
}

#[test]
fn hostile_values_get_safe_directories_and_every_row_is_in_exactly_one() {
    let p = hostile_project("both", "stride", 52);
    run_all_shards(&p, 3);
    merge_ok(&p, &["--run", "h", "--keep-shards", "--format", "csv"]);
    let reference = std::fs::read(p.path("data/h/combined.csv")).unwrap();
    let all = csv_rows(&reference);
    let out = merge_ok(
        &p,
        &["--run", "h", "--keep-shards", "--partition-by", "tag"],
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("13 partitions by tag"), "{summary}");
    let root = p.path("data/h/combined");
    let mut seen = 0;
    let mut values = Vec::new();
    for e in std::fs::read_dir(&root).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let value = name.strip_prefix("tag=").expect(&name);
        assert!(
            name.len() < 255 && !value.contains("..") && !value.is_empty(),
            "{name}"
        );
        assert!(!name.chars().any(|c| c.is_control()), "{name:?}");
        let mut files: Vec<String> = std::fs::read_dir(e.path())
            .unwrap()
            .flatten()
            .map(|f| f.file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(files, ["part-00000.csv", "part-00000.parquet"], "{name}");
        let rows = csv_rows(&std::fs::read(e.path().join("part-00000.csv")).unwrap());
        assert_eq!(rows[0], all[0], "{name}: header");
        // One value per partition, its rows those of the dataset with that value, in item order.
        let v = rows[1][1].clone();
        let want: Vec<_> = all[1..].iter().filter(|r| r[1] == v).cloned().collect();
        assert_eq!(rows[1..], want[..], "{name}");
        seen += want.len();
        values.push(v);
    }
    values.sort();
    values.dedup();
    assert_eq!(values.len(), 13, "{}", p.listing());
    assert_eq!(seen, all.len() - 1);
    let stats: serde_json::Value =
        serde_json::from_str(&p.read("data/h/stats.json")).expect("stats.json");
    let parts = stats["partitioned"]["partitions"].as_array().unwrap();
    assert_eq!(stats["partitioned"]["column"], "tag");
    assert_eq!(parts.len(), 13);
    for part in parts {
        let dir = root.join(part["directory"].as_str().unwrap());
        let rows = csv_rows(&std::fs::read(dir.join("part-00000.csv")).unwrap());
        assert_eq!(part["rows"], rows.len() as u64 - 1, "{part}");
    }
    assert_eq!(hidden_entries(&p.path("data/h")), Vec::<String>::new());
    check_partitions_with_readers(
        &p,
        &root,
        &p.path("data/h/combined.csv"),
        "tag",
        r#"{"n": "int64"}"#,
    );
}

#[test]
fn the_partitioned_tree_is_byte_identical_for_any_shard_count_and_sharding() {
    let mut first: Option<BTreeMap<String, Vec<u8>>> = None;
    for (n, sharding) in [(1, "contiguous"), (3, "stride"), (4, "contiguous")] {
        let p = hostile_project("both", sharding, 30);
        run_all_shards(&p, n);
        merge_ok(&p, &["--run", "h", "--partition-by", "tag"]);
        let t = tree(&p.path("data/h/combined"));
        assert_eq!(t.len(), 26, "{}", p.listing());
        match &first {
            None => first = Some(t),
            Some(f) => assert!(*f == t, "{n} shards, {sharding}: the tree differs"),
        }
    }
}

#[test]
fn a_new_partitioned_merge_replaces_the_old_tree_whole_and_leaves_no_temporaries() {
    let p = hostile_project("csv", "contiguous", 26);
    run_all_shards(&p, 2);
    merge_ok(
        &p,
        &["--run", "h", "--keep-shards", "--partition-by", "tag"],
    );
    let old = tree(&p.path("data/h/combined"));
    assert!(
        old.keys().all(|k| k.ends_with("/part-00000.csv")),
        "{old:?}"
    );
    // What a merge killed while building a tree leaves; the next merge removes it.
    p.write(
        "data/h/.combined.partitions.tmp/tag=x/part-00000.csv",
        "junk",
    );
    merge_ok(
        &p,
        &[
            "--run",
            "h",
            "--keep-shards",
            "--partition-by",
            "n",
            "--format",
            "parquet",
            "--dedupe-key",
            "tag",
        ],
    );
    let new = tree(&p.path("data/h/combined"));
    // --dedupe-key applies to the whole dataset first: one row per tag, so 13 partitions.
    assert_eq!(new.len(), 13, "{new:?}");
    assert!(
        new.keys()
            .all(|k| k.starts_with("n=") && k.ends_with("/part-00000.parquet")),
        "{new:?}"
    );
    assert_eq!(hidden_entries(&p.path("data/h")), Vec::<String>::new());
}

#[test]
fn many_partitions_fit_a_small_open_file_limit() {
    let p = Project::new();
    p.write(
        "conf.yaml",
        "run: many\nitems: {range: {start: 0, end: 600}}\ngenerator: {builtin: echo}\n",
    );
    run_all_shards(&p, 2);
    let shell = format!(
        "ulimit -n 100 && exec {} --root {} --run many --partition-by key --format both",
        crate::merge::MERGE,
        p.root().display()
    );
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(&shell)
        .output()
        .unwrap();
    assert_exit(&out, 0, "merge under ulimit -n 100", p.root());
    let t = tree(&p.path("data/many/combined"));
    assert_eq!(t.len(), 1200, "{}", p.listing());
    let one = String::from_utf8(t["key=599/part-00000.csv"].clone()).unwrap();
    assert_eq!(one.lines().count(), 2, "{one}");
    assert!(one.lines().nth(1).unwrap().starts_with("599,"), "{one}");
}

#[test]
fn partition_by_refuses_what_it_cannot_do_and_changes_nothing() {
    let p = hostile_project("csv", "contiguous", 13);
    run_all_shards(&p, 1);
    let before = crate::merge::snapshot(&p, "h");
    for (args, says) in [
        (
            &["--partition-by", "nope"][..],
            "--partition-by \"nope\": no such column",
        ),
        (
            &["--partition-by", "tag", "--append"][..],
            "merge without --append",
        ),
    ] {
        let out = merge(&p, &[&["--run", "h"], args].concat());
        assert_exit(&out, 2, &format!("merge {args:?}"), p.root());
        assert!(stderr(&out).contains(says), "{}", stderr(&out));
        assert_eq!(crate::merge::snapshot(&p, "h"), before, "{}", p.listing());
        assert!(!p.path("data/h/combined").exists());
    }
    p.write("data/h/combined", "a file in the way");
    let out = merge(&p, &["--run", "h", "--partition-by", "tag"]);
    assert_exit(&out, 2, "merge with a file named combined", p.root());
    assert!(stderr(&out).contains("a file of that name exists"));
}
