#!/usr/bin/env bash
# Merge benchmark: `merge --keep-shards` against a durable copy of the same shard files (`cat` of
# the shard files into one file, then `sync` of that file), on shards made once by the echo
# generator: (a) 8 shards of ~256 MiB with wide rows, (b) 2 shards of 2,000,000 one-row items,
# (c) the shards of (b) under a stride plan (items interleaved one by one; no target),
# (p) 4,000,000 one-row items of typed columns merged to Parquet (`--format parquet`) against
# DuckDB turning the same rows, read from the merged CSV, into Parquet (`COPY (SELECT ...) TO`).
#
#   ./scripts/bench_merge.sh [--scale S] [--reps N] [--case a|b|c|p|all] [--workdir DIR]
#
#   --scale S       multiply the item counts by S (default 1; e.g. 0.02 for a quick run)
#   --reps N        timed runs of each command, one hyperfine call for both (default 5)
#   --case C        a, b, c, p or all (default all)
#   --workdir DIR   where the shards and outputs go (created if missing, kept at exit);
#                   default: a fresh directory under ${TMPDIR:-/tmp}, removed at exit
#
# Reports the median wall time of each command, their ratio against the target, and merge's peak
# RSS (/usr/bin/time -v). Needs hyperfine and jq (exits 2 without them). Case p needs DuckDB's
# Python package: the test environment (target/py-venv, made by scripts/test.sh), a python3 that
# imports duckdb, or `pip install duckdb`.
# Results: docs/BENCHMARKS.md.
set -Eeuo pipefail
shopt -s inherit_errexit
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  sed -n '2,/^set -Eeuo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

# spec_of a|b|c: sets SPEC to the case's run name, shards, items at scale 1, rows per item, pad,
# target ratio (- for none), description, sharding and peak RSS limit (MiB).
# (a): 64 rows of ~4 KiB per item, 1,042 items per shard: ~256 MiB per shard.
# (b): one row of ~130 bytes per item, 2,000,000 items per shard.
spec_of() {
  case "$1" in
    a) SPEC=(wide 8 8336 64 4000 1.15 "8 shards x ~256 MiB, wide rows (64 rows x pad 4000 per item)" contiguous 64) ;;
    b) SPEC=(narrow 2 4000000 1 100 2 "2 shards x 2,000,000 one-row items, pad 100" contiguous 64) ;;
    c) SPEC=(strided 2 4000000 1 100 - "as b, stride plan (no target)" stride 64) ;;
    p) SPEC=(typed 2 4000000 1 16 1 "2 shards x 2,000,000 one-row echo items (key string, index/seed/row int64, pad string of 16) to Parquet; baseline: DuckDB COPY from the merged CSV" contiguous 256) ;;
  esac
}
SPEC=()
DUCK_PY=
PARQUET_NOTE=

SCALE=1
REPS=5
CASES=all
WORKDIR=
OWN_WORKDIR=0
BIN_DIR="${CARGO_TARGET_DIR:-$SHARDRUN_ROOT/target}/release"
WORKER="$BIN_DIR/shard-worker"
MERGE="$BIN_DIR/merge"
GEN_PIDS=()
RESULTS=()
LEGEND=()

cleanup() {
  local pid
  for pid in "${GEN_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  remove_own_workdir
}

parse_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      -h | --help) usage 0 ;;
      --scale)
        [ $# -ge 2 ] || usage 2
        SCALE=$2
        shift 2
        ;;
      --reps)
        [ $# -ge 2 ] || usage 2
        REPS=$2
        shift 2
        ;;
      --case)
        [ $# -ge 2 ] || usage 2
        CASES=$2
        shift 2
        ;;
      --workdir)
        [ $# -ge 2 ] || usage 2
        WORKDIR=$2
        shift 2
        ;;
      *)
        printf 'unknown argument: %s\n\n' "$1" >&2
        usage 2
        ;;
    esac
  done
  DIE_CODE=2
  if ! [[ "$SCALE" =~ ^([0-9]+\.?[0-9]*|\.[0-9]+)$ ]] ||
    ! awk -v s="$SCALE" 'BEGIN { exit !(s > 0) }'; then
    die "--scale must be a positive number, not '$SCALE'"
  fi
  [[ "$REPS" =~ ^[1-9][0-9]*$ ]] || die "--reps must be a positive integer, not '$REPS'"
  case "$CASES" in
    a | b | c | p | all) ;;
    *) die "--case must be a, b, c, p or all, not '$CASES'" ;;
  esac
  DIE_CODE=1
}

