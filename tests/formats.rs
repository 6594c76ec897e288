//! Typed columns and the merged formats: a value that is not its column's type fails its item
//! with the reason (the rest merge); `output.format` / `merge --format` write `combined.parquet`.

use std::path::Path;

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

/// Every kind of value, by `key % 7`: strings with quotes, CR, LF, unicode, commas, an empty
/// string; each type at its edges and empty (null).
const TRICKY_GEN: &str = r#"#!/bin/sh
k=$1
case $(( k % 7 )) in
0) printf '%s,plain,%s,1.5,true,2024-02-29,2024-01-01T00:00:00Z\n' "$k" "$k" ;;
1) printf '%s,"say ""hi""",-9223372036854775808,1e-300,false,1969-12-31,1969-12-31T23:59:59.999999Z\n' "$k" ;;
2) printf '%s,"a\r\nb",,,,,\n' "$k" ;;
3) printf '%s,"line1\nline2",9223372036854775807,inf,TRUE,0001-01-01,2024-06-30 12:00:00.5+02:00\n' "$k" ;;
4) printf '%s,héllo wörld — 日本語 🎉,+7,nan,0,9999-12-31,2000-02-29T12:34:56.123456-05:30\n' "$k" ;;
5) printf '%s,"",0,-2.5e10,1,2000-01-01,2000-01-01T00:00:00\n%s,,1,0.1,False,2000-01-02,\n' "$k" "$k" ;;
*) printf '%s," a, b \ry",-1,-0.5,,1970-01-01,\n' "$k" ;;
esac
"#;

const TRICKY_COLUMNS: &str = "[key, text, {name: n, type: int64}, {name: x, type: float64}, \
    {name: flag, type: bool}, {name: day, type: date}, {name: at, type: timestamp}]";

fn tricky_project(format: &str, sharding: &str) -> Project {
    let p = Project::new();
    p.script("gen.sh", TRICKY_GEN);
    p.write(
        "conf.yaml",
        &format!(
            "run: tricky\nsharding: {sharding}\nitems: {{range: {{start: 0, end: 35}}}}\n\
             generator: {{command: [./gen.sh, \"{{key}}\"], retries: 0}}\n\
             output: {{format: {format}, columns: {TRICKY_COLUMNS}}}\n"
        ),
    );
    p
}

/// The Python environment `scripts/test.sh` sets up, when it is ready.
fn python_venv() -> Option<std::path::PathBuf> {
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/py-venv");
    venv.join(".shardrun-ready")
        .is_file()
        .then(|| venv.join("bin/python"))
}

pub fn run_all_shards(p: &Project, n: u32) {
    for i in 0..n {
        p.run_shard("conf.yaml", i, n, &[], 0);
    }
}

#[test]
fn parquet_readers_get_the_values_and_types_of_the_csv() {
    let p = tricky_project("both", "contiguous");
    run_all_shards(&p, 3);
    let out = merge_ok(&p, &["--run", "tricky"]);
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("combined.csv and "), "{summary}");
    let csv = p.path("data/tricky/combined.csv");
    let parquet = p.path("data/tricky/combined.parquet");
    assert!(parquet.is_file(), "{}", p.listing());
    let spec =
        r#"{"n": "int64", "x": "float64", "flag": "bool", "day": "date", "at": "timestamp"}"#;
    check_with_readers(&p, &parquet, &csv, spec, 40);
}

/// Runs tests/parquet_interop.py on `parquet` against `csv` read with the types of `spec` (a
/// JSON object column -> type), when the Python environment is there; says so when it is not.
fn check_with_readers(p: &Project, parquet: &Path, csv: &Path, spec: &str, rows: usize) {
    let Some(python) = python_venv() else {
        eprintln!(
            "\n*** SKIPPED: parquet interop: no Python environment at target/py-venv \
             (./scripts/test.sh sets it up with pyarrow, pandas, polars, duckdb, datasets) ***\n"
        );
        return;
    };
    let out = std::process::Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/parquet_interop.py"
        ))
        .arg(parquet)
        .arg(csv)
        .arg(spec)
        .output()
        .expect("run python");
    assert_exit(&out, 0, "parquet_interop.py", p.root());
    let said = String::from_utf8_lossy(&out.stdout);
    for reader in ["pyarrow", "pandas", "polars", "duckdb"] {
        assert!(said.contains(&format!("{reader}: {rows} rows")), "{said}");
    }
    eprintln!("{said}");
}

