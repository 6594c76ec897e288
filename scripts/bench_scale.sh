#!/usr/bin/env bash
# Scale benchmark. For each shard count N (default 1,000 and 10,000), a run of N shards of 10
# `echo` items goes through run_parallel.sh --max-running P under `ulimit -n NOFILE` (soft and
# hard), then:
#   launcher   the run's wall time, against the same workers started by `xargs -P P` (no status
#              file, no summary): the difference over N is the launcher's overhead per shard
#   monitor    `monitor --json` of the finished run, a fresh process each time (hyperfine)
#   merge      `merge --keep-shards` (hyperfine) and its peak RSS (/usr/bin/time -v), against
#              `cat` of the same shard files (data and manifests) into one file + `sync`
# With --stragglers instead: 160 items of which a tenth (keys 0 to 15, so a few shards) sleep
# 20x longer (1 s, the others 0.05 s); makespan of 2 shards on 2 slots, 32 shards through
# --max-running 2, and GNU parallel -j2 over single items (hyperfine, one run each).
#
#   ./scripts/bench_scale.sh [--shards "1000 10000"] [--max-running P] [--nofile N]
#                            [--workdir DIR] [--stragglers]
#
#   --shards LIST     shard counts to measure (default "1000 10000")
#   --max-running P   slots (default 2)
#   --nofile N        open-file limit, soft and hard (default 1024)
#   --workdir DIR     where the runs go (default: a temporary directory, removed at exit)
#   --stragglers      run the straggler comparison instead
#
# Needs hyperfine and jq (exits 2 without them; GNU parallel for --stragglers).
# Figures: docs/BENCHMARKS.md.
set -Eeuo pipefail
shopt -s inherit_errexit
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  sed -n '2,/^set -Eeuo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

SIZES="1000 10000"
SLOTS=2
NOFILE=1024
WORKDIR=''
OWN_WORKDIR=0
STRAGGLERS=0

parse_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      -h | --help) usage 0 ;;
      --shards) [ $# -ge 2 ] || usage 2; SIZES=$2; shift ;;
      --max-running) [ $# -ge 2 ] || usage 2; SLOTS=$2; shift ;;
      --nofile) [ $# -ge 2 ] || usage 2; NOFILE=$2; shift ;;
      --workdir) [ $# -ge 2 ] || usage 2; WORKDIR=$2; shift ;;
      --stragglers) STRAGGLERS=1 ;;
      *) usage 2 ;;
    esac
    shift
  done
}

# seconds_of JSON [I]: the median time of hyperfine's command I (default 0), in seconds.
seconds_of() { jq -r ".results[${2:-0}].median | . * 1000 | round / 1000" "$1"; }

# project DIR RUN ITEMS [GENERATOR]: a project directory with conf/RUN.yaml.
project() {
  mkdir -p "$1/conf"
  printf 'run: %s\nitems: {range: {start: 0, end: %s}}\ngenerator: %s\n' "$2" "$3" \
    "${4:-"{builtin: echo}"}" >"$1/conf/$2.yaml"
}

scale() {
  local n=$1 dir=$WORKDIR/n$1 base launch
  project "$dir" "s$n" "$((n * 10))"
  project "$dir" "x$n" "$((n * 10))"
  cd "$dir"
  # One run each (the runs of s$n stay for monitor and merge below): the workers alone started by
  # xargs, then the same shards through the launcher.
  say "$n shards: the workers alone (xargs -P $SLOTS), then run_parallel.sh --max-running $SLOTS"
  hyperfine -r 1 --style none --export-json launch.json \
    -n workers "seq 0 $((n - 1)) | xargs -P $SLOTS -I{} $(printf '%q' "$WORKER") --config conf/x$n.yaml --shard-index {} --num-shards $n --quiet" \
    -n launcher "$(printf '%q' "$SHARDRUN_ROOT/scripts/run_parallel.sh") --config conf/s$n.yaml --num-shards $n --max-running $SLOTS" \
    >/dev/null
  base=$(seconds_of launch.json 0)
  launch=$(seconds_of launch.json 1)
  say "$n shards: monitor --json"
  hyperfine -N -w 1 -r 5 --export-json monitor.json "$BIN/monitor --run s$n --json" >/dev/null
  say "$n shards: merge --keep-shards, and cat + sync of the same files"
  find "data/s$n" -maxdepth 1 \( -name 'process-*.csv' -o -name 'manifest_shard*.jsonl' \) >files.txt
  hyperfine -N -w 1 -r 3 --export-json merge.json "$BIN/merge --run s$n --keep-shards" >/dev/null
  hyperfine -w 1 -r 3 --export-json cat.json "xargs -d '\n' cat <files.txt >cat.out; sync" >/dev/null
  /usr/bin/time -v "$BIN/merge" --run "s$n" --keep-shards 2>time.txt >/dev/null
  printf '%-7s | %6.1f s | %6.1f s | %6.1f ms | %6.3f s | %6.3f s | %6.3f s | %5.1f MiB\n' "$n" "$base" "$launch" \
    "$(echo "($launch - $base) * 1000 / $n" | bc -l)" "$(seconds_of monitor.json)" \
    "$(seconds_of merge.json)" "$(seconds_of cat.json)" \
    "$(awk '/Maximum resident/ {print $NF / 1024}' time.txt)" >>"$WORKDIR/table.txt"
  cd - >/dev/null
}

stragglers() {
  local dir=$WORKDIR/stragglers gen
  mkdir -p "$dir"
  cd "$dir"
  # shellcheck disable=SC2016  # $1 is the generator's argument, not ours
  printf '#!/bin/sh\nif [ "$1" -lt 16 ]; then sleep 1; else sleep 0.05; fi\necho "$1"\n' >g.sh
  chmod +x g.sh
  gen='{command: [./g.sh, "{key}"], jobs: 1}
output: {columns: [k]}'
  project "$dir" two 160 "$gen"
  project "$dir" many 160 "$gen"
  hyperfine -r 1 --prepare 'rm -rf data logs' --export-json stragglers.json \
    -n '2 shards, 2 slots' "$SHARDRUN_ROOT/scripts/run_parallel.sh --config conf/two.yaml --num-shards 2 --max-running 2" \
    -n '32 shards, --max-running 2' "$SHARDRUN_ROOT/scripts/run_parallel.sh --config conf/many.yaml --num-shards 32 --max-running 2" \
    -n 'GNU parallel -j2, one item each' "seq 0 159 | parallel -j2 ./g.sh {} >/dev/null"
  jq -r '.results[] | "\(.command) | \(.median * 10 | round / 10) s"' stragglers.json
  cd - >/dev/null
}

main() {
  parse_args "$@"
  need_hyperfine
  need_cmd bc
  ensure_binaries
  export SHARDRUN_BIN=$BIN SHARDRUN_NO_DISPLAY=1
  use_workdir bench_scale
  trap remove_own_workdir EXIT
  ulimit -n "$NOFILE"
  say "open files: soft $(ulimit -Sn), hard $(ulimit -Hn); $(nproc) CPUs"
  if ((STRAGGLERS)); then
    need_cmd parallel
    stragglers
    return
  fi
  printf 'shards  | workers  | launcher | overhead/shard | monitor --json | merge | cat+sync | merge RSS\n' >"$WORKDIR/table.txt"
  local n
  for n in $SIZES; do
    scale "$n"
  done
  cat "$WORKDIR/table.txt"
}

main "$@"