ensure_tools() {
  need_cmd awk
  need_cmd df
  need_cmd cat
  need_cmd sync
  if [ ! -x "$WORKER" ] || [ ! -x "$MERGE" ]; then
    need_cmd cargo
    say "building release binaries (cargo build --release)"
    (cd "$SHARDRUN_ROOT" && cargo build --release --quiet --bin shard-worker --bin merge)
  fi
  if [ ! -x "$WORKER" ] || [ ! -x "$MERGE" ]; then
    die "no binaries in $BIN_DIR after the build"
  fi
  need_hyperfine
  if [[ " $(selected_cases) " == *" p "* ]]; then
    local py
    for py in "$SHARDRUN_ROOT/target/py-venv/bin/python" python3; do
      if "$py" -c 'import duckdb' 2>/dev/null; then
        DUCK_PY=$py
        break
      fi
    done
    [ -n "$DUCK_PY" ] ||
      die "case p needs DuckDB's Python package: run ./scripts/test.sh once (it makes target/py-venv) or 'pip install duckdb'"
  fi
  if [ ! -x /usr/bin/time ]; then
    say "installing time (for /usr/bin/time -v)"
    apt_install time || say "no /usr/bin/time; peak RSS will be reported as n/a"
  fi
}

# items_of BASE: the scaled item count, at least MIN ($2).
items_of() {
  awk -v b="$1" -v s="$SCALE" -v m="$2" 'BEGIN { n = int(b * s + 0.5); print (n < m ? m : n) }'
}

# Estimated bytes on disk for one case at full use: shard data and manifests, one merged output
# and its manifest_final.csv. Rows are ~pad + 30 bytes; a manifest record ~120 bytes per item.
estimate_bytes() {
  local items=$1 rows=$2 pad=$3
  awk -v n="$items" -v r="$rows" -v p="$pad" 'BEGIN { printf "%.0f\n", n * (r * (p + 30) + 120) }'
}

# case_bytes a|b: estimate_bytes for that case at the chosen scale.
case_bytes() {
  spec_of "$1"
  estimate_bytes "$(items_of "${SPEC[2]}" "${SPEC[1]}")" "${SPEC[3]}" "${SPEC[4]}"
}

check_space() {
  local need=0 c
  for c in $(selected_cases); do
    need=$(awk -v a="$need" -v b="$(case_bytes "$c")" 'BEGIN { printf "%.0f\n", a + b }')
  done
  local avail
  avail=$(df -Pk -- "$WORKDIR" | awk 'NR == 2 { printf "%.0f\n", $4 * 1024 }')
  say "data: ~$(mib "$need") MiB; free in $WORKDIR: $(mib "$avail") MiB (need 3x the data)"
  awk -v a="$avail" -v n="$need" 'BEGIN { exit !(a >= 3 * n) }' ||
    die "not enough free disk space in $WORKDIR: $(mib "$avail") MiB free, need ~$(mib "$((need * 3))") MiB (3x ~$(mib "$need") MiB of data). Pass --workdir on a larger filesystem or a smaller --scale"
}

selected_cases() {
  case "$CASES" in
    all) echo a b c p ;;
    *) echo "$CASES" ;;
  esac
}

mib() { awk -v b="$1" 'BEGIN { printf "%.0f\n", b / 1048576 }'; }