/// Runs tests/parquet_interop.py --partitioned on the tree of `merge --partition-by column`
/// against the unpartitioned `csv`, when the Python environment is there.
pub fn check_partitions_with_readers(
    p: &Project,
    tree: &Path,
    csv: &Path,
    column: &str,
    spec: &str,
) {
    let Some(python) = python_venv() else {
        eprintln!("\n*** SKIPPED: partitioned parquet interop: no Python environment at target/py-venv ***\n");
        return;
    };
    let out = std::process::Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/parquet_interop.py"
        ))
        .arg("--partitioned")
        .args([tree, csv])
        .args([column, spec])
        .output()
        .expect("run python");
    assert_exit(&out, 0, "parquet_interop.py --partitioned", p.root());
    let said = String::from_utf8_lossy(&out.stdout);
    for reader in [
        "pyarrow files",
        "pyarrow hive",
        "duckdb files",
        "duckdb hive",
    ] {
        assert!(said.contains(&format!("{reader}: ")), "{said}");
    }
    eprintln!("{said}");
}

#[test]
fn the_vitals_builtin_gives_a_typed_parquet_that_the_readers_load() {
    let p = Project::new();
    p.write(
        "conf.yaml",
        "run: v\nitems: {range: {start: 0, end: 20}}\n\
         generator: {builtin: vitals, params: {hours: 4}}\noutput: {format: both}\n",
    );
    run_all_shards(&p, 2);
    merge_ok(&p, &["--run", "v"]);
    let csv = p.path("data/v/combined.csv");
    let header = p.read("data/v/combined.csv");
    let header = header.lines().next().unwrap();
    let spec: serde_json::Map<String, serde_json::Value> = header
        .split(',')
        .filter(|c| *c != "patient")
        .map(|c| {
            let ty = if ["window_start", "window_end", "label"].contains(&c) {
                "int64"
            } else {
                "float64"
            };
            (c.to_string(), ty.into())
        })
        .collect();
    let spec = serde_json::Value::Object(spec).to_string();
    check_with_readers(&p, &p.path("data/v/combined.parquet"), &csv, &spec, 140);
}