# generate DIR RUN SHARDS ITEMS ROWS PAD SHARDING: writes the run's shards (in parallel, no cache).
generate() {
  local dir=$1 run=$2 shards=$3 items=$4 rows=$5 pad=$6 sharding=$7
  mkdir -p "$dir/conf"
  cat >"$dir/conf/$run.yaml" <<EOF
run: $run
seed: 0
sharding: $sharding
items: {range: {start: 0, end: $items}}
generator: {builtin: echo, params: {rows: $rows, pad: $pad}, jobs: 1}
cache: {enabled: false}
EOF
  say "generating run $run: $shards shards, $items items x $rows rows, pad $pad"
  local i start=$EPOCHREALTIME
  GEN_PIDS=()
  for ((i = 0; i < shards; i++)); do
    "$WORKER" --root "$dir" --config "$dir/conf/$run.yaml" --shard-index "$i" \
      --num-shards "$shards" --no-cache 2>"$dir/gen-$run-$i.err" >/dev/null &
    GEN_PIDS+=("$!")
  done
  local failed=0
  for i in "${!GEN_PIDS[@]}"; do
    if ! wait "${GEN_PIDS[$i]}"; then
      failed=1
      say "shard $i of run $run failed:"
      tail -n 5 "$dir/gen-$run-$i.err" >&2 || true
    fi
  done
  GEN_PIDS=()
  [ "$failed" -eq 0 ] || die "generating run $run failed (a re-run with another --scale in the same --workdir needs a fresh directory)"
  say "generated in $(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }') s"
}

# median of the numbers given as arguments.
median() {
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 }
    END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# time_both PREP NAME1 CMD1 NAME2 CMD2: one hyperfine call that runs each command REPS times, each
# run after PREP; its statistics go to HF_JSON.
HF_JSON=
time_both() {
  HF_JSON="$WORKDIR/hyperfine.json"
  hyperfine --runs "$REPS" --style none --shell bash --prepare "$1" --export-json "$HF_JSON" \
    -n "$2" "$3" -n "$4" "$5" >/dev/null
}

# hf NAME FILTER: jq FILTER applied to NAME's entry in HF_JSON (.median: the median wall time,
# .times[]: every wall time in order).
hf() { jq -r --arg n "$1" ".results[] | select(.command == \$n) | $2" "$HF_JSON"; }
hf_times() { hf "$1" '.times[]' | xargs printf '%.3f '; }

# bench_case a|b: generate, check, time, measure peak RSS; appends a line to RESULTS.
bench_case() {
  spec_of "$1"
  local run=${SPEC[0]} shards=${SPEC[1]} rows=${SPEC[3]} pad=${SPEC[4]} target=${SPEC[5]}
  local desc=${SPEC[6]} sharding=${SPEC[7]} rss_limit=${SPEC[8]} items dir="$WORKDIR/$1"
  items=$(items_of "${SPEC[2]}" "$shards")
  generate "$dir" "$run" "$shards" "$items" "$rows" "$pad" "$sharding"

  local data="$dir/data/$run" files=() i
  for ((i = 0; i < shards; i++)); do files+=("$data/process-$i.csv"); done
  local cat_out="$dir/cat.csv"
  local prep merge_cmd cat_cmd
  prep="rm -f $(printf '%q ' "$data/combined.csv" "$data/manifest_final.csv" "$data/stats.json" "$cat_out")&& sync -f $(printf '%q' "$dir")"
  merge_cmd="$(printf '%q ' "$MERGE" --root "$dir" --run "$run" --keep-shards)>/dev/null"
  cat_cmd="cat $(printf '%q ' "${files[@]}")>$(printf '%q' "$cat_out") && sync $(printf '%q' "$cat_out")"

  # One untimed run of each, which also checks that they wrote the same rows: merge writes one
  # header line, cat one per shard.
  say "warm-up run of each command"
  bash -c "$prep"
  bash -c "$merge_cmd"
  bash -c "$cat_cmd"
  local merged catted header
  merged=$(stat -c %s "$data/combined.csv")
  catted=$(stat -c %s "$cat_out")
  header=$(head -n 1 "${files[0]}" | wc -c)
  [ "$merged" -eq $((catted - (shards - 1) * header)) ] ||
    die "merge wrote $merged bytes, cat $catted with $shards headers of $header bytes: they differ"

  local t
  time_both "$prep" merge "$merge_cmd" cat+sync "$cat_cmd"

  local rss=n/a
  if [ -x /usr/bin/time ]; then
    bash -c "$prep"
    /usr/bin/time -v -o "$dir/time-v.txt" "$MERGE" --root "$dir" --run "$run" --keep-shards >/dev/null
    rss=$(awk -F: '/Maximum resident set size/ { printf "%.1f", $2 / 1024 }' "$dir/time-v.txt")
  fi
  bash -c "$prep"

  local mm mc ratio met rss_ok
  mm=$(hf merge .median)
  mc=$(hf cat+sync .median)
  ratio=$(awk -v a="$mm" -v b="$mc" 'BEGIN { printf "%.2f", a / b }')
  local target_col=-
  [ "$target" = - ] || target_col="${target}x"
  met=-
  [ "$target" = - ] || met=$(awk -v r="$ratio" -v t="$target" 'BEGIN { print (r <= t ? "yes" : "NO") }')
  rss_ok=n/a
  [ "$rss" = n/a ] || rss_ok=$(awk -v r="$rss" -v l="$rss_limit" 'BEGIN { print (r < l ? "yes" : "NO") }')
  t=$(printf '%-4s %6s %8s %9.3f %10s %10.3f %6s %6s %4s %9s %9s' "$1" "$shards" "$(mib "$merged")" \
    "$mm" cat+sync "$mc" "${ratio}x" "$target_col" "$met" "$rss" "$rss_ok (<$rss_limit)")
  RESULTS+=("$t")
  LEGEND+=("$1: $desc; $items items")
  say "case $1: merge $(hf_times merge)s; cat+sync $(hf_times cat+sync)s"
  # Free the disk before the next case when the directory is ours.
  if [ "$OWN_WORKDIR" -eq 1 ]; then rm -rf -- "$dir"; fi
}

# bench_parquet: case p. The merged CSV that DuckDB reads is made once (merge --format csv) and
# kept aside; then `merge --keep-shards --format parquet` (the whole merge: manifests,
# manifest_final.csv, the CSV it writes the Parquet file from, all synced) alternates with a
# DuckDB process running COPY (SELECT ...) TO '...parquet' (zstd) on that CSV, its Python start
# and import included.
bench_parquet() {
  spec_of p
  local run=${SPEC[0]} shards=${SPEC[1]} rows=${SPEC[3]} pad=${SPEC[4]} target=${SPEC[5]}
  local desc=${SPEC[6]} sharding=${SPEC[7]} rss_limit=${SPEC[8]} items dir="$WORKDIR/p"
  items=$(items_of "${SPEC[2]}" "$shards")
  generate "$dir" "$run" "$shards" "$items" "$rows" "$pad" "$sharding"
  local data="$dir/data/$run" csv="$dir/merged.csv" duck_out="$dir/duckdb.parquet"
  "$MERGE" --root "$dir" --run "$run" --keep-shards --format csv >/dev/null
  mv -- "$data/combined.csv" "$csv"
  cat >"$dir/duck.py" <<'PY'
import sys
import time

import duckdb

src, dst = sys.argv[1], sys.argv[2]
start = time.perf_counter()
duckdb.sql(
    f"COPY (SELECT * FROM read_csv('{src}', header = true, auto_detect = false, columns = "
    "{'key': 'VARCHAR', 'index': 'BIGINT', 'seed': 'BIGINT', 'row': 'BIGINT', 'pad': 'VARCHAR'})) "
    f"TO '{dst}' (FORMAT parquet, COMPRESSION zstd)"
)
# The COPY alone, without the interpreter's start and the import, for the report.
with open(dst + ".copy-times", "a") as f:
    print(f"{time.perf_counter() - start:.3f}", file=f)
PY
  local prep merge_cmd duck_cmd
  prep="rm -f $(printf '%q ' "$data/combined.parquet" "$data/manifest_final.csv" "$data/stats.json" "$duck_out")&& sync -f $(printf '%q' "$dir")"
  merge_cmd="$(printf '%q ' "$MERGE" --root "$dir" --run "$run" --keep-shards --format parquet)>/dev/null"
  duck_cmd="$(printf '%q ' "$DUCK_PY" "$dir/duck.py" "$csv" "$duck_out")"
  say "warm-up run of each command"
  bash -c "$prep"
  bash -c "$merge_cmd"
  bash -c "$duck_cmd"
  rm -f -- "$duck_out.copy-times"
  time_both "$prep" merge "$merge_cmd" duckdb "$duck_cmd"
  local rss=n/a duck_rss=n/a
  if [ -x /usr/bin/time ]; then
    bash -c "$prep"
    /usr/bin/time -v -o "$dir/time-v.txt" "$MERGE" --root "$dir" --run "$run" --keep-shards --format parquet >/dev/null
    rss=$(awk -F: '/Maximum resident set size/ { printf "%.1f", $2 / 1024 }' "$dir/time-v.txt")
    /usr/bin/time -v -o "$dir/time-d.txt" "$DUCK_PY" "$dir/duck.py" "$csv" "$duck_out"
    duck_rss=$(awk -F: '/Maximum resident set size/ { printf "%.1f", $2 / 1024 }' "$dir/time-d.txt")
  fi
  local t0 import_s sizes copy_s copies=()
  mapfile -t copies <"$duck_out.copy-times"
  copy_s=$(median "${copies[@]:0:REPS}")
  t0=$EPOCHREALTIME
  "$DUCK_PY" -c 'import duckdb'
  import_s=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }')
  sizes="combined.parquet $(mib "$(stat -c %s "$data/combined.parquet")") MiB, DuckDB's $(mib "$(stat -c %s "$duck_out")") MiB"
  local mm md ratio met rss_ok=n/a
  mm=$(hf merge .median)
  md=$(hf duckdb .median)
  ratio=$(awk -v a="$mm" -v b="$md" 'BEGIN { printf "%.2f", a / b }')
  met=$(awk -v r="$ratio" -v t="$target" 'BEGIN { print (r <= t ? "yes" : "NO") }')
  [ "$rss" = n/a ] || rss_ok=$(awk -v r="$rss" -v l="$rss_limit" 'BEGIN { print (r < l ? "yes" : "NO") }')
  RESULTS+=("$(printf '%-4s %6s %8s %9.3f %10s %10.3f %6s %6s %4s %9s %9s' p "$shards" \
    "$(mib "$(stat -c %s "$csv")")" "$mm" duckdb "$md" "${ratio}x" "${target}x" "$met" "$rss" "$rss_ok (<$rss_limit)")")
  LEGEND+=("p: $desc; $items items")
  PARQUET_NOTE="p: $sizes; DuckDB peak RSS $duck_rss MiB; the COPY alone (timed in its process) median ${copy_s} s; its Python start and import take ${import_s} s; MiB = the merged CSV"
  say "case p: merge $(hf_times merge)s; duckdb $(hf_times duckdb)s"
  bash -c "$prep"
  if [ "$OWN_WORKDIR" -eq 1 ]; then rm -rf -- "$dir"; fi
}