#[test]
fn combined_parquet_is_byte_identical_for_any_shard_count_and_sharding() {
    let mut first: Option<Vec<u8>> = None;
    for (n, sharding) in [
        (1, "contiguous"),
        (3, "contiguous"),
        (7, "contiguous"),
        (3, "stride"),
        (7, "stride"),
    ] {
        let p = tricky_project("parquet", sharding);
        run_all_shards(&p, n);
        let out = merge_ok(&p, &["--run", "tricky"]);
        let summary = String::from_utf8_lossy(&out.stdout);
        assert!(
            summary.contains("-> ") && summary.contains("combined.parquet\n"),
            "{summary}"
        );
        // The format parquet alone leaves no CSV behind (nor any temporary file).
        let names: Vec<String> = std::fs::read_dir(p.path("data/tricky"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("combined") || n.ends_with(".tmp"))
            .collect();
        assert_eq!(names, ["combined.parquet"], "{}", p.listing());
        let bytes = std::fs::read(p.path("data/tricky/combined.parquet")).unwrap();
        assert_eq!(&bytes[..4], b"PAR1");
        match &first {
            None => first = Some(bytes),
            Some(f) => assert!(
                *f == bytes,
                "{n} shards, {sharding}: combined.parquet differs"
            ),
        }
    }
}

#[test]
fn merge_format_overrides_the_configuration() {
    let p = tricky_project("csv", "contiguous");
    run_all_shards(&p, 1);
    merge_ok(
        &p,
        &["--run", "tricky", "--keep-shards", "--format", "parquet"],
    );
    assert!(p.path("data/tricky/combined.parquet").is_file());
    assert!(
        !p.path("data/tricky/combined.csv").exists(),
        "{}",
        p.listing()
    );
}

/// `--append` (and `--dedupe-key` with it) under the format parquet alone grows
/// combined.parquet: the result is the very file that the same merges give under the format
/// both, where the rows come from combined.csv. (Before, parquet alone refused --append.)
#[test]
fn append_and_dedupe_grow_combined_parquet_as_they_grow_combined_csv() {
    let mut files = Vec::new();
    for format in ["both", "parquet"] {
        let p = tricky_project(format, "contiguous");
        run_all_shards(&p, 2);
        merge_ok(&p, &["--run", "tricky", "--keep-shards"]);
        let out = merge_ok(&p, &["--run", "tricky", "--keep-shards", "--append"]);
        let summary = String::from_utf8_lossy(&out.stdout);
        assert!(summary.contains(", 80 rows,"), "{format}: {summary}");
        let doubled = std::fs::read(p.path("data/tricky/combined.parquet")).unwrap();
        merge_ok(&p, &["--run", "tricky", "--append", "--dedupe-key", "key"]);
        let stats = p.read("data/tricky/stats.json");
        let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
        assert_eq!(stats["rows_appended_to"], 80, "{format}: {stats}");
        assert_eq!(stats["rows"], 35, "{format}: {stats}");
        let deduped = std::fs::read(p.path("data/tricky/combined.parquet")).unwrap();
        // No temporary file stays behind.
        let hidden: Vec<String> = std::fs::read_dir(p.path("data/tricky"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(hidden.is_empty(), "{hidden:?}");
        files.push((doubled, deduped));
    }
    assert!(
        files[0].0 == files[1].0,
        "appended combined.parquet differs"
    );
    assert!(
        files[0].1 == files[1].1,
        "deduplicated combined.parquet differs"
    );
}

#[test]
fn append_refuses_a_combined_parquet_of_other_columns_and_changes_nothing() {
    let p = tricky_project("parquet", "contiguous");
    run_all_shards(&p, 1);
    merge_ok(&p, &["--run", "tricky", "--keep-shards"]);
    // The same run under a configuration whose `n` is a string column.
    let conf = p.read("conf.yaml").replace("{name: n, type: int64}", "n");
    p.write("conf.yaml", &conf);
    p.run_shard("conf.yaml", 0, 1, &["--force"], 0);
    let before = crate::merge::snapshot(&p, "tricky");
    let out = crate::merge::merge(&p, &["--run", "tricky", "--append"]);
    assert_exit(&out, 1, "merge --append", p.root());
    let e = stderr(&out);
    assert!(
        e.contains("column 3 is \"n\" (int64), the shards' is \"n\" (string)"),
        "{e}"
    );
    assert_eq!(
        crate::merge::snapshot(&p, "tricky"),
        before,
        "{}",
        p.listing()
    );
}

#[test]
fn merge_refuses_a_value_its_column_type_does_not_read_and_changes_nothing() {
    // Shards written before the column was typed: its header is given the types afterwards, as
    // a manifest of another configuration would hold them.
    let p = typed_project("both");
    let untyped = p
        .read("conf.yaml")
        .replace("{name: score, type: float64}", "score");
    p.write("conf.yaml", &untyped);
    p.run_shard("conf.yaml", 0, 1, &[], 0);
    let manifest = p.path("data/typed/manifest_shard0_of_1.jsonl");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let (head, rest) = text.split_once('\n').unwrap();
    let mut header: serde_json::Value = serde_json::from_str(head).unwrap();
    header["types"] = serde_json::json!(["string", "float64", "date"]);
    std::fs::write(&manifest, format!("{header}\n{rest}")).unwrap();
    let before = crate::merge::snapshot(&p, "typed");
    let out = crate::merge::merge(&p, &["--run", "typed"]);
    assert_exit(&out, 1, "merge", p.root());
    let e = stderr(&out);
    assert!(
        e.contains("column \"score\" (float64): \"abc\" is not a float64"),
        "{e}"
    );
    assert_eq!(
        crate::merge::snapshot(&p, "typed"),
        before,
        "{}",
        p.listing()
    );
}

#[test]
fn strings_pass_through_as_bytes_for_csv_and_must_be_utf8_for_parquet() {
    let gen = "#!/bin/sh\nif [ \"$1\" = 1 ]; then printf '%s,\\377\\n' \"$1\"; else printf '%s,ok\\n' \"$1\"; fi\n";
    for (format, want) in [("csv", 0), ("parquet", 1)] {
        let p = Project::new();
        p.script("gen.sh", gen);
        p.write(
            "conf.yaml",
            &format!(
                "run: bytes\nitems: {{range: {{start: 0, end: 3}}}}\n\
                 generator: {{command: [./gen.sh, \"{{key}}\"], retries: 0}}\n\
                 output: {{format: {format}, columns: [key, text]}}\n"
            ),
        );
        p.run_shard("conf.yaml", 0, 1, &[], want);
        let records = manifest_records(&p.path("data/bytes/manifest_shard0_of_1.jsonl"));
        let failed: Vec<_> = records.iter().filter(|r| r["status"] == "failed").collect();
        if format == "csv" {
            assert!(failed.is_empty(), "{records:?}");
            // The CSV data keeps the byte; merging it to Parquet is refused, naming it.
            let out = crate::merge::merge(&p, &["--run", "bytes", "--format", "both"]);
            assert_exit(&out, 1, "merge --format both", p.root());
            let e = stderr(&out);
            assert!(
                e.contains("row 2 of the merged dataset, column \"text\" (string)")
                    && e.contains("is not UTF-8"),
                "{e}"
            );
            assert!(
                !p.path("data/bytes/combined.csv").exists(),
                "{}",
                p.listing()
            );
            merge_ok(&p, &["--run", "bytes"]);
            let csv = std::fs::read(p.path("data/bytes/combined.csv")).unwrap();
            assert_eq!(csv, b"key,text\n0,ok\n1,\xff\n2,ok\n");
        } else {
            assert_eq!(failed.len(), 1, "{records:?}");
            let reason = failed[0]["reason"].as_str().unwrap();
            assert!(
                reason.contains("column \"text\" (string), row 1") && reason.contains("UTF-8"),
                "{reason}"
            );
        }
    }
}

/// A shard that committed its items out of order (`jobs: 3`, a slow first item) makes merge
/// discard its background copy of the data, and so the Parquet file and the partitions made from
/// that copy while the manifests were read: they are made again from the dataset in item order.
#[test]
fn files_made_from_a_discarded_copy_are_made_again_in_item_order() {
    let mut outputs = Vec::new();
    for jobs in [1, 3] {
        let p = Project::new();
        p.script(
            "gen.sh",
            "#!/bin/sh\n[ $(( $1 % 6 )) = 0 ] && sleep 0.3\nprintf '%s,t%s,%s\\n' \"$1\" $(( $1 % 4 )) \"$1\"\n",
        );
        p.write(
            "conf.yaml",
            &format!(
                "run: o\nitems: {{range: {{start: 0, end: 12}}}}\n\
                 generator: {{command: [./gen.sh, \"{{key}}\"], jobs: {jobs}}}\n\
                 output: {{format: both, columns: [key, tag, {{name: n, type: int64}}]}}\n"
            ),
        );
        run_all_shards(&p, 1);
        let records = manifest_records(&p.path("data/o/manifest_shard0_of_1.jsonl"));
        let order: Vec<&str> = records[1..]
            .iter()
            .map(|r| r["key"].as_str().unwrap())
            .collect();
        if jobs == 3 {
            assert_ne!(order[0], "0", "items were committed in order: {order:?}");
        }
        merge_ok(&p, &["--run", "o", "--keep-shards"]);
        let parquet = std::fs::read(p.path("data/o/combined.parquet")).unwrap();
        merge_ok(&p, &["--run", "o", "--partition-by", "tag"]);
        let tree: Vec<Vec<u8>> = (0..4)
            .map(|t| {
                std::fs::read(p.path(&format!("data/o/combined/tag=t{t}/part-00000.parquet")))
                    .unwrap()
            })
            .collect();
        outputs.push((parquet, tree));
    }
    assert!(
        outputs[0] == outputs[1],
        "the Parquet outputs differ with jobs: 3"
    );
}