report() {
  local fs
  fs=$(df -PT -- "$WORKDIR" | awk 'NR == 2 { print $2 }')
  printf '\nmerge benchmark, %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  printf 'machine: %s CPUs, %s MiB RAM, kernel %s, %s filesystem; scale %s, %s reps (%s), warm page cache\n\n' \
    "$(nproc)" "$(awk '/MemTotal/ { printf "%.0f", $2 / 1024 }' /proc/meminfo)" "$(uname -r)" "$fs" \
    "$SCALE" "$REPS" "$(hyperfine --version)"
  printf '%-4s %6s %8s %9s %10s %10s %6s %6s %4s %9s %9s\n' case shards MiB "merge s" baseline \
    "baseline s" ratio target met "RSS MiB" "RSS ok"
  printf '%s\n' "${RESULTS[@]}"
  printf '\n'
  printf '%s\n' "${LEGEND[@]}"
  printf 'times are medians of %s runs; ratio = merge / baseline; RSS = merge peak resident set\n' "$REPS"
  [ -z "$PARQUET_NOTE" ] || printf '%s\n' "$PARQUET_NOTE"
}

main() {
  parse_args "$@"
  use_workdir bench_merge
  trap cleanup EXIT
  ensure_tools
  check_space
  local c
  for c in $(selected_cases); do
    if [ "$c" = p ]; then bench_parquet; else bench_case "$c"; fi
  done
  report
}

main "$@"
